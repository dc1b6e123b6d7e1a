//! # scrambler-agent
//!
//! Scrambler's node agent on etcd: one per node, long-running. It registers its node under a
//! prefix in etcd (public fields only: name, id, underlay, pod CIDRs, epoch, dataplane),
//! held by a lease it keeps alive; watches the prefix and reconciles the node's
//! [`scrambler_core::Tunnel`] to the mesh the registry describes, debounced so that many
//! nodes joining at once cost a handful of reconciles; claims node ids and pod CIDRs with
//! etcd transactions; drives cluster-wide key rotation; and keeps the last mesh when etcd is
//! unreachable (fail static).
//!
//! One module per concern:
//! - [`layout`]: the etcd keys under the prefix;
//! - [`record`]: what is stored under them (JSON);
//! - [`store`]: the etcd connection and the reads and writes the agent makes;
//! - [`registry`]: registry records → a node's [`scrambler_core::Mesh`] (one function);
//! - [`claims`]: node ids and pod CIDRs claimed by compare-and-swap;
//! - [`lease`]: the registration lease, kept alive;
//! - [`node_encryption`]: the node-encryption setting, the datastore's ports always
//!   bypassed;
//! - [`rotation`]: the phases of a cluster-wide key rotation;
//! - [`epoch`]: the node's dataplane epoch, created or reused;
//! - [`debounce`]: coalescing watch events into few reconciles;
//! - [`agent`]: the loop that ties them together;
//! - [`status`]: the agent's status file, read by `scrambler status`.
#![warn(missing_docs)]

pub mod agent;
pub mod claims;
pub mod debounce;
pub mod epoch;
pub mod layout;
pub mod lease;
pub mod node_encryption;
pub mod record;
pub mod registry;
pub mod rotation;
pub mod status;
pub mod store;

pub use agent::{Agent, AgentConfig};
pub use layout::Layout;
pub use record::{Claim, KeyState, NodeRecord};
pub use store::{EtcdConfig, Snapshot, Store};
