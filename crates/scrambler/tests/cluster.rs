//! `scrambler rotate --etcd-endpoints` and `scrambler delete-node` against a real
//! etcd-server (scripts/install-deps.sh test installs it).

use scrambler_agent::claims::{self, ClaimRequest};
use scrambler_agent::{EtcdConfig, Store};
use scrambler_testkit::etcd::Etcd;
use std::process::Command;

fn scrambler(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_scrambler"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn rotate_through_etcd_starts_one_rotation_at_a_time() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let (code, out, err) = scrambler(&["rotate", "--etcd-endpoints", &ep, "--grace-secs", "5"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rotation 1→2 started"), "{out}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let snap = rt.block_on(async {
        let s = Store::connect(&EtcdConfig::plain(vec![ep.clone()]))
            .await
            .unwrap();
        s.snapshot().await.unwrap()
    });
    assert_eq!(
        (snap.keys.current, snap.keys.next, snap.keys.grace_secs),
        (1, Some(2), 5)
    );
    // a second rotation waits for the first
    let (code, _, err) = scrambler(&["rotate", "--etcd-endpoints", &ep]);
    assert_eq!(code, 1);
    assert!(err.contains("rotation 1→2 is in progress"), "{err}");
    // file mode and etcd mode exclude each other; one of them is needed
    let (code, _, err) = scrambler(&["rotate"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = scrambler(&["rotate", "--mesh", "/nonexistent", "--etcd-endpoints", &ep]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn delete_node_releases_its_claims() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(Store::connect(&EtcdConfig::plain(vec![ep.clone()])))
        .unwrap();
    let req = ClaimRequest {
        name: "n1".into(),
        id: None,
        pod_cidrs: vec![],
        pool: Some(("10.244.0.0/16".parse().unwrap(), 24)),
    };
    let c = rt.block_on(claims::claim(&store, &req)).unwrap();
    let (code, out, err) = scrambler(&["delete-node", "--etcd-endpoints", &ep, "n1"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("id {} and pod CIDRs", c.id)), "{out}");
    assert!(rt
        .block_on(claims::existing(&store, "n1"))
        .unwrap()
        .is_none());
    let (code, _, err) = scrambler(&["delete-node", "--etcd-endpoints", &ep, "../x"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn agent_refuses_a_node_without_pod_cidrs_before_touching_anything() {
    let (code, _, err) = scrambler(&[
        "agent",
        "--etcd-endpoints",
        "http://127.0.0.1:1",
        "--node",
        "n1",
        "--underlay",
        "192.0.2.1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--pod-cidr-pool"), "{err}");
}

#[test]
fn agent_check_reads_liveness_and_readiness_from_the_status_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, _, err) = scrambler(&["agent-check", "--state-dir", d, "live"]);
    assert_eq!(code, 1, "no status file");
    assert!(err.contains("agent-status.json"), "{err}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut st = serde_json::json!({
        "node": "n1", "id": 1, "epoch": "00000000000000ab", "epochReused": false,
        "etcdConnected": true, "etcdUnreachableSince": null, "etcdError": null,
        "registered": true, "rotation": null, "tx": 1, "rx": [1], "peers": 0,
        "reconciles": 1, "lastReconcile": now, "reconcileError": null,
        "guarded": false, "updated": now,
    });
    let write = |v: &serde_json::Value| {
        std::fs::write(dir.path().join("agent-status.json"), v.to_string()).unwrap()
    };
    write(&st);
    assert_eq!(scrambler(&["agent-check", "--state-dir", d, "live"]).0, 0);
    let (code, _, err) = scrambler(&["agent-check", "--state-dir", d, "ready"]);
    assert_eq!(code, 1);
    assert!(err.contains("guard"), "{err}");
    st["guarded"] = true.into();
    write(&st);
    let (code, out, _) = scrambler(&["agent-check", "--state-dir", d, "ready"]);
    assert_eq!((code, out.trim()), (0, "ok"));
    st["updated"] = (now - 600).into();
    write(&st);
    let (code, _, err) = scrambler(&["agent-check", "--state-dir", d, "live"]);
    assert_eq!(code, 1);
    assert!(err.contains("not running"), "{err}");
}

#[test]
fn install_cni_claims_and_writes_binaries_and_the_conflist_of_the_deploy_configmap() {
    let etcd = Etcd::start();
    let ep = etcd.endpoint();
    let d = tempfile::tempdir().unwrap();
    let (src, bin, net) = (
        d.path().join("src"),
        d.path().join("bin"),
        d.path().join("net.d"),
    );
    for p in [&src, &bin, &net] {
        std::fs::create_dir(p).unwrap();
    }
    for b in ["scrambler-cni", "scrambler-ipam"] {
        std::fs::write(src.join(b), format!("#!{b}")).unwrap();
    }
    // the template shipped in deploy/configmap.yaml
    let cm: serde_json::Value = serde_yaml_value(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/configmap.yaml"
        ))
        .unwrap(),
    );
    let template = d.path().join("tmpl.conflist");
    std::fs::write(
        &template,
        cm["data"]["10-scrambler.conflist"].as_str().unwrap(),
    )
    .unwrap();
    let args = |node: &str| {
        vec![
            "install-cni".to_string(),
            "--etcd-endpoints".into(),
            ep.clone(),
            "--node".into(),
            node.into(),
            "--pod-cidr-pool".into(),
            "10.244.0.0/16".into(),
            "--bin-src".into(),
            src.display().to_string(),
            "--bin-dir".into(),
            bin.display().to_string(),
            "--conf-template".into(),
            template.display().to_string(),
            "--conf-dir".into(),
            net.display().to_string(),
        ]
    };
    let a: Vec<String> = args("n1");
    let (code, out, err) = scrambler(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bin.join("scrambler-cni"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    assert_eq!(
        std::fs::read_to_string(bin.join("scrambler-ipam")).unwrap(),
        "#!scrambler-ipam"
    );
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(net.join("10-scrambler.conflist")).unwrap()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(Store::connect(&EtcdConfig::plain(vec![ep.clone()])))
        .unwrap();
    let c = rt
        .block_on(claims::existing(&store, "n1"))
        .unwrap()
        .unwrap();
    let text = conf.to_string();
    assert!(text.contains(&format!("\"{}\"", c.pod_cidrs[0])), "{text}");
    assert!(!text.contains("__POD_CIDR__"));
    // a second node gets another CIDR; the same node again gets the same one
    let (code, _, err) = scrambler(&args("n2").iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    let c2 = rt
        .block_on(claims::existing(&store, "n2"))
        .unwrap()
        .unwrap();
    assert_ne!(c.pod_cidrs, c2.pod_cidrs);
    let (code, _, err) = scrambler(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        rt.block_on(claims::existing(&store, "n1"))
            .unwrap()
            .unwrap(),
        c
    );
}

fn serde_yaml_value(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).unwrap()
}

#[test]
fn agent_refuses_a_departed_hold_longer_than_a_day() {
    let state = tempfile::tempdir().unwrap();
    let sd = state.path().display().to_string();
    let args = |hold: &str| {
        scrambler(&[
            "agent",
            "--node",
            "a",
            "--underlay",
            "192.0.2.1",
            "--pod-cidr-pool",
            "10.244.0.0/16",
            "--etcd-endpoints",
            "http://127.0.0.1:9",
            "--state-dir",
            &sd,
            "--departed-hold-secs",
            hold,
        ])
    };
    // would overflow the hold's deadline: refused up front with a clear error, no panic
    let (code, out, err) = args(&u64::MAX.to_string());
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        err.contains("--departed-hold-secs") && err.contains("86400"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        std::fs::read_dir(state.path()).unwrap().next().is_none(),
        "left state behind"
    );
}
