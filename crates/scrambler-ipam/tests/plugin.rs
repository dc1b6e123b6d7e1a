//! The `scrambler-ipam` binary exec'd the way a runtime (or a delegating plugin) calls an
//! IPAM plugin: `CNI_*` environment, conf on stdin, result or error JSON on stdout.

use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_scrambler-ipam");

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout {:?} not JSON: {e}", self.stdout))
    }
}

fn exec(cmd: &str, id: &str, env: &[(&str, &str)], stdin: &Value) -> Out {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", "/var/run/netns/test")
        .env("CNI_PATH", "/usr/lib/cni")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn scrambler-ipam");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn net_conf(version: &str, dir: &Path, ipam: Value) -> Value {
    let mut ipam = ipam;
    ipam["type"] = "scrambler-ipam".into();
    ipam["dataDir"] = dir.display().to_string().into();
    json!({"cniVersion": version, "name": "plugnet", "type": "bridge", "ipam": ipam})
}

fn leases(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("plugnet"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
        .collect();
    v.sort();
    v
}

#[test]
fn every_command_in_every_version() {
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let tmp = tempfile::tempdir().unwrap();
        let resolv = tmp.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 192.0.2.53\nsearch pods.test\n").unwrap();
        let conf = net_conf(
            version,
            tmp.path(),
            json!({
                "ranges": [[{"subnet": "10.20.0.0/24"}], [{"subnet": "fd20::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "resolvConf": resolv.display().to_string(),
            }),
        );

        let add = exec("ADD", "ctr-a", &[], &conf);
        assert!(add.ok, "{version}: {} {}", add.stdout, add.stderr);
        let r = add.json();
        assert_eq!(r["cniVersion"], version);
        assert_eq!(r["ips"][0]["address"], "10.20.0.2/24");
        assert_eq!(r["ips"][0]["gateway"], "10.20.0.1");
        assert_eq!(r["ips"][1]["address"], "fd20::2/64");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["dns"]["nameservers"][0], "192.0.2.53");
        assert_eq!(r["dns"]["search"][0], "pods.test");
        assert_eq!(r["ips"][0].get("version").is_some(), version == "0.4.0");
        assert_eq!(add.stdout.lines().count(), 1, "only the result on stdout");

        // idempotent ADD
        assert_eq!(exec("ADD", "ctr-a", &[], &conf).json()["ips"], r["ips"]);

        // CHECK with and without prevResult; a prevResult address we did not lease fails
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        assert!(exec("CHECK", "ctr-a", &[], &with_prev).ok);
        let mut bad_prev = with_prev.clone();
        bad_prev["prevResult"]["ips"][0]["address"] = "10.20.0.77/24".into();
        let bad = exec("CHECK", "ctr-a", &[], &bad_prev);
        assert!(!bad.ok);
        assert_eq!(bad.json()["code"], 103);
        let none = exec("CHECK", "ctr-none", &[], &conf);
        assert!(!none.ok);
        assert_eq!(none.json()["code"], 103);
        assert_eq!(none.json()["cniVersion"], version);

        // requested address through CNI_ARGS and through args.cni.ips
        let b = exec(
            "ADD",
            "ctr-b",
            &[("CNI_ARGS", "IgnoreUnknown=1;IP=10.20.0.50")],
            &conf,
        );
        assert_eq!(
            b.json()["ips"][0]["address"],
            "10.20.0.50/24",
            "{}",
            b.stderr
        );
        let mut want = conf.clone();
        want["args"] = json!({"cni": {"ips": ["10.20.0.60", "fd20::60"]}});
        let c = exec("ADD", "ctr-c", &[], &want);
        assert_eq!(c.json()["ips"][1]["address"], "fd20::60/64");
        let taken = exec("ADD", "ctr-d", &[("CNI_ARGS", "IP=10.20.0.50")], &conf);
        assert!(!taken.ok);
        assert_eq!(taken.json()["code"], 102);
        assert!(taken.json()["details"].as_str().unwrap().contains("ctr-b"));
        let outside = exec("ADD", "ctr-d", &[("CNI_ARGS", "IP=10.99.0.5")], &conf);
        assert_eq!(outside.json()["code"], 7);
        assert_eq!(leases(tmp.path()).len(), 6);

        // DEL prints nothing; DEL of an unknown id succeeds
        let del = exec("DEL", "ctr-a", &[], &conf);
        assert!(del.ok && del.stdout.is_empty(), "{}", del.stdout);
        assert!(exec("DEL", "ctr-a", &[], &conf).ok);
        assert!(exec("DEL", "never-added", &[], &conf).ok);
        assert_eq!(leases(tmp.path()).len(), 4);

        // GC and STATUS came with 1.1.0: older confs are refused with code 1
        let mut gc = conf.clone();
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-c", "ifname": "eth0"}]);
        if version != "1.1.0" {
            for cmd in ["GC", "STATUS"] {
                let out = exec(cmd, "", &[], &gc);
                assert_eq!(out.json()["code"], 1, "{version} {cmd}: {}", out.stdout);
            }
            assert_eq!(leases(tmp.path()).len(), 4);
            continue;
        }

        // GC keeps only the valid attachments
        gc["cni.dev/valid-attachments"] = json!([{"containerID": "ctr-c", "ifname": "eth0"}]);
        let out = exec(
            "GC",
            "",
            &[("CNI_CONTAINERID", ""), ("CNI_IFNAME", "")],
            &gc,
        );
        assert!(
            out.ok && out.stdout.is_empty(),
            "{} {}",
            out.stdout,
            out.stderr
        );
        assert_eq!(leases(tmp.path()), ["10.20.0.60", "fd20::60"]);

        // STATUS and VERSION
        let st = exec("STATUS", "", &[], &conf);
        assert!(st.ok && st.stdout.is_empty(), "{}", st.stdout);
        let v = exec("VERSION", "", &[], &json!({"cniVersion": version})).json();
        assert_eq!(v["cniVersion"], version);
        assert_eq!(v["supportedVersions"], json!(ALL_VERSIONS));
    }
}

const ALL_VERSIONS: [&str; 7] = [
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

#[test]
fn versions_before_0_4_answer_in_their_own_layout() {
    for version in ["0.1.0", "0.2.0", "0.3.0", "0.3.1", ""] {
        let tmp = tempfile::tempdir().unwrap();
        let mut conf = net_conf(
            version,
            tmp.path(),
            json!({
                "ranges": [[{"subnet": "10.21.0.0/24"}], [{"subnet": "fd21::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd21::1"}],
            }),
        );
        if version.is_empty() {
            // no cniVersion: 0.1.0, as the reference plugins read it
            conf.as_object_mut().unwrap().remove("cniVersion");
        }
        let add = exec("ADD", "old-a", &[], &conf);
        assert!(add.ok, "{version}: {} {}", add.stdout, add.stderr);
        let r = add.json();
        if matches!(version, "0.1.0" | "0.2.0" | "") {
            assert_eq!(
                r["cniVersion"],
                if version.is_empty() { "0.1.0" } else { version }
            );
            assert_eq!(
                r["ip4"],
                json!({"ip": "10.21.0.2/24", "gateway": "10.21.0.1", "routes": [{"dst": "0.0.0.0/0"}]})
            );
            assert_eq!(
                r["ip6"],
                json!({"ip": "fd21::2/64", "gateway": "fd21::1", "routes": [{"dst": "::/0", "gw": "fd21::1"}]})
            );
            assert!(r.get("ips").is_none() && r.get("routes").is_none(), "{r}");
        } else {
            assert_eq!(r["cniVersion"], version);
            assert_eq!(r["ips"][0]["address"], "10.21.0.2/24");
            assert_eq!(r["ips"][0]["version"], "4");
            assert_eq!(r["ips"][1]["version"], "6");
            assert_eq!(r["routes"][1]["gw"], "fd21::1");
        }
        assert_eq!(leases(tmp.path()), ["10.21.0.2", "fd21::2"]);
        // no CHECK, GC or STATUS before 0.4.0 / 1.1.0: code 1, nothing touched
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = r.clone();
        for (cmd, c) in [("CHECK", &with_prev), ("GC", &conf), ("STATUS", &conf)] {
            let out = exec(cmd, "old-a", &[], c);
            assert!(!out.ok, "{version} {cmd}");
            assert_eq!(out.json()["code"], 1, "{version} {cmd}: {}", out.stdout);
        }
        assert_eq!(leases(tmp.path()).len(), 2);
        let del = exec("DEL", "old-a", &[], &conf);
        assert!(del.ok && del.stdout.is_empty(), "{}", del.stdout);
        assert!(leases(tmp.path()).is_empty());
    }
}

#[test]
fn check_reads_a_prev_result_of_the_0_4_layout() {
    // a 0.4.0 prevResult as bridge passes it on: with the "version" of each address
    let tmp = tempfile::tempdir().unwrap();
    let conf = net_conf("0.4.0", tmp.path(), json!({"subnet": "10.22.0.0/24"}));
    let r = exec("ADD", "c", &[], &conf).json();
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = json!({
        "cniVersion": "0.4.0",
        "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"version": "4", "interface": 1, "address": r["ips"][0]["address"],
                 "gateway": "10.22.0.1"}],
    });
    let ok = exec("CHECK", "c", &[], &with_prev);
    assert!(ok.ok, "{}", ok.stdout);
    with_prev["prevResult"]["ips"][0]["address"] = json!("10.22.0.99/24");
    assert_eq!(exec("CHECK", "c", &[], &with_prev).json()["code"], 103);
}

#[test]
fn errors_are_cni_json_with_exit_code_1() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = net_conf(
        "1.1.0",
        tmp.path(),
        json!({"ranges": [[{"subnet": "10.0.0.0/24", "gateway": "10.1.0.1"}]]}),
    );
    let out = exec("ADD", "c", &[], &bad);
    assert!(!out.ok);
    let e = out.json();
    assert_eq!(e["code"], 7);
    assert_eq!(e["cniVersion"], "1.1.0");
    assert!(e["details"].as_str().unwrap().contains("gateway"), "{e}");

    let garbage = Command::new(BIN)
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(garbage.status.code(), Some(1));
    let e: Value = serde_json::from_slice(&garbage.stdout).unwrap();
    assert!([4, 6].contains(&e["code"].as_u64().unwrap()), "{e}");

    // a failure that is not about addresses leaves no lease behind
    let no_dns = net_conf(
        "1.1.0",
        tmp.path(),
        json!({"subnet": "10.0.0.0/24", "resolvConf": "/nonexistent/resolv.conf"}),
    );
    let out = exec("ADD", "c", &[], &no_dns);
    assert_eq!(out.json()["code"], 5, "{}", out.stdout);
    assert!(leases(tmp.path()).is_empty());

    let unknown = net_conf("0.5.0", tmp.path(), json!({"subnet": "10.0.0.0/24"}));
    assert_eq!(exec("ADD", "c", &[], &unknown).json()["code"], 1);

    let mut no_env = Command::new(BIN);
    no_env
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = no_env.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            net_conf("1.0.0", tmp.path(), json!({"subnet": "10.0.0.0/24"}))
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let e: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(e["code"], 4);
    assert_eq!(e["cniVersion"], "1.0.0");
}

#[test]
fn exhaustion_is_101_and_names_the_range() {
    let tmp = tempfile::tempdir().unwrap();
    // /29: .1 gateway, .2–.6 usable, .7 broadcast; .3 excluded → 4 addresses
    let conf = net_conf(
        "1.0.0",
        tmp.path(),
        json!({"subnet": "10.30.0.0/29", "exclude": ["10.30.0.3"]}),
    );
    let mut got = HashSet::new();
    for i in 0..4 {
        let out = exec("ADD", &format!("c{i}"), &[], &conf);
        assert!(out.ok, "{}", out.stdout);
        got.insert(
            out.json()["ips"][0]["address"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let want: HashSet<String> = [
        "10.30.0.2/29",
        "10.30.0.4/29",
        "10.30.0.5/29",
        "10.30.0.6/29",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
    let out = exec("ADD", "c-late", &[], &conf);
    assert!(!out.ok);
    let e = out.json();
    assert_eq!(e["code"], 101);
    assert!(
        e["details"].as_str().unwrap().contains("10.30.0.0/29"),
        "{e}"
    );
}

#[test]
fn corrupt_lease_is_reported_and_never_reused() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = net_conf("1.1.0", tmp.path(), json!({"subnet": "10.40.0.0/29"}));
    let dir = tmp.path().join("plugnet");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("10.40.0.2"), "{\"containerId\": truncated").unwrap();
    let out = exec("ADD", "c1", &[], &conf);
    assert!(out.ok, "{}", out.stdout);
    assert_eq!(out.json()["ips"][0]["address"], "10.40.0.3/29");
    assert!(
        out.stderr.contains("corrupt lease file") && out.stderr.contains("10.40.0.2"),
        "{}",
        out.stderr
    );
    // GC with no valid attachments releases c1 but keeps the corrupt file
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(exec("GC", "", &[], &gc).ok);
    assert_eq!(leases(tmp.path()), ["10.40.0.2"]);
    // requesting the corrupt address is refused, naming the file
    let req = exec("ADD", "c2", &[("CNI_ARGS", "IP=10.40.0.2")], &conf);
    assert_eq!(req.json()["code"], 102);
    assert!(req.json()["details"]
        .as_str()
        .unwrap()
        .contains("corrupt lease file"));
    // the library lists it with an empty holder and says why
    let ipam = scrambler_ipam::LocalIpam::new(
        "plugnet",
        scrambler_ipam::IpamConf::from_net_conf(&conf).unwrap(),
    )
    .unwrap();
    let files = ipam.lease_files().unwrap();
    assert!(files[0].holder.as_ref().unwrap_err().contains("bad JSON"));
    let listed = ipam.list_blocking().unwrap();
    assert_eq!(listed[0].address.to_string(), "10.40.0.2");
    assert!(listed[0].id.container_id.is_empty());
}

#[test]
fn many_processes_at_once_never_share_an_address() {
    const PROCS: usize = 16;
    const EACH: usize = 10;
    let tmp = tempfile::tempdir().unwrap();
    let conf = net_conf("1.1.0", tmp.path(), json!({"subnet": "10.50.0.0/24"}));
    let results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PROCS)
            .map(|p| {
                let conf = &conf;
                s.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let out = exec("ADD", &format!("p{p}-c{i}"), &[], conf);
                            assert!(out.ok, "{} {}", out.stdout, out.stderr);
                            out.json()["ips"][0]["address"]
                                .as_str()
                                .unwrap()
                                .to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let unique: HashSet<&String> = results.iter().collect();
    assert_eq!(results.len(), PROCS * EACH);
    assert_eq!(unique.len(), PROCS * EACH, "duplicate addresses handed out");
    assert_eq!(leases(tmp.path()).len(), PROCS * EACH);
}
