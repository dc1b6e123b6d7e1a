//! The ipvlan settings of a CNI conf: `master`, `mode`, `flag`, `mtu`, `encrypt`,
//! `clusterCidrs`, `stateDir`.

use ipnet::IpNet;
use scrambler_core::{Error, NetConf, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Ipvlan mode (`"mode"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Layer 2: the slave switches frames on the master's segment; the node's routing
    /// and netfilter never see pod traffic.
    #[default]
    L2,
    /// Layer 3: the master routes the slave's packets through the node's routing table
    /// (and so through the node's xfrm policies); no netfilter.
    L3,
    /// Layer 3 with netfilter ("symmetric"): like L3, and packets also pass the node's
    /// netfilter hooks.
    L3s,
}

impl Mode {
    /// Every valid `"mode"` value.
    pub const ALL: [&'static str; 3] = ["l2", "l3", "l3s"];

    /// Parses a `"mode"` value (default `l2`, as the reference ipvlan plugin).
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s {
            None | Some("l2") => Ok(Mode::L2),
            Some("l3") => Ok(Mode::L3),
            Some("l3s") => Ok(Mode::L3s),
            Some(other) => Err(Error::config(format!(
                "unknown ipvlan mode {other:?}: valid modes are {}",
                Mode::ALL.join(", ")
            ))),
        }
    }

    /// The conf name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::L2 => "l2",
            Mode::L3 => "l3",
            Mode::L3s => "l3s",
        }
    }

    /// Whether the node's routing (and so its xfrm mesh) sees the pod's traffic to
    /// other nodes, which is what `"encrypt": true` needs.
    pub fn can_encrypt(self) -> bool {
        !matches!(self, Mode::L2)
    }
}

/// Ipvlan flag (`"flag"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flag {
    /// Slaves of one master talk to each other directly.
    #[default]
    Bridge,
    /// Slaves of one master cannot talk to each other.
    Private,
    /// Slave-to-slave traffic goes out to the external switch.
    Vepa,
}

impl Flag {
    /// Every valid `"flag"` value.
    pub const ALL: [&'static str; 3] = ["bridge", "private", "vepa"];

    /// Parses a `"flag"` value (default `bridge`).
    pub fn parse(s: Option<&str>) -> Result<Self> {
        match s {
            None | Some("bridge") => Ok(Flag::Bridge),
            Some("private") => Ok(Flag::Private),
            Some("vepa") => Ok(Flag::Vepa),
            Some(other) => Err(Error::config(format!(
                "unknown ipvlan flag {other:?}: valid flags are {}",
                Flag::ALL.join(", ")
            ))),
        }
    }

    /// The conf name.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Bridge => "bridge",
            Flag::Private => "private",
            Flag::Vepa => "vepa",
        }
    }
}

/// The settings of one ipvlan network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpvlanConfig {
    /// The network's name (conf `name`), part of the ownership mark of pod interfaces.
    pub network: String,
    /// Master (parent) interface in the node namespace; `None`: the interface of the
    /// node's default route.
    pub master: Option<String>,
    /// Ipvlan mode.
    pub mode: Mode,
    /// Ipvlan flag.
    pub flag: Flag,
    /// Pod MTU; `None`: the master's MTU (minus ESP overhead when `encrypt`).
    pub mtu: Option<u32>,
    /// Pod traffic to other nodes is encrypted by the node's xfrm mesh (l3, l3s only).
    pub encrypt: bool,
    /// The cluster's pod CIDRs (`"clusterCidrs"`): with `encrypt`, pod traffic to them is
    /// re-routed into the mesh and never leaves the master in the clear. Required (non-empty)
    /// with `encrypt`: without them there would be no cleartext guard.
    pub cluster_cidrs: Vec<IpNet>,
    /// Directory of the attachment records (`"stateDir"`, absolute; see [`crate::record`]);
    /// `None`: [`crate::record::DEFAULT_STATE_DIR`].
    pub state_dir: Option<PathBuf>,
}

impl IpvlanConfig {
    /// Reads the ipvlan settings of `conf` (its fields besides the common ones), refusing
    /// `"encrypt": true` with mode `l2` or without `clusterCidrs` (code 7).
    pub fn from_netconf(conf: &NetConf) -> Result<Self> {
        let cluster_cidrs = match conf.extra.get("clusterCidrs") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(v) => serde_json::from_value::<Vec<IpNet>>(v.clone()).map_err(|e| {
                Error::config(format!(
                    "ipvlan clusterCidrs must be a list of CIDRs, got {v}: {e}"
                ))
            })?,
        };
        let encrypt = match conf.extra.get("encrypt") {
            None | Some(serde_json::Value::Null) => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(other) => {
                return Err(Error::config(format!(
                    "ipvlan encrypt must be true or false, got {other}"
                )))
            }
        };
        let cfg = IpvlanConfig {
            network: conf.name.clone(),
            master: string_field(conf, "master")?
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            mode: Mode::parse(string_field(conf, "mode")?)?,
            flag: Flag::parse(string_field(conf, "flag")?)?,
            mtu: conf.mtu,
            encrypt,
            cluster_cidrs,
            state_dir: string_field(conf, "stateDir")?.map(PathBuf::from),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The directory of the attachment records.
    pub fn state_dir(&self) -> &Path {
        self.state_dir
            .as_deref()
            .unwrap_or(Path::new(crate::record::DEFAULT_STATE_DIR))
    }

    /// Checks combinations: MTU range, interface name length, encrypt only with l3/l3s and
    /// with `clusterCidrs`, an absolute `stateDir`.
    pub fn validate(&self) -> Result<()> {
        if !self.state_dir().is_absolute() {
            return Err(Error::config(format!(
                "ipvlan stateDir {} must be an absolute path",
                self.state_dir().display()
            )));
        }
        if self.encrypt && !self.mode.can_encrypt() {
            return Err(Error::config(
                "ipvlan mode l2 cannot be encrypted: l2 traffic is switched by the ipvlan \
                 master straight onto the wire and bypasses the node's routing, so the xfrm \
                 mesh never sees it; use mode l3 or l3s with \"encrypt\": true",
            ));
        }
        if self.encrypt && self.cluster_cidrs.is_empty() {
            return Err(Error::config(
                "ipvlan \"encrypt\": true needs \"clusterCidrs\" (the cluster's pod CIDRs, \
                 e.g. [\"10.244.0.0/16\"]): without them nothing stops pod-to-cluster traffic \
                 from leaving the master in the clear",
            ));
        }
        if let Some(c) = self
            .cluster_cidrs
            .iter()
            .find(|c| self.encrypt && c.addr().is_ipv6())
        {
            return Err(unencrypted_ipv6(&format!("clusterCidrs has {c}")));
        }
        if let Some(m) = self.mtu {
            if !(68..=65535).contains(&m) {
                return Err(Error::config(format!("mtu {m} is out of range 68..65535")));
            }
        }
        if let Some(m) = &self.master {
            if m.len() > 15 || m.contains('/') || m.contains(char::is_whitespace) {
                return Err(Error::config(format!(
                    "ipvlan master {m:?} is not a valid interface name"
                )));
            }
        }
        Ok(())
    }
}

/// The refusal of IPv6 with `"encrypt": true`: the ipvlan backend's IPv6 path into the
/// xfrm mesh is not proven (no end-to-end test), and a family must never be left in
/// cleartext silently. `what` names the IPv6 object that was given.
pub(crate) fn unencrypted_ipv6(what: &str) -> Error {
    Error::config(format!(
        "ipvlan backend with \"encrypt\": true does not support IPv6 yet ({what}): its \
         IPv6 pod traffic is not proven to reach the xfrm mesh; use IPv4 pod addresses with \
         ipvlan, or the veth backend for IPv6 and dual-stack pods"
    ))
}

/// The string field `name` of `conf` (`None` when absent or null); another type is code 7.
fn string_field<'a>(conf: &'a NetConf, name: &str) -> Result<Option<&'a str>> {
    match conf.extra.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::config(format!(
            "ipvlan {name} must be a string, got {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: serde_json::Value) -> Result<IpvlanConfig> {
        let mut v = serde_json::json!({"cniVersion": "1.1.0", "name": "n",
            "type": "scrambler-cni", "backend": "ipvlan"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        IpvlanConfig::from_netconf(&serde_json::from_value(v).unwrap())
    }

    #[test]
    fn defaults_are_l2_bridge_default_route_master() {
        let c = conf(serde_json::json!({})).unwrap();
        assert_eq!(c.state_dir(), Path::new("/run/scrambler-ipvlan"));
        assert_eq!(
            (c.mode, c.flag, c.master, c.mtu, c.encrypt),
            (Mode::L2, Flag::Bridge, None, None, false)
        );
        assert_eq!(c.network, "n");
    }

    #[test]
    fn state_dir_is_an_absolute_path() {
        let c = conf(serde_json::json!({"stateDir": "/var/run/x"})).unwrap();
        assert_eq!(c.state_dir(), Path::new("/var/run/x"));
        for bad in [serde_json::json!("rel/dir"), serde_json::json!(3)] {
            let e = conf(serde_json::json!({ "stateDir": bad })).unwrap_err();
            assert_eq!(e.code(), 7);
            assert!(e.to_string().contains("stateDir"), "{e}");
        }
    }

    #[test]
    fn fields_parse() {
        let c = conf(
            serde_json::json!({"master": "eth1", "mode": "l3s", "flag": "private",
            "mtu": 1400}),
        )
        .unwrap();
        assert_eq!(c.master.as_deref(), Some("eth1"));
        assert_eq!(
            (c.mode, c.flag, c.mtu),
            (Mode::L3s, Flag::Private, Some(1400))
        );
        assert!(!c.encrypt);
        assert!(c.cluster_cidrs.is_empty());
        let c = conf(serde_json::json!({"mode": "l3", "encrypt": true,
            "clusterCidrs": ["10.244.0.0/16"]}))
        .unwrap();
        assert_eq!(
            c.cluster_cidrs,
            vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            conf(serde_json::json!({"clusterCidrs": ["nope"]}))
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            conf(serde_json::json!({"flag": "vepa"})).unwrap().flag,
            Flag::Vepa
        );
    }

    #[test]
    fn bad_values_are_code_7_and_list_valid_ones() {
        let e = conf(serde_json::json!({"mode": "l4"})).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("l2, l3, l3s"), "{e}");
        let e = conf(serde_json::json!({"flag": "open"})).unwrap_err();
        assert!(e.to_string().contains("bridge, private, vepa"), "{e}");
        for (field, bad) in [
            ("flag", serde_json::json!({"flag": 3})),
            ("mode", serde_json::json!({"mode": 3})),
            ("master", serde_json::json!({"master": ["eth0"]})),
            ("stateDir", serde_json::json!({"stateDir": false})),
            ("encrypt", serde_json::json!({"encrypt": "yes"})),
        ] {
            let e = conf(bad).unwrap_err();
            assert_eq!(e.code(), 7, "{field}");
            assert!(
                e.to_string().contains(&format!("ipvlan {field} must be")),
                "{e}"
            );
        }
        assert_eq!(conf(serde_json::json!({"mtu": 10})).unwrap_err().code(), 7);
        let e = conf(serde_json::json!({"master": "a-very-long-interface"})).unwrap_err();
        assert_eq!(e.code(), 7);
    }

    #[test]
    fn encrypt_is_refused_with_l2() {
        let e = conf(serde_json::json!({"encrypt": true})).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("l2 cannot be encrypted"), "{e}");
        for m in ["l3", "l3s"] {
            assert!(conf(serde_json::json!({"encrypt": true, "mode": m,
                "clusterCidrs": ["10.244.0.0/16"]}))
            .is_ok());
        }
    }

    #[test]
    fn encrypt_refuses_ipv6_cluster_cidrs_naming_backend_and_family() {
        let e = conf(serde_json::json!({"encrypt": true, "mode": "l3",
            "clusterCidrs": ["10.244.0.0/16", "fd10::/48"]}))
        .unwrap_err();
        assert_eq!(e.code(), 7);
        let msg = e.to_string();
        assert!(
            msg.contains("ipvlan backend") && msg.contains("IPv6") && msg.contains("fd10::/48"),
            "{msg}"
        );
        // unencrypted ipvlan leaves IPv6 alone
        assert!(conf(serde_json::json!({"mode": "l3", "clusterCidrs": ["fd10::/48"]})).is_ok());
    }

    #[test]
    fn encrypt_needs_cluster_cidrs() {
        for missing in [
            serde_json::json!({"encrypt": true, "mode": "l3"}),
            serde_json::json!({"encrypt": true, "mode": "l3", "clusterCidrs": null}),
            serde_json::json!({"encrypt": true, "mode": "l3s", "clusterCidrs": []}),
        ] {
            let e = conf(missing.clone()).unwrap_err();
            assert_eq!(e.code(), 7, "{missing}");
            assert!(e.to_string().contains("\"clusterCidrs\""), "{e}");
        }
        // l2 is refused for its own reason first
        let e = conf(serde_json::json!({"encrypt": true})).unwrap_err();
        assert!(e.to_string().contains("l2 cannot be encrypted"), "{e}");
        // without encrypt they are optional
        assert!(conf(serde_json::json!({"mode": "l3"})).is_ok());
    }
}
