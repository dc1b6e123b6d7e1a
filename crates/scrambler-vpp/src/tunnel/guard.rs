//! The fail-closed guard of one peer: its pod CIDRs' routes (and its underlay addresses' in
//! the pods' table), pointed to drop before anything
//! of its tunnel is taken away and into the tunnel only once it is protected and up.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use scrambler_core::{ReconcileReport, Result};

use super::ops::TunnelCalls;
use super::plan::RouteTarget;

/// The routes of one peer's pod CIDRs during a reconcile, and where they point now.
#[derive(Default)]
pub(super) struct RouteGuard {
    /// (table, prefix) -> target: the pod CIDRs in table 0, the underlay addresses in the
    /// pods' table
    pub(super) routes: BTreeMap<(u32, IpNet), RouteTarget>,
    /// Routes this reconcile created (counted as added once).
    pub(super) fresh: BTreeSet<(u32, IpNet)>,
}

impl RouteGuard {
    /// Points every route that leads into the tunnel to drop: called before the tunnel,
    /// its protection or its SAs are taken away.
    pub(super) async fn close(&mut self, ops: &TunnelCalls<'_>) -> Result<()> {
        for ((table, prefix), to) in self.routes.iter_mut() {
            if *to != RouteTarget::Drop {
                ops.steer_in(*table, *prefix, RouteTarget::Drop).await?;
                *to = RouteTarget::Drop;
            }
        }
        Ok(())
    }

    /// Points every route into the (protected, up) tunnel `sw`.
    pub(super) async fn open(
        &mut self,
        ops: &TunnelCalls<'_>,
        sw: u32,
        rep: &mut ReconcileReport,
    ) -> Result<()> {
        for (key, to) in self.routes.iter_mut() {
            if *to == RouteTarget::Via(sw) {
                rep.unchanged += 1;
                continue;
            }
            ops.steer_in(key.0, key.1, RouteTarget::Via(sw)).await?;
            *to = RouteTarget::Via(sw);
            if !self.fresh.contains(key) {
                rep.updated += 1;
            }
        }
        Ok(())
    }
}
