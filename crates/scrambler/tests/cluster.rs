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
        let s = Store::connect(&EtcdConfig::plain(vec![ep.clone()])).await.unwrap();
        s.snapshot().await.unwrap()
    });
    assert_eq!((snap.keys.current, snap.keys.next, snap.keys.grace_secs), (1, Some(2), 5));
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
    let store = rt.block_on(Store::connect(&EtcdConfig::plain(vec![ep.clone()]))).unwrap();
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
    assert!(rt.block_on(claims::existing(&store, "n1")).unwrap().is_none());
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
