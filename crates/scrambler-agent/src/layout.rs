//! The etcd keys Scrambler uses, all under one prefix (default `/scrambler`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `<prefix>/nodes/<name>` | [`NodeRecord`](crate::NodeRecord) JSON: the live registration | the node's lease |
//! | `<prefix>/claims/nodes/<name>` | [`Claim`](crate::Claim) JSON: the node's id and pod CIDRs | none (kept until the node is deleted) |
//! | `<prefix>/claims/ids/<id>` | owning node name | none |
//! | `<prefix>/claims/cidrs/<addr>_<len>` | owning node name | none |
//! | `<prefix>/keys` | [`KeyState`](crate::KeyState) JSON: current generation, rotation | none |
//! | `<prefix>/acks/<generation>/<name>` | empty: the node has inbound SAs of that generation | the node's lease |
//!
//! Claims carry no lease on purpose: a node that misses its keepalives for a while comes
//! back with the same id and pod CIDRs (Flannel's users lost subnets to TTLs). They go
//! only when the node is deleted explicitly (`scrambler delete-node`).

use ipnet::IpNet;
use scrambler_core::{Error, Generation, NodeId, Result};

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "/scrambler";

/// Keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    prefix: String,
}

impl Layout {
    /// Keys under `prefix`: an absolute, `/`-separated path without a trailing `/`
    /// (`/scrambler`, `/clusters/prod/scrambler`).
    pub fn new(prefix: &str) -> Result<Self> {
        let ok = prefix.starts_with('/')
            && !prefix.ends_with('/')
            && prefix.len() > 1
            && prefix[1..].split('/').all(|p| {
                !p.is_empty()
                    && p != "."
                    && p != ".."
                    && p.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            });
        if !ok {
            return Err(Error::config(format!(
                "etcd prefix {prefix:?} is not an absolute path like /scrambler (letters, \
                 digits, '-', '_', '.', no trailing '/')"
            )));
        }
        Ok(Layout {
            prefix: prefix.to_string(),
        })
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything Scrambler keeps (what the agent watches).
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// Registrations.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// One node's registration.
    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }

    /// Per-node claims.
    pub fn claims_nodes(&self) -> String {
        format!("{}/claims/nodes/", self.prefix)
    }

    /// One node's claim.
    pub fn claim_node(&self, name: &str) -> String {
        format!("{}{name}", self.claims_nodes())
    }

    /// Claimed ids.
    pub fn claims_ids(&self) -> String {
        format!("{}/claims/ids/", self.prefix)
    }

    /// One claimed id.
    pub fn claim_id(&self, id: NodeId) -> String {
        format!("{}{id}", self.claims_ids())
    }

    /// Claimed pod CIDRs.
    pub fn claims_cidrs(&self) -> String {
        format!("{}/claims/cidrs/", self.prefix)
    }

    /// One claimed pod CIDR (`/` of the CIDR written `_`).
    pub fn claim_cidr(&self, cidr: &IpNet) -> String {
        format!(
            "{}{}_{}",
            self.claims_cidrs(),
            cidr.network(),
            cidr.prefix_len()
        )
    }

    /// The key generation state.
    pub fn keys(&self) -> String {
        format!("{}/keys", self.prefix)
    }

    /// Acknowledgements of generation `g`.
    pub fn acks(&self, g: Generation) -> String {
        format!("{}/acks/{g}/", self.prefix)
    }

    /// Node `name`'s acknowledgement of generation `g`.
    pub fn ack(&self, g: Generation, name: &str) -> String {
        format!("{}{name}", self.acks(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_under_the_prefix() {
        let l = Layout::new("/scrambler").unwrap();
        assert_eq!(l.node("n1"), "/scrambler/nodes/n1");
        assert_eq!(
            l.claim_id(NodeId::new(7).unwrap()),
            "/scrambler/claims/ids/7"
        );
        assert_eq!(
            l.claim_cidr(&"10.244.3.0/24".parse().unwrap()),
            "/scrambler/claims/cidrs/10.244.3.0_24"
        );
        assert_eq!(l.ack(3, "n1"), "/scrambler/acks/3/n1");
        assert_eq!(l.keys(), "/scrambler/keys");
        for bad in ["", "/", "scrambler", "/a/", "/a//b", "/a/../b", "/a b"] {
            assert!(Layout::new(bad).is_err(), "{bad:?}");
        }
        Layout::new("/clusters/prod-1/scrambler").unwrap();
    }
}
