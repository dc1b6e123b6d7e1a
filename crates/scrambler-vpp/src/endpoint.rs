//! The VPP of a node, as both dataplane halves ([`crate::tunnel`], [`crate::attach`]) reach
//! it: a resolver from the node's namespace to its VPP's API socket, connecting with the
//! half's client name, and the mapping of VPP failures to [`scrambler_core::Error`].

use std::path::PathBuf;
use std::sync::Arc;

use scrambler_core::{Error, Netns, Result};

use scrambler_vpp_api::{ConnectOptions, VppClient, VppError};

/// The dataplane name in [`Error::Dataplane`].
pub(crate) const DATAPLANE: &str = "vpp";

/// Finds the API socket of the VPP serving a node, given the node's network namespace.
pub type SocketResolver = dyn Fn(&Netns) -> Result<PathBuf> + Send + Sync;

/// A resolver that answers `api_socket` for every namespace (one VPP).
pub(crate) fn fixed_socket(
    api_socket: impl Into<PathBuf>,
) -> impl Fn(&Netns) -> Result<PathBuf> + Send + Sync + 'static {
    let p: PathBuf = api_socket.into();
    move |_| Ok(p.clone())
}

/// Where a node's VPP is, and how to connect to it.
#[derive(Clone)]
pub(crate) struct NodeVpp {
    pub(crate) resolve: Arc<SocketResolver>,
    pub(crate) opts: ConnectOptions,
}

impl NodeVpp {
    /// Connections named `client_name` to the VPP `resolve` finds.
    pub(crate) fn new(resolve: Arc<SocketResolver>, client_name: &str) -> Self {
        NodeVpp {
            resolve,
            opts: ConnectOptions {
                name: client_name.into(),
                ..ConnectOptions::default()
            },
        }
    }

    /// The API socket of the VPP serving `netns`.
    pub(crate) fn api_socket(&self, netns: &Netns) -> Result<PathBuf> {
        (self.resolve)(netns)
    }

    /// Connects to the VPP of `netns`.
    pub(crate) async fn connect(&self, netns: &Netns) -> Result<VppClient> {
        let path = self.api_socket(netns)?;
        VppClient::connect_with(&path, self.opts.clone())
            .await
            .map_err(core_error)
    }

    /// Connects to the VPP of `netns`; a socket that does not exist or refuses connections
    /// is [`Error::TryAgainLater`] (VPP not running) naming the socket.
    pub(crate) async fn connect_or_try_later(&self, netns: &Netns) -> Result<VppClient> {
        let path = self.api_socket(netns)?;
        VppClient::connect_with(&path, self.opts.clone())
            .await
            .map_err(|e| match vpp_not_running(&e) {
                true => Error::TryAgainLater(format!(
                    "VPP API socket {} is not there or refuses connections: is VPP running, and \
                     is this its api socket? ({e})",
                    path.display()
                )),
                false => core_error(e),
            })
    }

    /// Connects to the VPP of `netns`; `None` when VPP is not running (its socket does not
    /// exist or refuses connections: none of its objects exist). A VPP that does not
    /// answer in time (hung) is [`Error::TryAgainLater`]: its objects may still exist.
    pub(crate) async fn connect_if_running(&self, netns: &Netns) -> Result<Option<VppClient>> {
        let path = self.api_socket(netns)?;
        match VppClient::connect_with(&path, self.opts.clone()).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if vpp_not_running(&e) => {
                tracing::warn!(socket = %path.display(), error = %e, "VPP is not running");
                Ok(None)
            }
            Err(e @ VppError::Timeout { .. }) => Err(Error::TryAgainLater(format!(
                "VPP at API socket {} does not answer (hung?), retry later: {e}",
                path.display()
            ))),
            Err(e) => Err(core_error(e)),
        }
    }
}

/// Maps a VPP client error to the core error: a socket failure is [`Error::Io`], a VPP that
/// does not answer in time [`Error::TryAgainLater`], a VPP built from another API
/// ([`VppError::CrcMismatch`], [`VppError::UnknownMessage`]) [`Error::Unsupported`], and
/// anything else [`Error::Dataplane`] naming the message.
pub fn core_error(e: VppError) -> Error {
    match e {
        VppError::Io { path, op, source } => Error::io(op, path.display(), source),
        VppError::Timeout { .. } => Error::TryAgainLater(e.to_string()),
        VppError::CrcMismatch { .. } | VppError::UnknownMessage { .. } => {
            Error::Unsupported(e.to_string())
        }
        VppError::Retval { message, .. }
        | VppError::Closed { message, .. }
        | VppError::Codec { message, .. } => Error::Dataplane {
            dataplane: DATAPLANE.into(),
            op: message.into(),
            reason: e.to_string(),
        },
        VppError::Protocol(_) => Error::Dataplane {
            dataplane: DATAPLANE.into(),
            op: "api".into(),
            reason: e.to_string(),
        },
    }
}

fn vpp_not_running(e: &VppError) -> bool {
    matches!(e, VppError::Io { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused))
}

/// Maps a VPP failure to the core error, saying which object and operation.
pub(crate) fn vpp_err(op: &str, object: &str) -> impl FnOnce(VppError) -> Error {
    let what = format!("{op} {object}");
    move |e| match e {
        VppError::CrcMismatch { .. } | VppError::UnknownMessage { .. } => core_error(e),
        VppError::Timeout { .. } => core_error(e),
        e => Error::Dataplane {
            dataplane: DATAPLANE.into(),
            op: what,
            reason: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_vpp_api::error::retval;

    #[test]
    fn vpp_errors_map_to_core_codes() {
        let e = VppError::Retval {
            message: "sw_interface_add_del_address",
            retval: retval::ADDRESS_IN_USE,
        };
        assert_eq!(core_error(e).code(), 104);
        let e = VppError::CrcMismatch {
            message: "show_version".into(),
            ours: 0x51077d14,
            theirs: 0xdeadbeef,
        };
        assert_eq!(core_error(e).code(), 105);
    }
}
