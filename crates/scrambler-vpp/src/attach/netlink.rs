//! The kernel side of a VPP attachment that only VPP needs: the pod's permanent gateway
//! neighbour, over [`scrambler_netlink`] (the veth pair, addresses and routes are
//! [`scrambler_netlink`]'s own).

use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use scrambler_core::Result;
use scrambler_netlink::{format_mac, kernel_error, Nl};

pub(super) async fn add_neighbour(
    nl: &Nl,
    index: u32,
    name: &str,
    ip: IpAddr,
    mac: &[u8; 6],
) -> Result<()> {
    nl.handle()
        .neighbours()
        .add(index, ip)
        .state(NeighbourState::Permanent)
        .link_layer_address(mac)
        .execute()
        .await
        .map_err(|e| {
            kernel_error(
                "add permanent neighbour",
                format!("{ip} lladdr {} on {}", format_mac(mac), nl.obj(name)),
                &e,
            )
        })
}

/// The neighbours on link `index`: (address, MAC, permanent).
pub(super) async fn neighbours(
    nl: &Nl,
    index: u32,
) -> Result<Vec<(IpAddr, Option<[u8; 6]>, bool)>> {
    let msgs: Vec<_> = nl
        .handle()
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| kernel_error("list neighbours", nl.obj("neighbours"), &e))?;
    Ok(msgs
        .iter()
        .filter(|m| m.header.ifindex == index)
        .filter_map(|m| {
            let mut ip = None;
            let mut mac = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        ip = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        ip = Some(IpAddr::V6(*v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => {
                        mac = <[u8; 6]>::try_from(l.as_slice()).ok()
                    }
                    _ => {}
                }
            }
            Some((ip?, mac, m.header.state == NeighbourState::Permanent))
        })
        .collect())
}
