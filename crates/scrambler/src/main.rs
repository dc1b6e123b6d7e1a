//! `scrambler`: apply the encrypted mesh on a node, show its status, rotate keys, run the lab.

use clap::{Args, Parser, Subcommand};
#[cfg(feature = "lab")]
use scrambler::lab::{self, backend::LabBackend, inject::Fault, LabSpec};
use scrambler::{apply, cluster, meshfile, record};
use scrambler_core::{ClusterSecret, Error, Netns, Result};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
#[cfg(feature = "lab")]
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "scrambler",
    version,
    about = "Scrambler: encrypted pod network between nodes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Reconcile or remove this node's mesh.
    Mesh {
        #[command(subcommand)]
        cmd: MeshCmd,
    },
    /// Show every peer: tunnel up, key generation, counters, errors, last change.
    ///
    /// Exit status: 0 healthy (every peer up, encryption on, fail-closed guard in place);
    /// 2 unhealthy (a peer down, encryption off or the guard missing: the report says
    /// which); 1 the status could not be read (mesh file, key file, dataplane).
    Status {
        #[command(flatten)]
        node: NodeArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rotate the keys. With --mesh: step the rotation in the mesh file (prepare, switch,
    /// finish); apply the mesh on every node after each step. With --etcd-endpoints: start a
    /// cluster-wide rotation that the agents carry out (install inbound, acknowledge, switch
    /// once every live node acknowledged, retire the old generation after the grace period).
    Rotate {
        /// Mesh file (file mode, without agents).
        #[arg(
            long,
            required_unless_present = "endpoints",
            conflicts_with = "endpoints"
        )]
        mesh: Option<PathBuf>,
        #[command(flatten)]
        etcd: EtcdArgs,
        /// With --etcd-endpoints: how long the old generation stays accepted after every node
        /// switched (seconds).
        #[arg(long, default_value_t = scrambler_agent::record::DEFAULT_GRACE_SECS)]
        grace_secs: u64,
    },
    /// Run the node agent: register this node in etcd, keep its dataplane reconciled to the
    /// cluster, take part in key rotations. Runs until SIGTERM.
    Agent(Box<AgentArgs>),
    /// The agent's liveness or readiness, from its status file only (a Kubernetes exec
    /// probe: no key, no etcd, no dataplane access). Exit 0 with "ok", or 1 saying why.
    /// Live: the agent's loop rewrote its status in the last 120 s. Ready: live, the
    /// node's fail-closed guard in place, its mesh reconciled without error, registered.
    AgentCheck {
        /// The agent's --state-dir.
        #[arg(long, default_value = scrambler_agent::agent::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// What to check.
        #[arg(value_enum)]
        check: AgentCheck,
    },
    /// Install the CNI plugin on this node (a DaemonSet's init container): claim the node's
    /// id and pod CIDR in etcd, copy the CNI binaries, write the conflist with the pod CIDR.
    InstallCni(Box<InstallCniArgs>),
    /// Delete a node from the cluster in etcd: its registration goes and its node id and pod
    /// CIDRs are released. Stop the node's agent first.
    DeleteNode {
        #[command(flatten)]
        etcd: EtcdArgs,
        /// The node's name.
        #[arg(value_parser = node_name)]
        name: String,
    },
    /// Write a new cluster secret (mode 0600).
    Keygen {
        /// Where to write it; must not exist. Missing directories are created (mode 0700).
        #[arg(long)]
        out: PathBuf,
    },
    /// A multi-node encrypted cluster on this machine, with failure injection.
    #[cfg(feature = "lab")]
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// The lab: not in this build (build with `--features lab`, as scripts/lab.sh does).
    #[cfg(not(feature = "lab"))]
    #[command(disable_help_flag = true)]
    Lab {
        /// Whatever was asked of the lab.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

/// What `scrambler lab` says in a build without the lab.
#[cfg(not(feature = "lab"))]
const LAB_NOT_BUILT: &str = "this scrambler is built without the lab: build it with \
     `cargo build --release -p scrambler --features lab` (scripts/lab.sh does)";

/// What `scrambler agent-check` checks.
#[derive(clap::ValueEnum, Clone, Copy)]
enum AgentCheck {
    /// The agent's loop runs (liveness probe).
    Live,
    /// The node is guarded, reconciled and registered (readiness probe).
    Ready,
}

/// How to reach etcd.
#[derive(Args, Clone)]
struct EtcdArgs {
    /// etcd endpoints, comma-separated (https:// with the TLS files).
    #[arg(
        long = "etcd-endpoints",
        id = "endpoints",
        env = "SCRAMBLER_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// CA bundle of the etcd servers (PEM).
    #[arg(long, env = "SCRAMBLER_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd (PEM).
    #[arg(long, env = "SCRAMBLER_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// Client key for etcd (PEM).
    #[arg(long, env = "SCRAMBLER_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// Prefix of Scrambler's keys in etcd.
    #[arg(long, env = "SCRAMBLER_ETCD_PREFIX", default_value = scrambler_agent::layout::DEFAULT_PREFIX)]
    etcd_prefix: String,
}

impl EtcdArgs {
    fn config(&self) -> Result<scrambler_agent::EtcdConfig> {
        if self.endpoints.is_empty() {
            return Err(Error::config("--etcd-endpoints: no etcd endpoint given"));
        }
        Ok(scrambler_agent::EtcdConfig {
            endpoints: self.endpoints.clone(),
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            prefix: self.etcd_prefix.clone(),
            timeout: std::time::Duration::from_secs(3),
        })
    }
}

/// `scrambler agent`.
#[derive(Args, Clone)]
struct AgentArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// This node's name (in Kubernetes: the node name, from the downward API).
    #[arg(long, env = "SCRAMBLER_NODE_NAME", value_parser = node_name)]
    node: String,
    /// The node's underlay addresses (ESP's outer addresses), comma-separated.
    #[arg(
        long,
        env = "SCRAMBLER_UNDERLAY",
        value_delimiter = ',',
        required = true
    )]
    underlay: Vec<std::net::IpAddr>,
    /// A fixed node id (1-65535); default: claim a free one in etcd.
    #[arg(long)]
    node_id: Option<u32>,
    /// Fixed pod CIDRs of this node, comma-separated; default: claim one from --pod-cidr-pool.
    #[arg(long, env = "SCRAMBLER_POD_CIDRS", value_delimiter = ',')]
    pod_cidr: Vec<ipnet::IpNet>,
    /// The cluster's pod network, from which each node claims one CIDR.
    #[arg(long, env = "SCRAMBLER_POD_CIDR_POOL")]
    pod_cidr_pool: Option<ipnet::IpNet>,
    /// Prefix length of each node's CIDR out of --pod-cidr-pool.
    #[arg(long, default_value_t = 24)]
    node_prefix_len: u8,
    /// The cluster's pod supernets, comma-separated, guarded on this node whether or not
    /// every peer is known; default: --pod-cidr-pool. Every node must hold every pod CIDR.
    #[arg(long, env = "SCRAMBLER_CLUSTER_CIDRS", value_delimiter = ',')]
    cluster_cidr: Vec<ipnet::IpNet>,
    /// Tunnel dataplane: xfrm (the kernel) or vpp.
    #[arg(long, env = "SCRAMBLER_BACKEND", default_value = "xfrm")]
    backend: String,
    /// With --backend vpp: the node's VPP binary-API socket.
    #[arg(long, default_value = apply::DEFAULT_VPP_SOCKET)]
    vpp_socket: PathBuf,
    /// With --backend vpp: the MTU of the node's underlay (uplink); the host link into VPP
    /// gets it minus the ESP and IPIP overhead, as pods do (the CNI conf's
    /// `vpp.underlayMtu`).
    #[arg(long, default_value_t = scrambler_vpp::attach::DEFAULT_UNDERLAY_MTU,
          value_parser = clap::value_parser!(u32).range(576..=65535))]
    underlay_mtu: u32,
    /// The cluster secret (hex, mode 0600 or 0400).
    #[arg(
        long,
        env = "SCRAMBLER_KEY_FILE",
        default_value = "/etc/scrambler/cluster.key"
    )]
    key_file: PathBuf,
    /// Where the agent keeps its epoch, the mesh it applied (mesh.json, usable with
    /// `scrambler status --mesh`) and its status.
    #[arg(long, default_value = scrambler_agent::agent::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Where the node's ledger of every outbound SA it installed lives (shared with
    /// `scrambler mesh apply`); must survive reboots.
    #[arg(long, default_value = scrambler_core::ledger::DEFAULT_DIR)]
    ledger_dir: PathBuf,
    /// The node's network namespace (a path); default: the current one.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Quiet period before a change is reconciled (ms); a burst of changes costs one reconcile.
    #[arg(long, default_value_t = 200)]
    debounce_ms: u64,
    /// Longest a change waits for its reconcile (ms).
    #[arg(long, default_value_t = 2000)]
    max_delay_ms: u64,
    /// Registration lease TTL (s): how long a silent node stays in its peers' meshes.
    #[arg(long, default_value_t = scrambler_agent::agent::DEFAULT_LEASE_TTL)]
    lease_ttl: i64,
    /// How long a peer whose registration went (lease expired) but whose claim stays is
    /// kept in this node's mesh with its SAs (s), so that it comes back under the same
    /// epoch without any node re-keying; 0: drop it at once; at most 86400 (one day).
    #[arg(long, default_value_t = scrambler_agent::agent::DEFAULT_DEPARTED_HOLD.as_secs())]
    departed_hold_secs: u64,
    /// After an epoch change without a dataplane reset (a lost or refused outbound SA),
    /// how long the node keeps its inbound SAs of the epoch it left (s), so that peers
    /// still sending under it are received until they re-key; 0: keep none; at most 3600.
    #[arg(long, default_value_t = scrambler_agent::agent::DEFAULT_EPOCH_GRACE.as_secs())]
    epoch_grace_secs: u64,
    /// Where to write the dataplane's status for the CNI plugin (its conf's
    /// "tunnelStatusFile"): kept fresh (`updated`, `maxAge`) while the node's fail-closed
    /// guard is in place; removed when it is not, at start and at stop. The plugin refuses
    /// ADD without a fresh one.
    #[arg(long, env = "SCRAMBLER_TUNNEL_STATUS_FILE")]
    tunnel_status_file: Option<PathBuf>,
    /// Node encryption: this node's own traffic to its peers' underlay addresses rides the
    /// mesh too, except ESP and the bypass ports. Every node of the cluster must have it
    /// (the replies come back through the mesh). The ports of --etcd-endpoints and tcp/2380
    /// are always bypassed, so a node that lost its mesh can still reach etcd.
    #[arg(long, env = "SCRAMBLER_NODE_ENCRYPTION")]
    node_encryption: bool,
    /// With --node-encryption: a port whose traffic between nodes stays outside the mesh
    /// (in the clear, both directions, as source or destination port), as PROTO/PORT
    /// (tcp/22, udp/53); repeat for several (at most 16 with the etcd ports).
    #[arg(
        long = "node-encryption-bypass",
        value_name = "PROTO/PORT",
        requires = "node_encryption"
    )]
    node_encryption_bypass: Vec<scrambler_core::BypassPort>,
}

impl AgentArgs {
    fn config(&self) -> Result<scrambler_agent::AgentConfig> {
        let backend: scrambler_core::TunnelDataplane = self.backend.parse()?;
        let mut c = scrambler_agent::AgentConfig::new(
            &self.node,
            self.underlay.clone(),
            self.state_dir.clone(),
            self.key_file.clone(),
        );
        c.id = self.node_id.map(scrambler_core::NodeId::new).transpose()?;
        c.pod_cidrs = self.pod_cidr.clone();
        c.pod_cidr_pool = self.pod_cidr_pool.map(|p| (p, self.node_prefix_len));
        if c.pod_cidrs.is_empty() && c.pod_cidr_pool.is_none() {
            return Err(Error::config(
                "give this node's --pod-cidr, or a --pod-cidr-pool to claim one from",
            ));
        }
        c.cluster_cidrs = self.cluster_cidr.clone();
        if c.cluster_cidrs.is_empty() && c.pod_cidr_pool.is_none() {
            return Err(Error::config(
                "give the cluster's pod supernets (--cluster-cidr) with a fixed --pod-cidr",
            ));
        }
        c.ledger_dir = self.ledger_dir.clone();
        c.dataplane = backend.to_string();
        c.netns = self.netns.clone().map(Netns::Path).unwrap_or_default();
        c.debounce = std::time::Duration::from_millis(self.debounce_ms);
        c.max_delay = std::time::Duration::from_millis(self.max_delay_ms);
        if self.lease_ttl < 2 {
            return Err(Error::config("--lease-ttl: at least 2 seconds"));
        }
        c.lease_ttl = self.lease_ttl;
        let max_hold = scrambler_agent::agent::MAX_DEPARTED_HOLD.as_secs();
        if self.departed_hold_secs > max_hold {
            return Err(Error::config(format!(
                "--departed-hold-secs {}: at most {max_hold} (one day)",
                self.departed_hold_secs
            )));
        }
        c.departed_hold = std::time::Duration::from_secs(self.departed_hold_secs);
        let max_grace = scrambler_agent::agent::MAX_EPOCH_GRACE.as_secs();
        if self.epoch_grace_secs > max_grace {
            return Err(Error::config(format!(
                "--epoch-grace-secs {}: at most {max_grace} (one hour)",
                self.epoch_grace_secs
            )));
        }
        c.epoch_grace = std::time::Duration::from_secs(self.epoch_grace_secs);
        c.tunnel_status_file = self.tunnel_status_file.clone();
        c.node_encryption = scrambler_agent::node_encryption::setting(
            self.node_encryption,
            &self.node_encryption_bypass,
            &self.etcd.endpoints,
        )?;
        Ok(c)
    }
}

/// `scrambler install-cni`.
#[derive(Args, Clone)]
struct InstallCniArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// This node's name.
    #[arg(long, env = "SCRAMBLER_NODE_NAME", value_parser = node_name)]
    node: String,
    /// A fixed node id (1-65535); default: claim a free one.
    #[arg(long)]
    node_id: Option<u32>,
    /// Fixed pod CIDRs of this node, comma-separated; default: claim one from --pod-cidr-pool.
    #[arg(long, env = "SCRAMBLER_POD_CIDRS", value_delimiter = ',')]
    pod_cidr: Vec<ipnet::IpNet>,
    /// The cluster's pod network, from which each node claims one CIDR.
    #[arg(long, env = "SCRAMBLER_POD_CIDR_POOL")]
    pod_cidr_pool: Option<ipnet::IpNet>,
    /// Prefix length of each node's CIDR out of --pod-cidr-pool.
    #[arg(long, default_value_t = 24)]
    node_prefix_len: u8,
    /// Where the CNI binaries to install are.
    #[arg(long, default_value = "/usr/local/bin")]
    bin_src: PathBuf,
    /// The node's CNI binary dir.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The conflist template; "__POD_CIDR__" becomes the node's pod CIDR.
    #[arg(long)]
    conf_template: PathBuf,
    /// The node's CNI conf dir.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The conflist's file name.
    #[arg(long, default_value = "10-scrambler.conflist")]
    conf_name: String,
}

#[derive(Args, Clone)]
struct NodeArgs {
    /// Mesh file (nodes, underlay addresses, pod CIDRs, key file, generations).
    #[arg(long)]
    mesh: PathBuf,
    /// This node's name in the mesh (lowercase letters, digits, '-' and '.').
    #[arg(long, value_parser = node_name)]
    node: String,
    /// The node's network namespace (a path); default: the current one.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Where node records are kept.
    #[arg(long, default_value = record::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Where the node's ledger of outbound SAs is kept: every SA ever installed, so none
    /// is installed twice. Must survive reboots.
    #[arg(long, default_value = scrambler_core::ledger::DEFAULT_DIR)]
    ledger_dir: PathBuf,
    /// Tunnel dataplane: xfrm (the kernel) or vpp.
    #[arg(long, default_value = "xfrm")]
    backend: String,
    /// With --backend vpp: the node's VPP binary-API socket.
    #[arg(long, default_value = apply::DEFAULT_VPP_SOCKET)]
    vpp_socket: PathBuf,
    /// With --backend vpp: the MTU of the node's underlay (uplink); the host link into VPP
    /// gets it minus the ESP and IPIP overhead, as pods do (the CNI conf's
    /// `vpp.underlayMtu`).
    #[arg(long, default_value_t = scrambler_vpp::attach::DEFAULT_UNDERLAY_MTU,
          value_parser = clap::value_parser!(u32).range(576..=65535))]
    underlay_mtu: u32,
}

impl NodeArgs {
    fn to_apply(&self) -> Result<apply::ApplyArgs> {
        Ok(apply::ApplyArgs {
            mesh: self.mesh.clone(),
            node: self.node.clone(),
            netns: self.netns.clone().map(Netns::Path).unwrap_or_default(),
            state_dir: self.state_dir.clone(),
            ledger_dir: self.ledger_dir.clone(),
            backend: self.backend.parse()?,
            vpp_socket: self.vpp_socket.clone(),
            underlay_mtu: self.underlay_mtu,
        })
    }
}

#[derive(Subcommand)]
enum MeshCmd {
    /// Reconcile the node's dataplane to the mesh file (idempotent).
    Apply {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Give a node a new random epoch in the mesh file (rewritten in place), after its
    /// dataplane lost its SAs (reboot, VPP restart, `mesh remove`); then apply the mesh on
    /// every node. Every key and SPI with that node changes; no rotation is needed.
    Epoch {
        /// Mesh file.
        #[arg(long)]
        mesh: PathBuf,
        /// The node's name in the mesh.
        #[arg(long, value_parser = node_name)]
        node: String,
        /// The node did NOT lose its dataplane (an outbound SA was lost or refused by the
        /// ledger): keep its inbound SAs of the old epoch for this many seconds (listed in
        /// its `previousEpochs`), so peers still sending under it are received until the
        /// mesh is applied on them. Apply the mesh on this node first. Without it (after
        /// a reboot, a VPP restart, `mesh remove`) nothing is kept.
        #[arg(long)]
        keep_previous_secs: Option<u64>,
    },
    /// Remove the node's mesh (SAs, tunnels, routes into them), keeping the fail-closed guard
    /// for the cluster's pod supernets, so pods that still run cannot reach other nodes'
    /// pods in cleartext; `--remove-guard` removes the guard too. Applying the same mesh
    /// again afterwards is refused by the node's ledger: give the node a new epoch first
    /// (`scrambler mesh epoch`).
    Remove {
        /// The node's network namespace (a path); default: the current one.
        #[arg(long)]
        netns: Option<PathBuf>,
        /// Tunnel dataplane: xfrm (the kernel) or vpp.
        #[arg(long, default_value = "xfrm")]
        backend: String,
        /// With --backend vpp: the node's VPP binary-API socket.
        #[arg(long, default_value = apply::DEFAULT_VPP_SOCKET)]
        vpp_socket: PathBuf,
        /// Also remove the fail-closed guard: everything Scrambler owns goes. Only when no
        /// pod runs on the node any more (or cleartext between pods is acceptable): without
        /// the guard, pod traffic to other nodes follows the default route unencrypted.
        #[arg(long)]
        remove_guard: bool,
    },
}

#[cfg(feature = "lab")]
#[derive(Args, Clone)]
struct LabName {
    /// The lab's name, prefix of all its namespaces: 1-32 ASCII letters, digits, `-`, `_`.
    #[arg(long, default_value = "scr")]
    name: String,
}

#[cfg(feature = "lab")]
#[derive(Subcommand)]
enum LabCmd {
    /// Build N nodes, apply the mesh, start pods through the CNI binary.
    Up {
        #[command(flatten)]
        lab: LabName,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Node dataplanes: veth (alias xfrm: pods on veth pairs, the kernel's xfrm mesh),
        /// ipvlan (pods on ipvlan l3 slaves of the underlay, encrypted by the kernel's xfrm
        /// mesh), vpp (a VPP per node; needs no kernel ESP, so it runs on this kernel) or
        /// mixed (odd nodes VPP, even nodes veth).
        #[arg(long, default_value = "veth")]
        backend: String,
        /// Run the cluster on etcd: a real etcd and one `scrambler agent` per node build
        /// the mesh (instead of the lab's mesh file); adds the etcd-down, node-leave and
        /// node-join faults.
        #[arg(long)]
        agents: bool,
        /// Node encryption: the nodes' own traffic between their underlay addresses rides
        /// the mesh, but ESP and the bypass ports (etcd's tcp/2379, tcp/2380); `lab test`
        /// adds host-to-host pings and TCP and counts cleartext between node addresses as
        /// a leak.
        #[arg(long)]
        node_encryption: bool,
        /// An IPv6-only underlay (2001:db8::i/64) and dual-stack pods (10.244.i.0/24 and
        /// fd00:10:244:i::/64): ESP over IPv6, `lab test` pings both families (backends
        /// veth, vpp, mixed).
        #[arg(long)]
        ipv6: bool,
    },
    /// Ping every pod from every pod on other nodes, capturing the underlay; print a verdict.
    ///
    /// Exit status: 0 PASS, 2 FAIL, 1 an error.
    Test {
        #[command(flatten)]
        lab: LabName,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Inject a failure and measure how long traffic was lost.
    ///
    /// Exit status: 0 no cleartext on the underlay, 2 cleartext seen, 1 an error.
    Inject {
        #[command(flatten)]
        lab: LabName,
        /// The failure.
        #[arg(value_enum)]
        fault: Fault,
        /// Node it hits (1-based).
        #[arg(long, default_value_t = 1)]
        node: usize,
        /// How long the failure is held (ms), where that applies; also the rotation grace
        /// [default: 30000 for etcd-down, 1000 otherwise].
        #[arg(long)]
        hold_ms: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the status of every node of the lab.
    Status {
        #[command(flatten)]
        lab: LabName,
    },
    /// Remove every namespace and file of the lab.
    Down {
        #[command(flatten)]
        lab: LabName,
    },
    /// (internal) Hold the lab's VM on a kernel without ESP, from `lab up` to `lab down`.
    #[command(hide = true)]
    VmServe {
        #[command(flatten)]
        lab: LabName,
        /// Power the VM off when the process that started this daemon ends (`lab run`,
        /// whose tour the VM serves; `lab up`'s VM outlives `lab up`).
        #[arg(long)]
        stop_with_parent: bool,
    },
    /// (internal) In the lab's VM: run the lab commands sent by the host.
    #[command(hide = true)]
    VmAgent {
        /// The serial port to serve.
        #[arg(long)]
        port: PathBuf,
    },
    /// up, test, every failure with a test after it, down: the whole tour in one command.
    ///
    /// Exit status: 0 PASS, 2 FAIL, 1 an error.
    Run {
        #[command(flatten)]
        lab: LabName,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// Skip failure injection.
        #[arg(long)]
        no_inject: bool,
        /// Node dataplanes: veth (alias xfrm), ipvlan, vpp or mixed (as for `lab up`).
        #[arg(long, default_value = "veth")]
        backend: String,
        /// The cluster on etcd with one agent per node (as for `lab up`); the tour adds
        /// etcd-down, node-leave and node-join.
        #[arg(long)]
        agents: bool,
        /// Node encryption (as for `lab up`).
        #[arg(long)]
        node_encryption: bool,
        /// An IPv6-only underlay and dual-stack pods (as for `lab up`).
        #[arg(long)]
        ipv6: bool,
        /// With --agents: how long etcd stays down in the tour (s).
        #[arg(long, default_value_t = 30)]
        etcd_down_secs: u64,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SCRAMBLER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("scrambler: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scrambler: {}", apply::message(&e));
            ExitCode::FAILURE
        }
    }
}

/// `--node`: a plain node name, never a path (it names the node's record file).
fn node_name(s: &str) -> std::result::Result<String, String> {
    match scrambler_core::mesh::check_node_name(s) {
        Ok(()) => Ok(s.to_string()),
        Err(Error::InvalidMesh(m)) => Err(m),
        Err(e) => Err(e.to_string()),
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Mesh {
            cmd: MeshCmd::Apply { node },
        } => {
            let r = apply::apply(&node.to_apply()?).await?;
            println!(
                "mesh applied on {}: {} added, {} updated, {} removed, {} unchanged",
                node.node, r.added, r.updated, r.removed, r.unchanged
            );
        }
        Cmd::Mesh {
            cmd:
                MeshCmd::Epoch {
                    mesh,
                    node,
                    keep_previous_secs,
                },
        } => {
            if keep_previous_secs.is_some_and(|s| s == 0 || s > 3600) {
                return Err(Error::config(
                    "--keep-previous-secs: 1 to 3600 seconds (leave it out after a reset)",
                ));
            }
            let keep = keep_previous_secs.map(std::time::Duration::from_secs);
            let (old, new) = meshfile::new_epoch_keeping(&mesh, &node, keep)?;
            let old = old.map(|e| e.to_string()).unwrap_or_else(|| "none".into());
            println!(
                "node {node}: epoch {old} -> {new} in {}\napply the mesh on every node (`scrambler mesh apply`)",
                mesh.display()
            );
        }
        Cmd::Mesh {
            cmd:
                MeshCmd::Remove {
                    netns,
                    backend,
                    vpp_socket,
                    remove_guard,
                },
        } => {
            let ns = netns.map(Netns::Path).unwrap_or_default();
            let guard = if remove_guard {
                apply::Guard::Remove
            } else {
                apply::Guard::Keep
            };
            let r = apply::remove(&ns, backend.parse()?, &vpp_socket, guard).await?;
            match guard {
                apply::Guard::Keep => println!(
                    "removed {} objects; the fail-closed guard stays: pod traffic between \
                     nodes is dropped until the mesh is applied again (--remove-guard removes it)",
                    r.removed
                ),
                apply::Guard::Remove => println!(
                    "removed {} objects, the fail-closed guard included",
                    r.removed
                ),
            }
        }
        Cmd::Status { node, json } => {
            let st = apply::status(&node.to_apply()?).await?;
            // with an agent, its status file sits next to the mesh it applied
            let agent = cluster::agent_status_near(&node.mesh).transpose()?;
            if json {
                let mut v = serde_json::to_value(&st).map_err(|e| Error::decode("report", e))?;
                if let (Some(a), Some(o)) = (&agent, v.as_object_mut()) {
                    o.insert(
                        "agent".into(),
                        serde_json::to_value(a).map_err(|e| Error::decode("report", e))?,
                    );
                }
                println!("{}", to_json(&v)?);
            } else {
                if let Some(a) = &agent {
                    print!("{}", a.to_lines(record::now()));
                }
                print!("{}", st.to_table(record::now()));
            }
            if !st.healthy() || agent.is_some_and(|a| !a.etcd_connected) {
                return Ok(ExitCode::from(2));
            }
        }
        Cmd::Rotate {
            mesh: None,
            etcd,
            grace_secs,
        } => {
            let ks = cluster::rotate(&etcd.config()?, grace_secs).await?;
            println!(
                "rotation {}→{} started: the agents install it inbound, switch once every live \
                 node acknowledged, and retire generation {} {grace_secs}s later \
                 (`scrambler status` shows the phase)",
                ks.current,
                ks.next.unwrap_or(ks.current),
                ks.current
            );
        }
        Cmd::Agent(args) => {
            let cfg = args.config()?;
            let backend = args.backend.parse()?;
            cluster::run_agent(
                cfg,
                &args.etcd.config()?,
                backend,
                &args.vpp_socket,
                args.underlay_mtu,
            )
            .await?;
        }
        Cmd::AgentCheck { state_dir, check } => {
            let st = scrambler_agent::status::AgentStatus::load(
                &scrambler_agent::status::AgentStatus::path(&state_dir),
            )?;
            let r = match check {
                AgentCheck::Live => st.live(record::now()),
                AgentCheck::Ready => st.ready(record::now()),
            };
            match r {
                Ok(()) => println!("ok"),
                Err(why) => {
                    eprintln!("scrambler agent-check: {why}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
        Cmd::InstallCni(a) => {
            let req = scrambler_agent::claims::ClaimRequest {
                name: a.node.clone(),
                id: a.node_id.map(scrambler_core::NodeId::new).transpose()?,
                pod_cidrs: a.pod_cidr.clone(),
                pool: a.pod_cidr_pool.map(|p| (p, a.node_prefix_len)),
            };
            let inst = cluster::InstallCni {
                bin_src: a.bin_src.clone(),
                bin_dir: a.bin_dir.clone(),
                binaries: vec!["scrambler-cni".into(), "scrambler-ipam".into()],
                template: a.conf_template.clone(),
                conf_dir: a.conf_dir.clone(),
                conf_name: a.conf_name.clone(),
            };
            let c = cluster::install_cni(&a.etcd.config()?, &req, &inst).await?;
            println!(
                "CNI installed on {}: node id {}, pod CIDRs {:?}, conf {}",
                a.node,
                c.id,
                c.pod_cidrs,
                inst.conf_dir.join(&inst.conf_name).display()
            );
        }
        Cmd::DeleteNode { etcd, name } => match cluster::delete_node(&etcd.config()?, &name).await?
        {
            Some(c) => println!(
                "node {name} deleted: id {} and pod CIDRs {:?} released",
                c.id, c.pod_cidrs
            ),
            None => println!("node {name} held no claim; its registration (if any) is gone"),
        },
        Cmd::Rotate {
            mesh: Some(mesh), ..
        } => {
            let mut mf = meshfile::MeshFile::load(&mesh)?;
            let (phase, keys) = meshfile::next_rotation_phase(&mf.cluster.keys)?;
            mf.cluster.keys = keys;
            mf.save(&mesh)?;
            println!(
                "rotation phase: {phase}\nkeys now tx={} rx={:?}\nrun `scrambler mesh apply` on every node before the next `scrambler rotate`",
                mf.cluster.keys.tx, mf.cluster.keys.rx
            );
        }
        Cmd::Keygen { out } => {
            ClusterSecret::generate_file(&out)?;
            println!("wrote {} (mode 0600)", out.display());
        }
        #[cfg(feature = "lab")]
        Cmd::Lab { cmd } => return lab_cmd(cmd).await,
        #[cfg(not(feature = "lab"))]
        Cmd::Lab { .. } => return Err(Error::config(LAB_NOT_BUILT)),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "lab")]
async fn lab_cmd(cmd: LabCmd) -> Result<ExitCode> {
    match &cmd {
        LabCmd::VmServe {
            lab,
            stop_with_parent,
        } => {
            return lab::session::serve(
                &lab.name,
                &lab::pods::find_cni_binary()?,
                *stop_with_parent,
            )
        }
        LabCmd::VmAgent { port } => return lab::session::agent(port),
        _ => {}
    }
    check_lab_args(&cmd)?;
    let natively = match &cmd {
        LabCmd::Up { backend, .. } | LabCmd::Run { backend, .. } => {
            lab::vm::runs_natively_for(lab_backend(backend)?)
        }
        // later steps go where the lab is: a lab VM holding it answers for it (an ipvlan lab
        // lives there on a kernel that has ESP but no ipvlan)
        LabCmd::Test { lab, .. }
        | LabCmd::Inject { lab, .. }
        | LabCmd::Status { lab }
        | LabCmd::Down { lab }
            if !scrambler_vmtest::in_vm() && lab::session::running(&lab.name) =>
        {
            false
        }
        _ => lab::vm::runs_natively(),
    };
    if !natively && !vpp_only_lab(&cmd) {
        return lab_in_vm(cmd);
    }
    let spec = lab_spec(&cmd)?;
    match cmd {
        LabCmd::Up { lab, .. } => {
            let fresh = lab::topology::existing(&lab::topology::Names {
                lab: lab.name.clone(),
            })
            .is_empty()
                && !lab::LabState::dir(&lab.name).exists();
            let name = lab.name.clone();
            let spec = spec.ok_or_else(|| Error::config("lab up: nothing to build"))?;
            if let Err(e) = lab::up(spec).await {
                if fresh {
                    // a half-built lab (namespaces, VPPs, files) goes away with the failure
                    let _ = lab::down(&name);
                }
                return Err(e);
            }
        }
        LabCmd::Test { lab, json } => {
            let r = lab::test(&lab.name).await?;
            if json {
                println!("{}", to_json(&r)?);
            } else {
                lab::print_report(&r);
            }
            if !r.pass {
                return Ok(ExitCode::from(2));
            }
        }
        LabCmd::Inject {
            lab,
            fault,
            node,
            hold_ms,
            json,
        } => {
            let hold_ms = hold_ms.unwrap_or(match fault {
                Fault::EtcdDown => 30_000,
                _ => 1000,
            });
            let r =
                lab::inject::inject(&lab.name, fault, node, Duration::from_millis(hold_ms)).await?;
            if json {
                println!("{}", to_json(&r)?);
            } else {
                lab::inject::print_report(&r);
            }
            if !lab::inject::verdict(&r).is_empty() {
                return Ok(ExitCode::from(2));
            }
        }
        LabCmd::Status { lab } => {
            let state = lab::LabState::load(&lab.name)?;
            for i in 1..=state.spec.nodes {
                if let Some(a) = lab::agents::agent_status(&state, i).filter(|_| state.spec.agents)
                {
                    print!("{}", a.to_lines(record::now()));
                }
                let st = lab::node_status(&state, i).await?;
                print!("{}", st.to_table(record::now()));
                println!();
            }
        }
        LabCmd::Down { lab } => {
            let n = lab::down(&lab.name)?;
            println!("lab {:?} down: {n} namespaces removed", lab.name);
        }
        LabCmd::Run {
            no_inject,
            etcd_down_secs,
            ..
        } => {
            let spec = spec.ok_or_else(|| Error::config("lab run: nothing to build"))?;
            let tour = Tour {
                inject: !no_inject,
                etcd_down: Duration::from_secs(etcd_down_secs),
            };
            return lab_run(spec, tour).await;
        }
        LabCmd::VmServe { .. } | LabCmd::VmAgent { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "lab")]
/// What `lab up` / `lab run` are asked to build.
fn lab_spec(cmd: &LabCmd) -> Result<Option<LabSpec>> {
    match cmd {
        LabCmd::Up {
            lab,
            nodes,
            pods,
            backend,
            agents,
            node_encryption,
            ipv6,
        }
        | LabCmd::Run {
            lab,
            nodes,
            pods,
            backend,
            agents,
            node_encryption,
            ipv6,
            ..
        } => Ok(Some(LabSpec {
            name: lab.name.clone(),
            nodes: *nodes,
            pods_per_node: *pods,
            backend: lab_backend(backend)?,
            agents: *agents,
            node_encryption: *node_encryption,
            ipv6: *ipv6,
        })),
        _ => Ok(None),
    }
}

#[cfg(feature = "lab")]
/// `lab up` / `lab run --backend`.
fn lab_backend(name: &str) -> Result<LabBackend> {
    name.parse().map_err(Error::Unsupported)
}

#[cfg(feature = "lab")]
/// Refuses bad arguments before anything is built or booted: the lab's name, and for `lab
/// up` / `lab run` the node and pod counts, the backend and (for VPP backends) a VPP.
fn check_lab_args(cmd: &LabCmd) -> Result<()> {
    match cmd {
        LabCmd::Test { lab, .. }
        | LabCmd::Inject { lab, .. }
        | LabCmd::Status { lab }
        | LabCmd::Down { lab } => lab::check_name(&lab.name),
        _ => match lab_spec(cmd)? {
            Some(spec) => {
                spec.validate()?;
                if spec.backend.uses_vpp() {
                    lab::vppnode::dist()?;
                }
                if spec.agents {
                    lab::agents::check_installed()?;
                }
                Ok(())
            }
            None => Ok(()),
        },
    }
}

#[cfg(feature = "lab")]
/// On a kernel without ESP, the lab lives in a VM (see `lab::session`): `lab up` boots it
/// and `lab down` powers it off, the other steps are sent to it, and `lab run` boots one
/// for the whole tour. A `lab up` or `lab run` that fails leaves no VM behind.
fn lab_in_vm(cmd: LabCmd) -> Result<ExitCode> {
    use lab::session;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let name = match &cmd {
        LabCmd::Run { lab, .. }
        | LabCmd::Up { lab, .. }
        | LabCmd::Test { lab, .. }
        | LabCmd::Inject { lab, .. }
        | LabCmd::Status { lab }
        | LabCmd::Down { lab }
        | LabCmd::VmServe { lab, .. } => lab.name.clone(),
        LabCmd::VmAgent { .. } => return Err(Error::config("vm-agent runs inside the lab VM")),
    };
    let down = ["lab", "down", "--name", &name].map(String::from);
    match cmd {
        LabCmd::Up { .. } | LabCmd::Run { .. } => {
            if session::running(&name) {
                return Err(Error::AlreadyExists {
                    object: format!("lab {name:?}"),
                    reason: "run `scrambler lab down` first".into(),
                });
            }
            eprintln!("[lab] this kernel lacks ESP/xfrm interfaces: the lab runs in Debian's stock kernel under qemu");
            let started = std::time::Instant::now();
            // the VM of a `lab run` ends with it (killed, or its terminal closed)
            session::start(&name, matches!(cmd, LabCmd::Run { .. }))?;
            let booted = started.elapsed().as_secs_f64();
            let code = session::forward(&name, &argv);
            let is_up = matches!(cmd, LabCmd::Up { .. }) && matches!(code, Ok(0));
            match &code {
                // a hung guest or a broken channel: `lab down` cannot run in it
                Err(_) => session::kill(&name),
                Ok(_) if is_up => {}
                // the tour is over, or the lab failed (and removed itself in the VM)
                Ok(_) => {
                    let _ = session::stop(&name, &down, false);
                }
            }
            let took = started.elapsed().as_secs_f64();
            match (is_up, &cmd) {
                (true, _) => eprintln!(
                    "[lab] lab {name:?} is up in {took:.1}s ({booted:.1}s of it starting the lab VM)"
                ),
                (false, LabCmd::Run { .. }) => eprintln!(
                    "[lab] lab run took {took:.1}s ({booted:.1}s of it starting the lab VM)"
                ),
                (false, _) => eprintln!("[lab] lab up failed: the lab VM is powered off"),
            }
            code.map(exit_code)
        }
        LabCmd::Down { .. } if !session::running(&name) => {
            // what a VM that ended by itself (a guest panic) left on the host
            session::forget(&name);
            println!("lab {name:?} is not up");
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down { .. } => session::stop(&name, &argv, true).map(exit_code),
        _ if !session::running(&name) => Err(Error::config(format!(
            "no lab named {name:?} is up (run `scrambler lab up`)"
        ))),
        _ => {
            let code = session::forward(&name, &argv);
            if code.is_err() {
                // a hung guest or a VM that ended: nothing of the lab can be reached
                session::kill(&name);
            }
            code.map(exit_code)
        }
    }
}

#[cfg(feature = "lab")]
/// A process exit status as this process's exit code (out-of-range statuses become 1).
fn exit_code(status: i32) -> ExitCode {
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

#[cfg(feature = "lab")]
/// What `lab run` does after `up` and the first test.
struct Tour {
    /// Inject the faults.
    inject: bool,
    /// How long etcd stays down (with agents).
    etcd_down: Duration,
}

#[cfg(feature = "lab")]
/// The whole tour; always takes the lab down, even on failure.
async fn lab_run(spec: LabSpec, tour: Tour) -> Result<ExitCode> {
    let name = spec.name.clone();
    let result = lab_tour(spec, tour).await;
    let t = std::time::Instant::now();
    let removed = lab::down(&name);
    eprintln!(
        "[lab] lab {name:?} down in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let pass = result?;
    removed?;
    println!("\nlab run: {}", if pass { "PASS" } else { "FAIL" });
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[cfg(feature = "lab")]
/// The faults of the tour, in order (those a lab does not support are skipped).
const TOUR: [Fault; 8] = [
    Fault::LinkDown,
    Fault::DeleteState,
    Fault::KillAgent,
    Fault::Rotate,
    Fault::EtcdDown,
    Fault::NodeLeave,
    Fault::NodeJoin,
    Fault::Reboot,
];

#[cfg(feature = "lab")]
async fn lab_tour(spec: LabSpec, tour: Tour) -> Result<bool> {
    let name = spec.name.clone();
    lab::up(spec).await?;
    println!("\n== lab test");
    let r = lab::test(&name).await?;
    lab::print_report(&r);
    let mut pass = r.pass;
    if !tour.inject {
        return Ok(pass);
    }
    for fault in TOUR {
        let state = lab::LabState::load(&name)?;
        let Some(node) = lab::vppnode::tour_target(&state, fault) else {
            println!("\n== lab inject {fault:?}: skipped (this lab does not support it)");
            continue;
        };
        println!("\n== lab inject {fault:?}");
        let hold = match fault {
            Fault::EtcdDown => tour.etcd_down,
            _ => Duration::from_millis(1000),
        };
        let ir = lab::inject::inject(&name, fault, node, hold).await?;
        lab::inject::print_report(&ir);
        // print_report said why
        pass &= lab::inject::verdict(&ir).is_empty();
        let r = lab::test(&name).await?;
        println!("-- lab test after {fault:?}");
        lab::print_report(&r);
        pass &= r.pass;
    }
    Ok(pass)
}

#[cfg(feature = "lab")]
/// True for a lab that runs on any kernel because every node is VPP: `lab up`/`lab run
/// --backend vpp`, and the later steps of such a lab built here (not in a lab VM).
fn vpp_only_lab(cmd: &LabCmd) -> bool {
    match cmd {
        // a lab of that name in a lab VM answers for itself there
        LabCmd::Up { backend, lab, .. } => {
            lab_backend(backend).is_ok_and(LabBackend::needs_no_kernel_esp)
                && !lab::session::running(&lab.name)
        }
        LabCmd::Run { backend, .. } => {
            lab_backend(backend).is_ok_and(LabBackend::needs_no_kernel_esp)
        }
        LabCmd::Test { lab, .. }
        | LabCmd::Inject { lab, .. }
        | LabCmd::Status { lab }
        | LabCmd::Down { lab } => {
            !lab::session::running(&lab.name)
                && lab::LabState::load(&lab.name)
                    .is_ok_and(|s| (1..=s.spec.nodes).all(|i| lab::vppnode::is_vpp(&s, i)))
        }
        LabCmd::VmServe { .. } | LabCmd::VmAgent { .. } => false,
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::decode("report", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(extra: &[&str]) -> std::result::Result<AgentArgs, clap::Error> {
        let mut argv = vec![
            "scrambler",
            "agent",
            "--etcd-endpoints",
            "http://10.0.0.1:4001,http://10.0.0.2:4001",
            "--node",
            "a",
            "--underlay",
            "192.0.2.1",
            "--pod-cidr",
            "10.0.1.0/24",
            "--cluster-cidr",
            "10.0.0.0/8",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv)?.cmd {
            Cmd::Agent(a) => Ok(*a),
            _ => panic!("not the agent"),
        }
    }

    #[test]
    fn node_encryption_flags_give_the_agent_its_setting_with_the_etcd_ports() {
        let c = agent(&[]).unwrap().config().unwrap();
        assert_eq!(c.node_encryption, None);
        let c = agent(&["--node-encryption"]).unwrap().config().unwrap();
        let names = |c: &scrambler_agent::AgentConfig| {
            c.node_encryption
                .as_ref()
                .unwrap()
                .bypass
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&c), ["tcp/4001", "tcp/2380"]);
        let c = agent(&[
            "--node-encryption",
            "--node-encryption-bypass",
            "tcp/22",
            "--node-encryption-bypass",
            "udp/53",
        ])
        .unwrap()
        .config()
        .unwrap();
        assert_eq!(names(&c), ["tcp/22", "udp/53", "tcp/4001", "tcp/2380"]);
        // a bypass list without node encryption, a bad port: refused by the parser
        assert!(agent(&["--node-encryption-bypass", "tcp/22"]).is_err());
        let e = agent(&["--node-encryption", "--node-encryption-bypass", "icmp/1"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tcp, udp"), "{e}");
    }
}
