//! The ledger of outbound SAs: a node's persistent record of every outbound SA it ever
//! installed, so that none is installed twice.
//!
//! A key is fixed by the cluster secret and its derivation input ([`crate::keys`]): local
//! node and epoch, peer and epoch, generation. The ledger records the input and the
//! secret's [`KeyId`] (a fingerprint that reveals nothing of it, [`ClusterSecret::key_id`]):
//! the same input under another secret is another key, and the same key can come back
//! when the secret does (a mesh file's `keyFile` pointed at a wrong secret, then fixed).
//! An outbound SA installed a second time under the same secret and input starts its
//! sequence numbers (the AES-GCM IV counter) again from 1 under a key that has already
//! sent: nonce reuse. The dataplane cannot tell after a reset (reboot, VPP restart,
//! `mesh remove`) that an SA it no longer has ever existed; the ledger can, because it
//! lives on disk (default [`DEFAULT_DIR`], `/var/lib/scrambler`, not `/run`).
//!
//! Before a reconcile, [`Ledger::admit`] checks the node's mesh and records (write-ahead)
//! the outbound SAs it will install:
//! * the tx generation is not below the highest one ever recorded (generations never go
//!   back), and the local epoch is not one the node used before another (epochs never come
//!   back);
//! * an outbound SA already recorded is admitted only when it is the last one recorded for
//!   that peer, key id included, *and* the dataplane has it now (a second, idempotent
//!   apply); otherwise — its dataplane was reset, the SA was lost, or it was replaced
//!   since, e.g. by the SA of the same input under another secret (the dataplane's status
//!   compares SPIs only, and a reconcile replaces an SA whose key changed) — the whole
//!   apply is refused with an error saying what to do: a new epoch for the node (or a key
//!   rotation, which gets past the refusal at its switch phase);
//! * new ones are written to the ledger *before* they are installed (atomic replace and
//!   `fsync` of file and directory), so a crash between the two errs on the safe side.
//!
//! The ledger keeps only what can still be asked for: SAs of the current local epoch and
//! the highest generation (older ones are refused by the two rules above), and the list of
//! the node's epochs. It holds no key material: ids, epochs, generations and key ids
//! (which reveal nothing of the secret, see [`crate::keys`]) only. One file per node name, `<dir>/<node>.ledger.json` (mode 0600, directory 0700), locked
//! (`flock`) for as long as the [`Ledger`] lives, so two applies on one node take turns.
//!
//! File format (version 2):
//! ```json
//! {"version": 2, "node": "node1", "generation": 3,
//!  "epochs": ["0123456789abcdef", "9f2c04e17a3b6d58"],
//!  "outbound": [{"localId": 1, "localEpoch": "9f2c04e17a3b6d58",
//!                "peerId": 2, "peerEpoch": "fedcba9876543210", "generation": 3,
//!                "keyId": "06dd6a667b810b36"}]}
//! ```
//! `epochs` lists the node's epochs in the order first used (the last is current);
//! `outbound` the SAs of the current epoch and generation in the order recorded (the last
//! of a peer is the one its dataplane should have).
//!
//! Version 1 files (written before key ids) are read; their SAs have no `keyId`, which
//! stands for an unknown secret: such an SA counts as recorded under *every* secret and is
//! never the last one of its peer, so the first apply under the node's current epoch is
//! refused and the node needs a new epoch once (an agent takes one by itself; for
//! `scrambler mesh apply`, `scrambler mesh epoch`). The file is written back as version 2 at
//! its next change, which an older scrambler refuses to read rather than misread.
//!
//! Both the node tool (`scrambler mesh apply`) and an embedding agent use it the same way:
//! open, `admit` with what the dataplane's status says is installed, reconcile, drop.

use crate::epoch::{Epoch, Incarnation};
use crate::error::{Error, Result};
#[cfg(doc)]
use crate::keys::ClusterSecret;
use crate::keys::KeyId;
use crate::mesh::{check_node_name, Generation, Mesh, Node, NodeId};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Default directory of the ledgers.
pub const DEFAULT_DIR: &str = "/var/lib/scrambler";

/// One outbound SA as the ledger knows it: the input of its key derivation and the key id
/// of the cluster secret it derives from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboundSa {
    /// The local node's id.
    pub local_id: NodeId,
    /// The local node's epoch.
    pub local_epoch: Epoch,
    /// The peer's id.
    pub peer_id: NodeId,
    /// The peer's epoch.
    pub peer_epoch: Epoch,
    /// The key generation.
    pub generation: Generation,
    /// The key id of the cluster secret ([`ClusterSecret::key_id`]); `None` in ledgers
    /// written before key ids, standing for an unknown secret (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
}

impl OutboundSa {
    /// The outbound SA the node of `mesh` sends to `peer` with, keyed by the secret of
    /// `key_id`.
    pub fn to_peer(mesh: &Mesh, peer: &Node, key_id: KeyId) -> OutboundSa {
        OutboundSa::new(
            mesh.local.incarnation(),
            peer.incarnation(),
            mesh.keys.tx,
            key_id,
        )
    }

    /// The outbound SA from `local` to `peer` in `generation`, keyed by the secret of
    /// `key_id`.
    pub fn new(
        local: Incarnation,
        peer: Incarnation,
        generation: Generation,
        key_id: KeyId,
    ) -> OutboundSa {
        OutboundSa {
            local_id: local.id,
            local_epoch: local.epoch,
            peer_id: peer.id,
            peer_epoch: peer.epoch,
            generation,
            key_id: Some(key_id),
        }
    }

    /// True when `recorded` may be this SA's key: the same derivation input, and the same
    /// key id or an unknown one.
    fn may_be(&self, recorded: &OutboundSa) -> bool {
        let input = |sa: &OutboundSa| {
            (
                sa.local_id,
                sa.local_epoch,
                sa.peer_id,
                sa.peer_epoch,
                sa.generation,
            )
        };
        input(self) == input(recorded)
            && (recorded.key_id.is_none() || recorded.key_id == self.key_id)
    }
}

impl std::fmt::Display for OutboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} -> {}@{} generation {} key id {}",
            self.local_id,
            self.local_epoch,
            self.peer_id,
            self.peer_epoch,
            self.generation,
            self.key_id
                .map(|k| k.to_string())
                .unwrap_or_else(|| "unknown".into())
        )
    }
}

/// What is on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LedgerFile {
    version: u32,
    node: String,
    /// The highest tx generation recorded.
    generation: Option<Generation>,
    /// The node's epochs, in the order first used; the last is current.
    epochs: Vec<Epoch>,
    /// Outbound SAs of the current epoch and generation, in the order recorded.
    outbound: Vec<OutboundSa>,
}

/// The version written; version 1 (no key ids) is read too.
const VERSION: u32 = 2;

/// A node's ledger, open and locked (see the module docs).
pub struct Ledger {
    path: PathBuf,
    file: LedgerFile,
    // held for the ledger's lifetime: the flock
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("file", &self.file)
            .finish()
    }
}

impl Ledger {
    /// The ledger file of `node` under `dir`.
    pub fn path_of(dir: &Path, node: &str) -> Result<PathBuf> {
        check_node_name(node)?;
        Ok(dir.join(format!("{node}.ledger.json")))
    }

    /// Opens (or starts) the ledger of `node` under `dir`, creating `dir` with mode 0700
    /// if missing, and waits for the lock of any other holder of it.
    pub fn open(dir: &Path, node: &str) -> Result<Ledger> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = Self::path_of(dir, node)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io("create ledger directory", dir.display(), e))?;
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| Error::io("open ledger lock", lock_path.display(), e))?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io("lock ledger", lock_path.display(), e.into()))?;
        let file = match std::fs::read(&path) {
            Ok(b) => {
                let mut f: LedgerFile = serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
                    object: format!("ledger {}", path.display()),
                    reason: e.to_string(),
                })?;
                if !(f.version == VERSION || f.version == 1) || f.node != node {
                    return Err(Error::Corrupt {
                        object: format!("ledger {}", path.display()),
                        reason: format!(
                            "it is version {} of node {:?}, expected version {VERSION} (or 1) of \
                             {node:?}",
                            f.version, f.node
                        ),
                    });
                }
                // SAs of version 1 have no key id (an unknown secret); written back as 2
                f.version = VERSION;
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LedgerFile {
                version: VERSION,
                node: node.into(),
                ..Default::default()
            },
            Err(e) => return Err(Error::io("read ledger", path.display(), e)),
        };
        Ok(Ledger {
            path,
            file,
            _lock: lock,
        })
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The highest tx generation recorded.
    pub fn generation(&self) -> Option<Generation> {
        self.file.generation
    }

    /// The node's epochs in the order first used; the last is current.
    pub fn epochs(&self) -> &[Epoch] {
        &self.file.epochs
    }

    /// True when `sa` may be recorded (as installed, or about to be): its derivation input
    /// is, under its key id or an unknown one (a version 1 ledger).
    pub fn contains(&self, sa: &OutboundSa) -> bool {
        self.file.outbound.iter().any(|r| sa.may_be(r))
    }

    /// Checks `mesh` against the ledger and records the outbound SAs it would newly
    /// install (see the module docs), keyed by the cluster secret of `key_id`
    /// ([`ClusterSecret::key_id`]: the secret the reconcile will derive from).
    /// `installed(peer)` says whether the dataplane has the
    /// outbound SA to `peer` of the mesh's tx generation and current epochs right now
    /// (e.g. [`crate::PeerStatus::outbound`]). Returns the SAs newly recorded; on an error
    /// nothing is recorded and nothing may be installed.
    pub fn admit(
        &mut self,
        mesh: &Mesh,
        key_id: KeyId,
        installed: impl Fn(&Node) -> bool,
    ) -> Result<Vec<OutboundSa>> {
        let node = &mesh.local.name;
        let tx = mesh.keys.tx;
        if let Some(max) = self.file.generation.filter(|max| tx < *max) {
            return Err(Error::mesh(format!(
                "key generation {tx} (tx) is below generation {max}, which node {node:?} has \
                 already sent with (ledger {}): generations never go back; rotate forward \
                 with `scrambler rotate` instead",
                self.path.display()
            )));
        }
        let epoch = mesh.local.epoch;
        let current = self.file.epochs.last().copied();
        if current != Some(epoch) && self.file.epochs.contains(&epoch) {
            return Err(Error::mesh(format!(
                "epoch {epoch} of node {node:?} was used before epoch {} (ledger {}): an \
                 epoch never comes back; give the node a new one with \
                 `scrambler mesh epoch --node {node} --mesh MESHFILE`",
                current.map(|e| e.to_string()).unwrap_or_default(),
                self.path.display()
            )));
        }
        let mut refused = Vec::new();
        let mut new = Vec::new();
        for peer in &mesh.peers {
            let sa = OutboundSa::to_peer(mesh, peer, key_id);
            if !self.contains(&sa) {
                new.push(sa);
            } else if self.last_to(peer.id) != Some(&sa) || !installed(peer) {
                refused.push(format!("{} ({sa})", peer.name));
            }
        }
        if !refused.is_empty() {
            return Err(Error::AlreadyExists {
                object: format!("outbound SA of node {node:?} to {}", refused.join(", ")),
                reason: format!(
                    "it was installed before (ledger {}) and is not in the dataplane now (the \
                     dataplane was reset by a reboot, a VPP restart or `scrambler mesh \
                     remove`, the SA was lost, or it was replaced since: by an SA under \
                     another cluster secret — a keyFile changed and changed back — or of \
                     a newer mesh file); installing it again would restart its \
                     sequence numbers under a key that has sent (AES-GCM nonce reuse), so \
                     nothing was changed. Give this node a new epoch: `scrambler mesh epoch \
                     --node {node} --mesh MESHFILE`, then apply the mesh on every node. (A key \
                     rotation, `scrambler rotate`, repairs it too: this node's apply is \
                     refused until the switch phase brings a new generation.)",
                    self.path.display()
                ),
            });
        }
        let moved = current != Some(epoch) || self.file.generation != Some(tx);
        if new.is_empty() && !moved {
            return Ok(new);
        }
        if current != Some(epoch) {
            self.file.epochs.push(epoch);
        }
        self.file.generation = Some(tx);
        // what can no longer be asked for: other epochs, lower generations
        self.file
            .outbound
            .retain(|sa| sa.local_epoch == epoch && sa.generation == tx);
        self.file.outbound.extend(new.iter().copied());
        self.save()?;
        Ok(new)
    }

    /// The outbound SA last recorded for `peer`.
    fn last_to(&self, peer: NodeId) -> Option<&OutboundSa> {
        self.file
            .outbound
            .iter()
            .rev()
            .find(|sa| sa.peer_id == peer)
    }

    /// Replaces the file atomically and durably (mode 0600; see
    /// [`crate::fsutil::write_atomic`]).
    fn save(&self) -> Result<()> {
        let mut text =
            serde_json::to_vec_pretty(&self.file).map_err(|e| Error::decode("ledger", e))?;
        text.push(b'\n');
        crate::fsutil::write_atomic(&self.path, &text, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{kat, ClusterSecret};
    use crate::mesh::Keys;
    use std::os::unix::fs::PermissionsExt;

    fn node(name: &str, id: u32, epoch: u64) -> Node {
        Node {
            name: name.into(),
            id: NodeId::new(id).unwrap(),
            epoch: Epoch::new(epoch).unwrap(),
            underlay: vec![format!("192.0.2.{id}").parse().unwrap()],
            pod_cidrs: vec![format!("10.244.{id}.0/24").parse().unwrap()],
            previous_epochs: Vec::new(),
        }
    }

    /// The key id of secret A (the known-answer secret).
    fn ka() -> KeyId {
        kat::secret().key_id()
    }

    /// The key id of another secret, B.
    fn kb() -> KeyId {
        ClusterSecret::from_bytes(vec![0xb; 32]).unwrap().key_id()
    }

    fn mesh(local_epoch: u64, peer_epochs: &[u64], keys: Keys) -> Mesh {
        Mesh {
            local: node("a", 1, local_epoch),
            peers: peer_epochs
                .iter()
                .enumerate()
                .map(|(i, e)| node(&format!("p{}", i + 2), i as u32 + 2, *e))
                .collect(),
            keys,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            node_encryption: None,
        }
    }

    #[test]
    fn same_sa_is_admitted_again_only_while_installed() {
        let dir = tempfile::tempdir().unwrap();
        let m = mesh(0x11, &[0x22, 0x33], Keys::single(1));
        let mut l = Ledger::open(dir.path(), "a").unwrap();
        assert_eq!(l.admit(&m, ka(), |_| false).unwrap().len(), 2);
        // a second apply with the SAs in place: nothing new, admitted
        assert!(l.admit(&m, ka(), |_| true).unwrap().is_empty());
        drop(l);
        // after a dataplane reset (nothing installed): refused, naming the peers and the cure
        let mut l = Ledger::open(dir.path(), "a").unwrap();
        let e = l.admit(&m, ka(), |p| p.name == "p2").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("p3") && !text.contains("p2 ("), "{text}");
        assert!(text.contains("scrambler mesh epoch --node a"), "{text}");
        assert!(text.contains("rotate"), "{text}");
        assert_eq!(e.code(), 102);
        // a new local epoch: admitted, every SA new
        let m2 = mesh(0x12, &[0x22, 0x33], Keys::single(1));
        assert_eq!(l.admit(&m2, ka(), |_| false).unwrap().len(), 2);
        assert_eq!(l.epochs().len(), 2);
        // a peer's new epoch re-keys that pair only
        let m3 = mesh(0x12, &[0x23, 0x33], Keys::single(1));
        let new = l.admit(&m3, ka(), |_| true).unwrap();
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].peer_epoch.get(), 0x23);
        // the peer's old epoch again (an old mesh file): refused even if "installed",
        // since the dataplane has the newer SA to that peer
        let e = l.admit(&m2, ka(), |_| true).unwrap_err().to_string();
        assert!(e.contains("p2"), "{e}");
    }

    #[test]
    fn generations_and_epochs_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path(), "a").unwrap();
        l.admit(&mesh(0x11, &[0x22], Keys::single(5)), ka(), |_| false)
            .unwrap();
        let e = l
            .admit(&mesh(0x11, &[0x22], Keys::single(4)), ka(), |_| false)
            .unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("below generation 5"), "{e}");
        // a rotation forward is fine, and prunes the older generation
        l.admit(&mesh(0x11, &[0x22], Keys::single(6)), ka(), |_| false)
            .unwrap();
        assert_eq!(l.generation(), Some(6));
        assert_eq!(l.file.outbound.len(), 1);
        // an epoch of the past is refused, also with a new generation
        l.admit(&mesh(0x12, &[0x22], Keys::single(6)), ka(), |_| false)
            .unwrap();
        let e = l
            .admit(&mesh(0x11, &[0x22], Keys::single(7)), ka(), |_| false)
            .unwrap_err();
        assert!(e.to_string().contains("never comes back"), "{e}");
        assert_eq!(l.file.outbound.len(), 1);
    }

    #[test]
    fn ledger_is_private_durable_and_holds_no_key_material() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("var/lib/scrambler");
        let m = mesh(0x11, &[0x22], Keys::single(1));
        {
            let mut l = Ledger::open(&sub, "a").unwrap();
            l.admit(&m, ka(), |_| false).unwrap();
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        let file = Ledger::path_of(&sub, "a").unwrap();
        assert_eq!(mode(&file), 0o600);
        let text = std::fs::read_to_string(&file).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["outbound"][0]["peerEpoch"], "0000000000000022");
        assert_eq!(v["outbound"][0]["keyId"], ka().to_string());
        // no key material: none of the SA's key or salt bytes, nor the secret's
        let sa = kat::secret().sa(m.local.incarnation(), m.peers[0].incarnation(), 1);
        for b in [
            hex::encode(sa.key),
            hex::encode(sa.salt),
            hex::encode((0u8..32).collect::<Vec<u8>>()),
        ] {
            assert!(!text.contains(&b[..8]), "{text}");
        }
        // read back by a new open: the same SA is refused when not installed
        let mut l = Ledger::open(&sub, "a").unwrap();
        assert!(l.contains(&OutboundSa::to_peer(&m, &m.peers[0], ka())));
        assert!(!l.contains(&OutboundSa::to_peer(&m, &m.peers[0], kb())));
        assert!(l.admit(&m, ka(), |_| false).is_err());
        drop(l);
        // a damaged ledger stops apply, it is never taken for an empty one
        std::fs::write(&file, "{").unwrap();
        assert_eq!(Ledger::open(&sub, "a").unwrap_err().code(), 107);
        assert!(Ledger::open(&sub, "../x").is_err());
    }

    /// A mesh applied under secret A, then B (a wrong keyFile: the reconcile replaces the
    /// A-keyed SAs, same SPIs), then A again: the A SAs were recorded but are no longer
    /// the last of their peers, so A is refused although status says "installed".
    #[test]
    fn secret_a_then_b_then_a_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = mesh(0x11, &[0x22, 0x33], Keys::single(1));
        let mut l = Ledger::open(dir.path(), "a").unwrap();
        assert_eq!(l.admit(&m, ka(), |_| false).unwrap().len(), 2);
        // B: every SA is another key, new (the dataplane has the A SAs: same SPIs)
        let new = l.admit(&m, kb(), |_| true).unwrap();
        assert_eq!(new.len(), 2);
        assert!(new.iter().all(|sa| sa.key_id == Some(kb())));
        // B again: idempotent
        assert!(l.admit(&m, kb(), |_| true).unwrap().is_empty());
        drop(l);
        // A again (keyFile fixed), even with a fresh open: refused, nothing recorded
        let mut l = Ledger::open(dir.path(), "a").unwrap();
        let before = l.file.clone();
        let e = l.admit(&m, ka(), |_| true).unwrap_err();
        assert_eq!(e.code(), 102);
        let text = e.to_string();
        assert!(text.contains("p2 (") && text.contains("p3 ("), "{text}");
        assert!(text.contains(&format!("key id {}", ka())), "{text}");
        assert!(text.contains("another cluster secret"), "{text}");
        assert!(text.contains("scrambler mesh epoch --node a"), "{text}");
        assert_eq!(l.file, before);
        // the cure: a new epoch, under A
        let m2 = mesh(0x12, &[0x22, 0x33], Keys::single(1));
        assert_eq!(l.admit(&m2, ka(), |_| false).unwrap().len(), 2);
        assert!(l.admit(&m2, ka(), |_| true).unwrap().is_empty());
    }

    /// A version 1 ledger (no key ids) is read; its SAs stand for an unknown secret: the
    /// next apply under the same epoch is refused, whatever the secret, and a new epoch
    /// is admitted and written as version 2.
    #[test]
    fn version_1_ledger_without_key_ids_asks_for_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let file = Ledger::path_of(dir.path(), "a").unwrap();
        std::fs::write(
            &file,
            r#"{"version": 1, "node": "a", "generation": 1, "epochs": ["0000000000000011"],
                "outbound": [{"localId": 1, "localEpoch": "0000000000000011", "peerId": 2,
                              "peerEpoch": "0000000000000022", "generation": 1}]}"#,
        )
        .unwrap();
        let m = mesh(0x11, &[0x22], Keys::single(1));
        let mut l = Ledger::open(dir.path(), "a").unwrap();
        assert!(l.contains(&OutboundSa::to_peer(&m, &m.peers[0], ka())));
        assert!(l.contains(&OutboundSa::to_peer(&m, &m.peers[0], kb())));
        for k in [ka(), kb()] {
            let e = l.admit(&m, k, |_| true).unwrap_err().to_string();
            assert!(e.contains("key id") && e.contains("mesh epoch"), "{e}");
        }
        let m2 = mesh(0x12, &[0x22], Keys::single(1));
        assert_eq!(l.admit(&m2, ka(), |_| false).unwrap().len(), 1);
        drop(l);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(v["version"], 2);
        assert_eq!(v["outbound"].as_array().unwrap().len(), 1);
        assert_eq!(v["outbound"][0]["keyId"], ka().to_string());
        // a version of the future is refused
        std::fs::write(
            &file,
            r#"{"version": 3, "node": "a", "epochs": [], "outbound": []}"#,
        )
        .unwrap();
        assert_eq!(Ledger::open(dir.path(), "a").unwrap_err().code(), 107);
    }
}
