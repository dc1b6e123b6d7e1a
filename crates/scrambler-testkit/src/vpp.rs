//! A real VPP running inside a test network namespace.
//!
//! The VPP build is the one [`crate::dist::locate`] finds (`SCRAMBLER_VPP_DIST`, else the
//! project's CI fixture tarball extracted once into `target/vpp-dist/`). Each
//! [`VppInstance`] has its own namespace, run directory and API prefix; it is killed and
//! its namespace removed on drop, also when a test panics (and, through
//! `PR_SET_PDEATHSIG`, when the test process dies).

use crate::capture::Capture;
use crate::netns::TestNetns;
use scrambler_core::Netns;
use scrambler_vpp_api::api::af_packet::{AfPacketCreateV3, AfPacketDump};
use scrambler_vpp_api::api::interface::{SwInterfaceAddDelAddress, SwInterfaceSetFlags};
use scrambler_vpp_api::api::types::{
    AfPacketFlags, AfPacketMode, IfStatusFlags, InterfaceIndex, MacAddress,
};
use scrambler_vpp_api::{ConnectOptions, VppClient};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The extracted VPP tree (see [`crate::dist::locate`]); panics when there is none.
pub fn vpp_dist() -> PathBuf {
    crate::dist::locate().unwrap_or_else(|e| panic!("{e}"))
}

/// A VPP process inside its own test network namespace.
#[derive(Debug)]
pub struct VppInstance {
    child: Option<Child>,
    /// The namespace VPP runs in (removed after VPP is stopped).
    pub netns: TestNetns,
    /// Sockets, config and logs.
    pub run_dir: PathBuf,
    /// The VPP tree.
    pub dist: PathBuf,
    api_prefix: String,
}

impl VppInstance {
    /// Starts VPP in a new namespace named after `prefix`, pinned to `main_core`, and waits
    /// until its API answers.
    pub async fn start(prefix: &str, main_core: u32) -> VppInstance {
        let dist = vpp_dist();
        let netns = TestNetns::new(prefix);
        let run_dir = PathBuf::from("/run/scr-vpp").join(&netns.name);
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).expect("create run dir");
        let api_prefix = netns.name.clone();
        let template = std::fs::read_to_string(dist.join("share/vpp-dist/startup.conf.in"))
            .expect("startup.conf.in");
        let conf = template
            .replace("@PREFIX@", &dist.display().to_string())
            .replace("@RUNDIR@", &run_dir.display().to_string())
            .replace("@APIPREFIX@", &api_prefix)
            .replace("@HEAP@", "256M")
            .replace("@MAINCORE@", &main_core.to_string());
        let conf_path = run_dir.join("startup.conf");
        std::fs::write(&conf_path, conf).expect("write startup.conf");
        let out = std::fs::File::create(run_dir.join("vpp.stdout")).expect("vpp.stdout");
        let err = out.try_clone().expect("dup stdout");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &netns.name])
            .arg(dist.join("bin/vpp"))
            .arg("-c")
            .arg(&conf_path)
            .env("LD_LIBRARY_PATH", dist.join("lib"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("spawn vpp");
        let mut me = VppInstance {
            child: Some(child),
            netns,
            run_dir,
            dist,
            api_prefix,
        };
        me.wait_ready().await;
        me
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("VPP exited at start ({st}): {}", self.logs());
                }
            }
            if self.api_sock().exists() {
                let opts = ConnectOptions {
                    name: "scrambler-test-probe".into(),
                    timeout: Duration::from_secs(2),
                };
                if let Ok(c) = VppClient::connect_with(self.api_sock(), opts).await {
                    if c.control_ping().await.is_ok() {
                        let _ = c.close().await;
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!("VPP did not come up in 30s: {}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `api.sock` of this VPP.
    pub fn api_sock(&self) -> PathBuf {
        self.run_dir.join("api.sock")
    }

    /// `cli.sock` of this VPP.
    pub fn cli_sock(&self) -> PathBuf {
        self.run_dir.join("cli.sock")
    }

    /// A new API client.
    pub async fn client(&self) -> VppClient {
        VppClient::connect(self.api_sock())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.api_sock().display()))
    }

    /// Runs `vppctl -s cli.sock <args>` and returns its output with `\r` removed.
    pub fn vppctl(&self, args: &[&str]) -> String {
        let out = Command::new(self.dist.join("bin/vppctl"))
            .arg("-s")
            .arg(self.cli_sock())
            .args(args)
            .env("LD_LIBRARY_PATH", self.dist.join("lib"))
            .output()
            .expect("run vppctl");
        assert!(
            out.status.success(),
            "vppctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    }

    /// Makes a VPP interface on the Linux link `name` of VPP's namespace (af_packet,
    /// Ethernet mode, MAC `mac`), sets it up and gives it `addr` (a prefix such as
    /// `192.0.2.1/24`); returns its `sw_if_index`.
    pub async fn host_interface(&self, name: &str, mac: [u8; 6], addr: &str) -> InterfaceIndex {
        self.host_interface_with(name, mac, addr, AfPacketFlags::default())
            .await
    }

    /// [`VppInstance::host_interface`] with af_packet `flags` (e.g. `CKSUM_GSO` for a pod).
    pub async fn host_interface_with(
        &self,
        name: &str,
        mac: [u8; 6],
        addr: &str,
        flags: AfPacketFlags,
    ) -> InterfaceIndex {
        let c = self.client().await;
        let r = c
            .request(&AfPacketCreateV3 {
                mode: AfPacketMode::AF_PACKET_API_MODE_ETHERNET,
                hw_addr: MacAddress(mac),
                host_if_name: name.into(),
                flags,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("af_packet_create {name}: {e}"));
        c.request(&SwInterfaceSetFlags {
            sw_if_index: r.sw_if_index,
            flags: IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP,
        })
        .await
        .unwrap_or_else(|e| panic!("set {name} up: {e}"));
        let prefix: ipnet::IpNet = addr.parse().expect("interface address");
        c.request(&SwInterfaceAddDelAddress {
            sw_if_index: r.sw_if_index,
            is_add: true,
            del_all: false,
            prefix: prefix.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("add {addr} to {name}: {e}"));
        let _ = c.close().await;
        r.sw_if_index
    }

    /// The Linux links VPP has af_packet interfaces on.
    pub async fn af_packet_names(&self) -> Vec<String> {
        let c = self.client().await;
        let names = c
            .dump(&AfPacketDump {})
            .await
            .expect("af_packet_dump")
            .into_iter()
            .map(|a| a.host_if_name)
            .collect();
        let _ = c.close().await;
        names
    }

    /// Captures with tcpdump on the Linux link `dev` of VPP's namespace while `f` runs;
    /// returns tcpdump's text of the packets that match the pcap `filter` (empty: all)
    /// and what `f` returned.
    pub fn capture<T>(&self, dev: &str, filter: &str, f: impl FnOnce() -> T) -> (String, T) {
        let cap = Capture::on(&self.netns.name, dev)
            .to_file(self.run_dir.join(format!("{dev}.pcap")))
            .start()
            .unwrap_or_else(|e| panic!("{e}"));
        let r = f();
        (cap.text(filter).unwrap_or_else(|e| panic!("{e}")), r)
    }

    /// VPP's stdout and log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for f in ["vpp.stdout", "vpp.log"] {
            if let Ok(mut fh) = std::fs::File::open(self.run_dir.join(f)) {
                let _ = fh.read_to_string(&mut s);
            }
        }
        s
    }

    /// Stops VPP now (SIGTERM, then SIGKILL after 3 s); the namespace stays until drop.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
        // shared-memory segments named after the API prefix
        if let Ok(rd) = std::fs::read_dir("/dev/shm") {
            for e in rd.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{}-", self.api_prefix))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// Turns IPv6 off in `ns` (no router solicitations or MLD chatter on captured links).
pub fn quiet_ipv6(ns: &TestNetns) {
    for k in ["all", "default"] {
        ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
        ]);
    }
}

/// A socket resolver for `scrambler_vpp::VppTunnel::with_resolver` and
/// `scrambler_vpp::VppAttach::with_resolver`: the namespace of each of `vpps` to its `api.sock`.
pub fn api_sock_resolver(
    vpps: &[&VppInstance],
) -> impl Fn(&Netns) -> scrambler_core::Result<PathBuf> + Clone + Send + Sync + 'static {
    let socks: HashMap<PathBuf, PathBuf> = vpps
        .iter()
        .map(|v| (v.netns.path(), v.api_sock()))
        .collect();
    move |ns: &Netns| match ns {
        Netns::Path(p) => socks
            .get(p)
            .cloned()
            .ok_or_else(|| scrambler_core::Error::config("unknown node")),
        Netns::Current => Err(scrambler_core::Error::config("no VPP here")),
    }
}

impl Drop for VppInstance {
    fn drop(&mut self) {
        // VPP first, then (field drop) the namespace
        self.stop();
    }
}
