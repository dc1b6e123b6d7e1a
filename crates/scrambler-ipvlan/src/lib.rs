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
//! | `clusterCidrs` | the cluster's pod CIDRs (re-routed into the mesh, never cleartext on the master); **required** with `encrypt` (code 7 without) | none |
//! | `stateDir` | with `encrypt`: absolute directory of the attachment records ([`record`]; those of network `N` in `stateDir/N/`); the node-wide registry and lock are elsewhere (see below) | `/run/scrambler-ipvlan` |
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "pods", "type": "scrambler-cni", "backend": "ipvlan",
//!  "master": "eth0", "mode": "l3", "encrypt": true, "clusterCidrs": ["10.1.0.0/16"],
//!  "ipam": {"type": "host-local", "subnet": "10.1.1.0/24"}}
//! ```
//!
//! Errors: a `master` that does not exist, or that is itself an ipvlan slave, fails with
//! code 7 naming it; so does no `master` on a node without a default route,
//! `"encrypt": true` without `"clusterCidrs"`, and a master or mode that conflicts with
//! another network's encrypted pods on the node (see "Several networks on one node").
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
//! - **`l3`**: the master routes every packet of a slave in the node namespace
//!   (`ip_route_output_flow` + `ip_local_out`; netfilter OUTPUT/POSTROUTING of the node
//!   apply), but that lookup is bound to the master and does *no* xfrm policy lookup
//!   (ipvlan's flow has no protocol): on its own it never reaches the mesh. The node
//!   setup below re-routes it from the OUTPUT hook into the mesh's xfrm interface.
//! - **`l3s`**: as `l3`, and inbound traffic also passes the node's netfilter hooks
//!   (PREROUTING/INPUT via l3mdev). Same encryption path.
//!
//! # The node setup for `"encrypt": true` (automated)
//!
//! Two things on the node make the mesh carry `l3`/`l3s` pods; [`IpvlanNode`] makes them
//! (tested end to end in `tests/vm.rs`, `vm_ipvlan_l3{,s}_encrypted_by_xfrm_mesh_is_esp_only_on_the_wire`:
//! ESP only on the wire, Debian's 6.1 kernel):
//!
//! 1. **Re-route outbound pod traffic.** ipvlan's own route lookup is bound to the master
//!    (`oif` = master), so it skips the mesh's routes into the xfrm interface and takes the
//!    master's route (the default gateway): without more, pod traffic to other nodes would
//!    leave in the clear. A mark set in a netfilter `route` chain on every packet from the
//!    node's pod CIDRs makes the node re-route it (`ip_route_me_harder`) with its full
//!    tables, rules and xfrm policies: into the xfrm interface, which encrypts it, for other
//!    nodes' pods and other nodes' underlay addresses (the mesh's rule `from <pod CIDR>`,
//!    e.g. the `kubernetes` Service on a control-plane node's address); the rest goes out
//!    by the node's routes as before (so a pod's egress follows the node's routing table,
//!    not only the master's routes). [`nft`] keeps this in the nftables table
//!    `ip scrambler-ipvlan` (chain `reroute`), with a `guard` chain dropping pod-to-cluster
//!    packets that would leave the master in the clear (before the mesh has a route to a
//!    new node, say).
//! 2. **A node-side l3 slave for inbound.** ESP is decrypted on the xfrm interface, not on
//!    the master, so the ipvlan driver never sees the inner packet; the node forwards it
//!    to its pods through a slave of its own, [`node::NODE_LINK`], with the node's pod
//!    CIDRs routed to it and IP forwarding on.
//!
//! **Who calls it:** the CNI ADD of every `"encrypt": true` pod (idempotent and cheap: a
//! few netlink requests and one atomic `nft -f -`), the way Calico's or Cilium's agents
//! keep their node setup, so an ipvlan node needs nothing but the mesh
//! (`scrambler mesh apply`) and this conf. The node's pod CIDRs are the IPAM's subnets;
//! the cluster CIDRs come from the conf's `"clusterCidrs"` (required with `"encrypt"`: a
//! conf without them is refused with code 7 rather than running without cleartext guard). ADD registers the pod
//! (a host route out of the node link), DEL unregisters it, and the DEL of the node's last
//! pod removes the whole setup ([`IpvlanNode::remove`] does so at any time); CHECK reports a
//! pod whose addresses the setup does not route.
//!
//! # Several networks on one node
//!
//! The node setup is one per node, shared by every `"encrypt": true` network with pods
//! there, so it is kept from a node registry ([`registry`]) in one fixed place per node
//! namespace, `/run/scrambler-ipvlan/_node/<netns inode>/` (one entry per network: its
//! master, mode, pod and cluster CIDRs and `stateDir`), never in a network's `stateDir`.
//! ADD, DEL and GC of every network change it under one exclusive lock per node namespace
//! ([`lock::NodeLock`], `/run/scrambler-ipvlan/_node/<netns inode>.lock`), so an ADD never
//! registers its pod with a setup that another invocation is narrowing or removing.
//!
//! - The nftables table is the union of every network's own rules (its pod CIDRs
//!   re-routed, its cluster CIDRs guarded on the master); a network's
//!   rules leave the table, in one atomic rewrite, when its last pod on the node goes.
//! - Pods are counted from the attachment records of every network, never from the links
//!   or routes that happen to exist: the table and the node link go only when no network
//!   has a record left on the node (a DEL that finds `scr-ipvl` missing keeps the others'
//!   guard; the next ADD makes the link again, with every recorded pod's route).
//! - One master, one mode: the node link sits on one master and the kernel has one ipvlan
//!   mode per master (a slave in another mode switches every slave of that master; in `l2`
//!   the encrypted pods' traffic would bypass the node's routing). An encrypted network on
//!   another master than the node's encrypted pods, and any ipvlan ADD in another mode on
//!   their master, are refused with code 7 naming the network in the way, leaving nothing
//!   behind; so is an encrypted network whose own master, mode or `stateDir` changed while
//!   it has pods on the node. Use one master per node for encrypted ipvlan networks.
//!
//! (Tested with two networks on one node in `tests/vm.rs`,
//! `vm_ipvlan_two_encrypted_networks_share_the_node_setup`.)
//!
//! **DEL after the pod's namespace is gone** (kubelet after a crashed runtime; CNI requires
//! DEL to succeed then) cannot read the pod's addresses from its interface, so ADD first
//! records them, one small file per attachment ([`record`]: `stateDir/<network>/<container
//! id>:<ifname>`, written atomically before anything is made, removed when a failed ADD
//! is undone). DEL unregisters the addresses of the interface and of the record, and
//! deletes the record; with the namespace gone the record alone names them, so that pod's
//! host route — and, for the node's last pod, the whole setup — goes. The default
//! `stateDir` is on tmpfs, like the kernel state it describes: after a reboot neither
//! exists. [`IpvlanAttach::gc`] (CNI GC) unregisters and deletes the records of this
//! network's attachments on this node that the runtime no longer lists (an address a
//! listed attachment also holds stays), removing the setup when no pod is left
//! (scrambler-cni's GC reaches it once its `CniBackend` impl for [`IpvlanAttach`]
//! forwards `gc`, as it does for its veth backend).
//!
//! Limits: a pod attached by a version without records, whose DEL comes after its
//! namespace is gone, still leaves its host route (and so the setup) until
//! [`IpvlanNode::remove`]; records of a network made before the node registry existed keep
//! the setup as it is (never narrowed) until that network's next ADD registers it, and
//! until then an encrypted ADD of another network is refused (code 7, naming it: its rules
//! are unknown, so they cannot be merged); GC does
//! not touch the interface of an unlisted attachment whose namespace still exists (the
//! record does not name the namespace); `ip_forward` is left on; unencrypted ipvlan pods in
//! another mode on a master are not seen from the node (they live in pod namespaces), so an
//! encrypted network's first ADD on that master switches them to its mode. The `nft` binary
//! (Debian package `nftables`) must be installed.
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "pods", "type": "scrambler-cni", "backend": "ipvlan",
//!  "master": "eth0", "mode": "l3", "encrypt": true, "clusterCidrs": ["10.244.0.0/16"],
//!  "ipam": {"type": "host-local", "subnet": "10.244.1.0/24"}}
//! ```
#![warn(missing_docs)]

pub mod attach;
pub mod config;
pub mod lock;
pub mod nft;
pub mod node;
pub mod record;
pub mod registry;
pub mod slave;

pub use attach::IpvlanAttach;
pub use config::{Flag, IpvlanConfig, Mode};
pub use node::IpvlanNode;
