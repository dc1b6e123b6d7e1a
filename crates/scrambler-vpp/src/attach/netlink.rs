//! The kernel side of a VPP attachment: the veth pair, the pod's addresses and its
//! permanent gateway neighbour, over [`scrambler_netlink`].

use std::net::IpAddr;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
use scrambler_core::{Error, Netns, Result, Route};
use scrambler_netlink::{errno, format_mac, kernel_error, LinkState, Nl, RouteState, EEXIST};

pub(super) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

pub(super) fn route_present(have: &[RouteState], want: &Route, oif: u32) -> bool {
    have.iter().any(|r| {
        r.table == scrambler_netlink::MAIN_TABLE
            && r.dst == want.dst.trunc()
            && r.oif == Some(oif)
            && (want.gw.is_none() || r.gw == want.gw)
    })
}

pub(super) async fn existing(nl: &Nl, name: &str) -> Result<LinkState> {
    nl.link_by_name(name)
        .await?
        .ok_or_else(|| Error::kernel("find link", nl.obj(name), "it vanished after creation"))
}

/// Creates the veth pair: `host_name` here, `pod_name` in the namespace of `pod_fd`.
pub(super) async fn create_veth(
    host: &Nl,
    host_name: &str,
    pod_name: &str,
    pod_fd: RawFd,
    mtu: u32,
) -> Result<()> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod_name.to_string())
        .mtu(mtu)
        .setns_by_fd(pod_fd)
        .build();
    let msg = LinkVeth::new(host_name, pod_name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .mtu(mtu)
        .build();
    let exists = Error::AlreadyExists {
        object: format!("veth {host_name} / {pod_name}"),
        reason: "an interface with that name exists".into(),
    };
    host.add_link(msg, "create veth", host_name, exists).await
}

pub(super) async fn add_address(nl: &Nl, index: u32, name: &str, addr: IpNet) -> Result<()> {
    nl.try_add_address(index, addr, false)
        .await
        .map_err(|e| match errno(&e) {
            Some(EEXIST) => Error::AlreadyExists {
                object: format!("address {addr} on {}", nl.obj(name)),
                reason: "already assigned".into(),
            },
            _ => kernel_error("add address", format!("{addr} on {}", nl.obj(name)), &e),
        })
}

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

pub(super) fn open_pod_netns(netns: &Netns) -> Result<std::fs::File> {
    let path: PathBuf = match netns {
        Netns::Path(p) => p.clone(),
        Netns::Current => Path::new("/proc/thread-self/ns/net").to_path_buf(),
    };
    std::fs::File::open(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::UnknownContainer(format!("network namespace {netns} does not exist"))
        }
        _ => Error::io("open netns", netns, e),
    })
}
