//! Node ids and pod CIDRs, claimed with etcd transactions: never two nodes the same.
//!
//! A claim is three kinds of key written in one transaction that succeeds only if none of
//! them exists yet (`create_revision == 0`): the node's claim, its id, each pod CIDR. Two
//! nodes racing for the same id or CIDR: one transaction wins, the other re-reads and picks
//! again.
//!
//! Pod CIDRs may overlap without being equal (10.244.0.0/16 and 10.244.1.0/24 are two
//! keys), so a key compare alone cannot catch two overlapping claims made at once. The
//! transaction therefore also compares the whole CIDR-claims prefix: every key under it
//! must have been created at or before the revision the claimer read the claims at
//! (`create_revision < read + 1` over the range). Any CIDR claimed in between — overlapping
//! or not — fails the transaction and the claimer reads again; CIDR claims are thus
//! serialised by the etcd revision, which is what makes the overlap check sound. A release
//! deletes keys and never fails a claim. Claims have no lease: a node that was away comes back with what it had; they go
//! only with [`release`] (an explicit node deletion).

use crate::record::Claim;
use crate::store::{etcd_error, Store};
use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use ipnet::IpNet;
use scrambler_core::{Error, NodeId, Result};
use std::collections::HashSet;

/// What a node asks for.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Node name.
    pub name: String,
    /// A fixed id, or `None` for any free one.
    pub id: Option<NodeId>,
    /// Fixed pod CIDRs, or empty to take one from `pool`.
    pub pod_cidrs: Vec<IpNet>,
    /// The cluster's pod network and the prefix length of each node's share (e.g.
    /// 10.244.0.0/16 and 24).
    pub pool: Option<(IpNet, u8)>,
}

/// How many times a claim re-reads after losing a race before giving up.
const MAX_ATTEMPTS: usize = 200;

/// Claims an id and pod CIDRs for `req.name`, or returns the claim it already holds.
pub async fn claim(store: &Store, req: &ClaimRequest) -> Result<Claim> {
    scrambler_core::mesh::check_node_name(&req.name)?;
    for attempt in 0..MAX_ATTEMPTS {
        if let Some(c) = existing(store, &req.name).await? {
            return check_matches(req, c);
        }
        let taken = Taken::read(store).await?;
        let id = match req.id {
            Some(id) => {
                if let Some(owner) = taken.id_owner(store, id).await? {
                    return Err(taken_by(format!("node id {id}"), &owner));
                }
                id
            }
            None => taken.free_id(&req.name, attempt)?,
        };
        let cidrs = if req.pod_cidrs.is_empty() {
            let (pool, len) = req.pool.ok_or_else(|| {
                Error::config(format!(
                    "node {}: no pod CIDR given and no pod CIDR pool to claim one from",
                    req.name
                ))
            })?;
            vec![taken.free_cidr(pool, len, &req.name, attempt)?]
        } else {
            for c in &req.pod_cidrs {
                if let Some(o) = taken
                    .cidrs
                    .iter()
                    .find(|o| o.contains(&c.network()) || c.contains(&o.network()))
                {
                    let owner = store
                        .client()
                        .get(store.layout().claim_cidr(o), None)
                        .await
                        .map_err(|e| etcd_error("read a CIDR claim", e))?;
                    let owner = owner
                        .kvs()
                        .first()
                        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                        .unwrap_or_default();
                    return Err(taken_by(format!("pod CIDR {c} (overlaps {o})"), &owner));
                }
            }
            req.pod_cidrs.clone()
        };
        let c = Claim {
            id,
            pod_cidrs: cidrs,
        };
        if try_claim(store, &req.name, &c, taken.cidrs_revision).await? {
            tracing::info!(node = %req.name, id = %c.id, cidrs = ?c.pod_cidrs, "claimed");
            return Ok(c);
        }
        tracing::debug!(node = %req.name, attempt, "claim lost a race, reading again");
    }
    Err(Error::TryAgainLater(format!(
        "node {}: could not claim an id and pod CIDR in {MAX_ATTEMPTS} attempts (too much contention)",
        req.name
    )))
}

/// The claim `name` holds, if any.
pub async fn existing(store: &Store, name: &str) -> Result<Option<Claim>> {
    let key = store.layout().claim_node(name);
    let r = store
        .client()
        .get(key.clone(), None)
        .await
        .map_err(|e| etcd_error(format!("read {key}"), e))?;
    match r.kvs().first() {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|e| Error::decode(format!("etcd claim {key}"), e)),
    }
}

/// Releases everything `name` claimed and its registration: the node is deleted.
/// Returns the released claim (`None`: it held none).
pub async fn release(store: &Store, name: &str) -> Result<Option<Claim>> {
    let l = store.layout();
    let key = l.claim_node(name);
    let r = store
        .client()
        .get(key.clone(), None)
        .await
        .map_err(|e| etcd_error(format!("read {key}"), e))?;
    let Some(kv) = r.kvs().first() else {
        // no claim: only a registration may be left
        store
            .client()
            .delete(l.node(name), None)
            .await
            .map_err(|e| etcd_error(format!("delete {}", l.node(name)), e))?;
        return Ok(None);
    };
    let c: Claim = serde_json::from_slice(kv.value())
        .map_err(|e| Error::decode(format!("etcd claim {key}"), e))?;
    let mut ops = vec![
        TxnOp::delete(key.clone(), None),
        TxnOp::delete(l.node(name), None),
        TxnOp::delete(l.claim_id(c.id), None),
    ];
    ops.extend(
        c.pod_cidrs
            .iter()
            .map(|p| TxnOp::delete(l.claim_cidr(p), None)),
    );
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then(ops);
    let r = store
        .client()
        .txn(txn)
        .await
        .map_err(|e| etcd_error(format!("release the claims of node {name}"), e))?;
    if !r.succeeded() {
        return Err(Error::TryAgainLater(format!(
            "node {name}: its claim changed while being released; try again"
        )));
    }
    Ok(Some(c))
}

fn taken_by(what: String, owner: &str) -> Error {
    Error::AlreadyExists {
        object: what,
        reason: format!(
            "claimed by node {owner:?}; pick another, or delete that node (`scrambler delete-node`)"
        ),
    }
}

fn check_matches(req: &ClaimRequest, c: Claim) -> Result<Claim> {
    if let Some(id) = req.id {
        if id != c.id {
            return Err(Error::AlreadyExists {
                object: format!("node {}", req.name),
                reason: format!(
                    "it already holds node id {} (asked for {id}); delete the node to change it",
                    c.id
                ),
            });
        }
    }
    if !req.pod_cidrs.is_empty() && req.pod_cidrs != c.pod_cidrs {
        return Err(Error::AlreadyExists {
            object: format!("node {}", req.name),
            reason: format!(
                "it already holds pod CIDRs {:?} (asked for {:?}); delete the node to change them",
                c.pod_cidrs, req.pod_cidrs
            ),
        });
    }
    Ok(c)
}

/// The claim as one transaction: none of its keys exists yet, and no pod CIDR was claimed
/// since `cidrs_revision` (the revision the free CIDRs were chosen at).
async fn try_claim(store: &Store, name: &str, c: &Claim, cidrs_revision: i64) -> Result<bool> {
    let l = store.layout();
    let absent = |k: String| Compare::create_revision(k, CompareOp::Equal, 0);
    let mut when = vec![
        absent(l.claim_node(name)),
        absent(l.claim_id(c.id)),
        Compare::create_revision(l.claims_cidrs(), CompareOp::Less, cidrs_revision + 1)
            .with_prefix(),
    ];
    let mut then = vec![
        TxnOp::put(
            l.claim_node(name),
            serde_json::to_string(c).expect("a claim always serialises"),
            None,
        ),
        TxnOp::put(l.claim_id(c.id), name, None),
    ];
    for p in &c.pod_cidrs {
        when.push(absent(l.claim_cidr(p)));
        then.push(TxnOp::put(l.claim_cidr(p), name, None));
    }
    let r = store
        .client()
        .txn(Txn::new().when(when).and_then(then))
        .await
        .map_err(|e| etcd_error(format!("claim for node {name}"), e))?;
    Ok(r.succeeded())
}

/// Ids and CIDRs already claimed.
struct Taken {
    ids: HashSet<u16>,
    cidrs: Vec<IpNet>,
    /// The store revision the CIDR claims were read at.
    cidrs_revision: i64,
}

impl Taken {
    async fn read(store: &Store) -> Result<Taken> {
        let l = store.layout();
        let keys = |prefix: String| {
            let mut c = store.client();
            async move {
                c.get(
                    prefix.clone(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
                .map_err(|e| etcd_error(format!("read {prefix}"), e))
                .map(|r| {
                    let rev = r.header().map_or(0, |h| h.revision());
                    let keys = r
                        .kvs()
                        .iter()
                        .filter_map(|kv| kv.key_str().ok().map(|k| k[prefix.len()..].to_string()))
                        .collect::<Vec<_>>();
                    (keys, rev)
                })
            }
        };
        let ids = keys(l.claims_ids())
            .await?
            .0
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let (cidr_keys, cidrs_revision) = keys(l.claims_cidrs()).await?;
        let cidrs = cidr_keys
            .iter()
            .filter_map(|s| s.replacen('_', "/", 1).parse().ok())
            .collect();
        Ok(Taken {
            ids,
            cidrs,
            cidrs_revision,
        })
    }

    async fn id_owner(&self, store: &Store, id: NodeId) -> Result<Option<String>> {
        if !self.ids.contains(&id.get()) {
            return Ok(None);
        }
        let key = store.layout().claim_id(id);
        let r = store
            .client()
            .get(key.clone(), None)
            .await
            .map_err(|e| etcd_error(format!("read {key}"), e))?;
        Ok(r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// A free id among the lowest free ones; which one depends on the name and the
    /// attempt, so racing nodes mostly pick different ids instead of all fighting for one.
    fn free_id(&self, name: &str, attempt: usize) -> Result<NodeId> {
        let free: Vec<u16> = (1..=u16::MAX)
            .filter(|i| !self.ids.contains(i))
            .take(SPREAD)
            .collect();
        let pick = free
            .get(spread(name, attempt) % free.len().max(1))
            .ok_or_else(|| Error::RangeExhausted {
                range: "node ids 1..=65535".into(),
            })?;
        NodeId::new(u32::from(*pick))
    }

    fn free_cidr(&self, pool: IpNet, len: u8, name: &str, attempt: usize) -> Result<IpNet> {
        let subnets = pool.subnets(len).map_err(|_| {
            Error::config(format!(
                "pod CIDR pool {pool}: node prefix length /{len} does not fit in it"
            ))
        })?;
        let free: Vec<IpNet> = subnets
            .filter(|s| {
                !self
                    .cidrs
                    .iter()
                    .any(|c| c.contains(&s.network()) || s.contains(&c.network()))
            })
            .take(SPREAD)
            .collect();
        free.get(spread(name, attempt) % free.len().max(1))
            .copied()
            .ok_or_else(|| Error::RangeExhausted {
                range: format!("pod CIDR pool {pool} (/{len} per node)"),
            })
    }
}

/// How many of the lowest free values racing claimers spread over.
const SPREAD: usize = 16;

fn spread(name: &str, attempt: usize) -> usize {
    // FNV-1a: stable across runs and platforms
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.bytes().chain(attempt.to_le_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    h as usize
}
