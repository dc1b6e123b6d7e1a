//! The mesh: which nodes exist, where they are on the underlay, which pod CIDRs they own,
//! and which key generations are live.
//!
//! A mesh is plain data: every [`crate::Tunnel`] reconciles its dataplane to it. It is
//! read from a mesh file (JSON) by the node tool and by embedders.

use crate::epoch::{Epoch, Incarnation};
use crate::error::{Error, Result};
use crate::node_encryption::NodeEncryption;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
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
            _ => Err(Error::mesh(format!(
                "node id {id} out of range: ids are 1..=65535"
            ))),
        }
    }

    /// A node id known to be nonzero at compile time (constants).
    #[cfg(any(test, feature = "test-vectors"))]
    pub(crate) const fn from_raw(id: u16) -> Self {
        assert!(id != 0, "node id 0 is reserved");
        NodeId(id)
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

/// Longest node name (a DNS subdomain, as Kubernetes node names are).
pub const MAX_NODE_NAME_LEN: usize = 253;

/// Checks that `name` is a plain node name: a DNS-1123 subdomain as Kubernetes requires of
/// node names — lowercase letters, digits, `-` and `.`, dot-separated labels that start and
/// end with a letter or digit, at most [`MAX_NODE_NAME_LEN`] characters. Such a name is
/// never a path (no `/`, no `..`), so it is safe as a file name under a state directory.
pub fn check_node_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::mesh(format!(
            "node name {name:?} {why}: node names are lowercase letters, digits, '-' and '.' \
             (a DNS subdomain, like Kubernetes node names), at most {MAX_NODE_NAME_LEN} characters"
        )))
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > MAX_NODE_NAME_LEN {
        return bad("is too long");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return bad(&format!("contains {c:?}"));
    }
    let alnum = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if name
        .split('.')
        .any(|l| !alnum(l.as_bytes().first()) || !alnum(l.as_bytes().last()))
    {
        return bad("has a part that does not start and end with a letter or digit");
    }
    Ok(())
}

/// A key generation number. Rotation means bumping it.
pub type Generation = u32;

/// One node of the cluster.
///
/// In JSON (`camelCase`), `epoch` is required: a mesh without it is refused with an error
/// that says how to give the node one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "NodeJson")]
pub struct Node {
    /// Node name (for people and logs).
    pub name: String,
    /// Stable unique id.
    pub id: NodeId,
    /// The epoch of the node's dataplane: new whenever the dataplane lost its SAs (see
    /// [`crate::epoch`]); every key with the node binds it.
    pub epoch: Epoch,
    /// Underlay addresses (the outer addresses of ESP); the first of each family is used.
    pub underlay: Vec<IpAddr>,
    /// Pod CIDRs owned by this node.
    pub pod_cidrs: Vec<IpNet>,
    /// Earlier epochs of the node whose inbound SAs it keeps until a deadline
    /// (`previousEpochs`, optional, empty by default): after an epoch change without a
    /// dataplane reset (a lost or refused outbound SA), the node's inbound SAs of the old
    /// epoch are intact, and its peers keep sending under them until they learn of the
    /// new epoch. Only inbound SAs are kept — never an outbound one under an old epoch —
    /// and only those still in the dataplane (none is made anew). Only the local node's
    /// list is acted on; a peer's is ignored. See [`PreviousEpoch`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_epochs: Vec<PreviousEpoch>,
}

/// Most previous epochs a node may list ([`Node::previous_epochs`]).
pub const MAX_PREVIOUS_EPOCHS: usize = 3;

/// Longest a previous epoch's inbound SAs may still be kept when a mesh is applied
/// (seconds past the time of the apply, see [`Node::check_previous_epoch_deadlines`]): an
/// hour, what `scrambler mesh epoch --keep-previous-secs` and the agent's epoch grace allow.
pub const MAX_PREVIOUS_EPOCH_SECS: u64 = 3600;

/// An earlier epoch of a node whose inbound SAs stay until `until` (JSON:
/// `{"epoch": "9f2c04e17a3b6d58", "until": 1764760000}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviousEpoch {
    /// The earlier epoch.
    pub epoch: Epoch,
    /// Unix time (seconds) until which its inbound SAs are kept; from then on a reconcile
    /// deletes them.
    pub until: u64,
}

/// The current Unix time in seconds (the clock previous epochs' deadlines are read on).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A [`Node`] as read, so that a missing epoch gets its own error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeJson {
    name: String,
    id: NodeId,
    epoch: Option<Epoch>,
    underlay: Vec<IpAddr>,
    pod_cidrs: Vec<IpNet>,
    #[serde(default)]
    previous_epochs: Vec<PreviousEpoch>,
}

impl TryFrom<NodeJson> for Node {
    type Error = String;
    fn try_from(n: NodeJson) -> std::result::Result<Node, String> {
        let epoch = n.epoch.ok_or_else(|| missing_epoch(&n.name))?;
        Ok(Node {
            name: n.name,
            id: n.id,
            epoch,
            underlay: n.underlay,
            pod_cidrs: n.pod_cidrs,
            previous_epochs: n.previous_epochs,
        })
    }
}

/// What a node without an epoch is told.
pub fn missing_epoch(name: &str) -> String {
    format!(
        "node {name:?} has no \"epoch\": every node needs one (16 hex digits, random, new \
         whenever its dataplane lost its SAs); give it one with \
         `scrambler mesh epoch --node {name} --mesh MESHFILE`"
    )
}

impl Node {
    /// The node's first underlay address of the IPv6 (`v6`) or IPv4 family, if any.
    pub fn underlay_for(&self, v6: bool) -> Option<IpAddr> {
        self.underlay.iter().copied().find(|a| a.is_ipv6() == v6)
    }

    /// The outer (underlay) addresses ESP uses between this node and `peer`: (this
    /// node's, the peer's). One rule, the same seen from either end whatever the order of
    /// the addresses: IPv6 when both nodes have an IPv6 underlay address, else IPv4; each
    /// node's first address of that family. `None` when they share no family (refused by
    /// [`Mesh::validate`]). Every dataplane pairs nodes with it, so a kernel node and a
    /// VPP node agree on their SAs' endpoints.
    pub fn underlay_pair(&self, peer: &Node) -> Option<(IpAddr, IpAddr)> {
        [true, false]
            .into_iter()
            .find_map(|v6| Some((self.underlay_for(v6)?, peer.underlay_for(v6)?)))
    }

    /// The node as one end of an SA: its id and epoch.
    pub fn incarnation(&self) -> Incarnation {
        Incarnation {
            id: self.id,
            epoch: self.epoch,
        }
    }

    /// The node as the receiving end of an SA under each of its previous epochs still kept
    /// at `now` (Unix seconds): those whose deadline has not passed.
    pub fn kept_incarnations(&self, now: u64) -> impl Iterator<Item = Incarnation> + '_ {
        self.previous_epochs
            .iter()
            .filter(move |p| p.until > now)
            .map(|p| Incarnation {
                id: self.id,
                epoch: p.epoch,
            })
    }

    /// Checks that no previous epoch is kept more than [`MAX_PREVIOUS_EPOCH_SECS`] past
    /// `now` (Unix seconds): a deadline further out (a typo, milliseconds for seconds)
    /// would keep inbound SAs of an epoch the node left for that long.
    pub fn check_previous_epoch_deadlines(&self, now: u64) -> Result<()> {
        let latest = now.saturating_add(MAX_PREVIOUS_EPOCH_SECS);
        match self.previous_epochs.iter().find(|p| p.until > latest) {
            Some(p) => Err(Error::mesh(format!(
                "previous epoch {} of node {:?} is kept until {} (Unix seconds), {} s from \
                 now: at most {MAX_PREVIOUS_EPOCH_SECS} s (`scrambler mesh epoch \
                 --keep-previous-secs` writes it so)",
                p.epoch,
                self.name,
                p.until,
                p.until - now
            ))),
            None => Ok(()),
        }
    }

    /// Checks the previous epochs: at most [`MAX_PREVIOUS_EPOCHS`], none the current
    /// epoch or listed twice, and every one's SPI tag ([`Epoch::spi_tag`]) other than the
    /// current epoch's and the others': the inbound SAs of all of them coexist on the
    /// node, told apart by their SPIs, whose low byte is the tag.
    fn validate_previous_epochs(&self) -> Result<()> {
        if self.previous_epochs.len() > MAX_PREVIOUS_EPOCHS {
            return Err(Error::mesh(format!(
                "node {:?} lists {} previous epochs: at most {MAX_PREVIOUS_EPOCHS}",
                self.name,
                self.previous_epochs.len()
            )));
        }
        let mut tags = HashSet::from([self.epoch.spi_tag()]);
        for p in &self.previous_epochs {
            if p.epoch == self.epoch {
                return Err(Error::mesh(format!(
                    "node {:?} lists its current epoch {} as a previous epoch",
                    self.name, p.epoch
                )));
            }
            if !tags.insert(p.epoch.spi_tag()) {
                return Err(Error::mesh(format!(
                    "previous epoch {} of node {:?} has the SPI tag {:02x} of its current \
                     or another previous epoch: their inbound SAs would share SPIs (an \
                     epoch taken by the agent or `scrambler mesh epoch` never does)",
                    p.epoch,
                    self.name,
                    p.epoch.spi_tag()
                )));
            }
        }
        Ok(())
    }

    /// The node's tunnel addresses, at most one per family: the first address after the
    /// network address of its first pod CIDR of that family (IPAM's default gateway
    /// address, which it never hands to a pod). The node holds it and sends its own
    /// traffic to remote pods from it, so node ↔ remote pod traffic is pod-CIDR traffic
    /// that the mesh encrypts; other nodes' pods reach the node at this address. A pod
    /// CIDR too small for a gateway (IPv4 /31, /32; IPv6 /127, /128) gives none.
    pub fn tunnel_addresses(&self) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        for c in &self.pod_cidrs {
            if out.iter().any(|a| a.is_ipv6() == c.addr().is_ipv6()) {
                continue;
            }
            let first = match c.trunc() {
                IpNet::V4(n) if n.prefix_len() <= 30 => {
                    IpAddr::from(u32::from(n.network()).wrapping_add(1).to_be_bytes())
                }
                IpNet::V6(n) if n.prefix_len() <= 126 => {
                    IpAddr::from(u128::from(n.network()).wrapping_add(1).to_be_bytes())
                }
                _ => continue,
            };
            out.push(first);
        }
        out
    }

    /// The tunnel address of family `v6` ([`Node::tunnel_addresses`]).
    pub fn tunnel_address(&self, v6: bool) -> Option<IpAddr> {
        self.tunnel_addresses()
            .into_iter()
            .find(|a| a.is_ipv6() == v6)
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
    /// The cluster's pod supernets (see [`Cluster::cluster_cidrs`]).
    #[serde(default)]
    pub cluster_cidrs: Vec<IpNet>,
    /// Node encryption (see [`Cluster::node_encryption`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_encryption: Option<NodeEncryption>,
}

/// A cluster-wide mesh description: every node, from which each node's [`Mesh`] is cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// All nodes.
    pub nodes: Vec<Node>,
    /// Live key generations.
    pub keys: Keys,
    /// The cluster's pod supernets (`clusterCidrs`, required): every node's pod CIDRs lie
    /// inside them, and every node guards them whether or not it knows every peer — traffic
    /// between them that no mesh tunnel carries is dropped, never sent in cleartext.
    #[serde(default)]
    pub cluster_cidrs: Vec<IpNet>,
    /// Node encryption (`nodeEncryption`, optional, off when absent): the nodes' own
    /// traffic to each other's underlay addresses rides the mesh too, except ESP and the
    /// bypass ports (see [`crate::node_encryption`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_encryption: Option<NodeEncryption>,
}

impl Cluster {
    /// The mesh as seen from node `name` (validated).
    pub fn mesh_for(&self, name: &str) -> Result<Mesh> {
        check_node_name(name)?;
        let local = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                Error::mesh(format!(
                    "node {name:?} is not in the mesh; its nodes are: {}",
                    if names.is_empty() {
                        "(none)".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
        // its twin would be neither the local node nor a peer, and so escape validation
        if self.nodes.iter().filter(|n| n.name == name).count() > 1 {
            return Err(Error::mesh(format!("node name {name:?} is used twice")));
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
            cluster_cidrs: self.cluster_cidrs.clone(),
            node_encryption: self.node_encryption.clone(),
        };
        mesh.validate()?;
        Ok(mesh)
    }

    /// Checks the whole cluster as [`Mesh::validate`] does for one node's mesh.
    pub fn validate(&self) -> Result<()> {
        match self.nodes.first() {
            Some(first) => self.mesh_for(&first.name).map(|_| ()),
            None => Err(Error::mesh("the mesh has no nodes")),
        }
    }
}

impl Mesh {
    /// Whether the local node's ESP to some peer runs over IPv6 ([`Node::underlay_pair`]),
    /// i.e. whether its largest ESP overhead is IPv6's: what an MTU for traffic to any
    /// peer must allow for. Without peers, the family of the local node's first underlay
    /// address.
    pub fn outer_v6(&self) -> bool {
        if self.peers.is_empty() {
            return self.local.underlay.first().is_some_and(|a| a.is_ipv6());
        }
        self.peers
            .iter()
            .filter_map(|p| self.local.underlay_pair(p))
            .any(|(mine, _)| mine.is_ipv6())
    }

    /// Checks the mesh is consistent: plain ([`check_node_name`]) and unique names, unique
    /// ids, previous epochs that fit ([`Node::previous_epochs`]: at most
    /// [`MAX_PREVIOUS_EPOCHS`], SPI tags distinct from the current epoch's and each
    /// other's), underlay present and no underlay address shared by two nodes,
    /// non-overlapping pod CIDRs, `tx` among `rx`, live generations close enough for collision-free SPIs, and
    /// cluster CIDRs given, holding every pod CIDR and no underlay address.
    pub fn validate(&self) -> Result<()> {
        self.validate_cluster_cidrs()?;
        if let Some(n) = &self.node_encryption {
            n.validate()?;
        }
        if !self.keys.rx.contains(&self.keys.tx) {
            return Err(Error::mesh(format!(
                "key generation {} is used for sending but not accepted inbound",
                self.keys.tx
            )));
        }
        if let (Some(lo), Some(hi)) = (self.keys.rx.first(), self.keys.rx.last()) {
            if hi - lo >= crate::keys::SPI_GENERATIONS {
                return Err(Error::mesh(format!(
                    "live key generations {lo}..{hi} span more than {} generations",
                    crate::keys::SPI_GENERATIONS
                )));
            }
        }
        let mut ids = HashSet::new();
        let mut names = HashSet::new();
        let mut underlay: HashMap<IpAddr, &str> = HashMap::new();
        let all: Vec<&Node> = std::iter::once(&self.local).chain(&self.peers).collect();
        for n in &all {
            check_node_name(&n.name)?;
            n.validate_previous_epochs()?;
            if !ids.insert(n.id) {
                return Err(Error::mesh(format!("node id {} is used twice", n.id)));
            }
            if !names.insert(n.name.as_str()) {
                return Err(Error::mesh(format!("node name {:?} is used twice", n.name)));
            }
            if n.underlay.is_empty() {
                return Err(Error::mesh(format!(
                    "node {:?} has no underlay address",
                    n.name
                )));
            }
            // two nodes on one underlay address would share the outbound (daddr, SPI) of
            // the peers whose ids agree mod 256: one SA would silently replace the other
            for a in &n.underlay {
                if let Some(other) = underlay.insert(*a, &n.name) {
                    return Err(Error::mesh(format!(
                        "underlay address {a} is used by both {other:?} and {:?}",
                        n.name
                    )));
                }
            }
        }
        // ESP runs between two underlay addresses of one family
        for p in &self.peers {
            let shared = self
                .local
                .underlay
                .iter()
                .any(|l| p.underlay.iter().any(|u| u.is_ipv6() == l.is_ipv6()));
            if !shared {
                return Err(Error::mesh(format!(
                    "nodes {:?} ({}) and {:?} ({}) have no underlay address family in common: \
                     ESP needs an IPv4 or an IPv6 underlay address on both",
                    self.local.name,
                    list(&self.local.underlay),
                    p.name,
                    list(&p.underlay)
                )));
            }
        }
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                for ca in &a.pod_cidrs {
                    for cb in &b.pod_cidrs {
                        if ca.contains(&cb.network()) || cb.contains(&ca.network()) {
                            return Err(Error::mesh(format!(
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

    /// `clusterCidrs` is present; every pod CIDR lies inside one of them, and no underlay
    /// address does (the guard would block the node's own ESP).
    fn validate_cluster_cidrs(&self) -> Result<()> {
        if self.cluster_cidrs.is_empty() {
            return Err(Error::mesh(
                "the mesh has no clusterCidrs: list the cluster's pod supernets, e.g. \
                 \"clusterCidrs\": [\"10.244.0.0/16\"] (every node's pod CIDRs must lie inside \
                 them; every node drops traffic between them that the mesh does not encrypt)",
            ));
        }
        for n in std::iter::once(&self.local).chain(&self.peers) {
            for c in &n.pod_cidrs {
                if !self
                    .cluster_cidrs
                    .iter()
                    .any(|s| s.contains(&c.network()) && s.prefix_len() <= c.prefix_len())
                {
                    return Err(Error::mesh(format!(
                        "pod CIDR {c} of {:?} is outside the clusterCidrs {}",
                        n.name,
                        list(&self.cluster_cidrs)
                    )));
                }
            }
            if let Some(a) = n
                .underlay
                .iter()
                .find(|a| self.cluster_cidrs.iter().any(|s| s.contains(*a)))
            {
                return Err(Error::mesh(format!(
                    "underlay address {a} of {:?} is inside the clusterCidrs {}: the guard \
                     would drop the mesh's own ESP",
                    n.name,
                    list(&self.cluster_cidrs)
                )));
            }
        }
        Ok(())
    }

    /// The peer with this name.
    pub fn peer(&self, name: &str) -> Option<&Node> {
        self.peers.iter().find(|p| p.name == name)
    }
}

fn list<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn node(name: &str, id: u32, ul: &str, cidr: &str) -> Node {
        Node {
            name: name.into(),
            id: NodeId::new(id).unwrap(),
            epoch: Epoch::new(0x1000 + id as u64).unwrap(),
            underlay: vec![ul.parse().unwrap()],
            pod_cidrs: vec![cidr.parse().unwrap()],
            previous_epochs: Vec::new(),
        }
    }

    fn cluster(nodes: Vec<Node>) -> Cluster {
        Cluster {
            nodes,
            keys: Keys::single(1),
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            node_encryption: None,
        }
    }

    fn two_nodes() -> Cluster {
        cluster(vec![
            node("a", 1, "192.0.2.1", "10.1.0.0/24"),
            node("b", 2, "192.0.2.2", "10.1.1.0/24"),
        ])
    }

    #[test]
    fn mesh_for_cuts_local_and_peers() {
        let c = two_nodes();
        let m = c.mesh_for("b").unwrap();
        assert_eq!(m.local.name, "b");
        assert_eq!(m.peers.len(), 1);
        assert!(c.mesh_for("zz").is_err());
    }

    #[test]
    fn overlapping_cidrs_and_duplicate_ids_are_refused() {
        let c = cluster(vec![
            node("a", 1, "192.0.2.1", "10.1.0.0/16"),
            node("b", 2, "192.0.2.2", "10.1.1.0/24"),
        ]);
        assert!(c
            .mesh_for("a")
            .unwrap_err()
            .to_string()
            .contains("overlaps"));
        let c = cluster(vec![
            node("a", 1, "192.0.2.1", "10.1.0.0/24"),
            node("b", 1, "192.0.2.2", "10.1.1.0/24"),
        ]);
        assert!(c.mesh_for("a").unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn two_nodes_on_one_underlay_address_are_refused() {
        let c = cluster(vec![
            node("a", 1, "192.0.2.1", "10.1.0.0/24"),
            node("b", 257, "192.0.2.1", "10.1.1.0/24"),
        ]);
        let e = c.mesh_for("a").unwrap_err().to_string();
        assert!(
            e.contains("192.0.2.1") && e.contains("\"a\"") && e.contains("\"b\""),
            "{e}"
        );
        assert!(c.validate().is_err());
    }

    #[test]
    fn node_names_must_be_plain_names() {
        for ok in ["a", "node1", "node-1.example.org", "0", &"a".repeat(253)] {
            check_node_name(ok).unwrap();
        }
        for bad in [
            "",
            "../../x",
            "a/b",
            "..",
            ".a",
            "a.",
            "a..b",
            "-a",
            "a-",
            "Node1",
            "a b",
            "a\0",
            "ü",
            &"a".repeat(254),
        ] {
            let e = check_node_name(bad).unwrap_err();
            assert_eq!(e.code(), 7, "{bad:?}");
            assert!(e.to_string().contains("node name"), "{bad:?}: {e}");
        }
        let c = cluster(vec![node("../x", 1, "192.0.2.1", "10.1.0.0/24")]);
        assert!(c.validate().is_err());
        // the name asked for is checked before it is looked up
        let c = cluster(vec![node("a", 1, "192.0.2.1", "10.1.0.0/24")]);
        let e = c.mesh_for("../../x").unwrap_err().to_string();
        assert!(e.contains("lowercase letters"), "{e}");
    }

    #[test]
    fn unknown_node_lists_the_mesh_nodes_in_mesh_words() {
        let c = two_nodes();
        let e = c.mesh_for("zz").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid mesh: node \"zz\" is not in the mesh; its nodes are: a, b"
        );
        assert_eq!(e.code(), 7);
    }

    #[test]
    fn cluster_cidrs_are_required_and_hold_every_pod_cidr() {
        let mut c = two_nodes();
        c.cluster_cidrs.clear();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("no clusterCidrs") && e.contains("10.244.0.0/16"),
            "{e}"
        );
        c.cluster_cidrs = vec!["10.1.0.0/24".parse().unwrap()];
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("10.1.1.0/24") && e.contains("\"b\"") && e.contains("outside"),
            "{e}"
        );
        c.cluster_cidrs = vec!["10.1.0.0/16".parse().unwrap()];
        c.validate().unwrap();
        assert_eq!(c.mesh_for("a").unwrap().cluster_cidrs, c.cluster_cidrs);
        c.cluster_cidrs.push("192.0.2.0/24".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("underlay address 192.0.2.1"), "{e}");
    }

    #[test]
    fn tunnel_address_is_the_first_address_of_the_first_pod_cidr_per_family() {
        let mut n = node("a", 1, "192.0.2.1", "10.1.0.0/24");
        n.pod_cidrs.push("10.9.0.0/16".parse().unwrap());
        n.pod_cidrs.push("fd00:1::/64".parse().unwrap());
        assert_eq!(
            n.tunnel_addresses(),
            vec![
                "10.1.0.1".parse::<IpAddr>().unwrap(),
                "fd00:1::1".parse().unwrap()
            ]
        );
        assert_eq!(n.tunnel_address(false), Some("10.1.0.1".parse().unwrap()));
        n.pod_cidrs = vec!["10.1.0.7/31".parse().unwrap()];
        assert!(n.tunnel_addresses().is_empty());
        // a CIDR written with host bits is taken by its network
        n.pod_cidrs = vec!["10.1.0.7/24".parse().unwrap()];
        assert_eq!(n.tunnel_address(false), Some("10.1.0.1".parse().unwrap()));
    }

    #[test]
    fn previous_epochs_kept_more_than_an_hour_from_now_are_refused() {
        let mut n = two_nodes().nodes[0].clone();
        let now = 1_000_000;
        n.previous_epochs = vec![PreviousEpoch {
            epoch: Epoch::new(0x10ff).unwrap(),
            until: now + MAX_PREVIOUS_EPOCH_SECS,
        }];
        n.check_previous_epoch_deadlines(now).unwrap();
        // past deadlines are fine (the apply deletes those SAs)
        n.previous_epochs[0].until = 5;
        n.check_previous_epoch_deadlines(now).unwrap();
        n.previous_epochs[0].until = now + MAX_PREVIOUS_EPOCH_SECS + 1;
        let e = n
            .check_previous_epoch_deadlines(now)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3601 s from now") && e.contains("at most 3600"),
            "{e}"
        );
        // milliseconds for seconds
        n.previous_epochs[0].until = now * 1000;
        assert!(n.check_previous_epoch_deadlines(now).is_err());
    }

    #[test]
    fn previous_epochs_are_optional_checked_and_kept_until_their_deadline() {
        // a mesh file without the field reads as before, and writes as before
        let j = r#"{"name":"a","id":1,"epoch":"0000000000001001","underlay":["192.0.2.1"],
                    "podCidrs":["10.1.0.0/24"]}"#;
        let n: Node = serde_json::from_str(j).unwrap();
        assert!(n.previous_epochs.is_empty());
        assert!(!serde_json::to_string(&n)
            .unwrap()
            .contains("previousEpochs"));
        let j = r#"{"name":"a","id":1,"epoch":"0000000000001001","underlay":["192.0.2.1"],
                    "podCidrs":["10.1.0.0/24"],
                    "previousEpochs":[{"epoch":"00000000000010ff","until":100}]}"#;
        let n: Node = serde_json::from_str(j).unwrap();
        assert_eq!(
            n.previous_epochs,
            vec![PreviousEpoch {
                epoch: Epoch::new(0x10ff).unwrap(),
                until: 100
            }]
        );
        let back: Node = serde_json::from_str(&serde_json::to_string(&n).unwrap()).unwrap();
        assert_eq!(back, n);
        // kept strictly before the deadline
        let kept = |now| {
            n.kept_incarnations(now)
                .map(|i| i.epoch.get())
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(99), vec![0x10ff]);
        assert!(kept(100).is_empty());
        // validated with the mesh
        let mut c = two_nodes();
        c.nodes[0].previous_epochs = n.previous_epochs.clone();
        c.validate().unwrap();
        let prev = |v: u64| PreviousEpoch {
            epoch: Epoch::new(v).unwrap(),
            until: 100,
        };
        for (bad, why) in [
            (vec![prev(0x1001)], "current epoch"),
            (vec![prev(0x2001)], "SPI tag 01"),
            (vec![prev(0x10ff), prev(0x20ff)], "SPI tag ff"),
            (
                vec![prev(0x10f1), prev(0x10f2), prev(0x10f3), prev(0x10f4)],
                "at most 3",
            ),
        ] {
            c.nodes[0].previous_epochs = bad;
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("\"a\""), "{e}");
        }
        // an unknown field in an entry is refused, not ignored
        let j = j.replace("\"until\":100", "\"until\":100,\"x\":1");
        assert!(serde_json::from_str::<Node>(&j).is_err());
    }

    #[test]
    fn node_id_zero_is_reserved() {
        assert!(NodeId::new(0).is_err());
        assert!(NodeId::new(70000).is_err());
        assert!(serde_json::from_str::<NodeId>("0").is_err());
    }

    #[test]
    fn underlay_pairs_are_symmetric_whatever_the_address_order() {
        let both = |name, id, first: &str, second: &str| Node {
            underlay: vec![first.parse().unwrap(), second.parse().unwrap()],
            ..node(name, id, "192.0.2.9", "10.1.9.0/24")
        };
        let k1 = both("k1", 1, "192.0.2.1", "2001:db8::1");
        let k2 = both("k2", 2, "2001:db8::2", "192.0.2.2");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            k1.underlay_pair(&k2),
            Some((ip("2001:db8::1"), ip("2001:db8::2")))
        );
        assert_eq!(
            k2.underlay_pair(&k1),
            Some((ip("2001:db8::2"), ip("2001:db8::1")))
        );
        // an IPv6-only node and a dual-stack one (IPv4 first): IPv6
        let v6 = node("v6", 3, "2001:db8::3", "10.1.3.0/24");
        assert_eq!(
            v6.underlay_pair(&k1),
            Some((ip("2001:db8::3"), ip("2001:db8::1")))
        );
        assert_eq!(
            k1.underlay_pair(&v6),
            Some((ip("2001:db8::1"), ip("2001:db8::3")))
        );
        // an IPv4-only node and a dual-stack one (IPv6 first): IPv4
        let v4 = node("v4", 4, "192.0.2.4", "10.1.4.0/24");
        assert_eq!(
            v4.underlay_pair(&k2),
            Some((ip("192.0.2.4"), ip("192.0.2.2")))
        );
        assert_eq!(
            k2.underlay_pair(&v4),
            Some((ip("192.0.2.2"), ip("192.0.2.4")))
        );
        assert_eq!(v4.underlay_pair(&v6), None);
        // the worst case over the pairs in use
        let mesh = |local: &Node, peers: &[&Node]| Mesh {
            local: local.clone(),
            peers: peers.iter().map(|p| (*p).clone()).collect(),
            keys: Keys::single(1),
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            node_encryption: None,
        };
        assert!(mesh(&k2, &[&v4, &k1]).outer_v6());
        assert!(!mesh(&k2, &[&v4]).outer_v6());
        assert!(!mesh(&v4, &[]).outer_v6());
        assert!(mesh(&k2, &[]).outer_v6());
    }
}
