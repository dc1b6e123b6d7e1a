//! The node tool on etcd: `scrambler agent` (one per node, long-running), the cluster-wide
//! `scrambler rotate --etcd-endpoints …` and `scrambler delete-node`, and the agent's lines
//! in `scrambler status`. The agent itself is the `scrambler-agent` crate.

use crate::apply;
use scrambler_agent::status::{AgentStatus, STATUS_FILE};
use scrambler_agent::{claims, rotation, Agent, AgentConfig, EtcdConfig, Store};
use scrambler_core::{ClusterSecret, Error, Result, TunnelDataplane};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run_agent(
    cfg: AgentConfig,
    etcd: &EtcdConfig,
    backend: TunnelDataplane,
    vpp_socket: &Path,
) -> Result<()> {
    let secret = ClusterSecret::from_file(&cfg.key_file)?;
    cfg.netns.check().map_err(|e| Error::config(format!("--netns: {e}")))?;
    let tunnel = Arc::from(apply::tunnel_with(backend, vpp_socket)?);
    let store = Store::connect(etcd).await?;
    let agent = Agent::new(cfg, store, tunnel, secret)?;
    agent.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
    tracing::info!("agent stopping (its lease is left to expire, not revoked)");
}

/// `scrambler rotate --etcd-endpoints …`: starts a rotation to the next generation; the
/// agents carry it out. Returns the state written.
pub async fn rotate(etcd: &EtcdConfig, grace_secs: u64) -> Result<scrambler_agent::KeyState> {
    let store = Store::connect(etcd).await?;
    let snap = store.snapshot().await?;
    let ks = rotation::begin(&snap.keys, grace_secs)?;
    if !store.swap_keys(snap.keys_revision, &ks).await? {
        return Err(Error::TryAgainLater(
            "the key state changed while the rotation was being written: run it again".into(),
        ));
    }
    Ok(ks)
}

/// `scrambler delete-node`: the node leaves the cluster for good; its id and pod CIDRs
/// are released. Its agent must be stopped first, or it registers and claims again.
pub async fn delete_node(etcd: &EtcdConfig, name: &str) -> Result<Option<scrambler_agent::Claim>> {
    let store = Store::connect(etcd).await?;
    claims::release(&store, name).await
}

/// The agent's status next to `mesh` (the agent's `mesh.json`), if an agent writes one.
pub fn agent_status_near(mesh: &Path) -> Option<Result<AgentStatus>> {
    let p: PathBuf = mesh.parent()?.join(STATUS_FILE);
    p.exists().then(|| AgentStatus::load(&p))
}
