//! Compatibility with a real caller: Debian's `bridge` plugin (containernetworking-plugins)
//! delegates IPAM to our binary through CNI_PATH, inside namespaces this test creates. The
//! "node" is a TestNetns too, so the host namespace is never touched.

use scrambler_core::netns::testing::TestNetns;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const BRIDGE: &str = "/usr/lib/cni/bridge";

/// A CNI bin dir holding our plugin and Debian's plugins.
fn cni_bin_dir() -> tempfile::TempDir {
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
    let mut child = Command::new("ip")
        .args(["netns", "exec", &node.name])
        .arg(bin.join("bridge"))
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", "bridge-ctr-1")
        .env("CNI_NETNS", pod.path())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bridge");
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
    if !Path::new(BRIDGE).exists() || !nix_is_root() {
        eprintln!("skipped: needs root and {BRIDGE} (containernetworking-plugins)");
        return;
    }
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

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
