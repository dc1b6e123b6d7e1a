//! Running the lab inside Debian's stock kernel under qemu when this kernel lacks ESP.
//!
//! The lab needs ESP states and xfrm interfaces. Where the running kernel has them, it
//! runs natively. Where it does not, the lab boots the stock kernel with
//! [`scrambler_vmtest`] — the guest sees the host's root file system read-only with a
//! writable overlay, so the same `scrambler` and `scrambler-cni` binaries run there — and
//! runs the same command lines inside; their output (stdout and stderr apart) and exit
//! status become ours. `lab run` boots a VM for its tour; the single steps (`lab up`,
//! `lab test`, `lab inject`, `lab status`, `lab down`) share one VM that lives from `up`
//! to `down` (see [`super::session`]).

use scrambler_vmtest::{in_vm, kernel_has, Feature};

/// Kernel features the lab needs.
pub const NEEDED: [Feature; 2] = [Feature::Esp, Feature::XfrmInterface];

/// True when the lab can run on this kernel.
pub fn runs_natively() -> bool {
    in_vm() || NEEDED.iter().all(|f| kernel_has(*f))
}

/// True when a lab of `backend` can run on this kernel (see
/// [`super::backend::LabBackend::kernel_features`]).
pub fn runs_natively_for(backend: super::backend::LabBackend) -> bool {
    in_vm() || backend.kernel_features().iter().all(|f| kernel_has(*f))
}
