//! `mesh apply`, `status` and `mesh remove` for one node, through the [`Tunnel`] trait.

use crate::meshfile::MeshFile;
use crate::record::{self, NodeRecord};
use crate::status::StatusReport;
use scrambler_core::{ClusterSecret, Error, Netns, ReconcileReport, Result, Tunnel};
use std::path::PathBuf;

/// What one node-level command acts on.
#[derive(Debug, Clone)]
pub struct ApplyArgs {
    /// Mesh file.
    pub mesh: PathBuf,
    /// This node's name in the mesh.
    pub node: String,
    /// The node's network namespace.
    pub netns: Netns,
    /// Where the node record is kept.
    pub state_dir: PathBuf,
    /// Dataplane.
    pub backend: String,
}

/// The tunnel dataplane named `backend`.
pub fn tunnel(backend: &str) -> Result<Box<dyn Tunnel>> {
    match backend {
        "xfrm" => Ok(Box::new(scrambler_xfrm::XfrmTunnel::new(
            scrambler_xfrm::XfrmConfig::default(),
        )?)),
        other => Err(Error::config(format!(
            "unknown tunnel backend {other:?}: valid backends are xfrm"
        ))),
    }
}

/// Reconciles the node's dataplane to the mesh file and records the change.
pub async fn apply(args: &ApplyArgs) -> Result<ReconcileReport> {
    let mf = MeshFile::load(&args.mesh)?;
    let mesh = mf.cluster.mesh_for(&args.node)?;
    let secret = ClusterSecret::from_file(&mf.key_file)?;
    args.netns.check()?;
    let t = tunnel(&args.backend)?;
    let report = t.reconcile(&args.netns, &mesh, &secret).await?;
    let prev = NodeRecord::load(&args.state_dir, &args.node).ok().flatten();
    NodeRecord::after_apply(prev.as_ref(), &mesh, record::now())
        .save(&args.state_dir, &args.node)?;
    tracing::info!(node = %args.node, added = report.added, updated = report.updated,
        removed = report.removed, "mesh applied");
    Ok(report)
}

/// The node's status.
pub async fn status(args: &ApplyArgs) -> Result<StatusReport> {
    let mf = MeshFile::load(&args.mesh)?;
    let mesh = mf.cluster.mesh_for(&args.node)?;
    args.netns.check()?;
    let t = tunnel(&args.backend)?;
    let st = t.status(&args.netns, &mesh).await?;
    let rec = NodeRecord::load(&args.state_dir, &args.node)?;
    Ok(StatusReport::new(&mesh, st, rec.as_ref()))
}

/// Removes everything the dataplane owns in the node's namespace.
pub async fn remove(netns: &Netns, backend: &str) -> Result<ReconcileReport> {
    netns.check()?;
    tunnel(backend)?.remove(netns).await
}
