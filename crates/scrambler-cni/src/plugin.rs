//! The plugin's commands: ADD, DEL, CHECK, VERSION, GC and STATUS, composing the IPAM
//! ([`crate::ipam`]) and the backend's attachment ([`crate::backend`]).
//!
//! [`invoke`] is the whole plugin as a function of (environment, stdin, node namespace):
//! the binary calls it with the process environment and [`Netns::Current`]; tests and
//! the lab can call it in-process for any node namespace.

use crate::backend::{backend_for, AddError, BackendOptions, CniBackend};
use crate::env::{CniEnv, Command};
use crate::fault;
use crate::ipam::{self, SelectedIpam};
use crate::protocol::{self, Outcome, Request};
use ipnet::IpNet;
use scrambler_core::fault::FaultStage;
use scrambler_core::{AllocRequest, AttachRequest, CniResult, Error, Netns, Result, TunnelStatus};
use scrambler_netlink::AttachSockets;
use std::path::PathBuf;
use tracing::Instrument;

/// Conf field naming a file where the node agent writes its [`TunnelStatus`] (JSON, with
/// `updated`, `maxAge` and `clusterCidrs`) while the node's fail-closed guard is in place;
/// ADD answers "try again later" (11) and STATUS "not available" (50) without a fresh,
/// guarded one, or when the backend does not find the guard of its `clusterCidrs` in the
/// dataplane ([`CniBackend::guard_in_place`]).
pub const TUNNEL_STATUS_FIELD: &str = "tunnelStatusFile";

/// How old (seconds) a tunnel status file without its own `maxAge` may be.
pub const DEFAULT_TUNNEL_STATUS_MAX_AGE: u64 = 90;

/// CNI 1.1 STATUS code: the plugin cannot serve ADD.
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// CNI 1.1 STATUS code: not available, and existing containers may have limited
/// connectivity.
pub const CODE_LIMITED_CONNECTIVITY: u32 = 51;

/// Runs one invocation: `vars` is the environment, `stdin` the conf, `host` the node's
/// namespace (where the host side of attachments lives). Delegated plugins are executed
/// from the calling thread, i.e. in the caller's namespace (what matters to an IPAM
/// like dhcp; host-local and static do not care).
pub async fn invoke(vars: Vec<(String, String)>, stdin: &[u8], host: &Netns) -> Outcome {
    let env = match CniEnv::from_vars(vars) {
        Ok(e) => e,
        Err(e) => return Outcome::error(&e, &protocol::error_version(stdin)),
    };
    if env.command == Command::Version {
        return Outcome::ok(Some(&protocol::version_report(stdin)));
    }
    let req = match Request::parse(env, stdin) {
        Ok(r) => r,
        Err(e) => return Outcome::error(&e, &protocol::error_version(stdin)),
    };
    let version = req.version().to_string();
    let command = req.env.command;
    let span = tracing::info_span!(
        "cni",
        cmd = command.as_str(),
        container = req.env.container_id.as_deref().unwrap_or_default(),
        ifname = req.env.ifname.as_deref().unwrap_or_default(),
        network = %req.conf.name
    );
    async move {
        let res = match command {
            Command::Add => add(&req, host).await.map(Some),
            Command::Del => del(&req, host).await.map(|()| None),
            Command::Check => check(&req, host).await.map(|()| None),
            Command::Gc => gc(&req, host).await.map(|()| None),
            Command::Status => status(&req, host).await.map(|()| None),
            Command::Version => Ok(Some(protocol::version_report(stdin))),
        };
        match res {
            Ok(v) => {
                tracing::debug!("ok");
                Outcome::ok(v.as_ref())
            }
            Err(e) => {
                tracing::warn!(code = e.code(), error = %e, "failed");
                Outcome::error(&e, &version)
            }
        }
    }
    .instrument(span)
    .await
}

fn backend(req: &Request) -> Result<Box<dyn CniBackend>> {
    backend_for(
        &req.conf,
        &BackendOptions {
            fault: fault::requested(&req.env)?,
        },
    )
}

fn attach_request(req: &Request) -> AttachRequest {
    AttachRequest {
        id: req.attachment(),
        // DEL may come without CNI_NETNS; detach must not need it
        pod_netns: req
            .env
            .pod_netns()
            .unwrap_or_else(|| Netns::Path(PathBuf::new())),
        args: req.env.args.clone(),
        mtu: req.conf.mtu,
    }
}

async fn add(req: &Request, host: &Netns) -> Result<serde_json::Value> {
    // the conf first (a bad one is 7, not "try again later" forever), then the guard
    let status_file = tunnel_status_path(req)?;
    let backend = backend(req)?;
    let areq = attach_request(req);
    let prev = protocol::prev_result(&req.conf)?;
    let ipam = ipam::select(&req.conf, &req.raw, &req.env)?;
    let alloc = AllocRequest {
        id: areq.id.clone(),
        requested: protocol::requested_ips(req)?,
    };
    let fault = fault::requested(&req.env)?;
    let mut guarded = None;
    if let Some(path) = status_file {
        let cluster_cidrs = guard_in_place(path).map_err(|e| {
            Error::TryAgainLater(format!(
                "the node's mesh is not guarded (the scrambler agent keeps {path} fresh while \
                 it is): {e}"
            ))
        })?;
        // the file is the agent's last look: the guard itself, on the dataplane the pod
        // joins, before anything is allocated or made
        backend
            .guard_in_place(host, &cluster_cidrs)
            .await
            .map_err(|e| {
                Error::TryAgainLater(format!(
                    "the node's fail-closed guard is not in place in the dataplane: {e}"
                ))
            })?;
        guarded = Some(cluster_cidrs);
    }
    // the pod namespace is checked here, once, and the connections opened for the command
    let sockets = AttachSockets::open_for_add(host, &areq).await?;
    let allocation = Box::pin(async {
        let addrs = ipam.allocate(&alloc).await.map_err(AddError::Unleased)?;
        tracing::debug!(ips = ?addrs.ips, ipam = ipam.name(), "allocated");
        if let Some(cidrs) = &guarded {
            outside_guard(&addrs, cidrs).map_err(AddError::Leased)?;
        }
        fault
            .check(FaultStage::AfterIpam)
            .map_err(AddError::Leased)?;
        Ok(addrs)
    });
    let mut result = match backend.attach_allocating(&sockets, &areq, allocation).await {
        Ok(r) => r,
        Err(AddError::Unleased(e)) => return Err(e),
        Err(AddError::Leased(e)) => {
            release_after_failure(&ipam, &areq).await;
            return Err(e);
        }
    };
    if result.dns.is_empty() {
        result.dns = req.conf.dns.clone().unwrap_or_default();
    }
    let result = protocol::merge_prev(prev, result);
    match fault
        .check(FaultStage::BeforeResult)
        .and_then(|()| result.to_json(req.version()))
    {
        Ok(v) => Ok(v),
        Err(e) => {
            if let Err(e2) = backend.detach(&sockets, &areq).await {
                tracing::error!(error = %e2, "undo: detach failed");
            }
            release_after_failure(&ipam, &areq).await;
            Err(e)
        }
    }
}

/// With a tunnel status file, every address the IPAM gave the pod must lie in one of the
/// guarded `clusterCidrs`: an address outside them — typically the other family of a
/// dual-stack range set when the mesh guards one family only — would be a pod whose
/// traffic of that family nothing keeps off the underlay in cleartext. Code 7, naming
/// the address and its family.
fn outside_guard(addrs: &CniResult, cluster_cidrs: &[ipnet::IpNet]) -> Result<()> {
    let Some(ip) = addrs
        .ips
        .iter()
        .find(|ip| !cluster_cidrs.iter().any(|c| c.contains(&ip.address.addr())))
    else {
        return Ok(());
    };
    let family = if ip.address.addr().is_ipv6() {
        "IPv6"
    } else {
        "IPv4"
    };
    let cidrs: Vec<String> = cluster_cidrs.iter().map(ToString::to_string).collect();
    Err(Error::config(format!(
        "the IPAM gave the pod {} ({family}), outside the node's guarded clusterCidrs ({}): \
         its {family} traffic would not be guarded; add an {family} cluster CIDR to the mesh \
         or remove the {family} range from the IPAM",
        ip.address,
        cidrs.join(", ")
    )))
}

async fn release_after_failure(ipam: &SelectedIpam, areq: &AttachRequest) {
    if let Err(e) = ipam.release(&areq.id).await {
        tracing::error!(error = %e, ipam = ipam.name(), "undo: IPAM release failed");
    }
}

async fn del(req: &Request, host: &Netns) -> Result<()> {
    let areq = attach_request(req);
    let detached = match backend(req) {
        Ok(b) => match AttachSockets::open_for_del(host, &areq.pod_netns).await {
            Ok(sockets) => b.detach(&sockets, &areq).await,
            Err(e) => Err(e),
        },
        // nothing of an unbuilt backend can exist; still release the addresses
        Err(Error::Unsupported(why)) => {
            tracing::info!(%why, "DEL: backend unavailable, releasing IPAM only");
            Ok(())
        }
        Err(e) => Err(e),
    };
    // an interface that could not be removed keeps its addresses leased, so they are not
    // handed out twice; the runtime retries DEL
    detached?;
    ipam::select(&req.conf, &req.raw, &req.env)?
        .release(&areq.id)
        .await
}

async fn check(req: &Request, host: &Netns) -> Result<()> {
    let backend = backend(req)?;
    let areq = attach_request(req);
    let prev = protocol::prev_result(&req.conf)?
        .ok_or_else(|| Error::config("CHECK without \"prevResult\""))?;
    let sockets = AttachSockets::open(host, &areq.pod_netns).await?;
    backend.check(&sockets, &areq, &prev).await?;
    let ipam = ipam::select(&req.conf, &req.raw, &req.env)?;
    let leases = ipam.ipam().check(&areq.id).await?;
    if let SelectedIpam::Builtin(_) = ipam {
        check_leases(req, &prev, &leases)?;
    }
    Ok(())
}

/// Every address of our pod interface in `prev` must be leased to this attachment.
fn check_leases(req: &Request, prev: &CniResult, leases: &[scrambler_core::Lease]) -> Result<()> {
    let sandbox = req.env.netns.as_ref().map(|p| p.display().to_string());
    let pod_idx = prev
        .interfaces
        .iter()
        .position(|i| Some(i.name.as_str()) == req.env.ifname.as_deref() && i.sandbox == sandbox);
    let missing: Vec<String> = prev
        .ips
        .iter()
        .filter(|c| c.interface.is_none() || c.interface == pod_idx)
        .filter(|c| !leases.iter().any(|l| l.address == c.address.addr()))
        .map(|c| c.address.addr().to_string())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::CheckFailed {
            object: format!("IPAM leases of {}", req.attachment()),
            reason: format!("no lease for {}", missing.join(", ")),
        })
    }
}

async fn gc(req: &Request, host: &Netns) -> Result<()> {
    let valid = protocol::valid_attachments(&req.conf)?;
    let removed = match backend(req) {
        Ok(b) => b.gc(host, &valid).await,
        Err(Error::Unsupported(_)) => Ok(Vec::new()),
        Err(e) => Err(e),
    };
    let released = match ipam::select(&req.conf, &req.raw, &req.env) {
        Ok(ipam) => ipam.ipam().gc(&valid).await,
        Err(e) => Err(e),
    };
    let (removed, released) = (removed?, released?);
    tracing::info!(
        interfaces = removed.len(),
        leases = released.len(),
        "gc done"
    );
    Ok(())
}

async fn status(req: &Request, host: &Netns) -> Result<()> {
    let not_available = |e: Error| Error::Delegated {
        plugin: "scrambler-cni".into(),
        code: CODE_NOT_AVAILABLE,
        msg: "plugin not available".into(),
        details: e.to_string(),
    };
    let backend = backend(req).map_err(not_available)?;
    backend.status(host).await.map_err(not_available)?;
    let ipam = ipam::select(&req.conf, &req.raw, &req.env).map_err(not_available)?;
    ipam.status().await.map_err(not_available)?;
    if let Some(path) = tunnel_status_path(req).map_err(not_available)? {
        let unguarded = |details: String| Error::Delegated {
            plugin: "scrambler-cni".into(),
            code: CODE_NOT_AVAILABLE,
            msg: "the node's mesh is not guarded".into(),
            details,
        };
        let cluster_cidrs = guard_in_place(path).map_err(unguarded)?;
        backend
            .guard_in_place(host, &cluster_cidrs)
            .await
            .map_err(|e| unguarded(e.to_string()))?;
    }
    Ok(())
}

/// The conf's `tunnelStatusFile`: absent, or a path; anything else is a bad conf (7).
fn tunnel_status_path(req: &Request) -> Result<Option<&str>> {
    match req.conf.extra.get(TUNNEL_STATUS_FIELD) {
        None => Ok(None),
        Some(serde_json::Value::String(p)) if !p.is_empty() => Ok(Some(p)),
        Some(v) => Err(Error::config(format!(
            "\"{TUNNEL_STATUS_FIELD}\" must be a file path (a non-empty string), not {v}"
        ))),
    }
}

/// The node agent writes the tunnel status file only while the node's fail-closed guard is
/// in place, rewrites it with every sync (at least every resync: `updated`), and removes it
/// when it finds the guard missing, when it starts and when it stops. Missing,
/// unreadable, stale (older than its `maxAge`: the agent is not running or stuck) or
/// unguarded: the reason, and no pod is networked. Peer health is not looked at: a peer
/// that is down does not make the local node unsafe (`scrambler status` shows it).
/// Returns the file's `clusterCidrs` (the supernets the guard covers, which the caller
/// checks in the dataplane); a file without them (written by an older agent) or with none
/// is refused: there would be nothing to check.
fn guard_in_place(path: &str) -> std::result::Result<Vec<IpNet>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("read {path}: {e}"))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("decode {path}: {e}"))?;
    let st: TunnelStatus =
        serde_json::from_value(v.clone()).map_err(|e| format!("decode {path}: {e}"))?;
    let updated = v["updated"]
        .as_u64()
        .ok_or_else(|| format!("{path}: no \"updated\" time"))?;
    let max_age = v["maxAge"]
        .as_u64()
        .unwrap_or(DEFAULT_TUNNEL_STATUS_MAX_AGE);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if now.abs_diff(updated) > max_age {
        return Err(format!(
            "{path} was written {}s ago (more than {max_age}s): is the agent running?",
            now.saturating_sub(updated)
        ));
    }
    if !st.fail_closed {
        return Err(format!(
            "{path}: the fail-closed guard of dataplane {} is not in place",
            st.dataplane
        ));
    }
    let cidrs: Vec<IpNet> = match v.get("clusterCidrs") {
        Some(c) => serde_json::from_value(c.clone())
            .map_err(|e| format!("{path}: \"clusterCidrs\": {e}"))?,
        None => {
            return Err(format!(
                "{path} has no \"clusterCidrs\" (written by an older agent?): the guard \
                 cannot be checked"
            ))
        }
    };
    if cidrs.is_empty() {
        return Err(format!(
            "{path}: \"clusterCidrs\" is empty: the guard cannot be checked"
        ));
    }
    Ok(cidrs)
}
