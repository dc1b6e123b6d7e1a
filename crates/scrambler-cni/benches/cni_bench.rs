//! CNI ADD+DEL wall time: `scrambler-cni` (built-in IPAM, and delegating to host-local)
//! against Debian's `bridge` + `host-local`, on the same node/pod namespace setup, in one
//! run. Prints per-round figures and the ratio; the target is ours ≤ 1/5 of theirs.
//!
//! Run as root: `cargo bench -p scrambler-cni --bench cni_bench`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Invocation, Node, DEBIAN_CNI};
use scrambler_core::netns::testing::TestNetns;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 40;

/// Runs `plugin` from the calling thread (which is inside the node namespace, so the
/// child is too): no nsenter in the measured time.
fn exec(plugin: &Path, inv: &Invocation, cni_path: &str, conf: &Value) {
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", &inv.command)
        .env("CNI_CONTAINERID", &inv.container_id)
        .env("CNI_NETNS", inv.netns.as_deref().unwrap_or(""))
        .env("CNI_IFNAME", &inv.ifname)
        .env("CNI_PATH", cni_path)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(conf).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{} {} failed: {}",
        plugin.display(),
        inv.command,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Medians of ADD, DEL and ADD+DEL over `ROUNDS` fresh pods (one warm-up round first).
#[derive(Debug, Clone, Copy)]
struct Figures {
    add: Duration,
    del: Duration,
    total: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Times `add` then `del` (run on a thread inside the node namespace) for fresh pods.
fn measure_with<A, D>(node: &Node, tag: &str, add: A, del: D) -> Figures
where
    A: Fn(&Invocation) + Send + Sync + Clone + 'static,
    D: Fn(&Invocation) + Send + Sync + Clone + 'static,
{
    let (mut adds, mut dels, mut totals) = (vec![], vec![], vec![]);
    for round in 0..=ROUNDS {
        let pod = TestNetns::new("benchpod");
        let inv = Invocation::new("ADD", &format!("{tag}{round}"), &pod.path(), "eth0");
        let (add, del) = (add.clone(), del.clone());
        let (a, d) = node
            .ns
            .netns()
            .run(move || {
                let t = Instant::now();
                add(&inv);
                let a = t.elapsed();
                let t = Instant::now();
                del(&inv.cmd("DEL"));
                Ok((a, t.elapsed()))
            })
            .unwrap();
        if round > 0 {
            adds.push(a);
            dels.push(d);
            totals.push(a + d);
        }
    }
    Figures {
        add: median(adds),
        del: median(dels),
        total: median(totals),
    }
}

fn measure(node: &Node, plugin: &Path, conf: &Value, tag: &str) -> Figures {
    let cni_path = node.cni_path.value();
    let (p, c, cp) = (plugin.to_path_buf(), conf.clone(), cni_path.clone());
    measure_with(node, tag, move |inv| exec(&p, inv, &cp, &c), {
        let (p, c, cp) = (plugin.to_path_buf(), conf.clone(), cni_path);
        move |inv| exec(&p, inv, &cp, &c)
    })
}

/// The kernel's part alone: `ip link add … type veth peer … netns POD` / `ip link del`.
fn measure_veth_floor(node: &Node) -> Figures {
    measure_with(
        node,
        "floor",
        |inv| {
            let ok = Command::new("ip")
                .args([
                    "link",
                    "add",
                    "scrfloor0",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                ])
                .arg(inv.netns.as_deref().unwrap())
                .status()
                .unwrap()
                .success();
            assert!(ok);
        },
        |_| {
            let ok = Command::new("ip")
                .args(["link", "del", "scrfloor0"])
                .status()
                .unwrap()
                .success();
            assert!(ok);
        },
    )
}

fn quiet(mut c: Value) -> Value {
    c.as_object_mut().unwrap().remove("logFile");
    c
}

fn main() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("cni_bench needs root (network namespaces); skipped");
        return;
    }
    let node = Node::new("bench");
    // lease directories: on the node's disk, and on tmpfs (where Kubernetes nodes keep
    // them, as leases must not outlive a reboot there)
    let disk = node.data.path().to_path_buf();
    let tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
    let ours_bin = Path::new(common::BIN);
    let bridge_bin = Path::new(DEBIAN_CNI).join("bridge");
    let bridge_conf = |dir: &Path, subnet: &str| {
        json!({
            "cniVersion": "1.0.0",
            "name": "bench-bridge",
            "type": "bridge",
            "bridge": "cnibench0",
            "isGateway": true,
            "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]],
                     "dataDir": dir.join("bridge-host-local")}
        })
    };
    let with_dir = |mut c: Value, dir: &Path| {
        c["ipam"]["dataDir"] = json!(dir.join("leases"));
        c
    };

    let mut rows: Vec<(String, Figures)> = Vec::new();
    let mut ratios = Vec::new();
    for (where_, dir) in [("disk ", disk.as_path()), ("tmpfs", tmpfs.path())] {
        let ours = measure(
            &node,
            ours_bin,
            &with_dir(quiet(node.conf("1.0.0", "10.50.0.0/24")), dir),
            "o",
        );
        let hl = measure(
            &node,
            ours_bin,
            &with_dir(quiet(node.conf_host_local("1.0.0", "10.51.0.0/24")), dir),
            "h",
        );
        let br = measure(&node, &bridge_bin, &bridge_conf(dir, "10.52.0.0/24"), "b");
        rows.push((
            format!("[{where_}] scrambler-cni + scrambler-ipam (in-process)"),
            ours,
        ));
        rows.push((
            format!("[{where_}] scrambler-cni + host-local (delegated)    "),
            hl,
        ));
        rows.push((
            format!("[{where_}] Debian bridge + host-local                "),
            br,
        ));
        ratios.push((where_, ours.total.as_secs_f64() / br.total.as_secs_f64()));
    }
    let floor = measure_veth_floor(&node);
    rows.push((
        "kernel floor: ip link add/del veth pair        ".into(),
        floor,
    ));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("CNI wall time, median of {ROUNDS} rounds         ADD        DEL    ADD+DEL");
    for (name, f) in &rows {
        println!(
            "  {name} {:7.2} ms {:7.2} ms {:7.2} ms",
            ms(f.add),
            ms(f.del),
            ms(f.total)
        );
    }
    for (where_, ratio) in ratios {
        println!(
            "  ratio scrambler-cni / bridge+host-local, leases on {where_}: {ratio:.3} (target <= 0.200: {})",
            if ratio <= 0.2 { "met" } else { "NOT met" }
        );
    }
}
