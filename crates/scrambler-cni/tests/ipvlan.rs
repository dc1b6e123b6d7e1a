//! The built `scrambler-cni` binary with `"backend": "ipvlan"` and Debian's host-local
//! IPAM: two nodes (namespaces) whose uplinks `ul0` meet on a bridge in a wire namespace,
//! one pod per node, in each mode l2, l3, l3s.
//!
//! The build machine's kernel has no ipvlan: every `vm_ipvlan_*` test then re-runs inside
//! Debian's stock kernel under qemu (one boot for the group).

mod common;

use common::{run_plugin, with_prev, CniOut, Invocation, BIN, DEBIAN_CNI};
use scrambler_testkit::vm::{Feature, VmSuite};
use serde_json::{json, Value};
use std::path::Path;

static VM: VmSuite = VmSuite::new("vm_ipvlan_");
const FEATURES: &[Feature] = &[Feature::Ipvlan];

use scrambler_testkit::netns::TestNetns as Ns;
use scrambler_testkit::wire::Underlay;

/// Two nodes with `ul0` = 192.0.2.i/24 and a default route, one pod namespace each, a
/// host-local data dir and a CNI_PATH with scrambler-cni next to Debian's plugins.
struct Lab {
    nodes: Vec<Ns>,
    pods: Vec<Ns>,
    data: tempfile::TempDir,
    cni_path: tempfile::TempDir,
    _wire: Ns,
}

impl Lab {
    fn new() -> Lab {
        let Underlay { nodes, pods, wire } = Underlay::new("ic", 2);
        let cni_path = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BIN, cni_path.path().join("scrambler-cni")).unwrap();
        Lab {
            nodes,
            pods,
            data: tempfile::tempdir().unwrap(),
            cni_path,
            _wire: wire,
        }
    }

    /// The conf of node `i` (0-based): ipvlan on `ul0` in `mode`; host-local over the
    /// shared l2 subnet (disjoint ranges per node) or the node's own /24 in l3.
    fn conf(&self, i: usize, mode: &str) -> Value {
        let ipam = if mode == "l2" {
            json!({"type": "host-local", "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
                   "rangeStart": format!("10.10.0.{}", 10 * (i + 1)),
                   "rangeEnd": format!("10.10.0.{}", 10 * (i + 1) + 9)})
        } else {
            json!({"type": "host-local", "subnet": format!("10.1.{}.0/24", i + 1)})
        };
        let mut ipam = ipam;
        ipam["dataDir"] = self
            .data
            .path()
            .join(format!("node{i}"))
            .display()
            .to_string()
            .into();
        json!({"cniVersion": "1.1.0", "name": "ipv", "type": "scrambler-cni",
               "backend": "ipvlan", "master": "ul0", "mode": mode, "ipam": ipam})
    }

    fn inv(&self, cmd: &str, i: usize) -> Invocation {
        Invocation::new(cmd, &format!("ctr{i}"), &self.pods[i].path(), "eth0")
    }

    fn run(&self, i: usize, inv: &Invocation, conf: &Value) -> CniOut {
        let path = format!("{}:{DEBIAN_CNI}", self.cni_path.path().display());
        run_plugin(&self.nodes[i].name, Path::new(BIN), inv, &path, conf)
    }

    fn leases(&self, i: usize) -> Vec<String> {
        let dir = self.data.path().join(format!("node{i}")).join("ipv");
        let Ok(rd) = std::fs::read_dir(dir) else {
            return vec![];
        };
        rd.filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }
}

fn pod_ip(result: &Value) -> String {
    let a = result["ips"][0]["address"].as_str().unwrap();
    a.split('/').next().unwrap().to_string()
}

fn pods_reach_each_other(mode: &str) {
    let lab = Lab::new();
    if mode != "l2" {
        for i in 0..2 {
            let j = 1 - i;
            lab.nodes[i].ip(&[
                "route",
                "add",
                &format!("10.1.{}.0/24", j + 1),
                "via",
                &format!("192.0.2.{}", j + 1),
            ]);
        }
    }
    let mut results = Vec::new();
    for i in 0..2 {
        let conf = lab.conf(i, mode);
        let out = lab.run(i, &lab.inv("ADD", i), &conf);
        let r = out.expect_ok().json();
        assert_eq!(r["interfaces"][0]["name"], "eth0", "{r}");
        assert_eq!(r["interfaces"][0]["mtu"], 1500, "{r}");
        lab.run(i, &lab.inv("CHECK", i), &with_prev(&conf, &r))
            .expect_ok();
        results.push(r);
    }
    let link = lab.pods[0].ip(&["-d", "link", "show", "eth0"]);
    assert!(link.contains(&format!("mode {mode} bridge")), "{link}");
    let (a, b) = (pod_ip(&results[0]), pod_ip(&results[1]));
    assert!(lab.pods[0].ping(&b), "{mode}: pod {a} -> pod {b}");
    assert!(lab.pods[1].ping(&a), "{mode}: pod {b} -> pod {a}");

    // DEL twice, then DEL with the pod namespace gone: all succeed, leases released
    for i in 0..2 {
        let conf = lab.conf(i, mode);
        lab.run(i, &lab.inv("DEL", i), &conf).expect_ok();
        lab.run(i, &lab.inv("DEL", i), &conf).expect_ok();
        assert!(lab.leases(i).is_empty(), "{:?}", lab.leases(i));
    }
    assert!(!lab.pods[0].ip(&["link"]).contains("eth0"));
    lab.pods[1].delete();
    lab.run(1, &lab.inv("DEL", 1), &lab.conf(1, mode))
        .expect_ok();
}

#[test]
fn vm_ipvlan_cni_l2_pods_reach_each_other() {
    if VM.delegate("vm_ipvlan_cni_l2_pods_reach_each_other", FEATURES) {
        return;
    }
    pods_reach_each_other("l2");
}

#[test]
fn vm_ipvlan_cni_l3_pods_reach_each_other() {
    if VM.delegate("vm_ipvlan_cni_l3_pods_reach_each_other", FEATURES) {
        return;
    }
    pods_reach_each_other("l3");
}

#[test]
fn vm_ipvlan_cni_l3s_pods_reach_each_other() {
    if VM.delegate("vm_ipvlan_cni_l3s_pods_reach_each_other", FEATURES) {
        return;
    }
    pods_reach_each_other("l3s");
}

#[test]
fn vm_ipvlan_cni_bad_master_and_l2_encrypt_fail_cleanly() {
    if VM.delegate(
        "vm_ipvlan_cni_bad_master_and_l2_encrypt_fail_cleanly",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    let mut conf = lab.conf(0, "l3");
    conf["master"] = "nope0".into();
    let out = lab.run(0, &lab.inv("ADD", 0), &conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(out.stdout.contains("nope0"), "{}", out.stdout);
    assert!(
        lab.leases(0).is_empty(),
        "lease released: {:?}",
        lab.leases(0)
    );
    assert!(!lab.pods[0].ip(&["link"]).contains("eth0"));

    let mut conf = lab.conf(0, "l2");
    conf["encrypt"] = true.into();
    let out = lab.run(0, &lab.inv("ADD", 0), &conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(
        out.stdout.contains("l2 cannot be encrypted"),
        "{}",
        out.stdout
    );

    // no master: the default route's interface; CHECK against another mode fails
    let mut conf = lab.conf(0, "l3s");
    conf.as_object_mut().unwrap().remove("master");
    let r = lab.run(0, &lab.inv("ADD", 0), &conf).expect_ok().json();
    let mut other = conf.clone();
    other["mode"] = "l3".into();
    let out = lab.run(0, &lab.inv("CHECK", 0), &with_prev(&other, &r));
    assert_eq!(out.code(), 103, "{}", out.stdout);
    lab.run(0, &lab.inv("DEL", 0), &conf).expect_ok();
    assert!(lab.leases(0).is_empty(), "{:?}", lab.leases(0));
}

/// `"encrypt": true` through the binary: ADD makes the node setup (node slave `scr-ipvl`,
/// nft table `scrambler-ipvlan`); when the pod's namespace vanishes without a DEL, CNI GC
/// without that attachment in the valid list removes its route and the node setup.
#[test]
fn vm_ipvlan_cni_encrypted_gc_removes_the_node_setup() {
    if VM.delegate(
        "vm_ipvlan_cni_encrypted_gc_removes_the_node_setup",
        FEATURES,
    ) {
        return;
    }
    let lab = Lab::new();
    let state = tempfile::tempdir().unwrap();
    let mut conf = lab.conf(0, "l3");
    conf["encrypt"] = true.into();
    conf["clusterCidrs"] = json!(["10.1.0.0/16"]);
    conf["stateDir"] = state.path().display().to_string().into();
    let r = lab.run(0, &lab.inv("ADD", 0), &conf).expect_ok().json();
    let ip = pod_ip(&r);
    assert!(lab.nodes[0].ip(&["link"]).contains("scr-ipvl"));
    assert!(lab.nodes[0]
        .exec(&["nft", "list", "tables"])
        .1
        .contains("scrambler-ipvlan"));
    assert!(lab.nodes[0].ip(&["route"]).contains(&ip));

    // the pod vanishes without a DEL; GC with no valid attachment cleans up after it
    lab.pods[0].delete();
    let mut gc_conf = conf.clone();
    gc_conf["cni.dev/valid-attachments"] = json!([]);
    let mut gc = Invocation::new("GC", "", Path::new("/nonexistent"), "");
    gc.netns = None;
    lab.run(0, &gc, &gc_conf).expect_ok();
    assert!(!lab.nodes[0].ip(&["link"]).contains("scr-ipvl"));
    assert!(!lab.nodes[0]
        .exec(&["nft", "list", "tables"])
        .1
        .contains("scrambler-ipvlan"));
    assert!(!lab.nodes[0].ip(&["route"]).contains(&ip));
    // (the lease stays: Debian's host-local predates CNI 1.1 and has no GC)
    // and a late DEL is still fine, and releases it
    lab.run(0, &lab.inv("DEL", 0), &conf).expect_ok();
    assert!(lab.leases(0).is_empty(), "{:?}", lab.leases(0));
}

/// `"encrypt": true` and an IPAM that hands out an IPv6 address too (dual-stack ranges):
/// ADD refuses with code 7 naming the IPv6 address, before anything is made, and the
/// plugin releases both leases. Runs on any kernel: the refusal comes before the ipvlan
/// link would be.
#[test]
fn ipvlan_cni_encrypted_add_refuses_an_ipv6_address_and_releases_the_lease() {
    let lab = Lab::new();
    let mut conf = lab.conf(0, "l3");
    conf["encrypt"] = true.into();
    conf["clusterCidrs"] = json!(["10.0.0.0/8"]);
    conf["ipam"]["ranges"] = json!([[{"subnet": "10.1.1.0/24"}], [{"subnet": "fd10:0:1::/64"}]]);
    conf["ipam"].as_object_mut().unwrap().remove("subnet");
    let out = lab.run(0, &lab.inv("ADD", 0), &conf);
    assert_eq!(out.code(), 7, "{}", out.stdout);
    assert!(
        out.stdout.contains("does not support IPv6 yet") && out.stdout.contains("fd10:0:1::"),
        "{}",
        out.stdout
    );
    assert!(
        lab.leases(0).is_empty(),
        "leases released: {:?}",
        lab.leases(0)
    );
    assert!(!lab.pods[0].ip(&["link"]).contains("eth0"));
    assert!(!lab.nodes[0].ip(&["link"]).contains("scr-ipvl"));
}
