//! What a lab backend (`--backend`) means for the parts of the lab that differ by
//! dataplane: the nodes' tunnel, the pods' CNI conf, the kernel features. One small
//! `match` per question, so a new backend is one new arm in each.
//!
//! - `xfrm`: pods on routed veth pairs; the node's xfrm mesh encrypts what it routes.
//! - `ipvlan`: pods on ipvlan `l3` slaves of the node's underlay interface (`ul0`), with
//!   `"encrypt": true`: scrambler-ipvlan's node setup (made by the CNI ADD) re-routes their
//!   traffic to other nodes into the same xfrm mesh, so the wire carries ESP only.
//! - `vpp`, `mixed`: see [`super::vppnode`] (VPP's own tunnel and pod conf).

use super::topology;
use scrambler_vmtest::Feature;

/// The lab backend with pods on ipvlan l3 slaves of the underlay.
pub const IPVLAN: &str = "ipvlan";

/// The tunnel dataplane (`scrambler mesh apply --backend`) of a node whose dataplane is
/// `backend`.
pub fn tunnel(backend: &str) -> &str {
    match backend {
        IPVLAN => "xfrm",
        other => other,
    }
}

/// The `"backend"` of the pods' CNI conf.
pub fn cni_backend(backend: &str) -> &str {
    match backend {
        IPVLAN => "ipvlan",
        other => other,
    }
}

/// Adds the conf fields backend `backend` needs beyond the common ones.
pub fn add_conf_fields(backend: &str, conf: &mut serde_json::Value) {
    let extra = match backend {
        IPVLAN => serde_json::json!({
            "master": topology::UNDERLAY_IF,
            "mode": "l3",
            "encrypt": true,
            "clusterCidrs": [topology::POD_SUPERNET],
        }),
        _ => return,
    };
    if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
}

/// Kernel features the nodes of backend `backend` need.
pub fn kernel_features(backend: &str) -> &'static [Feature] {
    match backend {
        IPVLAN => &[Feature::Esp, Feature::XfrmInterface, Feature::Ipvlan],
        _ => &[Feature::Esp, Feature::XfrmInterface],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipvlan_pods_are_encrypted_l3_slaves_of_the_underlay_on_the_xfrm_mesh() {
        assert_eq!(tunnel(IPVLAN), "xfrm");
        assert_eq!(tunnel("xfrm"), "xfrm");
        let mut c = serde_json::json!({"backend": cni_backend(IPVLAN)});
        add_conf_fields(IPVLAN, &mut c);
        assert_eq!(c["backend"], "ipvlan");
        assert_eq!(c["master"], "ul0");
        assert_eq!(c["mode"], "l3");
        assert_eq!(c["encrypt"], true);
        assert_eq!(c["clusterCidrs"][0], "10.244.0.0/16");
        let mut x = serde_json::json!({"backend": cni_backend("xfrm")});
        add_conf_fields("xfrm", &mut x);
        assert_eq!(x, serde_json::json!({"backend": "xfrm"}));
        assert!(kernel_features(IPVLAN).contains(&Feature::Ipvlan));
    }
}
