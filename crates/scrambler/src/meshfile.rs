//! The mesh file: the cluster's nodes, the live key generations and where the key is.
//!
//! ```json
//! {
//!   "nodes": [
//!     {"name": "node1", "id": 1, "underlay": ["192.0.2.1"], "podCidrs": ["10.244.1.0/24"]},
//!     {"name": "node2", "id": 2, "underlay": ["192.0.2.2"], "podCidrs": ["10.244.2.0/24"]}
//!   ],
//!   "keys": {"tx": 1, "rx": [1]},
//!   "keyFile": "/etc/scrambler/cluster.key"
//! }
//! ```
//!
//! The same file serves every node; `scrambler mesh apply --node NAME` cuts that node's mesh
//! from it. Key rotation edits `keys` in three phases (see [`next_rotation_phase`]), each
//! applied on every node before the next.

use scrambler_core::{Cluster, Error, Keys, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A mesh file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshFile {
    /// Nodes and key generations.
    #[serde(flatten)]
    pub cluster: Cluster,
    /// The cluster secret (hex, mode 0600); relative paths are relative to the mesh file.
    pub key_file: PathBuf,
}

impl MeshFile {
    /// Reads and validates a mesh file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read(path).map_err(|e| Error::io("read mesh file", path.display(), e))?;
        let mut mf: MeshFile = serde_json::from_slice(&text)
            .map_err(|e| Error::config(format!("mesh file {}: {e}", path.display())))?;
        if mf.key_file.is_relative() {
            if let Some(dir) = path.parent() {
                mf.key_file = dir.join(&mf.key_file);
            }
        }
        // Validate from every node's point of view (ids, names, CIDRs, generations).
        if let Some(first) = mf.cluster.nodes.first() {
            mf.cluster.mesh_for(&first.name.clone())?;
        }
        Ok(mf)
    }

    /// Writes the mesh file atomically (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::decode("mesh file", e))?;
        let tmp = path.with_extension("tmp");
        let mut f =
            std::fs::File::create(&tmp).map_err(|e| Error::io("create", tmp.display(), e))?;
        f.write_all(&text)
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("write", tmp.display(), e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path.display(), e))
    }
}

/// One step of a key rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationPhase {
    /// Accept generation g+1 inbound everywhere (still sending with g).
    Prepare,
    /// Send with g+1 (every node already accepts it).
    Switch,
    /// Drop generation g after the grace period.
    Finish,
}

impl std::fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RotationPhase::Prepare => "prepare (install inbound states of the new generation)",
            RotationPhase::Switch => "switch (send with the new generation)",
            RotationPhase::Finish => "finish (remove the old generation)",
        })
    }
}

/// The next rotation phase for `keys`, and the keys after it.
///
/// `{tx g, rx {g}}` → Prepare → `{tx g, rx {g, g+1}}` → Switch → `{tx g+1, rx {g, g+1}}` →
/// Finish → `{tx g+1, rx {g+1}}`. Each phase must be applied on every node before the next
/// starts: that order is what keeps a node from sending with an SPI its peer cannot yet
/// receive. Fails when `tx` is the last generation number (there is no g+1).
pub fn next_rotation_phase(keys: &Keys) -> Result<(RotationPhase, Keys)> {
    let newest = keys.rx.last().copied().unwrap_or(keys.tx);
    Ok(if newest > keys.tx {
        let mut k = keys.clone();
        k.tx = newest;
        (RotationPhase::Switch, k)
    } else if keys.rx.len() > 1 {
        (RotationPhase::Finish, Keys::single(keys.tx))
    } else {
        let next = keys.tx.checked_add(1).ok_or_else(|| {
            Error::config(format!(
                "key generation {} is the last one: no rotation can follow it",
                keys.tx
            ))
        })?;
        let mut k = keys.clone();
        k.rx.insert(next);
        (RotationPhase::Prepare, k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_goes_prepare_switch_finish() {
        let k1 = Keys::single(1);
        let (p, k) = next_rotation_phase(&k1).unwrap();
        assert_eq!(p, RotationPhase::Prepare);
        assert_eq!(
            (k.tx, k.rx.iter().copied().collect::<Vec<_>>()),
            (1, vec![1, 2])
        );
        let (p, k) = next_rotation_phase(&k).unwrap();
        assert_eq!(p, RotationPhase::Switch);
        assert_eq!((k.tx, k.rx.len()), (2, 2));
        let (p, k) = next_rotation_phase(&k).unwrap();
        assert_eq!(p, RotationPhase::Finish);
        assert_eq!(k, Keys::single(2));
        assert_eq!(
            next_rotation_phase(&Keys::single(u32::MAX))
                .unwrap_err()
                .code(),
            7
        );
    }

    #[test]
    fn mesh_file_round_trip_and_relative_key_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mesh.json");
        std::fs::write(
            &p,
            r#"{"nodes":[{"name":"a","id":1,"underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"]},
                         {"name":"b","id":2,"underlay":["192.0.2.2"],"podCidrs":["10.244.2.0/24"]}],
                "keys":{"tx":1,"rx":[1]},"keyFile":"k.hex"}"#,
        )
        .unwrap();
        let mf = MeshFile::load(&p).unwrap();
        assert_eq!(mf.key_file, dir.path().join("k.hex"));
        mf.save(&p).unwrap();
        assert_eq!(MeshFile::load(&p).unwrap(), mf);
    }

    #[test]
    fn bad_mesh_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mesh.json");
        std::fs::write(&p, r#"{"nodes":[]}"#).unwrap();
        let e = MeshFile::load(&p).unwrap_err();
        assert!(e.to_string().contains("mesh.json"), "{e}");
        assert_eq!(e.code(), 7);
    }
}
