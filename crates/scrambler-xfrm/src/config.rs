//! Configuration of the XFRM dataplane and the ownership marks derived from it.

use ipnet::IpNet;
use scrambler_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// Default `if_id` of the Scrambler xfrm interface and of every state and mesh policy.
pub const DEFAULT_IF_ID: u32 = 0x5c5c;
/// Default interface name.
pub const DEFAULT_INTERFACE: &str = "scrambler0";
/// Default first priority of Scrambler's policy band.
pub const DEFAULT_PRIORITY_BASE: u32 = 0x5c00;
/// Default reqid base: reqid = base | peer node id.
pub const DEFAULT_REQID_BASE: u32 = 0x5c00_0000;
/// Default route protocol number marking Scrambler's routes (`proto 92`).
pub const DEFAULT_ROUTE_PROTOCOL: u8 = 0x5c;
/// Default priority of Scrambler's policy-routing rules (`ip rule … priority 23552`):
/// after the `local` table's rule (0), before the `main` table's (32766).
pub const DEFAULT_RULE_PRIORITY: u32 = 0x5c00;
/// Default routing table of Scrambler's routes to peers' underlay addresses (`table 92`).
pub const DEFAULT_ROUTE_TABLE: u32 = 0x5c;
/// Width of Scrambler's band of rule priorities, from [`XfrmConfig::rule_priority`]: the
/// pods' rules `from <pod CIDR> lookup <route_table>` at its first priority, node
/// encryption's bypass (`goto`), steering (`ipproto … lookup <route_table>`) and `nop`
/// rules at the next three.
pub const RULE_BAND: u32 = 4;

/// Offset in the rule band of the pods' rules.
pub(crate) const RULE_PODS: u32 = 0;
/// Offset of node encryption's bypass rules (`ipproto P sport|dport N goto <nop>`).
pub(crate) const RULE_BYPASS: u32 = 1;
/// Offset of node encryption's steering rules (`ipproto P lookup <route_table>`).
pub(crate) const RULE_STEER: u32 = 2;
/// Offset of the `nop` rule the bypass rules go to.
pub(crate) const RULE_NOP: u32 = 3;

/// Width of the priority band: policies whose priority lies in
/// `[priority_base, priority_base + PRIORITY_BAND)` are Scrambler's.
pub const PRIORITY_BAND: u32 = 8;

/// Metric of Scrambler's `unreachable` routes to the IPv6 cluster supernets in the main
/// table (see `Desired::unreachable`): the highest a route can have, so that any other
/// route to the same prefix, and every more specific one (a peer's pod CIDR into the
/// interface, a local pod), wins. Together with [`XfrmConfig::route_protocol`] it marks
/// them as Scrambler's.
pub const UNREACHABLE_METRIC: u32 = u32::MAX;

/// Offset of the local-to-local bypass policies inside the band (highest precedence).
pub(crate) const PRIO_BYPASS: u32 = 0;
/// Offset of the mesh policies (allow + ESP template, carrying the if_id).
pub(crate) const PRIO_MESH: u32 = 2;
/// Offset of the fail-closed guard (block, no if_id).
pub(crate) const PRIO_GUARD: u32 = 4;

/// How the route-based steering interface is obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LinkMode {
    /// Scrambler creates (and on `remove` deletes) an xfrm interface named
    /// [`XfrmConfig::interface`] with [`XfrmConfig::if_id`], sets its MTU and
    /// `disable_xfrm`, and brings it up. Needs `CONFIG_XFRM_INTERFACE`.
    #[default]
    Create,
    /// The interface already exists and belongs to someone else (a test's veth, an
    /// interface made by the node's network config): Scrambler routes through it but
    /// never creates, changes or deletes it.
    Existing,
}

/// Settings of an [`crate::XfrmTunnel`]. Every field has a default; a node's agent
/// usually only sets [`XfrmConfig::underlay_mtu`] (the guard's supernets come from the
/// mesh's `clusterCidrs`).
///
/// ```
/// use scrambler_xfrm::XfrmConfig;
/// let cfg = XfrmConfig {
///     guard_supernets: vec!["10.0.0.0/8".parse().unwrap()],
///     underlay_mtu: 9000,
///     ..XfrmConfig::default()
/// };
/// assert_eq!(cfg.interface, "scrambler0");
/// cfg.validate().unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct XfrmConfig {
    /// XFRM interface id: the xfrm interface, every ESP state and every mesh policy carry
    /// it, so only traffic routed into the interface is encrypted with Scrambler's SAs.
    pub if_id: u32,
    /// Name of the xfrm interface (≤ 15 bytes).
    pub interface: String,
    /// Create the interface, or use an existing one.
    pub link: LinkMode,
    /// First priority of Scrambler's policy band (see [`PRIORITY_BAND`]).
    pub priority_base: u32,
    /// Reqid base; its low 16 bits must be zero: reqid = base | peer id.
    pub reqid_base: u32,
    /// Route protocol number of Scrambler's routes (and of its policy-routing rules).
    pub route_protocol: u8,
    /// Priority of the rules `from <local pod CIDR> lookup <route_table>` that steer pods'
    /// traffic to peers' underlay addresses into the interface, and first of Scrambler's
    /// [`RULE_BAND`] rule priorities (node encryption's rules take the next three). A rule
    /// is Scrambler's when it has one of these priorities, [`XfrmConfig::route_protocol`]
    /// and exactly the shape Scrambler gives a rule of that priority.
    pub rule_priority: u32,
    /// Routing table holding the routes `<peer underlay address> dev <interface>`; only
    /// Scrambler's rules look it up.
    pub route_table: u32,
    /// Supernets to guard in addition to the mesh's `clusterCidrs` (which are always
    /// guarded): e.g. a range of another cluster's pods that must never be reached in
    /// cleartext. Usually empty.
    pub guard_supernets: Vec<IpNet>,
    /// MTU of the underlay; the xfrm interface gets this minus the ESP overhead.
    pub underlay_mtu: u32,
    /// Program ESP states. `false` programs policies, guard and routes only (for kernels
    /// without ESP, e.g. to test the policy logic); `status` then says `encrypted: false`.
    pub program_states: bool,
}

impl Default for XfrmConfig {
    fn default() -> Self {
        XfrmConfig {
            if_id: DEFAULT_IF_ID,
            interface: DEFAULT_INTERFACE.into(),
            link: LinkMode::Create,
            priority_base: DEFAULT_PRIORITY_BASE,
            reqid_base: DEFAULT_REQID_BASE,
            route_protocol: DEFAULT_ROUTE_PROTOCOL,
            rule_priority: DEFAULT_RULE_PRIORITY,
            route_table: DEFAULT_ROUTE_TABLE,
            guard_supernets: Vec::new(),
            underlay_mtu: 1500,
            program_states: true,
        }
    }
}

impl XfrmConfig {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<()> {
        if self.if_id == 0 {
            return Err(Error::config("xfrm if_id must not be 0"));
        }
        if self.interface.is_empty() || self.interface.len() > 15 || self.interface.contains('/') {
            return Err(Error::config(format!(
                "xfrm interface name {:?} must be 1..=15 bytes without '/'",
                self.interface
            )));
        }
        if self.reqid_base & 0xffff != 0 || self.reqid_base == 0 {
            return Err(Error::config(format!(
                "reqid base {:#x} must be non-zero with its low 16 bits clear",
                self.reqid_base
            )));
        }
        if self.priority_base.checked_add(PRIORITY_BAND).is_none() {
            return Err(Error::config("priority base too large"));
        }
        if matches!(self.route_protocol, 0..=4) {
            return Err(Error::config(format!(
                "route protocol {} is reserved by the kernel",
                self.route_protocol
            )));
        }
        if self.rule_priority == 0 || self.rule_priority > 32766 - RULE_BAND {
            return Err(Error::config(format!(
                "rule priority {} must lie between 1 and {} (after the local table's \
                 rule; Scrambler's {RULE_BAND} rule priorities before the main table's)",
                self.rule_priority,
                32766 - RULE_BAND
            )));
        }
        if matches!(self.route_table, 0 | 253..=255) {
            return Err(Error::config(format!(
                "routing table {} is reserved (unspec, default, main, local)",
                self.route_table
            )));
        }
        if self.underlay_mtu < 1280 {
            return Err(Error::config(format!(
                "underlay MTU {} is below 1280",
                self.underlay_mtu
            )));
        }
        Ok(())
    }

    /// Reqid of every state and template of the tunnel to/from peer `peer_id`.
    pub fn reqid(&self, peer_id: u16) -> u32 {
        self.reqid_base | peer_id as u32
    }

    /// The peer id encoded in an owned reqid.
    pub fn peer_of_reqid(&self, reqid: u32) -> Option<u16> {
        (reqid & 0xffff_0000 == self.reqid_base).then_some((reqid & 0xffff) as u16)
    }

    /// True for the priorities of Scrambler's policy band.
    pub fn owns_priority(&self, priority: u32) -> bool {
        priority >= self.priority_base && priority - self.priority_base < PRIORITY_BAND
    }

    pub(crate) fn priority(&self, offset: u32) -> u32 {
        self.priority_base + offset
    }

    /// The rule priority at `offset` in the rule band.
    pub(crate) fn rule_priority_at(&self, offset: u32) -> u32 {
        self.rule_priority + offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_are_refused() {
        XfrmConfig::default().validate().unwrap();
        let bad = |f: fn(&mut XfrmConfig)| {
            let mut c = XfrmConfig::default();
            f(&mut c);
            c.validate().unwrap_err().code()
        };
        assert_eq!(bad(|c| c.if_id = 0), 7);
        assert_eq!(bad(|c| c.reqid_base = 0x5c00_0001), 7);
        assert_eq!(bad(|c| c.interface = "x".repeat(16)), 7);
        assert_eq!(bad(|c| c.route_protocol = 2), 7);
        assert_eq!(bad(|c| c.underlay_mtu = 576), 7);
        assert_eq!(bad(|c| c.rule_priority = 32766), 7);
        // the last rule of the band must come before the main table's (32766)
        assert_eq!(bad(|c| c.rule_priority = 32763), 7);
        XfrmConfig {
            rule_priority: 32762,
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert_eq!(bad(|c| c.route_table = 254), 7);
    }

    #[test]
    fn ownership_marks() {
        let c = XfrmConfig::default();
        assert_eq!(c.reqid(7), 0x5c00_0007);
        assert_eq!(c.peer_of_reqid(0x5c00_0007), Some(7));
        assert_eq!(c.peer_of_reqid(0x5d00_0007), None);
        assert!(c.owns_priority(c.priority_base));
        assert!(c.owns_priority(c.priority_base + PRIORITY_BAND - 1));
        assert!(!c.owns_priority(c.priority_base + PRIORITY_BAND));
        assert!(!c.owns_priority(0));
    }

    #[test]
    fn config_is_serde_with_defaults() {
        let c: XfrmConfig = serde_json::from_str(r#"{"ifId": 7, "link": "existing"}"#).unwrap();
        assert_eq!(c.if_id, 7);
        assert_eq!(c.link, LinkMode::Existing);
        assert_eq!(c.interface, DEFAULT_INTERFACE);
    }
}
