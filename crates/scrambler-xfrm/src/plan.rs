//! The desired XFRM objects and routes of one node, computed from its mesh.

use crate::config::{
    LinkMode, XfrmConfig, PRIO_BYPASS, PRIO_GUARD, PRIO_MESH, RULE_BYPASS, RULE_NOP, RULE_PODS,
    RULE_STEER,
};
use crate::model::{esp_shape, DesiredState, Dir, Policy, PolicyKey, StateKey, Tmpl, L4};
use ipnet::IpNet;
use scrambler_core::{BypassPort, ClusterSecret, Error, Mesh, Node, NodeEncryption, Result};
use scrambler_netlink::{RuleSpec, RuleTarget, SteeringRules};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Everything one node should have.
#[derive(Debug, Default)]
pub(crate) struct Desired {
    pub policies: BTreeMap<PolicyKey, Policy>,
    pub states: BTreeMap<StateKey, DesiredState>,
    /// Routes into the interface: peer pod CIDR → preferred source (the local tunnel
    /// address of its family, when Scrambler owns the interface and holds that address).
    pub routes: BTreeMap<IpNet, Option<IpAddr>>,
    /// The local node's tunnel addresses as host prefixes, put on the interface (only
    /// with [`LinkMode::Create`]).
    pub addresses: BTreeSet<IpNet>,
    /// Routes into the interface in [`XfrmConfig::route_table`]: every peer's underlay
    /// address (host prefix) of a family the local pod CIDRs have, and with node
    /// encryption every peer's underlay address of a family the local node has an
    /// underlay address of, with that address as preferred source (`None` without node
    /// encryption: only forwarded pod traffic uses them).
    pub underlay_routes: BTreeMap<IpNet, Option<IpAddr>>,
    /// Sources of the rules `from <source> lookup <route_table>`: the local pod CIDRs of
    /// the families of `underlay_routes`.
    pub rule_sources: BTreeSet<IpNet>,
    /// Node encryption's rules (see [`Desired::plan_node_encryption`]); empty when it is
    /// off.
    pub node_rules: BTreeSet<RuleSpec>,
    /// Keys of the policies node encryption plans (some of them, `out m → u` and
    /// `in u → m`, may be the pods' too); empty when it is off.
    pub node_policies: BTreeSet<PolicyKey>,
    /// With node encryption on, the transport selectors of its bypass allows (`proto P
    /// sport N` and `… dport N` per bypass port); `None` when it is off. A departed peer's
    /// host block and allows are tombstones only while it is on (see
    /// [`Desired::is_underlay_tombstone`]).
    pub node_bypass: Option<BTreeSet<L4>>,
    /// The local node's underlay addresses as host prefixes (never a tombstone's
    /// destination, see [`Desired::is_underlay_tombstone`]).
    pub local_underlay: BTreeSet<IpNet>,
    /// IPv6 cluster supernets (the guard's, see `plan_guard`) given an `unreachable` route
    /// in the main table at [`crate::config::UNREACHABLE_METRIC`]. The IPv6 interface
    /// bypass (see [`Desired::plan_interface_bypass`]) lets through the if_id-0 lookup
    /// every flow whose outgoing interface is the xfrm interface — also one the node
    /// itself answers on the interface it came in on (an ICMPv6 echo reply, a UDP reply
    /// with `IPV6_PKTINFO`) — and IPv6's output lookup does not insist on that interface:
    /// with the peer's route `<pod CIDR> dev <interface>` missing (deleted behind
    /// Scrambler's back, or between two steps of a reconcile or removal) it would take
    /// the default route out of the underlay, past the guard, in cleartext. The
    /// unreachable route ends such a lookup before the default route. (IPv4 needs none:
    /// `disable_xfrm` is per route, and an IPv4 lookup with an outgoing interface only
    /// takes routes out of that interface.) Added before the guard and bypass policies,
    /// removed only with the guard, after them.
    pub unreachable: BTreeSet<IpNet>,
    /// Rotation step 2: an older generation than `tx` is still live, so outbound states
    /// of `tx` are being made for the first time.
    pub switching: bool,
}

/// Which of the node's states a planned one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Outbound,
    /// Inbound under the local node's current epoch.
    Inbound,
    /// Inbound under a previous epoch of the local node, kept until its deadline.
    Kept,
}

/// The ESP templates between the local node (`mine`) and a peer (`theirs`): outbound, and
/// the return direction (in/fwd).
fn tmpl_pair(mine: IpAddr, theirs: IpAddr, reqid: u32) -> (Tmpl, Tmpl) {
    let out = Tmpl {
        src: mine,
        dst: theirs,
        reqid,
    };
    let back = Tmpl {
        src: theirs,
        dst: mine,
        reqid,
    };
    (out, back)
}

/// The outer (underlay) addresses used between the local node and `peer`
/// ([`Node::underlay_pair`]: the same rule on both ends and in every dataplane).
pub(crate) fn outer_pair(local: &Node, peer: &Node) -> Result<(IpAddr, IpAddr)> {
    local.underlay_pair(peer).ok_or_else(|| {
        Error::mesh(format!(
            "nodes {:?} and {:?} have no underlay address family in common",
            local.name, peer.name
        ))
    })
}

/// IPv6's minimum link MTU: the kernel disables IPv6 on an interface below it.
const IPV6_MIN_MTU: u32 = 1280;

/// Refuses an underlay MTU that leaves the xfrm interface (and pods sized like it) below
/// IPv6's minimum MTU when the node has an IPv6 pod CIDR: the kernel would disable IPv6 on
/// the interface and IPv6 pods would be cut off. The minimum is 1280 + the ESP overhead of
/// the outer family in use ([`Mesh::outer_v6`]): 1357 over IPv6, 1337 over IPv4.
pub(crate) fn check_ipv6_mtu(cfg: &XfrmConfig, mesh: &Mesh) -> Result<()> {
    if !mesh.local.pod_cidrs.iter().any(|c| c.addr().is_ipv6()) {
        return Ok(());
    }
    let outer_v6 = mesh.outer_v6();
    let mtu = scrambler_core::esp::pod_mtu(cfg.underlay_mtu, outer_v6);
    if mtu >= IPV6_MIN_MTU {
        return Ok(());
    }
    Err(Error::config(format!(
        "underlayMtu {} leaves the interface {} an MTU of {mtu} (ESP over {}), below IPv6's \
         minimum of {IPV6_MIN_MTU}: the kernel would disable IPv6 on it; IPv6 pod CIDRs need \
         an underlay MTU of at least {}",
        cfg.underlay_mtu,
        cfg.interface,
        if outer_v6 { "IPv6" } else { "IPv4" },
        IPV6_MIN_MTU + scrambler_core::esp::esp_overhead(outer_v6)
    )))
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    a.addr().is_ipv4() == b.addr().is_ipv4()
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Desired {
    fn policy(&mut self, p: Policy) {
        self.policies.insert(p.key.clone(), p);
    }

    /// Plans the node's objects. With `secret == None` no states are planned.
    pub fn plan(cfg: &XfrmConfig, mesh: &Mesh, secret: Option<&ClusterSecret>) -> Result<Desired> {
        Self::plan_at(cfg, mesh, secret, scrambler_core::mesh::unix_now())
    }

    /// [`Desired::plan`] at Unix time `now` (seconds): the local node's previous epochs
    /// whose deadline has passed are no longer kept.
    pub fn plan_at(
        cfg: &XfrmConfig,
        mesh: &Mesh,
        secret: Option<&ClusterSecret>,
        now: u64,
    ) -> Result<Desired> {
        mesh.validate()?;
        let mut d = Desired {
            switching: mesh.keys.rx.iter().any(|g| *g < mesh.keys.tx),
            ..Desired::default()
        };
        if cfg.link == LinkMode::Create {
            d.addresses = mesh
                .local
                .tunnel_addresses()
                .into_iter()
                .map(IpNet::from)
                .collect();
        }
        for peer in &mesh.peers {
            d.plan_peer(cfg, mesh, peer, secret, now)?;
            d.plan_peer_underlay(cfg, mesh, peer)?;
        }
        d.local_underlay = mesh
            .local
            .underlay
            .iter()
            .map(|a| IpNet::from(*a))
            .collect();
        d.plan_guard(cfg, mesh);
        if let Some(ne) = &mesh.node_encryption {
            d.plan_node_encryption(cfg, mesh, ne)?;
        }
        Ok(d)
    }

    /// Every rule the node should have: the pods' `from <local pod CIDR> lookup
    /// <route_table>` and node encryption's.
    pub fn rules(&self, cfg: &XfrmConfig) -> BTreeSet<RuleSpec> {
        self.rule_sources
            .iter()
            .map(|s| pod_rule(cfg, *s))
            .chain(self.node_rules.iter().cloned())
            .collect()
    }

    /// True when `p`, an owned policy not planned, is the block `out` local pod CIDR →
    /// underlay address of a node that left the mesh (or of the local pod CIDR a node had
    /// before a change): a tombstone that reconcile keeps. Traffic from a pod to that
    /// address rode the mesh while the node was a peer; without the block, a connection
    /// still open when the peer's policies, route and rule go would continue in cleartext
    /// over the main table. Only [`crate::XfrmTunnel`]'s `remove` (with the guard) deletes
    /// them; a node that takes the address later plans the same block. They are bounded
    /// by (local pod CIDRs) × (distinct underlay addresses of peers) since the last
    /// removal; none is ever kept for an address of the local node.
    ///
    /// With node encryption on, node encryption's IPv4 host block `out m → u` of a node
    /// that left the mesh (`m` a local underlay address) is a tombstone too, with its
    /// allows for the current bypass ports (see [`Desired::is_host_tombstone`]).
    pub fn is_underlay_tombstone(&self, cfg: &XfrmConfig, p: &Policy) -> bool {
        self.is_pod_tombstone(cfg, p) || self.is_host_tombstone(cfg, p)
    }

    /// The pods' tombstone of [`Desired::is_underlay_tombstone`].
    fn is_pod_tombstone(&self, cfg: &XfrmConfig, p: &Policy) -> bool {
        let k = &p.key;
        k.dir == Dir::Out
            && k.if_id == 0
            && p.block
            && p.tmpl.is_none()
            && p.priority == cfg.priority(PRIO_GUARD)
            && k.src.prefix_len() > 0
            // a pod CIDR (never a host prefix); node encryption's host block `out m → u`
            // goes with it
            && k.src.prefix_len() < k.src.max_prefix_len()
            && k.l4.is_any()
            && k.dst.prefix_len() == k.dst.max_prefix_len()
            && same_family(&k.src, &k.dst)
            && !self.local_underlay.contains(&k.dst)
    }

    /// True when `p`, an owned policy not planned, is node encryption's IPv4 host block
    /// `out m → u` (guard priority, if_id 0) of an address `u` no peer has any more, or one
    /// of its allows `out m → u proto P sport|dport N` (bypass priority) for a port still
    /// in the bypass list, with `m` a local underlay address and node encryption on. The
    /// node's own traffic to `u` rode the mesh while `u` was a peer's; when the peer
    /// leaves, its mesh policies and the route `u dev <interface>` go, and without the
    /// block a connection still open (or a new one) would go on over the main table in
    /// cleartext. Kept like the pods' tombstones: until [`crate::XfrmTunnel`]'s `remove`
    /// (`remove_keeping_guard` keeps them with the guard); also taken away when node
    /// encryption is turned off (as the present peers' blocks are); an allow whose port
    /// left the bypass list goes (the block then refuses that port too). A node that takes
    /// the address later plans the same block and allows. Bounded by the distinct IPv4
    /// underlay addresses of peers since the last removal.
    fn is_host_tombstone(&self, cfg: &XfrmConfig, p: &Policy) -> bool {
        let Some(bypass) = &self.node_bypass else {
            return false;
        };
        let k = &p.key;
        let shape = if p.block {
            p.priority == cfg.priority(PRIO_GUARD) && k.l4.is_any()
        } else {
            p.priority == cfg.priority(PRIO_BYPASS) && bypass.contains(&k.l4)
        };
        shape
            && k.dir == Dir::Out
            && k.if_id == 0
            && k.ifindex == 0
            && p.tmpl.is_none()
            && k.src.addr().is_ipv4()
            && k.dst.addr().is_ipv4()
            && k.dst.prefix_len() == k.dst.max_prefix_len()
            && self.local_underlay.contains(&k.src)
            && !self.local_underlay.contains(&k.dst)
    }

    /// True when `net`, the destination of an owned route in [`XfrmConfig::route_table`]
    /// that is not planned, is a former peer's underlay address kept while node encryption
    /// is on: the route `u dev <interface>` stays when the peer leaves, so the node's
    /// traffic to `u` that the steering rules send to the table (and its pods' by their
    /// rules) still goes into the interface, where no mesh policy is left for it: the
    /// interface drops it (and answers the sender with an ICMP unreachable) instead of the
    /// main table carrying it in cleartext. This covers both families (IPv6 has no host
    /// block, see [`Desired::plan_node_encryption`]), as long as the rules are in place.
    /// Removed with the other routes of the table (`remove`, `remove_keeping_guard`), when
    /// node encryption is turned off, and never kept for a local underlay address; a node
    /// that takes the address later plans the same route (with its source).
    pub fn is_underlay_route_tombstone(&self, net: &IpNet) -> bool {
        self.node_bypass.is_some()
            && net.prefix_len() == net.max_prefix_len()
            && !self.underlay_routes.contains_key(net)
            && !self.local_underlay.contains(net)
    }

    fn plan_peer(
        &mut self,
        cfg: &XfrmConfig,
        mesh: &Mesh,
        peer: &Node,
        secret: Option<&ClusterSecret>,
        now: u64,
    ) -> Result<()> {
        let local = &mesh.local;
        let (mine, theirs) = outer_pair(local, peer)?;
        let reqid = cfg.reqid(peer.id.get());
        let prio = cfg.priority(PRIO_MESH);
        for l in &local.pod_cidrs {
            for p in peer.pod_cidrs.iter().filter(|p| same_family(l, p)) {
                let (out, back) = tmpl_pair(mine, theirs, reqid);
                for (dir, src, dst, tmpl) in [
                    (Dir::Out, l, p, out),
                    (Dir::In, p, l, back),
                    (Dir::Fwd, p, l, back),
                ] {
                    self.policy(Policy {
                        key: PolicyKey {
                            dir,
                            src: *src,
                            dst: *dst,
                            if_id: cfg.if_id,
                            ifindex: 0,
                            l4: L4::ANY,
                        },
                        priority: prio,
                        block: false,
                        tmpl: Some(tmpl),
                    });
                }
            }
        }
        for p in &peer.pod_cidrs {
            let src = self
                .addresses
                .iter()
                .map(|a| a.addr())
                .find(|a| a.is_ipv6() == p.addr().is_ipv6());
            self.routes.insert(p.trunc(), src);
        }
        let Some(secret) = secret else {
            return Ok(());
        };
        let tx = secret.sa(local.incarnation(), peer.incarnation(), mesh.keys.tx);
        self.state(
            cfg,
            peer,
            StateKey {
                daddr: theirs,
                spi: tx.spi,
            },
            mine,
            &tx,
            Kind::Outbound,
        );
        // inbound for the current epoch, then for the previous epochs still kept: their
        // SPIs differ in the epoch tag (validated), so they coexist
        let current = std::iter::once((local.incarnation(), Kind::Inbound));
        let kept = local.kept_incarnations(now).map(|i| (i, Kind::Kept));
        for (me, kind) in current.chain(kept) {
            for g in &mesh.keys.rx {
                let rx = secret.sa(peer.incarnation(), me, *g);
                self.state(
                    cfg,
                    peer,
                    StateKey {
                        daddr: mine,
                        spi: rx.spi,
                    },
                    theirs,
                    &rx,
                    kind,
                );
            }
        }
        Ok(())
    }

    /// Local pods ↔ the peer's underlay address (the `kubernetes` Service DNATed to a
    /// control-plane node, kubelets, hostNetwork pods addressed by node IP), for every
    /// local pod CIDR `l` of the family of the peer's underlay address `u` and every peer
    /// pod CIDR `p` of the family of the local one `m`, mesh policies (if_id, ESP template
    /// between the same two underlay addresses as the pods' traffic):
    /// `out` l → u, `in`/`fwd` u → l (the peer host's replies), `out` m → p (this host's
    /// replies to the peer's pods), `in`/`fwd` p → m (the peer's pods reaching this host,
    /// also through a DNAT to a local or remote pod — a NodePort or hostPort: the inbound
    /// check sees the pre-DNAT destination), and `out` m → u, `in` u → m: a local pod's
    /// reply to a peer's host behind a DNAT (the peer's host calling this node's NodePort
    /// or hostPort served by a local pod) is routed into the interface by its pod source
    /// and leaves it with this node's address once the DNAT is undone; the peer accepts it
    /// decrypted. (Only packets routed into the interface meet these; without node
    /// encryption the node's own traffic to the peer keeps the underlay route.) A route
    /// `u dev <interface>` in [`XfrmConfig::route_table`], looked up by the rules `from l`
    /// (and node encryption's steering rules, see [`Desired::plan_node_encryption`]),
    /// steers the pods' packets into the interface; never ESP.
    fn plan_peer_underlay(&mut self, cfg: &XfrmConfig, mesh: &Mesh, peer: &Node) -> Result<()> {
        let local = &mesh.local;
        let (mine, theirs) = outer_pair(local, peer)?;
        let reqid = cfg.reqid(peer.id.get());
        let (out, back) = tmpl_pair(mine, theirs, reqid);
        let (m, u) = (IpNet::from(mine), IpNet::from(theirs));
        let mut add = |dir, src: IpNet, dst: IpNet, tmpl| {
            self.policy(Policy {
                key: PolicyKey {
                    dir,
                    src,
                    dst,
                    if_id: cfg.if_id,
                    ifindex: 0,
                    l4: L4::ANY,
                },
                priority: cfg.priority(PRIO_MESH),
                block: false,
                tmpl: Some(tmpl),
            })
        };
        let mut sources = Vec::new();
        for l in local.pod_cidrs.iter().filter(|l| same_family(l, &u)) {
            add(Dir::Out, l.trunc(), u, out);
            add(Dir::In, u, l.trunc(), back);
            add(Dir::Fwd, u, l.trunc(), back);
            sources.push(l.trunc());
        }
        for p in peer.pod_cidrs.iter().filter(|p| same_family(p, &m)) {
            add(Dir::Out, m, p.trunc(), out);
            add(Dir::In, p.trunc(), m, back);
            add(Dir::Fwd, p.trunc(), m, back);
        }
        if !sources.is_empty() {
            // only where local pods are steered to the peer's address (their NAT'd replies)
            add(Dir::Out, m, u, out);
            add(Dir::In, u, m, back);
            self.underlay_routes.entry(u).or_insert(None);
            self.rule_sources.extend(sources);
        }
        Ok(())
    }

    fn state(
        &mut self,
        cfg: &XfrmConfig,
        peer: &Node,
        key: StateKey,
        saddr: IpAddr,
        sa: &scrambler_core::SaKey,
        kind: Kind,
    ) {
        let material = sa.rfc4106_material();
        let shape = esp_shape(key, saddr, cfg.reqid(peer.id.get()), cfg.if_id, &material);
        self.states.insert(
            key,
            DesiredState {
                shape,
                material,
                peer: peer.id.get(),
                generation: sa.generation,
                inbound: kind != Kind::Outbound,
                kept: kind == Kind::Kept,
            },
        );
    }

    /// The fail-closed guard, policies without if_id in the lookup that routes through the
    /// xfrm interface skip (every supernet `S` of the mesh's `clusterCidrs` and
    /// [`XfrmConfig::guard_supernets`], per family):
    /// * block `out` anything → `S`: traffic to a pod CIDR of a node not (or no longer) in
    ///   the mesh, or whose route into the interface is missing, from a pod or from the
    ///   node itself, is dropped instead of following another route in cleartext;
    /// * block `out` each local pod CIDR (inside `S`) → each peer's underlay address: a
    ///   local pod's packet to another node's host address that the mesh does not carry
    ///   (no rule, route, interface) is dropped. Local pods only: a remote pod's reply
    ///   forwarded through this node to a peer's host is one of a NodePort's connections
    ///   (the peer's host called this node's NodePort, served by a pod on a third node),
    ///   which leaves with this node's address once the DNAT is undone;
    /// * block `in`/`fwd` `S` → local pod CIDRs: cleartext from remote pods is refused;
    /// * block `in` `S` → the local underlay addresses: cleartext from remote pods to this
    ///   node's host address is refused (decrypted, it matches the mesh's `in` policy).
    ///
    /// (Cleartext from a peer's host to local pods is not blocked here: a peer's host
    /// calling this node's NodePort, DNATed to a local pod, is such a packet on the
    /// forward path, which may see it after the DNAT; the peer's own guard, `out` anything
    /// → `S`, keeps its host's traffic to pods off its underlay.)
    ///
    /// Bypass policies keep node-local pod traffic flowing: `out` anything → local pod
    /// CIDRs, `in`/`fwd` local pod CIDRs → local pod CIDRs, `in` local pod CIDRs → the
    /// local underlay addresses.
    fn plan_guard(&mut self, cfg: &XfrmConfig, mesh: &Mesh) {
        let supernets: BTreeSet<IpNet> = mesh
            .cluster_cidrs
            .iter()
            .chain(&cfg.guard_supernets)
            .map(|c| c.trunc())
            .collect();
        self.unreachable = supernets
            .iter()
            .filter(|s| s.addr().is_ipv6())
            .copied()
            .collect();
        let guard = cfg.priority(PRIO_GUARD);
        let bypass = cfg.priority(PRIO_BYPASS);
        let mut add = |dir, src: IpNet, dst: IpNet, block| {
            self.policy(Policy {
                key: PolicyKey {
                    dir,
                    src,
                    dst,
                    if_id: 0,
                    ifindex: 0,
                    l4: L4::ANY,
                },
                priority: if block { guard } else { bypass },
                block,
                tmpl: None,
            })
        };
        let local: Vec<IpNet> = mesh.local.pod_cidrs.iter().map(|l| l.trunc()).collect();
        let local_underlay: Vec<IpNet> = mesh
            .local
            .underlay
            .iter()
            .map(|a| IpNet::from(*a))
            .collect();
        let peer_underlay: BTreeSet<IpNet> = mesh
            .peers
            .iter()
            .flat_map(|p| &p.underlay)
            .map(|a| IpNet::from(*a))
            .collect();
        for s in &supernets {
            add(Dir::Out, any(s), *s, true);
            for l in local.iter().filter(|l| same_family(s, l)) {
                add(Dir::In, *s, *l, true);
                add(Dir::Fwd, *s, *l, true);
            }
            for m in local_underlay.iter().filter(|m| same_family(s, m)) {
                add(Dir::In, *s, *m, true);
            }
        }
        let guarded_local: Vec<IpNet> = local
            .iter()
            .filter(|l| supernets.iter().any(|s| overlaps(s, l)))
            .copied()
            .collect();
        for u in peer_underlay {
            for l in guarded_local.iter().filter(|l| same_family(&u, l)) {
                add(Dir::Out, *l, u, true);
            }
        }
        let covered = local
            .iter()
            .filter(|l| supernets.iter().any(|s| overlaps(s, l)));
        for b in covered {
            add(Dir::Out, any(b), *b, false);
            for a in local.iter().filter(|a| same_family(a, b)) {
                add(Dir::In, *a, *b, false);
                add(Dir::Fwd, *a, *b, false);
            }
            for m in local_underlay.iter().filter(|m| same_family(m, b)) {
                add(Dir::In, *b, *m, false);
            }
        }
    }
}

impl Desired {
    /// The IPv6 interface bypass: IPv6 has no `disable_xfrm`, so a packet routed into the
    /// xfrm interface (a pod's packet to a remote pod or to a peer's underlay address)
    /// meets the if_id-0 lookup — the guard's slot — before the interface applies the
    /// mesh policies, and the guard's block would drop it. One allow policy without
    /// template `out ::/0 → ::/0` whose selector names the interface (`dev`: the kernel
    /// matches it against the flow's outgoing interface, the route's device for a
    /// forwarded packet), at the bypass priority, lets exactly the packets routed into the
    /// interface through that lookup; any other route has another outgoing interface and
    /// still meets the guard. A flow that names the interface itself (the node's reply on
    /// the interface a request came in on) while the route into it is missing finds
    /// [`Desired::unreachable`]'s route instead of the default one. Planned when the node
    /// has an IPv6 pod CIDR and the interface's index is known (`index`, from the link),
    /// and only into an xfrm interface with Scrambler's if_id (`xfrm_ours`): the bypass
    /// lets everything routed into the interface past the guard, so an interface that
    /// does not apply the mesh policies (another kind, another if_id, given with
    /// [`LinkMode::Existing`]) would leak; IPv6 pod CIDRs are then refused.
    ///
    /// The node's own IPv6 sockets carry no outgoing interface in that lookup (unless
    /// bound to the interface), so the host's own IPv6 traffic to remote pods meets the
    /// guard and is dropped (fail closed; see the crate's Known limits).
    pub fn plan_interface_bypass(
        &mut self,
        cfg: &XfrmConfig,
        mesh: &Mesh,
        index: u32,
        xfrm_ours: bool,
    ) -> Result<()> {
        if index == 0 || !mesh.local.pod_cidrs.iter().any(|c| c.addr().is_ipv6()) {
            return Ok(());
        }
        if !xfrm_ours {
            return Err(Error::config(format!(
                "interface {} is not an xfrm interface with if_id {:#x}: IPv6 pod CIDRs \
                 need one (IPv6 lets every packet routed into the interface past the guard, \
                 so the interface itself must encrypt or drop it); use link mode \"create\" \
                 or give an xfrm interface with that if_id",
                cfg.interface, cfg.if_id
            )));
        }
        let any6 = IpNet::V6(Default::default());
        self.policy(Policy {
            key: PolicyKey {
                dir: Dir::Out,
                src: any6,
                dst: any6,
                if_id: 0,
                ifindex: index,
                l4: L4::ANY,
            },
            priority: cfg.priority(PRIO_BYPASS),
            block: false,
            tmpl: None,
        });
        Ok(())
    }
}

/// The pods' rule of local pod CIDR `src`: `from src lookup <route_table>` at the first
/// priority of the rule band, with Scrambler's protocol.
pub(crate) fn pod_rule(cfg: &XfrmConfig, src: IpNet) -> RuleSpec {
    RuleSpec::lookup(
        cfg.rule_priority_at(RULE_PODS),
        src,
        cfg.route_table,
        cfg.route_protocol,
    )
}

/// Node encryption's bypass, steering and `nop` rules of `cfg` (shared with other
/// dataplanes: [`SteeringRules`]) at their offsets in the rule band, looking up
/// [`XfrmConfig::route_table`], marked with [`XfrmConfig::route_protocol`].
pub(crate) fn steering(cfg: &XfrmConfig) -> SteeringRules {
    SteeringRules {
        bypass: cfg.rule_priority_at(RULE_BYPASS),
        steer: cfg.rule_priority_at(RULE_STEER),
        nop: cfg.rule_priority_at(RULE_NOP),
        table: cfg.route_table,
        protocol: cfg.route_protocol,
    }
}

/// True when `r` has the exact shape of one of Scrambler's rules (see
/// [`Desired::rules`]): its protocol, no input interface, and for its priority in the rule
/// band: the pods' `from <prefix> lookup <route_table>`, node encryption's `from all
/// ipproto tcp|udp sport|dport N goto <nop>`, `from all ipproto P lookup <route_table>`
/// or `from all nop`. Reconcile and removal consider no other rule.
pub(crate) fn is_owned_rule(cfg: &XfrmConfig, r: &RuleSpec) -> bool {
    if r.priority != cfg.rule_priority_at(RULE_PODS) {
        return steering(cfg).is_owned(r);
    }
    r.src.prefix_len() != 0
        && r.ipproto.is_none()
        && r.sport.is_none()
        && r.dport.is_none()
        && r.target == RuleTarget::Table(cfg.route_table)
        && r.protocol == cfg.route_protocol
        && r.iif.is_none()
}

impl Desired {
    /// Node encryption (the mesh's `nodeEncryption`): the node's own traffic to its peers'
    /// underlay addresses rides the mesh, except ESP and the bypass ports. For every peer
    /// and each of its underlay addresses `u` of a family the local node has an underlay
    /// address `m` of (its first of that family):
    /// * mesh policies `out m → u`, `in u → m` and `fwd u → m` (if_id, the ESP template of
    ///   the peer's pair of outer addresses, which may be of the other family: states
    ///   carry both); `fwd` for the peer's host reaching a pod on another node through a
    ///   DNAT of this node's address (a NodePort), checked before the DNAT;
    /// * the route `u dev <interface> src m` in [`XfrmConfig::route_table`] (the source
    ///   makes an unbound socket's packet `m → u`, which those policies encrypt);
    /// * IPv4: a block `out m → u` at the guard's priority (if_id 0) and, for each bypass
    ///   port, allows `out m → u proto P sport N` and `… dport N` at the bypass priority.
    ///   Steered packets never meet them (a route through the interface skips the if_id-0
    ///   lookup: `disable_xfrm`); with the rules gone, the node reaches its peers on the
    ///   bypass ports only. They are part of the guard: `remove_keeping_guard` keeps them.
    ///   (IPv6 has no `disable_xfrm`: such a block would drop the steered packets too.)
    ///
    /// And per family of the local underlay addresses, in the rule band after the pods'
    /// rules: bypass rules `ipproto P sport N goto <nop>` and `… dport N goto <nop>` per
    /// bypass port, steering rules `ipproto P lookup <route_table>` for
    /// [`scrambler_netlink::steered_protocols`], and the `nop` rule the bypass rules go to (from where the
    /// lookup goes on with the rules after Scrambler's, the main table's). A destination
    /// that is not a peer's underlay address finds no route in the table and falls
    /// through too.
    pub(crate) fn plan_node_encryption(
        &mut self,
        cfg: &XfrmConfig,
        mesh: &Mesh,
        ne: &NodeEncryption,
    ) -> Result<()> {
        let local = &mesh.local;
        for peer in &mesh.peers {
            let (mine, theirs) = outer_pair(local, peer)?;
            let (out, back) = tmpl_pair(mine, theirs, cfg.reqid(peer.id.get()));
            for u in &peer.underlay {
                let Some(m) = local.underlay_for(u.is_ipv6()) else {
                    continue;
                };
                let (mn, un) = (IpNet::from(m), IpNet::from(*u));
                self.host_policy(cfg, Dir::Out, mn, un, L4::ANY, PRIO_MESH, Some(out));
                self.host_policy(cfg, Dir::In, un, mn, L4::ANY, PRIO_MESH, Some(back));
                // the peer's host calling this node's address DNATed to a pod on another
                // node (a NodePort): decrypted here and forwarded, checked with its
                // pre-DNAT addresses u → m (the pod's reply, un-NATed to m → u, is
                // steered into the interface by the rules and meets `out m → u`)
                self.host_policy(cfg, Dir::Fwd, un, mn, L4::ANY, PRIO_MESH, Some(back));
                self.underlay_routes.insert(un, Some(m));
                if u.is_ipv4() {
                    self.plan_host_block(cfg, mn, un, &ne.bypass);
                }
            }
        }
        for v6 in [false, true] {
            if local.underlay_for(v6).is_some() {
                self.plan_node_rules(cfg, v6, &ne.bypass);
            }
        }
        self.node_bypass = Some(ne.bypass.iter().flat_map(|b| bypass_l4(*b)).collect());
        Ok(())
    }

    /// A policy between two host addresses; with a template a mesh policy (if_id), without
    /// one a block (guard) or allow (bypass) at if_id 0.
    #[allow(clippy::too_many_arguments)]
    fn host_policy(
        &mut self,
        cfg: &XfrmConfig,
        dir: Dir,
        src: IpNet,
        dst: IpNet,
        l4: L4,
        prio: u32,
        tmpl: Option<Tmpl>,
    ) {
        let key = PolicyKey {
            dir,
            src,
            dst,
            if_id: if tmpl.is_some() { cfg.if_id } else { 0 },
            ifindex: 0,
            l4,
        };
        self.node_policies.insert(key.clone());
        self.policy(Policy {
            key,
            priority: cfg.priority(prio),
            block: prio == PRIO_GUARD,
            tmpl,
        });
    }

    /// IPv4's fail-closed block `out m → u` and its allows for the bypass ports.
    fn plan_host_block(&mut self, cfg: &XfrmConfig, m: IpNet, u: IpNet, bypass: &[BypassPort]) {
        self.host_policy(cfg, Dir::Out, m, u, L4::ANY, PRIO_GUARD, None);
        for l4 in bypass.iter().flat_map(|b| bypass_l4(*b)) {
            self.host_policy(cfg, Dir::Out, m, u, l4, PRIO_BYPASS, None);
        }
    }

    /// The bypass, steering and `nop` rules of one family ([`SteeringRules::rules`]).
    fn plan_node_rules(&mut self, cfg: &XfrmConfig, v6: bool, bypass: &[BypassPort]) {
        self.node_rules.extend(steering(cfg).rules(v6, bypass));
    }
}

/// The selectors of bypass port `b`'s allows: `proto P sport N` and `proto P dport N`.
fn bypass_l4(b: BypassPort) -> [L4; 2] {
    let proto = b.proto.number();
    [
        L4 {
            proto,
            sport: b.port,
            dport: 0,
        },
        L4 {
            proto,
            sport: 0,
            dport: b.port,
        },
    ]
}

/// The default route's prefix of `net`'s family.
fn any(net: &IpNet) -> IpNet {
    match net {
        IpNet::V4(_) => IpNet::V4(Default::default()),
        IpNet::V6(_) => IpNet::V6(Default::default()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use scrambler_core::{Keys, NodeId};

    pub fn node(id: u32) -> Node {
        Node {
            name: format!("n{id}"),
            id: NodeId::new(id).unwrap(),
            epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).unwrap(),
            underlay: vec![format!("192.0.2.{id}").parse().unwrap()],
            pod_cidrs: vec![format!("10.{}.{}.0/24", id / 256, id % 256)
                .parse()
                .unwrap()],
            previous_epochs: Vec::new(),
        }
    }

    pub fn mesh(local: u32, n: u32) -> Mesh {
        Mesh {
            local: node(local),
            peers: (1..=n).filter(|i| *i != local).map(node).collect(),
            keys: Keys::single(1),
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            node_encryption: None,
        }
    }

    fn key(dir: Dir, src: &str, dst: &str) -> PolicyKey {
        PolicyKey {
            dir,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            if_id: 0,
            ifindex: 0,
            l4: L4::ANY,
        }
    }

    #[test]
    fn three_policies_per_peer_pair_and_one_cluster_guard() {
        let cfg = XfrmConfig::default();
        let secret = ClusterSecret::from_bytes(vec![1; 32]).unwrap();
        let d = Desired::plan(&cfg, &mesh(1, 3), Some(&secret)).unwrap();
        // 2 peers × (3 mesh + 8 mesh with underlay addresses + 1 guard of its underlay
        // address) + 4 guard + 4 bypass
        assert_eq!(d.policies.len(), 32);
        assert_eq!(d.states.len(), 4);
        assert_eq!(d.routes.len(), 2);
        let mesh_pols = d.policies.values().filter(|p| p.tmpl.is_some()).count();
        assert_eq!(mesh_pols, 22);
        assert!(d
            .policies
            .values()
            .filter(|p| p.block)
            .all(|p| p.key.if_id == 0 && p.priority > cfg.priority_base + PRIO_MESH));
        // routes take the node's tunnel address as source
        let src = Some("10.0.1.1".parse().unwrap());
        assert!(d.routes.values().all(|s| *s == src), "{:?}", d.routes);
        assert_eq!(
            d.addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            ["10.0.1.1/32"]
        );
        // with someone else's interface: no address, no source
        let cfg = XfrmConfig {
            link: LinkMode::Existing,
            ..Default::default()
        };
        let d = Desired::plan(&cfg, &mesh(1, 3), None).unwrap();
        assert!(d.addresses.is_empty() && d.routes.values().all(Option::is_none));
    }

    /// The destinations of the plan's routes in Scrambler's table.
    fn route_keys(d: &Desired) -> BTreeSet<IpNet> {
        d.underlay_routes.keys().copied().collect()
    }

    /// The keys of the plan's block (guard) policies.
    fn block_keys(d: &Desired) -> BTreeSet<PolicyKey> {
        d.policies
            .values()
            .filter(|p| p.block)
            .map(|p| p.key.clone())
            .collect()
    }

    #[test]
    fn guard_covers_the_cluster_cidrs_without_peers() {
        let cfg = XfrmConfig::default();
        // a node alone in the mesh still guards the whole cluster
        let d = Desired::plan(&cfg, &mesh(1, 1), None).unwrap();
        let guard = block_keys(&d);
        let want = BTreeSet::from([
            key(Dir::Out, "0.0.0.0/0", "10.0.0.0/8"),
            key(Dir::In, "10.0.0.0/8", "10.0.1.0/24"),
            key(Dir::Fwd, "10.0.0.0/8", "10.0.1.0/24"),
            key(Dir::In, "10.0.0.0/8", "192.0.2.1/32"),
        ]);
        assert_eq!(guard, want);
        assert!(d.underlay_routes.is_empty() && d.rule_sources.is_empty());
        // an extra supernet of the config is guarded the same way
        let cfg = XfrmConfig {
            guard_supernets: vec!["172.16.0.0/12".parse().unwrap()],
            ..Default::default()
        };
        let d = Desired::plan(&cfg, &mesh(1, 1), None).unwrap();
        assert_eq!(d.policies.values().filter(|p| p.block).count(), 8);
        assert!(d
            .policies
            .contains_key(&key(Dir::Out, "0.0.0.0/0", "172.16.0.0/12")));
    }

    #[test]
    fn pods_sending_to_a_peers_host_address_are_blocked() {
        let d = Desired::plan(&XfrmConfig::default(), &mesh(1, 3), None).unwrap();
        for peer in ["192.0.2.2/32", "192.0.2.3/32"] {
            let p = &d.policies[&key(Dir::Out, "10.0.1.0/24", peer)];
            assert!(p.block && p.tmpl.is_none(), "{p:?}");
        }
        // never the node's own underlay address; never remote pods' packets forwarded
        // here (a NodePort's replies to a peer's host, undone to this node's address)
        assert!(!d
            .policies
            .contains_key(&key(Dir::Out, "10.0.1.0/24", "192.0.2.1/32")));
        assert!(!d.policies.keys().any(|k| k.dir == Dir::Out
            && k.if_id == 0
            && k.src == "10.0.0.0/8".parse::<IpNet>().unwrap()
            && k.dst.prefix_len() == 32));
    }

    #[test]
    fn pods_and_peers_underlay_addresses_talk_through_the_mesh() {
        let cfg = XfrmConfig::default();
        let d = Desired::plan(&cfg, &mesh(1, 3), None).unwrap();
        let mesh_key = |dir, src: &str, dst: &str| PolicyKey {
            if_id: cfg.if_id,
            ..key(dir, src, dst)
        };
        let tmpl = |src: &str, dst: &str| {
            Some(Tmpl {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                reqid: cfg.reqid(2),
            })
        };
        let (out, back) = (
            tmpl("192.0.2.1", "192.0.2.2"),
            tmpl("192.0.2.2", "192.0.2.1"),
        );
        for (dir, src, dst, t) in [
            (Dir::Out, "10.0.1.0/24", "192.0.2.2/32", out),
            (Dir::In, "192.0.2.2/32", "10.0.1.0/24", back),
            (Dir::Fwd, "192.0.2.2/32", "10.0.1.0/24", back),
            (Dir::Out, "192.0.2.1/32", "10.0.2.0/24", out),
            (Dir::In, "10.0.2.0/24", "192.0.2.1/32", back),
            (Dir::Fwd, "10.0.2.0/24", "192.0.2.1/32", back),
            (Dir::Out, "192.0.2.1/32", "192.0.2.2/32", out),
            (Dir::In, "192.0.2.2/32", "192.0.2.1/32", back),
        ] {
            let p = &d.policies[&mesh_key(dir, src, dst)];
            assert!(!p.block && p.tmpl == t, "{p:?}");
            assert_eq!(p.priority, cfg.priority(PRIO_MESH));
        }
        // cleartext from the peer's host to local pods is not (a NodePort's requests)
        for dir in [Dir::In, Dir::Fwd] {
            assert!(!d
                .policies
                .contains_key(&key(dir, "192.0.2.2/32", "10.0.1.0/24")));
        }
        let names = |s: &BTreeSet<IpNet>| s.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&route_keys(&d)), ["192.0.2.2/32", "192.0.2.3/32"]);
        // without node encryption the routes name no source
        assert!(d.underlay_routes.values().all(Option::is_none));
        assert_eq!(names(&d.rule_sources), ["10.0.1.0/24"]);
        // the node's own underlay address is never routed into the interface
        assert!(!d
            .underlay_routes
            .contains_key(&"192.0.2.1/32".parse().unwrap()));
    }

    /// ESP never loops back into the mesh: the node's ESP leaves from its underlay address
    /// (every outbound state's source, every template's outer source), which no steering
    /// rule's source covers, so its route lookup never reaches the interface's table; and
    /// the table routes only peers' addresses, never one of the node's own. Checked for
    /// every node of meshes of several sizes, and after a peer left (its tombstone kept).
    #[test]
    fn the_nodes_own_esp_is_never_steered_into_the_interface() {
        let cfg = XfrmConfig::default();
        let secret = ClusterSecret::from_bytes(vec![1; 32]).unwrap();
        let mut meshes: Vec<Mesh> = (2..=5)
            .flat_map(|n| (1..=n).map(move |l| mesh(l, n)))
            .collect();
        let mut departed = mesh(1, 3);
        departed.peers.retain(|p| p.id.get() != 3);
        meshes.push(departed);
        for m in &meshes {
            let d = Desired::plan(&cfg, m, Some(&secret)).unwrap();
            let steered = |a: &IpAddr| d.rule_sources.iter().any(|s| s.contains(a));
            let own: Vec<IpAddr> = m.local.underlay.clone();
            assert!(!own.is_empty());
            for a in &own {
                assert!(!steered(a), "{a} is a steering rule's source: {d:?}");
                assert!(!d.underlay_routes.contains_key(&IpNet::from(*a)), "{a}");
            }
            for s in d.states.values().filter(|s| !s.inbound) {
                assert!(own.contains(&s.shape.saddr) && !steered(&s.shape.saddr));
            }
            for t in d.policies.values().filter_map(|p| p.tmpl.as_ref()) {
                // outbound templates leave from the node; return templates come to it
                let mine = if own.contains(&t.src) { t.src } else { t.dst };
                assert!(own.contains(&mine) && !steered(&mine), "{t:?}");
            }
            // the table routes exactly the live peers' underlay addresses
            let peers: BTreeSet<IpNet> = m
                .peers
                .iter()
                .flat_map(|p| &p.underlay)
                .map(|a| IpNet::from(*a))
                .collect();
            assert_eq!(route_keys(&d), peers);
        }
    }

    #[test]
    fn supernet_guard_adds_local_bypass() {
        let cfg = XfrmConfig::default();
        let d = Desired::plan(&cfg, &mesh(1, 3), None).unwrap();
        assert!(d.states.is_empty());
        let bypass: BTreeSet<_> = d
            .policies
            .values()
            .filter(|p| !p.block && p.tmpl.is_none())
            .inspect(|p| assert!(p.priority < cfg.priority(PRIO_GUARD)))
            .map(|p| p.key.clone())
            .collect();
        let want = BTreeSet::from([
            key(Dir::Out, "0.0.0.0/0", "10.0.1.0/24"),
            key(Dir::In, "10.0.1.0/24", "10.0.1.0/24"),
            key(Dir::Fwd, "10.0.1.0/24", "10.0.1.0/24"),
            key(Dir::In, "10.0.1.0/24", "192.0.2.1/32"),
        ]);
        assert_eq!(bypass, want);
    }

    #[test]
    fn rotation_meshes_plan_rx_states_for_every_generation() {
        let cfg = XfrmConfig::default();
        let secret = ClusterSecret::from_bytes(vec![1; 32]).unwrap();
        let mut m = mesh(1, 2);
        m.keys = Keys {
            tx: 1,
            rx: [1, 2].into(),
        };
        let d = Desired::plan(&cfg, &m, Some(&secret)).unwrap();
        let inbound: Vec<_> = d.states.values().filter(|s| s.inbound).collect();
        assert_eq!(inbound.len(), 2);
        let out: Vec<_> = d.states.values().filter(|s| !s.inbound).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].generation, 1);
    }

    /// Node `id` of an IPv6-only underlay with dual-stack pods.
    fn node6(id: u32) -> Node {
        Node {
            underlay: vec![format!("2001:db8::{id:x}").parse().unwrap()],
            pod_cidrs: vec![
                format!("10.0.{id}.0/24").parse().unwrap(),
                format!("fd10:0:{id:x}::/64").parse().unwrap(),
            ],
            ..node(id)
        }
    }

    fn mesh6(local: u32, n: u32) -> Mesh {
        Mesh {
            local: node6(local),
            peers: (1..=n).filter(|i| *i != local).map(node6).collect(),
            keys: Keys::single(1),
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd10::/16".parse().unwrap()],
            node_encryption: None,
        }
    }

    #[test]
    fn ipv6_underlay_carries_both_pod_families_in_esp_over_ipv6() {
        let cfg = XfrmConfig::default();
        let secret = ClusterSecret::from_bytes(vec![1; 32]).unwrap();
        let d = Desired::plan(&cfg, &mesh6(1, 3), Some(&secret)).unwrap();
        let mesh_key = |dir, src: &str, dst: &str| PolicyKey {
            if_id: cfg.if_id,
            ..key(dir, src, dst)
        };
        for (id, peer, v4, v6) in [
            (2, "2001:db8::2", "10.0.2.0/24", "fd10:0:2::/64"),
            (3, "2001:db8::3", "10.0.3.0/24", "fd10:0:3::/64"),
        ] {
            let out = Tmpl {
                src: "2001:db8::1".parse().unwrap(),
                dst: peer.parse().unwrap(),
                reqid: cfg.reqid(id),
            };
            for (l, p) in [("10.0.1.0/24", v4), ("fd10:0:1::/64", v6)] {
                assert_eq!(
                    d.policies[&mesh_key(Dir::Out, l, p)].tmpl,
                    Some(out),
                    "{l} -> {p}"
                );
                for dir in [Dir::In, Dir::Fwd] {
                    let t = d.policies[&mesh_key(dir, p, l)].tmpl.unwrap();
                    assert_eq!((t.src, t.dst, t.reqid), (out.dst, out.src, out.reqid));
                }
            }
            // never a pair across families
            assert!(!d
                .policies
                .contains_key(&mesh_key(Dir::Out, "10.0.1.0/24", v6)));
            assert!(!d
                .policies
                .contains_key(&mesh_key(Dir::Out, "fd10:0:1::/64", v4)));
        }
        // one outbound and one inbound state per peer, both over IPv6
        assert_eq!(d.states.len(), 4);
        assert!(d.states.keys().all(|k| k.daddr.is_ipv6()));
        // routes of both families, each with the tunnel address of its family
        let routes: Vec<String> = d
            .routes
            .iter()
            .map(|(n, s)| format!("{n} src {}", s.unwrap()))
            .collect();
        assert_eq!(
            routes,
            [
                "10.0.2.0/24 src 10.0.1.1",
                "10.0.3.0/24 src 10.0.1.1",
                "fd10:0:2::/64 src fd10:0:1::1",
                "fd10:0:3::/64 src fd10:0:1::1",
            ]
        );
        let names = |s: &BTreeSet<IpNet>| s.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&d.addresses), ["10.0.1.1/32", "fd10:0:1::1/128"]);
        // pods reach the peers' (IPv6) underlay addresses from their IPv6 CIDR only
        assert_eq!(
            names(&route_keys(&d)),
            ["2001:db8::2/128", "2001:db8::3/128"]
        );
        assert_eq!(names(&d.rule_sources), ["fd10:0:1::/64"]);
        for (dir, src, dst) in [
            (Dir::Out, "fd10:0:1::/64", "2001:db8::2/128"),
            (Dir::In, "2001:db8::2/128", "fd10:0:1::/64"),
            (Dir::Out, "2001:db8::1/128", "fd10:0:2::/64"),
            (Dir::In, "fd10:0:2::/64", "2001:db8::1/128"),
        ] {
            assert!(
                d.policies.contains_key(&mesh_key(dir, src, dst)),
                "{dir} {src} {dst}"
            );
        }
    }

    #[test]
    fn guard_covers_both_families_of_the_cluster_cidrs() {
        let d = Desired::plan(&XfrmConfig::default(), &mesh6(1, 3), None).unwrap();
        let guard = block_keys(&d);
        let want = BTreeSet::from([
            key(Dir::Out, "0.0.0.0/0", "10.0.0.0/8"),
            key(Dir::In, "10.0.0.0/8", "10.0.1.0/24"),
            key(Dir::Fwd, "10.0.0.0/8", "10.0.1.0/24"),
            key(Dir::Out, "::/0", "fd10::/16"),
            key(Dir::In, "fd10::/16", "fd10:0:1::/64"),
            key(Dir::Fwd, "fd10::/16", "fd10:0:1::/64"),
            key(Dir::In, "fd10::/16", "2001:db8::1/128"),
            key(Dir::Out, "fd10:0:1::/64", "2001:db8::2/128"),
            key(Dir::Out, "fd10:0:1::/64", "2001:db8::3/128"),
        ]);
        assert_eq!(guard, want);
        // a pod CIDR of a family the clusterCidrs lack is refused: never unguarded
        let mut m = mesh6(1, 3);
        m.cluster_cidrs.truncate(1);
        let e = Desired::plan(&XfrmConfig::default(), &m, None).unwrap_err();
        assert!(e.to_string().contains("fd10:0:"), "{e}");
    }

    #[test]
    fn ipv6_interface_bypass_names_the_interface_and_only_with_ipv6_pods() {
        let cfg = XfrmConfig::default();
        let mut d = Desired::plan(&cfg, &mesh6(1, 2), None).unwrap();
        assert!(d.policies.keys().all(|k| k.ifindex == 0));
        d.plan_interface_bypass(&cfg, &mesh6(1, 2), 7, true)
            .unwrap();
        let bypass: Vec<_> = d.policies.values().filter(|p| p.key.ifindex != 0).collect();
        assert_eq!(bypass.len(), 1);
        let p = bypass[0];
        assert_eq!(
            p.key,
            PolicyKey {
                ifindex: 7,
                ..key(Dir::Out, "::/0", "::/0")
            }
        );
        assert!(!p.block && p.tmpl.is_none());
        // ahead of the guard it lets through
        assert!(p.priority < cfg.priority(PRIO_GUARD));
        assert_eq!(p.key.to_string(), "policy out ::/0 -> ::/0 dev #7");
        // IPv4 pods only: disable_xfrm does it, nothing planned
        let mut d = Desired::plan(&cfg, &mesh(1, 2), None).unwrap();
        let n = d.policies.len();
        d.plan_interface_bypass(&cfg, &mesh(1, 2), 7, false)
            .unwrap();
        assert_eq!(d.policies.len(), n);
    }

    #[test]
    fn ipv6_pods_are_refused_on_an_interface_that_is_not_scramblers_xfrm_interface() {
        let cfg = XfrmConfig {
            link: LinkMode::Existing,
            ..Default::default()
        };
        let mut d = Desired::plan(&cfg, &mesh6(1, 2), None).unwrap();
        let n = d.policies.len();
        let e = d
            .plan_interface_bypass(&cfg, &mesh6(1, 2), 7, false)
            .unwrap_err();
        assert!(matches!(e, Error::InvalidConfig(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("scrambler0 is not an xfrm interface with if_id 0x5c5c"),
            "{e}"
        );
        // nothing planned for it
        assert_eq!(d.policies.len(), n);
        assert!(d.policies.keys().all(|k| k.ifindex == 0));
        // the same existing interface when it is Scrambler's kind and if_id: planned
        d.plan_interface_bypass(&cfg, &mesh6(1, 2), 7, true)
            .unwrap();
        assert_eq!(d.policies.len(), n + 1);
    }

    #[test]
    fn ipv6_supernets_get_unreachable_routes_shorter_than_the_peer_routes() {
        let cfg = XfrmConfig {
            guard_supernets: vec![
                "fd99::/16".parse().unwrap(),
                "172.16.0.0/12".parse().unwrap(),
            ],
            ..Default::default()
        };
        let d = Desired::plan(&cfg, &mesh6(1, 3), None).unwrap();
        let want: BTreeSet<IpNet> = ["fd10::/16", "fd99::/16"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        // IPv6 supernets only (IPv4 has per-route disable_xfrm and an oif-strict lookup)
        assert_eq!(d.unreachable, want);
        // every IPv6 peer route into the interface is more specific than its catch-all:
        // the route wins while present, the unreachable one ends the lookup when it is not
        for r in d.routes.keys().filter(|r| r.addr().is_ipv6()) {
            let s = d.unreachable.iter().find(|s| s.contains(r)).unwrap();
            assert!(r.prefix_len() > s.prefix_len(), "{r} in {s}");
        }
        // each one is a supernet the guard blocks too
        for s in &d.unreachable {
            let guard = d
                .policies
                .get(&key(Dir::Out, "::/0", &s.to_string()))
                .unwrap();
            assert!(guard.block);
        }
        // an IPv4-only mesh plans none
        let d = Desired::plan(&XfrmConfig::default(), &mesh(1, 3), None).unwrap();
        assert!(d.unreachable.is_empty());
    }

    #[test]
    fn dual_family_underlays_pair_the_same_addresses_from_both_ends() {
        let secret = ClusterSecret::from_bytes(vec![1; 32]).unwrap();
        let cfg = XfrmConfig::default();
        // node 1 lists IPv4 first, node 2 IPv6 first, node 3 is IPv6-only
        let order = |id: u32, v6_first: bool| {
            let (a, b) = (
                format!("192.0.2.{id}").parse().unwrap(),
                format!("2001:db8::{id}").parse().unwrap(),
            );
            if v6_first {
                vec![b, a]
            } else {
                vec![a, b]
            }
        };
        let at = |local: u32| {
            let mut m = mesh(local, 3);
            for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
                n.underlay = match n.id.get() {
                    1 => order(1, false),
                    2 => order(2, true),
                    _ => vec!["2001:db8::3".parse().unwrap()],
                };
            }
            m
        };
        let plans: Vec<Desired> = (1..=3)
            .map(|i| Desired::plan(&cfg, &at(i), Some(&secret)).unwrap())
            .collect();
        // every node's outbound states go to IPv6 addresses, and each is exactly an
        // inbound state the peer plans (same daddr and SPI)
        for (i, d) in plans.iter().enumerate() {
            for (k, s) in d.states.iter().filter(|(_, s)| !s.inbound) {
                assert!(k.daddr.is_ipv6(), "node {}: {k}", i + 1);
                let peer = &plans[usize::from(s.peer) - 1];
                let theirs = peer.states.get(k).unwrap_or_else(|| panic!("{k}"));
                assert!(theirs.inbound);
                assert_eq!(theirs.shape.saddr, s.shape.saddr);
            }
        }
        // the worst case of the pairs in use sizes the interface: IPv6
        assert!(at(1).outer_v6());
        // and the rule is the core's, which the VPP dataplane uses too
        let m = at(1);
        for p in &m.peers {
            assert_eq!(
                outer_pair(&m.local, p).unwrap(),
                m.local.underlay_pair(p).unwrap()
            );
        }
    }

    #[test]
    fn an_underlay_mtu_too_small_for_ipv6_pods_is_refused() {
        let at = |mtu| XfrmConfig {
            underlay_mtu: mtu,
            ..Default::default()
        };
        // ESP over IPv6: 1357 is the least
        check_ipv6_mtu(&at(1357), &mesh6(1, 3)).unwrap();
        let e = check_ipv6_mtu(&at(1356), &mesh6(1, 3)).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string().contains("an MTU of 1276") && e.to_string().contains("at least 1357"),
            "{e}"
        );
        // ESP over IPv4 with IPv6 pods: 1337
        let mut m = mesh6(1, 3);
        for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
            n.underlay = vec![format!("192.0.2.{}", n.id.get()).parse().unwrap()];
        }
        check_ipv6_mtu(&at(1337), &m).unwrap();
        let e = check_ipv6_mtu(&at(1336), &m).unwrap_err();
        assert!(e.to_string().contains("at least 1337"), "{e}");
        // IPv4 pods only: not checked
        check_ipv6_mtu(&at(1300), &mesh(1, 3)).unwrap();
    }

    #[test]
    fn peers_without_an_underlay_address_of_our_family_are_refused() {
        let mut m = mesh6(1, 2);
        m.peers[0].underlay = vec!["192.0.2.2".parse().unwrap()];
        let e = Desired::plan(&XfrmConfig::default(), &m, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("no underlay address family in common"),
            "{e}"
        );
        // a peer with both families, its IPv6 address first: ESP over IPv6
        m.peers[0].underlay = vec!["2001:db8::2".parse().unwrap(), "192.0.2.2".parse().unwrap()];
        let d = Desired::plan(&XfrmConfig::default(), &m, None).unwrap();
        assert!(d
            .policies
            .values()
            .filter_map(|p| p.tmpl)
            .all(|t| t.dst.is_ipv6() || t.src.is_ipv6()));
    }

    /// The states planned for the known-answer nodes carry exactly the vectors' SPIs and
    /// key‖salt, in the XFRM_MSG_NEWSA sent to the kernel.
    #[test]
    fn planned_states_carry_the_known_answer_vectors() {
        use netlink_packet_xfrm::{XfrmAttrs, XfrmMessage};
        use scrambler_core::keys::kat;
        let with = |inc: scrambler_core::Incarnation, n: u32| Node {
            id: inc.id,
            epoch: inc.epoch,
            ..node(n)
        };
        let m = Mesh {
            local: with(kat::A, 1),
            peers: vec![with(kat::B, 2)],
            keys: Keys::single(7),
            cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            node_encryption: None,
        };
        let d = Desired::plan(&XfrmConfig::default(), &m, Some(&kat::secret())).unwrap();
        for (inbound, (_, _, _, key, salt, spi)) in
            [(false, kat::VECTORS[0]), (true, kat::VECTORS[1])]
        {
            let s = d.states.values().find(|s| s.inbound == inbound).unwrap();
            assert_eq!(s.shape.key.spi, spi);
            let XfrmMessage::AddSa(msg) = s.add_msg() else {
                panic!("not a NEWSA")
            };
            assert_eq!(msg.user_sa_info.id.spi, spi);
            // both inner families through one SA (dual-stack pods), ESN
            assert_eq!(
                msg.user_sa_info.flags,
                netlink_packet_xfrm::XFRM_STATE_AF_UNSPEC | netlink_packet_xfrm::XFRM_STATE_ESN
            );
            let aead = msg
                .nlas
                .iter()
                .find_map(|a| match a {
                    XfrmAttrs::EncryptionAlgAead(a) => Some(a),
                    _ => None,
                })
                .unwrap();
            assert_eq!(hex::encode(&aead.alg_key), format!("{key}{salt}"));
        }
        // node 1 took epoch A2 and keeps A: its kept inbound state from node 2 is the
        // vector of B → A, the current one B → A2
        let mut m = m;
        m.local.epoch = kat::A2.epoch;
        m.local.previous_epochs = vec![scrambler_core::PreviousEpoch {
            epoch: kat::A.epoch,
            until: 2000,
        }];
        let secret = kat::secret();
        let d = Desired::plan_at(&XfrmConfig::default(), &m, Some(&secret), 1999).unwrap();
        let (_, _, _, key, salt, spi) = kat::VECTORS[1];
        let kept: Vec<_> = d.states.values().filter(|s| s.kept).collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].shape.key.spi, spi);
        assert_eq!(hex::encode(&kept[0].material), format!("{key}{salt}"));
        let current = d.states.values().find(|s| s.inbound && !s.kept).unwrap();
        assert_eq!(
            current.shape.key.spi,
            scrambler_core::keys::spi(kat::B, kat::A2, 7)
        );
        assert_ne!(current.shape.key.spi, spi);
        let d = Desired::plan_at(&XfrmConfig::default(), &m, Some(&secret), 2000).unwrap();
        assert!(d.states.values().all(|s| !s.kept));
    }

    fn with_node_encryption(mut m: Mesh, bypass: &[&str]) -> Mesh {
        m.node_encryption = Some(scrambler_core::NodeEncryption {
            bypass: bypass.iter().map(|b| b.parse().unwrap()).collect(),
        });
        m
    }

    /// The first table a route lookup of (`proto`, `sport`, `dport`, from `src`) reaches
    /// through `rules` (Scrambler's only: the kernel's own rules aside), following `goto`s
    /// as the kernel does; `None` when it falls through them.
    fn lookup(
        rules: &BTreeSet<RuleSpec>,
        src: IpAddr,
        proto: u8,
        sport: u16,
        dport: u16,
    ) -> Option<u32> {
        let mut sorted: Vec<&RuleSpec> = rules.iter().collect();
        sorted.sort_by_key(|r| r.priority);
        let mut from = 0;
        for r in sorted {
            if r.priority < from || r.src.addr().is_ipv6() != src.is_ipv6() {
                continue;
            }
            let hit = r.src.contains(&src)
                && r.ipproto.is_none_or(|p| p == proto)
                && r.sport.is_none_or(|p| p == sport)
                && r.dport.is_none_or(|p| p == dport);
            if !hit {
                continue;
            }
            match r.target {
                RuleTarget::Table(t) => return Some(t),
                RuleTarget::Goto(p) => from = p,
                RuleTarget::Nop => {}
            }
        }
        None
    }

    #[test]
    fn node_encryption_steers_host_traffic_except_esp_and_the_bypass_ports() {
        let cfg = XfrmConfig::default();
        let m = with_node_encryption(mesh(1, 3), &["tcp/2379", "udp/53"]);
        let d = Desired::plan(&cfg, &m, None).unwrap();
        let rules = d.rules(&cfg);
        assert!(rules.iter().all(|r| is_owned_rule(&cfg, r)), "{rules:?}");
        // IPv4 underlay: 2 ports × (sport, dport) bypass, 4 steering, 1 nop, 1 pods' rule
        assert_eq!(d.node_rules.len(), 9);
        let at = |off| cfg.rule_priority_at(off);
        for r in &d.node_rules {
            // after the pods' rule; bypass before steering, the nop after both
            assert!(r.priority > at(RULE_PODS));
            match r.target {
                RuleTarget::Goto(to) => {
                    assert_eq!((r.priority, to), (at(RULE_BYPASS), at(RULE_NOP)));
                    assert!(r.sport.is_some() != r.dport.is_some());
                }
                RuleTarget::Table(t) => {
                    assert_eq!((r.priority, t), (at(RULE_STEER), cfg.route_table));
                    // no steering rule can match ESP: it names a protocol, never 0 or 50
                    assert!(r.ipproto.is_some_and(|p| p != 0 && p != 50), "{r:?}");
                }
                RuleTarget::Nop => assert_eq!(r.priority, at(RULE_NOP)),
            }
        }
        let me: IpAddr = "192.0.2.1".parse().unwrap();
        // ESP's outer lookup (protocol 0 on older kernels, 50 on newer ones): the main table
        for proto in [0, 50] {
            assert_eq!(lookup(&rules, me, proto, 0, 0), None, "protocol {proto}");
        }
        // the bypass ports, as source or destination: the main table
        for (proto, sport, dport) in [
            (6, 40000, 2379),
            (6, 2379, 40000),
            (17, 53, 5353),
            (17, 5353, 53),
        ] {
            assert_eq!(lookup(&rules, me, proto, sport, dport), None);
        }
        // everything else of the steered protocols: Scrambler's table
        for (proto, sport, dport) in [(6, 40000, 8080), (17, 40000, 2379), (1, 0, 0), (132, 1, 2)] {
            assert_eq!(
                lookup(&rules, me, proto, sport, dport),
                Some(cfg.route_table)
            );
        }
        // whose routes are the peers' underlay addresses from the node's own
        let routes: Vec<String> = d
            .underlay_routes
            .iter()
            .map(|(u, src)| format!("{u} src {}", src.unwrap()))
            .collect();
        assert_eq!(
            routes,
            ["192.0.2.2/32 src 192.0.2.1", "192.0.2.3/32 src 192.0.2.1"]
        );
    }

    #[test]
    fn node_encryption_plans_host_mesh_policies_an_ipv4_block_and_its_allows() {
        let cfg = XfrmConfig::default();
        let m = with_node_encryption(mesh(1, 3), &["tcp/2379", "tcp/22"]);
        let d = Desired::plan(&cfg, &m, None).unwrap();
        let mesh_key = |dir, src: &str, dst: &str| PolicyKey {
            if_id: cfg.if_id,
            ..key(dir, src, dst)
        };
        for (id, u) in [(2, "192.0.2.2/32"), (3, "192.0.2.3/32")] {
            let t = |src: &str, dst: &str| Tmpl {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                reqid: cfg.reqid(id),
            };
            let peer = u.trim_end_matches("/32");
            let out = &d.policies[&mesh_key(Dir::Out, "192.0.2.1/32", u)];
            assert_eq!(out.tmpl, Some(t("192.0.2.1", peer)));
            let back = &d.policies[&mesh_key(Dir::In, u, "192.0.2.1/32")];
            assert_eq!(back.tmpl, Some(t(peer, "192.0.2.1")));
            // fwd u → m: a peer's host reaching a pod on another node through a DNAT of
            // this node's address (a NodePort), checked with its pre-DNAT addresses
            let fwd = &d.policies[&mesh_key(Dir::Fwd, u, "192.0.2.1/32")];
            assert_eq!(fwd.tmpl, Some(t(peer, "192.0.2.1")));
            assert!(d.node_policies.contains(&fwd.key));
            // the block, in the guard's slot (if_id 0, guard priority)
            let block = &d.policies[&key(Dir::Out, "192.0.2.1/32", u)];
            assert!(block.block && block.tmpl.is_none());
            assert_eq!(block.priority, cfg.priority(PRIO_GUARD));
            // one allow per bypass port and side, ahead of the block
            let allows: Vec<String> = d
                .policies
                .values()
                .filter(|p| !p.key.l4.is_any() && p.key.dst.to_string() == u)
                .inspect(|p| {
                    assert!(!p.block && p.tmpl.is_none() && p.key.if_id == 0);
                    assert!(p.priority < block.priority);
                })
                .map(|p| p.key.l4.to_string())
                .collect();
            assert_eq!(allows.len(), 4);
            for l4 in [
                " proto 6 sport 22",
                " proto 6 dport 22",
                " proto 6 sport 2379",
                " proto 6 dport 2379",
            ] {
                assert!(allows.iter().any(|a| a == l4), "{l4}: {allows:?}");
            }
        }
        // every one of them is Scrambler's as found in a dump, and none is a tombstone once
        // node encryption is off (turning it off removes them all)
        let off = Desired::plan(&cfg, &mesh(1, 3), None).unwrap();
        for p in d.policies.values() {
            let found = crate::model::FoundPolicy {
                policy: p.clone(),
                index: 0,
                unusual: false,
            };
            assert!(crate::diff::owns_policy(&cfg, &found), "{p:?}");
            if d.node_policies.contains(&p.key) {
                assert!(!off.is_underlay_tombstone(&cfg, p), "{p:?}");
            }
        }
        // 2 peers × (block + 4 allows + out/in/fwd mesh)
        assert_eq!(d.node_policies.len(), 16);
    }

    #[test]
    fn a_departed_peers_table_route_is_a_tombstone_only_with_node_encryption() {
        let cfg = XfrmConfig::default();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        let on = Desired::plan(&cfg, &with_node_encryption(mesh(1, 2), &[]), None).unwrap();
        // a departed peer's address, of either family: kept
        assert!(on.is_underlay_route_tombstone(&net("192.0.2.3/32")));
        assert!(on.is_underlay_route_tombstone(&net("2001:db8::3/128")));
        // a planned route is not a tombstone (its source is reconciled), nor a local address
        // or a prefix
        assert!(!on.is_underlay_route_tombstone(&net("192.0.2.2/32")));
        assert!(!on.is_underlay_route_tombstone(&net("192.0.2.1/32")));
        assert!(!on.is_underlay_route_tombstone(&net("192.0.2.0/24")));
        // node encryption off: none
        let off = Desired::plan(&cfg, &mesh(1, 2), None).unwrap();
        assert!(!off.is_underlay_route_tombstone(&net("192.0.2.3/32")));
    }

    #[test]
    fn node_encryption_off_plans_none_of_it() {
        let cfg = XfrmConfig::default();
        let off = Desired::plan(&cfg, &mesh(1, 3), None).unwrap();
        let on =
            Desired::plan(&cfg, &with_node_encryption(mesh(1, 3), &["tcp/2379"]), None).unwrap();
        assert!(off.node_rules.is_empty() && off.node_policies.is_empty());
        assert!(off.policies.keys().all(|k| k.l4.is_any()));
        assert_eq!(off.rules(&cfg).len(), 1);
        assert!(off.underlay_routes.values().all(Option::is_none));
        // on adds to off: the block, allows and `fwd u → m` (the node has pods: the mesh
        // policies `out m → u`, `in u → m` are the pods' too), the rules, the routes' source
        let added: Vec<String> = on
            .policies
            .keys()
            .filter(|k| !off.policies.contains_key(k))
            .map(|k| k.to_string())
            .collect();
        assert_eq!(added.len(), 2 * 4, "{added:?}");
        assert!(off.policies.keys().all(|k| on.policies.contains_key(k)));
        assert_eq!(
            on.underlay_routes.keys().collect::<Vec<_>>(),
            off.underlay_routes.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn node_encryption_without_local_pods_of_the_family_and_over_ipv6() {
        let cfg = XfrmConfig::default();
        // IPv6 underlay, IPv4 pods only: no pods' rule or route to the peers' addresses,
        // node encryption plans them all the same
        let mut m = mesh6(1, 2);
        for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
            n.pod_cidrs.truncate(1);
        }
        m.cluster_cidrs.truncate(1);
        let off = Desired::plan(&cfg, &m, None).unwrap();
        assert!(off.underlay_routes.is_empty() && off.rule_sources.is_empty());
        let d = Desired::plan(&cfg, &with_node_encryption(m, &["tcp/2379"]), None).unwrap();
        let mesh_key = |dir, src: &str, dst: &str| PolicyKey {
            if_id: cfg.if_id,
            ..key(dir, src, dst)
        };
        assert!(d
            .policies
            .contains_key(&mesh_key(Dir::Out, "2001:db8::1/128", "2001:db8::2/128")));
        assert!(d
            .policies
            .contains_key(&mesh_key(Dir::In, "2001:db8::2/128", "2001:db8::1/128")));
        assert_eq!(
            d.underlay_routes.get(&"2001:db8::2/128".parse().unwrap()),
            Some(&Some("2001:db8::1".parse().unwrap()))
        );
        // no IPv6 block: it would drop the steered packets too (no disable_xfrm)
        assert!(!d
            .policies
            .values()
            .any(|p| p.block && p.key.src.prefix_len() == 128));
        assert!(d.policies.keys().all(|k| k.l4.is_any()));
        // IPv6 rules only, ICMPv6 among them, never ESP
        assert!(d.node_rules.iter().all(|r| r.src.addr().is_ipv6()));
        assert!(d.node_rules.iter().any(|r| r.ipproto == Some(58)));
        let me: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(lookup(&d.rules(&cfg), me, 50, 0, 0), None);
        assert_eq!(lookup(&d.rules(&cfg), me, 58, 0, 0), Some(cfg.route_table));
    }

    #[test]
    fn node_encryption_on_a_dual_stack_underlay_covers_both_families_in_one_pair() {
        let cfg = XfrmConfig::default();
        let mut m = mesh(1, 2);
        for n in std::iter::once(&mut m.local).chain(m.peers.iter_mut()) {
            let id = n.id.get();
            n.underlay = vec![
                format!("192.0.2.{id}").parse().unwrap(),
                format!("2001:db8::{id}").parse().unwrap(),
            ];
        }
        let d = Desired::plan(&cfg, &with_node_encryption(m, &[]), None).unwrap();
        // IPv4 host traffic inside ESP over IPv6 (the pair's family)
        let out4 = &d.policies[&PolicyKey {
            if_id: cfg.if_id,
            ..key(Dir::Out, "192.0.2.1/32", "192.0.2.2/32")
        }];
        assert_eq!(
            out4.tmpl.unwrap().dst,
            "2001:db8::2".parse::<IpAddr>().unwrap()
        );
        assert!(d.policies[&key(Dir::Out, "192.0.2.1/32", "192.0.2.2/32")].block);
        assert!(d.policies.contains_key(&PolicyKey {
            if_id: cfg.if_id,
            ..key(Dir::Out, "2001:db8::1/128", "2001:db8::2/128")
        }));
        assert_eq!(d.underlay_routes.len(), 2);
        // rules of both families: 4 steering and a nop each (no bypass port)
        assert_eq!(d.node_rules.len(), 10);
    }
}
