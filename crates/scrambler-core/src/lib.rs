//! # scrambler-core
//!
//! The shared ground of Scrambler, an encrypted pod network: the types every dataplane
//! uses ([`Node`], [`Mesh`] and the validating mesh file [`MeshFile`], [`AttachRequest`],
//! [`CniResult`], [`NetConf`]), the three traits each dataplane implements ([`Ipam`],
//! [`Tunnel`], [`Attach`]), one [`Error`] type
//! that maps to CNI error codes, network-namespace handling ([`Netns`]), and the key/SPI
//! derivation ([`ClusterSecret`], binding each node's dataplane [`Epoch`]), the ledger of
//! outbound SAs that keeps any key from being installed twice ([`Ledger`]), and ESP parameters ([`esp`]) that make the kernel and VPP
//! dataplanes put the same ESP on the wire. The CNI protocol plumbing every plugin binary
//! shares (command, `CNI_*` environment, `VERSION` answer, error object) is in [`cni`].
#![warn(missing_docs)]

pub mod backend;
pub mod cni;
pub mod conf;
pub mod epoch;
pub mod error;
pub mod esp;
pub mod fault;
pub mod fsutil;
pub mod keys;
pub mod ledger;
pub mod mesh;
pub mod meshfile;
pub mod netns;
pub mod node_encryption;
pub mod result;
pub mod routed;
pub mod traits;

pub use backend::{Backend, TunnelDataplane, UnknownBackend};
pub use conf::NetConf;
pub use epoch::{Epoch, Incarnation};
pub use error::{CniCode, CniErrorJson, Error, Result};
pub use keys::{ClusterSecret, KeyId, SaKey};
pub use ledger::{Ledger, OutboundSa};
pub use mesh::{Cluster, Generation, Keys, Mesh, Node, NodeId, PreviousEpoch};
pub use meshfile::MeshFile;
pub use netns::Netns;
pub use node_encryption::{BypassPort, BypassProto, NodeEncryption};
pub use result::{CniResult, Dns, Interface, IpConfig, Route};
pub use traits::{
    AllocRequest, Attach, AttachRequest, AttachmentId, Ipam, Lease, PeerStatus, ReconcileReport,
    Tunnel, TunnelStatus, HOST_LINK_MISSING,
};
