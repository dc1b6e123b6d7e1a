//! The backend factory: turns the conf's `"backend"` into the [`Attach`] implementation of
//! that dataplane.
//!
//! Each backend is an [`Attach`]; [`CniBackend`] adds the two operations CNI needs beyond
//! it (GC of orphaned interfaces, STATUS), with defaults, so a dataplane crate only has to
//! provide an `Attach` and an empty `impl CniBackend for …` here.

use crate::veth::VethAttach;
use async_trait::async_trait;
use scrambler_core::{Attach, AttachmentId, Backend, Error, NetConf, Netns, Result};
use scrambler_ipvlan::IpvlanAttach;

/// An [`Attach`] as the CNI plugin drives it.
#[async_trait]
pub trait CniBackend: Attach {
    /// Removes interfaces this backend made for attachments not in `valid`; returns what
    /// it removed.
    async fn gc(&self, _host: &Netns, _valid: &[AttachmentId]) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Fails when the backend cannot serve ADD on `host`.
    async fn status(&self, _host: &Netns) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl CniBackend for VethAttach {
    async fn gc(&self, host: &Netns, valid: &[AttachmentId]) -> Result<Vec<String>> {
        VethAttach::gc(self, host, valid).await
    }
}

#[async_trait]
impl CniBackend for IpvlanAttach {}

/// Options the factory passes on to backends.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Fault injection stage (tests; see [`crate::fault`]).
    pub fault: Option<String>,
}

/// The backend named by `conf`'s `"backend"`; unknown or missing names fail with code 7,
/// listing the valid ones.
pub fn backend_for(conf: &NetConf, opts: &BackendOptions) -> Result<Box<dyn CniBackend>> {
    match conf.backend()? {
        Backend::Xfrm => Ok(Box::new(
            VethAttach::new(conf.name.clone()).with_fault(opts.fault.clone()),
        )),
        Backend::Ipvlan => Ok(Box::new(IpvlanAttach::from_netconf(conf)?)),
        b @ Backend::Vpp => Err(Error::Unsupported(format!(
            "backend {} is not built yet (only \"xfrm\" and \"ipvlan\" are available in this scrambler-cni)",
            b.as_str()
        ))),
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
        assert!(backend_for(&conf(Some("xfrm")), &o).is_ok());
        assert!(backend_for(&conf(Some("ipvlan")), &o).is_ok());
        let e = backend_for(&conf(Some("vpp")), &o).err().unwrap();
        assert!(e.to_string().contains("not built yet"), "{e}");
        let e = backend_for(&conf(Some("nope")), &o).err().unwrap();
        assert_eq!(e.code(), 7);
        assert!(e.to_string().contains("xfrm, ipvlan, vpp"));
        assert_eq!(backend_for(&conf(None), &o).err().unwrap().code(), 7);
    }
}
