//! The synthetic meshes the dataplane benches program.

use scrambler_core::{Keys, Mesh, Node, NodeId};

/// Node `id`: underlay `2001:db8::<id>`, pod CIDR `10.<100 + id / 256>.<id % 256>.0/24`.
pub fn node(id: u32) -> Node {
    Node {
        name: format!("n{id}"),
        id: NodeId::new(id).expect("node id"),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).expect("epoch"),
        underlay: vec![format!("2001:db8::{id:x}").parse().expect("underlay")],
        pod_cidrs: vec![format!("10.{}.{}.0/24", 100 + id / 256, id % 256)
            .parse()
            .expect("pod cidr")],
        previous_epochs: Vec::new(),
    }
}

/// Node 1's mesh with `peers` peers (nodes 2 ..= peers + 1), key generation 1.
pub fn mesh(peers: u32) -> Mesh {
    mesh_of(peers, node)
}

/// Node `id` with an IPv4 underlay, as in most clusters: underlay
/// `172.16.<id / 256>.<id % 256>` (outside the cluster CIDR), pod CIDR as [`node`]'s.
pub fn node_v4(id: u32) -> Node {
    Node {
        underlay: vec![format!("172.16.{}.{}", id / 256, id % 256)
            .parse()
            .expect("underlay")],
        ..node(id)
    }
}

/// [`mesh`] with [`node_v4`]'s IPv4 underlay: pods and underlay of one family, so the
/// mesh also carries pods ↔ other nodes' underlay addresses.
pub fn mesh_v4(peers: u32) -> Mesh {
    mesh_of(peers, node_v4)
}

fn mesh_of(peers: u32, node: fn(u32) -> Node) -> Mesh {
    Mesh {
        local: node(1),
        peers: (2..=peers + 1).map(node).collect(),
        keys: Keys::single(1),
        cluster_cidrs: vec!["10.0.0.0/8".parse().expect("cluster cidr")],
        node_encryption: None,
    }
}
