//! Network namespaces that tests create and always remove.

use scrambler_core::Netns;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), deleted on drop with everything in it.
#[derive(Debug)]
pub struct TestNetns {
    /// Its name under /run/netns.
    pub name: String,
}

impl TestNetns {
    /// Creates `scr-<prefix>-<pid>-<n>` with `lo` up.
    pub fn new(prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("scr-{prefix}-{}-{n}", std::process::id());
        quiet_del(&name);
        run(&["ip", "netns", "add", &name]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        TestNetns { name }
    }

    /// As a [`Netns`].
    pub fn netns(&self) -> Netns {
        Netns::named(&self.name)
    }

    /// Path of the namespace file.
    pub fn path(&self) -> std::path::PathBuf {
        std::path::Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n NAME args…` and returns stdout; panics on failure (tests only).
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Two echoes to `dst` from inside the namespace; true when one came back.
    pub fn ping(&self, dst: &str) -> bool {
        Command::new("ip")
            .args([
                "netns", "exec", &self.name, "ping", "-c", "2", "-W", "2", dst,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A veth `a_if` here — `b_if` in `b`, both up.
    pub fn veth(&self, a_if: &str, b: &TestNetns, b_if: &str) {
        veth(self, a_if, b, b_if)
    }

    /// Deletes the namespace now (dropping it later is harmless).
    pub fn delete(&self) {
        quiet_del(&self.name);
    }

    /// Runs `ip netns exec NAME cmd…`, returns (success, stdout+stderr).
    pub fn exec(&self, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("spawn ip netns exec");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        quiet_del(&self.name);
    }
}

/// `ip netns del NAME`, silently: a missing namespace is fine, and stray stderr would
/// garble libtest's result lines when tests run inside the VM.
fn quiet_del(name: &str) {
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Joins two namespaces with a veth pair `a_if` (in `a`) – `b_if` (in `b`), both up.
pub fn veth(a: &TestNetns, a_if: &str, b: &TestNetns, b_if: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
