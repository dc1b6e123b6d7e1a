//! Fault injection for tests (cargo feature `fault-injection`): an invocation whose
//! environment has `SCRAMBLER_FAULT=<stage>` fails ADD at that
//! [`FaultStage`](scrambler_core::fault::FaultStage), so tests can prove that a failed ADD
//! leaves nothing behind. Without the feature the variable is never read.

use crate::env::CniEnv;
use scrambler_core::fault::Fault;
use scrambler_core::Result;

/// The environment variable naming the stage to fail at.
#[cfg(feature = "fault-injection")]
const FAULT_VAR: &str = "SCRAMBLER_FAULT";

/// The fault `env` asks for; an unknown stage is a config error.
pub(crate) fn requested(env: &CniEnv) -> Result<Fault> {
    #[cfg(feature = "fault-injection")]
    if let Some(name) = env.var(FAULT_VAR) {
        return name
            .parse()
            .map(Fault::at)
            .map_err(|e| scrambler_core::Error::config(format!("{FAULT_VAR}: {e}")));
    }
    let _ = env;
    Ok(Fault::default())
}
