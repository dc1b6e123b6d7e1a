//! The node's nftables table for encrypted ipvlan pods: `ip scrambler-ipvlan` (and
//! `ip6 scrambler-ipvlan` when there are IPv6 CIDRs), replaced wholesale in one atomic
//! `nft -f -` transaction, never touching any other table.
//!
//! - chain `reroute` (`type route hook output`): pod packets to cluster CIDRs get
//!   [`REROUTE_MARK`] or-ed into their mark. A changed mark in a `route` chain makes the
//!   kernel route the packet again with the node's own routing table
//!   (`ip_route_me_harder`), which sends it into the mesh's xfrm interface. ipvlan's own
//!   lookup is bound to the master (`oif` = master), so it skips the mesh's routes into
//!   the xfrm interface and takes the master's (the default route).
//! - chain `guard` (`type filter hook postrouting`): pod-to-cluster packets leaving
//!   through the master in the clear are dropped (fail closed: e.g. before the mesh has
//!   routes to a new node). A packet on its way into ESP passes POSTROUTING too, in the
//!   clear with the master as output device (xfrm runs the hook before transforming, for
//!   SNAT); `rt ipsec missing` lets those through. Only with cluster CIDRs, so pods'
//!   other egress is untouched.
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
    /// The `nft -f` text making our table(s) say exactly this: `flush table` then the
    /// chains, one transaction (a family without CIDRs is left alone). One rule per
    /// (source, destination) CIDR pair, plain prefix matches: no sets, so no set modules.
    /// Debian's 6.1 kernel mishandles a table deleted and re-created in one transaction, so
    /// the table is flushed, never deleted, here.
    pub fn script(&self) -> String {
        let mut s = String::new();
        for v6 in [false, true] {
            let fam = family(v6);
            let pods = of_family(&self.pod_cidrs, v6);
            if pods.is_empty() {
                continue;
            }
            let cluster = of_family(&self.cluster_cidrs, v6);
            s += &format!(
                "table {fam} {TABLE}\n\
                 flush table {fam} {TABLE}\n\
                 table {fam} {TABLE} {{\n\
                 \tchain reroute {{\n\
                 \t\ttype route hook output priority mangle; policy accept;\n"
            );
            for p in &pods {
                let mark = format!("counter meta mark set meta mark or {REROUTE_MARK:#010x}");
                if cluster.is_empty() {
                    s += &format!("\t\t{fam} saddr {p} {mark}\n");
                }
                for c in &cluster {
                    s += &format!("\t\t{fam} saddr {p} {fam} daddr {c} {mark}\n");
                }
            }
            s += "\t}\n";
            if !cluster.is_empty() {
                s += "\tchain guard {\n\
                      \t\ttype filter hook postrouting priority filter; policy accept;\n";
                for a in &cluster {
                    for b in &cluster {
                        s += &format!(
                            "\t\toifname {:?} {fam} saddr {a} {fam} daddr {b} rt ipsec missing counter drop\n",
                            self.master
                        );
                    }
                }
                s += "\t}\n";
            }
            s += "}\n";
        }
        s
    }
}

/// The script deleting the tables of `families` (as `nft list tables` names them).
pub fn delete_script(families: &[String]) -> String {
    families
        .iter()
        .map(|fam| format!("delete table {fam} {TABLE}\n"))
        .collect()
}

fn family(v6: bool) -> &'static str {
    if v6 {
        "ip6"
    } else {
        "ip"
    }
}

/// The CIDRs of one family, network addresses.
fn of_family(cidrs: &[IpNet], v6: bool) -> Vec<IpNet> {
    cidrs
        .iter()
        .filter(|c| c.addr().is_ipv6() == v6)
        .map(IpNet::trunc)
        .collect()
}

/// The families (`ip`, `ip6`) in which `netns` has our table.
pub async fn families(netns: &Netns) -> Result<Vec<String>> {
    let out = run(netns, &["list", "tables"], None).await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("table"), Some(fam), Some(TABLE)) => Some(fam.to_string()),
                _ => None,
            }
        })
        .collect())
}

/// Runs `script` with `nft -f -` in `netns` (one atomic transaction).
pub async fn apply(netns: &Netns, script: String) -> Result<()> {
    run(netns, &["-f", "-"], Some(script)).await.map(|_| ())
}

/// Makes our table(s) in `netns` say `rules`, and checks that they do: a first use of
/// nftables in a namespace loads kernel modules mid-transaction, which the kernel replays;
/// if a chain is missing afterwards the script is applied once more.
pub async fn ensure(netns: &Netns, rules: &Ruleset) -> Result<()> {
    let want: Vec<&str> = [false, true]
        .into_iter()
        .filter(|v6| rules.pod_cidrs.iter().any(|c| c.addr().is_ipv6() == *v6))
        .map(family)
        .collect();
    for attempt in 0..2 {
        apply(netns, rules.script()).await?;
        let mut ok = true;
        for fam in &want {
            let out = run(netns, &["list", "table", fam, TABLE], None).await?;
            ok &= out.contains("chain reroute") && out.contains("meta mark set");
        }
        if ok {
            return Ok(());
        }
        tracing::warn!(netns = %netns, attempt, "nft table incomplete after apply, applying again");
    }
    Err(Error::Dataplane {
        dataplane: "nftables".into(),
        op: format!("write table {TABLE} in {netns}"),
        reason: "the re-route chain is missing after applying it twice".into(),
    })
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
    fn script_rewrites_only_our_table() {
        let r = Ruleset {
            master: "ul0".into(),
            pod_cidrs: cidrs(&["10.244.1.0/24"]),
            cluster_cidrs: cidrs(&["10.244.0.0/16"]),
        };
        let s = r.script();
        assert!(
            s.starts_with("table ip scrambler-ipvlan\nflush table ip scrambler-ipvlan\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "ip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 counter meta mark set meta mark or 0x00100000"
            ),
            "{s}"
        );
        assert!(s.contains("type route hook output priority mangle"), "{s}");
        assert!(
            s.contains(
                "oifname \"ul0\" ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 rt ipsec missing counter drop"
            ),
            "{s}"
        );
        assert!(!s.contains("ip6"), "no IPv6 CIDRs, no ip6 table: {s}");
        assert!(!s.contains("delete"), "{s}");
        for line in s.lines() {
            if line.starts_with("table") || line.starts_with("flush") {
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
        assert!(s.contains("ip saddr 10.1.1.0/24 counter meta mark"), "{s}");
        assert!(s.contains("ip6 saddr fd00:1::/64 counter meta mark"), "{s}");
        assert!(!s.contains("guard"), "{s}");
        assert_eq!(
            delete_script(&["ip".into(), "ip6".into()]),
            "delete table ip scrambler-ipvlan\ndelete table ip6 scrambler-ipvlan\n"
        );
    }
}
