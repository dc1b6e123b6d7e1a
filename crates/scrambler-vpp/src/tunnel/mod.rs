//! Scrambler's VPP dataplane: the encrypted mesh as per-peer IPIP tunnels protected by ESP.
//!
//! For every peer of the mesh, on the node's VPP:
//!
//! * an IPIP tunnel `local underlay -> peer underlay`, instance [`tunnel_instance`] (so it is
//!   named `ipip<instance>`), tagged `scrambler:peer=<name>`;
//! * ESP SAs, AES-GCM-128 with the key and salt of [`ClusterSecret::sa`], ESN and
//!   anti-replay on: one outbound SA of the mesh's tx generation and one inbound SA per rx
//!   generation, with ids from [`sa_id`];
//! * `ipsec tunnel protect` binding them to the tunnel (VPP encrypts what the tunnel carries:
//!   on the wire it is outer IP / ESP / inner IP, like kernel tunnel-mode ESP);
//! * one route per pod CIDR of the peer, leading either into the protected tunnel or to
//!   drop (see *Fail closed*).
//!
//! What Scrambler owns is recognised by number ranges — tunnel instances
//! `TUNNEL_INSTANCE_BASE..+65536`, SA ids `SA_ID_BASE..+2^24` — and, for routes (VPP routes
//! carry no tag), by the path preference [`ROUTE_PREFERENCE`] (or a path via an owned
//! tunnel); nothing else is ever touched. [`VppTunnel::reconcile`] dumps the state, diffs it
//! against the mesh and changes only what differs; a second run is a no-op.
//!
//! # Fail closed
//!
//! Pod traffic to a peer must never leave in cleartext, nor as plain IPIP, nor out of the
//! uplink by some other (e.g. default) route while the tunnel, its protection or its SAs are
//! missing or being replaced:
//!
//! * **The guard is the route itself.** As long as a peer is in the mesh, each of its pod
//!   CIDRs has an owned route in table 0, so a less specific route never takes its traffic.
//!   Its single path is `drop` until the tunnel is protected and up; then one FIB update
//!   swaps it into the tunnel (and back to drop before anything is taken away), so there is
//!   no moment without a route.
//! * **Order in reconcile**: routes of new peers go in as drop first; before a tunnel is
//!   re-created, an SA replaced or a lost protection restored, the peer's routes go to drop;
//!   then tunnel (admin down), SAs, protection, admin up, and only then routes into the
//!   tunnel. A key rotation changes the protection with one atomic update and needs no drop.
//!   Stale routes go first, stale tunnels and SAs last.
//! * **Pipelined**: the peers are reconciled concurrently on the one API socket (up to 256
//!   in flight, so their round trips overlap), and each phase's independent calls (stale
//!   routes, stale tunnels, stale SAs, the state dumps) are sent together. Within a peer the
//!   order above holds: a call is sent only after the reply of the one it depends on was
//!   checked; only calls that do not depend on each other go out together (a new tunnel's
//!   tag, unnumbered and IPv6; a peer's new SAs). On the first error no further call of any
//!   peer is sent.
//! * **Behind our back** (measured with a real VPP, `tests/failclosed_live.rs`, capturing the
//!   underlay while a pod pings, with a 10/8 route out of the uplink in place): with its
//!   protection deleted VPP does *not* send plain IPIP — the tunnel's midchain adjacency
//!   drops (`ip4-drop`), also after the tunnel or uplink flaps; SAs deleted through the API
//!   stay until the protection releases them; a deleted tunnel leaves its route with a
//!   path that drops. In every case the wire carries only ESP, `status` turns
//!   `encrypted`/`fail_closed` false, and the next reconcile repairs it.
//! * **A lost outbound SA is not re-created** under the same key: its sequence numbers, the
//!   AES-GCM IVs, would restart (nonce reuse, and replay drops at the peer). When the SA is
//!   missing but evidence says it existed (see the docs of the private `outbound_lost`: the
//!   inbound SA of the same generation, or the peer's tunnel, is still there, and no
//!   rotation is switching), the peer stays behind its drop routes, its tunnel down,
//!   `status` reports [`LOST_OUTBOUND`], and a key rotation repairs it. An outbound SA
//!   found with other attributes than planned is likewise not replaced but deleted, and the
//!   peer is lost from then on (re-adding it would restart its sequence numbers under the
//!   same key). A VPP that lost
//!   everything (restart) cannot tell: the agent must rotate the generation then.
//! * Not covered: a third party deleting or overriding Scrambler's route itself (the FIB has
//!   one entry per prefix); `status` then shows `steering` and `fail_closed` false.
//!
//! # Counters
//!
//! `status` reads VPP's statistics segment ([`scrambler_vpp_api::stats`], `stats.sock` beside
//! `api.sock` unless [`VppTunnel::with_stats_socket`] says otherwise): per peer the
//! packets/bytes of its outbound and inbound SAs (all generations, `/net/ipsec/sa` at each
//! SA's `stat_index`), replay drops (`/net/ipsec/sa/err/replay`) and authentication
//! failures (`integ_error` + `decryption_failed`: VPP counts an AES-GCM tag mismatch as the
//! latter). Non-zero per-SA errors summed over peers go into `errors` as `ipsec-sa/<name>`,
//! tunnel interface drops as `<peer>/tunnel-drops`; [`VppTunnel::counters`] gives the full
//! per-peer view including the tunnel interface's rx/tx. Without the segment, `status`
//! still answers, with [`STATS_UNAVAILABLE`] in `errors`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use ipnet::IpNet;
use scrambler_core::keys::SaKey;
use scrambler_core::{
    ClusterSecret, Error, Generation, Mesh, Netns, Node, NodeId, PeerStatus, ReconcileReport,
    Result, Tunnel, TunnelStatus,
};

use crate::endpoint::{fixed_socket, vpp_err, NodeVpp, DATAPLANE};
use scrambler_vpp_api::api::types::{
    Address, FibPath, FibPathNh, FibPathNhProto, FibPathType, IfStatusFlags, IpTable, IpipTunnel,
    IpsecCryptoAlg, IpsecIntegAlg, IpsecProto, IpsecSadEntryV4, IpsecSadFlags, IpsecTunnelProtect,
    TunnelMode,
};
use scrambler_vpp_api::api::{interface, ip, ipip, ipsec};
use scrambler_vpp_api::error::VppError;
use scrambler_vpp_api::stats::{Combined, StatValue, StatsClient, StatsError};
use scrambler_vpp_api::VppClient;

/// First IPIP tunnel instance Scrambler owns; the peer's node id is added.
pub const TUNNEL_INSTANCE_BASE: u32 = 0x5c_0000;
/// First SA id Scrambler owns; ids span 2^24 from here.
pub const SA_ID_BASE: u32 = 0x5c00_0000;
/// Prefix of the interface tag of Scrambler's tunnels.
pub const TAG_PREFIX: &str = "scrambler:peer=";
/// The path preference marking Scrambler's routes (VPP routes carry no tag; with a single
/// path per route the preference does not change forwarding).
pub const ROUTE_PREFERENCE: u8 = 0x5c;

/// Key in [`TunnelStatus::errors`]: peers whose outbound SA was lost while its key
/// generation is live; they stay behind drop routes (fail closed) until a key rotation.
pub const LOST_OUTBOUND: &str = "ScramblerOutboundSaLost";

/// Key in [`TunnelStatus::errors`] when the stats segment could not be read (the packet and
/// byte counters of the peers are then zero, not measured).
pub const STATS_UNAVAILABLE: &str = "ScramblerVppStatsUnavailable";

/// The tunnel instance of the tunnel to `peer`.
pub fn tunnel_instance(peer: NodeId) -> u32 {
    TUNNEL_INSTANCE_BASE + u32::from(peer.get())
}

/// The peer id of an owned tunnel instance.
pub fn tunnel_peer(instance: u32) -> Option<u16> {
    instance
        .checked_sub(TUNNEL_INSTANCE_BASE)
        .and_then(|v| u16::try_from(v).ok())
        .filter(|v| *v != 0)
}

/// Which way an SA protects traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Sent to the peer.
    Outbound,
    /// Received from the peer.
    Inbound,
}

/// The SA id of the SA with `peer` in `dir` for `generation`:
/// `SA_ID_BASE | inbound << 23 | (generation mod 128) << 16 | peer id`.
pub fn sa_id(dir: Direction, peer: NodeId, generation: Generation) -> u32 {
    let d = u32::from(dir == Direction::Inbound);
    SA_ID_BASE
        | d << 23
        | (generation % scrambler_core::keys::SPI_GENERATIONS) << 16
        | u32::from(peer.get())
}

/// True for SA ids in Scrambler's range.
pub fn owned_sa(id: u32) -> bool {
    id & 0xff00_0000 == SA_ID_BASE
}

pub use crate::endpoint::SocketResolver;

/// The VPP dataplane (implements [`Tunnel`]).
///
/// ```no_run
/// use scrambler_core::{ClusterSecret, Netns, Tunnel};
/// use scrambler_vpp::tunnel::VppTunnel;
/// # async fn f(mesh: scrambler_core::Mesh, secret: ClusterSecret) -> scrambler_core::Result<()> {
/// let vpp = VppTunnel::new("/run/vpp/api.sock");
/// let report = vpp.reconcile(&Netns::Current, &mesh, &secret).await?;
/// assert!(vpp.reconcile(&Netns::Current, &mesh, &secret).await?.is_noop());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct VppTunnel {
    vpp: NodeVpp,
    stats: Arc<SocketResolver>,
}

impl std::fmt::Debug for VppTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VppTunnel")
            .field("opts", &self.vpp.opts)
            .finish()
    }
}

impl VppTunnel {
    /// One VPP, whose API socket is `api_socket`, for whatever namespace is passed.
    pub fn new(api_socket: impl Into<PathBuf>) -> Self {
        Self::with_resolver(fixed_socket(api_socket))
    }

    /// A VPP per node: `resolve` maps the node's namespace to its VPP's API socket.
    ///
    /// The stats socket defaults to `stats.sock` beside the API socket (where a
    /// startup.conf with `statseg { socket-name <run dir>/stats.sock }` puts it, as the
    /// lab's does); see [`VppTunnel::with_stats_socket`].
    pub fn with_resolver(
        resolve: impl Fn(&Netns) -> Result<PathBuf> + Send + Sync + 'static,
    ) -> Self {
        let resolve: Arc<SocketResolver> = Arc::new(resolve);
        let api = resolve.clone();
        VppTunnel {
            vpp: NodeVpp::new(resolve, "scrambler-tunnel"),
            stats: Arc::new(move |ns| Ok(api(ns)?.with_file_name("stats.sock"))),
        }
    }

    /// Where the stats segment socket (`statseg { socket-name … }`) of a node's VPP is.
    pub fn with_stats_socket(
        mut self,
        resolve: impl Fn(&Netns) -> Result<PathBuf> + Send + Sync + 'static,
    ) -> Self {
        self.stats = Arc::new(resolve);
        self
    }

    async fn connect(&self, netns: &Netns) -> Result<VppClient> {
        self.vpp.connect(netns).await
    }

    /// The counters of every owned SA and tunnel of the node's VPP, per peer of `mesh`,
    /// read from VPP's statistics segment.
    pub async fn counters(&self, netns: &Netns, mesh: &Mesh) -> Result<Vec<PeerCounters>> {
        let c = self.connect(netns).await?;
        let have = Actual::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        let _ = c.close().await;
        let snap = self.snapshot(netns).await?;
        Ok(mesh
            .peers
            .iter()
            .map(|p| peer_counters(&have, &snap, p))
            .collect())
    }

    /// Reads the counters Scrambler reports from the stats segment (blocking work off the
    /// runtime: a socket round trip and a map).
    async fn snapshot(&self, netns: &Netns) -> Result<Snapshot> {
        let path = (self.stats)(netns)?;
        tokio::task::spawn_blocking(move || Snapshot::read(&path))
            .await
            .map_err(|e| Error::Dataplane {
                dataplane: DATAPLANE.into(),
                op: "read the stats segment".into(),
                reason: e.to_string(),
            })?
    }
}

/// One peer's counters in VPP: its SAs (all generations) and its tunnel interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCounters {
    /// Peer name.
    pub name: String,
    /// Packets and bytes encrypted by the peer's outbound SAs.
    pub sa_out: Combined,
    /// Packets and bytes decrypted by the peer's inbound SAs.
    pub sa_in: Combined,
    /// Per-SA error counters summed over the peer's SAs (`/net/ipsec/sa/err/<name>`),
    /// non-zero ones.
    pub sa_errors: BTreeMap<String, u64>,
    /// Received on the tunnel interface (after decryption).
    pub tunnel_rx: Combined,
    /// Sent into the tunnel interface (before encryption).
    pub tunnel_tx: Combined,
    /// Dropped on the tunnel interface.
    pub tunnel_drops: u64,
}

impl PeerCounters {
    /// Packets that failed authentication: VPP counts an AES-GCM tag mismatch as
    /// `decryption_failed` (the AEAD decrypt fails), a separate ICV as `integ_error`.
    pub fn integrity_errors(&self) -> u64 {
        ["integ_error", "decryption_failed"]
            .iter()
            .filter_map(|k| self.sa_errors.get(*k))
            .sum()
    }
}

/// The counter vectors status needs, from one read of the stats segment.
struct Snapshot {
    sa: StatValue,
    sa_err: Vec<(String, StatValue)>,
    rx: StatValue,
    tx: StatValue,
    drops: StatValue,
}

/// Per-SA error counters worth reporting (`/net/ipsec/sa/err/<name>`).
const SA_ERRORS: &[&str] = &[
    "replay",
    "integ_error",
    "decryption_failed",
    "crypto_engine_error",
    "runt",
    "no_buffers",
    "lost",
    "seq_cycled",
    "tun_no_proto",
];

impl Snapshot {
    fn read(path: &std::path::Path) -> Result<Snapshot> {
        let fail = |e: StatsError| Error::Dataplane {
            dataplane: DATAPLANE.into(),
            op: format!("read counters from {}", path.display()),
            reason: e.to_string(),
        };
        let st = StatsClient::connect(path).map_err(fail)?;
        let mut names = vec![
            "/net/ipsec/sa".to_string(),
            "/if/rx".into(),
            "/if/tx".into(),
            "/if/drops".into(),
        ];
        // per-SA errors exist in newer VPPs only: take the ones present
        names.extend(SA_ERRORS.iter().map(|e| format!("/net/ipsec/sa/err/{e}")));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut v = st.read_present(&refs).map_err(fail)?.into_iter();
        let sa = v
            .next()
            .flatten()
            .ok_or_else(|| fail(StatsError::NotFound("/net/ipsec/sa".into())))?;
        let mut next = || v.next().flatten().unwrap_or(StatValue::Empty);
        let (rx, tx, drops) = (next(), next(), next());
        let sa_err = SA_ERRORS
            .iter()
            .zip(v)
            .filter_map(|(name, val)| Some((name.to_string(), val?)))
            .collect();
        Ok(Snapshot {
            sa,
            sa_err,
            rx,
            tx,
            drops,
        })
    }
}

/// The SA ids of `peer` in Scrambler's numbering, and whether each is inbound.
fn peer_of_sa(id: u32) -> Option<(u16, Direction)> {
    if !owned_sa(id) {
        return None;
    }
    let dir = if id & (1 << 23) != 0 {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    Some(((id & 0xffff) as u16, dir))
}

fn peer_counters(have: &Actual, snap: &Snapshot, peer: &Node) -> PeerCounters {
    let mut pc = PeerCounters {
        name: peer.name.clone(),
        ..Default::default()
    };
    for (id, stat) in &have.sa_stats {
        let Some((p, dir)) = peer_of_sa(*id) else {
            continue;
        };
        if p != peer.id.get() {
            continue;
        }
        let i = *stat as usize;
        let c = snap.sa.combined_sum(i).unwrap_or_default();
        match dir {
            Direction::Outbound => pc.sa_out += c,
            Direction::Inbound => pc.sa_in += c,
        }
        for (name, v) in &snap.sa_err {
            let n = v.simple_sum(i).unwrap_or(0);
            if n > 0 {
                *pc.sa_errors.entry(name.clone()).or_default() += n;
            }
        }
    }
    if let Some(sw) = have.sw_if_index(tunnel_instance(peer.id)) {
        let i = sw as usize;
        pc.tunnel_rx = snap.rx.combined_sum(i).unwrap_or_default();
        pc.tunnel_tx = snap.tx.combined_sum(i).unwrap_or_default();
        pc.tunnel_drops = snap.drops.simple_sum(i).unwrap_or(0);
    }
    pc
}

/// One SA as we want it.
struct SaPlan {
    id: u32,
    key: SaKey,
    dir: Direction,
}

/// One peer as we want it.
struct PeerPlan {
    name: String,
    id: NodeId,
    instance: u32,
    src: IpAddr,
    dst: IpAddr,
    sas: Vec<SaPlan>,
    sa_out: u32,
    sa_in: BTreeSet<u32>,
    routes: BTreeSet<IpNet>,
}

fn plan(mesh: &Mesh, secret: &ClusterSecret) -> Result<Vec<PeerPlan>> {
    mesh.validate()?;
    let local = &mesh.local;
    let mut out = Vec::new();
    for peer in &mesh.peers {
        let Some((src, dst)) = underlay_pair(local, peer) else {
            return Err(Error::config(format!(
                "peer {:?} has no underlay address of the same family as node {:?}",
                peer.name, local.name
            )));
        };
        let mut sas = vec![SaPlan {
            id: sa_id(Direction::Outbound, peer.id, mesh.keys.tx),
            key: secret.sa(local.id, peer.id, mesh.keys.tx),
            dir: Direction::Outbound,
        }];
        for g in &mesh.keys.rx {
            sas.push(SaPlan {
                id: sa_id(Direction::Inbound, peer.id, *g),
                key: secret.sa(peer.id, local.id, *g),
                dir: Direction::Inbound,
            });
        }
        if mesh.keys.rx.len() > 4 {
            return Err(Error::Unsupported(format!(
                "VPP tunnel protection takes at most 4 inbound SAs, the mesh has {} rx generations",
                mesh.keys.rx.len()
            )));
        }
        out.push(PeerPlan {
            name: peer.name.clone(),
            id: peer.id,
            instance: tunnel_instance(peer.id),
            src,
            dst,
            sa_out: sas[0].id,
            sa_in: sas[1..].iter().map(|s| s.id).collect(),
            sas,
            routes: peer.pod_cidrs.iter().map(|c| c.trunc()).collect(),
        });
    }
    Ok(out)
}

fn underlay_pair(local: &Node, peer: &Node) -> Option<(IpAddr, IpAddr)> {
    local
        .underlay
        .iter()
        .find_map(|l| peer.underlay_for(l.is_ipv6()).map(|p| (*l, p)))
}

/// What VPP has of ours.
#[derive(Default)]
struct Actual {
    /// instance -> tunnel
    tunnels: BTreeMap<u32, IpipTunnel>,
    /// sw_if_index -> admin up
    up: HashMap<u32, bool>,
    /// sad_id -> entry
    sas: BTreeMap<u32, IpsecSadEntryV4>,
    /// sad_id -> index of its counters in the stats segment (`/net/ipsec/sa`)
    sa_stats: BTreeMap<u32, u32>,
    /// sw_if_index -> (sa_out, sa_in)
    protects: HashMap<u32, (u32, BTreeSet<u32>)>,
    /// owned routes (marked paths, or paths via an owned tunnel): prefix -> where they lead
    routes: BTreeMap<IpNet, RouteHave>,
}

/// Where an owned route leads.
#[derive(Debug, Clone, PartialEq)]
enum RouteHave {
    /// One marked drop path: the fail-closed guard.
    Drop,
    /// One path via this interface.
    Via(u32),
    /// Anything else (several paths, an unmarked or foreign path shape).
    Other(Vec<FibPath>),
}

impl RouteHave {
    fn of(paths: &[FibPath]) -> RouteHave {
        match paths {
            [p] if p.r#type == FibPathType::FIB_API_PATH_TYPE_DROP
                && p.preference == ROUTE_PREFERENCE =>
            {
                RouteHave::Drop
            }
            [p] if p.r#type == FibPathType::FIB_API_PATH_TYPE_NORMAL
                && p.preference == ROUTE_PREFERENCE =>
            {
                RouteHave::Via(p.sw_if_index)
            }
            _ => RouteHave::Other(paths.to_vec()),
        }
    }
}

impl Actual {
    /// Dumps tunnels, interfaces, SAs, protections and routes (all requests sent
    /// together) and keeps what is ours.
    async fn read(c: &VppClient) -> std::result::Result<Actual, VppError> {
        let route_dump = |is_ip6| ip::IpRouteDump {
            table: IpTable {
                table_id: 0,
                is_ip6,
                name: String::new(),
            },
        };
        let (routes4, routes6) = (route_dump(false), route_dump(true));
        let (tunnels, ifs, sas, protects, routes4, routes6) = tokio::try_join!(
            c.dump(&ipip::IpipTunnelDump {
                sw_if_index: u32::MAX,
            }),
            c.interfaces(),
            c.dump(&ipsec::IpsecSaV5Dump { sa_id: u32::MAX }),
            c.dump(&ipsec::IpsecTunnelProtectDump {
                sw_if_index: u32::MAX,
            }),
            c.dump(&routes4),
            c.dump(&routes6),
        )?;
        let mut a = Actual::default();
        for d in tunnels {
            if tunnel_peer(d.tunnel.instance).is_some() {
                a.tunnels.insert(d.tunnel.instance, d.tunnel);
            }
        }
        let ours: BTreeSet<u32> = a.tunnels.values().map(|t| t.sw_if_index).collect();
        for i in ifs {
            if ours.contains(&i.sw_if_index) {
                a.up.insert(
                    i.sw_if_index,
                    i.flags.contains(IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP),
                );
            }
        }
        for d in sas {
            if owned_sa(d.entry.sad_id) {
                a.sa_stats.insert(d.entry.sad_id, d.stat_index);
                a.sas.insert(d.entry.sad_id, d.entry);
            }
        }
        for d in protects {
            if ours.contains(&d.tun.sw_if_index) {
                a.protects.insert(
                    d.tun.sw_if_index,
                    (d.tun.sa_out, d.tun.sa_in.iter().copied().collect()),
                );
            }
        }
        for r in routes4.into_iter().chain(routes6) {
            let owned = r.route.paths.iter().any(|p| {
                p.preference == ROUTE_PREFERENCE
                    || (p.r#type == FibPathType::FIB_API_PATH_TYPE_NORMAL
                        && ours.contains(&p.sw_if_index))
            });
            if owned {
                if let Some(p) = r.route.prefix.to_ipnet() {
                    a.routes.insert(p, RouteHave::of(&r.route.paths));
                }
            }
        }
        Ok(a)
    }

    fn sw_if_index(&self, instance: u32) -> Option<u32> {
        self.tunnels.get(&instance).map(|t| t.sw_if_index)
    }
}

/// True when the outbound SA of the tx generation was lost (deleted behind our back) rather
/// than never made: re-creating it would restart its sequence numbers — the AES-GCM IVs —
/// under the same key (nonce reuse, and replay drops at the peer). Only a new generation
/// repairs that. Evidence that it was made: outside rotation step 2 (`switching`), the
/// inbound SA of the same generation is here, or the peer's tunnel is (a reconcile makes
/// a tunnel's SAs in the same run) while its protection is gone or still names that SA.
/// A node whose SAs *and* tunnels all vanished (a VPP restart) cannot tell: the agent
/// must rotate the generation then.
fn outbound_lost(have: &Actual, mesh: &Mesh, peer: NodeId) -> bool {
    let switching = mesh.keys.rx.iter().any(|g| *g < mesh.keys.tx);
    let tx = sa_id(Direction::Outbound, peer, mesh.keys.tx);
    if switching || have.sas.contains_key(&tx) {
        return false;
    }
    let rx_of_tx = sa_id(Direction::Inbound, peer, mesh.keys.tx);
    if mesh.keys.rx.contains(&mesh.keys.tx) && have.sas.contains_key(&rx_of_tx) {
        return true;
    }
    match have.tunnels.get(&tunnel_instance(peer)) {
        Some(t) => have
            .protects
            .get(&t.sw_if_index)
            .is_none_or(|(out, _)| *out == tx),
        None => false,
    }
}

/// True when the peer's outbound SA is in VPP with attributes other than planned (its
/// flags, SPI, algorithm, salt or key): it has sent under its key, so it is not replaced —
/// re-adding it would restart its sequence numbers under that key. It stays in VPP, unused
/// (tunnel down and unprotected, routes to drop), so that every later reconcile, also one
/// while a rotation switches, still sees it and keeps the peer lost until a rotation
/// brings a new generation (a deleted SA could not be told from one never made).
fn outbound_changed(have: &Actual, p: &PeerPlan) -> bool {
    p.sas
        .iter()
        .filter(|sa| sa.dir == Direction::Outbound)
        .any(|sa| have.sas.get(&sa.id).is_some_and(|h| kept_outbound(h, sa)))
}

/// True when `have`, VPP's SA for the outbound `want`, differs from it but not in its key
/// material: it is kept, never re-added under that key. One under other key material (a new
/// cluster secret) is replaced: its sequence numbers start again under a new key.
fn kept_outbound(have: &IpsecSadEntryV4, want: &SaPlan) -> bool {
    want.dir == Direction::Outbound && !sa_matches(have, want) && same_key_material(have, want)
}

/// True when `have` holds `want`'s key and salt, or VPP's dump left the key out.
fn same_key_material(have: &IpsecSadEntryV4, want: &SaPlan) -> bool {
    let want_entry = sa_entry(want);
    (have.crypto_key.length == 0 || have.crypto_key == want_entry.crypto_key)
        // VPP keeps the salt as the bytes it received and dumps it byte-swapped
        // (`htonl` of those bytes); accept either order
        && (have.salt.swap_bytes() == want_entry.salt || have.salt == want_entry.salt)
}

/// The SA relevant bits VPP reports back.
fn sa_matches(have: &IpsecSadEntryV4, want: &SaPlan) -> bool {
    let mask = IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN.0
        | IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ANTI_REPLAY.0
        | IpsecSadFlags::IPSEC_API_SAD_FLAG_IS_TUNNEL.0
        | IpsecSadFlags::IPSEC_API_SAD_FLAG_UDP_ENCAP.0;
    let want_entry = sa_entry(want);
    have.spi == want_entry.spi
        && have.protocol == want_entry.protocol
        && have.crypto_algorithm == want_entry.crypto_algorithm
        && have.flags.0 & mask == want_entry.flags.0 & mask
        && same_key_material(have, want)
}

fn sa_entry(sa: &SaPlan) -> IpsecSadEntryV4 {
    let mut flags = IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ANTI_REPLAY;
    if scrambler_core::esp::ESN {
        flags = flags | IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN;
    }
    if sa.dir == Direction::Inbound {
        flags = flags | IpsecSadFlags::IPSEC_API_SAD_FLAG_IS_INBOUND;
    }
    // filled in place: the entry zeroes its key and salt when dropped, a temporary copy
    // of the key would not
    let mut entry = IpsecSadEntryV4::default();
    entry.sad_id = sa.id;
    entry.spi = sa.key.spi;
    entry.protocol = IpsecProto::IPSEC_API_PROTO_ESP;
    entry.crypto_algorithm = IpsecCryptoAlg::IPSEC_API_CRYPTO_ALG_AES_GCM_128;
    entry.crypto_key.length = 16;
    entry.crypto_key.data[..16].copy_from_slice(&sa.key.key);
    entry.integrity_algorithm = IpsecIntegAlg::IPSEC_API_INTEG_ALG_NONE;
    entry.flags = flags;
    // the salt's bytes travel in the order of rfc4106 key material (key ‖ salt)
    entry.salt = u32::from_be_bytes(sa.key.salt);
    entry.anti_replay_window_size = scrambler_core::esp::REPLAY_WINDOW;
    entry.tunnel.instance = u32::MAX;
    entry.tunnel.sw_if_index = u32::MAX;
    entry.tunnel.mode = TunnelMode::TUNNEL_API_MODE_P2P;
    entry
}

/// Where Scrambler steers a peer pod CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Steer {
    /// Drop (the fail-closed guard).
    Drop,
    /// Into the peer's protected tunnel.
    Via(u32),
}

fn route_path(to: Steer, v6: bool) -> FibPath {
    let (sw_if_index, r#type) = match to {
        Steer::Drop => (u32::MAX, FibPathType::FIB_API_PATH_TYPE_DROP),
        Steer::Via(sw) => (sw, FibPathType::FIB_API_PATH_TYPE_NORMAL),
    };
    FibPath {
        sw_if_index,
        weight: 1,
        preference: ROUTE_PREFERENCE,
        r#type,
        proto: if v6 {
            FibPathNhProto::FIB_API_PATH_NH_PROTO_IP6
        } else {
            FibPathNhProto::FIB_API_PATH_NH_PROTO_IP4
        },
        nh: FibPathNh {
            classify_table_index: u32::MAX,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The operations, one VPP call each.
struct Ops<'a> {
    c: &'a VppClient,
}

impl Ops<'_> {
    async fn create_tunnel(&self, p: &PeerPlan, underlay_if: u32) -> Result<u32> {
        let obj = format!("ipip{} to {} ({})", p.instance, p.name, p.dst);
        let r = self
            .c
            .request(&ipip::IpipAddTunnel {
                tunnel: IpipTunnel {
                    instance: p.instance,
                    src: Address::from(p.src),
                    dst: Address::from(p.dst),
                    sw_if_index: u32::MAX,
                    mode: TunnelMode::TUNNEL_API_MODE_P2P,
                    ..Default::default()
                },
            })
            .await
            .map_err(vpp_err("create tunnel", &obj))?;
        let sw = r.sw_if_index;
        let mut tag = format!("{TAG_PREFIX}{}", p.name);
        tag.truncate(63);
        while !tag.is_char_boundary(tag.len()) {
            tag.pop();
        }
        // tag, unnumbered, IPv6: independent of each other, sent together. IP on the
        // tunnel without addresses of its own: borrow the underlay's (IPv4), and enable
        // IPv6 for v6 pod traffic
        let tag = async {
            self.c
                .request(&interface::SwInterfaceTagAddDel {
                    is_add: true,
                    sw_if_index: sw,
                    tag,
                })
                .await
                .map_err(vpp_err("tag", &obj))
        };
        let unnumbered = async {
            self.c
                .request(&interface::SwInterfaceSetUnnumbered {
                    sw_if_index: underlay_if,
                    unnumbered_sw_if_index: sw,
                    is_add: true,
                })
                .await
                .map_err(vpp_err("make unnumbered", &obj))
        };
        let ip6 = async {
            self.c
                .request(&ip::SwInterfaceIp6EnableDisable {
                    sw_if_index: sw,
                    enable: true,
                })
                .await
                .map_err(vpp_err("enable ip6 on", &obj))
        };
        tokio::try_join!(tag, unnumbered, ip6)?;
        Ok(sw)
    }

    /// The interfaces holding the local underlay addresses `addrs` (one interface dump,
    /// then every interface's addresses dumped together).
    async fn underlay_ifs(&self, addrs: &BTreeSet<IpAddr>) -> Result<HashMap<IpAddr, u32>> {
        let mut found = HashMap::new();
        if addrs.is_empty() {
            return Ok(found);
        }
        let ifs = self
            .c
            .interfaces()
            .await
            .map_err(vpp_err("list", "interfaces"))?;
        let families: BTreeSet<bool> = addrs.iter().map(IpAddr::is_ipv6).collect();
        let dumps = ifs.iter().flat_map(|i| {
            families.iter().map(move |v6| async move {
                self.c
                    .dump(&ip::IpAddressDump {
                        sw_if_index: i.sw_if_index,
                        is_ipv6: *v6,
                    })
                    .await
                    .map(|a| (i.sw_if_index, a))
                    .map_err(vpp_err("list addresses of", &i.interface_name))
            })
        });
        for (sw, list) in pipelined(dumps.collect()).await? {
            for a in list {
                if let Some(ip) = a.prefix.address.to_ip().filter(|ip| addrs.contains(ip)) {
                    found
                        .entry(ip)
                        .and_modify(|s: &mut u32| *s = (*s).min(sw))
                        .or_insert(sw);
                }
            }
        }
        match addrs.iter().find(|a| !found.contains_key(a)) {
            Some(addr) => Err(Error::Dataplane {
                dataplane: DATAPLANE.into(),
                op: "find underlay interface".into(),
                reason: format!("the local underlay address {addr} is on no VPP interface"),
            }),
            None => Ok(found),
        }
    }

    async fn delete_tunnel(&self, instance: u32, sw: u32) -> Result<()> {
        self.c
            .request(&ipip::IpipDelTunnel { sw_if_index: sw })
            .await
            .map_err(vpp_err("delete tunnel", &format!("ipip{instance}")))?;
        Ok(())
    }

    async fn set_up(&self, sw: u32, up: bool) -> Result<()> {
        let flags = if up {
            IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP
        } else {
            IfStatusFlags(0)
        };
        self.c
            .request(&interface::SwInterfaceSetFlags {
                sw_if_index: sw,
                flags,
            })
            .await
            .map_err(vpp_err("set admin state of", &format!("sw_if_index {sw}")))?;
        Ok(())
    }

    async fn add_sa(&self, sa: &SaPlan, peer: &str) -> Result<()> {
        let obj = format!("SA {:#x} (spi {:#x}, peer {peer})", sa.id, sa.key.spi);
        self.c
            .request(&ipsec::IpsecSadEntryAddV2 {
                entry: sa_entry(sa),
            })
            .await
            .map_err(vpp_err("add", &obj))?;
        Ok(())
    }

    async fn delete_sa(&self, id: u32) -> Result<()> {
        self.c
            .request(&ipsec::IpsecSadEntryDel { id })
            .await
            .map_err(vpp_err("delete", &format!("SA {id:#x}")))?;
        Ok(())
    }

    async fn protect(&self, sw: u32, sa_out: u32, sa_in: &BTreeSet<u32>) -> Result<()> {
        self.c
            .request(&ipsec::IpsecTunnelProtectUpdate {
                tunnel: IpsecTunnelProtect {
                    sw_if_index: sw,
                    nh: Address::default(),
                    sa_out,
                    sa_in: sa_in.iter().copied().collect(),
                },
            })
            .await
            .map_err(vpp_err("protect", &format!("sw_if_index {sw}")))?;
        Ok(())
    }

    async fn unprotect(&self, sw: u32) -> Result<()> {
        match self
            .c
            .request(&ipsec::IpsecTunnelProtectDel {
                sw_if_index: sw,
                nh: Address::default(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.retval() == Some(scrambler_vpp_api::error::retval::NO_SUCH_ENTRY) => Ok(()),
            Err(e) => Err(vpp_err("unprotect", &format!("sw_if_index {sw}"))(e)),
        }
    }

    /// Points the route of `prefix` at `to`, replacing whatever paths it had (one FIB
    /// update: there is no moment without a route).
    async fn steer(&self, prefix: IpNet, to: Steer) -> Result<()> {
        self.c
            .route_add_del(prefix, vec![route_path(to, prefix.addr().is_ipv6())], true)
            .await
            .map_err(vpp_err("steer", &format!("{prefix} to {to:?}")))
    }

    /// Deletes the route of `prefix` (all its paths from the API source).
    async fn unroute(&self, prefix: IpNet, have: &RouteHave) -> Result<()> {
        let v6 = prefix.addr().is_ipv6();
        let paths = match have {
            RouteHave::Drop => vec![route_path(Steer::Drop, v6)],
            RouteHave::Via(sw) => vec![route_path(Steer::Via(*sw), v6)],
            RouteHave::Other(p) => p.clone(),
        };
        self.c
            .route_add_del(prefix, paths, false)
            .await
            .map_err(vpp_err("delete route", &prefix.to_string()))
    }
}

/// The routes of one peer's pod CIDRs during a reconcile, and where they point now.
#[derive(Default)]
struct Guard {
    routes: BTreeMap<IpNet, Steer>,
    /// Routes this reconcile created (counted as added once).
    fresh: BTreeSet<IpNet>,
}

impl Guard {
    /// Points every route that leads into the tunnel to drop: called before the tunnel,
    /// its protection or its SAs are taken away.
    async fn close(&mut self, ops: &Ops<'_>) -> Result<()> {
        for (prefix, to) in self.routes.iter_mut() {
            if *to != Steer::Drop {
                ops.steer(*prefix, Steer::Drop).await?;
                *to = Steer::Drop;
            }
        }
        Ok(())
    }

    /// Points every route into the (protected, up) tunnel `sw`.
    async fn open(&mut self, ops: &Ops<'_>, sw: u32, rep: &mut ReconcileReport) -> Result<()> {
        for (prefix, to) in self.routes.iter_mut() {
            if *to == Steer::Via(sw) {
                rep.unchanged += 1;
                continue;
            }
            ops.steer(*prefix, Steer::Via(sw)).await?;
            *to = Steer::Via(sw);
            if !self.fresh.contains(prefix) {
                rep.updated += 1;
            }
        }
        Ok(())
    }
}

/// Peers (or stale objects) whose calls are in flight at once. Each peer's calls stay in
/// their fail-closed order — a call is sent only after the reply of the one before it was
/// checked — while the round trips of different peers overlap on the one API socket.
const PIPELINE: usize = 256;

/// Runs `work` with up to [`PIPELINE`] of them in flight; the first error wins (the
/// others are dropped: what they already sent stays in VPP's queue, nothing after it is
/// sent, so no route is steered into a tunnel whose protection was not confirmed).
///
/// Takes the futures collected (not a lazy iterator): the iterator's closures would
/// otherwise be held across the await, which the `Send` bound of the trait's futures
/// cannot prove for their lifetimes.
async fn pipelined<T, F>(work: Vec<F>) -> Result<Vec<T>>
where
    F: std::future::Future<Output = Result<T>>,
{
    futures::stream::iter(work)
        .buffer_unordered(PIPELINE)
        .try_collect()
        .await
}

fn add_report(into: &mut ReconcileReport, r: &ReconcileReport) {
    into.added += r.added;
    into.updated += r.updated;
    into.removed += r.removed;
    into.unchanged += r.unchanged;
}

/// True when reconcile (re)creates the tunnel of `p`.
fn needs_new_tunnel(have: &Actual, p: &PeerPlan) -> bool {
    !have
        .tunnels
        .get(&p.instance)
        .is_some_and(|t| t.src.to_ip() == Some(p.src) && t.dst.to_ip() == Some(p.dst))
}

/// What reconciling one peer did: its report and the SA ids it keeps.
struct PeerOutcome {
    rep: ReconcileReport,
    live_sas: Vec<u32>,
}

/// Reconciles one peer, its calls strictly in the fail-closed order of the module docs.
async fn reconcile_peer(
    ops: &Ops<'_>,
    have: &Actual,
    mesh: &Mesh,
    p: &PeerPlan,
    underlay_ifs: &HashMap<IpAddr, u32>,
) -> Result<PeerOutcome> {
    let mut rep = ReconcileReport::default();
    let live_sas = p.sas.iter().map(|s| s.id).collect();
    // 1. the guard: each pod CIDR of the peer is routed by us, into its current tunnel or
    //    to drop; anything else (missing, foreign shape, a stale tunnel) becomes drop
    //    before the tunnel is touched
    let current = have.tunnels.get(&p.instance).map(|t| t.sw_if_index);
    let lost = outbound_lost(have, mesh, p.id) || outbound_changed(have, p);
    let mut guard = Guard::default();
    for r in &p.routes {
        let now = match have.routes.get(r) {
            Some(RouteHave::Drop) => Steer::Drop,
            Some(RouteHave::Via(sw)) if Some(*sw) == current => Steer::Via(*sw),
            other => {
                ops.steer(*r, Steer::Drop).await?;
                if other.is_none() {
                    guard.fresh.insert(*r);
                    rep.added += 1;
                } else {
                    rep.updated += 1;
                }
                Steer::Drop
            }
        };
        guard.routes.insert(*r, now);
    }

    // 2. the tunnel, down until protected
    let underlay = || {
        underlay_ifs
            .get(&p.src)
            .copied()
            .ok_or_else(|| Error::Dataplane {
                dataplane: DATAPLANE.into(),
                op: format!("create tunnel ipip{} to {}", p.instance, p.name),
                reason: format!(
                    "the local underlay address {} is on no VPP interface",
                    p.src
                ),
            })
    };
    let fresh = needs_new_tunnel(have, p);
    let sw = match have.tunnels.get(&p.instance) {
        Some(t) if !fresh => {
            rep.unchanged += 1;
            t.sw_if_index
        }
        Some(t) => {
            guard.close(ops).await?;
            ops.set_up(t.sw_if_index, false).await?;
            ops.unprotect(t.sw_if_index).await?;
            ops.delete_tunnel(p.instance, t.sw_if_index).await?;
            rep.updated += 1;
            ops.create_tunnel(p, underlay()?).await?
        }
        None => {
            rep.added += 1;
            ops.create_tunnel(p, underlay()?).await?
        }
    };
    let mut up = !fresh && have.up.get(&sw).copied().unwrap_or(false);

    // 3. SAs: add missing; replace changed ones (routes to drop, tunnel down and
    //    unprotected meanwhile)
    let mut protected = if fresh {
        None
    } else {
        have.protects.get(&sw).cloned()
    };
    if protected.is_none() {
        // protection lost behind our back: nothing may be steered in until it is back
        guard.close(ops).await?;
    }
    let mut adds = Vec::new();
    for sa in &p.sas {
        match have.sas.get(&sa.id) {
            Some(h) if sa_matches(h, sa) => rep.unchanged += 1,
            Some(h) => {
                guard.close(ops).await?;
                if up {
                    ops.set_up(sw, false).await?;
                    up = false;
                }
                if protected.take().is_some() {
                    ops.unprotect(sw).await?;
                }
                if kept_outbound(h, sa) {
                    // see outbound_changed: kept (unused) as proof that its key has sent,
                    // and the peer lost until a rotation
                    tracing::error!(
                        peer = %p.name,
                        generation = mesh.keys.tx,
                        "outbound SA changed; not re-keyed in place: rotate keys"
                    );
                } else {
                    ops.delete_sa(sa.id).await?;
                    ops.add_sa(sa, &p.name).await?;
                    rep.updated += 1;
                }
            }
            None if sa.dir == Direction::Outbound && lost => {
                tracing::error!(
                    peer = %p.name,
                    generation = mesh.keys.tx,
                    "outbound SA lost; not re-created under the same key: rotate keys"
                );
            }
            None => {
                adds.push(ops.add_sa(sa, &p.name));
                rep.added += 1;
            }
        }
    }
    // new SAs are independent of each other: sent together
    futures::future::try_join_all(adds).await?;
    if lost {
        // no protection without an outbound SA: the peer stays behind drop routes, its
        // tunnel down
        guard.close(ops).await?;
        if up {
            ops.set_up(sw, false).await?;
            rep.updated += 1;
        }
        return Ok(PeerOutcome { rep, live_sas });
    }

    // 4. protection (an update replaces it atomically: a key rotation needs no drop)
    match &protected {
        Some((o, i)) if *o == p.sa_out && *i == p.sa_in => rep.unchanged += 1,
        Some(_) => {
            ops.protect(sw, p.sa_out, &p.sa_in).await?;
            rep.updated += 1;
        }
        None => {
            ops.protect(sw, p.sa_out, &p.sa_in).await?;
            rep.added += 1;
        }
    }

    // 5. up, then steer the pod CIDRs from drop into it
    if !up {
        ops.set_up(sw, true).await?;
    }
    guard.open(ops, sw, &mut rep).await?;
    Ok(PeerOutcome { rep, live_sas })
}

/// Takes a tunnel away: down, unprotected, deleted (its routes must already be gone or
/// lead to drop).
async fn delete_tunnel_fully(ops: &Ops<'_>, instance: u32, sw: u32) -> Result<()> {
    ops.set_up(sw, false).await?;
    ops.unprotect(sw).await?;
    ops.delete_tunnel(instance, sw).await
}

#[async_trait]
impl Tunnel for VppTunnel {
    /// Reconciles the node's VPP to `mesh` in phases: stale routes, then every peer (each
    /// in the fail-closed order, up to `PIPELINE` peers in flight), then stale tunnels,
    /// then stale SAs; each phase's independent calls are sent together.
    async fn reconcile(
        &self,
        netns: &Netns,
        mesh: &Mesh,
        secret: &ClusterSecret,
    ) -> Result<ReconcileReport> {
        let want = plan(mesh, secret)?;
        let c = self.connect(netns).await?;
        let have = Actual::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        let ops = Ops { c: &c };
        let mut rep = ReconcileReport::default();

        // stale routes first: pod CIDRs no peer of the mesh has any more
        let want_routes: BTreeSet<IpNet> =
            want.iter().flat_map(|p| p.routes.iter().copied()).collect();
        let stale = pipelined(
            have.routes
                .iter()
                .filter(|(prefix, _)| !want_routes.contains(prefix))
                .map(|(prefix, r)| ops.unroute(*prefix, r))
                .collect::<Vec<_>>(),
        )
        .await?;
        rep.removed += stale.len();

        // the underlay interfaces of the tunnels to create, looked up once
        let srcs: BTreeSet<IpAddr> = want
            .iter()
            .filter(|p| needs_new_tunnel(&have, p))
            .map(|p| p.src)
            .collect();
        let underlay_ifs = ops.underlay_ifs(&srcs).await?;

        let mut live_sas: BTreeSet<u32> = BTreeSet::new();
        let peers = pipelined(
            want.iter()
                .map(|p| reconcile_peer(&ops, &have, mesh, p, &underlay_ifs))
                .collect::<Vec<_>>(),
        )
        .await?;
        for o in peers {
            add_report(&mut rep, &o.rep);
            live_sas.extend(o.live_sas);
        }

        // stale tunnels, then stale SAs (the protections using them are gone by then)
        let want_instances: BTreeSet<u32> = want.iter().map(|p| p.instance).collect();
        let gone = pipelined(
            have.tunnels
                .iter()
                .filter(|(inst, _)| !want_instances.contains(inst))
                .map(|(inst, t)| delete_tunnel_fully(&ops, *inst, t.sw_if_index))
                .collect::<Vec<_>>(),
        )
        .await?;
        rep.removed += gone.len();
        let gone = pipelined(
            have.sas
                .keys()
                .filter(|id| !live_sas.contains(id))
                .map(|id| ops.delete_sa(*id))
                .collect::<Vec<_>>(),
        )
        .await?;
        rep.removed += gone.len();
        let _ = c.close().await;
        tracing::info!(
            added = rep.added,
            updated = rep.updated,
            removed = rep.removed,
            unchanged = rep.unchanged,
            "reconciled VPP tunnels"
        );
        Ok(rep)
    }

    async fn status(&self, netns: &Netns, mesh: &Mesh) -> Result<TunnelStatus> {
        let c = self.connect(netns).await?;
        let have = Actual::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        let _ = c.close().await;
        let snap = match self.snapshot(netns).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "VPP counters unavailable");
                None
            }
        };
        let mut st = TunnelStatus {
            dataplane: DATAPLANE.into(),
            overhead: scrambler_core::esp::esp_overhead(
                mesh.local.underlay.first().is_some_and(|a| a.is_ipv6()),
            ),
            ..Default::default()
        };
        let mut all_protected = true;
        for peer in &mesh.peers {
            let inst = tunnel_instance(peer.id);
            let sw = have.sw_if_index(inst);
            let prot = sw.and_then(|s| have.protects.get(&s));
            let tx = sa_id(Direction::Outbound, peer.id, mesh.keys.tx);
            let rx: Vec<Generation> = mesh
                .keys
                .rx
                .iter()
                .copied()
                .filter(|g| {
                    let id = sa_id(Direction::Inbound, peer.id, *g);
                    have.sas.contains_key(&id) && prot.is_some_and(|(_, i)| i.contains(&id))
                })
                .collect();
            let outbound = have.sas.contains_key(&tx) && prot.is_some_and(|(o, _)| *o == tx);
            let steering = sw.is_some_and(|s| {
                have.up.get(&s).copied().unwrap_or(false)
                    && peer
                        .pod_cidrs
                        .iter()
                        .all(|c| have.routes.get(&c.trunc()) == Some(&RouteHave::Via(s)))
            });
            // the guard: every pod CIDR of the peer routed to drop or into its protected
            // tunnel
            let guarded = peer
                .pod_cidrs
                .iter()
                .all(|c| match have.routes.get(&c.trunc()) {
                    Some(RouteHave::Drop) => true,
                    Some(RouteHave::Via(s)) => Some(*s) == sw && prot.is_some(),
                    _ => false,
                });
            if !guarded {
                all_protected = false;
            }
            let pc = snap
                .as_ref()
                .map(|s| peer_counters(&have, s, peer))
                .unwrap_or_default();
            for (k, v) in &pc.sa_errors {
                *st.errors.entry(format!("ipsec-sa/{k}")).or_default() += v;
            }
            if pc.tunnel_drops > 0 {
                st.errors
                    .insert(format!("{}/tunnel-drops", peer.name), pc.tunnel_drops);
            }
            st.peers.push(PeerStatus {
                name: peer.name.clone(),
                underlay: underlay_pair(&mesh.local, peer).map(|(_, d)| d),
                outbound,
                inbound: rx.len() == mesh.keys.rx.len(),
                steering,
                tx_generation: outbound.then_some(mesh.keys.tx),
                rx_generations: rx,
                packets_out: pc.sa_out.packets,
                bytes_out: pc.sa_out.bytes,
                packets_in: pc.sa_in.packets,
                bytes_in: pc.sa_in.bytes,
                replay_errors: pc.sa_errors.get("replay").copied().unwrap_or(0),
                integrity_errors: pc.integrity_errors(),
            });
        }
        // every owned tunnel that carries traffic is protected
        for t in have.tunnels.values() {
            if have.up.get(&t.sw_if_index).copied().unwrap_or(false)
                && !have.protects.contains_key(&t.sw_if_index)
            {
                all_protected = false;
            }
        }
        st.encrypted = all_protected && st.peers.iter().all(|p| p.outbound && p.inbound);
        st.fail_closed = all_protected;
        let lost = mesh
            .peers
            .iter()
            .filter(|p| outbound_lost(&have, mesh, p.id))
            .count();
        if lost > 0 {
            st.errors.insert(LOST_OUTBOUND.into(), lost as u64);
        }
        if snap.is_none() {
            st.errors.insert(STATS_UNAVAILABLE.into(), 1);
        }
        Ok(st)
    }

    async fn remove(&self, netns: &Netns) -> Result<ReconcileReport> {
        let c = self.connect(netns).await?;
        let have = Actual::read(&c)
            .await
            .map_err(vpp_err("read state of", "VPP"))?;
        let ops = Ops { c: &c };
        let mut rep = ReconcileReport::default();
        // routes, then tunnels, then SAs; each kind's calls sent together
        let routes = pipelined(
            have.routes
                .iter()
                .map(|(prefix, r)| ops.unroute(*prefix, r))
                .collect::<Vec<_>>(),
        )
        .await?;
        let tunnels = pipelined(
            have.tunnels
                .iter()
                .map(|(inst, t)| delete_tunnel_fully(&ops, *inst, t.sw_if_index))
                .collect::<Vec<_>>(),
        )
        .await?;
        let sas = pipelined(
            have.sas
                .keys()
                .map(|id| ops.delete_sa(*id))
                .collect::<Vec<_>>(),
        )
        .await?;
        rep.removed = routes.len() + tunnels.len() + sas.len();
        let _ = c.close().await;
        Ok(rep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> NodeId {
        NodeId::new(n).unwrap()
    }

    #[test]
    fn sa_ids_are_owned_and_distinct() {
        let mut seen = BTreeSet::new();
        for peer in [1, 2, 255, 256, 65535] {
            for g in [0, 1, 127, 128] {
                for d in [Direction::Inbound, Direction::Outbound] {
                    let v = sa_id(d, id(peer), g);
                    assert!(owned_sa(v), "{v:#x}");
                    if g < 128 {
                        assert!(seen.insert(v), "duplicate {v:#x}");
                    }
                }
            }
        }
        assert!(!owned_sa(10) && !owned_sa(0x5d00_0000));
    }

    fn mesh(keys: scrambler_core::Keys) -> Mesh {
        let node = |name: &str, n: u8| Node {
            name: name.into(),
            id: id(u32::from(n)),
            underlay: vec![format!("192.0.2.{n}").parse().unwrap()],
            pod_cidrs: vec![format!("10.{n}.0.0/24").parse().unwrap()],
        };
        scrambler_core::Cluster {
            nodes: vec![node("a", 1), node("b", 2)],
            keys,
        }
        .mesh_for("a")
        .unwrap()
    }

    fn with_tunnel(a: &mut Actual, protect: Option<u32>) {
        let t = IpipTunnel {
            instance: tunnel_instance(id(2)),
            sw_if_index: 7,
            ..Default::default()
        };
        a.tunnels.insert(t.instance, t);
        if let Some(out) = protect {
            a.protects.insert(7, (out, BTreeSet::new()));
        }
    }

    #[test]
    fn lost_outbound_sa_is_told_from_a_new_one() {
        use scrambler_core::Keys;
        let single = mesh(Keys::single(1));
        let out1 = sa_id(Direction::Outbound, id(2), 1);
        let in1 = sa_id(Direction::Inbound, id(2), 1);
        // nothing yet: a first setup
        assert!(!outbound_lost(&Actual::default(), &single, id(2)));
        // present: not lost
        let mut a = Actual::default();
        a.sas.insert(out1, IpsecSadEntryV4::default());
        assert!(!outbound_lost(&a, &single, id(2)));
        // the inbound SA of the generation is here, the outbound is not: lost
        let mut a = Actual::default();
        a.sas.insert(in1, IpsecSadEntryV4::default());
        assert!(outbound_lost(&a, &single, id(2)));
        // ... except in rotation step 2, when the new outbound SA is made for the first time
        let switching = mesh(Keys {
            tx: 2,
            rx: BTreeSet::from([1, 2]),
        });
        a.sas.insert(
            sa_id(Direction::Inbound, id(2), 2),
            IpsecSadEntryV4::default(),
        );
        assert!(!outbound_lost(&a, &switching, id(2)));
        // the tunnel is here without protection, or protected by the missing SA: lost
        let mut a = Actual::default();
        with_tunnel(&mut a, None);
        assert!(outbound_lost(&a, &single, id(2)));
        let mut a = Actual::default();
        with_tunnel(&mut a, Some(out1));
        assert!(outbound_lost(&a, &single, id(2)));
        // the tunnel still protected by the previous generation: a direct switch, not a loss
        let mut a = Actual::default();
        with_tunnel(&mut a, Some(sa_id(Direction::Outbound, id(2), 0)));
        assert!(!outbound_lost(&a, &single, id(2)));
    }

    #[test]
    fn changed_outbound_sa_is_lost_not_replaced() {
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let m = mesh(scrambler_core::Keys::single(1));
        let plans = plan(&m, &secret).unwrap();
        let p = &plans[0];
        let mut a = Actual::default();
        for sa in &p.sas {
            a.sas.insert(sa.id, sa_entry(sa));
        }
        assert!(!outbound_changed(&a, p));
        // VPP's dump leaves the key out: still the same SA
        let mut keyless = sa_entry(&p.sas[0]);
        keyless.crypto_key.length = 0;
        keyless.crypto_key.data = [0; 128];
        a.sas.insert(p.sa_out, keyless);
        assert!(!outbound_changed(&a, p));
        // anti-replay (or ESN, the SPI, the salt) differs: changed
        let mut e = sa_entry(&p.sas[0]);
        e.flags = IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN;
        a.sas.insert(p.sa_out, e);
        assert!(outbound_changed(&a, p));
        // other key material (a new cluster secret) is no key that has sent: replaced
        let mut e = sa_entry(&p.sas[0]);
        e.salt ^= 1;
        a.sas.insert(p.sa_out, e);
        assert!(!outbound_changed(&a, p));
        assert!(!sa_matches(&a.sas[&p.sa_out], &p.sas[0]));
        // a changed inbound SA is replaced (the peer sends with it), not a loss
        a.sas.insert(p.sa_out, sa_entry(&p.sas[0]));
        let inbound = &p.sas[1];
        let mut e = sa_entry(inbound);
        e.flags = IpsecSadFlags::IPSEC_API_SAD_FLAG_IS_INBOUND;
        a.sas.insert(inbound.id, e);
        assert!(!outbound_changed(&a, p));
        // a lost one (gone, its inbound twin here) counts as lost too
        a.sas.remove(&p.sa_out);
        assert!(outbound_lost(&a, &m, id(2)));
        // reconcile keeps a changed outbound SA in VPP: it keeps the peer lost, also while
        // a rotation switches (when a missing one would be taken for one never made)
        let switching = mesh(scrambler_core::Keys {
            tx: 2,
            rx: [1, 2].into_iter().collect(),
        });
        let sp = &plan(&switching, &secret).unwrap()[0];
        let out = sp
            .sas
            .iter()
            .find(|s| s.dir == Direction::Outbound)
            .unwrap();
        let mut b = Actual::default();
        let mut e = sa_entry(out);
        e.flags = IpsecSadFlags::IPSEC_API_SAD_FLAG_USE_ESN;
        b.sas.insert(out.id, e);
        assert!(!outbound_lost(&b, &switching, id(2)));
        assert!(outbound_changed(&b, sp));
    }

    #[test]
    fn sa_entries_zero_their_key_and_salt_when_dropped() {
        fn zeroed_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        zeroed_on_drop::<scrambler_vpp_api::api::types::Key>();
        zeroed_on_drop::<IpsecSadEntryV4>();
        zeroed_on_drop::<scrambler_vpp_api::codec::EncodeBuf>();
        zeroed_on_drop::<SaKey>();
        // what their drop runs: the key bytes and the salt are zero afterwards
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let plans = plan(&mesh(scrambler_core::Keys::single(1)), &secret).unwrap();
        let mut e = sa_entry(&plans[0].sas[0]);
        assert!(e.salt != 0 && e.crypto_key.data.iter().any(|b| *b != 0));
        e.zeroize_secrets();
        assert_eq!(e.salt, 0);
        // the key is a field of its own type, zeroed by its own drop
        e.crypto_key.zeroize_secrets();
        assert!(e.crypto_key.data.iter().all(|b| *b == 0));
    }

    #[test]
    fn owned_routes_are_told_by_their_marked_path() {
        let drop = route_path(Steer::Drop, false);
        let via = route_path(Steer::Via(7), true);
        assert_eq!(RouteHave::of(std::slice::from_ref(&drop)), RouteHave::Drop);
        assert_eq!(RouteHave::of(std::slice::from_ref(&via)), RouteHave::Via(7));
        assert_eq!(via.proto, FibPathNhProto::FIB_API_PATH_NH_PROTO_IP6);
        // unmarked (an older Scrambler, or a foreign path shape): replaced, never kept
        let mut plain = via.clone();
        plain.preference = 0;
        assert!(matches!(RouteHave::of(&[plain]), RouteHave::Other(_)));
        assert!(matches!(
            RouteHave::of(&[drop.clone(), drop]),
            RouteHave::Other(_)
        ));
    }

    #[test]
    fn sa_ids_name_their_peer_and_direction() {
        let v = sa_id(Direction::Inbound, id(513), 3);
        assert_eq!(peer_of_sa(v), Some((513, Direction::Inbound)));
        let v = sa_id(Direction::Outbound, id(2), 130);
        assert_eq!(peer_of_sa(v), Some((2, Direction::Outbound)));
        assert_eq!(peer_of_sa(10), None);
    }

    #[test]
    fn tunnel_instances_map_back_to_peers() {
        assert_eq!(tunnel_peer(tunnel_instance(id(7))), Some(7));
        assert_eq!(tunnel_peer(0), None);
        assert_eq!(tunnel_peer(TUNNEL_INSTANCE_BASE), None);
        assert_eq!(tunnel_peer(TUNNEL_INSTANCE_BASE + 70000), None);
    }

    #[test]
    fn salt_keeps_the_rfc4106_byte_order() {
        let secret = ClusterSecret::from_bytes(vec![3; 32]).unwrap();
        let key = secret.sa(id(1), id(2), 1);
        let sa = SaPlan {
            id: 1,
            key: key.clone(),
            dir: Direction::Outbound,
        };
        let e = sa_entry(&sa);
        let mut wire = scrambler_vpp_api::codec::EncodeBuf::default();
        scrambler_vpp_api::codec::Encode::encode(&e.salt, &mut wire).unwrap();
        assert_eq!(&*wire, &key.rfc4106_material()[16..]);
        assert!(format!("{e:?}").contains("<redacted>"));
    }
}
