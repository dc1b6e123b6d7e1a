//! Honest probes of the running kernel: each one really creates the object in a
//! throwaway network namespace (unshared by the probe process only, gone when it
//! exits), so "true" means tests can use it, including module autoloading.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A kernel capability a test may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Feature {
    /// IPv4 ESP states with AES-GCM (`rfc4106(gcm(aes))`): modules esp4 + crypto.
    Esp,
    /// IPv6 ESP states with AES-GCM: esp6.
    Esp6,
    /// ipvlan links.
    Ipvlan,
    /// XFRM interfaces (`type xfrm if_id N`).
    XfrmInterface,
    /// VTI tunnels.
    Vti,
    /// veth pairs.
    Veth,
    /// dummy links.
    Dummy,
    /// macvlan links.
    Macvlan,
    /// VXLAN links.
    Vxlan,
    /// Linux bridges.
    Bridge,
    /// TUN/TAP devices (/dev/net/tun).
    Tun,
}

impl Feature {
    /// Every feature, for reports.
    pub const ALL: &'static [Feature] = &[
        Feature::Esp,
        Feature::Esp6,
        Feature::Ipvlan,
        Feature::XfrmInterface,
        Feature::Vti,
        Feature::Veth,
        Feature::Dummy,
        Feature::Macvlan,
        Feature::Vxlan,
        Feature::Bridge,
        Feature::Tun,
    ];

    /// `ip -batch` commands that succeed only if the kernel has the feature.
    fn probe(self) -> String {
        const KEY: &str = "0x0102030405060708090a0b0c0d0e0f1011121314";
        const VETH: &str = "link add p0 type veth peer name p1\n";
        let esp = |src: &str, dst: &str| {
            format!(
                "xfrm state add src {src} dst {dst} proto esp spi 0x100 mode tunnel \
                 aead rfc4106(gcm(aes)) {KEY} 128 replay-window 32\n"
            )
        };
        match self {
            Feature::Esp => esp("192.0.2.1", "192.0.2.2"),
            Feature::Esp6 => esp("2001:db8::1", "2001:db8::2"),
            Feature::Ipvlan => format!("{VETH}link add iv0 link p0 type ipvlan mode l3\n"),
            Feature::XfrmInterface => "link add xfrm7 type xfrm dev lo if_id 7\n".into(),
            Feature::Vti => {
                "link add vti7 type vti local 192.0.2.1 remote 192.0.2.2 key 7\n".into()
            }
            Feature::Veth => VETH.into(),
            Feature::Dummy => "link add d0 type dummy\n".into(),
            Feature::Macvlan => format!("{VETH}link add mv0 link p0 type macvlan mode bridge\n"),
            Feature::Vxlan => "link add vx0 type vxlan id 42 dstport 4789 local 192.0.2.1\n".into(),
            Feature::Bridge => "link add br0 type bridge\n".into(),
            Feature::Tun => "tuntap add tap7 mode tap\n".into(),
        }
    }
}

/// Whether the running kernel supports `feature`, tried for real in a throwaway network
/// namespace with iproute2's `ip`. False when the probe cannot run at all (no `ip`,
/// namespaces not permitted) — such a host cannot run the test either.
pub fn kernel_has(feature: Feature) -> bool {
    let Some(ip) = iproute2() else {
        return false;
    };
    let mut cmd = Command::new(ip);
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let flags = if nix::unistd::geteuid().is_root() {
        nix::sched::CloneFlags::CLONE_NEWNET
    } else {
        nix::sched::CloneFlags::CLONE_NEWUSER | nix::sched::CloneFlags::CLONE_NEWNET
    };
    // SAFETY: unshare is a plain syscall; the closure allocates nothing.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || nix::sched::unshare(flags).map_err(std::io::Error::from));
    }
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    if let Some(mut stdin) = child.stdin.take() {
        // ip -batch stops at the first failing command and exits non-zero.
        let _ = stdin.write_all(feature.probe().as_bytes());
    }
    wait_success(&mut child, Duration::from_secs(20))
}

fn wait_success(child: &mut std::process::Child, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

/// iproute2's `ip` (never busybox's applet).
fn iproute2() -> Option<PathBuf> {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file() && !is_busybox(p))
}

fn is_busybox(p: &std::path::Path) -> bool {
    std::fs::canonicalize(p)
        .ok()
        .and_then(|c| {
            c.file_name()
                .map(|n| n.to_string_lossy().contains("busybox"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_substitute_the_key() {
        assert!(Feature::Esp.probe().contains("0x0102"));
        assert!(!Feature::Esp6.probe().contains("KEY"));
    }
}
