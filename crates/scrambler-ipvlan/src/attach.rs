//! [`IpvlanAttach`]: the pod interface is an ipvlan slave of the node's uplink.
//!
//! - The slave is created by a netlink request in the node namespace (where the master
//!   lives) that puts it straight into the pod namespace under the name `CNI_IFNAME`
//!   (`IFLA_NET_NS_FD`), so it never appears in the node namespace under any name and no
//!   rename is needed. Its `ifalias` is `scrambler/<network>/<container id>/<ifname>`,
//!   which marks it as ours for DEL.
//! - Addresses are the IPAM's, with their prefix (the subnet is on-link).
//! - Routes: in `l2` the IPAM's routes via their gateway (or the address's gateway), and a
//!   default route via the gateway when the IPAM gives none; in `l3`/`l3s` the pod has no
//!   neighbours (ipvlan l3 slaves are NOARP), so every route, the default included, is a
//!   device route out of the slave and the node's routing table decides the rest.
//! - MTU: the conf's `mtu`, else the master's (minus the worst-case ESP overhead when
//!   `"encrypt": true`, so ESP never fragments).
//!
//! All-or-nothing: everything in the pod hangs off the slave, so deleting it undoes a
//! failed ADD; with `"encrypt": true` the undo also unregisters the pod from the node
//! setup, deletes its record ([`crate::record`]) and puts its network's registry entry
//! back ([`crate::registry`]).
//!
//! Every ADD holds the node lock ([`crate::registry::NodeRegistry::lock`]) and is checked
//! against the node registry: a slave in another mode on the master of a network with
//! encrypted pods would switch the kernel's per-master mode under them.

use crate::config::{IpvlanConfig, Mode};
use crate::node::IpvlanNode;
use crate::record::{dir_names, host_id, Record, RecordStore};
use crate::registry::{self, NetworkEntry, NodeRegistry, NODE_DIR};
use crate::slave::{create_ipvlan, link_flag, link_mode, IpvlanSpec};
use async_trait::async_trait;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use scrambler_core::{
    esp, Attach, AttachRequest, AttachmentId, CniResult, Error, Interface, IpConfig, Netns, Result,
    Route,
};
use scrambler_netlink::address::Scope;
use scrambler_netlink::{AttachSockets, Exists, LinkState, Nl, RouteSpec, RouteState};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The mark of the `ifalias` of pod interfaces made by this backend
/// ([`scrambler_core::routed::owner_alias`]: `scrambler/<network>/<container id>/<ifname>`).
pub const ALIAS_MARK: &str = "scrambler";

/// The ipvlan attachment.
#[derive(Debug, Clone)]
pub struct IpvlanAttach {
    cfg: IpvlanConfig,
    node_dir: PathBuf,
}

impl IpvlanAttach {
    /// An attachment with settings `cfg` (validated again here), its node registry and
    /// lock under [`NODE_DIR`].
    pub fn new(cfg: IpvlanConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(IpvlanAttach {
            cfg,
            node_dir: PathBuf::from(NODE_DIR),
        })
    }

    /// The same attachment with its node registry and lock under `dir` (absolute) instead
    /// of [`NODE_DIR`]: for embedders and tests that keep node state elsewhere. Every
    /// network of a node must use the same directory, or they do not see each other.
    pub fn with_node_dir(mut self, dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        NodeRegistry::new(&dir, 0)?;
        self.node_dir = dir;
        Ok(self)
    }

    /// The directory of its node registry and lock.
    pub fn node_dir(&self) -> &Path {
        &self.node_dir
    }

    /// The node registry of node namespace `host`.
    pub fn registry(&self, host: &Netns) -> Result<NodeRegistry> {
        NodeRegistry::new(&self.node_dir, host_id(host)?)
    }

    /// An attachment configured from a CNI conf (see [`IpvlanConfig::from_netconf`]).
    pub fn from_netconf(conf: &scrambler_core::NetConf) -> Result<Self> {
        Self::new(IpvlanConfig::from_netconf(conf)?)
    }

    /// Its settings.
    pub fn config(&self) -> &IpvlanConfig {
        &self.cfg
    }

    /// The `ifalias` marking the pod interface of `id`.
    pub fn alias(&self, id: &AttachmentId) -> String {
        scrambler_core::routed::owner_alias(ALIAS_MARK, &self.cfg.network, id)
    }

    /// The master link in `host`: the conf's `master`, else the interface of the default
    /// route. Fails with code 7 when it does not exist or is itself an ipvlan slave.
    pub async fn master(&self, host: &Nl) -> Result<LinkState> {
        let link = match &self.cfg.master {
            Some(name) => host.link_by_name(name).await?.ok_or_else(|| {
                Error::config(format!(
                    "ipvlan master {name:?} does not exist in {}",
                    host.netns()
                ))
            })?,
            None => {
                let oif = host.default_route_oif().await?.ok_or_else(|| {
                    Error::config(format!(
                        "no ipvlan \"master\" set and {} has no default route to take it from",
                        host.netns()
                    ))
                })?;
                host.link_by_index(oif).await?.ok_or_else(|| {
                    Error::config(format!(
                        "ipvlan master (default route interface, index {oif}) vanished in {}",
                        host.netns()
                    ))
                })?
            }
        };
        if link.kind.as_deref() == Some("ipvlan") {
            return Err(Error::config(format!(
                "ipvlan master {:?} in {} is itself an ipvlan slave; use its parent",
                link.name,
                host.netns()
            )));
        }
        Ok(link)
    }

    /// The pod MTU: `requested`, else the master's (minus ESP overhead when encrypting).
    pub fn pod_mtu(&self, master: &LinkState, requested: Option<u32>) -> Result<u32> {
        let master_mtu = master.mtu.unwrap_or(1500);
        let mtu = match requested.or(self.cfg.mtu) {
            Some(m) => m,
            None if self.cfg.encrypt => esp::pod_mtu(master_mtu, true),
            None => master_mtu,
        };
        if mtu > master_mtu {
            return Err(Error::config(format!(
                "mtu {mtu} is larger than the MTU {master_mtu} of ipvlan master {}",
                master.name
            )));
        }
        Ok(mtu)
    }

    /// The routes a pod gets in this mode (see the module docs).
    pub fn pod_routes(&self, addrs: &CniResult) -> Vec<Route> {
        let mut routes = Vec::new();
        for v6 in [false, true] {
            let Some(first) = addrs.ips.iter().find(|c| c.address.addr().is_ipv6() == v6) else {
                continue;
            };
            let gw = match self.cfg.mode {
                Mode::L2 => first.gateway,
                Mode::L3 | Mode::L3s => None,
            };
            let mut fam: Vec<Route> = addrs
                .routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv6() == v6)
                .map(|r| Route {
                    dst: r.dst.trunc(),
                    gw: if self.cfg.mode == Mode::L2 {
                        r.gw.or(gw)
                    } else {
                        None
                    },
                    mtu: r.mtu,
                })
                .collect();
            let l3 = self.cfg.mode != Mode::L2;
            if fam.is_empty() && (l3 || gw.is_some()) {
                fam.push(Route {
                    dst: default_dst(v6),
                    gw,
                    mtu: None,
                });
            }
            routes.extend(fam);
        }
        routes.dedup();
        routes
    }

    async fn attach_inner(
        &self,
        pod: &Nl,
        req: &AttachRequest,
        addrs: &CniResult,
        mtu: u32,
    ) -> Result<CniResult> {
        let ifname = &req.id.ifname;
        let link = pod.existing_link(ifname).await?;
        pod.set_alias(link.index, ifname, &self.alias(&req.id))
            .await?;
        let mut ips = Vec::new();
        for ipc in &addrs.ips {
            pod.add_address(&link, ipc.address, Scope::Global, Exists::Fail)
                .await?;
            ips.push(IpConfig {
                address: ipc.address,
                gateway: if self.cfg.mode == Mode::L2 {
                    ipc.gateway
                } else {
                    None
                },
                interface: Some(0),
            });
        }
        pod.set_up(link.index, ifname).await?;
        let routes = self.pod_routes(addrs);
        for r in &routes {
            let spec = RouteSpec::new(r.dst, r.gw, link.index);
            pod.add_route(&spec, Exists::Fail).await?;
        }
        Ok(CniResult {
            interfaces: vec![Interface {
                name: ifname.clone(),
                mac: link.mac,
                mtu: Some(mtu),
                sandbox: Some(req.pod_netns.sandbox()),
            }],
            ips,
            routes,
            dns: addrs.dns.clone(),
        })
    }

    async fn check_link(&self, host: &Nl, pod: &Nl, req: &AttachRequest) -> Result<LinkState> {
        let ifname = &req.id.ifname;
        let link = pod.link_by_name(ifname).await?.ok_or_else(|| {
            check_failed(
                &req.id,
                format!("no interface {ifname} in {}", req.pod_netns),
            )
        })?;
        let mut diffs = Vec::new();
        if link.kind.as_deref() != Some("ipvlan") {
            diffs.push(format!("{ifname} is of kind {:?}, not ipvlan", link.kind));
        }
        if link_mode(&link) != Some(self.cfg.mode) {
            diffs.push(format!(
                "ipvlan mode is {:?}, expected {}",
                link_mode(&link).map(Mode::as_str),
                self.cfg.mode.as_str()
            ));
        }
        if link_flag(&link) != Some(self.cfg.flag) {
            diffs.push(format!(
                "ipvlan flag is {:?}, expected {}",
                link_flag(&link).map(|f| f.as_str()),
                self.cfg.flag.as_str()
            ));
        }
        let master = self.master(host).await?;
        if link.parent != Some(master.index) {
            diffs.push(format!(
                "master is index {:?}, expected {} (index {})",
                link.parent, master.name, master.index
            ));
        }
        if !link.up {
            diffs.push(format!("{ifname} is down"));
        }
        if diffs.is_empty() {
            Ok(link)
        } else {
            Err(check_failed(&req.id, diffs.join("; ")))
        }
    }
}

fn default_dst(v6: bool) -> IpNet {
    if v6 {
        IpNet::V6(Ipv6Net::default())
    } else {
        IpNet::V4(Ipv4Net::default())
    }
}

fn check_failed(id: &AttachmentId, reason: String) -> Error {
    Error::CheckFailed {
        object: format!("ipvlan attachment {id}"),
        reason,
    }
}

fn route_present(have: &[RouteState], want: &Route, oif: u32) -> bool {
    have.iter()
        .any(|r| r.dst == want.dst.trunc() && r.oif == Some(oif) && r.gw == want.gw)
}

#[async_trait]
impl Attach for IpvlanAttach {
    type Sockets = AttachSockets;

    async fn attach(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        addrs: &CniResult,
    ) -> Result<CniResult> {
        let (host, host_nl, pod_nl) = (sockets.host_netns(), sockets.host(), sockets.pod()?);
        addrs.require_addresses()?;
        if let Some(ip) = addrs
            .ips
            .iter()
            .find(|ip| self.cfg.encrypt && ip.address.addr().is_ipv6())
        {
            return Err(crate::config::unencrypted_ipv6(&format!(
                "IPAM gave the pod {}",
                ip.address
            )));
        }
        let Netns::Path(pod_path) = &req.pod_netns else {
            return Err(Error::config(
                "the pod namespace must be a namespace file, not the current namespace",
            ));
        };
        let pod_file = std::fs::File::open(pod_path)
            .map_err(|e| Error::io("open netns", pod_path.display(), e))?;
        let master = self.master(host_nl).await?;
        let mtu = self.pod_mtu(&master, req.mtu)?;
        // held until ADD returns: the registry check, registration and slave creation (and
        // an undo) never interleave with another invocation's changes of the node
        let reg = self.registry(host)?;
        let _node_lock = reg.lock().await?;
        let entries = reg.live_entries()?;
        registry::check_master(
            &entries,
            &self.cfg.network,
            &master.name,
            self.cfg.mode,
            self.cfg.encrypt,
        )?;
        let old = entries
            .iter()
            .find(|e| e.network == self.cfg.network)
            .cloned();
        if self.cfg.encrypt {
            // checked before anything is written: a refused ADD leaves nothing behind
            self.refuse_unlisted_networks(reg.host(), &entries)?;
            let entry = registry::admit(old.as_ref(), self.network_entry(&master, addrs))?;
            if let Err(e) = self
                .register(host, &reg, &entries, &entry, req, addrs)
                .await
            {
                self.undo_node(host, &reg, old.as_ref(), req, addrs).await;
                return Err(e);
            }
        }
        let created = create_ipvlan(
            host_nl,
            &IpvlanSpec {
                name: &req.id.ifname,
                master: master.index,
                mode: self.cfg.mode,
                flag: self.cfg.flag,
                mtu,
                netns_fd: Some(pod_file.as_raw_fd()),
                alias: None,
                up: false,
            },
        )
        .await;
        drop(pod_file);
        if let Err(e) = created {
            self.undo_node(host, &reg, old.as_ref(), req, addrs).await;
            return Err(e);
        }
        match self.attach_inner(pod_nl, req, addrs, mtu).await {
            Ok(r) => {
                tracing::info!(attachment = %req.id, master = %master.name,
                    mode = self.cfg.mode.as_str(), mtu, "attached");
                Ok(r)
            }
            Err(e) => {
                tracing::warn!(attachment = %req.id, error = %e, "attach failed, removing ipvlan");
                if let Ok(Some(l)) = pod_nl.link_by_name(&req.id.ifname).await {
                    if let Err(e2) = pod_nl.delete_link(l.index, &req.id.ifname).await {
                        tracing::error!(error = %e2, "undo: delete ipvlan failed");
                    }
                }
                self.undo_node(host, &reg, old.as_ref(), req, addrs).await;
                Err(e)
            }
        }
    }

    async fn check(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        expected: &CniResult,
    ) -> Result<()> {
        let (host, host_nl, pod_nl) = (sockets.host_netns(), sockets.host(), sockets.pod()?);
        let sb = req.pod_netns.sandbox();
        let pod_idx = expected
            .interface_index(&req.id.ifname, &sb)
            .ok_or_else(|| {
                check_failed(
                    &req.id,
                    format!(
                        "prevResult lists no interface {} in sandbox {sb}",
                        req.id.ifname
                    ),
                )
            })?;
        let link = self.check_link(host_nl, pod_nl, req).await?;
        let mut diffs = Vec::new();
        if let Some(mtu) = expected.interfaces[pod_idx].mtu {
            if link.mtu != Some(mtu) {
                diffs.push(format!("mtu is {:?}, expected {mtu}", link.mtu));
            }
        }
        let have = pod_nl.addresses(link.index).await?;
        for ipc in expected
            .ips
            .iter()
            .filter(|c| c.interface.is_none() || c.interface == Some(pod_idx))
        {
            if !have.contains(&ipc.address) {
                diffs.push(format!("address {} missing", ipc.address));
            }
        }
        if self.cfg.encrypt {
            if self.registry(host)?.entry(&self.cfg.network)?.is_none() {
                diffs.push(format!(
                    "the node's ipvlan registry has no entry for network {:?}",
                    self.cfg.network
                ));
            }
            let registered = IpvlanNode::pods(host).await?;
            for ip in expected.ips.iter().map(|c| c.address.addr()) {
                if !registered.contains(&ip) {
                    diffs.push(format!(
                        "the node's ipvlan setup (link {}) does not route {ip} to the pod",
                        crate::node::NODE_LINK
                    ));
                }
            }
        }
        let routes = pod_nl.main_routes().await?;
        for r in &expected.routes {
            if !route_present(&routes, r, link.index) {
                let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
                diffs.push(format!(
                    "route {}{via} dev {} missing",
                    r.dst, req.id.ifname
                ));
            }
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(check_failed(&req.id, diffs.join("; ")))
        }
    }

    async fn detach(&self, sockets: &AttachSockets, req: &AttachRequest) -> Result<()> {
        let host = sockets.host_netns();
        let from_link = self.detach_pod(sockets, req).await?;
        let record = self.pod_record(&req.id)?;
        // a record made in another node namespace (one deleted since, in a lab) registered
        // nothing here
        let here = match &record {
            Some(r) => r.host == host_id(host)?,
            None => false,
        };
        // `None` from the link: an interface of someone else's, left alone
        let settles = (self.cfg.encrypt && from_link.is_some()) || here;
        // held until the record is gone: another invocation never counts it after the
        // setup was narrowed without it
        let _node_lock = if settles || record.is_some() {
            Some(self.registry(host)?.lock().await?)
        } else {
            None
        };
        if settles {
            let mut ips = from_link.unwrap_or_default();
            for ip in record.iter().filter(|_| here).flat_map(|r| &r.ips) {
                if !ips.contains(ip) {
                    ips.push(*ip);
                }
            }
            let reg = self.registry(host)?;
            self.settle(host, &reg, &ips, std::slice::from_ref(&req.id))
                .await?;
        }
        if record.is_some() {
            self.records()?.remove(&req.id)?;
        }
        Ok(())
    }
}

impl IpvlanAttach {
    /// The registry entry of this network for a pod on `master` with IPAM result `addrs`
    /// (the IPAM's subnets are the network's pod CIDRs on the node).
    pub fn network_entry(&self, master: &LinkState, addrs: &CniResult) -> NetworkEntry {
        let mut pod_cidrs: Vec<IpNet> = addrs.ips.iter().map(|c| c.address.trunc()).collect();
        pod_cidrs.dedup();
        NetworkEntry {
            network: self.cfg.network.clone(),
            master: master.name.clone(),
            mode: self.cfg.mode,
            pod_cidrs,
            cluster_cidrs: self.cfg.cluster_cidrs.clone(),
            state_dir: self.cfg.state_dir().to_path_buf(),
        }
    }

    /// Registers an encrypted pod (the caller holds the node lock; `entries` are the
    /// registry's, `entry` its network's admitted entry, [`registry::admit`]): the entry,
    /// then the pod's record, then the node setup of every network together, then the
    /// pod's host routes (and those of every recorded pod, when the node link had to be
    /// made anew).
    async fn register(
        &self,
        host: &Netns,
        reg: &NodeRegistry,
        entries: &[NetworkEntry],
        entry: &NetworkEntry,
        req: &AttachRequest,
        addrs: &CniResult,
    ) -> Result<()> {
        let store = self.records()?;
        let setup = registry::node_setup(&registry::with_entry(entries, entry))
            .ok_or_else(|| Error::config("no ipvlan network to set the node up for"))?;
        // written before the record: a record is never without the entry that counts it
        reg.write(entry)?;
        // recorded before the setup, so a DEL after a crash anywhere below still finds it
        store.write(&Record {
            id: req.id.clone(),
            host: reg.host(),
            ips: pod_ips(addrs),
        })?;
        let mut ips = pod_ips(addrs);
        if setup.ensure(host).await?.link_created {
            // a re-created node link lost the host routes of the pods already running
            for e in registry::with_entry(entries, entry) {
                ips.extend(reg.pods(&e)?.iter().flat_map(|r| r.ips.iter().copied()));
            }
        }
        IpvlanNode::add_pod(host, &ips).await
    }

    /// The attachment records of this network (see [`crate::record`]).
    pub fn records(&self) -> Result<RecordStore> {
        RecordStore::new(self.cfg.state_dir(), &self.cfg.network)
    }

    /// The record of `id`, if any. Without `"encrypt"` a network whose name cannot name
    /// a state directory has none; a record that cannot be decoded is logged and removed
    /// (its addresses are lost either way, and DEL must not fail forever on it).
    fn pod_record(&self, id: &AttachmentId) -> Result<Option<Record>> {
        let store = match self.records() {
            Ok(s) => s,
            Err(_) if !self.cfg.encrypt => return Ok(None),
            Err(e) => return Err(e),
        };
        match store.read(id) {
            Err(e @ Error::Decode { .. }) => {
                tracing::warn!(attachment = %id, error = %e, "unreadable ipvlan record removed");
                store.remove(id)?;
                Ok(None)
            }
            other => other,
        }
    }

    /// Undoes the node side of a failed ADD: puts the network's registry entry back as it
    /// was (`old`), unregisters the pod and narrows or removes the setup
    /// ([`IpvlanAttach::settle`]), deletes its record; failures are logged. The caller holds
    /// the node lock.
    async fn undo_node(
        &self,
        host: &Netns,
        reg: &NodeRegistry,
        old: Option<&NetworkEntry>,
        req: &AttachRequest,
        addrs: &CniResult,
    ) {
        if !self.cfg.encrypt {
            return;
        }
        if let Err(e) = reg.restore(&self.cfg.network, old) {
            tracing::error!(error = %e, "undo: restore ipvlan node registry entry failed");
        }
        let gone = std::slice::from_ref(&req.id);
        if let Err(e) = self.settle(host, reg, &pod_ips(addrs), gone).await {
            tracing::error!(error = %e, "undo: release ipvlan node setup failed");
        }
        if let Err(e) = self.records().and_then(|s| s.remove(&req.id)) {
            tracing::error!(error = %e, "undo: remove ipvlan record failed");
        }
    }

    /// After attachments `gone` of this network left the node (their records, still on
    /// disk, no longer count): unregisters addresses `ips` that no remaining record holds,
    /// drops the registry entries of networks without records, then narrows the node setup
    /// to the remaining networks' union, or removes it when no network has a record left.
    /// The caller holds the node lock.
    ///
    /// Records without a registry entry (made before the registry existed) count too:
    /// while there are such, the setup is kept as it is (their rules are not known, so
    /// nothing is narrowed), see [`IpvlanAttach::unlisted_records`].
    async fn settle(
        &self,
        host: &Netns,
        reg: &NodeRegistry,
        ips: &[IpAddr],
        gone: &[AttachmentId],
    ) -> Result<()> {
        let me = &self.cfg.network;
        let counts = |net: &str, r: &Record| !(net == me && gone.contains(&r.id));
        let mut live = Vec::new();
        let mut held: Vec<IpAddr> = Vec::new();
        for entry in reg.entries()? {
            let pods: Vec<Record> = reg
                .pods(&entry)?
                .into_iter()
                .filter(|r| counts(&entry.network, r))
                .collect();
            if pods.is_empty() {
                reg.remove(&entry.network)?;
                continue;
            }
            held.extend(pods.iter().flat_map(|r| r.ips.iter().copied()));
            live.push(entry);
        }
        let unlisted = self.unlisted_records(reg.host(), &live, gone)?;
        held.extend(unlisted.iter().flat_map(|(_, r)| r.ips.iter().copied()));
        let unlisted = !unlisted.is_empty();
        let released: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| !held.contains(ip))
            .collect();
        IpvlanNode::remove_pod(host, &released).await?;
        if unlisted {
            tracing::info!(network = %me, "ipvlan records without registry entry: node setup kept");
            return Ok(());
        }
        match registry::node_setup(&live) {
            Some(setup) => {
                setup.narrow(host).await?;
            }
            None => {
                IpvlanNode::remove(host).await?;
            }
        }
        Ok(())
    }

    /// Code 7, naming the network, when another network has records in node namespace
    /// `host` but no entry in `live` (pods encrypted by a release before the node
    /// registry): its rules are not known, so the node setup cannot be made for both
    /// without dropping its re-route, guard and pod-CIDR route under its running pods.
    /// This network's own such records are no obstacle: this ADD registers it.
    fn refuse_unlisted_networks(&self, host: u64, live: &[NetworkEntry]) -> Result<()> {
        let unlisted = self.unlisted_records(host, live, &[])?;
        let Some((other, _)) = unlisted.iter().find(|(n, _)| *n != self.cfg.network) else {
            return Ok(());
        };
        Err(Error::config(format!(
            "encrypted ipvlan network {:?} cannot be set up on this node: network {other:?} \
             has encrypted pods here recorded by an older release (under {}) without a node \
             registry entry, so its rules are unknown and cannot be merged; the next ADD of \
             a pod of network {other:?} registers it (re-create one of its pods), then retry",
            self.cfg.network,
            self.cfg.state_dir().display()
        )))
    }

    /// The records (with their network) made in node namespace `host` of networks that
    /// have no entry in `live`, except this network's attachments `gone`: those of every
    /// network whose records are in this network's `stateDir` (all of them, with the
    /// default one).
    fn unlisted_records(
        &self,
        host: u64,
        live: &[NetworkEntry],
        gone: &[AttachmentId],
    ) -> Result<Vec<(String, Record)>> {
        let dir = self.cfg.state_dir();
        let mut out = Vec::new();
        for network in dir_names(dir, "list ipvlan state directory")? {
            let listed = live
                .iter()
                .any(|e| e.network == network && e.state_dir == dir);
            // names outside the CNI rule are no network's: the node registry's `_node`
            // (inside the default stateDir), temporary files
            let Ok(store) = RecordStore::new(dir, &network) else {
                continue;
            };
            if listed || !dir.join(&network).is_dir() {
                continue;
            }
            let mine = network == self.cfg.network;
            out.extend(
                store
                    .list()?
                    .into_iter()
                    .filter(|r| r.host == host && !(mine && gone.contains(&r.id)))
                    .map(|r| (network.clone(), r)),
            );
        }
        Ok(out)
    }

    /// CNI GC: unregisters from the node setup in `host` the addresses of every recorded
    /// attachment of this network and node that is not in `valid`, deletes those records,
    /// and narrows the setup to what the remaining pods of every network need, removing it
    /// when none is left. An address that a kept record also names stays registered.
    /// Returns what was swept.
    pub async fn gc(&self, host: &Netns, valid: &[AttachmentId]) -> Result<Vec<String>> {
        let store = match self.records() {
            Ok(s) => s,
            Err(_) if !self.cfg.encrypt => return Ok(vec![]),
            Err(e) => return Err(e),
        };
        if store.list()?.is_empty() {
            return Ok(vec![]);
        }
        let reg = self.registry(host)?;
        // listed again under the lock: an ADD holding it has its record written by then
        let _node_lock = reg.lock().await?;
        let stale: Vec<Record> = store
            .list()?
            .into_iter()
            .filter(|r| r.host == reg.host() && !valid.contains(&r.id))
            .collect();
        if stale.is_empty() {
            return Ok(vec![]);
        }
        let ips: Vec<IpAddr> = stale.iter().flat_map(|r| r.ips.iter().copied()).collect();
        let ids: Vec<AttachmentId> = stale.iter().map(|r| r.id.clone()).collect();
        self.settle(host, &reg, &ips, &ids).await?;
        let mut swept = Vec::new();
        for r in stale {
            store.remove(&r.id)?;
            let ips: Vec<String> = r.ips.iter().map(IpAddr::to_string).collect();
            tracing::info!(attachment = %r.id, ips = ?ips, "gc: stale ipvlan attachment unregistered");
            swept.push(format!("ipvlan attachment {} ({})", r.id, ips.join(", ")));
        }
        Ok(swept)
    }

    /// Deletes the pod's interface if it is ours; returns the addresses it had (empty when
    /// there was nothing to delete), or `None` when an interface of someone else's was
    /// left alone.
    async fn detach_pod(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
    ) -> Result<Option<Vec<IpAddr>>> {
        let Some(pod) = sockets.pod_if_present().await? else {
            tracing::debug!(attachment = %req.id, "detach: pod netns gone, nothing to do");
            return Ok(Some(vec![]));
        };
        let Some(link) = pod.link_by_name(&req.id.ifname).await? else {
            tracing::debug!(attachment = %req.id, "detach: no interface, nothing to do");
            return Ok(Some(vec![]));
        };
        if link.kind.as_deref() != Some("ipvlan")
            || link.alias.as_deref() != Some(self.alias(&req.id).as_str())
        {
            tracing::warn!(link = %link.name, kind = ?link.kind, alias = ?link.alias,
                "detach: interface not marked as ours, left alone");
            return Ok(None);
        }
        let ips = pod
            .addresses(link.index)
            .await?
            .iter()
            .map(IpNet::addr)
            .collect();
        pod.delete_link(link.index, &req.id.ifname).await?;
        tracing::info!(attachment = %req.id, "detached");
        Ok(Some(ips))
    }
}

fn pod_ips(addrs: &CniResult) -> Vec<IpAddr> {
    addrs.ips.iter().map(|c| c.address.addr()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Flag;
    use scrambler_netlink::AttachOnce;

    fn attach(mode: Mode) -> IpvlanAttach {
        IpvlanAttach::new(IpvlanConfig {
            network: "net".into(),
            mode,
            flag: Flag::Bridge,
            ..Default::default()
        })
        .unwrap()
    }

    fn addrs(gw: Option<&str>) -> CniResult {
        CniResult {
            ips: vec![IpConfig {
                address: "10.1.0.5/24".parse().unwrap(),
                gateway: gw.map(|g| g.parse().unwrap()),
                interface: None,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn l2_routes_go_via_the_gateway() {
        let r = attach(Mode::L2).pod_routes(&addrs(Some("10.1.0.1")));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].dst.to_string(), "0.0.0.0/0");
        assert_eq!(r[0].gw, Some("10.1.0.1".parse().unwrap()));
        assert!(attach(Mode::L2).pod_routes(&addrs(None)).is_empty());
    }

    #[test]
    fn l3_routes_are_device_routes() {
        for m in [Mode::L3, Mode::L3s] {
            let mut a = addrs(Some("10.1.0.1"));
            let r = attach(m).pod_routes(&a);
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].dst.to_string(), r[0].gw), ("0.0.0.0/0".into(), None));
            a.routes.push(Route {
                dst: "10.0.0.0/8".parse().unwrap(),
                gw: Some("10.1.0.1".parse().unwrap()),
                mtu: None,
            });
            let r = attach(m).pod_routes(&a);
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].dst.to_string(), r[0].gw), ("10.0.0.0/8".into(), None));
        }
    }

    #[test]
    fn mtu_from_master_request_or_esp() {
        let master = LinkState {
            name: "ul0".into(),
            mtu: Some(1500),
            ..Default::default()
        };
        assert_eq!(attach(Mode::L3).pod_mtu(&master, None).unwrap(), 1500);
        assert_eq!(attach(Mode::L3).pod_mtu(&master, Some(1400)).unwrap(), 1400);
        assert_eq!(
            attach(Mode::L3)
                .pod_mtu(&master, Some(9000))
                .unwrap_err()
                .code(),
            7
        );
        let enc = IpvlanAttach::new(IpvlanConfig {
            mode: Mode::L3,
            encrypt: true,
            cluster_cidrs: vec!["10.1.0.0/16".parse().unwrap()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            enc.pod_mtu(&master, None).unwrap(),
            esp::pod_mtu(1500, true)
        );
    }

    /// The alias is the one veth and VPP make and older ipvlan releases made, so pods
    /// attached before are still recognised as ours by DEL.
    #[test]
    fn alias_is_the_shared_owner_alias() {
        let id = AttachmentId::new("c0ffee", "eth0");
        assert_eq!(attach(Mode::L3).alias(&id), "scrambler/net/c0ffee/eth0");
    }

    /// Records in the stateDir's `_node` (the node registry's directory under the default
    /// stateDir) or in another non-network name are no network's unlisted records.
    #[test]
    fn unlisted_records_skip_the_node_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let a = IpvlanAttach::new(IpvlanConfig {
            network: "net".into(),
            mode: Mode::L3,
            state_dir: Some(tmp.path().into()),
            ..Default::default()
        })
        .unwrap();
        let rec = |cid: &str| Record {
            id: AttachmentId::new(cid, "eth0"),
            host: 42,
            ips: vec!["10.1.1.2".parse().unwrap()],
        };
        for dir in ["_node", ".x"] {
            std::fs::create_dir_all(tmp.path().join(dir)).unwrap();
            std::fs::write(
                tmp.path().join(dir).join("c1:eth0"),
                serde_json::to_vec(&rec("c1")).unwrap(),
            )
            .unwrap();
        }
        RecordStore::new(tmp.path(), "old")
            .unwrap()
            .write(&rec("c2"))
            .unwrap();
        let found = a.unlisted_records(42, &[], &[]).unwrap();
        assert_eq!(found, [("old".to_string(), rec("c2"))]);
    }

    /// DEL removes the record while it holds the node lock: an invocation holding the
    /// lock never sees a record vanish under it.
    #[tokio::test]
    async fn del_removes_the_record_under_the_node_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let a = IpvlanAttach::new(IpvlanConfig {
            network: "net".into(),
            mode: Mode::L3,
            state_dir: Some(tmp.path().join("state")),
            ..Default::default()
        })
        .unwrap()
        .with_node_dir(tmp.path().join("node"))
        .unwrap();
        let id = AttachmentId::new("c1", "eth0");
        // made in another node namespace: DEL only deletes the record
        let rec = Record {
            id: id.clone(),
            host: 1,
            ips: vec!["10.1.1.2".parse().unwrap()],
        };
        a.records().unwrap().write(&rec).unwrap();
        let req = AttachRequest {
            id: id.clone(),
            pod_netns: Netns::Path(PathBuf::new()),
            args: vec![],
            mtu: None,
        };
        let held = a.registry(&Netns::Current).unwrap().lock().await.unwrap();
        let del = {
            let (a, req) = (a.clone(), req.clone());
            tokio::spawn(async move { a.detach_in(&Netns::Current, &req).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            a.records().unwrap().read(&id).unwrap().is_some(),
            "record removed without the node lock"
        );
        drop(held);
        del.await.unwrap().unwrap();
        assert!(a.records().unwrap().read(&id).unwrap().is_none());
    }

    /// Pods of network `old` recorded by a release before the node registry: an encrypted
    /// ADD of another network is refused naming it (its rules are unknown; the setup would
    /// drop its guard) and leaves nothing behind; `old`'s own ADD is not refused.
    #[tokio::test]
    async fn an_encrypted_add_is_refused_while_another_network_is_unregistered() {
        use scrambler_testkit::netns::TestNetns;
        let node = TestNetns::new("ivunl");
        let pod = TestNetns::new("ivunp");
        let (ok, out) = node.exec(&[
            "ip", "link", "add", "ul0", "type", "veth", "peer", "name", "ul1",
        ]);
        assert!(ok, "{out}");
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let encrypted = |network: &str| {
            IpvlanAttach::new(IpvlanConfig {
                network: network.into(),
                mode: Mode::L3,
                encrypt: true,
                master: Some("ul0".into()),
                cluster_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
                state_dir: Some(state.clone()),
                ..Default::default()
            })
            .unwrap()
            .with_node_dir(tmp.path().join("node"))
            .unwrap()
        };
        let host = node.netns();
        let host_id = host_id(&host).unwrap();
        RecordStore::new(&state, "old")
            .unwrap()
            .write(&Record {
                id: AttachmentId::new("c1", "eth0"),
                host: host_id,
                ips: vec!["10.1.1.2".parse().unwrap()],
            })
            .unwrap();
        let b = encrypted("b");
        let req = AttachRequest {
            id: AttachmentId::new("c2", "eth0"),
            pod_netns: pod.netns(),
            args: vec![],
            mtu: None,
        };
        let mut addrs = addrs(None);
        addrs.ips[0].address = "10.2.1.5/24".parse().unwrap();
        let e = b.attach_in(&host, &req, &addrs).await.unwrap_err();
        assert_eq!(e.code(), 7, "{e}");
        assert!(
            e.to_string().contains("network \"old\" has encrypted pods"),
            "{e}"
        );
        assert!(b.registry(&host).unwrap().entries().unwrap().is_empty());
        assert!(b.records().unwrap().list().unwrap().is_empty());
        assert!(crate::nft::families(&host).await.unwrap().is_empty());
        assert!(
            !pod.exec(&["ip", "link", "show", "eth0"]).0,
            "pod link left"
        );
        // `old`'s own records are no obstacle to its ADD, which registers it
        encrypted("old")
            .refuse_unlisted_networks(host_id, &[])
            .unwrap();
    }
}
