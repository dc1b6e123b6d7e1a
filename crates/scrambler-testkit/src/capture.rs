//! tcpdump on an interface of a network namespace, writing a pcap file: started once it
//! listens, stopped with SIGINT so the file is complete, then read back as bytes
//! ([`Capture::pcap`]) or as tcpdump's own decoding ([`Capture::text`]).
//!
//! tcpdump runs with `-Z root`: it would otherwise switch to the `tcpdump` user, which a
//! VM guest's (or a minimal host's) passwd may lack and which cannot write the file.
//!
//! ```no_run
//! use scrambler_testkit::capture::Capture;
//! let cap = Capture::on("scr-wire", "br0").filter("ip").start().unwrap();
//! // … traffic …
//! for line in cap.finish() {
//!     assert!(!line.contains(" 10.0."), "cleartext: {line}");
//! }
//! ```

use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a stopping capture waits first, so tcpdump reads what the kernel still holds
/// for it.
const SETTLE: Duration = Duration::from_millis(500);

/// What to capture; [`CaptureBuilder::start`] starts it.
#[derive(Debug, Clone)]
pub struct CaptureBuilder {
    netns: String,
    iface: String,
    direction: Option<&'static str>,
    snaplen: Option<u32>,
    filter: Option<String>,
    file: Option<PathBuf>,
}

impl CaptureBuilder {
    /// Only what enters the interface (`-Q in`); with `any`, every frame entering any
    /// interface of the namespace once (a bridge's ports: all that crosses it).
    pub fn inbound(mut self) -> Self {
        self.direction = Some("in");
        self
    }

    /// Only what leaves the interface (`-Q out`).
    pub fn outbound(mut self) -> Self {
        self.direction = Some("out");
        self
    }

    /// Bytes kept per packet (`-s`).
    pub fn snaplen(mut self, bytes: u32) -> Self {
        self.snaplen = Some(bytes);
        self
    }

    /// A pcap filter expression (e.g. `ip`).
    pub fn filter(mut self, expr: impl Into<String>) -> Self {
        self.filter = Some(expr.into());
        self
    }

    /// Writes the capture to `file` (replaced if it exists; kept afterwards) instead of a
    /// temporary file.
    pub fn to_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Starts tcpdump and returns once it listens. Errors name the interface and say
    /// whether tcpdump could not be run or exited.
    pub fn start(self) -> io::Result<Capture> {
        let what = format!("tcpdump on {} in {}", self.iface, self.netns);
        let context = |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
        let (file, dir) = match self.file {
            Some(f) => (f, None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("scr-capture-")
                    .tempdir()
                    .map_err(context)?;
                (dir.path().join("capture.pcap"), Some(dir))
            }
        };
        let _ = std::fs::remove_file(&file);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns, "tcpdump", "-i", &self.iface]);
        if let Some(d) = self.direction {
            cmd.args(["-Q", d]);
        }
        if let Some(n) = self.snaplen {
            cmd.args(["-s", &n.to_string()]);
        }
        cmd.args(["-nn", "-U", "--immediate-mode", "-Z", "root", "-w"])
            .arg(&file)
            .args(self.filter.as_deref())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(context)?;
        if !listening(&mut child) {
            let _ = child.kill();
            let status = child.wait().map_err(context)?;
            return Err(io::Error::other(format!(
                "{what} exited before listening ({status})"
            )));
        }
        Ok(Capture {
            child: Some(child),
            file,
            _dir: dir,
        })
    }
}

/// Waits for tcpdump's "listening on …" (its socket is bound), then keeps draining its
/// stderr in the background so it never blocks on a full pipe. False when it ended first.
fn listening(child: &mut Child) -> bool {
    let Some(stderr) = child.stderr.take() else {
        return false;
    };
    let mut lines = BufReader::new(stderr).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on"));
    std::thread::spawn(move || for _ in lines {});
    ready
}

/// A running tcpdump; stopped when read or dropped.
#[derive(Debug)]
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Capture {
    /// A capture on interface `iface` (`any`: all) of the named namespace `netns`
    /// (`/run/netns/NAME`).
    pub fn on(netns: &str, iface: &str) -> CaptureBuilder {
        CaptureBuilder {
            netns: netns.into(),
            iface: iface.into(),
            direction: None,
            snaplen: None,
            filter: None,
            file: None,
        }
    }

    /// The pcap file being written.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Stops the capture and returns the pcap file's bytes.
    pub fn pcap(mut self) -> io::Result<Vec<u8>> {
        self.stop();
        std::fs::read(&self.file)
            .map_err(|e| io::Error::new(e.kind(), format!("read {}: {e}", self.file.display())))
    }

    /// Stops the capture and returns tcpdump's decoding (`-nn`) of the packets that match
    /// the pcap `filter` (empty: all), one line per packet.
    pub fn text(mut self, filter: &str) -> io::Result<String> {
        self.stop();
        let out = Command::new("tcpdump")
            .arg("-nnr")
            .arg(&self.file)
            .args((!filter.is_empty()).then_some(filter))
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("run tcpdump -r: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "tcpdump -r {}: {}",
                self.file.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Capture::text`] of every packet as lines; panics when it cannot be read (tests).
    pub fn finish(self) -> Vec<String> {
        self.text("")
            .unwrap_or_else(|e| panic!("{e}"))
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Lets the last packets land, then SIGINT (tcpdump flushes the file and exits).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        std::thread::sleep(SETTLE);
        // `ip netns exec` execs tcpdump, so the pid is tcpdump's own
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let _ = child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
