//! # scrambler-xfrm
//!
//! Scrambler's kernel IPsec dataplane: an ESP tunnel-mode full mesh between nodes,
//! programmed straight over XFRM netlink (no IKE daemon, no `ip` command), implementing
//! [`scrambler_core::Tunnel`] for any network namespace given by path.
//!
//! ## What it installs on a node
//! For every peer, and every pair (local pod CIDR, peer pod CIDR) of one family:
//! * policies `out` (local → peer), `in` and `fwd` (peer → local): allow with one ESP
//!   tunnel template between the two underlay addresses, reqid `reqid_base | peer id`,
//!   carrying the interface's `if_id`;
//! * one outbound state for `keys.tx` and one inbound state per generation in `keys.rx`:
//!   ESP tunnel mode, AEAD `rfc4106(gcm(aes))` with key‖salt and SPI from
//!   [`scrambler_core::ClusterSecret::sa`] (both ends' ids and epochs and the generation),
//!   128-bit ICV, ESN with a replay window of
//!   [`scrambler_core::esp::REPLAY_WINDOW`] (`XFRMA_REPLAY_ESN_VAL`), same reqid and if_id;
//! * a route to the peer's pod CIDR through the xfrm interface (protocol
//!   [`XfrmConfig::route_protocol`]), with the node's tunnel address as its source;
//! * for pods ↔ the peer's underlay address (see Pods ↔ other nodes' underlay addresses):
//!   mesh policies `out` local pod CIDR → peer underlay, `in`/`fwd` back, `out` local
//!   underlay → peer pod CIDR, `in` back, and a route to the peer's underlay address
//!   through the interface in [`XfrmConfig::route_table`].
//!
//! And once per node: the fail-closed guard for the mesh's `clusterCidrs` (see Fail
//! closed), the node's tunnel address on the interface (see Node ↔ remote pods), and one
//! rule `from <local pod CIDR> lookup <route_table>` per local pod CIDR.
//!
//! ## Route-based: an xfrm interface with an if_id
//! Policy-based IPsec sends traffic in the clear whenever no policy matches it (a peer
//! not yet known, a policy being replaced, a mesh being removed). Here traffic reaches
//! ESP because a route sends it into one xfrm interface per node (`scrambler0`, fixed
//! [`XfrmConfig::if_id`]); the interface looks up policies with its if_id, and only the
//! mesh policies and states carry it. Chosen over Cilium-style marks because it needs no
//! packet marking (iptables/eBPF) and no coordination of mark bits with other software,
//! counters per interface come for free, and `ip route` shows what is encrypted. The
//! interface gets `disable_xfrm=1` so that IPv4 routes through it skip the if_id-0 lookup —
//! the one the guard below lives in — leaving the interface's own lookup to apply the mesh
//! policies (IPv6 has no such switch: see IPv6). The kernel of the build machine lacks xfrm interfaces: [`LinkMode::Existing`]
//! routes through an existing link instead, so plan, diff, policies and routes are tested
//! there, and interface creation in the VM tests (`vm_*`).
//!
//! ## Node ↔ remote pods
//! Each node has a tunnel address: the first address of its first pod CIDR of each family
//! ([`scrambler_core::Node::tunnel_addresses`], IPAM's default gateway address, never a
//! pod's). With [`LinkMode::Create`] Scrambler puts it (as a host prefix) on the xfrm
//! interface and gives the routes to the peers' pod CIDRs that source, so the node's own
//! traffic to remote pods — hostNetwork pods, the API server calling webhooks, kube-proxy's
//! NodePort/LoadBalancer masquerade (which takes the outgoing interface's address) — is
//! local-pod-CIDR → remote-pod-CIDR traffic that the mesh policies encrypt, and the replies
//! come back the same way. A remote pod reaches the node at its tunnel address, which lies
//! in the node's pod CIDR, through the mesh. (Chosen over a separate node CIDR or extra
//! policies per node address: no new mesh field, no new policies, and every dataplane can
//! derive every node's address from the mesh.)
//!
//! ## Pods ↔ other nodes' underlay addresses
//! Pods reach other nodes at their underlay (host) addresses too — the `kubernetes`
//! Service DNATed to a control-plane node's address, kubelets, hostNetwork pods addressed
//! by node IP — through the mesh, between the same two underlay addresses as the pods'
//! traffic. Only pod-sourced packets are steered, with policy routing: a rule
//! `from <local pod CIDR> lookup <route_table>` at [`XfrmConfig::rule_priority`] (after
//! the local table's rule, so a pod reaching its own node is untouched; before the main
//! table's) and, in that table, `<peer underlay> dev <interface>`. The node's own packets
//! to its peers — ESP above all — do not come from a pod CIDR and keep the main table's
//! route (with node encryption, all but ESP and the bypass ports are steered too: see Node
//! encryption); ESP never loops into the mesh. The interface applies mesh policies `out` local pod CIDR
//! → peer underlay; the peer accepts the decrypted packets with `in` local pod CIDR →
//! its underlay (both ends plan the mirror pairs) and its host's replies go back with
//! `out` its underlay → our pod CIDR, accepted by `in`/`fwd` here. A DNAT in front (a
//! ClusterIP to the peer's address:6443) works: routing sees the translated destination
//! and the replies come back the same way. A peer's host calling a NodePort or hostPort
//! here served by a local pod gets its replies through the mesh (`out` local underlay →
//! peer underlay: the reply is routed by its pod source, then the DNAT is undone), hence
//! `rp_filter = 2` on the interface; its request passes reverse-path filtering on the
//! underlay only when that is loose or off (the reverse lookup meets the rule). Fail closed: no state → the interface drops; no
//! interface, no route in the table or no rule → the main table's route meets the guard's
//! block local pod CIDR → peer underlay; cleartext arriving from `S` at this node's
//! underlay address meets the `in` guard. Rules and
//! table routes are owned by priority, table and protocol ([`XfrmConfig::route_protocol`]),
//! reconciled like the other routes and removed by both removals (the guard stays with
//! `remove_keeping_guard`). A missing (or foreign-changed) rule or table route shows in the
//! status: every peer (a rule) or that peer (its route) is not `steering`, and
//! [`UNDERLAY_RULE_MISSING`] / `<peer>/`[`UNDERLAY_ROUTE_MISSING`] count in its errors.
//!
//! ## Node encryption
//! With the mesh's `nodeEncryption` ([`scrambler_core::NodeEncryption`]) the node's own
//! traffic (host namespace: kubelet, hostNetwork pods, any socket) to its peers' underlay
//! addresses rides the mesh too, except ESP itself and the bypass ports (tcp/udp, as
//! source or destination port, both directions). Connections keep their addresses: the
//! inner packet is `m → u` (local underlay → peer underlay), inside ESP between the pair's
//! outer addresses, so both ends need it (the peer's replies come back the same way).
//! Planned per peer and per underlay address `u` of a family the local node has an
//! address `m` of (see `Desired::plan_node_encryption`):
//! * policy-routing rules in Scrambler's rule band ([`RULE_BAND`], after the pods' rule),
//!   per family, constant in the number of peers: `ipproto tcp|udp sport|dport N goto
//!   <nop>` per bypass port, `ipproto tcp|udp|sctp|icmp (ipv6-icmp) lookup <route_table>`,
//!   and the `nop` rule at the band's last priority that the bypass rules go to. A
//!   destination that is not a peer's underlay address finds no route in the table and
//!   falls through to the main table. ESP is never steered: the route lookup of an ESP
//!   packet's outer header carries protocol 0 (older kernels) or 50 (kernels with "xfrm:
//!   respect ip protocols rules criteria when performing dst lookups", e.g. Debian's
//!   6.1.0-57, measured in `vm_xnode_*`), which no rule names, so ESP never loops into the
//!   mesh (the VM test counts ESP packets against the probes);
//! * the route `u dev <interface> src m` in the table: an unbound socket's packet gets
//!   `m` as its source and meets the mesh policies `out m → u` / `in u → m`, planned
//!   whenever node encryption is on (also on a node without local pods of that family);
//!   and `fwd u → m`: a peer's host calling this node's address DNATed to a pod on another
//!   node (a NodePort) is decrypted here and forwarded, and the forward check sees the
//!   pre-DNAT addresses `u → m`; the pod's reply, un-NATed to `m → u`, is steered into
//!   the interface by the rules (they match forwarded packets too) and meets `out m → u`;
//! * IPv4: a block `out m → u` in the guard's slot and allows `out m → u proto P sport N`
//!   / `dport N` per bypass port at the bypass priority. Steered packets never meet them
//!   (`disable_xfrm`); without the rules (deleted behind Scrambler's back, before the
//!   first reconcile after `mesh remove`) the node's IPv4 traffic to its peers is refused
//!   (`EPERM`) except on the bypass ports. They belong to the guard:
//!   `remove_keeping_guard` keeps them, `remove` and turning node encryption off take them
//!   away;
//! * a peer leaving the mesh fails closed, in both families: its IPv4 host block and the
//!   allows of the current bypass ports stay (tombstones, like the pods' underlay blocks:
//!   kept by reconcile and `remove_keeping_guard` until `remove`, or until node encryption
//!   is turned off; an allow whose port left the bypass list goes), and so does its route
//!   `u dev <interface>` in the table (a route tombstone, kept while node encryption is
//!   on, removed with the table's routes): the steering rules still send the node's
//!   traffic to `u` into the interface, which has no policy left for it and drops it (an
//!   ICMP unreachable to the sender) instead of the main table carrying it in cleartext.
//!   Neither is kept for a local underlay address; a node that takes the address later
//!   plans the same objects.
//!
//! Status: a missing or changed rule counts in [`NODE_RULE_MISSING`] (every peer
//! `steering: false`), a missing policy in [`NODE_POLICY_MISSING`] (a missing block also
//! makes `fail_closed` false), a route without its source in
//! `<peer>/`[`UNDERLAY_ROUTE_MISSING`]; a reconcile puts them back.
//!
//! What it does not cover: IPv6 fails closed only while the rules are in place — IPv6 has
//! no `disable_xfrm` and a locally generated packet's if_id-0 lookup names no outgoing
//! interface, so no block `out m → u` could let the steered packets through; with the
//! IPv6 steering rules gone the node's IPv6 traffic to its peers leaves in cleartext
//! (reported as [`NODE_RULE_MISSING`] until a reconcile). The sending side enforces it:
//! cleartext from a peer's underlay address is accepted (no `in` block). Other IP protocols than TCP,
//! UDP, SCTP and ICMP are not steered (on IPv4 the block drops them: GRE or IPIP tunnels
//! between node addresses need their own arrangement). A socket bound to another local
//! address than `m` is steered but matches no mesh policy: the interface drops it. A
//! bypass port inside the ephemeral port range (`net.ipv4.ip_local_port_range`) also
//! bypasses the connections that happen to get it as their source port. Forwarded traffic
//! to a peer's address (not from a local pod) that is not steered is not blocked (the
//! block names `m`). A peer's underlay address of a family the local node has no
//! underlay address of is not covered.
//!
//! ## Fail closed
//! Traffic between pod CIDRs, and between a node and remote pods, never leaves a node in
//! cleartext:
//! * **a route is missing** (agent down before programming it, interface deleted, a peer
//!   not yet or no longer in the mesh): the packet follows another route (the default one)
//!   and meets the *guard* — policies without if_id, in a lower-precedence slot of
//!   Scrambler's priority band, for every cluster supernet `S` of the mesh's
//!   `clusterCidrs` (plus [`XfrmConfig::guard_supernets`]): block `out` anything → `S`
//!   (pods' and the node's own traffic to any pod CIDR of the cluster, known peer or not),
//!   block `out` each local pod CIDR → each peer's underlay address (a pod's packet to
//!   another node's host address that the mesh does not carry; remote pods' packets
//!   forwarded here are a NodePort's replies, whose NAT is undone after the lookup), block `in`/`fwd` `S` → local pod CIDRs
//!   (cleartext from remote pods), block `in` `S` → the local underlay addresses
//!   (cleartext from remote pods to this host). Bypass policies keep node-local
//!   pod traffic flowing: `out` anything → local pod CIDRs, `in`/`fwd` local → local, `in`
//!   local pod CIDRs → local underlay addresses. Removing a peer leaves the guard, its
//!   underlay block included (a tombstone: underlay addresses have no supernet, so a
//!   pod's connection to a departed peer's host would otherwise go on in cleartext;
//!   reconcile never deletes such a block, except one naming a local underlay address,
//!   and a status ignores it); [`XfrmTunnel`]'s
//!   `remove_keeping_guard` (the node tool's `mesh remove`) takes everything else away and
//!   leaves it, so pods that still run cannot leak; only `remove` takes the guard too;
//! * **a state is missing, expired or being replaced**: the mesh policy's template is
//!   required (not optional), so a lookup without a state fails and the xfrm interface
//!   drops the packet; an xfrm interface never sends anything it could not encrypt;
//! * **inbound cleartext** from a remote pod CIDR (not decrypted by our states) meets the
//!   `fwd`/`in` guard and is dropped; decrypted packets carry the interface's if_id and
//!   match the mesh `in`/`fwd` policies instead;
//! * the agent being down changes nothing: everything lives in the kernel, with no
//!   lifetimes;
//! * **an outbound state lost** while its generation is live (deleted behind our back)
//!   is *not* re-created, and one whose attributes changed under the same key (e.g. the
//!   local underlay address) is left as it is, *not* replaced: the same key with
//!   restarted sequence numbers would reuse AES-GCM nonces, and the state left in place
//!   keeps proving that the key has sent (one under other key material is replaced: a
//!   new key starts its own sequence); nor is one whose pair's underlay address changed
//!   (its (daddr, SPI) moves, its key does not): an owned state holding the key of a
//!   desired outbound state under another (daddr, SPI) counts as having sent, and stays
//!   as that proof. Traffic to that peer stays dropped, `status` reports
//!   [`LOST_OUTBOUND`], and a new epoch for the node (or [`rotate`] to a new generation)
//!   repairs it. A node whose states vanished entirely (a reboot, a flush) cannot tell
//!   from its dataplane: it comes back with a new epoch, so every key it installs is new,
//!   and the node's ledger ([`scrambler_core::Ledger`], used by `scrambler mesh apply`)
//!   refuses to install an outbound SA it installed before.
//! * reconcile installs the guard first, inbound states before policies, outbound states
//!   after them, routes last, and deletes only after all that.
//!
//! ## Ownership
//! A policy is Scrambler's when its priority lies in
//! `[priority_base, priority_base + PRIORITY_BAND)` and its if_id is Scrambler's or 0; a
//! state when its reqid is `reqid_base | id` and its if_id is Scrambler's; a route when it
//! goes through the interface with Scrambler's protocol number (in the main table, or in
//! [`XfrmConfig::route_table`]), or is `unreachable` in the main table with that protocol
//! and [`UNREACHABLE_METRIC`]; a rule when it carries the route protocol, a priority of
//! the rule band ([`XfrmConfig::rule_priority`] + 0..[`RULE_BAND`]) and exactly the shape
//! Scrambler gives that priority (`from <prefix> lookup <route_table>`, node encryption's
//! bypass, steering and `nop` rules), matching nothing else; a policy with a protocol or
//! port selector only of the exact shape of node encryption's bypass allows. Dumps consider nothing else; a foreign object holding the kernel
//! identity of a desired one stops reconcile with [`scrambler_core::Error::AlreadyExists`] before anything changes.
//!
//! ## Reconcile
//! Dump policies and states of the namespace, diff against the plan, then send adds,
//! in-place updates (`XFRM_MSG_UPDPOLICY`; inbound states, whose keys cannot change in
//! place, are deleted and re-added; an outbound state changed under the same key is left
//! in place and its peer reported lost, see Fail closed) and deletes pipelined on one socket, checking every ACK. A
//! second reconcile is a no-op; adding or removing one peer costs that peer's requests.
//!
//! ## Rotation
//! [`rotate`] drives the three steps of [`scrambler_core::Keys`] across several nodes.
//!
//! ## IPv6
//! Underlay and pod CIDRs may be of either family, independently: every policy pair and
//! route is planned per family, the templates and states between the two nodes'
//! underlay addresses (whatever their family) carry both inner families — states are
//! installed with `af-unspec` (no selector family), which the kernel needs for IPv4 in
//! IPv6 and IPv6 in IPv4 — and the guard covers every `clusterCidrs` entry of either
//! family. IPv6 has no `disable_xfrm`: a packet routed into the interface first meets the
//! if_id-0 lookup (the guard's slot), so with an IPv6 pod CIDR reconcile adds the
//! *interface bypass*, an allow policy without template `out ::/0 → ::/0` whose selector
//! names the interface (`dev`, matched against a forwarded packet's outgoing device) at
//! the bypass priority: what is routed into the interface passes to its own lookup, what
//! leaves by any other device still meets the guard. It follows the interface's index (a
//! re-created interface moves it). With [`LinkMode::Existing`], IPv6 pod CIDRs need the
//! given interface to be an xfrm interface with [`XfrmConfig::if_id`] (reconcile refuses
//! them otherwise: another interface would not encrypt what the bypass lets through), and
//! a policy naming an interface is Scrambler's only of the bypass's exact shape. The selector sees the flow's outgoing interface, and
//! a reply of the node itself names the interface its request came in on (an ICMPv6
//! echo reply, a UDP reply with `IPV6_PKTINFO`); IPv6's output lookup does not insist on
//! that interface, so with the route `<peer pod CIDR> dev <interface>` missing it would
//! take the default route, past the guard, in cleartext. Reconcile therefore puts an
//! `unreachable` route to every IPv6 cluster supernet in the main table (Scrambler's
//! protocol, metric [`UNREACHABLE_METRIC`]: every other route to the prefix and every
//! more specific one wins) before the guard, and only `remove` (after the guard) takes it
//! away; a missing one shows as [`UNREACHABLE_ROUTE_MISSING`] and `fail_closed: false`.
//! Tested end to end in `vm_xfrm6_*`.
//!
//! ## MTU
//! The interface MTU is the underlay MTU minus the ESP overhead
//! ([`scrambler_core::esp::esp_overhead`]); [`XfrmTunnel::pod_mtu`] gives the CNI the
//! same for pod veths.
//!
//! ## Known limits
//! * The tunnel itself does not know whether a key has sent before: a node whose states
//!   vanish entirely (reboot, `ip xfrm state flush`) and is reconciled to the *same* mesh
//!   would re-create its outbound states with the same keys and sequence numbers from 1
//!   (AES-GCM nonce reuse, replay drops at the peers). Keys bind both nodes' epochs, so
//!   such a node must come back with a new epoch (fresh keys and SPIs with every peer, no
//!   rotation); the caller's ledger ([`scrambler_core::Ledger`]) is what refuses the same
//!   mesh — `scrambler mesh apply` uses it, an embedder calling [`XfrmTunnel`] directly
//!   must too. A single lost outbound state is detected and not re-created (see Fail
//!   closed), except during step 2 of a rotation.
//! * Node ↔ remote pod traffic is encrypted when the node sends from its tunnel address
//!   (the routes' source, and what masquerade picks) or from its underlay address; a
//!   socket bound to another node address matches no mesh policy and its packets are
//!   dropped by the interface, not leaked. With [`LinkMode::Existing`] Scrambler neither puts the
//!   tunnel address on the interface nor sets the routes' source: the interface's owner
//!   does.
//! * Pods reach known peers' underlay addresses through the mesh. The underlay address of
//!   a node the mesh does not know yet is not covered (no policy or route can name it);
//!   the node's own traffic to its peers' underlay addresses rides the mesh only with
//!   node encryption (see Node encryption). A peer whose dataplane cannot take these packets (a VPP node, today)
//!   receives them encrypted and drops them.
//! * The node's own IPv6 traffic to remote pods (and a remote pod's TCP to the node's
//!   IPv6 addresses) is dropped, not encrypted: IPv6 has no `disable_xfrm`, and a locally
//!   generated packet's if_id-0 lookup carries no outgoing interface, so the IPv6 interface
//!   bypass (see IPv6) does not apply and the guard drops it (fail closed). With
//!   [`LinkMode::Existing`], the interface's owner must set `disable_xfrm=1` on it, and
//!   `rp_filter=2` (loose) for pods to reach other nodes' underlay addresses (Scrambler
//!   sets both on the interface it creates).
//!
//! ```no_run
//! use scrambler_core::{ClusterSecret, Cluster, Netns, Tunnel};
//! use scrambler_xfrm::{XfrmConfig, XfrmTunnel, StatusTable};
//! # async fn f(cluster: Cluster, secret: ClusterSecret) -> scrambler_core::Result<()> {
//! let tunnel = XfrmTunnel::new(XfrmConfig::default())?;
//! let netns = Netns::named("node1");
//! let mesh = cluster.mesh_for("node1")?;
//! tunnel.reconcile(&netns, &mesh, &secret).await?;
//! assert!(tunnel.reconcile(&netns, &mesh, &secret).await?.is_noop());
//! print!("{}", StatusTable(&tunnel.status(&netns, &mesh).await?));
//! tunnel.remove(&netns).await?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod config;
mod diff;
#[cfg(test)]
mod fuzz;
mod guard;
mod link;
mod model;
mod nl;
mod plan;
mod rotation;
mod status;
mod tunnel;

pub use config::{
    LinkMode, XfrmConfig, DEFAULT_IF_ID, DEFAULT_INTERFACE, DEFAULT_PRIORITY_BASE,
    DEFAULT_REQID_BASE, DEFAULT_ROUTE_PROTOCOL, DEFAULT_ROUTE_TABLE, DEFAULT_RULE_PRIORITY,
    PRIORITY_BAND, RULE_BAND, UNREACHABLE_METRIC,
};
pub use guard::guard_in_place;
pub use rotation::{rotate, RotationReport};
pub use status::{
    parse_xfrm_stat, StatusTable, LOST_OUTBOUND, NODE_POLICY_MISSING, NODE_RULE_MISSING,
    UNDERLAY_ROUTE_MISSING, UNDERLAY_RULE_MISSING, UNREACHABLE_ROUTE_MISSING,
};
pub use tunnel::{Capabilities, Inventory, XfrmTunnel};

/// The README's examples ("Embedding the crates"), compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
