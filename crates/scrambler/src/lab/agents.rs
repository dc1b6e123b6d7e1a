//! The lab on etcd (`lab up --agents`): a real etcd and one `scrambler agent` per node, so
//! the mesh comes from etcd, as on a cluster, not from the lab's mesh file.
//!
//! etcd (Debian's etcd-server, data in `<lab dir>/etcd`) listens on 127.0.0.1 inside the
//! lab's wire namespace, and every agent runs in that namespace too (`ip netns exec`) with
//! `--netns` naming its node: the agents reach etcd whatever happens to a node's underlay
//! (a VPP node's underlay belongs to VPP), nothing binds a port of the machine the lab runs
//! on, and everything goes with the wire namespace. Each node's agent keeps its state (the
//! mesh it applied, `agent-status.json`, its epoch) in `<lab dir>/agents/<node>/` and its
//! log in `<lab dir>/agents/<node>.log`; the nodes' ledgers are the lab's (`ledger/`), as in
//! file mode. Agents and etcd run detached (they outlive `lab up`); their pid files name
//! them, and `lab down` stops them before the namespaces go.

use super::{cmd, vppnode, LabState};
use scrambler_agent::status::{AgentStatus, MESH_FILE, STATUS_FILE};
use scrambler_core::{Error, Generation, Result, TunnelDataplane};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// etcd's client endpoint, inside the wire namespace.
pub const ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
const ETCD_PEER: &str = "http://127.0.0.1:2380";

/// The agents' registration lease (s): a node whose agent stopped leaves its peers' meshes
/// this long after. The agents' default: a restarted agent (`kill-agent`; a debug build
/// under qemu TCG takes several seconds to start) is back well before it expires, and
/// `node-leave` deletes the node in etcd rather than waiting for it.
pub const LEASE_TTL_SECS: i64 = scrambler_agent::agent::DEFAULT_LEASE_TTL;

/// How long `lab up` waits for the agents to build the mesh.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// Fails, naming the package, when etcd or etcdctl is missing.
pub fn check_installed() -> Result<()> {
    for (bin, pkg) in [("etcd", "etcd-server"), ("etcdctl", "etcd-client")] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
        if !found {
            return Err(Error::config(format!(
                "lab --agents needs {bin}: install Debian's {pkg} (scripts/install-deps.sh lab)"
            )));
        }
    }
    Ok(())
}

/// The lab's etcd dir (its pid file, log and data dir).
fn etcd_dir(lab: &str) -> PathBuf {
    LabState::dir(lab).join("etcd")
}

/// etcd's `--data-dir`: the argument that names the lab's etcd process.
fn etcd_data_dir(lab: &str) -> PathBuf {
    etcd_dir(lab).join("data")
}

/// Where the agents keep their state, one directory per node.
fn agents_dir(lab: &str) -> PathBuf {
    LabState::dir(lab).join("agents")
}

/// Node `i`'s agent state dir.
pub fn agent_dir(state: &LabState, i: usize) -> PathBuf {
    agents_dir(&state.spec.name).join(state.names().node(i))
}

/// Where node `i`'s agent writes its dataplane's status for the CNI plugin
/// (`--tunnel-status-file`; the pods' conf names it as `tunnelStatusFile`, so the plugin
/// refuses ADD until the node's fail-closed guard is in place).
pub fn tunnel_status_file(state: &LabState, i: usize) -> PathBuf {
    agent_dir(state, i).join("tunnel-status.json")
}

/// The mesh node `i`'s agent applied last (what `lab status` / `lab test` read).
pub fn agent_mesh(state: &LabState, i: usize) -> PathBuf {
    agent_dir(state, i).join(MESH_FILE)
}

/// Node `i`'s agent status, if it wrote one.
pub fn agent_status(state: &LabState, i: usize) -> Option<AgentStatus> {
    AgentStatus::load(&agent_dir(state, i).join(STATUS_FILE)).ok()
}

fn pid_file(dir: &Path, what: &str) -> PathBuf {
    dir.join(format!("{what}.pid"))
}

/// Spawns `argv` in the wire namespace, detached (its own session: it outlives `lab up`),
/// output to `log`; returns its pid (`ip netns exec` execs in place).
fn spawn_in_wire(state: &LabState, argv: &[String], log: &Path) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).map_err(|e| Error::io("create", log.display(), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io("dup", log.display(), e))?;
    let mut c = std::process::Command::new(cmd::ip_bin());
    c.args(["netns", "exec", &state.names().wire()])
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe; the process must outlive this command.
    unsafe {
        c.pre_exec(|| {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let child = c
        .spawn()
        .map_err(|e| Error::io("start in the wire namespace", &argv[0], e))?;
    Ok(child.id())
}

/// Starts the lab's etcd (a fresh data dir on the first start, the same one after an
/// `etcd-down`) and waits until it answers.
pub async fn start_etcd(state: &LabState) -> Result<()> {
    let dir = etcd_dir(&state.spec.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", dir.display(), e))?;
    let argv: Vec<String> = [
        "etcd",
        "--name",
        "lab",
        "--data-dir",
        &etcd_data_dir(&state.spec.name).display().to_string(),
        "--listen-client-urls",
        ETCD_ENDPOINT,
        "--advertise-client-urls",
        ETCD_ENDPOINT,
        "--listen-peer-urls",
        ETCD_PEER,
        "--initial-advertise-peer-urls",
        ETCD_PEER,
        "--initial-cluster",
        &format!("lab={ETCD_PEER}"),
    ]
    .map(String::from)
    .to_vec();
    let pid = spawn_in_wire(state, &argv, &dir.join("etcd.log"))?;
    write_pid(&pid_file(&dir, "etcd"), pid)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = cmd::netns_exec(
            &state.names().wire(),
            "etcdctl",
            &["--endpoints", ETCD_ENDPOINT, "endpoint", "health"],
        )?;
        if out.status.success() {
            return Ok(());
        }
        if !alive(pid) || Instant::now() > deadline {
            return Err(Error::TryAgainLater(format!(
                "the lab's etcd did not come up: {}",
                tail(&dir.join("etcd.log"))
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the lab's etcd (SIGTERM, then SIGKILL) if it runs.
pub fn stop_etcd(lab: &str) {
    stop_pid(
        &pid_file(&etcd_dir(lab), "etcd"),
        &etcd_data_dir(lab).display().to_string(),
    );
}

/// The `scrambler agent` command line of node `i`.
pub(super) fn agent_argv(state: &LabState, i: usize) -> Result<Vec<String>> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "own executable", e))?;
    let names = state.names();
    let node = names.node(i);
    let backend = state.node_backend(i).tunnel();
    let mut v: Vec<String> = vec![
        exe.display().to_string(),
        "agent".into(),
        "--etcd-endpoints".into(),
        ETCD_ENDPOINT.into(),
        "--node".into(),
        node.clone(),
        "--node-id".into(),
        i.to_string(),
        "--underlay".into(),
        state.family().underlay(i).to_string(),
        "--backend".into(),
        backend.to_string(),
        "--key-file".into(),
        LabState::dir(&state.spec.name)
            .join("cluster.key")
            .display()
            .to_string(),
        "--state-dir".into(),
        agent_dir(state, i).display().to_string(),
        "--ledger-dir".into(),
        state.ledger_dir().display().to_string(),
        "--netns".into(),
        format!("/run/netns/{node}"),
        "--lease-ttl".into(),
        LEASE_TTL_SECS.to_string(),
        "--tunnel-status-file".into(),
        tunnel_status_file(state, i).display().to_string(),
        "--debounce-ms".into(),
        "100".into(),
        "--max-delay-ms".into(),
        "500".into(),
    ];
    let family = state.family();
    for c in family.pod_cidrs(i) {
        v.extend(["--pod-cidr".into(), c.to_string()]);
    }
    for c in family.cluster_cidrs() {
        v.extend(["--cluster-cidr".into(), c.to_string()]);
    }
    if backend == TunnelDataplane::Vpp {
        v.push("--vpp-socket".into());
        v.push(
            vppnode::api_socket(&state.spec.name, i)
                .display()
                .to_string(),
        );
    }
    if state.spec.node_encryption {
        // the agent adds its etcd endpoint's ports to the bypass list itself
        v.push("--node-encryption".into());
    }
    Ok(v)
}

/// Starts node `i`'s agent (detached); returns its pid.
pub fn start_agent(state: &LabState, i: usize) -> Result<u32> {
    let dir = agents_dir(&state.spec.name);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", dir.display(), e))?;
    let node = state.names().node(i);
    let pid = spawn_in_wire(
        state,
        &agent_argv(state, i)?,
        &dir.join(format!("{node}.log")),
    )?;
    write_pid(&pid_file(&dir, &node), pid)?;
    Ok(pid)
}

/// Stops node `i`'s agent: SIGTERM (it leaves its lease to expire), or SIGKILL when `kill`
/// (a crash). Waits until it is gone.
pub fn stop_agent(state: &LabState, i: usize, kill: bool) {
    let dir = agents_dir(&state.spec.name);
    let node = state.names().node(i);
    let p = pid_file(&dir, &node);
    if kill {
        if let Some(pid) = our_pid(&p, &agent_dir(state, i).display().to_string()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    stop_pid(&p, &agent_dir(state, i).display().to_string());
}

/// Stops every agent and the etcd of lab `lab` (whatever pid files it has).
pub fn stop_all(lab: &str) {
    let dir = agents_dir(lab);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(node) = name.strip_suffix(".pid") {
                stop_pid(&e.path(), &dir.join(node).display().to_string());
            }
        }
    }
    stop_etcd(lab);
}

fn write_pid(p: &Path, pid: u32) -> Result<()> {
    std::fs::write(p, format!("{pid}\n")).map_err(|e| Error::io("write", p.display(), e))
}

/// The pid in `pid_file` if that process still runs with `marker` as one of its arguments
/// (a recycled pid is left alone).
fn our_pid(pid_file: &Path, marker: &str) -> Option<i32> {
    let pid = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse::<i32>()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    (has_arg(&cmdline, marker) && alive(pid as u32)).then_some(pid)
}

/// True when the NUL-separated command line `cmdline` has an argument equal to `arg`
/// (an agent's state dir `…/agents/lab-n1` is not `…/agents/lab-n10`'s).
fn has_arg(cmdline: &[u8], arg: &str) -> bool {
    cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
}

/// SIGTERM, SIGKILL after 5 s, for the process of `pid_file`; removes the pid file.
fn stop_pid(pid_file: &Path, marker: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Some(pid) = our_pid(pid_file, marker) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid as u32) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid as u32) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            while alive(pid as u32) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

fn alive(pid: u32) -> bool {
    // a zombie (exited, not yet reaped) counts as dead
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

fn tail(p: &Path) -> String {
    let t = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// The end of node `i`'s agent log, for error messages.
pub fn agent_log(state: &LabState, i: usize) -> String {
    tail(&agents_dir(&state.spec.name).join(format!("{}.log", state.names().node(i))))
}

/// True when node `i`'s agent is connected, registered, and has applied a mesh with every
/// other node of `nodes` as a peer, all of them up in its dataplane.
async fn converged(state: &LabState, i: usize, nodes: &[usize]) -> bool {
    let Some(st) = agent_status(state, i) else {
        return false;
    };
    let peers = nodes.iter().filter(|j| **j != i).count();
    if !(st.etcd_connected && st.registered && st.peers == peers && st.reconcile_error.is_none()) {
        return false;
    }
    match super::node_status(state, i).await {
        Ok(r) => r.tunnel.peers.len() == peers && r.tunnel.peers.iter().all(|p| p.is_up()),
        Err(_) => false,
    }
}

/// Waits until the agents of `nodes` all have every other one up; returns how long it took.
pub async fn wait_converged(state: &LabState, nodes: &[usize]) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let mut all = true;
        for i in nodes {
            if !converged(state, *i, nodes).await {
                all = false;
                break;
            }
        }
        if all {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > CONVERGE_TIMEOUT {
            let mut why = String::new();
            for i in nodes {
                why.push_str(&format!(
                    "\n{}: {}\n{}",
                    state.names().node(*i),
                    agent_status(state, *i)
                        .map(|s| s.to_lines(crate::record::now()))
                        .unwrap_or_else(|| "no agent status".into()),
                    agent_log(state, *i)
                ));
            }
            return Err(Error::TryAgainLater(format!(
                "the agents did not build the mesh within {} s:{why}",
                CONVERGE_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to `timeout`) until `pred` holds for the status of every agent of `nodes`;
/// returns how long it took, or `None` on timeout.
pub async fn wait_status(
    state: &LabState,
    nodes: &[usize],
    timeout: Duration,
    pred: impl Fn(&AgentStatus) -> bool,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if nodes
            .iter()
            .all(|i| agent_status(state, *i).is_some_and(|s| pred(&s)))
        {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Runs `scrambler <args>` against the lab's etcd (in the wire namespace); returns its
/// output, or an error with it.
pub fn scrambler_on_etcd(state: &LabState, args: &[&str]) -> Result<String> {
    let exe = std::env::current_exe().map_err(|e| Error::io("find", "own executable", e))?;
    let exe = exe.display().to_string();
    let mut v = args.to_vec();
    v.extend_from_slice(&["--etcd-endpoints", ETCD_ENDPOINT]);
    let out = cmd::netns_exec(&state.names().wire(), &exe, &v)?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        return Err(Error::Dataplane {
            dataplane: "lab".into(),
            op: format!("scrambler {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(text)
}

/// The generations node `i`'s agent sends with and accepts.
pub fn generations(state: &LabState, i: usize) -> (Option<Generation>, Vec<Generation>) {
    agent_status(state, i)
        .map(|s| (s.tx, s.rx))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_ours_only_with_the_exact_argument() {
        let line = b"/usr/bin/scrambler\0agent\0--state-dir\0/run/scrambler-lab/l/agents/l-n10\0";
        assert!(has_arg(line, "/run/scrambler-lab/l/agents/l-n10"));
        assert!(!has_arg(line, "/run/scrambler-lab/l/agents/l-n1"));
        assert!(!has_arg(line, "agents/l-n10"));
        assert!(has_arg(line, "agent"));
        assert!(!has_arg(b"", "agent"));
    }
}
