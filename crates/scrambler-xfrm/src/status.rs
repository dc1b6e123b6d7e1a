//! Per-peer status from a dump, global XFRM error counters, and a table view.

use crate::config::XfrmConfig;
use crate::diff::{owns_policy, owns_state};
use crate::model::{FoundPolicy, FoundState};
use crate::plan::{outer_pair, pod_rule, Desired};
use ipnet::IpNet;
use scrambler_core::keys::{spi, spi_parts, SPI_GENERATIONS};
use scrambler_core::{esp, Generation, Mesh, Node, PeerStatus, Result, TunnelStatus};
use scrambler_netlink::RuleSpec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Key in [`TunnelStatus::errors`]: peers whose outbound SA was lost while the key
/// generation is live; they stay cut off (fail closed) until the node gets a new epoch or [`crate::rotate`] moves to a new generation.
pub const LOST_OUTBOUND: &str = "ScramblerOutboundSaLost";

/// Key in [`TunnelStatus::errors`]: how many of the node's policy-routing rules
/// `from <local pod CIDR> lookup <route_table>` are missing (deleted behind Scrambler's
/// back, e.g. by `ip rule flush`, or changed by someone else). Pods' traffic to every
/// peer's underlay address is then dropped by the guard (fail closed) and every peer
/// reports `steering: false` until a reconcile puts the rule back.
pub const UNDERLAY_RULE_MISSING: &str = "ScramblerUnderlayRuleMissing";

/// Suffix of a per-peer key `<peer>/ScramblerUnderlayRouteMissing` in
/// [`TunnelStatus::errors`]: the route to that peer's underlay address in
/// [`XfrmConfig::route_table`] is missing (or someone else's); pods' traffic to the
/// peer's host is dropped by the guard and the peer reports `steering: false` until a
/// reconcile puts it back.
pub const UNDERLAY_ROUTE_MISSING: &str = "ScramblerUnderlayRouteMissing";

/// Key in [`TunnelStatus::errors`]: how many of node encryption's policy-routing rules
/// (bypass `goto`, steering `ipproto … lookup <route_table>`, `nop`; see the crate's
/// Node encryption) are missing or changed. Without a steering rule the node's own
/// traffic of that protocol to its peers is not steered into the mesh: IPv4 meets the
/// host block and is dropped, IPv6 would leave in cleartext. Every peer reports
/// `steering: false` until a reconcile puts the rules back.
pub const NODE_RULE_MISSING: &str = "ScramblerNodeRuleMissing";

/// Key in [`TunnelStatus::errors`]: how many of node encryption's policies (the mesh
/// policies `out m → u` / `in u → m` between the node's and its peers' underlay
/// addresses, the IPv4 host blocks `out m → u` and their bypass allows) are missing or
/// changed. A missing block also makes `fail_closed` false; a missing mesh policy makes
/// its peer's `steering` false.
pub const NODE_POLICY_MISSING: &str = "ScramblerNodePolicyMissing";

/// Key in [`TunnelStatus::errors`]: how many of Scrambler's `unreachable` routes to the
/// IPv6 cluster supernets are missing from the main table (deleted behind Scrambler's
/// back). Without one, a reply of the node itself on the xfrm interface (an ICMPv6 echo
/// reply to a remote pod) whose route into the interface is missing could leave by the
/// default route in cleartext; `fail_closed` is false until a reconcile puts it back.
pub const UNREACHABLE_ROUTE_MISSING: &str = "ScramblerUnreachableRouteMissing";

/// Parses `/proc/net/xfrm_stat` text, keeping non-zero counters.
pub fn parse_xfrm_stat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let name = it.next()?;
            let v: u64 = it.next()?.parse().ok()?;
            (v != 0).then(|| (name.to_string(), v))
        })
        .collect()
}

/// Reads the XFRM error counters of the calling thread's network namespace
/// (`/proc/thread-self/net/xfrm_stat`: /proc/net follows the reading thread's netns).
/// A kernel without the file has no counters to show.
pub(crate) fn read_xfrm_stat() -> BTreeMap<String, u64> {
    std::fs::read_to_string("/proc/thread-self/net/xfrm_stat")
        .map(|t| parse_xfrm_stat(&t))
        .unwrap_or_default()
}

/// The live generation whose SPI residue is `residue` (SPIs encode `generation mod 128`).
fn generation_of(residue: u32, live: &BTreeSet<Generation>, tx: Generation) -> Generation {
    live.iter()
        .chain(std::iter::once(&tx))
        .copied()
        .find(|g| g % SPI_GENERATIONS == residue)
        .unwrap_or(residue)
}

pub(crate) struct Observed<'a> {
    pub policies: &'a [FoundPolicy],
    pub states: &'a [FoundState],
    /// Owned routes, `None` when the steering interface is missing.
    pub routes: Option<&'a crate::link::Routes>,
    /// Owned routes in Scrambler's table (peers' underlay addresses, with their sources),
    /// `None` when the steering interface is missing.
    pub table_routes: Option<&'a crate::link::Routes>,
    /// Owned policy-routing rules.
    pub rules: &'a BTreeSet<RuleSpec>,
    /// Destinations of owned `unreachable` routes.
    pub unreachable: &'a BTreeSet<IpNet>,
    pub xfrm_stat: BTreeMap<String, u64>,
}

pub(crate) fn build(cfg: &XfrmConfig, mesh: &Mesh, obs: Observed<'_>) -> Result<TunnelStatus> {
    let desired = Desired::plan(cfg, mesh, None)?;
    let policies: HashMap<_, _> = obs
        .policies
        .iter()
        .filter(|p| owns_policy(cfg, p))
        .map(|p| (&p.policy.key, &p.policy))
        .collect();
    let states: Vec<&FoundState> = obs.states.iter().filter(|s| owns_state(cfg, s)).collect();
    let rules_missing = desired
        .rule_sources
        .iter()
        .filter(|s| !obs.rules.contains(&pod_rule(cfg, **s)))
        .count();
    let node_rules_missing = desired.node_rules.difference(obs.rules).count();
    let node_policies_missing = desired
        .node_policies
        .iter()
        .filter(|k| policies.get(k).copied() != desired.policies.get(*k))
        .count();
    let host_open = host_v6_open(&desired, &obs);
    let mut errors = obs.xfrm_stat;
    let mut peers = Vec::new();
    for peer in &mesh.peers {
        let mut st = peer_status(cfg, mesh, peer, &desired, &policies, &states, obs.routes)?;
        // traffic to the peer's host (its pods', and with node encryption the node's
        // own): its routes in Scrambler's table and the rules (a rule missing cuts every
        // peer off)
        let route_missing = peer.underlay.iter().any(|u| {
            let u = IpNet::from(*u);
            desired
                .underlay_routes
                .get(&u)
                .is_some_and(|src| obs.table_routes.and_then(|t| t.get(&u)) != Some(src))
        });
        if route_missing {
            errors.insert(format!("{}/{UNDERLAY_ROUTE_MISSING}", peer.name), 1);
        }
        st.steering &= !route_missing && rules_missing == 0 && node_rules_missing == 0;
        peers.push(st);
    }
    if rules_missing > 0 {
        errors.insert(UNDERLAY_RULE_MISSING.to_string(), rules_missing as u64);
    }
    if node_rules_missing > 0 {
        errors.insert(NODE_RULE_MISSING.to_string(), node_rules_missing as u64);
    }
    if node_policies_missing > 0 {
        errors.insert(
            NODE_POLICY_MISSING.to_string(),
            node_policies_missing as u64,
        );
    }
    let unreachable_missing = desired.unreachable.difference(obs.unreachable).count();
    if unreachable_missing > 0 {
        errors.insert(
            UNREACHABLE_ROUTE_MISSING.to_string(),
            unreachable_missing as u64,
        );
    }
    let fail_closed = unreachable_missing == 0
        && !host_open
        && desired
            .policies
            .values()
            .filter(|p| p.block || p.tmpl.is_none())
            .all(|p| policies.get(&p.key) == Some(&p));
    // an outbound SA gone while its generation is live in the other direction: it is not
    // re-created under the same key (nonce reuse); only a new key (epoch or rotation) repairs it
    let lost = peers
        .iter()
        .filter(|p| !p.outbound && p.rx_generations.contains(&mesh.keys.tx))
        .count();
    if cfg.program_states && lost > 0 {
        errors.insert(LOST_OUTBOUND.to_string(), lost as u64);
    }
    let outer_v6 = mesh.outer_v6();
    Ok(TunnelStatus {
        dataplane: "xfrm".into(),
        encrypted: cfg.program_states && peers.iter().all(PeerStatus::is_up),
        fail_closed,
        peers,
        errors,
        overhead: esp::esp_overhead(outer_v6),
    })
}

/// Whether node encryption's IPv6 host traffic to a peer can leave in the clear: no block
/// policy stands behind its steering (IPv6 has no `disable_xfrm`, see
/// [`crate::plan`]'s node encryption), so a missing IPv6 node-encryption rule, or a
/// missing route of a peer's IPv6 underlay address in Scrambler's table (all of them when
/// the interface is gone), sends it by the main table's routes.
fn host_v6_open(desired: &Desired, obs: &Observed<'_>) -> bool {
    if desired.node_rules.is_empty() {
        return false;
    }
    let rule_missing = desired
        .node_rules
        .iter()
        .any(|r| r.src.addr().is_ipv6() && !obs.rules.contains(r));
    let route_missing = desired
        .underlay_routes
        .iter()
        .filter(|(u, _)| u.addr().is_ipv6())
        .any(|(u, src)| obs.table_routes.and_then(|t| t.get(u)) != Some(src));
    rule_missing || route_missing
}

fn peer_status(
    cfg: &XfrmConfig,
    mesh: &Mesh,
    peer: &Node,
    desired: &Desired,
    policies: &HashMap<&crate::model::PolicyKey, &crate::model::Policy>,
    states: &[&FoundState],
    routes: Option<&crate::link::Routes>,
) -> Result<PeerStatus> {
    let local = &mesh.local;
    let (mine, theirs) = outer_pair(local, peer)?;
    let reqid = cfg.reqid(peer.id.get());
    let mut st = PeerStatus {
        name: peer.name.clone(),
        underlay: Some(theirs),
        ..Default::default()
    };
    let tx_spi = spi(local.incarnation(), peer.incarnation(), mesh.keys.tx);
    let mut rx_found = BTreeSet::new();
    for s in states.iter().filter(|s| s.shape.reqid == reqid) {
        let residue = spi_parts(s.shape.key.spi).map(|(g, _)| g);
        if s.shape.key.daddr == theirs && s.shape.saddr == mine {
            st.outbound |= s.shape.key.spi == tx_spi;
            if let Some(r) = residue {
                st.tx_generation = Some(generation_of(r, &mesh.keys.rx, mesh.keys.tx));
            }
            st.packets_out += s.packets;
            st.bytes_out += s.bytes;
        } else if s.shape.key.daddr == mine && s.shape.saddr == theirs {
            if let Some(r) = residue {
                rx_found.insert(generation_of(r, &mesh.keys.rx, mesh.keys.tx));
            }
            st.packets_in += s.packets;
            st.bytes_in += s.bytes;
            st.replay_errors += (s.replay_window_drops + s.replay_drops) as u64;
            st.integrity_errors += s.integrity_failed as u64;
        }
    }
    // the outbound state in use is the tx one when present
    if st.outbound {
        st.tx_generation = Some(mesh.keys.tx);
    }
    st.inbound = mesh.keys.rx.iter().all(|g| {
        let want = spi(peer.incarnation(), local.incarnation(), *g);
        states
            .iter()
            .any(|s| s.shape.key.spi == want && s.shape.key.daddr == mine)
    });
    st.rx_generations = rx_found.into_iter().collect();
    let peer_cidrs: BTreeSet<IpNet> = peer.pod_cidrs.iter().map(|c| c.trunc()).collect();
    // each of its pod CIDRs routed into the interface, from the planned source
    let policies_ok = desired
        .policies
        .values()
        .filter(|p| p.tmpl.is_some_and(|t| t.reqid == reqid))
        .all(|p| policies.get(&p.key) == Some(&p));
    let routes_ok = routes.is_some_and(|r| {
        peer_cidrs
            .iter()
            .all(|c| r.get(c).is_some() && r.get(c) == desired.routes.get(c))
    });
    st.steering = policies_ok && routes_ok;
    Ok(st)
}

/// A table view of a [`TunnelStatus`] for people: one line per peer, then the flags and
/// the non-zero global error counters.
///
/// ```
/// use scrambler_core::{PeerStatus, TunnelStatus};
/// use scrambler_xfrm::StatusTable;
/// let s = TunnelStatus {
///     dataplane: "xfrm".into(),
///     encrypted: true,
///     fail_closed: true,
///     peers: vec![PeerStatus { name: "node2".into(), outbound: true, inbound: true,
///                              steering: true, tx_generation: Some(1),
///                              rx_generations: vec![1], ..Default::default() }],
///     errors: Default::default(),
///     overhead: 57,
/// };
/// let text = StatusTable(&s).to_string();
/// assert!(text.contains("node2"));
/// assert!(text.contains("up"));
/// ```
pub struct StatusTable<'a>(pub &'a TunnelStatus);

impl fmt::Display for StatusTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        writeln!(
            f,
            "{:<16} {:<40} {:<5} {:>3} {:>3} {:>5} {:>4} {:<9} {:>10} {:>10} {:>12} {:>12} {:>6} {:>6}",
            "PEER", "UNDERLAY", "STATE", "OUT", "IN", "STEER", "TX", "RX", "PKTS_OUT",
            "PKTS_IN", "BYTES_OUT", "BYTES_IN", "REPLAY", "ICV"
        )?;
        let yn = |b: bool| if b { "yes" } else { "NO" };
        for p in &s.peers {
            let rx: Vec<String> = p.rx_generations.iter().map(|g| g.to_string()).collect();
            writeln!(
                f,
                "{:<16} {:<40} {:<5} {:>3} {:>3} {:>5} {:>4} {:<9} {:>10} {:>10} {:>12} {:>12} {:>6} {:>6}",
                p.name,
                p.underlay.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                if p.is_up() { "up" } else { "DOWN" },
                yn(p.outbound),
                yn(p.inbound),
                yn(p.steering),
                p.tx_generation.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
                if rx.is_empty() { "-".into() } else { rx.join(",") },
                p.packets_out,
                p.packets_in,
                p.bytes_out,
                p.bytes_in,
                p.replay_errors,
                p.integrity_errors
            )?;
        }
        writeln!(
            f,
            "dataplane {}: encrypted={} fail_closed={} esp_overhead={}B",
            s.dataplane,
            if s.encrypted {
                "yes"
            } else {
                "NO (pod traffic to peers is dropped or unencrypted!)"
            },
            if s.fail_closed { "yes" } else { "NO" },
            s.overhead
        )?;
        for (k, v) in &s.errors {
            writeln!(f, "  {k} {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfrm_stat_keeps_non_zero() {
        let m = parse_xfrm_stat("XfrmInError 0\nXfrmInNoStates    12\nXfrmOutPolBlock\t3\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["XfrmInNoStates"], 12);
        assert_eq!(m["XfrmOutPolBlock"], 3);
    }

    /// A dual-stack-underlay mesh with node encryption, and what a dataplane holding all
    /// of it looks like.
    fn host_traffic_in_place() -> (XfrmConfig, Mesh, Vec<FoundPolicy>, BTreeSet<RuleSpec>) {
        let cfg = XfrmConfig::default();
        let mut m = crate::plan::tests::mesh(1, 2);
        for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
            let id = n.id.get();
            n.underlay = vec![
                format!("192.0.2.{id}").parse().unwrap(),
                format!("2001:db8::{id}").parse().unwrap(),
            ];
        }
        m.node_encryption = Some(scrambler_core::NodeEncryption {
            bypass: vec!["tcp/2379".parse().unwrap()],
        });
        let d = Desired::plan(&cfg, &m, None).unwrap();
        let policies = d
            .policies
            .values()
            .map(|p| FoundPolicy {
                policy: p.clone(),
                index: 0,
                unusual: false,
            })
            .collect();
        (cfg, m, policies, d.node_rules.clone())
    }

    #[test]
    fn ipv6_host_traffic_without_its_steering_is_not_fail_closed() {
        let (cfg, m, policies, rules) = host_traffic_in_place();
        let d = Desired::plan(&cfg, &m, None).unwrap();
        let table: crate::link::Routes = d.underlay_routes.clone();
        let fail_closed = |rules: &BTreeSet<RuleSpec>, table: Option<&crate::link::Routes>| {
            let obs = Observed {
                policies: &policies,
                states: &[],
                routes: None,
                table_routes: table,
                rules,
                unreachable: &d.unreachable,
                xfrm_stat: Default::default(),
            };
            build(&cfg, &m, obs).unwrap().fail_closed
        };
        assert!(fail_closed(&rules, Some(&table)));
        // an IPv4 steering rule gone: the IPv4 host block still drops
        let v4_gone: BTreeSet<RuleSpec> = rules
            .iter()
            .filter(|r| r.src.addr().is_ipv6() || r.ipproto != Some(6))
            .cloned()
            .collect();
        assert!(v4_gone.len() < rules.len());
        assert!(fail_closed(&v4_gone, Some(&table)));
        // an IPv6 one gone, a peer's IPv6 route gone, the interface gone: open
        let v6_gone: BTreeSet<RuleSpec> = rules
            .iter()
            .filter(|r| !r.src.addr().is_ipv6() || r.ipproto != Some(6))
            .cloned()
            .collect();
        assert!(!fail_closed(&v6_gone, Some(&table)));
        let mut no_v6_route = table.clone();
        no_v6_route.retain(|u, _| u.addr().is_ipv4());
        assert!(!fail_closed(&rules, Some(&no_v6_route)));
        assert!(!fail_closed(&rules, None));
    }

    #[test]
    fn generations_map_back_from_spi_residue() {
        let live: BTreeSet<Generation> = [200, 201].into();
        assert_eq!(generation_of(200 % 128, &live, 201), 200);
        assert_eq!(generation_of(201 % 128, &live, 201), 201);
        assert_eq!(generation_of(5, &live, 201), 5);
    }
}
