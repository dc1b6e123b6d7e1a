//! XFRM objects as Scrambler sees them — the desired ones and the ones found in a dump —
//! and their conversion to and from netlink messages.

use ipnet::IpNet;
use netlink_packet_xfrm::{
    policy::{DelGetMessage as PolicyDelGet, ModifyMessage as PolicyModify},
    state::{DelGetMessage as StateDelGet, GetDumpMessage, ModifyMessage as StateModify},
    Address, AlgAead, LifetimeConfig, ReplayEsn, Selector, UserPolicyId, UserPolicyInfo, UserSaId,
    UserSaInfo, UserTemplate, XfrmAttrs, XfrmMessage, AF_INET, AF_INET6, IPPROTO_ESP,
    XFRM_MODE_TUNNEL, XFRM_POLICY_ALLOW, XFRM_POLICY_BLOCK, XFRM_POLICY_FWD, XFRM_POLICY_IN,
    XFRM_POLICY_OUT, XFRM_STATE_AF_UNSPEC, XFRM_STATE_ESN,
};
use scrambler_core::esp;
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use zeroize::{Zeroize, Zeroizing};

/// Policy direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Dir {
    In,
    Out,
    Fwd,
}

impl Dir {
    fn raw(self) -> u8 {
        match self {
            Dir::In => XFRM_POLICY_IN,
            Dir::Out => XFRM_POLICY_OUT,
            Dir::Fwd => XFRM_POLICY_FWD,
        }
    }

    fn from_raw(d: u8) -> Option<Dir> {
        match d {
            XFRM_POLICY_IN => Some(Dir::In),
            XFRM_POLICY_OUT => Some(Dir::Out),
            XFRM_POLICY_FWD => Some(Dir::Fwd),
            _ => None,
        }
    }
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::In => "in",
            Dir::Out => "out",
            Dir::Fwd => "fwd",
        })
    }
}

/// What the kernel identifies a policy by (with mark 0 and type main): replacing one
/// with the same key is an update, adding one is refused with EEXIST.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PolicyKey {
    pub dir: Dir,
    pub src: IpNet,
    pub dst: IpNet,
    pub if_id: u32,
    /// The selector's outgoing interface index (`dev` in `ip xfrm policy`), 0 for any:
    /// only the IPv6 interface bypass names one (see [`crate::plan`]).
    pub ifindex: u32,
    /// The selector's protocol and ports: any, except on node encryption's bypass
    /// policies (see [`crate::plan`]).
    pub l4: L4,
}

/// The transport part of a policy selector: an IP protocol and one source or destination
/// port (`proto tcp sport 2379`), or anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub(crate) struct L4 {
    /// IP protocol number, 0 for any.
    pub proto: u8,
    /// Source port, 0 for any.
    pub sport: u16,
    /// Destination port, 0 for any.
    pub dport: u16,
}

impl L4 {
    /// Any protocol, any port.
    pub const ANY: L4 = L4 {
        proto: 0,
        sport: 0,
        dport: 0,
    };

    /// True for [`L4::ANY`].
    pub fn is_any(&self) -> bool {
        *self == L4::ANY
    }
}

impl fmt::Display for L4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proto != 0 {
            write!(f, " proto {}", self.proto)?;
        }
        if self.sport != 0 {
            write!(f, " sport {}", self.sport)?;
        }
        if self.dport != 0 {
            write!(f, " dport {}", self.dport)?;
        }
        Ok(())
    }
}

impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "policy {} {} -> {}{}",
            self.dir, self.src, self.dst, self.l4
        )?;
        if self.ifindex != 0 {
            write!(f, " dev #{}", self.ifindex)?;
        }
        if self.if_id != 0 {
            write!(f, " if_id {:#x}", self.if_id)?;
        }
        Ok(())
    }
}

/// The ESP tunnel template of a mesh policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tmpl {
    /// Outer source.
    pub src: IpAddr,
    /// Outer destination.
    pub dst: IpAddr,
    /// Reqid (ownership mark + peer id).
    pub reqid: u32,
}

/// A policy: key plus what may change in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    pub key: PolicyKey,
    pub priority: u32,
    pub block: bool,
    pub tmpl: Option<Tmpl>,
}

/// A policy found in a dump.
#[derive(Debug, Clone)]
pub(crate) struct FoundPolicy {
    pub policy: Policy,
    /// Kernel index (for deletion).
    pub index: u32,
    /// Selector carried ports or protocol: it is not one of Scrambler's shapes.
    pub unusual: bool,
}

/// What the kernel identifies a state by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct StateKey {
    pub daddr: IpAddr,
    pub spi: u32,
}

impl fmt::Display for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "state esp spi {:#010x} dst {}", self.spi, self.daddr)
    }
}

/// A state's comparable content. `key_digest` is SHA-256 of the key material, so a
/// changed key is noticed without keeping the kernel's copy of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StateShape {
    pub key: StateKey,
    pub saddr: IpAddr,
    pub reqid: u32,
    pub if_id: u32,
    pub alg: String,
    pub icv_bits: u32,
    pub key_digest: [u8; 32],
    pub esn: bool,
    pub replay_window: u32,
    pub tunnel: bool,
}

/// A desired state: shape plus the key material (zeroized on drop, never printed).
pub(crate) struct DesiredState {
    pub shape: StateShape,
    pub material: Zeroizing<Vec<u8>>,
    /// Peer node id.
    pub peer: u16,
    /// Key generation.
    pub generation: u32,
    /// Inbound (peer → us) or outbound.
    pub inbound: bool,
    /// An inbound state of one of the local node's previous epochs
    /// ([`scrambler_core::Node::previous_epochs`]): kept while installed, never made anew.
    pub kept: bool,
}

impl fmt::Debug for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesiredState")
            .field("key", &self.shape.key)
            .field("peer", &self.peer)
            .field("generation", &self.generation)
            .field("inbound", &self.inbound)
            .field("kept", &self.kept)
            .finish_non_exhaustive()
    }
}

/// A state found in a dump, with its counters.
#[derive(Debug, Clone)]
pub(crate) struct FoundState {
    pub shape: StateShape,
    pub family: u16,
    pub bytes: u64,
    pub packets: u64,
    pub replay_window_drops: u32,
    pub replay_drops: u32,
    pub integrity_failed: u32,
}

/// Digest of key material used to compare states.
pub(crate) fn key_digest(material: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"scrambler-xfrm-key-digest");
    h.update(material);
    h.finalize().into()
}

fn family_of(a: &IpAddr) -> u16 {
    if a.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn addr_to_ip(a: &Address, family: u16) -> Option<IpAddr> {
    match family {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
            a.addr[0], a.addr[1], a.addr[2], a.addr[3],
        ))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(a.addr))),
        _ => None,
    }
}

fn selector_for(key: &PolicyKey) -> Selector {
    let mask = |port: u16| if port == 0 { 0 } else { u16::MAX };
    Selector {
        ifindex: key.ifindex as i32,
        saddr: Address::from_ip(&key.src.network()),
        prefixlen_s: key.src.prefix_len(),
        daddr: Address::from_ip(&key.dst.network()),
        prefixlen_d: key.dst.prefix_len(),
        family: family_of(&key.src.addr()),
        proto: key.l4.proto,
        sport: key.l4.sport,
        sport_mask: mask(key.l4.sport),
        dport: key.l4.dport,
        dport_mask: mask(key.l4.dport),
        ..Default::default()
    }
}

fn net_of(a: &Address, family: u16, prefix: u8) -> Option<IpNet> {
    IpNet::new(addr_to_ip(a, family)?, prefix)
        .ok()
        .map(|n| n.trunc())
}

impl Policy {
    fn info(&self) -> UserPolicyInfo {
        UserPolicyInfo {
            selector: selector_for(&self.key),
            lifetime_cfg: LifetimeConfig::default(),
            priority: self.priority,
            direction: self.key.dir.raw(),
            action: if self.block {
                XFRM_POLICY_BLOCK
            } else {
                XFRM_POLICY_ALLOW
            },
            ..Default::default()
        }
    }

    fn nlas(&self) -> Vec<XfrmAttrs> {
        let mut nlas = Vec::new();
        if let Some(t) = &self.tmpl {
            let mut ut = UserTemplate::default();
            ut.source(&t.src);
            ut.destination(&t.dst);
            ut.protocol(IPPROTO_ESP);
            ut.mode(XFRM_MODE_TUNNEL);
            ut.reqid(t.reqid);
            nlas.push(XfrmAttrs::Template(vec![ut]));
        }
        if self.key.if_id != 0 {
            nlas.push(XfrmAttrs::IfId(self.key.if_id));
        }
        nlas
    }

    /// XFRM_MSG_NEWPOLICY (refused with EEXIST when the key is taken).
    pub fn add_msg(&self) -> XfrmMessage {
        XfrmMessage::AddPolicy(PolicyModify {
            user_policy_info: self.info(),
            nlas: self.nlas(),
        })
    }

    /// XFRM_MSG_UPDPOLICY (replaces the policy with the same key in place).
    pub fn update_msg(&self) -> XfrmMessage {
        XfrmMessage::UpdatePolicy(PolicyModify {
            user_policy_info: self.info(),
            nlas: self.nlas(),
        })
    }
}

impl FoundPolicy {
    /// Parses a policy dump answer; `None` for shapes Scrambler cannot describe.
    pub fn parse(m: &PolicyModify) -> Option<FoundPolicy> {
        let i = &m.user_policy_info;
        let s = &i.selector;
        let dir = Dir::from_raw(i.direction)?;
        let src = net_of(&s.saddr, s.family, s.prefixlen_s)?;
        let dst = net_of(&s.daddr, s.family, s.prefixlen_d)?;
        let mut if_id = 0;
        let mut tmpl = None;
        let mut extra_tmpls = false;
        for nla in &m.nlas {
            match nla {
                XfrmAttrs::IfId(v) => if_id = *v,
                XfrmAttrs::Template(ts) => {
                    extra_tmpls = ts.len() > 1;
                    tmpl = ts.first().and_then(|t| {
                        let ok = t.id.proto == IPPROTO_ESP && t.mode == XFRM_MODE_TUNNEL;
                        Some(Tmpl {
                            src: addr_to_ip(&t.saddr, t.family)?,
                            dst: addr_to_ip(&t.id.daddr, t.family)?,
                            // a template of another shape never equals a desired one
                            reqid: if ok { t.reqid } else { 0 },
                        })
                    });
                }
                _ => {}
            }
        }
        Some(FoundPolicy {
            policy: Policy {
                key: PolicyKey {
                    dir,
                    src,
                    dst,
                    if_id,
                    ifindex: u32::try_from(s.ifindex).unwrap_or(0),
                    l4: L4 {
                        proto: s.proto,
                        sport: s.sport,
                        dport: s.dport,
                    },
                },
                priority: i.priority,
                block: i.action == XFRM_POLICY_BLOCK,
                tmpl,
            },
            index: i.index,
            // ports matched in part (a mask other than all or nothing, a port under a zero
            // mask) are not a shape Scrambler makes
            unusual: !matches!((s.sport, s.sport_mask), (0, 0) | (_, u16::MAX))
                || !matches!((s.dport, s.dport_mask), (0, 0) | (_, u16::MAX))
                || (s.sport_mask == u16::MAX && s.sport == 0)
                || (s.dport_mask == u16::MAX && s.dport == 0)
                || s.ifindex < 0
                || extra_tmpls,
        })
    }

    /// XFRM_MSG_DELPOLICY by kernel index.
    pub fn delete_msg(&self) -> XfrmMessage {
        let mut nlas = Vec::new();
        if self.policy.key.if_id != 0 {
            nlas.push(XfrmAttrs::IfId(self.policy.key.if_id));
        }
        XfrmMessage::DeletePolicy(PolicyDelGet {
            user_policy_id: UserPolicyId {
                selector: selector_for(&self.policy.key),
                index: self.index,
                direction: self.policy.key.dir.raw(),
            },
            nlas,
        })
    }
}

impl PolicyKey {
    /// XFRM_MSG_GETPOLICY of the policy with this key, found by selector (index 0): the
    /// kernel holds at most one policy per (direction, selector, mark, if_id) and answers
    /// with that one, or ENOENT (no mark attribute: mark 0/0).
    pub fn get_msg(&self) -> XfrmMessage {
        let mut nlas = Vec::new();
        if self.if_id != 0 {
            nlas.push(XfrmAttrs::IfId(self.if_id));
        }
        XfrmMessage::GetPolicy(PolicyDelGet {
            user_policy_id: UserPolicyId {
                selector: selector_for(self),
                index: 0,
                direction: self.dir.raw(),
            },
            nlas,
        })
    }
}

/// Request to dump every policy.
pub(crate) fn policy_dump_msg() -> XfrmMessage {
    XfrmMessage::GetPolicy(PolicyDelGet::default())
}

/// Request to dump every state.
pub(crate) fn state_dump_msg() -> XfrmMessage {
    XfrmMessage::GetDumpSa(GetDumpMessage::default())
}

impl DesiredState {
    /// XFRM_MSG_NEWSA. The returned message holds key material: scrub it after use.
    pub fn add_msg(&self) -> XfrmMessage {
        let s = &self.shape;
        let mut info = UserSaInfo::default();
        info.id.daddr = Address::from_ip(&s.key.daddr);
        info.id.spi = s.key.spi;
        info.id.proto = IPPROTO_ESP;
        info.saddr = Address::from_ip(&s.saddr);
        info.family = family_of(&s.key.daddr);
        info.lifetime_cfg = LifetimeConfig::default();
        info.reqid = s.reqid;
        info.mode = XFRM_MODE_TUNNEL;
        info.replay_window = 0; // the ESN attribute carries the window
                                // `af-unspec`: no selector family on the state, so one SA carries both inner
                                // families (dual-stack pods over one underlay family: IPv4 in IPv6 and the other
                                // way round need it — without it the kernel gives the state the outer family's
                                // selector and finds no state for the other family's packets, and sets up no
                                // inner mode for them on input). It is not part of the compared shape: a state
                                // installed without it is not replaced (never re-keyed in place)
        info.flags = XFRM_STATE_AF_UNSPEC | if s.esn { XFRM_STATE_ESN } else { 0 };
        let mut name = [0u8; 64];
        name[..s.alg.len()].copy_from_slice(s.alg.as_bytes());
        let words = s.replay_window.div_ceil(32);
        let nlas = vec![
            XfrmAttrs::EncryptionAlgAead(AlgAead {
                alg_name: name,
                alg_key_len: (self.material.len() * 8) as u32,
                alg_icv_len: s.icv_bits,
                alg_key: self.material.to_vec(),
            }),
            XfrmAttrs::ReplayStateEsn(ReplayEsn {
                bmp_len: words,
                replay_window: s.replay_window,
                bmp: vec![0; words as usize],
                ..Default::default()
            }),
            XfrmAttrs::IfId(s.if_id),
        ];
        XfrmMessage::AddSa(StateModify {
            user_sa_info: info,
            nlas,
        })
    }
}

impl FoundState {
    /// Parses a state dump answer, keeping only a digest of its key; zeroes the key in
    /// the message.
    pub fn parse(m: &mut StateModify) -> Option<FoundState> {
        let i = &m.user_sa_info;
        if i.id.proto != IPPROTO_ESP {
            return None;
        }
        let daddr = addr_to_ip(&i.id.daddr, i.family)?;
        let saddr = addr_to_ip(&i.saddr, i.family)?;
        let mut shape = StateShape {
            key: StateKey {
                daddr,
                spi: i.id.spi,
            },
            saddr,
            reqid: i.reqid,
            if_id: 0,
            alg: String::new(),
            icv_bits: 0,
            key_digest: [0; 32],
            esn: i.flags & XFRM_STATE_ESN != 0,
            replay_window: i.replay_window as u32,
            tunnel: i.mode == XFRM_MODE_TUNNEL,
        };
        let found = FoundState {
            family: i.family,
            bytes: i.lifetime_cur.bytes,
            packets: i.lifetime_cur.packets,
            replay_window_drops: i.stats.replay_window,
            replay_drops: i.stats.replay,
            integrity_failed: i.stats.integrity_failed,
            shape: shape.clone(),
        };
        for nla in m.nlas.iter_mut() {
            match nla {
                XfrmAttrs::IfId(v) => shape.if_id = *v,
                XfrmAttrs::EncryptionAlgAead(a) => {
                    let end = a.alg_name.iter().position(|b| *b == 0).unwrap_or(64);
                    shape.alg = String::from_utf8_lossy(&a.alg_name[..end]).into_owned();
                    shape.icv_bits = a.alg_icv_len;
                    shape.key_digest = key_digest(&a.alg_key);
                    a.alg_key.zeroize();
                }
                XfrmAttrs::ReplayStateEsn(r) => shape.replay_window = r.replay_window,
                _ => {}
            }
        }
        Some(FoundState { shape, ..found })
    }

    /// XFRM_MSG_DELSA.
    pub fn delete_msg(&self) -> XfrmMessage {
        delete_state_msg(&self.shape.key, self.family)
    }
}

/// XFRM_MSG_DELSA for `key`.
pub(crate) fn delete_state_msg(key: &StateKey, family: u16) -> XfrmMessage {
    XfrmMessage::DeleteSa(StateDelGet {
        user_sa_id: UserSaId {
            daddr: Address::from_ip(&key.daddr),
            spi: key.spi,
            family,
            proto: IPPROTO_ESP,
        },
        nlas: vec![],
    })
}

/// The shape every Scrambler state has, for the parts fixed by scrambler_core::esp.
pub(crate) fn esp_shape(
    key: StateKey,
    saddr: IpAddr,
    reqid: u32,
    if_id: u32,
    material: &[u8],
) -> StateShape {
    StateShape {
        key,
        saddr,
        reqid,
        if_id,
        alg: esp::KERNEL_AEAD.to_string(),
        icv_bits: esp::ICV_BITS,
        key_digest: key_digest(material),
        esn: esp::ESN,
        replay_window: esp::REPLAY_WINDOW,
        tunnel: true,
    }
}

/// Address family number of an address (for deletes).
pub(crate) fn family(a: &IpAddr) -> u16 {
    family_of(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, Parseable};

    #[test]
    fn policy_round_trips_through_the_wire_format() {
        let p = Policy {
            key: PolicyKey {
                dir: Dir::Fwd,
                src: "10.2.0.0/24".parse().unwrap(),
                dst: "10.1.0.0/24".parse().unwrap(),
                if_id: 7,
                ifindex: 0,
                l4: L4::ANY,
            },
            priority: 0x5c02,
            block: false,
            tmpl: Some(Tmpl {
                src: "192.0.2.2".parse().unwrap(),
                dst: "192.0.2.1".parse().unwrap(),
                reqid: 0x5c00_0002,
            }),
        };
        let XfrmMessage::AddPolicy(m) = p.add_msg() else {
            panic!()
        };
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        let back = PolicyModify::parse(&buf).unwrap();
        let found = FoundPolicy::parse(&back).unwrap();
        assert_eq!(found.policy, p);
        assert!(!found.unusual);
    }

    #[test]
    fn a_port_selector_round_trips_and_partial_masks_are_unusual() {
        let p = Policy {
            key: PolicyKey {
                dir: Dir::Out,
                src: "192.0.2.1/32".parse().unwrap(),
                dst: "192.0.2.2/32".parse().unwrap(),
                if_id: 0,
                ifindex: 0,
                l4: L4 {
                    proto: 6,
                    sport: 2379,
                    dport: 0,
                },
            },
            priority: 0x5c00,
            block: false,
            tmpl: None,
        };
        let XfrmMessage::AddPolicy(mut m) = p.add_msg() else {
            panic!()
        };
        let found = FoundPolicy::parse(&m).unwrap();
        assert_eq!(found.policy, p);
        assert!(!found.unusual);
        assert_eq!(
            p.key.to_string(),
            "policy out 192.0.2.1/32 -> 192.0.2.2/32 proto 6 sport 2379"
        );
        m.user_policy_info.selector.sport_mask = 0xff00;
        assert!(FoundPolicy::parse(&m).unwrap().unusual);
    }

    #[test]
    fn state_parse_keeps_digest_and_zeroes_key() {
        let material = vec![9u8; 20];
        let d = DesiredState {
            shape: esp_shape(
                StateKey {
                    daddr: "192.0.2.1".parse().unwrap(),
                    spi: 0x0100_0201,
                },
                "192.0.2.2".parse().unwrap(),
                0x5c00_0002,
                7,
                &material,
            ),
            material: Zeroizing::new(material),
            peer: 2,
            generation: 0,
            inbound: true,
            kept: false,
        };
        let XfrmMessage::AddSa(mut m) = d.add_msg() else {
            panic!()
        };
        let found = FoundState::parse(&mut m).unwrap();
        assert_eq!(found.shape, d.shape);
        for nla in &m.nlas {
            if let XfrmAttrs::EncryptionAlgAead(a) = nla {
                assert!(a.alg_key.iter().all(|b| *b == 0));
            }
        }
        assert!(!format!("{d:?}").contains("9, 9"));
    }
}
