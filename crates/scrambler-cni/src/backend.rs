//! The backend factory: turns the conf's `"backend"` into the [`Attach`] implementation of
//! that dataplane.
//!
//! Each backend is an [`Attach`]; [`CniBackend`] adds the two operations CNI needs beyond
//! it (GC of orphaned interfaces, STATUS), with defaults, so a dataplane crate only has to
//! provide an `Attach` and an empty `impl CniBackend for …` here.
//!
//! Each backend's own conf fields are read by its crate: `veth` (alias `xfrm`) has none,
//! `ipvlan` reads [`scrambler_ipvlan::IpvlanConfig`], `vpp` its `"vpp"` section
//! ([`scrambler_vpp::VppConf`]).
//!
//! With the `vpp` backend ([`scrambler_vpp::VppAttach`]), a VPP that is not listening on the
//! socket makes
//! ADD, CHECK and STATUS fail with code 11 naming the socket, while DEL still removes the
//! pod's veth (VPP's objects died with it). A VPP that accepts but does not answer (hung)
//! makes DEL fail with code 11 too, so the runtime retries. The conf's `name` marks the
//! VPP interfaces and node veths of the network, so GC of one Scrambler network leaves
//! those of another on the same VPP alone.

use crate::veth::VethAttach;
use async_trait::async_trait;
use futures::future::BoxFuture;
use ipnet::IpNet;
use scrambler_core::fault::Fault;
use scrambler_core::{
    Attach, AttachRequest, AttachmentId, Backend, CniResult, Error, NetConf, Netns, Result,
};
use scrambler_ipvlan::IpvlanAttach;
use scrambler_netlink::AttachSockets;
use scrambler_vpp::{VppAttach, VppConf};
use scrambler_xfrm::XfrmConfig;

/// Why an ADD failed, as far as undoing it goes: the IPAM may hold addresses for the
/// attachment only in the second case. Either way, the backend has removed what it made.
#[derive(Debug)]
pub enum AddError {
    /// Failed before any address was leased (the allocation itself, or a check before it).
    Unleased(Error),
    /// Failed once addresses were leased: the caller releases them.
    Leased(Error),
}

impl AddError {
    /// The error to report.
    pub fn into_inner(self) -> Error {
        match self {
            AddError::Unleased(e) | AddError::Leased(e) => e,
        }
    }
}

/// The IPAM's allocation for an attachment, still running.
pub type Allocation<'a> = BoxFuture<'a, std::result::Result<CniResult, AddError>>;

/// An [`Attach`] as the CNI plugin drives it, through the [`AttachSockets`] the plugin
/// opens once per command.
#[async_trait]
pub trait CniBackend: Attach<Sockets = AttachSockets> {
    /// Attaches `req` with the addresses `allocation` yields. The default awaits the
    /// allocation, then calls [`Attach::attach`]; a backend may instead do the work that
    /// needs no addresses (creating the interface) while the allocation runs, as long as it
    /// awaits the allocation in every case and removes what it made when either side fails.
    async fn attach_allocating(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        allocation: Allocation<'_>,
    ) -> std::result::Result<CniResult, AddError> {
        let addrs = allocation.await?;
        self.attach(sockets, req, &addrs)
            .await
            .map_err(AddError::Leased)
    }

    /// Removes interfaces this backend made for attachments not in `valid`; returns what
    /// it removed.
    async fn gc(&self, _host: &Netns, _valid: &[AttachmentId]) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Fails when the backend cannot serve ADD on `host`.
    async fn status(&self, _host: &Netns) -> Result<()> {
        Ok(())
    }

    /// Fails, naming what is missing, unless the node's fail-closed guard for every
    /// supernet of `cluster_cidrs` is in place in the dataplane this backend attaches pods
    /// to (run by ADD and STATUS when the conf has a `tunnelStatusFile`). No default: each
    /// dataplane says how its guard is checked.
    async fn guard_in_place(&self, host: &Netns, cluster_cidrs: &[IpNet]) -> Result<()>;
}

/// The kernel dataplane's guard (veth and ipvlan pods both leave through the node's
/// routing and XFRM policies): scrambler-xfrm's block policy per cluster supernet, at the
/// priority of the default [`XfrmConfig`] (the node tool's agent uses it).
async fn kernel_guard_in_place(host: &Netns, cluster_cidrs: &[IpNet]) -> Result<()> {
    scrambler_xfrm::guard_in_place(host, cluster_cidrs, &XfrmConfig::default()).await
}

#[async_trait]
impl CniBackend for VethAttach {
    async fn attach_allocating(
        &self,
        sockets: &AttachSockets,
        req: &AttachRequest,
        allocation: Allocation<'_>,
    ) -> std::result::Result<CniResult, AddError> {
        VethAttach::attach_allocating(self, sockets, req, allocation).await
    }

    async fn gc(&self, host: &Netns, valid: &[AttachmentId]) -> Result<Vec<String>> {
        VethAttach::gc(self, host, valid).await
    }

    async fn guard_in_place(&self, host: &Netns, cluster_cidrs: &[IpNet]) -> Result<()> {
        kernel_guard_in_place(host, cluster_cidrs).await
    }
}

#[async_trait]
impl CniBackend for IpvlanAttach {
    async fn gc(&self, host: &Netns, valid: &[AttachmentId]) -> Result<Vec<String>> {
        IpvlanAttach::gc(self, host, valid).await
    }

    async fn guard_in_place(&self, host: &Netns, cluster_cidrs: &[IpNet]) -> Result<()> {
        kernel_guard_in_place(host, cluster_cidrs).await
    }
}

#[async_trait]
impl CniBackend for VppAttach {
    async fn gc(&self, host: &Netns, valid: &[AttachmentId]) -> Result<Vec<String>> {
        VppAttach::gc(self, host, valid).await
    }

    async fn status(&self, host: &Netns) -> Result<()> {
        let c = self.connect(host).await?;
        c.control_ping().await.map_err(scrambler_vpp::core_error)?;
        let _ = c.close().await;
        Ok(())
    }

    /// The guard routes of the node's VPP ([`scrambler_vpp::tunnel::guard_in_place`]), on
    /// a connection of its own (the attachment opens its own after this check).
    async fn guard_in_place(&self, host: &Netns, cluster_cidrs: &[IpNet]) -> Result<()> {
        let c = self.connect(host).await?;
        let r = scrambler_vpp::tunnel::guard_in_place(&c, cluster_cidrs).await;
        let _ = c.close().await;
        r
    }
}

/// Options the factory passes on to backends.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// The fault attachments inject (tests; see [`scrambler_core::fault`]).
    pub fault: Fault,
}

/// The backend named by `conf`'s `"backend"`; unknown or missing names fail with code 7,
/// listing the valid ones.
pub fn backend_for(conf: &NetConf, opts: &BackendOptions) -> Result<Box<dyn CniBackend>> {
    match conf.backend()? {
        Backend::Veth => Ok(Box::new(
            VethAttach::new(conf.name.clone()).with_fault(opts.fault.clone()),
        )),
        Backend::Ipvlan => Ok(Box::new(IpvlanAttach::from_netconf(conf)?)),
        Backend::Vpp => Ok(Box::new(
            VppConf::from_netconf(conf)?
                .attach(&conf.name)
                .with_fault(opts.fault.clone()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(backend: Option<&str>) -> NetConf {
        let mut v =
            serde_json::json!({"cniVersion": "1.1.0", "name": "n", "type": "scrambler-cni"});
        if let Some(b) = backend {
            v["backend"] = b.into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn factory_picks_or_explains() {
        let o = BackendOptions::default();
        for name in ["veth", "xfrm", "ipvlan", "vpp"] {
            assert!(backend_for(&conf(Some(name)), &o).is_ok(), "{name}");
        }
        let e = backend_for(&conf(Some("nope")), &o).err().unwrap();
        assert_eq!(e.code(), 7);
        assert!(
            e.to_string().contains("veth (alias xfrm), ipvlan, vpp"),
            "{e}"
        );
        assert_eq!(backend_for(&conf(None), &o).err().unwrap().code(), 7);
    }

    #[test]
    fn a_malformed_backend_section_is_code_7() {
        let o = BackendOptions::default();
        let mut c = conf(Some("vpp"));
        c.extra.insert("vpp".into(), serde_json::json!("/x"));
        assert_eq!(backend_for(&c, &o).err().unwrap().code(), 7);
        let mut c = conf(Some("ipvlan"));
        c.extra.insert("mode".into(), serde_json::json!("l4"));
        assert_eq!(backend_for(&c, &o).err().unwrap().code(), 7);
    }
}
