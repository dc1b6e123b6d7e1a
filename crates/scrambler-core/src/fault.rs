//! Fault injection for tests: an attachment given a [`Fault`] fails ADD at that
//! [`FaultStage`], so tests can prove that a failed ADD leaves nothing behind.
//!
//! Only with the cargo feature `fault-injection` can a [`Fault`] name a stage (and
//! stages be parsed from their names). Without it, as in release binaries, [`Fault`] is
//! empty and [`Fault::check`] is `Ok(())`: nothing can trigger a fault.

use crate::Result;

/// A point of CNI ADD at which a fault can be injected, in the order ADD passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultStage {
    /// The addresses are leased, nothing else exists yet (`after-ipam`).
    AfterIpam,
    /// The veth pair exists (`after-veth`).
    AfterVeth,
    /// The pod's interface has its addresses (`after-pod-addr`).
    AfterPodAddr,
    /// The pod's routes exist (`after-pod-routes`).
    AfterPodRoutes,
    /// The node's routes to the pod exist (`after-host-route`).
    AfterHostRoute,
    /// The attachment is complete, the result not yet written (`before-result`).
    BeforeResult,
}

/// The fault an attachment injects: none, or (feature `fault-injection`) one stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    #[cfg(feature = "fault-injection")]
    stage: Option<FaultStage>,
}

impl Fault {
    /// Fails with a kernel-style error when this fault is set at `stage`.
    #[inline]
    pub fn check(&self, stage: FaultStage) -> Result<()> {
        #[cfg(feature = "fault-injection")]
        if self.stage == Some(stage) {
            return Err(crate::Error::kernel(
                "continue ADD",
                format!("stage {stage}"),
                "fault injected for a test",
            ));
        }
        let _ = stage;
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
pub use injection::UnknownStage;

#[cfg(feature = "fault-injection")]
mod injection {
    use super::{Fault, FaultStage};
    use std::fmt;
    use std::str::FromStr;

    impl Fault {
        /// A fault at `stage`.
        pub fn at(stage: FaultStage) -> Self {
            Fault { stage: Some(stage) }
        }

        /// The stage this fault fails at, if any.
        pub fn stage(&self) -> Option<FaultStage> {
            self.stage
        }
    }

    impl FaultStage {
        /// Every stage, in the order ADD passes them.
        pub const ALL: [FaultStage; 6] = [
            FaultStage::AfterIpam,
            FaultStage::AfterVeth,
            FaultStage::AfterPodAddr,
            FaultStage::AfterPodRoutes,
            FaultStage::AfterHostRoute,
            FaultStage::BeforeResult,
        ];

        /// The stage's name (`after-ipam`, …), as [`FromStr`] reads it.
        pub fn name(self) -> &'static str {
            match self {
                FaultStage::AfterIpam => "after-ipam",
                FaultStage::AfterVeth => "after-veth",
                FaultStage::AfterPodAddr => "after-pod-addr",
                FaultStage::AfterPodRoutes => "after-pod-routes",
                FaultStage::AfterHostRoute => "after-host-route",
                FaultStage::BeforeResult => "before-result",
            }
        }
    }

    impl fmt::Display for FaultStage {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.name())
        }
    }

    /// A name that is no [`FaultStage`]'s; its message lists the stages.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("unknown fault stage {0:?}; stages: {names}", names = stage_names())]
    pub struct UnknownStage(pub String);

    fn stage_names() -> String {
        let names: Vec<&str> = FaultStage::ALL.iter().map(|s| s.name()).collect();
        names.join(", ")
    }

    impl FromStr for FaultStage {
        type Err = UnknownStage;

        fn from_str(s: &str) -> Result<Self, UnknownStage> {
            FaultStage::ALL
                .into_iter()
                .find(|stage| stage.name() == s)
                .ok_or_else(|| UnknownStage(s.to_string()))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stages_parse_from_their_names_and_unknown_ones_are_refused() {
            for stage in FaultStage::ALL {
                assert_eq!(stage.name().parse::<FaultStage>().unwrap(), stage);
            }
            let e = "after-lunch".parse::<FaultStage>().unwrap_err();
            assert!(e.to_string().contains("\"after-lunch\""), "{e}");
            assert!(e.to_string().contains("after-ipam, after-veth"), "{e}");
        }

        #[test]
        fn a_fault_fails_only_its_own_stage() {
            let fault = Fault::at(FaultStage::AfterPodAddr);
            for stage in FaultStage::ALL {
                let r = fault.check(stage);
                assert_eq!(r.is_err(), stage == FaultStage::AfterPodAddr, "{stage}");
            }
            let e = fault.check(FaultStage::AfterPodAddr).unwrap_err();
            assert!(e.to_string().contains("after-pod-addr"), "{e}");
            assert!(e.to_string().contains("fault injected"), "{e}");
            assert!(FaultStage::ALL
                .into_iter()
                .all(|s| Fault::default().check(s).is_ok()));
        }
    }
}
