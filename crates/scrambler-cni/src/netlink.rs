//! Netlink operations of the veth attachment. The connection and the operations shared with
//! scrambler-ipvlan come from [`scrambler_netlink`] (re-exported here); this module adds what
//! only the veth backend does: creating a veth pair, and adding addresses and routes where
//! an existing one is reported as [`Error::AlreadyExists`].

use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
use scrambler_core::{Error, Result};
use std::net::IpAddr;
use std::os::fd::RawFd;

pub use scrambler_netlink::{
    errno, format_mac, kernel_error, LinkState, Nl, RouteState, EEXIST, ROUTE_PROTO,
};

/// What to create with [`create_veth`].
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    /// Name of the end that stays in this namespace.
    pub name: &'a str,
    /// Name of the other end.
    pub peer_name: &'a str,
    /// Namespace (open file descriptor) that receives the other end.
    pub peer_netns_fd: RawFd,
    /// MTU of both ends.
    pub mtu: u32,
}

/// Creates, through `nl`, a veth pair whose peer is created directly in another namespace.
pub async fn create_veth(nl: &Nl, spec: &VethSpec<'_>) -> Result<()> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.peer_name.to_string())
        .mtu(spec.mtu)
        .setns_by_fd(spec.peer_netns_fd)
        .build();
    let msg = LinkVeth::new(spec.name, spec.peer_name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(spec.mtu)
        .build();
    let exists = Error::AlreadyExists {
        object: format!("veth {} / {}", spec.name, spec.peer_name),
        reason: "an interface with that name exists".into(),
    };
    nl.add_link(msg, "create veth", spec.name, exists).await
}

/// Adds `addr` to link `index` ([`Nl::try_add_address`]); an address already assigned is
/// [`Error::AlreadyExists`].
pub async fn add_address(
    nl: &Nl,
    index: u32,
    name: &str,
    addr: IpNet,
    link_scope: bool,
) -> Result<()> {
    nl.try_add_address(index, addr, link_scope)
        .await
        .map_err(|e| match errno(&e) {
            Some(EEXIST) => Error::AlreadyExists {
                object: format!("address {addr} on {}", nl.obj(name)),
                reason: "already assigned".into(),
            },
            _ => kernel_error("add address", format!("{addr} on {}", nl.obj(name)), &e),
        })
}

/// Adds a route to `dst` out of link `index` ([`scrambler_netlink::route_message`]); a route
/// to that destination that exists already is [`Error::AlreadyExists`].
pub async fn add_route(
    nl: &Nl,
    dst: IpNet,
    gw: Option<IpAddr>,
    index: u32,
    mtu: Option<u32>,
) -> Result<()> {
    let msg = scrambler_netlink::route_message(dst, gw, index, mtu)?;
    nl.handle().route().add(msg).execute().await.map_err(|e| {
        let what = scrambler_netlink::route_name(dst, gw, index);
        match errno(&e) {
            Some(EEXIST) => Error::AlreadyExists {
                object: format!("route {what} {}", nl.obj("")),
                reason: "a route to that destination exists".into(),
            },
            _ => kernel_error("add route", nl.obj(what), &e),
        }
    })
}
