//! The etcd connection and every read and write the agent makes.
//!
//! The agent reads the whole prefix in one range request ([`Store::snapshot`]): one
//! consistent view of registrations, key state and acknowledgements at one revision. Watch
//! events only say *that* something changed; the next snapshot says what.

use crate::layout::Layout;
use crate::record::{Claim, KeyState, NodeRecord};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp,
};
use scrambler_core::{Error, Generation, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Endpoints (`http://127.0.0.1:2379`, `https://etcd-1:2379`).
    pub endpoints: Vec<String>,
    /// CA bundle that signed the servers' certificates (PEM).
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    pub key: Option<PathBuf>,
    /// Key prefix.
    pub prefix: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl EtcdConfig {
    /// Plain-text endpoints, default prefix and timeout (tests, a local etcd).
    pub fn plain(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            ca: None,
            cert: None,
            key: None,
            prefix: crate::layout::DEFAULT_PREFIX.into(),
            timeout: Duration::from_secs(3),
        }
    }
}

/// An etcd failure, naming the operation and the key.
pub fn etcd_error(op: impl std::fmt::Display, e: etcd_client::Error) -> Error {
    Error::Dataplane {
        dataplane: "etcd".into(),
        op: op.to_string(),
        reason: e.to_string(),
    }
}

fn read_pem(what: &str, path: &PathBuf) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::io(
            "read etcd TLS file",
            format!("{what} {}", path.display()),
            e,
        )
    })
}

/// The etcd client and the key layout.
#[derive(Clone)]
pub struct Store {
    client: Client,
    layout: Layout,
}

/// Everything under the prefix at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The store's revision when read.
    pub revision: i64,
    /// Live registrations by name.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// The key state (default when absent).
    pub keys: KeyState,
    /// Modification revision of the key state (0: absent), for compare-and-swap.
    pub keys_revision: i64,
    /// Nodes that acknowledged `keys.next`.
    pub acks: BTreeSet<String>,
    /// Claims by node name.
    pub claims: BTreeMap<String, Claim>,
    /// Records that could not be decoded (key: reason); they are left out.
    pub bad: Vec<String>,
    /// Names under which a registration exists that could not be decoded (e.g. epoch 0):
    /// left out of the mesh, yet registered (not departed).
    pub unreadable_nodes: BTreeSet<String>,
}

impl Snapshot {
    /// A registration exists under `name` (whether or not it could be decoded).
    pub fn is_registered(&self, name: &str) -> bool {
        self.nodes.contains_key(name) || self.unreadable_nodes.contains(name)
    }
}

impl Store {
    /// Connects to etcd (lazily: an unreachable etcd fails the first request, not this).
    pub async fn connect(cfg: &EtcdConfig) -> Result<Store> {
        let layout = Layout::new(&cfg.prefix)?;
        if cfg.endpoints.is_empty() {
            return Err(Error::config("no etcd endpoint given"));
        }
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.timeout)
            .with_timeout(cfg.timeout)
            .with_keep_alive(Duration::from_secs(5), cfg.timeout);
        if cfg.ca.is_some() || cfg.cert.is_some() || cfg.key.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read_pem("CA", ca)?));
            }
            match (&cfg.cert, &cfg.key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(Identity::from_pem(
                        read_pem("client certificate", c)?,
                        read_pem("client key", k)?,
                    ))
                }
                (None, None) => {}
                _ => {
                    return Err(Error::config(
                        "etcd TLS: give both the client certificate and its key, or neither",
                    ))
                }
            }
            if let Some(e) = cfg.endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(Error::config(format!(
                    "etcd endpoint {e} is not https:// but TLS files were given"
                )));
            }
            opts = opts.with_tls(tls);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(|e| etcd_error(format!("connect to {}", cfg.endpoints.join(",")), e))?;
        Ok(Store { client, layout })
    }

    /// The key layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// A handle on the etcd client (cheap clone).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Reads everything under the prefix.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let l = &self.layout;
        let root = l.root();
        let resp = self
            .client
            .clone()
            .get(root.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| etcd_error(format!("read {root}"), e))?;
        let mut s = Snapshot {
            revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            ..Default::default()
        };
        let mut acks: BTreeMap<Generation, BTreeSet<String>> = BTreeMap::new();
        let (nodes, claims, keys) = (l.nodes(), l.claims_nodes(), l.keys());
        let acks_root = format!("{}/acks/", l.prefix());
        for kv in resp.kvs() {
            let Ok(key) = kv.key_str() else { continue };
            if let Some(name) = key.strip_prefix(&nodes) {
                match NodeRecord::decode(key, kv.value()) {
                    Ok(r) => {
                        s.nodes.insert(name.to_string(), r);
                    }
                    Err(e) => {
                        s.unreadable_nodes.insert(name.to_string());
                        s.bad.push(format!("{key}: {e}"));
                    }
                }
            } else if let Some(name) = key.strip_prefix(&claims) {
                match serde_json::from_slice::<Claim>(kv.value()) {
                    Ok(c) => {
                        s.claims.insert(name.to_string(), c);
                    }
                    Err(e) => s.bad.push(format!("{key}: {e}")),
                }
            } else if key == keys {
                match serde_json::from_slice::<KeyState>(kv.value()) {
                    Ok(k) => {
                        s.keys = k;
                        s.keys_revision = kv.mod_revision();
                    }
                    Err(e) => s.bad.push(format!("{key}: {e}")),
                }
            } else if let Some(rest) = key.strip_prefix(&acks_root) {
                if let Some((g, name)) = rest.split_once('/') {
                    if let Ok(g) = g.parse() {
                        acks.entry(g).or_default().insert(name.to_string());
                    }
                }
            }
        }
        if let Some(n) = s.keys.next {
            s.acks = acks.remove(&n).unwrap_or_default();
        }
        for b in &s.bad {
            tracing::warn!("etcd: left out an undecodable record: {b}");
        }
        Ok(s)
    }

    /// Writes the node's registration under `lease`.
    pub async fn register(&self, rec: &NodeRecord, lease: i64) -> Result<()> {
        let key = self.layout.node(&rec.name);
        self.client
            .clone()
            .put(
                key.clone(),
                rec.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| etcd_error(format!("register {key}"), e))?;
        Ok(())
    }

    /// Acknowledges that `name` has inbound SAs of generation `g` (under `lease`).
    pub async fn ack(&self, g: Generation, name: &str, lease: i64) -> Result<()> {
        let key = self.layout.ack(g, name);
        self.client
            .clone()
            .put(key.clone(), "", Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(|e| etcd_error(format!("acknowledge {key}"), e))?;
        Ok(())
    }

    /// Writes `keys` if the key state is still at modification revision `expected` (0:
    /// absent). Returns false when someone else wrote it first.
    pub async fn swap_keys(&self, expected: i64, keys: &KeyState) -> Result<bool> {
        let key = self.layout.keys();
        let cmp = Compare::mod_revision(key.clone(), CompareOp::Equal, expected);
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key.clone(), keys.to_json(), None)]);
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| etcd_error(format!("write {key}"), e))?;
        Ok(r.succeeded())
    }

    /// Ends a rotation to `next`: `keys` (with `current = next`) if the state is still at
    /// `expected`, and the acknowledgements of `next` go.
    pub async fn retire(&self, expected: i64, keys: &KeyState, next: Generation) -> Result<bool> {
        let key = self.layout.keys();
        let acks = self.layout.acks(next);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([
                TxnOp::put(key.clone(), keys.to_json(), None),
                TxnOp::delete(acks, Some(DeleteOptions::new().with_prefix())),
            ]);
        let r = self
            .client
            .clone()
            .txn(txn)
            .await
            .map_err(|e| etcd_error(format!("retire the old generation in {key}"), e))?;
        Ok(r.succeeded())
    }
}
