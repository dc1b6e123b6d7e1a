//! The node image (deploy/Containerfile, FROM scratch, built by scripts/build-image.sh with
//! podman) run as the DaemonSet runs it, without a kubelet (there is none on this machine):
//! the install-cni init step into temporary host dirs, then the agent container with the
//! DaemonSet's environment, capabilities (NET_ADMIN only) and read-only root, in the host
//! network of a test namespace where a real etcd and a real VPP (the node's dataplane) run.
//! The probes the DaemonSet declares are run with `podman exec`.
//!
//! Needs podman (scripts/install-deps.sh test), Debian's etcd-server and the VPP fixture;
//! builds the static binaries on its first run, which takes minutes: with the dev profile
//! (`PROFILE=dev`), which compiles several times faster than the release image's build
//! and links the same way (static, position-dependent).

use scrambler_agent::{Claim, NodeRecord};
use scrambler_testkit::etcd::Etcd;
use scrambler_testkit::vpp::VppInstance;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const NODE: &str = "img-node";
const POOL: &str = "10.244.0.0/16";
const STATE_DIR: &str = "/var/lib/scrambler/agent";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn podman(args: &[&str]) -> Output {
    match Command::new("podman").args(args).output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("podman not found: install podman (scripts/install-deps.sh test)")
        }
        Err(e) => panic!("podman {args:?}: {e}"),
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Removes the image and the containers of the test, also when it fails.
struct Cleanup {
    image: String,
    containers: Vec<String>,
}

impl Drop for Cleanup {
    /// Best effort and never panics (a panic while unwinding aborts the test binary):
    /// without podman there is nothing to remove.
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("podman").args(args).output();
        };
        for c in &self.containers {
            quiet(&["rm", "-f", "-t", "0", c]);
        }
        quiet(&["rmi", "-f", &self.image]);
    }
}

/// `podman run` options shared by both containers: the test namespace as the host
/// network, the DaemonSet's security context. Resource limits within this process's own:
/// podman's defaults raise them, which needs CAP_SYS_RESOURCE that this host lacks.
fn run_opts(netns: &str) -> Vec<String> {
    [
        "--network",
        &format!("ns:/run/netns/{netns}"),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        "0:0",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn mount(host: &Path, at: &str, ro: bool) -> String {
    format!("{}:{at}{}", host.display(), if ro { ":ro" } else { "" })
}

/// The conflist template of deploy/configmap.yaml, as install-cni reads it.
fn conflist_template() -> String {
    let y = std::fs::read_to_string(repo().join("deploy/configmap.yaml")).unwrap();
    let v: serde_json::Value = serde_yaml::from_str(&y).unwrap();
    v["data"]["10-scrambler.conflist"]
        .as_str()
        .expect("the ConfigMap's conflist")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_image_installs_the_cni_and_runs_a_guarded_ready_agent() {
    let version = podman(&["--version"]);
    assert!(version.status.success(), "podman: {}", text(&version));
    let image = format!("localhost/scrambler-test:{}", std::process::id());
    let mut cleanup = Cleanup {
        image: image.clone(),
        containers: Vec::new(),
    };
    let t = Instant::now();
    let b = Command::new(repo().join("scripts/build-image.sh"))
        .arg(&image)
        .env("PROFILE", "dev")
        .output()
        .expect("run scripts/build-image.sh");
    assert!(b.status.success(), "build-image.sh: {}", text(&b));
    println!("image built in {:?}", t.elapsed());
    // FROM scratch: nothing but the three binaries
    let h = podman(&[
        "image",
        "inspect",
        "--format",
        "{{len .RootFS.Layers}}",
        &image,
    ]);
    assert_eq!(text(&h).trim(), "1", "one layer: {}", text(&h));

    let vpp = VppInstance::start("img", 0).await;
    let ns = vpp.netns.name.clone();
    let etcd = Etcd::start_in(&ns);
    let tmp = tempfile::tempdir().unwrap();
    let dir = |n: &str| {
        let p = tmp.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (cni_bin, net_d, config, state, run) = (
        dir("opt-cni-bin"),
        dir("etc-cni-net.d"),
        dir("config"),
        dir("var-lib-scrambler"),
        dir("run-scrambler"),
    );
    std::fs::write(config.join("10-scrambler.conflist"), conflist_template()).unwrap();
    let key = tmp.path().join("cluster.key");
    std::fs::write(&key, "07".repeat(32)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    let env = |k: &str, v: &str| ["-e".to_string(), format!("{k}={v}")];
    let common_env: Vec<String> = [
        env("SCRAMBLER_NODE_NAME", NODE),
        env("SCRAMBLER_ETCD_ENDPOINTS", &etcd.endpoint()),
        env("SCRAMBLER_POD_CIDR_POOL", POOL),
    ]
    .concat();

    // the init container: claim, copy the plugins, write the conflist
    let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
    args.extend(run_opts(&ns));
    args.extend(common_env.clone());
    for (h, at, ro) in [
        (&cni_bin, "/host/opt/cni/bin", false),
        (&net_d, "/host/etc/cni/net.d", false),
        (&config, "/etc/scrambler/config", true),
    ] {
        args.extend(["-v".into(), mount(h, at, ro)]);
    }
    args.push(image.clone());
    args.extend(
        [
            "scrambler",
            "install-cni",
            "--conf-template=/etc/scrambler/config/10-scrambler.conflist",
            "--bin-src=/usr/local/bin",
            "--bin-dir=/host/opt/cni/bin",
            "--conf-dir=/host/etc/cni/net.d",
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = podman(&args);
    assert!(o.status.success(), "install-cni: {}", text(&o));
    // etcd listens inside the test namespace: read it with etcdctl there
    let get = |key: &str| -> Option<serde_json::Value> {
        let o = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "etcdctl",
                "--endpoints",
                &etcd.endpoint(),
            ])
            .args(["get", key, "--print-value-only"])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        assert!(o.status.success(), "etcdctl get {key}: {}", text(&o));
        serde_json::from_slice(&o.stdout).ok()
    };
    let claim: Claim = serde_json::from_value(
        get(&format!("/scrambler/claims/nodes/{NODE}")).expect("install-cni claimed a pod CIDR"),
    )
    .unwrap();
    for b in ["scrambler-cni", "scrambler-ipam"] {
        let p = cni_bin.join(b);
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{b} not installed: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{b}");
        // the installed plugin runs on the host as the runtime runs it
        let v = Command::new(&p)
            .env("CNI_COMMAND", "VERSION")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            v.status.success() && text(&v).contains("supportedVersions"),
            "{b} VERSION: {}",
            text(&v)
        );
    }
    let conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(net_d.join("10-scrambler.conflist")).unwrap())
            .unwrap();
    let plugin = &conf["plugins"][0];
    assert_eq!(
        plugin["ipam"]["ranges"][0][0]["subnet"],
        claim.pod_cidrs[0].to_string(),
        "{conf}"
    );
    let status_file = plugin["tunnelStatusFile"].as_str().unwrap().to_string();
    assert_eq!(status_file, "/run/scrambler/tunnel-status.json");
    let host_status_file = run.join("tunnel-status.json");

    // the agent container, as the DaemonSet runs it (backend vpp: the node's VPP socket)
    let name = format!("scrambler-agent-test-{}", std::process::id());
    cleanup.containers.push(name.clone());
    let mut args: Vec<String> = vec!["run".into(), "-d".into(), "--name".into(), name.clone()];
    args.extend(run_opts(&ns));
    args.extend(["--cap-add".into(), "NET_ADMIN".into()]);
    args.extend(common_env);
    args.extend(
        [
            env("SCRAMBLER_UNDERLAY", "192.0.2.1"),
            env("SCRAMBLER_BACKEND", "vpp"),
            env("SCRAMBLER_KEY_FILE", "/etc/scrambler/cluster.key"),
            env("SCRAMBLER_TUNNEL_STATUS_FILE", &status_file),
            env("SCRAMBLER_LOG", "info"),
        ]
        .concat(),
    );
    for (h, at, ro) in [
        (&key, "/etc/scrambler/cluster.key", true),
        (&state, "/var/lib/scrambler", false),
        (&vpp.run_dir, "/run/vpp", false),
        (&run, "/run/scrambler", false),
    ] {
        args.extend(["-v".into(), mount(h, at, ro)]);
    }
    args.push(image.clone());
    args.extend(["scrambler", "agent", &format!("--state-dir={STATE_DIR}")].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let o = podman(&args);
    assert!(o.status.success(), "agent container: {}", text(&o));
    let logs = || text(&podman(&["logs", &name]));
    let check = |what: &str| {
        podman(&[
            "exec",
            &name,
            "scrambler",
            "agent-check",
            &format!("--state-dir={STATE_DIR}"),
            what,
        ])
    };
    let mut last = String::new();
    let t = Instant::now();
    loop {
        let r = check("ready");
        if r.status.success() {
            assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "ok");
            break;
        }
        last = text(&r);
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "readiness probe still failing after 60 s: {last}\nagent log:\n{}",
            logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "agent container ready {:?} after it started (last failing probe: {})",
        started.elapsed(),
        last.trim()
    );
    assert!(check("live").status.success());
    // ready means guarded: the CNI gate file is there and says so, and VPP drops the
    // cluster's pod network
    let ts: scrambler_core::TunnelStatus =
        serde_json::from_slice(&std::fs::read(&host_status_file).unwrap()).unwrap();
    assert!(ts.fail_closed && ts.dataplane == "vpp", "{ts:?}");
    let fib = vpp.vppctl(&["show", "ip", "fib", "table", "0", POOL]);
    assert!(fib.contains("drop"), "no guard for {POOL} in VPP:\n{fib}");
    // registered with what install-cni claimed
    let rec: NodeRecord = serde_json::from_value(
        get(&format!("/scrambler/nodes/{NODE}")).expect("the agent registered"),
    )
    .unwrap();
    assert_eq!(rec.pod_cidrs, claim.pod_cidrs);
    assert_eq!(rec.dataplane, "vpp");
    // SIGTERM (the kubelet's stop): a clean exit
    let o = podman(&["stop", "-t", "10", &name]);
    assert!(o.status.success(), "stop: {}", text(&o));
    let code = podman(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(text(&code).trim(), "0", "agent exit code; log:\n{}", logs());
    // a stopped agent stays guarded (the dataplane keeps its guard) but is no longer live
    // once its status goes stale; not waited for here (120 s)
    drop(cleanup);
    drop(etcd);
    drop(vpp);
}
