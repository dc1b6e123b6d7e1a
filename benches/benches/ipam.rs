//! IPAM: one allocate + release of a durable lease, three ways, on the same range with 100
//! leases already held, with the lease directories on the default temp dir's disk and on
//! tmpfs (`/dev/shm`, what a `dataDir` under `/run` is):
//!
//! * `lib`: [`LocalIpam`] called in-process (what Scrambler's own CNI plugin does);
//! * `scrambler-ipam exec`: our plugin binary exec'd as a runtime does (env + stdin, ADD
//!   then DEL);
//! * `host-local exec`: the real `/usr/lib/cni/host-local` exec'd the same way.
//!
//! After criterion's report, a short separate timing loop prints the ratios
//! (host-local exec / lib, host-local exec / our exec). Targets: ≥ 20x and ≥ 3x.
//!
//! Our binary is `$SCRAMBLER_IPAM_BIN`, else `cargo build --release -p scrambler-ipam`
//! is run and the binary taken from the target dir.

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

fn our_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SCRAMBLER_IPAM_BIN") {
        return Some(PathBuf::from(p));
    }
    // target/release/deps/ipam-HASH → target/release/scrambler-ipam, (re)built now so it
    // is never stale: cargo bench does not build another package's binaries.
    let beside = std::env::current_exe()
        .ok()?
        .parent()?
        .parent()?
        .join("scrambler-ipam");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let built = Command::new(cargo)
            .args([
                "build",
                "--release",
                "-p",
                "scrambler-ipam",
                "--bin",
                "scrambler-ipam",
            ])
            .status();
        if !built.is_ok_and(|s| s.success()) {
            eprintln!("building scrambler-ipam failed; using what is in the target dir");
        }
    }
    beside.exists().then_some(beside)
}

/// One filesystem's worth of setups: the three variants, each with its own lease dir
/// holding the same background leases.
struct Setup {
    fs: &'static str,
    _dirs: Vec<tempfile::TempDir>,
    ipam: LocalIpam,
    ours: Option<(PathBuf, Vec<u8>)>,
    host_local: Option<Vec<u8>>,
}

fn setup(fs: &'static str, base: &Path, ours_bin: Option<&Path>) -> Setup {
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
    let ours_dir = dir();
    let ours = ours_bin.map(|bin| {
        let c = conf("bench-ours", "scrambler-ipam", ours_dir.path())
            .to_string()
            .into_bytes();
        populate_by_exec(bin, &c);
        (bin.to_path_buf(), c)
    });
    let hl_dir = dir();
    let host_local = Path::new(HOST_LOCAL).exists().then(|| {
        let c = conf("bench-hl", "host-local", hl_dir.path())
            .to_string()
            .into_bytes();
        populate_by_exec(Path::new(HOST_LOCAL), &c);
        c
    });
    Setup {
        fs,
        _dirs: vec![lib_dir, ours_dir, hl_dir],
        ipam,
        ours,
        host_local,
    }
}

fn bench(c: &mut Criterion, s: &Setup) {
    let mut g = c.benchmark_group(format!("ipam allocate+release, dataDir on {}", s.fs));
    g.sample_size(20).measurement_time(Duration::from_secs(4));
    g.bench_function("lib (durable lease)", |b| b.iter(|| lib_add_del(&s.ipam)));
    if let Some((bin, conf)) = &s.ours {
        g.bench_function("scrambler-ipam exec ADD+DEL", |b| {
            b.iter(|| exec_add_del(bin, conf))
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

fn print_ratios(s: &Setup) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "\nIPAM allocate+release, dataDir on {}, {BACKGROUND_LEASES} leases held (means of a separate loop):",
        s.fs
    );
    let lib = mean(1000, || lib_add_del(&s.ipam));
    println!("  lib (durable lease)          {:>9.0} µs", us(lib));
    let ours = s
        .ours
        .as_ref()
        .map(|(bin, conf)| mean(150, || exec_add_del(bin, conf)));
    if let Some(o) = ours {
        println!("  scrambler-ipam exec ADD+DEL  {:>9.0} µs", us(o));
    }
    let floor = mean(150, || {
        spawn_floor();
        spawn_floor();
    });
    println!(
        "  (two execs of /bin/true      {:>9.0} µs: the floor of any exec'd plugin)",
        us(floor)
    );
    let Some(conf) = &s.host_local else { return };
    let hl = mean(150, || exec_add_del(Path::new(HOST_LOCAL), conf));
    println!("  host-local exec ADD+DEL      {:>9.0} µs", us(hl));
    let ratio = |d: Duration| hl.as_secs_f64() / d.as_secs_f64();
    println!(
        "  host-local exec / lib        {:>9.1}x  (target >= 20x)",
        ratio(lib)
    );
    if let Some(o) = ours {
        println!(
            "  host-local exec / our exec   {:>9.1}x  (target >= 3x)",
            ratio(o)
        );
    }
}

fn main() {
    let ours = our_binary();
    if ours.is_none() {
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
    let mut setups = vec![setup("disk", &std::env::temp_dir(), ours.as_deref())];
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        setups.push(setup("tmpfs", shm, ours.as_deref()));
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
