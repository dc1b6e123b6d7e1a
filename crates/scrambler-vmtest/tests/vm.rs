//! The harness proving itself: tests that need ESP, ipvlan and XFRM interfaces run in a
//! VM when this kernel lacks them, and the harness's own behaviour (skip, timeout, no
//! side effects of probes) is checked on the host.

use scrambler_testkit::capture::Capture;
use scrambler_testkit::TestNetns;
use scrambler_vmtest::{in_vm, kernel_has, needs_vm, Feature, VmSuite, VmTest};
use std::process::Command;
use std::time::Duration;

const IP: &str = "/usr/sbin/ip";

/// Runs `ip <args>`, panicking with its stderr on failure.
fn ip(args: &[&str]) -> String {
    let out = Command::new(IP).args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// tcpdump of the IP packets `dev` in `ns` transmits.
fn capture(ns: &TestNetns, dev: &str) -> Capture {
    Capture::on(&ns.name, dev)
        .outbound()
        .filter("ip")
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn ping(ns: &TestNetns, from: &str, to: &str) {
    let (ok, out) = ns.exec(&["ping", "-c", "3", "-W", "5", "-I", from, to]);
    assert!(ok, "ping {from} -> {to} failed: {out}");
}

static ESP: VmSuite = VmSuite::new("vm_esp_");

/// Two namespaces joined by a veth underlay 192.0.2.0/24, "pods" 10.1.0.1 and 10.2.0.1
/// on their loopbacks, ESP tunnel mode (AES-GCM-128, ICV 128, ESN, replay window) with
/// policies between the pod ranges. The pods ping each other; captures of both veth
/// ends show ESP only, while an underlay ping shows the capture does see clear ICMP.
#[test]
fn vm_esp_tunnel_ping_is_encrypted_on_the_wire() {
    if ESP.delegate(
        "vm_esp_tunnel_ping_is_encrypted_on_the_wire",
        &[Feature::Esp],
    ) {
        return;
    }
    let a = TestNetns::new("svmt-a");
    let b = TestNetns::new("svmt-b");
    a.veth("va", &b, "vb");
    for (ns, dev, under, pod, peer_pods, peer_under) in [
        (
            &a,
            "va",
            "192.0.2.1/24",
            "10.1.0.1/32",
            "10.2.0.0/24",
            "192.0.2.2",
        ),
        (
            &b,
            "vb",
            "192.0.2.2/24",
            "10.2.0.1/32",
            "10.1.0.0/24",
            "192.0.2.1",
        ),
    ] {
        ns.ip(&["addr", "add", under, "dev", dev]);
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["addr", "add", pod, "dev", "lo"]);
        let src = pod.trim_end_matches("/32");
        ns.ip(&["route", "add", peer_pods, "via", peer_under, "src", src]);
    }

    // Each direction its own SPI and key: 16-byte AES key + 4-byte salt = 160 bits.
    let sas = [
        (
            "192.0.2.1",
            "192.0.2.2",
            "0x100",
            "0x0102030405060708090a0b0c0d0e0f1011121314",
        ),
        (
            "192.0.2.2",
            "192.0.2.1",
            "0x101",
            "0x2122232425262728292a2b2c2d2e2f3031323334",
        ),
    ];
    for ns in [&a, &b] {
        for (src, dst, spi, key) in sas {
            ns.ip(&[
                "xfrm",
                "state",
                "add",
                "src",
                src,
                "dst",
                dst,
                "proto",
                "esp",
                "spi",
                spi,
                "reqid",
                "1",
                "mode",
                "tunnel",
                "aead",
                "rfc4106(gcm(aes))",
                key,
                "128",
                "replay-window",
                "128",
                "flag",
                "esn",
            ]);
        }
    }
    let policy = |ns: &TestNetns, dir: &str, src_net: &str, dst_net: &str, src: &str, dst: &str| {
        ns.ip(&[
            "xfrm", "policy", "add", "src", src_net, "dst", dst_net, "dir", dir, "tmpl", "src",
            src, "dst", dst, "proto", "esp", "reqid", "1", "mode", "tunnel",
        ]);
    };
    let (p1, p2, u1, u2) = ("10.1.0.0/24", "10.2.0.0/24", "192.0.2.1", "192.0.2.2");
    policy(&a, "out", p1, p2, u1, u2);
    policy(&a, "in", p2, p1, u2, u1);
    policy(&b, "out", p2, p1, u2, u1);
    policy(&b, "in", p1, p2, u1, u2);

    let cap_a = capture(&a, "va");
    let cap_b = capture(&b, "vb");
    ping(&a, "192.0.2.1", "192.0.2.2"); // underlay, in the clear: proves the capture works
    ping(&a, "10.1.0.1", "10.2.0.1"); // pod to pod, through ESP
    let wire: Vec<String> = [cap_a.finish(), cap_b.finish()].concat();
    eprintln!("wire:\n{}", wire.join("\n"));

    let esp = wire.iter().filter(|l| l.contains("ESP(spi=")).count();
    let clear_underlay = wire.iter().filter(|l| l.contains("ICMP echo")).count();
    let leaked: Vec<&String> = wire
        .iter()
        .filter(|l| l.contains("10.1.0.1") || l.contains("10.2.0.1"))
        .collect();
    assert!(
        esp >= 6,
        "expected ≥ 6 ESP packets (3 requests, 3 replies), saw {esp}"
    );
    assert!(
        clear_underlay >= 6,
        "the capture missed the clear underlay ping"
    );
    assert!(
        leaked.is_empty(),
        "pod traffic in the clear on the wire: {leaked:?}"
    );

    let state = a.ip(&[
        "-s", "xfrm", "state", "get", "src", u1, "dst", u2, "proto", "esp", "spi", "0x100",
    ]);
    assert!(state.contains("flag esn"), "{state}");
    assert!(state.contains("replay_window 128"), "{state}");
}

static LINKS: VmSuite = VmSuite::new("vm_links_");

/// An ipvlan (L3) link on a veth parent.
#[test]
fn vm_links_ipvlan() {
    if LINKS.delegate("vm_links_ipvlan", &[Feature::Ipvlan]) {
        return;
    }
    let ns = TestNetns::new("svmt-ipvl");
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    ns.ip(&[
        "link", "add", "iv0", "link", "p0", "type", "ipvlan", "mode", "l3",
    ]);
    ns.ip(&["link", "set", "p0", "up"]);
    ns.ip(&["link", "set", "iv0", "up"]);
    let shown = ns.ip(&["-d", "link", "show", "iv0"]);
    assert!(
        shown.contains("ipvlan") && shown.contains("mode l3"),
        "{shown}"
    );
}

/// An XFRM interface with if_id 7.
#[test]
fn vm_links_xfrm_interface() {
    if LINKS.delegate("vm_links_xfrm_interface", &[Feature::XfrmInterface]) {
        return;
    }
    let ns = TestNetns::new("svmt-xfrmi");
    ns.ip(&["link", "add", "xfrm7", "type", "xfrm", "if_id", "7"]);
    ns.ip(&["link", "set", "xfrm7", "up"]);
    let shown = ns.ip(&["-d", "link", "show", "xfrm7"]);
    assert!(shown.contains("if_id 0x7"), "{shown}");
}

/// In the guest every probe must say yes (the stock kernel has them all).
#[test]
fn vm_links_guest_kernel_has_every_feature() {
    let all = [Feature::Esp, Feature::Ipvlan, Feature::XfrmInterface];
    if LINKS.delegate("vm_links_guest_kernel_has_every_feature", &all) {
        return;
    }
    if !in_vm() {
        return; // this host's kernel is complete enough; nothing to prove here
    }
    let missing: Vec<&Feature> = Feature::ALL.iter().filter(|f| !kernel_has(**f)).collect();
    assert!(missing.is_empty(), "the guest kernel lacks {missing:?}");
}

/// Probes run in a throwaway namespace: nothing appears on the host.
#[test]
fn probes_leave_the_host_untouched() {
    if in_vm() {
        return;
    }
    let before = ip(&["-o", "link", "show"]);
    let answers: Vec<(Feature, bool)> = Feature::ALL.iter().map(|f| (*f, kernel_has(*f))).collect();
    eprintln!("host kernel: {answers:?}");
    assert_eq!(before, ip(&["-o", "link", "show"]));
    assert_eq!(ip(&["xfrm", "state"]), "", "probe left an xfrm state");
}

/// `SCRAMBLER_VM=skip` makes a VM test pass without booting, loudly, on a kernel that
/// needs the VM for it; on one that does not, the test runs here and says nothing of it.
#[test]
fn skip_env_skips_loudly() {
    if in_vm() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "vm_esp_tunnel_ping_is_encrypted_on_the_wire",
            "--exact",
            "--nocapture",
        ])
        .env("SCRAMBLER_VM", "skip")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.contains("SKIPPED"),
        needs_vm(&[Feature::Esp]),
        "skipped exactly when this kernel lacks ESP: {stderr}"
    );
}

/// A run exceeding its timeout fails with a clear message and leaves no qemu behind.
#[test]
fn timeout_kills_the_vm() {
    if in_vm() {
        return;
    }
    let outcome = VmTest::new("vm_esp_tunnel_ping_is_encrypted_on_the_wire")
        .timeout(Duration::from_secs(2))
        .run();
    assert!(
        matches!(outcome.status, scrambler_vmtest::VmStatus::TimedOut(_)),
        "{}",
        outcome.status
    );
    // from qemu's start (waiting for a VM slot held by another test does not count)
    assert!(
        outcome.elapsed < Duration::from_secs(60),
        "{:?}",
        outcome.elapsed
    );
    // this run's qemu (another test of this binary may have its own VM running by now)
    let pid = outcome.qemu_pid.expect("the run started qemu");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("qemu"),
        "qemu (pid {pid}) still running"
    );
}

/// A guest kernel that panics (as a soft lockup does: `softlockup_panic=1`) ends its run
/// at once — not at the run's timeout — as a crash naming the panic, its trace on the
/// console.
#[test]
fn a_guest_kernel_panic_ends_the_run_at_once_and_is_named() {
    if in_vm() {
        return;
    }
    let argv = ["/bin/sh", "-c", "echo c > /proc/sysrq-trigger; sleep 600"]
        .map(String::from)
        .to_vec();
    let outcome = VmTest::command("guest kernel panic", argv)
        .timeout(Duration::from_secs(900))
        .run();
    match &outcome.status {
        scrambler_vmtest::VmStatus::Crashed(why) => assert!(
            why.contains("the guest kernel panicked: sysrq triggered crash"),
            "{why}"
        ),
        other => panic!("{other}\n{}", outcome.console),
    }
    // boot and panic, far from the run's timeout (and the command's sleep)
    assert!(
        outcome.elapsed < Duration::from_secs(300),
        "{:?}",
        outcome.elapsed
    );
    assert!(
        outcome.console.contains("Kernel panic"),
        "{}",
        outcome.console
    );
}

const GUEST_COPY: &str = "/etc/scrambler-vmtest/Cargo.toml";
const GUEST_SRC: &str = "/opt/scrambler-vmtest-src";
const TRICKY: &str = "it's \"quoted\" $HOME `x` \\ end";
const GUEST_SCRIBBLE: &str = "guest-wrote-this.txt";

static EXTRAS: VmSuite = VmSuite::with("vm_extras_", |t| {
    t.with_file("Cargo.toml", GUEST_COPY)
        .with_dir("src", GUEST_SRC)
        .with_binary(std::env::current_exe().unwrap())
        .with_env("SCRAMBLER_VMTEST_TRICKY", TRICKY)
        .with_module("dummy")
});

/// Files, directories, binaries, env vars and modules the caller asks for are in the
/// guest; the guest may write to host paths without the host seeing it.
#[test]
fn vm_extras_reach_the_guest() {
    if !in_vm() {
        EXTRAS.run("vm_extras_reach_the_guest").assert_success();
        // The guest wrote into this directory; the host must not see it.
        assert!(!std::path::Path::new(GUEST_SCRIBBLE).exists());
        return;
    }
    let copied = std::fs::read_to_string(GUEST_COPY).unwrap();
    assert_eq!(copied, std::fs::read_to_string("Cargo.toml").unwrap());
    assert!(std::path::Path::new(GUEST_SRC).join("lib.rs").is_file());

    let me = std::env::current_exe().unwrap();
    let name = me.file_name().unwrap();
    let linked = std::path::Path::new("/run/scrambler-vm/path").join(name);
    assert_eq!(std::fs::canonicalize(linked).unwrap(), me);
    let path = std::env::var("PATH").unwrap();
    assert!(path.starts_with("/run/scrambler-vm/path:"), "{path}");

    assert_eq!(std::env::var("SCRAMBLER_VMTEST_TRICKY").unwrap(), TRICKY);
    assert_eq!(std::env::var("SCRAMBLER_IN_VM").unwrap(), "1");
    assert_eq!(std::env::var("HOME").unwrap(), "/root");
    assert!(
        std::env::var("CARGO_MANIFEST_DIR").is_ok(),
        "cargo's env is passed on"
    );
    assert!(
        std::path::Path::new("/sys/module/dummy").exists(),
        "dummy was preloaded"
    );

    std::fs::write(GUEST_SCRIBBLE, "the overlay keeps this in guest RAM").unwrap();
    std::fs::write("/usr/local/scrambler-vmtest-scribble", "also fine").unwrap();
    assert_eq!(
        nix::unistd::getuid().as_raw(),
        0,
        "tests run as root in the guest"
    );
}

/// A run whose working directory and program live under /tmp (where many people clone)
/// finds both in the guest; the rest of the host's /tmp stays hidden there, and what the
/// guest writes into the directory stays in the guest.
#[test]
fn checkout_under_tmp_is_reachable_in_the_guest() {
    use std::os::unix::fs::PermissionsExt;
    if in_vm() {
        return;
    }
    let checkout = tempfile::Builder::new()
        .prefix("svmt-checkout-")
        .tempdir_in("/tmp")
        .unwrap();
    let other = tempfile::NamedTempFile::new_in("/tmp").unwrap();
    let dir = checkout.path();
    std::fs::write(dir.join("data.txt"), "from the host\n").unwrap();
    let script = dir.join("run.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nset -e\n[ \"$(pwd)\" = \"$1\" ]\ngrep -qx 'from the host' data.txt\n\
         [ ! -e \"$2\" ]\necho scribble >guest-wrote\necho TMP-CHECKOUT-OK\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outcome = VmTest::command(
        "checkout under /tmp",
        vec![
            script.display().to_string(),
            dir.display().to_string(),
            other.path().display().to_string(),
        ],
    )
    .current_dir(dir)
    .run();
    assert!(
        matches!(outcome.status, scrambler_vmtest::VmStatus::Exited(0)),
        "{}\n{}",
        outcome.status,
        outcome.console
    );
    assert!(outcome.console.contains("TMP-CHECKOUT-OK"));
    assert!(
        !dir.join("guest-wrote").exists(),
        "the guest wrote to the host"
    );
}
