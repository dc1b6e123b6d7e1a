//! # scrambler-vpp-api
//!
//! An async (tokio) client for FD.io VPP's binary API over its unix-socket transport
//! (`api.sock`), with message types generated from VPP's `.api.json` files, and a reader of
//! VPP's statistics segment. It knows nothing of Scrambler's dataplane: any Rust program
//! that talks to VPP can use it.
//!
//! * [`VppClient`]: connect (`sockclnt_create` handshake, message table), typed
//!   [`VppClient::request`] / [`VppClient::dump`] for every generated message, and shortcuts
//!   ([`VppClient::show_version`], [`VppClient::interfaces`], [`VppClient::control_ping`]).
//! * [`api`]: the generated messages and types, one module per `.api` file (generated at
//!   build time from the `api/` directory of this crate by `codegen/apigen.rs`), with
//!   conversions to and from `std::net` / `ipnet` ([`convert`]).
//! * [`codec`], [`message`], [`transport`]: the wire format underneath. Key material is
//!   scrubbed: generated messages holding keys zero them on drop (`zeroize_secrets`), as do
//!   the encode buffer ([`codec::EncodeBuf`]) and the frames the transport reads.
//! * [`stats`]: VPP's statistics segment (`stats.sock`), mapped read-only.
//! * A running VPP whose API differs from the one this crate was generated for is caught per
//!   message: [`VppError::CrcMismatch`] names the message and both CRCs.
//!
//! ```no_run
//! use scrambler_vpp_api::api::interface::SwInterfaceDump;
//! use scrambler_vpp_api::{VppClient, VppError};
//!
//! # async fn demo() -> Result<(), VppError> {
//! let vpp = VppClient::connect("/run/vpp/api.sock").await?;
//! println!("VPP {}", vpp.show_version().await?.version);
//! for i in vpp.dump(&SwInterfaceDump::default()).await? {
//!     println!("{} {}", i.sw_if_index, i.interface_name);
//! }
//! vpp.close().await
//! # }
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod codec;
pub mod convert;
pub mod error;
pub mod message;
pub mod stats;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod transport;

pub use client::{ConnectOptions, VppClient};
pub use error::{retval_name, VppError};
pub use message::{Dump, Message, Request};
