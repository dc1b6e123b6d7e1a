//! The tunnels, SAs and routes one node's VPP should have, computed from its mesh, and the
//! VPP messages' shape of them (SA entries, route paths).

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use scrambler_core::keys::SaKey;
use scrambler_core::{ClusterSecret, Error, Mesh, Node, NodeId, Result};
use scrambler_vpp_api::api::types::{
    FibPath, FibPathNh, FibPathNhProto, FibPathType, IpsecCryptoAlg, IpsecIntegAlg, IpsecProto,
    IpsecSadEntryV4, IpsecSadFlags, TunnelMode,
};

use super::ids::{sa_id, tunnel_instance, Direction, ROUTE_PREFERENCE};

/// One SA as we want it.
pub(super) struct SaPlan {
    pub(super) id: u32,
    pub(super) key: SaKey,
    pub(super) dir: Direction,
}

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
}

pub(super) fn plan(mesh: &Mesh, secret: &ClusterSecret) -> Result<Vec<PeerPlan>> {
    mesh.validate()?;
    let local = &mesh.local;
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
        }];
        for g in &mesh.keys.rx {
            sas.push(SaPlan {
                id: sa_id(Direction::Inbound, peer.id, *g),
                key: secret.sa(peer.incarnation(), local.incarnation(), *g),
                dir: Direction::Inbound,
            });
        }
        if mesh.keys.rx.len() > 4 {
            return Err(Error::Unsupported(format!(
                "VPP tunnel protection takes at most 4 inbound SAs, the mesh has {} rx generations",
                mesh.keys.rx.len()
            )));
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
        });
    }
    Ok(out)
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

pub(super) fn underlay_pair(local: &Node, peer: &Node) -> Option<(IpAddr, IpAddr)> {
    local
        .underlay
        .iter()
        .find_map(|l| peer.underlay_for(l.is_ipv6()).map(|p| (*l, p)))
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
    use crate::tunnel::tests::mesh;

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
        };
        let e = sa_entry(&sa);
        let mut wire = scrambler_vpp_api::codec::EncodeBuf::default();
        scrambler_vpp_api::codec::Encode::encode(&e.salt, &mut wire).unwrap();
        assert_eq!(&*wire, &key.rfc4106_material()[16..]);
        assert!(format!("{e:?}").contains("<redacted>"));
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
}
