//! Progress lines on stderr for the headless commands: rewritten in place on a terminal,
//! throttled plain lines otherwise (CI logs, pipes). Never on stdout, which carries results.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

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

    /// A `label done/total` step with rate and ETA since `start`; throttled.
    pub fn step(
        &mut self,
        label: &str,
        done: usize,
        total: usize,
        unit: &str,
        units_per_step: usize,
        start: Instant,
    ) {
        if self.quiet {
            return;
        }
        let now = Instant::now();
        let every = if self.tty {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(5)
        };
        if done < total && self.last.is_some_and(|l| now - l < every) {
            return;
        }
        self.last = Some(now);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let rate = (done * units_per_step) as f64 / secs;
        let eta = if done > 0 {
            secs * (total - done) as f64 / done as f64
        } else {
            0.0
        };
        let line = format!("{label} {done}/{total}  {rate:.0} {unit}/s  ETA {eta:.0}s");
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            self.dirty = true;
            if done == total {
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
