//! Message types generated from VPP's `.api.json` (see `codegen/apigen.rs`; the inputs are
//! in `api/` of this crate), and conversions between VPP's address types and std/ipnet.
//!
//! One module per `.api` file (`api::vpe::ShowVersion`, `api::interface::SwInterfaceDump`,
//! `api::ipsec::IpsecSadEntryAddV2`, …) and [`types`] for the shared typedefs.
#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/vpp_api.rs"));
