//! Interop of the two dataplanes (issue #8): a node running the VPP backend
//! ([`VppTunnel`]) and a node running the kernel backend ([`XfrmTunnel`]) in ONE mesh,
//! with one cluster secret, exchange ESP both ways — same SPIs, keys, salts, ESN and
//! replay window on both ends — and keep talking through a key rotation.
//!
//! ```text
//!  pod A (netns) ── veth ── node A: VPP (af_packet vpod0, ul0) ─┐
//!                                                               wire: bridge br0 (tcpdump)
//!  pod B (netns) ── veth ── node B: kernel, scrambler0 (xfrm) ─┘
//! ```
//!
//! The kernel side needs ESP states and xfrm interfaces: on a kernel without them (the
//! build machine's) the test re-runs in Debian's stock kernel under qemu. The guest sees
//! the host's root, so the VPP tree the host extracted to `target/vpp-dist/vpp` is used as
//! is (extracted before booting).
//!
//! The pod's VPP interface is made with `AF_PACKET_API_FLAG_CKSUM_GSO`, as
//! `scrambler_vpp::attach` does: without it, UDP/TCP from a pod behind VPP leaves the pod's
//! veth with only a partial (offloaded) checksum, VPP encrypts it as is, and the kernel
//! peer drops every datagram after decryption (`InCsumErrors`); ICMP is unaffected.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use scrambler_core::keys::spi;
use scrambler_core::{
    Cluster, ClusterSecret, Keys, Mesh, Netns, Node, NodeId, ReconcileReport, Result, Tunnel,
    TunnelStatus,
};
use scrambler_testkit::netns::{veth, TestNetns};
use scrambler_testkit::vm::{Feature, VmSuite};
use scrambler_testkit::vpp::{quiet_ipv6, vpp_dist, VppInstance};
use scrambler_testkit::wire::{capture_bridge, ping_replies, Stream};
use scrambler_vpp::VppTunnel;
use scrambler_vpp_api::api::ipsec::IpsecSaV5Dump;
use scrambler_vpp_api::api::types::AfPacketFlags;
use scrambler_xfrm::{rotate, StatusTable, XfrmConfig, XfrmTunnel};

const FEATURES: &[Feature] = &[Feature::Esp, Feature::XfrmInterface];

/// The VPP tree is extracted on the host (failing, naming how to provide a VPP, when there
/// is none): the guest sees the host's tree read-only.
static VM: VmSuite = VmSuite::with("vm_interop_", |t| {
    t.with_env("SCRAMBLER_VPP_DIST", vpp_dist().display().to_string())
        .memory_mb(1536)
        .timeout(Duration::from_secs(900))
});

const A: u32 = 1; // the VPP node
const B: u32 = 2; // the kernel node

fn id(n: u32) -> NodeId {
    NodeId::new(n).unwrap()
}

/// Node `n`: underlay 192.0.2.n, pod CIDR 10.0.n.0/24.
/// Node `n` as one end of an SA (its id and the epoch of [`mesh_node`]).
fn inc(n: u32) -> scrambler_core::Incarnation {
    mesh_node("x", n).incarnation()
}

fn mesh_node(name: &str, n: u32) -> Node {
    Node {
        name: name.into(),
        id: id(n),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(n)).unwrap(),
        underlay: vec![format!("192.0.2.{n}").parse().unwrap()],
        pod_cidrs: vec![format!("10.0.{n}.0/24").parse().unwrap()],
        previous_epochs: Vec::new(),
    }
}

fn secret() -> ClusterSecret {
    ClusterSecret::from_bytes(vec![0x5a; 32]).unwrap()
}

/// One [`Tunnel`] for the whole (mixed) cluster, so the crates' rotation helper can drive
/// it: VPP for node A's namespace, the kernel for every other.
struct Mixed {
    vpp_node: Netns,
    vpp: VppTunnel,
    xfrm: XfrmTunnel,
}

impl Mixed {
    fn pick(&self, netns: &Netns) -> &dyn Tunnel {
        if *netns == self.vpp_node {
            &self.vpp
        } else {
            &self.xfrm
        }
    }
}

#[async_trait]
impl Tunnel for Mixed {
    async fn reconcile(
        &self,
        netns: &Netns,
        mesh: &Mesh,
        secret: &ClusterSecret,
    ) -> Result<ReconcileReport> {
        self.pick(netns).reconcile(netns, mesh, secret).await
    }
    async fn status(&self, netns: &Netns, mesh: &Mesh) -> Result<TunnelStatus> {
        self.pick(netns).status(netns, mesh).await
    }
    async fn remove(&self, netns: &Netns) -> Result<ReconcileReport> {
        self.pick(netns).remove(netns).await
    }
    async fn remove_keeping_guard(&self, netns: &Netns) -> Result<ReconcileReport> {
        self.pick(netns).remove_keeping_guard(netns).await
    }
}

/// A pod namespace behind `node` on veth `node_if` — `eth0`, address 10.0.n.2.
fn pod(node: &TestNetns, node_if: &str, n: u32) -> TestNetns {
    let p = TestNetns::new(&format!("ipod{n}"));
    quiet_ipv6(&p);
    veth(node, node_if, &p, "eth0");
    let mtu = scrambler_core::esp::pod_mtu(1500, false).to_string();
    p.ip(&["link", "set", "eth0", "mtu", &mtu]);
    p.ip(&["addr", "add", &format!("10.0.{n}.2/24"), "dev", "eth0"]);
    p.ip(&["route", "add", "default", "via", &format!("10.0.{n}.1")]);
    p
}

/// Ping from `pod` to pod `to`; the number of replies.
fn ping(pod: &TestNetns, to: u32, count: u32) -> u32 {
    ping_replies(pod, &format!("10.0.{to}.2"), count)
}

/// Every captured packet must be ESP between the two underlay addresses; returns the
/// SPIs seen per direction `(A->B, B->A)`.
fn esp_only(lines: &[String]) -> (BTreeSet<u32>, BTreeSet<u32>) {
    let (mut ab, mut ba) = (BTreeSet::new(), BTreeSet::new());
    for l in lines {
        // "12:00:00.000000 IP 192.0.2.1 > 192.0.2.2: ESP(spi=0x01000102,seq=0x1), length 104"
        let spi = l
            .split("ESP(spi=0x")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|h| u32::from_str_radix(h, 16).ok());
        let Some(spi) = spi else {
            panic!("not ESP on the underlay: {l}\nall: {lines:#?}");
        };
        if l.contains(" 192.0.2.1 > 192.0.2.2: ") {
            ab.insert(spi);
        } else if l.contains(" 192.0.2.2 > 192.0.2.1: ") {
            ba.insert(spi);
        } else {
            panic!("ESP between unexpected addresses: {l}");
        }
    }
    (ab, ba)
}

/// Numbered UDP datagrams from pod `from` (10.0.f.2) to pod `to` every 10 ms.
fn stream(from: (&TestNetns, u32), to: (&TestNetns, u32)) -> Stream {
    Stream::start(
        (&from.0.netns(), &format!("10.0.{}.2", from.1)),
        (&to.0.netns(), &format!("10.0.{}.2", to.1)),
        Duration::from_millis(10),
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn vm_interop_vpp_node_and_kernel_node_exchange_esp() {
    if VM.delegate("vm_interop_vpp_node_and_kernel_node_exchange_esp", FEATURES) {
        return;
    }
    rt().block_on(interop());
}

async fn interop() {
    // the wire: a bridge in its own namespace, where the capture runs
    let wire = TestNetns::new("iwire");
    quiet_ipv6(&wire);
    wire.ip(&["link", "add", "br0", "type", "bridge"]);
    wire.ip(&["link", "set", "br0", "up"]);

    // node A: VPP owning ul0 and vpod0 through af_packet
    let started = Instant::now();
    let vpp = VppInstance::start("inva", 0).await;
    eprintln!("VPP up in {:?}", started.elapsed());
    let na = &vpp.netns;
    quiet_ipv6(na);
    veth(na, "ul0", &wire, "w1");
    let pod_a = pod(na, "vpod0", A);
    vpp.host_interface("ul0", [2, 0xfe, 0, 0, 1, 1], "192.0.2.1/24")
        .await;
    vpp.host_interface_with(
        "vpod0",
        [2, 0xfe, 0, 0, 2, 1],
        "10.0.1.1/24",
        AfPacketFlags::AF_PACKET_API_FLAG_CKSUM_GSO,
    )
    .await;

    // node B: the kernel, routing its pod
    let nb = TestNetns::new("invb");
    quiet_ipv6(&nb);
    veth(&nb, "ul0", &wire, "w2");
    nb.ip(&["addr", "add", "192.0.2.2/24", "dev", "ul0"]);
    nb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let pod_b = pod(&nb, "pod0", B);
    nb.ip(&["addr", "add", "10.0.2.1/24", "dev", "pod0"]);
    for w in ["w1", "w2"] {
        wire.ip(&["link", "set", w, "master", "br0"]);
    }

    let tunnel = Mixed {
        vpp_node: na.netns(),
        vpp: VppTunnel::new(vpp.api_sock()),
        xfrm: XfrmTunnel::new(XfrmConfig::default()).unwrap(),
    };
    let cluster = Cluster {
        nodes: vec![mesh_node("vpp-a", A), mesh_node("kernel-b", B)],
        keys: Keys::single(1),
        cluster_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
        node_encryption: None,
    };
    let nodes = vec![
        (na.netns(), cluster.mesh_for("vpp-a").unwrap()),
        (nb.netns(), cluster.mesh_for("kernel-b").unwrap()),
    ];
    let s = secret();
    for (ns, m) in &nodes {
        let r = tunnel.reconcile(ns, m, &s).await.unwrap();
        eprintln!("{}: {r:?}", m.local.name);
        assert!(r.added > 0, "{r:?}");
    }
    for (ns, m) in &nodes {
        let r = tunnel.reconcile(ns, m, &s).await.unwrap();
        assert!(r.is_noop(), "second reconcile of {}: {r:?}", m.local.name);
    }

    // pods ping both ways; only ESP with the derived SPIs on the wire
    vpp.vppctl(&["trace", "add", "af-packet-input", "20"]);
    let cap = capture_bridge(&wire);
    let warm = ping(&pod_a, B, 4); // VPP drops the packet that triggers its ARP
    assert!(
        warm >= 3,
        "pod A (VPP) -> pod B (kernel): {warm}/4 replies\n{}",
        vpp_debug(&vpp)
    );
    assert_eq!(
        ping(&pod_b, A, 3),
        3,
        "pod B (kernel) -> pod A (VPP)\n{}",
        vpp_debug(&vpp)
    );
    assert_eq!(ping(&pod_a, B, 3), 3, "pod A (VPP) -> pod B (kernel)");
    let lines = cap.finish();
    let (ab, ba) = esp_only(&lines);
    eprintln!("generation 1 on the wire: A->B {ab:#010x?}, B->A {ba:#010x?}");
    assert_eq!(ab, BTreeSet::from([spi(inc(A), inc(B), 1)]), "{lines:#?}");
    assert_eq!(ba, BTreeSet::from([spi(inc(B), inc(A), 1)]), "{lines:#?}");
    assert!(lines.len() >= 2 * (4 + 3 + 3) - 2, "{lines:#?}");

    // both ends agree on ESN and the replay window
    let states = nb.ip(&["-s", "xfrm", "state"]);
    eprintln!("kernel states:\n{states}");
    let esn_states = states
        .lines()
        .filter(|l| l.contains(" flag ") && l.contains(" esn "))
        .count();
    assert_eq!(esn_states, 2, "{states}");
    assert_eq!(states.matches("replay_window 1024").count(), 2, "{states}");
    let sas = vpp.vppctl(&["show", "ipsec", "sa"]);
    eprintln!("VPP SAs:\n{sas}");
    for line in sas.lines().filter(|l| l.contains("spi")) {
        assert!(
            line.contains("esn") && line.contains("anti-replay"),
            "{line}"
        );
    }
    // ... and on the sequence numbers: what one end sent is what the other accepted
    let (a_out, a_in) = vpp_seqs(&vpp, spi(inc(A), inc(B), 1), spi(inc(B), inc(A), 1)).await;
    let (_, b_in) = kernel_seqs(&states, "192.0.2.1");
    let (b_out, _) = kernel_seqs(&states, "192.0.2.2");
    eprintln!("sequence numbers: A->B sent {a_out} got {b_in}; B->A sent {b_out} got {a_in}");
    assert!(a_out >= 10 && b_out >= 10, "{a_out} {b_out}");
    assert_eq!((a_out, b_out), (b_in, a_in));
    for (ns, m) in &nodes {
        let st = tunnel.status(ns, m).await.unwrap();
        eprintln!("{}", StatusTable(&st));
        assert!(st.encrypted && st.fail_closed, "{st:?}");
        assert!(st.peers[0].is_up(), "{st:?}");
    }
    let kb = tunnel.status(&nb.netns(), &nodes[1].1).await.unwrap();
    let p = &kb.peers[0];
    assert!(p.packets_in >= 9 && p.packets_out >= 9, "{p:?}");
    assert_eq!((p.replay_errors, p.integrity_errors), (0, 0), "{p:?}");

    // rotation 1 -> 2 across the mixed mesh under load in both directions
    let to_kernel = stream((&pod_a, A), (&pod_b, B));
    let to_vpp = stream((&pod_b, B), (&pod_a, A));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let done = rotate(&tunnel, &nodes, &s, 2, Duration::from_secs(1))
        .await
        .unwrap();
    eprintln!("rotation took {:?}", t0.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, got) = to_kernel.finish();
    eprintln!("during rotation pod A -> pod B: {got}/{sent}");
    let (sent2, got2) = to_vpp.finish();
    eprintln!("during rotation pod B -> pod A: {got2}/{sent2}");
    assert!(sent > 50 && sent2 > 50, "streams too short: {sent} {sent2}");
    if got != sent {
        eprintln!(
            "pod B UDP counters:\n{}",
            pod_b.exec(&["cat", "/proc/net/snmp"]).1
        );
    }
    assert_eq!(got, sent, "VPP -> kernel lost packets during rotation");
    assert_eq!(got2, sent2, "kernel -> VPP lost packets during rotation");

    let cap = capture_bridge(&wire);
    assert_eq!(ping(&pod_a, B, 3), 3, "pod A -> pod B after rotation");
    assert_eq!(ping(&pod_b, A, 3), 3, "pod B -> pod A after rotation");
    let lines = cap.finish();
    let (ab, ba) = esp_only(&lines);
    eprintln!("generation 2 on the wire: A->B {ab:#010x?}, B->A {ba:#010x?}");
    assert_eq!(ab, BTreeSet::from([spi(inc(A), inc(B), 2)]), "{lines:#?}");
    assert_eq!(ba, BTreeSet::from([spi(inc(B), inc(A), 2)]), "{lines:#?}");
    for ((ns, _), m) in nodes.iter().zip(&done.meshes) {
        let st = tunnel.status(ns, m).await.unwrap();
        let p = &st.peers[0];
        assert!(st.encrypted && p.is_up(), "{st:?}");
        assert_eq!(
            (p.tx_generation, p.rx_generations.clone()),
            (Some(2), vec![2])
        );
    }

    // clean up what we own on both nodes
    for (ns, _) in &nodes {
        tunnel.remove(ns).await.unwrap();
    }
    assert_eq!(
        ping(&pod_b, A, 1),
        0,
        "pods still reach each other after remove"
    );
    drop(vpp);
}

/// `(outbound sequence number, highest inbound one)` of VPP's SAs with SPIs `out`, `inb`;
/// asserts both have the mesh's replay window.
async fn vpp_seqs(vpp: &VppInstance, out: u32, inb: u32) -> (u64, u64) {
    let c = vpp.client().await;
    let sas = c.dump(&IpsecSaV5Dump { sa_id: u32::MAX }).await.unwrap();
    c.close().await.unwrap();
    let find = |spi: u32| {
        let d = sas
            .iter()
            .find(|d| d.entry.spi == spi)
            .unwrap_or_else(|| panic!("no VPP SA with SPI {spi:#x}"));
        assert_eq!(
            d.entry.anti_replay_window_size,
            scrambler_core::esp::REPLAY_WINDOW,
            "SA {spi:#x}"
        );
        d
    };
    (find(out).seq_outbound, find(inb).last_seq_inbound)
}

/// `(outbound, highest inbound)` 64-bit (ESN) sequence numbers of the kernel state whose
/// source is `src`, from `ip -s xfrm state` text.
fn kernel_seqs(states: &str, src: &str) -> (u64, u64) {
    let block = states
        .split("\nsrc ")
        .find(|b| b.trim_start_matches("src ").starts_with(&format!("{src} ")))
        .unwrap_or_else(|| panic!("no state from {src}: {states}"));
    // "seq-hi 0x0, seq 0xa, oseq-hi 0x0, oseq 0x0"
    let line = block
        .lines()
        .find(|l| l.contains("seq-hi"))
        .unwrap_or_else(|| panic!("no ESN context: {block}"));
    let field = |name: &str| {
        line.split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (
        field("oseq-hi ") << 32 | field("oseq "),
        field("seq-hi ") << 32 | field("seq "),
    )
}

fn vpp_debug(vpp: &VppInstance) -> String {
    [
        vpp.vppctl(&["show", "errors"]),
        vpp.vppctl(&["show", "ipsec", "all"]),
        vpp.vppctl(&["show", "trace"]),
    ]
    .join("\n")
}
