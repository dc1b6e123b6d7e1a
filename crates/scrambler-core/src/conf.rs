//! The network configuration as it arrives in a CNI conf.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The dataplane that a conf selects with `"backend"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Veth into the pod, routed by the node, encrypted by the kernel XFRM mesh.
    Xfrm,
    /// Ipvlan sub-interfaces of the node's uplink.
    Ipvlan,
    /// FD.io VPP.
    Vpp,
}

impl Backend {
    /// Every valid `"backend"` value.
    pub const ALL: [&'static str; 3] = ["xfrm", "ipvlan", "vpp"];

    /// Parses a `"backend"` value, with an error that lists the valid ones.
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s {
            Some("xfrm") => Ok(Backend::Xfrm),
            Some("ipvlan") => Ok(Backend::Ipvlan),
            Some("vpp") => Ok(Backend::Vpp),
            Some(other) => Err(Error::config(format!(
                "unknown backend {other:?}: valid backends are {}",
                Backend::ALL.join(", ")
            ))),
            None => Err(Error::config(format!(
                "missing field \"backend\": valid backends are {}",
                Backend::ALL.join(", ")
            ))),
        }
    }

    /// The conf name.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Xfrm => "xfrm",
            Backend::Ipvlan => "ipvlan",
            Backend::Vpp => "vpp",
        }
    }
}

/// A Scrambler network configuration (one plugin entry of a conf or conflist, with the
/// `name` and `cniVersion` injected by the runtime).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// CNI version of the conf ([`IMPLIED_VERSION`](crate::result::IMPLIED_VERSION)
    /// when absent).
    #[serde(default = "implied_version")]
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// Plugin type (the binary name).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// Dataplane (`xfrm`, `ipvlan`, `vpp`); checked by [`NetConf::backend`].
    #[serde(default)]
    pub backend: Option<String>,
    /// IPAM section (`type` selects the built-in `scrambler-ipam` or an external plugin).
    #[serde(default)]
    pub ipam: Option<serde_json::Value>,
    /// Pod interface MTU; default derived from the underlay and ESP overhead.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// File that receives the plugin's logs (never stdout).
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    /// Log level (`error` … `trace`).
    #[serde(default)]
    pub log_level: Option<String>,
    /// The previous plugin's result in a chain.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// Runtime config (capabilities).
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    /// `args` (e.g. `args.cni.ips`).
    #[serde(default)]
    pub args: Option<serde_json::Value>,
    /// DNS to return.
    #[serde(default)]
    pub dns: Option<crate::result::Dns>,
    /// Every other field, among them the backends' own (read by the backend's crate).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn implied_version() -> String {
    crate::result::IMPLIED_VERSION.to_string()
}

impl NetConf {
    /// Parses a conf from the bytes on stdin.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
            if e.is_data() {
                Error::config(format!("network config: {e}"))
            } else {
                Error::decode("network config", e)
            }
        })?;
        crate::cni::validate_network_name(&conf.name)?;
        Ok(conf)
    }

    /// The selected backend.
    pub fn backend(&self) -> Result<Backend> {
        Backend::parse(self.backend.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_list_valid_values() {
        let e = Backend::parse(Some("wireguard")).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("xfrm, ipvlan, vpp"));
        assert!(Backend::parse(None)
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }

    #[test]
    fn conf_parses_and_keeps_extra_fields() {
        let c = NetConf::from_slice(
            br#"{"cniVersion":"1.1.0","name":"n","type":"scrambler","backend":"xfrm",
                 "ipam":{"type":"scrambler-ipam"},"custom":3}"#,
        )
        .unwrap();
        assert_eq!(c.backend().unwrap(), Backend::Xfrm);
        assert_eq!(c.extra["custom"], 3);
        assert_eq!(NetConf::from_slice(b"{").unwrap_err().code(), 6);
        assert_eq!(
            NetConf::from_slice(br#"{"name":"x"}"#).unwrap_err().code(),
            7
        );
        let e = NetConf::from_slice(br#"{"cniVersion":"1.1.0","name":"a/b","type":"scrambler"}"#)
            .unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("field \"name\""), "{e}");
    }
}
