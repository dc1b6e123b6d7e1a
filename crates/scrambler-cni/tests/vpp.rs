//! The built `scrambler-cni` binary with `"backend": "vpp"` against a real VPP (from
//! `../shared/vpp`, in a test namespace that is the node): ADD/CHECK/DEL, pods pinging
//! through VPP, GC, STATUS, and bad input.

mod common;

use common::*;
use scrambler_core::fault::FaultStage;
use scrambler_testkit::netns::TestNetns;
use scrambler_testkit::vpp::VppInstance;
use serde_json::{json, Value};

fn conf(vpp: &VppInstance, data: &std::path::Path, subnet: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "scr-vpp",
        "type": "scrambler-cni",
        "backend": "vpp",
        "vpp": {"apiSocket": vpp.api_sock()},
        "ipam": {
            "type": "scrambler-ipam",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": data.join("ipam"),
        },
        "logFile": data.join("cni.log"),
        "logLevel": "debug",
    })
}

fn run(vpp: &VppInstance, cni_path: &CniPath, inv: &Invocation, conf: &Value) -> CniOut {
    run_plugin(
        &vpp.netns.name,
        std::path::Path::new(BIN),
        inv,
        &cni_path.value(),
        conf,
    )
}

fn leases(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("ipam").join("scr-vpp"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::IpAddr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_check_del_gc_status_against_vpp() {
    let vpp = VppInstance::start("cvpp", 1).await;
    let data = tempfile::tempdir().unwrap();
    let cni_path = CniPath::new();
    let conf = conf(&vpp, data.path(), "10.9.5.0/24");
    let (p1, p2) = (TestNetns::new("cvppa"), TestNetns::new("cvppb"));
    let add1 = Invocation::new("ADD", "vpp-one", &p1.path(), "eth0");
    let add2 = Invocation::new("ADD", "vpp-two", &p2.path(), "eth0");

    let r1 = run(&vpp, &cni_path, &add1, &conf).expect_ok().json();
    let r2 = run(&vpp, &cni_path, &add2, &conf).expect_ok().json();
    assert_eq!(r1["cniVersion"], "1.1.0");
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(
        r1["interfaces"][1]["sandbox"],
        p1.path().display().to_string()
    );
    assert_eq!(r1["ips"][0]["gateway"], "169.254.1.1");
    let (ip1, ip2) = (ip_of(&r1), ip_of(&r2));
    assert!(ping(&p1, &ip2), "{ip1} -> {ip2} through VPP failed");
    assert!(ping(&p2, &ip1), "{ip2} -> {ip1} through VPP failed");
    assert_eq!(vpp.af_packet_names().await.len(), 2);
    assert_eq!(leases(data.path()), 2);

    // CHECK: fine, then a pod address removed is reported (103)
    let check1 = add1.cmd("CHECK");
    run(&vpp, &cni_path, &check1, &with_prev(&conf, &r1)).expect_ok();
    p1.ip(&["addr", "del", &format!("{ip1}/32"), "dev", "eth0"]);
    let bad = run(&vpp, &cni_path, &check1, &with_prev(&conf, &r1));
    assert_eq!(bad.code(), 103, "{}", bad.stdout);
    assert!(bad.stdout.contains(&ip1), "{}", bad.stdout);

    // STATUS: VPP answers
    let mut st = Invocation::new("STATUS", "", std::path::Path::new("/"), "");
    st.netns = None;
    run(&vpp, &cni_path, &st, &conf).expect_ok();

    // an ADD failing after VPP's routes exist leaves nothing (no interface, no lease)
    let p3 = TestNetns::new("cvppc");
    let add3 = Invocation::new("ADD", "vpp-three", &p3.path(), "eth0");
    let bad = run(
        &vpp,
        &cni_path,
        &add3
            .clone()
            .env("SCRAMBLER_FAULT", FaultStage::AfterHostRoute.name()),
        &conf,
    );
    assert_ne!(bad.code(), 0, "{}", bad.stdout);
    assert_eq!(vpp.af_packet_names().await.len(), 2);
    assert_eq!(leases(data.path()), 2);

    // a pod of a second Scrambler network on the same VPP
    let mut conf_b = conf.clone();
    conf_b["name"] = "scr-vpp-b".into();
    conf_b["ipam"]["ranges"] = json!([[{"subnet": "10.9.6.0/24"}]]);
    let r3 = run(&vpp, &cni_path, &add3, &conf_b).expect_ok().json();

    // GC keeps pod two, removes pod one (interface and lease), leaves network b alone
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "vpp-two", "ifname": "eth0"}]);
    run(&vpp, &cni_path, &st.cmd("GC"), &gc_conf).expect_ok();
    assert_eq!(vpp.af_packet_names().await.len(), 2);
    assert_eq!(leases(data.path()), 1);
    assert!(!links(&p1).contains(&"eth0".to_string()));
    run(
        &vpp,
        &cni_path,
        &add3.cmd("CHECK"),
        &with_prev(&conf_b, &r3),
    )
    .expect_ok();
    run(&vpp, &cni_path, &add3.cmd("DEL"), &conf_b).expect_ok();
    assert_eq!(vpp.af_packet_names().await.len(), 1);

    // DEL, twice, and DEL of what GC already removed
    for _ in 0..2 {
        run(&vpp, &cni_path, &add2.cmd("DEL"), &conf).expect_ok();
        run(&vpp, &cni_path, &add1.cmd("DEL"), &conf).expect_ok();
    }
    assert!(vpp.af_packet_names().await.is_empty());
    assert_eq!(leases(data.path()), 0);
    assert!(!links(&p2).contains(&"eth0".to_string()));
    let node_links = links(&vpp.netns);
    assert!(
        !node_links.iter().any(|l| l.starts_with("scv")),
        "{node_links:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_missing_vpp() {
    let vpp = VppInstance::start("cvpq", 0).await;
    let data = tempfile::tempdir().unwrap();
    let cni_path = CniPath::new();
    let good = conf(&vpp, data.path(), "10.9.6.0/24");
    let pod = TestNetns::new("cvpqa");
    let add = Invocation::new("ADD", "vpp-bad", &pod.path(), "eth0");

    // no VPP behind the socket: 11, naming the socket; nothing leased or left
    let mut missing = good.clone();
    missing["vpp"]["apiSocket"] = json!("/run/scr-vpp/not-there/api.sock");
    let out = run(&vpp, &cni_path, &add, &missing);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(out.stdout.contains("not-there/api.sock"), "{}", out.stdout);
    assert_eq!(leases(data.path()), 0);
    assert!(!links(&pod).contains(&"eth0".to_string()));
    // ... DEL still succeeds, STATUS says not available (50)
    run(&vpp, &cni_path, &add.cmd("DEL"), &missing).expect_ok();
    let mut st = Invocation::new("STATUS", "", std::path::Path::new("/"), "");
    st.netns = None;
    assert_eq!(run(&vpp, &cni_path, &st, &missing).code(), 50);

    // a typo in the vpp section, and a section of the wrong type: 7
    let mut typo = good.clone();
    typo["vpp"] = json!({"apiSock": "/run/vpp/api.sock"});
    let out = run(&vpp, &cni_path, &add, &typo);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(out.stdout.contains("apiSock"), "{}", out.stdout);
    let mut wrong = good.clone();
    wrong["vpp"] = json!("/run/vpp/api.sock");
    assert_eq!(run(&vpp, &cni_path, &add, &wrong).code(), 7);

    // CNI_IFNAME taken in the pod: 102, and the lease is released
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let out = run(&vpp, &cni_path, &add, &good);
    assert_eq!(out.code(), 102, "{}", out.stdout);
    assert_eq!(leases(data.path()), 0);
    assert!(vpp.af_packet_names().await.is_empty());

    // a pod namespace that does not exist: 3
    let gone = Invocation::new(
        "ADD",
        "vpp-gone",
        std::path::Path::new("/run/netns/scr-cvpq-none"),
        "eth0",
    );
    assert_eq!(run(&vpp, &cni_path, &gone, &good).code(), 3);
    assert_eq!(leases(data.path()), 0);

    // CHECK without prevResult: 7
    assert_eq!(run(&vpp, &cni_path, &add.cmd("CHECK"), &good).code(), 7);

    // ADD on another interface name works; DEL cleans up
    let add1 = Invocation::new("ADD", "vpp-bad", &pod.path(), "net1");
    let r = run(&vpp, &cni_path, &add1, &good).expect_ok().json();
    assert_eq!(r["interfaces"][1]["name"], "net1");
    run(&vpp, &cni_path, &add1.cmd("CHECK"), &with_prev(&good, &r)).expect_ok();
    run(&vpp, &cni_path, &add1.cmd("DEL"), &good).expect_ok();
    assert!(vpp.af_packet_names().await.is_empty());
    assert_eq!(leases(data.path()), 0);
}

/// With `tunnelStatusFile`, ADD checks the guard in VPP itself (a fresh, guarded file is
/// not enough): refused (11, nothing left) until the agent's cluster drop route is there,
/// accepted with it, refused again once it is gone (VPP restarted under the agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_with_the_gate_checks_the_guard_route_in_vpp() {
    use scrambler_core::{ClusterSecret, Keys, Mesh, NodeId, Tunnel};
    let vpp = VppInstance::start("cvppg", 1).await;
    let data = tempfile::tempdir().unwrap();
    let cni_path = CniPath::new();
    let status_file = data.path().join("tunnel-status.json");
    let mut conf = conf(&vpp, data.path(), "10.9.7.0/24");
    conf["tunnelStatusFile"] = json!(status_file);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let st = json!({"dataplane": "vpp", "encrypted": true, "failClosed": true, "peers": [],
        "errors": {}, "overhead": 57, "updated": now, "maxAge": 90,
        "clusterCidrs": ["10.0.0.0/8"]});
    std::fs::write(&status_file, st.to_string()).unwrap();
    let pod = TestNetns::new("cvppgp");
    let add = Invocation::new("ADD", "vpp-gate", &pod.path(), "eth0");
    let refused = |what: &str| {
        let out = run(&vpp, &cni_path, &add, &conf);
        assert_eq!(out.code(), 11, "{what}: {out:?}");
        assert!(out.stdout.contains("10.0.0.0/8"), "{what}: {out:?}");
        assert_eq!(leases(data.path()), 0, "{what}");
    };
    refused("no guard route");
    assert!(vpp.af_packet_names().await.is_empty());

    // the guard as the agent's VPP dataplane makes it: the node alone in its mesh
    let mesh = Mesh {
        local: scrambler_core::Node {
            name: "n1".into(),
            id: NodeId::new(1).unwrap(),
            epoch: scrambler_core::Epoch::new(1).unwrap(),
            underlay: vec!["192.0.2.1".parse().unwrap()],
            pod_cidrs: vec!["10.9.7.0/24".parse().unwrap()],
            previous_epochs: Vec::new(),
        },
        peers: vec![],
        keys: Keys::single(1),
        cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        node_encryption: None,
    };
    let dp = scrambler_vpp::VppTunnel::new(vpp.api_sock());
    let secret = ClusterSecret::from_bytes(vec![0x42; 32]).unwrap();
    let node = vpp.netns.netns();
    dp.reconcile(&node, &mesh, &secret).await.unwrap();
    let t = std::time::Instant::now();
    let r = run(&vpp, &cni_path, &add, &conf);
    eprintln!(
        "VPP ADD with the gate and the guard check: {:?}",
        t.elapsed()
    );
    r.expect_ok();
    assert_eq!(leases(data.path()), 1);
    run(&vpp, &cni_path, &add.cmd("DEL"), &conf).expect_ok();
    assert_eq!(leases(data.path()), 0);
    // the same ADD without the gate, for the log's comparison
    let mut plain = conf.clone();
    plain.as_object_mut().unwrap().remove("tunnelStatusFile");
    let t = std::time::Instant::now();
    let r = run(&vpp, &cni_path, &add, &plain);
    eprintln!("VPP ADD without the gate: {:?}", t.elapsed());
    r.expect_ok();
    run(&vpp, &cni_path, &add.cmd("DEL"), &plain).expect_ok();

    // the guard gone while the file is still fresh and guarded
    dp.remove(&node).await.unwrap();
    refused("guard route removed");
    assert!(vpp.af_packet_names().await.is_empty());
}
