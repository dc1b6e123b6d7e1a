//! The fail-closed guard of one peer: its pod CIDRs' routes, pointed to drop before anything
//! of its tunnel is taken away and into the tunnel only once it is protected and up.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use scrambler_core::{ReconcileReport, Result};

use super::ops::TunnelCalls;
use super::plan::RouteTarget;

/// The routes of one peer's pod CIDRs during a reconcile, and where they point now.
#[derive(Default)]
pub(super) struct RouteGuard {
    pub(super) routes: BTreeMap<IpNet, RouteTarget>,
    /// Routes this reconcile created (counted as added once).
    pub(super) fresh: BTreeSet<IpNet>,
}

impl RouteGuard {
    /// Points every route that leads into the tunnel to drop: called before the tunnel,
    /// its protection or its SAs are taken away.
    pub(super) async fn close(&mut self, ops: &TunnelCalls<'_>) -> Result<()> {
        for (prefix, to) in self.routes.iter_mut() {
            if *to != RouteTarget::Drop {
                ops.steer(*prefix, RouteTarget::Drop).await?;
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
        for (prefix, to) in self.routes.iter_mut() {
            if *to == RouteTarget::Via(sw) {
                rep.unchanged += 1;
                continue;
            }
            ops.steer(*prefix, RouteTarget::Via(sw)).await?;
            *to = RouteTarget::Via(sw);
            if !self.fresh.contains(prefix) {
                rep.updated += 1;
            }
        }
        Ok(())
    }
}
