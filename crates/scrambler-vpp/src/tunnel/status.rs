//! Status and counters: per peer what is in place and how much it carried, read from VPP's
//! state and its statistics segment.

use std::collections::BTreeMap;

use scrambler_core::keys::spi;
use scrambler_core::{Error, Generation, Mesh, Node, PeerStatus, Result, TunnelStatus};
use scrambler_vpp_api::stats::{Combined, StatValue, StatsClient, StatsError};

use super::ids::{peer_of_sa, sa_id, sa_id_slots, tunnel_instance, Direction};
use super::plan::{guard_routes, underlay_pair};
use super::readback::{outbound_lost, OwnedRoute, OwnedState};
use crate::endpoint::DATAPLANE;

/// Key in [`TunnelStatus::errors`]: peers whose outbound SA was lost while its key
/// generation is live; they stay behind drop routes (fail closed) until a key rotation.
pub const LOST_OUTBOUND: &str = "ScramblerOutboundSaLost";

/// Key in [`TunnelStatus::errors`]: how many (local pod CIDR, peer underlay address) pairs
/// are not steered into the peer's tunnel in the pods' table (the peer's tunnel is not
/// up, or the route is missing): pods' traffic to those addresses is dropped by the
/// underlay guard, not encrypted. With the gateway loopback in table 0 (made by an
/// earlier release, and left there) every pair counts: its pods are outside the pods' VRF,
/// and the guard drops all their traffic to peers' underlay addresses. Pods put in table 0
/// by hand beside a gateway in the pods' VRF are not counted.
pub const POD_TO_PEER_UNDERLAY_DROPPED: &str = "ScramblerPodToPeerUnderlayDropped";

/// Key in [`TunnelStatus::errors`] when a [`VppTunnel`](super::VppTunnel) with the host link
/// finds it missing or incomplete (the veth, its tunnel address, the gateway's permanent
/// neighbour, the host's routes into VPP, or VPP's interface, its table or its route): the
/// host does not reach remote pods, nor they the host. Not a leak as long as the host has
/// no path to other nodes but VPP (a host NIC that VPP does not own is the operator's), so
/// `fail_closed` is left as it is; [`TunnelStatus::in_place`] is false, so an agent
/// reconciles again.
pub use scrambler_core::HOST_LINK_MISSING;

/// Key in [`TunnelStatus::errors`] when the underlay guard (the SPD dropping pod traffic
/// to peers' underlay addresses) is missing or incomplete: such traffic may then cross
/// the underlay in cleartext, and `fail_closed` is false.
pub const UNDERLAY_GUARD_MISSING: &str = "ScramblerUnderlayGuardMissing";

/// Key in [`TunnelStatus::errors`], with node encryption on and the host link: how many of
/// node encryption's routes (table [`super::HOST_ROUTE_TABLE`]) and rules of the host are
/// missing or changed. The host's traffic to a peer's underlay address may then take
/// another route of the host's, in the clear: `fail_closed` is false until a reconcile.
pub const NODE_STEERING_MISSING: &str = "ScramblerNodeSteeringMissing";

/// Key in [`TunnelStatus::errors`], with node encryption on: how many peer underlay
/// addresses the host's traffic cannot reach through the mesh. With the host link, they
/// are IPv6 addresses, or all of them on a node without an IPv4 tunnel address, and get
/// an `unreachable` route (refused but for the bypass ports: still fail closed); without
/// the host link ([`super::VppTunnel::with_host_link`]) Scrambler does not steer the host
/// at all, and `fail_closed` is false.
pub const NODE_ENCRYPTION_HOST_UNCOVERED: &str = "ScramblerNodeEncryptionHostUncovered";

/// Key in [`TunnelStatus::errors`] when the stats segment could not be read (the packet and
/// byte counters of the peers are then zero, not measured).
pub const STATS_UNAVAILABLE: &str = "ScramblerVppStatsUnavailable";

/// One peer's counters in VPP: its SAs (all generations) and its tunnel interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Peer name.
    pub name: String,
    /// Packets and bytes encrypted by the peer's outbound SAs.
    pub sa_out: Combined,
    /// Packets and bytes decrypted by the peer's inbound SAs.
    pub sa_in: Combined,
    /// Per-SA error counters summed over the peer's SAs (`/net/ipsec/sa/err/<name>`),
    /// non-zero ones.
    pub sa_errors: BTreeMap<String, u64>,
    /// Received on the tunnel interface (after decryption).
    pub tunnel_rx: Combined,
    /// Sent into the tunnel interface (before encryption).
    pub tunnel_tx: Combined,
    /// Dropped on the tunnel interface.
    pub tunnel_drops: u64,
}

impl PeerCounters {
    /// Packets that failed authentication: VPP counts an AES-GCM tag mismatch as
    /// `decryption_failed` (the AEAD decrypt fails), a separate ICV as `integ_error`.
    pub fn integrity_errors(&self) -> u64 {
        ["integ_error", "decryption_failed"]
            .iter()
            .filter_map(|k| self.sa_errors.get(*k))
            .sum()
    }
}

/// The counter vectors status needs, from one read of the stats segment.
pub(super) struct CounterSnapshot {
    sa: StatValue,
    sa_err: Vec<(String, StatValue)>,
    rx: StatValue,
    tx: StatValue,
    drops: StatValue,
}

/// Per-SA error counters worth reporting (`/net/ipsec/sa/err/<name>`).
const SA_ERRORS: &[&str] = &[
    "replay",
    "integ_error",
    "decryption_failed",
    "crypto_engine_error",
    "runt",
    "no_buffers",
    "lost",
    "seq_cycled",
    "tun_no_proto",
];

impl CounterSnapshot {
    pub(super) fn read(path: &std::path::Path) -> Result<CounterSnapshot> {
        let fail = |e: StatsError| Error::Dataplane {
            dataplane: DATAPLANE.into(),
            op: format!("read counters from {}", path.display()),
            reason: e.to_string(),
        };
        let st = StatsClient::connect(path).map_err(fail)?;
        let mut names = vec![
            "/net/ipsec/sa".to_string(),
            "/if/rx".into(),
            "/if/tx".into(),
            "/if/drops".into(),
        ];
        // per-SA errors exist in newer VPPs only: take the ones present
        names.extend(SA_ERRORS.iter().map(|e| format!("/net/ipsec/sa/err/{e}")));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut v = st.read_present(&refs).map_err(fail)?.into_iter();
        let sa = v
            .next()
            .flatten()
            .ok_or_else(|| fail(StatsError::NotFound("/net/ipsec/sa".into())))?;
        let mut next = || v.next().flatten().unwrap_or(StatValue::Empty);
        let (rx, tx, drops) = (next(), next(), next());
        let sa_err = SA_ERRORS
            .iter()
            .zip(v)
            .filter_map(|(name, val)| Some((name.to_string(), val?)))
            .collect();
        Ok(CounterSnapshot {
            sa,
            sa_err,
            rx,
            tx,
            drops,
        })
    }
}

pub(super) fn peer_counters(
    have: &OwnedState,
    snap: &CounterSnapshot,
    peer: &Node,
) -> PeerCounters {
    let mut pc = PeerCounters {
        name: peer.name.clone(),
        ..Default::default()
    };
    for (id, stat) in &have.sa_stats {
        let Some((p, dir)) = peer_of_sa(*id) else {
            continue;
        };
        if p != peer.id.get() {
            continue;
        }
        let i = *stat as usize;
        let c = snap.sa.combined_sum(i).unwrap_or_default();
        match dir {
            Direction::Outbound => pc.sa_out += c,
            Direction::Inbound => pc.sa_in += c,
        }
        for (name, v) in &snap.sa_err {
            let n = v.simple_sum(i).unwrap_or(0);
            if n > 0 {
                *pc.sa_errors.entry(name.clone()).or_default() += n;
            }
        }
    }
    if let Some(sw) = have.sw_if_index(tunnel_instance(peer.id)) {
        let i = sw as usize;
        pc.tunnel_rx = snap.rx.combined_sum(i).unwrap_or_default();
        pc.tunnel_tx = snap.tx.combined_sum(i).unwrap_or_default();
        pc.tunnel_drops = snap.drops.simple_sum(i).unwrap_or(0);
    }
    pc
}

/// The tunnel status of the node from what its VPP has (`have`) and, when the stats segment
/// could be read, its counters.
pub(super) fn build(
    have: &OwnedState,
    snap: Option<&CounterSnapshot>,
    mesh: &Mesh,
) -> TunnelStatus {
    let mut st = TunnelStatus {
        dataplane: DATAPLANE.into(),
        overhead: scrambler_core::esp::esp_overhead(mesh.outer_v6()),
        ..Default::default()
    };
    let has_sa = |id: u32, spi: u32| have.sas.get(&id).is_some_and(|e| e.spi == spi);
    // the cluster guard: a drop route per cluster CIDR
    let mut all_protected = guard_routes(mesh)
        .iter()
        .all(|g| have.routes.get(g) == Some(&OwnedRoute::Drop));
    for peer in &mesh.peers {
        let inst = tunnel_instance(peer.id);
        let sw = have.sw_if_index(inst);
        let prot = sw.and_then(|s| have.protects.get(&s));
        let tx = sa_id(Direction::Outbound, peer.id, mesh.keys.tx);
        let rx: Vec<Generation> = mesh
            .keys
            .rx
            .iter()
            .copied()
            .filter(|g| {
                // in whichever slot it is (see `place_inbound`); previous epochs' inbound
                // SAs, kept beside it, are neither required nor in the way
                let want = spi(peer.incarnation(), mesh.local.incarnation(), *g);
                sa_id_slots(Direction::Inbound, peer.id, *g)
                    .iter()
                    .any(|id| has_sa(*id, want) && prot.is_some_and(|(_, i)| i.contains(id)))
            })
            .collect();
        // the SA of the current epochs: its SPI tells it from one of earlier epochs
        let tx_spi = spi(mesh.local.incarnation(), peer.incarnation(), mesh.keys.tx);
        let outbound = has_sa(tx, tx_spi) && prot.is_some_and(|(o, _)| *o == tx);
        // the peer's pod CIDRs (table 0) and its underlay addresses (the pods' table) are
        // all routed into its tunnel: a route missing from either makes the peer not up,
        // so that a caller reconciles again
        let steering = sw.is_some_and(|s| {
            have.up.get(&s).copied().unwrap_or(false)
                && peer
                    .pod_cidrs
                    .iter()
                    .all(|c| have.routes.get(&c.trunc()) == Some(&OwnedRoute::Via(s)))
                && peer.underlay.iter().all(|a| {
                    have.pod_routes.get(&ipnet::IpNet::from(*a)) == Some(&OwnedRoute::Via(s))
                })
        });
        // the guard: every pod CIDR of the peer routed to drop or into its protected
        // tunnel
        let guarded = peer
            .pod_cidrs
            .iter()
            .all(|c| match have.routes.get(&c.trunc()) {
                Some(OwnedRoute::Drop) => true,
                Some(OwnedRoute::Via(s)) => Some(*s) == sw && prot.is_some(),
                _ => false,
            });
        if !guarded {
            all_protected = false;
        }
        let pc = snap
            .as_ref()
            .map(|s| peer_counters(have, s, peer))
            .unwrap_or_default();
        for (k, v) in &pc.sa_errors {
            *st.errors.entry(format!("ipsec-sa/{k}")).or_default() += v;
        }
        if pc.tunnel_drops > 0 {
            st.errors
                .insert(format!("{}/tunnel-drops", peer.name), pc.tunnel_drops);
        }
        st.peers.push(PeerStatus {
            name: peer.name.clone(),
            underlay: underlay_pair(&mesh.local, peer).map(|(_, d)| d),
            outbound,
            inbound: rx.len() == mesh.keys.rx.len(),
            steering,
            tx_generation: outbound.then_some(mesh.keys.tx),
            rx_generations: rx,
            packets_out: pc.sa_out.packets,
            bytes_out: pc.sa_out.bytes,
            packets_in: pc.sa_in.packets,
            bytes_in: pc.sa_in.bytes,
            replay_errors: pc.sa_errors.get("replay").copied().unwrap_or(0),
            integrity_errors: pc.integrity_errors(),
        });
    }
    // every owned tunnel that carries traffic is protected
    for t in have.tunnels.values() {
        if have.up.get(&t.sw_if_index).copied().unwrap_or(false)
            && !have.protects.contains_key(&t.sw_if_index)
        {
            all_protected = false;
        }
    }
    st.encrypted = all_protected && st.peers.iter().all(|p| p.outbound && p.inbound);
    st.fail_closed = all_protected;
    let lost = mesh
        .peers
        .iter()
        .filter(|p| outbound_lost(have, mesh, p.id))
        .count();
    if lost > 0 {
        st.errors.insert(LOST_OUTBOUND.into(), lost as u64);
    }
    if snap.is_none() {
        st.errors.insert(STATS_UNAVAILABLE.into(), 1);
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::plan::{plan, sa_entry};
    use crate::tunnel::tests::mesh;
    use scrambler_core::ClusterSecret;
    use scrambler_vpp_api::api::types::IpipTunnel;

    /// VPP holding `m` as planned, the peer's tunnel at sw_if_index 7.
    fn in_place(m: &Mesh) -> OwnedState {
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let p = &plan(m, &secret).unwrap()[0];
        let mut have = OwnedState::default();
        have.tunnels.insert(
            p.instance,
            IpipTunnel {
                instance: p.instance,
                sw_if_index: 7,
                ..Default::default()
            },
        );
        have.up.insert(7, true);
        for sa in &p.sas {
            have.sas.insert(sa.id, sa_entry(sa));
        }
        have.protects.insert(7, (p.sa_out, p.sa_in.clone()));
        for g in guard_routes(m) {
            have.routes.insert(g, OwnedRoute::Drop);
        }
        for r in &p.routes {
            have.routes.insert(*r, OwnedRoute::Via(7));
        }
        for r in &p.underlay_routes {
            have.pod_routes.insert(*r, OwnedRoute::Via(7));
        }
        have
    }

    #[test]
    fn a_peer_is_steered_only_with_its_pods_table_underlay_route() {
        let m = mesh(scrambler_core::Keys::single(1));
        let have = in_place(&m);
        let st = build(&have, None, &m);
        assert!(st.fail_closed && st.peers[0].is_up(), "{st:?}");
        let underlay: ipnet::IpNet = m.peers[0].underlay[0].into();
        // the pods' table route to the peer's underlay address deleted: not up (a caller
        // reconciles), still fail closed (the underlay guard drops that traffic)
        let mut gone = have.clone();
        gone.pod_routes.remove(&underlay);
        let st = build(&gone, None, &m);
        assert!(st.fail_closed && !st.peers[0].steering, "{st:?}");
        assert!(!st.peers[0].is_up());
        // ... or leading to drop, or elsewhere
        for r in [OwnedRoute::Drop, OwnedRoute::Via(8)] {
            let mut other = have.clone();
            other.pod_routes.insert(underlay, r);
            assert!(!build(&other, None, &m).peers[0].steering);
        }
    }
}
