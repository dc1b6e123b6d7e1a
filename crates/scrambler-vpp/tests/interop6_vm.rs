//! Interop of the two dataplanes over an IPv6 underlay: a VPP node ([`VppTunnel`]) and a
//! kernel node ([`XfrmTunnel`]) in one mesh whose underlay addresses are IPv6 (IPv4 pods:
//! VPP refuses IPv6 pod CIDRs), exchanging ESP over IPv6 both ways with the derived SPIs.
//!
//! The kernel side needs ESP states and xfrm interfaces: on a kernel without them the test
//! re-runs in Debian's stock kernel under qemu, with the VPP tree the host extracted.

use std::collections::BTreeSet;

use scrambler_core::keys::spi;
use scrambler_core::{Cluster, ClusterSecret, Keys, Node, NodeId, Tunnel};
use scrambler_testkit::capture::Capture;
use scrambler_testkit::netns::{veth, TestNetns};
use scrambler_testkit::vm::{Feature, VmSuite};
use scrambler_testkit::vpp::{quiet_ipv6, vpp_dist, VppInstance};
use scrambler_testkit::wire::ping_replies;
use scrambler_vpp::VppTunnel;
use scrambler_vpp_api::api::types::AfPacketFlags;
use scrambler_xfrm::{XfrmConfig, XfrmTunnel};
use std::time::Duration;

const FEATURES: &[Feature] = &[Feature::Esp, Feature::XfrmInterface];

static VM: VmSuite = VmSuite::with("vm_interop6_", |t| {
    t.with_env("SCRAMBLER_VPP_DIST", vpp_dist().display().to_string())
        .memory_mb(1536)
        .timeout(Duration::from_secs(900))
});

const A: u32 = 1; // the VPP node
const B: u32 = 2; // the kernel node

/// Node `n`: underlay fd00:2::n, pod CIDR 10.0.n.0/24.
fn mesh_node(name: &str, n: u32) -> Node {
    Node {
        name: name.into(),
        id: NodeId::new(n).unwrap(),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(n)).unwrap(),
        underlay: vec![format!("fd00:2::{n}").parse().unwrap()],
        pod_cidrs: vec![format!("10.0.{n}.0/24").parse().unwrap()],
        previous_epochs: Vec::new(),
    }
}

/// A pod namespace behind `node` on veth `node_if` — `eth0`, address 10.0.n.2.
fn pod(node: &TestNetns, node_if: &str, n: u32) -> TestNetns {
    let p = TestNetns::new(&format!("i6pod{n}"));
    quiet_ipv6(&p);
    veth(node, node_if, &p, "eth0");
    let mtu = scrambler_core::esp::pod_mtu(1500, true).to_string();
    p.ip(&["link", "set", "eth0", "mtu", &mtu]);
    p.ip(&["addr", "add", &format!("10.0.{n}.2/24"), "dev", "eth0"]);
    p.ip(&["route", "add", "default", "via", &format!("10.0.{n}.1")]);
    p
}

/// Prints a figure when the test binary exits (after libtest's verdicts, which the VM run
/// parses).
fn figure(line: &str) {
    use std::sync::{Mutex, Once};
    static FIGURES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static REGISTER: Once = Once::new();
    extern "C" fn print_figures() {
        use std::io::Write;
        if let Ok(figures) = FIGURES.lock() {
            for f in figures.iter() {
                let _ = writeln!(std::io::stderr(), "FIGURE {f}");
            }
        }
    }
    extern "C" {
        fn atexit(cb: extern "C" fn()) -> std::os::raw::c_int;
    }
    // SAFETY: registers a plain function that only takes a lock and writes to stderr
    REGISTER.call_once(|| unsafe {
        atexit(print_figures);
    });
    if let Ok(mut figures) = FIGURES.lock() {
        figures.push(line.to_string());
    }
}

/// A VPP node and a kernel node on an IPv6-only wire: both reconcile (the second time a
/// no-op), the pods ping each other both ways, and every packet on the wire is ESP over
/// IPv6 between the two underlay addresses with the derived SPIs of generation 1.
#[test]
fn vm_interop6_vpp_and_kernel_nodes_exchange_esp_over_ipv6() {
    if VM.delegate(
        "vm_interop6_vpp_and_kernel_nodes_exchange_esp_over_ipv6",
        FEATURES,
    ) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let wire = TestNetns::new("i6wire");
        wire.ip(&["link", "add", "br0", "type", "bridge"]);
        wire.ip(&["link", "set", "br0", "up"]);

        // node A: VPP owning ul0 and vpod0 through af_packet
        let vpp = VppInstance::start("i6va", 0).await;
        let na = &vpp.netns;
        quiet_ipv6(na);
        veth(na, "ul0", &wire, "w1");
        let pod_a = pod(na, "vpod0", A);
        vpp.host_interface("ul0", [2, 0xfe, 0, 0, 1, 1], "fd00:2::1/64")
            .await;
        vpp.host_interface_with(
            "vpod0",
            [2, 0xfe, 0, 0, 2, 1],
            "10.0.1.1/24",
            AfPacketFlags::AF_PACKET_API_FLAG_CKSUM_GSO,
        )
        .await;

        // node B: the kernel, routing its pod
        let nb = TestNetns::new("i6vb");
        veth(&nb, "ul0", &wire, "w2");
        nb.ip(&["addr", "add", "fd00:2::2/64", "dev", "ul0", "nodad"]);
        nb.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let pod_b = pod(&nb, "pod0", B);
        nb.ip(&["addr", "add", "10.0.2.1/24", "dev", "pod0"]);
        for w in ["w1", "w2"] {
            wire.ip(&["link", "set", w, "master", "br0"]);
        }

        let vpp_tunnel = VppTunnel::new(vpp.api_sock());
        let xfrm = XfrmTunnel::new(XfrmConfig::default()).unwrap();
        let cluster = Cluster {
            nodes: vec![mesh_node("vpp-a", A), mesh_node("kernel-b", B)],
            keys: Keys::single(1),
            cluster_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            node_encryption: None,
        };
        let (ma, mb) = (
            cluster.mesh_for("vpp-a").unwrap(),
            cluster.mesh_for("kernel-b").unwrap(),
        );
        let s = ClusterSecret::from_bytes(vec![0x5a; 32]).unwrap();
        for _ in 0..2 {
            let ra = vpp_tunnel.reconcile(&na.netns(), &ma, &s).await.unwrap();
            let rb = xfrm.reconcile(&nb.netns(), &mb, &s).await.unwrap();
            eprintln!("{ra:?} {rb:?}");
        }
        assert!(vpp_tunnel
            .reconcile(&na.netns(), &ma, &s)
            .await
            .unwrap()
            .is_noop());
        assert!(xfrm
            .reconcile(&nb.netns(), &mb, &s)
            .await
            .unwrap()
            .is_noop());

        let cap = Capture::on(&wire.name, "br0")
            .filter("ip or ip6")
            .start()
            .unwrap();
        // VPP drops the packet that triggers its neighbour resolution
        let warm = ping_replies(&pod_a, "10.0.2.2", 4);
        let b_to_a = ping_replies(&pod_b, "10.0.1.2", 3);
        let a_to_b = ping_replies(&pod_a, "10.0.2.2", 3);
        let lines = cap.finish();
        let esp = |from: &str, to: &str| -> BTreeSet<u32> {
            lines
                .iter()
                .filter(|l| l.contains(&format!(" {from} > {to}: ESP(spi=0x")))
                .filter_map(|l| {
                    let hex = l.split("ESP(spi=0x").nth(1)?.split(',').next()?;
                    u32::from_str_radix(hex, 16).ok()
                })
                .collect()
        };
        let (ab, ba) = (esp("fd00:2::1", "fd00:2::2"), esp("fd00:2::2", "fd00:2::1"));
        let clear = lines.iter().filter(|l| l.contains(" 10.0.")).count();
        let esp_lines = lines.iter().filter(|l| l.contains("ESP(")).count();
        figure(&format!(
            "kernel <-> VPP over IPv6: pings A->B {warm}/4 then {a_to_b}/3, B->A {b_to_a}/3; \
             {} wire lines, {esp_lines} ESP over IPv6, cleartext pod packets {clear}; SPIs \
             A->B {ab:#010x?} B->A {ba:#010x?}",
            lines.len()
        ));
        let inc = |n: u32| mesh_node("x", n).incarnation();
        assert!(warm >= 3 && a_to_b == 3 && b_to_a == 3, "{lines:#?}");
        assert_eq!(clear, 0, "{lines:#?}");
        assert_eq!(ab, BTreeSet::from([spi(inc(A), inc(B), 1)]), "{lines:#?}");
        assert_eq!(ba, BTreeSet::from([spi(inc(B), inc(A), 1)]), "{lines:#?}");
        for (st, name) in [
            (vpp_tunnel.status(&na.netns(), &ma).await.unwrap(), "vpp"),
            (xfrm.status(&nb.netns(), &mb).await.unwrap(), "kernel"),
        ] {
            assert!(st.encrypted && st.fail_closed, "{name}: {st:?}");
        }
    });
}
