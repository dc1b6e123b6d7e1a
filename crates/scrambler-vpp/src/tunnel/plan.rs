//! The tunnels, SAs and routes one node's VPP should have, computed from its mesh, and the
//! VPP messages' shape of them (SA entries, route paths).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use scrambler_core::keys::SaKey;
use scrambler_core::{ClusterSecret, Error, Mesh, Node, NodeId, Result};
use scrambler_vpp_api::api::types::{
    FibPath, FibPathNh, FibPathNhProto, FibPathType, IpsecCryptoAlg, IpsecIntegAlg, IpsecProto,
    IpsecSadEntryV4, IpsecSadFlags, TunnelMode,
};

#[cfg(doc)]
use super::ids::sa_id_in_slot;
use super::ids::{sa_id, tunnel_instance, Direction, ROUTE_PREFERENCE, SA_SLOTS};

/// One SA as we want it.
pub(super) struct SaPlan {
    pub(super) id: u32,
    pub(super) key: SaKey,
    pub(super) dir: Direction,
    /// An inbound SA of a previous epoch of the local node: kept while VPP has it, never
    /// made anew.
    pub(super) kept: bool,
}

/// Most inbound SAs VPP's tunnel protection takes per tunnel.
pub(super) const MAX_INBOUND_SAS: usize = 4;

/// One peer as we want it.
pub(super) struct PeerPlan {
    pub(super) name: String,
    pub(super) id: NodeId,
    pub(super) instance: u32,
    pub(super) src: IpAddr,
    pub(super) dst: IpAddr,
    pub(super) sas: Vec<SaPlan>,
    pub(super) sa_out: u32,
    pub(super) sa_in: BTreeSet<u32>,
    pub(super) routes: BTreeSet<IpNet>,
    /// The peer's underlay addresses (host prefixes), routed in the pods' table.
    pub(super) underlay_routes: BTreeSet<IpNet>,
}

pub(super) fn plan(mesh: &Mesh, secret: &ClusterSecret) -> Result<Vec<PeerPlan>> {
    plan_at(mesh, secret, scrambler_core::mesh::unix_now())
}

/// The plan at Unix time `now` (seconds), every inbound SA id in slot 0 until
/// [`place_inbound`] finds its slot. Inbound SAs: every rx generation under the local
/// node's epoch, then under each previous epoch still kept, newest first, as long as
/// tunnel protection's [`MAX_INBOUND_SAS`] allows (a previous epoch that does not fit is
/// left out, logged: the peers' traffic under it is dropped until they re-key).
pub(super) fn plan_at(mesh: &Mesh, secret: &ClusterSecret, now: u64) -> Result<Vec<PeerPlan>> {
    mesh.validate()?;
    let local = &mesh.local;
    if mesh.keys.rx.len() > MAX_INBOUND_SAS {
        return Err(Error::Unsupported(format!(
            "VPP tunnel protection takes at most {MAX_INBOUND_SAS} inbound SAs, the mesh has {} rx generations",
            mesh.keys.rx.len()
        )));
    }
    let mut kept: Vec<_> = local.kept_incarnations(now).collect();
    kept.reverse();
    let fit = (MAX_INBOUND_SAS / mesh.keys.rx.len().max(1)).saturating_sub(1);
    if kept.len() > fit {
        for k in &kept[fit..] {
            tracing::warn!(
                epoch = %k.epoch,
                rx_generations = mesh.keys.rx.len(),
                "previous epoch not kept: VPP tunnel protection takes at most {MAX_INBOUND_SAS} \
                 inbound SAs per peer (epochs x rx generations); peers still sending under \
                 it are dropped until they re-key"
            );
        }
        kept.truncate(fit);
    }
    let mut out = Vec::new();
    for peer in &mesh.peers {
        let Some((src, dst)) = underlay_pair(local, peer) else {
            return Err(Error::config(format!(
                "peer {:?} has no underlay address of the same family as node {:?}",
                peer.name, local.name
            )));
        };
        let mut sas = vec![SaPlan {
            id: sa_id(Direction::Outbound, peer.id, mesh.keys.tx),
            key: secret.sa(local.incarnation(), peer.incarnation(), mesh.keys.tx),
            dir: Direction::Outbound,
            kept: false,
        }];
        let current = std::iter::once((local.incarnation(), false));
        for (me, is_kept) in current.chain(kept.iter().map(|k| (*k, true))) {
            for g in &mesh.keys.rx {
                sas.push(SaPlan {
                    id: sa_id(Direction::Inbound, peer.id, *g),
                    key: secret.sa(peer.incarnation(), me, *g),
                    dir: Direction::Inbound,
                    kept: is_kept,
                });
            }
        }
        out.push(PeerPlan {
            name: peer.name.clone(),
            id: peer.id,
            instance: tunnel_instance(peer.id),
            src,
            dst,
            sa_out: sas[0].id,
            sa_in: sas[1..].iter().map(|s| s.id).collect(),
            sas,
            routes: peer.pod_cidrs.iter().map(|c| c.trunc()).collect(),
            underlay_routes: peer.underlay.iter().map(|a| IpNet::from(*a)).collect(),
        });
    }
    Ok(out)
}

/// Gives each inbound SA of `p` its id slot ([`sa_id_in_slot`]) from what VPP has
/// (`have`, SA id → entry): an SA found in any slot with its SPI keeps that id (nothing
/// moves, so the inbound SAs of a previous epoch stay as they are while the new epoch's
/// are added beside them); a kept one (previous epoch) not found is left out — never made
/// anew; a current one not found takes the first slot free in VPP and in the plan, else
/// the first free in the plan (the SA there is replaced).
pub(super) fn place_inbound(p: &mut PeerPlan, have: &BTreeMap<u32, IpsecSadEntryV4>) {
    let mut taken: BTreeSet<u32> = BTreeSet::new();
    // adopt: an inbound SA VPP has (by SPI) keeps its id
    let placed: Vec<bool> = p
        .sas
        .iter_mut()
        .map(|sa| {
            if sa.dir != Direction::Inbound {
                return true;
            }
            let slots = slots_of(sa.id);
            let here = slots.into_iter().find(|id| {
                !taken.contains(id) && have.get(id).is_some_and(|e| e.spi == sa.key.spi)
            });
            if let Some(id) = here {
                sa.id = id;
                taken.insert(id);
            }
            here.is_some()
        })
        .collect();
    // a previous epoch's SA that is not there is not made anew
    let sas = std::mem::take(&mut p.sas);
    let (sas, placed): (Vec<SaPlan>, Vec<bool>) = sas
        .into_iter()
        .zip(placed)
        .filter(|(sa, ok)| *ok || !sa.kept)
        .unzip();
    p.sas = sas;
    // the current epoch's SAs not there: a free slot
    for (sa, _) in p.sas.iter_mut().zip(placed).filter(|(_, ok)| !ok) {
        let slots = slots_of(sa.id);
        let free = slots
            .iter()
            .find(|id| !taken.contains(id) && !have.contains_key(id))
            .or_else(|| slots.iter().find(|id| !taken.contains(id)));
        if let Some(id) = free {
            sa.id = *id;
            taken.insert(*id);
        }
    }
    p.sa_in = p
        .sas
        .iter()
        .filter(|s| s.dir == Direction::Inbound)
        .map(|s| s.id)
        .collect();
}

/// Every slot of the SA id `id` (whatever its slot), slot 0 first.
fn slots_of(id: u32) -> [u32; SA_SLOTS as usize] {
    let base = id & !(0x3 << 24);
    [0, 1, 2, 3].map(|s| base | s << 24)
}

/// The cluster-wide guard: a drop route per cluster CIDR (`clusterCidrs` of the mesh),
/// below the peers' more specific routes, so pod traffic to a node not (or no longer) in the
/// mesh is dropped, never sent out of the uplink. A cluster CIDR that is also a peer's pod
/// CIDR is left to that peer's route (drop until its tunnel is up).
pub(super) fn guard_routes(mesh: &Mesh) -> BTreeSet<IpNet> {
    let peer_routes: BTreeSet<IpNet> = mesh
        .peers
        .iter()
        .flat_map(|p| p.pod_cidrs.iter().map(|c| c.trunc()))
        .collect();
    mesh.cluster_cidrs
        .iter()
        .map(|c| c.trunc())
        .filter(|c| !peer_routes.contains(c))
        .collect()
}

/// The tunnel's endpoints to `peer` ([`Node::underlay_pair`]: the same rule as the
/// peer's, whichever dataplane it runs).
pub(super) fn underlay_pair(local: &Node, peer: &Node) -> Option<(IpAddr, IpAddr)> {
    local.underlay_pair(peer)
}

pub(super) fn sa_entry(sa: &SaPlan) -> IpsecSadEntryV4 {
    let mut flags = IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ANTI_REPLAY;
    if scrambler_core::esp::ESN {
        flags = flags | IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN;
    }
    if sa.dir == Direction::Inbound {
        flags = flags | IpsecSadFlags::IPSEC_API_SAD_FLAG_IS_INBOUND;
    }
    // filled in place: the entry zeroes its key and salt when dropped, a temporary copy
    // of the key would not
    let mut entry = IpsecSadEntryV4::default();
    entry.sad_id = sa.id;
    entry.spi = sa.key.spi;
    entry.protocol = IpsecProto::IPSEC_API_PROTO_ESP;
    entry.crypto_algorithm = IpsecCryptoAlg::IPSEC_API_CRYPTO_ALG_AES_GCM_128;
    entry.crypto_key.length = 16;
    entry.crypto_key.data[..16].copy_from_slice(&sa.key.key);
    entry.integrity_algorithm = IpsecIntegAlg::IPSEC_API_INTEG_ALG_NONE;
    entry.flags = flags;
    // the salt's bytes travel in the order of rfc4106 key material (key ‖ salt)
    entry.salt = u32::from_be_bytes(sa.key.salt);
    entry.anti_replay_window_size = scrambler_core::esp::REPLAY_WINDOW;
    entry.tunnel.instance = u32::MAX;
    entry.tunnel.sw_if_index = u32::MAX;
    entry.tunnel.mode = TunnelMode::TUNNEL_API_MODE_P2P;
    entry
}

/// Where Scrambler steers a peer pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RouteTarget {
    /// Drop (the fail-closed guard).
    Drop,
    /// Into the peer's protected tunnel.
    Via(u32),
}

pub(super) fn route_path(to: RouteTarget, v6: bool) -> FibPath {
    let (sw_if_index, r#type) = match to {
        RouteTarget::Drop => (u32::MAX, FibPathType::FIB_API_PATH_TYPE_DROP),
        RouteTarget::Via(sw) => (sw, FibPathType::FIB_API_PATH_TYPE_NORMAL),
    };
    FibPath {
        sw_if_index,
        weight: 1,
        preference: ROUTE_PREFERENCE,
        r#type,
        proto: if v6 {
            FibPathNhProto::FIB_API_PATH_NH_PROTO_IP6
        } else {
            FibPathNhProto::FIB_API_PATH_NH_PROTO_IP4
        },
        nh: FibPathNh {
            classify_table_index: u32::MAX,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tunnel::tests::{id, mesh};

    #[test]
    fn sa_entries_zero_their_key_and_salt_when_dropped() {
        fn zeroed_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroed_on_drop::<scrambler_vpp_api::api::types::Key>();
        zeroed_on_drop::<IpsecSadEntryV4>();
        zeroed_on_drop::<scrambler_vpp_api::codec::EncodeBuf>();
        zeroed_on_drop::<SaKey>();
        // what their drop runs: the key bytes and the salt are zero afterwards
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let plans = plan(&mesh(scrambler_core::Keys::single(1)), &secret).unwrap();
        let mut e = sa_entry(&plans[0].sas[0]);
        assert!(e.salt != 0 && e.crypto_key.data.iter().any(|b| *b != 0));
        e.zeroize_secrets();
        assert_eq!(e.salt, 0);
        // the key is a field of its own type, zeroed by its own drop
        e.crypto_key.zeroize_secrets();
        assert!(e.crypto_key.data.iter().all(|b| *b == 0));
    }

    #[test]
    fn salt_keeps_the_rfc4106_byte_order() {
        use scrambler_core::keys::kat;
        let key = kat::secret().sa(kat::A, kat::B, 1);
        let sa = SaPlan {
            id: 1,
            key: key.clone(),
            dir: Direction::Outbound,
            kept: false,
        };
        let e = sa_entry(&sa);
        let mut wire = scrambler_vpp_api::codec::EncodeBuf::default();
        scrambler_vpp_api::codec::Encode::encode(&e.salt, &mut wire).unwrap();
        assert_eq!(&*wire, &key.rfc4106_material()[16..]);
        assert!(format!("{e:?}").contains("<redacted>"));
    }

    #[test]
    fn dual_family_underlays_pair_the_same_addresses_from_both_ends() {
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let base = mesh(scrambler_core::Keys::single(1));
        let mut a = base.local.clone();
        let mut b = base.peers[0].clone();
        // a lists IPv4 first, b IPv6 first: both ends pick IPv6 (the core's rule, the
        // kernel dataplane's too)
        a.underlay = vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()];
        b.underlay = vec!["2001:db8::2".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        let at = |local: &Node, peer: &Node| Mesh {
            local: local.clone(),
            peers: vec![peer.clone()],
            ..base.clone()
        };
        let pa = plan(&at(&a, &b), &secret).unwrap();
        let pb = plan(&at(&b, &a), &secret).unwrap();
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            (pa[0].src, pa[0].dst),
            (v6("2001:db8::1"), v6("2001:db8::2"))
        );
        assert_eq!((pb[0].src, pb[0].dst), (pa[0].dst, pa[0].src));
        assert_eq!(a.underlay_pair(&b), Some((pa[0].src, pa[0].dst)));
        // an IPv6-only peer of a node listing IPv4 first: planned over IPv6, not refused
        b.underlay = vec!["2001:db8::2".parse().unwrap()];
        let pa = plan(&at(&a, &b), &secret).unwrap();
        assert_eq!(
            (pa[0].src, pa[0].dst),
            (v6("2001:db8::1"), v6("2001:db8::2"))
        );
    }

    #[test]
    fn ipv6_underlay_and_dual_stack_pods_are_planned() {
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let mut m = mesh(scrambler_core::Keys::single(1));
        m.cluster_cidrs.push("fd10::/16".parse().unwrap());
        m.local.underlay = vec!["fd00:2::1".parse().unwrap()];
        for (i, p) in m.peers.iter_mut().enumerate() {
            p.underlay = vec![format!("fd00:2::{}", i + 2).parse().unwrap()];
            p.pod_cidrs
                .push(format!("fd10:0:{}::/64", i + 2).parse().unwrap());
        }
        m.local.pod_cidrs.push("fd10:0:1::/64".parse().unwrap());
        let plans = plan(&m, &secret).unwrap();
        assert!(plans.iter().all(|p| p.src.is_ipv6() && p.dst.is_ipv6()));
        assert!(plans
            .iter()
            .all(|p| p.routes.iter().any(|r| r.addr().is_ipv6())
                && p.routes.iter().any(|r| r.addr().is_ipv4())));
        assert!(guard_routes(&m).contains(&"fd10::/16".parse().unwrap()));
    }

    /// The SA entries VPP is sent for the known-answer nodes carry exactly the vectors'
    /// SPIs, keys and salts.
    #[test]
    fn sa_entries_carry_the_known_answer_vectors() {
        use scrambler_core::keys::kat;
        let mut m = mesh(scrambler_core::Keys::single(7));
        for (n, inc) in std::iter::once(&mut m.local)
            .chain(m.peers.iter_mut())
            .zip([kat::A, kat::B])
        {
            n.id = inc.id;
            n.epoch = inc.epoch;
        }
        let plans = plan(&m, &kat::secret()).unwrap();
        for (dir, (_, _, _, key, salt, spi)) in [
            (Direction::Outbound, kat::VECTORS[0]),
            (Direction::Inbound, kat::VECTORS[1]),
        ] {
            let sa = plans[0].sas.iter().find(|s| s.dir == dir).unwrap();
            let e = sa_entry(sa);
            assert_eq!(e.spi, spi);
            assert_eq!(e.crypto_key.length, 16);
            assert_eq!(hex::encode(&e.crypto_key.data[..16]), key);
            assert_eq!(format!("{:08x}", e.salt), salt);
        }
    }

    /// Node a after an epoch change (0xe1 → 0x77), keeping 0xe1 until Unix time 1000.
    fn after_epoch_change(keys: scrambler_core::Keys) -> (Mesh, Mesh) {
        let before = mesh(keys);
        let mut after = before.clone();
        after.local.epoch = scrambler_core::Epoch::new(0x77).unwrap();
        after.local.previous_epochs = vec![scrambler_core::PreviousEpoch {
            epoch: before.local.epoch,
            until: 1000,
        }];
        (before, after)
    }

    /// What VPP has after reconciling `plans`: their SAs by id.
    fn installed(plans: &[PeerPlan]) -> BTreeMap<u32, IpsecSadEntryV4> {
        plans
            .iter()
            .flat_map(|p| &p.sas)
            .map(|sa| (sa.id, sa_entry(sa)))
            .collect()
    }

    #[test]
    fn a_previous_epochs_inbound_sas_stay_in_their_slot_beside_the_new_ones() {
        use super::super::ids::sa_id_in_slot;
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let (before, after) = after_epoch_change(scrambler_core::Keys::single(1));
        let mut old = plan_at(&before, &secret, 999).unwrap();
        place_inbound(&mut old[0], &BTreeMap::new());
        let have = installed(&old);
        let in_slot = |s| sa_id_in_slot(Direction::Inbound, id(2), 1, s);
        assert!(have.contains_key(&in_slot(0)));

        // the epoch changed: the old inbound SA stays in slot 0, the new one takes slot 1
        let mut new = plan_at(&after, &secret, 999).unwrap();
        assert_eq!(new[0].sas.len(), 3);
        place_inbound(&mut new[0], &have);
        let p = &new[0];
        let kept = p.sas.iter().find(|s| s.kept).unwrap();
        let current = p
            .sas
            .iter()
            .find(|s| s.dir == Direction::Inbound && !s.kept)
            .unwrap();
        assert_eq!(kept.id, in_slot(0));
        assert_eq!(kept.key.spi, have[&in_slot(0)].spi);
        assert_eq!(current.id, in_slot(1));
        assert_ne!(current.key.spi, kept.key.spi);
        assert_eq!(p.sa_in, BTreeSet::from([in_slot(0), in_slot(1)]));
        // the outbound SA stays in slot 0 (a new key under the same id: replaced)
        assert_eq!(p.sa_out, sa_id(Direction::Outbound, id(2), 1));

        // nothing moves on the next run
        let have2 = installed(&new);
        let mut again = plan_at(&after, &secret, 999).unwrap();
        place_inbound(&mut again[0], &have2);
        assert_eq!(again[0].sa_in, p.sa_in);

        // past the deadline only the current one is planned, still in slot 1: slot 0 is
        // stale, and reconcile deletes it
        let mut expired = plan_at(&after, &secret, 1000).unwrap();
        place_inbound(&mut expired[0], &have2);
        assert_eq!(expired[0].sa_in, BTreeSet::from([in_slot(1)]));
        assert!(expired[0].sas.iter().all(|s| !s.kept));

        // a VPP without the old epoch's SA (restarted): nothing is made for it
        let mut fresh = plan_at(&after, &secret, 999).unwrap();
        place_inbound(&mut fresh[0], &BTreeMap::new());
        assert!(fresh[0].sas.iter().all(|s| !s.kept));
        assert_eq!(fresh[0].sa_in, BTreeSet::from([in_slot(0)]));
    }

    #[test]
    fn previous_epochs_beyond_four_inbound_sas_are_left_out_newest_kept() {
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let rotating = scrambler_core::Keys {
            tx: 1,
            rx: [1, 2].into(),
        };
        let (_, mut after) = after_epoch_change(rotating);
        after
            .local
            .previous_epochs
            .push(scrambler_core::PreviousEpoch {
                epoch: scrambler_core::Epoch::new(0x55).unwrap(),
                until: 1000,
            });
        let plans = plan_at(&after, &secret, 999).unwrap();
        let kept: Vec<&SaPlan> = plans[0].sas.iter().filter(|s| s.kept).collect();
        // 2 generations × (current + 1 previous) = 4: only the newest previous epoch
        assert_eq!(kept.len(), 2);
        let newest = scrambler_core::keys::spi(
            after.peers[0].incarnation(),
            scrambler_core::Incarnation {
                id: after.local.id,
                epoch: scrambler_core::Epoch::new(0x55).unwrap(),
            },
            1,
        );
        assert!(kept.iter().any(|s| s.key.spi == newest));
        let inbound = plans[0].sas.iter().filter(|s| s.dir == Direction::Inbound);
        assert_eq!(inbound.count(), MAX_INBOUND_SAS);
        // one generation: room for three previous epochs
        let (_, mut one) = after_epoch_change(scrambler_core::Keys::single(1));
        one.local
            .previous_epochs
            .push(scrambler_core::PreviousEpoch {
                epoch: scrambler_core::Epoch::new(0x55).unwrap(),
                until: 1000,
            });
        let plans = plan_at(&one, &secret, 999).unwrap();
        assert_eq!(plans[0].sas.iter().filter(|s| s.kept).count(), 2);
    }

    /// A kept inbound SA carries the known-answer vector of its (old) epoch.
    #[test]
    fn a_kept_inbound_sa_carries_the_known_answer_vector_of_its_epoch() {
        use scrambler_core::keys::kat;
        let mut m = mesh(scrambler_core::Keys::single(7));
        m.local.id = kat::A.id;
        m.local.epoch = kat::A2.epoch;
        m.local.previous_epochs = vec![scrambler_core::PreviousEpoch {
            epoch: kat::A.epoch,
            until: 1000,
        }];
        m.peers[0].id = kat::B.id;
        m.peers[0].epoch = kat::B.epoch;
        let plans = plan_at(&m, &kat::secret(), 999).unwrap();
        let kept = plans[0].sas.iter().find(|s| s.kept).unwrap();
        let e = sa_entry(kept);
        let (_, _, _, key, salt, spi) = kat::VECTORS[1];
        assert_eq!(e.spi, spi);
        assert_eq!(hex::encode(&e.crypto_key.data[..16]), key);
        assert_eq!(format!("{:08x}", e.salt), salt);
    }
}
