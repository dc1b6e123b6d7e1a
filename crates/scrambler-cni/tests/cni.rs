//! The built `scrambler-cni` binary driven as a container runtime drives it, inside
//! namespaces the tests create: ADD/CHECK/DEL per CNI version, connectivity, errors,
//! GC, STATUS, delegated IPAM.

mod common;

use common::*;
use scrambler_core::fault::FaultStage;
use scrambler_testkit::netns::TestNetns;
use serde_json::{json, Value};

fn pod_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

#[test]
fn version_reports_supported_versions() {
    let node = Node::new("ver");
    let pod = TestNetns::new("verpod");
    let inv = Invocation::new("VERSION", "x", &pod.path(), "eth0");
    let out = node.ours(&inv, &json!({"cniVersion": "1.0.0"}));
    out.expect_ok();
    let v = out.json();
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn versions_before_0_4_answer_in_their_own_layout() {
    for (i, version) in ["0.1.0", "0.2.0", "0.3.0", "0.3.1"].into_iter().enumerate() {
        let node = Node::new("old");
        let pod = TestNetns::new("oldpod");
        let subnet = format!("10.{}.0.0/24", 40 + i);
        let conf = node.conf(version, &subnet);
        let add = Invocation::new("ADD", &format!("old{i}"), &pod.path(), "eth0");
        let out = node.ours(&add, &conf);
        out.expect_ok();
        let result = out.json();
        assert_eq!(result["cniVersion"], version);
        let ip = if version.starts_with("0.3") {
            assert_eq!(result["ips"][0]["version"], "4", "{result}");
            assert_eq!(result["interfaces"][1]["name"], "eth0");
            assert!(result["interfaces"][1].get("mtu").is_none());
            pod_ip(&result)
        } else {
            // one ip4 object, routes under it, no interfaces
            assert!(result.get("interfaces").is_none() && result.get("ips").is_none());
            assert_eq!(result["ip4"]["gateway"], "169.254.1.1", "{result}");
            assert_eq!(result["ip4"]["routes"][0]["dst"], "0.0.0.0/0");
            let a = result["ip4"]["ip"].as_str().unwrap();
            a.split('/').next().unwrap().to_string()
        };
        assert!(ip.starts_with(&format!("10.{}.0.", 40 + i)), "{result}");
        assert!(pod
            .ip(&["-o", "addr", "show", "dev", "eth0"])
            .contains(&format!("{ip}/32")));
        assert!(ping(&pod, NODE_IP));

        // CHECK came with 0.4.0, GC and STATUS with 1.1.0: code 1, nothing touched
        let check = node.ours(&add.cmd("CHECK"), &with_prev(&conf, &result));
        assert_eq!(check.code(), 1, "{}", check.stdout);
        let mut global = Invocation::new("GC", "", &pod.path(), "");
        global.netns = None;
        let mut gc = conf.clone();
        gc["cni.dev/valid-attachments"] = json!([]);
        assert_eq!(node.ours(&global, &gc).code(), 1);
        assert_eq!(node.ours(&global.cmd("STATUS"), &conf).code(), 1);
        assert_eq!(node.leases(), vec![ip.clone()]);

        node.ours(&add.cmd("DEL"), &conf).expect_ok();
        assert!(node.host_veths().is_empty());
        assert!(node.leases().is_empty());
    }
}

#[test]
fn add_check_del_round_trip_in_every_version() {
    for (i, version) in ["0.4.0", "1.0.0", "1.1.0"].into_iter().enumerate() {
        let node = Node::new("rt");
        let pod = TestNetns::new("rtpod");
        let conf = node.conf(version, &format!("10.{}.0.0/24", 10 + i));
        let cid = format!("rt{i}");
        let add = Invocation::new("ADD", &cid, &pod.path(), "eth0");
        let out = node.ours(&add, &conf);
        out.expect_ok();
        assert!(
            out.stderr.is_empty(),
            "stderr must stay quiet: {}",
            out.stderr
        );
        let result = out.json();
        assert_eq!(result["cniVersion"], version);
        // interfaces: host veth, pod end in the sandbox
        assert_eq!(result["interfaces"][1]["name"], "eth0");
        assert_eq!(
            result["interfaces"][1]["sandbox"],
            pod.path().display().to_string()
        );
        assert!(result["interfaces"][0].get("sandbox").is_none());
        assert_eq!(result["ips"][0]["interface"], 1);
        assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
        if version == "0.4.0" {
            assert_eq!(result["ips"][0]["version"], "4");
        }
        if version == "1.1.0" {
            // underlay 1500 minus ESP overhead
            assert_eq!(result["interfaces"][1]["mtu"], 1440);
        } else {
            assert!(result["interfaces"][1].get("mtu").is_none());
        }
        let ip = pod_ip(&result);
        assert!(ip.starts_with(&format!("10.{}.0.", 10 + i)));

        // the kernel agrees
        let addr = pod.ip(&["-o", "addr", "show", "dev", "eth0"]);
        assert!(addr.contains(&format!("{ip}/32")), "{addr}");
        assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1440"));
        assert!(pod
            .ip(&["route"])
            .contains("default via 169.254.1.1 dev eth0"));
        assert!(node.our_routes().contains(&ip), "{}", node.our_routes());
        assert_eq!(node.leases(), vec![ip.clone()]);
        assert!(ping(&pod, NODE_IP), "pod must reach the node");

        // CHECK against the result
        let check = node.ours(&add.cmd("CHECK"), &with_prev(&conf, &result));
        check.expect_ok();
        assert!(
            check.stdout.is_empty(),
            "CHECK prints nothing: {}",
            check.stdout
        );

        // CHECK notices a node that stopped forwarding, and a broken pod
        node.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        let bad = node.ours(&add.cmd("CHECK"), &with_prev(&conf, &result));
        assert_eq!(bad.code(), 103, "{}", bad.stdout);
        assert!(bad.stdout.contains("forwarding is off"), "{}", bad.stdout);
        node.ns.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        pod.ip(&["route", "del", "default"]);
        let bad = node.ours(&add.cmd("CHECK"), &with_prev(&conf, &result));
        assert_eq!(bad.code(), 103, "{}", bad.stdout);
        assert!(
            bad.stdout
                .contains("route 0.0.0.0/0 via 169.254.1.1 is missing"),
            "{}",
            bad.stdout
        );

        // DEL, twice
        let del = node.ours(&add.cmd("DEL"), &with_prev(&conf, &result));
        del.expect_ok();
        assert!(del.stdout.is_empty());
        node.ours(&add.cmd("DEL"), &conf).expect_ok();
        assert!(!links(&pod).contains(&"eth0".to_string()));
        assert!(node.host_veths().is_empty());
        assert!(node.our_routes().trim().is_empty());
        assert!(node.leases().is_empty());
        // logs went to the log file
        let log = std::fs::read_to_string(node.data.path().join("cni.log")).unwrap();
        assert!(log.contains("attached"), "{log}");
    }
}

#[test]
fn two_pods_on_one_node_reach_each_other() {
    let node = Node::new("pp");
    let a = TestNetns::new("ppa");
    let b = TestNetns::new("ppb");
    let conf = node.conf("1.1.0", "10.20.0.0/24");
    let ra = node.ours(&Invocation::new("ADD", "pa", &a.path(), "eth0"), &conf);
    let rb = node.ours(&Invocation::new("ADD", "pb", &b.path(), "eth0"), &conf);
    let (ipa, ipb) = (
        pod_ip(&ra.expect_ok().json()),
        pod_ip(&rb.expect_ok().json()),
    );
    assert_ne!(ipa, ipb);
    assert!(ping(&a, &ipb));
    assert!(ping(&b, &ipa));
    for (cid, ns) in [("pa", &a), ("pb", &b)] {
        node.ours(&Invocation::new("DEL", cid, &ns.path(), "eth0"), &conf)
            .expect_ok();
    }
    assert!(node.host_veths().is_empty());
    assert!(node.leases().is_empty());
}

#[test]
fn del_succeeds_when_the_netns_is_gone_or_add_never_ran() {
    let node = Node::new("delgone");
    let conf = node.conf("1.1.0", "10.21.0.0/24");
    let pod = TestNetns::new("delgonepod");
    let inv = Invocation::new("ADD", "gone", &pod.path(), "eth0");
    node.ours(&inv, &conf).expect_ok();
    assert_eq!(node.leases().len(), 1);
    let path = pod.path();
    drop(pod); // the runtime deleted the sandbox first
    node.ours(&inv.cmd("DEL"), &conf).expect_ok();
    assert!(node.leases().is_empty());
    assert!(node.host_veths().is_empty());
    // without CNI_NETNS, and for an attachment that never existed
    let mut never = Invocation::new("DEL", "never", &path, "eth0");
    never.netns = None;
    node.ours(&never, &conf).expect_ok();
}

#[test]
fn bad_input_gets_the_matching_cni_error_and_leaves_nothing() {
    let node = Node::new("bad");
    let pod = TestNetns::new("badpod");
    let conf = node.conf("1.1.0", "10.22.0.0/24");
    let add = Invocation::new("ADD", "bad1", &pod.path(), "eth0");

    // malformed JSON: 6
    let out = run_plugin(
        &node.ns.name,
        std::path::Path::new(BIN),
        &add,
        &node.cni_path.value(),
        &json!("x"),
    );
    assert_eq!(out.code(), 6);
    // missing backend / unknown backend: 7, listing valid ones
    let mut c = conf.clone();
    c.as_object_mut().unwrap().remove("backend");
    let out = node.ours(&add, &c);
    assert_eq!(out.code(), 7);
    assert!(
        out.stdout.contains("veth (alias xfrm), ipvlan, vpp"),
        "{}",
        out.stdout
    );
    c["backend"] = json!("wireguard");
    assert_eq!(node.ours(&add, &c).code(), 7);
    // missing ipam / name: 7
    let mut c = conf.clone();
    c.as_object_mut().unwrap().remove("ipam");
    assert_eq!(node.ours(&add, &c).code(), 7);
    let mut c = conf.clone();
    c.as_object_mut().unwrap().remove("name");
    assert_eq!(node.ours(&add, &c).code(), 7);
    // unsupported version: 1
    let mut c = conf.clone();
    c["cniVersion"] = json!("0.5.0");
    assert_eq!(node.ours(&add, &c).code(), 1);
    // a backend whose dataplane is not running: 11, naming what is missing
    let mut c = conf.clone();
    c["backend"] = json!("vpp");
    c["vpp"] = json!({"apiSocket": "/nonexistent/scrambler-test/api.sock"});
    let out = node.ours(&add, &c);
    assert_eq!(out.code(), 11, "{}", out.stdout);
    assert!(
        out.stdout.contains("/nonexistent/scrambler-test/api.sock"),
        "{}",
        out.stdout
    );
    // environment: 4
    let mut inv = add.clone();
    inv.container_id = String::new();
    assert_eq!(node.ours(&inv, &conf).code(), 4);
    let mut inv = add.clone();
    inv.ifname = "a-name-too-long0".into();
    assert_eq!(node.ours(&inv, &conf).code(), 4);
    let mut inv = add.clone();
    inv.netns = None;
    assert_eq!(node.ours(&inv, &conf).code(), 4);
    assert_eq!(node.ours(&add.cmd("FROB"), &conf).code(), 4);
    // netns that does not exist: 3
    let mut inv = add.clone();
    inv.netns = Some("/run/netns/scr-no-such-netns".into());
    assert_eq!(node.ours(&inv, &conf).code(), 3);
    // interface name taken in the pod: 102, and nothing left behind
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let out = node.ours(&add, &conf);
    assert_eq!(out.code(), 102, "{}", out.stdout);
    assert!(out.stdout.contains("CNI_IFNAME is taken"), "{}", out.stdout);
    pod.ip(&["link", "del", "eth0"]);
    // CHECK without prevResult: 7
    assert_eq!(node.ours(&add.cmd("CHECK"), &conf).code(), 7);

    assert!(node.leases().is_empty(), "{:?}", node.leases());
    assert!(node.host_veths().is_empty());
    assert!(node.our_routes().trim().is_empty());
    assert_eq!(links(&pod), vec!["lo".to_string()]);
}

/// ADD creates the veth pair while the IPAM allocates: when the allocation fails, the
/// pair it made is removed and the leases of others stay; when the pair cannot be made,
/// the address allocated for it is released.
#[test]
fn add_undoes_the_veth_when_allocation_fails_and_the_lease_when_the_veth_does() {
    let node = Node::new("alloc");
    let (a, b) = (TestNetns::new("alloca"), TestNetns::new("allocb"));
    // one usable address: .1 is the gateway
    let conf = node.conf("1.1.0", "10.26.0.0/30");
    let add_a = Invocation::new("ADD", "al1", &a.path(), "eth0");
    node.ours(&add_a, &conf).expect_ok();
    let out = node.ours(&Invocation::new("ADD", "al2", &b.path(), "eth0"), &conf);
    assert_eq!(out.code(), 101, "{}", out.stdout);
    assert_eq!(node.leases(), vec!["10.26.0.2".to_string()]);
    assert_eq!(node.host_veths().len(), 1);
    assert_eq!(links(&b), vec!["lo".to_string()]);
    // the pair cannot be made (CNI_IFNAME taken in the pod): the new lease is released
    node.ours(&add_a.cmd("DEL"), &conf).expect_ok();
    b.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    let out = node.ours(&Invocation::new("ADD", "al2", &b.path(), "eth0"), &conf);
    assert_eq!(out.code(), 102, "{}", out.stdout);
    assert!(node.leases().is_empty(), "{:?}", node.leases());
    assert!(node.host_veths().is_empty());
}

#[test]
fn injected_faults_at_every_stage_undo_everything() {
    let node = Node::new("fault");
    let pod = TestNetns::new("faultpod");
    let conf = node.conf("1.1.0", "10.23.0.0/24");
    for stage in FaultStage::ALL {
        let add =
            Invocation::new("ADD", "f1", &pod.path(), "eth0").env("SCRAMBLER_FAULT", stage.name());
        let out = node.ours(&add, &conf);
        assert!(!out.ok, "fault {stage} must fail ADD");
        assert!(out.stdout.contains("fault injected"), "{}", out.stdout);
        assert!(
            node.leases().is_empty(),
            "stage {stage}: {:?}",
            node.leases()
        );
        assert!(node.host_veths().is_empty(), "stage {stage}");
        assert!(node.our_routes().trim().is_empty(), "stage {stage}");
        assert_eq!(links(&pod), vec!["lo".to_string()], "stage {stage}");
    }
    // an unknown stage is refused before anything is made
    let add = Invocation::new("ADD", "f1", &pod.path(), "eth0").env("SCRAMBLER_FAULT", "after-x");
    let out = node.ours(&add, &conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(
        out.stdout.contains("SCRAMBLER_FAULT") && out.stdout.contains("after-ipam"),
        "names the variable and the stages: {}",
        out.stdout
    );
    assert!(node.leases().is_empty(), "{:?}", node.leases());
    assert!(node.host_veths().is_empty());
    // and the same attachment then works
    let add = Invocation::new("ADD", "f1", &pod.path(), "eth0");
    node.ours(&add, &conf).expect_ok();
    node.ours(&add.cmd("DEL"), &conf).expect_ok();
}

#[test]
fn gc_releases_what_is_not_valid() {
    let node = Node::new("gc");
    let a = TestNetns::new("gca");
    let b = TestNetns::new("gcb");
    let conf = node.conf("1.1.0", "10.24.0.0/24");
    let ra = node.ours(&Invocation::new("ADD", "keep", &a.path(), "eth0"), &conf);
    let keep_ip = pod_ip(&ra.expect_ok().json());
    node.ours(&Invocation::new("ADD", "drop", &b.path(), "eth0"), &conf)
        .expect_ok();
    assert_eq!(node.host_veths().len(), 2);
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    let mut gc = Invocation::new("GC", "", &a.path(), "");
    gc.netns = None;
    let out = node.ours(&gc, &gc_conf);
    out.expect_ok();
    assert!(out.stdout.is_empty());
    assert_eq!(node.leases(), vec![keep_ip]);
    assert_eq!(node.host_veths().len(), 1);
    assert!(!links(&b).contains(&"eth0".to_string()));
    // GC without the list is refused
    assert_eq!(node.ours(&gc, &conf).code(), 7);
    node.ours(&Invocation::new("DEL", "keep", &a.path(), "eth0"), &conf)
        .expect_ok();
}

/// The guarded cluster supernet of the gate tests (covers their pod subnets 10.25-10.27).
const CLUSTER_CIDR: &str = "10.0.0.0/8";

/// Programs the node's guard as the agent's kernel dataplane does (scrambler-xfrm's
/// reconcile of a mesh with the node alone, cluster CIDR [`CLUSTER_CIDR`]; policies only,
/// over a veth standing in for the xfrm interface, as this kernel has neither ESP nor xfrm
/// interfaces).
fn program_guard(node: &Node, pod_subnet: &str) {
    use scrambler_core::{ClusterSecret, Keys, Mesh, NodeId, Tunnel};
    use scrambler_xfrm::{LinkMode, XfrmConfig, XfrmTunnel};
    node.ns.ip(&[
        "link", "add", "xguard0", "type", "veth", "peer", "name", "xguard0p",
    ]);
    node.ns.ip(&["link", "set", "xguard0", "up"]);
    let mesh = Mesh {
        local: scrambler_core::Node {
            name: "n1".into(),
            id: NodeId::new(1).unwrap(),
            epoch: scrambler_core::Epoch::new(1).unwrap(),
            underlay: vec!["192.0.2.1".parse().unwrap()],
            pod_cidrs: vec![pod_subnet.parse().unwrap()],
            previous_epochs: Vec::new(),
        },
        peers: vec![],
        keys: Keys::single(1),
        cluster_cidrs: vec![CLUSTER_CIDR.parse().unwrap()],
        node_encryption: None,
    };
    let tunnel = XfrmTunnel::new(XfrmConfig {
        link: LinkMode::Existing,
        // not `scr…`: the tests count the plugin's host veths by that prefix
        interface: "xguard0".into(),
        program_states: false,
        ..XfrmConfig::default()
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = ClusterSecret::from_bytes(vec![0x42; 32]).unwrap();
    rt.block_on(tunnel.reconcile(&node.ns.netns(), &mesh, &secret))
        .unwrap();
}

/// The guard's block policy of [`CLUSTER_CIDR`] removed behind the agent's back.
fn delete_guard_policy(node: &Node) {
    node.ns.ip(&[
        "xfrm",
        "policy",
        "delete",
        "src",
        "0.0.0.0/0",
        "dst",
        CLUSTER_CIDR,
        "dir",
        "out",
    ]);
}

/// A tunnel status file as the agent writes it, `age` seconds old.
fn guard_file(path: &std::path::Path, fail_closed: bool, encrypted: bool, age: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let st = json!({"dataplane": "xfrm", "encrypted": encrypted, "failClosed": fail_closed,
        "peers": [{"name": "down-peer", "underlay": null, "outbound": false,
            "inbound": false, "steering": false, "txGeneration": null, "rxGenerations": [],
            "packetsOut": 0, "packetsIn": 0, "bytesOut": 0, "bytesIn": 0, "replayErrors": 0,
            "integrityErrors": 0}], "errors": {}, "overhead": 57,
        "updated": now - age, "maxAge": 90, "clusterCidrs": [CLUSTER_CIDR]});
    std::fs::write(path, st.to_string()).unwrap();
}

/// Dual-stack ranges on a node whose mesh guards IPv4 only: the IPv6 address would be an
/// unguarded family, so ADD refuses (code 7, naming the address and the family) and leaves
/// nothing behind; with IPv4 ranges only the same gate admits the pod.
#[test]
fn add_refuses_an_address_of_a_family_the_guard_does_not_cover() {
    let node = Node::new("fam");
    let pod = TestNetns::new("fampod");
    let status_file = node.data.path().join("run/tunnel-status.json");
    let mut conf = node.conf("1.1.0", "10.29.0.0/24");
    conf["tunnelStatusFile"] = json!(status_file);
    let v4_only = conf.clone();
    conf["ipam"]["ranges"]
        .as_array_mut()
        .unwrap()
        .push(json!([{"subnet": "fd29::/64"}]));
    guard_file(&status_file, true, true, 0);
    program_guard(&node, "10.29.0.0/24");
    let add = Invocation::new("ADD", "fam1", &pod.path(), "eth0");
    let out = node.ours(&add, &conf);
    assert_eq!(out.code(), 7, "{out:?}");
    assert!(
        out.stdout.contains("fd29::") && out.stdout.contains("IPv6"),
        "{out:?}"
    );
    assert!(node.leases().is_empty(), "{:?}", node.leases());
    assert!(node.host_veths().is_empty());
    node.ours(&add, &v4_only).expect_ok();
    node.ours(&add.cmd("DEL"), &v4_only).expect_ok();
    assert!(node.leases().is_empty());
}

#[test]
fn status_reports_ipam_and_the_local_guard() {
    let node = Node::new("st");
    let conf = node.conf("1.1.0", "10.25.0.0/24");
    let mut st = Invocation::new("STATUS", "", std::path::Path::new("/"), "");
    st.netns = None;
    let out = node.ours(&st, &conf);
    out.expect_ok();
    assert!(out.stdout.is_empty());
    let status_file = node.data.path().join("mesh-status.json");
    let mut c = conf.clone();
    c["tunnelStatusFile"] = json!(status_file);
    assert_eq!(node.ours(&st, &c).code(), 50);
    guard_file(&status_file, false, true, 0);
    assert_eq!(node.ours(&st, &c).code(), 50, "not guarded");
    guard_file(&status_file, true, true, 200);
    assert_eq!(node.ours(&st, &c).code(), 50, "stale");
    // guarded and fresh, but the guard is not in the kernel: not available
    guard_file(&status_file, true, false, 0);
    let out = node.ours(&st, &c);
    assert_eq!(out.code(), 50, "{out:?}");
    // guarded and fresh: ready, whatever the peers (a peer down, not encrypting yet with
    // no peer up) — peer health is `scrambler status`'s, not the node's readiness
    program_guard(&node, "10.25.0.0/24");
    node.ours(&st, &c).expect_ok();
    // A backend that is not built yet cannot serve ADD.
    let mut c = conf.clone();
    c["backend"] = json!("vpp");
    assert_eq!(node.ours(&st, &c).code(), 50);
}

#[test]
fn add_waits_for_the_agent_to_guard_the_node() {
    let node = Node::new("gd");
    let pod = TestNetns::new("gdpod");
    let status_file = node.data.path().join("run/tunnel-status.json");
    let mut conf = node.conf("1.1.0", "10.27.0.0/24");
    conf["tunnelStatusFile"] = json!(status_file);
    let add = Invocation::new("ADD", "gd1", &pod.path(), "eth0");
    // no file yet (the agent has not guarded the node): try again later, nothing left
    let out = node.ours(&add, &conf);
    assert_eq!(out.code(), 11, "{out:?}");
    assert!(node.leases().is_empty());
    assert!(node.host_veths().is_empty());
    guard_file(&status_file, false, true, 0);
    assert_eq!(node.ours(&add, &conf).code(), 11);
    assert!(node.leases().is_empty());
    // guarded but stale (the agent stopped, crashed or hangs: the guard may be gone)
    guard_file(&status_file, true, true, 91);
    assert_eq!(node.ours(&add, &conf).code(), 11);
    // without a time at all (a file from an older agent): refused too
    std::fs::write(&status_file, r#"{"dataplane":"xfrm","encrypted":true,"failClosed":true,"peers":[],"errors":{},"overhead":57}"#).unwrap();
    assert_eq!(node.ours(&add, &conf).code(), 11);
    assert!(node.leases().is_empty());
    assert!(node.host_veths().is_empty());
    // a fresh, guarded file from an older agent (no clusterCidrs): nothing to check the
    // dataplane for, refused
    let mut v: Value = {
        guard_file(&status_file, true, true, 0);
        serde_json::from_slice(&std::fs::read(&status_file).unwrap()).unwrap()
    };
    v.as_object_mut().unwrap().remove("clusterCidrs");
    std::fs::write(&status_file, v.to_string()).unwrap();
    let out = node.ours(&add, &conf);
    assert_eq!(out.code(), 11, "{out:?}");
    assert!(out.stdout.contains("clusterCidrs"), "{out:?}");
    // fresh and guarded by the file, but the guard is not in the kernel (never programmed,
    // or lost since the agent's last sync): refused, naming the policy, nothing left
    guard_file(&status_file, true, true, 0);
    let out = node.ours(&add, &conf);
    assert_eq!(out.code(), 11, "{out:?}");
    assert!(
        out.stdout.contains(CLUSTER_CIDR) && out.stdout.contains("missing"),
        "{out:?}"
    );
    assert!(node.leases().is_empty());
    assert!(node.host_veths().is_empty());
    // guarded and fresh, even with no peer up yet: pods may come
    program_guard(&node, "10.27.0.0/24");
    let t = std::time::Instant::now();
    let r = node.ours(&add, &conf);
    eprintln!("ADD with the gate and the guard check: {:?}", t.elapsed());
    r.expect_ok();
    assert_eq!(node.leases().len(), 1);
    node.ours(&add.cmd("DEL"), &conf).expect_ok();
    assert!(node.leases().is_empty());
    // the same ADD without the gate, for the log's comparison
    let mut plain = conf.clone();
    plain.as_object_mut().unwrap().remove("tunnelStatusFile");
    let t = std::time::Instant::now();
    let r = node.ours(&add, &plain);
    eprintln!("ADD without the gate: {:?}", t.elapsed());
    r.expect_ok();
    node.ours(&add.cmd("DEL"), &plain).expect_ok();
    assert!(node.leases().is_empty());
    // the guard's block policy lost between two agent syncs (flushed): the file is still
    // fresh and guarded, ADD sees the kernel and refuses, leaving nothing behind
    delete_guard_policy(&node);
    let out = node.ours(&add, &conf);
    assert_eq!(out.code(), 11, "{out:?}");
    assert!(out.stdout.contains(CLUSTER_CIDR), "{out:?}");
    assert!(node.leases().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn a_bad_conf_is_refused_before_the_guard_is_asked() {
    let node = Node::new("gc");
    let pod = TestNetns::new("gcpod");
    let add = Invocation::new("ADD", "gc1", &pod.path(), "eth0");
    // not a path: a bad conf (7), never a silently disabled gate
    for bad in [json!(true), json!(3), json!(""), json!({"path": "/x"})] {
        let mut conf = node.conf("1.1.0", "10.28.0.0/24");
        conf["tunnelStatusFile"] = bad.clone();
        assert_eq!(node.ours(&add, &conf).code(), 7, "{bad}");
    }
    // an invalid conf answers 7 even while the node is not guarded (no file)
    let mut conf = node.conf("1.1.0", "10.28.0.0/24");
    conf["tunnelStatusFile"] = json!(node.data.path().join("absent.json"));
    conf["backend"] = json!("no-such-backend");
    assert_eq!(node.ours(&add, &conf).code(), 7);
    assert!(node.leases().is_empty());
    assert!(node.host_veths().is_empty());
}

#[test]
fn delegated_host_local_ipam() {
    for version in ["0.2.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let node = Node::new("hl");
        let pod = TestNetns::new("hlpod");
        let conf = node.conf_host_local(version, "10.26.0.0/24");
        let add = Invocation::new("ADD", "hl1", &pod.path(), "eth0");
        let out = node.ours(&add, &conf);
        out.expect_ok();
        let result = out.json();
        assert_eq!(result["cniVersion"], version);
        let ip = if version == "0.2.0" {
            // host-local answered in 0.2.0's ip4 layout; so do we
            let a = result["ip4"]["ip"].as_str().unwrap();
            a.split('/').next().unwrap().to_string()
        } else {
            pod_ip(&result)
        };
        assert_eq!(node.host_local_leases(), vec![ip.clone()]);
        assert!(ping(&pod, NODE_IP));
        let check = node.ours(&add.cmd("CHECK"), &with_prev(&conf, &result));
        if version == "0.4.0" || version.starts_with('1') {
            check.expect_ok();
        } else {
            assert_eq!(check.code(), 1);
        }
        node.ours(&add.cmd("DEL"), &with_prev(&conf, &result))
            .expect_ok();
        assert!(node.host_local_leases().is_empty());
        node.ours(&add.cmd("DEL"), &conf).expect_ok();
        // a failure after the delegate's ADD calls its DEL
        let out = node.ours(
            &add.clone()
                .env("SCRAMBLER_FAULT", FaultStage::AfterPodRoutes.name()),
            &conf,
        );
        assert!(!out.ok);
        assert!(node.host_local_leases().is_empty());
        assert!(node.host_veths().is_empty());
        // STATUS and GC (1.1.0 only): host-local 1.1.1 predates CNI 1.1, so only our
        // side acts
        let mut global = Invocation::new("STATUS", "", &pod.path(), "");
        global.netns = None;
        let mut gc_conf = conf.clone();
        gc_conf["cni.dev/valid-attachments"] = json!([]);
        if version == "1.1.0" {
            node.ours(&global, &conf).expect_ok();
            node.ours(&global.cmd("GC"), &gc_conf).expect_ok();
        }
    }
}

#[test]
fn delegate_errors_pass_through_with_their_code() {
    let node = Node::new("hlerr");
    let pod = TestNetns::new("hlerrpod");
    let mut conf = node.conf_host_local("1.0.0", "10.27.0.0/30");
    // host-local rejects its own conf
    conf["ipam"]["ranges"] = json!([[{"subnet": "not-a-subnet"}]]);
    let add = Invocation::new("ADD", "e1", &pod.path(), "eth0");
    let out = node.ours(&add, &conf);
    assert!(!out.ok);
    let j = out.json();
    assert_ne!(j["code"], 0);
    assert!(out.stdout.contains("not-a-subnet"), "{}", out.stdout);
    // an IPAM type nobody installed
    conf["ipam"] = json!({"type": "no-such-ipam"});
    let out = node.ours(&add, &conf);
    assert_eq!(out.code(), 7);
    assert!(out.stdout.contains("not found in CNI_PATH"));
    assert!(node.host_veths().is_empty());
}

#[test]
fn requested_address_is_honoured() {
    let node = Node::new("req");
    let pod = TestNetns::new("reqpod");
    let conf = node.conf("1.1.0", "10.28.0.0/24");
    let mut add = Invocation::new("ADD", "req1", &pod.path(), "eth0");
    add.args = Some("IgnoreUnknown=1;IP=10.28.0.77".into());
    let out = node.ours(&add, &conf);
    assert_eq!(out.expect_ok().json()["ips"][0]["address"], "10.28.0.77/32");
    assert!(pod.ip(&["-o", "addr"]).contains("10.28.0.77/32"));
    node.ours(&add.cmd("DEL"), &conf).expect_ok();
    assert!(node.leases().is_empty());
}

#[test]
fn in_process_invoke_acts_on_the_given_node_namespace() {
    // the library entry point, as the lab or an agent would use it: no nsenter, the
    // node namespace is a parameter
    let node = Node::new("inproc");
    let pod = TestNetns::new("inprocpod");
    let conf = serde_json::to_vec(&node.conf("1.1.0", "10.29.0.0/24")).unwrap();
    let vars = |cmd: &str| {
        vec![
            ("CNI_COMMAND".to_string(), cmd.to_string()),
            ("CNI_CONTAINERID".into(), "inproc1".into()),
            ("CNI_NETNS".into(), pod.path().display().to_string()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), node.cni_path.value()),
        ]
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let host = node.ns.netns();
    let out = rt.block_on(scrambler_cni::invoke(vars("ADD"), &conf, &host));
    assert_eq!(out.exit_code, 0, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(node.host_veths().len(), 1);
    assert!(ping(&pod, NODE_IP));
    let out = rt.block_on(scrambler_cni::invoke(vars("DEL"), &conf, &host));
    assert_eq!(out.exit_code, 0);
    assert!(out.stdout.is_empty());
    assert!(node.host_veths().is_empty());
    assert!(node.leases().is_empty());
}

#[test]
fn ipv6_only_pod_with_explicit_mtu() {
    let node = Node::new("v6");
    let pod = TestNetns::new("v6pod");
    let mut conf = node.conf("1.1.0", "fd00:77::/64");
    conf["mtu"] = json!(1300);
    let add = Invocation::new("ADD", "v6a", &pod.path(), "eth0");
    let out = node.ours(&add, &conf);
    let result = out.expect_ok().json();
    assert_eq!(result["ips"][0]["gateway"], "fe80::1");
    assert_eq!(result["routes"][0]["dst"], "::/0");
    assert_eq!(result["interfaces"][1]["mtu"], 1300);
    let ip = pod_ip(&result);
    assert!(pod.ip(&["-6", "-o", "addr"]).contains(&format!("{ip}/128")));
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1300"));
    assert!(ping(&pod, NODE_IP6));
    node.ours(&add.cmd("CHECK"), &with_prev(&conf, &result))
        .expect_ok();
    node.ours(&add.cmd("DEL"), &conf).expect_ok();
    assert!(node.host_veths().is_empty());
    assert!(node.our_routes().trim().is_empty());
    assert!(node.leases().is_empty());
    // an MTU no link can have is a config error
    conf["mtu"] = json!(20);
    assert_eq!(node.ours(&add, &conf).code(), 7);
    assert!(node.leases().is_empty());
}

/// Dual-stack pods on a node with default routes of both families: the pod MTU leaves
/// room for an IPv6 outer header (1500 − 77, rounded: 1420), whichever family the
/// underlay's ESP uses; with an IPv4 default route only it is 1440.
#[test]
fn dual_stack_pod_mtu_leaves_room_for_an_ipv6_underlay() {
    let node = Node::new("mtu6");
    let pod = TestNetns::new("mtu6pod");
    let mut conf = node.conf("1.1.0", "10.31.0.0/24");
    conf["ipam"]["ranges"]
        .as_array_mut()
        .unwrap()
        .push(json!([{"subnet": "fd31::/64"}]));
    let add = Invocation::new("ADD", "mtu6a", &pod.path(), "eth0");
    let result = node.ours(&add, &conf).expect_ok().json();
    assert_eq!(result["interfaces"][1]["mtu"], 1440, "{result}");
    assert_eq!(result["ips"].as_array().unwrap().len(), 2, "{result}");
    node.ours(&add.cmd("DEL"), &conf).expect_ok();
    node.ns.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8::fe",
        "dev",
        "uplink",
    ]);
    let result = node.ours(&add, &conf).expect_ok().json();
    assert_eq!(result["interfaces"][1]["mtu"], 1420, "{result}");
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 1420"));
    node.ours(&add.cmd("DEL"), &conf).expect_ok();
    assert!(node.leases().is_empty());
}
