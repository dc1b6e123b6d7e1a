//! Convergence of one node agent when a node joins a 100- and a 1,000-node mesh: one real
//! `scrambler agent` (the release binary, VPP backend) on one real VPP and a real etcd; the
//! other nodes' registrations are written by the bench. Per join it measures the time from
//! the registration's write until the agent has reconciled its dataplane (read from the
//! agent's status file, which it writes after the reconcile), the agent's reconciles, and
//! the agent's own etcd writes (from the store's revision); at the end the agent's RSS.
//! Target: under 1 s at 1,000 nodes, one reconcile per join.
//!
//! A one-shot measurement per join (each join changes the mesh for good), so it runs as a
//! plain bench printing its figures, not under criterion. The agent runs with its default
//! debounce (200 ms quiet), which is part of every join's time.
//!
//! Run with `cargo bench -p benches --bench agent` as root (needs etcd-server:
//! scripts/install-deps.sh test; and a VPP tree, see `scrambler_testkit::dist`).

use scrambler_agent::status::AgentStatus;
use scrambler_agent::{lease, EtcdConfig, NodeRecord, Store};
use scrambler_core::NodeId;
use scrambler_testkit::etcd::Etcd;
use scrambler_testkit::vpp::VppInstance;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Joins measured per mesh size.
const JOINS: u32 = 10;

fn main() {
    // `cargo test --benches` runs each bench once, without --bench: keep that short
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[u32] = if quick { &[20] } else { &[100, 1000] };
    let bin = scrambler_binary();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let etcd = Etcd::start();
    println!("agent convergence after a join (scrambler agent, VPP backend, real etcd)");
    println!(
        "{:>6}  {:>12}  {:>12}  {:>12}  {:>14}  {:>16}  {:>8}",
        "nodes", "initial", "join p50", "join max", "reconciles/join", "agent writes/join", "RSS"
    );
    for &n in sizes {
        rt.block_on(one_size(&etcd, &bin, n));
    }
}

/// The release `scrambler` binary, built now (cargo bench does not build another package's
/// binaries, and figures of a stale one would mislead); `$SCRAMBLER_BIN` replaces it.
fn scrambler_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SCRAMBLER_BIN") {
        return p.into();
    }
    let target = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
        .expect("the bench's target dir");
    let ok = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "scrambler",
            "--bin",
            "scrambler",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "building scrambler (release) failed");
    target.join("release/scrambler")
}

/// A VPP with an af_packet uplink on a veth in its namespace, address 2001:db8::1/64.
async fn start_vpp(name: &str) -> VppInstance {
    let vpp = VppInstance::start(name, 1).await;
    vpp.netns
        .ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0p"]);
    vpp.netns.ip(&["link", "set", "ul0", "up"]);
    vpp.netns.ip(&["link", "set", "ul0p", "up"]);
    vpp.host_interface("ul0", [2, 0xfe, 0, 0, 0xbe, 1], "2001:db8::1/64")
        .await;
    vpp
}

/// Node `i` (2..): underlay 2001:db8::i, pod CIDR 10.x.y.0/24 (never 10.0.0.0/24, node 1's).
fn record(i: u32) -> NodeRecord {
    NodeRecord {
        name: format!("n{i}"),
        id: NodeId::new(i).unwrap(),
        underlay: vec![format!("2001:db8::{i:x}").parse().unwrap()],
        pod_cidrs: vec![format!("10.{}.{}.0/24", 1 + i / 256, i % 256)
            .parse()
            .unwrap()],
        epoch: 0x5eed_0000 + u64::from(i),
        dataplane: "vpp".into(),
    }
}

fn status(state: &Path) -> Option<AgentStatus> {
    AgentStatus::load(&AgentStatus::path(state)).ok()
}

async fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    t.elapsed()
}

fn rss_kib(child: &Child) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

async fn one_size(etcd: &Etcd, bin: &Path, n: u32) {
    let vpp = start_vpp(&format!("ag{n}")).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("/bench{n}");
    let mut cfg = EtcdConfig::plain(vec![etcd.endpoint()]);
    cfg.prefix = prefix.clone();
    let store = Store::connect(&cfg).await.unwrap();
    let lease = lease::grant(&store, 600).await.unwrap();
    // the other n-1 nodes, 32 writes in flight
    let ids: Vec<u32> = (2..=n).collect();
    for chunk in ids.chunks(32) {
        let writes = chunk.iter().map(|&i| {
            let store = store.clone();
            async move { store.register(&record(i), lease).await.unwrap() }
        });
        futures::future::join_all(writes).await;
    }
    let key = dir.path().join("cluster.key");
    scrambler_core::ClusterSecret::generate_file(&key).unwrap();
    let state = dir.path().join("agent");
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let started = Instant::now();
    let mut agent = Command::new(bin)
        .arg("agent")
        .args([
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--etcd-prefix",
            &prefix,
        ])
        .args([
            "--node",
            "n1",
            "--node-id",
            "1",
            "--underlay",
            "2001:db8::1",
        ])
        .args(["--pod-cidr", "10.0.0.0/24", "--cluster-cidr", "10.0.0.0/8"])
        .args(["--backend", "vpp"])
        .arg("--vpp-socket")
        .arg(vpp.api_sock())
        .arg("--netns")
        .arg(vpp.netns.path())
        .arg("--key-file")
        .arg(&key)
        .arg("--state-dir")
        .arg(&state)
        .env("SCRAMBLER_LOG", "warn")
        .stderr(log)
        .spawn()
        .unwrap();
    let peers = |want: usize| {
        let state = state.clone();
        move || status(&state).is_some_and(|s| s.peers == want && s.registered)
    };
    let initial = wait_for(120, "initial mesh", peers(n as usize - 1)).await;
    let base = started.elapsed().min(initial);
    let st0 = status(&state).unwrap();
    let rev0 = store.snapshot().await.unwrap().revision;
    let mut times = Vec::new();
    for j in 0..JOINS {
        let i = n + 1 + j;
        store.register(&record(i), lease).await.unwrap();
        times.push(wait_for(30, "join reconciled", peers((n + j) as usize)).await);
    }
    // let any write the joins caused land before counting
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rev1 = store.snapshot().await.unwrap().revision;
    let st1 = status(&state).unwrap();
    let rss = rss_kib(&agent);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = agent.wait();
    times.sort();
    let agent_writes = (rev1 - rev0 - i64::from(JOINS)) as f64 / f64::from(JOINS);
    let reconciles = (st1.reconciles - st0.reconciles) as f64 / f64::from(JOINS);
    println!(
        "{:>6}  {:>10.0}ms  {:>10.0}ms  {:>10.0}ms  {:>14.1}  {:>16.1}  {:>5} MiB",
        n,
        base.as_secs_f64() * 1e3,
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        reconciles,
        agent_writes,
        rss / 1024
    );
}
