//! Hitless key rotation across several nodes, in the order of
//! [`scrambler_core::Keys`]: inbound first everywhere, then outbound, then — after a
//! grace period — the old inbound states go.

use scrambler_core::{
    ClusterSecret, Error, Generation, Mesh, Netns, ReconcileReport, Result, Tunnel,
};
use std::time::Duration;

/// What a rotation did.
#[derive(Debug, Clone, Default)]
pub struct RotationReport {
    /// Per step (1: add inbound, 2: switch outbound, 3: drop old inbound), per node.
    pub steps: [Vec<ReconcileReport>; 3],
    /// The nodes' meshes after the rotation (`tx = rx = {next}`), in input order.
    pub meshes: Vec<Mesh>,
}

/// Rotates every node in `nodes` to key generation `next` without losing packets:
///
/// 1. every node gets `rx ∪ {next}` (inbound states of `next` everywhere);
/// 2. only then every node sends with `next` (`tx = next`);
/// 3. after `grace`, every node drops the old generations (`rx = {next}`).
///
/// A node failing stops the rotation at that step; every step is safe to repeat, so
/// calling `rotate` again with the returned or original meshes finishes it.
///
/// ```no_run
/// use scrambler_core::{ClusterSecret, Mesh, Netns};
/// use scrambler_xfrm::{rotate, XfrmTunnel};
/// # async fn f(t: XfrmTunnel, nodes: Vec<(Netns, Mesh)>, s: ClusterSecret) -> scrambler_core::Result<()> {
/// let next = nodes[0].1.keys.tx + 1;
/// let done = rotate(&t, &nodes, &s, next, std::time::Duration::from_secs(2)).await?;
/// assert!(done.meshes.iter().all(|m| m.keys.tx == next));
/// # Ok(()) }
/// ```
pub async fn rotate<T: Tunnel + ?Sized>(
    tunnel: &T,
    nodes: &[(Netns, Mesh)],
    secret: &ClusterSecret,
    next: Generation,
    grace: Duration,
) -> Result<RotationReport> {
    for (ns, m) in nodes {
        if m.keys.tx == next {
            return Err(Error::config(format!(
                "node {:?} in {ns} already sends with generation {next}",
                m.local.name
            )));
        }
    }
    let step = |f: &dyn Fn(&mut Mesh)| -> Result<Vec<Mesh>> {
        nodes
            .iter()
            .map(|(_, m)| {
                let mut m = m.clone();
                f(&mut m);
                m.validate()?;
                Ok(m)
            })
            .collect()
    };
    let add_rx = step(&|m| {
        m.keys.rx.insert(next);
    })?;
    let switch_tx = step(&|m| {
        m.keys.rx.insert(next);
        m.keys.tx = next;
    })?;
    let drop_old = step(&|m| {
        m.keys.tx = next;
        m.keys.rx = [next].into();
    })?;
    let mut report = RotationReport::default();
    for (i, meshes) in [add_rx, switch_tx, drop_old].into_iter().enumerate() {
        if i == 2 && !grace.is_zero() {
            tokio::time::sleep(grace).await;
        }
        for ((ns, _), m) in nodes.iter().zip(&meshes) {
            let r = tunnel.reconcile(ns, m, secret).await.map_err(|e| {
                tracing::error!(step = i + 1, node = %m.local.name, error = %e, "key rotation stopped");
                e
            })?;
            report.steps[i].push(r);
        }
        report.meshes = meshes;
    }
    Ok(report)
}
