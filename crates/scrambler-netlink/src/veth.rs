//! Veth pairs, as both veth dataplanes make them (scrambler-cni's `xfrm` attachment and
//! scrambler-vpp's): one end stays in the connection's namespace, the other is created
//! directly in the pod's.

use crate::Nl;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, LinkVeth};
use scrambler_core::{Error, Result};
use std::os::fd::RawFd;

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
/// A name that is taken is [`Error::AlreadyExists`].
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
