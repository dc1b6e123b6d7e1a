//! Links: reading them as [`LinkState`], adding (a message the caller built), setting
//! alias, MTU, GSO cap and state, deleting.

use crate::{errno, is_gone, kernel_error, Nl, EEXIST};
use futures::TryStreamExt;
use netlink_packet_route::link::{
    InfoData, InfoIpVlan, InfoKind, InfoXfrm, IpVlanFlags, IpVlanMode, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use rtnetlink::LinkUnspec;
use scrambler_core::{Error, Result};

/// What the kernel reports about one link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkState {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC address, `aa:bb:…`.
    pub mac: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Link kind (`ipvlan`, `veth`, `bridge`, …).
    pub kind: Option<String>,
    /// `ifalias`.
    pub alias: Option<String>,
    /// Parent link index (`IFLA_LINK`; for a slave in another namespace, an index there).
    pub parent: Option<u32>,
    /// Ipvlan mode as the kernel reports it, for ipvlan links.
    pub ipvlan_mode: Option<IpVlanMode>,
    /// Ipvlan flags as the kernel reports them, for ipvlan links.
    pub ipvlan_flags: Option<IpVlanFlags>,
    /// The `if_id` of an xfrm interface, for xfrm links.
    pub xfrm_if_id: Option<u32>,
    /// Most segments of one GSO packet the link takes (`IFLA_GSO_MAX_SEGS`).
    pub gso_max_segs: Option<u32>,
}

impl Nl {
    /// The link called `name`, if any.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkState>> {
        let mut req = self
            .handle()
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match req.try_next().await {
            Ok(m) => Ok(m.map(|m| link_state(&m))),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(kernel_error("get link", self.obj(name), &e)),
        }
    }

    /// The link called `name`, which was just created: a link that is missing is a kernel
    /// error ("it vanished after creation").
    pub async fn existing_link(&self, name: &str) -> Result<LinkState> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| Error::kernel("find link", self.obj(name), "it vanished after creation"))
    }

    /// Fails with [`Error::AlreadyExists`] when the link `ifname` exists (in a pod
    /// namespace: `CNI_IFNAME` is taken).
    pub async fn ensure_pod_ifname_free(&self, ifname: &str) -> Result<()> {
        match self.link_by_name(ifname).await? {
            None => Ok(()),
            Some(_) => Err(Error::AlreadyExists {
                object: format!("interface {}", self.obj(ifname)),
                reason: "CNI_IFNAME is taken in the pod namespace".into(),
            }),
        }
    }

    /// The link with index `index`, if any.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkState>> {
        let mut req = self.handle().link().get().match_index(index).execute();
        match req.try_next().await {
            Ok(m) => Ok(m.map(|m| link_state(&m))),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(kernel_error(
                "get link",
                self.obj(format!("index {index}")),
                &e,
            )),
        }
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkState>> {
        self.handle()
            .link()
            .get()
            .execute()
            .map_ok(|m| link_state(&m))
            .try_collect()
            .await
            .map_err(|e| kernel_error("list links", self.obj("links"), &e))
    }

    /// Adds the link `msg` (built by the caller: a veth pair, an ipvlan slave, …). A name
    /// that exists already is `exists`; any other failure is a kernel error of `op` on
    /// `what` in this namespace.
    pub async fn add_link(
        &self,
        msg: LinkMessage,
        op: &'static str,
        what: impl std::fmt::Display,
        exists: Error,
    ) -> Result<()> {
        match self.handle().link().add(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(EEXIST) => Err(exists),
            Err(e) => Err(kernel_error(op, self.obj(what), &e)),
        }
    }

    /// Sets the `ifalias` of a link (the kernel ignores it at creation).
    pub async fn set_alias(&self, index: u32, name: &str, alias: &str) -> Result<()> {
        self.set_link(
            LinkUnspec::new_with_index(index).alias(alias).build(),
            "set alias of link",
            name,
        )
        .await
    }

    /// Sets a link up.
    pub async fn set_up(&self, index: u32, name: &str) -> Result<()> {
        self.set_link(
            LinkUnspec::new_with_index(index).up().build(),
            "set link up",
            name,
        )
        .await
    }

    /// Sets the MTU of a link and sets it up, in one request.
    pub async fn set_mtu_and_up(&self, index: u32, name: &str, mtu: u32) -> Result<()> {
        self.set_link(
            LinkUnspec::new_with_index(index).mtu(mtu).up().build(),
            "set mtu and up of link",
            name,
        )
        .await
    }

    /// Caps the GSO packets a link hands down at one segment (`IFLA_GSO_MAX_SEGS` = 1): the
    /// kernel segments TCP (and any other GSO packet) itself before the link, so whoever
    /// reads the other end (e.g. a packet socket on a veth peer) only gets frames of at most
    /// the link's MTU. Checksum offload is left on.
    pub async fn disable_gso(&self, index: u32, name: &str) -> Result<()> {
        self.set_link(
            LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::GsoMaxSegs(1))
                .build(),
            "cap GSO at one segment on link",
            name,
        )
        .await
    }

    async fn set_link(&self, msg: LinkMessage, op: &'static str, name: &str) -> Result<()> {
        self.handle()
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| kernel_error(op, self.obj(name), &e))
    }

    /// Deletes a link; a link that is already gone is not an error. Returns whether it
    /// existed.
    pub async fn delete_link(&self, index: u32, name: &str) -> Result<bool> {
        match self.handle().link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(kernel_error("delete link", self.obj(name), &e)),
        }
    }
}

pub(crate) fn link_state(m: &LinkMessage) -> LinkState {
    let mut s = LinkState {
        index: m.header.index,
        up: m.header.flags.contains(LinkFlags::Up),
        ..LinkState::default()
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => s.name = n.clone(),
            LinkAttribute::Mtu(v) => s.mtu = Some(*v),
            LinkAttribute::Address(mac) => s.mac = Some(format_mac(mac)),
            LinkAttribute::IfAlias(al) => s.alias = Some(al.clone()),
            LinkAttribute::Link(i) => s.parent = Some(*i),
            LinkAttribute::GsoMaxSegs(n) => s.gso_max_segs = Some(*n),
            LinkAttribute::LinkInfo(infos) => link_info(infos, &mut s),
            _ => {}
        }
    }
    s
}

fn link_info(infos: &[LinkInfo], s: &mut LinkState) {
    for i in infos {
        match i {
            LinkInfo::Kind(k) => s.kind = Some(kind_name(k)),
            LinkInfo::Data(InfoData::IpVlan(data)) => {
                for d in data {
                    match d {
                        InfoIpVlan::Mode(m) => s.ipvlan_mode = Some(*m),
                        InfoIpVlan::Flags(f) => s.ipvlan_flags = Some(*f),
                        _ => {}
                    }
                }
            }
            LinkInfo::Data(InfoData::Xfrm(data)) => {
                s.xfrm_if_id = data.iter().find_map(|x| match x {
                    InfoXfrm::IfId(v) => Some(*v),
                    _ => None,
                })
            }
            _ => {}
        }
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::IpVlan => "ipvlan".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Other(s) => s.clone(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Formats a hardware address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a hardware address `aa:bb:cc:dd:ee:ff` (as [`format_mac`] writes it).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:5c:00:0a:ff:01"),
            Some([2, 0x5c, 0, 10, 255, 1])
        );
        assert_eq!(parse_mac("02:5c"), None);
        assert_eq!(parse_mac("02:5c:00:0a:ff:01:00"), None);
        assert_eq!(
            parse_mac(&format_mac(&[2, 0x5c, 0, 10, 255, 1])),
            Some([2, 0x5c, 0, 10, 255, 1])
        );
    }
}
