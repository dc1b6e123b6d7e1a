//! The `vpp` backend's section of a CNI conf:
//!
//! ```json
//! {"backend": "vpp", "vpp": {"apiSocket": "/run/vpp/api.sock", "underlayMtu": 1500,
//!   "underlayIpv6": false}}
//! ```
//!
//! Every field is optional ([`VppConf`]); unknown fields are refused (code 7), so a typo
//! does not silently fall back to a default.

use crate::attach::{VppAttach, DEFAULT_API_SOCKET};
use scrambler_core::{Error, NetConf, Result};
use serde::Deserialize;
use std::path::PathBuf;

/// Conf field holding the `vpp` backend's section.
pub const VPP_FIELD: &str = "vpp";

/// The `"vpp"` section of the conf.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VppConf {
    /// VPP's binary API socket; default [`DEFAULT_API_SOCKET`].
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    /// MTU of the underlay the pod MTU is derived from when the conf has no `mtu`;
    /// default [`crate::attach::DEFAULT_UNDERLAY_MTU`].
    #[serde(default)]
    pub underlay_mtu: Option<u32>,
    /// The node's ESP runs over an IPv6 underlay (to some peer): the default pod MTU
    /// leaves room for the larger outer header; default `false`.
    #[serde(default, rename = "underlayIpv6")]
    pub underlay_v6: bool,
}

fn default_api_socket() -> PathBuf {
    PathBuf::from(DEFAULT_API_SOCKET)
}

impl VppConf {
    /// The section of `conf` (defaults when it has none); a malformed one is code 7.
    pub fn from_netconf(conf: &NetConf) -> Result<VppConf> {
        match conf.extra.get(VPP_FIELD) {
            None | Some(serde_json::Value::Null) => Ok(VppConf {
                api_socket: default_api_socket(),
                underlay_mtu: None,
                underlay_v6: false,
            }),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::config(format!("field \"{VPP_FIELD}\": {e}"))),
        }
    }

    /// The attachment this section describes, for network `network` (the conf's `name`).
    pub fn attach(&self, network: &str) -> VppAttach {
        let a = VppAttach::new(self.api_socket.clone())
            .with_network(network)
            .with_underlay_v6(self.underlay_v6);
        match self.underlay_mtu {
            Some(m) => a.with_underlay_mtu(m),
            None => a,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> NetConf {
        serde_json::from_value(serde_json::json!({"cniVersion": "1.1.0", "name": "n",
            "type": "scrambler-cni", "backend": "vpp"}))
        .unwrap()
    }

    #[test]
    fn vpp_section_defaults_and_rejects_typos() {
        let mut c = conf();
        let v = VppConf::from_netconf(&c).unwrap();
        assert_eq!(v.api_socket, PathBuf::from("/run/vpp/api.sock"));
        assert_eq!(v.underlay_mtu, None);
        c.extra.insert(
            VPP_FIELD.into(),
            serde_json::json!({"apiSocket": "/run/x.sock", "underlayMtu": 9000}),
        );
        let v = VppConf::from_netconf(&c).unwrap();
        assert_eq!(v.api_socket, PathBuf::from("/run/x.sock"));
        assert_eq!(v.attach("n").pod_mtu(None).unwrap(), 8940);
        // over an IPv6 underlay: 20 bytes more outer header
        c.extra.insert(
            VPP_FIELD.into(),
            serde_json::json!({"underlayMtu": 9000, "underlayIpv6": true}),
        );
        let v = VppConf::from_netconf(&c).unwrap();
        assert_eq!(v.attach("n").pod_mtu(None).unwrap(), 8920);
        c.extra
            .insert(VPP_FIELD.into(), serde_json::json!({"underlayIpv6": true}));
        let v = VppConf::from_netconf(&c).unwrap();
        assert_eq!(
            v.attach("n").pod_mtu(None).unwrap(),
            scrambler_core::esp::pod_mtu(1500, true)
        );
        assert_eq!(v.attach("n").pod_mtu(None).unwrap(), 1420);
        c.extra
            .insert(VPP_FIELD.into(), serde_json::json!({"apiSock": "/x"}));
        let e = VppConf::from_netconf(&c).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("apiSock"), "{e}");
        c.extra.insert(VPP_FIELD.into(), serde_json::json!("/x"));
        let e = VppConf::from_netconf(&c).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("field \"vpp\""), "{e}");
    }
}
