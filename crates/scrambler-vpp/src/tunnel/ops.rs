//! The VPP calls of the tunnel dataplane, one API request each (or a few sent together),
//! and the pipelining of independent work on the one API socket.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use scrambler_core::{Error, Result};
use scrambler_vpp_api::api::types::{
    Address, FibPath, IfStatusFlags, IpRoute, IpipTunnel, IpsecTunnelProtect, TunnelMode,
};
use scrambler_vpp_api::api::{interface, ip, ipip, ipsec};
use scrambler_vpp_api::VppClient;

use super::ids::TAG_PREFIX;
use super::plan::{route_path, sa_entry, PeerPlan, RouteTarget, SaPlan};
use super::readback::OwnedRoute;
use crate::endpoint::{vpp_err, DATAPLANE};

/// The VPP calls of the tunnel dataplane on one API connection, one request each.
pub(super) struct TunnelCalls<'a> {
    pub(super) c: &'a VppClient,
}

impl TunnelCalls<'_> {
    pub(super) async fn create_tunnel(&self, p: &PeerPlan, underlay_if: u32) -> Result<u32> {
        let obj = format!("ipip{} to {} ({})", p.instance, p.name, p.dst);
        let r = self
            .c
            .request(&ipip::IpipAddTunnel {
                tunnel: IpipTunnel {
                    instance: p.instance,
                    src: Address::from(p.src),
                    dst: Address::from(p.dst),
                    sw_if_index: u32::MAX,
                    mode: TunnelMode::TUNNEL_API_MODE_P2P,
                    ..Default::default()
                },
            })
            .await
            .map_err(vpp_err("create tunnel", &obj))?;
        let sw = r.sw_if_index;
        let mut tag = format!("{TAG_PREFIX}{}", p.name);
        tag.truncate(63);
        while !tag.is_char_boundary(tag.len()) {
            tag.pop();
        }
        // tag, unnumbered, IPv6: independent of each other, sent together. IP on the
        // tunnel without addresses of its own: borrow the underlay's (IPv4), and enable
        // IPv6 for v6 pod traffic
        let tag = async {
            self.c
                .request(&interface::SwInterfaceTagAddDel {
                    is_add: true,
                    sw_if_index: sw,
                    tag,
                })
                .await
                .map_err(vpp_err("tag", &obj))
        };
        let unnumbered = async {
            self.c
                .request(&interface::SwInterfaceSetUnnumbered {
                    sw_if_index: underlay_if,
                    unnumbered_sw_if_index: sw,
                    is_add: true,
                })
                .await
                .map_err(vpp_err("make unnumbered", &obj))
        };
        let ip6 = async {
            self.c
                .request(&ip::SwInterfaceIp6EnableDisable {
                    sw_if_index: sw,
                    enable: true,
                })
                .await
                .map_err(vpp_err("enable ip6 on", &obj))
        };
        tokio::try_join!(tag, unnumbered, ip6)?;
        Ok(sw)
    }

    /// The interfaces holding the local underlay addresses `addrs` (one interface dump,
    /// then every interface's addresses dumped together).
    pub(super) async fn underlay_ifs(
        &self,
        addrs: &BTreeSet<IpAddr>,
    ) -> Result<HashMap<IpAddr, u32>> {
        let found = self.interfaces_holding(addrs).await?;
        match addrs.iter().find(|a| !found.contains_key(a)) {
            Some(addr) => Err(Error::Dataplane {
                dataplane: DATAPLANE.into(),
                op: "find underlay interface".into(),
                reason: format!("the local underlay address {addr} is on no VPP interface"),
            }),
            None => Ok(found),
        }
    }

    /// The interfaces holding those of `addrs` that some VPP interface holds.
    pub(super) async fn interfaces_holding(
        &self,
        addrs: &BTreeSet<IpAddr>,
    ) -> Result<HashMap<IpAddr, u32>> {
        let mut found = HashMap::new();
        if addrs.is_empty() {
            return Ok(found);
        }
        let ifs = self
            .c
            .interfaces()
            .await
            .map_err(vpp_err("list", "interfaces"))?;
        let families: BTreeSet<bool> = addrs.iter().map(IpAddr::is_ipv6).collect();
        let dumps = ifs.iter().flat_map(|i| {
            families.iter().map(move |v6| async move {
                self.c
                    .dump(&ip::IpAddressDump {
                        sw_if_index: i.sw_if_index,
                        is_ipv6: *v6,
                    })
                    .await
                    .map(|a| (i.sw_if_index, a))
                    .map_err(vpp_err("list addresses of", &i.interface_name))
            })
        });
        for (sw, list) in pipelined(dumps.collect()).await? {
            for a in list {
                if let Some(ip) = a.prefix.address.to_ip().filter(|ip| addrs.contains(ip)) {
                    found
                        .entry(ip)
                        .and_modify(|s: &mut u32| *s = (*s).min(sw))
                        .or_insert(sw);
                }
            }
        }
        Ok(found)
    }

    pub(super) async fn delete_tunnel(&self, instance: u32, sw: u32) -> Result<()> {
        self.c
            .request(&ipip::IpipDelTunnel { sw_if_index: sw })
            .await
            .map_err(vpp_err("delete tunnel", &format!("ipip{instance}")))?;
        Ok(())
    }

    pub(super) async fn set_up(&self, sw: u32, up: bool) -> Result<()> {
        let flags = if up {
            IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP
        } else {
            IfStatusFlags(0)
        };
        self.c
            .request(&interface::SwInterfaceSetFlags {
                sw_if_index: sw,
                flags,
            })
            .await
            .map_err(vpp_err("set admin state of", &format!("sw_if_index {sw}")))?;
        Ok(())
    }

    pub(super) async fn add_sa(&self, sa: &SaPlan, peer: &str) -> Result<()> {
        let obj = format!("SA {:#x} (spi {:#x}, peer {peer})", sa.id, sa.key.spi);
        self.c
            .request(&ipsec::IpsecSadEntryAddV2 {
                entry: sa_entry(sa),
            })
            .await
            .map_err(vpp_err("add", &obj))?;
        Ok(())
    }

    pub(super) async fn delete_sa(&self, id: u32) -> Result<()> {
        self.c
            .request(&ipsec::IpsecSadEntryDel { id })
            .await
            .map_err(vpp_err("delete", &format!("SA {id:#x}")))?;
        Ok(())
    }

    pub(super) async fn protect(&self, sw: u32, sa_out: u32, sa_in: &BTreeSet<u32>) -> Result<()> {
        self.c
            .request(&ipsec::IpsecTunnelProtectUpdate {
                tunnel: IpsecTunnelProtect {
                    sw_if_index: sw,
                    nh: Address::default(),
                    sa_out,
                    sa_in: sa_in.iter().copied().collect(),
                },
            })
            .await
            .map_err(vpp_err("protect", &format!("sw_if_index {sw}")))?;
        Ok(())
    }

    pub(super) async fn unprotect(&self, sw: u32) -> Result<()> {
        match self
            .c
            .request(&ipsec::IpsecTunnelProtectDel {
                sw_if_index: sw,
                nh: Address::default(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.retval() == Some(scrambler_vpp_api::error::retval::NO_SUCH_ENTRY) => Ok(()),
            Err(e) => Err(vpp_err("unprotect", &format!("sw_if_index {sw}"))(e)),
        }
    }

    /// Points the route of `prefix` in table 0 at `to`, replacing whatever paths it had
    /// (one FIB update: there is no moment without a route).
    pub(super) async fn steer(&self, prefix: IpNet, to: RouteTarget) -> Result<()> {
        self.steer_in(0, prefix, to).await
    }

    /// [`TunnelCalls::steer`] in `table`.
    pub(super) async fn steer_in(&self, table: u32, prefix: IpNet, to: RouteTarget) -> Result<()> {
        self.route_in(
            table,
            prefix,
            vec![route_path(to, prefix.addr().is_ipv6())],
            true,
        )
        .await
        .map_err(vpp_err(
            "steer",
            &format!("{prefix} to {to:?}{}", in_table(table)),
        ))
    }

    /// Deletes the route of `prefix` in table 0 (all its paths from the API source).
    pub(super) async fn unroute(&self, prefix: IpNet, have: &OwnedRoute) -> Result<()> {
        self.unroute_in(0, prefix, have).await
    }

    /// [`TunnelCalls::unroute`] in `table`.
    pub(super) async fn unroute_in(
        &self,
        table: u32,
        prefix: IpNet,
        have: &OwnedRoute,
    ) -> Result<()> {
        let v6 = prefix.addr().is_ipv6();
        let paths = match have {
            OwnedRoute::Drop => vec![route_path(RouteTarget::Drop, v6)],
            OwnedRoute::Via(sw) => vec![route_path(RouteTarget::Via(*sw), v6)],
            OwnedRoute::Other(p) => p.clone(),
        };
        self.route_in(table, prefix, paths, false)
            .await
            .map_err(vpp_err(
                "delete route",
                &format!("{prefix}{}", in_table(table)),
            ))
    }

    async fn route_in(
        &self,
        table_id: u32,
        prefix: IpNet,
        paths: Vec<FibPath>,
        is_add: bool,
    ) -> std::result::Result<(), scrambler_vpp_api::VppError> {
        self.c
            .request(&ip::IpRouteAddDel {
                is_add,
                is_multipath: false,
                route: IpRoute {
                    table_id,
                    stats_index: 0,
                    prefix: prefix.into(),
                    paths,
                },
            })
            .await?;
        Ok(())
    }

    /// The pods' table, both families (adding an existing one is a no-op).
    pub(super) async fn ensure_pod_table(&self) -> Result<()> {
        crate::attach::ops::AttachCalls { c: self.c }
            .ensure_pod_table()
            .await
    }
}

/// ` in table <id>` outside table 0.
fn in_table(table: u32) -> String {
    match table {
        0 => String::new(),
        t => format!(" in table {t:#x}"),
    }
}

/// Takes a tunnel away: down, unprotected, deleted (its routes must already be gone or
/// lead to drop).
pub(super) async fn delete_tunnel_fully(
    ops: &TunnelCalls<'_>,
    instance: u32,
    sw: u32,
) -> Result<()> {
    ops.set_up(sw, false).await?;
    ops.unprotect(sw).await?;
    ops.delete_tunnel(instance, sw).await
}

/// Peers (or stale objects) whose calls are in flight at once. Each peer's calls stay in
/// their fail-closed order — a call is sent only after the reply of the one before it was
/// checked — while the round trips of different peers overlap on the one API socket.
const PIPELINE: usize = 256;

/// Runs `work` with up to [`PIPELINE`] of them in flight; the first error wins (the
/// others are dropped: what they already sent stays in VPP's queue, nothing after it is
/// sent, so no route is steered into a tunnel whose protection was not confirmed).
///
/// Takes the futures collected (not a lazy iterator): the iterator's closures would
/// otherwise be held across the await, which the `Send` bound of the trait's futures
/// cannot prove for their lifetimes.
pub(super) async fn pipelined<T, F>(work: Vec<F>) -> Result<Vec<T>>
where
    F: std::future::Future<Output = Result<T>>,
{
    futures::stream::iter(work)
        .buffer_unordered(PIPELINE)
        .try_collect()
        .await
}
