//! Fail-closed on a real VPP: while a pod pings its peer, the SAs, the protection or the
//! tunnel of the peer are taken away behind the reconciler's back (and the SAs replaced by
//! the reconciler itself). The underlay of the sending node must carry nothing but ESP: no
//! cleartext ICMP, no plain IPIP — even though node A also has a route that would carry pod
//! traffic out of the uplink in clear (10.0.0.0/8 via the peer, standing in for a default
//! route). Then a reconcile repairs the tunnel, and a second one is a no-op.

mod two_nodes;

use std::time::Duration;

use scrambler_core::{ClusterSecret, Keys, NodeId, Tunnel};
use scrambler_testkit::vpp::VppInstance;
use scrambler_vpp::tunnel::{
    sa_id, tunnel_instance, Direction, LOST_OUTBOUND, POD_TO_PEER_UNDERLAY_DROPPED,
    UNDERLAY_GUARD_MISSING,
};
use two_nodes::{capture, ping, rotation_steps, TwoNodes};

/// Everything on the underlay that is IP but not ESP.
const NOT_ESP: &str = "ip and not ip proto 50";

/// Pings pod b from pod a for ~3 s and runs `sabotage` after 1 s; returns the non-ESP
/// packets seen on a's underlay meanwhile.
fn sabotage_while_pinging(t: &TwoNodes, sabotage: impl FnOnce(&VppInstance)) -> String {
    let (leaks, ()) = capture(&t.a, NOT_ESP, || {
        std::thread::scope(|s| {
            let pinger = s.spawn(|| ping(&t.a, "10.2.0.2", 15));
            std::thread::sleep(Duration::from_secs(1));
            sabotage(&t.a);
            let _ = pinger.join();
        })
    });
    leaks
}

/// The peer b's tunnel, as vppctl names it, and its sw_if_index.
fn tunnel_of_b(vpp: &VppInstance) -> (String, String) {
    let name = format!("ipip{}", tunnel_instance(NodeId::new(2).unwrap()));
    let ifs = vpp.vppctl(&["show", "interface", &name]);
    let idx = ifs
        .lines()
        .find(|l| l.starts_with(&name))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no {name} in:\n{ifs}"))
        .to_string();
    (name, idx)
}

/// The changing API calls of the last reconcile in `api trace dump` text (VPP's startup.conf
/// here has `api-trace { on }`): those after its first dump, with the path type of routes
/// and the admin state of flag changes.
fn last_reconcile_calls(trace: &str) -> Vec<String> {
    let start = trace
        .rfind("vl_api_ipip_tunnel_dump_t:")
        .expect("no reconcile in the API trace");
    let mut calls: Vec<String> = Vec::new();
    for block in trace[start..].split("vl_api_").skip(1) {
        let name = block.split("_t:").next().unwrap_or_default();
        if name.ends_with("_dump") || name == "control_ping" {
            continue;
        }
        let field = |key: &str| {
            block
                .lines()
                .find_map(|l| l.trim().strip_prefix(key).map(str::trim))
                .unwrap_or_default()
        };
        calls.push(match name {
            "ip_route_add_del" => format!("{name}:{}", field("type: FIB_API_PATH_TYPE_")),
            "sw_interface_set_flags" if field("flags:").contains("ADMIN_UP") => {
                format!("{name}:UP")
            }
            "sw_interface_set_flags" => format!("{name}:DOWN"),
            _ => name.to_string(),
        });
    }
    calls
}

/// After a repair: encrypted again, pods talk, only ESP on the wire, next reconcile a no-op.
async fn assert_repaired(t: &TwoNodes, what: &str) {
    let rep = t.reconcile("a").await;
    assert!(!rep.is_noop(), "{what}: reconcile found nothing to repair");
    let rep = t.reconcile("a").await;
    assert!(rep.is_noop(), "{what}: second reconcile changed {rep:?}");
    let st = t.dp.status(&t.a.netns.netns(), &t.mesh("a")).await.unwrap();
    assert!(
        st.encrypted && st.fail_closed && st.peers[0].is_up(),
        "{what}: {st:?}"
    );
    let (leaks, (ok, out)) = capture(&t.a, NOT_ESP, || ping(&t.a, "10.2.0.2", 3));
    assert!(ok, "{what}: ping after repair failed: {out}");
    assert!(leaks.is_empty(), "{what}: non-ESP after repair:\n{leaks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_but_esp_while_the_tunnel_is_broken_and_repaired() {
    let mut t = TwoNodes::start("scr-fc").await;
    let (ra, rb) = t.apply().await;
    assert!(ra.added >= 5 && rb.added >= 5, "{ra:?} {rb:?}");
    // first setup: the cluster guard's drop route first, then the underlay guard (SPD, its
    // policies — 4 bypass, 1 discard — then bound to the uplink), the pods' table (IPv4,
    // IPv6); the peer's routes (its pod CIDR in table 0, its underlay address in the pods'
    // table) exist (as drop) before the tunnel, lead into it last
    assert_eq!(
        last_reconcile_calls(&t.a.vppctl(&["api", "trace", "dump"])),
        [
            "ip_route_add_del:DROP",
            "ipsec_spd_add_del",
            "ipsec_spd_entry_add_del",
            "ipsec_spd_entry_add_del",
            "ipsec_spd_entry_add_del",
            "ipsec_spd_entry_add_del",
            "ipsec_spd_entry_add_del",
            "ipsec_interface_add_del_spd",
            "ip_table_add_del",
            "ip_table_add_del",
            "ip_route_add_del:DROP",
            "ip_route_add_del:DROP",
            "ipip_add_tunnel",
            "sw_interface_tag_add_del",
            "sw_interface_set_unnumbered",
            "sw_interface_ip6_enable_disable",
            "ipsec_sad_entry_add_v2",
            "ipsec_sad_entry_add_v2",
            "ipsec_tunnel_protect_update",
            "sw_interface_set_flags:UP",
            "ip_route_add_del:NORMAL",
            "ip_route_add_del:NORMAL",
        ]
    );
    assert!(t.reconcile("a").await.is_noop());
    // a route that would carry pod traffic out of the uplink in clear, and a drop route of
    // someone else's: neither is Scrambler's to touch
    t.a.vppctl(&[
        "ip",
        "route",
        "add",
        "10.0.0.0/8",
        "via",
        "192.0.2.2",
        "host-ul0",
    ]);
    t.a.vppctl(&["ip", "route", "add", "10.9.0.0/24", "via", "drop"]);
    let na = t.a.netns.netns();
    let (ok, out) = ping(&t.a, "10.2.0.2", 2);
    assert!(ok, "baseline ping failed: {out}");

    // 1. the protection goes
    let leaks = sabotage_while_pinging(&t, |a| {
        let (tun, _) = tunnel_of_b(a);
        a.vppctl(&["ipsec", "tunnel", "protect", "del", &tun]);
    });
    assert!(leaks.is_empty(), "unprotected tunnel leaked:\n{leaks}");
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(
        !st.encrypted && !st.fail_closed,
        "status hides the lost protection: {st:?}"
    );
    assert_repaired(&t, "protection deleted").await;

    // 2. the SAs go (VPP keeps them while the protection uses them), then the protection
    let out_sa = sa_id(Direction::Outbound, NodeId::new(2).unwrap(), 1);
    let in_sa = sa_id(Direction::Inbound, NodeId::new(2).unwrap(), 1);
    let leaks = sabotage_while_pinging(&t, |a| {
        for id in [out_sa, in_sa] {
            a.vppctl(&["ipsec", "sa", "del", &id.to_string()]);
        }
        let (tun, _) = tunnel_of_b(a);
        a.vppctl(&["ipsec", "tunnel", "protect", "del", &tun]);
    });
    assert!(leaks.is_empty(), "tunnel without SAs leaked:\n{leaks}");
    let sas = t.a.vppctl(&["show", "ipsec", "sa"]);
    assert!(
        !sas.contains(&format!("sa {out_sa} (")),
        "SA still there:\n{sas}"
    );
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(!st.encrypted && !st.peers[0].outbound, "{st:?}");
    // the tunnel is still here, so its outbound SA existed: re-creating it under the same
    // key would reuse AES-GCM nonces. Reconcile leaves it out; the peer stays dropped
    let rep = t.reconcile("a").await;
    assert!(!rep.is_noop(), "{rep:?}");
    assert!(t.reconcile("a").await.is_noop());
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert_eq!(st.errors.get(LOST_OUTBOUND), Some(&1), "{st:?}");
    assert!(st.fail_closed && !st.encrypted, "{st:?}");
    let (leaks, (ok, _)) = capture(&t.a, NOT_ESP, || ping(&t.a, "10.2.0.2", 2));
    assert!(
        !ok && leaks.is_empty(),
        "lost outbound SA: ping {ok}, leaks:\n{leaks}"
    );
    // a key rotation (make-before-break) repairs it
    for keys in rotation_steps(1, 2) {
        t.cluster.keys = keys;
        t.apply().await;
    }
    t.cluster.keys = Keys::single(2);
    let rep = t.reconcile("a").await;
    assert!(rep.is_noop(), "{rep:?}");
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(
        st.encrypted && st.fail_closed && !st.errors.contains_key(LOST_OUTBOUND),
        "{st:?}"
    );
    let (leaks, (ok, out)) = capture(&t.a, NOT_ESP, || ping(&t.a, "10.2.0.2", 3));
    assert!(ok && leaks.is_empty(), "after rotation: {out}\n{leaks}");

    // 3. the tunnel goes: its route stays, with a path that drops
    let leaks = sabotage_while_pinging(&t, |a| {
        let (_, idx) = tunnel_of_b(a);
        a.vppctl(&["delete", "ipip", "tunnel", "sw_if_index", &idx]);
    });
    assert!(leaks.is_empty(), "deleted tunnel leaked:\n{leaks}");
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(!st.encrypted && !st.peers[0].is_up(), "{st:?}");
    assert_repaired(&t, "tunnel deleted").await;

    // 4. the reconciler replaces the SAs itself (other keys): routes go to drop first
    let other = ClusterSecret::from_bytes(vec![0x24; 32]).unwrap();
    let mesh = t.mesh("a");
    let (leaks, rep) = capture(&t.a, NOT_ESP, || {
        std::thread::scope(|s| {
            let pinger = s.spawn(|| ping(&t.a, "10.2.0.2", 10));
            std::thread::sleep(Duration::from_millis(800));
            // a thread of its own: this one drives the test's runtime
            let rep = s
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap()
                        .block_on(t.dp.reconcile(&na, &mesh, &other))
                        .unwrap()
                })
                .join()
                .unwrap();
            let _ = pinger.join();
            rep
        })
    });
    assert!(rep.updated >= 2, "{rep:?}");
    // the order, from VPP's API trace: drop first, protection before the route into it
    let calls = last_reconcile_calls(&t.a.vppctl(&["api", "trace", "dump"]));
    assert_eq!(
        calls,
        [
            "ip_route_add_del:DROP",
            "ip_route_add_del:DROP",
            "sw_interface_set_flags:DOWN",
            "ipsec_tunnel_protect_del",
            "ipsec_sad_entry_del",
            "ipsec_sad_entry_add_v2",
            "ipsec_sad_entry_del",
            "ipsec_sad_entry_add_v2",
            "ipsec_tunnel_protect_update",
            "sw_interface_set_flags:UP",
            "ip_route_add_del:NORMAL",
            "ip_route_add_del:NORMAL",
        ]
    );
    assert!(leaks.is_empty(), "SA replacement leaked:\n{leaks}");

    let foreign =
        t.a.vppctl(&["show", "ip", "fib", "table", "0", "10.9.0.0/24"]);
    assert!(
        foreign.contains("10.9.0.0/24") && foreign.contains("dpo-drop"),
        "{foreign}"
    );

    // control: without Scrambler's routes the stand-in default route does leak, so the
    // captures above would have seen it
    t.dp.remove(&na).await.unwrap();
    let (leaks, _) = capture(&t.a, NOT_ESP, || ping(&t.a, "10.2.0.2", 2));
    assert!(
        leaks.contains("ICMP echo request"),
        "the control leak did not show:\n{leaks}"
    );
}

/// The cluster guard on a real VPP, with a route that would carry pod traffic out of the
/// uplink in clear (10.0.0.0/8 via the peer): a pod sending to the pod CIDR of a node that
/// is not in the mesh (10.3.0.0/24, inside the cluster CIDR 10.0.0.0/12), to a peer removed
/// from the mesh, and to the peer after `remove_keeping_guard` (the node tool's `mesh
/// remove`) — nothing but ESP on the underlay; then `remove` (guard too) leaks, the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_guard_drops_unknown_and_removed_peers_and_outlives_mesh_remove() {
    let mut t = TwoNodes::start("scr-cg").await;
    t.apply().await;
    t.a.vppctl(&[
        "ip",
        "route",
        "add",
        "10.0.0.0/8",
        "via",
        "192.0.2.2",
        "host-ul0",
    ]);
    let na = t.a.netns.netns();
    let fib =
        t.a.vppctl(&["show", "ip", "fib", "table", "0", "10.0.0.0/12"]);
    assert!(
        fib.contains("10.0.0.0/12") && fib.contains("dpo-drop"),
        "{fib}"
    );
    let (ok, out) = ping(&t.a, "10.2.0.2", 2);
    assert!(ok, "baseline ping failed: {out}");
    // the CNI plugin's check of the guard finds it (one exact route lookup per supernet),
    // and calls a supernet held by someone else's route (not a drop of ours) unguarded
    let guard_in_place = |cidrs: &'static [&'static str]| {
        let vpp = &t.a;
        async move {
            let c = vpp.client().await;
            let cidrs: Vec<ipnet::IpNet> = cidrs.iter().map(|s| s.parse().unwrap()).collect();
            let r = scrambler_vpp::tunnel::guard_in_place(&c, &cidrs).await;
            let _ = c.close().await;
            r
        }
    };
    guard_in_place(&["10.0.0.0/12"]).await.unwrap();
    // its cost with a connection of its own, as the CNI plugin runs it (a log line)
    let started = std::time::Instant::now();
    for _ in 0..20 {
        guard_in_place(&["10.0.0.0/12"]).await.unwrap();
    }
    eprintln!(
        "VPP guard_in_place, connect + one lookup + close: {:?} per call",
        started.elapsed() / 20
    );
    let e = guard_in_place(&["10.0.0.0/8"]).await.unwrap_err();
    assert!(e.to_string().contains("not Scrambler's"), "{e}");
    let e = guard_in_place(&["10.16.0.0/12"]).await.unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    // 1. a node not (yet) in the mesh
    let (leaks, (ok, _)) = capture(&t.a, NOT_ESP, || ping(&t.a, "10.3.0.2", 3));
    assert!(
        !ok && leaks.is_empty(),
        "unknown node: ping {ok}, leaks:\n{leaks}"
    );
    // 2. the peer removed from a's mesh
    let mut alone = t.mesh("a");
    alone.peers.clear();
    let rep = t.dp.reconcile(&na, &alone, &t.secret).await.unwrap();
    assert!(rep.removed > 0, "{rep:?}");
    let st = t.dp.status(&na, &alone).await.unwrap();
    assert!(st.fail_closed, "{st:?}");
    let (leaks, (ok, _)) = capture(&t.a, NOT_ESP, || ping(&t.a, "10.2.0.2", 3));
    assert!(
        !ok && leaks.is_empty(),
        "removed peer: ping {ok}, leaks:\n{leaks}"
    );
    // 3. back in the mesh (under a new generation: its old outbound SA's key has sent, and
    //    b's replay window remembers it), then `mesh remove` keeping the guard while the
    //    pod runs
    t.cluster.keys = Keys::single(2);
    t.apply().await;
    let (ok, out) = ping(&t.a, "10.2.0.2", 2);
    assert!(ok, "ping after rejoin failed: {out}");
    let rep = t.dp.remove_keeping_guard(&na).await.unwrap();
    assert!(rep.removed > 0, "{rep:?}");
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(st.fail_closed && !st.encrypted, "{st:?}");
    let (leaks, (ok, _)) = capture(&t.a, NOT_ESP, || ping(&t.a, "10.2.0.2", 3));
    assert!(
        !ok && leaks.is_empty(),
        "after mesh remove: ping {ok}, leaks:\n{leaks}"
    );
    // a reconcile brings the mesh back (again under a new generation)
    t.cluster.keys = Keys::single(3);
    t.apply().await;
    let (ok, out) = ping(&t.a, "10.2.0.2", 2);
    assert!(ok, "ping after re-apply failed: {out}");
    // a cluster CIDR that is exactly a peer's pod CIDR is held by the peer's route into its
    // tunnel: the check accepts it while the tunnel is Scrambler's and protected, and not
    // once the protection is gone
    guard_in_place(&["10.2.0.0/24"]).await.unwrap();
    let tunnel = format!("ipip{}", tunnel_instance(NodeId::new(2).unwrap()));
    let out = t.a.vppctl(&["ipsec", "tunnel", "protect", &tunnel, "del"]);
    assert!(!out.contains("error"), "{out}");
    let e = guard_in_place(&["10.2.0.0/24"]).await.unwrap_err();
    assert!(
        e.to_string().contains("not a protected Scrambler tunnel"),
        "{e}"
    );
    // control: without the guard the same traffic leaks on this wire
    t.dp.remove(&na).await.unwrap();
    let e = guard_in_place(&["10.0.0.0/12"]).await.unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    let (leaks, _) = capture(&t.a, NOT_ESP, || ping(&t.a, "10.3.0.2", 2));
    assert!(
        leaks.contains("ICMP echo request"),
        "the control leak did not show:\n{leaks}"
    );
    // a route of someone else's on the cluster CIDR itself: reconcile refuses before it
    // changes anything, and the route stays as it was
    t.a.vppctl(&[
        "ip",
        "route",
        "add",
        "10.0.0.0/12",
        "via",
        "192.0.2.2",
        "host-ul0",
    ]);
    let err =
        t.dp.reconcile(&na, &t.mesh("a"), &t.secret)
            .await
            .unwrap_err();
    assert!(
        matches!(err, scrambler_core::Error::AlreadyExists { .. })
            && err.to_string().contains("10.0.0.0/12"),
        "{err}"
    );
    // (table 0 only: the pods' table has VPP's default drop of its own)
    let fib =
        t.a.vppctl(&["show", "ip", "fib", "table", "0", "10.0.0.0/12"]);
    assert!(
        fib.contains("10.0.0.0/12") && fib.contains("192.0.2.2") && !fib.contains("dpo-drop"),
        "{fib}"
    );
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(st.peers.iter().all(|p| !p.is_up()), "{st:?}");
}

/// Pod-sourced packets on node a's underlay that are not ESP.
const POD_CLEARTEXT: &str = "ip and not ip proto 50 and src net 10.1.0.0/24";

/// Pings `to` from pod a while capturing a's underlay; returns whether the ping was
/// answered and how many cleartext echo requests with the pod's source left.
fn pod_a_pings(t: &TwoNodes, to: &str) -> (bool, usize, String) {
    let (text, (ok, _)) = capture(&t.a, POD_CLEARTEXT, || ping(&t.a, to, 3));
    let n = text
        .lines()
        .filter(|l| l.contains("ICMP echo request"))
        .count();
    (ok, n, text)
}

/// A pod in VPP's table 0 (not in the pods' VRF: attached by hand, or to the gateway of an
/// earlier release; attached pods are steered, see tests/node_live.rs) sending to its
/// peer's *underlay* address (the `kubernetes` Service DNATed to a control-plane node's
/// address, a kubelet): without Scrambler VPP routes it
/// by table 0's connected route out of the uplink in the clear (the control at the end
/// shows it); with the mesh applied the underlay guard (an SPD on the uplink) drops it,
/// while pod ↔ pod stays encrypted and a pod's traffic to any other address (here
/// 198.51.100.7 by a route via the peer, standing in for a default route) leaves as before.
/// The guard follows the peer leaving and rejoining, outlives `mesh remove`, goes with
/// `remove`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_to_peer_underlay_address_is_dropped_never_cleartext() {
    let mut t = TwoNodes::start("scr-pu").await;
    let na = t.a.netns.netns();
    t.b.vppctl(&[
        "set",
        "interface",
        "ip",
        "address",
        "host-ul0",
        "198.51.100.7/32",
    ]);
    t.a.vppctl(&[
        "ip",
        "route",
        "add",
        "198.51.100.0/24",
        "via",
        "192.0.2.2",
        "host-ul0",
    ]);
    // before the mesh: the leak this guards against, on this very wire
    let (_, n, text) = pod_a_pings(&t, "192.0.2.2");
    assert_eq!(
        n, 3,
        "no cleartext without Scrambler, the capture sees nothing?\n{text}"
    );

    t.apply().await;
    let spd = t.a.vppctl(&["show", "ipsec", "spd"]);
    assert!(
        spd.contains("action discard") && spd.contains("192.0.2.2"),
        "{spd}"
    );
    let (ok, out) = ping(&t.a, "10.2.0.2", 3);
    assert!(ok, "pod ↔ pod ping failed: {out}");
    let (ok, n, text) = pod_a_pings(&t, "192.0.2.2");
    assert!(
        !ok && n == 0,
        "pod → peer underlay: ping {ok}, {n} cleartext:\n{text}"
    );
    // pod → own node's underlay address: local, untouched
    let (ok, out) = ping(&t.a, "192.0.2.1", 2);
    assert!(ok, "pod → own underlay failed: {out}");
    // pod → elsewhere (neither cluster nor a peer's underlay): as before
    let (ok, n, text) = pod_a_pings(&t, "198.51.100.7");
    assert!(
        ok && n == 3,
        "pod → other destination changed: ping {ok}, {n}:\n{text}"
    );
    // status counts the pairs not steered in the pods' VRF: none (this pod is in table 0,
    // where the SPD drops it; an attached pod reaches b, see tests/node_live.rs)
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(
        st.fail_closed && !st.errors.contains_key(POD_TO_PEER_UNDERLAY_DROPPED),
        "{st:?}"
    );
    let rep = t.reconcile("a").await;
    assert!(
        rep.added == 0 && rep.updated == 0 && rep.removed == 0,
        "{rep:?}"
    );

    // the peer leaves a's mesh: its underlay address is no peer's any more, its discard
    // goes (the address is then an ordinary destination)
    let mut alone = t.mesh("a");
    alone.peers.clear();
    t.dp.reconcile(&na, &alone, &t.secret).await.unwrap();
    let spd = t.a.vppctl(&["show", "ipsec", "spd"]);
    assert!(!spd.contains("action discard"), "{spd}");
    // back (a new generation: the old outbound SA's key has sent)
    t.cluster.keys = Keys::single(2);
    t.apply().await;
    let (ok, out) = ping(&t.a, "10.2.0.2", 3);
    assert!(ok, "pod ↔ pod ping after rejoin failed: {out}");
    let (ok, n, text) = pod_a_pings(&t, "192.0.2.2");
    assert!(
        !ok && n == 0,
        "after rejoin: ping {ok}, {n} cleartext:\n{text}"
    );

    // `mesh remove` keeps the guard
    t.dp.remove_keeping_guard(&na).await.unwrap();
    let (ok, n, text) = pod_a_pings(&t, "192.0.2.2");
    assert!(
        !ok && n == 0,
        "after mesh remove: ping {ok}, {n} cleartext:\n{text}"
    );
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(!st.errors.contains_key(UNDERLAY_GUARD_MISSING), "{st:?}");
    // `remove` takes it: the control, the leak is back
    t.dp.remove(&na).await.unwrap();
    let st = t.dp.status(&na, &t.mesh("a")).await.unwrap();
    assert!(
        !st.fail_closed && st.errors.contains_key(UNDERLAY_GUARD_MISSING),
        "{st:?}"
    );
    let spd = t.a.vppctl(&["show", "ipsec", "spd"]);
    assert!(!spd.contains("spd "), "{spd}");
    let (_, n, text) = pod_a_pings(&t, "192.0.2.2");
    assert_eq!(n, 3, "the control leak did not show:\n{text}");
    // an SPD of someone else's: reconcile refuses (it could not tell the bindings apart)
    // and leaves it alone
    t.a.vppctl(&["ipsec", "spd", "add", "7"]);
    let err =
        t.dp.reconcile(&na, &t.mesh("a"), &t.secret)
            .await
            .unwrap_err();
    assert!(
        matches!(err, scrambler_core::Error::AlreadyExists { .. })
            && err.to_string().contains("0x7"),
        "{err}"
    );
    let spd = t.a.vppctl(&["show", "ipsec", "spd"]);
    assert!(spd.contains("spd 7") && !spd.contains("6029404"), "{spd}");
}
