//! The node agent (scrambler-agent) on a real etcd-server driving two real VPPs: the mesh
//! comes from etcd, pods ping across ESP, a cluster-wide rotation loses no packet, and a
//! restarted agent finds its dataplane in place.

mod two_nodes;

use scrambler_agent::status::AgentStatus;
use scrambler_agent::{rotation, Agent, AgentConfig, EtcdConfig, Store};
use scrambler_core::{NodeId, Tunnel};
use scrambler_testkit::etcd::Etcd;
use scrambler_testkit::vpp::api_sock_resolver;
use scrambler_vpp::tunnel::VppTunnel;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use two_nodes::{capture, ping, TwoNodes};

struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    join: tokio::task::JoinHandle<scrambler_core::Result<()>>,
}

async fn spawn(
    t: &TwoNodes,
    etcd: &Etcd,
    dp: Arc<dyn Tunnel>,
    state: &Path,
    name: &str,
    n: u8,
) -> Running {
    let mut c = AgentConfig::new(
        name,
        vec![format!("192.0.2.{n}").parse().unwrap()],
        state.join(name),
        "/etc/scrambler/cluster.key".into(),
    );
    c.id = Some(NodeId::new(u32::from(n)).unwrap());
    c.pod_cidrs = vec![format!("10.{n}.0.0/24").parse().unwrap()];
    c.cluster_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    c.netns = t.vpp(name).netns.netns();
    c.dataplane = "vpp".into();
    c.debounce = Duration::from_millis(100);
    c.max_delay = Duration::from_secs(1);
    c.lease_ttl = 5;
    c.retry = Duration::from_millis(300);
    let store = Store::connect(&EtcdConfig::plain(vec![etcd.endpoint()]))
        .await
        .unwrap();
    let agent = Agent::new(c, store, dp, t.secret.clone()).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel();
    let join = tokio::spawn(agent.run(async move {
        let _ = rx.await;
    }));
    Running { stop, join }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.join.await.unwrap().unwrap();
    }
}

fn status(state: &Path, name: &str) -> AgentStatus {
    AgentStatus::load(&AgentStatus::path(&state.join(name))).unwrap()
}

async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "not within {secs}s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_etcd_drive_two_vpps_through_a_lossless_rotation_and_a_restart() {
    let t = TwoNodes::start("ag").await;
    let etcd = Etcd::start();
    let dp: Arc<dyn Tunnel> = Arc::new(VppTunnel::with_resolver(api_sock_resolver(&[&t.a, &t.b])));
    let state = tempfile::tempdir().unwrap();
    let a = spawn(&t, &etcd, dp.clone(), state.path(), "a", 1).await;
    let b = spawn(&t, &etcd, dp.clone(), state.path(), "b", 2).await;
    let started = Instant::now();
    eventually(30, "pod a reaches pod b through the agents' mesh", || {
        ping(&t.a, "10.2.0.2", 1).0
    })
    .await;
    println!(
        "mesh from etcd up, pods pinging, {:?} after the agents started",
        started.elapsed()
    );
    let (wire, (ok, out)) = capture(&t.a, "", || ping(&t.a, "10.2.0.2", 3));
    assert!(ok, "{out}");
    assert!(
        wire.contains("ESP") && !wire.contains("ICMP echo"),
        "not ESP only:\n{wire}"
    );

    // a cluster-wide rotation under a steady ping: no packet lost
    let store = Store::connect(&EtcdConfig::plain(vec![etcd.endpoint()]))
        .await
        .unwrap();
    let pinger = {
        let ns = t.a.netns.name.clone();
        std::thread::spawn(move || {
            let o = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &ns, "busybox", "ping", "-c", "50", "-i", "0.2", "-W", "1",
                    "10.2.0.2",
                ])
                .output()
                .unwrap();
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let snap = store.snapshot().await.unwrap();
    let ks = rotation::begin(&snap.keys, 2).unwrap();
    assert!(store.swap_keys(snap.keys_revision, &ks).await.unwrap());
    let st = state.path().to_path_buf();
    eventually(30, "generation 2 alone on both nodes", || {
        ["a", "b"].iter().all(|n| {
            let s = status(&st, n);
            s.tx == Some(2) && s.rx == [2]
        })
    })
    .await;
    let (ok, out) = pinger.join().unwrap();
    if let Some(l) = out.lines().find(|l| l.contains("packets transmitted")) {
        println!("ping across the rotation 1→2: {l}");
    }
    assert!(
        ok && out.contains(" 0% packet loss"),
        "packets lost during the rotation:\n{out}"
    );
    let done = store.snapshot().await.unwrap();
    assert_eq!((done.keys.current, done.keys.next), (2, None));

    // a restarted agent keeps its epoch and changes nothing in the healthy dataplane
    let epoch = status(state.path(), "a").epoch;
    a.stop().await;
    let a = spawn(&t, &etcd, dp.clone(), state.path(), "a", 1).await;
    eventually(15, "a re-registered", || {
        let s = status(&st, "a");
        s.registered && s.epoch_reused
    })
    .await;
    let s = status(state.path(), "a");
    assert_eq!(s.epoch, epoch);
    let rep = s.last_report.expect("the restarted agent reconciled");
    assert!(
        rep.is_noop(),
        "the restarted agent changed the dataplane: {rep:?}"
    );
    assert!(ping(&t.a, "10.2.0.2", 3).0);
    a.stop().await;
    b.stop().await;
}

/// A peer away for longer than its lease (agent stopped, dataplane intact) is held by the
/// other node with its SAs: traffic keeps flowing meanwhile (encrypted, under the SAs that
/// were already sending), and when its agent comes back under the same epoch neither node
/// re-keys nor installs anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_away_longer_than_its_lease_comes_back_without_a_rekey() {
    let t = TwoNodes::start("ah").await;
    let etcd = Etcd::start();
    let dp: Arc<dyn Tunnel> = Arc::new(VppTunnel::with_resolver(api_sock_resolver(&[&t.a, &t.b])));
    let state = tempfile::tempdir().unwrap();
    let st = state.path().to_path_buf();
    let a = spawn(&t, &etcd, dp.clone(), state.path(), "a", 1).await;
    let b = spawn(&t, &etcd, dp.clone(), state.path(), "b", 2).await;
    eventually(30, "pod a reaches pod b", || ping(&t.a, "10.2.0.2", 1).0).await;
    let store = Store::connect(&EtcdConfig::plain(vec![etcd.endpoint()]))
        .await
        .unwrap();
    let snap = store.snapshot().await.unwrap();
    let epochs = (snap.nodes["a"].epoch, snap.nodes["b"].epoch);
    let reconciles = status(&st, "a").reconciles;

    b.stop().await; // its lease (5 s) runs out
    let gone = Instant::now();
    eventually(20, "a holds departed b", || {
        status(&st, "a").departed.iter().any(|d| d.name == "b")
    })
    .await;
    println!("b departed {:?} after its agent stopped", gone.elapsed());
    let (wire, (ok, out)) = capture(&t.a, "", || ping(&t.a, "10.2.0.2", 3));
    assert!(ok, "no traffic while b is held: {out}");
    assert!(
        wire.contains("ESP") && !wire.contains("ICMP echo"),
        "not ESP only:\n{wire}"
    );

    let b = spawn(&t, &etcd, dp.clone(), state.path(), "b", 2).await;
    eventually(20, "b back and no longer held", || {
        let (sa, sb) = (status(&st, "a"), status(&st, "b"));
        sb.registered && sb.epoch_reused && sa.departed.is_empty()
    })
    .await;
    let snap = store.snapshot().await.unwrap();
    assert_eq!(
        (snap.nodes["a"].epoch, snap.nodes["b"].epoch),
        epochs,
        "a node took a new epoch"
    );
    let sa = status(&st, "a");
    assert!(sa.reconcile_error.is_none(), "{:?}", sa.reconcile_error);
    assert_eq!(
        sa.reconciles, reconciles,
        "a reconciled while b was away and back: {:?}",
        sa.last_report
    );
    assert!(ping(&t.a, "10.2.0.2", 3).0);
    a.stop().await;
    b.stop().await;
}
