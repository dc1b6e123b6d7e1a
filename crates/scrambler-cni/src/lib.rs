//! # scrambler-cni
//!
//! The CNI plugin of Scrambler's encrypted pod network (binary `scrambler-cni`, conf
//! `"type": "scrambler-cni"`). It speaks every CNI version the reference plugins speak,
//! 0.1.0 through 1.1.0, answering in each version's result layout
//! ([`scrambler_core::result::ResultShape`]) and with the commands each version has (ADD,
//! DEL and VERSION always, CHECK from 0.4.0, GC and STATUS from 1.1.0). It reads a single
//! conf or a conflist entry (at most 1 MiB), picks
//! the dataplane named by `"backend"` ([`backend`]) and composes an IPAM ([`ipam`]: the
//! built-in `scrambler-ipam` in-process, or any other IPAM plugin by [`delegate`]ion)
//! with the backend's [`scrambler_core::Attach`].
//!
//! Backends ([`scrambler_core::Backend`]): `veth` is a routed veth pair ([`veth`]; the
//! node's xfrm mesh encrypts what it routes; `xfrm` is accepted as another name for it),
//! `ipvlan` (scrambler-ipvlan's `IpvlanAttach`), `vpp` (scrambler-vpp's `VppAttach`: a veth
//! whose node end VPP takes with af_packet; conf section `"vpp": {"apiSocket": …}`, default
//! `/run/vpp/api.sock`, see [`backend`]).
//!
//! Conf fields besides the standard ones: `backend` (required), `mtu` (default: the
//! node's default-route MTU minus ESP overhead), `logFile` / `logLevel`, and
//! `tunnelStatusFile` (the node agent keeps it fresh while the node's fail-closed guard
//! is in place: without a fresh, guarded one ADD answers 11 and STATUS 50; with one, the
//! guard of each of its `clusterCidrs` is also checked in the dataplane itself — see
//! [`backend::CniBackend::guard_in_place`]).
//!
//! ```json
//! {
//!   "cniVersion": "1.1.0",
//!   "name": "pods",
//!   "type": "scrambler-cni",
//!   "backend": "veth",
//!   "ipam": {"type": "scrambler-ipam", "ranges": [[{"subnet": "10.1.0.0/24"}]],
//!            "dataDir": "/run/scrambler/ipam"},
//!   "logFile": "/var/log/scrambler-cni.log"
//! }
//! ```
//!
//! The network `name` must be a name as the CNI spec and libcni define it (an ASCII
//! alphanumeric, then alphanumerics, `_`, `.` or `-`): every command refuses any other with
//! code 7 before it touches anything. The name marks what the network owns (interface
//! aliases, VPP tags, lease directories), and GC of a network parses those marks and
//! compares the network for equality, so it never touches another network's pods.
//!
//! Run by hand, `scrambler-cni --help` / `--version` print what it is; without
//! `CNI_COMMAND` it prints its name and supported versions on stderr, as the reference
//! plugins do.
//!
//! A runtime execs the plugin for every command, so its start-up counts: it runs one
//! thread (the pod's netlink socket is opened from inside the pod netns by that thread,
//! the built-in IPAM's lease store is written on it). Install it as the reference plugins'
//! releases are shipped (static Go executables), statically linked and position-dependent, which saves loading `libc` and
//! `libgcc_s` and relocating the binary at each exec (about 0.8 ms of a 3 ms ADD here):
//!
//! ```sh
//! RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static" cargo build --release \
//!     --target x86_64-unknown-linux-gnu -p scrambler-cni   # → target/x86_64-unknown-linux-gnu/release/
//! ```
//!
//! Every command is all-or-nothing: a failed ADD removes what it created (interfaces,
//! routes) and releases its addresses before it reports the error; DEL is idempotent.
#![warn(missing_docs)]

pub mod backend;
pub mod delegate;
pub mod env;
mod fault;
pub mod ipam;
pub mod logging;
pub mod plugin;
pub mod protocol;
pub mod veth;

pub use backend::{backend_for, CniBackend};
pub use env::{CniEnv, Command};
pub use plugin::invoke;
pub use protocol::{Outcome, Request};
pub use veth::VethAttach;
