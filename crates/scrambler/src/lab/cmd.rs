//! Running the lab's helper programs (iproute2, ping) with errors that name them.

use scrambler_core::{Error, Result};
use std::process::{Command, Output, Stdio};

/// Runs `prog args…`, returns stdout; a failure names the command and its stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<String> {
    let out = output(prog, args)?;
    if !out.status.success() {
        return Err(Error::Dataplane {
            dataplane: "lab".into(),
            op: format!("{prog} {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `prog args…` and returns its output whatever its exit status.
pub fn output(prog: &str, args: &[&str]) -> Result<Output> {
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run", prog, e))
}

/// `ip -n NETNS args…` (or `ip args…` in the current namespace when `netns` is empty).
pub fn ip(netns: &str, args: &[&str]) -> Result<String> {
    let mut v: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if !netns.is_empty() {
        v.extend_from_slice(&["-n", netns]);
    }
    v.extend_from_slice(args);
    run(ip_bin(), &v)
}

/// iproute2's `ip` (by full path: busybox shells prefer their own `ip` applet).
pub fn ip_bin() -> &'static str {
    if std::path::Path::new("/usr/sbin/ip").exists() {
        "/usr/sbin/ip"
    } else if std::path::Path::new("/sbin/ip").exists() {
        "/sbin/ip"
    } else {
        "ip"
    }
}

/// `ip netns exec NETNS prog args…`, returning the raw output.
pub fn netns_exec(netns: &str, prog: &str, args: &[&str]) -> Result<Output> {
    let mut v = vec!["netns", "exec", netns, prog];
    v.extend_from_slice(args);
    output(ip_bin(), &v)
}

/// Sets the sysctl `key` (dotted, `net.ipv4.ip_forward`) to `value` inside the named
/// namespace ([`scrambler_netlink::sysctl::ensure_blocking`]).
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let netns = scrambler_core::Netns::named(netns);
    scrambler_netlink::sysctl::ensure_blocking(&netns, &key.replace('.', "/"), value)
}
