//! The CNI protocol around a plugin, independent of what the plugin does: the `CNI_*`
//! environment, `CNI_ARGS`, the conf on stdin, `VERSION` output, and printing a result or
//! an error. The plugin-independent pieces live in [`scrambler_core::cni`] and are
//! re-exported here; what is left is the conf-as-JSON side this plugin reads.

use scrambler_core::result::{check_version, IMPLIED_VERSION};
use scrambler_core::{Error, Result};
use std::io::Write;

pub use scrambler_core::cni::{
    error_json, error_version, parse_cni_args, requested_ips, valid_attachments, version_json,
    CniEnv, Command, EnvChecks,
};

/// Reads the `CNI_*` variables of the process environment, checking only that each
/// command has the variables it needs ([`EnvChecks::Required`]). A `CNI_*` variable that
/// is not UTF-8 is code 4; other such variables are ignored
/// ([`scrambler_core::cni::process_vars`]).
pub fn env_from_process() -> Result<CniEnv> {
    CniEnv::from_vars_with(scrambler_core::cni::process_vars()?, EnvChecks::Required)
}

/// Reads stdin, at most 1 MiB (code 6 beyond, see [`scrambler_core::cni::read_conf`]).
pub fn read_stdin() -> Result<Vec<u8>> {
    scrambler_core::cni::read_conf(std::io::stdin().lock())
}

/// Parses the conf on stdin as JSON (code 6 when it is not JSON, 7 when it is not an object).
pub fn parse_conf(bytes: &[u8]) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::decode("network config", e))?;
    if !v.is_object() {
        return Err(Error::config("network config is not a JSON object"));
    }
    Ok(v)
}

/// The conf's `cniVersion` (0.1.0 when absent, as the reference plugins read it),
/// checked to be one we speak (code 1 otherwise; code 7 when it is not a string).
pub fn conf_version(conf: &serde_json::Value) -> Result<String> {
    let v = match conf.get("cniVersion") {
        None => IMPLIED_VERSION,
        Some(v) => v
            .as_str()
            .ok_or_else(|| Error::config("field \"cniVersion\" is not a string"))?,
    };
    check_version(v)?;
    Ok(v.to_string())
}

/// The conf's `name`: required, and a name as the spec defines it (code 7 otherwise,
/// [`scrambler_core::cni::validate_network_name`]).
pub fn network_name(conf: &serde_json::Value) -> Result<String> {
    let name = match conf.get("name") {
        None => "",
        Some(v) => v
            .as_str()
            .ok_or_else(|| Error::config("field \"name\" is not a string"))?,
    };
    scrambler_core::cni::validate_network_name(name)?;
    Ok(name.to_string())
}

/// Writes `value` and a newline to stdout.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(&scrambler_core::cni::json_line(value))
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("write", "stdout", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_core::result::CURRENT_VERSION;
    use scrambler_core::AttachmentId;
    use serde_json::json;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv> {
        CniEnv::from_vars_with(vars.iter().copied(), EnvChecks::Required)
    }

    #[test]
    fn env_requirements_follow_the_spec() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_NETNS"));
        let d = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.0.0.5"),
            ("CNI_PATH", "/a:/b"),
        ])
        .unwrap();
        assert_eq!(d.arg("ip"), Some("10.0.0.5"));
        assert_eq!(d.path.len(), 2);
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
        assert_eq!(env(&[("CNI_COMMAND", "FOO")]).unwrap_err().code(), 4);
        assert_eq!(env(&[]).unwrap_err().code(), 4);
        assert_eq!(parse_cni_args("a").unwrap_err().code(), 4);
    }

    #[test]
    fn requested_ips_from_every_source() {
        let e = env(&[("CNI_COMMAND", "GC"), ("CNI_ARGS", "IP=10.0.0.5")]).unwrap();
        let c = json!({"args": {"cni": {"ips": ["fd00::5/64", "10.0.0.5"]}}, "runtimeConfig": {"ips": ["10.0.1.5"]}});
        let ips: Vec<String> = requested_ips(&c, &e)
            .unwrap()
            .iter()
            .map(|i| i.to_string())
            .collect();
        assert_eq!(ips, ["10.0.0.5", "fd00::5", "10.0.1.5"]);
        assert_eq!(
            requested_ips(&json!({"args": {"cni": {"ips": "x"}}}), &e)
                .unwrap_err()
                .code(),
            7
        );
    }

    #[test]
    fn network_name_is_a_cni_name() {
        assert_eq!(
            network_name(&json!({"name": "a.b-c_1"})).unwrap(),
            "a.b-c_1"
        );
        for bad in [
            json!({}),
            json!({"name": ""}),
            json!({"name": 3}),
            json!({"name": "a/b"}),
            json!({"name": ".."}),
        ] {
            let e = network_name(&bad).unwrap_err();
            assert_eq!(e.code(), 7, "{bad}");
            assert!(e.to_string().contains("field \"name\""), "{e}");
        }
    }

    #[test]
    fn version_answer_and_attachments() {
        let v = version_json(br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(version_json(b"")["cniVersion"], CURRENT_VERSION);
        let a = valid_attachments(
            &json!({"cni.dev/valid-attachments": [{"containerID": "c", "ifname": "eth0"}]}),
        )
        .unwrap();
        assert_eq!(a, [AttachmentId::new("c", "eth0")]);
        assert_eq!(valid_attachments(&json!({})).unwrap_err().code(), 7);
        assert_eq!(
            conf_version(&json!({"cniVersion": "0.5.0"}))
                .unwrap_err()
                .code(),
            1
        );
        assert_eq!(
            conf_version(&json!({"cniVersion": 3})).unwrap_err().code(),
            7
        );
        assert_eq!(conf_version(&json!({})).unwrap(), "0.1.0");
        assert_eq!(
            conf_version(&json!({"cniVersion": "0.3.1"})).unwrap(),
            "0.3.1"
        );
    }
}
