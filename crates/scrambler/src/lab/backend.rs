//! What a lab backend (`--backend`) means for the parts of the lab that differ by
//! dataplane: the nodes' tunnel, the pods' CNI conf, the kernel features. One small
//! `match` per question, so a new backend is one new arm in each.
//!
//! A lab backend is a CNI [`Backend`] for every node, or `mixed`:
//!
//! - `veth` (alias `xfrm`, the default): pods on routed veth pairs; the node's xfrm mesh
//!   encrypts what it routes.
//! - `ipvlan`: pods on ipvlan `l3` slaves of the node's underlay interface (`ul0`), with
//!   `"encrypt": true`: scrambler-ipvlan's node setup (made by the CNI ADD) re-routes their
//!   traffic to other nodes into the same xfrm mesh, so the wire carries ESP only.
//! - `vpp`, `mixed`: see [`super::vppnode`] (VPP's own tunnel and pod conf).
//!
//! Each node's tunnel dataplane is its backend's ([`Backend::tunnel`]).

use super::topology;
use scrambler_core::Backend;
use scrambler_vmtest::Feature;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// What `lab up --backend` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LabBackend {
    /// Every node's pods on this backend.
    Uniform(Backend),
    /// Odd nodes on VPP, even nodes on veth pairs and the kernel's xfrm.
    Mixed,
}

impl LabBackend {
    /// Every accepted `--backend` value, as error messages list them.
    pub const ACCEPTED: &'static str = "veth (alias xfrm), ipvlan, vpp, mixed";

    /// The backend of node `i` (1-based).
    pub fn node(self, i: usize) -> Backend {
        match self {
            LabBackend::Uniform(b) => b,
            LabBackend::Mixed if i % 2 == 1 => Backend::Vpp,
            LabBackend::Mixed => Backend::Veth,
        }
    }

    /// True when some node runs VPP.
    pub fn uses_vpp(self) -> bool {
        matches!(self, LabBackend::Uniform(Backend::Vpp) | LabBackend::Mixed)
    }

    /// True when no node needs ESP in this kernel (every node is VPP).
    pub fn needs_no_kernel_esp(self) -> bool {
        self == LabBackend::Uniform(Backend::Vpp)
    }

    /// Kernel features the nodes need.
    pub fn kernel_features(self) -> &'static [Feature] {
        match self {
            LabBackend::Uniform(Backend::Ipvlan) => {
                &[Feature::Esp, Feature::XfrmInterface, Feature::Ipvlan]
            }
            _ => &[Feature::Esp, Feature::XfrmInterface],
        }
    }
}

impl FromStr for LabBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mixed" => Ok(LabBackend::Mixed),
            _ => s.parse().map(LabBackend::Uniform).map_err(|_| {
                format!(
                    "lab backend {s:?}: valid backends are {}",
                    LabBackend::ACCEPTED
                )
            }),
        }
    }
}

impl fmt::Display for LabBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabBackend::Uniform(b) => b.fmt(f),
            LabBackend::Mixed => f.write_str("mixed"),
        }
    }
}

impl TryFrom<String> for LabBackend {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<LabBackend> for String {
    fn from(b: LabBackend) -> String {
        b.to_string()
    }
}

/// Adds the conf fields a pod on backend `backend` needs beyond the common ones.
pub fn add_conf_fields(backend: Backend, conf: &mut serde_json::Value) {
    let extra = match backend {
        Backend::Ipvlan => serde_json::json!({
            "master": topology::UNDERLAY_IF,
            "mode": "l3",
            "encrypt": true,
            "clusterCidrs": [topology::POD_SUPERNET],
        }),
        Backend::Veth | Backend::Vpp => return,
    };
    if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
        c.extend(e.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_core::TunnelDataplane;

    #[test]
    fn ipvlan_pods_are_encrypted_l3_slaves_of_the_underlay_on_the_xfrm_mesh() {
        assert_eq!(Backend::Ipvlan.tunnel(), TunnelDataplane::Xfrm);
        let mut c = serde_json::json!({"backend": Backend::Ipvlan});
        add_conf_fields(Backend::Ipvlan, &mut c);
        assert_eq!(c["backend"], "ipvlan");
        assert_eq!(c["master"], "ul0");
        assert_eq!(c["mode"], "l3");
        assert_eq!(c["encrypt"], true);
        assert_eq!(c["clusterCidrs"][0], "10.244.0.0/16");
        let mut x = serde_json::json!({"backend": Backend::Veth});
        add_conf_fields(Backend::Veth, &mut x);
        assert_eq!(x, serde_json::json!({"backend": "veth"}));
        let ipvlan = LabBackend::Uniform(Backend::Ipvlan);
        assert!(ipvlan.kernel_features().contains(&Feature::Ipvlan));
        assert!(!LabBackend::Mixed
            .kernel_features()
            .contains(&Feature::Ipvlan));
    }

    #[test]
    fn mixed_puts_odd_nodes_on_vpp() {
        let (vpp, veth) = (Backend::Vpp, Backend::Veth);
        let nodes = |b: LabBackend, n: usize| (1..=n).map(|i| b.node(i)).collect::<Vec<_>>();
        assert_eq!(nodes(LabBackend::Mixed, 3), [vpp, veth, vpp]);
        assert_eq!(nodes(LabBackend::Uniform(vpp), 2), [vpp, vpp]);
        assert_eq!(nodes(LabBackend::Uniform(veth), 2), [veth, veth]);
        assert!(LabBackend::Uniform(vpp).needs_no_kernel_esp());
        assert!(!LabBackend::Mixed.needs_no_kernel_esp());
        assert!(LabBackend::Mixed.uses_vpp() && !LabBackend::Uniform(veth).uses_vpp());
    }

    #[test]
    fn lab_backends_parse_with_the_veth_alias_and_list_the_valid_ones() {
        let veth = LabBackend::Uniform(Backend::Veth);
        assert_eq!("xfrm".parse::<LabBackend>(), Ok(veth));
        assert_eq!("veth".parse::<LabBackend>(), Ok(veth));
        assert_eq!("mixed".parse::<LabBackend>(), Ok(LabBackend::Mixed));
        for b in [veth, LabBackend::Mixed, LabBackend::Uniform(Backend::Vpp)] {
            let json = serde_json::to_value(b).unwrap();
            assert_eq!(json, b.to_string());
            assert_eq!(serde_json::from_value::<LabBackend>(json).unwrap(), b);
        }
        let e = "wireguard".parse::<LabBackend>().unwrap_err();
        assert_eq!(
            e,
            "lab backend \"wireguard\": valid backends are veth (alias xfrm), ipvlan, vpp, mixed"
        );
    }
}
