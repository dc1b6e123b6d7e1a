//! Programming a mesh of 100 and 1,000 peers into a fresh network namespace:
//! `XfrmTunnel::reconcile` vs one `ip` process per rule vs one `ip -batch` process with
//! the same rules, measured in the same run; prints the ratios.
//!
//! The mesh is a typical cluster's: IPv4 underlay (`172.16.x.y`, outside the cluster CIDR)
//! and IPv4 pods, so the mesh also carries pods ↔ other nodes' underlay addresses.
//! Policies, routes and rules only (the build machine's kernel has no ESP states): per
//! peer 11 mesh policies (if_id + ESP template), 1 guard block policy, 1 route in the main
//! table and 1 in Scrambler's route table (14 objects); once, the cluster guard and its
//! bypass (8 policies) and 1 `ip rule`. Before timing, a 3-peer mesh is programmed both
//! ways and the namespaces' policies, routes and rules compared; every timed reconcile
//! asserts it added as many objects as the baseline programs.
//! Run with `cargo bench -p benches --bench xfrm` as root.
//!
//! Criterion times our reconcile and `ip -batch` per mesh size (group `xfrm mesh <n>
//! peers`; each iteration programs a fresh namespace, whose creation is not timed). One
//! `ip` process per rule takes seconds at 1,000 peers: it runs once per size, in the ratio
//! lines printed after criterion's report (medians of a separate loop, as before).

use benches::mesh::mesh_v4 as mesh;
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

/// The same objects as `ip` command lines (without the leading `ip`), as the reconcile
/// plans them for this mesh (IPv4 underlay and pods, one pod CIDR `l` per node, local
/// underlay address `m`). Per peer (pod CIDR `c`, underlay address `u`): 11 mesh policies
/// (if_id, ESP template) — `l` ↔ `c` (out, in, fwd), `l` ↔ `u` (out, in, fwd), `m` ↔ `c`
/// (out, in, fwd), `m` ↔ `u` (out, in) —, the guard's block `out l → u`, the route to `c`
/// in the main table and the route to `u` in the route table: 14 objects. Once: the
/// cluster guard (block `out` anything → cluster CIDR, `in`/`fwd` cluster CIDR → `l`, `in`
/// cluster CIDR → `m`), its bypass (`out` anything → `l`, `in`/`fwd` `l` → `l`, `in` `l` →
/// `m`) and the rule `from l lookup <route table>`: 9 objects.
fn ip_rules(m: &Mesh, cfg: &XfrmConfig) -> Vec<String> {
    let mut v = Vec::new();
    let l = m.local.pod_cidrs[0];
    let me = m.local.underlay[0];
    let (bypass_prio, mesh_prio, guard_prio) = (
        cfg.priority_base,
        cfg.priority_base + 2,
        cfg.priority_base + 4,
    );
    let (proto, table) = (cfg.route_protocol, cfg.route_table);
    let if_id = cfg.if_id;
    for p in &m.peers {
        let c = p.pod_cidrs[0];
        let them = p.underlay[0];
        let reqid = cfg.reqid(p.id.get());
        let out = format!("tmpl src {me} dst {them} proto esp reqid {reqid} mode tunnel");
        let back = format!("tmpl src {them} dst {me} proto esp reqid {reqid} mode tunnel");
        let mut policy = |src: &str, dst: &str, dir: &str, tmpl: &str| {
            v.push(format!(
                "xfrm policy add src {src} dst {dst} dir {dir} priority {mesh_prio} if_id {if_id} {tmpl}"
            ))
        };
        for (local, remote) in [
            (l.to_string(), c.to_string()),
            (l.to_string(), format!("{them}/32")),
            (format!("{me}/32"), c.to_string()),
        ] {
            policy(&local, &remote, "out", &out);
            policy(&remote, &local, "in", &back);
            policy(&remote, &local, "fwd", &back);
        }
        policy(&format!("{me}/32"), &format!("{them}/32"), "out", &out);
        policy(&format!("{them}/32"), &format!("{me}/32"), "in", &back);
        v.push(format!(
            "xfrm policy add src {l} dst {them}/32 dir out action block priority {guard_prio}"
        ));
        v.push(format!("route add {c} dev scrambler0 proto {proto}"));
        v.push(format!(
            "route add {them}/32 dev scrambler0 proto {proto} table {table}"
        ));
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
        v.push(format!(
            "xfrm policy add src {s} dst {me}/32 dir in action block priority {guard_prio}"
        ));
    }
    v.push(format!(
        "xfrm policy add src 0.0.0.0/0 dst {l} dir out priority {bypass_prio}"
    ));
    for dir in ["in", "fwd"] {
        v.push(format!(
            "xfrm policy add src {l} dst {l} dir {dir} priority {bypass_prio}"
        ));
    }
    v.push(format!(
        "xfrm policy add src {l} dst {me}/32 dir in priority {bypass_prio}"
    ));
    v.push(format!(
        "rule add from {l} lookup {table} priority {} protocol {proto}",
        cfg.rule_priority
    ));
    v
}

/// What is programmed in `ns`: xfrm policies, routes of Scrambler's protocol (any table),
/// rules looking up Scrambler's table.
fn programmed(ns: &TestNetns, cfg: &XfrmConfig) -> [usize; 3] {
    let policies = ns
        .ip(&["xfrm", "policy"])
        .lines()
        .filter(|l| l.starts_with("src "))
        .count();
    let proto = cfg.route_protocol.to_string();
    let routes = ns
        .ip(&["route", "show", "table", "all", "proto", &proto])
        .lines()
        .count();
    let rules = ns
        .ip(&["rule"])
        .lines()
        .filter(|l| l.contains(&format!("lookup {}", cfg.route_table)))
        .count();
    [policies, routes, rules]
}

/// The counts [`programmed`] should find after `rules` ran.
fn expected(rules: &[String]) -> [usize; 3] {
    let n = |prefix: &str| rules.iter().filter(|r| r.starts_with(prefix)).count();
    [n("xfrm policy "), n("route "), n("rule ")]
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
    assert_eq!(
        r.added,
        ip_rules(m, t.config()).len(),
        "reconcile added another number of objects than the `ip` baseline programs"
    );
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
    let cfg = tunnel().config().clone();
    let rules = ip_rules(m, &cfg);
    let script = rules.join("\n") + "\n";
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
    assert_eq!(
        programmed(&ns, &cfg),
        expected(&rules),
        "ip -batch made other policies/routes/rules"
    );
    d
}

/// `ns`'s xfrm policies, routes (every table, but the kernel's) and rules, each policy or line once, sorted:
/// two namespaces with the same objects dump the same.
fn dump(ns: &TestNetns) -> Vec<String> {
    let mut policies: Vec<String> = Vec::new();
    for line in ns.ip(&["xfrm", "policy"]).lines() {
        match policies.last_mut() {
            Some(p) if !line.starts_with("src ") => {
                p.push('\n');
                p.push_str(line);
            }
            _ => policies.push(line.to_string()),
        }
    }
    let routes = ns.ip(&["route", "show", "table", "all"]);
    let rules = ns.ip(&["rule"]);
    let mut v: Vec<String> = policies
        .into_iter()
        // not the kernel's own (the veths' random link-local addresses)
        .chain(
            routes
                .lines()
                .filter(|l| !l.contains("proto kernel"))
                .map(|l| format!("route {l}")),
        )
        .chain(rules.lines().map(|l| format!("rule {l}")))
        .collect();
    v.sort();
    v
}

/// Programs a small mesh once by our reconcile and once by `ip -batch` and compares the
/// two namespaces' policies, routes and rules: the baseline programs exactly our objects.
fn assert_same_objects(rt: &tokio::runtime::Runtime) {
    let m = mesh(3);
    let ours = fresh_ns();
    let secret = ClusterSecret::from_bytes(vec![7; 32]).expect("secret");
    rt.block_on(tunnel().reconcile(&ours.netns(), &m, &secret))
        .expect("reconcile");
    let theirs = fresh_ns();
    for r in ip_rules(&m, tunnel().config()) {
        let args: Vec<&str> = r.split(' ').collect();
        theirs.ip(&args);
    }
    let (a, b) = (dump(&ours), dump(&theirs));
    let only = |x: &[String], y: &[String]| -> Vec<String> {
        x.iter().filter(|o| !y.contains(o)).cloned().collect()
    };
    assert!(
        a == b,
        "the `ip` baseline programs other objects than reconcile\nonly ours:\n{}\nonly the baseline's:\n{}",
        only(&a, &b).join("\n"),
        only(&b, &a).join("\n"),
    );
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
    assert_same_objects(&rt);
    let mut c = Criterion::default().configure_from_args();
    for &n in sizes {
        bench(&mut c, &rt, n);
    }
    c.final_summary();
    println!(
        "xfrm mesh programming into a fresh netns, IPv4 underlay (14 objects per peer: 12 policies, 2 routes; once 8 guard/bypass policies, 1 rule)"
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
