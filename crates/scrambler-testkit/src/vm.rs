//! Tests that need kernel features this kernel lacks (ESP states, ipvlan, xfrm interfaces)
//! run in Debian's stock kernel under qemu (see [`scrambler_vmtest`]), all the same way: a
//! [`VmSuite`] static per test file, and [`VmSuite::delegate`] as each test's first line.
//!
//! ```no_run
//! use scrambler_testkit::vm::{Feature, VmSuite};
//!
//! static VM: VmSuite = VmSuite::new("vm_xfrm_");
//!
//! #[test]
//! fn vm_xfrm_esp_only() {
//!     if VM.delegate("vm_xfrm_esp_only", &[Feature::Esp]) {
//!         return; // ran in the VM, and passed there
//!     }
//!     // the test body, in the guest (or on a kernel that has ESP)
//! }
//! ```

pub use scrambler_vmtest::{in_vm, kernel_has, Feature, VmSuite, VmTest};
