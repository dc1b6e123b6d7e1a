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
    underlay_mtu: u32,
) -> Result<()> {
    let secret = ClusterSecret::from_file(&cfg.key_file)?;
    cfg.netns
        .check()
        .map_err(|e| Error::config(format!("--netns: {e}")))?;
    let tunnel = Arc::from(apply::tunnel_with(backend, vpp_socket, underlay_mtu)?);
    let store = Store::connect(etcd).await?;
    let agent = Agent::new(cfg, store, tunnel, secret)?;
    agent.run(shutdown_signal()).await
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
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

/// The placeholder in the conflist template that becomes the node's pod CIDR.
pub const POD_CIDR_PLACEHOLDER: &str = "__POD_CIDR__";

/// What `scrambler install-cni` puts on the node.
#[derive(Debug, Clone)]
pub struct InstallCni {
    /// Where the CNI binaries are (in the image).
    pub bin_src: PathBuf,
    /// The node's CNI binary dir (`/opt/cni/bin`, mounted).
    pub bin_dir: PathBuf,
    /// Binary names to install.
    pub binaries: Vec<String>,
    /// The conflist template (from the ConfigMap).
    pub template: PathBuf,
    /// The node's CNI conf dir (`/etc/cni/net.d`, mounted).
    pub conf_dir: PathBuf,
    /// The conflist's file name there.
    pub conf_name: String,
}

/// `scrambler install-cni`: claims the node's id and pod CIDR in etcd (the agent later finds
/// the same claim), installs the CNI binaries and writes the conflist with the node's pod
/// CIDR in place of [`POD_CIDR_PLACEHOLDER`]. Every file is replaced atomically, so the
/// runtime never reads half a binary or half a conf.
pub async fn install_cni(
    etcd: &EtcdConfig,
    req: &claims::ClaimRequest,
    inst: &InstallCni,
) -> Result<scrambler_agent::Claim> {
    let template = std::fs::read(&inst.template)
        .map_err(|e| Error::io("read the conflist template", inst.template.display(), e))?;
    // a bad template fails before anything is claimed or written
    render_conflist(&template, &["10.0.0.0/24".parse().expect("a CIDR")])?;
    let store = Store::connect(etcd).await?;
    let claim = claims::claim(&store, req).await?;
    for b in &inst.binaries {
        let src = inst.bin_src.join(b);
        let data =
            std::fs::read(&src).map_err(|e| Error::io("read CNI binary", src.display(), e))?;
        scrambler_core::fsutil::write_atomic(&inst.bin_dir.join(b), &data, 0o755)?;
    }
    let conf = render_conflist(&template, &claim.pod_cidrs)?;
    scrambler_core::fsutil::write_atomic(&inst.conf_dir.join(&inst.conf_name), &conf, 0o644)?;
    Ok(claim)
}

/// The conflist template with every string value [`POD_CIDR_PLACEHOLDER`] replaced by the
/// node's first pod CIDR; the result must be a conflist (`name`, `plugins`).
pub fn render_conflist(template: &[u8], cidrs: &[ipnet::IpNet]) -> Result<Vec<u8>> {
    let mut v: serde_json::Value =
        serde_json::from_slice(template).map_err(|e| Error::decode("the conflist template", e))?;
    let cidr = cidrs
        .first()
        .ok_or_else(|| Error::config("the node has no pod CIDR"))?
        .to_string();
    let mut replaced = 0;
    replace_placeholder(&mut v, &cidr, &mut replaced);
    if replaced == 0 {
        return Err(Error::config(format!(
            "the conflist template has no \"{POD_CIDR_PLACEHOLDER}\" for the node's pod CIDR"
        )));
    }
    let ok = v.get("name").is_some_and(|n| n.is_string())
        && v.get("plugins")
            .is_some_and(|p| p.as_array().is_some_and(|a| !a.is_empty()));
    if !ok {
        return Err(Error::config(
            "the conflist template is not a conflist: it needs \"name\" and a non-empty \"plugins\"",
        ));
    }
    let mut out = serde_json::to_vec_pretty(&v).map_err(|e| Error::decode("conflist", e))?;
    out.push(b'\n');
    Ok(out)
}

fn replace_placeholder(v: &mut serde_json::Value, cidr: &str, n: &mut usize) {
    match v {
        serde_json::Value::String(s) if s == POD_CIDR_PLACEHOLDER => {
            *s = cidr.to_string();
            *n += 1;
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| replace_placeholder(x, cidr, n)),
        serde_json::Value::Object(o) => {
            o.values_mut().for_each(|x| replace_placeholder(x, cidr, n))
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_gets_the_node_pod_cidr() {
        let t = br#"{"cniVersion":"1.0.0","name":"scrambler","plugins":[{"type":"scrambler-cni",
            "ipam":{"type":"scrambler-ipam","ranges":[[{"subnet":"__POD_CIDR__"}]]}}]}"#;
        let out = render_conflist(t, &["10.244.7.0/24".parse().unwrap()]).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.7.0/24"
        );
        let e = render_conflist(
            br#"{"name":"x","plugins":[{}]}"#,
            &["10.0.0.0/24".parse().unwrap()],
        );
        assert!(e.unwrap_err().to_string().contains("__POD_CIDR__"));
        let e = render_conflist(
            br#"{"name":"x","type":"__POD_CIDR__"}"#,
            &["10.0.0.0/24".parse().unwrap()],
        );
        assert!(e.unwrap_err().to_string().contains("plugins"));
        assert!(render_conflist(b"{", &["10.0.0.0/24".parse().unwrap()]).is_err());
    }
}
