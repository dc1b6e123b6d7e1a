//! The phases of a cluster-wide key rotation, computed from one [`Snapshot`](crate::Snapshot).
//!
//! Make-before-break, as the mesh's [`Keys`] express it:
//! 1. `next` written (by `scrambler rotate`): every node accepts `current` and `next`
//!    inbound, still sends with `current`, and acknowledges `next` once its dataplane has
//!    the inbound SAs;
//! 2. every *live* node (registered) has acknowledged: every node sends with `next`;
//! 3. `graceSecs` after the switch: `current` goes.
//!
//! Nobody switches before every live node has acknowledged: that order is what keeps a node
//! from sending with an SPI a peer cannot receive yet. Once the switch is recorded
//! (`switchedAt`) it sticks, so a node joining late does not switch the cluster back; a
//! joiner reads the state before it registers, so it installs both generations inbound
//! before any peer can send to it.

use crate::record::KeyState;
use scrambler_core::{Generation, Keys};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Where a rotation stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "phase")]
pub enum Phase {
    /// No rotation.
    Stable {
        /// The generation in use.
        generation: Generation,
    },
    /// Installing `next` inbound; waiting for acknowledgements.
    Installing {
        /// From.
        current: Generation,
        /// To.
        next: Generation,
        /// Live nodes that have not acknowledged yet.
        waiting_for: Vec<String>,
    },
    /// Sending with `next`; `current` still accepted until the grace period ends.
    Switched {
        /// Old generation, still accepted.
        current: Generation,
        /// New generation, used to send.
        next: Generation,
        /// Unix time at which `current` is retired (`None`: not recorded yet).
        retire_at: Option<u64>,
    },
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Phase::Stable { generation } => write!(f, "stable (generation {generation})"),
            Phase::Installing {
                current,
                next,
                waiting_for,
            } => write!(
                f,
                "rotating {current}→{next}: installing inbound, waiting for {} node(s): {}",
                waiting_for.len(),
                waiting_for.join(", ")
            ),
            Phase::Switched {
                current, next, ..
            } => write!(
                f,
                "rotating {current}→{next}: sending with {next}, {current} accepted until the grace period ends"
            ),
        }
    }
}

/// The keys a node programs, and the phase, for key state `ks`, the live nodes and the
/// nodes that acknowledged `ks.next`.
pub fn desired(ks: &KeyState, live: &BTreeSet<String>, acked: &BTreeSet<String>) -> (Keys, Phase) {
    let Some(next) = ks.next else {
        return (
            Keys::single(ks.current),
            Phase::Stable {
                generation: ks.current,
            },
        );
    };
    let both = BTreeSet::from([ks.current, next]);
    let waiting_for: Vec<String> = live.difference(acked).cloned().collect();
    if ks.switched_at.is_some() || waiting_for.is_empty() {
        (
            Keys { tx: next, rx: both },
            Phase::Switched {
                current: ks.current,
                next,
                retire_at: ks.switched_at.map(|t| t.saturating_add(ks.grace_secs)),
            },
        )
    } else {
        (
            Keys {
                tx: ks.current,
                rx: both,
            },
            Phase::Installing {
                current: ks.current,
                next,
                waiting_for,
            },
        )
    }
}

/// What an agent writes to move the rotation on, after its dataplane has `keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do.
    None,
    /// Acknowledge `next` (its inbound SAs are installed here).
    Ack(Generation),
    /// Record the switch at this time (compare-and-swap on the key state).
    RecordSwitch(KeyState),
    /// Retire the old generation (compare-and-swap; acknowledgements go too).
    Retire(KeyState),
}

/// The step this node takes, given its name, the phase it has programmed, who
/// acknowledged, and the time.
pub fn step(
    ks: &KeyState,
    me: &str,
    programmed: &Keys,
    acked: &BTreeSet<String>,
    phase: &Phase,
    now: u64,
) -> Step {
    let Some(next) = ks.next else {
        return Step::None;
    };
    if programmed.rx.contains(&next) && !acked.contains(me) {
        return Step::Ack(next);
    }
    match phase {
        Phase::Switched {
            retire_at: None, ..
        } => Step::RecordSwitch(KeyState {
            switched_at: Some(now),
            ..ks.clone()
        }),
        Phase::Switched {
            retire_at: Some(t), ..
        } if now >= *t && programmed.tx == next => Step::Retire(KeyState {
            current: next,
            next: None,
            switched_at: None,
            grace_secs: ks.grace_secs,
        }),
        _ => Step::None,
    }
}

/// The key state `scrambler rotate` writes: the next generation, from a stable state.
pub fn begin(ks: &KeyState, grace_secs: u64) -> scrambler_core::Result<KeyState> {
    if let Some(n) = ks.next {
        return Err(scrambler_core::Error::TryAgainLater(format!(
            "a rotation {}→{n} is in progress: wait until it finishes (`scrambler status`)",
            ks.current
        )));
    }
    let next = ks.current.checked_add(1).ok_or_else(|| {
        scrambler_core::Error::mesh(format!(
            "key generation {} is the last one: no rotation can follow it",
            ks.current
        ))
    })?;
    Ok(KeyState {
        current: ks.current,
        next: Some(next),
        grace_secs,
        switched_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nobody_switches_before_every_live_node_acknowledged() {
        let ks = begin(&KeyState::default(), 10).unwrap();
        let live = set(&["a", "b", "c"]);
        let (k, p) = desired(&ks, &live, &set(&["a", "b"]));
        assert_eq!((k.tx, k.rx.len()), (1, 2));
        assert!(matches!(p, Phase::Installing { ref waiting_for, .. } if waiting_for == &["c"]));
        // a dead node's acknowledgement does not count, a missing live one blocks
        let (k, _) = desired(&ks, &live, &set(&["a", "b", "zz"]));
        assert_eq!(k.tx, 1);
        let (k, p) = desired(&ks, &live, &set(&["a", "b", "c"]));
        assert_eq!(k.tx, 2);
        assert!(matches!(
            p,
            Phase::Switched {
                retire_at: None,
                ..
            }
        ));
        // recorded switch sticks when a new node shows up
        let sw = KeyState {
            switched_at: Some(100),
            ..ks.clone()
        };
        let (k, p) = desired(&sw, &set(&["a", "b", "c", "d"]), &live);
        assert_eq!(k.tx, 2);
        assert_eq!(
            p,
            Phase::Switched {
                current: 1,
                next: 2,
                retire_at: Some(110)
            }
        );
    }

    #[test]
    fn steps_ack_then_record_then_retire_after_grace() {
        let ks = begin(&KeyState::default(), 10).unwrap();
        let live = set(&["a", "b"]);
        let (k, p) = desired(&ks, &live, &set(&[]));
        assert_eq!(step(&ks, "a", &k, &set(&[]), &p, 50), Step::Ack(2));
        // acknowledged, still waiting for b
        assert_eq!(step(&ks, "a", &k, &set(&["a"]), &p, 50), Step::None);
        let (k, p) = desired(&ks, &live, &live);
        let Step::RecordSwitch(sw) = step(&ks, "a", &k, &live, &p, 50) else {
            panic!("expected the switch to be recorded")
        };
        assert_eq!(sw.switched_at, Some(50));
        let (k, p) = desired(&sw, &live, &live);
        assert_eq!(step(&sw, "a", &k, &live, &p, 59), Step::None);
        let Step::Retire(done) = step(&sw, "a", &k, &live, &p, 60) else {
            panic!("expected retirement")
        };
        assert_eq!((done.current, done.next), (2, None));
        assert!(begin(&sw, 10).is_err());
        assert_eq!(begin(&done, 10).unwrap().next, Some(3));
    }
}
