//! The plugin binary's logger: each tracing event at or above a level is one line on
//! stderr (`WARN scrambler_ipam::store: corrupt lease file path="…"`); spans are not
//! recorded.
//!
//! A one-shot plugin process logs a handful of lines at most, yet tracing-subscriber's
//! formatter brings its span registry, whose tables (sized for thousands of threads) are
//! allocated and touched at start-up: page faults that cost more than the rest of the
//! plugin's own start-up. The library itself only emits events; embedders install
//! whatever subscriber they use.

use std::fmt::{Debug, Write as _};
use std::io::Write as _;
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Writes events at or above `max` to stderr.
#[derive(Debug, Clone, Copy)]
pub struct StderrLogger {
    max: LevelFilter,
}

impl StderrLogger {
    /// A logger for events up to `max` verbosity.
    pub fn new(max: LevelFilter) -> Self {
        StderrLogger { max }
    }

    /// The line an event is written as (without the newline).
    fn line(event: &Event<'_>) -> String {
        let meta = event.metadata();
        let mut line = format!("{} {}:", meta.level(), meta.target());
        event.record(&mut Fields(&mut line));
        line
    }
}

impl Subscriber for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= &self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.max)
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Self::line(event);
        line.push('\n');
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

/// Appends ` message key=value …` to a line.
struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Collects lines instead of writing them, to see what [`StderrLogger`] would print.
    struct Capture(StderrLogger, Arc<Mutex<Vec<String>>>);

    impl Subscriber for Capture {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            self.0.enabled(m)
        }
        fn new_span(&self, s: &Attributes<'_>) -> Id {
            self.0.new_span(s)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            self.1.lock().unwrap().push(StderrLogger::line(e));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn events_at_or_above_the_level_become_one_line() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sub = Capture(StderrLogger::new(LevelFilter::WARN), lines.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(path = "/x/10.0.0.2", count = 3, "corrupt lease file");
            tracing::info!("not shown");
            tracing::error!(reason = %"bad JSON", "gave up");
        });
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("WARN scrambler_ipam::log::tests:"));
        assert!(lines[0].ends_with(r#" corrupt lease file path="/x/10.0.0.2" count=3"#));
        assert!(
            lines[1].ends_with(" gave up reason=bad JSON"),
            "{}",
            lines[1]
        );
    }
}
