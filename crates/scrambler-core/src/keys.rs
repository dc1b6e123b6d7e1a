//! Key and SPI derivation shared by every dataplane.
//!
//! One cluster secret; per (sender, receiver, generation) an SA: a 16-byte AES-GCM key and a
//! 4-byte salt from HKDF-SHA256, and an SPI computed from the ids alone, so both ends agree
//! without talking and the kernel and VPP backends put the same ESP on the wire.
//!
//! * HKDF salt: `"scrambler-esp-v1"`; info: `sender id ‖ receiver id ‖ generation` (big
//!   endian), so each direction, pair and generation has its own key and salt: a (key, salt)
//!   is never reused across generations (GCM nonce reuse would break confidentiality).
//! * SPI: `(1 + generation mod 128) << 24 | sender id << 8 | receiver id & 0xff` — ≥ 2^24
//!   (values < 256 are reserved), and unique on a receiving node for every sender and every
//!   live generation as long as the live generations span fewer than [`SPI_GENERATIONS`].
//!
//! Secrets are zeroized on drop and their `Debug` prints nothing of them.

use crate::error::{Error, Result};
use crate::mesh::{Generation, NodeId};
use hkdf::Hkdf;
use sha2::Sha256;
use std::fmt;
use std::path::Path;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Live generations must span fewer than this many numbers for SPIs to stay unique.
pub const SPI_GENERATIONS: u32 = 128;

/// Minimum length of a cluster secret in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The cluster-wide secret all SA keys derive from.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ClusterSecret(Vec<u8>);

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// A secret from raw bytes (at least [`MIN_SECRET_LEN`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < MIN_SECRET_LEN {
            return Err(Error::Secret {
                object: "cluster secret".into(),
                reason: format!(
                    "{} bytes is too short, need at least {MIN_SECRET_LEN}",
                    bytes.len()
                ),
            });
        }
        Ok(ClusterSecret(bytes.to_vec()))
    }

    /// Reads a key file: hex (whitespace ignored) of at least 32 bytes. The file must not be
    /// readable by group or others (mode 0600 or stricter), else it is refused.
    pub fn from_file(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(path).map_err(|e| Error::io("stat key file", path.display(), e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::Secret {
                object: path.display().to_string(),
                reason: format!("mode {mode:04o} is readable by others; chmod 0600 it"),
            });
        }
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| Error::io("read key file", path.display(), e))?,
        );
        let compact: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !c.is_whitespace()).collect());
        let bytes = hex::decode(compact.as_bytes()).map_err(|_| Error::Secret {
            object: path.display().to_string(),
            reason: "not hex".into(),
        })?;
        Self::from_bytes(bytes).map_err(|e| match e {
            Error::Secret { reason, .. } => Error::Secret {
                object: path.display().to_string(),
                reason,
            },
            e => e,
        })
    }

    /// Writes a new random secret of 32 bytes as hex to `path`, created with mode 0600.
    pub fn generate_file(path: &Path) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = Zeroizing::new(vec![0u8; MIN_SECRET_LEN]);
        getrandom_fill(&mut bytes)?;
        let text = Zeroizing::new(hex::encode(&*bytes));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("create key file", path.display(), e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.write_all(b"\n"))
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io("write key file", path.display(), e))?;
        Self::from_bytes(bytes.to_vec())
    }

    /// The SA that `sender` uses to send to `receiver` in generation `generation`.
    pub fn sa(&self, sender: NodeId, receiver: NodeId, generation: Generation) -> SaKey {
        let hk = Hkdf::<Sha256>::new(Some(b"scrambler-esp-v1"), &self.0);
        let mut info = [0u8; 8];
        info[0..2].copy_from_slice(&sender.get().to_be_bytes());
        info[2..4].copy_from_slice(&receiver.get().to_be_bytes());
        info[4..8].copy_from_slice(&generation.to_be_bytes());
        let mut okm = Zeroizing::new([0u8; 20]);
        // 20 bytes is far below HKDF-SHA256's limit of 255*32, so expand cannot fail.
        hk.expand(&info, &mut okm[..])
            .unwrap_or_else(|_| unreachable!("HKDF output length is valid"));
        let mut key = [0u8; 16];
        let mut salt = [0u8; 4];
        key.copy_from_slice(&okm[..16]);
        salt.copy_from_slice(&okm[16..]);
        SaKey {
            spi: spi(sender, receiver, generation),
            key,
            salt,
            generation,
        }
    }
}

fn getrandom_fill(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::io("read", "/dev/urandom", e))
}

/// The SPI of the SA from `sender` to `receiver` in `generation` (see the module docs).
pub fn spi(sender: NodeId, receiver: NodeId, generation: Generation) -> u32 {
    let g = 1 + (generation % SPI_GENERATIONS);
    (g << 24) | ((sender.get() as u32) << 8) | (receiver.get() as u32 & 0xff)
}

/// Inverse of [`spi`] for the parts it encodes: `(generation mod 128, sender id)`.
pub fn spi_parts(spi: u32) -> Option<(u32, u16)> {
    let g = spi >> 24;
    if g == 0 || g > SPI_GENERATIONS {
        return None;
    }
    Some((g - 1, ((spi >> 8) & 0xffff) as u16))
}

/// One direction's SA material. Zeroized on drop; `Debug` shows only the SPI and generation.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SaKey {
    /// The SPI (not secret).
    pub spi: u32,
    /// AES-128 key.
    pub key: [u8; 16],
    /// GCM salt (the 4 bytes after the key in rfc4106 key material).
    pub salt: [u8; 4],
    /// The generation.
    pub generation: Generation,
}

impl SaKey {
    /// Kernel rfc4106 key material: key ‖ salt (20 bytes, 160 bits).
    pub fn rfc4106_material(&self) -> Zeroizing<Vec<u8>> {
        let mut v = Zeroizing::new(Vec::with_capacity(20));
        v.extend_from_slice(&self.key);
        v.extend_from_slice(&self.salt);
        v
    }
}

impl fmt::Debug for SaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaKey")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("generation", &self.generation)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes(vec![7u8; 32]).unwrap()
    }
    fn id(n: u32) -> NodeId {
        NodeId::new(n).unwrap()
    }

    #[test]
    fn directions_and_generations_get_different_keys() {
        let s = secret();
        let ab = s.sa(id(1), id(2), 1);
        let ba = s.sa(id(2), id(1), 1);
        let ab2 = s.sa(id(1), id(2), 2);
        assert_ne!(ab.key, ba.key);
        assert_ne!(ab.spi, ba.spi);
        assert_ne!(ab.key, ab2.key);
        assert_ne!(ab.salt, ab2.salt);
        assert_ne!(ab.spi, ab2.spi);
        // deterministic: both ends compute the same
        assert_eq!(ab.key, s.sa(id(1), id(2), 1).key);
    }

    #[test]
    fn debug_never_prints_key_material() {
        let s = secret();
        let sa = s.sa(id(1), id(2), 1);
        let d = format!("{sa:?} {s:?}");
        assert!(!d.contains(&format!("{:?}", sa.key)));
        assert!(d.contains("redacted"));
        assert!(!d.contains("7, 7"));
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(ClusterSecret::from_bytes(vec![1; 8]).is_err());
    }

    #[test]
    fn key_file_mode_is_enforced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("scr-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k");
        let _ = std::fs::remove_file(&p);
        let a = ClusterSecret::generate_file(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = ClusterSecret::from_file(&p).unwrap();
        assert_eq!(a.sa(id(1), id(2), 3).key, b.sa(id(1), id(2), 3).key);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = ClusterSecret::from_file(&p).unwrap_err();
        assert!(e.to_string().contains("0644"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        // On one receiver, every (sender, live generation) has its own SPI, and SPIs are ≥ 256.
        #[test]
        fn spis_unique_per_receiver(recv in 1u32..65535, base in 0u32..1_000_000,
                                    senders in proptest::collection::hash_set(1u32..65535, 1..40),
                                    span in 1u32..SPI_GENERATIONS) {
            let mut seen = std::collections::HashSet::new();
            for s in senders.iter().filter(|s| **s != recv) {
                for g in [base, base + span] {
                    let v = spi(id(*s), id(recv), g);
                    prop_assert!(v >= 256);
                    prop_assert_eq!(spi_parts(v), Some((g % SPI_GENERATIONS, *s as u16)));
                    prop_assert!(seen.insert(v), "duplicate SPI {:#x}", v);
                }
            }
        }
    }
}
