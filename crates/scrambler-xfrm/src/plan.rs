//! The desired XFRM objects and routes of one node, computed from its mesh.

use crate::config::{XfrmConfig, PRIO_BYPASS, PRIO_GUARD, PRIO_MESH};
use crate::model::{esp_shape, DesiredState, Dir, Policy, PolicyKey, StateKey, Tmpl};
use ipnet::IpNet;
use scrambler_core::{ClusterSecret, Error, Mesh, Node, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Everything one node should have.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    pub policies: BTreeMap<PolicyKey, Policy>,
    pub states: BTreeMap<StateKey, DesiredState>,
    pub routes: BTreeSet<IpNet>,
    /// Rotation step 2: an older generation than `tx` is still live, so outbound states
    /// of `tx` are being made for the first time.
    pub switching: bool,
}

/// The outer (underlay) addresses used between the local node and `peer`.
pub(crate) fn outer_pair(local: &Node, peer: &Node) -> Result<(IpAddr, IpAddr)> {
    let remote = *peer
        .underlay
        .first()
        .ok_or_else(|| Error::mesh(format!("node {:?} has no underlay address", peer.name)))?;
    let mine = local.underlay_for(remote.is_ipv6()).ok_or_else(|| {
        Error::mesh(format!(
            "node {:?} has no underlay address of the family of {remote} ({:?})",
            local.name, peer.name
        ))
    })?;
    Ok((mine, remote))
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    a.addr().is_ipv4() == b.addr().is_ipv4()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Desired {
    fn policy(&mut self, p: Policy) {
        self.policies.insert(p.key.clone(), p);
    }

    /// Plans the node's objects. With `secret == None` no states are planned.
    pub fn plan(cfg: &XfrmConfig, mesh: &Mesh, secret: Option<&ClusterSecret>) -> Result<Desired> {
        mesh.validate()?;
        let mut d = Desired {
            switching: mesh.keys.rx.iter().any(|g| *g < mesh.keys.tx),
            ..Desired::default()
        };
        let local = &mesh.local;
        for peer in &mesh.peers {
            d.plan_peer(cfg, mesh, peer, secret)?;
        }
        d.plan_guard(cfg, local, &mesh.peers);
        Ok(d)
    }

    fn plan_peer(
        &mut self,
        cfg: &XfrmConfig,
        mesh: &Mesh,
        peer: &Node,
        secret: Option<&ClusterSecret>,
    ) -> Result<()> {
        let local = &mesh.local;
        let (mine, theirs) = outer_pair(local, peer)?;
        let reqid = cfg.reqid(peer.id.get());
        let prio = cfg.priority(PRIO_MESH);
        for l in &local.pod_cidrs {
            for p in peer.pod_cidrs.iter().filter(|p| same_family(l, p)) {
                let out = Tmpl {
                    src: mine,
                    dst: theirs,
                    reqid,
                };
                let back = Tmpl {
                    src: theirs,
                    dst: mine,
                    reqid,
                };
                for (dir, src, dst, tmpl) in [
                    (Dir::Out, l, p, out),
                    (Dir::In, p, l, back),
                    (Dir::Fwd, p, l, back),
                ] {
                    self.policy(Policy {
                        key: PolicyKey {
                            dir,
                            src: *src,
                            dst: *dst,
                            if_id: cfg.if_id,
                        },
                        priority: prio,
                        block: false,
                        tmpl: Some(tmpl),
                    });
                }
            }
        }
        for p in &peer.pod_cidrs {
            self.routes.insert(p.trunc());
        }
        let Some(secret) = secret else {
            return Ok(());
        };
        let tx = secret.sa(local.incarnation(), peer.incarnation(), mesh.keys.tx);
        self.state(
            cfg,
            peer,
            StateKey {
                daddr: theirs,
                spi: tx.spi,
            },
            mine,
            &tx,
            false,
        );
        for g in &mesh.keys.rx {
            let rx = secret.sa(peer.incarnation(), local.incarnation(), *g);
            self.state(
                cfg,
                peer,
                StateKey {
                    daddr: mine,
                    spi: rx.spi,
                },
                theirs,
                &rx,
                true,
            );
        }
        Ok(())
    }

    fn state(
        &mut self,
        cfg: &XfrmConfig,
        peer: &Node,
        key: StateKey,
        saddr: IpAddr,
        sa: &scrambler_core::SaKey,
        inbound: bool,
    ) {
        let material = sa.rfc4106_material();
        let shape = esp_shape(key, saddr, cfg.reqid(peer.id.get()), cfg.if_id, &material);
        self.states.insert(
            key,
            DesiredState {
                shape,
                material,
                peer: peer.id.get(),
                generation: sa.generation,
                inbound,
            },
        );
    }

    /// The fail-closed guard: block policies without if_id for local pod CIDRs ↔ remote
    /// pod CIDRs (or the configured supernets), plus — when a supernet also covers local
    /// CIDRs — bypass policies that keep node-local pod traffic flowing.
    fn plan_guard(&mut self, cfg: &XfrmConfig, local: &Node, peers: &[Node]) {
        let targets: Vec<IpNet> = if cfg.guard_supernets.is_empty() {
            peers
                .iter()
                .flat_map(|p| p.pod_cidrs.iter().map(|c| c.trunc()))
                .collect()
        } else {
            cfg.guard_supernets.iter().map(|c| c.trunc()).collect()
        };
        let guard = cfg.priority(PRIO_GUARD);
        for l in &local.pod_cidrs {
            for t in targets.iter().filter(|t| same_family(l, t)) {
                for (dir, src, dst) in [(Dir::Out, l, t), (Dir::In, t, l), (Dir::Fwd, t, l)] {
                    self.policy(Policy {
                        key: PolicyKey {
                            dir,
                            src: src.trunc(),
                            dst: dst.trunc(),
                            if_id: 0,
                        },
                        priority: guard,
                        block: true,
                        tmpl: None,
                    });
                }
            }
        }
        let covered: Vec<&IpNet> = local
            .pod_cidrs
            .iter()
            .filter(|l| cfg.guard_supernets.iter().any(|s| overlaps(s, l)))
            .collect();
        let bypass = cfg.priority(PRIO_BYPASS);
        for a in &local.pod_cidrs {
            for b in covered.iter().filter(|b| same_family(a, b)) {
                for dir in Dir::ALL {
                    self.policy(Policy {
                        key: PolicyKey {
                            dir,
                            src: a.trunc(),
                            dst: b.trunc(),
                            if_id: 0,
                        },
                        priority: bypass,
                        block: false,
                        tmpl: None,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use scrambler_core::{Keys, NodeId};

    pub fn node(id: u32) -> Node {
        Node {
            name: format!("n{id}"),
            id: NodeId::new(id).unwrap(),
            epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).unwrap(),
            underlay: vec![format!("192.0.2.{id}").parse().unwrap()],
            pod_cidrs: vec![format!("10.{}.{}.0/24", id / 256, id % 256)
                .parse()
                .unwrap()],
        }
    }

    pub fn mesh(local: u32, n: u32) -> Mesh {
        Mesh {
            local: node(local),
            peers: (1..=n).filter(|i| *i != local).map(node).collect(),
            keys: Keys::single(1),
        }
    }

    #[test]
    fn three_policies_and_three_guards_per_peer_pair() {
        let cfg = XfrmConfig::default();
        let secret = ClusterSecret::from_bytes(vec![1; 32]).unwrap();
        let d = Desired::plan(&cfg, &mesh(1, 3), Some(&secret)).unwrap();
        // 2 peers × (3 mesh + 3 guard)
        assert_eq!(d.policies.len(), 12);
        assert_eq!(d.states.len(), 4);
        assert_eq!(d.routes.len(), 2);
        let mesh_pols = d.policies.values().filter(|p| p.tmpl.is_some()).count();
        assert_eq!(mesh_pols, 6);
        assert!(d
            .policies
            .values()
            .filter(|p| p.block)
            .all(|p| p.key.if_id == 0 && p.priority > cfg.priority_base + PRIO_MESH));
    }

    #[test]
    fn supernet_guard_adds_local_bypass() {
        let cfg = XfrmConfig {
            guard_supernets: vec!["10.0.0.0/8".parse().unwrap()],
            ..Default::default()
        };
        let d = Desired::plan(&cfg, &mesh(1, 3), None).unwrap();
        // 6 mesh + 3 guard (one supernet) + 3 bypass
        assert_eq!(d.policies.len(), 12);
        assert!(d.states.is_empty());
        let bypass: Vec<_> = d
            .policies
            .values()
            .filter(|p| !p.block && p.tmpl.is_none())
            .collect();
        assert_eq!(bypass.len(), 3);
        assert!(bypass.iter().all(|p| p.priority < cfg.priority(PRIO_GUARD)));
    }

    #[test]
    fn rotation_meshes_plan_rx_states_for_every_generation() {
        let cfg = XfrmConfig::default();
        let secret = ClusterSecret::from_bytes(vec![1; 32]).unwrap();
        let mut m = mesh(1, 2);
        m.keys = Keys {
            tx: 1,
            rx: [1, 2].into(),
        };
        let d = Desired::plan(&cfg, &m, Some(&secret)).unwrap();
        let inbound: Vec<_> = d.states.values().filter(|s| s.inbound).collect();
        assert_eq!(inbound.len(), 2);
        let out: Vec<_> = d.states.values().filter(|s| !s.inbound).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].generation, 1);
    }

    /// The states planned for the known-answer nodes carry exactly the vectors' SPIs and
    /// key‖salt, in the XFRM_MSG_NEWSA sent to the kernel.
    #[test]
    fn planned_states_carry_the_known_answer_vectors() {
        use netlink_packet_xfrm::{XfrmAttrs, XfrmMessage};
        use scrambler_core::keys::kat;
        let with = |inc: scrambler_core::Incarnation, n: u32| Node {
            id: inc.id,
            epoch: inc.epoch,
            ..node(n)
        };
        let m = Mesh {
            local: with(kat::A, 1),
            peers: vec![with(kat::B, 2)],
            keys: Keys::single(7),
        };
        let d = Desired::plan(&XfrmConfig::default(), &m, Some(&kat::secret())).unwrap();
        for (inbound, (_, _, _, key, salt, spi)) in
            [(false, kat::VECTORS[0]), (true, kat::VECTORS[1])]
        {
            let s = d.states.values().find(|s| s.inbound == inbound).unwrap();
            assert_eq!(s.shape.key.spi, spi);
            let XfrmMessage::AddSa(msg) = s.add_msg() else {
                panic!("not a NEWSA")
            };
            assert_eq!(msg.user_sa_info.id.spi, spi);
            let aead = msg
                .nlas
                .iter()
                .find_map(|a| match a {
                    XfrmAttrs::EncryptionAlgAead(a) => Some(a),
                    _ => None,
                })
                .unwrap();
            assert_eq!(hex::encode(&aead.alg_key), format!("{key}{salt}"));
        }
    }
}
