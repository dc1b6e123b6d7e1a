//! Pods, attached exactly as a container runtime does it: the CNI plugin binary exec'd in
//! the node's namespace with the CNI_* environment and the network conf on stdin.

use super::cmd;
use ipnet::IpNet;
use scrambler_core::{Backend, CniResult, Error, Result};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Finds the `scrambler-cni` binary: `$SCRAMBLER_CNI`, next to this executable (cargo puts
/// both in target/<profile>/), or in /opt/cni/bin.
pub fn find_cni_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SCRAMBLER_CNI") {
        return Ok(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.join("scrambler-cni"));
            if let Some(up) = dir.parent() {
                candidates.push(up.join("scrambler-cni")); // target/debug/deps/.. for tests
            }
        }
    }
    candidates.push(PathBuf::from("/opt/cni/bin/scrambler-cni"));
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::config("scrambler-cni binary not found: build it (cargo build) or set SCRAMBLER_CNI")
    })
}

/// The network conf the lab gives the plugin for a node of backend `backend` (see
/// [`super::backend`]).
/// One IPAM range set per pod CIDR (one per family), so a dual-stack node's pods get an
/// address of each.
pub fn netconf(
    lab: &str,
    backend: Backend,
    pod_cidrs: &[IpNet],
    lab_dir: &Path,
) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = pod_cidrs
        .iter()
        .map(|c| serde_json::json!([{"subnet": c.to_string()}]))
        .collect();
    let mut conf = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": lab,
        "type": "scrambler-cni",
        "backend": backend,
        "logFile": lab_dir.join("cni.log"),
        "ipam": {
            "type": "scrambler-ipam",
            "ranges": ranges,
            "dataDir": lab_dir.join("ipam"),
        }
    });
    super::backend::add_conf_fields(backend, &mut conf);
    conf
}

/// Runs one CNI command for `pod` (its namespace name) in `node`'s namespace.
pub fn cni(
    cni_bin: &Path,
    command: &str,
    node: &str,
    pod: &str,
    conf: &serde_json::Value,
) -> Result<Option<CniResult>> {
    let netns = format!("/run/netns/{pod}");
    let bin_dir = cni_bin.parent().unwrap_or(Path::new("/"));
    let mut child = Command::new(cmd::ip_bin())
        .args(["netns", "exec", node])
        .arg(cni_bin)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", &netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", bin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("exec", cni_bin.display(), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        let bytes = serde_json::to_vec(conf).map_err(|e| Error::decode("netconf", e))?;
        stdin
            .write_all(&bytes)
            .map_err(|e| Error::io("write conf to", cni_bin.display(), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("wait for", cni_bin.display(), e))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        return Err(Error::Dataplane {
            dataplane: "scrambler-cni".into(),
            op: format!("{command} {pod} on {node}"),
            reason: format!(
                "{} {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    if command != "ADD" {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::decode(format!("ADD result for {pod}"), e))?;
    CniResult::from_json(&v).map(Some)
}

/// The first IPv4 address of a result.
pub fn first_ipv4(r: &CniResult) -> Option<IpAddr> {
    r.ips.iter().map(|i| i.address.addr()).find(|a| a.is_ipv4())
}

/// The first IPv6 address of a result.
pub fn first_ipv6(r: &CniResult) -> Option<IpAddr> {
    r.ips.iter().map(|i| i.address.addr()).find(|a| a.is_ipv6())
}
