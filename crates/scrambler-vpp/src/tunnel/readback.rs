//! What VPP has of Scrambler's (one set of dumps), and how it compares with the plan.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use scrambler_core::{Mesh, NodeId};
use scrambler_vpp_api::api::types::{
    FibPath, FibPathType, IfStatusFlags, IpTable, IpipTunnel, IpsecSadEntryV4, IpsecSadFlags,
};
use scrambler_vpp_api::api::{ip, ipip, ipsec};
use scrambler_vpp_api::{VppClient, VppError};

use super::ids::{
    owned_sa, peer_of_sa, sa_id, sa_id_slots, tunnel_instance, tunnel_peer, Direction,
    POD_TABLE_ID, ROUTE_PREFERENCE,
};
use super::plan::{sa_entry, PeerPlan, SaPlan};
use scrambler_core::keys::spi;

/// What VPP has of ours.
#[derive(Default, Clone)]
pub(super) struct OwnedState {
    /// instance -> tunnel
    pub(super) tunnels: BTreeMap<u32, IpipTunnel>,
    /// sw_if_index -> admin up
    pub(super) up: HashMap<u32, bool>,
    /// sad_id -> entry
    pub(super) sas: BTreeMap<u32, IpsecSadEntryV4>,
    /// sad_id -> index of its counters in the stats segment (`/net/ipsec/sa`)
    pub(super) sa_stats: BTreeMap<u32, u32>,
    /// sw_if_index -> (sa_out, sa_in)
    pub(super) protects: HashMap<u32, (u32, BTreeSet<u32>)>,
    /// owned routes (marked paths, or paths via an owned tunnel): prefix -> where they lead
    pub(super) routes: BTreeMap<IpNet, OwnedRoute>,
    /// prefixes of table 0 held by routes that are not ours (an operator's, another agent's)
    pub(super) foreign_routes: BTreeSet<IpNet>,
    /// whether the pods' table ([`POD_TABLE_ID`]) exists (IPv4 and IPv6)
    pub(super) pod_table: bool,
    /// owned routes of the pods' table but its default routes (the attachment's): the
    /// peers' underlay addresses
    pub(super) pod_routes: BTreeMap<IpNet, OwnedRoute>,
}

/// Where an owned route leads.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum OwnedRoute {
    /// One marked drop path: the fail-closed guard.
    Drop,
    /// One path via this interface.
    Via(u32),
    /// Anything else (several paths, an unmarked or foreign path shape).
    Other(Vec<FibPath>),
}

impl OwnedRoute {
    pub(super) fn of(paths: &[FibPath]) -> OwnedRoute {
        match paths {
            [p] if p.r#type == FibPathType::FIB_API_PATH_TYPE_DROP
                && p.preference == ROUTE_PREFERENCE =>
            {
                OwnedRoute::Drop
            }
            [p] if p.r#type == FibPathType::FIB_API_PATH_TYPE_NORMAL
                && p.preference == ROUTE_PREFERENCE =>
            {
                OwnedRoute::Via(p.sw_if_index)
            }
            _ => OwnedRoute::Other(paths.to_vec()),
        }
    }
}

impl OwnedState {
    /// Dumps tunnels, interfaces, SAs, protections and routes (all requests sent
    /// together) and keeps what is ours.
    pub(super) async fn read(c: &VppClient) -> std::result::Result<OwnedState, VppError> {
        let route_dump = |table_id, is_ip6| ip::IpRouteDump {
            table: IpTable {
                table_id,
                is_ip6,
                name: String::new(),
            },
        };
        let (routes4, routes6) = (route_dump(0, false), route_dump(0, true));
        let (pod4, pod6) = (
            route_dump(POD_TABLE_ID, false),
            route_dump(POD_TABLE_ID, true),
        );
        let (tables, pod4, pod6) =
            tokio::try_join!(c.dump(&ip::IpTableDump {}), c.dump(&pod4), c.dump(&pod6),)?;
        let (tunnels, ifs, sas, protects, routes4, routes6) = tokio::try_join!(
            c.dump(&ipip::IpipTunnelDump {
                sw_if_index: u32::MAX,
            }),
            c.interfaces(),
            c.dump(&ipsec::IpsecSaV5Dump { sa_id: u32::MAX }),
            c.dump(&ipsec::IpsecTunnelProtectDump {
                sw_if_index: u32::MAX,
            }),
            c.dump(&routes4),
            c.dump(&routes6),
        )?;
        let mut a = OwnedState::default();
        for d in tunnels {
            if tunnel_peer(d.tunnel.instance).is_some() {
                a.tunnels.insert(d.tunnel.instance, d.tunnel);
            }
        }
        let ours: BTreeSet<u32> = a.tunnels.values().map(|t| t.sw_if_index).collect();
        for i in ifs {
            if ours.contains(&i.sw_if_index) {
                a.up.insert(
                    i.sw_if_index,
                    i.flags.contains(IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP),
                );
            }
        }
        for d in sas {
            if owned_sa(d.entry.sad_id) {
                a.sa_stats.insert(d.entry.sad_id, d.stat_index);
                a.sas.insert(d.entry.sad_id, d.entry);
            }
        }
        for d in protects {
            if ours.contains(&d.tun.sw_if_index) {
                a.protects.insert(
                    d.tun.sw_if_index,
                    (d.tun.sa_out, d.tun.sa_in.iter().copied().collect()),
                );
            }
        }
        let owned_path = |p: &FibPath| {
            p.preference == ROUTE_PREFERENCE
                || (p.r#type == FibPathType::FIB_API_PATH_TYPE_NORMAL
                    && ours.contains(&p.sw_if_index))
        };
        a.pod_table = [false, true].iter().all(|v6| {
            tables
                .iter()
                .any(|t| t.table.table_id == POD_TABLE_ID && t.table.is_ip6 == *v6)
        });
        for r in pod4.into_iter().chain(pod6) {
            match r.route.prefix.to_ipnet() {
                Some(p) if p.prefix_len() > 0 && r.route.paths.iter().any(owned_path) => {
                    a.pod_routes.insert(p, OwnedRoute::of(&r.route.paths));
                }
                _ => {}
            }
        }
        for r in routes4.into_iter().chain(routes6) {
            let owned = r.route.paths.iter().any(owned_path);
            match r.route.prefix.to_ipnet() {
                Some(p) if owned => {
                    a.routes.insert(p, OwnedRoute::of(&r.route.paths));
                }
                Some(p) => {
                    a.foreign_routes.insert(p);
                }
                None => {}
            }
        }
        Ok(a)
    }

    pub(super) fn sw_if_index(&self, instance: u32) -> Option<u32> {
        self.tunnels.get(&instance).map(|t| t.sw_if_index)
    }
}

/// True when the outbound SA of the tx generation was lost (deleted behind our back) rather
/// than never made: re-creating it would restart its sequence numbers — the AES-GCM IVs —
/// under the same key (nonce reuse, and replay drops at the peer). Only a new key (a new
/// epoch of either end, or a new generation) repairs that. Evidence that it was made: outside rotation step 2 (`switching`), the
/// inbound SA of the same generation under the current epochs is here, or the peer's
/// tunnel is (a reconcile makes a tunnel's SAs in the same run) while its protection is
/// gone or still names that SA — unless an inbound SA of the peer under other epochs is
/// there too (the tunnel was made under those: after an epoch change the new outbound SA
/// was never made; the ledger, before the dataplane, is what refuses a key that sent).
/// A node whose SAs *and* tunnels all vanished (a VPP restart) cannot tell: it comes back
/// with a new epoch, and the node's ledger refuses the old one.
///
/// Nor can VPP's state tell, while the local node keeps a previous epoch, an outbound SA
/// of the new epoch that was made and then deleted behind our back *together with* the
/// tunnel's protection and the new epoch's inbound SA, from one never made after the old
/// epoch's outbound SA was lost (the repair: a new epoch keeping the old one): both
/// leave the tunnel, no protection, no outbound SA and the kept inbound SA. It is taken
/// for never made — counting the kept SA as evidence instead would leave that repair
/// stuck (every new epoch kept in turn) — so there only the node's ledger
/// ([`scrambler_core::Ledger`], used by the agent and `scrambler mesh apply`) refuses
/// the key that sent; an embedder without it must not delete those three.
pub(super) fn outbound_lost(have: &OwnedState, mesh: &Mesh, peer: NodeId) -> bool {
    let switching = mesh.keys.rx.iter().any(|g| *g < mesh.keys.tx);
    let tx = sa_id(Direction::Outbound, peer, mesh.keys.tx);
    if switching || have.sas.contains_key(&tx) {
        return false;
    }
    // the inbound SA of the tx generation under the current epochs (in any slot): one of
    // a previous epoch of the local node, kept after an epoch change, says nothing about
    // the outbound SA of the new epoch
    let Some(node) = mesh.peers.iter().find(|p| p.id == peer) else {
        return false;
    };
    let rx_spi = spi(node.incarnation(), mesh.local.incarnation(), mesh.keys.tx);
    let rx_of_tx = sa_id_slots(Direction::Inbound, peer, mesh.keys.tx)
        .iter()
        .any(|id| have.sas.get(id).is_some_and(|e| e.spi == rx_spi));
    if mesh.keys.rx.contains(&mesh.keys.tx) && rx_of_tx {
        return true;
    }
    // the tunnel is evidence only when nothing says it was made under other epochs: an
    // inbound SA of the peer whose SPI has another epoch tag (the old epoch's, kept or
    // not yet deleted, after an epoch change) says the tunnel's SAs were of those
    let tag = node.epoch.spi_tag() ^ mesh.local.epoch.spi_tag();
    let other_epochs = have.sas.iter().any(|(id, e)| {
        peer_of_sa(*id) == Some((peer.get(), Direction::Inbound)) && (e.spi & 0xff) as u8 != tag
    });
    if other_epochs {
        return false;
    }
    match have.tunnels.get(&tunnel_instance(peer)) {
        Some(t) => have
            .protects
            .get(&t.sw_if_index)
            .is_none_or(|(out, _)| *out == tx),
        None => false,
    }
}

/// True when the peer's outbound SA is in VPP with attributes other than planned (its
/// flags, SPI, algorithm, salt or key): it has sent under its key, so it is not replaced —
/// re-adding it would restart its sequence numbers under that key. It stays in VPP, unused
/// (tunnel down and unprotected, routes to drop), so that every later reconcile, also one
/// while a rotation switches, still sees it and keeps the peer lost until a rotation
/// brings a new generation (a deleted SA could not be told from one never made).
pub(super) fn outbound_changed(have: &OwnedState, p: &PeerPlan) -> bool {
    p.sas
        .iter()
        .filter(|sa| sa.dir == Direction::Outbound)
        .any(|sa| have.sas.get(&sa.id).is_some_and(|h| kept_outbound(h, sa)))
}

/// True when `have`, VPP's SA for the outbound `want`, differs from it but not in its key
/// material: it is kept, never re-added under that key. One under other key material (a new
/// cluster secret) is replaced: its sequence numbers start again under a new key.
pub(super) fn kept_outbound(have: &IpsecSadEntryV4, want: &SaPlan) -> bool {
    want.dir == Direction::Outbound && !sa_matches(have, want) && same_key_material(have, want)
}

/// True when `have` holds `want`'s key and salt, or VPP's dump left the key out.
fn same_key_material(have: &IpsecSadEntryV4, want: &SaPlan) -> bool {
    let want_entry = sa_entry(want);
    (have.crypto_key.length == 0 || have.crypto_key == want_entry.crypto_key)
        // VPP keeps the salt as the bytes it received and dumps it byte-swapped
        // (`htonl` of those bytes); accept either order
        && (have.salt.swap_bytes() == want_entry.salt || have.salt == want_entry.salt)
}

/// The SA relevant bits VPP reports back.
pub(super) fn sa_matches(have: &IpsecSadEntryV4, want: &SaPlan) -> bool {
    let mask = IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN.0
        | IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ANTI_REPLAY.0
        | IpsecSadFlags::IPSEC_API_SAD_FLAG_IS_TUNNEL.0
        | IpsecSadFlags::IPSEC_API_SAD_FLAG_UDP_ENCAP.0;
    let want_entry = sa_entry(want);
    have.spi == want_entry.spi
        && have.protocol == want_entry.protocol
        && have.crypto_algorithm == want_entry.crypto_algorithm
        && have.flags.0 & mask == want_entry.flags.0 & mask
        && same_key_material(have, want)
}

/// True when reconcile (re)creates the tunnel of `p`.
pub(super) fn needs_new_tunnel(have: &OwnedState, p: &PeerPlan) -> bool {
    !have
        .tunnels
        .get(&p.instance)
        .is_some_and(|t| t.src.to_ip() == Some(p.src) && t.dst.to_ip() == Some(p.dst))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::plan::{plan, route_path, RouteTarget};
    use crate::tunnel::tests::{id, mesh};
    use scrambler_core::ClusterSecret;
    use scrambler_vpp_api::api::types::FibPathNhProto;

    fn with_tunnel(a: &mut OwnedState, protect: Option<u32>) {
        let t = IpipTunnel {
            instance: tunnel_instance(id(2)),
            sw_if_index: 7,
            ..Default::default()
        };
        a.tunnels.insert(t.instance, t);
        if let Some(out) = protect {
            a.protects.insert(7, (out, BTreeSet::new()));
        }
    }

    #[test]
    fn lost_outbound_sa_is_told_from_a_new_one() {
        use scrambler_core::Keys;
        let single = mesh(Keys::single(1));
        let out1 = sa_id(Direction::Outbound, id(2), 1);
        let in1 = sa_id(Direction::Inbound, id(2), 1);
        // nothing yet: a first setup
        assert!(!outbound_lost(&OwnedState::default(), &single, id(2)));
        // present: not lost
        let mut a = OwnedState::default();
        a.sas.insert(out1, IpsecSadEntryV4::default());
        assert!(!outbound_lost(&a, &single, id(2)));
        // the inbound SA of the generation is here, the outbound is not: lost
        let mut a = OwnedState::default();
        let mut e = IpsecSadEntryV4::default();
        e.spi = spi(single.peers[0].incarnation(), single.local.incarnation(), 1);
        a.sas.insert(in1, e);
        assert!(outbound_lost(&a, &single, id(2)));
        // ... but not one under other epochs (another SPI: a previous epoch's)
        let mut b = OwnedState::default();
        b.sas.insert(in1, IpsecSadEntryV4::default());
        assert!(!outbound_lost(&b, &single, id(2)));
        // ... except in rotation step 2, when the new outbound SA is made for the first time
        let switching = mesh(Keys {
            tx: 2,
            rx: BTreeSet::from([1, 2]),
        });
        a.sas.insert(
            sa_id(Direction::Inbound, id(2), 2),
            IpsecSadEntryV4::default(),
        );
        assert!(!outbound_lost(&a, &switching, id(2)));
        // the tunnel is here without protection, or protected by the missing SA: lost
        let mut a = OwnedState::default();
        with_tunnel(&mut a, None);
        assert!(outbound_lost(&a, &single, id(2)));
        let mut a = OwnedState::default();
        with_tunnel(&mut a, Some(out1));
        assert!(outbound_lost(&a, &single, id(2)));
        // the tunnel still protected by the previous generation: a direct switch, not a loss
        let mut a = OwnedState::default();
        with_tunnel(&mut a, Some(sa_id(Direction::Outbound, id(2), 0)));
        assert!(!outbound_lost(&a, &single, id(2)));
    }

    #[test]
    fn a_previous_epochs_inbound_sa_is_no_evidence_of_a_lost_outbound_sa() {
        use crate::tunnel::ids::sa_id_in_slot;
        use crate::tunnel::plan::{place_inbound, plan_at};
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let before = mesh(scrambler_core::Keys::single(1));
        let mut after = before.clone();
        after.local.epoch = scrambler_core::Epoch::new(0x77).unwrap();
        after.local.previous_epochs = vec![scrambler_core::PreviousEpoch {
            epoch: before.local.epoch,
            until: u64::MAX,
        }];
        // the old epoch's outbound SA was lost: only its inbound SA is left
        let mut old = plan_at(&before, &secret, 0).unwrap();
        place_inbound(&mut old[0], &BTreeMap::new());
        let mut a = OwnedState::default();
        let inbound = old[0]
            .sas
            .iter()
            .find(|s| s.dir == Direction::Inbound)
            .unwrap();
        a.sas.insert(inbound.id, sa_entry(inbound));
        assert!(outbound_lost(&a, &before, id(2)));
        // under the new epoch it is a kept SA of the old one: the new outbound SA is made
        assert!(!outbound_lost(&a, &after, id(2)));
        // also when the old tunnel is there, its protection gone with the lost SA
        with_tunnel(&mut a, None);
        assert!(outbound_lost(&a, &before, id(2)));
        assert!(!outbound_lost(&a, &after, id(2)));
        // the new epoch's inbound SA (slot 1) without its outbound SA: lost
        let mut new = plan_at(&after, &secret, 0).unwrap();
        place_inbound(&mut new[0], &a.sas);
        let current = new[0]
            .sas
            .iter()
            .find(|s| s.dir == Direction::Inbound && !s.kept)
            .unwrap();
        assert_eq!(current.id, sa_id_in_slot(Direction::Inbound, id(2), 1, 1));
        a.sas.insert(current.id, sa_entry(current));
        assert!(outbound_lost(&a, &after, id(2)));
    }

    #[test]
    fn changed_outbound_sa_is_lost_not_replaced() {
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let m = mesh(scrambler_core::Keys::single(1));
        let plans = plan(&m, &secret).unwrap();
        let p = &plans[0];
        let mut a = OwnedState::default();
        for sa in &p.sas {
            a.sas.insert(sa.id, sa_entry(sa));
        }
        assert!(!outbound_changed(&a, p));
        // VPP's dump leaves the key out: still the same SA
        let mut keyless = sa_entry(&p.sas[0]);
        keyless.crypto_key.length = 0;
        keyless.crypto_key.data = [0; 128];
        a.sas.insert(p.sa_out, keyless);
        assert!(!outbound_changed(&a, p));
        // anti-replay (or ESN, the SPI, the salt) differs: changed
        let mut e = sa_entry(&p.sas[0]);
        e.flags = IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN;
        a.sas.insert(p.sa_out, e);
        assert!(outbound_changed(&a, p));
        // other key material (a new cluster secret) is no key that has sent: replaced
        let mut e = sa_entry(&p.sas[0]);
        e.salt ^= 1;
        a.sas.insert(p.sa_out, e);
        assert!(!outbound_changed(&a, p));
        assert!(!sa_matches(&a.sas[&p.sa_out], &p.sas[0]));
        // a changed inbound SA is replaced (the peer sends with it), not a loss
        a.sas.insert(p.sa_out, sa_entry(&p.sas[0]));
        let inbound = &p.sas[1];
        let mut e = sa_entry(inbound);
        e.flags = IpsecSadFlags::IPSEC_API_SAD_FLAG_IS_INBOUND;
        a.sas.insert(inbound.id, e);
        assert!(!outbound_changed(&a, p));
        // a lost one (gone, its inbound twin here) counts as lost too
        a.sas.remove(&p.sa_out);
        assert!(outbound_lost(&a, &m, id(2)));
        // reconcile keeps a changed outbound SA in VPP: it keeps the peer lost, also while
        // a rotation switches (when a missing one would be taken for one never made)
        let switching = mesh(scrambler_core::Keys {
            tx: 2,
            rx: [1, 2].into_iter().collect(),
        });
        let sp = &plan(&switching, &secret).unwrap()[0];
        let out = sp
            .sas
            .iter()
            .find(|s| s.dir == Direction::Outbound)
            .unwrap();
        let mut b = OwnedState::default();
        let mut e = sa_entry(out);
        e.flags = IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN;
        b.sas.insert(out.id, e);
        assert!(!outbound_lost(&b, &switching, id(2)));
        assert!(outbound_changed(&b, sp));
    }

    #[test]
    fn owned_routes_are_told_by_their_marked_path() {
        let drop = route_path(RouteTarget::Drop, false);
        let via = route_path(RouteTarget::Via(7), true);
        assert_eq!(
            OwnedRoute::of(std::slice::from_ref(&drop)),
            OwnedRoute::Drop
        );
        assert_eq!(
            OwnedRoute::of(std::slice::from_ref(&via)),
            OwnedRoute::Via(7)
        );
        assert_eq!(via.proto, FibPathNhProto::FIB_API_PATH_NH_PROTO_IP6);
        // unmarked (an older Scrambler, or a foreign path shape): replaced, never kept
        let mut plain = via.clone();
        plain.preference = 0;
        assert!(matches!(OwnedRoute::of(&[plain]), OwnedRoute::Other(_)));
        assert!(matches!(
            OwnedRoute::of(&[drop.clone(), drop]),
            OwnedRoute::Other(_)
        ));
    }
}
