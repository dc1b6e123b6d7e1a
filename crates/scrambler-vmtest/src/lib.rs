//! Run tests that need kernel features the host's kernel lacks (ESP states, ipvlan, XFRM
//! interfaces, …) inside Debian's stock kernel, booted under qemu, transparently.
//!
//! Every VM test starts the same way: a [`VmSuite`] static per test file (one boot for
//! all of its tests), and [`VmSuite::delegate`] as the test's first line. Where this kernel
//! lacks a feature the test needs, `delegate` boots the VM (once), runs the suite's tests
//! there and asserts this test's verdict from that run; in the guest (`SCRAMBLER_IN_VM=1`,
//! [`in_vm`]) or on a kernel that has the features, the test body runs for real.
//!
//! # Usage
//!
//! ```no_run
//! use scrambler_vmtest::{Feature, VmSuite};
//!
//! static VM: VmSuite = VmSuite::new("vm_esp_");
//!
//! #[test]
//! fn vm_esp_ping() {
//!     if VM.delegate("vm_esp_ping", &[Feature::Esp]) {
//!         return;
//!     }
//!     // the real test body: create netns, program xfrm, ping …
//! }
//! ```
//!
//! The filter is libtest's substring filter: a guest test's name must contain it.
//! [`VmSuite::with`] adjusts the run through [`VmTest`] (files, binaries, directories,
//! modules, env vars, limits); [`VmTest::command`] runs a whole program in the guest (the
//! lab does). Runs block the calling thread (also fine inside `#[tokio::test]`). A filter
//! matching nothing in the guest is a failure, not a pass.
//!
//! # How it works
//!
//! * The guest kernel is the newest `/boot/vmlinuz-<ver>` with `/lib/modules/<ver>`
//!   (package linux-image-amd64), booted by `qemu-system-x86_64 -accel tcg -cpu max`
//!   with the serial console on qemu's stdout. To skip SeaBIOS and the kernel's
//!   self-decompression (seconds under TCG), the uncompressed `vmlinux` is extracted
//!   once per kernel and booted through its PVH entry; it is cached in
//!   `<cargo target dir>/scrambler-vmtest/vmlinux-<ver>-<size>-<mtime>.elf` (delete the
//!   directory to drop the cache). Without CONFIG_PVH the bzImage boots as is.
//! * The initramfs is tiny (static busybox, the virtio/9p/overlay modules, an init
//!   script, the per-run scripts; ~3 MB, built per run in milliseconds, not cached).
//!   The guest's root file system is the **host's** root, shared read-only over
//!   virtio-9p with a tmpfs overlay on top: every host binary and library (bash,
//!   iproute2, tcpdump, the test binary, CNI plugins, a VPP tree) is there at its usual
//!   path, and the guest may write anywhere without touching the host.
//! * Kernel modules load on demand through the host's `modprobe` and the complete
//!   `/lib/modules/<ver>` tree, so `ip xfrm state add … aead 'rfc4106(gcm(aes))'`,
//!   `ip link add … type ipvlan` etc. just work; [`VmTest::with_module`] preloads others.
//! * In the guest: /proc, /sys, /dev (with static nodes such as /dev/net/tun whose
//!   drivers load on open), /dev/pts, /dev/shm, /dev/hugepages, /run, /tmp, /var/tmp,
//!   cgroup2, bpffs are mounted (/tmp and /var/tmp empty, except for the host paths the run
//!   names there — working directory, program, files, directories, environment values that
//!   are paths — which stay as on the host, so a checkout under /tmp works), `lo` is up, `ip netns` works, PATH is the host's plus busybox
//!   fallbacks for missing tools (`ping`, `nc`). The test binary runs as root in the same
//!   working directory with `<filter> --test-threads=1 --nocapture --color=never`
//!   (see [`VmTest`] for the knobs), a cleared environment plus `CARGO_*`, `RUST_*`,
//!   `SCRAMBLER_IN_VM=1` and whatever [`VmTest::with_env`] adds. Use
//!   `tcpdump -Z root` in the guest.
//! * The console is echoed to the test's stderr (lines prefixed `vm <seconds since qemu start>| `; libtest shows
//!   it for failing tests, or live with `--nocapture`) and kept in [`VmOutcome::console`].
//!   /init prints `SCRAMBLER-VM-EXIT <nonce> <status>` and powers off.
//! * A guest kernel that soft-locks (a CPU stuck in the kernel for 120 s:
//!   `softlockup_panic=1 watchdog_thresh=60`) panics, and the VM ends at once: the run
//!   fails as [`VmStatus::Crashed`] naming the panic, with the lockup's trace on the
//!   console, instead of hanging until its timeout.
//! * qemu is killed on timeout, when the run ends in any way, and if the test process
//!   dies (parent-death signal). At most `SCRAMBLER_VM_JOBS` VMs (default 1) run at once
//!   on the host; others wait for a slot (waiting does not count toward the timeout).
//!
//! # Environment
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SCRAMBLER_VM` | `skip`: do not boot; VM tests pass with a loud SKIPPED notice | run |
//! | `SCRAMBLER_VM_TIMEOUT` | seconds per run (boot + tests) | 300 |
//! | `SCRAMBLER_VM_MEMORY` | guest MiB | 1024 |
//! | `SCRAMBLER_VM_CPUS` | guest CPUs | 2 |
//! | `SCRAMBLER_VM_ACCEL` | `tcg` or `kvm` | tcg |
//! | `SCRAMBLER_VM_QEMU` | qemu binary | qemu-system-x86_64 |
//! | `SCRAMBLER_VM_KERNEL` | kernel image (`…/vmlinuz-<ver>`, modules in /lib/modules/<ver>) | newest in /boot |
//! | `SCRAMBLER_VM_BUSYBOX` | static busybox | /bin/busybox |
//! | `SCRAMBLER_VM_PVH` | `0`: boot the bzImage instead of the cached PVH vmlinux | PVH if possible |
//! | `SCRAMBLER_VM_JOBS` | VMs at once on this host | 1 |
//! | `SCRAMBLER_IN_VM` | set to `1` by the harness in the guest | — |
//!
//! Host packages: qemu-system-x86, linux-image-amd64, busybox-static, iproute2 (and
//! tcpdump for tests that capture).
#![warn(missing_docs)]

mod config;
mod cpio;
mod feature;
mod guest;
mod initramfs;
mod kernel;
mod outcome;
mod qemu;
mod slots;
mod suite;
mod vm;
mod vmlinux;

pub use config::{
    ENV_ACCEL, ENV_BUSYBOX, ENV_CPUS, ENV_IN_VM, ENV_JOBS, ENV_KERNEL, ENV_MEMORY, ENV_PVH,
    ENV_QEMU, ENV_TIMEOUT, ENV_VM,
};
pub use feature::{kernel_has, Feature};
pub use outcome::{TestResult, VmOutcome, VmStatus};
pub use suite::{SuiteTest, VmSuite};
pub use vm::VmTest;

/// True inside a guest booted by this harness (`SCRAMBLER_IN_VM=1`).
pub fn in_vm() -> bool {
    std::env::var(ENV_IN_VM).is_ok_and(|v| v == "1")
}

/// True when a test needing `features` must be re-run in a VM: not already in one, and
/// the running kernel lacks at least one of them.
pub fn needs_vm(features: &[Feature]) -> bool {
    !in_vm() && features.iter().any(|f| !kernel_has(*f))
}
