//! [`ensure_route`] against the real kernel (no ipvlan needed: veth links in a test
//! namespace), runs on the build machine.

use scrambler_ipvlan::node::ensure_route;
use scrambler_netlink::Nl;
use scrambler_testkit::netns::TestNetns as Ns;

/// A route already out of the wanted link is "there" even when the caller's view is stale;
/// one out of another link is an error naming it, and is left alone.
#[tokio::test]
async fn ensure_route_accepts_its_own_route_and_refuses_another_links() {
    let ns = Ns::new("ivrt");
    let peer = Ns::new("ivrp");
    ns.veth("a0", &peer, "a1");
    ns.veth("b0", &peer, "b1");
    for l in ["a0", "b0"] {
        ns.ip(&["link", "set", l, "up"]);
    }
    let nl = Nl::open(&ns.netns()).await.unwrap();
    let a = nl.link_by_name("a0").await.unwrap().unwrap().index;
    let b = nl.link_by_name("b0").await.unwrap().unwrap().index;

    let dst = "10.9.1.0/24".parse().unwrap();
    assert!(ensure_route(&nl, &[], dst, a).await.unwrap(), "added");
    // stale view (empty): the kernel's EEXIST is re-checked, and it is ours
    assert!(!ensure_route(&nl, &[], dst, a).await.unwrap());
    let have = nl.main_routes().await.unwrap();
    assert!(!ensure_route(&nl, &have, dst, a).await.unwrap());

    // the same destination wanted out of b: refused, naming the route
    let e = ensure_route(&nl, &have, dst, b).await.unwrap_err();
    assert_eq!(e.code(), 102, "{e}");
    let msg = e.to_string();
    assert!(msg.contains("10.9.1.0/24"), "{msg}");
    assert!(msg.contains(&format!("index {a}")), "{msg}");
    let routes = ns.ip(&["route", "show", "10.9.1.0/24"]);
    assert!(routes.contains("dev a0"), "left alone: {routes}");
}
