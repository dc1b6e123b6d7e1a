//! The lab end to end, as the README's main job runs it: `scrambler lab run` builds 3 nodes
//! with pods through the real CNI binary, proves the underlay carries only ESP, injects every
//! failure and checks recovery, then removes everything — with the mesh from the lab's mesh
//! file, and with `--agents` (the main job: a real etcd and one `scrambler agent` per node).
//! On a kernel without ESP the binary boots Debian's stock kernel under qemu by itself.

mod common;

use common::{
    args, assert_agents_tour, assert_faults_injected, assert_ipv6_lab_tests, assert_lab_run_passed,
    assert_node_encryption, assert_nothing_left, lab_name, scrambler, tail, with_lab,
};
use std::process::Command;

/// Every fault the xfrm and ipvlan labs inject.
const FAULTS: &[&str] = &["LinkDown", "DeleteState", "KillAgent", "Rotate", "Reboot"];

#[test]
fn lab_run_tour_passes_and_leaves_nothing_behind() {
    let lab = lab_name("scrt");
    let (ok, all) = scrambler(&args("lab run --nodes 3 --pods 2"), &lab);
    assert!(ok, "lab run failed:\n{}", tail(&all, 120));
    assert_lab_run_passed(&all);
    assert!(!all.contains("LEAK"), "{all}");
    assert_faults_injected(&all, FAULTS);
    // Nothing of the lab is left on this machine.
    assert_nothing_left(&lab);
}

#[test]
fn lab_run_ipv6_tour_passes_on_the_kernel() {
    // An IPv6-only underlay and dual-stack pods on the kernel's xfrm mesh: both families
    // pinged across nodes in every test of the tour (after each fault), ESP over IPv6
    // counted per node pair, 0 cleartext of either family; the node's own IPv6 traffic to
    // remote pods is shown as the documented limit, not judged; the NodePort over IPv6.
    let lab = lab_name("sc6");
    let (ok, all) = scrambler(&args("lab run --ipv6 --nodes 3 --pods 2"), &lab);
    assert!(ok, "lab run --ipv6 failed:\n{}", tail(&all, 150));
    assert_lab_run_passed(&all);
    assert!(!all.contains("LEAK"), "{all}");
    assert!(all.contains("IPv6-only underlay, dual-stack pods"), "{all}");
    assert!(
        all.contains(&format!("{lab}-n1 up (underlay 2001:db8::1)")),
        "{all}"
    );
    // 3 nodes x 2 pods: 6 pods, 4 on other nodes each, 24 pings per family
    let tests = assert_ipv6_lab_tests(&all, &[24]);
    assert!(tests >= 6, "a test after each of the 5 faults: {tests}");
    assert_faults_injected(&all, FAULTS);
    for probe in [
        format!("{lab}-n2 pod -> {lab}-n1 (fd00:10:244:1::1)"),
        format!("{lab}-n1 pod -> {lab}-n2 underlay (2001:db8::2)"),
        format!("{lab}-n1 host -> {lab}-n2 pod "),
        format!("{lab}-n3 host -> {lab}-n1 NodePort -> {lab}-n2 pod (IPv6)"),
    ] {
        assert!(
            all.lines()
                .any(|l| l.starts_with(&probe) && l.trim_end().ends_with("1/1")),
            "{probe}:\n{all}"
        );
    }
    assert!(
        all.lines().any(
            |l| l.starts_with(&format!("{lab}-n1 host -> {lab}-n2 pod (IPv6)"))
                && l.contains("expected limit, not judged: a kernel node's own IPv6")
        ),
        "{all}"
    );
    assert_nothing_left(&lab);
}

#[test]
fn lab_run_ipvlan_pods_are_esp_only_and_leave_nothing_behind() {
    // Pods on ipvlan l3 slaves of each node's underlay with "encrypt": true: the CNI ADD
    // makes the node setup, the xfrm mesh encrypts, every failure is injected.
    let lab = lab_name("scri");
    let (ok, all) = scrambler(&args("lab run --backend ipvlan --nodes 3 --pods 2"), &lab);
    assert!(ok, "lab run --backend ipvlan failed:\n{all}");
    assert_lab_run_passed(&all);
    assert!(!all.contains("LEAK"), "{all}");
    assert_faults_injected(&all, FAULTS);
    assert_nothing_left(&lab);
}

#[test]
fn lab_steps_up_test_status_inject_down() {
    // On a kernel without ESP the steps share one VM that `up` boots and `down` stops.
    let lab = lab_name("scrs");
    let run = |args: &[&str]| scrambler(args, &lab);
    let (ok, up) = run(&args("lab up --nodes 2 --pods 1"));
    with_lab(&lab, || {
        assert!(ok, "lab up failed:\n{up}");
        let (ok, test) = run(&args("lab test"));
        assert!(ok && test.contains("verdict: PASS"), "{test}");
        let (ok, status) = run(&args("lab status"));
        assert!(ok && status.contains(" up "), "{status}");
        let (ok, inj) = run(&args("lab inject rotate --hold-ms 200"));
        assert!(ok && inj.contains("0 cleartext packets"), "{inj}");
        let (again, _) = run(&args("lab up --nodes 2"));
        assert!(!again, "a second lab up of the same lab must be refused");
    });
}

#[test]
fn key_file_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    let out = Command::new(env!("CARGO_BIN_EXE_scrambler"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mesh = dir.path().join("mesh.json");
    std::fs::write(
        &mesh,
        r#"{"nodes":[{"name":"a","id":1,"epoch":"0123456789abcdef","underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"]},
                     {"name":"b","id":2,"epoch":"fedcba9876543210","underlay":["192.0.2.2"],"podCidrs":["10.244.2.0/24"]}],
            "clusterCidrs":["10.244.0.0/16"],"keys":{"tx":1,"rx":[1]},"keyFile":"k"}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_scrambler"))
        .args([
            "mesh",
            "apply",
            "--node",
            "a",
            "--netns",
            "/proc/self/ns/net",
            "--mesh",
        ])
        .arg(&mesh)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0640") && err.contains("chmod 0600"), "{err}");
}

#[test]
fn rotate_steps_the_mesh_file_through_three_phases() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh.json");
    std::fs::write(
        &mesh,
        r#"{"nodes":[{"name":"a","id":1,"epoch":"0123456789abcdef","underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"]}],
            "clusterCidrs":["10.244.0.0/16"],"keys":{"tx":4,"rx":[4]},"keyFile":"k"}"#,
    )
    .unwrap();
    let step = || {
        let out = Command::new(env!("CARGO_BIN_EXE_scrambler"))
            .args(["rotate", "--mesh"])
            .arg(&mesh)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(step().contains("prepare"));
    assert!(step().contains("switch"));
    let last = step();
    assert!(
        last.contains("finish") && last.contains("tx=5 rx={5}"),
        "{last}"
    );
}

#[test]
fn lab_run_agents_tour_on_the_kernel() {
    // The cluster on etcd: a real etcd and one `scrambler agent` per node drive the
    // kernel's xfrm mesh (in Debian's stock kernel under qemu here); every fault, with
    // etcd down for 5 s. A guest that hangs fails the run in minutes, not silently: the
    // lab VM's agent heartbeats, the host gives up after 120 s of silence, a soft lockup
    // panics the guest; the failure shows the last lab steps and the VM's console tail.
    let lab = lab_name("scag");
    let (ok, out) = scrambler(
        &args("lab run --agents --nodes 3 --pods 1 --etcd-down-secs 5"),
        &lab,
    );
    assert!(ok, "lab run --agents failed:\n{}", tail(&out, 150));
    assert_agents_tour(&out);
    assert_nothing_left(&lab);
}

#[test]
fn lab_run_with_node_encryption_on_the_kernel() {
    // `--node-encryption` from the mesh file: each host pings and connects (TCP, a port
    // outside the bypass list) to every other node's underlay address through the mesh;
    // no cleartext between node addresses in the first test nor after any fault.
    let lab = lab_name("sckn");
    let (ok, out) = scrambler(&args("lab run --node-encryption --nodes 3 --pods 1"), &lab);
    assert!(ok, "lab run --node-encryption failed:\n{}", tail(&out, 150));
    assert_lab_run_passed(&out);
    assert_node_encryption(&out, 12);
    assert_faults_injected(&out, FAULTS);
    assert_nothing_left(&lab);
}

#[test]
fn lab_run_agents_with_node_encryption_on_the_kernel() {
    let lab = lab_name("skan");
    let (ok, out) = scrambler(
        &args("lab run --agents --node-encryption --nodes 3 --pods 1 --etcd-down-secs 5"),
        &lab,
    );
    assert!(ok, "{}", tail(&out, 150));
    assert_agents_tour(&out);
    assert_node_encryption(&out, 12);
    assert_nothing_left(&lab);
}
