//! The lab: an encrypted multi-node cluster on one machine.
//!
//! `lab up` builds N nodes as network namespaces joined by an underlay bridge, applies the
//! mesh on every node (or, with `--agents`, starts etcd and one `scrambler agent` per node,
//! see [`agents`]) and starts pods through the real CNI binary; `lab test` pings every pod
//! from every pod on other nodes while capturing the underlay and prints a verdict;
//! `lab inject` breaks something and measures the outage; `lab down` removes everything.
//! Its state lives in `/run/scrambler-lab/<name>/` (key file 0600, mesh file with each
//! node's epoch, the nodes' ledgers of outbound SAs, IPAM leases, CNI log, captures). A
//! node the `reboot` fault rebuilds comes back with a new epoch, as a real node's dataplane
//! would after a reboot; the others keep theirs.

pub mod agent_faults;
pub mod agents;
pub mod backend;
pub mod capture;
pub mod cmd;
pub mod inject;
pub mod node_encryption;
pub mod pods;
pub mod probe;
pub mod progress;
pub mod session;
pub mod topology;
pub mod vm;
pub mod vppnode;

use crate::apply;
use crate::meshfile::MeshFile;
use crate::status::StatusReport;
use backend::LabBackend;
use ipnet::IpNet;
use scrambler_core::{Backend, Cluster, ClusterSecret, Error, Keys, Netns, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;
use topology::Names;

/// Where labs keep their state.
pub const LAB_ROOT: &str = "/run/scrambler-lab";

/// What `lab up` is asked to build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabSpec {
    /// The lab's name: the prefix of every namespace it makes.
    pub name: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Pods per node.
    pub pods_per_node: usize,
    /// Dataplane of the nodes.
    pub backend: LabBackend,
    /// The mesh comes from etcd through one `scrambler agent` per node (see [`agents`]),
    /// not from the lab's mesh file.
    #[serde(default)]
    pub agents: bool,
    /// Node encryption: the nodes' own traffic between their underlay addresses rides the
    /// mesh (see [`node_encryption`]).
    #[serde(default)]
    pub node_encryption: bool,
    /// An IPv6-only underlay and dual-stack pods (see [`topology::Family`]).
    #[serde(default)]
    pub ipv6: bool,
}

/// One pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    /// Namespace name (also the container id).
    pub name: String,
    /// 1-based node index.
    pub node: usize,
    /// Its address (IPv4).
    pub ip: IpAddr,
    /// Its IPv6 address (a lab built with `--ipv6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<IpAddr>,
}

impl PodInfo {
    /// Its addresses, IPv4 first.
    pub fn addrs(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.ip).chain(self.ip6)
    }
}

/// A built lab, as saved in `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabState {
    /// What was asked for.
    pub spec: LabSpec,
    /// Every pod.
    pub pods: Vec<PodInfo>,
    /// Each node's backend (index 0 = node 1; see [`LabBackend::node`]).
    #[serde(default)]
    pub node_backends: Vec<Backend>,
}

impl LabState {
    /// The lab's state directory.
    pub fn dir(name: &str) -> PathBuf {
        Path::new(LAB_ROOT).join(name)
    }

    fn file(name: &str) -> PathBuf {
        Self::dir(name).join("lab.json")
    }

    /// Loads a lab that `lab up` built.
    pub fn load(name: &str) -> Result<Self> {
        let p = Self::file(name);
        let b = std::fs::read(&p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::config(format!(
                "no lab named {name:?} is up (run `scrambler lab up`)"
            )),
            _ => Error::io("read lab state", p.display(), e),
        })?;
        serde_json::from_slice(&b).map_err(|e| Error::Corrupt {
            object: p.display().to_string(),
            reason: e.to_string(),
        })
    }

    fn save(&self) -> Result<()> {
        let p = Self::file(&self.spec.name);
        let b = serde_json::to_vec_pretty(self).map_err(|e| Error::decode("lab state", e))?;
        std::fs::write(&p, b).map_err(|e| Error::io("write lab state", p.display(), e))
    }

    /// The lab's address plan.
    pub fn family(&self) -> topology::Family {
        self.spec.family()
    }

    /// Namespace names.
    pub fn names(&self) -> Names {
        Names {
            lab: self.spec.name.clone(),
        }
    }

    /// The mesh file path.
    pub fn mesh_path(&self) -> PathBuf {
        Self::dir(&self.spec.name).join("mesh.json")
    }

    /// The node-record directory.
    pub fn state_dir(&self) -> PathBuf {
        Self::dir(&self.spec.name).join("state")
    }

    /// The directory of the nodes' ledgers of outbound SAs (kept across a node's `reboot`,
    /// as `/var/lib/scrambler` is on a real node).
    pub fn ledger_dir(&self) -> PathBuf {
        Self::dir(&self.spec.name).join("ledger")
    }

    /// Node `i`'s IPAM data dir (its leases; gone with the node when it leaves).
    pub fn ipam_dir(&self, i: usize) -> PathBuf {
        Self::dir(&self.spec.name)
            .join("ipam")
            .join(self.names().node(i))
    }

    /// Node `i`'s backend.
    pub fn node_backend(&self, i: usize) -> Backend {
        self.node_backends
            .get(i.wrapping_sub(1))
            .copied()
            .unwrap_or_else(|| self.spec.backend.node(i))
    }

    /// Pods of node `i`.
    pub fn pods_of(&self, i: usize) -> impl Iterator<Item = &PodInfo> {
        self.pods.iter().filter(move |p| p.node == i)
    }
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[lab] {}", msg.as_ref());
}

/// Most pods a node of the lab may have.
pub const MAX_PODS: usize = 200;

/// Longest lab name (it prefixes every namespace, pod and VPP shared-memory name).
pub const MAX_NAME_LEN: usize = 32;

impl LabSpec {
    /// The lab's address plan.
    pub fn family(&self) -> topology::Family {
        topology::Family::new(self.ipv6)
    }

    /// Checks every field, so a lab that cannot be built fails before anything is made
    /// (no namespace, file, VPP or VM).
    pub fn validate(&self) -> Result<()> {
        check_name(&self.name)?;
        if self.ipv6 && self.backend == LabBackend::Uniform(Backend::Ipvlan) {
            return Err(Error::Unsupported(
                "--ipv6 with --backend ipvlan: encrypted ipvlan pods have no IPv6 path into \
                 the mesh (the plugin refuses IPv6 cluster CIDRs); use veth, vpp or mixed"
                    .into(),
            ));
        }
        if self.nodes < 2 || self.nodes > topology::MAX_NODES {
            return Err(Error::config(format!(
                "--nodes {} out of range: 2..={}",
                self.nodes,
                topology::MAX_NODES
            )));
        }
        if self.pods_per_node == 0 || self.pods_per_node > MAX_PODS {
            return Err(Error::config(format!(
                "--pods {} out of range: 1..={MAX_PODS}",
                self.pods_per_node
            )));
        }
        Ok(())
    }
}

/// A lab name: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `-` or `_`, starting with a
/// letter or digit (it becomes part of namespace, container and file names).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        return Ok(());
    }
    Err(Error::config(format!(
        "lab name {name:?}: use 1..={MAX_NAME_LEN} ASCII letters, digits, '-' or '_', \
         starting with a letter or digit"
    )))
}

/// `lab up`.
pub async fn up(spec: LabSpec) -> Result<LabState> {
    spec.validate()?;
    let names = Names {
        lab: spec.name.clone(),
    };
    let left = topology::existing(&names);
    if !left.is_empty() || LabState::file(&spec.name).exists() {
        return Err(Error::AlreadyExists {
            object: format!("lab {:?}", spec.name),
            reason: "run `scrambler lab down` first".into(),
        });
    }
    let cni_bin = pods::find_cni_binary()?;
    let dir = LabState::dir(&spec.name);
    create_private_dir(&dir)?;
    let t0 = Instant::now();
    progress(format!(
        "building {} nodes x {} pods in lab {:?}, backend {}, {}, mesh from {}{} (state in {})",
        spec.nodes,
        spec.pods_per_node,
        spec.name,
        spec.backend,
        match spec.ipv6 {
            true => "IPv6-only underlay, dual-stack pods",
            false => "IPv4 underlay and pods",
        },
        if spec.agents {
            "etcd (one agent per node)"
        } else {
            "the mesh file"
        },
        if spec.node_encryption {
            ", node encryption on"
        } else {
            ""
        },
        dir.display()
    ));

    // Key and mesh file.
    let key_file = dir.join("cluster.key");
    ClusterSecret::generate_file(&key_file)?;
    let family = spec.family();
    let nodes = (1..=spec.nodes)
        .map(|i| topology::node_desc(&names, family, i))
        .collect::<Result<Vec<_>>>()?;
    let mesh_file = MeshFile {
        cluster: Cluster {
            nodes,
            keys: Keys::single(1),
            cluster_cidrs: family.cluster_cidrs(),
            node_encryption: match spec.node_encryption {
                true => Some(node_encryption::setting()?),
                false => None,
            },
        },
        key_file: key_file.clone(),
    };
    let mut state = LabState {
        spec: spec.clone(),
        pods: vec![],
        node_backends: (1..=spec.nodes).map(|i| spec.backend.node(i)).collect(),
    };
    if !spec.agents {
        mesh_file.save(&state.mesh_path())?;
    }
    state.save()?;

    // Wire and nodes.
    topology::create_wire(&names)?;
    for i in 1..=spec.nodes {
        topology::create_node(&names, family, i)?;
        if vppnode::is_vpp(&state, i) {
            vppnode::start(&spec.name, family, i).await?;
        }
        progress(format!(
            "node {}/{} {} up (underlay {})",
            i,
            spec.nodes,
            names.node(i),
            family.underlay(i)
        ));
    }

    // Mesh on every node: from etcd through the agents, or from the mesh file.
    if spec.agents {
        agents::start_etcd(&state).await?;
        progress(format!(
            "etcd up in {} ({})",
            names.wire(),
            agents::ETCD_ENDPOINT
        ));
        for i in 1..=spec.nodes {
            agents::start_agent(&state, i)?;
        }
        let all: Vec<usize> = (1..=spec.nodes).collect();
        let took = agents::wait_converged(&state, &all).await?;
        progress(format!(
            "{} agents built the mesh from etcd in {:.1}s",
            spec.nodes,
            took.as_secs_f64()
        ));
    } else {
        for i in 1..=spec.nodes {
            let r = apply_node(&state, i).await?;
            progress(format!(
                "mesh on {}: +{} ~{} -{}",
                names.node(i),
                r.added,
                r.updated,
                r.removed
            ));
        }
    }

    // Pods.
    for i in 1..=spec.nodes {
        for j in 1..=spec.pods_per_node {
            let pod = start_pod(&state, &cni_bin, i, j)?;
            let addrs: Vec<String> = pod.addrs().map(|a| a.to_string()).collect();
            progress(format!(
                "pod {} on {} -> {}",
                pod.name,
                names.node(i),
                addrs.join(", ")
            ));
            state.pods.push(pod);
        }
    }
    state.save()?;
    let took = t0.elapsed().as_secs_f64();
    match scrambler_vmtest::in_vm() {
        // the host adds the VM's boot and reports the whole time
        true => progress(format!("nodes, mesh and pods ready in {took:.1}s")),
        false => progress(format!("lab {:?} is up in {took:.1}s", spec.name)),
    }
    Ok(state)
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create lab dir", dir.display(), e))
}

/// Applies the lab's mesh file on node `i` (in-process, like `scrambler mesh apply`).
pub async fn apply_node(state: &LabState, i: usize) -> Result<scrambler_core::ReconcileReport> {
    apply::apply(&node_args(state, i)).await
}

/// What `mesh apply` / `status` act on for node `i` of the lab.
fn node_args(state: &LabState, i: usize) -> apply::ApplyArgs {
    let node = state.names().node(i);
    apply::ApplyArgs {
        mesh: match state.spec.agents {
            true => agents::agent_mesh(state, i),
            false => state.mesh_path(),
        },
        netns: Netns::named(&node),
        node,
        state_dir: state.state_dir(),
        ledger_dir: state.ledger_dir(),
        backend: state.node_backend(i).tunnel(),
        vpp_socket: vppnode::api_socket(&state.spec.name, i),
        // the lab's pods get the default too (no `vpp.underlayMtu` in their conf)
        underlay_mtu: scrambler_vpp::attach::DEFAULT_UNDERLAY_MTU,
    }
}

/// Creates pod `j` of node `i` and attaches it through the CNI binary.
pub fn start_pod(state: &LabState, cni_bin: &Path, i: usize, j: usize) -> Result<PodInfo> {
    let names = state.names();
    let pod = names.pod(i, j);
    topology::create_pod_netns(&pod)?;
    let conf = pod_conf(state, i);
    let res = pods::cni(cni_bin, "ADD", &names.node(i), &pod, &conf)?
        .ok_or_else(|| Error::decode("ADD result", "empty"))?;
    let ip = pods::first_ipv4(&res)
        .ok_or_else(|| Error::decode(format!("ADD result for {pod}"), "no IPv4 address"))?;
    let ip6 = match state.spec.ipv6 {
        true => Some(pods::first_ipv6(&res).ok_or_else(|| {
            Error::decode(
                format!("ADD result for {pod}"),
                "no IPv6 address (an --ipv6 lab's pods are dual-stack)",
            )
        })?),
        false => None,
    };
    Ok(PodInfo {
        name: pod,
        node: i,
        ip,
        ip6,
    })
}

fn pod_conf(state: &LabState, i: usize) -> serde_json::Value {
    let mut conf = pods::netconf(
        &state.spec.name,
        state.node_backend(i),
        &state.family().pod_cidrs(i),
        &LabState::dir(&state.spec.name),
    );
    if state.spec.ipv6 && !vppnode::is_vpp(state, i) {
        // a lab node has no default route the veth backend could read the underlay's
        // family from: the pods' MTU leaves room for ESP's IPv6 outer header
        conf["mtu"] = scrambler_core::esp::pod_mtu(IPV6_UNDERLAY_MTU, true).into();
    }
    // IPAM state is the node's own, as host-local's on a real node's disk
    conf["ipam"]["dataDir"] = state.ipam_dir(i).display().to_string().into();
    if state.spec.agents {
        // the plugin networks a pod only once the node's agent says its guard is in place
        conf["tunnelStatusFile"] = agents::tunnel_status_file(state, i)
            .display()
            .to_string()
            .into();
    }
    if vppnode::is_vpp(state, i) {
        return vppnode::pod_conf(conf, &state.spec.name, i, state.spec.ipv6);
    }
    conf
}

/// The MTU of an `--ipv6` lab's underlay (the veths' default).
const IPV6_UNDERLAY_MTU: u32 = 1500;

/// The verdict of `lab test`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TestReport {
    /// Per (source node, destination node): pings ok, pings tried, ESP packets seen.
    pub pairs: BTreeMap<String, (usize, usize, u64)>,
    /// Node ↔ remote pod, per probe (`node1 host -> node2 pod`, `node2 pod -> node1
    /// tunnel address`, `node2 pod -> node1 underlay`, and one NodePort-style DNAT +
    /// masquerade on a node's underlay address to a pod on another node): pings ok, pings
    /// tried. Every node's host holds a tunnel address (a VPP node's on its host link);
    /// a VPP node's underlay address is VPP's own, so VPP answers the underlay probes to
    /// it; the NodePort goes to kernel-dataplane nodes only.
    pub node_pod: BTreeMap<String, (usize, usize)>,
    /// With node encryption: host → host probes (`node1 host -> node2 underlay
    /// (192.0.2.2)` pings, `… tcp/7777` connections, see [`node_encryption`]): ok, tried.
    pub host_host: BTreeMap<String, (usize, usize)>,
    /// Pod ↔ pod pings per address family (`IPv4`, `IPv6`): pings ok, pings tried.
    pub families: BTreeMap<String, (usize, usize)>,
    /// Probes of a documented limit (see [`ProbeLimit`]), tried and shown but not judged:
    /// pings answered, pings tried, the limit.
    pub expected_limits: BTreeMap<String, (usize, usize, String)>,
    /// Underlay verdict.
    pub underlay: capture::Verdict,
    /// Peers up per node.
    pub tunnels_up: BTreeMap<String, (usize, usize)>,
    /// Overall.
    pub pass: bool,
    /// Seconds the test took.
    pub seconds: f64,
}

/// `lab test`: all-pairs pings across nodes under an underlay capture.
pub async fn test(name: &str) -> Result<TestReport> {
    let state = LabState::load(name)?;
    let names = state.names();
    let t0 = Instant::now();
    let pcap = LabState::dir(name).join("test.pcap");
    let cap = capture::Capture::start(&names.wire(), &pcap)?;
    let family = state.family();
    let mut pings = vec![];
    for a in &state.pods {
        for b in state.pods.iter().filter(|b| b.node != a.node) {
            for to in b.addrs() {
                pings.push(probe::Ping {
                    from: a.name.clone(),
                    to,
                });
            }
        }
    }
    let mut host_probes = node_pod_pings(&state);
    let node_pod_count = host_probes.len();
    // pings that must go unanswered (kernel host -> VPP underlay) come last
    let mut expect_dropped = 0;
    if state.spec.node_encryption {
        let (p, l) = node_encryption::host_pings(&state);
        let (dp, dl) = node_encryption::dropped_pings(&state);
        expect_dropped = dp.len();
        let probes = p.into_iter().chain(dp).zip(l.into_iter().chain(dl));
        host_probes.extend(probes.map(|(ping, label)| NodeProbe {
            ping,
            label,
            limit: None,
        }));
    }
    let host_pings: Vec<probe::Ping> = host_probes.iter().map(|p| p.ping.clone()).collect();
    progress(format!(
        "pinging {} pod pairs across nodes{}, {} node <-> remote pod pairs{}",
        pings.len(),
        if family.ipv6 { " (IPv4 and IPv6)" } else { "" },
        node_pod_count,
        match host_pings.len() - node_pod_count {
            0 => String::new(),
            n => format!(", {n} host -> remote underlay pairs (node encryption)"),
        }
    ));
    let all_ok = tokio::task::spawn_blocking({
        let pings: Vec<probe::Ping> = pings.iter().chain(&host_pings).cloned().collect();
        move || probe::ping_all(&pings, 8)
    })
    .await
    .map_err(|e| Error::kernel("run pings", "lab", e))?;
    let (ok, host_answers) = all_ok.split_at(pings.len());
    let mut expected_limits: BTreeMap<String, (usize, usize, String)> = BTreeMap::new();
    // judged probes: label, answered as expected, whether it is a host -> host probe
    let mut host_results: Vec<(String, bool, bool)> = vec![];
    let dropped_from = host_probes.len() - expect_dropped;
    let answers = host_probes.into_iter().zip(host_answers.iter().copied());
    for (k, (p, answered)) in answers.enumerate() {
        // an unanswered ping is what a must-be-dropped probe expects
        let answered = answered != (k >= dropped_from);
        match p.limit {
            Some(limit) => {
                let e = expected_limits
                    .entry(p.label)
                    .or_insert_with(|| (0, 0, limit.why().into()));
                e.1 += 1;
                if answered {
                    e.0 += 1;
                }
            }
            None => host_results.push((p.label, answered, k >= node_pod_count)),
        }
    }
    if let Some(np) = NodePort::pick(&state) {
        progress(format!("{} (NodePort-style DNAT + masquerade)", np.label));
        let label = np.label.clone();
        let ok = tokio::task::spawn_blocking(move || np.probe())
            .await
            .map_err(|e| Error::kernel("run NodePort probe", "lab", e))??;
        host_results.push((label, ok, false));
    }
    let mut host_host_probes: Vec<(String, bool)> = Vec::new();
    if state.spec.node_encryption {
        let st = state.clone();
        host_host_probes = tokio::task::spawn_blocking(move || node_encryption::tcp_probes(&st))
            .await
            .map_err(|e| Error::kernel("run TCP probes", "lab", e))??;
        host_host_probes.extend(node_encryption::syn_probes(&state).await?);
    }
    let mut node_pod: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut host_host: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (label, ok, hh) in &host_results {
        let e = match hh {
            true => host_host.entry(label.clone()).or_default(),
            false => node_pod.entry(label.clone()).or_default(),
        };
        e.1 += 1;
        if *ok {
            e.0 += 1;
        }
    }
    for (label, ok) in &host_host_probes {
        let e = host_host.entry(label.clone()).or_default();
        e.1 += 1;
        if *ok {
            e.0 += 1;
        }
    }
    let cluster: Vec<IpNet> = family.cluster_cidrs();
    let scope = node_encryption::scope(&state)?;
    let verdict = tokio::task::spawn_blocking(move || cap.stop_with_nodes(&cluster, &scope))
        .await
        .map_err(|e| Error::kernel("stop capture", "lab", e))??;

    let node_of: BTreeMap<IpAddr, usize> = state
        .pods
        .iter()
        .flat_map(|p| p.addrs().map(move |a| (a, p.node)))
        .collect();
    let mut families: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let pod_node: BTreeMap<&str, usize> = state
        .pods
        .iter()
        .map(|p| (p.name.as_str(), p.node))
        .collect();
    let mut pairs: BTreeMap<String, (usize, usize, u64)> = BTreeMap::new();
    for (p, ok) in pings.iter().zip(ok) {
        let (a, b) = (pod_node[p.from.as_str()], node_of[&p.to]);
        let e = pairs
            .entry(format!("{} -> {}", names.node(a), names.node(b)))
            .or_default();
        e.1 += 1;
        if *ok {
            e.0 += 1;
        }
        let f = families
            .entry(topology::Family::name(p.to.is_ipv6()).into())
            .or_default();
        f.1 += 1;
        if *ok {
            f.0 += 1;
        }
    }
    // ESP per node pair, by the outer addresses (the nodes' underlay addresses)
    for ((src, dst), n) in &verdict.esp_by_pair {
        let idx = |ip: &IpAddr| family.node_of_underlay(*ip, state.spec.nodes);
        let (Some(a), Some(b)) = (idx(src), idx(dst)) else {
            continue;
        };
        let key = format!("{} -> {}", names.node(a), names.node(b));
        if let Some(e) = pairs.get_mut(&key) {
            e.2 += n;
        }
    }
    let mut tunnels_up = BTreeMap::new();
    for i in 1..=state.spec.nodes {
        let st = node_status(&state, i).await?;
        let up = st.tunnel.peers.iter().filter(|p| p.is_up()).count();
        tunnels_up.insert(names.node(i), (up, st.tunnel.peers.len()));
    }
    // a test that pinged nothing or has no tunnel proves nothing: it fails; with node
    // encryption, so does one without a host -> host probe
    let pass = !ok.is_empty()
        && (!state.spec.node_encryption || !host_host.is_empty())
        && ok.iter().all(|o| *o)
        && families.len() == if family.ipv6 { 2 } else { 1 }
        && host_results.iter().all(|(_, ok, _)| *ok)
        && host_host_probes.iter().all(|(_, o)| *o)
        && verdict.cleartext == 0
        && verdict.node_cleartext == 0
        && pairs.values().all(|(_, _, esp)| *esp > 0)
        && tunnels_up.values().all(|(u, n)| *n > 0 && u == n);
    Ok(TestReport {
        pairs,
        node_pod,
        host_host,
        families,
        expected_limits,
        underlay: verdict,
        tunnels_up,
        pass,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A documented limit a node ↔ pod probe runs into: it is tried and shown, but neither
/// passes nor fails `lab test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeLimit {
    /// A kernel (xfrm) node's own IPv6 traffic to remote pods: dropped by the guard, not
    /// encrypted (locally generated IPv6 has no outgoing interface in its policy lookup, so
    /// the xfrm interface's bypass does not apply; see the README's IPv6 limits).
    KernelHostIpv6,
    /// A VPP node's host link carries IPv4 only: its host holds no IPv6 tunnel address
    /// and has no IPv6 route into VPP, so its own IPv6 traffic to remote pods has no way
    /// out, and a pod's IPv6 traffic to that node's IPv6 tunnel address ends in VPP.
    VppHostLinkIpv4Only,
}

impl ProbeLimit {
    /// Why the probe is expected to fail.
    pub fn why(self) -> &'static str {
        match self {
            ProbeLimit::KernelHostIpv6 => {
                "a kernel node's own IPv6 traffic to remote pods is dropped by the guard, not \
                 encrypted (no oif in the policy lookup of locally generated IPv6)"
            }
            ProbeLimit::VppHostLinkIpv4Only => {
                "a VPP node's host link is IPv4 only (no IPv6 tunnel address on the host)"
            }
        }
    }
}

/// One node ↔ remote pod probe of `lab test`.
#[derive(Debug, Clone)]
struct NodeProbe {
    ping: probe::Ping,
    label: String,
    /// The documented limit it runs into, if any.
    limit: Option<ProbeLimit>,
}

/// Node ↔ remote pod probes: from the host namespace of every node (a VPP node's through
/// its host link) to the first pod of every other node, from the first pod of every other
/// node to that node's tunnel address (the first address of its pod CIDR), and from the
/// first pod of every other node to that node's underlay address (the `kubernetes`
/// Service or a kubelet on another node; on a VPP node VPP answers it). In an `--ipv6`
/// lab the first two are made for both families (labels end in `(IPv6)` for IPv6), and
/// the underlay is IPv6.
fn node_pod_pings(state: &LabState) -> Vec<NodeProbe> {
    let names = state.names();
    let family = state.family();
    let first_pods: Vec<&PodInfo> = (1..=state.spec.nodes)
        .filter_map(|j| state.pods.iter().find(|p| p.node == j))
        .collect();
    let mut out = Vec::new();
    let mut push = |from: String, to: IpAddr, label: String, limit: Option<ProbeLimit>| {
        out.push(NodeProbe {
            ping: probe::Ping { from, to },
            label,
            limit,
        })
    };
    let tag = |a: &IpAddr| if a.is_ipv6() { " (IPv6)" } else { "" };
    for i in 1..=state.spec.nodes {
        let Ok(node) = topology::node_desc(&names, family, i) else {
            continue;
        };
        for pod in first_pods.iter().filter(|p| p.node != i) {
            for to in pod.addrs() {
                let limit = match (to.is_ipv6(), is_kernel(state, i)) {
                    (false, _) => None,
                    (true, true) => Some(ProbeLimit::KernelHostIpv6),
                    (true, false) => Some(ProbeLimit::VppHostLinkIpv4Only),
                };
                push(
                    names.node(i),
                    to,
                    format!(
                        "{} host -> {} pod{}",
                        names.node(i),
                        names.node(pod.node),
                        tag(&to)
                    ),
                    limit,
                );
            }
            for tunnel_addr in node.tunnel_addresses() {
                push(
                    pod.name.clone(),
                    tunnel_addr,
                    format!(
                        "{} pod -> {} ({tunnel_addr})",
                        names.node(pod.node),
                        names.node(i)
                    ),
                    (tunnel_addr.is_ipv6() && !is_kernel(state, i))
                        .then_some(ProbeLimit::VppHostLinkIpv4Only),
                );
            }
            for ul in &node.underlay {
                push(
                    pod.name.clone(),
                    *ul,
                    format!(
                        "{} pod -> {} underlay ({ul})",
                        names.node(pod.node),
                        names.node(i)
                    ),
                    None,
                );
            }
        }
    }
    out
}

/// Whether node `i` runs the kernel (xfrm) mesh.
fn is_kernel(state: &LabState, i: usize) -> bool {
    state.node_backend(i).tunnel() == scrambler_core::TunnelDataplane::Xfrm
}

/// A NodePort-style probe, as kube-proxy forwards a NodePort: a client (another node's
/// host) pings node `node`'s underlay address; that node DNATs the echo requests to a pod
/// on another kernel node and masquerades them (to its tunnel address, the address of the
/// interface they leave by), so the pod's replies come back through the mesh. The node
/// answers no ping itself meanwhile, so every reply is the pod's. With node encryption
/// the client's ping rides the mesh to the node and arrives decrypted from it.
struct NodePort {
    node: String,
    node_ul: IpAddr,
    client: String,
    client_ul: IpAddr,
    pod: IpAddr,
    label: String,
}

/// The nftables table the NodePort probe adds (and removes) in the node namespace.
const NODEPORT_TABLE: &str = "scrambler-lab-nodeport";

impl NodePort {
    /// The first kernel node with a pod on another kernel node; the client is a third
    /// node's host when there is one, else the pod's node's host. The underlay's family
    /// is the probe's: on an `--ipv6` lab's IPv6 underlay it DNATs to the pod's IPv6
    /// address (the node masquerades to its IPv6 tunnel address; forwarded, so the xfrm
    /// interface's bypass applies and it is encrypted).
    fn pick(state: &LabState) -> Option<NodePort> {
        let names = state.names();
        let n = state.spec.nodes;
        let family = state.family();
        let ul = |i: usize| family.underlay(i);
        for i in (1..=n).filter(|i| is_kernel(state, *i)) {
            let Some(pod) = state
                .pods
                .iter()
                .find(|p| p.node != i && is_kernel(state, p.node))
            else {
                continue;
            };
            let client = (1..=n)
                .find(|k| *k != i && *k != pod.node)
                .unwrap_or(pod.node);
            // a VPP node's host sends from its tunnel address (with node encryption, its
            // only way to another node's underlay address is the mesh)
            let client_src = match state.spec.node_encryption && vppnode::is_vpp(state, client) {
                true => topology::node_desc(&names, family, client)
                    .ok()?
                    .tunnel_address(family.ipv6)?,
                false => ul(client),
            };
            return Some(NodePort {
                node: names.node(i),
                node_ul: ul(i),
                client: names.node(client),
                client_ul: client_src,
                pod: match family.ipv6 {
                    true => pod.ip6?,
                    false => pod.ip,
                },
                label: format!(
                    "{} host -> {} NodePort -> {} pod{}",
                    names.node(client),
                    names.node(i),
                    names.node(pod.node),
                    if family.ipv6 { " (IPv6)" } else { "" }
                ),
            });
        }
        None
    }

    /// Installs the DNAT + masquerade, pings, checks both rules matched, removes them.
    fn probe(&self) -> Result<bool> {
        let v6 = self.node_ul.is_ipv6();
        let (fam, ip, icmp, ignore) = match v6 {
            false => ("ip", "ip", "icmp", "net.ipv4.icmp_echo_ignore_all"),
            true => ("ip6", "ip6", "icmpv6", "net.ipv6.icmp.echo_ignore_all"),
        };
        cmd::sysctl(&self.node, ignore, "1")?;
        let t = NODEPORT_TABLE;
        let script = format!(
            "add table {fam} {t}; \
             add chain {fam} {t} pre {{ type nat hook prerouting priority -100 ; }}; \
             add chain {fam} {t} post {{ type nat hook postrouting priority 100 ; }}; \
             add rule {fam} {t} pre {ip} saddr {c} {ip} daddr {n} {icmp} type echo-request counter dnat to {p}; \
             add rule {fam} {t} post {ip} saddr {c} {ip} daddr {p} counter masquerade",
            c = self.client_ul,
            n = self.node_ul,
            p = self.pod,
        );
        let result = cmd::netns_exec(&self.node, "nft", &[&script]).and_then(|out| {
            if !out.status.success() {
                return Err(Error::Dataplane {
                    dataplane: "lab".into(),
                    op: format!("nft in {}", self.node),
                    reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
            let answered = probe::ping_all(
                &[probe::Ping {
                    from: self.client.clone(),
                    to: self.node_ul,
                }],
                1,
            );
            let listed = cmd::netns_exec(&self.node, "nft", &["list", "table", fam, t])?;
            let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
            Ok(answered == [true] && !listed.contains("packets 0 "))
        });
        let _ = cmd::netns_exec(&self.node, "nft", &["delete", "table", fam, t]);
        cmd::sysctl(&self.node, ignore, "0")?;
        result
    }
}

/// The status of node `i`.
pub async fn node_status(state: &LabState, i: usize) -> Result<StatusReport> {
    apply::status(&node_args(state, i)).await
}

/// Prints the verdict table.
pub fn print_report(r: &TestReport) {
    println!("{:<28} {:>10} {:>12}", "NODE PAIR", "PINGS", "ESP PACKETS");
    for (k, (ok, n, esp)) in &r.pairs {
        println!("{k:<28} {:>10} {:>12}", format!("{ok}/{n}"), esp);
    }
    for (k, (ok, n)) in &r.node_pod {
        println!("{k:<56} {:>6}", format!("{ok}/{n}"));
    }
    for (k, (ok, n, why)) in &r.expected_limits {
        println!(
            "{k:<56} {:>6} expected limit, not judged: {why}",
            format!("{ok}/{n}")
        );
    }
    for (k, (ok, n)) in &r.host_host {
        println!("{k:<60} {:>6}", format!("{ok}/{n}"));
    }
    println!();
    for (f, (ok, n)) in &r.families {
        println!("{f} pod pings across nodes: {ok}/{n}");
    }
    for (node, (up, n)) in &r.tunnels_up {
        println!("tunnels up on {node}: {up}/{n}");
    }
    println!(
        "underlay: {} frames, {} ESP, {} cleartext packets between pod CIDRs{}{}",
        r.underlay.frames,
        r.underlay.esp,
        r.underlay.cleartext,
        if r.families.contains_key("IPv6") {
            " (IPv4 and IPv6)"
        } else {
            ""
        },
        if r.underlay.cleartext > 0 {
            format!(" !!! e.g. {}", r.underlay.cleartext_examples.join(", "))
        } else {
            String::new()
        }
    );
    print_host_cleartext(&r.underlay);
    println!(
        "verdict: {} ({:.1}s)",
        if r.pass { "PASS" } else { "FAIL" },
        r.seconds
    );
}

/// The verdict's line on cleartext between node addresses: leaks with node encryption on,
/// information without it.
pub fn print_host_cleartext(u: &capture::Verdict) {
    if u.node_cleartext > 0 {
        println!(
            "underlay: {} cleartext packets between node addresses (node encryption on, \
             outside ESP and the bypass ports) !!! e.g. {}",
            u.node_cleartext,
            u.node_cleartext_examples.join(", ")
        );
    } else if u.host_cleartext > 0 {
        println!(
            "underlay: {} cleartext packets between node addresses (node encryption off: \
             information, not a leak)",
            u.host_cleartext
        );
    } else {
        println!(
            "underlay: 0 cleartext packets between node addresses ({} on bypass ports)",
            u.bypassed
        );
    }
}

/// `lab down`: removes every namespace of the lab and its state directory. Works on a
/// half-built lab too.
pub fn down(name: &str) -> Result<usize> {
    let names = Names { lab: name.into() };
    let all = topology::existing(&names);
    // agents first: they would re-register and re-apply what goes next
    agents::stop_all(name);
    vppnode::stop_all(name);
    // Pods first (their veths die with them), then nodes, then the wire.
    let mut ordered = all.clone();
    ordered.sort_by_key(|n| (n.contains("-p"), n.ends_with("-wire")));
    ordered.reverse();
    for n in &ordered {
        topology::delete_netns(n);
    }
    let dir = LabState::dir(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io("remove lab dir", dir.display(), e))?;
    }
    Ok(all.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 3-node × 1-pod lab state of `backend` (no node exists: for planning tests).
    pub(crate) fn lab(agents: bool, backend: &str) -> LabState {
        let backend: LabBackend = backend.parse().unwrap();
        LabState {
            spec: LabSpec {
                name: "t".into(),
                nodes: 3,
                pods_per_node: 1,
                backend,
                agents,
                node_encryption: false,
                ipv6: false,
            },
            pods: vec![],
            node_backends: (1..=3).map(|i| backend.node(i)).collect(),
        }
    }

    #[test]
    fn pods_on_agents_wait_for_the_agents_guard() {
        for backend in ["veth", "vpp", "mixed", "ipvlan"] {
            let l = lab(true, backend);
            for i in 1..=3 {
                let c = pod_conf(&l, i);
                let file = agents::tunnel_status_file(&l, i);
                assert_eq!(
                    c["tunnelStatusFile"],
                    file.display().to_string(),
                    "{backend}"
                );
                assert!(
                    agent_argv_has(&l, i, &file.display().to_string()),
                    "{backend} n{i}"
                );
            }
            // the lab's mesh file has no agent to write it: no gate
            assert!(pod_conf(&lab(false, backend), 1)
                .get("tunnelStatusFile")
                .is_none());
        }
    }

    #[test]
    fn an_ipv6_lab_gives_pods_both_families_and_agents_the_ipv6_underlay() {
        for backend in ["veth", "vpp", "mixed"] {
            let mut l = lab(true, backend);
            l.spec.ipv6 = true;
            for i in 1..=3 {
                let c = pod_conf(&l, i);
                let ranges: Vec<&str> = c["ipam"]["ranges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r[0]["subnet"].as_str().unwrap())
                    .collect();
                let v6 = format!("fd00:10:244:{i}::/64");
                assert_eq!(ranges, [format!("10.244.{i}.0/24").as_str(), v6.as_str()]);
                match vppnode::is_vpp(&l, i) {
                    true => assert_eq!(c["vpp"]["underlayIpv6"], true, "{backend} n{i}"),
                    false => assert_eq!(c["mtu"], 1420, "{backend} n{i}"),
                }
                let argv = agents::agent_argv(&l, i).unwrap();
                let values = |flag: &str| -> Vec<String> {
                    argv.windows(2)
                        .filter(|w| w[0] == flag)
                        .map(|w| w[1].clone())
                        .collect()
                };
                assert_eq!(values("--underlay"), [format!("2001:db8::{i}")]);
                assert_eq!(values("--pod-cidr"), [format!("10.244.{i}.0/24"), v6]);
                assert_eq!(
                    values("--cluster-cidr"),
                    ["10.244.0.0/16", "fd00:10:244::/48"]
                );
            }
        }
        // the IPv4 lab is unchanged: one range, no MTU, IPv4 underlay
        let l = lab(true, "veth");
        let c = pod_conf(&l, 2);
        assert_eq!(c["ipam"]["ranges"].as_array().unwrap().len(), 1);
        assert!(c.get("mtu").is_none());
        let argv = agents::agent_argv(&l, 2).unwrap();
        assert!(argv
            .windows(2)
            .any(|w| w[0] == "--underlay" && w[1] == "192.0.2.2"));
        let mut ipvlan = lab(false, "ipvlan").spec;
        ipvlan.ipv6 = true;
        let e = ipvlan.validate().unwrap_err().to_string();
        assert!(e.contains("--ipv6 with --backend ipvlan"), "{e}");
    }

    fn agent_argv_has(l: &LabState, i: usize, file: &str) -> bool {
        let argv = agents::agent_argv(l, i).unwrap();
        argv.windows(2)
            .any(|w| w[0] == "--tunnel-status-file" && w[1] == file)
    }
}
