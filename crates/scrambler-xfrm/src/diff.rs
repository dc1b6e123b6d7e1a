//! Diffing desired XFRM objects against a dump of the namespace, into ordered phases of
//! netlink requests.
//!
//! Only owned objects are ever updated or deleted: a policy is Scrambler's when its
//! priority lies in the configured band and its if_id is Scrambler's or 0; a state when
//! its reqid carries the reqid base and its if_id is Scrambler's. A desired object whose
//! kernel identity is held by a foreign object is a conflict: reconcile stops before
//! changing anything.
//!
//! Phases keep traffic fail-closed and make-before-break:
//! 1. guard and bypass policies;
//! 2. inbound states (new generations before anyone sends with them);
//! 3. mesh policies;
//! 4. outbound states;
//! 5. (after routes) deletions: outbound states, mesh policies, inbound states, guard.

use crate::config::XfrmConfig;
use crate::model::{delete_state_msg, family, FoundPolicy, FoundState, PolicyKey, StateKey};
use crate::nl::{Request, Scrubbed};
use crate::plan::Desired;
use scrambler_core::{Error, ReconcileReport, Result};
use std::collections::HashMap;

/// Requests in phase order, and what they amount to.
#[derive(Default)]
pub(crate) struct Changes {
    /// Phases 1–4 (adds and updates) and 5 (deletes), each sent as one pipelined batch.
    pub phases: [Vec<Request>; 5],
    /// Counts for the report.
    pub report: ReconcileReport,
    /// Outbound states (peer id, generation) lost while their generation was live, or
    /// found with changed attributes (then deleted): not (re-)created under the same key
    /// (see [`diff`]).
    pub lost_outbound: Vec<(u16, u32)>,
}

impl Changes {
    /// Number of requests.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.phases.iter().map(Vec::len).sum()
    }
}

/// True when the policy is Scrambler's. One whose selector names an interface (`dev`)
/// is Scrambler's only of the exact shape of the IPv6 interface bypass
/// ([`Desired::plan_interface_bypass`]); one whose selector names a protocol or port only
/// of the exact shape of node encryption's bypass allow ([`is_host_bypass`]).
pub(crate) fn owns_policy(cfg: &XfrmConfig, p: &FoundPolicy) -> bool {
    !p.unusual
        && cfg.owns_priority(p.policy.priority)
        && (p.policy.key.if_id == cfg.if_id || p.policy.key.if_id == 0)
        && (p.policy.key.ifindex == 0 || is_interface_bypass(cfg, &p.policy))
        && (p.policy.key.l4.is_any() || is_host_bypass(cfg, &p.policy))
}

/// `out <host> → <host> proto tcp|udp sport N` (or `dport N`), if_id 0, allow without
/// template, at the bypass priority: node encryption's bypass allow (see
/// [`Desired::plan_node_encryption`]).
fn is_host_bypass(cfg: &XfrmConfig, p: &crate::model::Policy) -> bool {
    let k = &p.key;
    let host = |n: &ipnet::IpNet| n.prefix_len() == n.max_prefix_len();
    k.dir == crate::model::Dir::Out
        && k.if_id == 0
        && k.ifindex == 0
        && host(&k.src)
        && host(&k.dst)
        && matches!(k.l4.proto, 6 | 17)
        && (k.l4.sport == 0) != (k.l4.dport == 0)
        && !p.block
        && p.tmpl.is_none()
        && p.priority == cfg.priority(crate::config::PRIO_BYPASS)
}

/// `out ::/0 → ::/0 dev <any>`, if_id 0, allow without template, at the bypass priority.
fn is_interface_bypass(cfg: &XfrmConfig, p: &crate::model::Policy) -> bool {
    let any6 = ipnet::IpNet::V6(Default::default());
    let k = &p.key;
    k.dir == crate::model::Dir::Out
        && k.if_id == 0
        && k.src == any6
        && k.dst == any6
        && !p.block
        && p.tmpl.is_none()
        && p.priority == cfg.priority(crate::config::PRIO_BYPASS)
}

/// True when the state is Scrambler's.
pub(crate) fn owns_state(cfg: &XfrmConfig, s: &FoundState) -> bool {
    cfg.peer_of_reqid(s.shape.reqid).is_some() && s.shape.if_id == cfg.if_id
}

/// Computes the requests turning `found` into `desired`. With `states == false` states
/// are neither added nor deleted.
pub(crate) fn diff(
    cfg: &XfrmConfig,
    desired: &Desired,
    policies: &[FoundPolicy],
    states: &[FoundState],
    manage_states: bool,
) -> Result<Changes> {
    let mut ch = Changes::default();
    diff_policies(cfg, desired, policies, &mut ch)?;
    if manage_states {
        diff_states(cfg, desired, states, &mut ch)?;
    }
    Ok(ch)
}

fn diff_policies(
    cfg: &XfrmConfig,
    desired: &Desired,
    found: &[FoundPolicy],
    ch: &mut Changes,
) -> Result<()> {
    let by_key: HashMap<&PolicyKey, &FoundPolicy> = found
        .iter()
        .filter(|p| !p.unusual)
        .map(|p| (&p.policy.key, p))
        .collect();
    // allows before blocks: a block added first would refuse, for a moment, what its
    // allows let through (node encryption's bypass ports: the datastore's connections)
    let mut order: Vec<_> = desired.policies.iter().collect();
    order.sort_by_key(|(_, p)| p.block);
    for (key, want) in order {
        let phase = if want.tmpl.is_some() { 2 } else { 0 };
        match by_key.get(key) {
            Some(f) if !owns_policy(cfg, f) => {
                return Err(Error::AlreadyExists {
                    object: key.to_string(),
                    reason: format!(
                        "a policy with priority {} outside Scrambler's band holds it; \
                         Scrambler does not touch it",
                        f.policy.priority
                    ),
                })
            }
            Some(f) if f.policy == *want => ch.report.unchanged += 1,
            Some(_) => {
                ch.phases[phase].push(Request {
                    msg: Scrubbed(want.update_msg()),
                    op: "update xfrm policy",
                    object: key.to_string(),
                });
                ch.report.updated += 1;
            }
            None => {
                ch.phases[phase].push(Request {
                    msg: Scrubbed(want.add_msg()),
                    op: "add xfrm policy",
                    object: key.to_string(),
                });
                ch.report.added += 1;
            }
        }
    }
    // stale: mesh policies before guard policies; a departed peer's underlay block stays
    // (a tombstone: its pods' connections to that address must not go on in cleartext)
    let mut stale: Vec<&FoundPolicy> = found
        .iter()
        .filter(|p| owns_policy(cfg, p) && !desired.policies.contains_key(&p.policy.key))
        .filter(|p| !desired.is_underlay_tombstone(cfg, &p.policy))
        .collect();
    stale.sort_by_key(|p| p.policy.tmpl.is_none());
    for p in stale {
        ch.phases[4].push(Request {
            msg: Scrubbed(p.delete_msg()),
            op: "delete xfrm policy",
            object: p.policy.key.to_string(),
        });
        ch.report.removed += 1;
    }
    Ok(())
}

/// True when the inbound state of `out`'s peer and generation is installed and ours.
fn peer_kept_state(
    cfg: &XfrmConfig,
    desired: &Desired,
    out: &crate::model::DesiredState,
    found: &HashMap<&StateKey, &FoundState>,
) -> bool {
    desired
        .states
        .values()
        .filter(|s| s.inbound && !s.kept && s.peer == out.peer && s.generation == out.generation)
        .any(|s| found.get(&s.shape.key).is_some_and(|f| owns_state(cfg, f)))
}

fn diff_states(
    cfg: &XfrmConfig,
    desired: &Desired,
    found: &[FoundState],
    ch: &mut Changes,
) -> Result<()> {
    let by_key: HashMap<&StateKey, &FoundState> = found.iter().map(|s| (&s.shape.key, s)).collect();
    // key material of owned states: a desired outbound state whose key is among them
    // under another (daddr, SPI) — the pair's underlay address changed — has sent
    let owned_digests: std::collections::HashSet<[u8; 32]> = found
        .iter()
        .filter(|s| owns_state(cfg, s))
        .map(|s| s.shape.key_digest)
        .collect();
    for (key, want) in &desired.states {
        let phase = if want.inbound { 1 } else { 3 };
        match by_key.get(key) {
            Some(f) if !owns_state(cfg, f) => {
                return Err(Error::AlreadyExists {
                    object: key.to_string(),
                    reason: format!(
                    "a state with reqid {:#x} if_id {:#x} holds it; Scrambler does not touch it",
                    f.shape.reqid, f.shape.if_id
                ),
                })
            }
            Some(f) if f.shape == want.shape => ch.report.unchanged += 1,
            // a previous epoch's inbound state found with another shape (another replay
            // window, a key of another secret) is left as it is, as the VPP dataplane
            // does: made anew it would start its replay window over, and it only bridges
            // the peers' switch to the new epoch until its deadline
            Some(_) if want.kept => ch.report.unchanged += 1,
            Some(f) if !want.inbound && f.shape.key_digest == want.shape.key_digest => {
                // An outbound state whose attributes changed (e.g. the local underlay
                // address) but not its key has sent under this key: replacing it would
                // restart the sequence numbers under the same key (AES-GCM nonce reuse).
                // (Under new key material it is replaced below.) It stays as
                // it is and the peer counts as lost until a new key (epoch or rotation):
                // left in place, it keeps proving that this key has sent, also while a
                // rotation is switching (a deleted one would be indistinguishable from one
                // never made). A state whose addresses no longer match the policies'
                // templates carries no traffic; one that still matches goes on with its
                // own sequence numbers.
                tracing::error!(
                    peer = want.peer,
                    generation = want.generation,
                    "outbound SA changed; not re-keyed in place: give the node a new epoch or rotate keys"
                );
                ch.lost_outbound.push((want.peer, want.generation));
            }
            Some(f) => {
                // keys and replay settings cannot change in place: replace
                ch.phases[phase].push(Request {
                    msg: Scrubbed(delete_state_msg(key, f.family)),
                    op: "replace xfrm state (delete)",
                    object: key.to_string(),
                });
                ch.phases[phase].push(Request {
                    msg: Scrubbed(want.add_msg()),
                    op: "replace xfrm state (add)",
                    object: key.to_string(),
                });
                ch.report.updated += 1;
            }
            None if !want.inbound && owned_digests.contains(&want.shape.key_digest) => {
                // An owned state at another address holds this very key: the outbound
                // state of the pair before its underlay address changed. It has sent
                // under this key; a new state at the new address would restart the
                // sequence numbers (AES-GCM nonce reuse). Like a changed outbound state
                // (above) the old one stays (kept below, the proof that this key has
                // sent) and the peer counts as lost until a new key.
                tracing::error!(
                    peer = want.peer,
                    generation = want.generation,
                    "outbound SA moved to another underlay address; not re-created under the same key: give the node a new epoch or rotate keys"
                );
                ch.lost_outbound.push((want.peer, want.generation));
            }
            // a previous epoch's inbound state is kept while it is there, never made anew:
            // its replay window and ESN high bits would start over, and it only bridges
            // the peers' switch to the new epoch
            None if want.kept => {}
            None if !want.inbound
                && !desired.switching
                && peer_kept_state(cfg, desired, want, &by_key) =>
            {
                // Outside a switch to a new generation, this node already ran this
                // generation with the peer (its inbound state of the generation is here),
                // so the outbound state was lost, not never made. Re-creating it would restart the sequence numbers under the same
                // key: AES-GCM nonce reuse (and replay drops at the peer). Leave it out:
                // traffic to the peer stays dropped until a new key (a new epoch of either
                // end, or a rotation).
                tracing::error!(
                    peer = want.peer,
                    generation = want.generation,
                    "outbound SA lost; not re-created under the same key: give the node a new epoch or rotate keys"
                );
                ch.lost_outbound.push((want.peer, want.generation));
            }
            None => {
                ch.phases[phase].push(Request {
                    msg: Scrubbed(want.add_msg()),
                    op: "add xfrm state",
                    object: key.to_string(),
                });
                ch.report.added += 1;
            }
        }
    }
    // stale: outbound first (their daddr is not a local address), then inbound
    // (an owned state holding the key of a desired outbound one stays: see above)
    let outbound_digests: std::collections::HashSet<[u8; 32]> = desired
        .states
        .values()
        .filter(|s| !s.inbound)
        .map(|s| s.shape.key_digest)
        .collect();
    let mut stale: Vec<&FoundState> = found
        .iter()
        .filter(|s| owns_state(cfg, s) && !desired.states.contains_key(&s.shape.key))
        .filter(|s| !outbound_digests.contains(&s.shape.key_digest))
        .collect();
    let inbound_daddrs: std::collections::HashSet<_> = desired
        .states
        .values()
        .filter(|s| s.inbound)
        .map(|s| s.shape.key.daddr)
        .collect();
    stale.sort_by_key(|s| inbound_daddrs.contains(&s.shape.key.daddr));
    let deletes: Vec<Request> = stale
        .into_iter()
        .map(|s| {
            ch.report.removed += 1;
            Request {
                msg: Scrubbed(delete_state_msg(&s.shape.key, family(&s.shape.key.daddr))),
                op: "delete xfrm state",
                object: s.shape.key.to_string(),
            }
        })
        .collect();
    // after the stale policies: a policy left without its state drops, never leaks
    ch.phases[4].extend(deletes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::tests::mesh;

    fn found_from(desired: &Desired) -> Vec<FoundPolicy> {
        desired
            .policies
            .values()
            .enumerate()
            .map(|(i, p)| FoundPolicy {
                policy: p.clone(),
                index: i as u32 * 8,
                unusual: false,
            })
            .collect()
    }

    #[test]
    fn identical_is_noop_and_peer_removal_costs_one_peer() {
        let cfg = XfrmConfig::default();
        let d = Desired::plan(&cfg, &mesh(1, 50), None).unwrap();
        let found = found_from(&d);
        let ch = diff(&cfg, &d, &found, &[], false).unwrap();
        assert!(ch.report.is_noop());
        assert_eq!(ch.len(), 0);
        let mut smaller = mesh(1, 50);
        smaller.peers.pop();
        let d2 = Desired::plan(&cfg, &smaller, None).unwrap();
        let ch = diff(&cfg, &d2, &found, &[], false).unwrap();
        // its 3 mesh policies and the 8 with its or our underlay address; the cluster
        // guard and the block of its underlay address (a tombstone) stay
        assert_eq!(ch.report.removed, 11);
        assert_eq!(ch.len(), 11);
        let block = "policy out 10.0.1.0/24 -> 192.0.2.50/32";
        assert!(found.iter().any(|p| p.policy.key.to_string() == block));
        assert!(ch.phases[4].iter().all(|r| r.object != block));
        assert!(ch.phases[4]
            .iter()
            .any(|r| r.object.starts_with(&format!("{block} if_id"))));
    }

    fn deleted(ch: &Changes) -> Vec<&str> {
        ch.phases[4].iter().map(|r| r.object.as_str()).collect()
    }

    #[test]
    fn underlay_tombstones_outlive_peers_and_cidr_changes_but_not_the_local_address() {
        let cfg = XfrmConfig::default();
        let found = found_from(&Desired::plan(&cfg, &mesh(1, 3), None).unwrap());
        // the local pod CIDR changes: the blocks of the old one stay (its pods may still
        // run), the old bypass and supernet blocks of it go
        let mut m = mesh(1, 3);
        m.local.pod_cidrs = vec!["10.9.0.0/24".parse().unwrap()];
        let ch = diff(
            &cfg,
            &Desired::plan(&cfg, &m, None).unwrap(),
            &found,
            &[],
            false,
        )
        .unwrap();
        let gone = deleted(&ch);
        for kept in [
            "policy out 10.0.1.0/24 -> 192.0.2.2/32",
            "policy out 10.0.1.0/24 -> 192.0.2.3/32",
        ] {
            assert!(!gone.contains(&kept), "{gone:?}");
        }
        assert!(
            gone.contains(&"policy out 0.0.0.0/0 -> 10.0.1.0/24"),
            "{gone:?}"
        );
        assert!(
            gone.contains(&"policy in 10.0.0.0/8 -> 10.0.1.0/24"),
            "{gone:?}"
        );
        // the local node takes a departed peer's address: its block goes
        let mut m = mesh(1, 2);
        m.local.underlay.push("192.0.2.3".parse().unwrap());
        let ch = diff(
            &cfg,
            &Desired::plan(&cfg, &m, None).unwrap(),
            &found,
            &[],
            false,
        )
        .unwrap();
        assert!(deleted(&ch).contains(&"policy out 10.0.1.0/24 -> 192.0.2.3/32"));
        // a new peer on a tombstone's address: the block is its planned one, unchanged
        let mut m = mesh(1, 2);
        let mut n = crate::plan::tests::node(7);
        n.underlay = vec!["192.0.2.3".parse().unwrap()];
        m.peers.push(n);
        let d = Desired::plan(&cfg, &m, None).unwrap();
        let ch = diff(&cfg, &d, &found, &[], false).unwrap();
        assert!(!deleted(&ch).contains(&"policy out 10.0.1.0/24 -> 192.0.2.3/32"));
        assert!(ch.phases[0].is_empty(), "guard unchanged");
    }

    #[test]
    fn foreign_policy_on_our_key_is_a_conflict_and_foreign_others_are_ignored() {
        let cfg = XfrmConfig::default();
        let d = Desired::plan(&cfg, &mesh(1, 2), None).unwrap();
        let mut found = found_from(&d);
        found[0].policy.priority = 10; // someone else's
        let Err(e) = diff(&cfg, &d, &found, &[], false) else {
            panic!("conflict expected")
        };
        assert_eq!(e.code(), 102, "{e}");
        let mut found = found_from(&d);
        let mut foreign = found[0].clone();
        foreign.policy.key.src = "172.16.0.0/16".parse().unwrap();
        foreign.policy.priority = 10;
        found.push(foreign);
        let ch = diff(&cfg, &d, &found, &[], false).unwrap();
        assert_eq!(ch.len(), 0);
    }

    fn found_states(
        desired: &Desired,
        keep: impl Fn(&crate::model::DesiredState) -> bool,
    ) -> Vec<FoundState> {
        desired
            .states
            .values()
            .filter(|s| keep(s))
            .map(|s| FoundState {
                shape: s.shape.clone(),
                family: crate::model::family(&s.shape.key.daddr),
                bytes: 0,
                packets: 0,
                replay_window_drops: 0,
                replay_drops: 0,
                integrity_failed: 0,
            })
            .collect()
    }

    /// Node 1 of a 3-node mesh with states planned, and its policies as found.
    fn three_nodes_with_states() -> (XfrmConfig, Desired, Vec<FoundPolicy>) {
        let cfg = XfrmConfig::default();
        let secret = scrambler_core::ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let d = Desired::plan(&cfg, &mesh(1, 3), Some(&secret)).unwrap();
        let pols = found_from(&d);
        (cfg, d, pols)
    }

    #[test]
    fn lost_outbound_state_is_not_recreated_under_the_same_key() {
        let (cfg, d, pols) = three_nodes_with_states();
        // fresh node: every state is made
        let ch = diff(&cfg, &d, &pols, &[], true).unwrap();
        assert_eq!(ch.report.added, 4);
        assert!(ch.lost_outbound.is_empty());
        // node2's outbound state vanished while its inbound state is there
        let found = found_states(&d, |s| s.inbound || s.peer != 2);
        let ch = diff(&cfg, &d, &pols, &found, true).unwrap();
        assert_eq!(ch.report.added, 0);
        assert_eq!(ch.lost_outbound, vec![(2, 1)]);
        // a foreign state on a desired key is a conflict
        let mut found = found_states(&d, |_| true);
        found[0].shape.reqid = 7;
        assert!(diff(&cfg, &d, &pols, &found, true).is_err());
    }

    /// Node 1 of a 3-node mesh after an epoch change: its previous epoch listed until
    /// Unix time 1000; the plans at `now` before and after the change.
    fn epoch_change(now: u64) -> (XfrmConfig, Desired, Desired, Vec<FoundPolicy>) {
        let cfg = XfrmConfig::default();
        let secret = scrambler_core::ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let before = mesh(1, 3);
        let mut after = before.clone();
        after.local.epoch = scrambler_core::Epoch::new(0x77).unwrap();
        after.local.previous_epochs = vec![scrambler_core::PreviousEpoch {
            epoch: before.local.epoch,
            until: 1000,
        }];
        let old = Desired::plan_at(&cfg, &before, Some(&secret), now).unwrap();
        let new = Desired::plan_at(&cfg, &after, Some(&secret), now).unwrap();
        let pols = found_from(&new);
        (cfg, old, new, pols)
    }

    #[test]
    fn an_epoch_change_keeps_the_old_inbound_states_until_the_deadline() {
        let (cfg, old, new, pols) = epoch_change(999);
        // the previous epoch's inbound states are planned, as kept, with their own SPIs
        let kept: Vec<_> = new.states.values().filter(|s| s.kept).collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.iter().all(|s| s.inbound));
        for k in &kept {
            let was = &old.states[&k.shape.key];
            assert!(was.inbound && !was.kept && was.shape == k.shape);
        }
        // the node had its old epoch's states: the kept ones stay, the new epoch's
        // inbound and outbound states are made, the old outbound ones go
        let found = found_states(&old, |_| true);
        let ch = diff(&cfg, &new, &pols, &found, true).unwrap();
        assert!(ch.lost_outbound.is_empty(), "{:?}", ch.lost_outbound);
        assert_eq!(ch.report.added, 4);
        assert_eq!(ch.report.removed, 2);
        let gone = deleted(&ch);
        for k in &kept {
            assert!(!gone.contains(&k.shape.key.to_string().as_str()));
        }
        // kept, never made anew: gone (or a node that never had them), nothing is added
        let found = found_states(&new, |s| !s.kept);
        let ch = diff(&cfg, &new, &pols, &found, true).unwrap();
        assert!(ch.report.is_noop() && ch.len() == 0, "{:?}", ch.report);
        // all in place: nothing to do
        let all = found_states(&new, |_| true);
        let ch = diff(&cfg, &new, &pols, &all, true).unwrap();
        assert!(ch.report.is_noop() && ch.len() == 0, "{:?}", ch.report);
        // a kept state found with another shape is left as it is, never re-created
        let mut reshaped = all.clone();
        for f in reshaped
            .iter_mut()
            .filter(|f| kept.iter().any(|k| k.shape.key == f.shape.key))
        {
            f.shape.replay_window += 32;
            f.shape.key_digest[0] ^= 1;
        }
        let ch = diff(&cfg, &new, &pols, &reshaped, true).unwrap();
        assert!(ch.report.is_noop() && ch.len() == 0, "{:?}", ch.report);
        // past the deadline a reconcile deletes them, and only them
        let (_, _, expired, _) = epoch_change(1000);
        assert!(expired.states.values().all(|s| !s.kept));
        let ch = diff(&cfg, &expired, &pols, &all, true).unwrap();
        assert_eq!(ch.report.removed, 2);
        let mut gone = deleted(&ch);
        let mut want: Vec<String> = kept.iter().map(|k| k.shape.key.to_string()).collect();
        gone.sort();
        want.sort();
        assert_eq!(gone, want);
    }

    #[test]
    fn changed_outbound_state_is_kept_and_lost_never_rekeyed_in_place() {
        let (cfg, d, pols) = three_nodes_with_states();
        // node 1's underlay address moved: what the kernel holds has the old source
        let mut found = found_states(&d, |_| true);
        let old_src: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        for f in found.iter_mut() {
            if f.shape.key.daddr.to_string() == "192.0.2.2" {
                f.shape.saddr = old_src;
            }
        }
        let ch = diff(&cfg, &d, &pols, &found, true).unwrap();
        assert_eq!(ch.lost_outbound, vec![(2, 1)]);
        // nothing is deleted, added or replaced under the old key, now or on the next run
        assert_eq!(ch.len(), 0);
        assert_eq!(
            (ch.report.added, ch.report.updated, ch.report.removed),
            (0, 0, 0)
        );
        let again = diff(&cfg, &d, &pols, &found, true).unwrap();
        assert_eq!(again.lost_outbound, vec![(2, 1)]);
        assert_eq!(again.len(), 0);
        // under other key material (a new cluster secret) it is replaced: a new key
        for f in found
            .iter_mut()
            .filter(|f| f.shape.key.daddr.to_string() == "192.0.2.2")
        {
            f.shape.key_digest = [9; 32];
        }
        let ch = diff(&cfg, &d, &pols, &found, true).unwrap();
        assert!(ch.lost_outbound.is_empty());
        assert_eq!(ch.report.updated, 1);
        // an inbound state with changed attributes is replaced (the peer sends with it)
        let mut found = found_states(&d, |_| true);
        for f in found
            .iter_mut()
            .filter(|f| f.shape.key.daddr.to_string() == "192.0.2.1")
        {
            f.shape.replay_window = 32;
        }
        let ch = diff(&cfg, &d, &pols, &found, true).unwrap();
        assert!(ch.lost_outbound.is_empty());
        assert_eq!(ch.report.updated, 2);
    }

    #[test]
    fn changed_template_is_an_in_place_update() {
        let cfg = XfrmConfig::default();
        let d = Desired::plan(&cfg, &mesh(1, 2), None).unwrap();
        let mut found = found_from(&d);
        for f in found.iter_mut().filter(|f| f.policy.tmpl.is_some()) {
            if let Some(t) = f.policy.tmpl.as_mut() {
                t.dst = "198.51.100.9".parse().unwrap();
            }
        }
        let ch = diff(&cfg, &d, &found, &[], false).unwrap();
        // the pods' 3 and the 8 with an underlay address
        assert_eq!(ch.report.updated, 11);
        assert_eq!(ch.report.added + ch.report.removed, 0);
    }

    #[test]
    fn changed_outbound_state_stays_lost_while_a_rotation_switches() {
        let cfg = XfrmConfig::default();
        let secret = scrambler_core::ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let mut m = mesh(1, 3);
        m.keys = scrambler_core::Keys {
            tx: 2,
            rx: [1, 2].into_iter().collect(),
        };
        let d = Desired::plan(&cfg, &m, Some(&secret)).unwrap();
        assert!(d.switching);
        let pols = found_from(&d);
        // the generation-2 outbound state to node 2 has sent, then its source moved
        let mut found = found_states(&d, |_| true);
        for f in found
            .iter_mut()
            .filter(|f| f.shape.key.daddr.to_string() == "192.0.2.2")
        {
            f.shape.saddr = "198.51.100.1".parse().unwrap();
        }
        // every run of the switch: kept, lost, and nothing added under its key
        for _ in 0..2 {
            let ch = diff(&cfg, &d, &pols, &found, true).unwrap();
            assert_eq!(ch.lost_outbound, vec![(2, 2)]);
            assert_eq!(ch.report.added, 0, "{:?}", ch.report);
            assert_eq!(ch.len(), 0);
        }
    }

    #[test]
    fn only_the_exact_interface_bypass_is_owned_among_dev_selector_policies() {
        use crate::config::{PRIO_BYPASS, PRIO_GUARD};
        use crate::model::{Dir, Policy};
        let cfg = XfrmConfig::default();
        let bypass = Policy {
            key: PolicyKey {
                dir: Dir::Out,
                src: "::/0".parse().unwrap(),
                dst: "::/0".parse().unwrap(),
                if_id: 0,
                ifindex: 7,
                l4: crate::model::L4::ANY,
            },
            priority: cfg.priority(PRIO_BYPASS),
            block: false,
            tmpl: None,
        };
        let found = |policy: Policy| FoundPolicy {
            policy,
            index: 8,
            unusual: false,
        };
        assert!(owns_policy(&cfg, &found(bypass.clone())));
        let mut others = Vec::new();
        let mut p = bypass.clone();
        p.key.dst = "fd10::/16".parse().unwrap();
        others.push(p);
        let mut p = bypass.clone();
        p.key.src = "fd10:0:1::/64".parse().unwrap();
        others.push(p);
        let mut p = bypass.clone();
        p.key.dir = Dir::Fwd;
        others.push(p);
        let mut p = bypass.clone();
        p.block = true;
        others.push(p);
        let mut p = bypass.clone();
        p.priority = cfg.priority(PRIO_GUARD);
        others.push(p);
        let mut p = bypass.clone();
        p.key.src = "0.0.0.0/0".parse().unwrap();
        p.key.dst = "0.0.0.0/0".parse().unwrap();
        others.push(p);
        for p in others {
            assert!(!owns_policy(&cfg, &found(p.clone())), "{p:?}");
            // and without the interface, the same policy is in the band as before
            let mut no_dev = p;
            no_dev.key.ifindex = 0;
            assert!(owns_policy(&cfg, &found(no_dev)));
        }
        // a foreign dev-selector policy in the band is a conflict-free stranger: not deleted
        let d = Desired::plan(&cfg, &mesh(1, 2), None).unwrap();
        let mut pols = found_from(&d);
        let mut stranger = bypass;
        stranger.block = true;
        pols.push(found(stranger));
        let ch = diff(&cfg, &d, &pols, &[], false).unwrap();
        assert!(ch.report.is_noop(), "{:?}", ch.report);
    }

    #[test]
    fn outbound_state_moved_to_a_new_peer_address_is_not_recreated_under_its_key() {
        let (cfg, mut d, pols) = three_nodes_with_states();
        // the kernel holds node 1's outbound state to node 2 at node 2's old address
        let mut found = found_states(&d, |_| true);
        let old: std::net::IpAddr = "198.51.100.2".parse().unwrap();
        for f in found
            .iter_mut()
            .filter(|f| f.shape.key.daddr.to_string() == "192.0.2.2")
        {
            f.shape.key.daddr = old;
        }
        // every run, also while a rotation switches (no inbound-state proof then)
        for switching in [false, true] {
            d.switching = switching;
            let ch = diff(&cfg, &d, &pols, &found, true).unwrap();
            assert_eq!(ch.lost_outbound, vec![(2, 1)], "switching {switching}");
            // nothing added under the key at the new address, the old state kept
            assert_eq!(ch.report.added, 0, "{:?}", ch.report);
            assert_eq!(ch.report.removed, 0, "{:?}", ch.report);
            assert_eq!(ch.len(), 0);
        }
        // a rotation to a new generation: its outbound state is made at the new address
        // and the old one goes
        let secret = scrambler_core::ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let mut m = mesh(1, 3);
        m.keys = scrambler_core::Keys {
            tx: 2,
            rx: [1, 2].into_iter().collect(),
        };
        let fresh = Desired::plan(&cfg, &m, Some(&secret)).unwrap();
        let ch = diff(&cfg, &fresh, &pols, &found, true).unwrap();
        assert!(ch.lost_outbound.is_empty());
        assert!(ch.phases[3]
            .iter()
            .any(|r| r.object.contains("dst 192.0.2.2")));
        assert!(ch.phases[4]
            .iter()
            .any(|r| r.object.contains("198.51.100.2")));
    }

    #[test]
    fn a_departed_peer_keeps_its_host_block_and_bypass_allows_with_node_encryption() {
        let cfg = XfrmConfig::default();
        let with = |m: scrambler_core::Mesh, bypass: &[&str]| scrambler_core::Mesh {
            node_encryption: Some(scrambler_core::NodeEncryption {
                bypass: bypass.iter().map(|b| b.parse().unwrap()).collect(),
            }),
            ..m
        };
        let found =
            found_from(&Desired::plan(&cfg, &with(mesh(1, 3), &["tcp/2379"]), None).unwrap());
        // node 3 leaves: its mesh policies go, its IPv4 host block and allows stay
        let left = Desired::plan(&cfg, &with(mesh(1, 2), &["tcp/2379"]), None).unwrap();
        let ch = diff(&cfg, &left, &found, &[], false).unwrap();
        let gone = deleted(&ch);
        let block = "policy out 192.0.2.1/32 -> 192.0.2.3/32";
        for kept in [
            block.to_string(),
            format!("{block} proto 6 dport 2379"),
            format!("{block} proto 6 sport 2379"),
        ] {
            assert!(!gone.contains(&kept.as_str()), "{kept}: {gone:?}");
        }
        // its mesh policies m <-> u (out, in, fwd) go
        for dir in [
            "out 192.0.2.1/32 -> 192.0.2.3/32",
            "in 192.0.2.3/32 -> 192.0.2.1/32",
        ] {
            assert!(
                gone.iter()
                    .any(|g| g.starts_with(&format!("policy {dir} if_id"))),
                "{dir}: {gone:?}"
            );
        }
        assert!(
            gone.iter()
                .any(|g| g.starts_with("policy fwd 192.0.2.3/32 -> 192.0.2.1/32 if_id")),
            "{gone:?}"
        );
        // and nothing of the remaining peer's
        assert!(gone.iter().all(|g| !g.contains("192.0.2.2/")), "{gone:?}");
        // a port leaves the bypass list: the departed peer's allows of it go, the block stays
        let moved = Desired::plan(&cfg, &with(mesh(1, 2), &["tcp/22"]), None).unwrap();
        let gone_now = deleted(&diff(&cfg, &moved, &found, &[], false).unwrap())
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        assert!(gone_now.contains(&format!("{block} proto 6 dport 2379")));
        assert!(gone_now.contains(&format!("{block} proto 6 sport 2379")));
        assert!(!gone_now.contains(&block.to_string()));
        // node encryption off: the tombstones go with the present peers' blocks
        let off = Desired::plan(&cfg, &mesh(1, 2), None).unwrap();
        let gone_off = deleted(&diff(&cfg, &off, &found, &[], false).unwrap())
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>();
        assert!(gone_off.contains(&block.to_string()), "{gone_off:?}");
        // the local node takes the address: no tombstone of it
        let mut m = with(mesh(1, 2), &["tcp/2379"]);
        m.local.underlay.push("192.0.2.3".parse().unwrap());
        let ch = diff(
            &cfg,
            &Desired::plan(&cfg, &m, None).unwrap(),
            &found,
            &[],
            false,
        )
        .unwrap();
        assert!(deleted(&ch).contains(&block));
        // it comes back: its block and allows are planned, unchanged
        let back = Desired::plan(&cfg, &with(mesh(1, 3), &["tcp/2379"]), None).unwrap();
        let ch = diff(&cfg, &back, &found, &[], false).unwrap();
        assert!(ch.report.is_noop() && ch.len() == 0);
    }

    #[test]
    fn turning_node_encryption_off_removes_exactly_its_policies() {
        let cfg = XfrmConfig::default();
        let mut m = mesh(1, 3);
        m.node_encryption = Some(scrambler_core::NodeEncryption {
            bypass: vec!["tcp/2379".parse().unwrap()],
        });
        let on = Desired::plan(&cfg, &m, None).unwrap();
        // turned on: the allows of the bypass ports come before the block they pierce
        let ch = diff(&cfg, &on, &[], &[], false).unwrap();
        let at = |o: &str| ch.phases[0].iter().position(|r| r.object == o).unwrap();
        let block = at("policy out 192.0.2.1/32 -> 192.0.2.2/32");
        assert!(at("policy out 192.0.2.1/32 -> 192.0.2.2/32 proto 6 dport 2379") < block);
        assert!(at("policy out 192.0.2.1/32 -> 192.0.2.2/32 proto 6 sport 2379") < block);
        let found = found_from(&on);
        // on, found as planned: nothing to do
        let ch = diff(&cfg, &on, &found, &[], false).unwrap();
        assert!(ch.report.is_noop() && ch.len() == 0);
        m.node_encryption = None;
        let off = Desired::plan(&cfg, &m, None).unwrap();
        let ch = diff(&cfg, &off, &found, &[], false).unwrap();
        let mut gone = deleted(&ch);
        gone.sort();
        // per peer `fwd u -> m`, the block and the allows of both sides of the port (the
        // mesh policies `out m -> u`, `in u -> m` stay: the node's pods use them); no
        // tombstone is kept of them
        assert_eq!(
            gone,
            [
                "policy fwd 192.0.2.2/32 -> 192.0.2.1/32 if_id 0x5c5c",
                "policy fwd 192.0.2.3/32 -> 192.0.2.1/32 if_id 0x5c5c",
                "policy out 192.0.2.1/32 -> 192.0.2.2/32",
                "policy out 192.0.2.1/32 -> 192.0.2.2/32 proto 6 dport 2379",
                "policy out 192.0.2.1/32 -> 192.0.2.2/32 proto 6 sport 2379",
                "policy out 192.0.2.1/32 -> 192.0.2.3/32",
                "policy out 192.0.2.1/32 -> 192.0.2.3/32 proto 6 dport 2379",
                "policy out 192.0.2.1/32 -> 192.0.2.3/32 proto 6 sport 2379",
            ]
        );
        assert_eq!(ch.report.added + ch.report.updated, 0);
    }
}
