//! # scrambler (node tool)
//!
//! The node-side tool: `scrambler mesh apply` reconciles the local node's dataplane to a mesh
//! file through the [`scrambler_core::Tunnel`] trait, `scrambler status` shows every peer,
//! `scrambler rotate` steps a key rotation (in a mesh file, or cluster-wide through etcd),
//! `scrambler agent` runs the node agent on etcd ([`cluster`], the `scrambler-agent`
//! crate), and `scrambler lab` builds an encrypted multi-node cluster on one machine and
//! injects failures into it. The lab, and the qemu
//! VM harness it boots on a kernel without ESP, are in the build only with the cargo
//! feature `lab` (off by default; `scripts/lab.sh` turns it on).
#![warn(missing_docs)]

pub mod apply;
pub mod cluster;
#[cfg(feature = "lab")]
pub mod lab;
pub mod meshfile;
pub mod record;
pub mod status;
