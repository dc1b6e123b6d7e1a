//! Scrambler's one kernel layer over rtnetlink, shared by every dataplane (scrambler-cni's
//! veth backend, scrambler-ipvlan, scrambler-vpp's attachment and scrambler-xfrm's
//! steering interface). [`Nl`] is a connection bound to one network namespace; its
//! operations are organised by object like rtnetlink itself: [`link`], [`address`],
//! [`route`], [`rule`] (policy routing), [`neighbour`], plus [`sysctl`] for the kernel parameters under
//! `/proc/sys/net`, [`veth`] for the veth pairs of the two veth dataplanes, and
//! [`attach`] for the prologue every attachment shares (the pod namespace checked, the
//! node and pod connections opened once and handed to the driver).
//!
//! The socket of another namespace is opened by the calling thread from inside it: the
//! thread enters the namespace for the one `socket()` call and returns to its own before
//! anything else runs on it (as the reference plugins' `ns.Do` does, without a thread to
//! start and wait for). The socket stays bound to that namespace, so every request made
//! through the returned [`Nl`] acts there while the process itself never changes
//! namespace.
//! Where adding an object that exists already can mean different things, the caller says
//! which with [`Exists`]. Objects of one dataplane only (an ipvlan slave, an xfrm
//! interface) are built in that dataplane's crate and sent through [`Nl::handle`] or
//! [`Nl::add_link`], with [`errno`] and [`kernel_error`] for their errors.
#![warn(missing_docs)]

pub mod address;
pub mod attach;
#[cfg(test)]
mod fuzz;
pub mod link;
pub mod neighbour;
pub mod route;
pub mod rule;
pub mod steering;
pub mod sysctl;
pub mod veth;

pub use attach::{check_pod_netns, AttachOnce, AttachSockets};
pub use link::{format_mac, parse_mac, LinkState};
pub use neighbour::Neighbour;
pub use route::{route_present, RouteSpec, RouteState, MAIN_TABLE, ROUTE_PROTO};
pub use rule::{RuleSpec, RuleState, RuleTarget};
pub use steering::{steered_protocols, SteeringRules};

use scrambler_core::{Error, Netns, Result};

/// `ESRCH`: what the kernel answers when asked to delete a route that does not exist.
pub const ESRCH: i32 = 3;
/// `ENOENT`.
pub const ENOENT: i32 = 2;
/// `EEXIST`.
pub const EEXIST: i32 = 17;
/// `ENODEV`.
pub const ENODEV: i32 = 19;
/// `EOPNOTSUPP`.
pub const EOPNOTSUPP: i32 = 95;

/// What adding an object (an address, a route) that the kernel already has means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exists {
    /// An error: [`Error::AlreadyExists`] naming the object.
    Fail,
    /// Fine: the existing object stays as it is and the add reports that it added nothing.
    Keep,
}

/// An rtnetlink connection inside one namespace.
#[derive(Debug)]
pub struct Nl {
    handle: rtnetlink::Handle,
    netns: Netns,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Nl {
    /// Opens a connection inside `netns`.
    pub async fn open(netns: &Netns) -> Result<Nl> {
        let what = netns.display();
        let open = move || {
            rtnetlink::new_connection().map_err(|e| Error::io("open netlink socket in", what, e))
        };
        // opening a socket does not block: it is opened right here, from inside `netns`
        let (conn, handle, _) = match netns {
            Netns::Current => open()?,
            Netns::Path(_) => from_inside(netns, open)?,
        };
        let task = tokio::spawn(conn);
        Ok(Nl {
            handle,
            netns: netns.clone(),
            task,
        })
    }

    /// The namespace this connection acts in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The underlying rtnetlink handle, for operations specific to one dataplane.
    pub fn handle(&self) -> &rtnetlink::Handle {
        &self.handle
    }

    /// `what in <namespace>`, naming an object of this connection's namespace in errors.
    pub fn obj(&self, what: impl std::fmt::Display) -> String {
        format!("{what} in {}", self.netns)
    }
}

/// Calls `open` with the calling thread inside `netns`, then puts the thread back in its
/// own namespace. `open` must only create sockets: nothing else may run on the thread while
/// it is inside. A namespace that does not exist is [`Error::UnknownContainer`].
fn from_inside<T>(netns: &Netns, open: impl FnOnce() -> Result<T>) -> Result<T> {
    use nix::sched::{setns, CloneFlags};
    use std::os::fd::AsFd;
    let own = std::fs::File::open("/proc/thread-self/ns/net")
        .map_err(|e| Error::io("open own netns of", "the calling thread", e))?;
    let target = netns.open()?;
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io("enter netns", netns, e.into()))?;
    let opened = open();
    if let Err(e) = setns(own.as_fd(), CloneFlags::CLONE_NEWNET) {
        // the thread would go on acting in `netns`: nothing it did after this could be trusted
        eprintln!("scrambler-netlink: cannot return from {netns} to the thread's own netns: {e}");
        std::process::abort();
    }
    opened
}

/// The errno of a netlink error, if it is one.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Whether a netlink error says the object does not exist (`ENODEV`, `ENOENT`).
pub fn is_gone(e: &rtnetlink::Error) -> bool {
    matches!(errno(e), Some(ENODEV) | Some(ENOENT))
}

/// A kernel error for operation `op` on `object`, with the errno's text as reason.
pub fn kernel_error(
    op: &'static str,
    object: impl std::fmt::Display,
    e: &rtnetlink::Error,
) -> Error {
    let reason = match errno(e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    };
    Error::kernel(op, object, reason)
}

/// The first error of pipelined requests (the others are logged as a count).
fn first_error<T>(results: Vec<Result<T>>, what: &str) -> Result<Vec<T>> {
    let mut ok = Vec::with_capacity(results.len());
    let mut errs = Vec::new();
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => errs.push(e),
        }
    }
    let mut errs = errs.into_iter();
    match errs.next() {
        None => Ok(ok),
        Some(e) => {
            let more = errs.count();
            if more > 0 {
                tracing::warn!(more, "further {what} failed too");
            }
            Err(e)
        }
    }
}
