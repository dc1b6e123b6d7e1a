//! The lab's wiring: one "wire" namespace holding the underlay bridge, one namespace per
//! node plugged into it, one namespace per pod (attached later by the CNI plugin).
//!
//! This module is the one place that decides the lab's addresses ([`Family`]): node `i`
//! (1-based) gets underlay `192.0.2.i/24` on its `ul0` and pod CIDR `10.244.i.0/24`; with
//! `--ipv6` the underlay is IPv6 only, `2001:db8::i/64`, and pods are dual-stack:
//! `10.244.i.0/24` and `fd00:10:244:i::/64` (`i` in hex), under the cluster CIDRs
//! `10.244.0.0/16` and `fd00:10:244::/48`.
//! Every name starts with the lab's name so several labs (and tests) can coexist.

use super::cmd;
use ipnet::IpNet;
use scrambler_core::{Epoch, Node, NodeId, Result};
use std::net::IpAddr;

/// The underlay interface name inside each node.
pub const UNDERLAY_IF: &str = "ul0";
/// The bridge inside the wire namespace.
pub const BRIDGE: &str = "br0";
/// Pods' supernet (all node pod CIDRs are inside it).
pub const POD_SUPERNET: &str = "10.244.0.0/16";
/// Pods' IPv6 supernet of an `--ipv6` lab (every node's IPv6 pod CIDR is inside it).
pub const POD_SUPERNET6: &str = "fd00:10:244::/48";

/// The lab's address plan: an IPv4 underlay with IPv4 pods (the default), or an IPv6-only
/// underlay with dual-stack pods (`--ipv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// IPv6-only underlay, dual-stack pods.
    pub ipv6: bool,
}

impl Family {
    /// The plan of a lab built with (`true`) or without `--ipv6`.
    pub fn new(ipv6: bool) -> Family {
        Family { ipv6 }
    }

    /// Node `i`'s underlay address: `192.0.2.i`, or `2001:db8::i` (IPv6-only underlay).
    pub fn underlay(self, i: usize) -> IpAddr {
        match self.ipv6 {
            false => IpAddr::from([192, 0, 2, (i & 0xff) as u8]),
            true => IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, (i & 0xffff) as u16]),
        }
    }

    /// Node `i`'s underlay address with the wire's prefix length (`/24`, `/64`).
    pub fn underlay_prefix(self, i: usize) -> IpNet {
        let len = if self.ipv6 { 64 } else { 24 };
        IpNet::new(self.underlay(i), len).unwrap_or_else(|_| IpNet::from(self.underlay(i)))
    }

    /// The node whose underlay address `addr` is (1..=`nodes`), if any.
    pub fn node_of_underlay(self, addr: IpAddr, nodes: usize) -> Option<usize> {
        (1..=nodes).find(|i| self.underlay(*i) == addr)
    }

    /// Node `i`'s pod CIDRs: `10.244.i.0/24`, and with IPv6 also `fd00:10:244:i::/64`.
    pub fn pod_cidrs(self, i: usize) -> Vec<IpNet> {
        let v4 = IpNet::new(IpAddr::from([10, 244, (i & 0xff) as u8, 0]), 24);
        let v6 = IpNet::new(
            IpAddr::from([0xfd00, 0x10, 0x244, (i & 0xffff) as u16, 0, 0, 0, 0]),
            64,
        );
        let mut out: Vec<IpNet> = v4.into_iter().collect();
        if self.ipv6 {
            out.extend(v6);
        }
        out
    }

    /// The cluster CIDRs every node guards: the supernets of the pod CIDRs of each family.
    pub fn cluster_cidrs(self) -> Vec<IpNet> {
        let mut out = vec![POD_SUPERNET];
        if self.ipv6 {
            out.push(POD_SUPERNET6);
        }
        out.into_iter().filter_map(|c| c.parse().ok()).collect()
    }

    /// What pods' `lab test` pings, per address family, are labelled as.
    pub fn name(v6: bool) -> &'static str {
        if v6 {
            "IPv6"
        } else {
            "IPv4"
        }
    }
}

/// Largest lab: node addresses and pod CIDRs are numbered within one /24 and one /16.
pub const MAX_NODES: usize = 250;

/// Namespace names of one lab.
#[derive(Debug, Clone)]
pub struct Names {
    /// The lab's name (a prefix).
    pub lab: String,
}

impl Names {
    /// The wire namespace.
    pub fn wire(&self) -> String {
        format!("{}-wire", self.lab)
    }
    /// Node `i`'s name (also its namespace).
    pub fn node(&self, i: usize) -> String {
        format!("{}-n{i}", self.lab)
    }
    /// Pod `j` of node `i`.
    pub fn pod(&self, i: usize, j: usize) -> String {
        format!("{}-n{i}-p{j}", self.lab)
    }
    /// Whether namespace `name` is one of this lab's: its wire, a node or a pod, parsed
    /// exactly (lab `a` does not own `a-b-n1`, a node of lab `a-b`).
    pub fn owns(&self, name: &str) -> bool {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let Some(rest) = name
            .strip_prefix(self.lab.as_str())
            .and_then(|r| r.strip_prefix('-'))
        else {
            return false;
        };
        if rest == "wire" {
            return true;
        }
        let Some(rest) = rest.strip_prefix('n') else {
            return false;
        };
        match rest.split_once("-p") {
            Some((node, pod)) => digits(node) && digits(pod),
            None => digits(rest),
        }
    }
    /// The bridge port of node `i` in the wire namespace.
    pub fn port(i: usize) -> String {
        format!("port{i}")
    }
}

/// The mesh description of node `i` (1-based) in the lab, with a fresh random epoch.
pub fn node_desc(names: &Names, family: Family, i: usize) -> Result<Node> {
    Ok(Node {
        name: names.node(i),
        id: NodeId::new(i as u32)?,
        epoch: Epoch::generate(None)?,
        underlay: vec![family.underlay(i)],
        pod_cidrs: family.pod_cidrs(i),
        previous_epochs: Vec::new(),
    })
}

/// Creates the wire namespace with its bridge.
pub fn create_wire(names: &Names) -> Result<()> {
    let w = names.wire();
    cmd::ip("", &["netns", "add", &w])?;
    cmd::ip(&w, &["link", "set", "lo", "up"])?;
    cmd::ip(&w, &["link", "add", BRIDGE, "type", "bridge"])?;
    cmd::ip(&w, &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// The MAC of node `i`'s underlay interface. Fixed, like a real node's NIC, so a node that
/// is rebuilt (the `reboot` fault) comes back with the same MAC and its peers' neighbour
/// entries for it stay right; a fresh random MAC would blackhole their first packets until
/// their entries go stale and are re-probed (~5 s).
pub fn underlay_mac(i: usize) -> String {
    format!("02:5c:00:00:{:02x}:{:02x}", (i >> 8) & 0xff, i & 0xff)
}

/// Creates node `i`'s namespace, plugs it into the bridge and addresses its underlay
/// (an IPv6 address without duplicate address detection: it is usable at once).
pub fn create_node(names: &Names, family: Family, i: usize) -> Result<()> {
    let n = names.node(i);
    let w = names.wire();
    let port = Names::port(i);
    cmd::ip("", &["netns", "add", &n])?;
    cmd::ip(&n, &["link", "set", "lo", "up"])?;
    cmd::ip(
        &w,
        &[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            UNDERLAY_IF,
            "address",
            &underlay_mac(i),
            "netns",
            &n,
        ],
    )?;
    cmd::ip(&w, &["link", "set", &port, "master", BRIDGE, "up"])?;
    let addr = family.underlay_prefix(i).to_string();
    let mut add = vec!["addr", "add", &addr, "dev", UNDERLAY_IF];
    if family.ipv6 {
        add.push("nodad");
        // the kernel drops a link's IPv6 addresses when it goes down; a node's NIC comes
        // back up with its configured address (a network manager's job), so the lab's
        // `link-down` keeps it
        cmd::sysctl(
            &n,
            &format!("net.ipv6.conf.{UNDERLAY_IF}.keep_addr_on_down"),
            "1",
        )?;
    }
    cmd::ip(&n, &add)?;
    cmd::ip(&n, &["link", "set", UNDERLAY_IF, "up"])?;
    cmd::sysctl(&n, "net.ipv4.ip_forward", "1")?;
    if family.ipv6 {
        cmd::sysctl(&n, "net.ipv6.conf.all.forwarding", "1")?;
    }
    Ok(())
}

/// Creates an empty pod namespace.
pub fn create_pod_netns(name: &str) -> Result<()> {
    cmd::ip("", &["netns", "add", name])?;
    cmd::ip(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Deletes a namespace (and so everything in it); a missing one is fine.
pub fn delete_netns(name: &str) {
    let _ = cmd::output(cmd::ip_bin(), &["netns", "del", name]);
}

/// Every namespace of this lab that exists now.
pub fn existing(names: &Names) -> Vec<String> {
    let out = cmd::ip("", &["netns", "list"]).unwrap_or_default();
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| names.owns(n))
        .map(str::to_string)
        .collect()
}

/// Sets node `i`'s underlay link down or up.
pub fn set_underlay(names: &Names, i: usize, up: bool) -> Result<()> {
    cmd::ip(
        &names.node(i),
        &["link", "set", UNDERLAY_IF, if up { "up" } else { "down" }],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lab_owns_exactly_its_own_namespaces() {
        let a = Names { lab: "a".into() };
        for ours in [a.wire(), a.node(1), a.node(12), a.pod(3, 40)] {
            assert!(a.owns(&ours), "{ours}");
        }
        let ab = Names { lab: "a-b".into() };
        let an1 = Names { lab: "a-n1".into() };
        for theirs in [ab.wire(), ab.node(1), ab.pod(1, 1), an1.wire(), an1.node(2)] {
            assert!(!a.owns(&theirs), "{theirs}");
        }
        for other in [
            "a", "a-", "a-n", "a-n1-p", "a-nx", "a-n1-q2", "ab-n1", "a-wire2",
        ] {
            assert!(!a.owns(other), "{other}");
        }
    }

    #[test]
    fn the_address_plan_of_both_families() {
        let (v4, v6) = (Family::new(false), Family::new(true));
        assert_eq!(v4.underlay_prefix(3).to_string(), "192.0.2.3/24");
        assert_eq!(v6.underlay_prefix(3).to_string(), "2001:db8::3/64");
        let cidrs = |f: Family, i| {
            f.pod_cidrs(i)
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(cidrs(v4, 12), ["10.244.12.0/24"]);
        assert_eq!(cidrs(v6, 12), ["10.244.12.0/24", "fd00:10:244:c::/64"]);
        assert_eq!(v4.cluster_cidrs().len(), 1);
        let cluster = v6.cluster_cidrs();
        assert_eq!(cluster.len(), 2);
        for i in [1, 200, MAX_NODES] {
            for c in v6.pod_cidrs(i) {
                assert!(cluster.iter().any(|s| s.contains(&c)), "{c}");
            }
            assert_eq!(v6.node_of_underlay(v6.underlay(i), MAX_NODES), Some(i));
            assert_eq!(v4.node_of_underlay(v4.underlay(i), MAX_NODES), Some(i));
        }
        assert_eq!(v6.node_of_underlay(v4.underlay(2), 3), None);
        assert_eq!(v4.node_of_underlay(v4.underlay(4), 3), None);
        let node = node_desc(&Names { lab: "t".into() }, v6, 2).unwrap();
        assert_eq!(
            node.tunnel_addresses(),
            [
                "10.244.2.1".parse::<IpAddr>().unwrap(),
                "fd00:10:244:2::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn underlay_macs_are_fixed_local_and_distinct() {
        assert_eq!(underlay_mac(1), "02:5c:00:00:00:01");
        assert_eq!(underlay_mac(200), "02:5c:00:00:00:c8");
        assert_ne!(underlay_mac(2), underlay_mac(3));
    }
}
