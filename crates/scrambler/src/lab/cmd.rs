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

/// Writes a sysctl inside a namespace: `/proc/sys/net` shows the namespace of the thread
/// that opens it, so the write happens on a thread that entered it.
pub fn sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    let object = format!("{key} in {netns}");
    scrambler_core::Netns::named(netns)
        .run(move || std::fs::write(&path, value).map_err(|e| Error::io("set sysctl", object, e)))
}
