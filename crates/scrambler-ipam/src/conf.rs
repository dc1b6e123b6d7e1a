//! The IPAM section of a CNI conf, in the shape host-local reads, plus `exclude`.
//!
//! Parsing canonicalises every range the way host-local does (gateway defaults to the first
//! address after the network address, `rangeStart` to the same, `rangeEnd` to the last
//! address before the IPv4 broadcast / the last IPv6 address) and rejects what host-local
//! rejects (too-small subnets, addresses outside their subnet, overlapping ranges), with
//! messages that name the offending field.

use crate::addr::{family_of, to_u128, Family};
use ipnet::IpNet;
use scrambler_core::{Error, Result, Route};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

/// Where leases live when `dataDir` is not set (host-local's default).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// One canonical address range: a subnet and the slice of it that is handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The subnet (host bits cleared); results carry its prefix length.
    pub subnet: IpNet,
    /// First address handed out (inclusive).
    pub range_start: IpAddr,
    /// Last address handed out (inclusive).
    pub range_end: IpAddr,
    /// The gateway returned with addresses of this range; never handed out.
    pub gateway: IpAddr,
}

impl Range {
    /// True when `ip` lies between `range_start` and `range_end`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        family_of(ip) == family_of(self.range_start)
            && to_u128(self.range_start) <= to_u128(ip)
            && to_u128(ip) <= to_u128(self.range_end)
    }

    /// Why `ip` is never handed out from this range (network address, IPv4 broadcast,
    /// gateway), or `None` when the range itself does not forbid it.
    pub fn reserved_reason(&self, ip: IpAddr) -> Option<&'static str> {
        if ip == self.subnet.network() {
            Some("the network address")
        } else if ip.is_ipv4() && ip == self.subnet.broadcast() {
            Some("the broadcast address")
        } else if ip == self.gateway {
            Some("the gateway")
        } else {
            None
        }
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{} in {}",
            self.range_start, self.range_end, self.subnet
        )
    }
}

/// A range set: one address is allocated per set, from any of its ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    /// Its ranges, all of one address family, in allocation order.
    pub ranges: Vec<Range>,
}

impl RangeSet {
    /// The range whose `rangeStart..=rangeEnd` holds `ip`.
    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    /// The range whose subnet holds `ip` (an existing lease may predate a narrowed range).
    pub fn subnet_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.subnet.contains(&ip))
    }

    /// The address family of the set.
    pub fn family(&self) -> Family {
        self.ranges
            .first()
            .map(|r| family_of(r.range_start))
            .unwrap_or(Family::V4)
    }
}

impl std::fmt::Display for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// A parsed, validated IPAM section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConf {
    /// Range sets; each yields one address (dual stack = one IPv4 set and one IPv6 set).
    pub ranges: Vec<RangeSet>,
    /// Routes returned with every allocation.
    pub routes: Vec<Route>,
    /// Lease directory root; leases of network `N` live in `data_dir/N/`.
    pub data_dir: PathBuf,
    /// A resolv.conf whose nameservers/domain/search/options are returned as DNS.
    pub resolv_conf: Option<PathBuf>,
    /// Addresses and subnets never handed out.
    pub exclude: Vec<IpNet>,
}

/// One range object as written in the conf.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRange {
    subnet: Option<String>,
    range_start: Option<String>,
    range_end: Option<String>,
    gateway: Option<String>,
}

/// The IPAM section as written in the conf (unknown fields, e.g. `type`, are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(default)]
    ranges: Vec<Vec<RawRange>>,
    #[serde(flatten)]
    legacy: RawRange,
    #[serde(default)]
    routes: Vec<Route>,
    data_dir: Option<PathBuf>,
    resolv_conf: Option<PathBuf>,
    #[serde(default)]
    exclude: Vec<String>,
}

impl IpamConf {
    /// Parses and validates an IPAM section (the value of a conf's `"ipam"` key).
    ///
    /// A bad section is [`Error::InvalidConfig`] naming the field, e.g.
    /// `ranges[0][1].gateway: 10.9.0.1 is not in subnet 10.1.0.0/24`.
    pub fn parse(ipam_section: &serde_json::Value) -> Result<IpamConf> {
        Self::parse_with_runtime_ranges(ipam_section, None)
    }

    /// Parses a whole network conf (what a runtime or a delegating plugin sends on stdin):
    /// its `ipam` section, with `runtimeConfig.ipRanges` (the `ipRanges` capability)
    /// prepended to the configured range sets as host-local does.
    pub fn from_net_conf(net_conf: &serde_json::Value) -> Result<IpamConf> {
        let ipam = net_conf
            .get("ipam")
            .ok_or_else(|| Error::config("missing \"ipam\" section"))?;
        let runtime = net_conf
            .get("runtimeConfig")
            .and_then(|rc| rc.get("ipRanges"));
        Self::parse_with_runtime_ranges(ipam, runtime)
    }

    fn parse_with_runtime_ranges(
        ipam_section: &serde_json::Value,
        runtime_ranges: Option<&serde_json::Value>,
    ) -> Result<IpamConf> {
        if !ipam_section.is_object() {
            return Err(Error::config("\"ipam\" must be an object"));
        }
        let raw: RawIpam = serde_json::from_value(ipam_section.clone())
            .map_err(|e| Error::config(format!("ipam: {e}")))?;
        let mut raw_sets: Vec<Vec<RawRange>> = match runtime_ranges {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| Error::config(format!("runtimeConfig.ipRanges: {e}")))?,
            None => Vec::new(),
        };
        let legacy = raw.legacy;
        if non_empty(&legacy.subnet).is_some() {
            raw_sets.push(vec![legacy]);
        } else if [&legacy.range_start, &legacy.range_end, &legacy.gateway]
            .iter()
            .any(|f| non_empty(f).is_some())
        {
            return Err(Error::config(
                "ipam: rangeStart/rangeEnd/gateway given without \"subnet\"",
            ));
        }
        raw_sets.extend(raw.ranges);
        if raw_sets.is_empty() {
            return Err(Error::config(
                "ipam: no address ranges: set \"ranges\" (or the legacy \"subnet\")",
            ));
        }
        let ranges = raw_sets
            .iter()
            .enumerate()
            .map(|(i, set)| parse_set(i, set))
            .collect::<Result<Vec<_>>>()?;
        check_overlaps(&ranges)?;
        let exclude = raw
            .exclude
            .iter()
            .enumerate()
            .map(|(i, s)| parse_exclude(i, s))
            .collect::<Result<Vec<_>>>()?;
        let data_dir = raw
            .data_dir
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return Err(Error::config(format!(
                "ipam.dataDir {} must be an absolute path",
                data_dir.display()
            )));
        }
        Ok(IpamConf {
            ranges,
            routes: raw.routes,
            data_dir,
            resolv_conf: raw.resolv_conf.filter(|p| !p.as_os_str().is_empty()),
            exclude,
        })
    }

    /// True when `ip` lies in one of the `exclude` entries.
    pub fn is_excluded(&self, ip: IpAddr) -> bool {
        self.exclude.iter().any(|n| n.contains(&ip))
    }
}

fn non_empty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_set(i: usize, set: &[RawRange]) -> Result<RangeSet> {
    if set.is_empty() {
        return Err(Error::config(format!("ranges[{i}] is an empty range set")));
    }
    let ranges = set
        .iter()
        .enumerate()
        .map(|(j, r)| parse_range(&format!("ranges[{i}][{j}]"), r))
        .collect::<Result<Vec<_>>>()?;
    let fam = family_of(ranges[0].range_start);
    if ranges.iter().any(|r| family_of(r.range_start) != fam) {
        return Err(Error::config(format!(
            "ranges[{i}] mixes IPv4 and IPv6 ranges; put each family in its own range set"
        )));
    }
    Ok(RangeSet { ranges })
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| Error::config(format!("{field}: invalid IP address {s:?}")))
}

fn parse_range(at: &str, raw: &RawRange) -> Result<Range> {
    let subnet_s =
        non_empty(&raw.subnet).ok_or_else(|| Error::config(format!("{at}.subnet is missing")))?;
    let subnet: IpNet = subnet_s
        .parse()
        .map_err(|_| Error::config(format!("{at}.subnet: invalid CIDR {subnet_s:?}")))?;
    let subnet = subnet.trunc();
    if subnet.prefix_len() + 2 > subnet.max_prefix_len() {
        return Err(Error::config(format!(
            "{at}.subnet {subnet} is too small to allocate from"
        )));
    }
    let first = crate::addr::offset(subnet.network(), 1);
    let last = if subnet.network().is_ipv4() {
        crate::addr::offset(subnet.broadcast(), -1)
    } else {
        subnet.broadcast()
    };
    let inside = |field: &str, v: Option<&str>, default: IpAddr| -> Result<IpAddr> {
        let Some(s) = v else { return Ok(default) };
        let ip = parse_ip(&format!("{at}.{field}"), s)?;
        if !subnet.contains(&ip) {
            return Err(Error::config(format!(
                "{at}.{field}: {ip} is not in subnet {subnet}"
            )));
        }
        Ok(ip)
    };
    let gateway = inside("gateway", non_empty(&raw.gateway), first)?;
    let range_start = inside("rangeStart", non_empty(&raw.range_start), first)?;
    let range_end = inside("rangeEnd", non_empty(&raw.range_end), last)?;
    if to_u128(range_start) > to_u128(range_end) {
        return Err(Error::config(format!(
            "{at}: rangeStart {range_start} is after rangeEnd {range_end}"
        )));
    }
    Ok(Range {
        subnet,
        range_start,
        range_end,
        gateway,
    })
}

fn check_overlaps(sets: &[RangeSet]) -> Result<()> {
    let all: Vec<(String, &Range)> = sets
        .iter()
        .enumerate()
        .flat_map(|(i, s)| {
            s.ranges
                .iter()
                .enumerate()
                .map(move |(j, r)| (format!("ranges[{i}][{j}]"), r))
        })
        .collect();
    for (a, (name_a, ra)) in all.iter().enumerate() {
        for (name_b, rb) in &all[a + 1..] {
            let overlap = family_of(ra.range_start) == family_of(rb.range_start)
                && to_u128(ra.range_start) <= to_u128(rb.range_end)
                && to_u128(rb.range_start) <= to_u128(ra.range_end);
            if overlap {
                return Err(Error::config(format!(
                    "{name_a} ({ra}) overlaps {name_b} ({rb})"
                )));
            }
        }
    }
    Ok(())
}

fn parse_exclude(i: usize, s: &str) -> Result<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| Error::config(format!("exclude[{i}]: invalid address or CIDR {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(v: serde_json::Value) -> String {
        let e = IpamConf::parse(&v).unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        e.to_string()
    }

    #[test]
    fn defaults_follow_host_local() {
        let c =
            IpamConf::parse(&json!({"type": "scrambler-ipam", "subnet": "10.1.2.3/24"})).unwrap();
        let r = &c.ranges[0].ranges[0];
        assert_eq!(r.subnet.to_string(), "10.1.2.0/24");
        assert_eq!(r.gateway.to_string(), "10.1.2.1");
        assert_eq!(r.range_start.to_string(), "10.1.2.1");
        assert_eq!(r.range_end.to_string(), "10.1.2.254");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let c6 = IpamConf::parse(&json!({"ranges": [[{"subnet": "fd00::/120"}]]})).unwrap();
        assert_eq!(c6.ranges[0].ranges[0].range_end.to_string(), "fd00::ff");
    }

    #[test]
    fn dual_stack_routes_exclude_and_runtime_ranges() {
        let c = IpamConf::from_net_conf(&json!({
            "name": "n",
            "runtimeConfig": {"ipRanges": [[{"subnet": "10.9.0.0/24"}]]},
            "ipam": {
                "ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.1.0.254"}],
                           [{"subnet": "fd00::/64", "rangeStart": "fd00::10", "rangeEnd": "fd00::20"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.5"}],
                "exclude": ["10.1.0.7", "10.1.0.32/28"],
                "dataDir": "/run/scrambler/ipam",
                "resolvConf": "/etc/resolv.conf"
            }
        }))
        .unwrap();
        assert_eq!(c.ranges.len(), 3);
        assert_eq!(c.ranges[0].ranges[0].subnet.to_string(), "10.9.0.0/24");
        assert_eq!(c.routes.len(), 2);
        assert!(c.is_excluded("10.1.0.40".parse().unwrap()));
        assert!(c.is_excluded("10.1.0.7".parse().unwrap()));
        assert!(!c.is_excluded("10.1.0.8".parse().unwrap()));
    }

    #[test]
    fn bad_confs_name_the_field() {
        assert!(err(json!({})).contains("no address ranges"));
        assert!(err(json!({"subnet": "10.0.0.0/31"})).contains("too small"));
        assert!(err(json!({"subnet": "nope"})).contains("subnet: invalid CIDR"));
        assert!(
            err(json!({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.9.0.1"}]]}))
                .contains("ranges[0][0].gateway: 10.9.0.1 is not in subnet 10.1.0.0/24")
        );
        assert!(err(json!({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.3"}]]}))
            .contains("after rangeEnd"));
        assert!(
            err(json!({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]}))
                .contains("overlaps")
        );
        assert!(
            err(json!({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}))
                .contains("mixes")
        );
        assert!(err(json!({"ranges": [[]]})).contains("empty range set"));
        assert!(err(json!({"subnet": "10.1.0.0/24", "exclude": ["x"]})).contains("exclude[0]"));
        assert!(err(json!({"subnet": "10.1.0.0/24", "dataDir": "rel"})).contains("absolute"));
        assert!(err(json!({"rangeStart": "10.1.0.1"})).contains("without \"subnet\""));
        assert!(err(json!({"ranges": 3})).contains("ipam"));
        assert!(err(json!("x")).contains("object"));
    }
}
