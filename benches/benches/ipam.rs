//! IPAM: one allocate + release of a lease, three ways, on the same range with 100
//! leases already held, with the lease directories on the default temp dir's disk and on
//! tmpfs (`/dev/shm`, what a `dataDir` under `/run` is):
//!
//! * `lib`: [`LocalIpam`] called in-process (what Scrambler's own CNI plugin does);
//! * `scrambler-ipam exec`: our plugin binary exec'd as a runtime does (env + stdin, ADD
//!   then DEL), linked statically as it is meant to be installed, and dynamically as a
//!   plain `cargo build` links it;
//! * `host-local exec`: the real `/usr/lib/cni/host-local` exec'd the same way.
//!
//! After criterion's report, a short separate timing loop prints the ratios
//! (host-local exec / lib, host-local exec / our exec; targets ≥ 20x and ≥ 3x), and the
//! ratio above the exec floor: each exec variant's cost minus two execs of `/bin/true`
//! measured in the same interleaved rounds, i.e. what the plugins cost beyond the exec.
//!
//! Our binary is `$SCRAMBLER_IPAM_BIN`, else both builds are run (the static one with
//! `RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static"`, i.e. statically
//! linked and position-dependent, `--target <host triple>` and its own target dir
//! `target/plugin-static`, shared with the CNI bench) and the binaries taken from the
//! target dirs.

use criterion::Criterion;
use scrambler_core::{AllocRequest, AttachmentId};
use scrambler_ipam::{IpamConf, LocalIpam};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOST_LOCAL: &str = "/usr/lib/cni/host-local";
const BACKGROUND_LEASES: u32 = 100;

fn conf(name: &str, plugin: &str, data_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "bridge",
        "ipam": {
            "type": plugin,
            "ranges": [[{"subnet": "10.70.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": data_dir.display().to_string()
        }
    })
}

/// Runs a CNI IPAM plugin like a runtime: env + conf on stdin.
fn exec_plugin(bin: &Path, cmd: &str, id: &str, conf: &[u8]) {
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", "/var/run/netns/bench")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf)
        .expect("write conf");
    let out = child.wait_with_output().expect("wait plugin");
    assert!(
        out.status.success(),
        "{} {cmd} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// What any exec'd plugin costs at least: spawn and wait, with the same pipes.
fn spawn_floor() {
    let out = Command::new("/bin/true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output()
        .expect("spawn /bin/true");
    assert!(out.status.success());
}

fn exec_add_del(bin: &Path, conf: &[u8]) {
    exec_plugin(bin, "ADD", "bench-ctr", conf);
    exec_plugin(bin, "DEL", "bench-ctr", conf);
}

fn lib_add_del(ipam: &LocalIpam) {
    let id = AttachmentId::new("bench-ctr", "eth0");
    ipam.allocate_blocking(&AllocRequest {
        id: id.clone(),
        requested: vec![],
    })
    .expect("allocate");
    ipam.release_blocking(&id).expect("release");
}

/// Fills a plugin's lease directory with background leases via ADDs of that plugin.
fn populate_by_exec(bin: &Path, conf: &[u8]) {
    for i in 0..BACKGROUND_LEASES {
        exec_plugin(bin, "ADD", &format!("background-{i}"), conf);
    }
}

/// Where our static build goes: its own target dir, so that its flag does not rebuild the
/// workspace's artifacts.
const STATIC_TARGET_DIR: &str = "plugin-static";

/// Our plugin binary, built two ways, each (re)built now so it is never stale (cargo bench
/// does not build another package's binaries): `static`, linked statically as the plugins
/// are meant to be installed (like the reference plugins: see the scrambler-ipam crate
/// docs), and `dynamic`, what a plain `cargo build --release` links. `$SCRAMBLER_IPAM_BIN`
/// replaces both.
fn our_binaries() -> Vec<(&'static str, PathBuf)> {
    if let Some(p) = std::env::var_os("SCRAMBLER_IPAM_BIN") {
        return vec![("given", PathBuf::from(p))];
    }
    // target/release/deps/ipam-HASH → target
    let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.parent()?.to_path_buf()))
    else {
        return Vec::new();
    };
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let static_dir = target.join(STATIC_TARGET_DIR);
    let mut static_build = cargo_build_ipam();
    static_build
        .args(["--target", &triple])
        .env("CARGO_TARGET_DIR", &static_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        );
    [
        (
            "static",
            static_build,
            static_dir.join(&triple).join("release/scrambler-ipam"),
        ),
        (
            "dynamic",
            cargo_build_ipam(),
            target.join("release/scrambler-ipam"),
        ),
    ]
    .into_iter()
    .map(|(label, mut build, bin)| {
        // figures of a stale binary from an earlier build would be misleading
        assert!(
            build.status().is_ok_and(|s| s.success()),
            "building scrambler-ipam ({label}) failed"
        );
        (label, bin)
    })
    .collect()
}

fn cargo_build_ipam() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.args([
        "build",
        "--release",
        "-p",
        "scrambler-ipam",
        "--bin",
        "scrambler-ipam",
    ]);
    c
}

/// One of our binaries with the conf of its own lease dir.
struct Ours {
    label: &'static str,
    bin: PathBuf,
    conf: Vec<u8>,
}

/// One filesystem's worth of setups: every variant with its own lease dir holding the
/// same background leases.
struct Setup {
    fs: &'static str,
    _dirs: Vec<tempfile::TempDir>,
    ipam: LocalIpam,
    ours: Vec<Ours>,
    host_local: Option<Vec<u8>>,
}

fn setup(fs: &'static str, base: &Path, ours_bins: &[(&'static str, PathBuf)]) -> Setup {
    let dir = || tempfile::tempdir_in(base).expect("tempdir");
    let lib_dir = dir();
    let lib_conf = IpamConf::from_net_conf(&conf("bench-lib", "scrambler-ipam", lib_dir.path()))
        .expect("conf");
    let ipam = LocalIpam::new("bench-lib", lib_conf).expect("ipam");
    for i in 0..BACKGROUND_LEASES {
        ipam.allocate_blocking(&AllocRequest {
            id: AttachmentId::new(format!("background-{i}"), "eth0"),
            requested: vec![],
        })
        .expect("background lease");
    }
    let mut dirs = vec![lib_dir];
    let ours = ours_bins
        .iter()
        .map(|(label, bin)| {
            let d = dir();
            let c = conf("bench-ours", "scrambler-ipam", d.path())
                .to_string()
                .into_bytes();
            populate_by_exec(bin, &c);
            dirs.push(d);
            Ours {
                label,
                bin: bin.clone(),
                conf: c,
            }
        })
        .collect();
    let hl_dir = dir();
    let host_local = Path::new(HOST_LOCAL).exists().then(|| {
        let c = conf("bench-hl", "host-local", hl_dir.path())
            .to_string()
            .into_bytes();
        populate_by_exec(Path::new(HOST_LOCAL), &c);
        c
    });
    dirs.push(hl_dir);
    Setup {
        fs,
        _dirs: dirs,
        ipam,
        ours,
        host_local,
    }
}

fn bench(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group(format!("ipam allocate+release, dataDir on {}", s.fs));
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.bench_function("lib (lease)", |b| b.iter(|| lib_add_del(&s.ipam)));
    for o in &s.ours {
        g.bench_function(format!("scrambler-ipam ({}) exec ADD+DEL", o.label), |b| {
            b.iter(|| exec_add_del(&o.bin, &o.conf))
        });
    }
    if let Some(conf) = &s.host_local {
        g.bench_function("host-local exec ADD+DEL", |b| {
            b.iter(|| exec_add_del(Path::new(HOST_LOCAL), conf))
        });
    }
    g.finish();
}

/// Mean time of `f` over `n` runs, after a short warm-up.
fn mean(n: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 + 1 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed() / n
}

/// Rounds of the exec comparison: each round times every variant once (a mean over
/// `EXEC_RUNS` calls), so a load that comes and goes on the machine hits all variants
/// alike; the figure of a variant is its median round.
const EXEC_ROUNDS: usize = 15;
const EXEC_RUNS: u32 = 12;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn print_ratios(s: &Setup) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nIPAM allocate+release, dataDir on {}, {BACKGROUND_LEASES} leases held (lib: mean of a \
         separate loop; execs: medians of {EXEC_ROUNDS} interleaved rounds):",
        s.fs
    );
    let lib = mean(1000, || lib_add_del(&s.ipam));
    println!("  lib (lease)                        {:>9.0} µs", us(lib));
    let mut floors = Vec::new();
    let mut ours: Vec<Vec<Duration>> = vec![Vec::new(); s.ours.len()];
    let mut hls = Vec::new();
    for _ in 0..EXEC_ROUNDS {
        floors.push(mean(EXEC_RUNS, || {
            spawn_floor();
            spawn_floor();
        }));
        for (o, times) in s.ours.iter().zip(&mut ours) {
            times.push(mean(EXEC_RUNS, || exec_add_del(&o.bin, &o.conf)));
        }
        if let Some(conf) = &s.host_local {
            hls.push(mean(EXEC_RUNS, || {
                exec_add_del(Path::new(HOST_LOCAL), conf)
            }));
        }
    }
    let floor = median(floors);
    let ours: Vec<Duration> = ours.into_iter().map(median).collect();
    for (o, t) in s.ours.iter().zip(&ours) {
        println!(
            "  scrambler-ipam {:<9} exec ADD+DEL {:>7.0} µs",
            format!("({})", o.label),
            us(*t)
        );
    }
    println!(
        "  (two execs of /bin/true            {:>9.0} µs: the floor of any exec'd plugin)",
        us(floor)
    );
    if hls.is_empty() {
        return;
    }
    let hl = median(hls);
    println!("  host-local exec ADD+DEL            {:>9.0} µs", us(hl));
    let ratio = |d: Duration| hl.as_secs_f64() / d.as_secs_f64();
    let above = |d: Duration| d.saturating_sub(floor).as_secs_f64();
    println!(
        "  host-local exec / lib              {:>9.1}x  (target >= 20x)",
        ratio(lib)
    );
    for (o, t) in s.ours.iter().zip(&ours) {
        println!(
            "  host-local exec / our exec {:<9} {:>5.1}x  (target >= 3x); above the exec floor \
             {:.1}x ({:.0} µs vs {:.0} µs beyond two bare execs)",
            format!("({})", o.label),
            ratio(*t),
            above(hl) / above(*t).max(1e-9),
            above(hl) * 1e6,
            above(*t) * 1e6
        );
    }
}

fn main() {
    let ours = our_binaries();
    if ours.is_empty() {
        eprintln!(
            "scrambler-ipam binary not found: set SCRAMBLER_IPAM_BIN; skipping its exec bench"
        );
    }
    if !Path::new(HOST_LOCAL).exists() {
        eprintln!(
            "{HOST_LOCAL} missing (apt-get install containernetworking-plugins); skipping it"
        );
    }
    // The default persistent kind of disk, and tmpfs (what a dataDir under /run is).
    let mut setups = vec![setup("disk", &std::env::temp_dir(), &ours)];
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        setups.push(setup("tmpfs", shm, &ours));
    }
    let mut c = Criterion::default().configure_from_args();
    for s in &setups {
        bench(&mut c, s);
    }
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` runs each bench once, without it.
    if std::env::args().any(|a| a == "--bench") {
        for s in &setups {
            print_ratios(s);
        }
    }
}
