//! The TUI's single owner of state and its `update`: keys and worker messages come in, the state
//! changes, and jobs for the worker go out. Nothing here draws or touches the terminal, so every
//! behaviour can be tested (and benchmarked) without one.

mod export;
pub mod jobs;
pub mod keys;
mod messages;
pub mod params;

pub use export::ChartError;
pub use messages::{Footprint, Job, Msg, Stage, Step, Summary};

use std::path::PathBuf;
use std::sync::Arc;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use std::time::Instant;

use crate::prune::allocate::MAX_SPARSITY;
use crate::prune::params::Param;
use crate::prune::pipeline::{plan_for, Plan, PruneParams};
use crate::prune::stats::{Calibration, ScoreStats};
use crate::zeroshot::ZeroShot;
use jobs::BackgroundJob;
use keys::Action;

/// One applied configuration (the history in the compare view).
#[derive(Debug, Clone)]
pub struct Applied {
    pub id: usize,
    pub params: PruneParams,
    pub target: Vec<f64>,
    pub n_of_m: Option<Vec<usize>>,
    pub achieved: Option<Vec<f64>>,
    pub ppl: Option<f64>,
    /// Σ NLL per evaluation window of the pruned model.
    pub window_nll: Option<Vec<f64>>,
    /// Zero-shot accuracy (key z).
    pub zeroshot: Option<ZeroShot>,
    /// Perplexity quantized, per format (key Q).
    pub quantized: Vec<(crate::model::quant::QuantFormat, f64)>,
    /// Perplexity after LoRA recovery and the steps it ran (key F).
    pub recovered: Option<(f64, usize)>,
    /// Its linears' bytes and how they run, as the worker last reported them.
    pub footprint: Option<Footprint>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Default)]
pub struct PromptGen {
    pub prompt: String,
    pub dense: String,
    pub pruned: String,
    /// Tokens per side: pieces streamed so far, then the finished continuation's new tokens.
    pub dense_tokens: usize,
    pub pruned_tokens: usize,
    /// Seconds from the side's start to its last streamed piece (the rate while it streams).
    pub dense_secs: Option<f64>,
    pub pruned_secs: Option<f64>,
    /// The finished continuation's decode speed (KV-cached steps), measured by the worker;
    /// for a dense continuation from the cache, when it was generated.
    pub dense_tok_s: Option<f64>,
    pub pruned_tok_s: Option<f64>,
    dense_started: Option<Instant>,
    pruned_started: Option<Instant>,
}

/// One calibration draw: its per-block allocation and pruned perplexity.
pub type DrawResult = (Vec<f64>, Option<f64>);

/// The spread over calibration draws (key D) of the current parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct DrawSpread {
    pub draws: usize,
    pub ppl_mean: f64,
    pub ppl_sd: f64,
    /// Each block's lowest and highest allocated sparsity over the draws.
    pub block_range: Vec<(f64, f64)>,
}

/// The explorer's prompts when none are given: a fact, a continuation of prose, a list and a
/// simple reasoning step, so the compare view shows different kinds of damage.
pub const DEFAULT_PROMPTS: [&str; 4] = [
    "The capital of France is",
    "The old house at the end of the road had been empty for years, and",
    "Three things every kitchen needs are:",
    "If a train leaves at 3 pm and the trip takes 2 hours, it arrives at",
];

/// Where `pruned` departs from `dense`: the char index of the first difference, or `None`
/// while one is a prefix of the other (the same text so far).
pub fn first_difference(dense: &str, pruned: &str) -> Option<usize> {
    dense.chars().zip(pruned.chars()).position(|(a, b)| a != b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Main,
    Compare,
    Sweep,
}

impl View {
    /// The key-table scope of this view.
    pub fn scope(self) -> keys::Scope {
        match self {
            View::Main => keys::Scope::Main,
            View::Compare => keys::Scope::Compare,
            View::Sweep => keys::Scope::Sweep,
        }
    }
}

/// The sweep view's data: preview perplexity at each value of one parameter, the others as
/// they were when the sweep started.
#[derive(Debug, Clone)]
pub struct SweepView {
    pub param: Param,
    pub base: PruneParams,
    pub values: Vec<f64>,
    /// Perplexity per value, as the points finish.
    pub ppl: Vec<Option<f64>>,
    /// Evaluation windows per point.
    pub windows: usize,
    /// The selected point.
    pub sel: usize,
    /// Measured on held-out calibration windows (`A`), not on the evaluation windows.
    pub heldout: bool,
}

impl SweepView {
    /// The point with the lowest perplexity so far.
    pub fn best(&self) -> Option<usize> {
        (0..self.values.len())
            .filter(|&i| self.ppl[i].is_some())
            .min_by(|&a, &b| {
                self.ppl[a]
                    .unwrap_or(f64::MAX)
                    .total_cmp(&self.ppl[b].unwrap_or(f64::MAX))
            })
    }

    /// Whether the sweep was made with `params` (all but the swept parameter equal).
    fn made_with(&self, params: &PruneParams) -> bool {
        let mut p = params.clone();
        self.param.set(&mut p, self.param.get(&self.base));
        p.mode = self.base.mode;
        p == self.base
    }
}

/// What a text entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputPurpose {
    Value(Param),
    ExportPath,
    RecipePath,
    OpenPath,
    SavePath,
    EditPrompt(usize),
    AddPrompt,
}

impl InputPurpose {
    pub fn title(self) -> String {
        match self {
            InputPurpose::Value(f) => format!("exact value for {}", f.label()),
            InputPurpose::ExportPath => "export the report / config to".into(),
            InputPurpose::RecipePath => "write the llm-compressor recipe (YAML) to".into(),
            InputPurpose::OpenPath => "open a config (report JSON)".into(),
            InputPurpose::SavePath => "save the pruned model to the folder".into(),
            InputPurpose::EditPrompt(i) => format!("prompt {}", i + 1),
            InputPurpose::AddPrompt => "new prompt".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    Help,
    /// Text entry. `fresh`: the text is the shown value, untouched; the first typed character
    /// replaces it (as a selected field does), Backspace clears it, arrows keep it for editing.
    Input {
        purpose: InputPurpose,
        text: String,
        fresh: bool,
    },
    ConfirmQuit,
}

#[derive(Debug, Clone)]
pub struct JobView {
    pub stage: Stage,
    pub done: usize,
    pub total: usize,
    pub tokens_per_s: f64,
    pub eta_s: f64,
}

/// Severity of the status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Info,
    Good,
    Error,
}

/// What a key asks the terminal loop to do, besides changing the state.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Send a job to the worker.
    Job(Job),
    /// Cancel the worker's running job.
    Cancel,
    /// Leave the explorer.
    Quit,
}

/// Optimizer steps of the explorer's LoRA recovery (key F); `dlpx recover` sets its own.
pub const RECOVER_STEPS: usize = 20;

pub struct State {
    pub summary: Option<Summary>,
    /// Block statistics as they arrive during calibration.
    pub block_stats: Vec<ScoreStats>,
    pub cal: Option<Arc<Calibration>>,
    pub cache_hit: bool,
    pub params: PruneParams,
    pub plan: Option<Plan>,
    pub field: Param,
    pub block: usize,
    pub view: View,
    pub overlay: Option<Overlay>,
    pub job: Option<JobView>,
    /// True while the worker has queued or running work.
    pub busy: bool,
    pub dense_ppl: Option<f64>,
    /// Σ NLL per evaluation window of the dense model (for the exported report).
    pub dense_window_nll: Option<Vec<f64>>,
    /// Zero-shot accuracy of the dense model (key z).
    pub dense_zeroshot: Option<ZeroShot>,
    pub history: Vec<Applied>,
    pub prompts: Vec<PromptGen>,
    pub prompt_sel: usize,
    pub status: (String, Tone),
    pub export_path: String,
    pub recipe_path: String,
    pub save_path: String,
    pub theme_name: String,
    /// Microseconds spent in the last reallocation (shown in the panel).
    pub last_allocate_us: f64,
    /// The id of the last apply.
    pub last_id: usize,
    pub sweep: Option<SweepView>,
    /// Evaluation windows per sweep point.
    pub sweep_windows: usize,
    /// Another allocation at the same p drawn over the sparsity bars (key v), and its plan.
    pub overlay_alloc: Option<crate::prune::allocate::Allocation>,
    /// Or, instead, the allocation of an applied history entry (key v after AlphaPruning).
    pub overlay_entry: Option<usize>,
    pub overlay_plan: Option<Vec<f64>>,
    /// Calibration draws (key D): the parameters they were made with, and per draw its
    /// allocation and pruned perplexity.
    pub draws: Option<(PruneParams, Vec<DrawResult>)>,
    /// What the importance chart shows (key i); all from the one calibration.
    pub importance: Importance,
    /// How the applied model's linears run (key X), once the worker has reported it.
    pub sparse: Option<crate::sparse::SparseMode>,
}

/// The importance chart's quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    /// The statistic F of the block's Wanda scores (DLP's input, §4.1).
    Statistic,
    /// OWL's outlier ratio (percent of scores above M × mean).
    OwlRatio,
    /// AlphaPruning's α̂, averaged over the block's linears.
    AlphaHat,
}

impl State {
    pub fn new(params: PruneParams, prompts: Vec<String>) -> Self {
        Self {
            summary: None,
            block_stats: vec![],
            cal: None,
            cache_hit: false,
            params,
            plan: None,
            field: Param::Sparsity,
            block: 0,
            view: View::Main,
            overlay: None,
            job: Some(JobView {
                stage: Stage::Load,
                done: 0,
                total: 0,
                tokens_per_s: 0.0,
                eta_s: 0.0,
            }),
            busy: true,
            dense_ppl: None,
            dense_window_nll: None,
            dense_zeroshot: None,
            history: vec![],
            prompts: prompts
                .into_iter()
                .map(|p| PromptGen {
                    prompt: p,
                    ..Default::default()
                })
                .collect(),
            prompt_sel: 0,
            status: ("starting".into(), Tone::Info),
            export_path: "dlpx-config.json".into(),
            recipe_path: "dlpx-recipe.yaml".into(),
            save_path: "dlpx-pruned".into(),
            theme_name: "dark".into(),
            last_allocate_us: 0.0,
            last_id: 0,
            sweep: None,
            sweep_windows: 16,
            overlay_alloc: None,
            overlay_entry: None,
            overlay_plan: None,
            draws: None,
            importance: Importance::Statistic,
            sparse: None,
        }
    }

    pub fn n_blocks(&self) -> usize {
        self.summary.as_ref().map(|s| s.numel.len()).unwrap_or(0)
    }

    /// The calibration draws' spread, when they were made with the current parameters:
    /// (draws, pruned perplexity mean and sample sd, each block's min and max allocation).
    pub fn draw_spread(&self) -> Option<DrawSpread> {
        let (p, d) = self.draws.as_ref()?;
        if p != &self.params || d.is_empty() {
            return None;
        }
        let ppl: Vec<f64> = d.iter().filter_map(|x| x.1).collect();
        let n = ppl.len() as f64;
        let mean = ppl.iter().sum::<f64>() / n.max(1.0);
        let sd = if ppl.len() > 1 {
            (ppl.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        let blocks = d[0].0.len();
        let range = (0..blocks)
            .map(|b| {
                d.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| {
                    (lo.min(x.0[b]), hi.max(x.0[b]))
                })
            })
            .collect();
        Some(DrawSpread {
            draws: d.len(),
            ppl_mean: mean,
            ppl_sd: sd,
            block_range: range,
        })
    }

    /// The last applied configuration, if its parameters are the current ones.
    pub fn current_applied(&self) -> Option<&Applied> {
        self.history.last().filter(|a| a.params == self.params)
    }

    fn say(&mut self, msg: impl Into<String>, tone: Tone) {
        self.status = (msg.into(), tone);
    }

    /// Recompute the allocation (the pure function; microseconds).
    pub fn replan(&mut self) {
        let (Some(s), Some(cal)) = (&self.summary, &self.cal) else {
            return;
        };
        // The overlay: the same parameters with the other allocation, or an applied entry's.
        let overlay = match (self.overlay_alloc, self.overlay_entry) {
            (Some(a), _) => {
                let mut p = self.params.clone();
                p.alloc.allocation = a;
                plan_for(&s.numel, cal, &p).ok().map(|p| p.block)
            }
            (None, Some(id)) => self
                .history
                .iter()
                .find(|h| h.id == id)
                .map(|h| h.target.clone()),
            (None, None) => None,
        };
        let planned = plan_for(&s.numel, cal, &self.params);
        self.overlay_plan = overlay;
        match planned {
            Ok(p) => {
                self.last_allocate_us = p.allocate_us;
                self.plan = Some(p);
            }
            Err(e) => self.say(format!("{e}"), Tone::Error),
        }
    }

    /// Accept `candidate` parameters if the engine would; else keep the old ones and say why.
    fn set_params(&mut self, candidate: PruneParams) {
        if let Err(e) = candidate.validate(self.n_blocks().max(1)) {
            self.say(format!("{e}"), Tone::Error);
            return;
        }
        self.params = candidate;
        self.replan();
    }

    /// Handle a key; returns what the terminal loop has to do (jobs, cancel, quit).
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Effect> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return vec![Effect::Quit];
        }
        match self.overlay.clone() {
            Some(Overlay::Help) => {
                self.overlay = None;
                return vec![];
            }
            Some(Overlay::ConfirmQuit) => {
                match key.code {
                    KeyCode::Char('y') | KeyCode::Char('q') | KeyCode::Enter => {
                        return vec![Effect::Quit]
                    }
                    _ => self.overlay = None,
                }
                return vec![];
            }
            Some(Overlay::Input {
                purpose,
                mut text,
                fresh,
            }) => {
                let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
                match key.code {
                    KeyCode::Esc => self.overlay = None,
                    KeyCode::Enter => {
                        self.overlay = None;
                        return self.submit(purpose, text);
                    }
                    KeyCode::Backspace if fresh => self.edit(purpose, String::new()),
                    KeyCode::Backspace => {
                        text.pop();
                        self.edit(purpose, text);
                    }
                    KeyCode::Char('u') if ctrl => self.edit(purpose, String::new()),
                    KeyCode::Char(c) if !ctrl => {
                        if fresh {
                            text.clear();
                        }
                        text.push(c);
                        self.edit(purpose, text);
                    }
                    // Moving the cursor keeps the shown value for editing.
                    KeyCode::Left | KeyCode::Right | KeyCode::End | KeyCode::Home => {
                        self.edit(purpose, text)
                    }
                    _ => {}
                }
                return vec![];
            }
            None => {}
        }
        match keys::lookup(&key, self.view.scope()) {
            Some(a) => self.act(a),
            None => vec![],
        }
    }

    /// Open text entry showing `text` (replaced by the first typed character).
    fn input(&mut self, purpose: InputPurpose, text: String) {
        self.overlay = Some(Overlay::Input {
            purpose,
            fresh: !text.is_empty(),
            text,
        });
    }

    /// Text entry after an edit.
    fn edit(&mut self, purpose: InputPurpose, text: String) {
        self.overlay = Some(Overlay::Input {
            purpose,
            text,
            fresh: false,
        });
    }

    pub fn act(&mut self, a: Action) -> Vec<Effect> {
        let panel: Vec<Param> = Param::panel().collect();
        let n_fields = panel.len();
        let fi = panel.iter().position(|f| *f == self.field).unwrap_or(0);
        match a {
            Action::FieldNext => self.field = panel[(fi + 1) % n_fields],
            Action::FieldPrev => self.field = panel[(fi + n_fields - 1) % n_fields],
            Action::Inc | Action::Dec | Action::IncCoarse | Action::DecCoarse => {
                let dir = if matches!(a, Action::Inc | Action::IncCoarse) {
                    1
                } else {
                    -1
                };
                let coarse = matches!(a, Action::IncCoarse | Action::DecCoarse);
                let c = self.field.nudge(&self.params, dir, coarse);
                self.set_params(c);
            }
            Action::TypeValue => {
                if self.field.number().is_some() {
                    let cur = match (self.field, self.params.alloc.tau) {
                        (Param::Tau, None) => "inf".to_string(),
                        _ => self.field.show(&self.params),
                    };
                    self.input(InputPurpose::Value(self.field), cur);
                } else {
                    let c = self.field.nudge(&self.params, 1, false);
                    self.set_params(c);
                }
            }
            Action::BlockNext => {
                self.block = (self.block + 1).min(self.n_blocks().saturating_sub(1))
            }
            Action::BlockPrev => self.block = self.block.saturating_sub(1),
            Action::PinUp | Action::PinDown | Action::Unpin | Action::UnpinAll => {
                return self.act_pins(a)
            }
            Action::Apply => return self.apply(),
            Action::ToggleCompare => {
                self.view = match self.view {
                    View::Main | View::Sweep => View::Compare,
                    View::Compare => View::Main,
                }
            }
            Action::PromptNext => {
                self.prompt_sel = (self.prompt_sel + 1).min(self.prompts.len().saturating_sub(1))
            }
            Action::PromptPrev => self.prompt_sel = self.prompt_sel.saturating_sub(1),
            Action::EditPrompt => {
                if let Some(p) = self.prompts.get(self.prompt_sel) {
                    let t = p.prompt.clone();
                    self.input(InputPurpose::EditPrompt(self.prompt_sel), t);
                }
            }
            Action::AddPrompt => self.input(InputPurpose::AddPrompt, String::new()),
            Action::DeletePrompt => {
                if self.prompts.len() > 1 {
                    self.prompts.remove(self.prompt_sel);
                    self.prompt_sel = self.prompt_sel.min(self.prompts.len() - 1);
                } else {
                    self.say("keep at least one prompt (p edits it)", Tone::Error);
                }
            }
            Action::Generate => return self.generate_jobs(),
            Action::ZeroShot => return self.zeroshot_job(),
            Action::Quantize => return jobs::Quantize::start(self),
            Action::Recover => return jobs::Recover::start(self),
            Action::ToggleSparse => return self.sparse_job(),
            Action::ToggleSweep => return self.toggle_sweep(),
            Action::CalibDraws => return self.calib_draws_job(),
            Action::AlphaAuto => return jobs::AlphaAuto::start(self),
            Action::CycleImportance => {
                self.importance = match self.importance {
                    Importance::Statistic => Importance::OwlRatio,
                    Importance::OwlRatio => Importance::AlphaHat,
                    Importance::AlphaHat => Importance::Statistic,
                };
            }
            Action::CycleOverlay => self.cycle_overlay(),
            Action::SweepPrev | Action::SweepNext | Action::SweepJump | Action::SweepRecheck => {
                return self.act_sweep(a)
            }
            Action::Export => {
                let t = self.export_path.clone();
                self.input(InputPurpose::ExportPath, t);
            }
            Action::ExportRecipe => {
                let t = self.recipe_path.clone();
                self.input(InputPurpose::RecipePath, t);
            }
            Action::WriteChart => match self.write_chart() {
                Ok(path) => self.say(format!("wrote the chart to {}", path.display()), Tone::Good),
                Err(e) => self.say(format!("chart not written: {e}"), Tone::Error),
            },
            Action::Open => {
                let t = self.export_path.clone();
                self.input(InputPurpose::OpenPath, t);
            }
            Action::SaveModel => {
                if self.history.iter().all(|h| h.achieved.is_none()) {
                    self.say(
                        "apply masks first (a); then s saves the pruned model",
                        Tone::Error,
                    );
                } else {
                    let t = self.save_path.clone();
                    self.input(InputPurpose::SavePath, t);
                }
            }
            Action::Recalibrate => {
                if self.busy {
                    self.say("a job is running (Esc cancels it)", Tone::Error);
                } else {
                    self.cal = None;
                    self.plan = None;
                    self.block_stats.clear();
                    self.busy = true;
                    return vec![Effect::Job(Job::Calibrate)];
                }
            }
            Action::Cancel => {
                if self.busy {
                    self.say("cancelling…", Tone::Info);
                    return vec![Effect::Cancel];
                }
            }
            Action::Help => self.overlay = Some(Overlay::Help),
            Action::Quit => {
                if self.busy {
                    self.overlay = Some(Overlay::ConfirmQuit);
                } else {
                    return vec![Effect::Quit];
                }
            }
        }
        vec![]
    }

    /// Prune from four disjoint calibration draws (key D).
    fn calib_draws_job(&mut self) -> Vec<Effect> {
        if self.cal.is_none() || self.busy {
            self.say(
                "wait for calibration and the running job (Esc cancels it)",
                Tone::Error,
            );
        } else {
            self.busy = true;
            self.draws = Some((self.params.clone(), Vec::new()));
            let mode = format!("{:?}", self.params.mode).to_lowercase();
            self.say(
                format!("pruning ({mode}) from 4 disjoint calibration draws… (Esc cancels)"),
                Tone::Info,
            );
            return vec![Effect::Job(Job::CalibDraws {
                params: Box::new(self.params.clone()),
                draws: 4,
            })];
        }

        vec![]
    }

    /// The next comparison overlay on the sparsity chart (key o).
    fn cycle_overlay(&mut self) {
        use crate::prune::allocate::Allocation;
        // None → each overlay allocation (`params::overlays`) → the last applied entry (if
        // any) → none, skipping the allocation shown.
        let order: Vec<Option<Allocation>> = std::iter::once(None)
            .chain(params::overlays().map(Some))
            .collect();
        let entry = self
            .history
            .iter()
            .rev()
            .find(|h| h.achieved.is_some())
            .map(|h| h.id);
        if self.overlay_entry.take().is_none() {
            let mut i = order
                .iter()
                .position(|o| *o == self.overlay_alloc)
                .unwrap_or(0);
            loop {
                i = (i + 1) % order.len();
                if order[i] != Some(self.params.alloc.allocation) {
                    break;
                }
            }
            // Wrapping past the last allocation shows the applied entry first.
            if order[i].is_none() && self.overlay_alloc.is_some() {
                self.overlay_entry = entry;
            }
            self.overlay_alloc = order[i];
        }
        self.replan();
    }

    /// The sweep view's keys: move along the points, use one, or re-check it faithfully.
    fn act_sweep(&mut self, a: Action) -> Vec<Effect> {
        match a {
            Action::SweepPrev | Action::SweepNext => {
                if let Some(sw) = &mut self.sweep {
                    let n = sw.values.len();
                    sw.sel = match a {
                        Action::SweepNext => (sw.sel + 1).min(n.saturating_sub(1)),
                        _ => sw.sel.saturating_sub(1),
                    };
                }
            }
            _ => {
                let Some(sw) = &self.sweep else { return vec![] };
                let (param, v) = (sw.param, sw.values[sw.sel]);
                let mut c = self.params.clone();
                param.set(&mut c, v);
                if a == Action::SweepRecheck {
                    c.mode = crate::prune::pipeline::Mode::Faithful;
                }
                self.set_params(c);
                self.view = View::Main;
                if a == Action::SweepRecheck {
                    return self.apply();
                }
                self.say(
                    format!("{} = {v} from the sweep; a applies it", param.sweep_name()),
                    Tone::Good,
                );
            }
        }
        vec![]
    }

    /// Pin the selected block's sparsity up or down, unpin it, or unpin all.
    fn act_pins(&mut self, a: Action) -> Vec<Effect> {
        match a {
            Action::PinUp | Action::PinDown => {
                let Some(plan) = &self.plan else {
                    self.say(
                        "calibration has to finish before blocks can be pinned",
                        Tone::Error,
                    );
                    return vec![];
                };
                let cur = plan.block.get(self.block).copied().unwrap_or(0.0);
                let d = if a == Action::PinUp { 0.01 } else { -0.01 };
                let v = ((cur + d) * 100.0).round() / 100.0;
                let mut c = self.params.clone();
                c.alloc.overrides.retain(|o| o.0 != self.block);
                c.alloc
                    .overrides
                    .push((self.block, v.clamp(0.0, MAX_SPARSITY)));
                c.alloc.overrides.sort_by_key(|o| o.0);
                self.set_params(c);
            }
            Action::Unpin => {
                let mut c = self.params.clone();
                c.alloc.overrides.retain(|o| o.0 != self.block);
                self.set_params(c);
            }
            _ => {
                let mut c = self.params.clone();
                c.alloc.overrides.clear();
                self.set_params(c);
            }
        }
        vec![]
    }

    fn apply(&mut self) -> Vec<Effect> {
        let Some(plan) = self.plan.clone() else {
            self.say(
                "calibration has to finish before masks can be applied",
                Tone::Error,
            );
            return vec![];
        };
        // Ids are never reused, even when a cancelled or superseded apply leaves the history.
        let id = self
            .history
            .iter()
            .map(|h| h.id)
            .max()
            .unwrap_or(0)
            .max(self.last_id)
            + 1;
        self.last_id = id;
        self.history.push(Applied {
            id,
            params: self.params.clone(),
            target: plan.block.clone(),
            n_of_m: plan.n_of_m.clone(),
            achieved: None,
            ppl: None,
            window_nll: None,
            zeroshot: None,
            quantized: vec![],
            recovered: None,
            footprint: None,
            seconds: 0.0,
        });
        self.busy = true;
        let mode = format!("{:?}", self.params.mode).to_lowercase();
        self.say(format!("applying #{id} ({mode})…"), Tone::Info);
        vec![Effect::Job(Job::Apply {
            id,
            params: Box::new(self.params.clone()),
            plan: Box::new(plan),
            prompts: self.prompts.iter().map(|p| p.prompt.clone()).collect(),
        })]
    }

    /// Show the sweep view, starting a sweep when there is none for the current parameters.
    fn toggle_sweep(&mut self) -> Vec<Effect> {
        if self.view == View::Sweep {
            self.view = View::Main;
            return vec![];
        }
        if self.cal.is_none() {
            self.say("calibration has to finish before a sweep", Tone::Error);
            return vec![];
        }
        // The focused parameter when it is p or α; else α where it applies (DLP's own knob), p
        // otherwise.
        let param = match self.field {
            Param::Sparsity => Param::Sparsity,
            Param::Alpha => Param::Alpha,
            _ if Param::Alpha.applies_to(self.params.alloc.allocation) => Param::Alpha,
            _ => Param::Sparsity,
        };
        self.view = View::Sweep;
        let fresh = self
            .sweep
            .as_ref()
            .is_some_and(|s| s.param == param && s.made_with(&self.params));
        if fresh {
            return vec![];
        }
        if self.busy {
            self.say(
                "a job is running (Esc cancels it); w again sweeps",
                Tone::Error,
            );
            return vec![];
        }
        let values: Vec<f64> = match param {
            Param::Sparsity => (0..10).map(|i| (40 + 5 * i) as f64 / 100.0).collect(),
            _ => (0..13).map(|i| (25 * i) as f64 / 1000.0).collect(),
        };
        let mut base = self.params.clone();
        base.mode = crate::prune::pipeline::Mode::Preview;
        let current = param.get(&self.params);
        self.sweep = Some(SweepView {
            param,
            base: base.clone(),
            sel: values
                .iter()
                .enumerate()
                .min_by(|a, b| (a.1 - current).abs().total_cmp(&(b.1 - current).abs()))
                .map(|(i, _)| i)
                .unwrap_or(0),
            ppl: vec![None; values.len()],
            values: values.clone(),
            windows: self.sweep_windows,
            heldout: false,
        });
        self.busy = true;
        self.say(
            format!(
                "sweeping {} in preview on {} evaluation windows… (Esc cancels, finished points stay)",
                param.sweep_name(),
                self.sweep_windows
            ),
            Tone::Info,
        );
        vec![Effect::Job(Job::Sweep {
            param,
            values,
            params: Box::new(base),
            windows: self.sweep_windows,
        })]
    }

    /// The last applied entry whose pruned model the worker holds, if it has finished.
    fn held_entry(&self) -> Option<usize> {
        self.history
            .iter()
            .rev()
            .find(|h| h.achieved.is_some())
            .map(|h| h.id)
    }

    /// Switch the applied model's linears between sparse execution where it is faster (auto)
    /// and dense (off); later applies keep the choice. The next generations and perplexities
    /// run that way (g generates again).
    fn sparse_job(&mut self) -> Vec<Effect> {
        use crate::sparse::SparseMode;
        let (Some(id), Some(cur)) = (self.held_entry(), self.sparse) else {
            self.say(
                "apply first (a): X switches the applied model's sparse execution",
                Tone::Info,
            );
            return vec![];
        };
        let mode = match cur {
            SparseMode::Off => SparseMode::Auto,
            SparseMode::Auto | SparseMode::On => SparseMode::Off,
        };
        self.sparse = Some(mode);
        self.busy = true;
        self.say(
            format!("#{id}: sparse execution {}…", mode.name()),
            Tone::Info,
        );
        vec![Effect::Job(Job::Sparse { mode })]
    }

    /// Score the dense model (once) and the last applied configuration, if it has no score yet.
    fn zeroshot_job(&mut self) -> Vec<Effect> {
        let id = self
            .history
            .iter()
            .rev()
            .find(|h| h.achieved.is_some())
            .map(|h| h.id);
        let pending = self.dense_zeroshot.is_none()
            || id.is_some_and(|id| {
                self.history
                    .iter()
                    .any(|h| h.id == id && h.zeroshot.is_none())
            });
        if !pending {
            self.say(
                "zero-shot accuracy is already measured for the dense model and the last apply",
                Tone::Info,
            );
            return vec![];
        }
        self.busy = true;
        self.say(
            match id {
                Some(id) => format!("scoring zero-shot accuracy: dense, then #{id}… (Esc cancels)"),
                None => {
                    "scoring zero-shot accuracy of the dense model… (a applies, then z scores it)"
                        .to_string()
                }
            },
            Tone::Info,
        );
        vec![Effect::Job(Job::ZeroShot { id })]
    }

    fn generate_jobs(&mut self) -> Vec<Effect> {
        self.busy = true;
        vec![Effect::Job(Job::Generate {
            prompts: self.prompts.iter().map(|p| p.prompt.clone()).collect(),
        })]
    }

    fn submit(&mut self, purpose: InputPurpose, text: String) -> Vec<Effect> {
        match purpose {
            InputPurpose::Value(f) => match f.set_typed(&self.params, &text) {
                Ok(c) => self.set_params(c),
                Err(e) => self.say(e, Tone::Error),
            },
            InputPurpose::ExportPath => {
                self.export_path = text.clone();
                match self.export(&PathBuf::from(&text)) {
                    Ok(()) => self.say(format!("exported to {text}"), Tone::Good),
                    Err(e) => self.say(format!("export failed: {e}"), Tone::Error),
                }
            }
            InputPurpose::RecipePath => {
                self.recipe_path = text.clone();
                match self.export_recipe(&PathBuf::from(&text)) {
                    Ok(()) => self.say(format!("wrote the recipe to {text}"), Tone::Good),
                    Err(e) => self.say(format!("recipe not written: {e}"), Tone::Error),
                }
            }
            InputPurpose::OpenPath => match self.open(&PathBuf::from(&text)) {
                Ok(()) => self.say(format!("restored the parameters of {text}"), Tone::Good),
                Err(e) => self.say(format!("{e}"), Tone::Error),
            },
            InputPurpose::SavePath => {
                self.save_path = text.clone();
                self.busy = true;
                return vec![Effect::Job(Job::SaveModel {
                    dir: PathBuf::from(text),
                })];
            }
            InputPurpose::EditPrompt(i) => {
                if let Some(p) = self.prompts.get_mut(i) {
                    *p = PromptGen {
                        prompt: text,
                        ..Default::default()
                    };
                }
                return self.generate_jobs();
            }
            InputPurpose::AddPrompt => {
                if !text.trim().is_empty() {
                    self.prompts.push(PromptGen {
                        prompt: text,
                        ..Default::default()
                    });
                    self.prompt_sel = self.prompts.len() - 1;
                    return self.generate_jobs();
                }
            }
        }
        vec![]
    }

    /// A streamed generation's start, tokens and end.
    fn on_generation_msg(&mut self, m: Msg) {
        match m {
            Msg::GenStart { pruned, prompt } => {
                if let Some(p) = self.prompts.get_mut(prompt) {
                    if pruned {
                        p.pruned.clear();
                        p.pruned_tokens = 0;
                        p.pruned_secs = None;
                        p.pruned_tok_s = None;
                        p.pruned_started = Some(Instant::now());
                    } else {
                        p.dense.clear();
                        p.dense_tokens = 0;
                        p.dense_secs = None;
                        p.dense_tok_s = None;
                        p.dense_started = Some(Instant::now());
                    }
                }
            }
            Msg::Token {
                pruned,
                prompt,
                text,
            } => {
                if let Some(p) = self.prompts.get_mut(prompt) {
                    if pruned {
                        p.pruned.push_str(&text);
                        p.pruned_tokens += 1;
                        p.pruned_secs = p.pruned_started.map(|t| t.elapsed().as_secs_f64());
                    } else {
                        p.dense.push_str(&text);
                        p.dense_tokens += 1;
                        p.dense_secs = p.dense_started.map(|t| t.elapsed().as_secs_f64());
                    }
                }
            }
            Msg::GenDone {
                pruned,
                prompt,
                tokens,
                tokens_per_s,
            } => {
                if let Some(p) = self.prompts.get_mut(prompt) {
                    let rate = (tokens_per_s > 0.0).then_some(tokens_per_s);
                    if pruned {
                        p.pruned_tokens = tokens;
                        p.pruned_tok_s = rate;
                    } else {
                        p.dense_tokens = tokens;
                        p.dense_tok_s = rate;
                    }
                }
            }
            _ => {}
        }
    }

    /// Zero-shot scores of the dense model or of an applied entry.
    fn on_zeroshot(&mut self, id: Option<usize>, z: ZeroShot) {
        let msg = match id {
            None => format!("dense: zero-shot mean acc {:.4}", z.mean_acc),
            Some(id) => format!(
                "#{id}: zero-shot mean acc {:.4} (dense {})",
                z.mean_acc,
                self.dense_zeroshot
                    .as_ref()
                    .map(|d| format!("{:.4}", d.mean_acc))
                    .unwrap_or("…".into())
            ),
        };
        match id {
            None => self.dense_zeroshot = Some(z),
            Some(id) => {
                if let Some(h) = self.history.iter_mut().find(|h| h.id == id) {
                    h.zeroshot = Some(z);
                }
            }
        }
        self.say(msg, Tone::Good);
    }

    /// Handle a worker message.
    pub fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Status(s) => self.say(s, Tone::Info),
            Msg::ZeroShot { id, z } => self.on_zeroshot(id, *z),
            m @ Msg::AlphaSearched(_) => jobs::AlphaAuto::on_reply(self, m),
            m @ Msg::Quantized { .. } => jobs::Quantize::on_reply(self, m),
            m @ Msg::Recovered { .. } => jobs::Recover::on_reply(self, m),
            m @ (Msg::GenStart { .. } | Msg::Token { .. } | Msg::GenDone { .. }) => {
                self.on_generation_msg(m)
            }
            Msg::Progress(step) => {
                self.job = Some(JobView {
                    stage: step.stage,
                    done: step.done,
                    total: step.total,
                    tokens_per_s: step.tokens_per_s(),
                    eta_s: step.eta_s(),
                });
            }
            Msg::Loaded(s) => {
                self.say(
                    format!(
                        "loaded {} ({} blocks); calibrating…",
                        s.info.source, s.info.blocks
                    ),
                    Tone::Info,
                );
                self.summary = Some(*s);
                self.block = self.block.min(self.n_blocks().saturating_sub(1));
            }
            Msg::BlockScored { block, stats } => {
                if block == self.block_stats.len() {
                    self.block_stats.push(stats);
                }
            }
            Msg::Calibrated { cal, cache_hit } => {
                self.block_stats = cal.blocks.clone();
                self.cache_hit = cache_hit;
                self.say(
                    if cache_hit {
                        "calibration statistics from the cache; ←/→ change the allocation, a applies"
                            .to_string()
                    } else {
                        format!(
                            "calibrated in {:.1}s; ←/→ change the allocation, a applies",
                            cal.seconds
                        )
                    },
                    Tone::Good,
                );
                self.cal = Some(cal);
                self.replan();
            }
            Msg::DensePpl { ppl, window_nll } => {
                self.dense_ppl = Some(ppl);
                self.dense_window_nll = Some(window_nll);
            }
            Msg::Applied {
                id,
                achieved,
                seconds,
            } => {
                if let Some(h) = self.history.iter_mut().find(|h| h.id == id) {
                    h.achieved = Some(achieved);
                    h.seconds = seconds;
                }
                for p in &mut self.prompts {
                    p.pruned.clear();
                }
                self.say(
                    format!("applied #{id} in {seconds:.1}s; evaluating…"),
                    Tone::Info,
                );
            }
            Msg::Draw { k, block, ppl } => {
                if let Some((_, d)) = &mut self.draws {
                    d.push((block, ppl));
                }
                if let Some(p) = ppl {
                    self.say(
                        format!("calibration draw {}: pruned perplexity {p:.2}", k + 1),
                        Tone::Info,
                    );
                }
            }
            Msg::SweepPoint { value, ppl } => {
                if let Some(sw) = &mut self.sweep {
                    if let Some(i) = sw.values.iter().position(|v| *v == value) {
                        sw.ppl[i] = Some(ppl);
                    }
                    if let Some(b) = sw.best() {
                        sw.sel = b;
                    }
                }
            }
            Msg::PrunedPpl {
                id,
                ppl,
                window_nll,
            } => {
                if let Some(h) = self.history.iter_mut().find(|h| h.id == id) {
                    h.ppl = Some(ppl);
                    h.window_nll = Some(window_nll);
                }
                self.say(format!("#{id}: pruned perplexity {ppl:.2}"), Tone::Good);
            }
            Msg::Footprint { id, footprint } => {
                if let Some(h) = self.history.iter_mut().find(|h| h.id == id) {
                    h.footprint = Some(footprint);
                }
                self.sparse = Some(footprint.mode);
            }
            Msg::Superseded(id) => self.history.retain(|h| h.id != id),
            Msg::Saved(dir) => self.say(
                format!("saved the pruned model to {}", dir.display()),
                Tone::Good,
            ),
            Msg::Cancelled(stage) => {
                // A cancelled apply produced nothing: it leaves the history.
                if stage == Stage::Prune {
                    self.history.retain(|h| h.achieved.is_some());
                }
                let hint = if self.cal.is_none() {
                    "; r calibrates again"
                } else {
                    ""
                };
                self.say(
                    format!("cancelled: {} (finished work kept){hint}", stage.label()),
                    Tone::Info,
                )
            }
            Msg::Failed(e) => self.say(e, Tone::Error),
            Msg::Idle => {
                self.busy = false;
                self.job = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_entry_and_bad_values_keep_state() {
        let mut s = State::new(PruneParams::default(), vec!["x".into()]);
        s.act(Action::TypeValue);
        assert!(matches!(s.overlay, Some(Overlay::Input { .. })));
        // Replace the text with an invalid sparsity: refused, state unchanged.
        s.overlay = Some(Overlay::Input {
            purpose: InputPurpose::Value(Param::Sparsity),
            text: "1.3".into(),
            fresh: false,
        });
        s.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(s.params.alloc.sparsity, 0.7);
        assert_eq!(s.status.1, Tone::Error);
        assert!(s.status.0.contains("sparsity must be in [0, 1)"));
    }

    fn press(s: &mut State, code: KeyCode) -> Vec<Effect> {
        s.on_key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    #[test]
    fn typed_entry_replaces_the_shown_value() {
        let mut s = State::new(PruneParams::default(), vec!["x".into()]);
        s.field = Param::Tau;
        press(&mut s, KeyCode::Enter); // shows "inf"
        assert!(
            matches!(&s.overlay, Some(Overlay::Input { text, fresh: true, .. }) if text == "inf")
        );
        for c in "0.3".chars() {
            press(&mut s, KeyCode::Char(c));
        }
        press(&mut s, KeyCode::Enter);
        assert_eq!(s.params.alloc.tau, Some(0.3), "{:?}", s.status);
        // Backspace on the shown value clears it; an arrow keeps it for editing.
        s.field = Param::Sparsity;
        press(&mut s, KeyCode::Enter);
        press(&mut s, KeyCode::Backspace);
        assert!(matches!(&s.overlay, Some(Overlay::Input { text, .. }) if text.is_empty()));
        press(&mut s, KeyCode::Esc);
        press(&mut s, KeyCode::Enter);
        let Some(Overlay::Input { text: shown, .. }) = s.overlay.clone() else {
            panic!("no text entry")
        };
        press(&mut s, KeyCode::End);
        press(&mut s, KeyCode::Char('1'));
        press(&mut s, KeyCode::Enter);
        let want: f64 = format!("{shown}1").parse().unwrap();
        assert_eq!(s.params.alloc.sparsity, want, "{:?}", s.status);
    }

    #[test]
    fn keys_return_effects() {
        let mut s = State::new(PruneParams::default(), vec!["x".into()]);
        // Busy (loading): Esc cancels, q asks first.
        assert!(matches!(
            press(&mut s, KeyCode::Esc).as_slice(),
            [Effect::Cancel]
        ));
        assert!(press(&mut s, KeyCode::Char('q')).is_empty());
        assert_eq!(s.overlay, Some(Overlay::ConfirmQuit));
        assert!(matches!(
            press(&mut s, KeyCode::Char('y')).as_slice(),
            [Effect::Quit]
        ));
        // Idle: q quits at once, r calibrates again, Esc has nothing to cancel.
        s.overlay = None;
        s.on_msg(Msg::Idle);
        assert!(press(&mut s, KeyCode::Esc).is_empty());
        assert!(matches!(
            press(&mut s, KeyCode::Char('r')).as_slice(),
            [Effect::Job(Job::Calibrate)]
        ));
        s.on_msg(Msg::Idle);
        assert!(matches!(
            press(&mut s, KeyCode::Char('q')).as_slice(),
            [Effect::Quit]
        ));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert!(matches!(s.on_key(ctrl_c).as_slice(), [Effect::Quit]));
    }
}
