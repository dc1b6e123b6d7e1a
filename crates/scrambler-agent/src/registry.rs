//! Registry records → the node's [`Mesh`]: the one place that turns what etcd holds into
//! what a [`scrambler_core::Tunnel`] reconciles to.

use crate::record::NodeRecord;
use ipnet::IpNet;
use scrambler_core::{Epoch, Keys, Mesh, Node, NodeEncryption, Result};
use std::collections::BTreeMap;

/// A registry record as a mesh node, with the epoch the node published: keys bind both
/// ends' epochs, so a peer is only ever sent to under the epoch it registered.
pub fn node_of(r: &NodeRecord) -> Result<Node> {
    Ok(Node {
        name: r.name.clone(),
        id: r.id,
        epoch: Epoch::new(r.epoch)?,
        underlay: r.underlay.clone(),
        pod_cidrs: r.pod_cidrs.clone(),
        previous_epochs: Vec::new(),
    })
}

/// The mesh of `local` given every registration (`local`'s own included or not), the
/// cluster's pod supernets, the live key generations and the node-encryption setting.
///
/// A registration that conflicts with the local node or with a peer before it (by name:
/// same id, underlay address or an overlapping pod CIDR — which claims prevent, so only a
/// hand-written record can do it) is left out with a warning, so one bad record cannot
/// take the whole mesh down. Fails only when the local node itself is invalid.
pub fn mesh_for(
    local: &NodeRecord,
    registry: &BTreeMap<String, NodeRecord>,
    cluster_cidrs: &[IpNet],
    keys: Keys,
    node_encryption: Option<&NodeEncryption>,
) -> Result<Mesh> {
    let peers: Vec<Node> = registry
        .values()
        .filter(|r| r.name != local.name)
        .filter_map(|r| {
            node_of(r)
                .inspect_err(|e| tracing::warn!(peer = %r.name, "left out of the mesh: {e}"))
                .ok()
        })
        .collect();
    let mesh = Mesh {
        local: node_of(local)?,
        peers,
        keys,
        cluster_cidrs: cluster_cidrs.to_vec(),
        node_encryption: node_encryption.cloned(),
    };
    if mesh.validate().is_ok() {
        return Ok(mesh);
    }
    // slow path, only with a conflicting record: add peers one by one
    let mut ok = Mesh {
        peers: Vec::new(),
        ..mesh.clone()
    };
    ok.validate()?;
    for p in mesh.peers {
        ok.peers.push(p);
        if let Err(e) = ok.validate() {
            let p = ok.peers.pop().expect("just pushed");
            tracing::warn!(peer = %p.name, "left out of the mesh: {e}");
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_core::NodeId;

    fn cluster() -> Vec<IpNet> {
        vec!["10.244.0.0/16".parse().unwrap()]
    }

    pub(crate) fn rec(name: &str, id: u32) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            id: NodeId::new(id).unwrap(),
            underlay: vec![format!("192.0.2.{id}").parse().unwrap()],
            pod_cidrs: vec![format!("10.244.{id}.0/24").parse().unwrap()],
            epoch: u64::from(id) * 0x1111,
            dataplane: "xfrm".into(),
        }
    }

    #[test]
    fn peers_are_every_other_registration() {
        let reg: BTreeMap<_, _> = [rec("a", 1), rec("b", 2), rec("c", 3)]
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let m = mesh_for(&rec("b", 2), &reg, &cluster(), Keys::single(1), None).unwrap();
        assert_eq!(m.local.name, "b");
        let names: Vec<_> = m.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        // every node carries the epoch it published
        assert_eq!(m.peers[1].epoch.get(), 3 * 0x1111);
        // the local node need not be registered yet
        let m = mesh_for(&rec("d", 4), &reg, &cluster(), Keys::single(1), None).unwrap();
        assert_eq!(m.peers.len(), 3);
    }

    #[test]
    fn a_conflicting_record_is_left_out_not_the_mesh() {
        let mut bad = rec("x", 9);
        bad.pod_cidrs = vec!["10.244.1.128/25".parse().unwrap()]; // inside a's
        let reg: BTreeMap<_, _> = [rec("a", 1), rec("b", 2), bad]
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let m = mesh_for(&rec("b", 2), &reg, &cluster(), Keys::single(1), None).unwrap();
        let names: Vec<_> = m.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a"]);
    }
}
