//! The terminal side of the explorer: enter/leave the alternate screen (always restored, also
//! after a panic, Ctrl-C or SIGTERM), read keys on their own thread, and run the tokio event loop
//! that feeds keys and worker messages to `State` and redraws — immediately after a key, at most
//! ten times a second for background progress, inside synchronized updates.

use std::io::{stdout, IsTerminal, Stdout};
use std::time::{Duration, Instant};

use color_eyre::eyre::{bail, Result};
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, BeginSynchronizedUpdate, EndSynchronizedUpdate,
    EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::crossterm::{cursor, execute};
use ratatui::Terminal;
use tokio::sync::mpsc;

use std::sync::atomic::Ordering;

use crate::app::{Effect, Job, Msg, State};
use crate::ui::theme::Theme;
use crate::worker::{self, ExplorerSession, Spec};

/// Minimum time between redraws caused by background progress (10 frames/s).
const FRAME: Duration = Duration::from_millis(100);

fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, cursor::Show);
}

/// Restores the terminal when dropped, whatever path leaves the event loop.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        restore();
    }
}

fn enter() -> Result<(Terminal<CrosstermBackend<Stdout>>, Guard)> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // A worker panic is reported in the UI (see worker.rs); any other restores first so the
        // message lands on a normal screen.
        if std::thread::current().name() == Some(worker::THREAD_NAME) {
            return;
        }
        restore();
        prev(info);
    }));
    enable_raw_mode()?;
    let guard = Guard;
    execute!(stdout(), EnterAlternateScreen, cursor::Hide)?;
    let mut term = Terminal::new(CrosstermBackend::new(stdout()))?;
    term.clear()?;
    Ok((term, guard))
}

/// Run the explorer until the user quits.
pub fn run(spec: Spec, state: State, theme: Theme) -> Result<()> {
    if !stdout().is_terminal() {
        bail!("the explorer needs a terminal (stdout is not one); for scripts use `dlpx prune` or `dlpx demo`");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(event_loop(spec, state, theme))
}

async fn event_loop(spec: Spec, mut state: State, theme: Theme) -> Result<()> {
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<Msg>();
    let (key_tx, mut key_rx) = mpsc::unbounded_channel::<Event>();
    let (mut term, _guard) = enter()?;
    let handle = worker::spawn(ExplorerSession::new(spec), msg_tx)?;
    // crossterm's read blocks: it gets its own thread, which ends with the process.
    std::thread::Builder::new()
        .name("dlpx-keys".into())
        .spawn(move || {
            while let Ok(ev) = event::read() {
                if key_tx.send(ev).is_err() {
                    break;
                }
            }
        })?;
    let mut sigterm = signal_term()?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last_draw = Instant::now() - FRAME;
    let (mut dirty, mut now, mut quit) = (true, true, false);
    loop {
        tokio::select! {
            Some(ev) = key_rx.recv() => match ev {
                Event::Key(k) if k.kind != KeyEventKind::Release => {
                    for effect in state.on_key(k) {
                        match effect {
                            Effect::Job(job) => send(&handle, job),
                            Effect::Cancel => handle.cancel.store(true, Ordering::Relaxed),
                            Effect::Quit => quit = true,
                        }
                    }
                    now = true;
                }
                Event::Resize(..) => now = true,
                _ => {}
            },
            Some(m) = msg_rx.recv() => {
                state.on_msg(m);
                dirty = true;
            }
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => quit = true,
            _ = sigterm.recv() => quit = true,
        }
        if quit {
            break;
        }
        if now || (dirty && last_draw.elapsed() >= FRAME) {
            execute!(stdout(), BeginSynchronizedUpdate)?;
            term.draw(|f| crate::ui::draw(f, &state, &theme))?;
            execute!(stdout(), EndSynchronizedUpdate)?;
            last_draw = Instant::now();
            dirty = false;
            now = false;
        }
    }
    // Stop a running job quickly; the worker thread ends with the process.
    handle.cancel.store(true, Ordering::Relaxed);
    Ok(())
}

fn send(h: &worker::Handle, job: Job) {
    // The worker only goes away with the process.
    let _ = h.jobs.send(job);
}

#[cfg(unix)]
fn signal_term() -> Result<tokio::signal::unix::Signal> {
    Ok(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::terminate(),
    )?)
}

#[cfg(not(unix))]
fn signal_term() -> Result<NeverSignal> {
    Ok(NeverSignal)
}

#[cfg(not(unix))]
struct NeverSignal;

#[cfg(not(unix))]
impl NeverSignal {
    async fn recv(&mut self) -> Option<()> {
        std::future::pending().await
    }
}

/// `dlpx` without a subcommand: check everything that can be checked before the terminal is
/// taken over (so bad input prints one plain error), then open the explorer.
pub fn start(g: &crate::cli::GlobalArgs, a: &crate::cli::TuiArgs) -> Result<()> {
    use crate::experiment::Setup;
    let theme = Theme::resolve(&a.theme)?;
    let device = crate::device::parse_device(&g.device)?;
    let dtype = crate::device::parse_dtype(&g.dtype, &device)?;
    let source =
        crate::model::ModelSource::parse(a.model.model.as_deref(), a.model.revision.as_deref())?;
    let data = a.data.spec();
    data.sources()?;
    // Checked before the terminal is taken over.
    let tasks = crate::zeroshot::parse_tasks(&a.tasks)?;
    let params = match &a.config {
        Some(p) => crate::report::Report::load(p)?.params,
        None => crate::app::params::explorer_defaults(),
    };
    params.validate(usize::MAX)?;
    // Prompts: the flags', else a replayed config's, else the four defaults.
    let replayed: Vec<String> = match &a.config {
        Some(p) => crate::report::Report::load(p)?
            .generations
            .into_iter()
            .map(|g| g.prompt)
            .collect(),
        None => vec![],
    };
    let prompts = if !a.prompt.is_empty() {
        a.prompt.clone()
    } else if !replayed.is_empty() {
        replayed
    } else {
        crate::app::DEFAULT_PROMPTS.map(String::from).to_vec()
    };
    let mut state = State::new(params.clone(), prompts.clone());
    state.theme_name = theme.name.clone();
    if a.sweep_windows == 0 {
        color_eyre::eyre::bail!("--sweep-windows must be at least 1");
    }
    state.sweep_windows = a.sweep_windows;
    let spec = Spec {
        setup: Setup {
            source,
            device,
            dtype,
            place: match g.offload {
                true => crate::model::Placement::Offload,
                false => crate::model::Placement::Resident,
            },
            sparse: g.sparse.unwrap_or_default(),
            data,
            stats_cache: !(a.no_stats_cache || a.no_cache),
            dense_cache: !a.no_cache,
            // The explorer can switch to SparseGPT at any key press.
            metric: crate::prune::mask::Metric::SparseGpt,
            keeps_pruned_copy: true,
            recovery: None,
        },
        owl_m: params.owl_m,
        max_new_tokens: a.max_new_tokens,
        prompts,
        zeroshot: crate::worker::ZeroShotSpec {
            tasks,
            source: crate::zeroshot::TaskSource::parse(&a.task_source),
            limit: (a.task_limit > 0).then_some(a.task_limit),
        },
    };
    run(spec, state, theme)
}
