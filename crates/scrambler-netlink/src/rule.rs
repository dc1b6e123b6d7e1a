//! Policy-routing rules (`ip rule`): one message builder ([`RuleSpec`]), adding and
//! deleting them, and reading them back as [`RuleState`].
//!
//! A rule is identified by what it matches and where it points: its priority, its source
//! prefix, its input interface, IP protocol and ports, its action (a table lookup, a
//! `goto` or a `nop`) and its protocol number. Scrambler's rules carry its protocol number
//! (`FRA_PROTOCOL`, like its routes) and its own priorities, so a dump tells them apart
//! from anyone else's.

use crate::{errno, is_gone, kernel_error, Exists, Nl, EEXIST};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::{
    RuleAction, RuleAttribute, RuleFlags, RuleMessage, RulePortRange,
};
use netlink_packet_route::{AddressFamily, IpProtocol};
use rtnetlink::packet_core::{DefaultNla, Nla};
use scrambler_core::{Error, Result};
use std::net::IpAddr;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleTarget {
    /// `lookup <table>`.
    Table(u32),
    /// `goto <priority>`: go on with the first rule of that (higher) priority.
    Goto(u32),
    /// `nop`: nothing; the next rule follows (a `goto` target).
    Nop,
}

/// `from <src> [iif <iif>] [ipproto P] [sport S] [dport D] <target> priority <priority>
/// proto <protocol>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleSpec {
    /// Priority (the kernel tries rules in increasing priority).
    pub priority: u32,
    /// Source prefix the rule matches; a prefix of length 0 is `from all` of its family.
    pub src: IpNet,
    /// Input interface the rule matches (`lo`: the node's own packets, and the lookups
    /// of reverse-path filtering); `None`: any.
    pub iif: Option<String>,
    /// IP protocol number the rule matches (`ipproto`); `None`: any.
    pub ipproto: Option<u8>,
    /// Source port the rule matches (`sport`); `None`: any.
    pub sport: Option<u16>,
    /// Destination port the rule matches (`dport`); `None`: any.
    pub dport: Option<u16>,
    /// What it does.
    pub target: RuleTarget,
    /// Protocol number marking who made it.
    pub protocol: u8,
}

impl RuleSpec {
    /// `from src lookup table priority priority proto protocol`.
    pub fn lookup(priority: u32, src: IpNet, table: u32, protocol: u8) -> RuleSpec {
        RuleSpec {
            priority,
            src,
            iif: None,
            ipproto: None,
            sport: None,
            dport: None,
            target: RuleTarget::Table(table),
            protocol,
        }
    }

    /// The table it looks up, for a [`RuleTarget::Table`] rule.
    pub fn table(&self) -> Option<u32> {
        match self.target {
            RuleTarget::Table(t) => Some(t),
            _ => None,
        }
    }

    /// The rule as `ip rule` prints it, naming the rule in errors.
    pub fn name(&self) -> String {
        let mut s = if self.src.prefix_len() == 0 {
            format!("rule from all ({})", family_name(&self.src))
        } else {
            format!("rule from {}", self.src)
        };
        if let Some(i) = &self.iif {
            s += &format!(" iif {i}");
        }
        if let Some(p) = self.ipproto {
            s += &format!(" ipproto {p}");
        }
        if let Some(p) = self.sport {
            s += &format!(" sport {p}");
        }
        if let Some(p) = self.dport {
            s += &format!(" dport {p}");
        }
        s += &match self.target {
            RuleTarget::Table(t) => format!(" lookup {t}"),
            RuleTarget::Goto(p) => format!(" goto {p}"),
            RuleTarget::Nop => " nop".to_string(),
        };
        s + &format!(" priority {} proto {}", self.priority, self.protocol)
    }

    /// True when deleting this rule could delete `other` instead: the kernel matches a
    /// delete request on the attributes it carries only (a mark, `not`, a destination,
    /// ports … absent from the request match anything; a source of length 0 matches any
    /// source) and removes the first rule in its list that matches.
    pub fn delete_may_hit(&self, other: &RuleState) -> bool {
        let some_eq = |mine: Option<u16>, theirs: Option<(u16, u16)>| {
            mine.is_none_or(|p| theirs == Some((p, p)))
        };
        other.priority == self.priority
            && other.v6 == self.src.addr().is_ipv6()
            && (self.src.prefix_len() == 0 || other.src == Some(self.src.trunc()))
            && other.target == Some(self.target)
            && other.protocol == self.protocol
            && (self.iif.is_none() || other.iif == self.iif)
            && (self.ipproto.is_none() || other.ipproto == self.ipproto)
            && some_eq(self.sport, other.sport)
            && some_eq(self.dport, other.dport)
    }

    /// The rtnetlink message adding (or deleting) this rule.
    pub fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = match self.src {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        m.header.src_len = self.src.prefix_len();
        match self.target {
            RuleTarget::Table(table) => {
                m.header.action = RuleAction::ToTable;
                if table <= 255 {
                    m.header.table = table as u8;
                }
                m.attributes.push(RuleAttribute::Table(table));
            }
            RuleTarget::Goto(to) => {
                m.header.action = RuleAction::Goto;
                m.attributes.push(RuleAttribute::Goto(to));
            }
            RuleTarget::Nop => m.header.action = RuleAction::Nop,
        }
        m.attributes.push(RuleAttribute::Priority(self.priority));
        if self.src.prefix_len() > 0 {
            m.attributes
                .push(RuleAttribute::Source(self.src.trunc().network()));
        }
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(self.protocol)));
        if let Some(iif) = &self.iif {
            m.attributes.push(RuleAttribute::Iifname(iif.clone()));
        }
        if let Some(p) = self.ipproto {
            m.attributes
                .push(RuleAttribute::IpProtocol(IpProtocol::from(p)));
        }
        let range = |p: u16| RulePortRange { start: p, end: p };
        if let Some(p) = self.sport {
            m.attributes.push(RuleAttribute::SourcePortRange(range(p)));
        }
        if let Some(p) = self.dport {
            m.attributes
                .push(RuleAttribute::DestinationPortRange(range(p)));
        }
        m
    }
}

fn family_name(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ipv4",
        IpNet::V6(_) => "ipv6",
    }
}

/// One rule as the kernel reports it (the parts Scrambler looks at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleState {
    /// Priority.
    pub priority: u32,
    /// An IPv6 rule.
    pub v6: bool,
    /// Source prefix; `None`: `from all`.
    pub src: Option<IpNet>,
    /// Destination prefix; `None`: `to all`.
    pub dst: Option<IpNet>,
    /// Input interface; `None`: any.
    pub iif: Option<String>,
    /// IP protocol matched; `None`: any.
    pub ipproto: Option<u8>,
    /// Source port range matched; `None`: any.
    pub sport: Option<(u16, u16)>,
    /// Destination port range matched; `None`: any.
    pub dport: Option<(u16, u16)>,
    /// What it does: `None` for actions other than a lookup, a `goto` and a `nop`.
    pub target: Option<RuleTarget>,
    /// Protocol number.
    pub protocol: u8,
    /// The rule is more than what a [`RuleSpec`] describes: a header flag (`not`), a TOS,
    /// another action, or any attribute besides priority, source, destination, input
    /// interface, IP protocol, ports, table, goto target and protocol (a mark, an output
    /// interface, a suppressor, one unknown to this crate, …).
    pub other_selectors: bool,
}

impl RuleState {
    /// The [`RuleSpec`] this rule is, when a [`RuleSpec`] describes it (no destination,
    /// single ports, no other selector).
    pub fn spec(&self) -> Option<RuleSpec> {
        if self.dst.is_some() || self.other_selectors {
            return None;
        }
        let single = |r: Option<(u16, u16)>| match r {
            None => Some(None),
            Some((a, b)) if a == b => Some(Some(a)),
            Some(_) => None,
        };
        let any = if self.v6 {
            IpNet::V6(Default::default())
        } else {
            IpNet::V4(Default::default())
        };
        Some(RuleSpec {
            priority: self.priority,
            src: self.src.unwrap_or(any),
            iif: self.iif.clone(),
            ipproto: self.ipproto,
            sport: single(self.sport)?,
            dport: single(self.dport)?,
            target: self.target?,
            protocol: self.protocol,
        })
    }
}

/// `FRA_SPORT_MASK` and `FRA_DPORT_MASK` (linux/fib_rules.h).
const FRA_SPORT_MASK: u16 = 28;
const FRA_DPORT_MASK: u16 = 29;

/// True for a source or destination port mask of all ones (which matches the port range
/// exactly: what a rule without a mask does).
fn is_full_port_mask(nla: &DefaultNla) -> bool {
    if !matches!(nla.kind(), FRA_SPORT_MASK | FRA_DPORT_MASK) || nla.value_len() != 2 {
        return false;
    }
    let mut v = [0u8; 2];
    nla.emit_value(&mut v);
    u16::from_ne_bytes(v) == u16::MAX
}

fn rule_state(m: &RuleMessage) -> RuleState {
    let h = &m.header;
    let (target, known_action) = match h.action {
        RuleAction::ToTable => (Some(RuleTarget::Table(u32::from(h.table))), true),
        RuleAction::Goto => (None, true),
        RuleAction::Nop => (Some(RuleTarget::Nop), true),
        _ => (None, false),
    };
    // a `goto` whose target rule is missing is flagged unresolved by the kernel: still
    // the same rule; any other flag (`not`, a detached interface, …) makes it other
    let flags = h.flags.bits() & !RuleFlags::Unresolved.bits();
    let mut s = RuleState {
        priority: 0,
        v6: h.family == AddressFamily::Inet6,
        src: None,
        dst: None,
        iif: None,
        ipproto: None,
        sport: None,
        dport: None,
        target,
        protocol: 0,
        other_selectors: h.tos != 0 || !known_action || flags != 0,
    };
    let net = |ip: &IpAddr, len: u8| IpNet::new(*ip, len).ok().map(|n| n.trunc());
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => s.priority = *p,
            RuleAttribute::Source(ip) => s.src = net(ip, h.src_len),
            RuleAttribute::Destination(ip) => s.dst = net(ip, h.dst_len),
            RuleAttribute::Table(t) if h.action == RuleAction::ToTable => {
                s.target = Some(RuleTarget::Table(*t))
            }
            // the kernel reports every rule's table, 0 for a `goto` or a `nop`
            RuleAttribute::Table(0) => {}
            RuleAttribute::Goto(t) if h.action == RuleAction::Goto => {
                s.target = Some(RuleTarget::Goto(*t))
            }
            RuleAttribute::Protocol(p) => s.protocol = u8::from(*p),
            RuleAttribute::Iifname(i) => s.iif = Some(i.clone()),
            RuleAttribute::IpProtocol(p) => s.ipproto = u8::try_from(i32::from(*p)).ok(),
            RuleAttribute::SourcePortRange(r) => s.sport = Some((r.start, r.end)),
            RuleAttribute::DestinationPortRange(r) => s.dport = Some((r.start, r.end)),
            // newer kernels (6.15 on) report a port's mask: all ones is the port as given
            RuleAttribute::Other(nla) if is_full_port_mask(nla) => {}
            // what the kernel reports for every rule, at their "unset" values
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX)
            | RuleAttribute::L3MDev(false) => {}
            // anything else (a mark, an output interface, a suppressor, an attribute
            // this crate does not know, …) matches more than a plain rule
            _ => s.other_selectors = true,
        }
    }
    // a lookup in table 0, an unparsable protocol: not a rule Scrambler describes
    if s.target == Some(RuleTarget::Table(0)) || s.ipproto == Some(0) {
        s.other_selectors = true;
    }
    s
}

impl Nl {
    /// The rules of both families.
    pub async fn rules(&self) -> Result<Vec<RuleState>> {
        let mut out = Vec::new();
        for v in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let msgs: Vec<RuleMessage> = self
                .handle()
                .rule()
                .get(v)
                .execute()
                .try_collect()
                .await
                .map_err(|e| kernel_error("list rules", self.obj("rules"), &e))?;
            out.extend(msgs.iter().map(rule_state));
        }
        Ok(out)
    }

    /// Adds `rule`; `exists` says what the same rule found in the kernel means. Returns
    /// whether the rule was added.
    pub async fn add_rule(&self, rule: &RuleSpec, exists: Exists) -> Result<bool> {
        let mut req = self.handle().rule().add();
        *req.message_mut() = rule.message();
        match req.execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(EEXIST) => match exists {
                Exists::Keep => Ok(false),
                Exists::Fail => Err(Error::AlreadyExists {
                    object: self.obj(rule.name()),
                    reason: "the same rule exists".into(),
                }),
            },
            Err(e) => Err(kernel_error("add rule", self.obj(rule.name()), &e)),
        }
    }

    /// Deletes `rule` (matched by priority, source, table and protocol); a rule already
    /// gone is not an error. Returns whether it existed.
    pub async fn delete_rule(&self, rule: &RuleSpec) -> Result<bool> {
        match self.handle().rule().del(rule.message()).execute().await {
            Ok(()) => Ok(true),
            Err(e) if is_gone(&e) => Ok(false),
            Err(e) => Err(kernel_error("delete rule", self.obj(rule.name()), &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_reads_back_as_its_spec() {
        for (src, table, iif) in [
            ("10.0.1.0/24", 92, None),
            ("fd00:1::/64", 0x5c5c, None),
            ("10.0.1.0/24", 254, Some("lo".to_string())),
        ] {
            let r = RuleSpec {
                iif,
                ..RuleSpec::lookup(0x5c00, src.parse().unwrap(), table, 0x5c)
            };
            let st = rule_state(&r.message());
            assert_eq!(st.spec(), Some(r), "{st:?}");
        }
    }

    #[test]
    fn rules_with_other_selectors_are_not_plain_specs() {
        let mut m = RuleSpec::lookup(1, "10.0.0.0/8".parse().unwrap(), 92, 0x5c).message();
        m.attributes.push(RuleAttribute::FwMark(1));
        assert_eq!(rule_state(&m).spec(), None);
    }

    /// Ownership is a whitelist: a rule at Scrambler's priority, table and protocol that
    /// inverts its match or carries any other attribute is someone else's.
    #[test]
    fn inverted_rules_and_unknown_attributes_are_not_plain_specs() {
        use netlink_packet_route::rule::RuleFlags;
        let plain = RuleSpec::lookup(0x5c00, "10.0.1.0/24".parse().unwrap(), 92, 0x5c);
        // what the kernel adds to every rule, unset: still plain
        let mut m = plain.message();
        m.attributes
            .push(RuleAttribute::SuppressPrefixLen(u32::MAX));
        m.attributes.push(RuleAttribute::L3MDev(false));
        assert_eq!(rule_state(&m).spec(), Some(plain.clone()));
        let mut inverted = plain.message();
        inverted.header.flags = RuleFlags::Invert;
        let mut unknown = plain.message();
        unknown
            .attributes
            .push(RuleAttribute::Other(DefaultNla::new(99, vec![0; 4])));
        let with = |a: RuleAttribute| {
            let mut m = plain.message();
            m.attributes.push(a);
            m
        };
        for m in [
            inverted,
            unknown,
            with(RuleAttribute::SuppressPrefixLen(0)),
            with(RuleAttribute::SourcePortRange(RulePortRange {
                start: 1,
                end: 2,
            })),
            with(RuleAttribute::TunId(7)),
            with(RuleAttribute::FwMask(1)),
        ] {
            assert_eq!(rule_state(&m).spec(), None, "{m:?}");
        }
    }

    /// The shapes of node encryption's steering: protocol and port matches, `goto` and
    /// `nop` rules from all, of either family, read back as themselves.
    #[test]
    fn protocol_port_goto_and_nop_rules_read_back_as_their_specs() {
        let any4: IpNet = "0.0.0.0/0".parse().unwrap();
        let any6: IpNet = "::/0".parse().unwrap();
        let steer = RuleSpec {
            ipproto: Some(6),
            ..RuleSpec::lookup(0x5c02, any4, 92, 0x5c)
        };
        let bypass = RuleSpec {
            ipproto: Some(17),
            sport: Some(53),
            target: RuleTarget::Goto(0x5c03),
            ..RuleSpec::lookup(0x5c01, any6, 92, 0x5c)
        };
        let nop = RuleSpec {
            target: RuleTarget::Nop,
            ..RuleSpec::lookup(0x5c03, any4, 92, 0x5c)
        };
        for r in [steer.clone(), bypass.clone(), nop.clone()] {
            let m = r.message();
            // from all: no source attribute, as the kernel reports it
            assert!(!m
                .attributes
                .iter()
                .any(|a| matches!(a, RuleAttribute::Source(_))));
            assert_eq!(rule_state(&m).spec(), Some(r.clone()), "{m:?}");
            assert!(r.delete_may_hit(&rule_state(&m)));
        }
        assert_eq!(
            bypass.name(),
            "rule from all (ipv6) ipproto 17 sport 53 goto 23555 priority 23553 proto 92"
        );
        // as the kernel reports them: with table 0
        for r in [&bypass, &nop] {
            let mut m = r.message();
            m.attributes.push(RuleAttribute::Table(0));
            assert_eq!(rule_state(&m).spec().as_ref(), Some(r));
        }
        // a full port mask (kernels from 6.15 report one) is the port as given; another
        // mask is not a single port
        for (mask, same) in [(u16::MAX, true), (0xff00, false)] {
            let mut m = bypass.message();
            m.attributes.push(RuleAttribute::Other(DefaultNla::new(
                FRA_SPORT_MASK,
                mask.to_ne_bytes().to_vec(),
            )));
            assert_eq!(rule_state(&m).spec().is_some(), same, "{mask:#x}");
        }
        // an unresolved goto (its target deleted) is still the same rule
        let mut m = bypass.message();
        m.header.flags = RuleFlags::Unresolved;
        assert_eq!(rule_state(&m).spec(), Some(bypass.clone()));
        // a port range is not a single port; another family is another rule
        let mut m = bypass.message();
        m.attributes
            .push(RuleAttribute::DestinationPortRange(RulePortRange {
                start: 1,
                end: 9,
            }));
        assert_eq!(rule_state(&m).spec(), None);
        let v4 = RuleSpec {
            src: any4,
            ..bypass.clone()
        };
        assert!(!bypass.delete_may_hit(&rule_state(&v4.message())));
        // a delete without ports would hit the bypass rule: the kernel ignores what the
        // request does not carry
        let loose = RuleSpec {
            sport: None,
            ..bypass.clone()
        };
        assert!(loose.delete_may_hit(&rule_state(&bypass.message())));
        assert!(!bypass.delete_may_hit(&rule_state(&loose.message())));
    }
}
