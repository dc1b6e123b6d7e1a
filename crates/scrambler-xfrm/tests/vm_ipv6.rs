//! IPv6 end to end on the kernel dataplane: three nodes on an IPv6-only underlay (ESP
//! over IPv6 between their underlay addresses), dual-stack pods (one IPv4 and one IPv6
//! pod CIDR per node), `clusterCidrs` of both families.
//!
//! They need ESP states and xfrm interfaces: on a kernel without them (the build
//! machine's) every `vm_xfrm6_*` test re-runs inside Debian's stock kernel under qemu
//! through scrambler-vmtest (one boot for the group).

mod common;

use common::*;
use scrambler_core::{esp, keys, Mesh, Tunnel};
use scrambler_testkit::capture::Capture;
use scrambler_testkit::vm::{Feature, VmSuite};
use scrambler_testkit::wire::ping_replies;
use scrambler_xfrm::{StatusTable, XfrmConfig, XfrmTunnel};
use std::time::Duration;

static VM: VmSuite = VmSuite::with("vm_xfrm6_", |t| t.timeout(Duration::from_secs(600)));

const FEATURES: &[Feature] = &[Feature::Esp, Feature::XfrmInterface];

/// Pod `i`'s addresses.
fn pod4(i: usize) -> String {
    format!("10.0.{i}.2")
}
fn pod6(i: usize) -> String {
    format!("fd10:0:{i:x}::2")
}

/// Three nodes on an IPv6-only wire, a dual-stack pod behind each.
struct Lab {
    wire: Ns,
    nodes: Vec<Ns>,
    pods: Vec<Ns>,
    meshes: Vec<Mesh>,
    tunnel: XfrmTunnel,
}

fn sysctls(ns: &Ns, kv: &[&str]) {
    for s in kv {
        let (ok, out) = ns.exec(&["sysctl", "-qw", s]);
        assert!(ok, "sysctl {s}: {out}");
    }
}

/// Node `i`'s underlay address on an IPv6 (`v6`) or IPv4 wire.
fn underlay(i: usize, v6: bool) -> String {
    if v6 {
        format!("fd00:2::{i:x}")
    } else {
        format!("192.0.2.{i}")
    }
}

impl Lab {
    /// Dual-stack pods on an IPv6-only underlay.
    fn new() -> Lab {
        Lab::on(true)
    }

    /// Dual-stack pods on an underlay of one family (`v6`).
    fn on(v6: bool) -> Lab {
        let wire = Ns::new("x6w");
        wire.ip(&["link", "add", "br0", "type", "bridge"]);
        wire.ip(&["link", "set", "br0", "up"]);
        let tunnel = XfrmTunnel::new(XfrmConfig::default()).unwrap();
        let mut nodes = Vec::new();
        let mut pods = Vec::new();
        for i in 1..=3u32 {
            let n = Ns::new(&format!("x6n{i}"));
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
            let prefix = if v6 { 64 } else { 24 };
            let ul = format!("{}/{prefix}", underlay(i as usize, v6));
            if v6 {
                n.ip(&["addr", "add", &ul, "dev", "ul0", "nodad"]);
            } else {
                n.ip(&["addr", "add", &ul, "dev", "ul0"]);
            }
            let p = Ns::new(&format!("x6p{i}"));
            sysctls(
                &p,
                &[
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                ],
            );
            n.veth("pod0", &p, "eth0");
            n.ip(&["addr", "add", &format!("10.0.{i}.1/24"), "dev", "pod0"]);
            n.ip(&[
                "addr",
                "add",
                &format!("fd10:0:{i:x}::1/64"),
                "dev",
                "pod0",
                "nodad",
            ]);
            let mtu = esp::pod_mtu(1500, v6).to_string();
            p.ip(&["link", "set", "eth0", "mtu", &mtu]);
            p.ip(&["addr", "add", &format!("10.0.{i}.2/24"), "dev", "eth0"]);
            p.ip(&[
                "addr",
                "add",
                &format!("fd10:0:{i:x}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            p.ip(&["route", "add", "default", "via", &format!("10.0.{i}.1")]);
            p.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd10:0:{i:x}::1"),
            ]);
            nodes.push(n);
            pods.push(p);
        }
        // the cleartext paths a missing route would take: every node's default routes,
        // IPv6 and IPv4 (an IPv6 next hop: the underlay has no IPv4), point at the next
        // node over the wire
        // (on an IPv4 wire, IPv4 only: an IPv6 route cannot have an IPv4 next hop)
        for (i, n) in nodes.iter().enumerate() {
            let next = underlay((i + 1) % 3 + 1, v6);
            if v6 {
                n.ip(&["-6", "route", "add", "default", "via", &next]);
                n.ip(&[
                    "-4", "route", "add", "default", "via", "inet6", &next, "dev", "ul0",
                ]);
            } else {
                n.ip(&["route", "add", "default", "via", &next]);
            }
        }
        let meshes = (1..=3u32)
            .map(|i| {
                let mut m = mesh6(i, 3);
                for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
                    n.underlay = vec![underlay(n.id.get() as usize, v6).parse().unwrap()];
                }
                m
            })
            .collect();
        Lab {
            wire,
            nodes,
            pods,
            meshes,
            tunnel,
        }
    }

    async fn reconcile_all(&self) -> Vec<scrambler_core::ReconcileReport> {
        let mut v = Vec::new();
        for (n, m) in self.nodes.iter().zip(&self.meshes) {
            v.push(
                self.tunnel
                    .reconcile(&n.netns(), m, &secret())
                    .await
                    .unwrap(),
            );
        }
        v
    }

    /// busybox ping of `size` payload bytes from pod `from` (1-based) to `to`; replies.
    fn ping(&self, from: usize, to: &str, count: u32, size: u32) -> u32 {
        let pod = &self.pods[from - 1];
        let (_, out) = pod.exec(&[
            "busybox",
            "ping",
            "-c",
            &count.to_string(),
            "-s",
            &size.to_string(),
            "-W",
            "2",
            to,
        ]);
        eprintln!("ping {} -> {to}: {}", pod.name, out.trim());
        out.split(" packets received")
            .next()
            .and_then(|s| s.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Every IPv4 and IPv6 packet crossing the wire.
    fn capture(&self) -> Capture {
        Capture::on(&self.wire.name, "br0")
            .filter("ip or ip6")
            .start()
            .unwrap_or_else(|e| panic!("{e}"))
    }
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

/// Wire lines carrying a pod address (either family) in the clear.
fn cleartext(lines: &[String]) -> (Vec<&String>, Vec<&String>) {
    let v4 = lines.iter().filter(|l| l.contains(" 10.0.")).collect();
    let v6 = lines.iter().filter(|l| l.contains(" fd10:")).collect();
    (v4, v6)
}

fn assert_no_cleartext(lines: &[String]) {
    let (v4, v6) = cleartext(lines);
    assert!(
        v4.is_empty() && v6.is_empty(),
        "cleartext pod traffic on the underlay: IPv4 {v4:#?}, IPv6 {v6:#?}"
    );
}

/// ESP packets over IPv6 on the wire whose ESP length lies in `range`.
fn esp6(lines: &[String], range: std::ops::RangeInclusive<u32>) -> usize {
    esp_on(lines, "IP6 fd00:2::", range)
}

/// ESP packets on the wire between addresses starting `outer` (tcpdump's `IP6 fd00:2::`,
/// `IP 192.0.2.`) whose ESP length lies in `range`.
fn esp_on(lines: &[String], outer: &str, range: std::ops::RangeInclusive<u32>) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(outer) && l.contains("ESP("))
        .filter_map(|l| l.rsplit("length ").next()?.trim().parse::<u32>().ok())
        .filter(|n| range.contains(n))
        .count()
}

/// ESP length of a ping of `size` bytes: inner header + ICMP header + payload, + 2 trailer
/// bytes padded to 4, + ESP header 8 + IV 8 + ICV 16.
fn esp_len_of_ping(inner_header: u32, size: u32) -> u32 {
    (inner_header + 8 + size + 2).div_ceil(4) * 4 + 32
}

/// A TCP listener on `addr` in `ns`: it answers every connection's first line `x` with
/// `ok x`.
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

/// Connects from `ns` to `to` (`addr:port`), sends a line and reads the answer.
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

/// Dual-stack pods on three nodes of an IPv6-only underlay: the plan per family is in
/// the kernel (interface MTU from the IPv6 ESP overhead, routes, the pods → peer-underlay
/// steering, the guard of both cluster supernets, the IPv6 interface bypass), pings of
/// both families and a TCP connection of each family between pods of every pair cross
/// the wire as ESP over IPv6 only — counted per family by their ESP lengths — with 0
/// cleartext of either family. Then, on node 2: the outbound SA to node 1 deleted → both
/// families to pod 1 dropped; the routes to node 3's pod CIDRs deleted → the guard drops
/// both families (the default routes lead over the wire). The control: node 2's mesh and
/// guard removed, the same pings leak on this wire in both families.
#[test]
fn vm_xfrm6_dual_stack_pods_over_ipv6_underlay_esp_only() {
    if VM.delegate(
        "vm_xfrm6_dual_stack_pods_over_ipv6_underlay_esp_only",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    let (n1, n2) = (&lab.nodes[0], &lab.nodes[1]);
    rt().block_on(async {
        let reports = lab.reconcile_all().await;
        // per node: 2 peers × (6 mesh policies, 3 per family + 8 with an underlay address
        // + 1 guard of its underlay address + 2 routes + 1 route in table 92 + 2 states)
        // + 7 guard + 7 bypass + the IPv6 interface bypass + the rule + the interface and
        // its two tunnel addresses + the unreachable route to the IPv6 cluster supernet
        for r in &reports {
            assert_eq!((r.added, r.updated), (60, 0), "{r:?}");
        }
        for (n, m) in lab.nodes.iter().zip(&lab.meshes) {
            let again = lab
                .tunnel
                .reconcile(&n.netns(), m, &secret())
                .await
                .unwrap();
            assert!(again.is_noop(), "second reconcile: {again:?}");
        }
        let l = n1.ip(&["-d", "link", "show", "scrambler0"]);
        assert!(l.contains("mtu 1420") && l.contains("if_id 0x5c5c"), "{l}");
        let addrs = n1.ip(&["addr", "show", "dev", "scrambler0"]);
        assert!(
            addrs.contains("10.0.1.1/32") && addrs.contains("fd10:0:1::1/128"),
            "{addrs}"
        );
        let r6 = n1.ip(&["-6", "route", "show", "proto", "92"]);
        eprintln!("{r6}");
        for (net, src) in [
            ("fd10:0:2::/64", "fd10:0:1::1"),
            ("fd10:0:3::/64", "fd10:0:1::1"),
        ] {
            let line = r6.lines().find(|l| l.starts_with(net)).unwrap_or_default();
            assert!(
                line.contains("dev scrambler0") && line.contains(&format!("src {src}")),
                "{net}: {r6}"
            );
        }
        assert!(
            r6.lines()
                .any(|l| l.starts_with("unreachable fd10::/16") && l.contains("metric 4294967295")),
            "IPv6 catch-all: {r6}"
        );
        let rules = n1.ip(&["-6", "rule"]);
        assert!(rules.contains("from fd10:0:1::/64 lookup 92"), "{rules}");
        let t = n1.ip(&["-6", "route", "show", "table", "92"]);
        assert!(
            t.contains("fd00:2::2 dev scrambler0") && t.contains("fd00:2::3 dev scrambler0"),
            "{t}"
        );
        let pol = n1.ip(&["xfrm", "policy"]);
        eprintln!("{pol}");
        assert!(pol.contains("src ::/0 dst fd10::/16"), "IPv6 guard: {pol}");
        assert!(
            pol.contains("src 0.0.0.0/0 dst 10.0.0.0/8"),
            "IPv4 guard: {pol}"
        );
        assert!(
            pol.contains("dev scrambler0"),
            "IPv6 interface bypass: {pol}"
        );
        assert!(
            pol.contains("tmpl src fd00:2::1 dst fd00:2::2"),
            "ESP over IPv6: {pol}"
        );

        for (a, b) in [(1usize, 2usize), (2, 3), (3, 1)] {
            tcp_listener(&lab.pods[b - 1], &format!("{}:8080", pod4(b)));
            tcp_listener(&lab.pods[b - 1], &format!("[{}]:8080", pod6(b)));
            let _ = a;
        }
        let cap = lab.capture();
        let pairs = [(1usize, 2usize), (2, 3), (3, 1)];
        let mut failed = Vec::new();
        for (a, b) in pairs {
            if lab.ping(a, &pod4(b), 3, 100) != 3 {
                failed.push(format!("ping pod{a} -> pod{b} IPv4"));
            }
            if lab.ping(a, &pod6(b), 3, 300) != 3 {
                failed.push(format!("ping pod{a} -> pod{b} IPv6"));
            }
            if !tcp_round_trip(&lab.pods[a - 1], &format!("{}:8080", pod4(b))) {
                failed.push(format!("TCP pod{a} -> pod{b} IPv4"));
            }
            if !tcp_round_trip(&lab.pods[a - 1], &format!("[{}]:8080", pod6(b))) {
                failed.push(format!("TCP pod{a} -> pod{b} IPv6"));
            }
        }
        if !failed.is_empty() {
            for n in &lab.nodes {
                let (_, stat) = n.exec(&["cat", "/proc/net/xfrm_stat"]);
                let stat: Vec<&str> = stat.lines().filter(|l| !l.ends_with(" 0")).collect();
                eprintln!("{}: {stat:?}\n{}", n.name, n.ip(&["-s", "xfrm", "state"]));
            }
            eprintln!("{:#?}", cap.finish());
            panic!("pod to pod through the mesh: {failed:?}");
        }
        // pods -> a peer's underlay address (the #15 part 0 steering, IPv6 here) and the
        // node's own traffic to remote pods. Known limit (crate docs): the node's own IPv6
        // packets to remote pods (its TCP replies included) meet the guard — dropped,
        // never cleartext (checked with the rest of the capture below); ICMP echo replies
        // leave by the interface the request came in and pass; IPv4 is not affected
        tcp_listener(n1, "[fd00:2::1]:6443");
        let pod_to_host_ping = ping_replies(&lab.pods[1], "fd00:2::1", 2);
        let pod_to_host_tcp = tcp_round_trip(&lab.pods[1], "[fd00:2::1]:6443");
        let host_to_pod6 = ping_replies(n1, &pod6(2), 2);
        let host_to_pod4 = ping_replies(n1, &pod4(2), 2);
        let pod_to_node6 = ping_replies(&lab.pods[1], "fd10:0:1::1", 2);
        figure(&format!(
            "pod2 -> node1 underlay: ping {pod_to_host_ping}/2 tcp {pod_to_host_tcp}; \
             node1 -> pod2: IPv6 {host_to_pod6}/2 IPv4 {host_to_pod4}/2; \
             pod2 -> node1 tunnel IPv6 {pod_to_node6}/2"
        ));
        assert_eq!(pod_to_host_ping, 2, "pod2 -> node1's IPv6 underlay address");
        assert_eq!(
            host_to_pod4, 2,
            "node1 -> pod2 IPv4 (over the IPv6 underlay)"
        );
        assert_eq!(pod_to_node6, 2, "pod2 -> node1's IPv6 tunnel address");
        assert!(
            !pod_to_host_tcp && host_to_pod6 == 0,
            "the node's own IPv6 traffic to remote pods now passes: update the known limit \
             in the README and the crate docs"
        );
        let lines = cap.finish();
        assert_no_cleartext(&lines);
        let (e4, e6) = (esp_len_of_ping(20, 100), esp_len_of_ping(40, 300));
        let (v4, v6) = (esp6(&lines, e4..=e4), esp6(&lines, e6..=e6));
        let (c4, c6) = cleartext(&lines);
        figure(&format!(
            "wire: {} lines, ESP over IPv6 carrying IPv4 pings ({e4} B) {v4}, IPv6 pings \
             ({e6} B) {v6}, all ESP {}; cleartext IPv4 {} IPv6 {}",
            lines.len(),
            esp6(&lines, 0..=u32::MAX),
            c4.len(),
            c6.len()
        ));
        // 3 pairs × 3 echoes × (request + reply) per family
        assert!(v4 >= 18 && v6 >= 18, "ESP per family: {lines:#?}");

        let s = lab
            .tunnel
            .status(&n1.netns(), &lab.meshes[0])
            .await
            .unwrap();
        eprintln!("{}", StatusTable(&s));
        assert!(s.encrypted && s.fail_closed, "{s:?}");
        assert_eq!(s.overhead, esp::esp_overhead(true));

        // fail closed, both families
        let cap = lab.capture();
        let spi = keys::spi(node6(2).incarnation(), node6(1).incarnation(), 1);
        n2.ip(&[
            "xfrm",
            "state",
            "delete",
            "src",
            "fd00:2::2",
            "dst",
            "fd00:2::1",
            "proto",
            "esp",
            "spi",
            &format!("{spi:#x}"),
        ]);
        assert_eq!(lab.ping(2, &pod4(1), 2, 100), 0, "no SA: IPv4 dropped");
        assert_eq!(lab.ping(2, &pod6(1), 2, 300), 0, "no SA: IPv6 dropped");
        n2.ip(&["route", "del", "10.0.3.0/24"]);
        n2.ip(&["-6", "route", "del", "fd10:0:3::/64"]);
        assert_eq!(lab.ping(2, &pod4(3), 2, 100), 0, "no route: IPv4 guard");
        assert_eq!(lab.ping(2, &pod6(3), 2, 300), 0, "no route: IPv6 guard");
        // node 2's own reply to pod 3 (an echo reply leaves by the interface the request
        // came in on, the xfrm interface, which the IPv6 bypass lets through the guard's
        // lookup) with the route to pod 3 gone: the unreachable route ends the lookup
        // instead of the default route over the wire
        let reply_without_route = lab.ping(3, "fd10:0:2::1", 2, 300);
        let s = lab
            .tunnel
            .status(&n2.netns(), &lab.meshes[1])
            .await
            .unwrap();
        eprintln!("{}", StatusTable(&s));
        assert!(!s.encrypted && s.fail_closed, "{s:?}");
        let lines = cap.finish();
        assert_eq!(
            reply_without_route, 0,
            "node 2 replied to pod 3 without a route"
        );
        let (c4, c6) = cleartext(&lines);
        figure(&format!(
            "SA and routes removed: {} wire lines, cleartext IPv4 {} IPv6 {}",
            lines.len(),
            c4.len(),
            c6.len()
        ));
        assert_no_cleartext(&lines);

        // the control of the above: without the unreachable route the reply leaks, and the
        // status says so
        let cap = lab.capture();
        n2.ip(&[
            "-6",
            "route",
            "del",
            "unreachable",
            "fd10::/16",
            "metric",
            "4294967295",
        ]);
        lab.ping(3, "fd10:0:2::1", 1, 300);
        let lines = cap.finish();
        let (_, v6) = cleartext(&lines);
        figure(&format!(
            "control without the unreachable route: node 2's echo replies in cleartext {}",
            v6.len()
        ));
        assert!(
            v6.iter().any(|l| l.contains("fd10:0:2::1 > fd10:0:3::2")),
            "the control must leak node 2's reply: {lines:#?}"
        );
        let s = lab
            .tunnel
            .status(&n2.netns(), &lab.meshes[1])
            .await
            .unwrap();
        assert!(!s.fail_closed, "{s:?}");
        assert_eq!(
            s.errors.get(scrambler_xfrm::UNREACHABLE_ROUTE_MISSING),
            Some(&1),
            "{s:?}"
        );

        // the control: without node 2's mesh and guard the same pings leak on this wire
        let cap = lab.capture();
        lab.tunnel.remove(&n2.netns()).await.unwrap();
        lab.ping(2, &pod4(3), 1, 100);
        lab.ping(2, &pod6(3), 1, 300);
        let lines = cap.finish();
        let (v4, v6) = cleartext(&lines);
        figure(&format!(
            "control without guard: cleartext IPv4 {} IPv6 {}",
            v4.len(),
            v6.len()
        ));
        assert!(
            !v4.is_empty() && !v6.is_empty(),
            "the control must leak both families: {lines:#?}"
        );
    });
}

/// Dual-stack pods over an IPv4 underlay (IPv6 in IPv4 through the same SAs, and IPv4 in
/// IPv4 with the states' `af-unspec`): pings and a TCP connection of each family between
/// the pods of every pair cross the wire as ESP over IPv4 only, counted per family by
/// their ESP lengths, 0 cleartext of either family; pod MTU 1440.
#[test]
fn vm_xfrm6_dual_stack_pods_over_ipv4_underlay_esp_only() {
    if VM.delegate(
        "vm_xfrm6_dual_stack_pods_over_ipv4_underlay_esp_only",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::on(false);
    rt().block_on(async {
        for r in lab.reconcile_all().await {
            assert_eq!(r.updated, 0, "{r:?}");
        }
        let l = lab.nodes[0].ip(&["-d", "link", "show", "scrambler0"]);
        assert!(l.contains("mtu 1440"), "{l}");
        let pol = lab.nodes[0].ip(&["xfrm", "policy"]);
        assert!(
            pol.contains("src fd10:0:1::/64 dst fd10:0:2::/64")
                && pol.contains("tmpl src 192.0.2.1 dst 192.0.2.2"),
            "{pol}"
        );
        let pairs = [(1usize, 2usize), (2, 3), (3, 1)];
        for (_, b) in pairs {
            tcp_listener(&lab.pods[b - 1], &format!("{}:8080", pod4(b)));
            tcp_listener(&lab.pods[b - 1], &format!("[{}]:8080", pod6(b)));
        }
        let cap = lab.capture();
        let mut failed = Vec::new();
        for (a, b) in pairs {
            if lab.ping(a, &pod4(b), 3, 100) != 3 {
                failed.push(format!("ping pod{a} -> pod{b} IPv4"));
            }
            if lab.ping(a, &pod6(b), 3, 300) != 3 {
                failed.push(format!("ping pod{a} -> pod{b} IPv6"));
            }
            if !tcp_round_trip(&lab.pods[a - 1], &format!("{}:8080", pod4(b))) {
                failed.push(format!("TCP pod{a} -> pod{b} IPv4"));
            }
            if !tcp_round_trip(&lab.pods[a - 1], &format!("[{}]:8080", pod6(b))) {
                failed.push(format!("TCP pod{a} -> pod{b} IPv6"));
            }
        }
        let lines = cap.finish();
        let (e4, e6) = (esp_len_of_ping(20, 100), esp_len_of_ping(40, 300));
        let (v4, v6) = (
            esp_on(&lines, "IP 192.0.2.", e4..=e4),
            esp_on(&lines, "IP 192.0.2.", e6..=e6),
        );
        let (c4, c6) = cleartext(&lines);
        figure(&format!(
            "IPv4 wire: {} lines, ESP over IPv4 carrying IPv4 pings ({e4} B) {v4}, IPv6 \
             pings ({e6} B) {v6}, all ESP {}; cleartext IPv4 {} IPv6 {}; failed {failed:?}",
            lines.len(),
            esp_on(&lines, "IP 192.0.2.", 0..=u32::MAX),
            c4.len(),
            c6.len()
        ));
        assert!(failed.is_empty(), "{failed:?}: {lines:#?}");
        assert_no_cleartext(&lines);
        assert!(v4 >= 18 && v6 >= 18, "ESP per family: {lines:#?}");
        let s = lab
            .tunnel
            .status(&lab.nodes[0].netns(), &lab.meshes[0])
            .await
            .unwrap();
        assert!(s.encrypted && s.fail_closed, "{s:?}");
    });
}
