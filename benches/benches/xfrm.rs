//! Programming a mesh of 100 and 1,000 peers into a fresh network namespace:
//! `XfrmTunnel::reconcile` vs one `ip` process per rule vs one `ip -batch` process with
//! the same rules, measured in the same run; prints the ratios.
//!
//! Policies and routes only (the build machine's kernel has no ESP states): per peer 3
//! mesh policies (allow + ESP template + if_id) and 1 route, plus the node's 6 cluster
//! guard policies (block anything → cluster CIDRs, cluster → local pod CIDRs; bypass for
//! node-local pod traffic). The peers' underlay is IPv6 and the pods IPv4, so no
//! cluster → peer-underlay guard applies.
//! Run with `cargo bench -p benches --bench xfrm` as root.

use benches::mesh::mesh;
use benches::run;
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

/// The same rules as `ip` command lines (without the leading `ip`).
fn ip_rules(m: &Mesh, cfg: &XfrmConfig) -> Vec<String> {
    let mut v = Vec::new();
    let l = m.local.pod_cidrs[0];
    let me = m.local.underlay[0];
    let (bypass_prio, mesh_prio, guard_prio) = (
        cfg.priority_base,
        cfg.priority_base + 2,
        cfg.priority_base + 4,
    );
    let cluster = &m.cluster_cidrs[0];
    v.push(format!(
        "xfrm policy add src 0.0.0.0/0 dst {cluster} dir out action block priority {guard_prio}"
    ));
    for dir in ["in", "fwd"] {
        v.push(format!(
            "xfrm policy add src {cluster} dst {l} dir {dir} action block priority {guard_prio}"
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
    assert_eq!(
        r.added,
        ip_rules(m, t.config()).len(),
        "the `ip` baselines must program what reconcile programs"
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
    start.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let sizes = run::mesh_sizes();
    let rt = run::runtime();
    println!(
        "xfrm mesh programming into a fresh netns (per peer 3 policies + 1 route; 6 guard policies per node)"
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
