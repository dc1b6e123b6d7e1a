//! Reconciling a node's VPP to its mesh: every peer in the fail-closed order of the module
//! docs of [`crate::tunnel`], peers pipelined, stale objects last.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use scrambler_core::{Error, Mesh, ReconcileReport, Result};

use super::guard::RouteGuard;
use super::ids::{Direction, POD_TABLE_ID};
use super::ops::{delete_tunnel_fully, pipelined, TunnelCalls};
use super::plan::{guard_routes, PeerPlan, RouteTarget};
use super::readback::{
    kept_outbound, needs_new_tunnel, outbound_changed, outbound_lost, sa_matches, OwnedRoute,
    OwnedState,
};
use super::underlay_guard::{self, HaveSpd};
use crate::endpoint::DATAPLANE;

/// Reconciles the node's VPP, found as `have`, to `want` in phases: the cluster guard's drop
/// routes, stale routes, then every peer (each in the fail-closed order, up to `PIPELINE`
/// peers in flight), then stale tunnels, then stale SAs; each phase's independent calls are
/// sent together.
pub(super) async fn reconcile_all(
    ops: &TunnelCalls<'_>,
    have: &OwnedState,
    mesh: &Mesh,
    want: &[PeerPlan],
) -> Result<ReconcileReport> {
    let mut rep = ReconcileReport::default();

    // the cluster guard first: a drop route per cluster CIDR, so that a removed peer's
    // pod CIDR (its route going stale below) falls to drop, not to a default route
    let guard = guard_routes(mesh);
    if let Some(g) = guard.iter().find(|g| have.foreign_routes.contains(*g)) {
        return Err(Error::AlreadyExists {
            object: format!("VPP route {g} (a cluster CIDR)"),
            reason: "a route Scrambler did not make holds the prefix of the cluster guard; \
                     Scrambler does not touch it: remove it, or change clusterCidrs"
                .into(),
        });
    }
    let mut steer = Vec::new();
    for g in &guard {
        match have.routes.get(g) {
            Some(OwnedRoute::Drop) => rep.unchanged += 1,
            Some(_) => {
                rep.updated += 1;
                steer.push(ops.steer(*g, RouteTarget::Drop));
            }
            None => {
                rep.added += 1;
                steer.push(ops.steer(*g, RouteTarget::Drop));
            }
        }
    }
    pipelined(steer).await?;

    // the underlay guard: pod-sourced traffic to the peers' underlay addresses dropped on
    // the underlay interfaces
    let local: BTreeSet<IpAddr> = mesh.local.underlay.iter().copied().collect();
    let uplinks: BTreeSet<u32> = ops
        .interfaces_holding(&local)
        .await?
        .into_values()
        .collect();
    let spd = HaveSpd::read(ops.c).await?;
    let r = underlay_guard::reconcile(ops.c, &spd, &underlay_guard::wanted(mesh), &uplinks).await?;
    add_report(&mut rep, &r);

    // the pods' table, for the peers' underlay routes (the attachment makes it too)
    if !have.pod_table {
        ops.ensure_pod_table().await?;
        rep.added += 1;
    }

    // the underlay addresses of peers gone stay in the pods' table as drop routes
    // (tombstones, as on the kernel): a pod's connection still open to such an address
    // (an API server on a departed node) is dropped, not sent out of the uplink in the
    // clear — underlay addresses have no supernet to fall back on. One naming a local
    // underlay address goes (pods reach their own node).
    let want_underlay: BTreeSet<IpNet> = want
        .iter()
        .flat_map(|p| p.underlay_routes.iter().copied())
        .collect();
    let mut tombstones = Vec::new();
    let mut gone = Vec::new();
    for (prefix, r) in have
        .pod_routes
        .iter()
        .filter(|(prefix, _)| !want_underlay.contains(prefix))
    {
        if local.contains(&prefix.addr()) {
            gone.push(ops.unroute_in(POD_TABLE_ID, *prefix, r));
        } else if *r != OwnedRoute::Drop {
            tombstones.push(ops.steer_in(POD_TABLE_ID, *prefix, RouteTarget::Drop));
        }
    }
    rep.updated += pipelined(tombstones).await?.len();
    rep.removed += pipelined(gone).await?.len();

    // stale routes next: pod CIDRs no peer of the mesh has any more
    let want_routes: BTreeSet<IpNet> = want
        .iter()
        .flat_map(|p| p.routes.iter().copied())
        .chain(guard.iter().copied())
        .collect();
    let stale = pipelined(
        have.routes
            .iter()
            .filter(|(prefix, _)| !want_routes.contains(prefix))
            .map(|(prefix, r)| ops.unroute(*prefix, r))
            .collect::<Vec<_>>(),
    )
    .await?;
    rep.removed += stale.len();

    // the underlay interfaces of the tunnels to create, looked up once
    let srcs: BTreeSet<IpAddr> = want
        .iter()
        .filter(|p| needs_new_tunnel(have, p))
        .map(|p| p.src)
        .collect();
    let underlay_ifs = ops.underlay_ifs(&srcs).await?;

    let mut live_sas: BTreeSet<u32> = BTreeSet::new();
    let peers = pipelined(
        want.iter()
            .map(|p| reconcile_peer(ops, have, mesh, p, &underlay_ifs))
            .collect::<Vec<_>>(),
    )
    .await?;
    for o in peers {
        add_report(&mut rep, &o.rep);
        live_sas.extend(o.live_sas);
    }

    // stale tunnels, then stale SAs (the protections using them are gone by then)
    let want_instances: BTreeSet<u32> = want.iter().map(|p| p.instance).collect();
    let gone = pipelined(
        have.tunnels
            .iter()
            .filter(|(inst, _)| !want_instances.contains(inst))
            .map(|(inst, t)| delete_tunnel_fully(ops, *inst, t.sw_if_index))
            .collect::<Vec<_>>(),
    )
    .await?;
    rep.removed += gone.len();
    let gone = pipelined(
        have.sas
            .keys()
            .filter(|id| !live_sas.contains(id))
            .map(|id| ops.delete_sa(*id))
            .collect::<Vec<_>>(),
    )
    .await?;
    rep.removed += gone.len();
    Ok(rep)
}

/// Removes everything Scrambler owns in the node's VPP, found as `have`; with `keep_guard`
/// every owned route stays, pointed to drop (the cluster guard and the peers' pod CIDRs),
/// and only tunnels and SAs go.
pub(super) async fn remove_all(
    ops: &TunnelCalls<'_>,
    have: &OwnedState,
    keep_guard: bool,
) -> Result<ReconcileReport> {
    let mut rep = ReconcileReport::default();
    // routes (to drop, or away), then tunnels, then SAs, then (without `keep_guard`) the
    // underlay guard; each kind's calls sent together
    // (the pods' table and its default routes stay: pods are bound to it)
    let all_routes = || {
        let t0 = have.routes.iter().map(|(p, r)| (0, p, r));
        let pods = have.pod_routes.iter().map(|(p, r)| (POD_TABLE_ID, p, r));
        t0.chain(pods)
    };
    let routes = if keep_guard {
        pipelined(
            all_routes()
                .filter(|(_, _, r)| **r != OwnedRoute::Drop)
                .map(|(table, prefix, _)| ops.steer_in(table, *prefix, RouteTarget::Drop))
                .collect::<Vec<_>>(),
        )
        .await?;
        Vec::new()
    } else {
        pipelined(
            all_routes()
                .map(|(table, prefix, r)| ops.unroute_in(table, *prefix, r))
                .collect::<Vec<_>>(),
        )
        .await?
    };
    let tunnels = pipelined(
        have.tunnels
            .iter()
            .map(|(inst, t)| delete_tunnel_fully(ops, *inst, t.sw_if_index))
            .collect::<Vec<_>>(),
    )
    .await?;
    let sas = pipelined(
        have.sas
            .keys()
            .map(|id| ops.delete_sa(*id))
            .collect::<Vec<_>>(),
    )
    .await?;
    let spd = if keep_guard {
        0
    } else {
        underlay_guard::remove(ops.c, &HaveSpd::read(ops.c).await?).await?
    };
    rep.removed = routes.len() + tunnels.len() + sas.len() + spd;
    Ok(rep)
}

fn add_report(into: &mut ReconcileReport, r: &ReconcileReport) {
    into.added += r.added;
    into.updated += r.updated;
    into.removed += r.removed;
    into.unchanged += r.unchanged;
}

/// What reconciling one peer did: its report and the SA ids it keeps.
struct PeerOutcome {
    rep: ReconcileReport,
    live_sas: Vec<u32>,
}

/// Reconciles one peer, its calls strictly in the fail-closed order of the module docs.
async fn reconcile_peer(
    ops: &TunnelCalls<'_>,
    have: &OwnedState,
    mesh: &Mesh,
    p: &PeerPlan,
    underlay_ifs: &HashMap<IpAddr, u32>,
) -> Result<PeerOutcome> {
    let mut rep = ReconcileReport::default();
    let live_sas = p.sas.iter().map(|s| s.id).collect();
    // 1. the guard: each pod CIDR of the peer is routed by us, into its current tunnel or
    //    to drop; anything else (missing, foreign shape, a stale tunnel) becomes drop
    //    before the tunnel is touched
    let current = have.tunnels.get(&p.instance).map(|t| t.sw_if_index);
    let lost = outbound_lost(have, mesh, p.id) || outbound_changed(have, p);
    let mut guard = RouteGuard::default();
    let routes = p.routes.iter().map(|r| (0, *r, have.routes.get(r)));
    let underlay = p
        .underlay_routes
        .iter()
        .map(|r| (POD_TABLE_ID, *r, have.pod_routes.get(r)));
    for (table, r, found) in routes.chain(underlay) {
        let now = match found {
            Some(OwnedRoute::Drop) => RouteTarget::Drop,
            Some(OwnedRoute::Via(sw)) if Some(*sw) == current => RouteTarget::Via(*sw),
            other => {
                ops.steer_in(table, r, RouteTarget::Drop).await?;
                if other.is_none() {
                    guard.fresh.insert((table, r));
                    rep.added += 1;
                } else {
                    rep.updated += 1;
                }
                RouteTarget::Drop
            }
        };
        guard.routes.insert((table, r), now);
    }

    // 2. the tunnel, down until protected
    let underlay = || {
        underlay_ifs
            .get(&p.src)
            .copied()
            .ok_or_else(|| Error::Dataplane {
                dataplane: DATAPLANE.into(),
                op: format!("create tunnel ipip{} to {}", p.instance, p.name),
                reason: format!(
                    "the local underlay address {} is on no VPP interface",
                    p.src
                ),
            })
    };
    let fresh = needs_new_tunnel(have, p);
    let sw = match have.tunnels.get(&p.instance) {
        Some(t) if !fresh => {
            rep.unchanged += 1;
            t.sw_if_index
        }
        Some(t) => {
            guard.close(ops).await?;
            ops.set_up(t.sw_if_index, false).await?;
            ops.unprotect(t.sw_if_index).await?;
            ops.delete_tunnel(p.instance, t.sw_if_index).await?;
            rep.updated += 1;
            ops.create_tunnel(p, underlay()?).await?
        }
        None => {
            rep.added += 1;
            ops.create_tunnel(p, underlay()?).await?
        }
    };
    let mut up = !fresh && have.up.get(&sw).copied().unwrap_or(false);

    // 3. SAs: add missing; replace changed ones (routes to drop, tunnel down and
    //    unprotected meanwhile)
    let mut protected = if fresh {
        None
    } else {
        have.protects.get(&sw).cloned()
    };
    if protected.is_none() {
        // protection lost behind our back: nothing may be steered in until it is back
        guard.close(ops).await?;
    }
    let mut adds = Vec::new();
    for sa in &p.sas {
        match have.sas.get(&sa.id) {
            Some(h) if sa_matches(h, sa) => rep.unchanged += 1,
            // a previous epoch's inbound SA is kept as it is (found by its SPI), never
            // replaced: made anew, its replay window and ESN high bits would start over
            Some(_) if sa.kept => rep.unchanged += 1,
            Some(h) => {
                guard.close(ops).await?;
                if up {
                    ops.set_up(sw, false).await?;
                    up = false;
                }
                if protected.take().is_some() {
                    ops.unprotect(sw).await?;
                }
                if kept_outbound(h, sa) {
                    // see outbound_changed: kept (unused) as proof that its key has sent,
                    // and the peer lost until a rotation
                    tracing::error!(
                        peer = %p.name,
                        generation = mesh.keys.tx,
                        "outbound SA changed; not re-keyed in place: give the node a new epoch or rotate keys"
                    );
                } else {
                    ops.delete_sa(sa.id).await?;
                    ops.add_sa(sa, &p.name).await?;
                    rep.updated += 1;
                }
            }
            None if sa.dir == Direction::Outbound && lost => {
                tracing::error!(
                    peer = %p.name,
                    generation = mesh.keys.tx,
                    "outbound SA lost; not re-created under the same key: give the node a new epoch or rotate keys"
                );
            }
            None => {
                adds.push(ops.add_sa(sa, &p.name));
                rep.added += 1;
            }
        }
    }
    // new SAs are independent of each other: sent together
    futures::future::try_join_all(adds).await?;
    if lost {
        // no protection without an outbound SA: the peer stays behind drop routes, its
        // tunnel down
        guard.close(ops).await?;
        if up {
            ops.set_up(sw, false).await?;
            rep.updated += 1;
        }
        return Ok(PeerOutcome { rep, live_sas });
    }

    // 4. protection (an update replaces it atomically: a key rotation needs no drop)
    match &protected {
        Some((o, i)) if *o == p.sa_out && *i == p.sa_in => rep.unchanged += 1,
        Some(_) => {
            ops.protect(sw, p.sa_out, &p.sa_in).await?;
            rep.updated += 1;
        }
        None => {
            ops.protect(sw, p.sa_out, &p.sa_in).await?;
            rep.added += 1;
        }
    }

    // 5. up, then steer the pod CIDRs from drop into it
    if !up {
        ops.set_up(sw, true).await?;
    }
    guard.open(ops, sw, &mut rep).await?;
    Ok(PeerOutcome { rep, live_sas })
}
