//! IPAM selection: the built-in `scrambler-ipam` runs in-process; any other `ipam.type`
//! (host-local, static, dhcp, …) is an external plugin run by delegation.

use crate::delegate::{Delegate, DelegatedIpam};
use crate::env::CniEnv;
use scrambler_core::{AllocRequest, AttachmentId, CniResult, Error, Ipam, NetConf, Result};
use scrambler_ipam::LocalIpam;
use serde_json::Value;

/// The `ipam.type` of the built-in allocator.
pub const BUILTIN: &str = "scrambler-ipam";

/// The IPAM of one invocation.
pub enum SelectedIpam {
    /// The in-process allocator.
    Builtin(LocalIpam),
    /// An external plugin.
    Delegated(DelegatedIpam),
}

impl SelectedIpam {
    /// As an [`Ipam`].
    pub fn ipam(&self) -> &dyn Ipam {
        match self {
            SelectedIpam::Builtin(i) => i,
            SelectedIpam::Delegated(d) => d,
        }
    }

    /// The IPAM's name, for messages.
    pub fn name(&self) -> &str {
        match self {
            SelectedIpam::Builtin(_) => BUILTIN,
            SelectedIpam::Delegated(d) => &d.delegate().name,
        }
    }

    /// Allocates addresses for `req`. The built-in allocator runs on the calling thread
    /// (its lease store is a few small file operations): a command has nothing to do
    /// meanwhile that would pay for starting a thread and, on a busy node, waiting for it
    /// to be scheduled.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<CniResult> {
        match self {
            SelectedIpam::Builtin(i) => i.allocate_blocking(req),
            SelectedIpam::Delegated(d) => d.allocate(req).await,
        }
    }

    /// Releases what `id` holds, on the calling thread for the built-in allocator
    /// ([`SelectedIpam::allocate`]).
    pub async fn release(&self, id: &AttachmentId) -> Result<()> {
        match self {
            SelectedIpam::Builtin(i) => i.release_blocking(id),
            SelectedIpam::Delegated(d) => d.release(id).await,
        }
    }

    /// Fails when the IPAM cannot serve ADD.
    pub async fn status(&self) -> Result<()> {
        match self {
            SelectedIpam::Builtin(i) => i.list().await.map(|_| ()),
            SelectedIpam::Delegated(d) => d.status().await,
        }
    }
}

/// The `ipam.type` of `conf`.
pub fn ipam_type(conf: &NetConf) -> Result<&str> {
    let ipam = conf
        .ipam
        .as_ref()
        .ok_or_else(|| Error::config("missing field \"ipam\""))?;
    ipam.get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::config("missing field \"ipam.type\""))
}

/// The IPAM named by `conf`'s `ipam.type`. `raw_conf` is the conf as received (what a
/// delegate gets on stdin).
pub fn select(conf: &NetConf, raw_conf: &Value, env: &CniEnv) -> Result<SelectedIpam> {
    let t = ipam_type(conf)?;
    if t == BUILTIN {
        return builtin(conf).map(SelectedIpam::Builtin);
    }
    let d = Delegate::find(t, &env.path, env.vars.clone())?;
    Ok(SelectedIpam::Delegated(DelegatedIpam::new(
        d,
        raw_conf.clone(),
    )))
}

fn builtin(conf: &NetConf) -> Result<LocalIpam> {
    let section = conf
        .ipam
        .as_ref()
        .ok_or_else(|| Error::config("missing field \"ipam\""))?;
    let ipam_conf = scrambler_ipam::IpamConf::parse(section)?;
    LocalIpam::new(&conf.name, ipam_conf)
}
