//! [`nft::ensure`] against the real kernel's nftables in a test namespace (runs on the
//! build machine: no ipvlan needed).

use scrambler_core::netns::testing::TestNetns as Ns;
use scrambler_ipvlan::nft::{self, Ruleset};

fn ruleset(cluster: &[&str]) -> Ruleset {
    Ruleset {
        master: "ul0".into(),
        pod_cidrs: vec!["10.1.1.0/24".parse().unwrap()],
        cluster_cidrs: cluster.iter().map(|c| c.parse().unwrap()).collect(),
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
