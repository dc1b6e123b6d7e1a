//! `scrambler status`: every peer at a glance, as a table or as JSON.
//!
//! The status joins what the dataplane reports ([`TunnelStatus`]) with what the node tool
//! remembers of its own applies ([`NodeRecord`]: when each peer last changed).
//!
//! Every peer is `up` (its tunnel carries traffic, encrypted), `blocked` (some part of its
//! tunnel is missing and the fail-closed guard drops its traffic: the report says which
//! part) or `OPEN` (not up and the guard is missing: its traffic may cross the underlay in
//! cleartext). Only the last case is reported as "encryption is off": a blocked peer loses
//! traffic, it does not leak it.

use crate::record::NodeRecord;
use scrambler_core::{Generation, Mesh, NodeEncryption, PeerStatus, TunnelStatus};
use scrambler_xfrm::{
    NODE_POLICY_MISSING, NODE_RULE_MISSING, UNDERLAY_ROUTE_MISSING, UNDERLAY_RULE_MISSING,
};
use serde::Serialize;
use std::fmt::Write;

/// What a peer's traffic meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PeerState {
    /// Tunnel up: traffic is encrypted.
    Up,
    /// Tunnel not (fully) up, guard in place: traffic is dropped, never sent in cleartext.
    Blocked,
    /// Tunnel not up and no guard: traffic may cross the underlay in cleartext.
    Open,
}

/// One peer's state and, when it is not up, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerVerdict {
    /// Peer name.
    pub name: String,
    /// Up, blocked or open.
    pub state: PeerState,
    /// What is missing (empty when up).
    pub why: Vec<String>,
}

impl PeerVerdict {
    /// The verdict on `p`, whose dataplane is guarded (`fail_closed`) or not, with `tx`
    /// the generation the mesh sends with.
    pub fn of(p: &PeerStatus, fail_closed: bool, tx: Generation) -> Self {
        let mut why = Vec::new();
        if !p.outbound {
            why.push(if p.rx_generations.contains(&tx) {
                format!(
                    "outbound SA of generation {tx} lost (never re-created under the same \
                     key): give this node a new epoch (scrambler mesh epoch) or rotate keys"
                )
            } else {
                format!("no outbound SA of generation {tx}")
            });
        }
        if !p.inbound {
            let have = p
                .rx_generations
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",");
            why.push(format!(
                "inbound SAs missing (has generations [{have}]); reapply the mesh"
            ));
        }
        if !p.steering {
            why.push(STEERING_MISSING.into());
        }
        let state = if why.is_empty() {
            PeerState::Up
        } else if fail_closed {
            PeerState::Blocked
        } else {
            PeerState::Open
        };
        PeerVerdict {
            name: p.name.clone(),
            state,
            why,
        }
    }
}

impl PeerVerdict {
    /// Names the part of the steering that is missing when the dataplane's error
    /// counters say (the xfrm dataplane's [`UNDERLAY_RULE_MISSING`] and
    /// `<peer>/`[`UNDERLAY_ROUTE_MISSING`]: pods' traffic to other nodes' underlay
    /// addresses), instead of the generic steering reason.
    pub fn explained_by(mut self, errors: &std::collections::BTreeMap<String, u64>) -> Self {
        let mut specific = Vec::new();
        if errors.contains_key(UNDERLAY_RULE_MISSING) {
            specific.push(
                "underlay rule missing: `from <local pod CIDR> lookup <table>` is gone or \
                 changed (ip rule flush?), pods cannot reach other nodes' hosts; reapply the mesh"
                    .to_string(),
            );
        }
        if errors.contains_key(&format!("{}/{UNDERLAY_ROUTE_MISSING}", self.name)) {
            specific.push(
                "underlay route missing: its host address has no route into the tunnel in \
                 Scrambler's table, pods cannot reach its host; reapply the mesh"
                    .to_string(),
            );
        }
        if errors.contains_key(NODE_RULE_MISSING) {
            specific.push(
                "node encryption rule missing: a bypass, steering or nop rule of Scrambler's \
                 is gone or changed (ip rule flush?): the node's own IPv4 traffic to its peers \
                 is dropped, its IPv6 traffic may leave in cleartext; reapply the mesh"
                    .to_string(),
            );
        }
        if errors.contains_key(NODE_POLICY_MISSING) {
            specific.push(
                "node encryption policy missing: a host-to-host mesh policy, block or bypass \
                 allow is gone or changed; reapply the mesh"
                    .to_string(),
            );
        }
        if !specific.is_empty() {
            self.why.retain(|w| w != STEERING_MISSING);
            self.why.extend(specific);
        }
        self
    }
}

/// The generic reason of a peer whose steering is incomplete.
const STEERING_MISSING: &str = "no route/policy steering its pod CIDRs into the tunnel";

/// The status document printed by `scrambler status --json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Node name.
    pub node: String,
    /// The epoch of the node's dataplane, as in the mesh.
    pub epoch: scrambler_core::Epoch,
    /// Generation used to send.
    pub tx_generation: u32,
    /// Generations accepted.
    pub rx_generations: Vec<u32>,
    /// What the dataplane has.
    pub tunnel: TunnelStatus,
    /// Unix time of the last peer change, per peer name.
    pub last_change: std::collections::BTreeMap<String, u64>,
    /// Unix time of the last successful `mesh apply`.
    pub last_apply: Option<u64>,
    /// Per peer: up, blocked (dropped by the guard) or open (may leak), and why.
    pub peers: Vec<PeerVerdict>,
    /// Traffic may really cross the underlay in cleartext: the guard is missing and some
    /// peer's tunnel is not up. A blocked peer does not make this true.
    pub encryption_off: bool,
    /// Node encryption as the mesh sets it (`None`: off, the nodes' own traffic to each
    /// other is outside the mesh), with its bypass ports.
    pub node_encryption: Option<NodeEncryption>,
}

impl StatusReport {
    /// Joins the dataplane status with the node's record.
    pub fn new(mesh: &Mesh, tunnel: TunnelStatus, record: Option<&NodeRecord>) -> Self {
        let peers: Vec<PeerVerdict> = tunnel
            .peers
            .iter()
            .map(|p| {
                PeerVerdict::of(p, tunnel.fail_closed, mesh.keys.tx).explained_by(&tunnel.errors)
            })
            .collect();
        let encryption_off = peers.iter().any(|p| p.state == PeerState::Open);
        StatusReport {
            encryption_off,
            node_encryption: mesh.node_encryption.clone(),
            peers,
            node: mesh.local.name.clone(),
            epoch: mesh.local.epoch,
            tx_generation: mesh.keys.tx,
            rx_generations: mesh.keys.rx.iter().copied().collect(),
            tunnel,
            last_change: record.map(|r| r.peer_changed.clone()).unwrap_or_default(),
            last_apply: record.map(|r| r.last_apply),
        }
    }

    /// True when every peer is up, encryption is on and the fail-closed guard is in place.
    pub fn healthy(&self) -> bool {
        self.tunnel.encrypted
            && self.tunnel.fail_closed
            && self.tunnel.peers.iter().all(|p| p.is_up())
    }

    /// The table for people.
    pub fn to_table(&self, now: u64) -> String {
        let mut out = String::new();
        let t = &self.tunnel;
        let _ = writeln!(
            out,
            "node {}  epoch {}  dataplane {}  keys tx={} rx={:?}  overhead {} B",
            self.node, self.epoch, t.dataplane, self.tx_generation, self.rx_generations, t.overhead
        );
        let names = |state| {
            self.peers
                .iter()
                .filter(|p| p.state == state)
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "{}",
            node_encryption_line(self.node_encryption.as_ref())
        );
        if self.encryption_off {
            let _ = writeln!(
                out,
                "!!! ENCRYPTION IS OFF: traffic to {} may cross the underlay in CLEARTEXT \
                 (tunnel down, no fail-closed guard) !!!",
                names(PeerState::Open)
            );
        }
        if !t.fail_closed {
            let _ = writeln!(
                out,
                "!!! FAIL-CLOSED GUARD MISSING: a missing SA or route may leak cleartext: \
                 reapply the mesh !!!"
            );
        }
        let blocked = names(PeerState::Blocked);
        if !blocked.is_empty() {
            let _ = writeln!(
                out,
                "blocked (dropped by the fail-closed guard, not sent in cleartext): {blocked}"
            );
        }
        out.push_str(&row([
            "PEER",
            "UNDERLAY",
            "TUNNEL",
            "GEN",
            "RX",
            "PKTS-OUT",
            "PKTS-IN",
            "BYTES-OUT",
            "BYTES-IN",
            "REPLAY",
            "ICV-ERR",
            "LAST CHANGE",
        ]));
        for (p, v) in t.peers.iter().zip(&self.peers) {
            let up = match v.state {
                PeerState::Up => "up",
                PeerState::Blocked => "blocked",
                PeerState::Open => "OPEN",
            };
            let rx = p
                .rx_generations
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let changed = self
                .last_change
                .get(&p.name)
                .map(|t| format!("{} ago", human_age(now.saturating_sub(*t))))
                .unwrap_or_else(|| "-".into());
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            out.push_str(&row([
                &p.name,
                &dash(p.underlay.map(|a| a.to_string())),
                up,
                &dash(p.tx_generation.map(|g| g.to_string())),
                if rx.is_empty() { "-" } else { &rx },
                &p.packets_out.to_string(),
                &p.packets_in.to_string(),
                &p.bytes_out.to_string(),
                &p.bytes_in.to_string(),
                &p.replay_errors.to_string(),
                &p.integrity_errors.to_string(),
                &changed,
            ]));
        }
        for v in self.peers.iter().filter(|v| !v.why.is_empty()) {
            let _ = writeln!(out, "{} {}: {}", v.name, up_word(v.state), v.why.join("; "));
        }
        if !t.errors.is_empty() {
            let errs: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "errors: {}", errs.join(" "));
        }
        out
    }
}

/// Whether node encryption is on, and what it bypasses.
fn node_encryption_line(ne: Option<&NodeEncryption>) -> String {
    match ne {
        None => {
            "node encryption off: the nodes' own traffic to each other is not encrypted".to_string()
        }
        Some(n) if n.bypass.is_empty() => {
            "node encryption on: the nodes' own traffic to each other rides the mesh, \
             nothing bypassed"
                .to_string()
        }
        Some(n) => {
            let ports: Vec<String> = n.bypass.iter().map(|b| b.to_string()).collect();
            format!(
                "node encryption on: the nodes' own traffic to each other rides the mesh, \
                 except (in the clear) {}",
                ports.join(" ")
            )
        }
    }
}

fn up_word(s: PeerState) -> &'static str {
    match s {
        PeerState::Up => "up",
        PeerState::Blocked => "blocked",
        PeerState::Open => "OPEN (may leak)",
    }
}

/// One table row: names left-aligned, counters right-aligned.
fn row(c: [&str; 12]) -> String {
    format!(
        "{:<16} {:<16} {:<7} {:<4} {:<5} {:>10} {:>10} {:>12} {:>12} {:>7} {:>7}  {}\n",
        c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11]
    )
}

/// "3s", "4m", "2h", "5d".
pub fn human_age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_core::{Keys, Node, NodeId, PeerStatus};

    fn mesh() -> Mesh {
        let n = |name: &str, id| Node {
            name: name.into(),
            id: NodeId::new(id).unwrap(),
            epoch: scrambler_core::Epoch::new(0xe0 + u64::from(id)).unwrap(),
            underlay: vec![format!("192.0.2.{id}").parse().unwrap()],
            pod_cidrs: vec![format!("10.244.{id}.0/24").parse().unwrap()],
            previous_epochs: Vec::new(),
        };
        Mesh {
            local: n("a", 1),
            peers: vec![n("b", 2)],
            keys: Keys::single(3),
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            node_encryption: None,
        }
    }

    #[test]
    fn table_is_loud_when_encryption_is_off() {
        let st = TunnelStatus {
            dataplane: "xfrm".into(),
            encrypted: false,
            fail_closed: false,
            peers: vec![PeerStatus {
                name: "b".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = StatusReport::new(&mesh(), st, None);
        let t = r.to_table(0);
        assert!(t.contains("ENCRYPTION IS OFF: traffic to b "), "{t}");
        assert!(t.contains("GUARD MISSING"), "{t}");
        assert!(t.contains(" OPEN "), "{t}");
        assert!(r.encryption_off);
        assert_eq!(r.peers[0].state, PeerState::Open);
        assert!(!r.healthy());
    }

    /// A lost outbound SA with the guard in place: traffic to the peer is dropped, so the
    /// table says "blocked" and why, and never "encryption is off".
    #[test]
    fn guarded_peer_with_a_lost_sa_is_blocked_not_encryption_off() {
        let st = TunnelStatus {
            dataplane: "xfrm".into(),
            encrypted: false,
            fail_closed: true,
            peers: vec![PeerStatus {
                name: "b".into(),
                outbound: false,
                inbound: true,
                steering: true,
                rx_generations: vec![3],
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = StatusReport::new(&mesh(), st, None);
        let t = r.to_table(0);
        assert!(!t.contains("ENCRYPTION IS OFF"), "{t}");
        assert!(!r.encryption_off);
        assert!(t.contains(" blocked "), "{t}");
        assert!(
            t.contains("b blocked: outbound SA of generation 3 lost"),
            "{t}"
        );
        assert!(t.contains("rotate keys"), "{t}");
        assert!(!r.healthy());
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["peers"][0]["state"], "blocked");
        assert_eq!(j["encryptionOff"], false);
    }

    /// The xfrm dataplane's underlay rule or table route missing: the peer is blocked and
    /// the reason names it instead of the generic steering one.
    #[test]
    fn missing_underlay_rule_or_route_is_named() {
        let peer = |name: &str| PeerStatus {
            name: name.into(),
            outbound: true,
            inbound: true,
            steering: false,
            tx_generation: Some(3),
            rx_generations: vec![3],
            ..Default::default()
        };
        let mut st = TunnelStatus {
            dataplane: "xfrm".into(),
            encrypted: false,
            fail_closed: true,
            peers: vec![peer("b")],
            ..Default::default()
        };
        st.errors.insert(format!("b/{UNDERLAY_ROUTE_MISSING}"), 1);
        let r = StatusReport::new(&mesh(), st.clone(), None);
        assert_eq!(r.peers[0].state, PeerState::Blocked);
        assert_eq!(r.peers[0].why.len(), 1, "{:?}", r.peers[0]);
        assert!(
            r.peers[0].why[0].starts_with("underlay route missing"),
            "{:?}",
            r.peers[0]
        );
        let t = r.to_table(0);
        assert!(t.contains("b blocked: underlay route missing"), "{t}");
        assert!(!t.contains("ENCRYPTION IS OFF"), "{t}");
        st.errors.clear();
        st.errors.insert(UNDERLAY_RULE_MISSING.into(), 1);
        let r = StatusReport::new(&mesh(), st.clone(), None);
        assert_eq!(r.peers[0].why.len(), 1, "{:?}", r.peers[0]);
        assert!(
            r.peers[0].why[0].starts_with("underlay rule missing"),
            "{:?}",
            r.peers[0]
        );
        // without a named cause the generic reason stays
        st.errors.clear();
        let r = StatusReport::new(&mesh(), st, None);
        assert_eq!(r.peers[0].why, vec![STEERING_MISSING.to_string()]);
    }

    #[test]
    fn why_names_every_missing_part() {
        let p = PeerStatus {
            name: "b".into(),
            ..Default::default()
        };
        let v = PeerVerdict::of(&p, true, 7);
        assert_eq!(v.state, PeerState::Blocked);
        assert_eq!(v.why.len(), 3, "{v:?}");
        assert!(
            v.why[0].starts_with("no outbound SA of generation 7"),
            "{v:?}"
        );
        assert!(v.why[1].contains("inbound SAs missing"), "{v:?}");
        assert!(v.why[2].contains("no route"), "{v:?}");
        let up = PeerStatus {
            outbound: true,
            inbound: true,
            steering: true,
            ..p
        };
        let v = PeerVerdict::of(&up, false, 7);
        assert_eq!((v.state, v.why.len()), (PeerState::Up, 0));
    }

    #[test]
    fn healthy_peer_shows_up_with_counters() {
        let st = TunnelStatus {
            dataplane: "xfrm".into(),
            encrypted: true,
            fail_closed: true,
            peers: vec![PeerStatus {
                name: "b".into(),
                outbound: true,
                inbound: true,
                steering: true,
                tx_generation: Some(3),
                rx_generations: vec![3],
                packets_out: 42,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut rec = NodeRecord::default();
        rec.peer_changed.insert("b".into(), 100);
        let r = StatusReport::new(&mesh(), st, Some(&rec));
        let t = r.to_table(130);
        assert!(r.healthy());
        assert!(t.contains(" up "), "{t}");
        assert!(t.contains("42"));
        assert!(t.contains("30s ago"));
        assert!(t.contains("epoch 00000000000000e1"), "{t}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["tunnel"]["peers"][0]["packetsOut"], 42);
        assert_eq!(j["epoch"], "00000000000000e1");
    }

    #[test]
    fn the_table_says_whether_node_encryption_is_on_and_what_it_bypasses() {
        let st = TunnelStatus {
            dataplane: "xfrm".into(),
            encrypted: true,
            fail_closed: true,
            ..Default::default()
        };
        let t = StatusReport::new(&mesh(), st.clone(), None).to_table(0);
        assert!(t.contains("node encryption off"), "{t}");
        let mut m = mesh();
        m.node_encryption = Some(NodeEncryption {
            bypass: vec!["tcp/2379".parse().unwrap(), "tcp/2380".parse().unwrap()],
        });
        let r = StatusReport::new(&m, st, None);
        let t = r.to_table(0);
        assert!(
            t.contains("node encryption on:")
                && t.contains("except (in the clear) tcp/2379 tcp/2380"),
            "{t}"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(r#""nodeEncryption":{"bypass":["tcp/2379","tcp/2380"]}"#),
            "{json}"
        );
    }

    #[test]
    fn a_missing_node_encryption_rule_is_named() {
        let st = TunnelStatus {
            dataplane: "xfrm".into(),
            encrypted: false,
            fail_closed: true,
            peers: vec![PeerStatus {
                name: "b".into(),
                outbound: true,
                inbound: true,
                steering: false,
                ..Default::default()
            }],
            errors: [(NODE_RULE_MISSING.to_string(), 4)].into(),
            ..Default::default()
        };
        let r = StatusReport::new(&mesh(), st, None);
        let t = r.to_table(0);
        assert!(t.contains("node encryption rule missing"), "{t}");
        assert_eq!(r.peers[0].state, PeerState::Blocked);
    }
}
