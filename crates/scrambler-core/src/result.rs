//! The CNI result: interfaces, addresses, routes and DNS, and its encoding per CNI version.
//!
//! Every version the reference plugins (containernetworking/plugins) speak is supported,
//! each with its own result layout ([`ResultShape`]): 0.1.0 and 0.2.0 have one `ip4` and
//! one `ip6` object (`{ip, gateway, routes}`); 0.3.0, 0.3.1 and 0.4.0 have `interfaces`,
//! `ips` (each with `"version": "4"|"6"`), `routes`; 1.0.0 drops the per-address
//! `version`; 1.1.0 adds MTUs. [`CniResult::from_json`] reads all of them.

use crate::error::{Error, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// CNI versions we speak, oldest first: every version the reference plugins accept.
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest CNI version we speak.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The version of a conf without `cniVersion`: 0.1.0, as the reference plugins read it.
pub const IMPLIED_VERSION: &str = "0.1.0";

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

/// Parses `a.b.c` into a comparable triple (missing or malformed parts count as 0).
pub fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    )
}

/// True when version `v` is `min` or newer.
pub fn version_at_least(v: &str, min: &str) -> bool {
    parse_version(v) >= parse_version(min)
}

/// How a result is laid out in a CNI version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultShape {
    /// 0.1.0, 0.2.0: `ip4` and `ip6` objects (`ip`, `gateway`, `routes`) and `dns`; one
    /// address per family, routes under the address of their family.
    Legacy,
    /// 0.3.0, 0.3.1, 0.4.0: `interfaces`, `ips` with `"version": "4"|"6"`, `routes`, `dns`.
    Versioned,
    /// 1.0.0: as 0.4.0 without the per-address `version`.
    V1,
    /// 1.1.0: as 1.0.0, plus interface and route MTUs.
    V1_1,
}

impl ResultShape {
    /// The layout of results in CNI version `version` (code 1 for a version we do not speak).
    pub fn of(version: &str) -> Result<Self> {
        check_version(version)?;
        Ok(match version {
            "0.1.0" | "0.2.0" => ResultShape::Legacy,
            "0.3.0" | "0.3.1" | "0.4.0" => ResultShape::Versioned,
            "1.0.0" => ResultShape::V1,
            _ => ResultShape::V1_1,
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

    /// Encodes the result for CNI version `version`, in that version's
    /// [`ResultShape`]. A result without addresses cannot be written in 0.1.0 / 0.2.0
    /// (code 1), as in the reference implementation.
    pub fn to_json(&self, version: &str) -> Result<Value> {
        let shape = ResultShape::of(version)?;
        let mut v = match shape {
            ResultShape::Legacy => self.legacy_json(version)?,
            _ => serde_json::to_value(self).map_err(|e| Error::decode("result", e))?,
        };
        let obj = v
            .as_object_mut()
            .ok_or_else(|| Error::decode("result", "not an object"))?;
        obj.insert("cniVersion".into(), version.into());
        if matches!(shape, ResultShape::Versioned | ResultShape::V1) {
            strip_mtus(obj);
        }
        if shape == ResultShape::Versioned {
            add_ip_versions(obj);
        }
        Ok(v)
    }

    /// The 0.1.0 / 0.2.0 layout: the first address of each family with its gateway, the
    /// routes of that family under it, and DNS.
    fn legacy_json(&self, version: &str) -> Result<Value> {
        let mut obj = Map::new();
        for (key, v4) in [("ip4", true), ("ip6", false)] {
            let Some(ip) = self.ips.iter().find(|c| c.address.addr().is_ipv4() == v4) else {
                continue;
            };
            let routes: Vec<&Route> = self
                .routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv4() == v4)
                .collect();
            let legacy = LegacyIp {
                ip: ip.address,
                gateway: ip.gateway,
                routes: routes
                    .into_iter()
                    .map(|r| Route {
                        mtu: None,
                        ..r.clone()
                    })
                    .collect(),
            };
            let value = serde_json::to_value(legacy).map_err(|e| Error::decode("result", e))?;
            obj.insert(key.into(), value);
        }
        if obj.is_empty() {
            return Err(Error::IncompatibleVersion {
                requested: version.to_string(),
                supported: "0.3.0 and later for a result without addresses".into(),
            });
        }
        if !self.dns.is_empty() {
            let dns = serde_json::to_value(&self.dns).map_err(|e| Error::decode("result", e))?;
            obj.insert("dns".into(), dns);
        }
        Ok(Value::Object(obj))
    }

    /// Parses a result of any supported version (e.g. a `prevResult`, or the output of a
    /// delegated IPAM plugin in whatever version it speaks): the 0.1.0 / 0.2.0 `ip4` /
    /// `ip6` layout as well as the `ips` layout of 0.3.0 and later (whose per-address
    /// `version` is implied by the address).
    pub fn from_json(v: &Value) -> Result<Self> {
        let legacy = v.get("ips").is_none() && (v.get("ip4").is_some() || v.get("ip6").is_some());
        if legacy {
            let old: LegacyResult = serde_json::from_value(v.clone())
                .map_err(|e| Error::decode("CNI result (0.1.0/0.2.0 layout)", e))?;
            return Ok(old.into_result());
        }
        serde_json::from_value(v.clone()).map_err(|e| Error::decode("CNI result", e))
    }
}

/// A 0.1.0 / 0.2.0 result.
#[derive(Deserialize)]
struct LegacyResult {
    #[serde(default)]
    ip4: Option<LegacyIp>,
    #[serde(default)]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

/// The `ip4` / `ip6` object of a 0.1.0 / 0.2.0 result.
#[derive(Serialize, Deserialize)]
struct LegacyIp {
    ip: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<Route>,
}

impl LegacyResult {
    fn into_result(self) -> CniResult {
        let mut result = CniResult {
            dns: self.dns,
            ..Default::default()
        };
        for ip in [self.ip4, self.ip6].into_iter().flatten() {
            result.ips.push(IpConfig {
                address: ip.ip,
                gateway: ip.gateway,
                interface: None,
            });
            result.routes.extend(ip.routes);
        }
        result
    }
}

/// 0.3.x / 0.4.0: every address says its family (`"version": "4"` or `"6"`).
fn add_ip_versions(obj: &mut Map<String, Value>) {
    let Some(ips) = obj.get_mut("ips").and_then(Value::as_array_mut) else {
        return;
    };
    for ip in ips {
        let family = match ip.get("address").and_then(Value::as_str) {
            Some(a) if a.contains(':') => "6",
            _ => "4",
        };
        if let Some(o) = ip.as_object_mut() {
            o.insert("version".into(), family.into());
        }
    }
}

fn strip_mtus(obj: &mut Map<String, Value>) {
    for key in ["interfaces", "routes"] {
        if let Some(arr) = obj.get_mut(key).and_then(Value::as_array_mut) {
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

    fn sample_with_v6_route() -> CniResult {
        let mut r = sample();
        r.routes.push(Route {
            dst: "::/0".parse().unwrap(),
            gw: Some("fd00::1".parse().unwrap()),
            mtu: Some(1400),
        });
        r.dns.nameservers.push("10.1.0.53".into());
        r
    }

    #[test]
    fn every_version_has_its_shape() {
        let shapes: Vec<ResultShape> = SUPPORTED_VERSIONS
            .iter()
            .map(|v| ResultShape::of(v).unwrap())
            .collect();
        use ResultShape::*;
        assert_eq!(
            shapes,
            [Legacy, Legacy, Versioned, Versioned, Versioned, V1, V1_1]
        );
        assert_eq!(ResultShape::of("0.5.0").unwrap_err().code(), 1);
        assert_eq!(ResultShape::of("").unwrap_err().code(), 1);
        assert!(version_at_least("1.1.0", "0.4.0") && !version_at_least("0.3.1", "0.4.0"));
        assert!(parse_version("0.10.0") > parse_version("0.4.0"));
    }

    #[test]
    fn legacy_versions_have_ip4_and_ip6_objects() {
        let r = sample_with_v6_route();
        for version in ["0.1.0", "0.2.0"] {
            let v = r.to_json(version).unwrap();
            assert_eq!(v["cniVersion"], version);
            assert_eq!(
                v["ip4"],
                serde_json::json!({"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                                   "routes": [{"dst": "0.0.0.0/0"}]})
            );
            assert_eq!(
                v["ip6"],
                serde_json::json!({"ip": "fd00::5/64", "routes": [{"dst": "::/0", "gw": "fd00::1"}]})
            );
            assert_eq!(v["dns"]["nameservers"][0], "10.1.0.53");
            for gone in ["ips", "interfaces", "routes"] {
                assert!(v.get(gone).is_none(), "{version}: {gone} in {v}");
            }
            // read back: addresses and routes, no interfaces (0.2.0 has none)
            let back = CniResult::from_json(&v).unwrap();
            assert_eq!(back.ips.len(), 2);
            assert_eq!(back.ips[0].address, r.ips[0].address);
            assert_eq!(back.ips[0].gateway, r.ips[0].gateway);
            assert_eq!(back.ips[1].interface, None);
            assert_eq!(back.routes.len(), 2);
            assert_eq!(back.routes[1].mtu, None);
            assert_eq!(back.dns, r.dns);
        }
        // only the first address of a family fits; a family without one drops its routes
        let mut v4_only = sample();
        v4_only.ips.truncate(1);
        v4_only.ips.push(IpConfig {
            address: "10.1.0.6/24".parse().unwrap(),
            gateway: None,
            interface: Some(0),
        });
        v4_only.routes.push(Route {
            dst: "::/0".parse().unwrap(),
            gw: None,
            mtu: None,
        });
        let v = v4_only.to_json("0.2.0").unwrap();
        assert_eq!(v["ip4"]["ip"], "10.1.0.5/24");
        assert!(v.get("ip6").is_none() && v.get("dns").is_none());
        let no_addr = CniResult {
            ips: vec![],
            ..sample()
        };
        assert_eq!(no_addr.to_json("0.2.0").unwrap_err().code(), 1);
        assert!(no_addr.to_json("0.3.1").is_ok());
    }

    #[test]
    fn versions_0_3_and_0_4_carry_the_address_family() {
        let r = sample_with_v6_route();
        for version in ["0.3.0", "0.3.1", "0.4.0"] {
            let v = r.to_json(version).unwrap();
            assert_eq!(v["cniVersion"], version);
            assert_eq!(v["ips"][0]["version"], "4");
            assert_eq!(v["ips"][1]["version"], "6");
            assert_eq!(v["ips"][0]["interface"], 0);
            assert!(v["interfaces"][0].get("mtu").is_none());
            assert!(v["routes"][1].get("mtu").is_none());
            assert_eq!(v["interfaces"][0]["sandbox"], "/run/netns/x");
            let back = CniResult::from_json(&v).unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.interfaces[0].mtu, None);
        }
    }

    #[test]
    fn version_1_has_no_address_family_and_1_1_has_mtus() {
        let r = sample_with_v6_route();
        let v10 = r.to_json("1.0.0").unwrap();
        assert!(v10["ips"][0].get("version").is_none());
        assert!(v10["interfaces"][0].get("mtu").is_none());
        assert!(v10["routes"][1].get("mtu").is_none());
        let v11 = r.to_json("1.1.0").unwrap();
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["interfaces"][0]["mtu"], 1440);
        assert_eq!(v11["routes"][1]["mtu"], 1400);
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(CniResult::from_json(&v11).unwrap(), r);
        assert!(sample().to_json("1.1.0").unwrap().get("dns").is_none());
        assert_eq!(r.to_json("0.5.0").unwrap_err().code(), 1);
    }

    #[test]
    fn results_of_older_plugins_parse() {
        // what host-local prints for a 0.2.0 conf (Go prints an empty dns object)
        let hl = serde_json::json!({
            "cniVersion": "0.2.0",
            "ip4": {"ip": "10.26.0.2/24", "gateway": "10.26.0.1",
                    "routes": [{"dst": "0.0.0.0/0", "gw": "10.26.0.1"}]},
            "dns": {}
        });
        let r = CniResult::from_json(&hl).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.26.0.2/24");
        assert_eq!(r.routes[0].gw.unwrap().to_string(), "10.26.0.1");
        assert!(r.dns.is_empty() && r.interfaces.is_empty());
        // 0.1.0 results had no cniVersion
        let old = serde_json::json!({"ip6": {"ip": "fd00::2/64"}});
        assert_eq!(CniResult::from_json(&old).unwrap().ips.len(), 1);
        let bad = serde_json::json!({"ip4": {"gateway": "10.0.0.1"}});
        assert_eq!(CniResult::from_json(&bad).unwrap_err().code(), 6);
    }
}
