//! The `scrambler-cni` binary as a person or a careless environment runs it: `--help`,
//! no `CNI_COMMAND`, variables that are not UTF-8, a conf larger than 1 MiB.

use scrambler_core::plugin_testing::{
    assert_answers_a_person, assert_conf_is_capped, assert_non_utf8_environment,
};
use serde_json::json;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_scrambler-cni");

fn add_env() -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b"CNI_COMMAND", b"ADD"),
        (b"CNI_CONTAINERID", b"c1"),
        (b"CNI_NETNS", b"/var/run/netns/scrambler-no-such-pod"),
        (b"CNI_IFNAME", b"eth0"),
        (b"CNI_PATH", b"/usr/lib/cni"),
    ]
}

#[test]
fn help_version_and_no_command_print_the_about_line() {
    assert_answers_a_person(Path::new(BIN), "scrambler-cni");
}

#[test]
fn non_utf8_variables_are_code_4_only_when_they_are_cni_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "utf", "type": "scrambler-cni", "backend": "xfrm",
        "ipam": {"type": "scrambler-ipam", "subnet": "10.61.0.0/24",
                 "dataDir": tmp.path().display().to_string()}
    });
    assert_non_utf8_environment(Path::new(BIN), &add_env(), conf.to_string().as_bytes());
    assert!(
        !tmp.path().join("utf").exists(),
        "a refused ADD touched the lease dir"
    );
}

#[test]
fn a_conf_over_one_mib_is_code_6() {
    assert_conf_is_capped(Path::new(BIN), &add_env());
}
