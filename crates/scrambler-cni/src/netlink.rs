//! Netlink operations of the veth attachment. The connection, the veth pair and the
//! operations shared with scrambler-ipvlan and scrambler-vpp come from [`scrambler_netlink`]
//! (re-exported here); this module adds what only the veth backend does: adding routes
//! where an existing one is reported as [`Error::AlreadyExists`].

use ipnet::IpNet;
use scrambler_core::{Error, Result};
use std::net::IpAddr;

pub use scrambler_netlink::veth::{create_veth, VethSpec};
pub use scrambler_netlink::{
    errno, format_mac, kernel_error, route_present, LinkState, Nl, RouteState, EEXIST, ROUTE_PROTO,
};

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
