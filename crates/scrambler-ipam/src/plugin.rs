//! The `scrambler-ipam` CNI IPAM plugin: one invocation, from environment and stdin to
//! what goes on stdout. Called exactly like host-local (by a runtime, or delegated to by
//! bridge, ipvlan, macvlan, or Scrambler's own plugin).

use crate::cni_io::{self, CniEnv, Command};
use crate::log::StderrLogger;
use crate::{IpamConf, LocalIpam};
use scrambler_core::{AllocRequest, AttachmentId, CniResult, Error, Result};
use std::process::ExitCode;
use tracing::level_filters::LevelFilter;

/// Runs one plugin invocation: returns what to print on stdout (`None` for nothing).
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<serde_json::Value>> {
    if env.command == Command::Version {
        return Ok(Some(cni_io::version_json(stdin)));
    }
    let conf = cni_io::parse_conf(stdin)?;
    let version = cni_io::conf_version(&conf)?;
    env.command.check_version(&version)?;
    let ipam = LocalIpam::new(
        &cni_io::network_name(&conf)?,
        IpamConf::from_net_conf(&conf)?,
    )?;
    match env.command {
        Command::Add => {
            let req = AllocRequest {
                id: env.attachment()?,
                requested: cni_io::requested_ips(&conf, env)?,
            };
            let result = ipam.allocate_blocking(&req)?;
            Ok(Some(result.to_json(&version)?))
        }
        Command::Del => ipam.release_blocking(&env.attachment()?).map(|()| None),
        Command::Check => check(&ipam, &env.attachment()?, &conf).map(|()| None),
        Command::Gc => {
            let valid = cni_io::valid_attachments(&conf)?;
            let released = ipam.gc_blocking(&valid)?;
            for l in &released {
                tracing::info!(address = %l.address, holder = %l.id, "GC released lease");
            }
            Ok(None)
        }
        Command::Status => ipam.lease_files().map(|_| None),
        Command::Version => Ok(Some(cni_io::version_json(stdin))),
    }
}

/// CHECK: the attachment holds a lease, and every address of `prevResult` that lies in
/// our ranges is leased to it.
fn check(ipam: &LocalIpam, id: &AttachmentId, conf: &serde_json::Value) -> Result<()> {
    let leases = ipam.check_blocking(id)?;
    if leases.is_empty() {
        return Err(Error::CheckFailed {
            object: format!("attachment {id}"),
            reason: format!("it holds no lease in network {}", ipam.network()),
        });
    }
    let Some(prev) = conf.get("prevResult") else {
        return Ok(());
    };
    let prev = CniResult::from_json(prev)?;
    for ip in prev.ips {
        let addr = ip.address.addr();
        let ours = ipam
            .conf()
            .ranges
            .iter()
            .any(|s| s.subnet_for(addr).is_some());
        if ours && !leases.iter().any(|l| l.address == addr) {
            return Err(Error::CheckFailed {
                object: format!("address {addr}"),
                reason: format!("prevResult has it but it is not leased to {id}"),
            });
        }
    }
    Ok(())
}

/// The plugin's `main`: logs go to stderr (level from `SCRAMBLER_LOG`, default `warn`),
/// the result or the CNI error JSON to stdout; exit code 1 on error. Run by hand
/// (`--help`, `--version`, no `CNI_COMMAND`) it prints what it is instead.
pub fn main() -> ExitCode {
    if let Some(code) =
        scrambler_core::cni::about_invocation("scrambler-ipam", env!("CARGO_PKG_VERSION"))
    {
        return ExitCode::from(code as u8);
    }
    init_logging();
    let (input, outcome) = match cni_io::read_stdin() {
        Ok(input) => {
            let outcome = cni_io::env_from_process().and_then(|env| run(&env, &input));
            (input, outcome)
        }
        Err(e) => (Vec::new(), Err(e)),
    };
    match outcome {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(v)) => match cni_io::print_json(&v) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        },
        Err(err) => {
            let version = cni_io::error_version(&input);
            tracing::debug!(error = %err, "failed");
            let _ = cni_io::print_json(&cni_io::error_json(&err, &version));
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr at the level of `SCRAMBLER_LOG` (`error` … `trace`, default `warn`).
fn init_logging() {
    let level = std::env::var_os("SCRAMBLER_LOG")
        .and_then(|v| v.to_str()?.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    let _ = tracing::subscriber::set_global_default(StderrLogger::new(level));
}
