//! # scrambler-vpp
//!
//! Scrambler's FD.io VPP dataplane, programmed over VPP's binary API with
//! [`scrambler_vpp_api`]:
//!
//! * [`VppTunnel`] ([`scrambler_core::Tunnel`]): the encrypted mesh as per-peer IPIP tunnels
//!   protected by ESP, failing closed behind drop routes (see [`tunnel`]);
//! * [`VppAttach`] ([`scrambler_core::Attach`]): a pod's interface attached to the node's
//!   VPP (see [`attach`]).
//!
//! ```no_run
//! use scrambler_core::{ClusterSecret, Mesh, Netns, Tunnel};
//! # async fn demo(mesh: Mesh, secret: ClusterSecret) -> scrambler_core::Result<()> {
//! let vpp = scrambler_vpp::VppTunnel::new("/run/vpp/api.sock");
//! vpp.reconcile(&Netns::Current, &mesh, &secret).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod attach;
pub mod conf;
mod endpoint;
pub mod tunnel;

pub use attach::VppAttach;
pub use conf::VppConf;
pub use endpoint::core_error;
pub use tunnel::VppTunnel;
