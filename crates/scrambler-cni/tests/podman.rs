//! Podman (Debian's 4.3, CNI network backend) as the runtime: a scrambler network from a
//! conflist in a temporary network config dir, two containers from a locally imported
//! busybox image; the second reaches the first. Storage, run root, config and plugin
//! dirs are temporary, so the host's podman state is untouched; nothing is pulled.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const IMAGE: &str = "localhost/scrambler-busybox:test";

/// A podman with everything in a temp dir, run inside the node namespace.
struct Podman {
    dir: tempfile::TempDir,
    node: String,
}

impl Podman {
    fn new(node: &Node) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["bin", "net.d", "root", "runroot", "rootfs/bin"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        std::os::unix::fs::symlink(BIN, d.join("bin/scrambler-cni")).unwrap();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\"]\n\
                 network_config_dir = \"{netd}\"\n[engine]\ncgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\nruntime = \"runc\"\n",
                bin = d.join("bin").display(),
                netd = d.join("net.d").display()
            ),
        )
        .unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "scrpod",
            "plugins": [{
                "type": "scrambler-cni",
                "backend": "xfrm",
                "ipam": {"type": "scrambler-ipam", "ranges": [[{"subnet": "10.70.0.0/24"}]],
                         "dataDir": d.join("ipam")},
                "logFile": d.join("cni.log"),
                "logLevel": "debug"
            }]
        });
        std::fs::write(
            d.join("net.d/scrpod.conflist"),
            serde_json::to_vec_pretty(&conflist).unwrap(),
        )
        .unwrap();
        let p = Podman {
            dir,
            node: node.ns.name.clone(),
        };
        p.import_busybox();
        p
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let d = self.dir.path();
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs", "--network-backend", "cni"])
            .arg("--network-config-dir")
            .arg(d.join("net.d"))
            .args(["--cgroup-manager", "cgroupfs", "--runtime", "runc"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .output()
            .expect("spawn podman");
        let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), s)
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let (ok, out) = self.run(args);
        assert!(ok, "podman {args:?}: {out}");
        out
    }

    /// A rootfs of Debian's busybox-static, imported as an image.
    fn import_busybox(&self) {
        let rootfs = self.path("rootfs");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "ping", "sleep", "ip", "cat"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = self.path("rootfs.tar");
        let ok = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap()
            .success();
        assert!(ok);
        self.ok(&["import", tar.to_str().unwrap(), IMAGE]);
    }

    fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.path("ipam/scrpod"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-f", "-a", "-t", "0"]);
        let _ = self.run(&["rmi", "-a", "-f"]);
        // the vfs layers and run root are plain directories under the temp dir
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.path("runroot"))
            .stderr(std::process::Stdio::null())
            .status();
    }
}

const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=1024:1024",
];

#[test]
fn podman_containers_get_addresses_and_reach_each_other() {
    assert!(
        Path::new("/usr/bin/podman").exists(),
        "podman is not installed: `scripts/install-deps.sh test` (Debian packages podman, runc)"
    );
    let node = Node::new("podman");
    let podman = Podman::new(&node);
    let nets = podman.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    assert!(nets.contains("scrpod scrambler-cni"), "{nets}");

    let mut args = vec!["run", "-d", "--name", "a", "--network", "scrpod"];
    args.extend(ULIMITS);
    args.extend([IMAGE, "sleep", "300"]);
    podman.ok(&args);
    let ip_a = podman
        .ok(&[
            "inspect",
            "a",
            "--format",
            "{{(index .NetworkSettings.Networks \"scrpod\").IPAddress}}",
        ])
        .trim()
        .to_string();
    assert!(ip_a.starts_with("10.70.0."), "{ip_a}");
    assert_eq!(podman.leases(), vec![ip_a.clone()]);
    assert_eq!(node.host_veths().len(), 1);

    let ping = format!("ip -o addr show eth0 && ping -c 1 -W 2 {ip_a} && ping -c 1 -W 2 {NODE_IP}");
    let mut args = vec!["run", "--rm", "--network", "scrpod"];
    args.extend(ULIMITS);
    args.extend([IMAGE, "sh", "-c", ping.as_str()]);
    let out = podman.ok(&args);
    assert!(out.contains("1 packets received"), "{out}");
    assert!(out.contains("10.70.0."), "{out}");

    podman.ok(&["rm", "-f", "-t", "0", "a"]);
    assert!(podman.leases().is_empty(), "{:?}", podman.leases());
    assert!(node.host_veths().is_empty());
    assert!(node.our_routes().trim().is_empty());
    let log = std::fs::read_to_string(podman.path("cni.log")).unwrap();
    assert!(log.contains("cmd=\"ADD\"") || log.contains("ADD"), "{log}");
}
