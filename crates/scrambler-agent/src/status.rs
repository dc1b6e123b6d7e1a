//! The agent's status file (`<state dir>/agent-status.json`), rewritten after every sync,
//! and read by `scrambler status`. Public facts only (no key material).

use crate::rotation::Phase;
use scrambler_core::{Error, Generation, ReconcileReport, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of the status in the state dir.
pub const STATUS_FILE: &str = "agent-status.json";
/// File name of the last applied mesh (a mesh file) in the state dir.
pub const MESH_FILE: &str = "mesh.json";

/// What the agent last saw and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// Node name.
    pub node: String,
    /// Node id (once claimed).
    pub id: Option<u32>,
    /// The dataplane epoch, hex.
    pub epoch: String,
    /// Whether the epoch was reused (the dataplane kept its SAs) or new.
    pub epoch_reused: bool,
    /// etcd reachable at the last attempt.
    pub etcd_connected: bool,
    /// Unix time since which etcd is unreachable (`None` while connected).
    pub etcd_unreachable_since: Option<u64>,
    /// The last etcd error.
    pub etcd_error: Option<String>,
    /// The node's registration is in etcd under a live lease.
    pub registered: bool,
    /// Rotation phase.
    pub rotation: Option<Phase>,
    /// Programmed tx generation.
    pub tx: Option<Generation>,
    /// Programmed rx generations.
    pub rx: Vec<Generation>,
    /// Peers in the programmed mesh.
    pub peers: usize,
    /// Tunnel reconciles since start.
    pub reconciles: u64,
    /// Unix time of the last successful reconcile.
    pub last_reconcile: Option<u64>,
    /// The last sync failure that was not etcd's nor the dataplane's (e.g. a claim refused:
    /// a fixed id or pod CIDR another node holds); `None` once a sync succeeds.
    #[serde(default)]
    pub sync_error: Option<String>,
    /// What the last successful reconcile changed.
    #[serde(default)]
    pub last_report: Option<ReconcileReport>,
    /// The last reconcile error (the mesh before it stays).
    pub reconcile_error: Option<String>,
    /// Departed peers held in the mesh with their SAs (lease expired, claim kept).
    #[serde(default)]
    pub departed: Vec<DepartedPeer>,
    /// Earlier epochs of the node whose inbound SAs it keeps until their deadline (after
    /// an epoch change without a dataplane reset), as in the mesh's `previousEpochs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_epochs: Vec<scrambler_core::PreviousEpoch>,
    /// The dataplane's fail-closed guard was in place at the last check.
    #[serde(default)]
    pub guarded: bool,
    /// The agent's process id (a restarted agent's first write is its "starting" status:
    /// not guarded, not registered, this pid).
    #[serde(default)]
    pub pid: u32,
    /// Unix time this was written.
    pub updated: u64,
}

/// A peer whose registration went, held in the mesh as it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DepartedPeer {
    /// Peer name.
    pub name: String,
    /// Unix time when it is dropped for good unless it registers again.
    pub held_until: u64,
}

/// Older than this (seconds), the status file means the agent's loop is not running: it
/// rewrites the file after every sync, at least every resync interval (30 s by default).
pub const STALE_AFTER_SECS: u64 = 120;

impl AgentStatus {
    /// Liveness: the agent's loop rewrote the status recently.
    pub fn live(&self, now: u64) -> std::result::Result<(), String> {
        let age = now.saturating_sub(self.updated);
        if age > STALE_AFTER_SECS {
            return Err(format!(
                "agent status is {age}s old (more than {STALE_AFTER_SECS}s): the agent's loop is not running"
            ));
        }
        Ok(())
    }

    /// Readiness: live, the node's fail-closed guard in place, its mesh reconciled without
    /// error and the node registered in etcd.
    pub fn ready(&self, now: u64) -> std::result::Result<(), String> {
        self.live(now)?;
        if !self.guarded {
            return Err("the fail-closed guard is not in place".into());
        }
        if self.last_reconcile.is_none() {
            return Err("no mesh reconciled yet".into());
        }
        if let Some(e) = &self.reconcile_error {
            return Err(format!("the last reconcile failed: {e}"));
        }
        if !self.registered {
            return Err("not registered in etcd".into());
        }
        Ok(())
    }
}

impl AgentStatus {
    /// The status file in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(STATUS_FILE)
    }

    /// Reads the status file.
    pub fn load(path: &Path) -> Result<Self> {
        let b =
            std::fs::read(path).map_err(|e| Error::io("read agent status", path.display(), e))?;
        serde_json::from_slice(&b)
            .map_err(|e| Error::decode(format!("agent status {}", path.display()), e))
    }

    /// Writes the status file (mode 0644: no secrets in it).
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let j = serde_json::to_vec_pretty(self).map_err(|e| Error::decode("agent status", e))?;
        write_atomic(&Self::path(state_dir), &j, 0o644)
    }

    /// Lines for `scrambler status`, loud when the agent is running without etcd.
    pub fn to_lines(&self, now: u64) -> String {
        let mut out = format!(
            "agent: node {} id {} epoch {} ({})  registered {}  reconciles {}\n",
            self.node,
            self.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            self.epoch,
            if self.epoch_reused {
                "kept: dataplane had its SAs"
            } else {
                "new"
            },
            if self.registered { "yes" } else { "no" },
            self.reconciles,
        );
        if self.etcd_connected {
            out.push_str("agent: etcd connected\n");
        } else {
            let since = self
                .etcd_unreachable_since
                .map(|t| format!(" for {}s", now.saturating_sub(t)))
                .unwrap_or_default();
            out.push_str(&format!(
                "!!! etcd UNREACHABLE{since}: keeping the last mesh (fail static, still fail closed): {}\n",
                self.etcd_error.as_deref().unwrap_or("-")
            ));
        }
        if let Some(p) = &self.rotation {
            out.push_str(&format!("agent: rotation {p}\n"));
        }
        if let Some(e) = &self.sync_error {
            out.push_str(&format!("!!! agent cannot join the cluster: {e}\n"));
        }
        if let Some(e) = &self.reconcile_error {
            out.push_str(&format!(
                "!!! last reconcile failed (previous mesh kept): {e}\n"
            ));
        }
        for p in &self.previous_epochs {
            out.push_str(&format!(
                "agent: inbound SAs of the previous epoch {} kept for {}s more (peers still \
                 sending under it)\n",
                p.epoch,
                p.until.saturating_sub(now)
            ));
        }
        for d in &self.departed {
            out.push_str(&format!(
                "agent: peer {} departed (no registration): held with its SAs for {}s more\n",
                d.name,
                d.held_until.saturating_sub(now)
            ));
        }
        if !self.guarded {
            out.push_str("!!! fail-closed guard NOT in place at the last check\n");
        }
        // the agent rewrites it at least every 30 s (its resync)
        if now.saturating_sub(self.updated) > STALE_AFTER_SECS {
            out.push_str(&format!(
                "!!! agent status is {}s old: is the agent running?\n",
                now.saturating_sub(self.updated)
            ));
        }
        out
    }
}

/// Writes `data` to `path` atomically and durably, with `mode`.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    scrambler_core::fsutil::write_atomic(path, data, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st() -> AgentStatus {
        AgentStatus {
            node: "n1".into(),
            id: Some(3),
            epoch: "00000000000000ab".into(),
            epoch_reused: true,
            etcd_connected: true,
            etcd_unreachable_since: None,
            etcd_error: None,
            registered: true,
            rotation: Some(Phase::Stable { generation: 4 }),
            tx: Some(4),
            rx: vec![4],
            peers: 2,
            reconciles: 1,
            last_reconcile: Some(100),
            sync_error: None,
            last_report: None,
            reconcile_error: None,
            departed: Vec::new(),
            previous_epochs: Vec::new(),
            guarded: true,
            pid: 1,
            updated: 100,
        }
    }

    #[test]
    fn readiness_needs_guard_reconcile_and_registration() {
        assert_eq!(st().ready(110), Ok(()));
        assert!(st().live(100 + STALE_AFTER_SECS + 1).is_err());
        assert!(st().ready(100 + STALE_AFTER_SECS + 1).is_err());
        let mut s = st();
        s.guarded = false;
        assert!(s.ready(110).unwrap_err().contains("guard"));
        assert_eq!(s.live(110), Ok(()));
        let mut s = st();
        s.last_reconcile = None;
        assert!(s.ready(110).unwrap_err().contains("reconciled"));
        let mut s = st();
        s.reconcile_error = Some("x".into());
        assert!(s.ready(110).is_err());
        let mut s = st();
        s.registered = false;
        assert!(s.ready(110).unwrap_err().contains("registered"));
    }

    #[test]
    fn lines_are_quiet_when_healthy_and_loud_otherwise() {
        let t = st().to_lines(110);
        assert!(
            t.contains("etcd connected") && t.contains("stable (generation 4)"),
            "{t}"
        );
        assert!(!t.contains("!!!"), "{t}");
        let mut s = st();
        s.etcd_connected = false;
        s.etcd_unreachable_since = Some(50);
        s.etcd_error = Some("connection refused".into());
        s.sync_error = Some("node id 3 already exists".into());
        let t = s.to_lines(110);
        assert!(
            t.contains("etcd UNREACHABLE for 60s") && t.contains("connection refused"),
            "{t}"
        );
        assert!(t.contains("cannot join the cluster: node id 3"), "{t}");
        assert!(st().to_lines(1000).contains("is the agent running?"));
    }
}
