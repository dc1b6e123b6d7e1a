//! What encryption costs a pod, per dataplane: two nodes with one pod each, real load
//! between the pods (Debian's iperf3 for TCP bulk and small-packet UDP, a TCP ping-pong for
//! round-trip latency), each encrypted case beside its cleartext baseline in the same run.
//!
//! Cases:
//!
//! * **VPP** (natively, the real VPP test fixture of the VPP tests: two VPPs in their own
//!   namespaces joined by an af_packet underlay, pods attached by `VppAttach` as the CNI
//!   plugin does): the encrypted mesh (`VppTunnel`), the same two VPPs with the tunnels'
//!   protection removed (IPIP only), and two kernel-routed veth pods (scrambler-cni's veth
//!   attachment, no encryption, no VPP).
//! * **kernel XFRM** (`SCRAMBLER_BENCH_VM=1`: Debian's stock kernel under qemu, as the VM
//!   tests run): veth pods on two nodes, the xfrm mesh vs plain routes.
//! * **ipvlan** (same VM run): l3 pods with `"encrypt": true` and the xfrm mesh vs l3 pods
//!   with plain routes.
//!
//! Printed per case: TCP Gbps and retransmissions, UDP pps of 64-byte datagrams, ping-pong
//! RTT p50/p99, CPU seconds per GB of the dataplane (both VPP processes from /proc; for
//! kernel cases system + irq + softirq time of /proc/stat, the guest's in the VM), ESP
//! packets and every error/drop counter that moved (VPP's `show errors`, /proc/net/xfrm_stat),
//! fragmentation counters, and the ratio to the cleartext baseline of the same run.
//!
//! Run as root: `cargo bench -p benches --bench dataplane` (VPP and kernel veth, about a
//! minute); `SCRAMBLER_BENCH_VM=1` adds the VM cases (a few minutes of qemu TCG).
//! `SCRAMBLER_BENCH_SECS` sets the seconds per load run (default 4).
//! `SCRAMBLER_BENCH_VPP_CRYPTO` (`native`, `ipsecmb`, `openssl`) picks VPP's AES-GCM engine.

#[path = "../../crates/scrambler-vpp/tests/two_nodes/mod.rs"]
mod two_nodes;

use benches::load::{self, Rtt, Tcp, Udp};
use scrambler_cni::VethAttach;
use scrambler_core::{AttachRequest, AttachmentId, CniResult, IpConfig};
use scrambler_netlink::AttachOnce;
use scrambler_testkit::netns::TestNetns;
use scrambler_testkit::vm::VmTest;
use scrambler_testkit::vpp::{api_sock_resolver, VppInstance};
use scrambler_testkit::wire::Underlay;
use scrambler_vmtest::VmStatus;
use scrambler_vpp::attach::VppAttach;
use scrambler_vpp_api::api::types::AfPacketFlags;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use two_nodes::TwoNodes;

/// Marks a guest's result line on the VM console.
const RESULT_MARK: &str = "DPBENCH-RESULT ";
/// The group of the kernel-routed veth pods on this kernel (no VPP, no encryption).
const KERNEL_NATIVE: &str = "kernel-routed veth (native, no encryption)";
/// Payload of the small UDP datagrams.
const UDP_LEN: u32 = 64;

/// What one case measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Figures {
    group: String,
    name: String,
    /// The cleartext case of the same run this one is compared with (empty: none).
    vs: String,
    pod_mtu: u32,
    tcp_gbps: f64,
    tcp_gb: f64,
    retransmits: u64,
    /// Dataplane CPU seconds during the TCP run, per GB received.
    cpu_s_per_gb: f64,
    /// CPU seconds of the ESP nodes alone during the TCP run, per GB (VPP only).
    esp_cpu_s_per_gb: Option<f64>,
    udp_pps: f64,
    udp_loss_pct: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    rtt_count: usize,
    esp_packets: u64,
    /// Error, drop, replay or integrity counters that moved during the TCP bulk run.
    tcp_errors: Vec<String>,
    /// … and during the UDP flood and the ping-pong.
    errors: Vec<String>,
    /// IP fragmentation and receive-error counters (checksum, header, truncation) that
    /// moved in the pods or nodes.
    fragments: Vec<String>,
}

/// Where a case reads CPU time and counters.
struct Probe<'a> {
    /// Dataplane CPU seconds so far.
    cpu: Box<dyn Fn() -> f64 + 'a>,
    /// ESP packets so far.
    esp: Box<dyn Fn() -> u64 + 'a>,
    /// Cumulative error counters.
    errors: Box<dyn Fn() -> BTreeMap<String, u64> + 'a>,
    /// Namespaces whose IP fragmentation counters must not move.
    netns: Vec<String>,
    /// Starts counting the CPU time of the ESP nodes (VPP: `clear runtime`).
    esp_cpu_reset: Box<dyn Fn() + 'a>,
    /// CPU seconds of the ESP nodes since the reset (VPP's per-node clocks), if known.
    esp_cpu: Box<dyn Fn() -> Option<f64> + 'a>,
}

/// Pods of a case: load from `client` to `server`'s address `dst`.
struct Pods<'a> {
    client: &'a TestNetns,
    server: &'a TestNetns,
    dst: IpAddr,
}

fn secs() -> u32 {
    std::env::var("SCRAMBLER_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if benches::run::quick() { 1 } else { 4 })
}

fn frag_counters(netns: &[String]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for ns in netns {
        for (k, v) in load::snmp(ns) {
            let receive_error = [
                "Tcp:InCsumErrors",
                "Udp:InCsumErrors",
                "Ip:InHdrErrors",
                "IpExt:InTruncatedPkts",
                "IpExt:InCsumErrors",
            ]
            .contains(&k.as_str());
            if k.starts_with("Ip:Frag") || k.starts_with("Ip:Reasm") || receive_error {
                m.insert(format!("{ns} {k}"), v);
            }
        }
        // drops on the namespace's links (a veth drops a frame longer than its MTU that is
        // not marked GSO, counted on the receiving end)
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "-j", "-s", "link", "show"])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        for link in j.as_array().into_iter().flatten() {
            let name = link["ifname"].as_str().unwrap_or("?");
            for dir in ["rx", "tx"] {
                let n = link["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
                if n > 0 && name != "lo" {
                    m.insert(format!("{ns} {name} {dir} dropped"), n);
                }
            }
        }
    }
    m
}

fn pod_mtu(pod: &TestNetns) -> u32 {
    let s = pod.ip(&["-o", "link", "show", "eth0"]);
    s.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// Runs the three loads of one case and reads its counters around them.
fn measure(group: &str, name: &str, vs: &str, pods: &Pods, probe: &Probe) -> Figures {
    let t = secs();
    let dst = pods.dst.to_string();
    let (c, s) = (pods.client.name.as_str(), pods.server.name.as_str());
    eprintln!("[dataplane] {group}: {name}: TCP, UDP, RR ({t} s each)");
    assert!(
        pods.client.ping(&dst),
        "{group} {name}: pod {c} cannot reach {dst}"
    );
    let frag0 = frag_counters(&probe.netns);
    let err0 = (probe.errors)();
    let esp0 = (probe.esp)();

    (probe.esp_cpu_reset)();
    let cpu0 = (probe.cpu)();
    let tcp: Tcp = load::iperf_tcp(c, s, &dst, t).unwrap_or_else(|e| panic!("{e}"));
    let cpu = (probe.cpu)() - cpu0;
    let esp_cpu = (probe.esp_cpu)();
    let err_tcp = (probe.errors)();
    let udp: Udp = load::iperf_udp(c, s, &dst, t, UDP_LEN).unwrap_or_else(|e| panic!("{e}"));
    let rtt: Rtt = load::ping_pong(
        &pods.client.netns(),
        &pods.server.netns(),
        pods.dst,
        Duration::from_secs(u64::from(t)),
    )
    .unwrap_or_else(|e| panic!("{group} {name}: {e}"));

    let gb = tcp.bytes as f64 / 1e9;
    let lines = |m: BTreeMap<String, u64>| -> Vec<String> {
        m.into_iter().map(|(k, v)| format!("{k}: {v}")).collect()
    };
    let tcp_errors = lines(load::delta(&err0, &err_tcp));
    let errors = lines(load::delta(&err_tcp, &(probe.errors)()));
    let fragments = load::delta(&frag0, &frag_counters(&probe.netns))
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    Figures {
        group: group.into(),
        name: name.into(),
        vs: vs.into(),
        pod_mtu: pod_mtu(pods.client),
        tcp_gbps: tcp.gbps(),
        tcp_gb: gb,
        retransmits: tcp.retransmits,
        cpu_s_per_gb: if gb > 0.0 { cpu / gb } else { 0.0 },
        esp_cpu_s_per_gb: esp_cpu.map(|c| if gb > 0.0 { c / gb } else { 0.0 }),
        udp_pps: udp.pps(),
        udp_loss_pct: if udp.sent > 0 {
            udp.lost as f64 * 100.0 / udp.sent as f64
        } else {
            0.0
        },
        rtt_p50_us: rtt.p50_us,
        rtt_p99_us: rtt.p99_us,
        rtt_count: rtt.count,
        esp_packets: (probe.esp)().saturating_sub(esp0),
        tcp_errors,
        errors,
        fragments,
    }
}

fn addrs(addr: &str) -> CniResult {
    CniResult {
        ips: vec![IpConfig {
            address: addr.parse().expect("pod address"),
            gateway: None,
            interface: None,
        }],
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

// ---------------------------------------------------------------------------------------
// VPP

/// The VPP process of `vpp` (found by its startup.conf on the command line).
fn vpp_pid(vpp: &VppInstance) -> u32 {
    let conf = vpp.run_dir.join("startup.conf").display().to_string();
    let pids = load::pids_with_cmdline(&conf);
    *pids
        .first()
        .unwrap_or_else(|| panic!("no VPP process with {conf}"))
}

/// `show errors` of `vpp` as "node: reason" → count, for counters that are not plain
/// informational packet counts.
fn vpp_errors(vpp: &VppInstance, who: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in vpp.vppctl(&["show", "errors"]).lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let Some(count) = w.first().and_then(|c| c.parse::<u64>().ok()) else {
            continue;
        };
        let severity = w.last().copied().unwrap_or("");
        if severity == "info" || benign(l) {
            continue;
        }
        m.insert(format!("{who} {}", w[1..w.len() - 1].join(" ")), count);
    }
    // frames the kernel refused from an af_packet TX ring (e.g. longer than the link's
    // MTU): `show hardware-interfaces` prints "wrong:N" per TX queue
    let mut iface = String::new();
    for l in vpp.vppctl(&["show", "hardware-interfaces"]).lines() {
        if !l.starts_with(' ') && !l.trim().is_empty() && !l.contains("Name") {
            iface = l.split_whitespace().next().unwrap_or("").to_string();
        }
        if let Some(n) = l
            .split("wrong:")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if n > 0 {
                m.insert(format!("{who} {iface} TX frames the kernel refused"), n);
            }
        }
    }
    // the kernel's drops on the node's veths (underlay and pods' node ends): a veth drops
    // a frame longer than its peer's MTU that is not marked GSO
    let j: serde_json::Value =
        serde_json::from_str(&vpp.netns.ip(&["-j", "-s", "link", "show", "type", "veth"]))
            .unwrap_or_default();
    for link in j.as_array().into_iter().flatten() {
        let name = link["ifname"].as_str().unwrap_or("?");
        for dir in ["rx", "tx"] {
            let n = link["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
            if n > 0 {
                m.insert(format!("{who} kernel {name} {dir} dropped"), n);
            }
        }
    }
    m
}

/// ESP packets `vpp` encrypted and decrypted so far (`show errors`' informational counts
/// of the ESP tunnel nodes).
fn vpp_esp_packets(vpp: &VppInstance) -> u64 {
    vpp.vppctl(&["show", "errors"])
        .lines()
        .filter(|l| l.contains("esp4-encrypt-tun") || l.contains("esp4-decrypt-tun"))
        .filter(|l| l.contains("ESP pkts received"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// `show errors` lines that count no problem: af_packet's block statistics (filed as
/// errors), IPv6 router solicitations of the pods, ethernet-input's "no error".
fn benign(line: &str) -> bool {
    [
        "timed out block",
        "total received block",
        "Multicast RPF check failed",
        "no error",
        "packets decapsulated",
    ]
    .iter()
    .any(|b| line.contains(b))
}

fn vpp_probe<'a>(t: &'a TwoNodes, pods: &[&TestNetns]) -> Probe<'a> {
    let pids = [vpp_pid(&t.a), vpp_pid(&t.b)];
    Probe {
        cpu: Box::new(move || pids.iter().map(|p| load::process_cpu_secs(*p)).sum()),
        esp: Box::new(move || vpp_esp_packets(&t.a)),
        errors: Box::new(move || {
            let mut m = vpp_errors(&t.a, "vpp-a");
            m.extend(vpp_errors(&t.b, "vpp-b"));
            m
        }),
        netns: pods.iter().map(|p| p.name.clone()).collect(),
        esp_cpu_reset: Box::new(move || {
            t.a.vppctl(&["clear", "runtime"]);
            t.b.vppctl(&["clear", "runtime"]);
        }),
        esp_cpu: Box::new(move || Some(vpp_esp_cpu_secs(&t.a) + vpp_esp_cpu_secs(&t.b))),
    }
}

/// The TSC rate VPP's node clocks count in (the first CPU's MHz in /proc/cpuinfo).
fn cpu_hz() -> f64 {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .map_or(2e9, |mhz| mhz * 1e6)
}

/// CPU seconds `vpp`'s ESP nodes spent since `clear runtime`: vectors × clocks per vector
/// of `esp4-encrypt-tun` and `esp4-decrypt-tun` (`show runtime`: Name State Calls Vectors
/// Suspends Clocks Vectors/Call; the state may be two words).
fn vpp_esp_cpu_secs(vpp: &VppInstance) -> f64 {
    let clocks: f64 = vpp
        .vppctl(&["show", "runtime"])
        .lines()
        .filter(|l| {
            let n = l.split_whitespace().next().unwrap_or("");
            n == "esp4-encrypt-tun" || n == "esp4-decrypt-tun"
        })
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let vectors: f64 = w.get(w.len().checked_sub(4)?)?.parse().ok()?;
            let per: f64 = w.get(w.len().checked_sub(2)?)?.parse().ok()?;
            Some(vectors * per)
        })
        .fold(0.0, |a, b| a + b);
    clocks / cpu_hz()
}

/// Picks VPP's AES-GCM engine when asked (`SCRAMBLER_BENCH_VPP_CRYPTO`).
fn vpp_crypto(vpp: &VppInstance) {
    if let Ok(engine) = std::env::var("SCRAMBLER_BENCH_VPP_CRYPTO") {
        for alg in ["aes-128-gcm", "aes-128-gcm-icv16"] {
            let out = vpp.vppctl(&["set", "crypto", "handler", alg, &engine]);
            if !out.trim().is_empty() {
                eprintln!(
                    "[dataplane] set crypto handler {alg} {engine}: {}",
                    out.trim()
                );
            }
        }
    }
}

/// Makes node `n`'s underlay af_packet interface again with TPACKET_V2 (per-frame rings:
/// no block to fill or time out before VPP sees a packet), same MAC and address.
async fn underlay_v2(vpp: &VppInstance, n: u8) {
    let o = vpp.vppctl(&["delete", "host-interface", "name", "ul0"]);
    assert!(o.trim().is_empty(), "delete host-ul0: {o}");
    vpp.host_interface_with(
        "ul0",
        [2, 0xfe, 0, 0, 1, n],
        &format!("192.0.2.{n}/24"),
        AfPacketFlags::AF_PACKET_API_FLAG_VERSION_2,
    )
    .await;
}

/// The pods' TX ring of the tuned VPP run (frames; the default is
/// [`scrambler_vpp::attach::POD_TX_FRAMES`]): one VPP vector of 256 packets fits.
const TUNED_TX_FRAMES: u32 = 256;

/// Case names of the VPP group.
const ESP_AS_ATTACHED: &str = "ESP, pods as attached";
const ESP_NO_GSO: &str = "ESP, pods' GSO off";
const IPIP_NO_GSO: &str = "IPIP only, pods' GSO off";
const IPIP_AS_ATTACHED: &str = "IPIP only, pods as attached";

/// Caps the pods' GSO packets at their MTU (`Some`) or restores the default 64 KB size
/// (`None`). The attachment already caps them at one segment (`gso_max_segs` 1), so
/// "pods' GSO off" is the same setting reached a second way, kept as a cross-check.
fn gso_max_size(pods: &[&TestNetns], off: Option<()>) {
    for p in pods {
        let size = match off {
            Some(()) => pod_mtu(p).to_string(),
            None => "65536".into(),
        };
        p.ip(&["link", "set", "eth0", "gso_max_size", &size]);
    }
}

/// VPP encrypted, then the same VPPs with the tunnels unprotected (IPIP only).
///
/// `tx_frames`: the pods' af_packet TX ring ([`VppAttach::with_pod_tx_frames`]); with it
/// only the GSO-off pair runs, named with the ring size.
async fn vpp_cases(out: &mut Vec<Figures>, tx_frames: Option<u32>) {
    const GROUP: &str = "VPP (native)";
    let sfx = tx_frames.map_or(String::new(), |n| format!(", TX ring {n}"));
    let name = |base: &str| format!("{base}{sfx}");
    let t = TwoNodes::underlay("dpv").await;
    let (a, b) = (&t.a, &t.b);
    if std::env::var("SCRAMBLER_BENCH_UNDERLAY_V2").is_ok_and(|v| v == "1") {
        underlay_v2(a, 1).await;
        underlay_v2(b, 2).await;
    }
    vpp_crypto(a);
    vpp_crypto(b);
    let att = VppAttach::with_resolver(api_sock_resolver(&[a, b]));
    let att = match tx_frames {
        Some(n) => att.with_pod_tx_frames(n),
        None => att,
    };
    t.apply().await;
    let pa = TestNetns::new("dpvp");
    let pb = TestNetns::new("dpvq");
    let (ra, rb) = (request(&pa, "dp-a"), request(&pb, "dp-b"));
    att.attach_in(&a.netns.netns(), &ra, &addrs("10.1.0.2/24"))
        .await
        .expect("attach pod a");
    att.attach_in(&b.netns.netns(), &rb, &addrs("10.2.0.2/24"))
        .await
        .expect("attach pod b");
    if std::env::var("SCRAMBLER_BENCH_VPP_POLL").is_ok_and(|v| v == "1") {
        for vpp in [a, b] {
            for name in vpp.af_packet_names().await {
                let o = vpp.vppctl(&[
                    "set",
                    "interface",
                    "rx-mode",
                    &format!("host-{name}"),
                    "polling",
                ]);
                assert!(o.trim().is_empty(), "polling on host-{name}: {o}");
            }
        }
    }
    let handlers = a.vppctl(&["show", "crypto", "handlers"]);
    eprintln!(
        "[dataplane] VPP crypto handlers (* active):\n{}",
        handlers
            .lines()
            .skip_while(|l| !l.contains("aes-128-gcm"))
            .take(2)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let pods = Pods {
        client: &pa,
        server: &pb,
        dst: "10.2.0.2".parse().expect("ip"),
    };
    let probe = vpp_probe(&t, &[&pa, &pb]);
    if tx_frames.is_none() {
        out.push(measure(
            GROUP,
            ESP_AS_ATTACHED,
            IPIP_AS_ATTACHED,
            &pods,
            &probe,
        ));
    }
    gso_max_size(&[&pa, &pb], Some(()));
    out.push(measure(
        GROUP,
        &name(ESP_NO_GSO),
        &name(IPIP_NO_GSO),
        &pods,
        &probe,
    ));

    // the same two VPPs and pods, the mesh replaced by plain IPIP tunnels (same
    // endpoints, unnumbered to the uplink, routes to the peer's pod CIDR), no ESP
    use scrambler_core::Tunnel;
    for (vpp, me, peer) in [(a, 1u8, 2u8), (b, 2, 1)] {
        t.dp.remove(&vpp.netns.netns()).await.expect("remove mesh");
        let tun = vpp
            .vppctl(&[
                "create",
                "ipip",
                "tunnel",
                "src",
                &format!("192.0.2.{me}"),
                "dst",
                &format!("192.0.2.{peer}"),
            ])
            .trim()
            .to_string();
        for cmd in [
            format!("set interface unnumbered {tun} use host-ul0"),
            format!("set interface state {tun} up"),
            format!("ip route add 10.{peer}.0.0/24 via {tun}"),
        ] {
            let o = vpp.vppctl(&cmd.split(' ').collect::<Vec<_>>());
            assert!(o.trim().is_empty(), "{cmd}: {o}");
        }
    }
    assert!(
        pa.ping("10.2.0.2"),
        "IPIP without protection: no ping\nA: {}\nB: {}",
        a.vppctl(&["show", "errors"]),
        b.vppctl(&["show", "errors"]),
    );
    let ipip = measure(GROUP, &name(IPIP_NO_GSO), "", &pods, &probe);
    assert_eq!(ipip.esp_packets, 0, "ESP counted with the mesh removed");
    out.push(ipip);
    if tx_frames.is_none() {
        gso_max_size(&[&pa, &pb], None);
        out.push(measure(GROUP, IPIP_AS_ATTACHED, "", &pods, &probe));
    }
    let _ = att.detach_in(&a.netns.netns(), &ra).await;
    let _ = att.detach_in(&b.netns.netns(), &rb).await;
}

// ---------------------------------------------------------------------------------------
// Kernel

/// Two nodes on a bridged underlay (node i: 192.0.2.i), a routed veth pod on each
/// (10.1.i.2, scrambler-cni's veth attachment); `encrypted` applies the xfrm mesh, else
/// each node routes the other's pod CIDR over the underlay.
async fn kernel_veth_case(group: &str, encrypted: bool) -> Figures {
    let lab = Underlay::new(if encrypted { "dpx" } else { "dpk" }, 2);
    let att = VethAttach::new("pods");
    for i in 0..2 {
        let id = i as u32 + 1;
        let n = &lab.nodes[i];
        n.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        att.attach_in(
            &n.netns(),
            &request(&lab.pods[i], &format!("dp{id}")),
            &addrs(&format!("10.1.{id}.2/24")),
        )
        .await
        .expect("attach veth pod");
        if !encrypted {
            n.ip(&[
                "route",
                "add",
                &format!("10.1.{}.0/24", 3 - id),
                "via",
                &format!("192.0.2.{}", 3 - id),
            ]);
        }
    }
    if encrypted {
        xfrm_mesh(&lab).await;
    }
    let pods = Pods {
        client: &lab.pods[0],
        server: &lab.pods[1],
        dst: "10.1.2.2".parse().expect("ip"),
    };
    let (name, vs) = if encrypted {
        ("veth + XFRM ESP", "veth, cleartext routing")
    } else {
        ("veth, cleartext routing", "")
    };
    let probe = kernel_probe(&lab);
    measure(group, name, vs, &pods, &probe)
}

/// Applies the xfrm mesh (nodes 1 and 2, pod CIDRs 10.1.i.0/24) to both nodes of `lab`.
async fn xfrm_mesh(lab: &Underlay) {
    use scrambler_core::{ClusterSecret, Keys, Mesh, Node, NodeId, Tunnel};
    use scrambler_xfrm::{XfrmConfig, XfrmTunnel};
    let node = |id: u32| Node {
        name: format!("node{id}"),
        id: NodeId::new(id).expect("id"),
        epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).expect("epoch"),
        underlay: vec![format!("192.0.2.{id}").parse().expect("ip")],
        pod_cidrs: vec![format!("10.1.{id}.0/24").parse().expect("cidr")],
        previous_epochs: Vec::new(),
    };
    let tunnel = XfrmTunnel::new(XfrmConfig {
        guard_supernets: vec!["10.1.0.0/16".parse().expect("cidr")],
        ..XfrmConfig::default()
    })
    .expect("xfrm tunnel");
    let secret = ClusterSecret::from_bytes(vec![0x42; 32]).expect("secret");
    for id in [1u32, 2] {
        let mesh = Mesh {
            local: node(id),
            peers: vec![node(3 - id)],
            keys: Keys::single(1),
            cluster_cidrs: vec!["10.1.0.0/16".parse().expect("cidr")],
            node_encryption: None,
        };
        tunnel
            .reconcile(&lab.nodes[id as usize - 1].netns(), &mesh, &secret)
            .await
            .expect("reconcile xfrm mesh");
    }
}

/// ESP packets of node 1's SAs (both directions): `ip -s xfrm state`'s lifetime counters.
fn xfrm_esp_packets(ns: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-s", "xfrm", "state"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "lifetime current:" is followed by "  <n>(bytes), <m>(packets)"
    out.split("lifetime current:")
        .skip(1)
        .filter_map(|s| {
            s.split("(bytes),")
                .nth(1)?
                .split("(packets)")
                .next()?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn kernel_probe(lab: &Underlay) -> Probe<'_> {
    let n1 = lab.nodes[0].name.clone();
    let nodes: Vec<String> = lab.nodes.iter().map(|n| n.name.clone()).collect();
    let mut netns = nodes.clone();
    netns.extend(lab.pods.iter().map(|p| p.name.clone()));
    Probe {
        cpu: Box::new(load::kernel_cpu_secs),
        esp: Box::new(move || xfrm_esp_packets(&n1)),
        errors: Box::new(move || {
            let mut m = BTreeMap::new();
            for (i, n) in nodes.iter().enumerate() {
                for (k, v) in load::xfrm_stat(n) {
                    m.insert(format!("node{} {k}", i + 1), v);
                }
            }
            m
        }),
        netns,
        esp_cpu_reset: Box::new(|| {}),
        esp_cpu: Box::new(|| None),
    }
}

/// ipvlan l3 pods on two nodes: `"encrypt": true` with the xfrm mesh, or plain routes.
async fn ipvlan_case(group: &str, encrypted: bool) -> Figures {
    use scrambler_ipvlan::{IpvlanAttach, IpvlanConfig, Mode};
    let lab = Underlay::new(if encrypted { "dpie" } else { "dpic" }, 2);
    let state = tempfile::tempdir().expect("state dir");
    let att = IpvlanAttach::new(IpvlanConfig {
        network: "pods".into(),
        master: Some("ul0".into()),
        mode: Mode::L3,
        encrypt: encrypted,
        cluster_cidrs: if encrypted {
            vec!["10.1.0.0/16".parse().expect("cidr")]
        } else {
            vec![]
        },
        state_dir: Some(state.path().into()),
        ..Default::default()
    })
    .expect("ipvlan conf");
    let mut reqs = Vec::new();
    for i in 0..2 {
        let id = i as u32 + 1;
        let n = &lab.nodes[i];
        if !encrypted {
            n.ip(&[
                "route",
                "add",
                &format!("10.1.{}.0/24", 3 - id),
                "via",
                &format!("192.0.2.{}", 3 - id),
            ]);
        }
        let req = request(&lab.pods[i], &format!("dpi{id}"));
        att.attach_in(&n.netns(), &req, &addrs(&format!("10.1.{id}.2/24")))
            .await
            .expect("attach ipvlan pod");
        reqs.push(req);
    }
    if encrypted {
        xfrm_mesh(&lab).await;
    }
    let pods = Pods {
        client: &lab.pods[0],
        server: &lab.pods[1],
        dst: "10.1.2.2".parse().expect("ip"),
    };
    let (name, vs) = if encrypted {
        (
            "ipvlan l3, encrypt (XFRM ESP)",
            "ipvlan l3, cleartext routing",
        )
    } else {
        ("ipvlan l3, cleartext routing", "")
    };
    let probe = kernel_probe(&lab);
    let f = measure(group, name, vs, &pods, &probe);
    for (i, req) in reqs.iter().enumerate() {
        let _ = att.detach_in(&lab.nodes[i].netns(), req).await;
    }
    f
}

/// The VM cases (run in the guest): kernel XFRM and ipvlan, each beside its cleartext.
async fn vm_cases() -> Vec<Figures> {
    const XFRM: &str = "kernel XFRM (VM, emulated CPU)";
    const IPVLAN: &str = "ipvlan (VM, emulated CPU)";
    vec![
        kernel_veth_case(XFRM, false).await,
        kernel_veth_case(XFRM, true).await,
        ipvlan_case(IPVLAN, false).await,
        ipvlan_case(IPVLAN, true).await,
    ]
}

/// Boots Debian's stock kernel under qemu, runs [`vm_cases`] there (this binary with
/// `--vm-guest`) and reads their figures from the console.
fn run_vm_cases() -> Vec<Figures> {
    let exe = std::env::current_exe().expect("own executable");
    let outcome = VmTest::command(
        "dataplane bench VM cases",
        vec![exe.display().to_string(), "--vm-guest".into()],
    )
    .with_env("SCRAMBLER_BENCH_SECS", secs().to_string())
    .timeout(Duration::from_secs(900))
    .run();
    let figures: Vec<Figures> = outcome
        .console
        .lines()
        .filter_map(|l| l.split_once(RESULT_MARK))
        .filter_map(|(_, j)| serde_json::from_str(j.trim()).ok())
        .collect();
    assert!(
        matches!(outcome.status, VmStatus::Exited(0)) && figures.len() == 4,
        "VM cases failed ({}):\n{}",
        outcome.status,
        outcome.console
    );
    figures
}

// ---------------------------------------------------------------------------------------
// Report

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", x / base)
    } else {
        "-".into()
    }
}

fn print_report(all: &[Figures]) {
    println!();
    println!("Dataplane: pod to pod across two nodes ({} s per load run; TCP = iperf3 bulk, UDP = iperf3 {UDP_LEN}-byte datagrams at full speed, RR = TCP ping-pong of 64 bytes)", secs());
    let mut groups: Vec<&str> = all.iter().map(|f| f.group.as_str()).collect();
    groups.dedup();
    for g in groups {
        let cases: Vec<&Figures> = all.iter().filter(|f| f.group == g).collect();
        println!();
        println!("== {g}");
        if g.contains("VM") {
            println!("   (software-emulated CPU under qemu TCG: absolute figures mean nothing, only the ratios to the cleartext case of the same run)");
        }
        println!(
            "{:<38} {:>5} {:>7} {:>6} {:>9} {:>9} {:>9} {:>6} {:>9} {:>9} {:>10}",
            "case",
            "MTU",
            "Gbps",
            "retr",
            "CPU s/GB",
            "ESP s/GB",
            "UDP pps",
            "loss%",
            "RTT p50",
            "RTT p99",
            "ESP pkts"
        );
        for f in &cases {
            println!(
                "{:<38} {:>5} {:>7.3} {:>6} {:>9.2} {:>9} {:>9.0} {:>6.1} {:>7.0}µs {:>7.0}µs {:>10}",
                f.name,
                f.pod_mtu,
                f.tcp_gbps,
                f.retransmits,
                f.cpu_s_per_gb,
                f.esp_cpu_s_per_gb
                    .map_or("-".to_string(), |c| format!("{c:.3}")),
                f.udp_pps,
                f.udp_loss_pct,
                f.rtt_p50_us,
                f.rtt_p99_us,
                f.esp_packets
            );
        }
        for f in &cases {
            for e in &f.tcp_errors {
                println!("  {}: during TCP bulk: {e}", f.name);
            }
            for e in &f.errors {
                println!("  {}: during UDP flood / ping-pong: {e}", f.name);
            }
            for e in &f.fragments {
                println!("  {}: fragmentation / receive errors: {e}", f.name);
            }
            if f.tcp_errors.is_empty() && f.errors.is_empty() && f.fragments.is_empty() {
                println!(
                    "  {}: no error/drop/replay/integrity counter moved, no IP fragmentation or receive error",
                    f.name
                );
            }
        }
        for f in &cases {
            if let Some(b) = cases.iter().find(|b| !f.vs.is_empty() && b.name == f.vs) {
                println!(
                    "  ratio {} / {}: throughput {}, UDP pps {}, RTT p50 {} p99 {}, CPU per GB {} (+{:.2} s/GB for encryption)",
                    f.name,
                    b.name,
                    ratio(f.tcp_gbps, b.tcp_gbps),
                    ratio(f.udp_pps, b.udp_pps),
                    ratio(f.rtt_p50_us, b.rtt_p50_us),
                    ratio(f.rtt_p99_us, b.rtt_p99_us),
                    ratio(f.cpu_s_per_gb, b.cpu_s_per_gb),
                    f.cpu_s_per_gb - b.cpu_s_per_gb
                );
            }
        }
    }
    // the VPP target: encrypted throughput at least half of its own IPIP throughput
    for esp in all
        .iter()
        .filter(|f| f.name == ESP_AS_ATTACHED || f.name.starts_with(ESP_NO_GSO))
    {
        let Some(ipip) = all.iter().find(|f| f.name == esp.vs) else {
            continue;
        };
        let r = esp.tcp_gbps / ipip.tcp_gbps.max(f64::MIN_POSITIVE);
        println!();
        println!(
            "VPP target ({}): encrypted {:.3} Gbps / IPIP {:.3} Gbps = {r:.2} (target >= 0.50: {}); encryption costs {:.3} CPU s per GB in VPP's ESP nodes (both ends; whole VPPs {:.2} vs {:.2} s/GB, {:+.2})",
            esp.name,
            esp.tcp_gbps,
            ipip.tcp_gbps,
            if r >= 0.5 { "met" } else { "NOT met" },
            esp.esp_cpu_s_per_gb.unwrap_or(0.0),
            esp.cpu_s_per_gb,
            ipip.cpu_s_per_gb,
            esp.cpu_s_per_gb - ipip.cpu_s_per_gb,
        );
    }
    let find = |n: &str| all.iter().find(|f| f.name == n);
    if let (Some(esp), Some(veth)) = (
        find(ESP_NO_GSO),
        all.iter().find(|f| f.group == KERNEL_NATIVE),
    ) {
        println!(
            "VPP encrypted vs kernel-routed veth (no VPP, no encryption): throughput {}, RTT p50 {}",
            ratio(esp.tcp_gbps, veth.tcp_gbps),
            ratio(esp.rtt_p50_us, veth.rtt_p50_us)
        );
    }
    let retr: Vec<String> = all
        .iter()
        .filter(|f| f.retransmits > 0 || !f.fragments.is_empty())
        .map(|f| {
            format!(
                "{} / {} ({} retransmits, {} fragment counters)",
                f.group,
                f.name,
                f.retransmits,
                f.fragments.len()
            )
        })
        .collect();
    println!(
        "Correctness under load (TCP bulk at the ESP-aware MTU): {}",
        if retr.is_empty() {
            "no retransmissions, no fragmentation".to_string()
        } else {
            retr.join("; ")
        }
    );
}

fn main() {
    if std::env::args().any(|a| a == "--vm-guest") {
        // in the VM: the kernel cases, each result as one line on the console
        let rt = benches::run::runtime();
        for f in rt.block_on(vm_cases()) {
            println!("{RESULT_MARK}{}", serde_json::to_string(&f).expect("json"));
        }
        return;
    }
    let iperf = std::process::Command::new("iperf3")
        .arg("--version")
        .output();
    assert!(
        iperf.is_ok_and(|o| o.status.success()),
        "iperf3 is missing: install Debian's iperf3 (scripts/install-deps.sh test)"
    );
    let vm = std::env::var("SCRAMBLER_BENCH_VM").unwrap_or_default();
    let rt = benches::run::runtime();
    let mut all = Vec::new();
    if vm != "only" {
        rt.block_on(async {
            vpp_cases(&mut all, None).await;
            vpp_cases(&mut all, Some(TUNED_TX_FRAMES)).await;
            all.push(kernel_veth_case(KERNEL_NATIVE, false).await);
        });
    }
    if !all.is_empty() {
        // the native figures at once: the VM may first wait for a slot
        print_report(&all);
    }
    if vm == "1" || vm == "only" {
        print_report(&run_vm_cases());
    } else {
        eprintln!("[dataplane] VM cases (kernel XFRM, ipvlan) are opt-in and not run: set SCRAMBLER_BENCH_VM=1");
    }
}
