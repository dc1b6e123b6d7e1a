//! Policy-routing rules (`ip rule`): one message builder ([`RuleSpec`]), adding and
//! deleting them, and reading them back as [`RuleState`].
//!
//! A rule is identified by what it matches and where it points: its priority, its source
//! prefix, its table and its protocol number. Scrambler's rules carry its protocol number
//! (`FRA_PROTOCOL`, like its routes) and its own priority, so a dump tells them apart from
//! anyone else's.

use crate::{errno, is_gone, kernel_error, Exists, Nl, EEXIST};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::route::RouteProtocol;
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::AddressFamily;
use scrambler_core::{Error, Result};
use std::net::IpAddr;

/// `from <src> [iif <iif>] lookup <table> priority <priority> proto <protocol>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleSpec {
    /// Priority (the kernel tries rules in increasing priority).
    pub priority: u32,
    /// Source prefix the rule matches.
    pub src: IpNet,
    /// Input interface the rule matches (`lo`: the node's own packets, and the lookups
    /// of reverse-path filtering); `None`: any.
    pub iif: Option<String>,
    /// Table it looks up.
    pub table: u32,
    /// Protocol number marking who made it.
    pub protocol: u8,
}

impl RuleSpec {
    /// `from src lookup table priority priority proto protocol`, naming the rule in errors.
    pub fn name(&self) -> String {
        let iif = match &self.iif {
            Some(i) => format!(" iif {i}"),
            None => String::new(),
        };
        format!(
            "rule from {}{iif} lookup {} priority {} proto {}",
            self.src, self.table, self.priority, self.protocol
        )
    }

    /// True when deleting this rule could delete `other` instead: the kernel matches a
    /// delete request on the attributes it carries only (a mark, `not`, a destination,
    /// ports … absent from the request match anything) and removes the first rule in
    /// its list that matches.
    pub fn delete_may_hit(&self, other: &RuleState) -> bool {
        other.priority == self.priority
            && other.src == Some(self.src.trunc())
            && other.table == self.table
            && other.protocol == self.protocol
            && (self.iif.is_none() || other.iif == self.iif)
    }

    /// The rtnetlink message adding (or deleting) this rule.
    pub fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = match self.src {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        m.header.src_len = self.src.prefix_len();
        m.header.action = RuleAction::ToTable;
        if self.table <= 255 {
            m.header.table = self.table as u8;
        }
        m.attributes.push(RuleAttribute::Table(self.table));
        m.attributes.push(RuleAttribute::Priority(self.priority));
        m.attributes
            .push(RuleAttribute::Source(self.src.trunc().network()));
        m.attributes
            .push(RuleAttribute::Protocol(RouteProtocol::from(self.protocol)));
        if let Some(iif) = &self.iif {
            m.attributes.push(RuleAttribute::Iifname(iif.clone()));
        }
        m
    }
}

/// One rule as the kernel reports it (the parts Scrambler looks at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleState {
    /// Priority.
    pub priority: u32,
    /// Source prefix; `None`: `from all`.
    pub src: Option<IpNet>,
    /// Destination prefix; `None`: `to all`.
    pub dst: Option<IpNet>,
    /// Input interface; `None`: any.
    pub iif: Option<String>,
    /// Table looked up (0 for actions other than a table lookup).
    pub table: u32,
    /// Protocol number.
    pub protocol: u8,
    /// The rule is more than a plain `from <prefix> [iif <name>] lookup <table>`: a header
    /// flag (`not`), a TOS, another action, or any attribute besides priority, source,
    /// destination, input interface, table and protocol (a mark, an output interface,
    /// ports, a suppressor, one unknown to this crate, …).
    pub other_selectors: bool,
}

impl RuleState {
    /// The [`RuleSpec`] this rule is, when it is a plain
    /// `from <prefix> [iif <name>] lookup <table>`.
    pub fn spec(&self) -> Option<RuleSpec> {
        match (self.src, self.dst, self.other_selectors) {
            (Some(src), None, false) => Some(RuleSpec {
                priority: self.priority,
                src,
                iif: self.iif.clone(),
                table: self.table,
                protocol: self.protocol,
            }),
            _ => None,
        }
    }
}

fn rule_state(m: &RuleMessage) -> RuleState {
    let h = &m.header;
    let mut s = RuleState {
        priority: 0,
        src: None,
        dst: None,
        iif: None,
        table: if h.action == RuleAction::ToTable {
            u32::from(h.table)
        } else {
            0
        },
        protocol: 0,
        // any header flag (`not`, a detached interface, …) makes it someone else's
        other_selectors: h.tos != 0 || h.action != RuleAction::ToTable || h.flags.bits() != 0,
    };
    let net = |ip: &IpAddr, len: u8| IpNet::new(*ip, len).ok().map(|n| n.trunc());
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => s.priority = *p,
            RuleAttribute::Source(ip) => s.src = net(ip, h.src_len),
            RuleAttribute::Destination(ip) => s.dst = net(ip, h.dst_len),
            RuleAttribute::Table(t) if h.action == RuleAction::ToTable => s.table = *t,
            RuleAttribute::Protocol(p) => s.protocol = u8::from(*p),
            RuleAttribute::Iifname(i) => s.iif = Some(i.clone()),
            // what the kernel reports for every rule, at their "unset" values
            RuleAttribute::SuppressPrefixLen(u32::MAX)
            | RuleAttribute::SuppressIfGroup(u32::MAX)
            | RuleAttribute::L3MDev(false) => {}
            // anything else (a mark, an output interface, ports, a goto, a suppressor,
            // an attribute this crate does not know, …) matches more than a plain rule
            _ => s.other_selectors = true,
        }
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
                priority: 0x5c00,
                src: src.parse().unwrap(),
                iif,
                table,
                protocol: 0x5c,
            };
            let st = rule_state(&r.message());
            assert_eq!(st.spec(), Some(r), "{st:?}");
        }
    }

    #[test]
    fn rules_with_other_selectors_are_not_plain_specs() {
        let mut m = RuleSpec {
            priority: 1,
            src: "10.0.0.0/8".parse().unwrap(),
            iif: None,
            table: 92,
            protocol: 0x5c,
        }
        .message();
        m.attributes.push(RuleAttribute::FwMark(1));
        assert_eq!(rule_state(&m).spec(), None);
    }

    /// Ownership is a whitelist: a rule at Scrambler's priority, table and protocol that
    /// inverts its match or carries any other attribute is someone else's.
    #[test]
    fn inverted_rules_and_unknown_attributes_are_not_plain_specs() {
        use netlink_packet_route::rule::RuleFlags;
        use rtnetlink::packet_core::DefaultNla;
        let plain = RuleSpec {
            priority: 0x5c00,
            src: "10.0.1.0/24".parse().unwrap(),
            iif: None,
            table: 92,
            protocol: 0x5c,
        };
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
            with(RuleAttribute::Goto(1)),
            with(RuleAttribute::TunId(7)),
            with(RuleAttribute::FwMask(1)),
        ] {
            assert_eq!(rule_state(&m).spec(), None, "{m:?}");
        }
    }
}
