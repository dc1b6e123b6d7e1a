//! What the agent stores in etcd, as JSON. Public fields only: no key material ever goes
//! into etcd (keys derive on each node from the cluster secret, see
//! [`scrambler_core::ClusterSecret`]).

use ipnet::IpNet;
use scrambler_core::{Error, Generation, NodeId, Result};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// A node's registration (`<prefix>/nodes/<name>`, under the node's lease).
///
/// ```json
/// {"name":"node1","id":1,"underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"],
///  "epoch":"9f2c4e1a77d0b3c5","dataplane":"xfrm"}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRecord {
    /// Node name (a DNS subdomain, as Kubernetes node names).
    pub name: String,
    /// Claimed node id.
    pub id: NodeId,
    /// Underlay addresses.
    pub underlay: Vec<IpAddr>,
    /// Claimed pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    /// The epoch of the node's dataplane: a random nonzero 64-bit value, new whenever the
    /// dataplane started without any Scrambler SA. Written as 16 hex digits.
    #[serde(with = "hex_u64")]
    pub epoch: u64,
    /// The node's tunnel dataplane (`xfrm` or `vpp`), for people and `status`.
    pub dataplane: String,
}

impl NodeRecord {
    /// The record as etcd stores it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a node record always serialises")
    }

    /// Decodes a record read from `key`, checking it is consistent with its key.
    pub fn decode(key: &str, value: &[u8]) -> Result<Self> {
        let r: NodeRecord = serde_json::from_slice(value)
            .map_err(|e| Error::decode(format!("etcd node record {key}"), e))?;
        scrambler_core::mesh::check_node_name(&r.name)?;
        if !key.ends_with(&format!("/{}", r.name)) {
            return Err(Error::decode(
                format!("etcd node record {key}"),
                format!("it names node {:?}", r.name),
            ));
        }
        if r.epoch == 0 {
            return Err(Error::decode(
                format!("etcd node record {key}"),
                "epoch 0 is reserved",
            ));
        }
        Ok(r)
    }
}

/// A node's claims (`<prefix>/claims/nodes/<name>`, no lease).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Claim {
    /// The node's id.
    pub id: NodeId,
    /// The node's pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
}

/// The cluster's key generations (`<prefix>/keys`). Absent means generation 1, no rotation.
///
/// A rotation from `current` to `next`: every agent installs inbound SAs of `next` and
/// acknowledges under `<prefix>/acks/<next>/`; every agent switches outbound to `next` once
/// every live node has acknowledged (the first to see it records `switchedAt`); after
/// `graceSecs` past `switchedAt` an agent retires `current` (`current = next`, no `next`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyState {
    /// The generation every node sends with (outside a rotation).
    pub current: Generation,
    /// The generation being rotated to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Generation>,
    /// How long the old generation stays accepted after the switch (seconds).
    #[serde(default = "default_grace")]
    pub grace_secs: u64,
    /// Unix time at which every live node had acknowledged `next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<u64>,
}

fn default_grace() -> u64 {
    DEFAULT_GRACE_SECS
}

/// Default rotation grace period.
pub const DEFAULT_GRACE_SECS: u64 = 30;

impl Default for KeyState {
    fn default() -> Self {
        KeyState {
            current: 1,
            next: None,
            grace_secs: DEFAULT_GRACE_SECS,
            switched_at: None,
        }
    }
}

impl KeyState {
    /// The state as etcd stores it.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a key state always serialises")
    }
}

/// `u64` as 16 lowercase hex digits in JSON.
pub mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as hex.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }

    /// Reads hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16)
            .map_err(|e| serde::de::Error::custom(format!("epoch {s:?} is not hex: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_record_round_trips_with_a_hex_epoch() {
        let r = NodeRecord {
            name: "node1".into(),
            id: NodeId::new(1).unwrap(),
            underlay: vec!["192.0.2.1".parse().unwrap()],
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            epoch: 0x9f2c4e1a77d0b3c5,
            dataplane: "xfrm".into(),
        };
        let j = r.to_json();
        assert_eq!(
            j,
            r#"{"name":"node1","id":1,"underlay":["192.0.2.1"],"podCidrs":["10.244.1.0/24"],"epoch":"9f2c4e1a77d0b3c5","dataplane":"xfrm"}"#
        );
        assert_eq!(
            NodeRecord::decode("/p/nodes/node1", j.as_bytes()).unwrap(),
            r
        );
        // a record under another node's key, epoch 0 and extra fields are refused
        assert!(NodeRecord::decode("/p/nodes/node2", j.as_bytes()).is_err());
        let zero = j.replace("9f2c4e1a77d0b3c5", "0000000000000000");
        assert!(NodeRecord::decode("/p/nodes/node1", zero.as_bytes()).is_err());
        let extra = j.replace("\"dataplane\"", "\"key\":\"00\",\"dataplane\"");
        assert!(NodeRecord::decode("/p/nodes/node1", extra.as_bytes()).is_err());
    }

    #[test]
    fn absent_fields_of_the_key_state_take_defaults() {
        let k: KeyState = serde_json::from_str(r#"{"current":4}"#).unwrap();
        assert_eq!(k.current, 4);
        assert_eq!(k.next, None);
        assert_eq!(k.grace_secs, DEFAULT_GRACE_SECS);
    }
}
