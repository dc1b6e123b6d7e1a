//! Netlink operations of the ipvlan attachment. The connection and the operations shared
//! with scrambler-cni come from [`scrambler_netlink`] (re-exported here); this module adds
//! what only ipvlan does: creating an ipvlan slave, reading a link's ipvlan mode and flag
//! as this crate's [`Mode`] and [`Flag`], and the idempotent route add/delete of the node
//! setup ([`crate::node`]).

use crate::config::{Flag, Mode};
use ipnet::IpNet;
use rtnetlink::packet_route::link::{IpVlanFlags, IpVlanMode};
use rtnetlink::LinkIpVlan;
use scrambler_core::{Error, Result};
use scrambler_netlink::{errno, is_gone, kernel_error, route_message, route_name, EEXIST};
use std::os::fd::RawFd;

/// `ESRCH`: what the kernel answers when asked to delete a route that does not exist.
const ESRCH: i32 = 3;

pub use scrambler_netlink::{format_mac, LinkState, Nl, RouteState, MAIN_TABLE, ROUTE_PROTO};

/// What to create with [`create_ipvlan`].
#[derive(Debug, Clone)]
pub struct IpvlanSpec<'a> {
    /// Name of the new link (in the target namespace).
    pub name: &'a str,
    /// Index of the master in the creating connection's namespace.
    pub master: u32,
    /// Mode.
    pub mode: Mode,
    /// Flag.
    pub flag: Flag,
    /// MTU.
    pub mtu: u32,
    /// Namespace (open file descriptor) the link is created in; `None`: the creating
    /// connection's own.
    pub netns_fd: Option<RawFd>,
    /// `ifalias` sent with the creation request (`IFLA_IFALIAS`); a kernel that ignores it
    /// at creation leaves the link without alias, so callers check.
    pub alias: Option<&'a str>,
    /// Created up (`IFF_UP` in the request).
    pub up: bool,
}

/// Creates, through `nl`, an ipvlan slave of `spec.master` (a link of `nl`'s namespace)
/// directly in the namespace `spec.netns_fd` (or `nl`'s), named `spec.name` there.
pub async fn create_ipvlan(nl: &Nl, spec: &IpvlanSpec<'_>) -> Result<()> {
    let mut b = LinkIpVlan::new(spec.name, spec.master, ipvlan_mode(spec.mode))
        .flag(ipvlan_flags(spec.flag))
        .mtu(spec.mtu);
    if let Some(fd) = spec.netns_fd {
        b = b.setns_by_fd(fd);
    }
    if let Some(a) = spec.alias {
        b = b.alias(a);
    }
    if spec.up {
        b = b.up();
    }
    let msg = b.build();
    let exists = Error::AlreadyExists {
        object: format!("interface {}", spec.name),
        reason: "an interface with that name exists in the target namespace".into(),
    };
    let what = format!("{} on master index {}", spec.name, spec.master);
    nl.add_link(msg, "create ipvlan", what, exists).await
}

/// Deletes the route to `dst` out of link `index` (main table, our protocol); a route
/// that is already gone is not an error. Returns whether it existed.
pub async fn delete_route(nl: &Nl, dst: IpNet, index: u32) -> Result<bool> {
    let msg = route_message(dst, None, index, None)?;
    match nl.handle().route().del(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) || errno(&e) == Some(ESRCH) => Ok(false),
        Err(e) => Err(kernel_error(
            "delete route",
            nl.obj(route_name(dst, None, index)),
            &e,
        )),
    }
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
    let msg = route_message(dst, None, index, None)?;
    match nl.handle().route().add(msg).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(EEXIST) => {
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
                None => Err(kernel_error(
                    "add route",
                    nl.obj(route_name(dst, None, index)),
                    &e,
                )),
            }
        }
        Err(e) => Err(kernel_error(
            "add route",
            nl.obj(route_name(dst, None, index)),
            &e,
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

/// The ipvlan mode of `link`, if it is an ipvlan link in a mode this crate knows.
pub fn link_mode(link: &LinkState) -> Option<Mode> {
    match link.ipvlan_mode? {
        IpVlanMode::L2 => Some(Mode::L2),
        IpVlanMode::L3 => Some(Mode::L3),
        IpVlanMode::L3S => Some(Mode::L3s),
        _ => None,
    }
}

/// The ipvlan flag of `link`, if it is an ipvlan link with a flag this crate knows.
pub fn link_flag(link: &LinkState) -> Option<Flag> {
    let f = link.ipvlan_flags?;
    if f == IpVlanFlags::empty() {
        Some(Flag::Bridge)
    } else if f == IpVlanFlags::Private {
        Some(Flag::Private)
    } else if f == IpVlanFlags::Vepa {
        Some(Flag::Vepa)
    } else {
        None
    }
}

fn ipvlan_mode(m: Mode) -> IpVlanMode {
    match m {
        Mode::L2 => IpVlanMode::L2,
        Mode::L3 => IpVlanMode::L3,
        Mode::L3s => IpVlanMode::L3S,
    }
}

fn ipvlan_flags(f: Flag) -> IpVlanFlags {
    match f {
        Flag::Bridge => IpVlanFlags::empty(),
        Flag::Private => IpVlanFlags::Private,
        Flag::Vepa => IpVlanFlags::Vepa,
    }
}
