//! The CNI protocol around a plugin, independent of what the plugin does: the command
//! (`CNI_COMMAND`), the `CNI_*` environment parsed from a list of (key, value) pairs (so
//! the same code serves a plugin binary, tests and an embedding runtime), `CNI_ARGS`,
//! the addresses a runtime asks for, the GC list of valid attachments, the `VERSION`
//! answer and the error object. Environment errors are
//! [`Error::InvalidEnvironment`] (CNI code 4).

use crate::result::{CURRENT_VERSION, SUPPORTED_VERSIONS};
use crate::{AttachmentId, Error, Netns, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;

/// The CNI operation asked for by `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify a container's networking.
    Check,
    /// Report supported versions.
    Version,
    /// Release resources of attachments no longer valid (CNI 1.1).
    Gc,
    /// Report whether ADD can be served (CNI 1.1).
    Status,
}

impl Command {
    /// Parses a `CNI_COMMAND` value (code 4 when it is not one of ours).
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            other => {
                return Err(invalid(
                    "CNI_COMMAND",
                    format!(
                        "unknown command {other:?}: expected ADD, DEL, CHECK, VERSION, GC or STATUS"
                    ),
                ))
            }
        })
    }

    /// The `CNI_COMMAND` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Gc => "GC",
            Command::Status => "STATUS",
        }
    }

    /// True for the commands that act on one attachment (ADD, DEL, CHECK), and so need
    /// `CNI_CONTAINERID` and `CNI_IFNAME`.
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// How much of the environment [`CniEnv::from_vars_with`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvChecks {
    /// Only that each command has its variables: `CNI_CONTAINERID` and `CNI_IFNAME` for
    /// ADD, DEL and CHECK, `CNI_NETNS` for ADD and CHECK.
    Required,
    /// [`EnvChecks::Required`], plus `CNI_PATH` for every command but VERSION, and the
    /// container id and interface name checked as the spec restricts them
    /// ([`validate_container_id`], [`validate_ifname`]).
    Spec,
}

/// The parsed `CNI_*` environment of one invocation. Empty variables count as absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (always present for ADD, DEL and CHECK).
    pub container_id: Option<String>,
    /// `CNI_NETNS` (always present for ADD and CHECK).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (always present for ADD, DEL and CHECK).
    pub ifname: Option<String>,
    /// `CNI_ARGS`, split into key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
    /// Every variable as given (for delegating to other plugins, and plugin-specific
    /// variables, see [`CniEnv::var`]).
    pub vars: Vec<(String, String)>,
}

impl CniEnv {
    /// Parses and validates the variables of one invocation with [`EnvChecks::Spec`].
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::from_vars_with(vars, EnvChecks::Spec)
    }

    /// Parses the variables of one invocation, checking them as `checks` says.
    pub fn from_vars_with<I, K, V>(vars: I, checks: EnvChecks) -> Result<Self>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let map: HashMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let get = |k: &str| map.get(k).copied().filter(|v| !v.is_empty());

        let command = Command::parse(get("CNI_COMMAND").ok_or_else(|| missing("CNI_COMMAND"))?)?;
        let args = get("CNI_ARGS")
            .map(parse_cni_args)
            .transpose()?
            .unwrap_or_default();
        let strict = checks == EnvChecks::Spec;
        if strict && command != Command::Version && get("CNI_PATH").is_none() {
            return Err(missing("CNI_PATH"));
        }
        let container_id = get("CNI_CONTAINERID").map(str::to_string);
        let ifname = get("CNI_IFNAME").map(str::to_string);
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if command.is_per_attachment() {
            let cid = container_id
                .as_deref()
                .ok_or_else(|| missing("CNI_CONTAINERID"))?;
            if strict {
                validate_container_id(cid)?;
            }
            let name = ifname.as_deref().ok_or_else(|| missing("CNI_IFNAME"))?;
            if strict {
                validate_ifname(name)?;
            }
        }
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(missing("CNI_NETNS"));
        }
        let path = get("CNI_PATH")
            .map(|p| {
                p.split(':')
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            vars,
        })
    }

    /// The attachment named by `CNI_CONTAINERID` / `CNI_IFNAME` (code 4 when either is
    /// absent).
    pub fn attachment(&self) -> Result<AttachmentId> {
        let id = self
            .container_id
            .clone()
            .ok_or_else(|| missing("CNI_CONTAINERID"))?;
        let ifname = self.ifname.clone().ok_or_else(|| missing("CNI_IFNAME"))?;
        Ok(AttachmentId::new(id, ifname))
    }

    /// The pod namespace, if `CNI_NETNS` was given.
    pub fn pod_netns(&self) -> Option<Netns> {
        self.netns.as_ref().map(Netns::path)
    }

    /// The value of `key` in `CNI_ARGS` (keys compare case-insensitively).
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the variable `key` as given, unless it is empty.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Splits `CNI_ARGS` (`K1=V1;K2=V2`) into pairs (code 4 for an item that is not
/// `KEY=VALUE` with a non-empty key).
pub fn parse_cni_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(invalid("CNI_ARGS", format!("{kv:?} is not KEY=VALUE"))),
        })
        .collect()
}

/// What the spec allows in container ids and network names.
const NAME_RULE: &str =
    "must start with an ASCII alphanumeric character followed by alphanumerics, '_', '.' or '-'";

/// True for a name the spec allows as a container id or network name
/// (`^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, libcni's `cniValidNameChars`).
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks a container id as the spec restricts it ([`is_valid_name`]; code 4).
pub fn validate_container_id(id: &str) -> Result<()> {
    if !is_valid_name(id) {
        return Err(invalid("CNI_CONTAINERID", format!("{id:?} {NAME_RULE}")));
    }
    Ok(())
}

/// Checks a conf's network `name` as the spec and libcni restrict it ([`is_valid_name`];
/// code 7, invalid network config). The name marks what a network owns (interface
/// aliases, lease directories), so one name is never a path or a prefix of another's mark.
pub fn validate_network_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config("field \"name\" is missing or empty"));
    }
    if !is_valid_name(name) {
        return Err(Error::config(format!(
            "field \"name\": network name {name:?} {NAME_RULE}"
        )));
    }
    Ok(())
}

/// Checks an interface name as Linux and the spec restrict it: 1–15 bytes, not `.` or
/// `..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("must not be \".\" or \"..\"")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("must not contain '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(r) => Err(invalid(
            "CNI_IFNAME",
            format!("interface name {name:?} {r}"),
        )),
        None => Ok(()),
    }
}

fn invalid(var: &str, reason: impl Into<String>) -> Error {
    Error::InvalidEnvironment {
        var: var.to_string(),
        reason: reason.into(),
    }
}

fn missing(var: &str) -> Error {
    invalid(var, "missing or empty")
}

/// Addresses the runtime asks for: `CNI_ARGS` `IP=` (comma-separated), `args.cni.ips`,
/// and `runtimeConfig.ips` (the `ips` capability), in that order, each once. Entries may
/// carry a prefix length (`10.1.0.5/24`), which is ignored. `conf` is the conf as
/// received (code 7 when a list is malformed).
pub fn requested_ips(conf: &Value, env: &CniEnv) -> Result<Vec<IpAddr>> {
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

/// The attachments listed in a GC conf (`cni.dev/valid-attachments`, or the
/// `cni.dev/attachments` spelling some runtimes also send). Its absence is an error
/// (code 7), not an empty list: GC against an empty list would release everything.
pub fn valid_attachments(conf: &Value) -> Result<Vec<AttachmentId>> {
    let list = conf
        .get("cni.dev/valid-attachments")
        .or_else(|| conf.get("cni.dev/attachments"))
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

/// The `cniVersion` a caller sent in `conf` (raw stdin, may be empty or not JSON), if
/// it is one we speak.
fn asked_version(conf: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(conf)
        .ok()?
        .get("cniVersion")
        .and_then(Value::as_str)
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .map(str::to_string)
}

/// The `VERSION` command's answer for a caller that sent `conf` (may be empty): in the
/// version the caller asked for when we speak it, else the newest.
pub fn version_json(conf: &[u8]) -> Value {
    let asked = asked_version(conf).unwrap_or_else(|| CURRENT_VERSION.to_string());
    serde_json::json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

/// The version to write an error in: the one of `conf` (raw stdin) if we speak it, else
/// the newest.
pub fn error_version(conf: &[u8]) -> String {
    asked_version(conf).unwrap_or_else(|| CURRENT_VERSION.to_string())
}

/// The CNI error object of `err` as JSON.
pub fn error_json(err: &Error, version: &str) -> Value {
    serde_json::to_value(err.to_cni(version)).unwrap_or_else(
        |_| serde_json::json!({"cniVersion": version, "code": err.code(), "msg": err.to_string()}),
    )
}

/// `value` serialized as one line (with the newline), as it goes to stdout.
pub fn json_line(value: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(value).unwrap_or_default();
    b.push(b'\n');
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn command_round_trips_and_unknown_is_code_4() {
        for c in ["ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"] {
            assert_eq!(Command::parse(c).unwrap().as_str(), c);
        }
        assert_eq!(Command::parse("add").unwrap_err().code(), 4);
    }

    #[test]
    fn checks_decide_what_is_validated() {
        let vars = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "_odd"),
            ("CNI_IFNAME", "eth0"),
            ("SCRAMBLER_X", "y"),
        ];
        let lax = CniEnv::from_vars_with(vars, EnvChecks::Required).unwrap();
        assert_eq!(lax.attachment().unwrap(), AttachmentId::new("_odd", "eth0"));
        assert_eq!(lax.var("SCRAMBLER_X"), Some("y"));
        assert!(lax.netns.is_none() && lax.path.is_empty());
        let e = CniEnv::from_vars(vars).unwrap_err();
        assert!(e.to_string().contains("CNI_PATH"), "{e}");
        let mut with_path = vars.to_vec();
        with_path.push(("CNI_PATH", "/x"));
        let e = CniEnv::from_vars(with_path).unwrap_err();
        assert!(e.to_string().contains("CNI_CONTAINERID"), "{e}");
        assert_eq!(e.code(), 4);
        let v = CniEnv::from_vars([("CNI_COMMAND", "VERSION")]).unwrap();
        assert!(v.attachment().is_err());
        assert_eq!(parse_cni_args("=v").unwrap_err().code(), 4);
    }

    #[test]
    fn network_names_follow_the_spec() {
        for ok in ["a", "a-b", "a.b", "a_b", "0", "Net.1-x_y"] {
            validate_network_name(ok).unwrap();
        }
        for bad in [
            "", "a/b", "/a", "-a", ".a", "_a", "..", "a b", "a:b", "a\0", "né",
        ] {
            let e = validate_network_name(bad).unwrap_err();
            assert_eq!(e.code(), 7, "{bad:?}");
            assert!(e.to_string().contains("field \"name\""), "{e}");
        }
        assert_eq!(validate_container_id("a/b").unwrap_err().code(), 4);
    }

    #[test]
    fn gc_list_spellings_and_versions() {
        let a = valid_attachments(
            &json!({"cni.dev/attachments": [{"containerID": "c", "ifname": "eth1"}]}),
        )
        .unwrap();
        assert_eq!(a, [AttachmentId::new("c", "eth1")]);
        assert_eq!(
            valid_attachments(&json!({"cni.dev/valid-attachments": 3}))
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(error_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(error_version(br#"{"cniVersion":"0.2.0"}"#), CURRENT_VERSION);
        let err = Error::config("x");
        let line = json_line(&error_json(&err, "1.0.0"));
        assert!(line.ends_with(b"}\n"));
        let back: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(back["code"], 7);
        assert_eq!(back["cniVersion"], "1.0.0");
    }
}
