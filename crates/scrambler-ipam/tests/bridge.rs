//! Compatibility with a real caller: Debian's `bridge` plugin (containernetworking-plugins)
//! delegates IPAM to our binary through CNI_PATH, inside namespaces this test creates, at
//! CNI 1.0.0, in a 0.3.1 conflist (bridge → tuning, the version many conflists in the
//! field use) and at 0.2.0. The "node" is a TestNetns too, so the host namespace is never
//! touched.

use scrambler_testkit::netns::TestNetns;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const BRIDGE: &str = "/usr/lib/cni/bridge";

/// A CNI bin dir holding our plugin and Debian's plugins.
fn cni_bin_dir() -> tempfile::TempDir {
    assert!(
        Path::new(BRIDGE).exists(),
        "{BRIDGE} is missing: apt-get install containernetworking-plugins (scripts/install-deps.sh)"
    );
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_scrambler-ipam"),
        dir.path().join("scrambler-ipam"),
    )
    .unwrap();
    for entry in std::fs::read_dir("/usr/lib/cni").unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Runs the bridge plugin inside `node` like a runtime would.
fn bridge(
    node: &TestNetns,
    bin: &Path,
    cmd: &str,
    pod: &TestNetns,
    conf: &Value,
) -> (bool, String) {
    plugin(node, bin, "bridge", cmd, pod, conf)
}

/// Runs plugin `name` of the bin dir inside `node` like a runtime would.
fn plugin(
    node: &TestNetns,
    bin: &Path,
    name: &str,
    cmd: &str,
    pod: &TestNetns,
    conf: &Value,
) -> (bool, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(bin.join(name))
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "bridge-ctr-1")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn debian_bridge_plugin_delegates_to_scrambler_ipam() {
    let bin = cni_bin_dir();
    let data = tempfile::tempdir().unwrap();
    let node = TestNetns::new("ipam-node");
    let pod = TestNetns::new("ipam-pod");
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "brnet",
        "type": "bridge",
        "bridge": "scrbr0",
        "isGateway": true,
        "ipam": {
            "type": "scrambler-ipam",
            "ranges": [[{"subnet": "10.60.0.0/24"}]],
            "exclude": ["10.60.0.2"],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data.path().display().to_string()
        }
    });

    let (ok, out) = bridge(&node, bin.path(), "ADD", &pod, &conf);
    assert!(ok, "bridge ADD failed: {out}");
    let result: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(result["ips"][0]["address"], "10.60.0.3/24", "{result}");
    assert_eq!(result["ips"][0]["gateway"], "10.60.0.1");

    // the address is really on the pod's interface, and the lease is ours
    let addrs = pod.ip(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains("10.60.0.3/24"), "{addrs}");
    assert!(pod.ip(&["route"]).contains("default via 10.60.0.1"));
    let lease = std::fs::read_to_string(data.path().join("brnet/10.60.0.3")).unwrap();
    let lease: Value = serde_json::from_str(&lease).unwrap();
    assert_eq!(
        lease,
        json!({"containerId": "bridge-ctr-1", "ifname": "eth0"})
    );
    let (pinged, ping) = pod.exec(&["busybox", "ping", "-c", "1", "-W", "2", "10.60.0.1"]);
    assert!(
        pinged,
        "pod cannot reach its gateway on the node's bridge: {ping}"
    );

    // CHECK goes through bridge to our CHECK
    let mut check = conf.clone();
    check["prevResult"] = result.clone();
    let (ok, out) = bridge(&node, bin.path(), "CHECK", &pod, &check);
    assert!(ok, "bridge CHECK failed: {out}");

    let (ok, out) = bridge(&node, bin.path(), "DEL", &pod, &conf);
    assert!(ok, "bridge DEL failed: {out}");
    assert!(
        !data.path().join("brnet/10.60.0.3").exists(),
        "lease left after DEL"
    );
}

/// The IPv4 address (without prefix) of a result in the `ips` layout.
fn first_ip(result: &Value) -> &str {
    let a = result["ips"][0]["address"].as_str().unwrap_or_default();
    a.split('/').next().unwrap_or_default()
}

#[test]
fn bridge_conflist_at_0_3_1_delegates_to_scrambler_ipam() {
    let bin = cni_bin_dir();
    let data = tempfile::tempdir().unwrap();
    let node = TestNetns::new("ipam031-node");
    let pod = TestNetns::new("ipam031-pod");
    // the conflist's entries as libcni hands them out: name and cniVersion injected, each
    // later plugin given the previous result; no CHECK and no prevResult on DEL before 0.4.0
    let entry = |plugin: Value, prev: Option<&Value>| {
        let mut c = plugin;
        c["cniVersion"] = json!("0.3.1");
        c["name"] = json!("brnet031");
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    };
    let bridge_entry = json!({
        "type": "bridge",
        "bridge": "scrbr31",
        "isGateway": true,
        "ipam": {
            "type": "scrambler-ipam",
            "ranges": [[{"subnet": "10.62.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data.path().display().to_string()
        }
    });
    let tuning_entry =
        json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_redirects": "0"}});

    let (ok, out) = bridge(
        &node,
        bin.path(),
        "ADD",
        &pod,
        &entry(bridge_entry.clone(), None),
    );
    assert!(ok, "bridge ADD failed: {out}");
    let result: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(result["cniVersion"], "0.3.1");
    assert_eq!(result["ips"][0]["version"], "4", "{result}");
    assert_eq!(result["ips"][0]["address"], "10.62.0.2/24");
    assert_eq!(result["ips"][0]["gateway"], "10.62.0.1");
    let (ok, out) = plugin(
        &node,
        bin.path(),
        "tuning",
        "ADD",
        &pod,
        &entry(tuning_entry.clone(), Some(&result)),
    );
    assert!(ok, "tuning ADD failed: {out}");
    let tuned: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        first_ip(&tuned),
        "10.62.0.2",
        "tuning passes our result on: {tuned}"
    );

    assert!(pod
        .ip(&["-4", "addr", "show", "dev", "eth0"])
        .contains("10.62.0.2/24"));
    assert!(pod.ip(&["route"]).contains("default via 10.62.0.1"));
    let (_, redirects) = pod.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/accept_redirects"]);
    assert_eq!(redirects.trim(), "0");
    let (pinged, ping) = pod.exec(&["busybox", "ping", "-c", "1", "-W", "2", "10.62.0.1"]);
    assert!(pinged, "pod cannot reach its gateway: {ping}");
    assert!(data.path().join("brnet031/10.62.0.2").exists());

    for (name, e) in [("tuning", tuning_entry), ("bridge", bridge_entry)] {
        let (ok, out) = plugin(&node, bin.path(), name, "DEL", &pod, &entry(e, None));
        assert!(ok, "{name} DEL failed: {out}");
    }
    assert!(
        !data.path().join("brnet031/10.62.0.2").exists(),
        "lease left after DEL"
    );
}

#[test]
fn bridge_at_0_2_0_reads_our_ip4_result() {
    let bin = cni_bin_dir();
    let data = tempfile::tempdir().unwrap();
    let node = TestNetns::new("ipam020-node");
    let pod = TestNetns::new("ipam020-pod");
    let conf = json!({
        "cniVersion": "0.2.0",
        "name": "brnet020",
        "type": "bridge",
        "bridge": "scrbr20",
        "isGateway": true,
        "ipam": {
            "type": "scrambler-ipam",
            "subnet": "10.63.0.0/24",
            "dataDir": data.path().display().to_string()
        }
    });
    let (ok, out) = bridge(&node, bin.path(), "ADD", &pod, &conf);
    assert!(ok, "bridge ADD failed: {out}");
    let result: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(result["ip4"]["ip"], "10.63.0.2/24", "{result}");
    assert_eq!(result["ip4"]["gateway"], "10.63.0.1");
    assert!(pod
        .ip(&["-4", "addr", "show", "dev", "eth0"])
        .contains("10.63.0.2/24"));
    let (ok, out) = bridge(&node, bin.path(), "DEL", &pod, &conf);
    assert!(ok, "bridge DEL failed: {out}");
    assert!(!data.path().join("brnet020/10.63.0.2").exists());
}
