//! Test helpers: a node namespace with an underlay, pod namespaces, and running the built
//! `scrambler-cni` binary (or any CNI plugin) inside the node namespace as a runtime does.
#![allow(dead_code)]

use scrambler_testkit::netns::TestNetns;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The plugin under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_scrambler-cni");
/// Debian's reference plugins.
pub const DEBIAN_CNI: &str = "/usr/lib/cni";
/// The node's underlay address (pods ping it).
pub const NODE_IP: &str = "192.0.2.1";
/// The node's IPv6 underlay address.
pub const NODE_IP6: &str = "2001:db8::1";

/// A CNI_PATH holding scrambler-cni next to Debian's plugins (a temp dir of symlinks).
pub struct CniPath {
    pub dir: tempfile::TempDir,
}

impl CniPath {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(BIN, dir.path().join("scrambler-cni")).unwrap();
        CniPath { dir }
    }
    pub fn value(&self) -> String {
        format!("{}:{DEBIAN_CNI}", self.dir.path().display())
    }
}

/// A node: a namespace with an underlay interface `192.0.2.1/24`, default route, MTU 1500.
pub struct Node {
    pub ns: TestNetns,
    pub data: tempfile::TempDir,
    pub cni_path: CniPath,
}

impl Node {
    pub fn new(tag: &str) -> Self {
        let ns = TestNetns::new(tag);
        // the kernel here has no dummy links: a veth pair stands in for the NIC
        ns.ip(&[
            "link",
            "add",
            "uplink",
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            "uplink-peer",
        ]);
        ns.ip(&["link", "set", "uplink-peer", "up"]);
        ns.ip(&["link", "set", "uplink", "up"]);
        ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "uplink"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.0.2.254",
            "dev",
            "uplink",
        ]);
        ns.ip(&["addr", "add", "2001:db8::1/64", "dev", "uplink", "nodad"]);
        Node {
            ns,
            data: tempfile::tempdir().unwrap(),
            cni_path: CniPath::new(),
        }
    }

    /// A conf for the xfrm backend with the built-in IPAM over `subnet`.
    pub fn conf(&self, version: &str, subnet: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "scr-test",
            "type": "scrambler-cni",
            "backend": "xfrm",
            "ipam": {
                "type": "scrambler-ipam",
                "ranges": [[{"subnet": subnet}]],
                "dataDir": self.data.path().join("ipam"),
            },
            "logFile": self.data.path().join("cni.log"),
            "logLevel": "debug",
        })
    }

    /// The same with host-local as delegated IPAM.
    pub fn conf_host_local(&self, version: &str, subnet: &str) -> Value {
        let mut c = self.conf(version, subnet);
        c["ipam"] = json!({
            "type": "host-local",
            "ranges": [[{"subnet": subnet}]],
            "dataDir": self.data.path().join("host-local"),
        });
        c
    }

    /// Lease files of the built-in IPAM for network `scr-test`.
    pub fn leases(&self) -> Vec<String> {
        list_leases(&self.data.path().join("ipam").join("scr-test"))
    }

    /// Lease files of host-local.
    pub fn host_local_leases(&self) -> Vec<String> {
        list_leases(&self.data.path().join("host-local").join("scr-test"))
    }

    /// Names of host-side veths (`scr…`) in the node.
    pub fn host_veths(&self) -> Vec<String> {
        links(&self.ns)
            .into_iter()
            .filter(|n| n.starts_with("scr"))
            .collect()
    }

    /// Routes our plugin installed in the node (proto 0x5c).
    pub fn our_routes(&self) -> String {
        let mut s = self.ns.ip(&["route", "show", "proto", "92"]);
        s.push_str(&self.ns.ip(&["-6", "route", "show", "proto", "92"]));
        s
    }

    /// Runs the plugin (`plugin` on CNI_PATH) in the node namespace.
    pub fn cni(&self, plugin: &str, inv: &Invocation, conf: &Value) -> CniOut {
        let path = if plugin == "scrambler-cni" {
            PathBuf::from(BIN)
        } else {
            Path::new(DEBIAN_CNI).join(plugin)
        };
        run_plugin(&self.ns.name, &path, inv, &self.cni_path.value(), conf)
    }

    /// ADD/CHECK/DEL of scrambler-cni.
    pub fn ours(&self, inv: &Invocation, conf: &Value) -> CniOut {
        self.cni("scrambler-cni", inv, conf)
    }
}

/// One call's parameters.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    pub args: Option<String>,
    pub extra_env: Vec<(String, String)>,
}

impl Invocation {
    pub fn new(command: &str, container_id: &str, netns: &Path, ifname: &str) -> Self {
        Invocation {
            command: command.into(),
            container_id: container_id.into(),
            netns: Some(netns.display().to_string()),
            ifname: ifname.into(),
            args: None,
            extra_env: vec![],
        }
    }
    pub fn cmd(&self, c: &str) -> Self {
        let mut i = self.clone();
        i.command = c.into();
        i
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.extra_env.push((k.into(), v.into()));
        self
    }
}

/// What a plugin printed.
#[derive(Debug)]
pub struct CniOut {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CniOut {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?} / stderr {:?}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn code(&self) -> u64 {
        assert!(!self.ok, "expected failure, got {}", self.stdout);
        self.json()["code"].as_u64().unwrap()
    }
    #[track_caller]
    pub fn expect_ok(&self) -> &Self {
        assert!(
            self.ok,
            "plugin failed: {} / stderr {}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs plugin `path` inside namespace `node` (nsenter) with a runtime's environment.
pub fn run_plugin(
    node: &str,
    path: &Path,
    inv: &Invocation,
    cni_path: &str,
    conf: &Value,
) -> CniOut {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{node}"))
        .arg(path)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", &inv.command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = &inv.netns {
        cmd.env("CNI_NETNS", n);
    }
    if let Some(a) = &inv.args {
        cmd.env("CNI_ARGS", a);
    }
    for (k, v) in &inv.extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(conf).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    CniOut {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The conf with `prevResult` set.
pub fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// Link names in a namespace.
pub fn links(ns: &TestNetns) -> Vec<String> {
    ns.ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn list_leases(dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

/// Pings `dst` once from inside `ns`.
pub fn ping(ns: &TestNetns, dst: &str) -> bool {
    let (ok, out) = ns.exec(&["busybox", "ping", "-c", "1", "-W", "2", dst]);
    if !ok {
        eprintln!("ping {dst} from {}: {out}", ns.name);
    }
    ok
}
