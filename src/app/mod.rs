//! The TUI's single owner of state and its `update`: keys and worker messages come in, the state
//! changes, and jobs for the worker go out. Nothing here draws or touches the terminal, so every
//! behaviour can be tested (and benchmarked) without one.

mod export;
pub mod jobs;
pub mod keys;
mod messages;
pub mod params;
mod views;

pub use export::ChartError;
pub use messages::{Footprint, Job, Msg, Stage, Step, Summary};
pub use views::compare::{first_difference, PromptGen, DEFAULT_PROMPTS};
pub use views::sweep::SweepView;

use std::path::PathBuf;
use std::sync::Arc;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

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

    /// What a key does: a background job's request (one type each, `jobs`), a view's own key
    /// (`views`), a dialog, or the session's cancel, help and quit.
    pub fn act(&mut self, a: Action) -> Vec<Effect> {
        use Action as A;
        match a {
            A::Apply => return jobs::Apply::start(self),
            A::Generate => return jobs::Generate::start(self),
            A::ZeroShot => return jobs::ZeroShot::start(self),
            A::Quantize => return jobs::Quantize::start(self),
            A::Recover => return jobs::Recover::start(self),
            A::ToggleSparse => return jobs::Sparse::start(self),
            A::ToggleSweep => return jobs::Sweep::start(self),
            A::CalibDraws => return jobs::CalibDraws::start(self),
            A::AlphaAuto => return jobs::AlphaAuto::start(self),
            A::Recalibrate => return jobs::Calibrate::start(self),
            A::FieldNext
            | A::FieldPrev
            | A::Inc
            | A::Dec
            | A::IncCoarse
            | A::DecCoarse
            | A::TypeValue
            | A::BlockNext
            | A::BlockPrev
            | A::PinUp
            | A::PinDown
            | A::Unpin
            | A::UnpinAll
            | A::CycleImportance
            | A::CycleOverlay => self.act_charts(a),
            A::ToggleCompare
            | A::PromptNext
            | A::PromptPrev
            | A::EditPrompt
            | A::AddPrompt
            | A::DeletePrompt => self.act_compare(a),
            A::SweepPrev | A::SweepNext | A::SweepJump | A::SweepRecheck => {
                return self.act_sweep(a)
            }
            A::Export | A::ExportRecipe | A::WriteChart | A::Open => self.act_files(a),
            A::SaveModel => jobs::SaveModel::ask(self),
            A::Cancel => {
                if self.busy {
                    self.say("cancelling…", Tone::Info);
                    return vec![Effect::Cancel];
                }
            }
            A::Help => self.overlay = Some(Overlay::Help),
            A::Quit => {
                if self.busy {
                    self.overlay = Some(Overlay::ConfirmQuit);
                } else {
                    return vec![Effect::Quit];
                }
            }
        }
        vec![]
    }

    /// The keys of the file dialogs (export, recipe, open) and of key P's chart.
    fn act_files(&mut self, a: Action) {
        match a {
            Action::Export | Action::Open => {
                let t = self.export_path.clone();
                let purpose = match a {
                    Action::Export => InputPurpose::ExportPath,
                    _ => InputPurpose::OpenPath,
                };
                self.input(purpose, t);
            }
            Action::ExportRecipe => {
                let t = self.recipe_path.clone();
                self.input(InputPurpose::RecipePath, t);
            }
            Action::WriteChart => match self.write_chart() {
                Ok(path) => self.say(format!("wrote the chart to {}", path.display()), Tone::Good),
                Err(e) => self.say(format!("chart not written: {e}"), Tone::Error),
            },
            _ => {}
        }
    }

    /// The last applied entry whose pruned model the worker holds, if it has finished.
    fn held_entry(&self) -> Option<usize> {
        self.history
            .iter()
            .rev()
            .find(|h| h.achieved.is_some())
            .map(|h| h.id)
    }

    fn submit(&mut self, purpose: InputPurpose, text: String) -> Vec<Effect> {
        let is_path = matches!(
            purpose,
            InputPurpose::ExportPath
                | InputPurpose::RecipePath
                | InputPurpose::OpenPath
                | InputPurpose::SavePath
        );
        if is_path && text.trim().is_empty() {
            // Refused here rather than left to the file system's "failed to persist" message.
            self.say("the path is empty: type a file name", Tone::Error);
            return Vec::new();
        }
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
                self.save_path = text;
                return jobs::SaveModel::start(self);
            }
            InputPurpose::EditPrompt(i) => {
                if let Some(p) = self.prompts.get_mut(i) {
                    *p = PromptGen {
                        prompt: text,
                        ..Default::default()
                    };
                }
                return jobs::Generate::start(self);
            }
            InputPurpose::AddPrompt => {
                if !text.trim().is_empty() {
                    self.prompts.push(PromptGen {
                        prompt: text,
                        ..Default::default()
                    });
                    self.prompt_sel = self.prompts.len() - 1;
                    return jobs::Generate::start(self);
                }
            }
        }
        vec![]
    }

    /// Handle a worker message: a job's reply goes to its job (`jobs::on_reply`); progress,
    /// status and the end of a job are the state's own.
    pub fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Status(s) => self.say(s, Tone::Info),
            Msg::Progress(step) => {
                self.job = Some(JobView {
                    stage: step.stage,
                    done: step.done,
                    total: step.total,
                    tokens_per_s: step.tokens_per_s(),
                    eta_s: step.eta_s(),
                });
            }
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
            m => jobs::on_reply(self, m),
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
    fn an_empty_path_is_refused_with_a_plain_message() {
        let mut s = State::new(PruneParams::default(), vec!["x".into()]);
        for purpose in [
            InputPurpose::ExportPath,
            InputPurpose::RecipePath,
            InputPurpose::OpenPath,
        ] {
            s.status = (String::new(), Tone::Info);
            assert!(s.submit(purpose, "  ".into()).is_empty());
            assert_eq!(s.status.0, "the path is empty: type a file name");
            assert_eq!(s.status.1, Tone::Error);
        }
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

    #[test]
    fn keys_request_jobs_and_replies_reach_them() {
        use crate::sparse::SparseMode;
        let mut s = State::new(PruneParams::default(), vec!["x".into()]);
        // Loading: r is refused with the reason; s has nothing to save yet.
        assert!(s.act(Action::Recalibrate).is_empty());
        assert_eq!(s.status.1, Tone::Error);
        assert!(s.act(Action::SaveModel).is_empty());
        assert!(s.status.0.starts_with("apply masks first"));
        s.on_msg(Msg::Idle);
        assert!(!s.busy);
        let fx = s.act(Action::Generate);
        assert!(
            matches!(fx.as_slice(), [Effect::Job(Job::Generate { prompts })] if prompts == &["x"])
        );
        assert!(s.busy);
        // Each reply goes to its job.
        s.on_msg(Msg::GenStart {
            pruned: true,
            prompt: 0,
        });
        s.on_msg(Msg::Token {
            pruned: true,
            prompt: 0,
            text: "a".into(),
        });
        assert_eq!(
            (s.prompts[0].pruned.as_str(), s.prompts[0].pruned_tokens),
            ("a", 1)
        );
        s.on_msg(Msg::Footprint {
            id: 9,
            footprint: Footprint {
                mode: SparseMode::Off,
                sparse_linears: 0,
                linears: 7,
                bytes: 1,
                dense_bytes: 1,
            },
        });
        assert_eq!(s.sparse, Some(SparseMode::Off));
        s.on_msg(Msg::Saved(PathBuf::from("out")));
        assert_eq!(
            s.status,
            ("saved the pruned model to out".into(), Tone::Good)
        );
        s.on_msg(Msg::Idle);
        assert!(!s.busy && s.job.is_none());
    }
}
