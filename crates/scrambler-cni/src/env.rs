//! The `CNI_*` environment variables of one invocation, parsed and validated.
//!
//! Parsing takes the variables as a list of pairs instead of reading the process
//! environment, so the same code serves the binary, tests and an embedding runtime.

use scrambler_core::{Error, Netns, Result};
use std::collections::HashMap;
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
    /// Parses a `CNI_COMMAND` value.
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

    /// True for the commands that act on one attachment (ADD, DEL, CHECK).
    pub fn is_per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

/// The validated invocation environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for VERSION, GC, STATUS).
    pub container_id: String,
    /// `CNI_NETNS`; `None` when absent (allowed for DEL and the global commands).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (empty for VERSION, GC, STATUS).
    pub ifname: String,
    /// `CNI_ARGS`, split into key/value pairs.
    pub args: Vec<(String, String)>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
    /// Every variable as given, for delegating to other plugins.
    pub vars: Vec<(String, String)>,
    /// Fault to inject (`SCRAMBLER_FAULT`), honoured only in debug builds.
    pub fault: Option<String>,
}

impl CniEnv {
    /// Parses and validates the variables of one invocation.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self>
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

        let command =
            Command::parse(get("CNI_COMMAND").ok_or_else(|| invalid("CNI_COMMAND", "missing"))?)?;
        let mut env = CniEnv {
            command,
            container_id: String::new(),
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname: String::new(),
            args: get("CNI_ARGS")
                .map(parse_args)
                .transpose()?
                .unwrap_or_default(),
            path: get("CNI_PATH")
                .map(|p| {
                    p.split(':')
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                        .collect()
                })
                .unwrap_or_default(),
            fault: if cfg!(debug_assertions) {
                get("SCRAMBLER_FAULT").map(str::to_string)
            } else {
                None
            },
            vars: Vec::new(),
        };
        if command == Command::Version {
            env.vars = vars;
            return Ok(env);
        }
        if get("CNI_PATH").is_none() {
            return Err(invalid("CNI_PATH", "missing"));
        }
        if command.is_per_attachment() {
            let cid =
                get("CNI_CONTAINERID").ok_or_else(|| invalid("CNI_CONTAINERID", "missing"))?;
            validate_container_id(cid)?;
            env.container_id = cid.to_string();
            let ifname = get("CNI_IFNAME").ok_or_else(|| invalid("CNI_IFNAME", "missing"))?;
            validate_ifname(ifname)?;
            env.ifname = ifname.to_string();
            if command != Command::Del && env.netns.is_none() {
                return Err(invalid("CNI_NETNS", "missing"));
            }
        }
        env.vars = vars;
        Ok(env)
    }

    /// The pod namespace, if one was given.
    pub fn pod_netns(&self) -> Option<Netns> {
        self.netns.as_ref().map(Netns::path)
    }

    /// The value of `key` in `CNI_ARGS`.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Splits `CNI_ARGS` (`K=V;K2=V2`).
pub fn parse_args(s: &str) -> Result<Vec<(String, String)>> {
    s.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(invalid("CNI_ARGS", format!("{kv:?} is not KEY=VALUE"))),
        })
        .collect()
}

/// Checks a container id as the spec restricts it: an alphanumeric first character,
/// then alphanumerics, `_`, `.` or `-`.
pub fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid(
            "CNI_CONTAINERID",
            format!("{id:?} must start with an alphanumeric character followed by alphanumerics, '_', '.' or '-'"),
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn base(cmd: &str) -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", "c0ffee".to_string()),
            ("CNI_NETNS", "/run/netns/x".to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni:/opt/cni/bin".to_string()),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.0.0.5".to_string()),
        ]
    }

    #[test]
    fn parses_a_full_add() {
        let e = CniEnv::from_vars(base("ADD")).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.path.len(), 2);
        assert_eq!(e.arg("IP"), Some("10.0.0.5"));
        assert_eq!(e.pod_netns(), Some(Netns::path("/run/netns/x")));
    }

    #[test]
    fn rejects_bad_environment_with_code_4() {
        let mut v = base("ADD");
        v[3].1 = "a-very-long-ifname".into();
        assert_eq!(CniEnv::from_vars(v).unwrap_err().code(), 4);
        let mut v = base("ADD");
        v[1].1 = "-bad".into();
        assert_eq!(CniEnv::from_vars(v).unwrap_err().code(), 4);
        let mut v = base("ADD");
        v.remove(2);
        assert_eq!(CniEnv::from_vars(v).unwrap_err().code(), 4);
        assert_eq!(CniEnv::from_vars(base("FROB")).unwrap_err().code(), 4);
        let mut v = base("ADD");
        v[5].1 = "novalue".into();
        assert_eq!(CniEnv::from_vars(v).unwrap_err().code(), 4);
        assert!(validate_ifname("eth0:1").is_err());
        assert!(validate_ifname("..").is_err());
    }

    #[test]
    fn del_and_global_commands_need_less() {
        let mut v = base("DEL");
        v.remove(2);
        assert!(CniEnv::from_vars(v).unwrap().netns.is_none());
        let e = CniEnv::from_vars([("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")]).unwrap();
        assert_eq!(e.command, Command::Gc);
        let e = CniEnv::from_vars([("CNI_COMMAND", "VERSION")]).unwrap();
        assert_eq!(e.command, Command::Version);
    }
}
