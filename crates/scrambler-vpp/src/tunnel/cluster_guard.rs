//! A cheap check that the node's fail-closed guard is in place, for a caller about to put
//! a pod on the node (the CNI plugin's ADD): one exact `ip_route_lookup` per cluster
//! supernet in the pods' table (table 0), never a dump.

use ipnet::IpNet;
use scrambler_core::{Error, Result};
use scrambler_vpp_api::api::{ip, ipip, ipsec};
use scrambler_vpp_api::VppClient;

use super::ids::tunnel_peer;
use super::readback::OwnedRoute;
use crate::endpoint::vpp_err;

/// Checks, over `c`, that the route of every supernet of `cluster_cidrs` in table 0 is
/// Scrambler's: its one marked drop path (the cluster guard of [`super::VppTunnel`]), or —
/// for a cluster CIDR that is exactly a peer's pod CIDR, which that peer's route holds —
/// its one marked path into the peer's tunnel (protected before any route leads into it).
/// Fails naming the first supernet whose route is missing (a VPP restarted since the
/// agent's last sync) or is not Scrambler's; an empty `cluster_cidrs` fails too. Costs one
/// round trip per supernet, pipelined.
pub async fn guard_in_place(c: &VppClient, cluster_cidrs: &[IpNet]) -> Result<()> {
    if cluster_cidrs.is_empty() {
        return Err(Error::CheckFailed {
            object: "VPP guard".into(),
            reason: "no cluster CIDR to check".into(),
        });
    }
    let lookups = cluster_cidrs.iter().map(|s| {
        let s = s.trunc();
        async move {
            let r = c
                .request_unchecked(&ip::IpRouteLookup {
                    table_id: 0,
                    exact: 1,
                    prefix: s.into(),
                })
                .await
                .map_err(vpp_err("look up route", &s.to_string()))?;
            Ok::<_, Error>((s, r))
        }
    });
    for (s, r) in futures::future::try_join_all(lookups).await? {
        let reason = if r.retval < 0 {
            "no route (missing)".to_string()
        } else {
            match OwnedRoute::of(&r.route.paths) {
                OwnedRoute::Drop => continue,
                OwnedRoute::Via(sw) => match protected_tunnel(c, sw).await? {
                    true => continue,
                    false => format!(
                        "a route via interface {sw}, which is not a protected Scrambler tunnel"
                    ),
                },
                OwnedRoute::Other(p) => format!("a route that is not Scrambler's ({p:?})"),
            }
        };
        return Err(Error::CheckFailed {
            object: format!("VPP guard route {s} in table 0"),
            reason,
        });
    }
    Ok(())
}

/// Whether `sw_if_index` is one of Scrambler's tunnels (an ipip tunnel with an owned
/// instance) under tunnel protection: only then may a cluster CIDR's route lead into it.
async fn protected_tunnel(c: &VppClient, sw_if_index: u32) -> Result<bool> {
    let what = format!("interface {sw_if_index}");
    let tunnel = ipip::IpipTunnelDump { sw_if_index };
    let protect = ipsec::IpsecTunnelProtectDump { sw_if_index };
    let (tunnels, protects) = tokio::try_join!(c.dump(&tunnel), c.dump(&protect))
        .map_err(vpp_err("read the tunnel behind a guard route", &what))?;
    let ours = tunnels
        .iter()
        .any(|d| d.tunnel.sw_if_index == sw_if_index && tunnel_peer(d.tunnel.instance).is_some());
    let protected = protects.iter().any(|d| d.tun.sw_if_index == sw_if_index);
    Ok(ours && protected)
}
