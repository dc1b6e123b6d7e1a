//! The ipvlan slave link, over [`scrambler_netlink`]: creating one, and reading a link's
//! ipvlan mode and flag as this crate's [`Mode`] and [`Flag`].

use crate::config::{Flag, Mode};
use rtnetlink::packet_route::link::{IpVlanFlags, IpVlanMode};
use rtnetlink::LinkIpVlan;
use scrambler_core::{Error, Result};
use scrambler_netlink::{LinkState, Nl};
use std::os::fd::RawFd;

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
