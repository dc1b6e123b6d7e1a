//! [`VmTest`]: what to run in the guest, and the run itself.

use crate::config::{self, VmSettings};
use crate::guest::{self, GuestPlan};
use crate::kernel::GuestKernel;
use crate::outcome::VmOutcome;
use crate::{initramfs, qemu, slots, vmlinux};
use scrambler_core::Error;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Environment variables passed from the host's test process to the guest's (besides
/// [`VmTest::with_env`]): cargo's and Rust's own (`CARGO_*`, `RUST_*`).
const PASSED_ENV_PREFIXES: &[&str] = &["CARGO_", "RUST_"];

/// A run of (some tests of) a test binary in a VM. Build it, then [`run`](Self::run).
///
/// ```no_run
/// use scrambler_vmtest::VmTest;
/// VmTest::new("vm_cni_")
///     .with_binary("/usr/lib/cni/ipvlan")
///     .with_file("tests/data/10-scrambler.conflist", "/etc/cni/net.d/10-scrambler.conflist")
///     .with_env("RUST_LOG", "debug")
///     .run()
///     .assert_success();
/// ```
#[derive(Debug, Clone)]
pub struct VmTest {
    filter: String,
    exact: bool,
    capture: bool,
    test_threads: u32,
    binary: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    modules: Vec<String>,
    files: Vec<(PathBuf, PathBuf)>,
    dirs: Vec<(PathBuf, PathBuf)>,
    binaries: Vec<PathBuf>,
    timeout: Option<Duration>,
    memory_mb: Option<u32>,
    cpus: Option<u32>,
    /// A whole command line to run instead of a test binary with a filter.
    command: Option<Vec<String>>,
    serial_socket: Option<PathBuf>,
    current_dir: Option<PathBuf>,
}

impl VmTest {
    /// Runs an arbitrary command line in the guest instead of tests (e.g. the lab tool);
    /// `what` names the run in messages. The outcome's status is the command's exit status.
    pub fn command(what: impl Into<String>, argv: Vec<String>) -> Self {
        let mut t = VmTest::new(what);
        t.command = Some(argv);
        t
    }

    /// Runs the tests of the current test binary whose names contain `filter` (libtest's
    /// substring filter), one at a time, output not captured.
    pub fn new(filter: impl Into<String>) -> Self {
        VmTest {
            filter: filter.into(),
            exact: false,
            capture: false,
            test_threads: 1,
            binary: None,
            args: Vec::new(),
            env: Vec::new(),
            modules: Vec::new(),
            files: Vec::new(),
            dirs: Vec::new(),
            binaries: Vec::new(),
            timeout: None,
            memory_mb: None,
            cpus: None,
            command: None,
            serial_socket: None,
            current_dir: None,
        }
    }

    /// A second serial port (the guest's `/dev/ttyS1`) behind a unix socket on the host
    /// that qemu listens on: a channel between a host program and a guest agent.
    pub fn with_serial_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.serial_socket = Some(path.into());
        self
    }

    /// Match the filter exactly against full test paths (`module::test`), libtest's `--exact`.
    pub fn exact(mut self) -> Self {
        self.exact = true;
        self
    }

    /// Let libtest capture test output (clean `test x ... ok` lines, failures' output
    /// printed at the end) instead of passing `--nocapture`.
    pub fn capture(mut self) -> Self {
        self.capture = true;
        self
    }

    /// Tests run in parallel in the guest (default 1).
    pub fn test_threads(mut self, n: u32) -> Self {
        self.test_threads = n.max(1);
        self
    }

    /// Run this test binary instead of the current executable.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// An extra argument for the test binary (e.g. `--include-ignored`).
    pub fn with_arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// An environment variable for the test process in the guest.
    pub fn with_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// A kernel module to load before the tests (most load on demand anyway).
    pub fn with_module(mut self, name: impl Into<String>) -> Self {
        self.modules.push(name.into());
        self
    }

    /// Copies the host file `host` to `guest` in the guest (parent directories created).
    /// Needed only to put a file somewhere else: the guest sees every host path as is.
    pub fn with_file(mut self, host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Self {
        self.files.push((host.into(), guest.into()));
        self
    }

    /// Bind-mounts the host directory `host` at `guest` (e.g. a VPP build tree at /opt/vpp).
    pub fn with_dir(mut self, host: impl Into<PathBuf>, guest: impl Into<PathBuf>) -> Self {
        self.dirs.push((host.into(), guest.into()));
        self
    }

    /// Makes the host executable `path` callable by its file name in the guest (first in
    /// PATH). Its shared libraries are the host's, as the guest runs on the host's root.
    pub fn with_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binaries.push(path.into());
        self
    }

    /// The working directory of the guest process (a host path); default: this process's.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// Overrides `SCRAMBLER_VM_TIMEOUT` for this run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Overrides `SCRAMBLER_VM_MEMORY` (MiB) for this run.
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = Some(mb);
        self
    }

    /// Overrides `SCRAMBLER_VM_CPUS` for this run.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = Some(n.max(1));
        self
    }

    /// The libtest filter this run uses.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// Boots the VM, runs the tests, powers off. Never panics; see [`VmOutcome`].
    /// With `SCRAMBLER_VM=skip` nothing runs and the outcome says so.
    pub fn run(&self) -> VmOutcome {
        if config::skip_requested() {
            return VmOutcome::skipped(&self.filter);
        }
        match self.try_run() {
            Ok(outcome) => outcome,
            Err(e) => VmOutcome::error(&self.filter, e),
        }
    }

    fn try_run(&self) -> Result<VmOutcome, Error> {
        if crate::in_vm() {
            return Err(Error::Unsupported(
                "already inside the VM: guard the call with in_vm()/needs_vm()".into(),
            ));
        }
        if self.filter.is_empty() {
            return Err(Error::config(
                "empty test filter (would run every test in the VM)",
            ));
        }
        let settings = self.settings()?;
        let kernel = GuestKernel::find(settings.kernel.as_deref())?;
        let busybox = initramfs::find_busybox(settings.busybox.as_deref())?;
        let plan = self.plan()?;
        let image = initramfs::build(&kernel, &busybox, &guest::render(&plan)?)?;

        let boot_image = match settings.pvh {
            true => vmlinux::boot_image(&kernel.image),
            false => kernel.image.clone(),
        };
        let _slot = slots::acquire(settings.jobs)?;
        // An unlinked temp file, handed to qemu as /dev/fd/N: nothing to clean up, even
        // if this process is killed.
        let mut initrd =
            tempfile::tempfile().map_err(|e| Error::io("create", "initramfs temp file", e))?;
        initrd
            .write_all(&image)
            .and_then(|()| initrd.flush())
            .map_err(|e| Error::io("write", "initramfs temp file", e))?;

        eprintln!(
            "scrambler-vmtest: booting {} ({}, {} MiB, {} CPUs) for tests matching {:?}",
            boot_image.display(),
            settings.accel,
            settings.memory_mb,
            settings.cpus,
            self.filter
        );
        let boot = |kernel_image: &Path| {
            qemu::boot(&qemu::Boot {
                settings: &settings,
                kernel: kernel_image,
                initrd: &initrd,
                nonce: &plan.nonce,
                serial_socket: self.serial_socket.as_deref(),
            })
        };
        let mut result = boot(&boot_image)?;
        if boot_image != kernel.image && never_booted(&result) {
            eprintln!(
                "scrambler-vmtest: the PVH boot failed ({}); retrying with {}",
                result.status,
                kernel.image.display()
            );
            // Drop the cached vmlinux so the next run extracts it afresh.
            let _ = std::fs::remove_file(&boot_image);
            result = boot(&kernel.image)?;
        }
        eprintln!(
            "scrambler-vmtest: {:?}: {} after {:.1} s",
            self.filter,
            result.status,
            result.elapsed.as_secs_f64()
        );
        Ok(VmOutcome {
            what: self.filter.clone(),
            status: result.status,
            console: result.console,
            elapsed: result.elapsed,
            qemu_pid: Some(result.qemu_pid),
        })
    }

    fn settings(&self) -> Result<VmSettings, Error> {
        let mut s = VmSettings::from_env()?;
        s.timeout = self.timeout.unwrap_or(s.timeout);
        s.memory_mb = self.memory_mb.unwrap_or(s.memory_mb);
        s.cpus = self.cpus.unwrap_or(s.cpus);
        Ok(s)
    }

    fn test_command(&self, exe: &Path, cwd: &Path) -> Result<Vec<String>, Error> {
        let mut command = vec![
            utf8(&absolute(exe, cwd)?)?,
            self.filter.clone(),
            format!("--test-threads={}", self.test_threads),
            "--color=never".into(),
        ];
        if self.exact {
            command.push("--exact".into());
        }
        if !self.capture {
            command.push("--nocapture".into());
        }
        command.extend(self.args.iter().cloned());
        Ok(command)
    }

    fn plan(&self) -> Result<GuestPlan, Error> {
        let exe = match &self.binary {
            Some(b) => b.clone(),
            None => {
                std::env::current_exe().map_err(|e| Error::io("find", "current test binary", e))?
            }
        };
        let here =
            std::env::current_dir().map_err(|e| Error::io("read", "current directory", e))?;
        let cwd = match &self.current_dir {
            Some(d) => absolute(d, &here)?,
            None => here,
        };
        let command = match &self.command {
            Some(argv) if !argv.is_empty() => {
                let mut c = argv.clone();
                c[0] = utf8(&absolute(Path::new(&argv[0]), &cwd)?)?;
                c.extend(self.args.iter().cloned());
                c
            }
            _ => self.test_command(&exe, &cwd)?,
        };

        let pair = |(h, g): &(PathBuf, PathBuf)| -> Result<(String, String), Error> {
            Ok((utf8(&absolute(h, &cwd)?)?, utf8(&absolute_guest(g, &cwd))?))
        };
        Ok(GuestPlan {
            nonce: nonce(),
            cwd: utf8(&cwd)?,
            command,
            env: self.guest_env(),
            modules: self.modules.clone(),
            files: self.files.iter().map(pair).collect::<Result<_, _>>()?,
            dirs: self.dirs.iter().map(pair).collect::<Result<_, _>>()?,
            binaries: self
                .binaries
                .iter()
                .map(|b| utf8(&absolute(b, &cwd)?))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The guest test process's whole environment.
    fn guest_env(&self) -> Vec<(String, String)> {
        // Only names a shell can export pass (cargo sets e.g. `CARGO_BIN_EXE_scrambler-cni`).
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| PASSED_ENV_PREFIXES.iter().any(|p| k.starts_with(p)))
            .filter(|(k, _)| k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        if !env.iter().any(|(k, _)| k == "RUST_BACKTRACE") {
            env.push(("RUST_BACKTRACE".into(), "1".into()));
        }
        env.push(("PATH".into(), guest::guest_path()));
        env.push(("HOME".into(), "/root".into()));
        env.push(("TMPDIR".into(), "/tmp".into()));
        env.push((config::ENV_IN_VM.into(), "1".into()));
        env.extend(self.env.iter().cloned());
        env
    }
}

/// qemu ended without a single line from the guest (only its own complaints).
fn never_booted(result: &qemu::BootResult) -> bool {
    matches!(result.status, crate::outcome::VmStatus::Crashed(_))
        && result
            .console
            .lines()
            .all(|l| l.trim().is_empty() || l.starts_with("qemu: "))
}

/// `path` made absolute against `cwd`; it must exist on the host.
fn absolute(path: &Path, cwd: &Path) -> Result<PathBuf, Error> {
    let p = cwd.join(path);
    std::fs::metadata(&p).map_err(|e| Error::io("find host path for the VM", p.display(), e))?;
    Ok(p)
}

fn absolute_guest(path: &Path, cwd: &Path) -> PathBuf {
    cwd.join(path)
}

fn utf8(p: &Path) -> Result<String, Error> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::config(format!("path {} is not UTF-8", p.display())))
}

/// A token unlikely to appear in test output: time, pid and a stack address.
fn nonce() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let local = 0u8;
    format!(
        "{:x}{:x}{:x}",
        t,
        std::process::id(),
        &local as *const u8 as usize
    )
}
