//! Node encryption's policy-routing rules, shared by every dataplane that steers a host's
//! own traffic to its peers' underlay addresses by routing rules (the kernel's xfrm
//! interface, a VPP node's host link).
//!
//! Per address family, at three consecutive priorities of the owner's rule band:
//! * **bypass**: `ipproto tcp|udp sport N goto <nop>` and `… dport N goto <nop>` per bypass
//!   port (ports are matched as source *or* destination, both directions);
//! * **steer**: `ipproto P lookup <table>` for each of [`steered_protocols`];
//! * **nop**: `nop`, the bypass rules' `goto` target, from where the lookup goes on with the
//!   rules after the band (the main table's).
//!
//! The table holds a route per peer underlay address (into the mesh, or `unreachable`); a
//! destination that is no peer's underlay address finds no route there and falls through
//! to the next rules. Rules are constant in the number of peers.

use ipnet::IpNet;
use scrambler_core::node_encryption::BypassPort;

use crate::rule::{RuleSpec, RuleTarget};

/// IP protocols whose traffic node encryption steers, per family (IPv6 or not): TCP, UDP,
/// SCTP and ICMP (ICMPv6). Never ESP (50) nor "any" (0): the kernel's route lookup for an
/// ESP packet's outer header carries protocol 0 on older kernels and 50 on those with
/// "xfrm: respect ip protocols rules criteria when performing dst lookups" (Debian's
/// 6.1.0-57 has it: the VM test `vm_xnode_*` shows an `ipproto esp` rule catching it), so
/// no steering rule can match the node's own ESP.
pub fn steered_protocols(v6: bool) -> [u8; 4] {
    [6, 17, 132, if v6 { 58 } else { 1 }]
}

/// Where node encryption's rules go and what marks them: the priorities of the bypass,
/// steering and `nop` rules, the table the steering rules look up, and the rule protocol
/// (owner mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteeringRules {
    /// Priority of the bypass rules (`… goto <nop>`).
    pub bypass: u32,
    /// Priority of the steering rules (`ipproto P lookup <table>`).
    pub steer: u32,
    /// Priority of the `nop` rule (after `bypass` and `steer`).
    pub nop: u32,
    /// The table the steering rules look up.
    pub table: u32,
    /// Rule protocol marking the owner.
    pub protocol: u8,
}

impl SteeringRules {
    /// The rules of one family (`v6` or not) for the bypass ports `bypass` (see the
    /// module's description).
    pub fn rules(&self, v6: bool, bypass: &[BypassPort]) -> Vec<RuleSpec> {
        let all = if v6 {
            IpNet::V6(Default::default())
        } else {
            IpNet::V4(Default::default())
        };
        let rule = |priority, ipproto, target| RuleSpec {
            ipproto,
            target,
            ..RuleSpec::lookup(priority, all, self.table, self.protocol)
        };
        let mut out = Vec::new();
        for b in bypass {
            let goto = rule(
                self.bypass,
                Some(b.proto.number()),
                RuleTarget::Goto(self.nop),
            );
            out.push(RuleSpec {
                sport: Some(b.port),
                ..goto.clone()
            });
            out.push(RuleSpec {
                dport: Some(b.port),
                ..goto
            });
        }
        for p in steered_protocols(v6) {
            out.push(rule(self.steer, Some(p), RuleTarget::Table(self.table)));
        }
        out.push(rule(self.nop, None, RuleTarget::Nop));
        out
    }

    /// True when `r` has the exact shape of one of these rules, for any bypass port and
    /// either family: `from all`, no input interface, the owner's protocol, and at the
    /// bypass priority `ipproto tcp|udp sport|dport N goto <nop>`, at the steering priority
    /// `ipproto P lookup <table>` (P neither 0 nor ESP), at the `nop` priority `nop`.
    pub fn is_owned(&self, r: &RuleSpec) -> bool {
        let from_all = r.src.prefix_len() == 0;
        let no_ports = r.sport.is_none() && r.dport.is_none();
        let shape = if r.priority == self.bypass {
            matches!(r.ipproto, Some(6 | 17))
                && r.sport.is_some() != r.dport.is_some()
                && r.target == RuleTarget::Goto(self.nop)
        } else if r.priority == self.steer {
            r.ipproto.is_some_and(|p| p != 0 && p != 50)
                && no_ports
                && r.target == RuleTarget::Table(self.table)
        } else if r.priority == self.nop {
            r.ipproto.is_none() && no_ports && r.target == RuleTarget::Nop
        } else {
            false
        };
        shape && from_all && r.protocol == self.protocol && r.iif.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_core::node_encryption::BypassProto;

    const S: SteeringRules = SteeringRules {
        bypass: 0x5c01,
        steer: 0x5c02,
        nop: 0x5c03,
        table: 0x5c,
        protocol: 0x5c,
    };

    #[test]
    fn rules_bypass_then_steer_then_nop_and_all_are_owned() {
        let bypass = [BypassPort {
            proto: BypassProto::Tcp,
            port: 2379,
        }];
        let v4 = S.rules(false, &bypass);
        // 1 port × (sport, dport), 4 steering, 1 nop
        assert_eq!(v4.len(), 7, "{v4:?}");
        assert!(v4.iter().all(|r| S.is_owned(r)), "{v4:?}");
        assert!(v4.iter().all(|r| r.src == "0.0.0.0/0".parse().unwrap()));
        let goto: Vec<_> = v4.iter().filter(|r| r.priority == S.bypass).collect();
        assert_eq!(goto.len(), 2);
        assert!(goto
            .iter()
            .all(|r| r.ipproto == Some(6) && r.target == RuleTarget::Goto(S.nop)));
        assert!(goto
            .iter()
            .any(|r| r.sport == Some(2379) && r.dport.is_none()));
        assert!(goto
            .iter()
            .any(|r| r.dport == Some(2379) && r.sport.is_none()));
        let steer: Vec<_> = v4.iter().filter(|r| r.priority == S.steer).collect();
        assert_eq!(
            steer.iter().map(|r| r.ipproto).collect::<Vec<_>>(),
            [Some(6), Some(17), Some(132), Some(1)]
        );
        assert!(steer.iter().all(|r| r.target == RuleTarget::Table(S.table)));
        let v6 = S.rules(true, &[]);
        assert_eq!(v6.len(), 5);
        assert!(v6.iter().any(|r| r.ipproto == Some(58)));
        assert!(v6.iter().all(|r| r.src.addr().is_ipv6() && S.is_owned(r)));
    }

    #[test]
    fn foreign_shapes_are_not_owned() {
        let steer = S.rules(false, &[])[0].clone();
        assert!(S.is_owned(&steer));
        for other in [
            RuleSpec {
                protocol: 3,
                ..steer.clone()
            },
            RuleSpec {
                ipproto: Some(50),
                ..steer.clone()
            },
            RuleSpec {
                iif: Some("lo".into()),
                ..steer.clone()
            },
            RuleSpec {
                src: "10.0.0.0/8".parse().unwrap(),
                ..steer.clone()
            },
            RuleSpec {
                target: RuleTarget::Table(254),
                ..steer.clone()
            },
            RuleSpec {
                priority: 0x5c00,
                ..steer.clone()
            },
        ] {
            assert!(!S.is_owned(&other), "{other:?}");
        }
    }
}
