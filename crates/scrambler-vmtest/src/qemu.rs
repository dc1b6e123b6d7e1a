//! Starting qemu, streaming its serial console, enforcing the timeout.
//!
//! qemu never outlives a run: it is killed on timeout, when the run's [`Qemu`] handle
//! is dropped (also on panic), and by the kernel (parent-death signal) if the test
//! process itself dies.

use crate::config::VmSettings;
use crate::outcome::VmStatus;
use scrambler_core::Error;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Marker the guest's /init prints with the test's exit status.
pub(crate) const EXIT_MARKER: &str = "SCRAMBLER-VM-EXIT";
/// How long qemu may take to power off after the guest reported its status.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);

/// The guest kernel's command line. A soft lockup (a CPU stuck in the kernel for twice
/// `watchdog_thresh` seconds, 120 s here: TCG guests on a loaded host report 20–40 s stalls that are not loops) panics the
/// guest, whose trace is on the console, and `panic=-1` with qemu's `-no-reboot` ends the
/// VM at once: a guest whose kernel loops fails its run in bounded time instead of
/// spinning until the run's timeout (or forever, for a lab VM) with every test silent.
pub(crate) const KERNEL_CMDLINE: &str =
    "console=ttyS0 panic=-1 softlockup_panic=1 watchdog_thresh=60 quiet rdinit=/init";

/// One boot: the machine to start and how to recognise its exit status.
pub(crate) struct Boot<'a> {
    pub settings: &'a VmSettings,
    /// The image for `-kernel` (bzImage or PVH vmlinux).
    pub kernel: &'a Path,
    /// The initramfs, an open (possibly unlinked) file inherited by qemu.
    pub initrd: &'a std::fs::File,
    pub nonce: &'a str,
    /// A unix socket (qemu listens) behind a second serial port, the guest's ttyS1.
    pub serial_socket: Option<&'a Path>,
}

/// What a boot produced.
pub(crate) struct BootResult {
    pub status: VmStatus,
    pub console: String,
    pub elapsed: Duration,
    pub qemu_pid: u32,
}

/// Boots the VM and waits for the guest's exit marker, qemu's exit or the timeout.
pub(crate) fn boot(b: &Boot<'_>) -> Result<BootResult, Error> {
    let started = Instant::now();
    let mut qemu = Qemu::spawn(b)?;
    let qemu_pid = qemu.child.id();
    let lines = qemu.console_lines()?;
    let deadline = started + b.settings.timeout;
    let mut console = String::new();
    let mut reported = None;

    let status = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                // Echoed with the host's elapsed seconds, to see where time goes.
                eprintln!("vm {:6.1}| {line}", started.elapsed().as_secs_f64());
                if let Some(code) = exit_code(&line, b.nonce) {
                    reported = Some(code);
                }
                console.push_str(&line);
                console.push('\n');
                if reported.is_some() {
                    break qemu.wait_poweroff(reported);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                qemu.kill();
                break VmStatus::TimedOut(b.settings.timeout);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break qemu.wait_poweroff(reported),
        }
    };
    // Drain what qemu printed while exiting (stderr complaints).
    while let Ok(line) = lines.try_recv() {
        console.push_str(&line);
        console.push('\n');
    }
    let status = match status {
        VmStatus::Crashed(why) => VmStatus::Crashed(with_panic(why, &console)),
        other => other,
    };
    Ok(BootResult {
        status,
        console,
        elapsed: started.elapsed(),
        qemu_pid,
    })
}

/// A running qemu process, killed and reaped on drop.
struct Qemu {
    child: Child,
}

impl Qemu {
    fn spawn(b: &Boot<'_>) -> Result<Self, Error> {
        let s = b.settings;
        let initrd_fd = b.initrd.as_raw_fd();
        let mut cmd = Command::new(&s.qemu);
        cmd.args(["-accel", &s.accel])
            .args(["-cpu", if s.accel == "kvm" { "host" } else { "max" }])
            .args(["-m", &s.memory_mb.to_string()])
            .args(["-smp", &s.cpus.to_string()])
            .args(["-nodefaults", "-display", "none", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-kernel")
            .arg(b.kernel)
            .arg("-initrd")
            .arg(format!("/dev/fd/{initrd_fd}"))
            .args(["-append", KERNEL_CMDLINE])
            .args([
                "-virtfs",
                "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(sock) = b.serial_socket {
            cmd.arg("-serial")
                .arg(format!("unix:{},server=on,wait=off", sock.display()));
        }
        // SAFETY: prctl and fcntl are async-signal-safe syscalls; the closure allocates
        // nothing, and the initramfs fd stays open in the parent until qemu has exited.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                let fd = std::os::fd::BorrowedFd::borrow_raw(initrd_fd);
                nix::fcntl::fcntl(
                    fd,
                    nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
                )?;
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io("start qemu (package qemu-system-x86)", s.qemu.display(), e))?;
        Ok(Qemu { child })
    }

    /// Console lines (stdout) and qemu's own complaints (stderr, prefixed `qemu: `),
    /// cleaned of `\r` and escape sequences, in arrival order.
    fn console_lines(&mut self) -> Result<mpsc::Receiver<String>, Error> {
        let (tx, rx) = mpsc::channel();
        let stdout = self.child.stdout.take();
        let stderr = self.child.stderr.take();
        let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
            return Err(Error::Unsupported("qemu started without pipes".into()));
        };
        forward_lines(stdout, "", tx.clone());
        forward_lines(stderr, "qemu: ", tx);
        Ok(rx)
    }

    /// Waits for qemu to exit after the guest reported `reported` (or after its console
    /// closed); kills it if it takes too long.
    fn wait_poweroff(&mut self, reported: Option<i32>) -> VmStatus {
        let limit = Instant::now() + POWEROFF_GRACE;
        let exit = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < limit => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    self.kill();
                    break None;
                }
            }
        };
        match (reported, exit) {
            (Some(code), _) => VmStatus::Exited(code),
            (None, Some(status)) => VmStatus::Crashed(format!("qemu exited with {status}")),
            (None, None) => VmStatus::Crashed("console closed but qemu kept running".into()),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn forward_lines(
    stream: impl Read + Send + 'static,
    prefix: &'static str,
    tx: mpsc::Sender<String>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = format!("{prefix}{}", clean_line(&buf));
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
}

/// `why` with the guest kernel's panic message from `console`, if it panicked (e.g.
/// "Kernel panic - not syncing: softlockup: hung tasks").
fn with_panic(why: String, console: &str) -> String {
    const PANIC: &str = "Kernel panic - not syncing: ";
    match console.lines().find_map(|l| l.split_once(PANIC)) {
        Some((_, msg)) => format!("{why}; the guest kernel panicked: {}", msg.trim()),
        None => why,
    }
}

/// The status in `SCRAMBLER-VM-EXIT <nonce> <status>`, if `line` is that marker.
fn exit_code(line: &str, nonce: &str) -> Option<i32> {
    let at = line.find(EXIT_MARKER)?;
    let mut words = line[at + EXIT_MARKER.len()..].split_whitespace();
    (words.next()? == nonce).then_some(())?;
    words.next()?.parse().ok()
}

/// Drops `\r`, the trailing newline and terminal escape sequences (SeaBIOS clears the
/// screen; the guest's tty may colour).
fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI (ESC [ …): parameters and intermediates, then one final byte @..~;
                // any other escape is two characters.
                if chars.next() == Some('[') {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_needs_the_nonce() {
        assert_eq!(exit_code("SCRAMBLER-VM-EXIT abc 0", "abc"), Some(0));
        assert_eq!(
            exit_code("junk SCRAMBLER-VM-EXIT abc 101", "abc"),
            Some(101)
        );
        assert_eq!(exit_code("SCRAMBLER-VM-EXIT xyz 0", "abc"), None);
        assert_eq!(exit_code("SCRAMBLER-VM-EXIT abc", "abc"), None);
        assert_eq!(exit_code("test x ... ok", "abc"), None);
    }

    #[test]
    fn a_crash_names_the_guest_kernel_panic() {
        let console =
            "vm 250.0| [  249.9] watchdog: BUG: soft lockup - CPU#0 stuck for 43s! [fping:911]\n\
                       vm 250.2| [  250.1] Kernel panic - not syncing: softlockup: hung tasks\n";
        assert_eq!(
            with_panic("qemu exited with exit status: 0".into(), console),
            "qemu exited with exit status: 0; the guest kernel panicked: softlockup: hung tasks"
        );
        assert_eq!(with_panic("x".into(), "vm 1.0| fine\n"), "x");
        // the guest panics on a soft lockup, and qemu does not reboot it
        assert!(KERNEL_CMDLINE.contains("softlockup_panic=1"));
        assert!(KERNEL_CMDLINE.contains("panic=-1"));
    }

    #[test]
    fn escapes_and_carriage_returns_are_removed() {
        assert_eq!(clean_line(b"\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\n"), "SeaBIOS");
        assert_eq!(clean_line(b"\x1b[0;32mok\x1b[0m\r\n"), "ok");
        assert_eq!(clean_line(b"a\tb\n"), "a\tb");
    }
}
