//! Fuzzing of what the plugin reads from a runtime: the conf on stdin (with its
//! `prevResult`, IPAM section, backend sections and GC list) and `CNI_ARGS`. Every input must
//! give a result or a CNI error of the class the spec gives that input: codes 1, 6 and 7
//! for a conf, 4 for the environment. Corpus: `fuzz/corpus/<target>/` (real results of
//! the reference bridge and host-local plugins among them); see scrambler-fuzz for how
//! cases are generated and `SCRAMBLER_FUZZ_CASES` for longer runs.

use scrambler_cni::backend::{backend_for, BackendOptions};
use scrambler_cni::protocol::{self, Request};
use scrambler_cni::{ipam, CniEnv};
use scrambler_core::result::SUPPORTED_VERSIONS;
use scrambler_core::{CniResult, Error, Interface, IpConfig};
use scrambler_fuzz::{expect_codes, Shape, Target};
use serde_json::{json, Value};
use std::path::Path;

const CRATE: &str = env!("CARGO_MANIFEST_DIR");

/// Words of the conf and its sections, for mutations to swap in.
const CONF_WORDS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "backend",
    "ipam",
    "mtu",
    "master",
    "mode",
    "flag",
    "encrypt",
    "clusterCidrs",
    "stateDir",
    "vpp",
    "apiSocket",
    "underlayMtu",
    "prevResult",
    "runtimeConfig",
    "ips",
    "args",
    "cni",
    "dns",
    "cni.dev/valid-attachments",
    "containerID",
    "ifname",
    "ranges",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "dataDir",
    "exclude",
    "routes",
    "dst",
    "gw",
    "interfaces",
    "sandbox",
    "interface",
    "address",
    "veth",
    "xfrm",
    "ipvlan",
    "scrambler-ipam",
    "host-local",
    "l2",
    "l3s",
    "private",
    "logFile",
    "logLevel",
    "tunnelStatusFile",
];

fn env(command: &str, cni_path: &Path, cni_args: &str) -> Result<CniEnv, Error> {
    CniEnv::from_vars([
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/run/netns/fuzz"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", &cni_path.display().to_string()),
        ("CNI_ARGS", cni_args),
    ])
}

/// A result as our backends return it, to merge after a `prevResult`.
fn our_result() -> CniResult {
    CniResult {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: Some("0a:58:0a:01:00:05".into()),
            mtu: Some(1440),
            sandbox: Some("/run/netns/fuzz".into()),
        }],
        ips: vec![IpConfig {
            address: "10.1.0.5/32".parse().expect("address"),
            gateway: None,
            interface: Some(0),
        }],
        ..Default::default()
    }
}

/// What every command does with a conf before touching the node, on `stdin`.
fn check_conf(stdin: &[u8], scratch: &Path) {
    let version = protocol::error_version(stdin);
    assert!(SUPPORTED_VERSIONS.contains(&version.as_str()));
    let report = protocol::version_report(stdin);
    assert!(report["supportedVersions"].is_array());
    let env = env("ADD", &scratch.join("bin"), "").expect("fixed environment");
    let Some(mut req) = expect_codes("parse", Request::parse(env, stdin), &[1, 6, 7]) else {
        return;
    };
    let opts = BackendOptions::default();
    expect_codes("backend", backend_for(&req.conf, &opts).map(|_| ()), &[7]);
    let prev = expect_codes("prevResult", protocol::prev_result(&req.conf), &[6, 7]);
    expect_codes("requested ips", protocol::requested_ips(&req), &[7]);
    expect_codes("GC list", protocol::valid_attachments(&req.conf), &[7]);
    // leases of the built-in IPAM go to the scratch directory, whatever dataDir says
    if let Some(Value::Object(section)) = req.conf.ipam.as_mut() {
        section.insert("dataDir".into(), json!(scratch.join("ipam")));
    }
    expect_codes(
        "IPAM",
        ipam::select(&req.conf, &req.raw, &req.env).map(|_| ()),
        &[7],
    );
    if let Some(prev) = prev.flatten() {
        let merged = protocol::merge_prev(Some(prev), our_result());
        let out = merged
            .to_json(req.version())
            .expect("a merged result encodes");
        let back = CniResult::from_json(&out).expect("our own result parses");
        if matches!(req.version(), "0.1.0" | "0.2.0") {
            // the legacy layout has no interfaces and one address per family
            assert!(back.interfaces.is_empty());
            assert!(back.ips.len() <= 2);
            assert!(back
                .ips
                .iter()
                .all(|ip| merged.ips.iter().any(|m| m.address == ip.address)));
        } else {
            assert_eq!(back.interfaces.len(), merged.interfaces.len());
            assert_eq!(back.ips, merged.ips);
        }
    }
}

#[test]
fn fuzz_cni_conf() {
    let scratch = scrambler_fuzz::scratch_dir();
    let r = Target::new(CRATE, "cni_conf", Shape::Json, 3000)
        .dictionary(CONF_WORDS)
        .run(|input| check_conf(input, scratch.path()));
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}

/// A `prevResult` (any JSON) inside an otherwise valid conf.
#[test]
fn fuzz_prev_result() {
    let scratch = scrambler_fuzz::scratch_dir();
    let r = Target::new(CRATE, "prev_result", Shape::Json, 3000)
        .dictionary(CONF_WORDS)
        .run(|input| {
            let Ok(prev) = serde_json::from_slice::<Value>(input) else {
                return;
            };
            let conf = json!({"cniVersion": "1.0.0", "name": "fuzz", "type": "scrambler-cni",
                              "backend": "xfrm", "prevResult": prev});
            let stdin = serde_json::to_vec(&conf).expect("conf encodes");
            check_conf(&stdin, scratch.path());
            let req = Request::parse(
                env("CHECK", &scratch.path().join("bin"), "").expect("environment"),
                &stdin,
            )
            .expect("a valid conf around any prevResult");
            expect_codes("prevResult", protocol::prev_result(&req.conf), &[6]);
        });
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}

#[test]
fn fuzz_cni_args() {
    let scratch = scrambler_fuzz::scratch_dir();
    let conf = json!({"args": {"cni": {"ips": ["10.1.0.9"]}}});
    let r = Target::new(CRATE, "cni_args", Shape::Bytes, 5000)
        .dictionary([
            "=",
            ";",
            ",",
            "IP=",
            "IgnoreUnknown=1",
            "K8S_POD_NAME=",
            "/24",
            "::",
        ])
        .run(|input| {
            let args = String::from_utf8_lossy(input);
            for command in ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"] {
                let Some(env) = expect_codes(
                    "environment",
                    env(command, &scratch.path().join("bin"), &args),
                    &[4],
                ) else {
                    continue;
                };
                let _ = env.arg("IP");
                expect_codes(
                    "requested ips",
                    scrambler_core::cni::requested_ips(&conf, &env),
                    &[7],
                );
            }
        });
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}
