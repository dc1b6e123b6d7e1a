//! `lab up` and `lab run` refuse bad arguments before building or booting anything, and a
//! `lab up` that fails later leaves nothing running: no namespace, VPP, VM or state.

mod common;

use common::{args, assert_nothing_left, lab_name, scrambler, scrambler_cmd, tail};

#[test]
fn bad_lab_arguments_are_refused_before_anything_is_booted() {
    let lab = lab_name("scra");
    let cases: &[(&str, &str)] = &[
        ("lab up --backend wireguard", "lab backend \"wireguard\""),
        ("lab run --backend wireguard", "lab backend \"wireguard\""),
        ("lab up --nodes 1", "--nodes 1 out of range"),
        ("lab up --nodes 251", "--nodes 251 out of range"),
        ("lab run --pods 0", "--pods 0 out of range"),
        ("lab up --pods 201", "--pods 201 out of range"),
        // --ipv6 is a flag of both; ipvlan's encrypted pods have no IPv6 path
        ("lab up --ipv6 --nodes 1", "--nodes 1 out of range"),
        ("lab run --ipv6 --pods 0", "--pods 0 out of range"),
        (
            "lab up --ipv6 --backend ipvlan",
            "--ipv6 with --backend ipvlan",
        ),
        (
            "lab run --backend ipvlan --ipv6",
            "--ipv6 with --backend ipvlan",
        ),
        ("lab test --ipv6", "unexpected argument '--ipv6'"),
    ];
    for (line, expected) in cases {
        let (ok, out) = scrambler(&args(line), &lab);
        assert!(!ok, "`{line}` succeeded:\n{out}");
        assert!(out.contains(expected), "`{line}`: {out}");
        assert!(!out.contains("booting"), "`{line}` booted a VM:\n{out}");
        assert_nothing_left(&lab);
    }
    for bad in ["a/b", "../x", "", "_x", "a b", &"n".repeat(33)] {
        let (ok, out) = scrambler(&args("lab up"), bad);
        assert!(!ok && out.contains("lab name"), "--name {bad:?}: {out}");
        assert!(
            !out.contains("booting"),
            "--name {bad:?} booted a VM:\n{out}"
        );
    }
}

#[test]
fn lab_up_failing_after_the_boot_leaves_nothing_running() {
    // Every pod's CNI ADD fails (the "plugin" is /bin/false): on a kernel without ESP that
    // happens inside the lab VM, which must be powered off again.
    let lab = lab_name("scrf");
    let out = scrambler_cmd(&args("lab up --nodes 2 --pods 1"), &lab)
        .env("SCRAMBLER_CNI", "/bin/false")
        .output()
        .expect("run scrambler");
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "lab up succeeded:\n{all}");
    assert!(!all.contains("is up in"), "{}", tail(&all, 40));
    assert_nothing_left(&lab);
}
