//! What the node tool remembers between runs: the mesh it last applied and when each peer
//! last changed. Kept under a state directory (default `/run/scrambler`, so a reboot starts
//! fresh, like the dataplane itself).

use scrambler_core::mesh::check_node_name;
use scrambler_core::{Error, Mesh, Node, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/scrambler";

/// The record of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    /// Unix time of the last successful apply.
    pub last_apply: u64,
    /// Peers as last applied.
    pub peers: Vec<Node>,
    /// Key generations as last applied (tx, rx).
    pub generations: (u32, Vec<u32>),
    /// Unix time each peer last changed (added, moved, re-keyed).
    pub peer_changed: BTreeMap<String, u64>,
}

impl NodeRecord {
    /// The record file of `node` under `dir`; `node` must be a plain node name
    /// ([`check_node_name`]), so the file is always directly under `dir`.
    pub fn path(dir: &Path, node: &str) -> Result<PathBuf> {
        check_node_name(node)?;
        Ok(dir.join(format!("{node}.json")))
    }

    /// Loads the record, `None` if there is none yet.
    pub fn load(dir: &Path, node: &str) -> Result<Option<Self>> {
        let p = Self::path(dir, node)?;
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    object: p.display().to_string(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read node record", p.display(), e)),
        }
    }

    /// The record after applying `mesh` at time `now`: peers that are new, changed, or
    /// re-keyed get `now` as their last change.
    pub fn after_apply(prev: Option<&NodeRecord>, mesh: &Mesh, now: u64) -> NodeRecord {
        let gens = (
            mesh.keys.tx,
            mesh.keys.rx.iter().copied().collect::<Vec<_>>(),
        );
        let mut changed = BTreeMap::new();
        for p in &mesh.peers {
            let before = prev.and_then(|r| r.peers.iter().find(|o| o.name == p.name));
            let same = before == Some(p) && prev.map(|r| &r.generations) == Some(&gens);
            let t = match (same, prev.and_then(|r| r.peer_changed.get(&p.name))) {
                (true, Some(t)) => *t,
                _ => now,
            };
            changed.insert(p.name.clone(), t);
        }
        NodeRecord {
            last_apply: now,
            peers: mesh.peers.clone(),
            generations: gens,
            peer_changed: changed,
        }
    }

    /// Writes the record atomically.
    pub fn save(&self, dir: &Path, node: &str) -> Result<()> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("create state dir", dir.display(), e))?;
        let p = Self::path(dir, node)?;
        let tmp = p.with_extension("tmp");
        let bytes = serde_json::to_vec(self).map_err(|e| Error::decode("node record", e))?;
        std::fs::write(&tmp, bytes)
            .map_err(|e| Error::io("write node record", tmp.display(), e))?;
        std::fs::rename(&tmp, &p).map_err(|e| Error::io("rename node record", p.display(), e))
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
