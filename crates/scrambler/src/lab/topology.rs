//! The lab's wiring: one "wire" namespace holding the underlay bridge, one namespace per
//! node plugged into it, one namespace per pod (attached later by the CNI plugin).
//!
//! Node `i` (1-based) gets underlay `192.0.2.i/24` on its `ul0` and pod CIDR `10.244.i.0/24`.
//! Every name starts with the lab's name so several labs (and tests) can coexist.

use super::cmd;
use ipnet::IpNet;
use scrambler_core::{Epoch, Error, Node, NodeId, Result};
use std::net::IpAddr;

/// The underlay interface name inside each node.
pub const UNDERLAY_IF: &str = "ul0";
/// The bridge inside the wire namespace.
pub const BRIDGE: &str = "br0";
/// Pods' supernet (all node pod CIDRs are inside it).
pub const POD_SUPERNET: &str = "10.244.0.0/16";

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
pub fn node_desc(names: &Names, i: usize) -> Result<Node> {
    let ul: IpAddr = format!("192.0.2.{i}")
        .parse()
        .map_err(|e| Error::config(format!("node {i}: {e}")))?;
    let cidr: IpNet = format!("10.244.{i}.0/24")
        .parse()
        .map_err(|e| Error::config(format!("node {i}: {e}")))?;
    Ok(Node {
        name: names.node(i),
        id: NodeId::new(i as u32)?,
        epoch: Epoch::generate(None)?,
        underlay: vec![ul],
        pod_cidrs: vec![cidr],
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

/// Creates node `i`'s namespace, plugs it into the bridge and addresses its underlay.
pub fn create_node(names: &Names, i: usize) -> Result<()> {
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
    cmd::ip(
        &n,
        &[
            "addr",
            "add",
            &format!("192.0.2.{i}/24"),
            "dev",
            UNDERLAY_IF,
        ],
    )?;
    cmd::ip(&n, &["link", "set", UNDERLAY_IF, "up"])?;
    cmd::sysctl(&n, "net.ipv4.ip_forward", "1")?;
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
    fn underlay_macs_are_fixed_local_and_distinct() {
        assert_eq!(underlay_mac(1), "02:5c:00:00:00:01");
        assert_eq!(underlay_mac(200), "02:5c:00:00:00:c8");
        assert_ne!(underlay_mac(2), underlay_mac(3));
    }
}
