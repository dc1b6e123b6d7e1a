//! The kernel layer against the real kernel, in test namespaces (veth links only, so it
//! runs on the build machine as root): what [`Exists`] makes of an address or route that
//! is there already, pipelined route adds and deletes, the routes a protocol owns, the
//! attach prologue, and the sysctl writer.

use scrambler_core::{AttachRequest, AttachmentId, Netns};
use scrambler_netlink::address::Scope;
use scrambler_netlink::{sysctl, AttachSockets, Exists, Nl, RouteSpec};
use scrambler_testkit::netns::TestNetns as Ns;

/// A namespace with the veth end `a0` (up) and its connection.
async fn with_link(prefix: &str) -> (Ns, Ns, Nl, scrambler_netlink::LinkState) {
    let ns = Ns::new(prefix);
    let peer = Ns::new(&format!("{prefix}p"));
    ns.veth("a0", &peer, "a1");
    let nl = Nl::open(&ns.netns()).await.unwrap();
    let link = nl.link_by_name("a0").await.unwrap().unwrap();
    (ns, peer, nl, link)
}

#[tokio::test]
async fn an_existing_address_fails_or_is_kept_as_asked() {
    let (ns, _peer, nl, link) = with_link("nlad").await;
    let addr = "10.7.0.2/24".parse().unwrap();
    assert!(nl
        .add_address(&link, addr, Scope::Global, Exists::Fail)
        .await
        .unwrap());
    let e = nl
        .add_address(&link, addr, Scope::Global, Exists::Fail)
        .await
        .unwrap_err();
    assert!(
        matches!(e, scrambler_core::Error::AlreadyExists { .. }),
        "{e}"
    );
    assert!(!nl
        .add_address(&link, addr, Scope::Global, Exists::Keep)
        .await
        .unwrap());
    let gw = "169.254.1.1/32".parse().unwrap();
    nl.add_address(&link, gw, Scope::Link, Exists::Fail)
        .await
        .unwrap();
    let have = nl.addresses(link.index).await.unwrap();
    assert!(have.contains(&addr) && have.contains(&gw), "{have:?}");
    let shown = ns.ip(&["-4", "addr", "show", "dev", "a0"]);
    assert!(shown.contains("169.254.1.1/32 scope link"), "{shown}");
}

#[tokio::test]
async fn an_existing_route_fails_or_is_kept_as_asked() {
    let (ns, _peer, nl, link) = with_link("nlrt").await;
    let route = RouteSpec::new("10.8.0.0/24".parse().unwrap(), None, link.index);
    assert!(nl.add_route(&route, Exists::Fail).await.unwrap());
    let e = nl.add_route(&route, Exists::Fail).await.unwrap_err();
    assert!(
        matches!(e, scrambler_core::Error::AlreadyExists { .. }),
        "{e}"
    );
    assert!(!nl.add_route(&route, Exists::Keep).await.unwrap());
    let shown = ns.ip(&["route", "show", "10.8.0.0/24"]);
    assert!(shown.contains("dev a0 proto 92 scope link"), "{shown}");
    assert!(nl.delete_route(&route).await.unwrap());
    assert!(!nl.delete_route(&route).await.unwrap(), "already gone");
}

#[tokio::test]
async fn routes_are_added_and_deleted_pipelined_and_found_by_protocol() {
    let (_ns, _peer, nl, link) = with_link("nlpp").await;
    let routes: Vec<RouteSpec> = ["10.9.1.0/24", "10.9.2.0/24", "fd00:9::/64"]
        .iter()
        .map(|d| RouteSpec::new(d.parse().unwrap(), None, link.index).with_protocol(0x5d))
        .collect();
    nl.add_routes(&routes, Exists::Fail).await.unwrap();
    let owned = nl.owned_routes(link.index, 0x5d).await.unwrap();
    let mut dsts: Vec<_> = owned.iter().map(|r| r.dst).collect();
    dsts.sort();
    let mut want: Vec<_> = routes.iter().map(|r| r.dst).collect();
    want.sort();
    assert_eq!(dsts, want);
    assert!(nl.owned_routes(link.index, 0x5c).await.unwrap().is_empty());
    nl.delete_routes(&routes).await.unwrap();
    assert!(nl.owned_routes(link.index, 0x5d).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_prologue_opens_both_namespaces_and_refuses_a_taken_ifname() {
    let host = Ns::new("nlho");
    let pod = Ns::new("nlpo");
    let req = |ifname: &str| AttachRequest {
        id: AttachmentId::new("c0ffee", ifname),
        pod_netns: pod.netns(),
        args: Default::default(),
        mtu: None,
    };
    let s = AttachSockets::open_for_add(&host.netns(), &req("eth0"))
        .await
        .unwrap();
    assert_eq!(s.host().netns(), &host.netns());
    assert_eq!(s.pod().unwrap().netns(), &pod.netns());
    let e = AttachSockets::open_for_add(&host.netns(), &req("lo"))
        .await
        .unwrap_err();
    assert!(
        matches!(e, scrambler_core::Error::AlreadyExists { .. }),
        "{e}"
    );
    let gone = Netns::Path("/run/netns/scr-no-such-netns".into());
    let e = AttachSockets::open(&host.netns(), &gone).await.unwrap_err();
    assert_eq!(e.code(), 3, "{e}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let not_netns = Netns::Path(file.path().into());
    let e = AttachSockets::open(&host.netns(), &not_netns)
        .await
        .unwrap_err();
    assert_eq!(e.code(), 4, "{e}");
}

#[tokio::test]
async fn a_socket_of_another_netns_leaves_the_thread_in_its_own() {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).unwrap();
    let own = ino("/proc/thread-self/ns/net");
    let ns = Ns::new("nlth");
    let nl = Nl::open(&ns.netns()).await.unwrap();
    assert_eq!(
        ino("/proc/thread-self/ns/net"),
        own,
        "thread left in {}",
        ns.netns()
    );
    // the socket acts in `ns`: only its loopback is there
    let links = nl.links().await.unwrap();
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0].name, "lo");
    let e = Nl::open(&Netns::path("/run/netns/scr-no-such-netns"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 3, "{e}");
    assert_eq!(ino("/proc/thread-self/ns/net"), own);
}

#[tokio::test]
async fn the_del_sockets_open_the_pod_side_only_when_it_is_there() {
    let host = Ns::new("nldh");
    let pod = Ns::new("nldp");
    let s = AttachSockets::open_for_del(&host.netns(), &pod.netns())
        .await
        .unwrap();
    assert_eq!(s.pod().unwrap_err().code(), 3, "not opened yet");
    let nl = s.pod_if_present().await.unwrap().expect("pod connection");
    assert_eq!(nl.netns(), &pod.netns());
    assert!(nl.link_by_name("lo").await.unwrap().is_some());
    assert!(s.pod().is_ok());
    for gone in [
        Netns::Path(Default::default()),
        Netns::Path("/run/netns/scr-no-such-netns".into()),
    ] {
        let s = AttachSockets::open_for_del(&host.netns(), &gone)
            .await
            .unwrap();
        assert!(s.pod_if_present().await.unwrap().is_none(), "{gone}");
        assert_eq!(s.pod().unwrap_err().code(), 3);
    }
}

#[tokio::test]
async fn sysctl_writes_inside_the_namespace_only() {
    let ns = Ns::new("nlsy");
    let key = "net/ipv4/ip_forward";
    let host_before = sysctl::read(&Netns::Current, key).await.unwrap();
    sysctl::ensure(&ns.netns(), key, "1").await.unwrap();
    assert_eq!(sysctl::read(&ns.netns(), key).await.unwrap(), "1");
    sysctl::ensure_blocking(&ns.netns(), key, "0").unwrap();
    assert_eq!(sysctl::read(&ns.netns(), key).await.unwrap(), "0");
    assert_eq!(
        sysctl::read(&Netns::Current, key).await.unwrap(),
        host_before
    );
}
