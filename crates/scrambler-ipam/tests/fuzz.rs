//! Fuzzing of what the IPAM reads from outside: the network conf (its `ipam` section,
//! `runtimeConfig`, `args`, `prevResult`, the GC list), the lease directory's files (lease
//! bodies, `by-holder` link names, `last_reserved_ip.N`) and `resolvConf`. Every input must
//! give a result or a CNI error of the expected class, and never hand out an address whose
//! lease file cannot be read. Corpus: `fuzz/corpus/<target>/` (lease files written by the
//! reference host-local among them); `SCRAMBLER_FUZZ_CASES` runs longer.

use scrambler_core::{AllocRequest, AttachmentId};
use scrambler_fuzz::{expect_codes, Shape, Target};
use scrambler_ipam::cni_io::{self, CniEnv, EnvChecks};
use scrambler_ipam::{dns, plugin, IpamConf, LocalIpam};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

const CRATE: &str = env!("CARGO_MANIFEST_DIR");
const ID: &str = "c-fuzz";

/// Codes a plugin run may answer for a conf it cannot serve.
const CONF_CODES: &[u32] = &[1, 6, 7, 101, 103];

fn env(command: &str) -> CniEnv {
    CniEnv::from_vars_with(
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", ID),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/fuzz"),
            ("CNI_ARGS", "IgnoreUnknown=1"),
        ],
        EnvChecks::Required,
    )
    .expect("fixed environment")
}

/// The conf as the plugin parses it; then, with its leases moved to `scratch`, every
/// command in a runtime's order. DEL must leave the attachment holding nothing. True when
/// ADD handed out addresses.
fn check_conf(stdin: &[u8], scratch: &Path) -> bool {
    let Some(mut conf) = expect_codes("conf", cni_io::parse_conf(stdin), &[6, 7]) else {
        return false;
    };
    expect_codes("cniVersion", cni_io::conf_version(&conf), &[1, 7]);
    let Some(name) = expect_codes("name", cni_io::network_name(&conf), &[7]) else {
        return false;
    };
    if expect_codes("ipam", IpamConf::from_net_conf(&conf), &[7]).is_none() {
        return false;
    }
    let resolv = Path::new(CRATE).join("fuzz/corpus/resolv_conf/debian");
    let Some(Value::Object(ipam)) = conf.get_mut("ipam") else {
        return false;
    };
    ipam.insert("dataDir".into(), json!(scratch));
    if ipam.contains_key("resolvConf") {
        ipam.insert("resolvConf".into(), json!(resolv));
    }
    let stdin = serde_json::to_vec(&conf).expect("conf encodes");
    let added = expect_codes("ADD", plugin::run(&env("ADD"), &stdin), CONF_CODES).is_some();
    for command in ["CHECK", "STATUS", "GC", "DEL"] {
        expect_codes(command, plugin::run(&env(command), &stdin), CONF_CODES);
    }
    if let Ok(ipam) = IpamConf::from_net_conf(&conf).and_then(|c| LocalIpam::new(&name, c)) {
        let held = ipam
            .check_blocking(&AttachmentId::new(ID, "eth0"))
            .expect("leases readable after DEL");
        assert!(held.is_empty(), "DEL left {held:?}");
    }
    added
}

#[test]
fn fuzz_ipam_conf() {
    let scratch = scrambler_fuzz::scratch_dir();
    let served = AtomicUsize::new(0);
    let r = Target::new(CRATE, "ipam_conf", Shape::Json, 3000)
        .dictionary([
            "ipam",
            "ranges",
            "subnet",
            "rangeStart",
            "rangeEnd",
            "gateway",
            "routes",
            "dst",
            "gw",
            "dataDir",
            "resolvConf",
            "exclude",
            "runtimeConfig",
            "ipRanges",
            "ips",
            "args",
            "cni",
            "prevResult",
            "cni.dev/valid-attachments",
            "containerID",
            "ifname",
            "cniVersion",
            "name",
            "10.1.0.0/30",
            "fd00::/126",
        ])
        .run(|input| {
            if check_conf(input, scratch.path()) {
                served.fetch_add(1, Ordering::Relaxed);
            }
        });
    let served = served.into_inner();
    println!("ipam_conf: {served} inputs got addresses");
    assert!(
        r.generated > 0 && served > r.total() / 20,
        "{r:?}, {served} served"
    );
}

/// One network whose lease directory holds, besides real leases, a lease file, a
/// `by-holder` link name and a `last_reserved_ip.0` made of the input.
#[test]
fn fuzz_lease_file() {
    let scratch = scrambler_fuzz::scratch_dir();
    let conf = IpamConf::parse(&json!({"ranges": [[{"subnet": "10.1.0.0/29"}]],
                                       "dataDir": scratch.path()}))
    .expect("conf");
    let ipam = LocalIpam::new("leases", conf).expect("store");
    let dir = ipam.lease_dir().to_path_buf();
    let damaged: IpAddr = "10.1.0.2".parse().expect("address");
    let me = AttachmentId::new(ID, "eth0");
    let r = Target::new(CRATE, "lease_file", Shape::Bytes, 3000)
        .dictionary([
            "\r\n",
            "@",
            "%",
            "%2F",
            "{",
            "}",
            "\"containerId\"",
            "\"ifname\"",
            ":",
        ])
        .run(|input| {
            std::fs::write(dir.join(damaged.to_string()), input).expect("write lease");
            std::fs::write(dir.join("last_reserved_ip.0"), input).expect("write last");
            let link_name = String::from_utf8_lossy(input).replace(['/', '\0'], "_");
            let link = dir.join("by-holder").join(&link_name);
            if !link_name.is_empty() && link_name.len() < 255 && !link.exists() {
                let _ = std::fs::hard_link(dir.join(damaged.to_string()), &link);
            }
            let files = ipam.lease_files().expect("scan");
            let lease = files.iter().find(|f| f.address == damaged).expect("listed");
            let mine = lease.is_held_by(&me);
            let result = ipam
                .allocate_blocking(&AllocRequest {
                    id: me.clone(),
                    requested: Vec::new(),
                })
                .expect("a free address remains");
            let got = result.ips[0].address.addr();
            assert!(
                got != damaged || mine,
                "handed out {damaged}, whose lease reads {:?}",
                lease.holder
            );
            ipam.list_blocking().expect("list");
            ipam.release_blocking(&me).expect("release");
            std::fs::remove_file(dir.join(damaged.to_string())).expect("remove lease");
        });
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}

#[test]
fn fuzz_resolv_conf() {
    let r = Target::new(CRATE, "resolv_conf", Shape::Bytes, 3000)
        .dictionary([
            "nameserver ",
            "search ",
            "domain ",
            "options ",
            "#",
            ";",
            "\n",
            "\t",
        ])
        .run(|input| {
            let d = dns::parse_resolv_conf(&String::from_utf8_lossy(input));
            assert!(d.nameservers.iter().all(|n| !n.is_empty()));
        });
    assert!(r.generated > 0 && r.corpus > 0, "{r:?}");
}
