//! # scrambler-ipvlan
//!
//! Pods on ipvlan sub-interfaces of the node's uplink: the `ipvlan` backend of
//! scrambler-cni (`"backend": "ipvlan"`). [`IpvlanAttach`] implements
//! [`scrambler_core::Attach`]; its settings ([`IpvlanConfig`]) come from the CNI conf:
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `master` | the node's uplink, parent of the pods' ipvlan slaves | interface of the node's default route |
//! | `mode` | `l2`, `l3`, `l3s` | `l2` |
//! | `flag` | `bridge`, `private`, `vepa` | `bridge` |
//! | `mtu` | pod MTU (≤ the master's) | the master's, minus ESP overhead with `encrypt` |
//! | `encrypt` | pod traffic to other nodes goes through the node's xfrm mesh | `false` |
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "pods", "type": "scrambler-cni", "backend": "ipvlan",
//!  "master": "eth0", "mode": "l3", "encrypt": true,
//!  "ipam": {"type": "host-local", "subnet": "10.1.1.0/24"}}
//! ```
//!
//! Errors: a `master` that does not exist, or that is itself an ipvlan slave, fails with
//! code 7 naming it; so does no `master` on a node without a default route.
//!
//! # Which modes can be encrypted
//!
//! The xfrm mesh (scrambler-xfrm) encrypts what the node *routes* to another node's pod
//! CIDR: its xfrm policies are looked up on the node's output/forward path.
//!
//! - **`l3`**: the master routes every packet of a slave with the node namespace's routing
//!   table (`ip_route_output` + `ip_local_out` in the master's namespace), so packets to
//!   other nodes' pod CIDRs meet the node's xfrm policies and leave as ESP. Inbound ESP is
//!   decrypted by the node and the inner packet is handed to the slave owning the
//!   address. Netfilter of the node does not see the pods' traffic.
//! - **`l3s`**: as `l3`, and the traffic also passes the node's netfilter hooks
//!   (conntrack, iptables), at some cost. Encryptable too.
//! - **`l2`**: the slave's frames are switched by the ipvlan driver directly onto the
//!   master's wire; they never enter the node's IP routing, so no xfrm policy ever
//!   matches and they cannot be steered into ESP. `"encrypt": true` with `l2` is refused
//!   (code 7) rather than silently sending cleartext.
//!
//! The attachment itself does not program the mesh (the node agent does, with the pods'
//! CIDRs per node); with `encrypt` it only picks an MTU that leaves room for ESP.
#![warn(missing_docs)]

pub mod attach;
pub mod config;
pub mod netlink;

pub use attach::IpvlanAttach;
pub use config::{Flag, IpvlanConfig, Mode};
