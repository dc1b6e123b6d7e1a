//! The CNI result: interfaces, addresses, routes and DNS, and its encoding per CNI version.

use crate::error::{Error, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// CNI versions whose result format we can write, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The newest CNI version we speak.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Checks that `v` is a version we can speak.
pub fn check_version(v: &str) -> Result<()> {
    if SUPPORTED_VERSIONS.contains(&v) {
        Ok(())
    } else {
        Err(Error::IncompatibleVersion {
            requested: v.to_string(),
            supported: SUPPORTED_VERSIONS.join(", "),
        })
    }
}

/// An interface created or touched by a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (CNI 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Netns path for interfaces inside the container; absent on the host side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix length (`10.1.0.5/24`).
    pub address: IpNet,
    /// Gateway, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into the result's `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; absent means the interface's gateway or on-link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    /// MTU (CNI 1.1 routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// DNS settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A CNI result (version independent; see [`CniResult::to_json`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CniResult {
    /// Interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl CniResult {
    /// Fails with a configuration error when the result (of an IPAM) has no address: there
    /// is nothing to attach a pod with.
    pub fn require_addresses(&self) -> Result<()> {
        if self.ips.is_empty() {
            return Err(Error::config("IPAM returned no addresses"));
        }
        Ok(())
    }

    /// Index in [`CniResult::interfaces`] of the interface `name` in `sandbox`.
    pub fn interface_index(&self, name: &str, sandbox: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == name && i.sandbox.as_deref() == Some(sandbox))
    }

    /// The addresses of interface `index` (and those naming no interface).
    pub fn addresses_of(&self, index: usize) -> Vec<IpNet> {
        self.ips
            .iter()
            .filter(|c| c.interface.is_none() || c.interface == Some(index))
            .map(|c| c.address)
            .collect()
    }

    /// Encodes the result for CNI version `version` (0.4.0 adds `version` to each IP and has
    /// no interface MTU / route MTU; 1.0.0 has no MTUs).
    pub fn to_json(&self, version: &str) -> Result<serde_json::Value> {
        check_version(version)?;
        let mut v = serde_json::to_value(self).map_err(|e| Error::decode("result", e))?;
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Error::decode("result", "not an object"))?;
        obj.insert("cniVersion".into(), version.into());
        if version != "1.1.0" {
            strip_mtus(obj);
        }
        if version == "0.4.0" {
            if let Some(ips) = obj.get_mut("ips").and_then(|x| x.as_array_mut()) {
                for ip in ips {
                    let fam = match ip.get("address").and_then(|a| a.as_str()) {
                        Some(a) if a.contains(':') => "6",
                        _ => "4",
                    };
                    if let Some(o) = ip.as_object_mut() {
                        o.insert("version".into(), fam.into());
                    }
                }
            }
        }
        Ok(v)
    }

    /// Parses a result (e.g. a `prevResult` or a delegated IPAM plugin's output) of any
    /// supported version.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        serde_json::from_value(v.clone()).map_err(|e| Error::decode("CNI result", e))
    }
}

fn strip_mtus(obj: &mut serde_json::Map<String, serde_json::Value>) {
    for key in ["interfaces", "routes"] {
        if let Some(arr) = obj.get_mut(key).and_then(|x| x.as_array_mut()) {
            for item in arr {
                if let Some(o) = item.as_object_mut() {
                    o.remove("mtu");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:01:00:05".into()),
                mtu: Some(1440),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: None,
                mtu: None,
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn versions_encode_as_the_spec_says() {
        let r = sample();
        let v04 = r.to_json("0.4.0").unwrap();
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        assert!(v04["interfaces"][0].get("mtu").is_none());
        let v11 = r.to_json("1.1.0").unwrap();
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["interfaces"][0]["mtu"], 1440);
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert!(v11.get("dns").is_none());
        assert_eq!(CniResult::from_json(&v04).unwrap().ips, r.ips);
        assert_eq!(r.to_json("0.3.1").unwrap_err().code(), 1);
    }
}
