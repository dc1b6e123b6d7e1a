//! Coalescing change notifications: the first change arms a timer; every further change
//! pushes it back by `quiet`, but never past `max_delay` after the first. So a burst of
//! registrations (100 nodes joining at once) costs one or a few reconciles, and a steady
//! trickle of changes still gets reconciled at least every `max_delay`.

use std::time::Duration;
use tokio::time::Instant;

/// A debounce timer.
#[derive(Debug, Clone)]
pub struct Debouncer {
    quiet: Duration,
    max_delay: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debouncer {
    /// Fires `quiet` after the last change, at most `max_delay` after the first.
    pub fn new(quiet: Duration, max_delay: Duration) -> Self {
        Debouncer {
            quiet,
            max_delay: max_delay.max(quiet),
            first: None,
            last: None,
        }
    }

    /// A change happened at `now`.
    pub fn poke(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// A change that should be handled right away (startup, a timer that came due).
    pub fn poke_now(&mut self, now: Instant) {
        self.first = Some(now - self.max_delay);
        self.last = Some(now);
    }

    /// When to act, if a change is pending.
    pub fn deadline(&self) -> Option<Instant> {
        match (self.first, self.last) {
            (Some(f), Some(l)) => Some((l + self.quiet).min(f + self.max_delay)),
            _ => None,
        }
    }

    /// The pending changes are being handled.
    pub fn fire(&mut self) {
        self.first = None;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_waits_for_quiet_but_not_past_the_maximum() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = Debouncer::new(ms(100), ms(1000));
        assert_eq!(d.deadline(), None);
        d.poke(t0);
        assert_eq!(d.deadline(), Some(t0 + ms(100)));
        d.poke(t0 + ms(50));
        assert_eq!(d.deadline(), Some(t0 + ms(150)));
        for i in 0..100 {
            d.poke(t0 + ms(950 + i));
        }
        assert_eq!(d.deadline(), Some(t0 + ms(1000)));
        d.fire();
        assert_eq!(d.deadline(), None);
        d.poke_now(t0 + ms(2000));
        assert_eq!(d.deadline(), Some(t0 + ms(2000)));
    }
}
