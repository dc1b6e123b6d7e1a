//! Settings read from the environment (see the crate docs for the list).

use scrambler_core::Error;
use std::path::PathBuf;
use std::time::Duration;

/// `SCRAMBLER_VM`: `skip` skips VM tests (loudly); anything else or unset runs them.
pub const ENV_VM: &str = "SCRAMBLER_VM";
/// Set to `1` by the harness inside the guest.
pub const ENV_IN_VM: &str = "SCRAMBLER_IN_VM";
/// Seconds one VM run may take (boot + tests) before qemu is killed. Default 300.
pub const ENV_TIMEOUT: &str = "SCRAMBLER_VM_TIMEOUT";
/// Guest memory in MiB. Default 1024.
pub const ENV_MEMORY: &str = "SCRAMBLER_VM_MEMORY";
/// Guest CPUs. Default 2.
pub const ENV_CPUS: &str = "SCRAMBLER_VM_CPUS";
/// qemu accelerator: `tcg` (default) or `kvm` where /dev/kvm works.
pub const ENV_ACCEL: &str = "SCRAMBLER_VM_ACCEL";
/// The qemu binary. Default `qemu-system-x86_64` from PATH.
pub const ENV_QEMU: &str = "SCRAMBLER_VM_QEMU";
/// Kernel image to boot. Default: the newest /boot/vmlinuz-<ver> with /lib/modules/<ver>.
pub const ENV_KERNEL: &str = "SCRAMBLER_VM_KERNEL";
/// A statically linked busybox. Default /bin/busybox (Debian package busybox-static).
pub const ENV_BUSYBOX: &str = "SCRAMBLER_VM_BUSYBOX";
/// `0` boots the bzImage as is instead of the extracted PVH vmlinux. Default: PVH when possible.
pub const ENV_PVH: &str = "SCRAMBLER_VM_PVH";
/// How many VMs may run at once on this host (across processes). Default 1.
pub const ENV_JOBS: &str = "SCRAMBLER_VM_JOBS";

const DEFAULT_TIMEOUT_SECS: u64 = 300;
const DEFAULT_MEMORY_MB: u32 = 1024;
const DEFAULT_CPUS: u32 = 2;

/// Machine settings of one run, from the environment with per-test overrides.
#[derive(Debug, Clone)]
pub(crate) struct VmSettings {
    pub timeout: Duration,
    pub memory_mb: u32,
    pub cpus: u32,
    pub accel: String,
    pub qemu: PathBuf,
    pub kernel: Option<PathBuf>,
    pub busybox: Option<PathBuf>,
    pub jobs: u32,
    pub pvh: bool,
}

impl VmSettings {
    /// Reads every `SCRAMBLER_VM_*` variable; malformed values are errors, not defaults.
    pub(crate) fn from_env() -> Result<Self, Error> {
        Ok(VmSettings {
            timeout: Duration::from_secs(number(ENV_TIMEOUT, DEFAULT_TIMEOUT_SECS)?),
            memory_mb: number(ENV_MEMORY, DEFAULT_MEMORY_MB)?,
            cpus: number(ENV_CPUS, DEFAULT_CPUS)?,
            accel: text(ENV_ACCEL).unwrap_or_else(|| "tcg".into()),
            qemu: text(ENV_QEMU)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
            kernel: text(ENV_KERNEL).map(PathBuf::from),
            busybox: text(ENV_BUSYBOX).map(PathBuf::from),
            jobs: number(ENV_JOBS, 1u32)?.max(1),
            pvh: text(ENV_PVH).is_none_or(|v| v.trim() != "0"),
        })
    }
}

/// True when `SCRAMBLER_VM=skip`.
pub(crate) fn skip_requested() -> bool {
    text(ENV_VM).is_some_and(|v| v.eq_ignore_ascii_case("skip"))
}

fn text(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn number<T: std::str::FromStr>(var: &str, default: T) -> Result<T, Error> {
    match text(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| Error::InvalidEnvironment {
            var: var.into(),
            reason: format!("{v:?} is not a number"),
        }),
    }
}
