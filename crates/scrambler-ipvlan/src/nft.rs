//! The node's nftables table for encrypted ipvlan pods: `ip scrambler-ipvlan` (and
//! `ip6 scrambler-ipvlan` when there are IPv6 CIDRs), replaced wholesale in one atomic
//! `nft -f -` transaction, never touching any other table.
//!
//! - chain `reroute` (`type route hook output`): pod packets to cluster CIDRs get
//!   [`REROUTE_MARK`] or-ed into their mark. A changed mark in a `route` chain makes the
//!   kernel route the packet again with the node's own routing table
//!   (`ip_route_me_harder`), which sends it into the mesh's xfrm interface *with* an xfrm
//!   bundle; ipvlan's own lookup, bound to the master, finds none and the packet would be
//!   dropped.
//! - chain `guard` (`type filter hook postrouting`): pod-to-cluster packets leaving
//!   through the master in the clear are dropped (fail closed: e.g. before the mesh has
//!   routes to a new node). Only with cluster CIDRs, so pods' other egress is untouched.
//!
//! Writing the table shells out to `nft` (package `nftables`): no maintained pure-Rust
//! nftables netlink crate was a fit, and one `nft -f -` batch is atomic.

use ipnet::IpNet;
use scrambler_core::{Error, Netns, Result};
use std::io::Write;
use std::process::{Command, Stdio};

/// Name of the table (in families `ip` and `ip6`).
pub const TABLE: &str = "scrambler-ipvlan";

/// The mark bit or-ed into re-routed pod packets (other mark bits are kept).
pub const REROUTE_MARK: u32 = 0x0010_0000;

/// What the table says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The master: the guard drops cleartext pod traffic leaving through it.
    pub master: String,
    /// This node's pod CIDRs (sources of re-routed packets).
    pub pod_cidrs: Vec<IpNet>,
    /// Cluster pod CIDRs (destinations of re-routed packets); empty: any destination,
    /// and no guard.
    pub cluster_cidrs: Vec<IpNet>,
}

impl Ruleset {
    /// The `nft -f` text replacing both tables (each family only when it has CIDRs; a
    /// family without any is deleted).
    pub fn script(&self) -> String {
        let mut s = String::new();
        for v6 in [false, true] {
            let fam = family(v6);
            // create-then-delete: removes the table whether or not it exists
            s += &format!("table {fam} {TABLE}\ndelete table {fam} {TABLE}\n");
            let pods = set(&self.pod_cidrs, v6);
            let Some(pods) = pods else { continue };
            let cluster = set(&self.cluster_cidrs, v6);
            let addr = if v6 { "ip6" } else { "ip" };
            let dst = cluster
                .as_ref()
                .map(|c| format!(" {addr} daddr {c}"))
                .unwrap_or_default();
            s += &format!(
                "table {fam} {TABLE} {{\n\
                 \tchain reroute {{\n\
                 \t\ttype route hook output priority mangle; policy accept;\n\
                 \t\t{addr} saddr {pods}{dst} meta mark set meta mark or {REROUTE_MARK:#010x}\n\
                 \t}}\n"
            );
            if let Some(c) = &cluster {
                s += &format!(
                    "\tchain guard {{\n\
                     \t\ttype filter hook postrouting priority filter; policy accept;\n\
                     \t\toifname {:?} {addr} saddr {c} {addr} daddr {c} drop\n\
                     \t}}\n",
                    self.master
                );
            }
            s += "}\n";
        }
        s
    }
}

/// The script deleting both tables (whether or not they exist).
pub fn delete_script() -> String {
    [false, true]
        .iter()
        .map(|v6| {
            let fam = family(*v6);
            format!("table {fam} {TABLE}\ndelete table {fam} {TABLE}\n")
        })
        .collect()
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "ip6"
    } else {
        "ip"
    }
}

/// `{ a, b }` of the CIDRs of one family, or `None` when there are none.
fn set(cidrs: &[IpNet], v6: bool) -> Option<String> {
    let v: Vec<String> = cidrs
        .iter()
        .filter(|c| c.addr().is_ipv6() == v6)
        .map(|c| c.trunc().to_string())
        .collect();
    (!v.is_empty()).then(|| format!("{{ {} }}", v.join(", ")))
}

/// Whether `netns` has our table (either family).
pub async fn present(netns: &Netns) -> Result<bool> {
    let out = run(netns, &["list", "tables"], None).await?;
    Ok(out
        .lines()
        .any(|l| l.trim().ends_with(&format!(" {TABLE}"))))
}

/// Runs `script` with `nft -f -` in `netns` (one atomic transaction).
pub async fn apply(netns: &Netns, script: String) -> Result<()> {
    run(netns, &["-f", "-"], Some(script)).await.map(|_| ())
}

/// Runs `nft args…` on a thread inside `netns` (the child inherits its namespace),
/// feeding `stdin`; returns stdout.
async fn run(netns: &Netns, args: &[&str], stdin: Option<String>) -> Result<String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let object = format!("table {TABLE} in {netns}");
    netns
        .run_async(move || {
            let bin = nft_bin();
            let mut child = Command::new(bin)
                .args(&args)
                .stdin(if stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| Error::io("run nft (package nftables) for", object.clone(), e))?;
            if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
                w.write_all(text.as_bytes())
                    .map_err(|e| Error::io("write nft script for", object.clone(), e))?;
            }
            let out = child
                .wait_with_output()
                .map_err(|e| Error::io("wait for nft on", object.clone(), e))?;
            if !out.status.success() {
                return Err(Error::Dataplane {
                    dataplane: "nftables".into(),
                    op: format!("nft {} on {object}", args.join(" ")),
                    reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .await
}

/// `nft` by full path where it is (CNI plugins often run with an empty `PATH`).
fn nft_bin() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nft")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn script_replaces_only_our_tables() {
        let r = Ruleset {
            master: "ul0".into(),
            pod_cidrs: cidrs(&["10.244.1.0/24"]),
            cluster_cidrs: cidrs(&["10.244.0.0/16"]),
        };
        let s = r.script();
        assert!(s.starts_with("table ip scrambler-ipvlan\ndelete table ip scrambler-ipvlan\n"));
        assert!(s.contains(
            "ip saddr { 10.244.1.0/24 } ip daddr { 10.244.0.0/16 } meta mark set meta mark or 0x00100000"
        ), "{s}");
        assert!(s.contains("type route hook output priority mangle"), "{s}");
        assert!(
            s.contains(
                "oifname \"ul0\" ip saddr { 10.244.0.0/16 } ip daddr { 10.244.0.0/16 } drop"
            ),
            "{s}"
        );
        // no IPv6 CIDRs: the ip6 table is only deleted
        assert!(s.contains("delete table ip6 scrambler-ipvlan\n"));
        assert!(!s.contains("table ip6 scrambler-ipvlan {"));
        for line in s.lines() {
            if line.starts_with("table") || line.starts_with("delete") {
                assert!(line.contains(TABLE), "{line}");
            }
        }
    }

    #[test]
    fn without_cluster_cidrs_every_pod_packet_is_rerouted_and_nothing_guarded() {
        let r = Ruleset {
            master: "eth0".into(),
            pod_cidrs: cidrs(&["10.1.1.0/24", "fd00:1::/64"]),
            cluster_cidrs: vec![],
        };
        let s = r.script();
        assert!(s.contains("ip saddr { 10.1.1.0/24 } meta mark"), "{s}");
        assert!(s.contains("ip6 saddr { fd00:1::/64 } meta mark"), "{s}");
        assert!(!s.contains("guard"), "{s}");
        assert_eq!(
            delete_script(),
            "table ip scrambler-ipvlan\ndelete table ip scrambler-ipvlan\n\
             table ip6 scrambler-ipvlan\ndelete table ip6 scrambler-ipvlan\n"
        );
    }
}
