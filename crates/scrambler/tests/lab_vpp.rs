//! The lab with VPP nodes, through the `scrambler` binary as the README runs it:
//! `--backend vpp` (every node a VPP; needs no kernel ESP, so it runs on this kernel) and
//! `--backend mixed` (odd nodes VPP, even nodes the kernel's xfrm; on a kernel without ESP
//! the binary boots Debian's stock kernel under qemu by itself). Every test checks that no
//! namespace, VPP process, shared-memory segment or state file of its lab is left behind.

mod common;

use common::{
    args, assert_agents_tour, assert_faults_injected, assert_ipv6_lab_tests, assert_lab_run_passed,
    assert_node_encryption, assert_nothing_left, lab_name, scrambler, scrambler_cmd, tail,
    with_lab,
};
use std::process::Command;

#[test]
fn vpp_lab_tour_passes_and_leaves_nothing_behind() {
    // 3 VPP nodes x 2 pods: all pairs over ESP, then every fault a VPP node supports
    // (delete-state has no VPP equivalent and is skipped), with a test after each.
    let lab = lab_name("scv");
    let (ok, out) = scrambler(&args("lab run --backend vpp --nodes 3 --pods 2"), &lab);
    assert!(ok, "lab run --backend vpp failed:\n{}", tail(&out, 150));
    assert_lab_run_passed(&out);
    assert!(!out.contains("LEAK"), "{out}");
    assert!(
        out.contains("pinging 24 pod pairs across nodes"),
        "3 nodes x 2 pods = 6 pods, 4 pods on other nodes each:\n{out}"
    );
    assert_faults_injected(&out, &args("LinkDown KillAgent Rotate Reboot"));
    assert!(out.contains("lab inject DeleteState: skipped"), "{out}");
    assert_nothing_left(&lab);
}

#[test]
fn vpp_lab_ipv6_tour_passes() {
    // VPP nodes on an IPv6-only underlay with dual-stack pods (`"underlayIpv6": true` in
    // their conf): both families across nodes in every test of the tour, ESP over IPv6
    // per node pair, 0 cleartext of either family. The host link is IPv4 only: its IPv6
    // probes are shown as the documented limit.
    let lab = lab_name("sv6");
    let (ok, out) = scrambler(
        &args("lab run --backend vpp --ipv6 --nodes 3 --pods 2"),
        &lab,
    );
    assert!(
        ok,
        "lab run --backend vpp --ipv6 failed:\n{}",
        tail(&out, 150)
    );
    assert_lab_run_passed(&out);
    assert!(!out.contains("LEAK"), "{out}");
    let tests = assert_ipv6_lab_tests(&out, &[24]);
    assert!(tests >= 5, "a test after each of the 4 faults: {tests}");
    assert_faults_injected(&out, &args("LinkDown KillAgent Rotate Reboot"));
    for probe in [
        format!("{lab}-n1 host -> {lab}-n2 pod "),
        format!("{lab}-n2 pod -> {lab}-n1 underlay (2001:db8::1)"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&probe) && l.trim_end().ends_with("1/1")),
            "{probe}:\n{out}"
        );
    }
    assert!(
        out.lines().any(
            |l| l.starts_with(&format!("{lab}-n1 host -> {lab}-n2 pod (IPv6)"))
                && l.contains("expected limit, not judged: a VPP node's host link is IPv4 only")
        ),
        "{out}"
    );
    assert_nothing_left(&lab);
}

#[test]
fn vpp_lab_steps_and_refused_fault() {
    let lab = lab_name("scw");
    let (ok, up) = scrambler(&args("lab up --backend vpp --nodes 2 --pods 1"), &lab);
    with_lab(&lab, || {
        assert!(ok, "lab up failed:\n{up}");
        // VPP holds the underlay address, the kernel side of the veth none
        let addrs = Command::new("ip")
            .args([
                "-n",
                &format!("{lab}-n1"),
                "-4",
                "addr",
                "show",
                "dev",
                "ul0",
            ])
            .output()
            .unwrap();
        assert!(!String::from_utf8_lossy(&addrs.stdout).contains("192.0.2.1"));
        let (ok, test) = scrambler(&args("lab test"), &lab);
        assert!(ok && test.contains("verdict: PASS"), "{test}");
        // node <-> remote pod through the VPP nodes' host links, both ways
        for probe in [
            format!("{lab}-n1 host -> {lab}-n2 pod"),
            format!("{lab}-n2 host -> {lab}-n1 pod"),
            format!("{lab}-n2 pod -> {lab}-n1 (10.244.1.1)"),
            format!("{lab}-n1 pod -> {lab}-n2 (10.244.2.1)"),
            format!("{lab}-n1 pod -> {lab}-n2 underlay (192.0.2.2)"),
            format!("{lab}-n2 pod -> {lab}-n1 underlay (192.0.2.1)"),
        ] {
            assert!(
                test.lines()
                    .any(|l| l.starts_with(&probe) && l.trim_end().ends_with("1/1")),
                "{probe}:\n{test}"
            );
        }
        let (ok, status) = scrambler(&args("lab status"), &lab);
        assert!(ok && status.contains(" up "), "{status}");
        let (ok, del) = scrambler(&args("lab inject delete-state --node 1"), &lab);
        assert!(
            !ok && del.contains("delete-state on VPP node"),
            "delete-state must be refused on a VPP node:\n{del}"
        );
        let (ok, ld) = scrambler(&args("lab inject link-down --hold-ms 300"), &lab);
        assert!(ok && ld.contains("0 cleartext packets"), "{ld}");
        let (ok, test) = scrambler(&args("lab test"), &lab);
        assert!(
            ok && test.contains("verdict: PASS"),
            "after link-down:\n{test}"
        );
    });
}

#[test]
fn failed_vpp_lab_up_leaves_nothing_behind() {
    let lab = lab_name("scf");
    let out = scrambler_cmd(&args("lab up --backend vpp --nodes 2 --pods 1"), &lab)
        .env("SCRAMBLER_VPP_DIST", "/nonexistent/vpp")
        .output()
        .expect("run scrambler");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("SCRAMBLER_VPP_DIST=/nonexistent/vpp"), "{err}");
    assert_nothing_left(&lab);
}

#[test]
fn mixed_lab_vpp_and_kernel_nodes_reach_each_other_over_esp_only() {
    // nodes 1 and 3 VPP, node 2 the kernel: VPP<->VPP and VPP<->xfrm pairs, all ESP.
    let lab = lab_name("scm");
    let (ok, out) = scrambler(
        &args("lab run --backend mixed --nodes 3 --pods 2 --no-inject"),
        &lab,
    );
    assert!(ok, "lab run --backend mixed failed:\n{}", tail(&out, 150));
    assert!(out.contains("lab run: PASS"), "{out}");
    assert!(out.contains("verdict: PASS"), "{out}");
    assert!(
        out.contains("0 cleartext packets between pod CIDRs"),
        "{out}"
    );
    for pair in ["n1 -> ", "n2 -> ", "n3 -> "] {
        assert!(out.contains(&format!("{lab}-{pair}")), "{pair}: {out}");
    }
    // node <-> remote pod across the dataplanes: VPP hosts (host links) and the kernel
    // host to remote pods, pods to remote tunnel and underlay addresses (a VPP node's
    // answered by VPP; a VPP pod's to the kernel node steered in the pods' VRF)
    for probe in [
        format!("{lab}-n1 host -> {lab}-n2 pod"),
        format!("{lab}-n2 host -> {lab}-n3 pod"),
        format!("{lab}-n2 pod -> {lab}-n1 (10.244.1.1)"),
        format!("{lab}-n1 pod -> {lab}-n2 (10.244.2.1)"),
        format!("{lab}-n1 pod -> {lab}-n2 underlay (192.0.2.2)"),
        format!("{lab}-n2 pod -> {lab}-n3 underlay (192.0.2.3)"),
        format!("{lab}-n3 pod -> {lab}-n1 underlay (192.0.2.1)"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&probe) && l.trim_end().ends_with("1/1")),
            "{probe}:\n{out}"
        );
    }
    assert_nothing_left(&lab);
}

#[test]
fn mixed_lab_ipv6_tour_passes() {
    // nodes 1 and 3 VPP, node 2 the kernel, on an IPv6-only underlay with dual-stack pods:
    // kernel <-> VPP ESP over IPv6 carrying both pod families, the default tour, 0
    // cleartext of either family.
    let lab = lab_name("sm6");
    let (ok, out) = scrambler(
        &args("lab run --backend mixed --ipv6 --nodes 3 --pods 2"),
        &lab,
    );
    assert!(
        ok,
        "lab run --backend mixed --ipv6 failed:\n{}",
        tail(&out, 150)
    );
    assert_lab_run_passed(&out);
    assert!(!out.contains("LEAK"), "{out}");
    let tests = assert_ipv6_lab_tests(&out, &[24]);
    assert!(tests >= 5, "a test after each fault: {tests}");
    assert_faults_injected(&out, &args("LinkDown KillAgent Rotate Reboot"));
    for probe in [
        format!("{lab}-n1 pod -> {lab}-n2 (fd00:10:244:2::1)"),
        format!("{lab}-n3 pod -> {lab}-n2 underlay (2001:db8::2)"),
        format!("{lab}-n2 pod -> {lab}-n1 underlay (2001:db8::1)"),
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&probe) && l.trim_end().ends_with("1/1")),
            "{probe}:\n{out}"
        );
    }
    assert_nothing_left(&lab);
}

/// `scrambler mesh remove` and then `mesh apply` of the same mesh file on a node — what a
/// reboot does to its dataplane — is refused by the node's ledger (the outbound SAs would
/// come back under keys that have sent, sequence numbers from 1), every time, until
/// `scrambler mesh epoch` gives the node a new epoch; then the mesh applies on both nodes
/// and the pods reach each other again, without a rotation.
#[test]
fn vpp_node_remove_then_apply_is_refused_until_a_new_epoch() {
    let lab = lab_name("sce");
    let (ok, up) = scrambler(&args("lab up --backend vpp --nodes 2 --pods 1"), &lab);
    with_lab(&lab, || {
        assert!(ok, "lab up failed:\n{up}");
        let dir = std::path::Path::new("/run/scrambler-lab").join(&lab);
        let mesh = dir.join("mesh.json");
        let node_cmd = |what: &[&str], i: usize| {
            let node = format!("{lab}-n{i}");
            let mut c = Command::new(env!("CARGO_BIN_EXE_scrambler"));
            c.args(what)
                .arg("--backend")
                .arg("vpp")
                .arg("--vpp-socket")
                .arg(dir.join(format!("vpp-n{i}/api.sock")));
            if what[1] == "apply" {
                c.args(["--node", &node, "--netns", &format!("/run/netns/{node}")])
                    .arg("--mesh")
                    .arg(&mesh)
                    .arg("--state-dir")
                    .arg(dir.join("state"))
                    .arg("--ledger-dir")
                    .arg(dir.join("ledger"));
            } else {
                c.args(["--netns", &format!("/run/netns/{node}")]);
            }
            let out = c.output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            (out.status.success(), text)
        };
        // a second apply with everything in place is fine (idempotent)
        let (ok, out) = node_cmd(&["mesh", "apply"], 1);
        assert!(ok && out.contains("0 added"), "{out}");
        let (ok, out) = node_cmd(&["mesh", "remove"], 1);
        assert!(ok, "{out}");
        for _ in 0..2 {
            let (ok, out) = node_cmd(&["mesh", "apply"], 1);
            assert!(!ok, "apply after remove must be refused:\n{out}");
            assert!(
                out.contains(&format!("outbound SA of node \"{lab}-n1\" to {lab}-n2"))
                    && out.contains("nonce reuse")
                    && out.contains(&format!(
                        "scrambler mesh epoch --node {lab}-n1 --mesh {}",
                        mesh.display()
                    )),
                "{out}"
            );
        }
        // nothing was installed by the refused applies
        let (ok, status) = scrambler(&args("lab status"), &lab);
        // (mesh remove kept the guard: the peer is blocked, not open)
        assert!(
            ok && status.contains(&format!("{lab}-n2 blocked: no outbound SA")),
            "{status}"
        );
        let out = Command::new(env!("CARGO_BIN_EXE_scrambler"))
            .args(["mesh", "epoch", "--node", &format!("{lab}-n1"), "--mesh"])
            .arg(&mesh)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        for i in [1, 2] {
            let (ok, out) = node_cmd(&["mesh", "apply"], i);
            assert!(ok, "apply on node {i} with the new epoch:\n{out}");
        }
        let (ok, test) = scrambler(&args("lab test"), &lab);
        assert!(ok && test.contains("verdict: PASS"), "{test}");
        let rotated = std::fs::read_to_string(&mesh).unwrap();
        assert!(rotated.contains("\"tx\": 1"), "no rotation: {rotated}");
    });
}

#[test]
fn vpp_lab_agents_ipv6_tour() {
    // 3 VPP nodes on etcd over an IPv6-only underlay: each agent registers its IPv6
    // underlay address and both pod CIDRs; every fault, both families tested after each
    // (6 pings per family with 3 nodes x 1 pod, 2 while node 3 has left).
    let lab = lab_name("sa6");
    let (ok, out) = scrambler(
        &args("lab run --backend vpp --agents --ipv6 --nodes 3 --pods 1 --etcd-down-secs 5"),
        &lab,
    );
    assert!(
        ok,
        "lab run --backend vpp --agents --ipv6 failed:\n{}",
        tail(&out, 150)
    );
    assert_agents_tour(&out);
    let tests = assert_ipv6_lab_tests(&out, &[6, 2]);
    assert!(tests >= 8, "a test after each of the 7 faults: {tests}");
    assert!(
        out.contains(&format!("{lab}-n2 up (underlay 2001:db8::2)")),
        "{out}"
    );
    assert_nothing_left(&lab);
}

#[test]
fn vpp_lab_agents_tour() {
    // 3 VPP nodes on etcd, one `scrambler agent` each: every fault, etcd down for 5 s.
    let lab = lab_name("sca");
    let (ok, out) = scrambler(
        &args("lab run --backend vpp --agents --nodes 3 --pods 1 --etcd-down-secs 5"),
        &lab,
    );
    assert!(
        ok,
        "lab run --backend vpp --agents failed:\n{}",
        tail(&out, 150)
    );
    assert_agents_tour(&out);
    assert_nothing_left(&lab);
}

#[test]
fn vpp_lab_with_node_encryption_carries_host_traffic_encrypted_through_every_fault() {
    // `--node-encryption` on VPP nodes: each host reaches every other node's underlay
    // address (ping; VPP answers) and host service (TCP to the tunnel address: a VPP
    // node's underlay address is VPP's) through the mesh, and its SYNs to every other
    // node's underlay address are counted in by that node's SA (node encryption's proof:
    // the tunnel-address TCP is pod-CIDR traffic, carried without it too); the capture
    // counts cleartext between node addresses as a leak: none, in the first test and
    // after every fault.
    let lab = lab_name("scne");
    let (ok, out) = scrambler(
        &args("lab run --backend vpp --node-encryption --nodes 3 --pods 1"),
        &lab,
    );
    assert!(
        ok,
        "lab run --backend vpp --node-encryption failed:\n{}",
        tail(&out, 150)
    );
    assert_lab_run_passed(&out);
    assert!(
        out.contains("6 host -> remote underlay pairs (node encryption)"),
        "{out}"
    );
    // 3 nodes: 6 pings, 6 TCP connections and 6 SYN probes per test
    assert_node_encryption(&out, 18);
    assert!(
        out.lines().filter(|l| l.contains(" SYN carried")).count() >= 6,
        "{out}"
    );
    assert_faults_injected(&out, &args("LinkDown KillAgent Rotate Reboot"));
    assert_nothing_left(&lab);
}

#[test]
fn mixed_lab_with_node_encryption_carries_host_traffic_encrypted() {
    // nodes 1 and 3 VPP, 2 and 4 the kernel: VPP hosts ping every underlay address; the
    // kernel hosts' pings to the VPP nodes' underlay addresses must go unanswered (VPP's
    // answer is dropped by its guard: a documented limit; a leak of it fails the
    // capture); TCP to the kernel nodes' underlay addresses and to the VPP nodes' tunnel
    // addresses, SYNs to the VPP nodes' underlay addresses; the NodePort probe still
    // works (4 nodes give one).
    let lab = lab_name("scmn");
    let (ok, out) = scrambler(
        &args("lab run --backend mixed --node-encryption --nodes 4 --pods 1 --no-inject"),
        &lab,
    );
    assert!(ok, "{}", tail(&out, 150));
    assert_lab_run_passed(&out);
    // 4 nodes: 8 answered pings, 4 unanswered ones (kernel host -> VPP underlay), 12 TCP
    // connections, 6 SYN probes (3 sources × 2 VPP targets)
    assert_node_encryption(&out, 8 + 4 + 12 + 6);
    assert_eq!(
        out.lines()
            .filter(|l| l.contains("answer dropped (expected)"))
            .count(),
        4,
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("NodePort") && l.trim_end().ends_with("1/1")),
        "{out}"
    );
    assert_nothing_left(&lab);
}

#[test]
#[ignore = "rotate on the mixed agents lab loses echoes between VPP node 1 (the rotated node) and \
            kernel node 2 (two VM runs: 2 echoes / 100 ms on the kernel node's pod flows; 6.2 s \
            on both pod flows and node 3's host flow to node 1), 0 cleartext; once etcd-down \
            was seen after 6.6 s (> 5 s, the VM loaded). Not the kernel's NodePort or \
            node-leave paths, which pass here"]
fn mixed_lab_with_node_encryption_on_agents() {
    let lab = lab_name("scma");
    let (ok, out) = scrambler(
        &args(
            "lab run --backend mixed --agents --node-encryption --nodes 3 --pods 1 \
             --etcd-down-secs 5",
        ),
        &lab,
    );
    assert!(ok, "{}", tail(&out, 150));
    assert_agents_tour(&out);
    // 3 nodes (1, 3 VPP): 4 answered pings, 2 unanswered, 6 TCP, 4 SYN probes
    assert_node_encryption(&out, 4 + 2 + 6 + 4);
    assert_nothing_left(&lab);
}

#[test]
fn vpp_lab_agents_tour_with_node_encryption() {
    // 3 VPP nodes on etcd with `--node-encryption` on every agent: every fault (etcd down
    // 5 s, a node leaving: the host flow to it meets VPP's tombstone, 0 cleartext).
    let lab = lab_name("scan");
    let (ok, out) = scrambler(
        &args(
            "lab run --backend vpp --agents --node-encryption --nodes 3 --pods 1 \
             --etcd-down-secs 5",
        ),
        &lab,
    );
    assert!(ok, "{}", tail(&out, 150));
    assert_agents_tour(&out);
    // 18 probes per test with 3 nodes (6 pings, 6 TCP, 6 SYN), fewer while a node is gone
    assert_node_encryption(&out, 12);
    assert!(out.contains(" SYN carried"), "{out}");
    assert_nothing_left(&lab);
}
