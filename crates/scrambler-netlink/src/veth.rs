//! Veth pairs, as both veth dataplanes make them (scrambler-cni's `xfrm` attachment and
//! scrambler-vpp's): one end stays in the connection's namespace, the other is created
//! directly in the pod's.

use crate::{route_present, LinkState, Nl, RouteState};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
use scrambler_core::{Error, Interface, Netns, Result, Route};
use std::os::fd::{AsRawFd, RawFd};

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
    /// Whether the end in this namespace is created up.
    pub state: Initially,
}

/// The state the end of a veth pair that stays in the creating namespace starts in. The
/// other end always starts down: the kernel cannot open it before the pair is linked
/// (`ENOTCONN`), which happens after it applies that end's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initially {
    /// Down (set up later, e.g. once something else has taken the node end).
    Down,
    /// Up, in the creating request itself (saves a request).
    Up,
}

/// Creates, through `nl`, a veth pair whose peer is created directly in another namespace.
/// A name that is taken is [`Error::AlreadyExists`].
pub async fn create_veth(nl: &Nl, spec: &VethSpec<'_>) -> Result<()> {
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(spec.peer_name.to_string())
        .mtu(spec.mtu)
        .setns_by_fd(spec.peer_netns_fd)
        .build();
    let mut veth = LinkVeth::new(spec.name, spec.peer_name).mtu(spec.mtu);
    if spec.state == Initially::Up {
        veth = veth.up();
    }
    let msg = veth
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    let exists = Error::AlreadyExists {
        object: format!("veth {} / {}", spec.name, spec.peer_name),
        reason: "an interface with that name exists".into(),
    };
    nl.add_link(msg, "create veth", spec.name, exists).await
}

/// Creates, through `host`, the veth pair of a pod: `name` in `host`'s namespace and
/// `pod_ifname` directly in `pod_netns` (down), both with `mtu`; `name` starts in `state`.
pub async fn create_pod_veth(
    host: &Nl,
    name: &str,
    pod_netns: &Netns,
    pod_ifname: &str,
    mtu: u32,
    state: Initially,
) -> Result<()> {
    let pod_file = pod_netns.open()?;
    let spec = VethSpec {
        name,
        peer_name: pod_ifname,
        peer_netns_fd: pod_file.as_raw_fd(),
        mtu,
        state,
    };
    create_veth(host, &spec).await
}

/// The interfaces of a pod's veth pair for its CNI result: the node end `host`, then the
/// pod end `pod` in `pod_netns`, both with `mtu`.
pub fn pod_interfaces(
    host: &LinkState,
    pod: &LinkState,
    mtu: u32,
    pod_netns: &Netns,
) -> Vec<Interface> {
    vec![
        Interface {
            name: host.name.clone(),
            mac: host.mac.clone(),
            mtu: Some(mtu),
            sandbox: None,
        },
        Interface {
            name: pod.name.clone(),
            mac: pod.mac.clone(),
            mtu: Some(mtu),
            sandbox: Some(pod_netns.sandbox()),
        },
    ]
}

/// Adds to `diffs` how the pod end `link` differs from `want`: not a veth, down, an MTU
/// other than `want_mtu`, another MAC.
pub fn check_pod_end(link: &LinkState, want: &Interface, want_mtu: u32, diffs: &mut Vec<String>) {
    if link.kind.as_deref() != Some("veth") {
        diffs.push(format!("{} is {:?}, not a veth", link.name, link.kind));
    }
    if !link.up {
        diffs.push(format!("{} is down", link.name));
    }
    if link.mtu != Some(want_mtu) {
        diffs.push(format!(
            "{} has mtu {:?}, expected {want_mtu}",
            link.name, link.mtu
        ));
    }
    if let (Some(w), Some(h)) = (&want.mac, &link.mac) {
        if !w.eq_ignore_ascii_case(h) {
            diffs.push(format!("{} has mac {h}, expected {w}", link.name));
        }
    }
}

/// Adds to `diffs` each route of `want` that the pod (whose routes are `have`) lacks out of
/// its link `oif`.
pub fn check_pod_routes(have: &[RouteState], want: &[Route], oif: u32, diffs: &mut Vec<String>) {
    for r in want {
        if !route_present(have, r, oif) {
            diffs.push(format!(
                "route {}{} is missing in the pod",
                r.dst,
                r.gw.map(|g| format!(" via {g}")).unwrap_or_default()
            ));
        }
    }
}
