//! Network names and what each network owns, with the built binary in namespaces the tests
//! create: a name must be one the CNI spec allows (else code 7 for every command, and
//! nothing is done), and GC of one network leaves the pods of every other network alone,
//! however alike their names are.

mod common;

use common::*;
use scrambler_testkit::netns::TestNetns;
use serde_json::{json, Value};

/// The node's conf with network name `name`.
fn named(node: &Node, name: &str, subnet: &str) -> Value {
    let mut c = node.conf("1.1.0", subnet);
    c["name"] = json!(name);
    c
}

/// Lease files of the built-in IPAM for `network`.
fn leases_of(node: &Node, network: &str) -> Vec<String> {
    let dir = node.data.path().join("ipam").join(network);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect()
}

/// A GC invocation with every attachment of the network stale.
fn gc_all(node: &Node, conf: &Value) -> CniOut {
    let mut conf = conf.clone();
    conf["cni.dev/valid-attachments"] = json!([]);
    let mut gc = Invocation::new("GC", "", std::path::Path::new(""), "");
    gc.netns = None;
    node.ours(&gc, &conf)
}

#[test]
fn gc_of_one_network_leaves_networks_with_similar_names_alone() {
    let node = Node::new("own");
    let nets = [
        ("a", "10.31.0.0/24"),
        ("a-b", "10.32.0.0/24"),
        ("a.b", "10.33.0.0/24"),
    ];
    let pods: Vec<TestNetns> = nets.iter().map(|_| TestNetns::new("ownpod")).collect();
    for (i, ((net, subnet), pod)) in nets.iter().zip(&pods).enumerate() {
        let add = Invocation::new("ADD", &format!("ctr{i}"), &pod.path(), "eth0");
        node.ours(&add, &named(&node, net, subnet)).expect_ok();
    }
    // what a release that accepted the name "a/b" left for a pod of that network
    node.ns.ip(&[
        "link",
        "add",
        "scrlegacy0",
        "type",
        "veth",
        "peer",
        "name",
        "scrlegacy1",
    ]);
    node.ns.ip(&[
        "link",
        "set",
        "dev",
        "scrlegacy0",
        "alias",
        "scrambler/a/b/old/eth0",
    ]);
    assert_eq!(node.host_veths().len(), 5, "{:?}", node.host_veths());

    gc_all(&node, &named(&node, "a", nets[0].1)).expect_ok();

    assert!(leases_of(&node, "a").is_empty());
    assert_eq!(links(&pods[0]), vec!["lo".to_string()]);
    for (i, (net, _)) in nets.iter().enumerate().skip(1) {
        assert_eq!(leases_of(&node, net).len(), 1, "network {net}");
        assert!(
            links(&pods[i]).contains(&"eth0".to_string()),
            "network {net}"
        );
    }
    let left = node.host_veths();
    assert_eq!(left.len(), 4, "{left:?}");
    assert!(left.contains(&"scrlegacy0".to_string()), "{left:?}");

    for ((net, subnet), pod) in nets.iter().zip(&pods).skip(1) {
        gc_all(&node, &named(&node, net, subnet)).expect_ok();
        assert!(leases_of(&node, net).is_empty(), "network {net}");
        assert_eq!(links(pod), vec!["lo".to_string()], "network {net}");
    }
    let mut left = node.host_veths();
    left.sort();
    assert_eq!(left, ["scrlegacy0", "scrlegacy1"]);
    assert!(node.our_routes().trim().is_empty(), "{}", node.our_routes());
}

#[test]
fn a_name_the_spec_does_not_allow_is_refused_by_every_command() {
    let node = Node::new("badname");
    let pod = TestNetns::new("badnamepod");
    let add = Invocation::new("ADD", "bn1", &pod.path(), "eth0");
    for name in ["a/b", "../a", "-a", "a b", "é"] {
        let conf = named(&node, name, "10.34.0.0/24");
        let mut prev = conf.clone();
        prev["prevResult"] = json!({"cniVersion": "1.1.0", "ips": []});
        for (cmd, conf) in [
            ("ADD", &conf),
            ("CHECK", &prev),
            ("DEL", &conf),
            ("STATUS", &conf),
        ] {
            let out = node.ours(&add.cmd(cmd), conf);
            assert_eq!(out.code(), 7, "{cmd} of {name:?}: {}", out.stdout);
            let details = out.json()["details"].as_str().unwrap_or("").to_string();
            assert!(details.contains("field \"name\""), "{details}");
        }
        assert_eq!(gc_all(&node, &conf).code(), 7, "GC of {name:?}");
    }
    assert!(!node.data.path().join("ipam").exists());
    assert!(node.host_veths().is_empty(), "{:?}", node.host_veths());
    assert!(node.our_routes().trim().is_empty());
    assert_eq!(links(&pod), vec!["lo".to_string()]);
}
