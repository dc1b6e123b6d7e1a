//! Programming a mesh of 100 and 1,000 peers into a fresh network namespace:
//! `XfrmTunnel::reconcile` vs one `ip` process per rule vs one `ip -batch` process with
//! the same rules, measured in the same run; prints the ratios.
//!
//! Policies and routes only (the build machine's kernel has no ESP states): per peer 3
//! mesh policies (allow + ESP template + if_id) and 1 route; once, the cluster guard
//! (3 block and 3 bypass policies).
//! Run with `cargo bench -p benches --bench xfrm` as root.
//!
//! Criterion times our reconcile and `ip -batch` per mesh size (group `xfrm mesh <n>
//! peers`; each iteration programs a fresh namespace, whose creation is not timed). One
//! `ip` process per rule takes seconds at 1,000 peers: it runs once per size, in the ratio
//! lines printed after criterion's report (medians of a separate loop, as before).

use benches::mesh::mesh;
use benches::run;
use criterion::{Criterion, SamplingMode};
use scrambler_core::{ClusterSecret, Mesh, Tunnel};
use scrambler_testkit::netns::TestNetns;
use scrambler_xfrm::{LinkMode, XfrmConfig, XfrmTunnel};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fresh_ns() -> TestNetns {
    let ns = TestNetns::new("xfbench");
    ns.ip(&[
        "link",
        "add",
        "scrambler0",
        "type",
        "veth",
        "peer",
        "name",
        "scrambler0p",
    ]);
    ns.ip(&["link", "set", "scrambler0", "up"]);
    ns.ip(&["link", "set", "scrambler0p", "up"]);
    ns
}

fn tunnel() -> XfrmTunnel {
    XfrmTunnel::new(XfrmConfig {
        link: LinkMode::Existing,
        program_states: false,
        ..XfrmConfig::default()
    })
    .expect("config")
}

/// The same rules as `ip` command lines (without the leading `ip`): per peer the 3 mesh
/// policies and the route; once, the cluster guard as the reconcile plans it for this mesh
/// (block anything → cluster CIDR out, cluster CIDR → local pod CIDR in/fwd; bypass for
/// node-local pod traffic; the peers' underlay is IPv6, so no per-peer underlay block).
fn ip_rules(m: &Mesh, cfg: &XfrmConfig) -> Vec<String> {
    let mut v = Vec::new();
    let l = m.local.pod_cidrs[0];
    let me = m.local.underlay[0];
    let (bypass_prio, mesh_prio, guard_prio) = (
        cfg.priority_base,
        cfg.priority_base + 2,
        cfg.priority_base + 4,
    );
    for p in &m.peers {
        let c = p.pod_cidrs[0];
        let them = p.underlay[0];
        let reqid = cfg.reqid(p.id.get());
        let if_id = cfg.if_id;
        v.push(format!("xfrm policy add src {l} dst {c} dir out priority {mesh_prio} if_id {if_id} tmpl src {me} dst {them} proto esp reqid {reqid} mode tunnel"));
        for dir in ["in", "fwd"] {
            v.push(format!("xfrm policy add src {c} dst {l} dir {dir} priority {mesh_prio} if_id {if_id} tmpl src {them} dst {me} proto esp reqid {reqid} mode tunnel"));
        }
        v.push(format!("route add {c} dev scrambler0 proto 92"));
    }
    for s in &m.cluster_cidrs {
        v.push(format!(
            "xfrm policy add src 0.0.0.0/0 dst {s} dir out action block priority {guard_prio}"
        ));
        for dir in ["in", "fwd"] {
            v.push(format!(
                "xfrm policy add src {s} dst {l} dir {dir} action block priority {guard_prio}"
            ));
        }
    }
    v.push(format!(
        "xfrm policy add src 0.0.0.0/0 dst {l} dir out priority {bypass_prio}"
    ));
    for dir in ["in", "fwd"] {
        v.push(format!(
            "xfrm policy add src {l} dst {l} dir {dir} priority {bypass_prio}"
        ));
    }
    v
}

fn time_ours(rt: &tokio::runtime::Runtime, m: &Mesh) -> Duration {
    let ns = fresh_ns();
    let t = tunnel();
    let secret = ClusterSecret::from_bytes(vec![7; 32]).expect("secret");
    let start = Instant::now();
    let r = rt
        .block_on(t.reconcile(&ns.netns(), m, &secret))
        .expect("reconcile");
    let d = start.elapsed();
    assert_eq!(r.added, m.peers.len() * 4 + 6);
    d
}

fn time_per_command(m: &Mesh) -> Duration {
    let ns = fresh_ns();
    let rules = ip_rules(m, tunnel().config());
    let start = Instant::now();
    for r in &rules {
        let st = Command::new("ip")
            .args(["-n", &ns.name])
            .args(r.split(' '))
            .status()
            .expect("spawn ip");
        assert!(st.success(), "ip {r}");
    }
    start.elapsed()
}

fn time_batch(m: &Mesh) -> Duration {
    let ns = fresh_ns();
    let script = ip_rules(m, tunnel().config()).join("\n") + "\n";
    let start = Instant::now();
    let mut child = Command::new("ip")
        .args(["-n", &ns.name, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write batch");
    assert!(child.wait().expect("wait").success());
    let d = start.elapsed();
    let policies = ns
        .ip(&["xfrm", "policy"])
        .lines()
        .filter(|l| l.starts_with("src "))
        .count();
    assert_eq!(
        policies,
        m.peers.len() * 3 + 6,
        "ip -batch made other policies"
    );
    d
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Criterion's group of mesh size `n`: our reconcile and `ip -batch`, each iteration on a
/// fresh namespace (only the programming is timed).
fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, n: u32) {
    let m = mesh(n);
    let mut g = c.benchmark_group(format!("xfrm mesh {n} peers"));
    // a 2-core machine: few samples, each a handful of reconciles
    g.sample_size(10)
        .measurement_time(Duration::from_secs(if n >= 1000 { 8 } else { 3 }))
        .warm_up_time(Duration::from_millis(500));
    if n >= 1000 {
        // ~100 ms per iteration: equal samples instead of a linear ramp
        g.sampling_mode(SamplingMode::Flat);
    }
    g.bench_function("reconcile", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| time_ours(rt, &m)).sum())
    });
    g.bench_function("ip -batch", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| time_batch(&m)).sum())
    });
    g.finish();
}

fn main() {
    let sizes = run::mesh_sizes();
    let rt = run::runtime();
    let mut c = Criterion::default().configure_from_args();
    for &n in sizes {
        bench(&mut c, &rt, n);
    }
    c.final_summary();
    println!(
        "xfrm mesh programming into a fresh netns (4 objects per peer: 3 policies, 1 route; 6 guard policies)"
    );
    for &n in sizes {
        let m = mesh(n);
        let reps = if n >= 1000 { 3 } else { 5 };
        let ours = median((0..reps).map(|_| time_ours(&rt, &m)).collect());
        let batch = median((0..reps).map(|_| time_batch(&m)).collect());
        let per_cmd = time_per_command(&m);
        println!(
            "peers {n:>5}: ours {:>9.2} ms | ip per rule {:>9.2} ms ({:>6.1}x slower) | ip -batch {:>8.2} ms ({:>5.2}x slower)",
            ours.as_secs_f64() * 1e3,
            per_cmd.as_secs_f64() * 1e3,
            per_cmd.as_secs_f64() / ours.as_secs_f64(),
            batch.as_secs_f64() * 1e3,
            batch.as_secs_f64() / ours.as_secs_f64(),
        );
    }
}
