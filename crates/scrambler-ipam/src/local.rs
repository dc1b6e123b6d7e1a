//! [`LocalIpam`]: the allocator over the disk store, implementing [`Ipam`].

use crate::conf::{IpamConf, Range, RangeSet};
use crate::range::{next_free, unusable_reason};
use crate::store::{LeaseFile, Locked, Store};
use ipnet::IpNet;
use scrambler_core::{AllocRequest, AttachmentId, CniResult, Error, IpConfig, Ipam, Lease, Result};
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// Host-local-class IPAM of one network: leases under `dataDir/<network>/`.
///
/// Cheap to clone (shared inside). The `*_blocking` methods do the work on the calling
/// thread; the [`Ipam`] impl runs them on tokio's blocking pool, since taking the lease
/// lock may wait for other processes.
#[derive(Debug, Clone)]
pub struct LocalIpam {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    network: String,
    conf: IpamConf,
    store: Store,
}

/// One address chosen for one range set, before it is written.
struct Pick {
    set: usize,
    address: IpAddr,
    prefix: u8,
    gateway: IpAddr,
    new: bool,
}

impl LocalIpam {
    /// IPAM for network `network_name` with `conf`; creates the lease directory where the
    /// dataDir can be written ([`Store::open`]).
    pub fn new(network_name: &str, conf: IpamConf) -> Result<LocalIpam> {
        let store = Store::open(&conf.data_dir, network_name)?;
        Ok(LocalIpam {
            inner: Arc::new(Inner {
                network: network_name.to_string(),
                conf,
                store,
            }),
        })
    }

    /// The network name.
    pub fn network(&self) -> &str {
        &self.inner.network
    }

    /// The conf.
    pub fn conf(&self) -> &IpamConf {
        &self.inner.conf
    }

    /// The lease directory (`dataDir/<network>`).
    pub fn lease_dir(&self) -> &Path {
        self.inner.store.dir()
    }

    /// Every lease file, corrupt ones included (with why they are corrupt).
    pub fn lease_files(&self) -> Result<Vec<LeaseFile>> {
        self.inner.store.lock()?.scan_verified()
    }

    /// [`Ipam::allocate`] on the calling thread.
    pub fn allocate_blocking(&self, req: &AllocRequest) -> Result<CniResult> {
        let conf = &self.inner.conf;
        // Everything that can fail without touching leases goes first.
        let dns = match &conf.resolv_conf {
            Some(path) => crate::dns::read_resolv_conf(path)?,
            None => Default::default(),
        };
        let locked = self.inner.store.lock()?;
        let files = locked.scan()?;
        let picks = self.pick(&locked, &files, req)?;
        self.commit(&locked, &picks, &req.id)?;
        drop(locked);
        let ips = picks
            .iter()
            .map(|p| {
                Ok(IpConfig {
                    address: IpNet::new(p.address, p.prefix)
                        .map_err(|e| Error::config(format!("prefix of {}: {e}", p.address)))?,
                    gateway: Some(p.gateway),
                    interface: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CniResult {
            ips,
            routes: conf.routes.clone(),
            dns,
            ..Default::default()
        })
    }

    /// Chooses one address per range set: the holder's existing lease, the requested
    /// address, or the next free one.
    fn pick(
        &self,
        locked: &Locked<'_>,
        files: &[LeaseFile],
        req: &AllocRequest,
    ) -> Result<Vec<Pick>> {
        let conf = &self.inner.conf;
        let taken: HashSet<IpAddr> = files.iter().map(|f| f.address).collect();
        let requested = assign_requested(&conf.ranges, &req.requested)?;
        let mut picks = Vec::with_capacity(conf.ranges.len());
        for (i, set) in conf.ranges.iter().enumerate() {
            let existing = files
                .iter()
                .filter(|f| f.is_held_by(&req.id))
                .find_map(|f| set.subnet_for(f.address).map(|r| (f.address, r)));
            let (address, range, new) = match (existing, requested[i]) {
                (Some((have, r)), None) => (have, r, false),
                (Some((have, r)), Some(want)) if have == want => (have, r, false),
                (Some((have, _)), Some(want)) => {
                    return Err(Error::AlreadyExists {
                        object: format!("attachment {}", req.id),
                        reason: format!(
                            "it already holds {have} in range set {i}; requested {want}"
                        ),
                    })
                }
                (None, Some(want)) => (want, self.check_requested(i, set, want, files)?, true),
                (None, None) => {
                    let (ip, r) = self.next_address(i, set, &taken, locked.last_reserved(i))?;
                    (ip, r, true)
                }
            };
            picks.push(Pick {
                set: i,
                address,
                prefix: range.subnet.prefix_len(),
                gateway: range.gateway,
                new,
            });
        }
        Ok(picks)
    }

    /// The range of range set `i` that may hand out the requested address `want`, or why
    /// it may not.
    fn check_requested<'s>(
        &self,
        i: usize,
        set: &'s RangeSet,
        want: IpAddr,
        files: &[LeaseFile],
    ) -> Result<&'s Range> {
        let r = set.range_for(want).ok_or_else(|| {
            Error::config(format!("requested address {want} is outside range set {i}"))
        })?;
        if let Some(why) = unusable_reason(r, &self.inner.conf.exclude, want) {
            return Err(Error::config(format!("requested address {why}")));
        }
        if let Some(f) = files.iter().find(|f| f.address == want) {
            let reason = match &f.holder {
                Ok(h) => format!("leased to {h}"),
                Err(_) => format!("held by corrupt lease file {}", f.path.display()),
            };
            return Err(Error::AlreadyExists {
                object: format!("address {want}"),
                reason,
            });
        }
        Ok(r)
    }

    /// The next free address of range set `i`, or `RangeExhausted` naming the set.
    fn next_address<'s>(
        &self,
        i: usize,
        set: &'s RangeSet,
        taken: &HashSet<IpAddr>,
        last: Option<IpAddr>,
    ) -> Result<(IpAddr, &'s Range)> {
        next_free(set, &self.inner.conf.exclude, taken, last).ok_or_else(|| Error::RangeExhausted {
            range: format!("range set {i} ({set}) of network {}", self.inner.network),
        })
    }

    /// Writes the new leases; all or nothing.
    fn commit(&self, locked: &Locked<'_>, picks: &[Pick], id: &AttachmentId) -> Result<()> {
        let new: Vec<&Pick> = picks.iter().filter(|p| p.new).collect();
        if new.is_empty() {
            return Ok(());
        }
        let undo = |written: &[&Pick]| {
            for p in written {
                let _ = locked.remove(p.address, Some(id));
            }
        };
        for (k, p) in new.iter().enumerate() {
            if let Err(e) = locked.write(p.address, id) {
                undo(&new[..k]);
                return Err(e);
            }
        }
        for p in &new {
            if let Err(e) = locked.set_last_reserved(p.set, p.address) {
                tracing::warn!(error = %e, "allocation rotation pointer not saved");
            }
        }
        Ok(())
    }

    /// [`Ipam::release`] on the calling thread.
    pub fn release_blocking(&self, id: &AttachmentId) -> Result<()> {
        let locked = self.inner.store.lock()?;
        for f in locked.scan()?.iter().filter(|f| f.is_held_by(id)) {
            locked.remove(f.address, Some(id))?;
        }
        Ok(())
    }

    /// [`Ipam::check`] on the calling thread.
    pub fn check_blocking(&self, id: &AttachmentId) -> Result<Vec<Lease>> {
        Ok(self
            .list_blocking()?
            .into_iter()
            .filter(|l| &l.id == id)
            .collect())
    }

    /// [`Ipam::gc`] on the calling thread. Corrupt lease files are kept (their holder is
    /// unknown) and logged.
    pub fn gc_blocking(&self, valid: &[AttachmentId]) -> Result<Vec<Lease>> {
        let valid: HashSet<&AttachmentId> = valid.iter().collect();
        let locked = self.inner.store.lock()?;
        let mut released = Vec::new();
        for f in locked.scan_verified()? {
            if let Ok(holder) = &f.holder {
                if !valid.contains(holder) {
                    locked.remove(f.address, Some(holder))?;
                    released.push(self.lease_of(&f));
                }
            }
        }
        Ok(released)
    }

    /// [`Ipam::list`] on the calling thread. A corrupt lease file is listed with an empty
    /// holder (`container_id` and `ifname` both `""`); see [`LocalIpam::lease_files`].
    pub fn list_blocking(&self) -> Result<Vec<Lease>> {
        Ok(self
            .lease_files()?
            .iter()
            .map(|f| self.lease_of(f))
            .collect())
    }

    fn lease_of(&self, f: &LeaseFile) -> Lease {
        let subnet = self
            .inner
            .conf
            .ranges
            .iter()
            .find_map(|s| s.subnet_for(f.address))
            .map(|r| r.subnet)
            .unwrap_or_else(|| IpNet::from(f.address));
        Lease {
            id: f
                .holder
                .clone()
                .unwrap_or_else(|_| AttachmentId::new("", "")),
            address: f.address,
            subnet,
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(LocalIpam) -> Result<T> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(me))
            .await
            .map_err(|e| {
                Error::TryAgainLater(format!(
                    "IPAM task of network {} failed: {e}",
                    self.inner.network
                ))
            })?
    }
}

/// Refuses a second requested address for range set `set`.
fn assert_one_per_set(set: usize, slot: &Option<IpAddr>, ip: IpAddr) -> Result<()> {
    match slot {
        Some(other) => Err(Error::config(format!(
            "requested addresses {other} and {ip} are both in range set {set}; one address per set"
        ))),
        None => Ok(()),
    }
}

/// Maps each requested address to the range set that holds it: at most one per set, and
/// every address must fall in some set.
fn assign_requested(sets: &[RangeSet], requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
    let mut slots = vec![None; sets.len()];
    for &ip in requested {
        let set = sets
            .iter()
            .position(|s| s.range_for(ip).is_some())
            .ok_or_else(|| {
                Error::config(format!(
                    "requested address {ip} is in none of the configured ranges"
                ))
            })?;
        assert_one_per_set(set, &slots[set], ip)?;
        slots[set] = Some(ip);
    }
    Ok(slots)
}

#[async_trait::async_trait]
impl Ipam for LocalIpam {
    async fn allocate(&self, req: &AllocRequest) -> Result<CniResult> {
        let req = req.clone();
        self.blocking(move |me| me.allocate_blocking(&req)).await
    }

    async fn release(&self, id: &AttachmentId) -> Result<()> {
        let id = id.clone();
        self.blocking(move |me| me.release_blocking(&id)).await
    }

    async fn check(&self, id: &AttachmentId) -> Result<Vec<Lease>> {
        let id = id.clone();
        self.blocking(move |me| me.check_blocking(&id)).await
    }

    async fn gc(&self, valid: &[AttachmentId]) -> Result<Vec<Lease>> {
        let valid = valid.to_vec();
        self.blocking(move |me| me.gc_blocking(&valid)).await
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        self.blocking(|me| me.list_blocking()).await
    }
}
