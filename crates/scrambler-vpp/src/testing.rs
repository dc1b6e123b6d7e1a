//! Test helpers: a real VPP running inside a test network namespace.
//!
//! The VPP build comes from `vpp-dist.tar.xz` (see `../shared/vpp/README.md`), extracted once
//! into `target/vpp-dist/` and re-extracted when the tarball changes. Override with
//! `SCRAMBLER_VPP_TARBALL` (another tarball) or `SCRAMBLER_VPP_DIST` (an extracted `vpp/`
//! tree). Each [`VppInstance`] has its own namespace, run directory and API prefix; it is
//! killed and its namespace removed on drop, also when a test panics (and, through
//! `PR_SET_PDEATHSIG`, when the test process dies).

use crate::client::{ConnectOptions, VppClient};
use scrambler_core::netns::testing::TestNetns;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The VPP tarball (see [`crate::dist::tarball`]).
pub fn tarball() -> PathBuf {
    crate::dist::tarball()
}

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

impl Drop for VppInstance {
    fn drop(&mut self) {
        // VPP first, then (field drop) the namespace
        self.stop();
    }
}
