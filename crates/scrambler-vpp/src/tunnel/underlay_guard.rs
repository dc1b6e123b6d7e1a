//! The underlay guard: pod-sourced traffic to a peer's underlay address is dropped on the
//! way out of the node's underlay interface, never sent in cleartext.
//!
//! VPP routes everything in table 0, where the uplink's connected (or default) route would
//! take a local pod's packet to a peer's underlay address out of the uplink in the clear;
//! a route for the peer's /32 cannot drop it, since the peer's tunnel resolves its outer
//! packets through the same /32. So the guard matches on the *source* too: an IPsec SPD
//! (id [`UNDERLAY_SPD_ID`](super::UNDERLAY_SPD_ID)) bound to every interface holding a local underlay address, with
//!
//! * outbound `discard`, priority [`DISCARD_PRIORITY`]: local pod CIDR → peer underlay
//!   address, one per pair of the same family;
//! * outbound and inbound `bypass` of everything else (IPv4 and IPv6), priority
//!   [`BYPASS_PRIORITY`]: the tunnels' ESP (outer source: the node's underlay address), the
//!   node's own traffic and pods' traffic to any other destination pass as before;
//! * with node encryption on ([`Mesh::node_encryption`](scrambler_core::Mesh)), outbound
//!   `discard` of VPP's own traffic, local underlay address → peer underlay address (one
//!   per pair), and above it outbound `bypass` from the local underlay addresses of ESP
//!   and of each bypass port (as source or destination port): VPP answers a packet to its
//!   underlay address from table 0, where that answer would otherwise leave in the clear.
//!
//! Pods attached by Scrambler sit in their own VRF ([`POD_TABLE_ID`](super::POD_TABLE_ID)),
//! where each peer's underlay address is routed into its tunnel (drop until it is up): the
//! SPD is the second line, for a peer whose route is missing, and the only one for pods in
//! table 0 (attached to a gateway an earlier release made there, or by hand).
//! The SPD is Scrambler's by its id; a foreign SPD already bound to the underlay
//! interface makes reconcile fail (VPP binds one SPD per interface).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use scrambler_core::{Error, Mesh, ReconcileReport, Result};
use scrambler_vpp_api::api::ipsec;
use scrambler_vpp_api::api::types::{Address, IpsecSpdAction, IpsecSpdEntry};
use scrambler_vpp_api::VppClient;

use super::ids::UNDERLAY_SPD_ID;
use super::ops::pipelined;
use crate::endpoint::{vpp_err, DATAPLANE};

/// Priority of the discard policies (VPP matches the highest first).
pub const DISCARD_PRIORITY: i32 = 0x5c00;

/// Priority of the bypass-everything-else policies.
pub const BYPASS_PRIORITY: i32 = 0x5c;

/// With node encryption on: priority of the discard of VPP's own traffic from a local
/// underlay address to a peer's (below the pods' discards, above the general bypass).
pub const NODE_DISCARD_PRIORITY: i32 = 0x5b00;

/// With node encryption on: priority of the bypasses that outrank
/// [`NODE_DISCARD_PRIORITY`]: ESP and the bypass ports from a local underlay address.
pub const NODE_BYPASS_PRIORITY: i32 = 0x5d00;

/// IP protocol number of ESP.
const ESP: u8 = 50;

/// VPP's "any protocol" in a dumped policy (`IPSEC_POLICY_PROTOCOL_ANY`); 0 in a request.
const ANY_PROTOCOL_DUMPED: u8 = 255;

/// Every port.
const ALL_PORTS: (u16, u16) = (0, u16::MAX);

/// One policy of the SPD, as compared between want and have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Policy {
    outbound: bool,
    discard: bool,
    priority: i32,
    local: (IpAddr, IpAddr),
    remote: (IpAddr, IpAddr),
    /// IP protocol, 0 for any.
    proto: u8,
    local_ports: (u16, u16),
    remote_ports: (u16, u16),
}

impl Policy {
    fn entry(&self) -> IpsecSpdEntry {
        IpsecSpdEntry {
            spd_id: UNDERLAY_SPD_ID,
            priority: self.priority,
            is_outbound: self.outbound,
            policy: if self.discard {
                IpsecSpdAction::IPSEC_API_SPD_ACTION_DISCARD
            } else {
                IpsecSpdAction::IPSEC_API_SPD_ACTION_BYPASS
            },
            local_address_start: Address::from(self.local.0),
            local_address_stop: Address::from(self.local.1),
            remote_address_start: Address::from(self.remote.0),
            remote_address_stop: Address::from(self.remote.1),
            protocol: self.proto,
            local_port_start: self.local_ports.0,
            local_port_stop: self.local_ports.1,
            remote_port_start: self.remote_ports.0,
            remote_port_stop: self.remote_ports.1,
            ..Default::default()
        }
    }

    fn of_entry(e: &IpsecSpdEntry) -> Option<Policy> {
        Some(Policy {
            outbound: e.is_outbound,
            discard: e.policy == IpsecSpdAction::IPSEC_API_SPD_ACTION_DISCARD,
            priority: e.priority,
            local: range(&e.local_address_start, &e.local_address_stop)?,
            remote: range(&e.remote_address_start, &e.remote_address_stop)?,
            proto: match e.protocol {
                ANY_PROTOCOL_DUMPED => 0,
                p => p,
            },
            local_ports: (e.local_port_start, e.local_port_stop),
            remote_ports: (e.remote_port_start, e.remote_port_stop),
        })
    }
}

/// An address range as VPP dumps it: `::` comes back as IPv4 `0.0.0.0` (VPP encodes an
/// all-zero address as IPv4), so a start of the other family than the stop is `::`.
fn range(start: &Address, stop: &Address) -> Option<(IpAddr, IpAddr)> {
    let (start, stop) = (start.to_ip()?, stop.to_ip()?);
    match (start, stop) {
        (IpAddr::V4(a), IpAddr::V6(_)) if a.is_unspecified() => {
            Some((Ipv6Addr::UNSPECIFIED.into(), stop))
        }
        _ => Some((start, stop)),
    }
}

/// The policies the SPD holds for `mesh`.
pub(super) fn wanted(mesh: &Mesh) -> BTreeSet<Policy> {
    let mut want = BTreeSet::new();
    let all: [(IpAddr, IpAddr); 2] = [
        (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::BROADCAST.into()),
        (
            Ipv6Addr::UNSPECIFIED.into(),
            Ipv6Addr::from(u128::MAX).into(),
        ),
    ];
    for range in all {
        for outbound in [true, false] {
            want.insert(Policy {
                outbound,
                discard: false,
                priority: BYPASS_PRIORITY,
                local: range,
                remote: range,
                proto: 0,
                local_ports: ALL_PORTS,
                remote_ports: ALL_PORTS,
            });
        }
    }
    for c in &mesh.local.pod_cidrs {
        for u in mesh.peers.iter().flat_map(|p| p.underlay.iter()) {
            if u.is_ipv6() == c.addr().is_ipv6() {
                want.insert(Policy {
                    outbound: true,
                    discard: true,
                    priority: DISCARD_PRIORITY,
                    local: (c.network(), c.broadcast()),
                    remote: (*u, *u),
                    proto: 0,
                    local_ports: ALL_PORTS,
                    remote_ports: ALL_PORTS,
                });
            }
        }
    }
    if mesh.node_encryption.is_some() {
        node_encryption(mesh, &all, &mut want);
    }
    want
}

/// With node encryption on, VPP's own traffic between underlay addresses: VPP holds the
/// node's underlay address, so a peer's host addressing it reaches VPP (through the
/// tunnel, decrypted), and VPP answers (ICMP) from table 0, where the peer's underlay
/// address is the tunnel's outer destination: the answer would leave the uplink in the
/// clear. So: discard `local underlay → peer underlay` for every pair of a family, and
/// bypass (outranking it) ESP and each bypass port (as source or destination port) from
/// the local underlay addresses.
fn node_encryption(mesh: &Mesh, all: &[(IpAddr, IpAddr); 2], want: &mut BTreeSet<Policy>) {
    let bypass = mesh
        .node_encryption
        .as_ref()
        .map(|n| n.bypass.as_slice())
        .unwrap_or_default();
    for l in &mesh.local.underlay {
        let Some(any) = all.iter().find(|r| r.0.is_ipv6() == l.is_ipv6()) else {
            continue;
        };
        let from_local = |proto, local_ports, remote_ports| Policy {
            outbound: true,
            discard: false,
            priority: NODE_BYPASS_PRIORITY,
            local: (*l, *l),
            remote: *any,
            proto,
            local_ports,
            remote_ports,
        };
        want.insert(from_local(ESP, ALL_PORTS, ALL_PORTS));
        for b in bypass {
            let p = b.proto.number();
            want.insert(from_local(p, (b.port, b.port), ALL_PORTS));
            want.insert(from_local(p, ALL_PORTS, (b.port, b.port)));
        }
        for u in mesh.peers.iter().flat_map(|p| p.underlay.iter()) {
            if u.is_ipv6() == l.is_ipv6() {
                want.insert(Policy {
                    outbound: true,
                    discard: true,
                    priority: NODE_DISCARD_PRIORITY,
                    local: (*l, *l),
                    remote: (*u, *u),
                    proto: 0,
                    local_ports: ALL_PORTS,
                    remote_ports: ALL_PORTS,
                });
            }
        }
    }
}

/// The SPD as found: whether it exists, its policies (with the entries to delete them by),
/// the interfaces it is bound to, and the interfaces bound to an SPD that is not known to
/// be it.
///
/// VPP reports an interface's SPD by its internal index, not its id, and lists SPDs
/// without their index: a binding is known to be Scrambler's only while its SPD is the
/// only one in VPP. With other SPDs present reconcile fails before it binds anything (fail
/// closed: the operator sorts it out).
#[derive(Default)]
pub(super) struct HaveSpd {
    exists: bool,
    policies: Vec<(Policy, IpsecSpdEntry)>,
    bound: BTreeSet<u32>,
    other: BTreeSet<u32>,
    others: Vec<u32>,
}

impl HaveSpd {
    pub(super) async fn read(c: &VppClient) -> Result<HaveSpd> {
        let obj = format!("SPD {UNDERLAY_SPD_ID:#x}");
        let (spds, bindings) = tokio::try_join!(
            async {
                c.dump(&ipsec::IpsecSpdsDump {})
                    .await
                    .map_err(vpp_err("list", "IPsec SPDs"))
            },
            async {
                c.dump(&ipsec::IpsecSpdInterfaceDump::default())
                    .await
                    .map_err(vpp_err("list", "IPsec SPD bindings"))
            }
        )?;
        let exists = spds.iter().any(|s| s.spd_id == UNDERLAY_SPD_ID);
        let others: Vec<u32> = spds
            .iter()
            .map(|s| s.spd_id)
            .filter(|id| *id != UNDERLAY_SPD_ID)
            .collect();
        let others_exist = !others.is_empty();
        let bound_ifs: BTreeSet<u32> = bindings.iter().map(|b| b.sw_if_index).collect();
        let (bound, other) = if exists && !others_exist {
            (bound_ifs, BTreeSet::new())
        } else {
            (BTreeSet::new(), bound_ifs)
        };
        if !exists {
            return Ok(HaveSpd {
                other,
                others,
                ..HaveSpd::default()
            });
        }
        let policies = c
            .dump(&ipsec::IpsecSpdDump {
                spd_id: UNDERLAY_SPD_ID,
                sa_id: u32::MAX,
            })
            .await
            .map_err(vpp_err("list policies of", &obj))?
            .into_iter()
            .filter_map(|d| Policy::of_entry(&d.entry).map(|p| (p, d.entry)))
            .collect();
        Ok(HaveSpd {
            exists,
            policies,
            bound,
            other,
            others,
        })
    }
}

/// Whether the guard is complete: every policy of `want` in the SPD, bound to every
/// interface of `ifs`.
pub(super) fn in_place(have: &HaveSpd, want: &BTreeSet<Policy>, ifs: &BTreeSet<u32>) -> bool {
    let policies: BTreeSet<Policy> = have.policies.iter().map(|(p, _)| *p).collect();
    have.exists && want.is_subset(&policies) && ifs.is_subset(&have.bound)
}

/// Brings the SPD to `want`, bound to the interfaces `ifs`: missing policies first, then
/// the bindings, stale policies and bindings last.
pub(super) async fn reconcile(
    c: &VppClient,
    have: &HaveSpd,
    want: &BTreeSet<Policy>,
    ifs: &BTreeSet<u32>,
) -> Result<ReconcileReport> {
    let mut rep = ReconcileReport::default();
    let obj = format!("SPD {UNDERLAY_SPD_ID:#x}");
    if !have.others.is_empty() {
        let ids: Vec<String> = have.others.iter().map(|i| format!("{i:#x}")).collect();
        return Err(Error::AlreadyExists {
            object: format!("VPP IPsec SPDs {}", ids.join(", ")),
            reason: format!(
                "VPP has IPsec SPDs that are not Scrambler's; VPP reports an interface's SPD \
                 by index, not id, so Scrambler's underlay guard ({obj}) cannot tell its \
                 bindings from theirs and is not installed (pod traffic to peers' underlay \
                 addresses would leave in cleartext): remove them"
            ),
        });
    }
    if !have.exists {
        c.request(&ipsec::IpsecSpdAddDel {
            is_add: true,
            spd_id: UNDERLAY_SPD_ID,
        })
        .await
        .map_err(vpp_err("add", &obj))?;
        rep.added += 1;
    }
    let have_set: BTreeSet<Policy> = have.policies.iter().map(|(p, _)| *p).collect();
    let add = want
        .iter()
        .filter(|p| !have_set.contains(*p))
        .map(|p| set_policy(c, p.entry(), true))
        .collect::<Vec<_>>();
    rep.added += pipelined(add).await?.len();
    rep.unchanged += have_set.intersection(want).count();
    if let Some(sw) = ifs.iter().find(|sw| have.other.contains(*sw)) {
        return Err(Error::AlreadyExists {
            object: format!("IPsec SPD binding of VPP interface sw_if_index {sw}"),
            reason: format!(
                "the underlay interface has an SPD bound and VPP binds one per interface; \
                 Scrambler's underlay guard ({obj}) cannot be bound, nor pod traffic to \
                 peers' underlay addresses kept off the wire: remove the other SPD"
            ),
        });
    }
    for sw in ifs.difference(&have.bound) {
        bind(c, *sw, true).await?;
        rep.added += 1;
    }
    for sw in have.bound.difference(ifs) {
        bind(c, *sw, false).await?;
        rep.removed += 1;
    }
    let stale = have
        .policies
        .iter()
        .filter(|(p, _)| !want.contains(p))
        .map(|(_, e)| set_policy(c, e.clone(), false))
        .collect::<Vec<_>>();
    rep.removed += pipelined(stale).await?.len();
    Ok(rep)
}

/// Takes the SPD away with its policies (VPP unbinds it from its interfaces).
pub(super) async fn remove(c: &VppClient, have: &HaveSpd) -> Result<usize> {
    if !have.exists {
        return Ok(0);
    }
    c.request(&ipsec::IpsecSpdAddDel {
        is_add: false,
        spd_id: UNDERLAY_SPD_ID,
    })
    .await
    .map_err(vpp_err("delete", &format!("SPD {UNDERLAY_SPD_ID:#x}")))?;
    Ok(1 + have.policies.len())
}

async fn set_policy(c: &VppClient, mut entry: IpsecSpdEntry, is_add: bool) -> Result<()> {
    entry.spd_id = UNDERLAY_SPD_ID;
    let what = Policy::of_entry(&entry)
        .map(|p| format!("{p:?}"))
        .unwrap_or_default();
    c.request(&ipsec::IpsecSpdEntryAddDel { is_add, entry })
        .await
        .map_err(vpp_err(
            if is_add { "add" } else { "delete" },
            &format!("policy {what} of SPD {UNDERLAY_SPD_ID:#x}"),
        ))?;
    Ok(())
}

async fn bind(c: &VppClient, sw: u32, is_add: bool) -> Result<()> {
    c.request(&ipsec::IpsecInterfaceAddDelSpd {
        is_add,
        sw_if_index: sw,
        spd_id: UNDERLAY_SPD_ID,
    })
    .await
    .map_err(|e| Error::Dataplane {
        dataplane: DATAPLANE.into(),
        op: format!(
            "{} SPD {UNDERLAY_SPD_ID:#x} {} sw_if_index {sw}",
            if is_add { "bind" } else { "unbind" },
            if is_add { "to" } else { "from" },
        ),
        reason: format!(
            "{e}{}",
            if is_add {
                " (VPP binds one SPD per interface: is another one bound to the underlay \
                 interface?)"
            } else {
                ""
            }
        ),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discards_each_local_pod_cidr_to_each_peer_underlay_and_bypasses_the_rest() {
        let m = super::super::tests::mesh(scrambler_core::Keys::single(1));
        let w = wanted(&m);
        let discards: Vec<_> = w.iter().filter(|p| p.discard).collect();
        let n = m.local.pod_cidrs.len() * m.peers.iter().map(|p| p.underlay.len()).sum::<usize>();
        assert_eq!(discards.len(), n, "{w:?}");
        assert!(discards.iter().all(|p| p.outbound
            && p.priority > BYPASS_PRIORITY
            && m.local.pod_cidrs.iter().any(|c| p.local.0 == c.network())));
        assert_eq!(w.iter().filter(|p| !p.discard).count(), 4, "{w:?}");
    }

    #[test]
    fn node_encryption_discards_vpps_own_underlay_traffic_to_peers_but_esp_and_bypass() {
        let mut m = super::super::tests::mesh(scrambler_core::Keys::single(1));
        let off = wanted(&m);
        m.node_encryption = Some(scrambler_core::NodeEncryption {
            bypass: vec!["tcp/2379".parse().unwrap()],
        });
        let on = wanted(&m);
        let added: Vec<&Policy> = on.difference(&off).collect();
        let l = m.local.underlay[0];
        let u = m.peers[0].underlay[0];
        // one discard per pair, ESP and the port both ways bypassed above it
        let discard: Vec<_> = added.iter().filter(|p| p.discard).collect();
        assert_eq!(discard.len(), 1, "{added:?}");
        assert_eq!((discard[0].local, discard[0].remote), ((l, l), (u, u)));
        assert_eq!(discard[0].proto, 0);
        let bypass: Vec<_> = added.iter().filter(|p| !p.discard).collect();
        assert_eq!(bypass.len(), 3, "{added:?}");
        assert!(bypass
            .iter()
            .all(|p| p.outbound && p.local == (l, l) && p.priority > discard[0].priority));
        assert!(bypass.iter().any(|p| p.proto == ESP));
        assert!(bypass
            .iter()
            .any(|p| p.proto == 6 && p.local_ports == (2379, 2379) && p.remote_ports == ALL_PORTS));
        assert!(bypass
            .iter()
            .any(|p| p.proto == 6 && p.remote_ports == (2379, 2379) && p.local_ports == ALL_PORTS));
        // below the pods' discards, above the general bypass
        assert!(discard[0].priority < DISCARD_PRIORITY && discard[0].priority > BYPASS_PRIORITY);
        // an entry round-trips through VPP's encoding, "any protocol" dumped as 255
        for p in &on {
            let mut e = p.entry();
            if e.protocol == 0 {
                e.protocol = ANY_PROTOCOL_DUMPED;
            }
            assert_eq!(Policy::of_entry(&e), Some(*p));
        }
    }
}
