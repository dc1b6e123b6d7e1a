//! The mesh: which nodes exist, where they are on the underlay, which pod CIDRs they own,
//! and which key generations are live.
//!
//! A mesh is plain data: every [`crate::Tunnel`] reconciles its dataplane to it. It is
//! read from a mesh file (JSON) by the node tool and by embedders.

use crate::error::{Error, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

/// A stable, unique node id (1..=65535), assigned by the datastore, never a hash of the name.
///
/// SPIs are derived from node ids, so two nodes must never share one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct NodeId(u16);

impl NodeId {
    /// A node id; 0 is reserved.
    pub fn new(id: u32) -> Result<Self> {
        match u16::try_from(id) {
            Ok(v) if v != 0 => Ok(NodeId(v)),
            _ => Err(Error::config(format!(
                "node id {id} out of range: ids are 1..=65535"
            ))),
        }
    }

    /// The numeric id.
    pub fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u32> for NodeId {
    type Error = Error;
    fn try_from(v: u32) -> Result<Self> {
        NodeId::new(v)
    }
}

impl From<NodeId> for u32 {
    fn from(n: NodeId) -> u32 {
        n.0 as u32
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A key generation number. Rotation means bumping it.
pub type Generation = u32;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    /// Node name (for people and logs).
    pub name: String,
    /// Stable unique id.
    pub id: NodeId,
    /// Underlay addresses (the outer addresses of ESP); the first of each family is used.
    pub underlay: Vec<IpAddr>,
    /// Pod CIDRs owned by this node.
    pub pod_cidrs: Vec<IpNet>,
}

impl Node {
    /// The underlay address of the same family as `peer`'s first underlay address.
    pub fn underlay_for(&self, v6: bool) -> Option<IpAddr> {
        self.underlay.iter().copied().find(|a| a.is_ipv6() == v6)
    }
}

/// Which key generations are live on a node.
///
/// Rotation from `g` to `g+1` goes through three meshes, applied on every node in turn:
/// 1. `tx = g`, `rx = {g, g+1}` — inbound states of g+1 everywhere;
/// 2. `tx = g+1`, `rx = {g, g+1}` — only then send with g+1;
/// 3. `tx = g+1`, `rx = {g+1}` — after a grace period, g goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Keys {
    /// The generation used for outbound traffic.
    pub tx: Generation,
    /// Generations accepted inbound (must contain `tx`).
    pub rx: BTreeSet<Generation>,
}

impl Keys {
    /// Only generation `g`, in and out.
    pub fn single(g: Generation) -> Self {
        Keys {
            tx: g,
            rx: BTreeSet::from([g]),
        }
    }
}

/// The desired mesh of one node: itself, its peers and the live key generations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mesh {
    /// The node this mesh is programmed on.
    pub local: Node,
    /// Every other node.
    pub peers: Vec<Node>,
    /// Live key generations.
    pub keys: Keys,
}

/// A cluster-wide mesh description: every node, from which each node's [`Mesh`] is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// All nodes.
    pub nodes: Vec<Node>,
    /// Live key generations.
    pub keys: Keys,
}

impl Cluster {
    /// The mesh as seen from node `name`.
    pub fn mesh_for(&self, name: &str) -> Result<Mesh> {
        let local = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| Error::config(format!("node {name:?} is not in the mesh")))?;
        // its twin would be neither the local node nor a peer, and so escape validation
        if self.nodes.iter().filter(|n| n.name == name).count() > 1 {
            return Err(Error::config(format!("node name {name:?} is used twice")));
        }
        let peers = self
            .nodes
            .iter()
            .filter(|n| n.name != name)
            .cloned()
            .collect();
        let mesh = Mesh {
            local,
            peers,
            keys: self.keys.clone(),
        };
        mesh.validate()?;
        Ok(mesh)
    }
}

impl Mesh {
    /// Checks the mesh is consistent: unique ids and names, underlay present, non-overlapping
    /// pod CIDRs, `tx` among `rx`, live generations close enough for collision-free SPIs.
    pub fn validate(&self) -> Result<()> {
        if !self.keys.rx.contains(&self.keys.tx) {
            return Err(Error::config(format!(
                "key generation {} is used for sending but not accepted inbound",
                self.keys.tx
            )));
        }
        if let (Some(lo), Some(hi)) = (self.keys.rx.first(), self.keys.rx.last()) {
            if hi - lo >= crate::keys::SPI_GENERATIONS {
                return Err(Error::config(format!(
                    "live key generations {lo}..{hi} span more than {} generations",
                    crate::keys::SPI_GENERATIONS
                )));
            }
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let all: Vec<&Node> = std::iter::once(&self.local).chain(&self.peers).collect();
        for n in &all {
            if !ids.insert(n.id) {
                return Err(Error::config(format!("node id {} is used twice", n.id)));
            }
            if !names.insert(n.name.as_str()) {
                return Err(Error::config(format!(
                    "node name {:?} is used twice",
                    n.name
                )));
            }
            if n.underlay.is_empty() {
                return Err(Error::config(format!(
                    "node {:?} has no underlay address",
                    n.name
                )));
            }
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                for ca in &a.pod_cidrs {
                    for cb in &b.pod_cidrs {
                        if ca.contains(&cb.network()) || cb.contains(&ca.network()) {
                            return Err(Error::config(format!(
                                "pod CIDR {ca} of {:?} overlaps {cb} of {:?}",
                                a.name, b.name
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The peer with this name.
    pub fn peer(&self, name: &str) -> Option<&Node> {
        self.peers.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn node(name: &str, id: u32, ul: &str, cidr: &str) -> Node {
        Node {
            name: name.into(),
            id: NodeId::new(id).unwrap(),
            underlay: vec![ul.parse().unwrap()],
            pod_cidrs: vec![cidr.parse().unwrap()],
        }
    }

    #[test]
    fn mesh_for_cuts_local_and_peers() {
        let c = Cluster {
            nodes: vec![
                node("a", 1, "192.0.2.1", "10.1.0.0/24"),
                node("b", 2, "192.0.2.2", "10.1.1.0/24"),
            ],
            keys: Keys::single(1),
        };
        let m = c.mesh_for("b").unwrap();
        assert_eq!(m.local.name, "b");
        assert_eq!(m.peers.len(), 1);
        assert!(c.mesh_for("zz").is_err());
    }

    #[test]
    fn overlapping_cidrs_and_duplicate_ids_are_refused() {
        let c = Cluster {
            nodes: vec![
                node("a", 1, "192.0.2.1", "10.1.0.0/16"),
                node("b", 2, "192.0.2.2", "10.1.1.0/24"),
            ],
            keys: Keys::single(1),
        };
        assert!(c
            .mesh_for("a")
            .unwrap_err()
            .to_string()
            .contains("overlaps"));
        let c = Cluster {
            nodes: vec![
                node("a", 1, "192.0.2.1", "10.1.0.0/24"),
                node("b", 1, "192.0.2.2", "10.1.1.0/24"),
            ],
            keys: Keys::single(1),
        };
        assert!(c.mesh_for("a").unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn node_id_zero_is_reserved() {
        assert!(NodeId::new(0).is_err());
        assert!(NodeId::new(70000).is_err());
        assert!(serde_json::from_str::<NodeId>("0").is_err());
    }
}
