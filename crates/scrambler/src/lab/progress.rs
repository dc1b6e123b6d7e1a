//! Progress of a long wait (the lab VM's boot) on stderr: on a terminal one line rewritten
//! in place every tick, otherwise a line at the start, one when the wait's stage changes
//! or every [`QUIET_INTERVAL`], and one at the end, so a redirected log gets no control
//! characters and no flood.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a redirected stderr hears that the wait goes on.
pub const QUIET_INTERVAL: Duration = Duration::from_secs(15);

/// A wait being shown; [`finish`](Self::finish) ends its line.
pub struct Progress {
    what: String,
    started: Instant,
    last_line: Instant,
    stage: String,
    terminal: bool,
}

impl Progress {
    /// Starts showing the wait `what` (e.g. "booting the lab VM").
    pub fn start(what: impl Into<String>) -> Self {
        let p = Progress {
            what: what.into(),
            started: Instant::now(),
            last_line: Instant::now(),
            stage: String::new(),
            terminal: std::io::stderr().is_terminal(),
        };
        match p.terminal {
            true => p.rewrite("0s"),
            false => eprintln!("[lab] {}", p.what),
        }
        p
    }

    /// How long the wait has lasted.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Shows that the wait goes on, at `stage` (what it waits for now; may be empty).
    pub fn tick(&mut self, stage: &str) {
        let secs = self.started.elapsed().as_secs();
        let changed = stage != self.stage;
        self.stage = stage.to_string();
        let state = match stage.is_empty() {
            true => format!("{secs}s"),
            false => format!("{secs}s, {stage}"),
        };
        if self.terminal {
            self.rewrite(&state);
        } else if changed || self.last_line.elapsed() >= QUIET_INTERVAL {
            eprintln!("[lab] {}: {state}", self.what);
            self.last_line = Instant::now();
        }
    }

    /// Ends the wait with `outcome` (e.g. "done") and its duration.
    pub fn finish(self, outcome: &str) {
        let line = format!(
            "{outcome} after {:.1}s",
            self.started.elapsed().as_secs_f64()
        );
        match self.terminal {
            true => {
                self.rewrite(&line);
                eprintln!();
            }
            false => eprintln!("[lab] {}: {line}", self.what),
        }
    }

    fn rewrite(&self, state: &str) {
        // carriage return and "erase line": only ever written to a terminal
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K[lab] {}: {state}", self.what);
        let _ = err.flush();
    }
}
