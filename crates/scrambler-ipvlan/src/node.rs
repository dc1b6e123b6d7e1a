//! [`IpvlanNode`]: the node-side setup that lets the xfrm mesh encrypt ipvlan `l3`/`l3s`
//! pods (see the crate docs for why each piece is needed). One setup serves every network
//! with encrypted pods on the node: it is made from their union ([`crate::registry`]).
//! Everything it makes is recognisable as ours and nothing else is touched:
//!
//! - the link [`NODE_LINK`] (ifalias [`NODE_ALIAS`]): an ipvlan slave of the master in the
//!   node namespace, in the pods' mode, up, without addresses;
//! - routes (protocol `0x5c`) out of it: each network's pod CIDRs on the node (decrypted
//!   packets for the node's pods are forwarded through it) and one host route per attached
//!   pod address;
//! - the nftables table `scrambler-ipvlan` ([`crate::nft`]);
//! - `net.ipv4.ip_forward` (and `net.ipv6.conf.all.forwarding` with IPv6 CIDRs) set to 1
//!   (left on by [`IpvlanNode::remove`]: other things on the node may need it).
//!
//! [`IpvlanNode::ensure`] is idempotent and cheap; the CNI ADD of an `"encrypt": true`
//! pod calls it every time, then registers the pod ([`IpvlanNode::add_pod`]); the DEL of
//! the pod unregisters its addresses ([`IpvlanNode::remove_pod`]) and, while other pods
//! are recorded, narrows the setup to what their networks need ([`IpvlanNode::narrow`]),
//! else removes it ([`IpvlanNode::remove`]). How many pods there are is the registry's
//! records' business, never this module's: routes and links can be missing while pods run.
//!
//! Concurrent invocations on one node must hold its [`crate::lock::NodeLock`] across each
//! sequence of these calls.

use crate::config::Mode;
use crate::nft::{self, NetworkRules};
use crate::slave::{create_ipvlan, link_mode, IpvlanSpec};
use crate::Flag;
use ipnet::IpNet;
use scrambler_core::{Error, Netns, Result};
use scrambler_netlink::{sysctl, Exists, LinkState, Nl, RouteSpec, RouteState};
use std::net::IpAddr;

/// Name of the node-side ipvlan slave.
pub const NODE_LINK: &str = "scr-ipvl";
/// Its `ifalias`, marking it as ours.
pub const NODE_ALIAS: &str = "scrambler-ipvlan/node";

/// The node setup for encrypted ipvlan pods on one master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvlanNode {
    /// The master (the node's uplink), by name.
    pub master: String,
    /// The pods' ipvlan mode (`l3` or `l3s`; one mode per master in the kernel).
    pub mode: Mode,
    /// Each network's pod CIDRs on this node and cluster CIDRs (all nodes; required:
    /// [`IpvlanNode::ensure`] refuses a network without, which would have no cleartext
    /// guard, see [`crate::nft`]).
    pub networks: Vec<NetworkRules>,
}

/// What [`IpvlanNode::ensure`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnsureReport {
    /// The node link was created (or re-created with a new master or mode).
    pub link_created: bool,
    /// Routes added.
    pub routes_added: usize,
    /// The nftables table was (re-)written (it was missing or said something else).
    pub table_written: bool,
}

impl IpvlanNode {
    /// This node's pod CIDRs: every network's, each once.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
        for c in self.networks.iter().flat_map(|n| &n.pod_cidrs) {
            if !out.contains(&c.trunc()) {
                out.push(c.trunc());
            }
        }
        out
    }

    /// The nftables table it needs.
    pub fn ruleset(&self) -> nft::Ruleset {
        nft::Ruleset {
            master: self.master.clone(),
            networks: self.networks.clone(),
        }
    }

    /// Makes the setup in `netns` exactly what `self` says (idempotent; callers sharing a
    /// node hold its [`crate::lock::NodeLock`]): the node link, a route out of it for every
    /// pod CIDR (and none for a pod CIDR no network has any more), forwarding, the table.
    /// Fails with code 7 for `l2`, a network without pod or cluster CIDRs or a missing
    /// master, with code 102 when a link named [`NODE_LINK`] exists that is not ours.
    pub async fn ensure(&self, netns: &Netns) -> Result<EnsureReport> {
        self.validate()?;
        let nl = Nl::open(netns).await?;
        let master = nl.link_by_name(&self.master).await?.ok_or_else(|| {
            Error::config(format!(
                "ipvlan master {:?} does not exist in {netns}",
                self.master
            ))
        })?;
        let mut report = EnsureReport::default();
        let link = match self.node_link(&nl, &master).await? {
            Some(l) => l,
            None => {
                report.link_created = true;
                self.create_node_link(&nl, &master).await?
            }
        };
        let have = nl.main_routes().await?;
        let pod_cidrs = self.pod_cidrs();
        for c in &pod_cidrs {
            if ensure_route(&nl, &have, *c, link.index).await? {
                report.routes_added += 1;
            }
        }
        self.prune_pod_cidr_routes(&nl, &have, link.index).await?;
        drop(nl);
        let v6 = pod_cidrs.iter().any(|c| c.addr().is_ipv6());
        enable_forwarding(netns, v6).await?;
        report.table_written = nft::ensure(netns, &self.ruleset()).await?;
        tracing::debug!(netns = %netns, master = %self.master, ?report, "ipvlan node setup ensured");
        Ok(report)
    }

    /// After a network left: makes the table say what `self` needs (one atomic rewrite,
    /// or a fresh table where it was missing: the guard never lapses) and deletes the routes
    /// of pod CIDRs no network has any more. Creates no link: a missing node link stays
    /// missing until the next ADD. Returns whether the table was written.
    pub async fn narrow(&self, netns: &Netns) -> Result<bool> {
        self.validate()?;
        let written = nft::ensure(netns, &self.ruleset()).await?;
        let nl = Nl::open(netns).await?;
        if let Some(link) = our_link(&nl).await? {
            let have = nl.main_routes().await?;
            self.prune_pod_cidr_routes(&nl, &have, link.index).await?;
        }
        Ok(written)
    }

    fn validate(&self) -> Result<()> {
        if !self.mode.can_encrypt() {
            return Err(Error::config(
                "the ipvlan node setup is for l3/l3s; l2 pods cannot be encrypted",
            ));
        }
        if self.networks.is_empty() || self.networks.iter().any(|n| n.pod_cidrs.is_empty()) {
            return Err(Error::config(
                "the ipvlan node setup needs the node's pod CIDRs",
            ));
        }
        if self.networks.iter().any(|n| n.cluster_cidrs.is_empty()) {
            return Err(Error::config(
                "the ipvlan node setup needs the cluster's pod CIDRs (\"clusterCidrs\") for \
                 its cleartext guard",
            ));
        }
        Ok(())
    }

    /// Deletes the routes out of the node link (index `link`) to pod CIDRs that no network
    /// has (host routes of pods and the kernel's link-local route stay).
    async fn prune_pod_cidr_routes(&self, nl: &Nl, have: &[RouteState], link: u32) -> Result<()> {
        let want = self.pod_cidrs();
        for r in have.iter().filter(|r| r.oif == Some(link)) {
            if r.dst.prefix_len() < r.dst.max_prefix_len()
                && !is_link_local(&r.dst)
                && !want.contains(&r.dst)
            {
                nl.delete_route(&RouteSpec::new(r.dst, None, link)).await?;
            }
        }
        Ok(())
    }

    /// Our node link if it is right for `master` and the mode; a wrong one of ours is
    /// deleted (`None`), a foreign one is an error.
    async fn node_link(&self, nl: &Nl, master: &LinkState) -> Result<Option<LinkState>> {
        let Some(l) = nl.link_by_name(NODE_LINK).await? else {
            return Ok(None);
        };
        if is_unmarked_node_link(&l, master.index, self.mode) {
            // left by a creation that died before its alias was set
            tracing::info!(link = NODE_LINK, "unaliased node link adopted");
            self.finish_node_link(nl, &l).await?;
            return Ok(Some(l));
        }
        if !is_ours(&l) {
            return Err(Error::AlreadyExists {
                object: nl.obj(format!("interface {NODE_LINK}")),
                reason: format!(
                    "it is not Scrambler's (kind {:?}, alias {:?}); rename it",
                    l.kind, l.alias
                ),
            });
        }
        if l.parent == Some(master.index) && link_mode(&l) == Some(self.mode) {
            if !l.up {
                nl.set_up(l.index, NODE_LINK).await?;
            }
            return Ok(Some(l));
        }
        tracing::info!(
            link = NODE_LINK,
            "node link has another master or mode: re-created"
        );
        nl.delete_link(l.index, NODE_LINK).await?;
        Ok(None)
    }

    /// Creates the node link, up and aliased; if that cannot be finished, the link is
    /// deleted again so that it does not block later ADDs as a foreign link.
    async fn create_node_link(&self, nl: &Nl, master: &LinkState) -> Result<LinkState> {
        // a name clash here is a link made since `node_link` looked: someone else's
        // (we hold the node lock), so it is an error, not ours to alias
        create_ipvlan(
            nl,
            &IpvlanSpec {
                name: NODE_LINK,
                master: master.index,
                mode: self.mode,
                flag: Flag::Bridge,
                mtu: master.mtu.unwrap_or(1500),
                netns_fd: None,
                alias: Some(NODE_ALIAS),
                up: true,
            },
        )
        .await?;
        let l = nl.link_by_name(NODE_LINK).await?.ok_or_else(|| {
            Error::kernel("find link", nl.obj(NODE_LINK), "it vanished after creation")
        })?;
        if let Err(e) = self.finish_node_link(nl, &l).await {
            if let Err(e2) = nl.delete_link(l.index, NODE_LINK).await {
                tracing::error!(error = %e2, "undo: delete half-made node link failed");
            }
            return Err(e);
        }
        Ok(l)
    }

    /// Gives the node link `l` our alias and brings it up, where it is not yet.
    async fn finish_node_link(&self, nl: &Nl, l: &LinkState) -> Result<()> {
        if l.alias.as_deref() != Some(NODE_ALIAS) {
            nl.set_alias(l.index, NODE_LINK, NODE_ALIAS).await?;
        }
        if !l.up {
            nl.set_up(l.index, NODE_LINK).await?;
        }
        Ok(())
    }

    /// Registers pod addresses `ips` (host routes out of the node link). Needs
    /// [`IpvlanNode::ensure`] first.
    pub async fn add_pod(netns: &Netns, ips: &[IpAddr]) -> Result<()> {
        let nl = Nl::open(netns).await?;
        let link = our_link(&nl).await?.ok_or_else(|| {
            Error::kernel(
                "register pod",
                nl.obj(NODE_LINK),
                "the ipvlan node link does not exist",
            )
        })?;
        let have = nl.main_routes().await?;
        for ip in ips {
            ensure_route(&nl, &have, host(*ip), link.index).await?;
        }
        Ok(())
    }

    /// Unregisters pod addresses `ips` (deletes their host routes; nothing to do without
    /// the node link). How many pods are left is for the caller to count from the records.
    pub async fn remove_pod(netns: &Netns, ips: &[IpAddr]) -> Result<()> {
        let nl = Nl::open(netns).await?;
        let Some(link) = our_link(&nl).await? else {
            return Ok(());
        };
        for ip in ips {
            nl.delete_route(&RouteSpec::new(host(*ip), None, link.index))
                .await?;
        }
        Ok(())
    }

    /// The pod addresses registered in `netns`.
    pub async fn pods(netns: &Netns) -> Result<Vec<IpAddr>> {
        let nl = Nl::open(netns).await?;
        let Some(link) = our_link(&nl).await? else {
            return Ok(vec![]);
        };
        Ok(registered(&nl.main_routes().await?, link.index))
    }

    /// Whether any part of the setup exists in `netns`.
    pub async fn present(netns: &Netns) -> Result<bool> {
        let nl = Nl::open(netns).await?;
        Ok(our_link(&nl).await?.is_some() || !nft::families(netns).await?.is_empty())
    }

    /// Removes the setup from `netns` (the node link with its routes, the nftables
    /// table); what is not there is skipped. Returns whether anything was removed.
    pub async fn remove(netns: &Netns) -> Result<bool> {
        let nl = Nl::open(netns).await?;
        let mut removed = false;
        if let Some(l) = our_link(&nl).await? {
            removed |= nl.delete_link(l.index, NODE_LINK).await?;
        }
        let families = nft::families(netns).await?;
        if !families.is_empty() {
            nft::apply(netns, nft::delete_script(&families)).await?;
            removed = true;
        }
        if removed {
            tracing::info!(netns = %netns, "ipvlan node setup removed");
        }
        Ok(removed)
    }
}

fn is_ours(l: &LinkState) -> bool {
    l.kind.as_deref() == Some("ipvlan") && l.alias.as_deref() == Some(NODE_ALIAS)
}

/// An ipvlan link named [`NODE_LINK`] without any alias, on `master` in `mode`: what a
/// creation that died before setting the alias leaves (only adopted under the node lock).
fn is_unmarked_node_link(l: &LinkState, master: u32, mode: Mode) -> bool {
    l.kind.as_deref() == Some("ipvlan")
        && l.alias.as_deref().unwrap_or("").is_empty()
        && l.parent == Some(master)
        && link_mode(l) == Some(mode)
}

async fn our_link(nl: &Nl) -> Result<Option<LinkState>> {
    Ok(nl.link_by_name(NODE_LINK).await?.filter(is_ours))
}

/// The kernel's own `fe80::/64` route of every IPv6 link: not a pod CIDR.
fn is_link_local(net: &IpNet) -> bool {
    match net {
        IpNet::V6(n) => n.addr().segments()[0] & 0xffc0 == 0xfe80,
        IpNet::V4(n) => n.addr().octets()[..2] == [169, 254],
    }
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// Host routes out of `index`: the registered pod addresses.
fn registered(routes: &[RouteState], index: u32) -> Vec<IpAddr> {
    routes
        .iter()
        .filter(|r| r.oif == Some(index) && r.dst.prefix_len() == r.dst.max_prefix_len())
        .map(|r| r.dst.addr())
        .collect()
}

/// Adds the route to `dst` out of link `index` unless it is there (`have`: the main
/// table as read before); returns whether it was added. A route to `dst` in the main
/// table that goes elsewhere (another link, a gateway elsewhere) is an error naming it
/// (code 102): the traffic would not reach the link.
pub async fn ensure_route(nl: &Nl, have: &[RouteState], dst: IpNet, index: u32) -> Result<bool> {
    let dst = dst.trunc();
    if have.iter().any(|r| r.dst == dst && r.oif == Some(index)) {
        return Ok(false);
    }
    let spec = RouteSpec::new(dst, None, index);
    if nl.add_route(&spec, Exists::Keep).await? {
        return Ok(true);
    }
    // the kernel has a route to `dst`: read it again, it must be ours
    let now = nl.main_routes().await?;
    let same: Vec<&RouteState> = now.iter().filter(|r| r.dst == dst).collect();
    if same.iter().any(|r| r.oif == Some(index)) {
        return Ok(false);
    }
    match same.first() {
        Some(other) => Err(Error::AlreadyExists {
            object: nl.obj(format!("route {dst}")),
            reason: format!(
                "it goes {}, not out of link index {index}; remove it or move {dst} \
                 out of the ipvlan pod CIDRs",
                describe_route(other)
            ),
        }),
        None => Err(Error::kernel(
            "add route",
            nl.obj(spec.name()),
            "the kernel reports it exists but lists no route to that destination",
        )),
    }
}

/// `via <gw> dev <index>`, as far as the route says.
fn describe_route(r: &RouteState) -> String {
    let mut s = Vec::new();
    if let Some(gw) = r.gw {
        s.push(format!("via {gw}"));
    }
    match r.oif {
        Some(i) => s.push(format!("out of link index {i}")),
        None => s.push("without a single output link".into()),
    }
    s.join(" ")
}

async fn enable_forwarding(netns: &Netns, v6: bool) -> Result<()> {
    sysctl::ensure(netns, "net/ipv4/ip_forward", "1").await?;
    if v6 {
        sysctl::ensure(netns, "net/ipv6/conf/all/forwarding", "1").await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_netlink::RouteState;

    #[test]
    fn registered_pods_are_the_host_routes_of_the_node_link() {
        let r = |dst: &str, oif| RouteState {
            dst: dst.parse().unwrap(),
            gw: None,
            oif: Some(oif),
            table: scrambler_netlink::MAIN_TABLE,
            protocol: scrambler_netlink::ROUTE_PROTO,
            src: None,
            unreachable: false,
            metric: None,
        };
        let routes = [
            r("10.244.1.0/24", 7),
            r("10.244.1.2/32", 7),
            r("10.244.1.3/32", 7),
            r("10.244.2.2/32", 8),
        ];
        assert_eq!(
            registered(&routes, 7),
            vec![
                "10.244.1.2".parse::<IpAddr>().unwrap(),
                "10.244.1.3".parse().unwrap()
            ]
        );
        assert!(is_ours(&LinkState {
            kind: Some("ipvlan".into()),
            alias: Some(NODE_ALIAS.into()),
            ..Default::default()
        }));
        assert!(!is_ours(&LinkState {
            kind: Some("ipvlan".into()),
            ..Default::default()
        }));
    }

    #[test]
    fn only_an_unaliased_ipvlan_on_the_right_master_and_mode_is_adopted() {
        use rtnetlink::packet_route::link::IpVlanMode;
        let half_made = LinkState {
            kind: Some("ipvlan".into()),
            parent: Some(2),
            ipvlan_mode: Some(IpVlanMode::L3),
            ..Default::default()
        };
        assert!(is_unmarked_node_link(&half_made, 2, Mode::L3));
        assert!(
            !is_unmarked_node_link(&half_made, 3, Mode::L3),
            "other master"
        );
        assert!(
            !is_unmarked_node_link(&half_made, 2, Mode::L3s),
            "other mode"
        );
        let aliased = LinkState {
            alias: Some("someone's".into()),
            ..half_made.clone()
        };
        assert!(!is_unmarked_node_link(&aliased, 2, Mode::L3));
        let veth = LinkState {
            kind: Some("veth".into()),
            ..half_made
        };
        assert!(!is_unmarked_node_link(&veth, 2, Mode::L3));
    }
}
