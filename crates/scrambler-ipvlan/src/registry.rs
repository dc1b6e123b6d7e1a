//! The node registry: which networks have encrypted ipvlan pods on a node, and what each
//! needs of the node setup ([`crate::node`]), which all of them share (one node link
//! [`crate::node::NODE_LINK`], one nftables table).
//!
//! It lives in one fixed place per node namespace, never in a network's `stateDir` (each
//! network may name another): [`NODE_DIR`]`/<host id>/` ([`crate::record::host_id`]), one
//! file `<network>.json` per network ([`NetworkEntry`]: its master, mode, pod and cluster
//! CIDRs, and the `stateDir` of its attachment records), next to the node's lock
//! [`NODE_DIR`]`/<host id>.lock` ([`NodeLock`]). Every change of the node setup, and every
//! ipvlan ADD (an ADD in another mode on the encrypted pods' master would switch the
//! kernel's per-master mode under them), happens under that lock.
//!
//! - **Union.** The node setup is made from every entry together ([`node_setup`]): the
//!   nftables table holds each network's own re-route and guard rules, the node link
//!   routes every network's pod CIDRs.
//! - **Counted from records.** A network's pods on the node are its attachment records
//!   ([`crate::record`]) made in this node namespace, never the links or routes that
//!   happen to exist. The setup is removed only when no network has a record left; a
//!   network whose last record goes loses its entry, and the table narrows to the others'
//!   rules in one atomic rewrite (no moment without a guard).
//! - **One master, one mode.** The kernel has one ipvlan mode per master, and the node link
//!   sits on one master: an ADD whose master or mode differs from that of a network with
//!   encrypted pods on the node is refused with code 7 naming that network
//!   ([`check_master`], [`admit`]); so is an encrypted network whose own master, mode or
//!   `stateDir` changed while it has pods on the node.
//!
//! Entries are written before the record of the pod that needs them (an entry without
//! records is dropped by the next change; a record without entry would not be counted),
//! atomically, mode 0644 (nothing secret). [`NODE_DIR`] is on `/run`, a tmpfs, like the
//! kernel state it describes.

use crate::config::Mode;
use crate::lock::NodeLock;
use crate::nft::NetworkRules;
use crate::node::IpvlanNode;
use crate::record::{dir_names, write_atomically, Record, RecordStore};
use ipnet::IpNet;
use scrambler_core::cni::validate_network_name;
use scrambler_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where node registries and node locks live (the same for every network of a node).
pub const NODE_DIR: &str = "/run/scrambler-ipvlan/_node";

/// What one network with encrypted pods on the node needs of the node setup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkEntry {
    /// The network (conf `name`).
    pub network: String,
    /// The master its pods are slaves of.
    pub master: String,
    /// Their ipvlan mode.
    pub mode: Mode,
    /// Its pod CIDRs on this node (every IPAM subnet its pods here were given).
    pub pod_cidrs: Vec<IpNet>,
    /// Its cluster CIDRs (conf `clusterCidrs`).
    pub cluster_cidrs: Vec<IpNet>,
    /// Its `stateDir`: where its attachment records are.
    pub state_dir: PathBuf,
}

impl NetworkEntry {
    /// The network's attachment records.
    pub fn records(&self) -> Result<RecordStore> {
        RecordStore::new(&self.state_dir, &self.network)
    }

    fn rules(&self) -> NetworkRules {
        NetworkRules {
            pod_cidrs: self.pod_cidrs.clone(),
            cluster_cidrs: self.cluster_cidrs.clone(),
        }
    }

    fn describe(&self) -> String {
        format!(
            "network {:?} (master {}, mode {})",
            self.network,
            self.master,
            self.mode.as_str()
        )
    }
}

/// The registry of one node namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRegistry {
    root: PathBuf,
    host: u64,
}

impl NodeRegistry {
    /// The registry of node namespace `host` (its [`crate::record::host_id`]) under
    /// `node_dir` ([`NODE_DIR`] for the CNI plugin; absolute).
    pub fn new(node_dir: &Path, host: u64) -> Result<Self> {
        if !node_dir.is_absolute() {
            return Err(Error::config(format!(
                "ipvlan node directory {} must be an absolute path",
                node_dir.display()
            )));
        }
        Ok(NodeRegistry {
            root: node_dir.to_path_buf(),
            host,
        })
    }

    /// The node namespace's id.
    pub fn host(&self) -> u64 {
        self.host
    }

    /// The directory of the entries.
    pub fn dir(&self) -> PathBuf {
        self.root.join(self.host.to_string())
    }

    /// The node lock's file.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join(format!("{}.lock", self.host))
    }

    /// Waits for and takes the node lock.
    pub async fn lock(&self) -> Result<NodeLock> {
        NodeLock::acquire(self.lock_path()).await
    }

    fn path(&self, network: &str) -> Result<PathBuf> {
        validate_network_name(network)?;
        Ok(self.dir().join(format!("{network}.json")))
    }

    /// Every entry, sorted by network. An entry that cannot be read or decoded, or that
    /// names another network than its file, is an error naming the file: the setup is
    /// never narrowed on a guess.
    pub fn entries(&self) -> Result<Vec<NetworkEntry>> {
        let mut out = Vec::new();
        for name in dir_names(&self.dir(), "list ipvlan node registry")? {
            let Some(network) = name.strip_suffix(".json") else {
                continue;
            };
            if let Some(e) = self.entry(network)? {
                out.push(e);
            }
        }
        out.sort_by(|a, b| a.network.cmp(&b.network));
        Ok(out)
    }

    /// The entries of networks with records in this node namespace; the entries of the
    /// others (left by an ADD that died between its entry and its record) are deleted, so
    /// they neither widen the setup nor stand in another network's way.
    pub fn live_entries(&self) -> Result<Vec<NetworkEntry>> {
        let mut out = Vec::new();
        for e in self.entries()? {
            if self.pods(&e)?.is_empty() {
                tracing::info!(network = %e.network, "ipvlan node registry entry without records dropped");
                self.remove(&e.network)?;
            } else {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// The entry of `network`, if any.
    pub fn entry(&self, network: &str) -> Result<Option<NetworkEntry>> {
        let path = self.path(network)?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read ipvlan node registry", path.display(), e)),
        };
        let what = || format!("ipvlan node registry entry {}", path.display());
        let entry: NetworkEntry =
            serde_json::from_slice(&text).map_err(|e| Error::decode(what(), e))?;
        if entry.network != network {
            return Err(Error::decode(
                what(),
                format!("it names network {:?}", entry.network),
            ));
        }
        Ok(Some(entry))
    }

    /// Writes `entry` (atomically, replacing the network's older one).
    pub fn write(&self, entry: &NetworkEntry) -> Result<()> {
        let path = self.path(&entry.network)?;
        let text = serde_json::to_vec(entry).map_err(|e| {
            Error::decode(format!("ipvlan node registry entry {}", entry.network), e)
        })?;
        write_atomically(
            &self.dir(),
            &path,
            &text,
            "write ipvlan node registry entry",
        )
    }

    /// Puts back what [`NodeRegistry::entry`] said before: `old`, or no entry.
    pub fn restore(&self, network: &str, old: Option<&NetworkEntry>) -> Result<()> {
        match old {
            Some(e) => self.write(e),
            None => self.remove(network).map(|_| ()),
        }
    }

    /// Deletes the entry of `network`; returns whether there was one.
    pub fn remove(&self, network: &str) -> Result<bool> {
        let path = self.path(network)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(
                "remove ipvlan node registry entry",
                path.display(),
                e,
            )),
        }
    }

    /// The records of `entry`'s network made in this node namespace.
    pub fn pods(&self, entry: &NetworkEntry) -> Result<Vec<Record>> {
        Ok(entry
            .records()?
            .list()?
            .into_iter()
            .filter(|r| r.host == self.host)
            .collect())
    }
}

/// Fails (code 7, naming the network in the way) when an ipvlan slave of `network` on
/// `master` in `mode` would disturb another network's encrypted pods: the kernel has one
/// ipvlan mode per master (a slave in another mode switches all of them; in `l2` the
/// encrypted pods' traffic would bypass the node's routing and leave in the clear), and
/// the node setup sits on one master.
pub fn check_master(
    entries: &[NetworkEntry],
    network: &str,
    master: &str,
    mode: Mode,
    encrypt: bool,
) -> Result<()> {
    for e in entries.iter().filter(|e| e.network != network) {
        if e.master == master && e.mode != mode {
            return Err(Error::config(format!(
                "ipvlan network {network:?} wants mode {} on master {master}, but {} has \
                 encrypted pods on this node: the kernel has one ipvlan mode per master; use \
                 mode {} or another master",
                mode.as_str(),
                e.describe(),
                e.mode.as_str()
            )));
        }
        if encrypt && e.master != master {
            return Err(Error::config(format!(
                "encrypted ipvlan network {network:?} wants master {master}, but {} has \
                 encrypted pods on this node: encrypted ipvlan networks of one node share \
                 one master (the node link {} sits on one); use master {}",
                e.describe(),
                crate::node::NODE_LINK,
                e.master
            )));
        }
    }
    Ok(())
}

/// The entry of a network after an ADD that wants `new`, given its entry `old` before:
/// the pod CIDRs and cluster CIDRs of both (pods admitted under the old ones still run).
/// Code 7 when the network's pods on the node are on another master, in another mode or
/// recorded under another `stateDir` than `new` says.
pub fn admit(old: Option<&NetworkEntry>, new: NetworkEntry) -> Result<NetworkEntry> {
    let Some(old) = old else {
        return Ok(new);
    };
    if (&old.master, old.mode, &old.state_dir) != (&new.master, new.mode, &new.state_dir) {
        return Err(Error::config(format!(
            "ipvlan network {:?} has encrypted pods on this node on master {}, mode {}, \
             recorded under {}; its conf now says master {}, mode {}, stateDir {}: delete \
             those pods first",
            new.network,
            old.master,
            old.mode.as_str(),
            old.state_dir.display(),
            new.master,
            new.mode.as_str(),
            new.state_dir.display()
        )));
    }
    Ok(NetworkEntry {
        pod_cidrs: union(&old.pod_cidrs, &new.pod_cidrs),
        cluster_cidrs: union(&old.cluster_cidrs, &new.cluster_cidrs),
        ..new
    })
}

/// `entries` with `entry` in place of its network's entry (added if it had none).
pub fn with_entry(entries: &[NetworkEntry], entry: &NetworkEntry) -> Vec<NetworkEntry> {
    let mut out: Vec<NetworkEntry> = entries
        .iter()
        .filter(|e| e.network != entry.network)
        .cloned()
        .collect();
    out.push(entry.clone());
    out.sort_by(|a, b| a.network.cmp(&b.network));
    out
}

/// The node setup all of `entries` need together (`None` without entries). They share
/// one master and mode ([`check_master`] keeps it so); the first entry's are taken.
pub fn node_setup(entries: &[NetworkEntry]) -> Option<IpvlanNode> {
    let first = entries.first()?;
    Some(IpvlanNode {
        master: first.master.clone(),
        mode: first.mode,
        networks: entries.iter().map(NetworkEntry::rules).collect(),
    })
}

fn union(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = a.iter().map(IpNet::trunc).collect();
    for c in b.iter().map(IpNet::trunc) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_core::AttachmentId;

    fn cidrs(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn entry(network: &str, master: &str, mode: Mode, pods: &str, cluster: &str) -> NetworkEntry {
        NetworkEntry {
            network: network.into(),
            master: master.into(),
            mode,
            pod_cidrs: cidrs(&[pods]),
            cluster_cidrs: cidrs(&[cluster]),
            state_dir: "/run/scrambler-ipvlan".into(),
        }
    }

    #[test]
    fn a_second_master_or_mode_is_refused_naming_the_network_in_the_way() {
        let a = entry("a", "ul0", Mode::L3, "10.1.1.0/24", "10.1.0.0/16");
        let all = [a.clone()];
        // same master and mode: fine, encrypted or not
        check_master(&all, "b", "ul0", Mode::L3, true).unwrap();
        check_master(&all, "b", "ul0", Mode::L3, false).unwrap();
        // another mode on a's master, encrypted or not (l2 would leak a's traffic)
        for (mode, encrypt) in [(Mode::L2, false), (Mode::L3s, true), (Mode::L3s, false)] {
            let e = check_master(&all, "b", "ul0", mode, encrypt).unwrap_err();
            assert_eq!(e.code(), 7, "{e}");
            let msg = e.to_string();
            assert!(msg.contains("network \"a\" (master ul0, mode l3)"), "{msg}");
            assert!(msg.contains("one ipvlan mode per master"), "{msg}");
        }
        // another master: refused when encrypted, anything goes when not
        let e = check_master(&all, "b", "ul1", Mode::L3, true).unwrap_err();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("share one master"), "{e}");
        assert!(e.to_string().contains("use master ul0"), "{e}");
        check_master(&all, "b", "ul1", Mode::L2, false).unwrap();
        // a network's own entry is not in its way (admit checks it)
        check_master(&all, "a", "ul1", Mode::L2, true).unwrap();
        check_master(&[], "a", "ul1", Mode::L2, true).unwrap();
    }

    #[test]
    fn admit_merges_cidrs_and_refuses_a_moved_network() {
        let old = entry("a", "ul0", Mode::L3, "10.1.1.0/24", "10.1.0.0/16");
        let new = entry("a", "ul0", Mode::L3, "10.1.2.5/24", "10.9.0.0/16");
        assert_eq!(admit(None, new.clone()).unwrap(), new);
        let merged = admit(Some(&old), new.clone()).unwrap();
        assert_eq!(merged.pod_cidrs, cidrs(&["10.1.1.0/24", "10.1.2.0/24"]));
        assert_eq!(merged.cluster_cidrs, cidrs(&["10.1.0.0/16", "10.9.0.0/16"]));
        assert_eq!(
            admit(Some(&merged), new.clone()).unwrap(),
            merged,
            "idempotent"
        );
        for moved in [
            NetworkEntry {
                master: "ul1".into(),
                ..new.clone()
            },
            NetworkEntry {
                mode: Mode::L3s,
                ..new.clone()
            },
            NetworkEntry {
                state_dir: "/var/lib/x".into(),
                ..new.clone()
            },
        ] {
            let e = admit(Some(&old), moved).unwrap_err();
            assert_eq!(e.code(), 7, "{e}");
            assert!(e.to_string().contains("delete those pods first"), "{e}");
        }
    }

    #[test]
    fn the_node_setup_is_every_networks_rules() {
        let a = entry("a", "ul0", Mode::L3, "10.1.1.0/24", "10.1.0.0/16");
        let b = entry("b", "ul0", Mode::L3, "10.2.1.0/24", "10.2.0.0/16");
        assert_eq!(node_setup(&[]), None);
        let both = with_entry(std::slice::from_ref(&a), &b);
        assert_eq!(both, [a.clone(), b.clone()]);
        let n = node_setup(&both).unwrap();
        assert_eq!((n.master.as_str(), n.mode), ("ul0", Mode::L3));
        assert_eq!(n.pod_cidrs(), cidrs(&["10.1.1.0/24", "10.2.1.0/24"]));
        let script = n.ruleset().script();
        // both networks' pods re-routed, both networks' cluster CIDRs guarded
        for line in [
            "ip saddr 10.1.1.0/24 counter meta mark set",
            "ip saddr 10.2.1.0/24 counter meta mark set",
            "ip saddr 10.1.0.0/16 ip daddr 10.1.0.0/16 rt ipsec missing counter drop",
            "ip saddr 10.2.0.0/16 ip daddr 10.2.0.0/16 rt ipsec missing counter drop",
        ] {
            assert!(script.contains(line), "{line} missing in:\n{script}");
        }
        // with_entry replaces a network's entry
        let a2 = entry("a", "ul0", Mode::L3, "10.1.3.0/24", "10.1.0.0/16");
        assert_eq!(with_entry(&both, &a2), [a2, b]);
    }

    /// Entries round-trip; names are exact (network `a` never reads `a-b`'s or `a.b`'s
    /// entry); a garbled or misnamed entry is an error, not skipped (fail closed); pods are
    /// the network's records made in this node namespace only.
    #[test]
    fn entries_are_exact_and_never_guessed() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let reg = NodeRegistry::new(&tmp.path().join("node"), 42).unwrap();
        assert!(NodeRegistry::new(Path::new("rel"), 1).is_err());
        assert_eq!(reg.lock_path(), tmp.path().join("node/42.lock"));
        assert!(
            reg.entries().unwrap().is_empty(),
            "no directory: no entries"
        );
        let mut a = entry("a", "ul0", Mode::L3, "10.1.1.0/24", "10.1.0.0/16");
        a.state_dir = state.clone();
        let ab = NetworkEntry {
            network: "a-b".into(),
            ..a.clone()
        };
        let adotb = NetworkEntry {
            network: "a.b".into(),
            ..a.clone()
        };
        for e in [&a, &ab, &adotb] {
            reg.write(e).unwrap();
        }
        assert_eq!(
            reg.entries().unwrap(),
            [a.clone(), ab.clone(), adotb.clone()]
        );
        assert_eq!(reg.entry("a").unwrap(), Some(a.clone()));
        assert!(reg.remove("a").unwrap());
        assert!(!reg.remove("a").unwrap());
        assert_eq!(reg.entry("a").unwrap(), None);
        assert_eq!(reg.entries().unwrap(), [ab.clone(), adotb.clone()]);
        reg.restore("a", Some(&a)).unwrap();
        assert_eq!(reg.entry("a").unwrap(), Some(a.clone()));
        reg.restore("a", None).unwrap();
        assert_eq!(reg.entry("a").unwrap(), None);
        for bad in ["", "..", "x/y"] {
            assert_eq!(reg.entry(bad).unwrap_err().code(), 7, "{bad:?}");
        }

        // records: only this node's count
        let store = ab.records().unwrap();
        for (cid, host) in [("c1", 42), ("c2", 7)] {
            store
                .write(&Record {
                    id: AttachmentId::new(cid, "eth0"),
                    host,
                    ips: vec!["10.1.1.2".parse().unwrap()],
                })
                .unwrap();
        }
        let pods = reg.pods(&ab).unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].id, AttachmentId::new("c1", "eth0"));
        assert!(
            reg.pods(&adotb).unwrap().is_empty(),
            "a.b has none of a-b's"
        );

        std::fs::write(reg.dir().join("a.b.json"), "{").unwrap();
        let e = reg.entries().unwrap_err();
        assert!(e.to_string().contains("a.b.json"), "{e}");
        std::fs::write(reg.dir().join("a.b.json"), serde_json::to_vec(&ab).unwrap()).unwrap();
        let e = reg.entries().unwrap_err();
        assert!(e.to_string().contains("names network \"a-b\""), "{e}");
    }
}
