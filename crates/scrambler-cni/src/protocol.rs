//! The CNI protocol around the plugin: the request (environment + conf), version
//! negotiation, what goes to stdout (a result, a version report, or an error object) and
//! the conf fields of chaining (`prevResult`) and GC (`cni.dev/valid-attachments`).

use crate::env::{CniEnv, Command};
use scrambler_core::cni::{error_json, json_line};
use scrambler_core::result::check_version;
use scrambler_core::{AttachmentId, CniResult, Error, NetConf, Result};
use serde_json::Value;
use std::net::IpAddr;

pub use scrambler_core::cni::{error_version, version_json as version_report};

/// One parsed invocation.
#[derive(Debug, Clone)]
pub struct Request {
    /// The environment.
    pub env: CniEnv,
    /// The conf, typed.
    pub conf: NetConf,
    /// The conf as received (passed on to delegates).
    pub raw: Value,
}

impl Request {
    /// Parses the conf on stdin for `env` and checks its `cniVersion`: one we speak, and
    /// one that has the command (CHECK from 0.4.0, GC and STATUS from 1.1.0; code 1).
    pub fn parse(env: CniEnv, stdin: &[u8]) -> Result<Self> {
        let raw: Value =
            serde_json::from_slice(stdin).map_err(|e| Error::decode("network config", e))?;
        if !raw.is_object() {
            return Err(Error::decode("network config", "not a JSON object"));
        }
        let conf = NetConf::from_slice(stdin)?;
        check_version(&conf.cni_version)?;
        env.command.check_version(&conf.cni_version)?;
        Ok(Request { env, conf, raw })
    }

    /// The CNI version of the conf (and so of the result).
    pub fn version(&self) -> &str {
        &self.conf.cni_version
    }

    /// The attachment of this invocation (empty id and ifname for the commands that have
    /// none: VERSION, GC, STATUS).
    pub fn attachment(&self) -> AttachmentId {
        AttachmentId::new(
            self.env.container_id.as_deref().unwrap_or_default(),
            self.env.ifname.as_deref().unwrap_or_default(),
        )
    }
}

/// What one invocation prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes for stdout (only the result, version report or error object).
    pub stdout: Vec<u8>,
    /// Process exit code (0 success, 1 error).
    pub exit_code: i32,
}

impl Outcome {
    /// Success printing `v`, or nothing.
    pub fn ok(v: Option<&Value>) -> Self {
        Outcome {
            stdout: v.map(json_line).unwrap_or_default(),
            exit_code: 0,
        }
    }

    /// Failure with the CNI error object of `e`.
    pub fn error(e: &Error, version: &str) -> Self {
        Outcome {
            stdout: json_line(&error_json(e, version)),
            exit_code: 1,
        }
    }
}

/// The `prevResult` of a chained call, if any.
pub fn prev_result(conf: &NetConf) -> Result<Option<CniResult>> {
    conf.prev_result
        .as_ref()
        .filter(|v| !v.is_null())
        .map(CniResult::from_json)
        .transpose()
}

/// Our result in a chain: the previous plugins' interfaces, addresses and routes first,
/// then ours (with our address→interface indexes shifted past theirs); our DNS unless we
/// have none.
pub fn merge_prev(prev: Option<CniResult>, ours: CniResult) -> CniResult {
    let Some(mut merged) = prev else {
        return ours;
    };
    let shift = merged.interfaces.len();
    merged.interfaces.extend(ours.interfaces);
    merged.ips.extend(ours.ips.into_iter().map(|mut ip| {
        ip.interface = ip.interface.map(|i| i + shift);
        ip
    }));
    merged.routes.extend(ours.routes);
    if !ours.dns.is_empty() {
        merged.dns = ours.dns;
    }
    merged
}

/// The attachments listed in a GC conf (see [`scrambler_core::cni::valid_attachments`]:
/// a GC conf without the list is refused rather than treated as "nothing is valid").
pub fn valid_attachments(conf: &NetConf) -> Result<Vec<AttachmentId>> {
    let extra: serde_json::Map<String, Value> = conf
        .extra
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    scrambler_core::cni::valid_attachments(&Value::Object(extra))
}

/// Addresses the runtime asks for (see [`scrambler_core::cni::requested_ips`]).
pub fn requested_ips(req: &Request) -> Result<Vec<IpAddr>> {
    scrambler_core::cni::requested_ips(&req.raw, &req.env)
}

/// Whether `command` needs a full conf on stdin (all but VERSION).
pub fn needs_conf(command: Command) -> bool {
    command != Command::Version
}

#[cfg(test)]
mod tests {
    use super::*;
    use scrambler_core::{Interface, IpConfig};

    fn env() -> CniEnv {
        CniEnv::from_vars([
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/p"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/usr/lib/cni"),
            ("CNI_ARGS", "IP=10.0.0.9/24"),
        ])
        .unwrap()
    }

    #[test]
    fn parse_codes_follow_the_spec() {
        assert_eq!(Request::parse(env(), b"{nope").unwrap_err().code(), 6);
        assert_eq!(Request::parse(env(), b"[]").unwrap_err().code(), 6);
        assert_eq!(
            Request::parse(env(), br#"{"cniVersion":"1.0.0","type":"x"}"#)
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(
            Request::parse(env(), br#"{"cniVersion":"0.5.0","name":"n","type":"x"}"#)
                .unwrap_err()
                .code(),
            1
        );
        let old = Request::parse(env(), br#"{"cniVersion":"0.3.1","name":"n","type":"x"}"#);
        assert_eq!(old.unwrap().version(), "0.3.1");
        let unversioned = Request::parse(env(), br#"{"name":"n","type":"x"}"#);
        assert_eq!(unversioned.unwrap().version(), "0.1.0");
        let mut check = env();
        check.command = Command::Check;
        let e = Request::parse(check, br#"{"cniVersion":"0.3.1","name":"n","type":"x"}"#);
        assert_eq!(e.unwrap_err().code(), 1);
        let r = Request::parse(
            env(),
            br#"{"cniVersion":"1.0.0","name":"n","type":"x","args":{"cni":{"ips":["10.0.0.10"]}}}"#,
        )
        .unwrap();
        assert_eq!(
            requested_ips(&r).unwrap(),
            vec![
                "10.0.0.9".parse::<IpAddr>().unwrap(),
                "10.0.0.10".parse().unwrap()
            ]
        );
    }

    #[test]
    fn version_report_lists_our_versions() {
        let v = version_report(br#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"][6], "1.1.0");
        assert_eq!(v["supportedVersions"][0], "0.1.0");
        assert_eq!(version_report(b"")["cniVersion"], "1.1.0");
    }

    #[test]
    fn merge_appends_ours_after_prev() {
        let prev = CniResult {
            interfaces: vec![Interface {
                name: "br0".into(),
                ..Default::default()
            }],
            ips: vec![IpConfig {
                address: "10.9.0.2/24".parse().unwrap(),
                gateway: None,
                interface: Some(0),
            }],
            ..Default::default()
        };
        let ours = CniResult {
            interfaces: vec![
                Interface {
                    name: "scrx".into(),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    ..Default::default()
                },
            ],
            ips: vec![IpConfig {
                address: "10.1.0.2/32".parse().unwrap(),
                gateway: None,
                interface: Some(1),
            }],
            ..Default::default()
        };
        let m = merge_prev(Some(prev), ours);
        assert_eq!(m.interfaces.len(), 3);
        assert_eq!(m.ips[1].interface, Some(2));
        assert_eq!(m.interfaces[2].name, "eth0");
    }

    #[test]
    fn gc_needs_the_valid_list() {
        let c: NetConf = serde_json::from_value(serde_json::json!({
            "cniVersion": "1.1.0", "name": "n", "type": "t",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(
            valid_attachments(&c).unwrap(),
            vec![AttachmentId::new("a", "eth0")]
        );
        let c: NetConf = serde_json::from_value(
            serde_json::json!({"cniVersion": "1.1.0", "name": "n", "type": "t"}),
        )
        .unwrap();
        assert_eq!(valid_attachments(&c).unwrap_err().code(), 7);
    }
}
