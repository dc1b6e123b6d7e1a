//! End-to-end tests of the real ESP dataplane: three nodes as network namespaces joined by
//! an underlay bridge (in a `wire` namespace), one pod namespace routed behind each node.
//!
//! They need ESP states and xfrm interfaces. On a kernel without them (the build
//! machine's) every `vm_xfrm_*` test re-runs inside Debian's stock kernel under qemu
//! through scrambler-vmtest (one boot for the group); on a kernel that has them they run
//! natively.

mod common;

use common::*;
use scrambler_core::{keys, Mesh, Netns, Tunnel};
use scrambler_testkit::capture::Capture;
use scrambler_testkit::vm::{Feature, VmSuite};
use scrambler_testkit::wire::{capture_bridge, ping_replies, Stream};
use scrambler_xfrm::{rotate, StatusTable, XfrmConfig, XfrmTunnel};
use std::time::{Duration, Instant};

static VM: VmSuite = VmSuite::with("vm_xfrm_", |t| t.timeout(Duration::from_secs(600)));

const FEATURES: &[Feature] = &[Feature::Esp, Feature::XfrmInterface];

/// Three nodes, their pods and the wire.
struct Lab {
    wire: Ns,
    nodes: Vec<Ns>,
    pods: Vec<Ns>,
    meshes: Vec<Mesh>,
    tunnel: XfrmTunnel,
}

/// The tunnel of every node; the guard comes from the meshes' cluster CIDR (10.0.0.0/8).
fn tunnel() -> XfrmTunnel {
    XfrmTunnel::new(XfrmConfig::default()).unwrap()
}

impl Lab {
    fn new() -> Lab {
        let wire = Ns::new("xw");
        wire.ip(&["link", "add", "br0", "type", "bridge"]);
        wire.ip(&["link", "set", "br0", "up"]);
        let tunnel = tunnel();
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for i in 1..=3u32 {
            let n = Ns::new(&format!("xn{i}"));
            n.veth("ul0", &wire, &format!("w{i}"));
            wire.ip(&["link", "set", &format!("w{i}"), "master", "br0"]);
            n.ip(&["addr", "add", &format!("192.0.2.{i}/24"), "dev", "ul0"]);
            n.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
            let p = Ns::new(&format!("xp{i}"));
            n.veth("pod0", &p, "eth0");
            n.ip(&["addr", "add", &format!("10.0.{i}.1/24"), "dev", "pod0"]);
            let mtu = tunnel.pod_mtu(1500).to_string();
            p.ip(&["link", "set", "eth0", "mtu", &mtu]);
            p.ip(&["addr", "add", &format!("10.0.{i}.2/24"), "dev", "eth0"]);
            p.ip(&["route", "add", "default", "via", &format!("10.0.{i}.1")]);
            nodes.push(n);
            pods.push(p);
        }
        let meshes = (1..=3).map(|i| mesh_of(i, 3, node)).collect();
        Lab {
            wire,
            nodes,
            pods,
            meshes,
            tunnel,
        }
    }

    fn node_ns(&self) -> Vec<(Netns, Mesh)> {
        self.nodes
            .iter()
            .zip(&self.meshes)
            .map(|(n, m)| (n.netns(), m.clone()))
            .collect()
    }

    async fn reconcile_all(&self, t: &XfrmTunnel) -> Vec<scrambler_core::ReconcileReport> {
        let mut v = Vec::new();
        for (n, m) in self.nodes.iter().zip(&self.meshes) {
            v.push(t.reconcile(&n.netns(), m, &secret()).await.unwrap());
        }
        v
    }

    /// busybox ping from pod `from` (1-based) to pod `to`; true when all replies came.
    fn ping(&self, from: usize, to: usize, count: u32) -> bool {
        ping_replies(&self.pods[from - 1], &format!("10.0.{to}.2"), count) == count
    }

    /// Starts tcpdump on the underlay bridge.
    fn capture(&self) -> Capture {
        capture_bridge(&self.wire)
    }
}

/// Underlay lines carrying a pod address in the clear.
fn cleartext(lines: &[String]) -> Vec<&String> {
    lines.iter().filter(|l| l.contains(" 10.0.")).collect()
}

fn assert_no_cleartext(lines: &[String]) {
    let clear: Vec<_> = lines.iter().filter(|l| l.contains(" 10.0.")).collect();
    assert!(
        clear.is_empty(),
        "cleartext pod traffic on the underlay: {clear:#?}"
    );
}

#[test]
fn vm_xfrm_mesh_pods_ping_over_esp_only() {
    if VM.delegate("vm_xfrm_mesh_pods_ping_over_esp_only", FEATURES) {
        return;
    }
    let lab = Lab::new();
    rt().block_on(async {
        let reports = lab.reconcile_all(&lab.tunnel).await;
        // per node: 2 peers × (3 mesh policies + 8 with an underlay address + 2 states
        // + 1 route + 1 route in table 92 + 1 guard of its underlay address) + 4 guard
        // + 4 bypass + the interface, its tunnel address and the rule
        for r in &reports {
            assert_eq!((r.added, r.updated), (43, 0), "{r:?}");
        }
        let l = lab.nodes[0].ip(&["-d", "link", "show", "scrambler0"]);
        assert!(l.contains("mtu 1440") && l.contains("if_id 0x5c5c"), "{l}");
        let cap = lab.capture();
        for (a, b) in [(1, 2), (1, 3), (2, 3), (3, 1)] {
            assert!(lab.ping(a, b, 3), "pod{a} -> pod{b}");
        }
        let lines = cap.finish();
        assert_no_cleartext(&lines);
        let esp = lines.iter().filter(|l| l.contains("ESP")).count();
        assert!(esp >= 24, "ESP packets on the wire: {lines:#?}");
        let s = lab
            .tunnel
            .status(&lab.nodes[0].netns(), &lab.meshes[0])
            .await
            .unwrap();
        eprintln!("{}", StatusTable(&s));
        assert!(s.encrypted && s.fail_closed, "{s:?}");
        for p in &s.peers {
            assert!(p.is_up(), "{p:?}");
            assert!(p.packets_out >= 3 && p.packets_in >= 3, "{p:?}");
            assert_eq!(p.tx_generation, Some(1));
            assert_eq!(p.rx_generations, vec![1]);
            assert_eq!((p.replay_errors, p.integrity_errors), (0, 0));
        }
    });
}

#[test]
fn vm_xfrm_missing_state_or_route_drops_instead_of_leaking() {
    if VM.delegate(
        "vm_xfrm_missing_state_or_route_drops_instead_of_leaking",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    // a default route on the underlay: without the guard, a missing route would send
    // pod traffic there in cleartext
    lab.nodes[0].ip(&["route", "add", "default", "via", "192.0.2.2"]);
    rt().block_on(async {
        lab.reconcile_all(&lab.tunnel).await;
        assert!(lab.ping(1, 2, 2));
        let n1 = &lab.nodes[0];
        let cap = lab.capture();
        // 1. a route disappears behind our back: the guard drops
        n1.ip(&["route", "del", "10.0.2.0/24"]);
        assert!(!lab.ping(1, 2, 2), "no route: the guard must drop");
        // 2. the whole interface goes
        n1.ip(&["link", "del", "scrambler0"]);
        assert!(!lab.ping(1, 3, 2), "no interface: the guard must drop");
        let s = lab
            .tunnel
            .status(&n1.netns(), &lab.meshes[0])
            .await
            .unwrap();
        assert!(!s.encrypted && s.fail_closed);
        assert!(s.errors.contains_key("XfrmOutPolBlock"), "{:?}", s.errors);
        // reconcile repairs it: interface, its tunnel address, 2 routes and the 2 routes
        // of table 92 (they went with the interface; the rule stayed)
        let r = lab
            .tunnel
            .reconcile(&n1.netns(), &lab.meshes[0], &secret())
            .await
            .unwrap();
        assert_eq!(r.added, 6, "{r:?}");
        assert!(lab.ping(1, 2, 2) && lab.ping(1, 3, 2));
        // 3. the outbound state to node2 disappears: drop, and no re-creation under the
        //    same key (nonce reuse) — a rotation repairs it
        let spi = keys::spi(node(1).incarnation(), node(2).incarnation(), 1);
        n1.ip(&[
            "xfrm",
            "state",
            "delete",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            &format!("{spi:#x}"),
        ]);
        assert!(!lab.ping(1, 2, 2), "no state: must drop");
        let r = lab
            .tunnel
            .reconcile(&n1.netns(), &lab.meshes[0], &secret())
            .await
            .unwrap();
        assert!(
            r.is_noop(),
            "lost outbound SA must not be re-created: {r:?}"
        );
        let s = lab
            .tunnel
            .status(&n1.netns(), &lab.meshes[0])
            .await
            .unwrap();
        eprintln!("{}", StatusTable(&s));
        assert!(!s.encrypted);
        assert!(!s.peers[0].outbound, "{:?}", s.peers[0]);
        assert_eq!(
            s.errors.get(scrambler_xfrm::LOST_OUTBOUND),
            Some(&1),
            "{:?}",
            s.errors
        );
        assert!(s.errors.contains_key("XfrmOutNoStates"), "{:?}", s.errors);
        let lines = cap.finish();
        assert_no_cleartext(&lines);
        let done = rotate(
            &lab.tunnel,
            &lab.node_ns(),
            &secret(),
            2,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        assert!(lab.ping(1, 2, 2) && lab.ping(1, 3, 2));
        let s = lab
            .tunnel
            .status(&n1.netns(), &done.meshes[0])
            .await
            .unwrap();
        assert!(
            s.encrypted && !s.errors.contains_key(scrambler_xfrm::LOST_OUTBOUND),
            "{s:?}"
        );
    });
}

#[test]
fn vm_xfrm_moved_underlay_is_lost_until_rotation_never_rekeyed_in_place() {
    if VM.delegate(
        "vm_xfrm_moved_underlay_is_lost_until_rotation_never_rekeyed_in_place",
        FEATURES,
    ) {
        return;
    }
    let mut lab = Lab::new();
    rt().block_on(async {
        lab.reconcile_all(&lab.tunnel).await;
        assert!(lab.ping(1, 2, 2) && lab.ping(2, 3, 2));
        let cap = lab.capture();
        // node1 moves to another underlay address: its outbound states (and its peers'
        // outbound states to it) keep their keys but not their addresses
        lab.nodes[0].ip(&["addr", "add", "192.0.2.11/24", "dev", "ul0"]);
        let moved: std::net::IpAddr = "192.0.2.11".parse().unwrap();
        for m in lab.meshes.iter_mut() {
            for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
                if n.id.get() == 1 {
                    n.underlay = vec![moved];
                }
            }
        }
        lab.reconcile_all(&lab.tunnel).await;
        // nothing was re-created under a key that has sent: node1 lost both outbound
        // states, node2 and node3 the one to node1; traffic with node1 is dropped
        for (i, lost) in [(0, 2), (1, 1), (2, 1)] {
            let s = lab
                .tunnel
                .status(&lab.nodes[i].netns(), &lab.meshes[i])
                .await
                .unwrap();
            assert_eq!(
                s.errors.get(scrambler_xfrm::LOST_OUTBOUND),
                Some(&lost),
                "node{}: {}",
                i + 1,
                StatusTable(&s)
            );
            assert!(!s.encrypted && s.fail_closed, "{s:?}");
        }
        assert!(!lab.ping(1, 2, 2) && !lab.ping(3, 1, 2));
        assert!(lab.ping(2, 3, 2), "peers that did not move keep talking");
        // a second run changes nothing: still lost, never re-keyed in place
        for r in lab.reconcile_all(&lab.tunnel).await {
            assert!(r.is_noop(), "{r:?}");
        }
        assert_no_cleartext(&cap.finish());
        // a rotation brings new keys: everything flows again
        let done = rotate(
            &lab.tunnel,
            &lab.node_ns(),
            &secret(),
            2,
            Duration::from_millis(100),
        )
        .await
        .unwrap();
        assert!(lab.ping(1, 2, 2) && lab.ping(3, 1, 2));
        let s = lab
            .tunnel
            .status(&lab.nodes[0].netns(), &done.meshes[0])
            .await
            .unwrap();
        assert!(s.encrypted, "{}", StatusTable(&s));
    });
}

/// Numbered UDP datagrams from pod `from` (1-based) to pod `to` every 5 ms.
fn stream(lab: &Lab, from: usize, to: usize) -> Stream {
    Stream::start(
        (&lab.pods[from - 1].netns(), &format!("10.0.{from}.2")),
        (&lab.pods[to - 1].netns(), &format!("10.0.{to}.2")),
        Duration::from_millis(5),
    )
}

#[test]
fn vm_xfrm_rotation_under_load_loses_nothing() {
    if VM.delegate("vm_xfrm_rotation_under_load_loses_nothing", FEATURES) {
        return;
    }
    let lab = Lab::new();
    rt().block_on(async {
        lab.reconcile_all(&lab.tunnel).await;
        assert!(lab.ping(1, 2, 2) && lab.ping(2, 1, 1));
        let a = stream(&lab, 1, 2);
        let b = stream(&lab, 3, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let started = Instant::now();
        let done = rotate(
            &lab.tunnel,
            &lab.node_ns(),
            &secret(),
            2,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        eprintln!("rotation took {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (sent, got) = a.finish();
        assert!(sent > 100, "stream too short: {sent}");
        assert_eq!(got, sent, "pod1->pod2 lost packets during rotation");
        let (sent, got) = b.finish();
        assert_eq!(got, sent, "pod3->pod1 lost packets during rotation");
        for (n, m) in lab.nodes.iter().zip(&done.meshes) {
            let s = lab.tunnel.status(&n.netns(), m).await.unwrap();
            for p in &s.peers {
                assert!(p.is_up(), "{p:?}");
                assert_eq!(p.tx_generation, Some(2));
                assert_eq!(p.rx_generations, vec![2]);
            }
            // one outbound and one inbound state per peer left
            assert_eq!(lab.tunnel.inventory(&n.netns()).await.unwrap().states, 4);
        }
    });
}

#[test]
fn vm_xfrm_restart_is_noop_and_foreign_objects_survive() {
    if VM.delegate(
        "vm_xfrm_restart_is_noop_and_foreign_objects_survive",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    let n1 = &lab.nodes[0];
    n1.ip(&[
        "xfrm",
        "state",
        "add",
        "src",
        "198.51.100.1",
        "dst",
        "198.51.100.2",
        "proto",
        "esp",
        "spi",
        "0x2000",
        "reqid",
        "7",
        "mode",
        "tunnel",
        "aead",
        "rfc4106(gcm(aes))",
        "0x0102030405060708090a0b0c0d0e0f1011121314",
        "128",
    ]);
    common::add_foreign_ike_policy(n1);
    let foreign_state = n1.ip(&["xfrm", "state", "list", "spi", "0x2000"]);
    rt().block_on(async {
        lab.reconcile_all(&lab.tunnel).await;
        assert!(lab.ping(1, 2, 1));
        // "restart": a new instance reconciles the same meshes
        let again = tunnel();
        for r in lab.reconcile_all(&again).await {
            assert!(r.is_noop(), "{r:?}");
        }
        assert!(lab.ping(1, 2, 1));
        let inv = again.inventory(&n1.netns()).await.unwrap();
        assert_eq!(inv.foreign, 2, "{inv:?}");
        let r = again.remove(&n1.netns()).await.unwrap();
        assert!(r.removed > 0);
        let inv = again.inventory(&n1.netns()).await.unwrap();
        assert_eq!(
            (inv.states, inv.policies.len(), inv.foreign),
            (0, 0, 2),
            "{inv:?}"
        );
    });
    assert_eq!(
        n1.ip(&["xfrm", "state", "list", "spi", "0x2000"]),
        foreign_state
    );
    assert!(n1
        .ip(&["xfrm", "policy"])
        .contains("src 172.16.0.0/16 dst 172.17.0.0/16"));
    assert!(n1
        .ip(&["link", "show"])
        .lines()
        .all(|l| !l.contains("scrambler0")));
    drop(lab.wire);
}

/// One ESP state of an `ip xfrm state` dump: addresses, SPI and the rfc4106 key‖salt (hex).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct DumpedState {
    src: String,
    dst: String,
    spi: u32,
    key: String,
}

/// The ESP states of a namespace, read back from the kernel.
fn dumped_states(ns: &Ns) -> Vec<DumpedState> {
    let text = ns.ip(&["xfrm", "state"]);
    let mut out = Vec::new();
    for block in text.split("\nsrc ").map(|b| b.trim_start_matches("src ")) {
        let words: Vec<&str> = block.split_whitespace().collect();
        let after = |w: &str| {
            words
                .iter()
                .position(|x| *x == w)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        let (Some(src), Some(dst), Some(spi), Some(aead)) = (
            words.first(),
            after("dst"),
            after("spi"),
            after("rfc4106(gcm(aes))"),
        ) else {
            continue;
        };
        out.push(DumpedState {
            src: src.to_string(),
            dst: dst.to_string(),
            spi: u32::from_str_radix(spi.trim_start_matches("0x"), 16).unwrap(),
            key: aead.trim_start_matches("0x").to_string(),
        });
    }
    out
}

/// Every ESP (source, destination, SPI, sequence number) of a capture, in order.
fn esp_seqs(lines: &[String]) -> Vec<(String, String, u32, u32)> {
    lines
        .iter()
        .filter_map(|l| {
            let (head, esp) = l.split_once("ESP(spi=0x")?;
            let (spi, rest) = esp.split_once(",seq=0x")?;
            let seq = rest.split(')').next()?;
            let addrs: Vec<&str> = head.split_whitespace().collect();
            let gt = addrs.iter().position(|w| *w == ">")?;
            Some((
                addrs.get(gt - 1)?.to_string(),
                addrs.get(gt + 1)?.trim_end_matches(':').to_string(),
                u32::from_str_radix(spi, 16).ok()?,
                u32::from_str_radix(seq, 16).ok()?,
            ))
        })
        .collect()
}

/// The states the kernel holds for the known-answer nodes carry exactly the vectors' SPIs
/// and key‖salt: the kernel dataplane agrees with scrambler-core's derivation, read back
/// from the kernel's own dump.
#[test]
fn vm_xfrm_epoch_installed_states_match_the_known_answer_vectors() {
    if VM.delegate(
        "vm_xfrm_epoch_installed_states_match_the_known_answer_vectors",
        FEATURES,
    ) {
        return;
    }
    use scrambler_core::keys::kat;
    let mut lab = Lab::new();
    for m in lab.meshes.iter_mut() {
        m.keys = scrambler_core::Keys::single(7);
        for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
            for k in [kat::A, kat::B] {
                if n.id == k.id {
                    n.epoch = k.epoch;
                }
            }
        }
    }
    rt().block_on(async {
        for (n, m) in lab.nodes.iter().zip(&lab.meshes).take(2) {
            lab.tunnel
                .reconcile(&n.netns(), m, &kat::secret())
                .await
                .unwrap();
        }
        assert!(lab.ping(1, 2, 2), "both ends derive the same SAs");
    });
    for ns in &lab.nodes[..2] {
        let states = dumped_states(ns);
        for (i, (src, dst)) in [(0, ("1", "2")), (1, ("2", "1"))] {
            let (_, _, _, key, salt, spi) = kat::VECTORS[i];
            let s = states
                .iter()
                .find(|s| s.src == format!("192.0.2.{src}") && s.dst == format!("192.0.2.{dst}"))
                .unwrap_or_else(|| panic!("no state {src} -> {dst}: {states:#?}"));
            assert_eq!(s.spi, spi, "{s:?}");
            assert_eq!(s.key, format!("{key}{salt}"), "{s:?}");
        }
    }
}

/// A node "reboots" — its whole dataplane flushed behind Scrambler's back — while pods
/// send across it, and comes back with a new epoch (no rotation): on the wire no (SPI,
/// sequence number) pair appears twice, every SA involving the node has a new key and SPI
/// (read from the kernel's dumps), the other pairs keep theirs, and pings resume within
/// seconds.
#[test]
fn vm_xfrm_epoch_reboot_rekeys_every_pair_of_the_node_without_rotation() {
    if VM.delegate(
        "vm_xfrm_epoch_reboot_rekeys_every_pair_of_the_node_without_rotation",
        FEATURES,
    ) {
        return;
    }
    let mut lab = Lab::new();
    // captured from before the first SA sends its first packet
    let cap = lab.capture();
    rt().block_on(async {
        lab.reconcile_all(&lab.tunnel).await;
        assert!(lab.ping(1, 2, 2) && lab.ping(3, 1, 2) && lab.ping(2, 3, 2));
        let before: Vec<Vec<DumpedState>> = lab.nodes.iter().map(dumped_states).collect();
        let a = stream(&lab, 1, 2);
        let b = stream(&lab, 3, 1);
        tokio::time::sleep(Duration::from_millis(500)).await;

        // the reboot: everything of node1's dataplane is gone
        let n1 = &lab.nodes[0];
        n1.ip(&["xfrm", "state", "flush"]);
        n1.ip(&["xfrm", "policy", "flush"]);
        n1.ip(&["link", "del", "scrambler0"]);
        assert!(dumped_states(n1).is_empty());
        tokio::time::sleep(Duration::from_millis(300)).await;

        // it comes back with a new epoch, published to its peers; the generation stays
        let old = lab.meshes[0].local.epoch;
        let new = scrambler_core::Epoch::generate(Some(old)).unwrap();
        for m in lab.meshes.iter_mut() {
            for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
                if n.id.get() == 1 {
                    n.epoch = new;
                }
            }
            assert_eq!(m.keys, scrambler_core::Keys::single(1));
        }
        let back = Instant::now();
        lab.reconcile_all(&lab.tunnel).await;
        let resumed = loop {
            if lab.ping(1, 2, 1) && lab.ping(3, 1, 1) {
                break back.elapsed();
            }
            assert!(
                back.elapsed() < Duration::from_secs(10),
                "pings never resumed"
            );
        };
        eprintln!("pings resumed {resumed:?} after the re-apply");
        assert!(resumed < Duration::from_secs(5), "{resumed:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (sent, got) = a.finish();
        assert!(got > 0 && got < sent, "pod1->pod2 {got}/{sent}");
        let (sent, got) = b.finish();
        assert!(got > 0 && got < sent, "pod3->pod1 {got}/{sent}");

        let after: Vec<Vec<DumpedState>> = lab.nodes.iter().map(dumped_states).collect();
        let involves_1 = |s: &DumpedState| s.src == "192.0.2.1" || s.dst == "192.0.2.1";
        let old_keys: std::collections::HashSet<&str> = before
            .iter()
            .flatten()
            .filter(|s| involves_1(s))
            .map(|s| s.key.as_str())
            .collect();
        let old_spis: std::collections::HashSet<u32> = before
            .iter()
            .flatten()
            .filter(|s| involves_1(s))
            .map(|s| s.spi)
            .collect();
        assert_eq!(old_keys.len(), 4, "{before:#?}");
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            // 2 peers x (1 outbound + 1 inbound), no second generation
            assert_eq!(a.len(), 4, "node{}: {a:#?}", i + 1);
            for s in a {
                if involves_1(s) {
                    assert!(!old_keys.contains(s.key.as_str()), "old key back: {s:?}");
                    assert!(!old_spis.contains(&s.spi), "old SPI back: {s:?}");
                    assert_eq!(keys::spi_parts(s.spi).map(|p| p.0), Some(1));
                } else {
                    assert!(b.contains(s), "a pair without node1 was re-keyed: {s:?}");
                }
            }
        }
        let lines = cap.finish();
        assert_no_cleartext(&lines);
        let seqs = esp_seqs(&lines);
        let mut seen = std::collections::HashSet::new();
        for s in &seqs {
            assert!(seen.insert(s), "(SPI, seq) seen twice on the wire: {s:?}");
        }
        // the wire saw the old SAs and the new ones of node1, from sequence number 1
        let new_spis: std::collections::HashSet<u32> = after[0].iter().map(|s| s.spi).collect();
        for spis in [&old_spis, &new_spis] {
            assert!(
                seqs.iter()
                    .any(|(_, _, spi, seq)| spis.contains(spi) && *seq == 1),
                "{spis:x?} not seen from seq 1: {seqs:?}"
            );
        }
    });
}

/// The cluster guard (the mesh's clusterCidrs, 10.0.0.0/8) on the wire, with a default
/// route on every node out of the underlay — the cleartext path a missing guard would
/// open: a pod sending to a node that is not yet in its node's mesh, to a node removed
/// from it, and after `mesh remove` (keeping the guard) while pods still run — 0 cleartext
/// packets; then, as the control, a full remove (guard too) does leak on the same wire.
#[test]
fn vm_xfrm_cluster_guard_covers_unknown_and_removed_nodes_and_mesh_remove() {
    if VM.delegate(
        "vm_xfrm_cluster_guard_covers_unknown_and_removed_nodes_and_mesh_remove",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    for (i, n) in lab.nodes.iter().enumerate() {
        let next = (i + 1) % 3 + 1;
        n.ip(&["route", "add", "default", "via", &format!("192.0.2.{next}")]);
    }
    let t = &lab.tunnel;
    let s = secret();
    rt().block_on(async {
        // 1. nodes 1 and 2 know only each other; node 3 is joining (pods up, not in
        //    their meshes yet, its own mesh applied)
        let m12 = [mesh_of(1, 2, node), mesh_of(2, 2, node)];
        for (n, m) in lab.nodes.iter().zip(&m12) {
            t.reconcile(&n.netns(), m, &s).await.unwrap();
        }
        t.reconcile(&lab.nodes[2].netns(), &lab.meshes[2], &s)
            .await
            .unwrap();
        assert!(lab.ping(1, 2, 2), "pod1 -> pod2 through the mesh");
        let cap = lab.capture();
        assert!(!lab.ping(1, 3, 3), "pod1 -> pod3 (node3 unknown to node1)");
        assert!(!lab.ping(2, 3, 3), "pod2 -> pod3 (node3 unknown to node2)");
        let lines = cap.finish();
        assert_no_cleartext(&lines);
        // 2. node 3 joins everywhere: the same traffic flows, encrypted
        lab.reconcile_all(t).await;
        let cap = lab.capture();
        assert!(lab.ping(1, 3, 2) && lab.ping(3, 2, 2));
        assert_no_cleartext(&cap.finish());
        // 3. node 3 is removed from node 1's mesh while pod1 sends to it
        let cap = lab.capture();
        let r = t
            .reconcile(&lab.nodes[0].netns(), &m12[0], &s)
            .await
            .unwrap();
        assert!(r.removed > 0, "{r:?}");
        assert!(
            !lab.ping(1, 3, 3),
            "pod1 -> pod3 after node3 left node1's mesh"
        );
        assert!(lab.ping(1, 2, 1), "pod1 -> pod2 still up");
        // 4. `mesh remove` on node 1 (the guard stays) while its pod runs
        let r = t.remove_keeping_guard(&lab.nodes[0].netns()).await.unwrap();
        assert!(r.removed > 0, "{r:?}");
        assert!(!lab.ping(1, 2, 3), "pod1 -> pod2 after mesh remove");
        assert!(!lab.ping(1, 3, 3), "pod1 -> pod3 after mesh remove");
        // node-local traffic still flows (bypass): pod1 -> its gateway
        assert_eq!(ping_replies(&lab.pods[0], "10.0.1.1", 1), 1);
        let st = t.status(&lab.nodes[0].netns(), &m12[0]).await.unwrap();
        eprintln!("{}", StatusTable(&st));
        assert!(st.fail_closed && !st.encrypted, "{st:?}");
        let lines = cap.finish();
        assert_no_cleartext(&lines);
        // 5. the control: the guard removed too, the same ping leaks on this wire
        let cap = lab.capture();
        t.remove(&lab.nodes[0].netns()).await.unwrap();
        lab.ping(1, 2, 2);
        let lines = cap.finish();
        assert!(
            !cleartext(&lines).is_empty(),
            "without the guard the capture must see cleartext: {lines:#?}"
        );
    });
}

/// Node ↔ remote pod traffic through the mesh, encrypted, with a default route on every
/// node out of the underlay (the cleartext path): node 1's host namespace pings a pod on
/// node 2 (from its tunnel address 10.0.1.1, the route's source); that pod pings node 1's
/// tunnel address; node 2's host pings node 1's; a NodePort-style DNAT + masquerade
/// (nft, as kube-proxy does) on node 1 forwards a client's pings to the pod on node 2. The
/// host's traffic to a remote pod is dropped once the xfrm interface is gone — 0
/// cleartext pod-CIDR packets on the underlay throughout. (Pods ↔ other nodes' underlay
/// addresses: `vm_xfrm_node_underlay_*`.)
#[test]
fn vm_xfrm_node_and_remote_pods_talk_through_the_mesh() {
    if VM.delegate(
        "vm_xfrm_node_and_remote_pods_talk_through_the_mesh",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    for (i, n) in lab.nodes.iter().enumerate() {
        let next = (i + 1) % 3 + 1;
        n.ip(&["route", "add", "default", "via", &format!("192.0.2.{next}")]);
    }
    // a client on the underlay (the bridge's own address)
    lab.wire
        .ip(&["addr", "add", "192.0.2.100/24", "dev", "br0"]);
    let (n1, n2) = (&lab.nodes[0], &lab.nodes[1]);
    rt().block_on(async {
        lab.reconcile_all(&lab.tunnel).await;
        let route = n1.ip(&["route", "get", "10.0.2.2"]);
        assert!(
            route.contains("dev scrambler0") && route.contains("src 10.0.1.1"),
            "{route}"
        );
        let cap = lab.capture();
        // host -> remote pod, remote pod -> node, node -> node (tunnel addresses)
        assert_eq!(ping_replies(n1, "10.0.2.2", 3), 3, "node1 -> pod2");
        assert_eq!(
            ping_replies(&lab.pods[1], "10.0.1.1", 3),
            3,
            "pod2 -> node1"
        );
        assert_eq!(ping_replies(n2, "10.0.1.1", 2), 2, "node2 -> node1");
        // NodePort-style: the client pings node 1's underlay address, node 1 DNATs to
        // pod 2 and masquerades; node 1 itself answers no ping, so every reply is pod 2's
        n1.exec(&["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"]);
        assert_eq!(
            ping_replies(&lab.wire, "192.0.2.1", 1),
            0,
            "node1 is silent"
        );
        for rule in [
            "add table ip np",
            "add chain ip np pre { type nat hook prerouting priority -100 ; }",
            "add chain ip np post { type nat hook postrouting priority 100 ; }",
            "add rule ip np pre ip daddr 192.0.2.1 icmp type echo-request counter dnat to 10.0.2.2",
            "add rule ip np post ip daddr 10.0.2.2 counter masquerade",
        ] {
            let (ok, out) = n1.exec(&["sh", "-c", &format!("nft '{rule}'")]);
            assert!(ok, "nft {rule}: {out}");
        }
        assert_eq!(
            ping_replies(&lab.wire, "192.0.2.1", 3),
            3,
            "NodePort -> pod2"
        );
        let (_, rules) = n1.exec(&["nft", "list", "table", "ip", "np"]);
        eprintln!("{rules}");
        assert!(
            !rules.contains("packets 0 "),
            "every NAT rule matched: {rules}"
        );
        // the interface gone: the host's traffic to a remote pod meets the guard
        n1.ip(&["link", "del", "scrambler0"]);
        assert_eq!(
            ping_replies(n1, "10.0.2.2", 2),
            0,
            "node1 -> pod2 without interface"
        );
        let lines = cap.finish();
        assert_no_cleartext(&lines);
        let esp = lines.iter().filter(|l| l.contains("ESP")).count();
        // 3 + 3 + 2 + 3 round trips through the mesh
        assert!(esp >= 22, "ESP packets on the wire: {lines:#?}");
    });
}

/// A TCP listener on `addr` in `ns` (a host process such as the API server on :6443): it
/// answers every connection's first line `x` with `ok x`.
fn tcp_listener(ns: &Ns, addr: &str) {
    let addr = addr.to_string();
    let listener = ns
        .netns()
        .run(move || Ok(std::net::TcpListener::bind(&addr).unwrap()))
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Write};
                c.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut line = String::new();
                if BufReader::new(&c).read_line(&mut line).is_ok() {
                    let _ = write!(c, "ok {line}");
                }
            });
        }
    });
}

/// Connects from `ns` to `to` (`addr:port`), sends a line and reads the answer; true when
/// [`tcp_listener`]'s answer came back within 4 s.
fn tcp_round_trip(ns: &Ns, to: &str) -> bool {
    use std::io::{BufRead, BufReader, Write};
    let to: std::net::SocketAddr = to.parse().unwrap();
    let conn = ns
        .netns()
        .run(move || {
            Ok(std::net::TcpStream::connect_timeout(
                &to,
                Duration::from_secs(4),
            ))
        })
        .unwrap();
    let ok = (|| {
        let mut c = conn?;
        c.set_read_timeout(Some(Duration::from_secs(4)))?;
        writeln!(c, "hello")?;
        let mut line = String::new();
        BufReader::new(&c).read_line(&mut line)?;
        Ok::<_, std::io::Error>(line == "ok hello\n")
    })();
    eprintln!("tcp {} -> {to}: {ok:?}", ns.name);
    matches!(ok, Ok(true))
}

/// Pods ↔ another node's *underlay* address through the mesh (the `kubernetes` Service
/// DNATed to a control-plane node's address, kubelet on :10250, hostNetwork pods addressed
/// by node IP), with every node's default route out of the underlay (the cleartext path):
/// pod 2 pings node 1's underlay address and opens a TCP connection to a host listener on
/// 192.0.2.1:6443, directly and through a ClusterIP-style DNAT on node 2
/// (10.96.0.1:443 → 192.0.2.1:6443, as kube-proxy does); node 1's host reaches pod 2 from
/// its underlay address too; a NodePort-style DNAT on node 1 serves node 3's host (a
/// peer) from pods on nodes 1 and 2, and pod 2 from the pod on node 1 (loose reverse-path
/// filtering, systemd's default). 0 cleartext on the underlay, replies included. Node 2's
/// outbound SA to node 1 deleted, then its xfrm interface, then its mesh removed (guard
/// kept): dropped, never cleartext. The control: with node 2's guard removed too, the
/// same ping leaks on this wire — and node 1 refuses that cleartext (its guard on its own
/// address), so there is no answer.
#[test]
fn vm_xfrm_node_underlay_addresses_are_reached_by_remote_pods_through_the_mesh() {
    if VM.delegate(
        "vm_xfrm_node_underlay_addresses_are_reached_by_remote_pods_through_the_mesh",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    for (i, n) in lab.nodes.iter().enumerate() {
        let next = (i + 1) % 3 + 1;
        n.ip(&["route", "add", "default", "via", &format!("192.0.2.{next}")]);
    }
    let (n1, n2, n3, pod2) = (&lab.nodes[0], &lab.nodes[1], &lab.nodes[2], &lab.pods[1]);
    tcp_listener(n1, "192.0.2.1:6443");
    tcp_listener(&lab.pods[0], "10.0.1.2:8080");
    tcp_listener(pod2, "10.0.2.2:8080");
    // loose reverse-path filtering, as systemd sets it (strict filtering on the underlay
    // drops a peer host's packets DNATed to a local pod: README)
    for n in &lab.nodes {
        n.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=2"]);
    }
    rt().block_on(async {
        lab.reconcile_all(&lab.tunnel).await;
        // pod traffic to a peer's underlay address is steered into the interface; the
        // node's own (ESP included) is not
        let pods_route = n2.ip(&[
            "route",
            "get",
            "192.0.2.1",
            "from",
            "10.0.2.2",
            "iif",
            "pod0",
        ]);
        assert!(pods_route.contains("dev scrambler0"), "{pods_route}");
        let own_route = n2.ip(&["route", "get", "192.0.2.1"]);
        assert!(own_route.contains("dev ul0"), "{own_route}");
        eprintln!("{}", n2.ip(&["rule"]));
        let cap = lab.capture();
        assert_eq!(
            ping_replies(pod2, "192.0.2.1", 3),
            3,
            "pod2 -> node1 underlay"
        );
        assert!(tcp_round_trip(pod2, "192.0.2.1:6443"), "pod2 -> node1:6443");
        // ClusterIP-style: a virtual address DNATed to the peer's underlay address
        for rule in [
            "add table ip svc",
            "add chain ip svc pre { type nat hook prerouting priority -100 ; }",
            "add rule ip svc pre ip daddr 10.96.0.1 tcp dport 443 counter dnat to 192.0.2.1:6443",
        ] {
            let (ok, out) = n2.exec(&["sh", "-c", &format!("nft '{rule}'")]);
            assert!(ok, "nft {rule}: {out}");
        }
        assert!(
            tcp_round_trip(pod2, "10.96.0.1:443"),
            "pod2 -> ClusterIP -> node1:6443"
        );
        let (_, rules) = n2.exec(&["nft", "list", "table", "ip", "svc"]);
        assert!(!rules.contains("packets 0 "), "the DNAT matched: {rules}");
        // NodePort-style on node 1 (DNAT of 192.0.2.1:3000x), called by node 3's host and
        // by pod 2: served by the pod on node 1 (its replies to node 3's host are routed
        // into the mesh by their pod source and leave it from node 1's address once the
        // DNAT is undone) and by the pod on node 2 (masquerade; replies to node 3's host
        // leave in the clear host to host, as the request came)
        for rule in [
            "add table ip np",
            "add chain ip np pre { type nat hook prerouting priority -100 ; }",
            "add chain ip np post { type nat hook postrouting priority 100 ; }",
            "add rule ip np pre ip daddr 192.0.2.1 tcp dport 30001 counter dnat to 10.0.1.2:8080",
            "add rule ip np pre ip daddr 192.0.2.1 tcp dport 30002 counter dnat to 10.0.2.2:8080",
            "add rule ip np post ip daddr 10.0.2.2 tcp dport 8080 counter masquerade",
        ] {
            let (ok, out) = n1.exec(&["sh", "-c", &format!("nft '{rule}'")]);
            assert!(ok, "nft {rule}: {out}");
        }
        let np = [
            tcp_round_trip(n3, "192.0.2.1:30001"),
            tcp_round_trip(n3, "192.0.2.1:30002"),
            tcp_round_trip(pod2, "192.0.2.1:30001"),
        ];
        if np != [true; 3] {
            let diag = |n: &Ns| {
                let cmd = "nft list table ip np 2>/dev/null; ip -s link show scrambler0; \
                           nstat -az 2>/dev/null | awk '$2 != 0'; \
                           awk '$2 != 0' /proc/net/xfrm_stat; ip -s xfrm state | grep -c esp";
                n.exec(&["sh", "-c", cmd]).1
            };
            let (d1, d3) = (diag(n1), diag(n3));
            let lines = cap.finish();
            let seen: Vec<_> = lines
                .iter()
                .filter(|l| l.contains("192.0.2.3") || l.contains(" 10.0."))
                .collect();
            panic!(
                "NodePort node3 -> pod1, node3 -> pod2, pod2 -> pod1: {np:?}\n\
                 node1: {d1}\nnode3: {d3}\nwire: {seen:#?}"
            );
        }
        let (_, rules) = n1.exec(&["nft", "list", "table", "ip", "np"]);
        eprintln!("{rules}");
        assert!(
            !rules.contains("packets 0 "),
            "every NAT rule matched: {rules}"
        );
        // node 1's host to the pod from its underlay address: encrypted too
        let (_, out) = n1.exec(&[
            "busybox",
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            "-I",
            "192.0.2.1",
            "10.0.2.2",
        ]);
        assert!(
            out.contains("2 packets received"),
            "node1 (underlay) -> pod2: {out}"
        );
        let lines = cap.finish();
        assert_no_cleartext(&lines);
        let esp = lines.iter().filter(|l| l.contains("ESP")).count();
        // 3 pings + 2 pings, both ways, and five TCP connections
        assert!(
            esp >= 2 * (3 + 2) + 5 * 6,
            "ESP packets on the wire: {lines:#?}"
        );

        // fail closed: node 2's outbound SA to node 1 gone
        let cap = lab.capture();
        n2.ip(&[
            "xfrm",
            "state",
            "deleteall",
            "src",
            "192.0.2.2",
            "dst",
            "192.0.2.1",
            "proto",
            "esp",
        ]);
        assert_eq!(ping_replies(pod2, "192.0.2.1", 2), 0, "without the SA");
        assert!(!tcp_round_trip(pod2, "192.0.2.1:6443"), "without the SA");
        // the interface gone (its routes with it): the main table and the guard
        n2.ip(&["link", "del", "scrambler0"]);
        assert_eq!(
            ping_replies(pod2, "192.0.2.1", 2),
            0,
            "without the interface"
        );
        assert!(
            !tcp_round_trip(pod2, "10.96.0.1:443"),
            "without the interface"
        );
        // node 1 leaves node 2's mesh (its lease expired, it left the mesh file): node 1's
        // mesh policies and table route go, its underlay block stays (a tombstone), so
        // pod 2's traffic to it is dropped, not sent in the clear over the main table
        let mut without_n1 = lab.meshes[1].clone();
        without_n1
            .peers
            .retain(|p| p.name != lab.meshes[0].local.name);
        assert_eq!(without_n1.peers.len(), 1);
        lab.tunnel
            .reconcile(&n2.netns(), &without_n1, &secret())
            .await
            .unwrap();
        let table = n2.ip(&["route", "show", "table", "92"]);
        assert!(!table.contains("192.0.2.1"), "{table}");
        let pods_route = n2.ip(&[
            "route",
            "get",
            "192.0.2.1",
            "from",
            "10.0.2.2",
            "iif",
            "pod0",
        ]);
        assert!(!pods_route.contains("scrambler0"), "{pods_route}");
        assert_eq!(ping_replies(pod2, "192.0.2.1", 2), 0, "node1 left the mesh");
        assert!(
            !tcp_round_trip(pod2, "192.0.2.1:6443"),
            "node1 left the mesh"
        );
        // `mesh remove` keeping the guard: rule and table entries gone, the guard stays
        lab.tunnel.remove_keeping_guard(&n2.netns()).await.unwrap();
        let rules = n2.ip(&["rule"]);
        assert!(!rules.contains("proto 92"), "{rules}");
        assert!(n2.ip(&["route", "show", "table", "92"]).trim().is_empty());
        assert_eq!(ping_replies(pod2, "192.0.2.1", 2), 0, "after mesh remove");
        let lines = cap.finish();
        assert_no_cleartext(&lines);

        // the control: without node 2's guard the request leaks, and node 1 drops it
        // (its guard, not reverse-path filtering: that goes back to loose here)
        n1.exec(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"]);
        let cap = lab.capture();
        lab.tunnel.remove(&n2.netns()).await.unwrap();
        assert_eq!(
            ping_replies(pod2, "192.0.2.1", 2),
            0,
            "node1 refuses cleartext"
        );
        let lines = cap.finish();
        assert!(
            !cleartext(&lines).is_empty(),
            "without the guard the capture must see cleartext: {lines:#?}"
        );
        let st = lab
            .tunnel
            .status(&n1.netns(), &lab.meshes[0])
            .await
            .unwrap();
        assert!(st.errors.contains_key("XfrmInPolBlock"), "{:?}", st.errors);
    });
}

/// An epoch change without a reset (what the agent does after a lost or refused outbound
/// SA): node1 takes a new epoch and keeps the old one's inbound states until a deadline
/// (`previousEpochs`). Its peers learn of the new epoch only 400 ms later, and meanwhile
/// keep sending under the old one: node1 receives all of it (pod3 → pod1 loses nothing),
/// while the other direction (pod1 → pod2, under node1's new epoch, which node2 cannot
/// receive before it re-keys) is dropped until then — never sent in clear. After the
/// deadline a reconcile deletes the kept states.
#[test]
fn vm_xfrm_epoch_change_without_reset_keeps_the_old_inbound_states() {
    if VM.delegate(
        "vm_xfrm_epoch_change_without_reset_keeps_the_old_inbound_states",
        FEATURES,
    ) {
        return;
    }
    let mut lab = Lab::new();
    let cap = lab.capture();
    rt().block_on(async {
        lab.reconcile_all(&lab.tunnel).await;
        assert!(lab.ping(1, 2, 2) && lab.ping(3, 1, 2));
        let a = stream(&lab, 3, 1);
        let b = stream(&lab, 1, 2);
        tokio::time::sleep(Duration::from_millis(300)).await;

        // node1 alone moves to a new epoch, keeping the old one
        let old = lab.meshes[0].local.epoch;
        let new = scrambler_core::Epoch::generate(Some(old)).unwrap();
        let m1 = &mut lab.meshes[0];
        m1.local.epoch = new;
        m1.local.previous_epochs = vec![scrambler_core::PreviousEpoch {
            epoch: old,
            until: scrambler_core::mesh::unix_now() + 600,
        }];
        let n1 = lab.nodes[0].netns();
        lab.tunnel
            .reconcile(&n1, &lab.meshes[0], &secret())
            .await
            .unwrap();
        // 2 peers × (new outbound + new inbound + kept inbound)
        assert_eq!(lab.tunnel.inventory(&n1).await.unwrap().states, 6);
        let st = lab.tunnel.status(&n1, &lab.meshes[0]).await.unwrap();
        assert!(
            st.fail_closed && st.peers.iter().all(|p| p.is_up()),
            "{}",
            StatusTable(&st)
        );
        tokio::time::sleep(Duration::from_millis(400)).await;

        // the peers re-key with node1's new epoch
        for m in lab.meshes[1..].iter_mut() {
            for p in m.peers.iter_mut().filter(|p| p.id.get() == 1) {
                p.epoch = new;
            }
        }
        for i in 1..3 {
            let n = lab.nodes[i].netns();
            lab.tunnel
                .reconcile(&n, &lab.meshes[i], &secret())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (sent, got) = a.finish();
        eprintln!("pod3 -> pod1 (peer still under node1's old epoch): {got}/{sent}");
        assert!(sent > 100, "stream too short: {sent}");
        assert_eq!(
            got, sent,
            "pod3 -> pod1 lost packets across node1's epoch change"
        );
        let (sent, got) = b.finish();
        eprintln!("pod1 -> pod2 (node1's new epoch before node2 re-keyed): {got}/{sent}");
        assert!(
            got < sent,
            "pod1 -> pod2 lost nothing: was node1's epoch changed?"
        );
        assert!(lab.ping(1, 2, 2) && lab.ping(3, 1, 2));

        // after the deadline a reconcile deletes the kept states, only them
        lab.meshes[0].local.previous_epochs[0].until = 1;
        let r = lab
            .tunnel
            .reconcile(&n1, &lab.meshes[0], &secret())
            .await
            .unwrap();
        assert_eq!(r.removed, 2, "{r:?}");
        assert_eq!(lab.tunnel.inventory(&n1).await.unwrap().states, 4);
        assert!(lab.ping(1, 2, 2) && lab.ping(3, 1, 2));
    });
    assert_no_cleartext(&cap.finish());
}
