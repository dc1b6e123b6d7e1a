//! Shared helpers of the netns and VM tests.
#![allow(dead_code)]

use scrambler_core::{ClusterSecret, Keys, Mesh, Node, NodeId};
use scrambler_testkit::netns::TestNetns;

pub fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes(vec![0x42; 32]).unwrap()
}

/// Node `id` with underlay 192.0.2.id (id ≤ 250) and pod CIDR 10.0.id.0/24.
pub fn node(id: u32) -> Node {
    assert!(id <= 250);
    Node {
        name: format!("node{id}"),
        id: NodeId::new(id).unwrap(),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).unwrap(),
        underlay: vec![format!("192.0.2.{id}").parse().unwrap()],
        pod_cidrs: vec![format!("10.0.{id}.0/24").parse().unwrap()],
        previous_epochs: Vec::new(),
    }
}

/// Node `id` of a big mesh: IPv6 documentation underlay, pod CIDR 10.x.y.0/24.
pub fn big_node(id: u32) -> Node {
    Node {
        name: format!("n{id}"),
        id: NodeId::new(id).unwrap(),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).unwrap(),
        underlay: vec![format!("2001:db8::{id:x}").parse().unwrap()],
        pod_cidrs: vec![format!("10.{}.{}.0/24", 100 + id / 256, id % 256)
            .parse()
            .unwrap()],
        previous_epochs: Vec::new(),
    }
}

/// The mesh of `local` among nodes `1..=n` built with `mk`; cluster CIDR 10.0.0.0/8.
pub fn mesh_of(local: u32, n: u32, mk: fn(u32) -> Node) -> Mesh {
    Mesh {
        local: mk(local),
        peers: (1..=n).filter(|i| *i != local).map(mk).collect(),
        keys: Keys::single(1),
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        node_encryption: None,
    }
}

/// Node `id`: underlay `fd00:2::<id>` only, pod CIDRs 10.0.id.0/24 and fd10:0:id::/64.
pub fn node6(id: u32) -> Node {
    Node {
        name: format!("node{id}"),
        id: NodeId::new(id).unwrap(),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).unwrap(),
        underlay: vec![format!("fd00:2::{id:x}").parse().unwrap()],
        pod_cidrs: vec![
            format!("10.0.{id}.0/24").parse().unwrap(),
            format!("fd10:0:{id:x}::/64").parse().unwrap(),
        ],
        previous_epochs: Vec::new(),
    }
}

/// The mesh of `local` among dual-stack nodes `1..=n` ([`node6`]); cluster CIDRs
/// 10.0.0.0/8 and fd10::/16.
pub fn mesh6(local: u32, n: u32) -> Mesh {
    Mesh {
        local: node6(local),
        peers: (1..=n).filter(|i| *i != local).map(node6).collect(),
        keys: Keys::single(1),
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd10::/16".parse().unwrap()],
        node_encryption: None,
    }
}

/// A namespace with a veth `scrambler0` (peer `scrambler0p`) standing in for the xfrm
/// interface on kernels without xfrm interfaces.
pub fn ns_with_link(prefix: &str) -> TestNetns {
    let ns = TestNetns::new(prefix);
    ns.ip(&[
        "link",
        "add",
        "scrambler0",
        "type",
        "veth",
        "peer",
        "name",
        "scrambler0p",
    ]);
    ns.ip(&["link", "set", "scrambler0", "up"]);
    ns.ip(&["link", "set", "scrambler0p", "up"]);
    ns
}

/// `ip xfrm policy` lines of a namespace that mention `needle`.
pub fn policy_text(ns: &TestNetns) -> String {
    ns.ip(&["xfrm", "policy"])
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The VM tests' namespaces (shared module: the netns tests do not use it).
#[allow(unused_imports)]
pub use scrambler_testkit::netns::TestNetns as Ns;

/// Someone else's policy, as an IKE daemon would install it (reqid 7, no if_id, outside
/// Scrambler's priority band): reconcile and remove must leave it alone.
pub fn add_foreign_ike_policy(ns: &TestNetns) {
    ns.ip(&[
        "xfrm",
        "policy",
        "add",
        "src",
        "172.16.0.0/16",
        "dst",
        "172.17.0.0/16",
        "dir",
        "out",
        "priority",
        "10",
        "tmpl",
        "src",
        "198.51.100.1",
        "dst",
        "198.51.100.2",
        "proto",
        "esp",
        "reqid",
        "7",
        "mode",
        "tunnel",
    ]);
}
