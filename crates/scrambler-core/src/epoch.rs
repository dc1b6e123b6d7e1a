//! Dataplane epochs: what makes every incarnation of a node's dataplane use fresh keys.
//!
//! A dataplane that lost its SAs (reboot, VPP restart, `mesh remove`) starts its sequence
//! numbers — the AES-GCM IVs' counters — again from 1, so it must never send under a key it
//! has sent under before. Each incarnation of a node's dataplane therefore has an [`Epoch`],
//! a random nonzero 64-bit value published with the node (in the mesh file, or by an agent),
//! and the key of every SA binds both ends' epochs (see [`crate::keys`]): a node that comes
//! back with a new epoch has fresh keys with every peer, without a cluster-wide rotation.
//!
//! In JSON an epoch is a string of exactly 16 hex digits (`"9f2c04e17a3b6d58"`), so it
//! survives tools that read numbers as doubles; `Display` and `FromStr` use the same form.

use crate::error::{Error, Result};
use crate::mesh::NodeId;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One incarnation of a node's dataplane: a random nonzero 64-bit value (see the module
/// docs). Not secret.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Epoch(u64);

impl Epoch {
    /// An epoch from its value; 0 is refused (it is what a forgotten field would be).
    pub fn new(v: u64) -> Result<Self> {
        if v == 0 {
            return Err(Error::mesh("epoch 0 is not an epoch: epochs are nonzero"));
        }
        Ok(Epoch(v))
    }

    /// An epoch known to be nonzero at compile time (constants).
    #[cfg(any(test, feature = "test-vectors"))]
    pub(crate) const fn from_raw(v: u64) -> Self {
        assert!(v != 0, "epoch 0 is not an epoch");
        Epoch(v)
    }

    /// The value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The 8 bits of the epoch that go into SPIs (see [`crate::keys::spi`]): its lowest byte.
    pub fn spi_tag(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    /// A new random epoch (from `/dev/urandom`). With `previous` (the epoch it replaces),
    /// its [`spi_tag`](Self::spi_tag) differs from the previous one's, so that every SPI
    /// involving the node changes along with its keys (see [`crate::keys::spi`]).
    pub fn generate(previous: Option<Epoch>) -> Result<Self> {
        Self::generate_unlike(previous.as_slice())
    }

    /// A new random epoch whose [`spi_tag`](Self::spi_tag) differs from that of every
    /// epoch in `avoid` (the one it replaces and the previous epochs whose inbound SAs the
    /// node keeps, see [`crate::Node::previous_epochs`]: their SPIs must all differ).
    pub fn generate_unlike(avoid: &[Epoch]) -> Result<Self> {
        loop {
            let mut b = [0u8; 8];
            crate::keys::getrandom_fill(&mut b)?;
            let v = u64::from_be_bytes(b);
            if v == 0 || avoid.iter().any(|p| p.spi_tag() == (v & 0xff) as u8) {
                continue;
            }
            return Ok(Epoch(v));
        }
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

impl FromStr for Epoch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::mesh(format!(
                "epoch {s:?} is not 16 hex digits (e.g. \"9f2c04e17a3b6d58\")"
            )));
        }
        let v = u64::from_str_radix(s, 16).map_err(Error::mesh)?;
        Epoch::new(v)
    }
}

impl TryFrom<String> for Epoch {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse().map_err(|e: Error| match e {
            Error::InvalidMesh(m) => m,
            e => e.to_string(),
        })
    }
}

impl From<Epoch> for String {
    fn from(e: Epoch) -> String {
        e.to_string()
    }
}

/// One end of an SA: a node id and the epoch of its dataplane. The key and SPI of an SA
/// derive from the two ends and the generation ([`crate::ClusterSecret::sa`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Incarnation {
    /// The node id.
    pub id: NodeId,
    /// The epoch of its dataplane.
    pub epoch: Epoch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_is_16_hex_digits_in_json_and_never_zero() {
        let e = Epoch::new(0x9f2c_04e1_7a3b_6d58).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), "\"9f2c04e17a3b6d58\"");
        assert_eq!(
            serde_json::from_str::<Epoch>("\"9F2C04E17A3B6D58\"").unwrap(),
            e
        );
        assert_eq!(Epoch::new(1).unwrap().to_string(), "0000000000000001");
        for bad in [
            "\"0000000000000000\"",
            "\"9f2c04e17a3b6d5\"",
            "\"9f2c04e17a3b6d588\"",
            "\"+f2c04e17a3b6d58\"",
            "\"9f2c04e17a3b6dzz\"",
            "42",
        ] {
            assert!(serde_json::from_str::<Epoch>(bad).is_err(), "{bad}");
        }
        let e = serde_json::from_str::<Epoch>("\"0000000000000000\"").unwrap_err();
        assert!(e.to_string().contains("nonzero"), "{e}");
    }

    #[test]
    fn generated_epochs_are_nonzero_and_change_the_spi_tag() {
        let prev = Epoch::new(0x1234).unwrap();
        for _ in 0..200 {
            let e = Epoch::generate(Some(prev)).unwrap();
            assert_ne!(e.get(), 0);
            assert_ne!(e.spi_tag(), prev.spi_tag());
        }
        let avoid = [
            prev,
            Epoch::new(0x1299).unwrap(),
            Epoch::new(0x12aa).unwrap(),
        ];
        for _ in 0..200 {
            let e = Epoch::generate_unlike(&avoid).unwrap();
            assert!(avoid.iter().all(|a| a.spi_tag() != e.spi_tag()));
        }
        assert_ne!(
            Epoch::generate(None).unwrap(),
            Epoch::generate(None).unwrap()
        );
    }
}
