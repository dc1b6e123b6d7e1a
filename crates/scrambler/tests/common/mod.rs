//! How the lab tests run the `scrambler` binary, and what they check a lab left behind.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// A lab name unique to this test process: `prefix` and a number from the pid.
pub fn lab_name(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id() % 10000)
}

/// The words of `line`, as arguments.
pub fn args(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// `scrambler <args> --name <lab>`, not started yet (to add environment).
pub fn scrambler_cmd(args: &[&str], lab: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_scrambler"));
    cmd.args(args).args(["--name", lab]);
    cmd
}

/// Runs `scrambler <args> --name <lab>`: (success, stdout and stderr).
pub fn scrambler(args: &[&str], lab: &str) -> (bool, String) {
    let out = scrambler_cmd(args, lab).output().expect("run scrambler");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len().saturating_sub(n);
    // what failed may lie before the tail: its lines come first
    let failed: Vec<&str> = lines[..cut]
        .iter()
        .copied()
        .filter(|l| l.contains("FAIL") || l.contains("!!!"))
        .collect();
    let head = if failed.is_empty() {
        String::new()
    } else {
        format!(
            "failing lines before the tail:\n{}\n...\n",
            failed.join("\n")
        )
    };
    format!("{head}{}", lines[cut..].join("\n"))
}

/// `lab run` passed and saw no cleartext between pods.
pub fn assert_lab_run_passed(out: &str) {
    assert!(out.contains("lab run: PASS"), "{out}");
    assert!(
        out.contains("0 cleartext packets between pod CIDRs"),
        "{out}"
    );
}

/// Every one of `faults` was injected.
pub fn assert_faults_injected(out: &str, faults: &[&str]) {
    for fault in faults {
        assert!(
            out.contains(&format!("fault {fault}")),
            "{fault} not injected:\n{out}"
        );
    }
}

/// Panics if anything of lab `lab` is still there: a namespace, a file of its state
/// (`/run/scrambler-lab/<lab>*`), a shared-memory segment, a process working in it, or its
/// VM (the `scrambler lab vm-serve` daemon or its qemu).
pub fn assert_nothing_left(lab: &str) {
    let prefix = format!("{lab}-");
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ns = String::from_utf8_lossy(&ns.stdout);
    assert!(!ns.contains(&prefix), "namespaces left: {ns}");
    let files = names_starting_with(Path::new("/run/scrambler-lab"), lab);
    assert!(files.is_empty(), "left in /run/scrambler-lab: {files:?}");
    let shm = names_starting_with(Path::new("/dev/shm"), &prefix);
    assert!(shm.is_empty(), "shared memory left: {shm:?}");
    let needles = [
        format!("/run/scrambler-lab/{lab}/"),
        format!("/run/scrambler-lab/{lab}.vm.sock"),
        format!("lab vm-serve --name {lab} "),
    ];
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .filter(|c| needles.iter().any(|n| c.contains(n)))
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

/// The entries of `dir` whose names start with `prefix` (none when `dir` is missing).
fn names_starting_with(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f` on lab `lab`, then takes the lab down whatever happened and re-raises a
/// failure of `f`; checks the lab went down and left nothing.
pub fn with_lab(lab: &str, f: impl FnOnce() + std::panic::UnwindSafe) {
    let result = std::panic::catch_unwind(f);
    let (down_ok, down) = scrambler(&["lab", "down"], lab);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(down_ok, "lab down failed:\n{down}");
    assert_nothing_left(lab);
}

/// What the agents' tour (`lab run --agents`) must have shown, whatever the backend.
pub fn assert_agents_tour(out: &str) {
    assert_lab_run_passed(out);
    assert!(!out.contains("LEAK") && !out.contains("!!!"), "{out}");
    assert!(!out.contains("fault verdict: FAIL"), "{out}");
    assert!(out.contains("mesh from etcd (one agent per node)"), "{out}");
    assert!(out.contains("agents built the mesh from etcd"), "{out}");
    assert_faults_injected(
        out,
        &args("LinkDown KillAgent Rotate EtcdDown NodeLeave NodeJoin Reboot"),
    );
    assert!(out.contains("lab inject DeleteState: skipped"), "{out}");
    // kill-agent: the restarted agent finds its dataplane in place
    assert!(out.contains("(kept), its reconcile did +0 ~0 -0"), "{out}");
    // rotate through etcd: every agent switches, the old generation is retired
    assert!(
        out.contains("every agent sends with generation 2,2,2"),
        "{out}"
    );
    assert!(
        out.contains("old generation retired on every node"),
        "{out}"
    );
    // etcd-down: fail static, said so, caught up without a rebuild
    assert!(
        out.contains("every agent reports etcd unreachable"),
        "{out}"
    );
    assert!(out.contains("epochs unchanged (no rebuild)"), "{out}");
    assert!(
        out.contains("reconcile counts while etcd was down: unchanged on every agent"),
        "{out}"
    );
    // node-leave / node-join
    assert!(out.contains("left every peer's mesh"), "{out}");
    assert!(out.contains("-> 10.244.3.2 answers"), "{out}");
    // reboot: a new epoch, no rotation
    assert!(
        out.contains(" (new)") && out.contains("no rotation"),
        "{out}"
    );
}

/// With `--node-encryption`: every `lab test` printed its host → host probes (at least
/// `min_probes` of them per test with every node in the mesh: pings to underlay addresses,
/// TCP connections; the test after a node left has fewer nodes and counts toward none),
/// each answered, and no cleartext between node addresses crossed the underlay.
pub fn assert_node_encryption(out: &str, min_probes: usize) {
    assert!(out.contains("node encryption on"), "{out}");
    let short = out.matches("-- lab test after NodeLeave").count();
    let tests = out.lines().filter(|l| l.starts_with("verdict: ")).count() - short;
    let probes: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(" host -> ") && (l.contains(" underlay (") || l.contains(" tcp/")))
        .filter(|l| !l.contains(" pod"))
        .collect();
    assert!(
        tests > 0 && probes.len() >= tests * min_probes,
        "{} host -> host probe lines for {tests} tests:\n{out}",
        probes.len()
    );
    assert!(probes.iter().any(|l| l.contains(" tcp/")), "{out}");
    for l in &probes {
        let last = l.split_whitespace().last().unwrap_or_default();
        let (ok, n) = last.split_once('/').unwrap_or(("", "?"));
        assert!(ok == n && ok != "0", "not answered: {l}\n{out}");
    }
    assert_eq!(
        out.matches("underlay: 0 cleartext packets between node addresses (")
            .count(),
        out.matches("cleartext packets between node addresses")
            .count(),
        "{out}"
    );
    assert!(!out.contains("!!!"), "{out}");
    // the figures of a passing run (shown with --nocapture)
    for l in out.lines().filter(|l| {
        l.starts_with("underlay: ")
            || l.starts_with("verdict: ")
            || l.starts_with("fault ")
            || l.contains("NodePort ->")
            || (l.contains(" -> 192.") && !l.contains(" underlay ("))
    }) {
        eprintln!("{l}");
    }
    eprintln!("{} host -> host probes, all answered", probes.len());
}

/// An `--ipv6` lab's `lab test` (every one of them in `out`, e.g. after each fault of a
/// tour) pinged both families across nodes, every ping answered, one of `pairs` pings of
/// each family each time (the lab's size may change in a tour), with no cleartext of
/// either family; returns how many tests it found.
pub fn assert_ipv6_lab_tests(out: &str, pairs: &[usize]) -> usize {
    let mut found = 0;
    for family in ["IPv4", "IPv6"] {
        let prefix = format!("{family} pod pings across nodes: ");
        let counts: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .collect();
        assert!(!counts.is_empty(), "no {family} pod pings:\n{out}");
        for c in &counts {
            assert!(
                pairs.iter().any(|n| *c == format!("{n}/{n}")),
                "{family} {c}, expected all of one of {pairs:?}:\n{out}"
            );
        }
        found = counts.len();
    }
    let verdicts = out.lines().filter(|l| l.starts_with("verdict: ")).count();
    assert_eq!(verdicts, found, "a test without both families:\n{out}");
    assert!(!out.contains("verdict: FAIL"), "{out}");
    let clean = "0 cleartext packets between pod CIDRs (IPv4 and IPv6)";
    assert_eq!(
        out.matches(clean).count(),
        found,
        "every test judges both families' cleartext, 0 each time:\n{out}"
    );
    found
}
