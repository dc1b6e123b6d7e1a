//! Node ↔ remote pod traffic on real VPPs, through the host link
//! ([`VppTunnel::with_host_link`]): each node's host (the namespace its VPP runs in) holds
//! its tunnel address and reaches the other node's pod through the ESP tunnel; that pod
//! reaches the host at its tunnel address; nothing but ESP on the underlay, also while the
//! tunnel is broken, the peer is gone from the mesh or the mesh is removed keeping the
//! guard (then the host's traffic is dropped). And pods attached by [`VppAttach`] (in the
//! pods' VRF) reach the peer's underlay address through the tunnel.

mod two_nodes;

use scrambler_core::{AttachRequest, AttachmentId, CniResult, IpConfig, NodeId, Tunnel};
use scrambler_netlink::AttachOnce;
use scrambler_testkit::netns::{veth, TestNetns};
use scrambler_testkit::vpp::{api_sock_resolver, VppInstance};
use scrambler_vpp::attach::VppAttach;
use scrambler_vpp::tunnel::{
    tunnel_instance, VppTunnel, HOST_LINK_IF, HOST_LINK_MISSING, HOST_LINK_VPP_IF,
    NODE_ENCRYPTION_HOST_UNCOVERED, NODE_STEERING_MISSING, POD_TABLE_ID,
    POD_TO_PEER_UNDERLAY_DROPPED,
};
use two_nodes::{capture, TwoNodes};

/// A pod in a namespace of its own beside node `n`'s VPP: `eth0` 10.n.0.2/24, its gateway
/// VPP's 10.n.0.254 on the other end (af_packet). (Not 10.n.0.1: that is the node's tunnel
/// address, which the host holds.)
async fn pod(vpp: &VppInstance, n: u8) -> TestNetns {
    let ns = TestNetns::new(&format!("pod{n}"));
    veth(&ns, "eth0", &vpp.netns, "vpod0");
    ns.ip(&["addr", "add", &format!("10.{n}.0.2/24"), "dev", "eth0"]);
    ns.ip(&["route", "add", "default", "via", &format!("10.{n}.0.254")]);
    vpp.host_interface("vpod0", [2, 0xfe, 0, 0, 2, n], &format!("10.{n}.0.254/24"))
        .await;
    ns
}

/// Pings `to` from `ns`: `count` echoes, 0.2 s apart.
fn ping_from(ns: &TestNetns, to: &str, count: u32) -> (bool, String) {
    ns.exec(&[
        "busybox",
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "1",
        to,
    ])
}

/// The echo requests the Linux stack of `ns` has answered (`Icmp: InEchos`).
fn in_echos(ns: &TestNetns) -> u64 {
    let (_, snmp) = ns.exec(&["cat", "/proc/net/snmp"]);
    let mut icmp = snmp.lines().filter(|l| l.starts_with("Icmp:"));
    let (names, values) = (icmp.next().unwrap(), icmp.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|f| f == "InEchos")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Host of node a pings `to` while a's underlay is captured: (answered, non-ESP text,
/// ESP packets seen).
fn host_a_pings(t: &TwoNodes, to: &str, count: u32) -> (bool, String, usize) {
    let (all, (ok, _)) = capture(&t.a, "ip", || ping_from(&t.a.netns, to, count));
    let esp = all.lines().filter(|l| l.contains("ESP")).count();
    let leaks: Vec<&str> = all.lines().filter(|l| !l.contains("ESP")).collect();
    (ok, leaks.join("\n"), esp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_remote_pods_talk_through_the_mesh_encrypted_both_ways_and_fail_closed() {
    let mut t = TwoNodes::underlay("scr-nd").await;
    let pa = pod(&t.a, 1).await;
    let pb = pod(&t.b, 2).await;
    t.dp = VppTunnel::with_resolver(api_sock_resolver(&[&t.a, &t.b]))
        .with_host_link(true)
        .with_underlay_mtu(1400);
    // a route that would carry cluster traffic out of the uplink in clear (a default
    // route's stand-in): only Scrambler's routes keep the host's traffic off it
    t.a.vppctl(&[
        "ip",
        "route",
        "add",
        "10.0.0.0/8",
        "via",
        "192.0.2.2",
        "host-ul0",
    ]);
    let (ok, _) = ping_from(&t.a.netns, "10.2.0.2", 1);
    assert!(!ok, "the host reached a remote pod before the mesh");

    let (ra, rb) = t.apply().await;
    assert!(ra.added > 0 && rb.added > 0, "{ra:?} {rb:?}");
    let rep = t.reconcile("a").await;
    assert!(rep.is_noop(), "second reconcile changed {rep:?}");
    let links = t.a.netns.ip(&["-d", "addr", "show", HOST_LINK_IF]);
    assert!(links.contains("inet 10.1.0.1/32"), "{links}");
    // the host link's MTU is the pods' on a 1400-byte underlay
    let mtu = scrambler_core::esp::pod_mtu(1400, false);
    assert!(links.contains(&format!(" mtu {mtu} ")), "{links}");
    let other_mtu = t.dp.clone().with_underlay_mtu(1500);
    let st = other_mtu
        .status(&t.a.netns.netns(), &t.mesh("a"))
        .await
        .unwrap();
    assert_eq!(st.errors.get(HOST_LINK_MISSING), Some(&1), "{st:?}");
    let routes = t.a.netns.ip(&["route", "show", "10.0.0.0/12"]);
    assert!(
        routes.contains("via 169.254.1.1") && routes.contains("src 10.1.0.1"),
        "{routes}"
    );
    assert!(t
        .a
        .af_packet_names()
        .await
        .contains(&HOST_LINK_VPP_IF.to_string()));
    let st = t.dp.status(&t.a.netns.netns(), &t.mesh("a")).await.unwrap();
    assert!(!st.errors.contains_key(HOST_LINK_MISSING), "{st:?}");

    // 1. host a -> pod b: from a's tunnel address, into the tunnel, ESP only
    let (ok, leaks, esp) = host_a_pings(&t, "10.2.0.2", 3);
    assert!(ok, "host a -> pod b failed");
    assert!(leaks.is_empty(), "host a -> pod b, not ESP:\n{leaks}");
    // (the capture may start a moment after the first echo)
    assert!(esp >= 4, "{esp} ESP packets for 3 echoes and replies");

    // 2. pod b -> host a's tunnel address: answered by a's Linux stack, not by VPP
    let before = in_echos(&t.a.netns);
    let (all, (ok, out)) = capture(&t.a, "ip", || ping_from(&pb, "10.1.0.1", 3));
    assert!(ok, "pod b -> host a failed: {out}");
    assert!(
        all.lines().all(|l| l.contains("ESP")) && all.lines().count() >= 4,
        "pod b -> host a on the wire:\n{all}"
    );
    assert!(
        in_echos(&t.a.netns) >= before + 3,
        "host a's stack did not answer the echoes"
    );

    // 3. the other way round (b's host, a's pod), a host to its own pod through VPP, and
    //    host to host by tunnel addresses
    let (ok, out) = ping_from(&t.b.netns, "10.1.0.2", 2);
    assert!(ok, "host b -> pod a failed: {out}");
    let (ok, out) = ping_from(&pa, "10.2.0.1", 2);
    assert!(ok, "pod a -> host b failed: {out}");
    let (ok, out) = ping_from(&t.a.netns, "10.1.0.2", 2);
    assert!(ok, "host a -> its own pod failed: {out}");
    let (ok, leaks, _) = host_a_pings(&t, "10.2.0.1", 2);
    assert!(ok && leaks.is_empty(), "host a -> host b: {ok}\n{leaks}");

    // 3b. the host's cluster CIDR route, then its gateway neighbour, deleted behind
    //     Scrambler's back: the host link is reported missing (an agent reconciles again)
    //     and a reconcile restores it
    let na = t.a.netns.netns();
    for del in [
        &["route", "del", "10.0.0.0/12", "dev", HOST_LINK_IF][..],
        &["neigh", "del", "169.254.1.1", "dev", HOST_LINK_IF][..],
    ] {
        t.a.netns.ip(del);
        let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
        assert_eq!(
            st.errors.get(HOST_LINK_MISSING),
            Some(&1),
            "{del:?}: {st:?}"
        );
        assert!(!st.in_place());
        let rep = t.reconcile("a").await;
        assert!(rep.added > 0, "{del:?} not repaired: {rep:?}");
        let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
        assert!(st.in_place(), "{del:?}: {st:?}");
    }

    // 3c. the pair as a reconcile that died between creating it and marking it leaves it
    //     (no aliases: the kernel takes none when creating a link): adopted
    for end in [HOST_LINK_IF, HOST_LINK_VPP_IF] {
        t.a.netns.ip(&["link", "set", "dev", end, "alias", ""]);
    }
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert_eq!(st.errors.get(HOST_LINK_MISSING), Some(&1), "{st:?}");
    let rep = t.reconcile("a").await;
    assert!(rep.updated > 0, "half-made pair not adopted: {rep:?}");
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(st.in_place(), "{st:?}");
    let links = t.a.netns.ip(&["-d", "link", "show", HOST_LINK_VPP_IF]);
    assert!(links.contains("alias scrambler-vpp/host"), "{links}");

    // 4. the tunnel's protection deleted behind Scrambler's back: dropped, never clear
    let tunnel = format!("ipip{}", tunnel_instance(NodeId::new(2).unwrap()));
    t.a.vppctl(&["ipsec", "tunnel", "protect", "del", &tunnel]);
    let (ok, leaks, _) = host_a_pings(&t, "10.2.0.2", 3);
    assert!(
        !ok && leaks.is_empty(),
        "unprotected tunnel: ping {ok}, leaks:\n{leaks}"
    );
    let rep = t.reconcile("a").await;
    assert!(!rep.is_noop(), "nothing repaired");
    let (ok, leaks, _) = host_a_pings(&t, "10.2.0.2", 2);
    assert!(ok && leaks.is_empty(), "after repair: {ok}\n{leaks}");

    // 5. the peer gone from a's mesh: the cluster guard drops the host's traffic
    let mut alone = t.mesh("a");
    alone.peers.clear();
    t.dp.reconcile(&na, &alone, &t.secret).await.unwrap();
    let (ok, leaks, _) = host_a_pings(&t, "10.2.0.2", 3);
    assert!(
        !ok && leaks.is_empty(),
        "peer removed: ping {ok}, leaks:\n{leaks}"
    );

    // 6. back (a new generation: the old outbound SA's key has sent), then `mesh remove`
    //    keeping the guard: the host link stays, its traffic meets the drop routes
    t.cluster.keys = scrambler_core::Keys::single(2);
    t.apply().await;
    let (ok, _, _) = host_a_pings(&t, "10.2.0.2", 2);
    assert!(ok, "host a -> pod b after rejoin failed");
    t.dp.remove_keeping_guard(&na).await.unwrap();
    let (ok, leaks, _) = host_a_pings(&t, "10.2.0.2", 3);
    assert!(
        !ok && leaks.is_empty(),
        "after mesh remove: ping {ok}, leaks:\n{leaks}"
    );
    assert!(t.a.netns.ip(&["link", "show"]).contains(HOST_LINK_IF));

    // 7. remove takes the host link: no veth, no VPP interface
    let rep = t.dp.remove(&na).await.unwrap();
    assert!(rep.removed > 0, "{rep:?}");
    let links = t.a.netns.ip(&["link", "show"]);
    assert!(!links.contains(HOST_LINK_IF), "{links}");
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert_eq!(st.errors.get(HOST_LINK_MISSING), Some(&1), "{st:?}");
    assert!(!st.in_place(), "{st:?}");
    assert!(!t
        .a
        .af_packet_names()
        .await
        .contains(&HOST_LINK_VPP_IF.to_string()));
}

/// A pod attached to node `vpp`'s VPP by [`VppAttach`] with address `addr`.
async fn attached_pod(
    att: &VppAttach,
    vpp: &VppInstance,
    cid: &str,
    addr: &str,
) -> (TestNetns, AttachRequest) {
    let ns = TestNetns::new(cid);
    let req = AttachRequest {
        id: AttachmentId::new(cid, "eth0"),
        pod_netns: ns.netns(),
        args: vec![],
        mtu: None,
    };
    let addrs = CniResult {
        ips: vec![IpConfig {
            address: addr.parse().unwrap(),
            gateway: None,
            interface: None,
        }],
        ..Default::default()
    };
    let node = vpp.netns.netns();
    let res = att.attach_in(&node, &req, &addrs).await.unwrap();
    att.check_in(&node, &req, &res).await.unwrap();
    (ns, req)
}

/// Pings `to` from `pod` while node a's underlay is captured: (answered, non-ESP text,
/// ESP packets seen).
fn pod_pings(t: &TwoNodes, pod: &TestNetns, to: &str, count: u32) -> (bool, String, usize) {
    let (all, (ok, _)) = capture(&t.a, "ip", || ping_from(pod, to, count));
    let esp = all.lines().filter(|l| l.contains("ESP")).count();
    let leaks: Vec<&str> = all.lines().filter(|l| !l.contains("ESP")).collect();
    (ok, leaks.join("\n"), esp)
}

/// Pods attached by [`VppAttach`] sit in the pods' VRF, where each peer's underlay address
/// is routed into its tunnel: a pod reaches the peer's underlay address (the API server, a
/// kubelet; here the peer VPP answers) encrypted, and the peer's pods reach this node's.
/// While the tunnel is unprotected, the peer is gone from the mesh or the mesh is removed
/// keeping the guard, the traffic is dropped, never sent in the clear; `remove` (guard
/// too) lets it out in the clear (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attached_pods_reach_peer_underlay_addresses_encrypted_and_fail_closed() {
    let mut t = TwoNodes::underlay("scr-nu").await;
    let att = VppAttach::with_resolver(api_sock_resolver(&[&t.a, &t.b]));
    t.apply().await;
    let (pa, ra) = attached_pod(&att, &t.a, "nupa", "10.1.0.2/24").await;
    let (pb, rb) = attached_pod(&att, &t.b, "nupb", "10.2.0.2/24").await;
    let fib =
        t.a.vppctl(&["show", "ip", "fib", "table", &POD_TABLE_ID.to_string()]);
    assert!(
        fib.contains("192.0.2.2/32") && fib.contains("10.1.0.2/32"),
        "{fib}"
    );
    assert!(t.reconcile("a").await.is_noop());
    let na = t.a.netns.netns();
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(
        st.fail_closed && !st.errors.contains_key(POD_TO_PEER_UNDERLAY_DROPPED),
        "{st:?}"
    );

    // pod a -> b's underlay address, b's pod -> a's: through the tunnel, ESP only
    let (ok, leaks, esp) = pod_pings(&t, &pa, "192.0.2.2", 3);
    assert!(ok, "pod a -> b's underlay failed");
    assert!(leaks.is_empty() && esp >= 4, "{esp} ESP, not ESP:\n{leaks}");
    let (ok, out) = ping_from(&pb, "192.0.2.1", 2);
    assert!(ok, "pod b -> a's underlay failed: {out}");
    // pods to each other, and a pod to its own node's underlay address, as before
    let (ok, out) = ping_from(&pa, "10.2.0.2", 2);
    assert!(ok, "pod a -> pod b failed: {out}");
    let (ok, out) = ping_from(&pa, "192.0.2.1", 2);
    assert!(ok, "pod a -> own underlay failed: {out}");

    // the protection deleted behind Scrambler's back: dropped
    let tunnel = format!("ipip{}", tunnel_instance(NodeId::new(2).unwrap()));
    t.a.vppctl(&["ipsec", "tunnel", "protect", "del", &tunnel]);
    let (ok, leaks, _) = pod_pings(&t, &pa, "192.0.2.2", 3);
    assert!(
        !ok && leaks.is_empty(),
        "unprotected: ping {ok}, leaks:\n{leaks}"
    );
    assert!(!t.reconcile("a").await.is_noop());
    let (ok, leaks, _) = pod_pings(&t, &pa, "192.0.2.2", 2);
    assert!(ok && leaks.is_empty(), "after repair: {ok}\n{leaks}");

    // the peer gone from a's mesh: its underlay route stays as a drop (a tombstone: the
    // underlay guard's discard went with the peer)
    let mut alone = t.mesh("a");
    alone.peers.clear();
    t.dp.reconcile(&na, &alone, &t.secret).await.unwrap();
    assert!(t
        .dp
        .reconcile(&na, &alone, &t.secret)
        .await
        .unwrap()
        .is_noop());
    let fib =
        t.a.vppctl(&["show", "ip", "fib", "table", &POD_TABLE_ID.to_string()]);
    let entry = fib.split("192.0.2.2/32").nth(1).unwrap_or_default();
    assert!(
        entry.lines().take(5).any(|l| l.contains("dpo-drop")),
        "{fib}"
    );
    let (ok, leaks, _) = pod_pings(&t, &pa, "192.0.2.2", 3);
    assert!(
        !ok && leaks.is_empty(),
        "peer removed: ping {ok}, leaks:\n{leaks}"
    );

    // back under a new generation, then `mesh remove` keeping the guard: dropped
    t.cluster.keys = scrambler_core::Keys::single(2);
    t.apply().await;
    let (ok, _, _) = pod_pings(&t, &pa, "192.0.2.2", 2);
    assert!(ok, "after rejoin");
    t.dp.remove_keeping_guard(&na).await.unwrap();
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert_eq!(
        st.errors.get(POD_TO_PEER_UNDERLAY_DROPPED),
        Some(&1),
        "{st:?}"
    );
    let (ok, leaks, _) = pod_pings(&t, &pa, "192.0.2.2", 3);
    assert!(
        !ok && leaks.is_empty(),
        "after mesh remove: ping {ok}, leaks:\n{leaks}"
    );

    // control: without any guard the pod's echo requests leave in the clear on this wire
    t.dp.remove(&na).await.unwrap();
    let (_, leaks, _) = pod_pings(&t, &pa, "192.0.2.2", 2);
    assert!(
        leaks.contains("ICMP echo request"),
        "the control leak did not show:\n{leaks}"
    );

    att.detach_in(&na, &ra).await.unwrap();
    att.detach_in(&t.b.netns.netns(), &rb).await.unwrap();
    let fib =
        t.a.vppctl(&["show", "ip", "fib", "table", &POD_TABLE_ID.to_string()]);
    assert!(!fib.contains("10.1.0.2/32"), "{fib}");
}

/// A TCP connection attempt from `ns` to `to`:`port` (busybox nc, 2 s): whether it
/// connected.
fn tcp_from(ns: &TestNetns, to: &str, port: u16) -> bool {
    let (ok, _) = ns.exec(&[
        "busybox",
        "timeout",
        "3",
        "busybox",
        "nc",
        "-w",
        "2",
        to,
        &port.to_string(),
    ]);
    ok
}

/// Host of node a sends while a's underlay is captured: (what `f` returned, non-ESP
/// text, ESP packets seen).
fn host_a_sends<T>(t: &TwoNodes, f: impl FnOnce() -> T) -> (T, String, usize) {
    let (all, r) = capture(&t.a, "ip", f);
    let esp = all.lines().filter(|l| l.contains("ESP")).count();
    let leaks: Vec<&str> = all.lines().filter(|l| !l.contains("ESP")).collect();
    (r, leaks.join("\n"), esp)
}

/// Node encryption on VPP nodes: the host's traffic to a peer's underlay address is routed
/// by the host link into VPP's pods' VRF and on into the peer's tunnel — ESP only on the
/// wire, for ICMP and TCP on a port outside the bypass list; with the protection deleted,
/// or the peer gone from the mesh (its route a tombstone on both sides), it is dropped,
/// never in the clear; turning node encryption off takes the host's routes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_encryption_carries_the_hosts_traffic_to_peer_underlay_addresses_encrypted() {
    let mut t = TwoNodes::underlay("scr-ne").await;
    t.cluster.node_encryption = Some(scrambler_core::NodeEncryption {
        bypass: vec!["tcp/2379".parse().unwrap()],
    });
    t.dp = VppTunnel::with_resolver(api_sock_resolver(&[&t.a, &t.b])).with_host_link(true);
    let na = t.a.netns.netns();
    let (ok, _) = ping_from(&t.a.netns, "192.0.2.2", 1);
    assert!(!ok, "the host reached the peer's underlay before the mesh");

    t.apply().await;
    assert!(t.reconcile("a").await.is_noop());
    let routes = t.a.netns.ip(&["route", "show", "table", "92", "192.0.2.2"]);
    assert!(
        routes.contains("via 169.254.1.1")
            && routes.contains(HOST_LINK_IF)
            && routes.contains("src 10.1.0.1"),
        "{routes}"
    );
    // nothing of node encryption's in the main table; the steering rules in place
    let main = t.a.netns.ip(&["route", "show", "192.0.2.2"]);
    assert!(!main.contains(HOST_LINK_IF), "{main}");
    let rules = t.a.netns.ip(&["rule", "show"]);
    for want in [
        "ipproto tcp dport 2379 goto 23555",
        "ipproto tcp sport 2379 goto 23555",
        "ipproto tcp lookup 92",
        "ipproto icmp lookup 92",
        "23555:\tfrom all nop",
    ] {
        assert!(rules.contains(want), "{want}: {rules}");
    }
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(
        st.in_place() && st.fail_closed && st.errors.is_empty(),
        "{st:?}"
    );

    // a route a release before made in the main table is taken away by a reconcile
    t.a.netns.ip(&[
        "route",
        "add",
        "192.0.2.2/32",
        "via",
        "169.254.1.1",
        "dev",
        HOST_LINK_IF,
        "src",
        "10.1.0.1",
        "proto",
        "92",
    ]);
    assert_eq!(t.reconcile("a").await.removed, 1);
    let main = t.a.netns.ip(&["route", "show", "192.0.2.2"]);
    assert!(!main.contains(HOST_LINK_IF), "{main}");

    // host a -> b's underlay address: ICMP answered by b's VPP, ESP only both ways
    let ((ok, out), leaks, esp) = host_a_sends(&t, || ping_from(&t.a.netns, "192.0.2.2", 3));
    assert!(ok, "host a -> b's underlay failed: {out}");
    assert!(leaks.is_empty() && esp >= 4, "{esp} ESP, not ESP:\n{leaks}");
    // TCP on a port outside the bypass list: the SYNs ride the tunnel (b's VPP has no
    // listener there: no connection, a documented limit), nothing in the clear
    let sa_in_before =
        t.dp.counters(&t.b.netns.netns(), &t.mesh("b"))
            .await
            .unwrap()[0]
            .sa_in
            .packets;
    let (_, leaks, esp) = host_a_sends(&t, || tcp_from(&t.a.netns, "192.0.2.2", 5201));
    assert!(
        leaks.is_empty() && esp >= 1,
        "TCP: {esp} ESP, not ESP:\n{leaks}"
    );
    let sa_in_after =
        t.dp.counters(&t.b.netns.netns(), &t.mesh("b"))
            .await
            .unwrap()[0]
            .sa_in
            .packets;
    assert!(sa_in_after > sa_in_before, "b's VPP decrypted no SYN");
    // host to host TCP by tunnel addresses: a listener on b's host is reached, encrypted
    let listener = std::process::Command::new("ip")
        .args(["netns", "exec", &t.b.netns.name])
        .args([
            "busybox", "timeout", "20", "busybox", "nc", "-l", "-p", "5201",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (connected, leaks, _) = host_a_sends(&t, || tcp_from(&t.a.netns, "10.2.0.1", 5201));
    let mut listener = listener;
    let _ = listener.kill();
    let _ = listener.wait();
    assert!(
        connected && leaks.is_empty(),
        "TCP to b's host: {connected}\n{leaks}"
    );

    // b's host sending from b's underlay address (how a kernel node's host addresses a
    // VPP node): a's VPP answers from table 0, where b's underlay address is the tunnel's
    // outer destination — in the clear but for the underlay guard's node-encryption
    // discard, which drops it (no answer: a documented limit), ESP only on the wire
    t.b.netns.ip(&["addr", "add", "192.0.2.2/32", "dev", "lo"]);
    let (all, (ok, out)) = capture(&t.a, "ip", || {
        t.b.netns.exec(&[
            "busybox",
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            "192.0.2.2",
            "192.0.2.1",
        ])
    });
    t.b.netns.ip(&["addr", "del", "192.0.2.2/32", "dev", "lo"]);
    let leaks: Vec<&str> = all.lines().filter(|l| !l.contains("ESP")).collect();
    assert!(
        !ok,
        "VPP's answer to b's underlay address arrived: {out}\n{all}"
    );
    assert!(
        all.lines().filter(|l| l.contains("ESP")).count() >= 3,
        "{all}"
    );
    assert!(
        leaks.is_empty(),
        "VPP's reply in the clear:\n{}",
        leaks.join("\n")
    );

    // the protection deleted behind Scrambler's back: dropped, never clear
    let tunnel = format!("ipip{}", tunnel_instance(NodeId::new(2).unwrap()));
    t.a.vppctl(&["ipsec", "tunnel", "protect", "del", &tunnel]);
    let ((ok, _), leaks, _) = host_a_sends(&t, || ping_from(&t.a.netns, "192.0.2.2", 3));
    assert!(
        !ok && leaks.is_empty(),
        "unprotected: ping {ok}, leaks:\n{leaks}"
    );
    let (ok, leaks, _) = host_a_sends(&t, || tcp_from(&t.a.netns, "192.0.2.2", 5201));
    assert!(
        !ok && leaks.is_empty(),
        "unprotected TCP: {ok}, leaks:\n{leaks}"
    );
    assert!(!t.reconcile("a").await.is_noop());
    let ((ok, _), leaks, _) = host_a_sends(&t, || ping_from(&t.a.netns, "192.0.2.2", 2));
    assert!(ok && leaks.is_empty(), "after repair: {ok}\n{leaks}");

    // the host's route or a steering rule deleted behind Scrambler's back: reported, and
    // not fail closed (the host's traffic may take another route) until a reconcile
    t.a.netns.ip(&[
        "route",
        "del",
        "192.0.2.2/32",
        "table",
        "92",
        "dev",
        HOST_LINK_IF,
    ]);
    t.a.netns
        .ip(&["rule", "del", "priority", "23554", "ipproto", "icmp"]);
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert_eq!(st.errors.get(NODE_STEERING_MISSING), Some(&2), "{st:?}");
    assert!(!st.fail_closed && !st.in_place(), "{st:?}");
    assert_eq!(t.reconcile("a").await.added, 2);
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(st.in_place() && st.errors.is_empty(), "{st:?}");

    // the peer gone from a's mesh: VPP keeps its underlay route as a drop, and the host
    // keeps its route into VPP so that its traffic meets that drop
    let mut alone = t.mesh("a");
    alone.peers.clear();
    t.dp.reconcile(&na, &alone, &t.secret).await.unwrap();
    assert!(t
        .dp
        .reconcile(&na, &alone, &t.secret)
        .await
        .unwrap()
        .is_noop());
    let routes = t.a.netns.ip(&["route", "show", "table", "92", "192.0.2.2"]);
    assert!(routes.contains(HOST_LINK_IF), "{routes}");
    let st = t.dp.status(&na, &alone).await.unwrap();
    assert!(st.errors.is_empty(), "{st:?}");
    let ((ok, _), leaks, _) = host_a_sends(&t, || ping_from(&t.a.netns, "192.0.2.2", 3));
    assert!(
        !ok && leaks.is_empty(),
        "peer removed: ping {ok}, leaks:\n{leaks}"
    );

    // node encryption off: the host's routes to underlay addresses and its rules go
    alone.node_encryption = None;
    let rep = t.dp.reconcile(&na, &alone, &t.secret).await.unwrap();
    assert!(rep.removed > 0, "{rep:?}");
    let routes =
        t.a.netns
            .ip(&["route", "show", "table", "all", "192.0.2.2"]);
    assert!(!routes.contains(HOST_LINK_IF), "{routes}");
    let rules = t.a.netns.ip(&["rule", "show"]);
    assert!(
        !rules.contains("lookup 92") && !rules.contains("nop"),
        "{rules}"
    );
    t.dp.remove(&na).await.unwrap();
    t.dp.remove(&t.b.netns.netns()).await.unwrap();
}

/// Node encryption over an IPv6 underlay: the underlay guard's discard of VPP's own
/// traffic to the peer's underlay address leaves the IPv6 underlay working (VPP's
/// neighbour discovery answers are not caught by it: pods reach each other through ESP
/// over IPv6), and the host's steered traffic to an IPv6 underlay address is refused by
/// an unreachable route (the host link holds no IPv6 tunnel address), even with another
/// IPv6 route of the host's to it: a documented limit, said in status, nothing in the
/// clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_encryption_keeps_an_ipv6_underlay_working() {
    let mut t = TwoNodes::underlay_v6("scr-ne6").await;
    let pa = pod(&t.a, 1).await;
    let _pb = pod(&t.b, 2).await;
    t.cluster.node_encryption = Some(scrambler_core::NodeEncryption::default());
    t.dp = VppTunnel::with_resolver(api_sock_resolver(&[&t.a, &t.b])).with_host_link(true);
    t.apply().await;
    let rep = t.reconcile("a").await;
    assert!(
        rep.is_noop(),
        "{rep:?}\n{}",
        t.a.vppctl(&["show", "ipsec", "spd"])
    );
    // neighbours forgotten on both sides: resolved again under the guard
    for (vpp, peer) in [(&t.a, 2), (&t.b, 1)] {
        let (ip, mac) = (format!("fd00:2::{peer}"), format!("02:fe:00:00:01:0{peer}"));
        let out = vpp.vppctl(&["ip", "neighbor", "del", "host-ul0", &ip, &mac]);
        assert!(!out.contains("unknown"), "{out}");
        let left = vpp.vppctl(&["show", "ip6", "neighbor"]);
        assert!(!left.contains("fd00:2::"), "{left}");
    }
    // 8 echoes: the first ones go to neighbour resolution on both VPPs (they send the
    // packet that triggers it nowhere), as without node encryption
    let (wire, (ok, out)) = capture(&t.a, "", || ping_from(&pa, "10.2.0.2", 8));
    assert!(ok, "pod a -> pod b over the IPv6 underlay: {out}\n{wire}");
    assert!(wire.contains("IP6 fd00:2::1 > fd00:2::2: ESP"), "{wire}");
    assert!(
        !wire.contains("ICMP echo"),
        "cleartext on the wire:\n{wire}"
    );
    let routes =
        t.a.netns
            .ip(&["-6", "route", "show", "table", "92", "fd00:2::2"]);
    assert!(routes.contains("unreachable fd00:2::2"), "{routes}");
    let st = t.dp.status(&t.a.netns.netns(), &t.mesh("a")).await.unwrap();
    assert!(st.in_place() && st.fail_closed, "{st:?}");
    assert_eq!(
        st.errors.get(NODE_ENCRYPTION_HOST_UNCOVERED),
        Some(&1),
        "{st:?}"
    );
    // a host route of its own to the peer (a management NIC's stand-in): still refused
    let mgmt = TestNetns::new("scr-ne6m");
    veth(&t.a.netns, "mgmt0", &mgmt, "eth0");
    for (ns, dev) in [(&t.a.netns, "mgmt0"), (&mgmt, "eth0"), (&mgmt, "lo")] {
        let key = format!("net.ipv6.conf.{dev}.disable_ipv6=0");
        assert!(ns.exec(&["sysctl", "-qw", &key]).0, "{key}");
    }
    mgmt.ip(&["link", "set", "lo", "up"]);
    t.a.netns.ip(&[
        "-6",
        "addr",
        "add",
        "fd00:99::1/64",
        "dev",
        "mgmt0",
        "nodad",
    ]);
    mgmt.ip(&["-6", "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad"]);
    mgmt.ip(&["-6", "addr", "add", "fd00:2::2/128", "dev", "lo"]);
    t.a.netns
        .ip(&["-6", "route", "add", "fd00:2::2/128", "via", "fd00:99::2"]);
    let (ok, out) =
        t.a.netns
            .exec(&["ping", "-6", "-c", "1", "-W", "1", "fd00:2::2"]);
    assert!(
        !ok,
        "the host's ICMPv6 to the peer's underlay went another way: {out}"
    );
    // the mesh removed: the host's own route again (the probe above could have passed)
    t.dp.remove(&t.a.netns.netns()).await.unwrap();
    let (ok, out) =
        t.a.netns
            .exec(&["ping", "-6", "-c", "1", "-W", "1", "fd00:2::2"]);
    assert!(ok, "the management route does not work: {out}");
    mgmt.delete();
}

/// The packets b's VPP decrypted from a.
async fn b_sa_in(t: &TwoNodes) -> u64 {
    t.dp.counters(&t.b.netns.netns(), &t.mesh("b"))
        .await
        .unwrap()[0]
        .sa_in
        .packets
}

/// A one-connection TCP listener on `port` in `ns` (busybox nc, 20 s at most).
fn listen(ns: &TestNetns, port: u16) -> std::process::Child {
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(["busybox", "timeout", "20", "busybox", "nc", "-l", "-p"])
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    child
}

/// Whether host a connects to `192.0.2.2:port`, with a listener there on the management
/// network.
fn host_a_connects(t: &TwoNodes, mgmt: &TestNetns, port: u16) -> bool {
    let mut l = listen(mgmt, port);
    let ok = tcp_from(&t.a.netns, "192.0.2.2", port);
    let _ = l.kill();
    let _ = l.wait();
    ok
}

/// The bypass ports apply to a VPP node's host: a host that reaches its datastore at a
/// peer's underlay address through a NIC of its own (here a management veth to a
/// namespace holding 192.0.2.2) keeps reaching it on a bypass port, also with the mesh
/// removed (keeping the guard), while a port outside the bypass list rides the mesh
/// (into b's VPP, no listener there) and never takes the management route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_encryption_bypass_ports_keep_the_hosts_datastore_reachable() {
    let mut t = TwoNodes::underlay("scr-nb").await;
    t.cluster.node_encryption = Some(scrambler_core::NodeEncryption {
        bypass: vec!["tcp/2379".parse().unwrap()],
    });
    t.dp = VppTunnel::with_resolver(api_sock_resolver(&[&t.a, &t.b])).with_host_link(true);
    let na = t.a.netns.netns();
    let mgmt = TestNetns::new("scr-nbm");
    veth(&t.a.netns, "mgmt0", &mgmt, "eth0");
    t.a.netns
        .ip(&["addr", "add", "198.51.100.1/24", "dev", "mgmt0"]);
    mgmt.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    mgmt.ip(&["addr", "add", "192.0.2.2/32", "dev", "lo"]);
    mgmt.ip(&["link", "set", "lo", "up"]);
    t.a.netns
        .ip(&["route", "add", "192.0.2.2/32", "via", "198.51.100.2"]);
    // before the mesh: both ports by the management route
    assert!(host_a_connects(&t, &mgmt, 2379));
    assert!(host_a_connects(&t, &mgmt, 7777));

    t.apply().await;
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(st.in_place() && st.errors.is_empty(), "{st:?}");
    assert!(
        host_a_connects(&t, &mgmt, 2379),
        "bypass port with the mesh"
    );
    assert!(
        !host_a_connects(&t, &mgmt, 7777),
        "a steered port took the management route"
    );
    // the SYN rode the tunnel: b's VPP decrypted it
    let before = b_sa_in(&t).await;
    assert!(!tcp_from(&t.a.netns, "192.0.2.2", 7777));
    assert!(b_sa_in(&t).await > before, "b's VPP decrypted no SYN");

    // the mesh removed, the guard kept: the datastore still reachable, nothing else
    t.dp.remove_keeping_guard(&na).await.unwrap();
    assert!(
        host_a_connects(&t, &mgmt, 2379),
        "bypass port without the mesh"
    );
    assert!(
        !host_a_connects(&t, &mgmt, 7777),
        "a steered port took the management route without the mesh"
    );
    t.dp.remove(&na).await.unwrap();
    t.dp.remove(&t.b.netns.netns()).await.unwrap();
    // removed: the host's own routes again
    let rules = t.a.netns.ip(&["rule", "show"]);
    assert!(!rules.contains("lookup 92"), "{rules}");
    assert!(host_a_connects(&t, &mgmt, 7777));
    mgmt.delete();
}
