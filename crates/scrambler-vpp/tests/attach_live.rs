//! Pods attached to a real VPP with [`VppAttach`]: ping between pods of one VPP, clean
//! DEL, all-or-nothing ADD, honest CHECK, and pods on two VPP nodes talking over ESP.

mod two_nodes;

use std::process::{Command, Stdio};
use std::time::Duration;

use scrambler_core::fault::{Fault, FaultStage};
use scrambler_core::{AttachRequest, AttachmentId, CniResult, IpConfig, Netns, Tunnel};
use scrambler_netlink::AttachOnce;
use scrambler_testkit::netns::TestNetns;
use scrambler_testkit::vpp::{api_sock_resolver, quiet_ipv6, VppInstance};
use scrambler_vpp::attach::{host_ifname, VppAttach, GATEWAY_TAG};
use scrambler_vpp_api::api::af_packet::AfPacketDump;
use scrambler_vpp_api::api::ip::IpRouteDump;
use scrambler_vpp_api::api::ip_neighbor::{IpNeighborAddDel, IpNeighborDump};
use scrambler_vpp_api::api::types::IpTable;
use scrambler_vpp_api::VppClient;
use two_nodes::{capture, TwoNodes};

fn addrs(ips: &[&str]) -> CniResult {
    CniResult {
        ips: ips
            .iter()
            .map(|a| IpConfig {
                address: a.parse().unwrap(),
                gateway: None,
                interface: None,
            })
            .collect(),
        ..Default::default()
    }
}

fn request(pod: &TestNetns, cid: &str) -> AttachRequest {
    AttachRequest {
        id: AttachmentId::new(cid, "eth0"),
        pod_netns: pod.netns(),
        args: vec![],
        mtu: None,
    }
}

/// Pod and gateway state VPP has: (af_packet host names, /32 routes of table 0, neighbours).
async fn vpp_state(c: &VppClient) -> (Vec<String>, Vec<String>, Vec<String>) {
    let afs = c
        .dump(&AfPacketDump {})
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.host_if_name)
        .collect();
    let routes = c
        .dump(&IpRouteDump {
            table: IpTable {
                table_id: 0,
                is_ip6: false,
                name: String::new(),
            },
        })
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.route.prefix.to_ipnet())
        .filter(|p| p.to_string().starts_with("10."))
        .map(|p| p.to_string())
        .collect();
    let neigh = c
        .dump(&IpNeighborDump::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|n| n.neighbor.ip_address.to_ip())
        .map(|a| a.to_string())
        .collect();
    (afs, routes, neigh)
}

fn links(ns: &TestNetns) -> String {
    ns.ip(&["-o", "link"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_one_vpp_ping_check_and_detach_cleanly() {
    let vpp = VppInstance::start("att1", 0).await;
    quiet_ipv6(&vpp.netns);
    let host = vpp.netns.netns();
    let att = VppAttach::new(vpp.api_sock());
    let p1 = TestNetns::new("att1p");
    let p2 = TestNetns::new("att1q");
    let (r1, r2) = (request(&p1, "pod-one"), request(&p2, "pod-two"));

    let res1 = att
        .attach_in(&host, &r1, &addrs(&["10.9.0.2/24"]))
        .await
        .unwrap();
    let res2 = att
        .attach_in(&host, &r2, &addrs(&["10.9.0.3/24"]))
        .await
        .unwrap();
    assert_eq!(res1.ips[0].address.to_string(), "10.9.0.2/32");
    assert_eq!(res1.interfaces[1].name, "eth0");
    assert_eq!(res1.interfaces[0].name, host_ifname(&r1.id));
    assert_eq!(res1.interfaces[1].mtu, Some(1440));

    assert!(
        p1.ping("10.9.0.3"),
        "pod1 -> pod2 failed\n{}\n{}",
        vpp.vppctl(&["show", "errors"]),
        vpp.vppctl(&["show", "ip", "neighbors"])
    );
    assert!(p2.ping("10.9.0.2"), "pod2 -> pod1 failed");
    att.check_in(&host, &r1, &res1).await.unwrap();
    att.check_in(&host, &r2, &res2).await.unwrap();
    let c = vpp.client().await;
    let tags: Vec<String> = c
        .interfaces()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.tag)
        .collect();
    assert!(tags.iter().any(|t| t == GATEWAY_TAG), "{tags:?}");
    assert!(tags.iter().any(|t| *t == att.tag(&r1.id)), "{tags:?}");

    // CHECK notices a removed pod address, and says which
    p1.ip(&["addr", "del", "10.9.0.2/32", "dev", "eth0"]);
    let e = att.check_in(&host, &r1, &res1).await.unwrap_err();
    assert_eq!(e.code(), 103, "{e}");
    assert!(e.to_string().contains("10.9.0.2/32"), "{e}");
    // ... and a removed VPP neighbour
    let name2 = format!("host-{}", host_ifname(&r2.id));
    let sw2 = c
        .interfaces()
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.interface_name == name2)
        .unwrap()
        .sw_if_index;
    let n2 = c
        .dump(&IpNeighborDump {
            sw_if_index: sw2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(n2.len(), 1, "{n2:?}");
    c.request(&IpNeighborAddDel {
        is_add: false,
        neighbor: n2[0].neighbor.clone(),
    })
    .await
    .unwrap();
    let e = att.check_in(&host, &r2, &res2).await.unwrap_err();
    assert!(e.to_string().contains("VPP neighbour 10.9.0.3"), "{e}");

    // DEL removes everything; twice is fine; so is one never added, and a pod netns gone
    att.detach_in(&host, &r1).await.unwrap();
    att.detach_in(&host, &r1).await.unwrap();
    p2.delete();
    att.detach_in(&host, &r2).await.unwrap();
    att.detach_in(&host, &request(&p1, "never-added"))
        .await
        .unwrap();
    let (afs, routes, neigh) = vpp_state(&c).await;
    assert!(afs.is_empty(), "{afs:?}");
    assert!(routes.is_empty(), "{routes:?}");
    assert!(neigh.is_empty(), "{neigh:?}");
    let l = links(&vpp.netns);
    assert!(!l.contains("scv"), "{l}");
    assert!(!links(&p1).contains("eth0"));
    c.close().await.unwrap();

    // the gateway stays for the next pod, and ADD works again after DEL
    let res1 = att
        .attach_in(&host, &r1, &addrs(&["10.9.0.2/24"]))
        .await
        .unwrap();
    att.check_in(&host, &r1, &res1).await.unwrap();
    att.detach_in(&host, &r1).await.unwrap();
    assert!(att.remove_gateway(&host).await.unwrap());
    assert!(!att.remove_gateway(&host).await.unwrap());
}

/// Sends 100 kB over TCP from `from` to `dst` (a listener in `to`); asserts all arrived.
fn tcp(from: &TestNetns, to: &TestNetns, dst: &str, vpp: &VppInstance) {
    // the server's stdin stays open (nc stops at its EOF) and its output is drained
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &to.name, "busybox", "nc", "-l", "-p", "5001",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = server.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v.len()
    });
    std::thread::sleep(Duration::from_millis(300));
    let payload = "x".repeat(100_000);
    let (ok, msg) = from.exec(&[
        "sh",
        "-c",
        &format!("printf '%s' {payload} | busybox nc -w 3 {dst} 5001"),
    ]);
    assert!(ok, "nc to {dst}: {msg}");
    let got = reader.join().unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(
        got,
        payload.len(),
        "TCP to {dst} lost data\n{}",
        vpp.vppctl(&["show", "errors"])
    );
}

/// TCP (checksums the kernel leaves to offload) and IPv6 between two pods of one VPP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_pods_exchange_tcp() {
    let vpp = VppInstance::start("att4", 1).await;
    let host = vpp.netns.netns();
    let att = VppAttach::new(vpp.api_sock());
    let p1 = TestNetns::new("att4p");
    let p2 = TestNetns::new("att4q");
    let (r1, r2) = (request(&p1, "ds-one"), request(&p2, "ds-two"));
    // concurrently, on a VPP without the gateway yet: both race to create it
    let a1 = addrs(&["10.9.4.2/24", "fd00:9::2/64"]);
    let a2 = addrs(&["10.9.4.3/24", "fd00:9::3/64"]);
    let (res1, res2) = tokio::join!(
        att.attach_in(&host, &r1, &a1),
        att.attach_in(&host, &r2, &a2)
    );
    let (res1, res2) = (res1.unwrap(), res2.unwrap());
    att.check_in(&host, &r1, &res1).await.unwrap();
    att.check_in(&host, &r2, &res2).await.unwrap();
    // small rings (not VPP's ~76 MB defaults), TX frames that hold a GSO packet
    let hw = vpp.vppctl(&["show", "hardware-interfaces"]);
    assert!(
        hw.contains("block size:65536 nr:160")
            && hw.contains(&format!(
                "frame size:{} nr:{}",
                scrambler_vpp::attach::POD_TX_FRAME_SIZE,
                scrambler_vpp::attach::POD_TX_FRAMES
            )),
        "{hw}"
    );
    assert!(
        p1.ping("fd00:9::3"),
        "IPv6 pod1 -> pod2 failed\n{}\n{}",
        vpp.vppctl(&["show", "errors"]),
        vpp.vppctl(&["show", "ip6", "neighbors"])
    );
    assert!(p2.ping("10.9.4.2"));
    for dst in ["10.9.4.3", "fd00:9::3"] {
        tcp(&p1, &p2, dst, &vpp);
    }
    // no router advertisements or other autoconfiguration reached the pods
    let r = p1.ip(&["-6", "route"]);
    assert!(!r.contains("proto ra"), "{r}");
    att.detach_in(&host, &r1).await.unwrap();
    att.detach_in(&host, &r2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_add_leaves_nothing() {
    let vpp = VppInstance::start("att2", 1).await;
    quiet_ipv6(&vpp.netns);
    let host = vpp.netns.netns();
    let att = VppAttach::new(vpp.api_sock());
    let c = vpp.client().await;
    // an untagged gateway loopback (an ADD died between creating and tagging it) is adopted
    vpp.vppctl(&[
        "create",
        "loopback",
        "interface",
        "mac",
        "02:5c:00:00:00:01",
        "instance",
        "92",
    ]);

    // CNI_IFNAME taken in the pod
    let p = TestNetns::new("att2p");
    p.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let e = att
        .attach_in(&host, &request(&p, "taken"), &addrs(&["10.9.1.2/24"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 102, "{e}");

    // a failure after the VPP interface exists, before any VPP route (the same address
    // twice)
    let q = TestNetns::new("att2q");
    let r = request(&q, "dup");
    let e = att
        .attach_in(&host, &r, &addrs(&["10.9.1.3/24", "10.9.1.3/24"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("10.9.1.3"), "{e}");
    let (afs, routes, neigh) = vpp_state(&c).await;
    assert!(afs.is_empty(), "{afs:?}");
    assert!(routes.is_empty(), "{routes:?}");
    assert!(neigh.is_empty(), "{neigh:?}");
    assert!(!links(&vpp.netns).contains("scv"), "{}", links(&vpp.netns));
    assert!(!links(&q).contains("eth0"), "{}", links(&q));

    // a failure after the VPP neighbours and routes exist (dual stack): all undone
    let faulty = VppAttach::new(vpp.api_sock()).with_fault(Fault::at(FaultStage::AfterHostRoute));
    let e = faulty
        .attach_in(&host, &r, &addrs(&["10.9.1.3/24", "fd00:91::3/64"]))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("after-host-route"), "{e}");
    let (afs, routes, neigh) = vpp_state(&c).await;
    assert!(afs.is_empty(), "{afs:?}");
    assert!(routes.is_empty(), "{routes:?}");
    assert!(neigh.is_empty(), "{neigh:?}");
    let routes6: Vec<String> = c
        .dump(&IpRouteDump {
            table: IpTable {
                table_id: 0,
                is_ip6: true,
                name: String::new(),
            },
        })
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.route.prefix.to_ipnet())
        .map(|p| p.to_string())
        .filter(|p| p.starts_with("fd00:91"))
        .collect();
    assert!(routes6.is_empty(), "{routes6:?}");
    assert!(!links(&vpp.netns).contains("scv"), "{}", links(&vpp.netns));
    assert!(!links(&q).contains("eth0"), "{}", links(&q));

    // a pod namespace that does not exist
    let gone = AttachRequest {
        pod_netns: Netns::named("scr-att2-no-such-netns"),
        ..request(&q, "gone")
    };
    let e = att
        .attach_in(&host, &gone, &addrs(&["10.9.1.4/24"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 3, "{e}");

    // no VPP behind the socket: a clear, retryable error, and DEL still succeeds
    let none = VppAttach::new("/run/scr-vpp/no-such/api.sock");
    let e = none
        .attach_in(&host, &r, &addrs(&["10.9.1.5/24"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 11, "{e}");
    assert!(e.to_string().contains("no-such/api.sock"), "{e}");
    none.detach_in(&host, &r).await.unwrap();

    // now it works
    let res = att
        .attach_in(&host, &r, &addrs(&["10.9.1.3/24"]))
        .await
        .unwrap();
    att.check_in(&host, &r, &res).await.unwrap();
    let (afs, _, _) = vpp_state(&c).await;
    assert_eq!(afs, vec![host_ifname(&r.id)]);
    // ADD twice is refused and leaves the first attachment alone
    let e = att
        .attach_in(&host, &r, &addrs(&["10.9.1.3/24"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), 102, "{e}");
    att.check_in(&host, &r, &res).await.unwrap();
    let tagged: Vec<String> = c
        .interfaces()
        .await
        .unwrap()
        .into_iter()
        .filter(|i| i.tag == GATEWAY_TAG)
        .map(|i| i.interface_name)
        .collect();
    assert_eq!(tagged, vec!["loop92".to_string()]);

    // GC of one network leaves another network's pods, and veths of ADDs in progress
    // (no alias yet), alone
    let other = VppAttach::new(vpp.api_sock()).with_network("other");
    let o = TestNetns::new("att2o");
    let ro = request(&o, "other-pod");
    let res_o = other
        .attach_in(&host, &ro, &addrs(&["10.9.1.6/24"]))
        .await
        .unwrap();
    vpp.netns.ip(&[
        "link",
        "add",
        "scv00000000aa",
        "type",
        "veth",
        "peer",
        "name",
        "scv00000000ab",
    ]);
    vpp.netns.ip(&[
        "link",
        "add",
        "scv00000000ba",
        "type",
        "veth",
        "peer",
        "name",
        "scv00000000bb",
    ]);
    let orphan = AttachmentId::new("orphan", "eth0");
    vpp.netns
        .ip(&["link", "set", "scv00000000ba", "alias", &att.alias(&orphan)]);
    // the gateway stays while pods use it
    let e = att.remove_gateway(&host).await.unwrap_err();
    assert!(e.to_string().contains(&host_ifname(&r.id)), "{e}");
    let mut removed = att.gc(&host, &[]).await.unwrap();
    removed.sort();
    let mut want = vec![host_ifname(&r.id), "scv00000000ba".to_string()];
    want.sort();
    assert_eq!(removed, want);
    let (afs, _, _) = vpp_state(&c).await;
    assert_eq!(afs, vec![host_ifname(&ro.id)]);
    other.check_in(&host, &ro, &res_o).await.unwrap();
    assert!(links(&vpp.netns).contains("scv00000000aa"));
    assert!(other
        .gc(&host, std::slice::from_ref(&ro.id))
        .await
        .unwrap()
        .is_empty());
    other.detach_in(&host, &ro).await.unwrap();
    vpp.netns.ip(&["link", "del", "scv00000000aa"]);
    att.detach_in(&host, &r).await.unwrap();

    // DEL removes an interface tagged by a release without the network in its tags
    att.attach_in(&host, &r, &addrs(&["10.9.1.3/24"]))
        .await
        .unwrap();
    vpp.vppctl(&[
        "set",
        "interface",
        "tag",
        &format!("host-{}", host_ifname(&r.id)),
        "scrambler:pod=dup/eth0",
    ]);
    let tags: Vec<String> = c
        .interfaces()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.tag)
        .collect();
    assert!(
        tags.contains(&"scrambler:pod=dup/eth0".to_string()),
        "{tags:?}"
    );
    att.detach_in(&host, &r).await.unwrap();
    let (afs, routes, neigh) = vpp_state(&c).await;
    assert!(
        afs.is_empty() && routes.is_empty() && neigh.is_empty(),
        "{afs:?} {routes:?} {neigh:?}"
    );
    c.close().await.unwrap();
}

/// A VPP that accepts connections but never answers (hung): DEL fails with code 11 (the
/// runtime retries) instead of taking VPP for gone and leaving its objects behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn del_against_a_hung_vpp_asks_to_retry() {
    let dir = std::env::temp_dir().join(format!("scr-att-hung-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let att = VppAttach::new(&sock);
    let p = TestNetns::new("att5p");
    let e = att
        .detach_in(&p.netns(), &request(&p, "hung"))
        .await
        .unwrap_err();
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(e.code(), 11, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_two_vpp_nodes_ping_over_esp() {
    let t = TwoNodes::underlay("att3").await;
    let (a, b) = (&t.a, &t.b);
    let att = VppAttach::with_resolver(api_sock_resolver(&[a, b]));
    t.apply().await;
    let tunnel = &t.dp;
    let (na, nb) = (a.netns.netns(), b.netns.netns());

    let pa = TestNetns::new("att3p");
    let pb = TestNetns::new("att3q");
    let (ra, rb) = (request(&pa, "pod-a"), request(&pb, "pod-b"));
    let res_a = att
        .attach_in(&na, &ra, &addrs(&["10.1.0.2/24"]))
        .await
        .unwrap();
    let res_b = att
        .attach_in(&nb, &rb, &addrs(&["10.2.0.2/24"]))
        .await
        .unwrap();
    att.check_in(&na, &ra, &res_a).await.unwrap();
    att.check_in(&nb, &rb, &res_b).await.unwrap();

    let (wire, ok) = capture(a, "", || pa.ping("10.2.0.2"));
    assert!(
        ok,
        "pod a -> pod b failed\nA: {}\nB: {}",
        a.vppctl(&["show", "errors"]),
        b.vppctl(&["show", "errors"])
    );
    assert!(wire.contains("ESP"), "no ESP on the wire:\n{wire}");
    assert!(
        !wire.contains("ICMP echo"),
        "cleartext on the wire:\n{wire}"
    );
    assert!(pb.ping("10.1.0.2"), "pod b -> pod a failed");
    tcp(&pa, &pb, "10.2.0.2", b);

    // without the tunnel the pods are cut off
    tunnel.remove(&na).await.unwrap();
    assert!(
        !pa.ping("10.2.0.2"),
        "pods reach each other without the tunnel"
    );

    att.detach_in(&na, &ra).await.unwrap();
    att.detach_in(&nb, &rb).await.unwrap();
    tunnel.remove(&nb).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_tx_frames_sizes_the_pod_tx_ring() {
    let vpp = VppInstance::start("att6", 0).await;
    let host = vpp.netns.netns();
    let att = VppAttach::new(vpp.api_sock()).with_pod_tx_frames(64);
    let p = TestNetns::new("att6p");
    let r = request(&p, "tx-ring");
    att.attach_in(&host, &r, &addrs(&["10.9.6.2/24"]))
        .await
        .unwrap();
    let hw = vpp.vppctl(&["show", "hardware-interfaces"]);
    assert!(
        hw.contains(&format!(
            "frame size:{} nr:64",
            scrambler_vpp::attach::POD_TX_FRAME_SIZE
        )),
        "{hw}"
    );
    att.detach_in(&host, &r).await.unwrap();
}

/// Sends `bytes` over TCP from `from` to `dst` (a listener in `to`) with the pods' TCP
/// as the kernel has it (TSO/GSO on); returns how long until all of it arrived, or `None`
/// when it did not within `bound`.
fn tcp_bulk(
    from: &TestNetns,
    to: &TestNetns,
    dst: &str,
    bytes: usize,
    bound: Duration,
) -> Option<Duration> {
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", &to.name, "busybox", "nc", "-l", "-p", "5002",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = server.stdout.take().unwrap();
    let start = std::time::Instant::now();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0;
        while got < bytes {
            match std::io::Read::read(&mut out, &mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => got += n,
            }
        }
        Some(start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    let secs = bound.as_secs().to_string();
    let (_, msg) = from.exec(&[
        "timeout",
        &secs,
        "sh",
        "-c",
        &format!("head -c {bytes} /dev/zero | busybox nc -w 2 {dst} 5002"),
    ]);
    // the client has given up or finished: the listener goes too, the reader sees EOF
    let _ = server.kill();
    let _ = server.wait();
    let took = reader.join().unwrap();
    eprintln!("tcp_bulk {bytes} B to {dst}: {took:?} {msg}");
    took.filter(|t| *t <= bound)
}

/// Pods attached as the CNI plugin attaches them, their kernel's TSO/GSO as a veth has it
/// by default: a bulk TCP transfer between two VPP nodes over ESP completes (VPP would
/// otherwise send the pods' 64 KB GSO packets into the tunnel whole, larger than the
/// underlay MTU, and TCP stalls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_tcp_between_pods_on_two_vpp_nodes_over_esp() {
    let t = TwoNodes::underlay("att7").await;
    let (a, b) = (&t.a, &t.b);
    let att = VppAttach::with_resolver(api_sock_resolver(&[a, b]));
    t.apply().await;
    let (na, nb) = (a.netns.netns(), b.netns.netns());
    let pa = TestNetns::new("att7p");
    let pb = TestNetns::new("att7q");
    let (ra, rb) = (request(&pa, "bulk-a"), request(&pb, "bulk-b"));
    let res_a = att
        .attach_in(&na, &ra, &addrs(&["10.1.0.2/24"]))
        .await
        .unwrap();
    let res_b = att
        .attach_in(&nb, &rb, &addrs(&["10.2.0.2/24"]))
        .await
        .unwrap();
    // the pods' veths keep the kernel's default GSO size: nothing but the attachment
    // keeps their TCP from handing VPP 64 KB packets
    for p in [&pa, &pb] {
        let l = p.ip(&["-d", "link", "show", "eth0"]);
        assert!(l.contains("gso_max_size 65536"), "{l}");
    }
    assert!(pa.ping("10.2.0.2"), "pod a -> pod b failed");
    att.check_in(&na, &ra, &res_a).await.unwrap();
    // CHECK notices a pod whose GSO cap was lifted
    pb.ip(&["link", "set", "eth0", "gso_max_segs", "65535"]);
    let e = att
        .check_in(&nb, &rb, &res_b)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("gso_max_segs Some(65535)"), "{e}");
    pb.ip(&["link", "set", "eth0", "gso_max_segs", "1"]);
    att.check_in(&nb, &rb, &res_b).await.unwrap();

    let bound = Duration::from_secs(20);
    let (wire, took) = capture(a, "", || {
        [(&pa, &pb, "10.2.0.2"), (&pb, &pa, "10.1.0.2")]
            .map(|(from, to, dst)| tcp_bulk(from, to, dst, 4 << 20, bound))
    });
    assert!(
        took.iter().all(Option::is_some),
        "4 MB of TCP between the pods did not arrive within {bound:?} ({took:?})\n\
         A: {}\nB: {}",
        a.vppctl(&["show", "errors"]),
        b.vppctl(&["show", "errors"])
    );
    assert!(wire.contains("ESP"), "no ESP on the wire");
    assert!(!wire.contains("Flags ["), "cleartext TCP on the wire");
    let longest = wire
        .lines()
        .filter_map(|l| l.rsplit_once("length ")?.1.trim().parse::<u32>().ok())
        .max();
    assert!(
        longest.is_some_and(|l| l <= 1500),
        "a packet longer than the underlay MTU on the wire: {longest:?}"
    );

    att.detach_in(&na, &ra).await.unwrap();
    att.detach_in(&nb, &rb).await.unwrap();
    t.dp.remove(&na).await.unwrap();
    t.dp.remove(&nb).await.unwrap();
}
