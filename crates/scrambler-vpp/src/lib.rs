//! # scrambler-vpp
//!
//! An async (tokio) client for FD.io VPP's binary API over its unix-socket transport
//! (`api.sock`), with message types generated from VPP's `.api.json` files.
//!
//! * [`VppClient`]: connect (`sockclnt_create` handshake, message table), typed
//!   [`VppClient::request`] / [`VppClient::dump`] for every generated message, and shortcuts
//!   ([`VppClient::show_version`], [`VppClient::interfaces`], [`VppClient::control_ping`]).
//! * [`api`]: the generated messages and types, one module per `.api` file.
//! * [`codec`], [`message`], [`transport`]: the wire format underneath.
//! * A running VPP whose API differs from the one this crate was generated for is caught per
//!   message: [`VppError::CrcMismatch`] names the message and both CRCs.
//!
//! ```no_run
//! # async fn demo() -> Result<(), scrambler_vpp::VppError> {
//! let vpp = scrambler_vpp::VppClient::connect("/run/vpp/api.sock").await?;
//! println!("{}", vpp.show_version().await?.version);
//! vpp.close().await
//! # }
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod attach;
pub mod client;
pub mod codec;
pub mod convert;
mod endpoint;
pub mod error;
pub mod message;
pub mod stats;
/// Test hooks of the client: every generated message driven generically (`codec`);
/// statistics segments built in memory (`stats_segment`).
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    pub mod codec;
    pub mod stats_segment;
}
pub mod transport;
pub mod tunnel;

pub use attach::VppAttach;
pub use client::{ConnectOptions, VppClient};
pub use error::{retval_name, VppError};
pub use message::{Dump, Message, Request};
pub use tunnel::VppTunnel;
