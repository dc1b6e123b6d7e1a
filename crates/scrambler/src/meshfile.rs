//! The mesh file ([`MeshFile`], from scrambler-core, where embedders find it too), the
//! steps of a key rotation and new epochs.
//!
//! The same file serves every node; `scrambler mesh apply --node NAME` cuts that node's mesh
//! from it. Key rotation edits `keys` in three phases (see [`next_rotation_phase`]), each
//! applied on every node before the next. `scrambler mesh epoch` gives one node a new
//! epoch ([`new_epoch`]) after its dataplane lost its SAs.

pub use scrambler_core::MeshFile;
use scrambler_core::{Epoch, Error, Keys, Result};
use std::path::Path;

/// Gives node `node` of the mesh file at `path` a new random epoch (with another SPI tag
/// than its old one, see [`Epoch::generate`]) and rewrites the file atomically; returns the
/// old epoch (if it had a valid one) and the new. Works on a file whose nodes lack epochs
/// (that is how they get one); the rest of the file is kept as written.
pub fn new_epoch(path: &Path, node: &str) -> Result<(Option<Epoch>, Epoch)> {
    new_epoch_keeping(path, node, None)
}

/// [`new_epoch`], and with `keep` (an epoch change without a dataplane reset: a lost or
/// refused outbound SA) the old epoch is listed in the node's `previousEpochs` until
/// `keep` from now, so the node keeps its inbound SAs of it while its peers re-key; the
/// previous epochs whose deadline passed are dropped, at most
/// [`scrambler_core::mesh::MAX_PREVIOUS_EPOCHS`] stay (the oldest goes first), and the
/// new epoch's SPI tag differs from all of theirs. Without `keep` (after a reset: nothing
/// left to keep) the node's `previousEpochs` is removed.
pub fn new_epoch_keeping(
    path: &Path,
    node: &str,
    keep: Option<std::time::Duration>,
) -> Result<(Option<Epoch>, Epoch)> {
    use scrambler_core::mesh::{unix_now, MAX_PREVIOUS_EPOCHS};
    use scrambler_core::PreviousEpoch;
    scrambler_core::mesh::check_node_name(node)?;
    let text = std::fs::read(path).map_err(|e| Error::io("read mesh file", path.display(), e))?;
    let bad = |why: String| Error::mesh(format!("mesh file {}: {why}", path.display()));
    let mut doc: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    let nodes = doc
        .get_mut("nodes")
        .and_then(|n| n.as_array_mut())
        .ok_or_else(|| bad("no \"nodes\" list".into()))?;
    let mut found: Vec<&mut serde_json::Map<String, serde_json::Value>> = nodes
        .iter_mut()
        .filter_map(|n| n.as_object_mut())
        .filter(|n| n.get("name").and_then(|v| v.as_str()) == Some(node))
        .collect();
    let entry = match found.as_mut_slice() {
        [one] => one,
        [] => return Err(bad(format!("node {node:?} is not in the mesh"))),
        _ => return Err(bad(format!("node name {node:?} is used twice"))),
    };
    let old = entry
        .get("epoch")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Epoch>().ok());
    let now = unix_now();
    let mut previous: Vec<PreviousEpoch> = match (keep, entry.get("previousEpochs")) {
        (Some(_), Some(v)) => serde_json::from_value(v.clone())
            .map_err(|e| bad(format!("node {node:?}: previousEpochs: {e}")))?,
        _ => Vec::new(),
    };
    previous.retain(|p| p.until > now);
    if let (Some(keep), Some(old)) = (keep, old) {
        previous.retain(|p| p.epoch != old);
        previous.push(PreviousEpoch {
            epoch: old,
            until: now.saturating_add(keep.as_secs().max(1)),
        });
        while previous.len() > MAX_PREVIOUS_EPOCHS {
            previous.remove(0);
        }
    }
    let avoid: Vec<Epoch> = old
        .into_iter()
        .chain(previous.iter().map(|p| p.epoch))
        .collect();
    let new = Epoch::generate_unlike(&avoid)?;
    entry.insert("epoch".into(), serde_json::Value::String(new.to_string()));
    if previous.is_empty() {
        entry.remove("previousEpochs");
    } else {
        let v = serde_json::to_value(&previous).map_err(|e| Error::decode("mesh file", e))?;
        entry.insert("previousEpochs".into(), v);
    }
    let mut out = serde_json::to_vec_pretty(&doc).map_err(|e| Error::decode("mesh file", e))?;
    out.push(b'\n');
    write_atomically(path, &out)?;
    Ok((old, new))
}

/// Replaces `path` by `bytes`: a temporary file beside it, fsynced, renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io("create", tmp.display(), e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io("write", tmp.display(), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("rename", path.display(), e))
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
            Error::mesh(format!(
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
    fn new_epoch_gives_one_node_a_fresh_epoch_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mesh.json");
        let text = r#"{"nodes":[
            {"name":"a","id":1,"underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"]},
            {"name":"b","id":2,"epoch":"fedcba9876543210","underlay":["192.0.2.2"],"podCidrs":["10.244.2.0/24"]}],
            "clusterCidrs":["10.244.0.0/16"],"keys":{"tx":1,"rx":[1]},"keyFile":"k.hex"}"#;
        std::fs::write(&p, text).unwrap();
        // a node without an epoch gets one: then the file loads
        let e = MeshFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("scrambler mesh epoch --node a"), "{e}");
        let (old, a1) = new_epoch(&p, "a").unwrap();
        assert_eq!(old, None);
        let mf = MeshFile::load(&p).unwrap();
        assert_eq!(mf.mesh_for("a").unwrap().local.epoch, a1);
        // the key file stays as written (relative)
        let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(raw["keyFile"], "k.hex");
        // again: another epoch, of another SPI tag; b untouched
        let (old, a2) = new_epoch(&p, "a").unwrap();
        assert_eq!(old, Some(a1));
        assert_ne!(a2.spi_tag(), a1.spi_tag());
        let mf = MeshFile::load(&p).unwrap();
        assert_eq!(mf.mesh_for("a").unwrap().local.epoch, a2);
        assert_eq!(
            mf.mesh_for("b").unwrap().local.epoch.to_string(),
            "fedcba9876543210"
        );
        assert!(new_epoch(&p, "zz")
            .unwrap_err()
            .to_string()
            .contains("not in the mesh"));

        // without a reset: the old epoch is kept for a while, beside the new one
        let keep = Some(std::time::Duration::from_secs(60));
        let (old, a3) = new_epoch_keeping(&p, "a", keep).unwrap();
        assert_eq!(old, Some(a2));
        let local = MeshFile::load(&p).unwrap().mesh_for("a").unwrap().local;
        assert_eq!(local.epoch, a3);
        assert_eq!(local.previous_epochs.len(), 1);
        assert_eq!(local.previous_epochs[0].epoch, a2);
        let now = scrambler_core::mesh::unix_now();
        assert!((now + 59..=now + 61).contains(&local.previous_epochs[0].until));
        let (_, a4) = new_epoch_keeping(&p, "a", keep).unwrap();
        let local = MeshFile::load(&p).unwrap().mesh_for("a").unwrap().local;
        let kept: Vec<Epoch> = local.previous_epochs.iter().map(|p| p.epoch).collect();
        assert_eq!(kept, vec![a2, a3]);
        assert!(kept.iter().all(|k| k.spi_tag() != a4.spi_tag()));
        // after a reset nothing is kept
        new_epoch(&p, "a").unwrap();
        let local = MeshFile::load(&p).unwrap().mesh_for("a").unwrap().local;
        assert!(local.previous_epochs.is_empty());
        let raw = std::fs::read_to_string(&p).unwrap();
        assert!(!raw.contains("previousEpochs"), "{raw}");
    }

    /// `mesh apply` and `status` take every node's mesh from the file: its
    /// `nodeEncryption` reaches every node's mesh (and survives a rewrite of the file);
    /// a bad bypass list is refused naming it.
    #[test]
    fn the_mesh_files_node_encryption_reaches_every_nodes_mesh() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mesh.json");
        let text = |ne: &str| {
            format!(
                r#"{{"nodes":[
            {{"name":"a","id":1,"epoch":"0123456789abcdef","underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"]}},
            {{"name":"b","id":2,"epoch":"fedcba9876543210","underlay":["192.0.2.2"],"podCidrs":["10.244.2.0/24"]}}],
            "clusterCidrs":["10.244.0.0/16"],{ne}"keys":{{"tx":1,"rx":[1]}},"keyFile":"k.hex"}}"#
            )
        };
        std::fs::write(
            &p,
            text(r#""nodeEncryption":{"bypass":["tcp/2379","tcp/22"]},"#),
        )
        .unwrap();
        let mf = MeshFile::load(&p).unwrap();
        for n in ["a", "b"] {
            let ne = mf.mesh_for(n).unwrap().node_encryption.unwrap();
            let ports: Vec<String> = ne.bypass.iter().map(|b| b.to_string()).collect();
            assert_eq!(ports, ["tcp/2379", "tcp/22"]);
        }
        new_epoch(&p, "a").unwrap();
        assert!(MeshFile::load(&p)
            .unwrap()
            .mesh_for("b")
            .unwrap()
            .node_encryption
            .is_some());
        // absent: off
        std::fs::write(&p, text("")).unwrap();
        assert_eq!(
            MeshFile::load(&p)
                .unwrap()
                .mesh_for("a")
                .unwrap()
                .node_encryption,
            None
        );
        std::fs::write(
            &p,
            text(r#""nodeEncryption":{"bypass":["tcp/22","tcp/22"]},"#),
        )
        .unwrap();
        let e = MeshFile::load(&p).unwrap_err().to_string();
        assert!(e.contains("tcp/22 twice"), "{e}");
    }
}
