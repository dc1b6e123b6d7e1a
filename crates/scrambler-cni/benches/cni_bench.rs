//! CNI ADD and DEL wall time: `scrambler-cni` (built-in IPAM, and delegating to
//! host-local) against Debian's `bridge` + `host-local`, on the same node/pod namespace
//! setup, in one run, with lease directories on disk and on tmpfs. An `ip link add/del` of
//! a bare veth pair gives the kernel's floors (creating the pair, deleting it). Contenders
//! are interleaved round by round so that load from other processes hits them alike.
//!
//! Prints medians and, per storage and build, two verdicts for scrambler-cni with its
//! in-process IPAM: ADD ≤ 1/3 of bridge + host-local's ADD, and DEL within 3 ms of the
//! bare veth-delete floor (deleting a veth waits for RCU grace periods, which no plugin can
//! avoid, so DEL is judged by what it adds to that).
//!
//! Our plugin is timed in two builds, each (re)built by the bench so it is never stale:
//! `static`, linked statically and position-dependent as it is meant to be installed
//! (like the reference plugins' releases, static Go executables; see the crate docs; built in
//! `target/plugin-static`, the IPAM bench's static target dir, with the same flags), and
//! `dynamic`, what a plain `cargo build --release` links. `$SCRAMBLER_CNI_BIN` replaces
//! both: a path, or `label=path` pairs separated by `:` to compare builds in one run.
//!
//! Criterion times ADD+DEL of every contender first (group `cni ADD+DEL`, 10 samples, each
//! iteration on a fresh pod whose namespace creation is not timed), so runs keep a history;
//! the medians and verdicts come from the interleaved rounds after it, as before.
//!
//! Run as root: `cargo bench -p scrambler-cni --bench cni_bench`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Invocation, Node, DEBIAN_CNI};
use criterion::Criterion;
use scrambler_testkit::netns::TestNetns;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 40;

/// One thing to time.
#[derive(Clone)]
enum Contender {
    /// A CNI plugin with its conf.
    Plugin {
        path: PathBuf,
        conf: Value,
        cni_path: String,
    },
    /// `ip link add … type veth peer … netns POD` / `ip link del`.
    VethFloor,
}

impl Contender {
    fn add(&self, inv: &Invocation) {
        match self {
            Contender::Plugin {
                path,
                conf,
                cni_path,
            } => exec(path, inv, cni_path, conf),
            Contender::VethFloor => ip(&[
                "link",
                "add",
                "scrfloor0",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                inv.netns.as_deref().unwrap(),
            ]),
        }
    }

    fn del(&self, inv: &Invocation) {
        match self {
            Contender::Plugin {
                path,
                conf,
                cni_path,
            } => exec(path, &inv.cmd("DEL"), cni_path, conf),
            Contender::VethFloor => ip(&["link", "del", "scrfloor0"]),
        }
    }
}

fn ip(args: &[&str]) {
    assert!(Command::new("ip").args(args).status().unwrap().success());
}

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

/// Medians of ADD, DEL and ADD+DEL.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    add: Duration,
    del: Duration,
    total: Duration,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// ADD then DEL of contender `c` for a fresh pod (container id `id`), from a thread inside
/// the node namespace; the pod namespace's creation is not timed.
fn add_del(node: &Node, c: &Contender, id: &str) -> (Duration, Duration) {
    let pod = TestNetns::new("benchpod");
    let inv = Invocation::new("ADD", id, &pod.path(), "eth0");
    let c = c.clone();
    node.ns
        .netns()
        .run(move || {
            let t = Instant::now();
            c.add(&inv);
            let a = t.elapsed();
            let t = Instant::now();
            c.del(&inv);
            Ok((a, t.elapsed()))
        })
        .unwrap()
}

/// Criterion's group: ADD+DEL of every contender (10 samples; each iteration a fresh pod).
fn bench(c: &mut Criterion, node: &Node, names: &[String], contenders: &[Contender]) {
    let mut g = c.benchmark_group("cni ADD+DEL");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(3));
    for (i, (name, ct)) in names.iter().zip(contenders).enumerate() {
        g.bench_function(name.split_whitespace().collect::<Vec<_>>().join(" "), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|k| {
                        let (a, d) = add_del(node, ct, &format!("c{i}i{k}"));
                        a + d
                    })
                    .sum()
            })
        });
    }
    g.finish();
}

/// Times every contender's ADD then DEL for a fresh pod, round after round (round 0 is
/// a warm-up), from a thread inside the node namespace.
fn measure_all(node: &Node, contenders: &[Contender]) -> Vec<Figures> {
    let mut samples: Vec<Vec<(Duration, Duration)>> = vec![Vec::new(); contenders.len()];
    for round in 0..=ROUNDS {
        for (i, c) in contenders.iter().enumerate() {
            let (a, d) = add_del(node, c, &format!("b{i}r{round}"));
            if round > 0 {
                samples[i].push((a, d));
            }
        }
    }
    samples
        .into_iter()
        .map(|s| Figures {
            add: median(s.iter().map(|x| x.0).collect()),
            del: median(s.iter().map(|x| x.1).collect()),
            total: median(s.iter().map(|x| x.0 + x.1).collect()),
        })
        .collect()
}

fn main() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "cni_bench needs root (it makes network namespaces)"
    );
    let node = Node::new("bench");
    // lease directories: on the node's disk, and on tmpfs (where Kubernetes nodes keep
    // them, as leases must not outlive a reboot there)
    let disk = node.data.path().to_path_buf();
    let tmpfs = tempfile::tempdir_in("/dev/shm").unwrap();
    let cni_path = node.cni_path.value();
    let plugin = |path: &Path, mut conf: Value, dir: &Path, leases: &str| {
        conf.as_object_mut().unwrap().remove("logFile");
        conf["ipam"]["dataDir"] = json!(dir.join(leases));
        Contender::Plugin {
            path: path.to_path_buf(),
            conf,
            cni_path: cni_path.clone(),
        }
    };
    let ours = our_binaries();
    let bridge = Path::new(DEBIAN_CNI).join("bridge");
    let bridge_conf = json!({
        "cniVersion": "1.0.0",
        "name": "bench-bridge",
        "type": "bridge",
        "bridge": "cnibench0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.52.0.0/24"}]]}
    });
    let mut names = Vec::new();
    let mut contenders = Vec::new();
    let mut judged: Vec<Judged> = Vec::new();
    for (where_, dir) in [("disk ", disk.as_path()), ("tmpfs", tmpfs.path())] {
        let mut builds = Vec::new();
        for (label, bin) in &ours {
            builds.push((*label, contenders.len()));
            names.push(format!(
                "[{where_}] scrambler-cni ({label:<7}) + scrambler-ipam (in-process)"
            ));
            contenders.push(plugin(
                bin,
                node.conf("1.0.0", "10.50.0.0/24"),
                dir,
                &format!("ours-{label}"),
            ));
        }
        names.push(format!(
            "[{where_}] scrambler-cni ({:<7}) + host-local (delegated)    ",
            ours[0].0
        ));
        contenders.push(plugin(
            &ours[0].1,
            node.conf_host_local("1.0.0", "10.51.0.0/24"),
            dir,
            "ours-host-local",
        ));
        judged.push((where_, contenders.len(), builds));
        names.push(format!(
            "[{where_}] Debian bridge + host-local                          "
        ));
        contenders.push(plugin(
            &bridge,
            bridge_conf.clone(),
            dir,
            "bridge-host-local",
        ));
    }
    names.push("kernel floor: ip link add/del veth pair                  ".into());
    contenders.push(Contender::VethFloor);

    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &node, &names, &contenders);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` runs each function once, without it
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let figures = measure_all(&node, &contenders);
    print_table(&names, &figures);
    let floor = figures[contenders.len() - 1];
    for (where_, theirs, builds) in judged {
        for (label, i) in builds {
            print_verdicts(
                &format!("{where_}, {label}"),
                figures[i],
                figures[theirs],
                floor,
            );
        }
    }
}

/// Per lease storage: its label, the index of bridge + host-local's figures, and the label
/// and index of each build of ours.
type Judged = (&'static str, usize, Vec<(&'static str, usize)>);

/// Where our static build goes (shared with the IPAM bench): its own target dir, so that
/// its flag does not rebuild the workspace's artifacts.
const STATIC_TARGET_DIR: &str = "plugin-static";

/// Our plugin binary, built two ways (see the module docs), or `$SCRAMBLER_CNI_BIN`.
fn our_binaries() -> Vec<(&'static str, PathBuf)> {
    if let Ok(given) = std::env::var("SCRAMBLER_CNI_BIN") {
        return given
            .split(':')
            .map(|b| match b.split_once('=') {
                Some((label, path)) => (&*String::from(label).leak(), PathBuf::from(path)),
                None => ("given", PathBuf::from(b)),
            })
            .collect();
    }
    // target/release/deps/cni_bench-HASH → target
    let target = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
        .expect("the bench runs from target/<profile>/deps");
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let static_dir = target.join(STATIC_TARGET_DIR);
    let mut static_build = cargo_build_plugin();
    static_build
        .args(["--target", &triple])
        .env("CARGO_TARGET_DIR", &static_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        );
    // figures of a stale binary from an earlier build would be misleading
    assert!(
        static_build.status().is_ok_and(|s| s.success()),
        "building scrambler-cni (static) failed"
    );
    vec![
        (
            "static",
            static_dir.join(&triple).join("release/scrambler-cni"),
        ),
        // cargo bench built this one with the bench
        ("dynamic", PathBuf::from(common::BIN)),
    ]
}

fn cargo_build_plugin() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.args([
        "build",
        "--release",
        "-p",
        "scrambler-cni",
        "--bin",
        "scrambler-cni",
    ]);
    c
}

/// ADD of scrambler-cni at most this fraction of bridge + host-local's ADD.
const ADD_TARGET_RATIO: f64 = 1.0 / 3.0;
/// DEL of scrambler-cni at most this far above the bare veth-delete floor.
const DEL_TARGET_ABOVE_FLOOR: Duration = Duration::from_millis(3);

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

fn print_table(names: &[String], figures: &[Figures]) {
    println!(
        "CNI wall time, median of {ROUNDS} interleaved rounds                ADD        DEL    ADD+DEL"
    );
    for (name, f) in names.iter().zip(figures) {
        println!(
            "  {name} {:7.2} ms {:7.2} ms {:7.2} ms",
            ms(f.add),
            ms(f.del),
            ms(f.total)
        );
    }
}

/// The two verdicts for leases on `where_`: `ours` (in-process IPAM) against `theirs`
/// (bridge + host-local) and the kernel's `floor`.
fn print_verdicts(where_: &str, ours: Figures, theirs: Figures, floor: Figures) {
    let add_ratio = ours.add.as_secs_f64() / theirs.add.as_secs_f64();
    println!(
        "  leases on {where_}: ADD scrambler-cni / bridge+host-local {add_ratio:.3} \
         (target <= {ADD_TARGET_RATIO:.3}: {}); veth-create floor {:.2} ms, ours {:+.2} ms above it",
        verdict(add_ratio <= ADD_TARGET_RATIO),
        ms(floor.add),
        ms(ours.add) - ms(floor.add),
    );
    let above = ms(ours.del) - ms(floor.del);
    println!(
        "  leases on {where_}: DEL scrambler-cni - veth-delete floor {above:+.2} ms \
         (target <= +{:.1} ms: {}); floor {:.2} ms, bridge+host-local {:+.2} ms above it",
        ms(DEL_TARGET_ABOVE_FLOOR),
        verdict(above <= ms(DEL_TARGET_ABOVE_FLOOR)),
        ms(floor.del),
        ms(theirs.del) - ms(floor.del),
    );
}
