//! Addresses: adding one to a link, listing a link's.

use crate::{errno, kernel_error, Exists, LinkState, Nl, EEXIST};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use scrambler_core::{Error, Result};

/// The scope an address is added with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Global (the kernel's default): the pod's own addresses.
    Global,
    /// Link: valid on the link only, as the node-side gateway addresses.
    Link,
}

impl Nl {
    /// Adds `addr` (with its prefix, so the subnet is on-link) to `link` with `scope`;
    /// IPv6 addresses are added without duplicate address detection (the address is ours
    /// by IPAM). `exists` says what an address already assigned means; returns whether
    /// the address was added. Any other failure is a kernel error on `addr on link`.
    pub async fn add_address(
        &self,
        link: &LinkState,
        addr: IpNet,
        scope: Scope,
        exists: Exists,
    ) -> Result<bool> {
        let on_link = || format!("{addr} on {}", self.obj(&link.name));
        let mut req = self
            .handle()
            .address()
            .add(link.index, addr.addr(), addr.prefix_len());
        let msg = req.message_mut();
        if scope == Scope::Link {
            msg.header.scope = netlink_packet_route::address::AddressScope::Link;
        }
        if addr.addr().is_ipv6() {
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => match exists {
                Exists::Keep => Ok(false),
                Exists::Fail => Err(Error::AlreadyExists {
                    object: format!("address {}", on_link()),
                    reason: "already assigned".into(),
                }),
            },
            Err(e) => Err(kernel_error("add address", on_link(), &e)),
        }
    }

    /// The addresses on link `index`.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let msgs: Vec<_> = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| kernel_error("list addresses", self.obj(format!("link {index}")), &e))?;
        Ok(msgs
            .iter()
            .filter(|m| m.header.index == index)
            .filter_map(address_of)
            .collect())
    }
}

pub(crate) fn address_of(m: &AddressMessage) -> Option<IpNet> {
    m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => IpNet::new(*ip, m.header.prefix_len).ok(),
        _ => None,
    })
}
