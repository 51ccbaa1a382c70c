//! Progress lines on stderr for the headless commands: rewritten in place on a terminal,
//! throttled plain lines otherwise (CI logs, pipes). Never on stdout, which carries results.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use crate::experiment::{Notice, Observer, Stage, Step};

pub struct Progress {
    tty: bool,
    quiet: bool,
    last: Option<Instant>,
    dirty: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            quiet,
            last: None,
            dirty: false,
        }
    }

    /// A status message (always printed unless quiet).
    pub fn status(&mut self, msg: &str) {
        if self.quiet {
            return;
        }
        self.clear();
        eprintln!("{msg}");
    }

    /// A `label done/total` line with tokens/s and ETA; throttled (every 100 ms on a terminal,
    /// 5 s in logs), the last step always shown.
    pub fn step(&mut self, s: &Step) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if s.done < s.total && self.last.is_some_and(|l| now - l < every) {
            return;
        }
        self.last = Some(now);
        let rate = match s.stage {
            Stage::ZeroShot => format!("{:.1} req/s  ", s.per_s()),
            _ => String::new(),
        };
        let line = format!(
            "{} {}/{}  {rate}{:.0} tok/s  ETA {:.0}s",
            s.stage.label(),
            s.done,
            s.total,
            s.tokens_per_s(),
            s.eta_s()
        );
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            self.dirty = true;
            if s.done == s.total {
                self.clear();
            }
        } else {
            eprintln!("{line}");
        }
        let _ = std::io::stderr().flush();
    }

    fn clear(&mut self) {
        if self.dirty {
            eprint!("\r\x1b[2K");
            self.dirty = false;
        }
    }
}

/// The headless commands observe an experiment through their progress lines; they never cancel
/// (Ctrl-C ends the process).
impl Observer for Progress {
    fn status(&mut self, msg: &str) {
        Progress::status(self, msg)
    }

    fn notice(&mut self, n: Notice) {
        Progress::status(self, &notice_line(n))
    }

    fn step(&mut self, s: Step) -> std::ops::ControlFlow<()> {
        // Generation shows its text, not a step count.
        if s.tokens_per_step > 0 {
            Progress::step(self, &s);
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// A run's remark as the command line says it: with the flag that changes what happened.
pub fn notice_line(n: Notice) -> String {
    match n {
        Notice::StatsFromCache => format!("{n} (--no-stats-cache recomputes them)"),
        Notice::DenseFromCache => format!("{n} (--no-cache measures it again)"),
        Notice::DenseZeroShotFromCache => format!("{n} (--no-cache scores again)"),
        Notice::AlphaChosen { .. } => format!("--alpha auto: {n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_name_their_flags_on_the_command_line_only() {
        let n = Notice::AlphaChosen {
            alpha: 0.15,
            windows: 8,
        };
        assert_eq!(
            notice_line(n),
            "--alpha auto: α = 0.15 (lowest perplexity on 8 held-out calibration windows)"
        );
        assert!(!n.to_string().contains("--"));
        assert_eq!(
            notice_line(Notice::StatsFromCache),
            "calibration statistics from the cache (--no-stats-cache recomputes them)"
        );
    }
}
