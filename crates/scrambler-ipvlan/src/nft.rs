//! The node's nftables table for encrypted ipvlan pods: `ip scrambler-ipvlan` (and
//! `ip6 scrambler-ipvlan` when there are IPv6 CIDRs), replaced wholesale in one atomic
//! `nft -f -` transaction, never touching any other table.
//!
//! - chain `reroute` (`type route hook output`): pod packets (any destination) get
//!   [`REROUTE_MARK`] or-ed into their mark. A changed mark in a `route` chain makes the
//!   kernel route the packet again with the node's own routing table and rules
//!   (`ip_route_me_harder`, with an xfrm policy lookup), which sends pod traffic to other
//!   nodes' pods, and to other nodes' underlay addresses (scrambler-xfrm's rule
//!   `from <pod CIDR> lookup 92`), into the mesh's xfrm interface; the rest follows the
//!   node's routes, where the mesh's guard policies stop cleartext to cluster CIDRs and
//!   peers' underlay addresses. ipvlan's own lookup is bound to the master (`oif` =
//!   master), so it skips the mesh's routes into the xfrm interface and takes the
//!   master's (the default route), and does no xfrm policy lookup.
//! - chain `guard` (`type filter hook postrouting`): pod-to-cluster packets leaving
//!   through the master in the clear are dropped (fail closed: e.g. before the mesh has
//!   routes to a new node). A packet on its way into ESP passes POSTROUTING too, in the
//!   clear with the master as output device (xfrm runs the hook before transforming, for
//!   SNAT); `rt ipsec missing` lets those through. Only with cluster CIDRs, so pods'
//!   other egress is untouched.
//!
//! Every rule carries the comment `scrambler-ipvlan <fingerprint>` ([`Ruleset::fingerprint`],
//! a hash of the rules): [`ensure`] lists the table first and writes it only when it is
//! missing, has another fingerprint or lacks rules, so the ADD of every pod neither
//! rewrites the table nor resets its counters.
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

/// What the table says: the union of the rules of every network with encrypted pods on
/// the node ([`crate::registry`]), all on one master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The master: the guard drops cleartext pod traffic leaving through it.
    pub master: String,
    /// Each network's CIDRs; its rules are made from its own CIDRs only, and a rule two
    /// networks share is written once.
    pub networks: Vec<NetworkRules>,
}

/// The CIDRs of one network, as the table uses them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetworkRules {
    /// The network's pod CIDRs on this node (sources of re-routed packets: every packet
    /// from them is re-routed).
    pub pod_cidrs: Vec<IpNet>,
    /// The network's cluster pod CIDRs (what the guard keeps off the master in the
    /// clear); empty: no guard.
    pub cluster_cidrs: Vec<IpNet>,
}

impl Ruleset {
    /// The `nft -f` text making our table(s) say exactly this: `flush table` then the
    /// chains, one transaction (a family without pod CIDRs is left alone). Per network one
    /// rule per (source, destination) CIDR pair, plain prefix matches: no sets, so no set
    /// modules. Debian's 6.1 kernel mishandles a table deleted and re-created in one
    /// transaction, so the table is flushed, never deleted, here.
    pub fn script(&self) -> String {
        self.script_tagged(&self.tag())
    }

    /// A hash of the rules (stable for one build of this crate; a new build re-writing an
    /// unchanged table once is harmless).
    pub fn fingerprint(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.script_tagged("").hash(&mut h);
        format!("{:016x}", h.finish())
    }

    /// The comment every rule carries.
    fn tag(&self) -> String {
        format!("{TABLE} {}", self.fingerprint())
    }

    /// The rules of family `v6` without comment: the `reroute` chain's and the `guard`
    /// chain's, each in the networks' order, without repeats. No `reroute` rule: no table.
    fn rules(&self, v6: bool) -> (Vec<String>, Vec<String>) {
        let fam = family(v6);
        let mark = format!("counter meta mark set meta mark or {REROUTE_MARK:#010x}");
        let (mut reroute, mut guard) = (Vec::new(), Vec::new());
        for net in &self.networks {
            let cluster = of_family(&net.cluster_cidrs, v6);
            // every destination: other nodes' pods, and other nodes' underlay addresses,
            // which the mesh reaches through a rule `from <pod CIDR>` (scrambler-xfrm)
            for p in of_family(&net.pod_cidrs, v6) {
                push_new(&mut reroute, format!("{fam} saddr {p} {mark}"));
            }
            if of_family(&net.pod_cidrs, v6).is_empty() {
                continue;
            }
            for a in &cluster {
                for b in &cluster {
                    push_new(
                        &mut guard,
                        format!(
                            "oifname {:?} {fam} saddr {a} {fam} daddr {b} rt ipsec missing counter drop",
                            self.master
                        ),
                    );
                }
            }
        }
        (reroute, guard)
    }

    /// How many rules the table of family `v6` has (0: no table in that family).
    fn rule_count(&self, v6: bool) -> usize {
        let (reroute, guard) = self.rules(v6);
        if reroute.is_empty() {
            0
        } else {
            reroute.len() + guard.len()
        }
    }

    /// Whether `listing` (`nft list table <fam> scrambler-ipvlan` of family `v6`) is
    /// exactly what [`Ruleset::script`] writes: every rule with this fingerprint, none
    /// other.
    pub fn matches_listing(&self, listing: &str, v6: bool) -> bool {
        let tag = format!("comment \"{}\"", self.tag());
        let rules: Vec<&str> = listing
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(" counter "))
            .collect();
        rules.len() == self.rule_count(v6) && rules.iter().all(|l| l.ends_with(&tag))
    }

    fn script_tagged(&self, tag: &str) -> String {
        let comment = if tag.is_empty() {
            String::new()
        } else {
            format!(" comment {tag:?}")
        };
        let mut s = String::new();
        for v6 in [false, true] {
            let fam = family(v6);
            let (reroute, guard) = self.rules(v6);
            if reroute.is_empty() {
                continue;
            }
            s += &format!(
                "table {fam} {TABLE}\n\
                 flush table {fam} {TABLE}\n\
                 table {fam} {TABLE} {{\n\
                 \tchain reroute {{\n\
                 \t\ttype route hook output priority mangle; policy accept;\n"
            );
            for r in &reroute {
                s += &format!("\t\t{r}{comment}\n");
            }
            s += "\t}\n";
            if !guard.is_empty() {
                s += "\tchain guard {\n\
                      \t\ttype filter hook postrouting priority filter; policy accept;\n";
                for r in &guard {
                    s += &format!("\t\t{r}{comment}\n");
                }
                s += "\t}\n";
            }
            s += "}\n";
        }
        s
    }
}

fn push_new(rules: &mut Vec<String>, rule: String) {
    if !rules.contains(&rule) {
        rules.push(rule);
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

/// Makes our table(s) in `netns` say `rules`; returns whether it wrote them (`false`:
/// they already said exactly that, nothing was touched, counters keep counting). Our table
/// in a family `rules` has no rule for (left by a network that has gone) is deleted in the
/// same transaction. After a write it checks them: a first use of nftables in a namespace
/// loads kernel modules mid-transaction, which the kernel replays; if a rule is missing
/// afterwards the script is applied once more.
pub async fn ensure(netns: &Netns, rules: &Ruleset) -> Result<bool> {
    for attempt in 0..3 {
        let stale = stale_families(netns, rules).await?;
        if stale.is_empty() && up_to_date(netns, rules).await? {
            return Ok(attempt > 0);
        }
        if attempt == 2 {
            break;
        }
        if attempt == 1 {
            tracing::warn!(netns = %netns, "nft table incomplete after apply, applying again");
        }
        apply(netns, rules.script() + &delete_script(&stale)).await?;
    }
    Err(Error::Dataplane {
        dataplane: "nftables".into(),
        op: format!("write table {TABLE} in {netns}"),
        reason: "rules are missing after applying them twice".into(),
    })
}

/// The families (`ip`, `ip6`) in which `netns` has our table but `rules` has no rule.
async fn stale_families(netns: &Netns, rules: &Ruleset) -> Result<Vec<String>> {
    Ok(families(netns)
        .await?
        .into_iter()
        .filter(|fam| match fam.as_str() {
            "ip" => rules.rule_count(false) == 0,
            "ip6" => rules.rule_count(true) == 0,
            _ => false,
        })
        .collect())
}

/// Whether every family `rules` needs has our table saying exactly `rules` (one `nft list`
/// per family; a missing table is `false`).
async fn up_to_date(netns: &Netns, rules: &Ruleset) -> Result<bool> {
    for v6 in [false, true] {
        if rules.rule_count(v6) == 0 {
            continue;
        }
        match run(netns, &["list", "table", family(v6), TABLE], None).await {
            Ok(listing) if rules.matches_listing(&listing, v6) => {}
            Ok(_) => return Ok(false),
            // nft ran and failed: no such table
            Err(Error::Dataplane { .. }) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
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

    fn one(master: &str, pods: &[&str], cluster: &[&str]) -> Ruleset {
        Ruleset {
            master: master.into(),
            networks: vec![net(pods, cluster)],
        }
    }

    fn net(pods: &[&str], cluster: &[&str]) -> NetworkRules {
        NetworkRules {
            pod_cidrs: cidrs(pods),
            cluster_cidrs: cidrs(cluster),
        }
    }

    #[test]
    fn script_rewrites_only_our_table() {
        let r = one("ul0", &["10.244.1.0/24"], &["10.244.0.0/16"]);
        let s = r.script();
        assert!(
            s.starts_with("table ip scrambler-ipvlan\nflush table ip scrambler-ipvlan\n"),
            "{s}"
        );
        assert!(
            s.contains("ip saddr 10.244.1.0/24 counter meta mark set meta mark or 0x00100000"),
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
    fn listing_matches_only_with_this_fingerprint_and_every_rule() {
        let r = one(
            "ul0",
            &["10.244.1.0/24"],
            &["10.244.0.0/16", "10.245.0.0/16"],
        );
        assert_eq!(r.rule_count(false), 1 + 4);
        assert_eq!(r.rule_count(true), 0);
        let fp = r.fingerprint();
        assert_eq!(fp.len(), 16);
        assert!(r
            .script()
            .contains(&format!("comment \"scrambler-ipvlan {fp}\"")));
        // what nft 1.0.6 lists for the script
        let tag = format!("comment \"scrambler-ipvlan {fp}\"");
        let reroute = format!("\t\tip saddr 10.244.1.0/24 counter packets 3 bytes 252 meta mark set meta mark | 0x00100000 {tag}\n");
        let guard = |a: &str, b: &str| {
            format!("\t\toifname \"ul0\" ip saddr {a} ip daddr {b} rt ipsec missing counter packets 0 bytes 0 drop {tag}\n")
        };
        let mut listing = String::from("table ip scrambler-ipvlan {\n\tchain reroute {\n");
        listing += &reroute;
        listing += "\t}\n\tchain guard {\n";
        for a in ["10.244.0.0/16", "10.245.0.0/16"] {
            for b in ["10.244.0.0/16", "10.245.0.0/16"] {
                listing += &guard(a, b);
            }
        }
        listing += "\t}\n}\n";
        assert!(r.matches_listing(&listing, false));
        // a rule missing, another fingerprint, a foreign rule: re-written
        let missing = listing.replacen(&reroute, "", 1);
        assert!(!r.matches_listing(&missing, false));
        let other = one("ul0", &["10.244.1.0/24"], &["10.244.0.0/16"]);
        assert_ne!(other.fingerprint(), fp);
        assert!(!other.matches_listing(&listing, false));
        let foreign = listing.replacen(
            "\t}\n",
            "\t\tip daddr 1.2.3.4 counter packets 0 bytes 0 accept\n\t}\n",
            1,
        );
        assert!(!r.matches_listing(&foreign, false));
    }

    #[test]
    fn without_cluster_cidrs_every_pod_packet_is_rerouted_and_nothing_guarded() {
        let r = one("eth0", &["10.1.1.0/24", "fd00:1::/64"], &[]);
        let s = r.script();
        assert!(s.contains("ip saddr 10.1.1.0/24 counter meta mark"), "{s}");
        assert!(s.contains("ip6 saddr fd00:1::/64 counter meta mark"), "{s}");
        assert!(!s.contains("guard"), "{s}");
        assert_eq!(
            delete_script(&["ip".into(), "ip6".into()]),
            "delete table ip scrambler-ipvlan\ndelete table ip6 scrambler-ipvlan\n"
        );
    }

    /// Two networks on one master: the table is each network's own rules (its pods to its
    /// cluster, its cluster guarded), a rule both make written once, and neither network's
    /// rules reach into the other's CIDRs.
    #[test]
    fn two_networks_are_the_union_of_their_own_rules() {
        let a = net(&["10.1.1.0/24"], &["10.1.0.0/16"]);
        let b = net(
            &["10.2.1.0/24", "fd00:2:1::/64"],
            &["10.2.0.0/16", "fd00:2::/48"],
        );
        let r = Ruleset {
            master: "ul0".into(),
            networks: vec![a.clone(), b.clone()],
        };
        let s = r.script();
        for rule in [
            "ip saddr 10.1.1.0/24 counter meta mark",
            "ip saddr 10.2.1.0/24 counter meta mark",
            "oifname \"ul0\" ip saddr 10.1.0.0/16 ip daddr 10.1.0.0/16 rt ipsec missing",
            "oifname \"ul0\" ip saddr 10.2.0.0/16 ip daddr 10.2.0.0/16 rt ipsec missing",
            "ip6 saddr fd00:2:1::/64 counter meta mark",
            "oifname \"ul0\" ip6 saddr fd00:2::/48 ip6 daddr fd00:2::/48 rt ipsec missing",
        ] {
            assert!(s.contains(rule), "{rule} missing from\n{s}");
        }
        assert!(!s.contains("saddr 10.1.1.0/24 ip daddr 10.2.0.0/16"), "{s}");
        assert!(!s.contains("saddr 10.1.0.0/16 ip daddr 10.2.0.0/16"), "{s}");
        assert_eq!((r.rule_count(false), r.rule_count(true)), (4, 2));
        // network a's ip6 table is b's alone; a alone has none
        assert_eq!(
            one("ul0", &["10.1.1.0/24"], &["10.1.0.0/16"]).rule_count(true),
            0
        );

        // a network repeating a's CIDRs (another range of the cluster) adds only its own
        let c = net(&["10.1.2.0/24"], &["10.1.0.0/16"]);
        let r2 = Ruleset {
            master: "ul0".into(),
            networks: vec![a.clone(), c],
        };
        assert_eq!(r2.rule_count(false), 2 + 1, "{}", r2.script());
        // the union differs from each network's own table, and its order does not matter
        // for what is written once
        let ab = r.fingerprint();
        assert_ne!(
            ab,
            one("ul0", &["10.1.1.0/24"], &["10.1.0.0/16"]).fingerprint()
        );
        let ba = Ruleset {
            master: "ul0".into(),
            networks: vec![b, a],
        };
        assert_eq!(ba.rule_count(false), r.rule_count(false));
    }
}
