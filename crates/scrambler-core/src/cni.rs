//! The CNI protocol around a plugin, independent of what the plugin does: the command
//! (`CNI_COMMAND`), the `CNI_*` environment parsed from a list of (key, value) pairs (so
//! the same code serves a plugin binary, tests and an embedding runtime), `CNI_ARGS`,
//! the addresses a runtime asks for, the GC list of valid attachments, the `VERSION`
//! answer and the error object. Environment errors are
//! [`Error::InvalidEnvironment`] (CNI code 4).
//!
//! For plugin binaries: [`process_vars`] reads the process environment (a `CNI_*`
//! variable that is not UTF-8 is code 4, other such variables are ignored),
//! [`read_conf`] reads stdin up to [`MAX_CONF_BYTES`], and [`about_invocation`] answers a
//! person who runs the binary by hand (`--help`, `--version`, no `CNI_COMMAND`).

use crate::result::{version_at_least, CURRENT_VERSION, SUPPORTED_VERSIONS};
use crate::{AttachmentId, Error, Netns, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
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

    /// The first CNI version that has this command: CHECK came with 0.4.0, GC and STATUS
    /// with 1.1.0.
    pub fn since(self) -> &'static str {
        match self {
            Command::Check => "0.4.0",
            Command::Gc | Command::Status => "1.1.0",
            Command::Add | Command::Del | Command::Version => "0.1.0",
        }
    }

    /// Fails with code 1 when a conf of CNI version `version` cannot carry this command
    /// (e.g. CHECK with a 0.3.1 conf), as the reference plugins answer.
    pub fn check_version(self, version: &str) -> Result<()> {
        if version_at_least(version, self.since()) {
            return Ok(());
        }
        let newer: Vec<&str> = SUPPORTED_VERSIONS
            .iter()
            .copied()
            .filter(|v| version_at_least(v, self.since()))
            .collect();
        Err(Error::IncompatibleVersion {
            requested: version.to_string(),
            supported: format!("{} for {}", newer.join(", "), self.as_str()),
        })
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

/// The process environment as (name, value) pairs for [`CniEnv::from_vars`]. A `CNI_*`
/// variable whose value is not UTF-8 is refused (code 4, naming it); any other variable
/// that is not UTF-8 is left out (it is nothing a plugin reads, and it is not passed on
/// to delegated plugins).
pub fn process_vars() -> Result<Vec<(String, String)>> {
    vars_from_os(std::env::vars_os())
}

fn vars_from_os(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, v) in vars {
        let Ok(k) = k.into_string() else { continue };
        match v.into_string() {
            Ok(v) => out.push((k, v)),
            Err(_) if k.starts_with("CNI_") => {
                return Err(invalid(&k, "value is not valid UTF-8"));
            }
            Err(_) => {}
        }
    }
    Ok(out)
}

/// The largest network configuration [`read_conf`] accepts: 1 MiB, far above any real
/// conf (a conflist entry with a `prevResult` is a few KiB).
pub const MAX_CONF_BYTES: usize = 1 << 20;

/// Reads the network configuration from `input` (stdin), at most [`MAX_CONF_BYTES`]:
/// a larger one is refused with code 6 after reading one byte past the limit.
pub fn read_conf(input: impl Read) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    input
        .take(MAX_CONF_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read", "stdin", e))?;
    if buf.len() > MAX_CONF_BYTES {
        return Err(Error::decode(
            "network config",
            format!("it is larger than 1 MiB ({MAX_CONF_BYTES} bytes)"),
        ));
    }
    Ok(buf)
}

/// What a plugin binary answers when a person, not a runtime, runs it: `--help` (usage
/// on stdout), `--version` (the about line on stdout), or no `CNI_COMMAND` at all (the
/// about line and the supported versions on stderr, as the reference plugins' `skel`
/// prints them). Exit code 0 in each case. `None`: a runtime's call, to be served.
pub fn about_invocation(plugin: &str, version: &str) -> Option<i32> {
    let arg = std::env::args_os().nth(1);
    let command_set = std::env::var_os("CNI_COMMAND").is_some_and(|c| !c.is_empty());
    let text = about_text(
        plugin,
        version,
        arg.as_deref().and_then(|a| a.to_str()),
        command_set,
    )?;
    use std::io::Write;
    let _ = match text {
        About::Stdout(t) => std::io::stdout().write_all(t.as_bytes()),
        About::Stderr(t) => std::io::stderr().write_all(t.as_bytes()),
    };
    Some(0)
}

/// Where [`about_invocation`] writes and what.
#[derive(Debug, PartialEq, Eq)]
enum About {
    Stdout(String),
    Stderr(String),
}

fn about_text(plugin: &str, version: &str, arg: Option<&str>, command_set: bool) -> Option<About> {
    let about = format!("CNI {plugin} plugin v{version}");
    let versions = format!(
        "CNI protocol versions supported: {}",
        SUPPORTED_VERSIONS.join(", ")
    );
    match arg {
        Some("--help" | "-h") => Some(About::Stdout(format!(
            "{about}\n{versions}\n\n\
             A CNI plugin: a container runtime runs it with CNI_COMMAND (ADD, DEL, CHECK, GC, \
             STATUS or VERSION)\nand the other CNI_* variables set, and the network \
             configuration (JSON) on stdin.\nIt prints the result or a CNI error object on \
             stdout. See https://www.cni.dev/docs/spec/\n"
        ))),
        Some("--version" | "-V") => Some(About::Stdout(format!("{about}\n{versions}\n"))),
        _ if !command_set => Some(About::Stderr(format!("{about}\n{versions}\n"))),
        _ => None,
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

/// The version to write an error in: the one of `conf` (raw stdin) if we speak it, the
/// implied 0.1.0 for a conf object without `cniVersion` (as its results would be), else the
/// newest.
pub fn error_version(conf: &[u8]) -> String {
    asked_version(conf).unwrap_or_else(|| {
        let unversioned = serde_json::from_slice::<Value>(conf)
            .is_ok_and(|v| v.as_object().is_some_and(|o| !o.contains_key("cniVersion")));
        if unversioned {
            crate::result::IMPLIED_VERSION.to_string()
        } else {
            CURRENT_VERSION.to_string()
        }
    })
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
        assert_eq!(error_version(br#"{"cniVersion":"0.2.0"}"#), "0.2.0");
        assert_eq!(error_version(br#"{"cniVersion":"0.5.0"}"#), CURRENT_VERSION);
        assert_eq!(error_version(br#"{"name":"n"}"#), "0.1.0");
        assert_eq!(error_version(b"not json"), CURRENT_VERSION);
        let err = Error::config("x");
        let line = json_line(&error_json(&err, "1.0.0"));
        assert!(line.ends_with(b"}\n"));
        let back: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(back["code"], 7);
        assert_eq!(back["cniVersion"], "1.0.0");
    }

    #[test]
    fn commands_exist_from_their_version_on() {
        assert!(Command::Check.check_version("0.4.0").is_ok());
        let e = Command::Check.check_version("0.3.1").unwrap_err();
        assert_eq!(e.code(), 1);
        assert!(
            e.to_string().contains("0.4.0, 1.0.0, 1.1.0 for CHECK"),
            "{e}"
        );
        for c in [Command::Gc, Command::Status] {
            assert_eq!(c.check_version("1.0.0").unwrap_err().code(), 1);
            assert!(c.check_version("1.1.0").is_ok());
        }
        for v in SUPPORTED_VERSIONS {
            assert!(Command::Add.check_version(v).is_ok());
            assert!(Command::Del.check_version(v).is_ok());
        }
    }

    #[test]
    fn non_utf8_values_are_refused_only_for_cni_variables() {
        use std::os::unix::ffi::OsStringExt;
        let os = |s: &[u8]| std::ffi::OsString::from_vec(s.to_vec());
        let ok = vars_from_os([
            (os(b"CNI_COMMAND"), os(b"VERSION")),
            (os(b"FOO"), os(b"\xff")),
            (os(b"\xfe"), os(b"x")),
        ])
        .unwrap();
        assert_eq!(ok, [("CNI_COMMAND".to_string(), "VERSION".to_string())]);
        let e = vars_from_os([(os(b"CNI_ARGS"), os(b"IP=\xff"))]).unwrap_err();
        assert_eq!(e.code(), 4);
        assert!(e.to_string().contains("CNI_ARGS"), "{e}");
    }

    #[test]
    fn conf_is_read_up_to_one_mib() {
        let at_limit = vec![b' '; MAX_CONF_BYTES];
        assert_eq!(read_conf(&at_limit[..]).unwrap().len(), MAX_CONF_BYTES);
        // an endless stream is cut one byte past the limit
        let e = read_conf(std::io::repeat(b' ')).unwrap_err();
        assert_eq!(e.code(), 6);
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
    }

    #[test]
    fn a_person_gets_the_about_line() {
        let Some(About::Stdout(help)) = about_text("p", "1.2.3", Some("--help"), true) else {
            panic!("no help")
        };
        assert!(help.starts_with("CNI p plugin v1.2.3\n"), "{help}");
        assert!(help.contains("0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"));
        assert_eq!(
            about_text("p", "1.2.3", Some("--version"), false),
            Some(About::Stdout(format!(
                "CNI p plugin v1.2.3\nCNI protocol versions supported: {}\n",
                SUPPORTED_VERSIONS.join(", ")
            )))
        );
        assert!(matches!(
            about_text("p", "1", None, false),
            Some(About::Stderr(_))
        ));
        assert_eq!(about_text("p", "1", None, true), None);
        assert_eq!(about_text("p", "1", Some("x"), true), None);
    }
}
