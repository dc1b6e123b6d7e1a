//! The lab end to end, exactly as the README's main job runs it: `scrambler lab run` builds
//! 3 nodes with pods through the real CNI binary, proves the underlay carries only ESP,
//! injects every failure and checks recovery, then removes everything. On a kernel without
//! ESP the binary boots Debian's stock kernel under qemu by itself.

use std::process::Command;

#[test]
fn lab_run_tour_passes_and_leaves_nothing_behind() {
    let lab = format!("scrt{}", std::process::id() % 10000);
    let out = Command::new(env!("CARGO_BIN_EXE_scrambler"))
        .args(["lab", "run", "--nodes", "3", "--pods", "2", "--name", &lab])
        .output()
        .expect("run scrambler lab run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all = format!("{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "lab run failed ({}):\n{}",
        out.status,
        all.lines()
            .rev()
            .take(120)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(all.contains("lab run: PASS"), "{all}");
    assert!(
        all.contains("0 cleartext packets between pod CIDRs"),
        "{all}"
    );
    assert!(!all.contains("LEAK"), "{all}");
    for fault in ["LinkDown", "DeleteState", "KillAgent", "Rotate", "Reboot"] {
        assert!(
            all.contains(&format!("fault {fault}")),
            "{fault} not injected:\n{all}"
        );
    }
    // Nothing of the lab is left on this machine.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("{lab}-")));
    assert!(!std::path::Path::new("/run/scrambler-lab")
        .join(&lab)
        .exists());
}

#[test]
fn lab_run_ipvlan_pods_are_esp_only_and_leave_nothing_behind() {
    // Pods on ipvlan l3 slaves of each node's underlay with "encrypt": true: the CNI ADD
    // makes the node setup, the xfrm mesh encrypts, every failure is injected.
    let lab = format!("scri{}", std::process::id() % 10000);
    let out = Command::new(env!("CARGO_BIN_EXE_scrambler"))
        .args([
            "lab",
            "run",
            "--backend",
            "ipvlan",
            "--nodes",
            "3",
            "--pods",
            "2",
        ])
        .args(["--name", &lab])
        .output()
        .expect("run scrambler lab run --backend ipvlan");
    let all = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "lab run --backend ipvlan failed ({}):\n{all}",
        out.status
    );
    assert!(all.contains("lab run: PASS"), "{all}");
    assert!(
        all.contains("0 cleartext packets between pod CIDRs"),
        "{all}"
    );
    assert!(!all.contains("LEAK"), "{all}");
    for fault in ["LinkDown", "DeleteState", "KillAgent", "Rotate", "Reboot"] {
        assert!(
            all.contains(&format!("fault {fault}")),
            "{fault} not injected:\n{all}"
        );
    }
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("{lab}-")));
    assert!(!std::path::Path::new("/run/scrambler-lab")
        .join(&lab)
        .exists());
}

#[test]
fn lab_steps_up_test_status_inject_down() {
    // On a kernel without ESP the steps share one VM that `up` boots and `down` stops.
    let lab = format!("scrs{}", std::process::id() % 10000);
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_scrambler"))
            .args(args)
            .args(["--name", &lab])
            .output()
            .expect("run scrambler");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, up) = run(&["lab", "up", "--nodes", "2", "--pods", "1"]);
    let result = std::panic::catch_unwind(|| {
        assert!(ok, "lab up failed:\n{up}");
        let (ok, test) = run(&["lab", "test"]);
        assert!(ok && test.contains("verdict: PASS"), "{test}");
        let (ok, status) = run(&["lab", "status"]);
        assert!(ok && status.contains(" up "), "{status}");
        let (ok, inj) = run(&["lab", "inject", "rotate", "--hold-ms", "200"]);
        assert!(ok && inj.contains("0 cleartext packets"), "{inj}");
        let (again, _) = run(&["lab", "up", "--nodes", "2"]);
        assert!(!again, "a second lab up of the same lab must be refused");
    });
    let (down_ok, down) = run(&["lab", "down"]);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    assert!(down_ok, "{down}");
    let left = std::fs::read_dir("/run/scrambler-lab")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    assert!(
        !left.iter().any(|f| f.starts_with(&lab)),
        "left behind: {left:?}"
    );
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ns.stdout).contains(&format!("{lab}-")));
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
        r#"{"nodes":[{"name":"a","id":1,"underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"]},
                     {"name":"b","id":2,"underlay":["192.0.2.2"],"podCidrs":["10.244.2.0/24"]}],
            "keys":{"tx":1,"rx":[1]},"keyFile":"k"}"#,
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
        r#"{"nodes":[{"name":"a","id":1,"underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"]}],
            "keys":{"tx":4,"rx":[4]},"keyFile":"k"}"#,
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
