//! Node encryption: the nodes' own traffic to each other (host ↔ host) through the mesh.
//!
//! Off unless a mesh says `"nodeEncryption": {…}`. With it on, a node's traffic to a
//! peer's underlay address rides the mesh's tunnel to that peer, encrypted, except ESP
//! itself and the [`BypassPort`]s listed — the datastore's client and peer ports (so a
//! node that lost its mesh can always reach the datastore it recovers from) and whatever
//! the operator adds (SSH, say). What each dataplane does with it, and what it cannot
//! cover, is in its own docs.
//!
//! JSON: `"nodeEncryption": {"bypass": ["tcp/2379", "tcp/2380", "tcp/22"]}`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Most bypass ports a mesh may list.
pub const MAX_BYPASS_PORTS: usize = 16;

/// The node-encryption setting of a mesh (`nodeEncryption`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeEncryption {
    /// Ports whose traffic between nodes stays outside the mesh, in the clear, in both
    /// directions (a source or destination port of the protocol). At most
    /// [`MAX_BYPASS_PORTS`], each once.
    #[serde(default)]
    pub bypass: Vec<BypassPort>,
}

impl NodeEncryption {
    /// Checks the bypass list: at most [`MAX_BYPASS_PORTS`], none twice.
    pub fn validate(&self) -> Result<()> {
        if self.bypass.len() > MAX_BYPASS_PORTS {
            return Err(Error::mesh(format!(
                "nodeEncryption lists {} bypass ports: at most {MAX_BYPASS_PORTS}",
                self.bypass.len()
            )));
        }
        for (i, b) in self.bypass.iter().enumerate() {
            if self.bypass[..i].contains(b) {
                return Err(Error::mesh(format!(
                    "nodeEncryption lists the bypass port {b} twice"
                )));
            }
        }
        Ok(())
    }

    /// The same setting with `extra` ports added to the bypass list (those not in it yet):
    /// what the agent does with the ports of its datastore endpoints.
    pub fn with_bypass(mut self, extra: impl IntoIterator<Item = BypassPort>) -> Self {
        for b in extra {
            if !self.bypass.contains(&b) {
                self.bypass.push(b);
            }
        }
        self
    }
}

/// A transport protocol of a [`BypassPort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BypassProto {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
}

impl BypassProto {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            BypassProto::Tcp => 6,
            BypassProto::Udp => 17,
        }
    }
}

/// A port exempt from node encryption: `tcp/2379`, `udp/53`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BypassPort {
    /// The protocol.
    pub proto: BypassProto,
    /// The port (1..=[`MAX_BYPASS_PORT`]), matched as source or destination port.
    pub port: u16,
}

/// Highest bypass port: the kernel refuses a policy-routing rule's port range that ends
/// at 65535 (`fib_rule_port_range_valid`), so 65535 cannot be bypassed.
pub const MAX_BYPASS_PORT: u16 = 65534;

impl BypassPort {
    /// `proto/port`; `port` is 1..=[`MAX_BYPASS_PORT`].
    pub fn new(proto: BypassProto, port: u16) -> Result<Self> {
        if port == 0 || port > MAX_BYPASS_PORT {
            return Err(Error::config(format!(
                "bypass port {port}: bypass ports are 1..={MAX_BYPASS_PORT}"
            )));
        }
        Ok(BypassPort { proto, port })
    }
}

impl fmt::Display for BypassPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.proto {
            BypassProto::Tcp => "tcp",
            BypassProto::Udp => "udp",
        };
        write!(f, "{p}/{}", self.port)
    }
}

impl FromStr for BypassPort {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::config(format!(
                "bypass port {s:?} {why}: write PROTO/PORT, e.g. tcp/22 or udp/53"
            ))
        };
        let (proto, port) = s.split_once('/').ok_or_else(|| bad("has no '/'"))?;
        let proto = match proto {
            "tcp" => BypassProto::Tcp,
            "udp" => BypassProto::Udp,
            _ => return Err(bad("names no protocol Scrambler knows (tcp, udp)")),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| bad(&format!("has no port 1..={MAX_BYPASS_PORT}")))?;
        BypassPort::new(proto, port).map_err(|_| bad(&format!("is outside 1..={MAX_BYPASS_PORT}")))
    }
}

impl Serialize for BypassPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BypassPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bypass_ports_parse_and_print() {
        let b: BypassPort = "tcp/2379".parse().unwrap();
        assert_eq!(b.proto, BypassProto::Tcp);
        assert_eq!(b.port, 2379);
        assert_eq!(b.to_string(), "tcp/2379");
        assert_eq!(
            "udp/65534".parse::<BypassPort>().unwrap().port,
            MAX_BYPASS_PORT
        );
        assert_eq!("udp/53".parse::<BypassPort>().unwrap().proto.number(), 17);
        for bad in [
            "tcp",
            "tcp/0",
            "tcp/65535",
            "tcp/65536",
            "icmp/1",
            "tcp/x",
            "/22",
        ] {
            assert!(bad.parse::<BypassPort>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_setting_reads_from_json_and_refuses_duplicates() {
        let n: NodeEncryption =
            serde_json::from_str(r#"{"bypass": ["tcp/2379", "tcp/22"]}"#).unwrap();
        assert_eq!(n.bypass.len(), 2);
        n.validate().unwrap();
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            r#"{"bypass":["tcp/2379","tcp/22"]}"#
        );
        let empty: NodeEncryption = serde_json::from_str("{}").unwrap();
        assert!(empty.bypass.is_empty());
        assert!(serde_json::from_str::<NodeEncryption>(r#"{"bypas": []}"#).is_err());
        let twice = NodeEncryption {
            bypass: vec![n.bypass[0], n.bypass[0]],
        };
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let more = n.with_bypass(["tcp/2379".parse().unwrap(), "tcp/2380".parse().unwrap()]);
        assert_eq!(more.bypass.len(), 3);
    }
}
