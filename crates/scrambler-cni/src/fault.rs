//! Fault injection for tests: an invocation whose environment has `SCRAMBLER_FAULT=<stage>`
//! fails at that stage, so tests can prove that a failed ADD leaves nothing behind.
//! Honoured only in debug builds ([`requested`] is always `None` in release builds).

use crate::env::CniEnv;
use scrambler_core::{Error, Result};

/// The environment variable naming the stage to fail at.
pub const FAULT_VAR: &str = "SCRAMBLER_FAULT";

/// The fault `env` asks for (`SCRAMBLER_FAULT`), in debug builds only.
pub fn requested(env: &CniEnv) -> Option<&str> {
    if cfg!(debug_assertions) {
        env.var(FAULT_VAR)
    } else {
        None
    }
}

/// Every stage at which a fault can be injected, in the order ADD passes them.
pub const STAGES: &[&str] = &[
    "after-ipam",
    "after-veth",
    "after-pod-addr",
    "after-pod-routes",
    "after-host-route",
    "before-result",
];

/// Fails with a kernel-style error when `fault` names `stage`.
pub fn inject(fault: Option<&str>, stage: &str) -> Result<()> {
    if cfg!(debug_assertions) && fault == Some(stage) {
        return Err(Error::kernel(
            "continue ADD",
            format!("stage {stage}"),
            "fault injected by SCRAMBLER_FAULT",
        ));
    }
    Ok(())
}
