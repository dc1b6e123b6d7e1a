//! The steering side, over [`scrambler_netlink`]: the xfrm interface (created, checked,
//! deleted only when it carries Scrambler's if_id), its `disable_xfrm` switch, the
//! routes into it, and the policy-routing rules steering pods' traffic (and with node
//! encryption the node's own) to peers' underlay addresses into it.

use crate::config::{LinkMode, XfrmConfig};
use crate::plan::is_owned_rule;
use ipnet::IpNet;
use rtnetlink::LinkXfrm;
use scrambler_core::{Error, Netns, Result};
use scrambler_netlink::address::Scope;
use scrambler_netlink::{
    errno, kernel_error, sysctl, Exists, Nl, RouteSpec, RuleSpec, RuleState, RuleTarget, EOPNOTSUPP,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Scrambler's routes into the interface: destination → preferred source.
pub(crate) type Routes = BTreeMap<IpNet, Option<IpAddr>>;

/// What [`ensure_interface`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkChange {
    None,
    Created,
    Updated,
}

/// The steering interface as [`ensure_interface`] found or made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Interface {
    pub index: u32,
    pub changed: LinkChange,
    /// It is an xfrm interface with Scrambler's if_id (always with [`LinkMode::Create`];
    /// with [`LinkMode::Existing`] whatever the administrator gave).
    pub xfrm_ours: bool,
}

/// Makes sure the steering interface exists, is up and has `mtu` (with
/// [`LinkMode::Existing`] it is only looked up); returns it and what changed.
pub(crate) async fn ensure_interface(nl: &Nl, cfg: &XfrmConfig, mtu: u32) -> Result<Interface> {
    let name = &cfg.interface;
    let existing = nl.link_by_name(name).await?;
    let mut changed = LinkChange::None;
    let link = match (existing, cfg.link) {
        (Some(l), LinkMode::Existing) => {
            return Ok(Interface {
                index: l.index,
                changed,
                xfrm_ours: is_ours(cfg, &l),
            })
        }
        (None, LinkMode::Existing) => {
            return Err(Error::config(format!(
                "interface {name} does not exist (link mode \"existing\")"
            )))
        }
        (Some(l), LinkMode::Create) => {
            if !is_ours(cfg, &l) {
                return Err(Error::AlreadyExists {
                    object: format!("interface {name}"),
                    reason: format!(
                        "it is not an xfrm interface with if_id {:#x}; Scrambler does not touch it",
                        cfg.if_id
                    ),
                });
            }
            l
        }
        (None, LinkMode::Create) => {
            let msg = LinkXfrm::new(name, 0, cfg.if_id).mtu(mtu).build();
            nl.handle()
                .link()
                .add(msg)
                .execute()
                .await
                .map_err(|e| match errno(&e) {
                    Some(EOPNOTSUPP) => Error::Unsupported(format!(
                        "create xfrm interface {name}: the kernel lacks xfrm interfaces \
                         (CONFIG_XFRM_INTERFACE)"
                    )),
                    _ => kernel_error("create xfrm interface", nl.obj(name), &e),
                })?;
            changed = LinkChange::Created;
            nl.existing_link(name).await?
        }
    };
    if link.mtu != Some(mtu) || !link.up {
        nl.set_mtu_and_up(link.index, name, mtu).await?;
        if changed == LinkChange::None {
            changed = LinkChange::Updated;
        }
    }
    Ok(Interface {
        index: link.index,
        changed,
        xfrm_ours: true,
    })
}

/// Deletes the interface when it is Scrambler's xfrm interface; returns whether it did.
pub(crate) async fn delete_interface(nl: &Nl, cfg: &XfrmConfig) -> Result<bool> {
    if cfg.link != LinkMode::Create {
        return Ok(false);
    }
    match nl.link_by_name(&cfg.interface).await? {
        Some(l) if is_ours(cfg, &l) => nl.delete_link(l.index, &cfg.interface).await,
        _ => Ok(false),
    }
}

/// Whether `link` is an xfrm interface with Scrambler's if_id.
fn is_ours(cfg: &XfrmConfig, link: &scrambler_netlink::LinkState) -> bool {
    link.kind.as_deref() == Some("xfrm") && link.xfrm_if_id == Some(cfg.if_id)
}

/// Scrambler's routes into link `index` (main table, Scrambler's protocol `proto`): their
/// destinations and preferred sources.
pub(crate) async fn owned_routes(nl: &Nl, index: u32, proto: u8) -> Result<Routes> {
    let routes = nl.owned_routes(index, proto).await?;
    Ok(routes.into_iter().map(|r| (r.dst, r.src)).collect())
}

/// The routes to `nets` (with their preferred sources) into link `index`, marked with
/// `proto`.
pub(crate) fn routes<'a>(
    nets: impl IntoIterator<Item = (&'a IpNet, &'a Option<IpAddr>)>,
    index: u32,
    proto: u8,
) -> Vec<RouteSpec> {
    nets.into_iter()
        .map(|(n, src)| {
            RouteSpec::new(*n, None, index)
                .with_protocol(proto)
                .with_src(*src)
        })
        .collect()
}

/// Adds the routes to `nets` into link `index`, pipelined. A route to one of them that
/// exists already is someone else's (ours were read first): [`Error::AlreadyExists`].
pub(crate) async fn add_routes(nl: &Nl, nets: &Routes, index: u32, proto: u8) -> Result<()> {
    nl.add_routes(&routes(nets, index, proto), Exists::Fail)
        .await
        .map_err(|e| match e {
            Error::AlreadyExists { object, .. } => Error::AlreadyExists {
                object,
                reason: "a route not made by Scrambler holds it; Scrambler does not touch it"
                    .into(),
            },
            e => e,
        })
}

/// Puts the node's tunnel addresses (`addrs`, host prefixes) on Scrambler's own interface
/// `name`; returns how many it added (addresses already there are kept).
pub(crate) async fn ensure_addresses(
    nl: &Nl,
    name: &str,
    addrs: &BTreeSet<IpNet>,
) -> Result<usize> {
    if addrs.is_empty() {
        return Ok(0);
    }
    let link = nl.existing_link(name).await?;
    let mut added = 0;
    for a in addrs {
        if nl
            .add_address(&link, *a, Scope::Global, Exists::Keep)
            .await?
        {
            added += 1;
        }
    }
    Ok(added)
}

/// Sets `net.ipv4.conf.<ifname>.rp_filter = 2` (loose) inside `netns`: a peer host's
/// packets decrypted on the interface (the replies of a NodePort or hostPort it called here,
/// see `plan_peer_underlay`) come from an underlay address the main table routes out of
/// the underlay, which strict reverse-path filtering (`all.rp_filter = 1` takes the
/// maximum of both) would drop. They are authenticated ESP of a known peer, and the `in`
/// policies name every pair of addresses the interface accepts.
pub(crate) async fn loose_reverse_path(netns: &Netns, ifname: &str) -> Result<()> {
    sysctl::ensure(netns, &format!("net/ipv4/conf/{ifname}/rp_filter"), "2").await
}

/// Sets `net.ipv4.conf.<ifname>.disable_xfrm = 1` inside `netns`: routes through the
/// xfrm interface then skip the if_id-0 policy lookup (where the guard lives), and the
/// interface's own lookup with its if_id applies the mesh policies.
pub(crate) async fn disable_xfrm_lookup(netns: &Netns, ifname: &str) -> Result<()> {
    sysctl::ensure(netns, &format!("net/ipv4/conf/{ifname}/disable_xfrm"), "1").await
}

/// Scrambler's routes in its own table ([`XfrmConfig::route_table`]) into link `index`:
/// their destinations (peers' underlay addresses) and preferred sources.
pub(crate) async fn owned_table_routes(nl: &Nl, cfg: &XfrmConfig, index: u32) -> Result<Routes> {
    let routes = nl
        .owned_routes_in(cfg.route_table, index, cfg.route_protocol)
        .await?;
    Ok(routes.into_iter().map(|r| (r.dst, r.src)).collect())
}

/// The routes to `nets` (with their preferred sources) into link `index` in Scrambler's
/// table.
pub(crate) fn table_routes<'a>(
    cfg: &XfrmConfig,
    nets: impl IntoIterator<Item = (&'a IpNet, &'a Option<IpAddr>)>,
    index: u32,
) -> Vec<RouteSpec> {
    nets.into_iter()
        .map(|(n, src)| {
            RouteSpec::new(*n, None, index)
                .with_protocol(cfg.route_protocol)
                .with_src(*src)
                .in_table(cfg.route_table)
        })
        .collect()
}

/// Scrambler's rules: exactly of the shapes of [`crate::plan::is_owned_rule`].
pub(crate) async fn owned_rules(nl: &Nl, cfg: &XfrmConfig) -> Result<BTreeSet<RuleSpec>> {
    Ok(owned_of(cfg, &nl.rules().await?))
}

fn owned_of(cfg: &XfrmConfig, all: &[RuleState]) -> BTreeSet<RuleSpec> {
    all.iter()
        .filter_map(|r| r.spec())
        .filter(|r| is_owned_rule(cfg, r))
        .collect()
}

/// Deletes Scrambler's rule `r` unless a rule of someone else that the kernel would
/// take for it (the same priority, source, table and protocol, with more selectors)
/// comes first in `all` (the dump, in the kernel's order): the kernel deletes the first
/// match, so that one would go instead. Returns whether `r` existed.
async fn delete_owned_rule(nl: &Nl, all: &[RuleState], r: &RuleSpec) -> Result<bool> {
    let mine = all.iter().position(|s| s.spec().as_ref() == Some(r));
    let before = &all[..mine.unwrap_or(all.len())];
    if let Some(f) = before.iter().find(|s| r.delete_may_hit(s)) {
        return Err(Error::AlreadyExists {
            object: r.name(),
            reason: format!(
                "a rule not made by Scrambler comes first at its priority, source, table \
                 and protocol ({f:?}): deleting Scrambler's would delete that one; \
                 Scrambler does not touch it"
            ),
        });
    }
    nl.delete_rule(r).await
}

/// Rules in the order they are added: `nop` rules first (a `goto` to a missing target is
/// skipped: bypassed traffic would be steered), then by priority — bypass before steering,
/// so the bypass ports never ride the mesh on the way.
fn add_order<'a>(rules: impl IntoIterator<Item = &'a RuleSpec>) -> Vec<&'a RuleSpec> {
    let mut v: Vec<&RuleSpec> = rules.into_iter().collect();
    v.sort_by_key(|r| (r.target != RuleTarget::Nop, r.priority));
    v
}

/// Rules in the order they are deleted: the reverse of [`add_order`] (steering before
/// bypass, `nop` rules last).
fn delete_order<'a>(rules: impl IntoIterator<Item = &'a RuleSpec>) -> Vec<&'a RuleSpec> {
    let mut v = add_order(rules);
    v.reverse();
    v
}

/// Makes Scrambler's routes in its table and its rules exactly `routes` and `rules`:
/// stale rules go first, then stale routes; then missing routes (a rule pointing to a
/// table without the route falls through to the main table and the guard), then missing
/// rules (see [`add_order`]). A route whose source changed is deleted and added again;
/// a route not in `routes` whose destination `keep` holds (a tombstone, see
/// [`crate::plan::Desired::is_underlay_route_tombstone`]) stays as it is.
/// Returns (added, removed).
pub(crate) async fn sync_underlay_steering(
    nl: &Nl,
    cfg: &XfrmConfig,
    index: u32,
    routes: &Routes,
    keep: impl Fn(&IpNet) -> bool,
    rules: &BTreeSet<RuleSpec>,
) -> Result<(usize, usize)> {
    let have = owned_table_routes(nl, cfg, index).await?;
    let all = nl.rules().await?;
    let found = owned_of(cfg, &all);
    let stale_rules = delete_order(found.difference(rules));
    let missing_rules = add_order(rules.difference(&found));
    let stale_routes = table_routes(
        cfg,
        have.iter().filter(|(n, src)| match routes.get(n) {
            Some(want) => want != *src,
            None => !keep(n),
        }),
        index,
    );
    let missing_routes = table_routes(
        cfg,
        routes.iter().filter(|(n, src)| have.get(n) != Some(src)),
        index,
    );
    for r in &stale_rules {
        delete_owned_rule(nl, &all, r).await?;
    }
    nl.delete_routes(&stale_routes).await?;
    nl.add_routes(&missing_routes, Exists::Fail)
        .await
        .map_err(|e| match e {
            Error::AlreadyExists { object, .. } => Error::AlreadyExists {
                object,
                reason: "a route not made by Scrambler holds it in Scrambler's table; \
                         Scrambler does not touch it"
                    .into(),
            },
            e => e,
        })?;
    for r in &missing_rules {
        // the kernel takes a rule differing only in what it does not compare (`not`, …)
        // for this one: someone else's rule holds it
        nl.add_rule(r, Exists::Fail).await.map_err(|e| match e {
            Error::AlreadyExists { object, .. } => Error::AlreadyExists {
                object,
                reason: "a rule not made by Scrambler (the kernel takes it for this one, \
                         e.g. the same with `not`) holds it; Scrambler does not touch it"
                    .into(),
            },
            e => e,
        })?;
    }
    Ok((
        missing_routes.len() + missing_rules.len(),
        stale_routes.len() + stale_rules.len(),
    ))
}

/// Removes Scrambler's rules, and its routes in its table into link `index` (when the
/// link is there); returns how many it removed.
pub(crate) async fn remove_underlay_steering(
    nl: &Nl,
    cfg: &XfrmConfig,
    index: Option<u32>,
) -> Result<usize> {
    let mut removed = 0;
    let all = nl.rules().await?;
    for r in delete_order(&owned_of(cfg, &all)) {
        if delete_owned_rule(nl, &all, r).await? {
            removed += 1;
        }
    }
    if let Some(index) = index {
        let have = owned_table_routes(nl, cfg, index).await?;
        nl.delete_routes(&table_routes(cfg, &have, index)).await?;
        removed += have.len();
    }
    Ok(removed)
}

/// The `unreachable` routes to `nets` of [`crate::plan::Desired::unreachable`].
pub(crate) fn unreachable_routes<'a>(
    cfg: &XfrmConfig,
    nets: impl IntoIterator<Item = &'a IpNet>,
) -> Vec<RouteSpec> {
    nets.into_iter()
        .map(|n| {
            RouteSpec::unreachable(*n, crate::config::UNREACHABLE_METRIC)
                .with_protocol(cfg.route_protocol)
        })
        .collect()
}

/// Destinations of Scrambler's `unreachable` routes in the main table (its protocol, its
/// metric).
pub(crate) async fn owned_unreachable(nl: &Nl, cfg: &XfrmConfig) -> Result<BTreeSet<IpNet>> {
    let routes = nl
        .owned_unreachable_routes(cfg.route_protocol, crate::config::UNREACHABLE_METRIC)
        .await?;
    Ok(routes.into_iter().map(|r| r.dst).collect())
}

/// Adds the missing ones of the `unreachable` routes to `nets`; returns how many it added.
/// One to such a prefix at that metric that exists already (not ours: ours were read
/// first) is someone else's: [`Error::AlreadyExists`].
pub(crate) async fn add_unreachable(
    nl: &Nl,
    cfg: &XfrmConfig,
    nets: &BTreeSet<IpNet>,
) -> Result<usize> {
    let have = owned_unreachable(nl, cfg).await?;
    let missing = unreachable_routes(cfg, nets.difference(&have));
    nl.add_routes(&missing, Exists::Fail)
        .await
        .map_err(|e| match e {
            Error::AlreadyExists { object, .. } => Error::AlreadyExists {
                object,
                reason: "a route not made by Scrambler holds it; Scrambler does not touch it"
                    .into(),
            },
            e => e,
        })?;
    Ok(missing.len())
}

/// Deletes Scrambler's `unreachable` routes not to `keep`; returns how many it deleted.
pub(crate) async fn delete_unreachable_except(
    nl: &Nl,
    cfg: &XfrmConfig,
    keep: &BTreeSet<IpNet>,
) -> Result<usize> {
    let have = owned_unreachable(nl, cfg).await?;
    let stale = unreachable_routes(cfg, have.difference(keep));
    nl.delete_routes(&stale).await?;
    Ok(stale.len())
}
