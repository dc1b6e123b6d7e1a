//! The CNI protocol around a plugin, independent of what the plugin does: the `CNI_*`
//! environment, `CNI_ARGS`, the conf on stdin, `VERSION` output, and printing a result or
//! an error. Reusable by any Scrambler plugin binary.

use scrambler_core::result::{check_version, CURRENT_VERSION, SUPPORTED_VERSIONS};
use scrambler_core::{AttachmentId, Error, Result};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// ADD.
    Add,
    /// DEL.
    Del,
    /// CHECK.
    Check,
    /// VERSION.
    Version,
    /// GC (CNI 1.1).
    Gc,
    /// STATUS (CNI 1.1).
    Status,
}

impl Command {
    /// Parses a `CNI_COMMAND` value.
    pub fn parse(s: &str) -> Result<Command> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(Error::InvalidEnvironment {
                    var: "CNI_COMMAND".into(),
                    reason: format!(
                    "unknown command {other:?}: expected ADD, DEL, CHECK, VERSION, GC or STATUS"
                ),
                })
            }
        })
    }

    /// True for commands that act on one attachment (and so need
    /// `CNI_CONTAINERID` and `CNI_IFNAME`).
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<String>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, split into key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl CniEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<CniEnv> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables through `get` (tests, embedding). Checks what the spec requires
    /// per command: `CNI_CONTAINERID` and `CNI_IFNAME` for ADD, DEL and CHECK,
    /// `CNI_NETNS` for ADD and CHECK.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<CniEnv> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command =
            Command::parse(&nonempty("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?)?;
        let env = CniEnv {
            command,
            container_id: nonempty("CNI_CONTAINERID"),
            netns: nonempty("CNI_NETNS"),
            ifname: nonempty("CNI_IFNAME"),
            args: parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH")
                .unwrap_or_default()
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
        };
        if command.is_per_attachment() {
            if env.container_id.is_none() {
                return Err(missing("CNI_CONTAINERID"));
            }
            if env.ifname.is_none() {
                return Err(missing("CNI_IFNAME"));
            }
        }
        if matches!(command, Command::Add | Command::Check) && env.netns.is_none() {
            return Err(missing("CNI_NETNS"));
        }
        Ok(env)
    }

    /// The attachment named by `CNI_CONTAINERID` / `CNI_IFNAME`.
    pub fn attachment(&self) -> Result<AttachmentId> {
        let id = self
            .container_id
            .clone()
            .ok_or_else(|| missing("CNI_CONTAINERID"))?;
        let ifname = self.ifname.clone().ok_or_else(|| missing("CNI_IFNAME"))?;
        Ok(AttachmentId::new(id, ifname))
    }

    /// The value of `key` in `CNI_ARGS` (keys compare case-insensitively, like libcni).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

fn missing(var: &str) -> Error {
    Error::InvalidEnvironment {
        var: var.into(),
        reason: "missing or empty".into(),
    }
}

/// Splits `CNI_ARGS` (`K1=V1;K2=V2`) into pairs.
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::InvalidEnvironment {
                    var: "CNI_ARGS".into(),
                    reason: format!("{kv:?} is not KEY=VALUE"),
                })
        })
        .collect()
}

/// Reads all of stdin.
pub fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", "stdin", e))?;
    Ok(buf)
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

/// The conf's `cniVersion`, checked to be one we speak (code 1 otherwise).
pub fn conf_version(conf: &serde_json::Value) -> Result<String> {
    let v = conf
        .get("cniVersion")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::config("missing field \"cniVersion\""))?;
    check_version(v)?;
    Ok(v.to_string())
}

/// The version to write an error in: the conf's when it is usable, else ours.
pub fn error_version(conf: Option<&serde_json::Value>) -> String {
    conf.and_then(|c| conf_version(c).ok())
        .unwrap_or_else(|| CURRENT_VERSION.to_string())
}

/// The `VERSION` command's answer for a caller that sent `conf` (may be empty).
pub fn version_json(conf: &[u8]) -> serde_json::Value {
    let asked = serde_json::from_slice::<serde_json::Value>(conf)
        .ok()
        .and_then(|c| {
            c.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string());
    serde_json::json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The conf's `name` (required).
pub fn network_name(conf: &serde_json::Value) -> Result<String> {
    conf.get("name")
        .and_then(|v| v.as_str())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .ok_or_else(|| Error::config("missing or empty field \"name\""))
}

/// Addresses the runtime asks for: `CNI_ARGS` `IP=` (comma-separated), `args.cni.ips`,
/// and `runtimeConfig.ips` (the `ips` capability), in that order. Entries may carry a
/// prefix length (`10.1.0.5/24`), which is ignored.
pub fn requested_ips(conf: &serde_json::Value, env: &CniEnv) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    if let Some(v) = env.arg("IP") {
        for s in v.split(',').filter(|s| !s.is_empty()) {
            push_new(&mut out, parse_requested("CNI_ARGS IP", s)?);
        }
    }
    for (what, list) in [
        ("args.cni.ips", conf.pointer("/args/cni/ips")),
        ("runtimeConfig.ips", conf.pointer("/runtimeConfig/ips")),
    ] {
        let Some(list) = list else { continue };
        let arr = list
            .as_array()
            .ok_or_else(|| Error::config(format!("{what} must be an array of addresses")))?;
        for item in arr {
            let s = item
                .as_str()
                .ok_or_else(|| Error::config(format!("{what}: {item} is not a string")))?;
            push_new(&mut out, parse_requested(what, s)?);
        }
    }
    Ok(out)
}

fn push_new(list: &mut Vec<IpAddr>, ip: IpAddr) {
    if !list.contains(&ip) {
        list.push(ip);
    }
}

fn parse_requested(what: &str, s: &str) -> Result<IpAddr> {
    let addr = s.split('/').next().unwrap_or(s).trim();
    addr.parse()
        .map_err(|_| Error::config(format!("{what}: invalid address {s:?}")))
}

/// The `cni.dev/valid-attachments` of a GC conf. Its absence is an error, not an empty
/// list: GC against an empty list would release every lease.
pub fn valid_attachments(conf: &serde_json::Value) -> Result<Vec<AttachmentId>> {
    let list = conf
        .get("cni.dev/valid-attachments")
        .ok_or_else(|| Error::config("GC needs \"cni.dev/valid-attachments\" (it is missing)"))?;
    #[derive(serde::Deserialize)]
    struct Att {
        #[serde(rename = "containerID")]
        container_id: String,
        ifname: String,
    }
    let atts: Vec<Att> = serde_json::from_value(list.clone())
        .map_err(|e| Error::config(format!("cni.dev/valid-attachments: {e}")))?;
    Ok(atts
        .into_iter()
        .map(|a| AttachmentId::new(a.container_id, a.ifname))
        .collect())
}

/// Writes `value` and a newline to stdout.
pub fn print_json(value: &serde_json::Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).map_err(|e| Error::io("write", "stdout", e.into()))?;
    out.write_all(b"\n")
        .and_then(|()| out.flush())
        .map_err(|e| Error::io("write", "stdout", e))
}

/// The CNI error object of `err` as JSON.
pub fn error_json(err: &Error, version: &str) -> serde_json::Value {
    serde_json::to_value(err.to_cni(version)).unwrap_or_else(
        |_| serde_json::json!({"cniVersion": version, "code": err.code(), "msg": err.to_string()}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<CniEnv> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_lookup(|k| m.get(k).cloned())
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
    fn version_answer_and_attachments() {
        let v = version_json(br#"{"cniVersion":"1.0.0"}"#);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
        assert_eq!(version_json(b"")["cniVersion"], CURRENT_VERSION);
        let a = valid_attachments(
            &json!({"cni.dev/valid-attachments": [{"containerID": "c", "ifname": "eth0"}]}),
        )
        .unwrap();
        assert_eq!(a, [AttachmentId::new("c", "eth0")]);
        assert_eq!(valid_attachments(&json!({})).unwrap_err().code(), 7);
        assert_eq!(
            conf_version(&json!({"cniVersion": "0.2.0"}))
                .unwrap_err()
                .code(),
            1
        );
    }
}
