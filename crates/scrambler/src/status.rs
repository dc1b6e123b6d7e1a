//! `scrambler status`: every peer at a glance, as a table or as JSON.
//!
//! The status joins what the dataplane reports ([`TunnelStatus`]) with what the node tool
//! remembers of its own applies ([`NodeRecord`]: when each peer last changed).

use crate::record::NodeRecord;
use scrambler_core::{Mesh, TunnelStatus};
use serde::Serialize;
use std::fmt::Write;

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
}

impl StatusReport {
    /// Joins the dataplane status with the node's record.
    pub fn new(mesh: &Mesh, tunnel: TunnelStatus, record: Option<&NodeRecord>) -> Self {
        StatusReport {
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
        if !t.encrypted {
            let _ = writeln!(
                out,
                "!!! ENCRYPTION IS OFF: traffic between pod CIDRs is NOT encrypted !!!"
            );
        }
        if !t.fail_closed {
            let _ = writeln!(
                out,
                "!!! FAIL-CLOSED GUARD MISSING: a missing SA may leak cleartext !!!"
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
        for p in &t.peers {
            let up = if p.is_up() {
                "up"
            } else if p.outbound || p.inbound || p.steering {
                "PART"
            } else {
                "DOWN"
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
        if !t.errors.is_empty() {
            let errs: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "errors: {}", errs.join(" "));
        }
        out
    }
}

/// One table row: names left-aligned, counters right-aligned.
fn row(c: [&str; 12]) -> String {
    format!(
        "{:<16} {:<16} {:<6} {:<4} {:<5} {:>10} {:>10} {:>12} {:>12} {:>7} {:>7}  {}\n",
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
        };
        Mesh {
            local: n("a", 1),
            peers: vec![n("b", 2)],
            keys: Keys::single(3),
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
        assert!(t.contains("ENCRYPTION IS OFF"));
        assert!(t.contains("DOWN"));
        assert!(!r.healthy());
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
}
