//! The prologue every attachment (veth, ipvlan, VPP) shares: the pod namespace checked,
//! the connections to the node's and the pod's namespace opened once, and (for ADD)
//! `CNI_IFNAME` free in the pod. The driver then works through the [`PodSockets`] it is
//! handed and holds only its own topology.

use crate::Nl;
use scrambler_core::{AttachRequest, Error, Netns, Result};

/// The connections of one attachment: to the node's namespace and to the pod's.
#[derive(Debug)]
pub struct PodSockets {
    /// The node's namespace (where the attachment's node side lives).
    pub host: Nl,
    /// The pod's namespace (`CNI_NETNS`).
    pub pod: Nl,
}

impl PodSockets {
    /// Checks the pod namespace of `req` ([`check_pod_netns`]) and opens both connections.
    pub async fn open(host: &Netns, req: &AttachRequest) -> Result<PodSockets> {
        check_pod_netns(&req.pod_netns)?;
        let (host, pod) = futures::try_join!(Nl::open(host), Nl::open(&req.pod_netns))?;
        Ok(PodSockets { host, pod })
    }

    /// [`PodSockets::open`] for an ADD: `CNI_IFNAME` must also be free in the pod
    /// ([`Error::AlreadyExists`] when it is taken).
    pub async fn open_for_add(host: &Netns, req: &AttachRequest) -> Result<PodSockets> {
        let s = PodSockets::open(host, req).await?;
        s.pod.ensure_pod_ifname_free(&req.id.ifname).await?;
        Ok(s)
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
