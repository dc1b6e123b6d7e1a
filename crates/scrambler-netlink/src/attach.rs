//! The connections every attachment (veth, ipvlan, VPP) works through, opened once per
//! CNI command by the caller and handed to the driver, as netavark hands its drivers
//! `NetworkHandles`: the driver holds only its topology.
//!
//! [`AttachSockets::open_for_add`] is the ADD prologue: the pod namespace checked (once),
//! the connections to the node's and the pod's namespace opened, `CNI_IFNAME` free in the
//! pod. CHECK uses [`AttachSockets::open`]; DEL uses [`AttachSockets::open_for_del`], which
//! needs neither `CNI_NETNS` nor a namespace that still exists: the pod connection is
//! opened only when a driver asks for it ([`AttachSockets::pod_if_present`]).

use crate::Nl;
use scrambler_core::{Attach, AttachRequest, CniResult, Error, Netns, Result};
use tokio::sync::OnceCell;

/// The connections of one CNI command: to the node's namespace and to the pod's.
#[derive(Debug)]
pub struct AttachSockets {
    host: Nl,
    pod_netns: Netns,
    /// The pod connection; `None` inside once the namespace turned out to be gone (DEL).
    pod: OnceCell<Option<Nl>>,
}

impl AttachSockets {
    /// Checks `pod_netns` ([`check_pod_netns`]) and opens both connections.
    pub async fn open(host: &Netns, pod_netns: &Netns) -> Result<AttachSockets> {
        check_pod_netns(pod_netns)?;
        let (host, pod) = futures::try_join!(Nl::open(host), Nl::open(pod_netns))?;
        Ok(AttachSockets {
            host,
            pod_netns: pod_netns.clone(),
            pod: OnceCell::new_with(Some(Some(pod))),
        })
    }

    /// [`AttachSockets::open`] for the ADD of `req`: `CNI_IFNAME` must also be free in
    /// the pod ([`Error::AlreadyExists`] when it is taken).
    pub async fn open_for_add(host: &Netns, req: &AttachRequest) -> Result<AttachSockets> {
        let s = AttachSockets::open(host, &req.pod_netns).await?;
        s.pod()?.ensure_pod_ifname_free(&req.id.ifname).await?;
        Ok(s)
    }

    /// The connections for a DEL: the node's is opened now; the pod's, when a driver asks
    /// for it with [`AttachSockets::pod_if_present`]. `pod_netns` may be empty (DEL without
    /// `CNI_NETNS`) or gone.
    pub async fn open_for_del(host: &Netns, pod_netns: &Netns) -> Result<AttachSockets> {
        Ok(AttachSockets {
            host: Nl::open(host).await?,
            pod_netns: pod_netns.clone(),
            pod: OnceCell::new(),
        })
    }

    /// The connection to the node's namespace.
    pub fn host(&self) -> &Nl {
        &self.host
    }

    /// The node's namespace.
    pub fn host_netns(&self) -> &Netns {
        self.host.netns()
    }

    /// The pod's namespace as the command named it (empty for a DEL without `CNI_NETNS`).
    pub fn pod_netns(&self) -> &Netns {
        &self.pod_netns
    }

    /// The connection to the pod's namespace, opened by [`AttachSockets::open`]. From
    /// sockets opened for a DEL it is there only once [`AttachSockets::pod_if_present`]
    /// found the namespace; otherwise this fails (code 3), naming the namespace.
    pub fn pod(&self) -> Result<&Nl> {
        self.pod.get().and_then(Option::as_ref).ok_or_else(|| {
            Error::UnknownContainer(format!(
                "no connection to the pod's network namespace {}",
                self.pod_netns
            ))
        })
    }

    /// The connection to the pod's namespace, opened on first use; `None` when the
    /// namespace is not named (DEL without `CNI_NETNS`), is gone, or is no longer a
    /// network namespace (being deleted).
    pub async fn pod_if_present(&self) -> Result<Option<&Nl>> {
        self.pod
            .get_or_try_init(|| async {
                if pod_netns_gone(&self.pod_netns) {
                    return Ok(None);
                }
                match Nl::open(&self.pod_netns).await {
                    Ok(nl) => Ok(Some(nl)),
                    Err(Error::UnknownContainer(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
            .map(Option::as_ref)
    }
}

/// Whether `netns` is unnamed (a DEL without `CNI_NETNS`), gone, or no longer a network
/// namespace.
fn pod_netns_gone(netns: &Netns) -> bool {
    match netns {
        Netns::Path(p) if p.as_os_str().is_empty() => true,
        _ => matches!(
            netns.check(),
            Err(Error::UnknownContainer(_)) | Err(Error::InvalidConfig(_))
        ),
    }
}

/// Checks that the pod namespace exists (code 3 when it does not) and is a network
/// namespace (code 4, as `CNI_NETNS` is then invalid; also seen while a namespace is being
/// deleted, between the unmount and the unlink of its file).
pub fn check_pod_netns(netns: &Netns) -> Result<()> {
    netns.check().map_err(|e| match e {
        Error::InvalidConfig(reason) => Error::InvalidEnvironment {
            var: "CNI_NETNS".into(),
            reason,
        },
        other => other,
    })
}

/// One-shot calls of an attachment for callers that handle one pod at a time (tests, an
/// embedder without a command of its own): each opens the [`AttachSockets`] the way the
/// CNI plugin's command does, then calls the driver through them.
#[async_trait::async_trait]
pub trait AttachOnce: Attach<Sockets = AttachSockets> {
    /// ADD: [`AttachSockets::open_for_add`], then [`Attach::attach`].
    async fn attach_in(
        &self,
        host: &Netns,
        req: &AttachRequest,
        addrs: &CniResult,
    ) -> Result<CniResult> {
        let sockets = AttachSockets::open_for_add(host, req).await?;
        self.attach(&sockets, req, addrs).await
    }

    /// CHECK: [`AttachSockets::open`], then [`Attach::check`].
    async fn check_in(
        &self,
        host: &Netns,
        req: &AttachRequest,
        expected: &CniResult,
    ) -> Result<()> {
        let sockets = AttachSockets::open(host, &req.pod_netns).await?;
        self.check(&sockets, req, expected).await
    }

    /// DEL: [`AttachSockets::open_for_del`], then [`Attach::detach`].
    async fn detach_in(&self, host: &Netns, req: &AttachRequest) -> Result<()> {
        let sockets = AttachSockets::open_for_del(host, &req.pod_netns).await?;
        self.detach(&sockets, req).await
    }
}

impl<A: Attach<Sockets = AttachSockets> + ?Sized> AttachOnce for A {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_unnamed_netns_counts_as_gone_for_del() {
        assert!(pod_netns_gone(&Netns::Path(Default::default())));
        assert!(pod_netns_gone(&Netns::path(
            "/run/netns/definitely-not-here"
        )));
        assert!(!pod_netns_gone(&Netns::path("/proc/self/ns/net")));
    }
}
