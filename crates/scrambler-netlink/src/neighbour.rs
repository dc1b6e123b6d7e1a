//! Neighbours: a permanent entry (a pod's gateway whose MAC is known), listing a link's.

use std::net::IpAddr;

use crate::{format_mac, kernel_error, Nl};
use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use scrambler_core::Result;

/// One neighbour entry as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    /// Address.
    pub ip: IpAddr,
    /// Link-layer address, when the entry has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// Permanent (`NUD_PERMANENT`).
    pub permanent: bool,
}

impl Nl {
    /// Adds the permanent neighbour `ip lladdr mac` on link `index` (called `name`).
    pub async fn add_permanent_neighbour(
        &self,
        index: u32,
        name: &str,
        ip: IpAddr,
        mac: &[u8; 6],
    ) -> Result<()> {
        self.handle()
            .neighbours()
            .add(index, ip)
            .state(NeighbourState::Permanent)
            .link_layer_address(mac)
            .execute()
            .await
            .map_err(|e| {
                kernel_error(
                    "add permanent neighbour",
                    format!("{ip} lladdr {} on {}", format_mac(mac), self.obj(name)),
                    &e,
                )
            })
    }

    /// The neighbours on link `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        let msgs: Vec<_> = self
            .handle()
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error("list neighbours", self.obj("neighbours"), &e))?;
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
                Some(Neighbour {
                    ip: ip?,
                    mac,
                    permanent: m.header.state == NeighbourState::Permanent,
                })
            })
            .collect())
    }
}
