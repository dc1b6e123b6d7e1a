//! Running the lab inside Debian's stock kernel under qemu when this kernel lacks ESP.
//!
//! The lab needs ESP states and xfrm interfaces. Where the running kernel has them, it
//! runs natively. Where it does not (this project's CI machines), `scrambler lab run`
//! boots the stock kernel with [`scrambler_vmtest`] — the guest sees the host's root file
//! system read-only with a writable overlay, so the same `scrambler` and `scrambler-cni`
//! binaries run there — and runs the same command line inside; its output streams to this
//! terminal and its exit status becomes ours.
//!
//! The single steps (`lab up`, `lab test`, `lab inject`, `lab status`, `lab down`) share
//! one VM that lives from `up` to `down` (see [`super::session`]).

use scrambler_core::{Error, Result};
use scrambler_vmtest::{in_vm, kernel_has, Feature, VmStatus, VmTest};
use std::process::ExitCode;
use std::time::Duration;

/// Kernel features the lab needs.
pub const NEEDED: [Feature; 2] = [Feature::Esp, Feature::XfrmInterface];

/// True when the lab can run on this kernel.
pub fn runs_natively() -> bool {
    in_vm() || NEEDED.iter().all(|f| kernel_has(*f))
}

/// True when a lab of `backend` can run on this kernel (see
/// [`super::backend::kernel_features`]).
pub fn runs_natively_for(backend: &str) -> bool {
    in_vm()
        || super::backend::kernel_features(backend)
            .iter()
            .all(|f| kernel_has(*f))
}

/// Runs this `scrambler lab run …` command line inside the VM (one boot for the whole
/// tour) and returns its exit status.
pub fn run_once() -> Result<ExitCode> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "own executable", e))?;
    let cni = super::pods::find_cni_binary()?;
    let mut argv: Vec<String> = vec![exe.display().to_string()];
    argv.extend(std::env::args().skip(1));
    eprintln!(
        "[lab] this kernel lacks ESP/xfrm interfaces: running the lab in Debian's stock kernel under qemu"
    );
    let outcome = VmTest::command("scrambler lab", argv)
        .with_env("SCRAMBLER_CNI", cni.display().to_string())
        .with_env(
            "SCRAMBLER_LOG",
            std::env::var("SCRAMBLER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .timeout(Duration::from_secs(
            std::env::var("SCRAMBLER_LAB_TIMEOUT")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1800),
        ))
        .with_env("SCRAMBLER_VPP_DIST", super::vppnode::dist_for_guest())
        .memory_mb(super::vppnode::VM_MEMORY_MB)
        .run();
    match outcome.status {
        VmStatus::Exited(0) => Ok(ExitCode::SUCCESS),
        VmStatus::Exited(n) => Ok(ExitCode::from(u8::try_from(n).unwrap_or(1).max(1))),
        other => Err(Error::Dataplane {
            dataplane: "lab VM".into(),
            op: "run the lab".into(),
            reason: other.to_string(),
        }),
    }
}
