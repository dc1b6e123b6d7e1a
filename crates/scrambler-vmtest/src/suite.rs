//! [`VmSuite`]: one boot for several tests of a binary.

use crate::outcome::VmOutcome;
use crate::vm::VmTest;
use std::sync::OnceLock;

/// A group of tests that share one VM boot per test-binary run.
///
/// Declare it as a `static` next to the tests. The first test of the group that needs
/// the VM boots it and runs every test matching the suite's filter in the guest (output
/// captured, so each test's verdict and output can be told apart); every other test of
/// the group then just looks up its own verdict.
///
/// ```no_run
/// use scrambler_vmtest::{Feature, VmSuite};
///
/// static VM: VmSuite = VmSuite::new("vm_xfrm_");
///
/// #[test]
/// fn vm_xfrm_esp_ping() {
///     if VM.delegate("vm_xfrm_esp_ping", &[Feature::Esp]) {
///         return;
///     }
///     // … the real test, in the guest (or on a host whose kernel has ESP) …
/// }
/// ```
pub struct VmSuite {
    filter: &'static str,
    customize: Option<fn(VmTest) -> VmTest>,
    outcome: OnceLock<VmOutcome>,
}

impl VmSuite {
    /// A suite of the tests whose names contain `filter`.
    pub const fn new(filter: &'static str) -> Self {
        VmSuite {
            filter,
            customize: None,
            outcome: OnceLock::new(),
        }
    }

    /// Like [`new`](Self::new), with a function adjusting the run (files, binaries,
    /// modules, timeout…): `VmSuite::with(“vm_cni_”, |t| t.with_binary("/usr/lib/cni/ipvlan"))`.
    pub const fn with(filter: &'static str, customize: fn(VmTest) -> VmTest) -> Self {
        VmSuite {
            filter,
            customize: Some(customize),
            outcome: OnceLock::new(),
        }
    }

    /// Boots the VM if this process has not yet (other callers wait), and returns the
    /// verdict of test `name` (its function name, or full path) from that run.
    pub fn run(&self, name: &str) -> SuiteTest<'_> {
        SuiteTest {
            outcome: self.outcome(),
            name: name.to_owned(),
            filter: self.filter,
        }
    }

    /// The prologue of every test of the suite: when this kernel lacks one of `features`
    /// (and this is not the guest), asserts test `name`'s verdict from the VM run and
    /// returns `true`, so the caller returns at once; otherwise returns `false` and the
    /// caller runs the test body here.
    ///
    /// ```ignore
    /// if VM.delegate("vm_xfrm_esp_only", &[Feature::Esp]) {
    ///     return;
    /// }
    /// ```
    #[track_caller]
    pub fn delegate(&self, name: &str, features: &[crate::Feature]) -> bool {
        if !crate::needs_vm(features) {
            return false;
        }
        self.run(name).assert_success();
        true
    }

    /// The shared run's outcome (booting it now if needed). With `SCRAMBLER_VM=skip`
    /// nothing runs, not even the suite's adjustments (they may need what a skipped run
    /// does not, e.g. a VPP to hand to the guest).
    pub fn outcome(&self) -> &VmOutcome {
        self.outcome.get_or_init(|| {
            if crate::config::skip_requested() {
                return VmOutcome::skipped(self.filter);
            }
            let test = VmTest::new(self.filter).capture();
            match self.customize {
                Some(f) => f(test),
                None => test,
            }
            .run()
        })
    }
}

/// One test's view of a [`VmSuite`] run.
pub struct SuiteTest<'a> {
    outcome: &'a VmOutcome,
    name: String,
    filter: &'static str,
}

impl SuiteTest<'_> {
    /// Passes if the test passed in the guest (not if it was ignored), or if VM tests are skipped
    /// (`SCRAMBLER_VM=skip`, announced loudly); panics with its output otherwise.
    #[track_caller]
    pub fn assert_success(&self) {
        if !self.name.contains(self.filter) {
            panic!(
                "test {} is not selected by the suite filter {:?}: rename it or use another suite",
                self.name, self.filter
            );
        }
        self.outcome.assert_test_passed(&self.name);
    }

    /// The whole run's outcome (console, timing).
    pub fn outcome(&self) -> &VmOutcome {
        self.outcome
    }
}
