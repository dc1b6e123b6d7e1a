//! The network configuration as it arrives in a CNI conf.

use crate::backend::Backend;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
    /// Dataplane, as given; [`NetConf::backend`] parses it (`veth` or its alias `xfrm`,
    /// `ipvlan`, `vpp`).
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
        let conf = |backend: serde_json::Value| {
            let mut v = serde_json::json!({"cniVersion": "1.1.0", "name": "n", "type": "s"});
            v["backend"] = backend;
            serde_json::from_value::<NetConf>(v).unwrap()
        };
        let e = conf("wireguard".into()).backend().unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string().contains("veth (alias xfrm), ipvlan, vpp"),
            "{e}"
        );
        let e = conf(serde_json::Value::Null).backend().unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("missing"), "{e}");
        assert_eq!(conf("veth".into()).backend().unwrap(), Backend::Veth);
    }

    #[test]
    fn conf_parses_and_keeps_extra_fields() {
        let c = NetConf::from_slice(
            br#"{"cniVersion":"1.1.0","name":"n","type":"scrambler","backend":"xfrm",
                 "ipam":{"type":"scrambler-ipam"},"custom":3}"#,
        )
        .unwrap();
        assert_eq!(c.backend().unwrap(), Backend::Veth);
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
