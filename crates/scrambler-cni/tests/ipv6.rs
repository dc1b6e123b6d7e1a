//! Dual-stack pods attached by the plugin binary (veth backend, built-in IPAM with one
//! IPv4 and one IPv6 range set) on two nodes of an IPv6-only underlay, joined by
//! scrambler-xfrm's mesh: the CNI result, the pod MTU from the IPv6 ESP overhead, and pod
//! ↔ pod traffic of both families as ESP over IPv6 only.
//!
//! Needs ESP and xfrm interfaces: on a kernel without them every `vm_cni6_*` test re-runs
//! in Debian's stock kernel under qemu through scrambler-vmtest.

mod common;

use common::*;
use scrambler_core::{esp, ClusterSecret, Keys, Mesh, Node as MeshNode, NodeId, Tunnel};
use scrambler_testkit::capture::Capture;
use scrambler_testkit::netns::TestNetns;
use scrambler_testkit::vm::{Feature, VmSuite};
use scrambler_xfrm::{XfrmConfig, XfrmTunnel};
use serde_json::{json, Value};
use std::time::Duration;

static VM: VmSuite = VmSuite::with("vm_cni6_", |t| t.timeout(Duration::from_secs(600)));

const FEATURES: &[Feature] = &[Feature::Esp, Feature::XfrmInterface];

fn mesh_node(i: u32) -> MeshNode {
    MeshNode {
        name: format!("node{i}"),
        id: NodeId::new(i).unwrap(),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(i)).unwrap(),
        underlay: vec![format!("fd00:3::{i}").parse().unwrap()],
        pod_cidrs: vec![
            format!("10.0.{i}.0/24").parse().unwrap(),
            format!("fd10:0:{i}::/64").parse().unwrap(),
        ],
        previous_epochs: Vec::new(),
    }
}

fn mesh(local: u32) -> Mesh {
    Mesh {
        local: mesh_node(local),
        peers: (1..=2).filter(|i| *i != local).map(mesh_node).collect(),
        keys: Keys::single(1),
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd10::/16".parse().unwrap()],
        node_encryption: None,
    }
}

fn sysctls(ns: &TestNetns, kv: &[&str]) {
    for s in kv {
        let (ok, out) = ns.exec(&["sysctl", "-qw", s]);
        assert!(ok, "sysctl {s}: {out}");
    }
}

/// The plugin's conf on node `i`: dual-stack ranges of the node's pod CIDRs.
fn conf(i: u32, data: &std::path::Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "v6net",
        "type": "scrambler-cni",
        "backend": "veth",
        "ipam": {
            "type": "scrambler-ipam",
            "ranges": [[{"subnet": format!("10.0.{i}.0/24")}],
                       [{"subnet": format!("fd10:0:{i}::/64")}]],
            "dataDir": data.join(format!("ipam{i}")),
        },
        "logFile": data.join(format!("cni{i}.log")),
    })
}

/// A TCP listener on `addr` in `ns` answering a connection's first line `x` with `ok x`.
fn tcp_listener(ns: &TestNetns, addr: &str) {
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

/// Connects from `ns` to `to`, sends a line, true when the listener's answer came back.
fn tcp_round_trip(ns: &TestNetns, to: &str) -> bool {
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

/// Keeps a figure to print when the test binary exits (after libtest's verdict lines, so
/// the VM run's verdict parsing is undisturbed and a passing run shows it too).
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

/// Two nodes on an IPv6-only wire, the mesh reconciled on both, one pod per node attached
/// by `scrambler-cni` (veth, built-in IPAM, two range sets): the result holds an IPv4 and
/// an IPv6 address, the pod's MTU is 1420 (1500 minus the IPv6 ESP overhead, from the
/// node's IPv6 default route); pings and a TCP connection of each family between the pods
/// cross the wire as ESP only (0 cleartext of either family); DEL leaves no lease.
#[test]
fn vm_cni6_dual_stack_veth_pods_over_an_ipv6_mesh() {
    if VM.delegate("vm_cni6_dual_stack_veth_pods_over_an_ipv6_mesh", FEATURES) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let wire = TestNetns::new("c6w");
    wire.ip(&["link", "add", "br0", "type", "bridge"]);
    wire.ip(&["link", "set", "br0", "up"]);
    let cni_path = CniPath::new();
    let tunnel = XfrmTunnel::new(XfrmConfig::default()).unwrap();
    let secret = ClusterSecret::from_bytes(vec![0x42; 32]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut nodes = Vec::new();
    let mut pods = Vec::new();
    let mut addrs: Vec<(String, String)> = Vec::new();
    for i in 1..=2u32 {
        let n = TestNetns::new(&format!("c6n{i}"));
        sysctls(
            &n,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.forwarding=1",
                "net.ipv4.ip_forward=1",
            ],
        );
        n.veth("ul0", &wire, &format!("w{i}"));
        wire.ip(&["link", "set", &format!("w{i}"), "master", "br0"]);
        n.ip(&[
            "addr",
            "add",
            &format!("fd00:3::{i}/64"),
            "dev",
            "ul0",
            "nodad",
        ]);
        // the cleartext paths a missing route would take lead over the wire
        let other = format!("fd00:3::{}", 3 - i);
        n.ip(&["-6", "route", "add", "default", "via", &other]);
        n.ip(&[
            "-4", "route", "add", "default", "via", "inet6", &other, "dev", "ul0",
        ]);
        rt.block_on(tunnel.reconcile(&n.netns(), &mesh(i), &secret))
            .unwrap();
        let p = TestNetns::new(&format!("c6p{i}"));
        let add = Invocation::new("ADD", &format!("c6pod{i}"), &p.path(), "eth0");
        let out = run_plugin(
            &n.name,
            std::path::Path::new(BIN),
            &add,
            &cni_path.value(),
            &conf(i, data.path()),
        );
        out.expect_ok();
        let r = out.json();
        let ips: Vec<String> = r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|ip| ip["address"].as_str().unwrap().to_string())
            .collect();
        figure(&format!(
            "node{i} pod result ips {ips:?} mtu {}",
            r["interfaces"]
        ));
        assert_eq!(ips.len(), 2, "{r}");
        let v4 = ips[0].split('/').next().unwrap().to_string();
        let v6 = ips[1].split('/').next().unwrap().to_string();
        assert!(v4.starts_with(&format!("10.0.{i}.")), "{r}");
        assert!(v6.starts_with(&format!("fd10:0:{i}::")), "{r}");
        let link = p.ip(&["link", "show", "eth0"]);
        assert!(
            link.contains(&format!("mtu {}", esp::pod_mtu(1500, true))),
            "{link}"
        );
        addrs.push((v4, v6));
        nodes.push(n);
        pods.push(p);
    }
    for (p, (v4, v6)) in pods.iter().zip(&addrs) {
        tcp_listener(p, &format!("{v4}:8080"));
        tcp_listener(p, &format!("[{v6}]:8080"));
    }
    let cap = Capture::on(&wire.name, "br0")
        .filter("ip or ip6")
        .start()
        .unwrap();
    let mut failed = Vec::new();
    for (a, b) in [(0usize, 1usize), (1, 0)] {
        let (v4, v6) = &addrs[b];
        for dst in [v4, v6] {
            if !ping(&pods[a], dst) {
                failed.push(format!("ping pod{} -> {dst}", a + 1));
            }
        }
        if !tcp_round_trip(&pods[a], &format!("{v4}:8080")) {
            failed.push(format!("TCP pod{} -> {v4}", a + 1));
        }
        if !tcp_round_trip(&pods[a], &format!("[{v6}]:8080")) {
            failed.push(format!("TCP pod{} -> {v6}", a + 1));
        }
    }
    let lines = cap.finish();
    let clear4 = lines.iter().filter(|l| l.contains(" 10.0.")).count();
    let clear6 = lines.iter().filter(|l| l.contains(" fd10:")).count();
    let esp = lines
        .iter()
        .filter(|l| l.contains("IP6 fd00:3::") && l.contains("ESP("))
        .count();
    figure(&format!(
        "CNI pods over the IPv6 mesh: {} wire lines, ESP over IPv6 {esp}, cleartext IPv4 \
         {clear4} IPv6 {clear6}, failed {failed:?}",
        lines.len()
    ));
    assert!(failed.is_empty(), "{failed:?}: {lines:#?}");
    assert_eq!((clear4, clear6), (0, 0), "{lines:#?}");
    // 2 pings and 2 TCP connections per direction, both families: dozens of ESP packets
    assert!(esp >= 20, "{lines:#?}");
    for (i, (n, p)) in nodes.iter().zip(&pods).enumerate() {
        let del = Invocation::new("DEL", &format!("c6pod{}", i + 1), &p.path(), "eth0");
        run_plugin(
            &n.name,
            std::path::Path::new(BIN),
            &del,
            &cni_path.value(),
            &conf(i as u32 + 1, data.path()),
        )
        .expect_ok();
        rt.block_on(tunnel.remove(&n.netns())).unwrap();
    }
}
