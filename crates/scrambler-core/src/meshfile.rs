//! The mesh file: the cluster's nodes, the live key generations and where the key is.
//!
//! ```json
//! {
//!   "nodes": [
//!     {"name": "node1", "id": 1, "epoch": "0123456789abcdef",
//!      "underlay": ["192.0.2.1"], "podCidrs": ["10.244.1.0/24"]},
//!     {"name": "node2", "id": 2, "epoch": "fedcba9876543210",
//!      "underlay": ["192.0.2.2"], "podCidrs": ["10.244.2.0/24"]}
//!   ],
//!   "clusterCidrs": ["10.244.0.0/16"],
//!   "keys": {"tx": 1, "rx": [1]},
//!   "keyFile": "/etc/scrambler/cluster.key"
//! }
//! ```
//!
//! Every node carries its dataplane's `epoch` (16 hex digits, see [`crate::epoch`]): keys
//! bind it, so a node whose dataplane lost its SAs (reboot, VPP restart, `mesh remove`)
//! must get a new one before its mesh is applied again (`scrambler mesh epoch`); a node
//! without one is refused, with that command in the error.
//! `clusterCidrs` (required) are the cluster's pod supernets: every node's pod CIDRs lie
//! inside them, and every node guards them — traffic between them that no mesh tunnel
//! carries is dropped, also to nodes that are not (or no longer) in the file.
//!
//! The same file serves every node; [`MeshFile::mesh_for`] cuts one node's [`Mesh`] from it.
//! [`MeshFile::load`] validates the whole cluster (see [`Mesh::validate`]), so a mesh read
//! this way is safe to hand to any [`crate::Tunnel`].

use crate::error::{Error, Result};
use crate::keys::ClusterSecret;
use crate::mesh::{Cluster, Mesh};
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
    /// Reads and validates a mesh file; a relative `keyFile` is resolved against the mesh
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read(path).map_err(|e| Error::io("read mesh file", path.display(), e))?;
        let mut mf = Self::parse(&text).map_err(|e| {
            let reason = mesh_reason(&e).replace("MESHFILE", &path.display().to_string());
            Error::mesh(format!("mesh file {}: {reason}", path.display()))
        })?;
        if mf.key_file.is_relative() {
            if let Some(dir) = path.parent() {
                mf.key_file = dir.join(&mf.key_file);
            }
        }
        Ok(mf)
    }

    /// Parses and validates mesh-file JSON (`keyFile` is kept as written).
    pub fn parse(text: &[u8]) -> Result<Self> {
        let mf: MeshFile = serde_json::from_slice(text).map_err(Error::mesh)?;
        mf.cluster.validate()?;
        Ok(mf)
    }

    /// The mesh as seen from node `name`.
    pub fn mesh_for(&self, name: &str) -> Result<Mesh> {
        self.cluster.mesh_for(name)
    }

    /// Reads the cluster secret from `keyFile` (see [`ClusterSecret::from_file`]); errors
    /// say that the path came from the mesh file.
    pub fn secret(&self) -> Result<ClusterSecret> {
        let origin = format!("{} (keyFile of the mesh file)", self.key_file.display());
        ClusterSecret::from_file(&self.key_file).map_err(|e| match e {
            Error::Secret { reason, .. } => Error::Secret {
                object: origin,
                reason,
            },
            Error::Io { op, source, .. } => Error::Io {
                op,
                object: origin,
                source,
            },
            e => e,
        })
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

/// The message of a mesh error without its "invalid mesh" prefix.
fn mesh_reason(e: &Error) -> String {
    match e {
        Error::InvalidMesh(m) => m.clone(),
        e => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_NODES: &str = r#"{"nodes":[{"name":"a","id":1,"epoch":"0123456789abcdef","underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"]},
                         {"name":"b","id":2,"epoch":"fedcba9876543210","underlay":["192.0.2.2"],"podCidrs":["10.244.2.0/24"]}],
                "clusterCidrs":["10.244.0.0/16"],"keys":{"tx":1,"rx":[1]},"keyFile":"k.hex"}"#;

    /// `text` written as `mesh.json` in a fresh directory.
    fn mesh_file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mesh.json");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn mesh_file_round_trip_and_relative_key_path() {
        let (dir, p) = mesh_file(TWO_NODES);
        let mf = MeshFile::load(&p).unwrap();
        assert_eq!(mf.key_file, dir.path().join("k.hex"));
        assert_eq!(mf.mesh_for("b").unwrap().peers[0].name, "a");
        mf.save(&p).unwrap();
        assert_eq!(MeshFile::load(&p).unwrap(), mf);
    }

    #[test]
    fn bad_mesh_file_names_the_file_in_mesh_words() {
        let (_dir, p) = mesh_file(r#"{"nodes":[]}"#);
        let e = MeshFile::load(&p).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("invalid mesh: mesh file "), "{text}");
        assert!(text.contains("mesh.json"), "{text}");
        assert!(!text.contains("network config"), "{text}");
        assert_eq!(e.code(), 7);
        // a semantic error too: two nodes on one underlay address
        std::fs::write(&p, TWO_NODES.replace("192.0.2.2", "192.0.2.1")).unwrap();
        let text = MeshFile::load(&p).unwrap_err().to_string();
        assert!(
            text.contains("mesh.json") && text.contains("192.0.2.1"),
            "{text}"
        );
    }

    #[test]
    fn missing_or_bad_epoch_says_how_to_get_one() {
        let (_dir, p) = mesh_file(&TWO_NODES.replace(r#""epoch":"fedcba9876543210","#, ""));
        let e = MeshFile::load(&p).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.code(), 7);
        assert!(text.contains("node \"b\" has no \"epoch\""), "{text}");
        let cmd = format!("scrambler mesh epoch --node b --mesh {}", p.display());
        assert!(text.contains(&cmd), "{text}");
        std::fs::write(
            &p,
            TWO_NODES.replace("fedcba9876543210", "0000000000000000"),
        )
        .unwrap();
        let text = MeshFile::load(&p).unwrap_err().to_string();
        assert!(text.contains("nonzero"), "{text}");
        std::fs::write(&p, TWO_NODES.replace("\"fedcba9876543210\"", "42")).unwrap();
        assert!(MeshFile::load(&p).is_err());
    }

    #[test]
    fn mesh_file_without_cluster_cidrs_says_what_to_add() {
        let (_dir, p) = mesh_file(&TWO_NODES.replace(r#""clusterCidrs":["10.244.0.0/16"],"#, ""));
        let e = MeshFile::load(&p).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("mesh.json") && text.contains("no clusterCidrs"),
            "{text}"
        );
        assert_eq!(e.code(), 7);
    }

    #[test]
    fn dual_stack_pods_on_an_ipv6_underlay_and_mismatched_families() {
        let six = TWO_NODES
            .replace("192.0.2.1", "fd00:2::1")
            .replace("192.0.2.2", "fd00:2::2")
            .replace(r#""10.244.1.0/24""#, r#""10.244.1.0/24","fd10:0:1::/64""#)
            .replace(r#""10.244.2.0/24""#, r#""10.244.2.0/24","fd10:0:2::/64""#);
        let (_dir, p) = mesh_file(&six.replace(
            r#""clusterCidrs":["10.244.0.0/16"]"#,
            r#""clusterCidrs":["10.244.0.0/16","fd10::/16"]"#,
        ));
        let m = MeshFile::load(&p).unwrap().mesh_for("a").unwrap();
        assert_eq!(m.local.pod_cidrs.len(), 2);
        assert_eq!(
            m.peers[0].underlay,
            ["fd00:2::2".parse::<std::net::IpAddr>().unwrap()]
        );
        // an IPv6 pod CIDR outside the (IPv4-only) clusterCidrs: refused, never unguarded
        std::fs::write(&p, &six).unwrap();
        let text = MeshFile::load(&p).unwrap_err().to_string();
        assert!(
            text.contains("fd10:0:1::/64") && text.contains("outside"),
            "{text}"
        );
        // an IPv4-only node and an IPv6-only node cannot run ESP between them
        std::fs::write(&p, TWO_NODES.replace("192.0.2.2", "fd00:2::2")).unwrap();
        let text = MeshFile::load(&p).unwrap_err().to_string();
        assert!(
            text.contains("no underlay address family in common"),
            "{text}"
        );
    }

    #[test]
    fn key_file_errors_say_the_path_is_the_mesh_files_key_file() {
        let (_dir, p) = mesh_file(TWO_NODES);
        let mf = MeshFile::load(&p).unwrap();
        let e = mf.secret().unwrap_err().to_string();
        assert!(e.contains("k.hex (keyFile of the mesh file)"), "{e}");
    }
}
