//! [`nft::ensure`] against the real kernel's nftables in a test namespace (runs on the
//! build machine: no ipvlan needed).

use scrambler_ipvlan::nft::{self, NetworkRules, Ruleset};
use scrambler_testkit::netns::TestNetns as Ns;

fn network(pods: &str, cluster: &[&str]) -> NetworkRules {
    NetworkRules {
        pod_cidrs: vec![pods.parse().unwrap()],
        cluster_cidrs: cluster.iter().map(|c| c.parse().unwrap()).collect(),
    }
}

fn ruleset(cluster: &[&str]) -> Ruleset {
    Ruleset {
        master: "ul0".into(),
        networks: vec![network("10.1.1.0/24", cluster)],
    }
}

/// The table with rule handles (they change whenever it is re-written).
fn listing(ns: &Ns) -> String {
    let (ok, out) = ns.exec(&["nft", "-a", "list", "table", "ip", nft::TABLE]);
    assert!(ok, "{out}");
    out
}

/// Written when missing, left alone (handles, counters) when it already says the same,
/// re-written when it differs or lost a rule.
#[tokio::test]
async fn ensure_writes_the_table_only_when_needed() {
    let ns = Ns::new("ivnft");
    let r = ruleset(&["10.1.0.0/16"]);
    assert!(
        nft::ensure(&ns.netns(), &r).await.unwrap(),
        "missing: written"
    );
    let first = listing(&ns);
    assert!(first.contains(&r.fingerprint()), "{first}");
    assert!(!nft::ensure(&ns.netns(), &r).await.unwrap(), "unchanged");
    assert_eq!(listing(&ns), first, "not touched");

    let wider = ruleset(&["10.1.0.0/16", "10.2.0.0/16"]);
    assert!(nft::ensure(&ns.netns(), &wider).await.unwrap(), "differs");
    assert!(listing(&ns).contains("10.2.0.0/16"));

    // a guard rule deleted by hand comes back
    let guard_rule = listing(&ns)
        .lines()
        .find(|l| l.contains(" drop "))
        .and_then(|l| l.rsplit("# handle ").next())
        .unwrap()
        .trim()
        .to_string();
    let (ok, out) = ns.exec(&[
        "nft",
        "delete",
        "rule",
        "ip",
        nft::TABLE,
        "guard",
        "handle",
        &guard_rule,
    ]);
    assert!(ok, "{out}");
    assert!(nft::ensure(&ns.netns(), &wider).await.unwrap(), "rule lost");
    assert!(!nft::ensure(&ns.netns(), &wider).await.unwrap());
    assert_eq!(nft::families(&ns.netns()).await.unwrap(), ["ip"]);
}

/// Two networks' rules in one table; when one leaves, the table is rewritten to the
/// other's rules alone (the table stays, with the remaining guard), and back.
#[tokio::test]
async fn the_table_is_the_union_and_narrows_to_the_remaining_network() {
    let ns = Ns::new("ivnfu");
    let a = network("10.1.1.0/24", &["10.1.0.0/16"]);
    let b = network("10.2.1.0/24", &["10.2.0.0/16"]);
    let both = Ruleset {
        master: "ul0".into(),
        networks: vec![a.clone(), b],
    };
    assert!(nft::ensure(&ns.netns(), &both).await.unwrap());
    let t = listing(&ns);
    for cidr in ["10.1.0.0/16", "10.2.0.0/16", "10.1.1.0/24", "10.2.1.0/24"] {
        assert!(t.contains(cidr), "{cidr} missing: {t}");
    }
    let only_a = Ruleset {
        master: "ul0".into(),
        networks: vec![a],
    };
    assert!(nft::ensure(&ns.netns(), &only_a).await.unwrap());
    let t = listing(&ns);
    assert!(!t.contains("10.2."), "b's rules left: {t}");
    assert!(
        t.contains("ip saddr 10.1.0.0/16 ip daddr 10.1.0.0/16 rt ipsec missing"),
        "a's guard: {t}"
    );
    assert!(
        !nft::ensure(&ns.netns(), &only_a).await.unwrap(),
        "unchanged"
    );
    assert!(nft::ensure(&ns.netns(), &both).await.unwrap());
    assert!(listing(&ns).contains("10.2.0.0/16"));
}

/// A dual-stack network leaves and an IPv4-only one remains: its ip6 table (re-route and
/// guard of the gone network) is deleted, not left behind, in the same rewrite.
#[tokio::test]
async fn narrowing_deletes_a_family_no_network_needs() {
    let ns = Ns::new("ivnf6");
    let a = NetworkRules {
        pod_cidrs: vec![
            "10.1.1.0/24".parse().unwrap(),
            "fd00:1:1::/64".parse().unwrap(),
        ],
        cluster_cidrs: vec![
            "10.1.0.0/16".parse().unwrap(),
            "fd00:1::/48".parse().unwrap(),
        ],
    };
    let b = network("10.2.1.0/24", &["10.2.0.0/16"]);
    let both = Ruleset {
        master: "ul0".into(),
        networks: vec![a, b.clone()],
    };
    assert!(nft::ensure(&ns.netns(), &both).await.unwrap());
    assert_eq!(nft::families(&ns.netns()).await.unwrap(), ["ip", "ip6"]);
    let only_b = Ruleset {
        master: "ul0".into(),
        networks: vec![b],
    };
    assert!(nft::ensure(&ns.netns(), &only_b).await.unwrap());
    assert_eq!(
        nft::families(&ns.netns()).await.unwrap(),
        ["ip"],
        "a's ip6 table left behind"
    );
    let t = listing(&ns);
    assert!(!t.contains("10.1."), "a's rules left: {t}");
    assert!(t.contains("10.2.0.0/16"), "{t}");
    assert!(
        !nft::ensure(&ns.netns(), &only_b).await.unwrap(),
        "unchanged"
    );
}
