//! # scrambler-testkit
//!
//! What Scrambler's tests share (a dev-dependency; the node tool's `lab` feature uses
//! [`capture`] and [`dist`]):
//!
//! * [`netns`]: network namespaces a test creates and always removes ([`TestNetns`]);
//!   [`wire`]: nodes on a bridged underlay, UDP streams and ping counts between pods.
//! * [`capture`]: the one tcpdump capture (pcap bytes or tcpdump's text).
//! * [`vm`]: the one way a test runs in Debian's stock kernel under qemu when this kernel
//!   lacks a feature ([`vm::VmSuite::delegate`]).
//! * [`plugin`]: the checks every CNI plugin binary must pass
//!   ([`plugin_binary_tests!`](crate::plugin_binary_tests)).
//! * [`etcd`]: a real etcd-server on loopback ([`etcd::Etcd`]).
//! * [`dist`]: finding a VPP to run (an installed one, a tree, the CI fixture tarball);
//!   `vpp` (feature `vpp`): a real VPP in a test namespace.
#![warn(missing_docs)]

pub mod capture;
pub mod dist;
pub mod etcd;
pub mod netns;
pub mod plugin;
pub mod vm;
#[cfg(feature = "vpp")]
pub mod vpp;
pub mod wire;

pub use netns::{veth, TestNetns};
