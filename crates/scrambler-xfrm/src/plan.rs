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
        for peer in &mesh.peers {
            d.plan_peer(cfg, mesh, peer, secret)?;
        }
        d.plan_guard(cfg, mesh);
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
        let tx = secret.sa(local.id, peer.id, mesh.keys.tx);
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
            let rx = secret.sa(peer.id, local.id, *g);
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

    /// The fail-closed guard: block policies without if_id for cluster ↔ cluster traffic
    /// (every pair of the mesh's `clusterCidrs` and [`XfrmConfig::guard_supernets`] of one
    /// family), so a pod CIDR of a node not (or no longer) in the mesh is covered too, plus
    /// bypass policies that keep node-local pod traffic flowing.
    fn plan_guard(&mut self, cfg: &XfrmConfig, mesh: &Mesh) {
        let supernets: BTreeSet<IpNet> = mesh
            .cluster_cidrs
            .iter()
            .chain(&cfg.guard_supernets)
            .map(|c| c.trunc())
            .collect();
        let guard = cfg.priority(PRIO_GUARD);
        for s in &supernets {
            for t in supernets.iter().filter(|t| same_family(s, t)) {
                for dir in Dir::ALL {
                    self.policy(Policy {
                        key: PolicyKey {
                            dir,
                            src: *s,
                            dst: *t,
                            if_id: 0,
                        },
                        priority: guard,
                        block: true,
                        tmpl: None,
                    });
                }
            }
        }
        let local = &mesh.local;
        let covered: Vec<&IpNet> = local
            .pod_cidrs
            .iter()
            .filter(|l| supernets.iter().any(|s| overlaps(s, l)))
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
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        }
    }

    #[test]
    fn three_policies_per_peer_pair_and_one_cluster_guard() {
        let cfg = XfrmConfig::default();
        let secret = ClusterSecret::from_bytes(vec![1; 32]).unwrap();
        let d = Desired::plan(&cfg, &mesh(1, 3), Some(&secret)).unwrap();
        // 2 peers × 3 mesh + 3 guard (cluster → cluster) + 3 bypass
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
    fn guard_covers_the_cluster_cidrs_without_peers() {
        let cfg = XfrmConfig::default();
        // a node alone in the mesh still guards the whole cluster
        let d = Desired::plan(&cfg, &mesh(1, 1), None).unwrap();
        let guard: Vec<_> = d.policies.values().filter(|p| p.block).collect();
        assert_eq!(guard.len(), 3);
        let s: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(guard
            .iter()
            .all(|p| p.key.src == s && p.key.dst == s && p.key.if_id == 0));
        // an extra supernet of the config adds its pairs with the cluster's
        let cfg = XfrmConfig {
            guard_supernets: vec!["172.16.0.0/12".parse().unwrap()],
            ..Default::default()
        };
        let d = Desired::plan(&cfg, &mesh(1, 1), None).unwrap();
        assert_eq!(d.policies.values().filter(|p| p.block).count(), 12);
    }

    #[test]
    fn supernet_guard_adds_local_bypass() {
        let cfg = XfrmConfig::default();
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
}
