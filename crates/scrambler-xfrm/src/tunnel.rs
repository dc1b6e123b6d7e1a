//! [`XfrmTunnel`]: the [`Tunnel`] implementation tying plan, diff, netlink and routes.

use crate::config::{LinkMode, XfrmConfig};
use crate::diff::{diff, owns_policy, owns_state, Changes};
use crate::link::{self, disable_xfrm_lookup, LinkChange};
use crate::model::{
    delete_state_msg, family, policy_dump_msg, state_dump_msg, DesiredState, FoundPolicy,
    FoundState, StateKey,
};
use crate::nl::{self, Request, Scrubbed, XfrmSocket};
use crate::plan::Desired;
use crate::status::{self, Observed};
use async_trait::async_trait;
use netlink_packet_xfrm::XfrmMessage;
use scrambler_core::{
    esp, ClusterSecret, Error, Mesh, Netns, ReconcileReport, Result, Tunnel, TunnelStatus,
};
use scrambler_netlink::Nl;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// The kernel IPsec dataplane: an ESP tunnel-mode full mesh, route-based through one
/// xfrm interface per node, fail-closed, reconciled by diffing XFRM dumps.
///
/// ```no_run
/// use scrambler_core::{ClusterSecret, Cluster, Netns, Tunnel};
/// use scrambler_xfrm::{StatusTable, XfrmConfig, XfrmTunnel};
/// # async fn run(cluster: Cluster) -> scrambler_core::Result<()> {
/// let tunnel = XfrmTunnel::new(XfrmConfig::default())?;
/// let secret = ClusterSecret::from_file("/etc/scrambler/cluster.key".as_ref())?;
/// let mesh = cluster.mesh_for("node1")?;
/// let node = Netns::named("node1");
/// let report = tunnel.reconcile(&node, &mesh, &secret).await?;
/// println!("{} added, {} updated, {} removed", report.added, report.updated, report.removed);
/// println!("{}", StatusTable(&tunnel.status(&node, &mesh).await?));
/// println!("pod MTU on a 1500 B underlay: {}", tunnel.pod_mtu(1500));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct XfrmTunnel {
    cfg: XfrmConfig,
}

/// What a kernel can do, as found by [`XfrmTunnel::probe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// ESP tunnel states with `rfc4106(gcm(aes))`, ESN and if_id can be installed.
    pub esp_states: bool,
}

pub(crate) struct Dumped {
    pub policies: Vec<FoundPolicy>,
    pub states: Vec<FoundState>,
}

impl XfrmTunnel {
    /// A tunnel with `cfg` (validated).
    pub fn new(cfg: XfrmConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(XfrmTunnel { cfg })
    }

    /// Its configuration.
    pub fn config(&self) -> &XfrmConfig {
        &self.cfg
    }

    /// ESP overhead in bytes for an IPv4 (`false`) or IPv6 (`true`) underlay.
    pub fn overhead(&self, outer_v6: bool) -> u32 {
        esp::esp_overhead(outer_v6)
    }

    /// The MTU for pod interfaces on an IPv4 underlay of `underlay_mtu` (the CNI uses it
    /// for pod veths): ESP overhead subtracted, rounded down for padding.
    pub fn pod_mtu(&self, underlay_mtu: u32) -> u32 {
        esp::pod_mtu(underlay_mtu, false)
    }

    /// The MTU Scrambler gives its xfrm interface: [`XfrmConfig::underlay_mtu`] minus the
    /// ESP overhead of the outer family.
    pub fn interface_mtu(&self, outer_v6: bool) -> u32 {
        esp::pod_mtu(self.cfg.underlay_mtu, outer_v6)
    }

    /// Probes whether the kernel of `netns` can hold Scrambler's ESP states, by adding a
    /// throw-away state (marked as Scrambler's, to 127.0.0.2) and deleting it again.
    pub async fn probe(&self, netns: &Netns) -> Result<Capabilities> {
        let cfg = self.cfg.clone();
        netns
            .run_async(move || {
                let mut sock = XfrmSocket::open()?;
                let material = Zeroizing::new(vec![0x5c; 20]);
                let key = StateKey {
                    daddr: "127.0.0.2"
                        .parse()
                        .map_err(|_| Error::config("probe address"))?,
                    spi: 0xffff_ff5c,
                };
                let probe = DesiredState {
                    shape: crate::model::esp_shape(
                        key,
                        "127.0.0.1"
                            .parse()
                            .map_err(|_| Error::config("probe address"))?,
                        cfg.reqid_base,
                        cfg.if_id,
                        &material,
                    ),
                    material,
                    peer: 0,
                    generation: 0,
                    inbound: true,
                    kept: false,
                };
                let reqs = vec![
                    request(probe.add_msg(), "add xfrm state", "probe state"),
                    request(
                        delete_state_msg(&key, family(&key.daddr)),
                        "delete xfrm state",
                        "probe state",
                    ),
                ];
                let res = send(&mut sock, reqs)?;
                match &res[0] {
                    Ok(()) => Ok(Capabilities { esp_states: true }),
                    Err(e) => match nl::to_error("add xfrm state", "probe state", e) {
                        Error::Unsupported(_) => Ok(Capabilities { esp_states: false }),
                        Error::AlreadyExists { .. } => Ok(Capabilities { esp_states: true }),
                        other => Err(other),
                    },
                }
            })
            .await
    }

    async fn open_xfrm(netns: &Netns) -> Result<XfrmSocket> {
        netns.run_async(XfrmSocket::open).await
    }

    async fn dump(sock: XfrmSocket) -> Result<(XfrmSocket, Dumped)> {
        blocking(sock, dump_owned_and_foreign).await
    }

    async fn run_phase(sock: XfrmSocket, reqs: Vec<Request>) -> Result<XfrmSocket> {
        if reqs.is_empty() {
            return Ok(sock);
        }
        let (sock, ()) = blocking(sock, move |s| {
            let res = s.execute(&reqs)?;
            let mut first = None;
            let mut failed = 0usize;
            for (r, req) in res.iter().zip(&reqs) {
                match r {
                    Ok(()) => {}
                    Err(e) if req.op.starts_with("delete") && e.errno == nix::libc::ENOENT => {}
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(op = req.op, object = %req.object, error = %e, "xfrm request refused");
                        first.get_or_insert_with(|| nl::to_error(req.op, &req.object, e));
                    }
                }
            }
            match first {
                None => Ok(()),
                Some(e) if failed == 1 => Err(e),
                Some(e) => Err(annotate(e, failed)),
            }
        })
        .await?;
        Ok(sock)
    }
}

fn annotate(e: Error, failed: usize) -> Error {
    match e {
        Error::Kernel { op, object, reason } => Error::Kernel {
            op,
            object,
            reason: format!("{reason} (and {} more requests refused)", failed - 1),
        },
        other => other,
    }
}

fn request(msg: XfrmMessage, op: &'static str, object: &str) -> Request {
    Request {
        msg: nl::Scrubbed(msg),
        op,
        object: object.to_string(),
    }
}

/// Sends requests (their key material is zeroed when they are dropped here).
fn send(sock: &mut XfrmSocket, reqs: Vec<Request>) -> Result<Vec<Result<(), nl::NlError>>> {
    sock.execute(&reqs)
}

/// Runs blocking socket work off the async runtime, handing the socket back.
async fn blocking<T, F>(mut sock: XfrmSocket, f: F) -> Result<(XfrmSocket, T)>
where
    T: Send + 'static,
    F: FnOnce(&mut XfrmSocket) -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let v = f(&mut sock)?;
        Ok((sock, v))
    })
    .await
    .map_err(|e| Error::kernel("run xfrm requests", "task", e))?
}

fn dump_owned_and_foreign(s: &mut XfrmSocket) -> Result<Dumped> {
    let policies = s.dump(policy_dump_msg(), "xfrm policies")?;
    let states = s.dump(state_dump_msg(), "xfrm states")?;
    Ok(dumped_from(&policies, states))
}

/// The policies and states Scrambler can describe among dump answers; key material in the
/// state answers is scrubbed.
pub(crate) fn dumped_from(
    policy_answers: &[Scrubbed<XfrmMessage>],
    state_answers: Vec<Scrubbed<XfrmMessage>>,
) -> Dumped {
    let policies = policy_answers
        .iter()
        .filter_map(|m| match &**m {
            XfrmMessage::AddPolicy(p) | XfrmMessage::UpdatePolicy(p) => FoundPolicy::parse(p),
            _ => None,
        })
        .collect();
    let mut states = Vec::new();
    for mut m in state_answers {
        if let XfrmMessage::AddSa(st) | XfrmMessage::UpdateSa(st) = &mut *m {
            if let Some(f) = FoundState::parse(st) {
                states.push(f);
            }
        }
    }
    Dumped { policies, states }
}

#[async_trait]
impl Tunnel for XfrmTunnel {
    async fn reconcile(
        &self,
        netns: &Netns,
        mesh: &Mesh,
        secret: &ClusterSecret,
    ) -> Result<ReconcileReport> {
        netns.check()?;
        let cfg = &self.cfg;
        let mut desired = Desired::plan(cfg, mesh, cfg.program_states.then_some(secret))?;
        crate::plan::check_ipv6_mtu(cfg, mesh)?;
        let outer_v6 = mesh.outer_v6();
        let rtnl = Nl::open(netns).await?;
        let iface = link::ensure_interface(&rtnl, cfg, self.interface_mtu(outer_v6)).await?;
        let (index, link_changed) = (iface.index, iface.changed);
        desired.plan_interface_bypass(cfg, mesh, index, iface.xfrm_ours)?;
        let mut addresses_added = 0;
        if cfg.link == LinkMode::Create {
            disable_xfrm_lookup(netns, &cfg.interface).await?;
            link::loose_reverse_path(netns, &cfg.interface).await?;
            addresses_added =
                link::ensure_addresses(&rtnl, &cfg.interface, &desired.addresses).await?;
        }

        let sock = Self::open_xfrm(netns).await?;
        let (sock, found) = Self::dump(sock).await?;
        let Changes {
            phases,
            mut report,
            lost_outbound,
        } = diff(
            cfg,
            &desired,
            &found.policies,
            &found.states,
            cfg.program_states,
        )?;
        match link_changed {
            LinkChange::Created => report.added += 1,
            LinkChange::Updated => report.updated += 1,
            LinkChange::None => {}
        }
        report.added += addresses_added;
        // the unreachable routes before the bypass that needs them, and before any route
        // into the interface can go (below)
        let added = link::add_unreachable(&rtnl, cfg, &desired.unreachable).await?;
        report.added += added;
        report.unchanged += desired.unreachable.len() - added;
        let [guard, inbound, policies, outbound, deletes] = phases;
        let mut sock = sock;
        for phase in [guard, inbound, policies, outbound] {
            sock = Self::run_phase(sock, phase).await?;
        }

        // routes into the interface only once states and policies are in place; a route
        // whose source changed goes before its replacement comes (the guard drops meanwhile)
        let have = link::owned_routes(&rtnl, index, cfg.route_protocol).await?;
        let missing: link::Routes = desired
            .routes
            .iter()
            .filter(|(n, src)| have.get(n) != Some(src))
            .map(|(n, src)| (*n, *src))
            .collect();
        let stale = link::routes(
            have.iter()
                .filter(|(n, src)| desired.routes.get(n) != Some(src)),
            index,
            cfg.route_protocol,
        );
        report.added += missing.len();
        report.removed += stale.len();
        report.unchanged += desired.routes.len() - missing.len();
        rtnl.delete_routes(&stale).await?;
        link::add_routes(&rtnl, &missing, index, cfg.route_protocol).await?;
        let rules = desired.rules(cfg);
        let (added, removed) = link::sync_underlay_steering(
            &rtnl,
            cfg,
            index,
            &desired.underlay_routes,
            |n| desired.is_underlay_route_tombstone(n),
            &rules,
        )
        .await?;
        report.added += added;
        report.removed += removed;
        report.unchanged += (desired.underlay_routes.len() + rules.len()).saturating_sub(added);

        Self::run_phase(sock, deletes).await?;
        // stale unreachable routes (a supernet no longer guarded) after its guard went
        report.removed += link::delete_unreachable_except(&rtnl, cfg, &desired.unreachable).await?;
        if !lost_outbound.is_empty() {
            tracing::error!(
                netns = %netns,
                ?lost_outbound,
                "outbound SAs lost: traffic to these peers is dropped until a key rotation"
            );
        }
        tracing::debug!(netns = %netns, ?report, "xfrm mesh reconciled");
        Ok(report)
    }

    async fn status(&self, netns: &Netns, mesh: &Mesh) -> Result<TunnelStatus> {
        netns.check()?;
        let (found, stat) = netns
            .run_async(|| {
                let mut s = XfrmSocket::open()?;
                let d = dump_owned_and_foreign(&mut s)?;
                Ok((d, status::read_xfrm_stat()))
            })
            .await?;
        let rtnl = Nl::open(netns).await?;
        let (routes, table_routes) = match rtnl.link_by_name(&self.cfg.interface).await? {
            Some(l) => (
                Some(link::owned_routes(&rtnl, l.index, self.cfg.route_protocol).await?),
                Some(link::owned_table_routes(&rtnl, &self.cfg, l.index).await?),
            ),
            None => (None, None),
        };
        let unreachable = link::owned_unreachable(&rtnl, &self.cfg).await?;
        let rules = link::owned_rules(&rtnl, &self.cfg).await?;
        status::build(
            &self.cfg,
            mesh,
            Observed {
                policies: &found.policies,
                states: &found.states,
                routes: routes.as_ref(),
                table_routes: table_routes.as_ref(),
                rules: &rules,
                unreachable: &unreachable,
                xfrm_stat: stat,
            },
        )
    }

    async fn remove(&self, netns: &Netns) -> Result<ReconcileReport> {
        self.remove_owned(netns, true).await
    }

    async fn remove_keeping_guard(&self, netns: &Netns) -> Result<ReconcileReport> {
        self.remove_owned(netns, false).await
    }
}

impl XfrmTunnel {
    /// Removes Scrambler's rules, routes, mesh policies, states and the interface; the
    /// guard's block and bypass policies too when `guard` is true (last, after everything
    /// it protects).
    async fn remove_owned(&self, netns: &Netns, guard: bool) -> Result<ReconcileReport> {
        netns.check()?;
        let cfg = &self.cfg;
        let mut report = ReconcileReport::default();
        let rtnl = Nl::open(netns).await?;
        let link = rtnl.link_by_name(&cfg.interface).await?;
        report.removed +=
            link::remove_underlay_steering(&rtnl, cfg, link.as_ref().map(|l| l.index)).await?;
        if let Some(l) = link {
            let owned = link::owned_routes(&rtnl, l.index, cfg.route_protocol).await?;
            report.removed += owned.len();
            rtnl.delete_routes(&link::routes(&owned, l.index, cfg.route_protocol))
                .await?;
        }
        let sock = Self::open_xfrm(netns).await?;
        let (sock, found) = Self::dump(sock).await?;
        let mut reqs = Vec::new();
        // mesh policies and states first, the guard (block and bypass policies) last
        let (mesh_pols, guard_pols): (Vec<&FoundPolicy>, Vec<&FoundPolicy>) = found
            .policies
            .iter()
            .filter(|p| owns_policy(cfg, p))
            .partition(|p| p.policy.tmpl.is_some());
        for p in mesh_pols {
            reqs.push(request(
                p.delete_msg(),
                "delete xfrm policy",
                &p.policy.key.to_string(),
            ));
        }
        for s in found.states.iter().filter(|s| owns_state(cfg, s)) {
            reqs.push(request(
                s.delete_msg(),
                "delete xfrm state",
                &s.shape.key.to_string(),
            ));
        }
        if guard {
            for p in guard_pols {
                reqs.push(request(
                    p.delete_msg(),
                    "delete xfrm policy",
                    &p.policy.key.to_string(),
                ));
            }
        }
        report.removed += reqs.len();
        Self::run_phase(sock, reqs).await?;
        if guard {
            // after the bypass policy: until then a missing route into the interface
            // must not lead to the default route
            report.removed +=
                link::delete_unreachable_except(&rtnl, cfg, &Default::default()).await?;
        }
        if link::delete_interface(&rtnl, cfg).await? {
            report.removed += 1;
        }
        Ok(report)
    }
}

/// Counts of Scrambler-owned XFRM objects in a namespace (for tests, tools and
/// embedders checking what is installed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Owned policies by kind: `mesh`, `guard`, `bypass`.
    pub policies: BTreeMap<&'static str, usize>,
    /// Owned states.
    pub states: usize,
    /// Policies and states of others.
    pub foreign: usize,
}

impl XfrmTunnel {
    /// What Scrambler owns in `netns`, and how many foreign XFRM objects are beside it.
    pub async fn inventory(&self, netns: &Netns) -> Result<Inventory> {
        let d = netns
            .run_async(|| {
                let mut s = XfrmSocket::open()?;
                dump_owned_and_foreign(&mut s)
            })
            .await?;
        let mut inv = Inventory::default();
        for p in &d.policies {
            if owns_policy(&self.cfg, p) {
                let kind = match (&p.policy.tmpl, p.policy.block) {
                    (Some(_), _) => "mesh",
                    (None, true) => "guard",
                    (None, false) => "bypass",
                };
                *inv.policies.entry(kind).or_default() += 1;
            } else {
                inv.foreign += 1;
            }
        }
        for s in &d.states {
            if owns_state(&self.cfg, s) {
                inv.states += 1;
            } else {
                inv.foreign += 1;
            }
        }
        Ok(inv)
    }
}
