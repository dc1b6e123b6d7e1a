//! `scrambler-cni`: the CNI plugin binary. Reads the conf on stdin (at most 1 MiB) and the
//! `CNI_*` environment, prints only the result (or error object) on stdout, exits 0 or 1.
//! Run by hand (`--help`, `--version`, no `CNI_COMMAND`) it prints what it is instead.

use scrambler_core::cni::{about_invocation, error_version, process_vars, read_conf};
use scrambler_core::{Error, Netns};
use std::io::Write;

fn main() {
    if let Some(code) = about_invocation("scrambler-cni", env!("CARGO_PKG_VERSION")) {
        std::process::exit(code);
    }
    let outcome = match read_conf(std::io::stdin().lock()) {
        Err(e) => scrambler_cni::Outcome::error(&e, scrambler_core::result::CURRENT_VERSION),
        Ok(stdin) => match process_vars() {
            Ok(vars) => run(vars, &stdin),
            Err(e) => scrambler_cni::Outcome::error(&e, &error_version(&stdin)),
        },
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&outcome.stdout).and_then(|()| out.flush());
    std::process::exit(outcome.exit_code);
}

fn run(vars: Vec<(String, String)>, stdin: &[u8]) -> scrambler_cni::Outcome {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return scrambler_cni::Outcome::error(
                &Error::io("start", "async runtime", e),
                &error_version(stdin),
            )
        }
    };
    let fut = scrambler_cni::invoke(vars, stdin, &Netns::Current);
    let outcome = match scrambler_cni::logging::log_target(stdin)
        .and_then(|(file, level)| scrambler_cni::logging::file_subscriber(&file, &level))
    {
        Some(sub) => tracing::subscriber::with_default(sub, || rt.block_on(fut)),
        None => rt.block_on(fut),
    };
    // every task the command started has been awaited: the idle threads of the blocking
    // pool need not be woken and joined before the process exits
    rt.shutdown_background();
    outcome
}
