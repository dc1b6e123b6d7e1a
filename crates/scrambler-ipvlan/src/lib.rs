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
//! | `encrypt` | pod traffic to other nodes goes through the node's xfrm mesh (l3/l3s only; see below) | `false` |
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
//! The xfrm mesh (scrambler-xfrm) encrypts what the node *routes* into its xfrm interface
//! (routes to the other nodes' pod CIDRs, policies and SAs carrying the mesh's `if_id`).
//!
//! - **`l2`**: the slave's frames are switched by the ipvlan driver directly onto the
//!   master's wire; they never enter the node's IP routing, so they cannot be steered
//!   into ESP. `"encrypt": true` with `l2` is refused (code 7) rather than silently
//!   sending cleartext.
//! - **`l3`**: the master routes every packet of a slave with the node namespace's routing
//!   table (`ip_route_output_flow` + `ip_local_out` in the node namespace; netfilter
//!   OUTPUT/POSTROUTING of the node apply), so packets to other nodes' pod CIDRs take the
//!   mesh's routes into its xfrm interface. Note that the kernel does *no* xfrm policy
//!   lookup for them on that route lookup (ipvlan's flow has no protocol), so only the
//!   interface-based mesh (routes into the xfrm interface) can catch them, not plain
//!   policy-based xfrm.
//! - **`l3s`**: as `l3`, and inbound traffic also passes the node's netfilter hooks
//!   (PREROUTING/INPUT via l3mdev). Same encryption path.
//!
//! With `encrypt` the attachment only picks an MTU that leaves room for ESP; the mesh and
//! the node setup below are the node agent's job (tested end to end in
//! `tests/vm.rs`, `vm_ipvlan_l3_encrypted_by_xfrm_mesh_is_esp_only_on_the_wire`: ESP only
//! on the wire, Debian's 6.1 kernel):
//!
//! 1. **Re-route outbound pod traffic.** ipvlan's own route lookup is bound to the master;
//!    the packet does land in the mesh's xfrm interface, but that interface then finds no
//!    SA bundle for it and drops it (tx carrier errors; fail-closed: nothing reaches the
//!    wire). A mark set in a netfilter `route` chain makes the node re-route the packet
//!    (`ip_route_me_harder`), after which the xfrm interface encrypts it:
//!    `nft add chain ip scrambler-ipvlan out '{ type route hook output priority mangle; }'`,
//!    `nft add rule ip scrambler-ipvlan out ip saddr <cluster cidr> ip daddr <cluster cidr> meta mark set 0x5c`.
//! 2. **A node-side l3 slave for inbound.** ESP is decrypted on the xfrm interface, not on
//!    the master, so the ipvlan driver never sees the inner packet; the node forwards it
//!    to its pods through a slave of its own:
//!    `ip link add ipvl0 link <master> type ipvlan mode l3`, `ip route add <node pod cidr>
//!    dev ipvl0`, `net.ipv4.ip_forward=1`.
#![warn(missing_docs)]

pub mod attach;
pub mod config;
pub mod netlink;
pub mod nft;
pub mod node;

pub use attach::IpvlanAttach;
pub use config::{Flag, IpvlanConfig, Mode};
pub use node::IpvlanNode;
