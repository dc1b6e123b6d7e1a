//! Key and SPI derivation shared by every dataplane.
//!
//! One cluster secret; per SA — sender a → receiver b, each end an [`Incarnation`] (node id
//! and the [`Epoch`] of its dataplane), in generation g — a 16-byte AES-GCM key and a 4-byte
//! salt from HKDF-SHA256, and an SPI computed from public values alone, so both ends agree
//! without talking and the kernel and VPP backends put the same ESP on the wire.
//!
//! * HKDF salt: `"scrambler-esp-v2"`; IKM: the cluster secret; info (24 bytes, big
//!   endian): `a.id (2) ‖ a.epoch (8) ‖ b.id (2) ‖ b.epoch (8) ‖ g (4)`; output: 20 bytes,
//!   key (16) ‖ salt (4). Each direction, pair, generation and *incarnation of either
//!   end* has its own key and salt: a dataplane that restarts with a new epoch never sends
//!   under a key it (or its previous incarnation) sent under before, which is what keeps
//!   AES-GCM (key, IV) pairs from repeating across restarts.
//! * SPI: `(1 + g mod 128) << 24 | a.id << 8 | (a.epoch ⊕ b.epoch) & 0xff`. Inbound SAs
//!   are looked up by (destination, SPI) only, so on a receiving node b the SPI must be
//!   unique per sender and live generation: bits 8..24 are the sender's id and bits 24..32
//!   the generation mod [`SPI_GENERATIONS`] (plus one), so two SAs a node receives differ
//!   in them whenever their senders differ or their generations differ by less than 128
//!   ([`crate::Mesh::validate`] keeps the live ones that close). The low byte, free for it,
//!   is the *epoch tag* ⊕ of both ends' ([`Epoch::spi_tag`]): an end that comes back with
//!   an epoch of another tag — [`Epoch::generate`] picks one — changes the SPI of every SA
//!   it has, both directions, with every peer, so no (SPI, sequence number) of its old SAs
//!   shows up again on the wire. SPIs are ≥ 2^24 (values < 256 are reserved).
//! * An SPI coincidence — a new (epoch_a, epoch_b) with the same tag as the old one: 1 in
//!   256 for an epoch drawn without regard to the previous one, or when both ends restart
//!   at once — changes nothing for nonce safety: the key is still new (it binds the full
//!   64-bit epochs), so the sequence numbers restarting under that SPI are under another
//!   key. All it does is let a peer that has not yet applied the new epoch see the new
//!   SA's packets on its old inbound SA, which drops them (replay window or ICV) until it
//!   re-keys that pair, exactly as a missing SA would.
//!
//! Known-answer vectors (the unit tests, and `kat` with the cargo feature `test-vectors`)
//! pin the derivation; both dataplanes are tested to install exactly these bytes.
//!
//! Secrets are zeroized on drop and their `Debug` prints nothing of them.
//!
//! A secret's [`KeyId`] ([`ClusterSecret::key_id`]) names it without revealing it, so that
//! the [ledger](crate::ledger) can tell SAs keyed by different secrets apart: the first 8
//! bytes of HKDF-SHA256 with no salt (32 zero bytes), IKM the cluster secret and info
//! `"scrambler-ledger-key-id-v1"`, written as 16 hex digits. It is the output of a PRF
//! keyed by the secret on a fixed input and of another derivation (salt and info) than
//! the SA keys, so it tells nothing of the secret or of any SA key; all it allows is to
//! check a guessed secret, which a 32-byte random secret makes hopeless.

#[cfg(doc)]
use crate::epoch::Epoch;
use crate::epoch::Incarnation;
use crate::error::{Error, Result};
use crate::mesh::Generation;
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

    /// Reads a key file: hex (whitespace ignored) of at least 32 bytes.
    ///
    /// The file is opened without following a symlink (`O_NOFOLLOW`) and without blocking
    /// on a FIFO, and checked on the open descriptor (`fstat`), so what is checked is what
    /// is read: it must be a regular file, owned by the running user or root, with no
    /// permission bits for group or others (mode 0600 or stricter); anything else is
    /// refused. The bytes never sit in a buffer that is not zeroed when dropped.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_key_file(path)?;
        let secret = |reason: &str| Error::Secret {
            object: path.display().to_string(),
            reason: reason.into(),
        };
        let mut compact = Zeroizing::new(Vec::with_capacity(text.len()));
        compact.extend(text.iter().filter(|b| !b.is_ascii_whitespace()));
        if compact.len() % 2 != 0 || !compact.iter().all(u8::is_ascii_hexdigit) {
            return Err(secret("not hex"));
        }
        let mut bytes = Zeroizing::new(vec![0u8; compact.len() / 2]);
        hex::decode_to_slice(&*compact, &mut bytes).map_err(|_| secret("not hex"))?;
        Self::from_bytes(bytes.to_vec()).map_err(|e| match e {
            Error::Secret { reason, .. } => secret(&reason),
            e => e,
        })
    }

    /// Writes a new random secret of 32 bytes as hex to `path`, created with mode 0600
    /// (it must not exist yet). Missing parent directories are created with mode 0700.
    pub fn generate_file(path: &Path) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io("create key directory", dir.display(), e))?;
        }
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

    /// The SA that `sender` uses to send to `receiver` in generation `generation` (see the
    /// module docs for the derivation).
    pub fn sa(&self, sender: Incarnation, receiver: Incarnation, generation: Generation) -> SaKey {
        let hk = Hkdf::<Sha256>::new(Some(KDF_LABEL), &self.0);
        let mut info = [0u8; 24];
        info[0..2].copy_from_slice(&sender.id.get().to_be_bytes());
        info[2..10].copy_from_slice(&sender.epoch.get().to_be_bytes());
        info[10..12].copy_from_slice(&receiver.id.get().to_be_bytes());
        info[12..20].copy_from_slice(&receiver.epoch.get().to_be_bytes());
        info[20..24].copy_from_slice(&generation.to_be_bytes());
        let mut okm = Zeroizing::new([0u8; 20]);
        // 20 bytes is far below HKDF-SHA256's limit of 255*32, so expand cannot fail.
        hk.expand(&info, &mut okm[..])
            .unwrap_or_else(|_| unreachable!("HKDF output length is valid"));
        // filled in place: no loose copy of the key on the stack
        let mut sa = SaKey {
            spi: spi(sender, receiver, generation),
            key: [0; 16],
            salt: [0; 4],
            generation,
        };
        sa.key.copy_from_slice(&okm[..16]);
        sa.salt.copy_from_slice(&okm[16..]);
        sa
    }

    /// The secret's non-secret fingerprint (see the module docs), which the ledger
    /// records with every outbound SA: SAs keyed by another secret are other SAs.
    pub fn key_id(&self) -> KeyId {
        let hk = Hkdf::<Sha256>::new(None, &self.0);
        let mut okm = [0u8; 8];
        // 8 bytes is far below HKDF-SHA256's limit, so expand cannot fail.
        hk.expand(KEY_ID_LABEL, &mut okm)
            .unwrap_or_else(|_| unreachable!("HKDF output length is valid"));
        KeyId(okm)
    }
}

/// The HKDF info of [`ClusterSecret::key_id`], naming the version of that derivation.
pub const KEY_ID_LABEL: &[u8] = b"scrambler-ledger-key-id-v1";

/// A non-secret fingerprint of a [`ClusterSecret`] ([`ClusterSecret::key_id`]; see the
/// module docs): 8 bytes, written as 16 lowercase hex digits (in JSON too).
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// The bytes.
    pub fn bytes(self) -> [u8; 8] {
        self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let mut b = [0u8; 8];
        if s.len() != 16 || hex::decode_to_slice(s, &mut b).is_err() {
            return Err(Error::mesh(format!("key id {s:?} is not 16 hex digits")));
        }
        Ok(KeyId(b))
    }
}

impl TryFrom<String> for KeyId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<KeyId> for String {
    fn from(k: KeyId) -> String {
        k.to_string()
    }
}

/// The HKDF salt, naming the version of the derivation.
pub const KDF_LABEL: &[u8] = b"scrambler-esp-v2";

/// Largest key file read (a 32-byte secret is 64 hex digits).
const MAX_KEY_FILE_LEN: usize = 4096;

/// Opens `path` without following a symlink or blocking on a FIFO, checks the open file
/// (regular, owned by the effective user or root, no group/other bits) and reads it.
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let refuse = |reason: String| Error::Secret {
        object: path.display().to_string(),
        reason,
    };
    // std opens with O_CLOEXEC
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(nix::libc::ELOOP) => refuse("is a symlink; point to the key file itself".into()),
            _ => Error::io("open key file", path.display(), e),
        })?;
    let meta = f
        .metadata()
        .map_err(|e| Error::io("stat key file", path.display(), e))?;
    if !meta.file_type().is_file() {
        return Err(refuse("is not a regular file".into()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(refuse(format!(
            "is owned by uid {}, not by the running user (uid {euid}) or root",
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(refuse(format!(
            "mode {mode:04o} gives group or others access; chmod 0600 it"
        )));
    }
    // a fixed buffer, never grown (growing would leave copies behind)
    let mut buf = Zeroizing::new(vec![0u8; MAX_KEY_FILE_LEN + 1]);
    let mut len = 0;
    while len < buf.len() {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read key file", path.display(), e)),
        }
    }
    if len > MAX_KEY_FILE_LEN {
        return Err(refuse(format!("is larger than {MAX_KEY_FILE_LEN} bytes")));
    }
    buf.truncate(len);
    Ok(buf)
}

pub(crate) fn getrandom_fill(buf: &mut [u8]) -> Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| Error::io("read", "/dev/urandom", e))
}

/// The SPI of the SA from `sender` to `receiver` in `generation`:
/// `(1 + generation mod 128) << 24 | sender id << 8 | (sender epoch ⊕ receiver epoch) & 0xff`
/// (see the module docs).
pub fn spi(sender: Incarnation, receiver: Incarnation, generation: Generation) -> u32 {
    let g = 1 + (generation % SPI_GENERATIONS);
    let tag = sender.epoch.spi_tag() ^ receiver.epoch.spi_tag();
    (g << 24) | ((sender.id.get() as u32) << 8) | tag as u32
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
    use crate::epoch::Epoch;
    use crate::mesh::NodeId;
    use proptest::prelude::*;

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes(vec![7u8; 32]).unwrap()
    }
    fn id(n: u32) -> NodeId {
        NodeId::new(n).unwrap()
    }
    fn inc(n: u32, epoch: u64) -> Incarnation {
        Incarnation {
            id: id(n),
            epoch: Epoch::new(epoch).unwrap(),
        }
    }
    fn a() -> Incarnation {
        inc(1, 0x0123_4567_89ab_cdef)
    }
    fn b() -> Incarnation {
        inc(2, 0xfedc_ba98_7654_3210)
    }

    #[test]
    fn directions_and_generations_get_different_keys() {
        let s = secret();
        let ab = s.sa(a(), b(), 1);
        let ba = s.sa(b(), a(), 1);
        let ab2 = s.sa(a(), b(), 2);
        assert_ne!(ab.key, ba.key);
        assert_ne!(ab.spi, ba.spi);
        assert_ne!(ab.key, ab2.key);
        assert_ne!(ab.salt, ab2.salt);
        assert_ne!(ab.spi, ab2.spi);
        // deterministic: both ends compute the same
        assert_eq!(ab.key, s.sa(a(), b(), 1).key);
    }

    #[test]
    fn a_new_epoch_of_either_end_gives_new_keys_and_spis() {
        let s = secret();
        let old = s.sa(a(), b(), 1);
        let a2 = Incarnation {
            epoch: Epoch::generate(Some(a().epoch)).unwrap(),
            ..a()
        };
        let b2 = Incarnation {
            epoch: Epoch::generate(Some(b().epoch)).unwrap(),
            ..b()
        };
        for (x, y) in [(a2, b()), (a(), b2)] {
            let new = s.sa(x, y, 1);
            assert_ne!(new.key, old.key);
            assert_ne!(new.salt, old.salt);
            assert_ne!(new.spi, old.spi, "a generated epoch changes the SPI tag");
            // the parts that keep SPIs unique on the receiver are unchanged
            assert_eq!(spi_parts(new.spi), spi_parts(old.spi));
        }
        // an epoch with the same tag: same SPI, new key (no nonce reuse)
        let same_tag = inc(1, 0x0123_4567_89ab_ccef);
        let c = s.sa(same_tag, b(), 1);
        assert_eq!(c.spi, old.spi);
        assert_ne!(c.key, old.key);
    }

    /// Known answers, computed apart from this crate (Python's hmac/hashlib HKDF with the
    /// layout of the module docs): any change to the derivation fails here.
    #[test]
    fn known_answer_vectors() {
        let secret = kat::secret();
        for (x, y, g, key, salt, want_spi) in kat::VECTORS {
            let sa = secret.sa(*x, *y, *g);
            assert_eq!(hex::encode(sa.key), *key, "key {x:?} -> {y:?} g{g}");
            assert_eq!(hex::encode(sa.salt), *salt, "salt {x:?} -> {y:?} g{g}");
            assert_eq!(sa.spi, *want_spi, "spi {x:?} -> {y:?} g{g}");
            assert_eq!(spi(*x, *y, *g), *want_spi);
            assert_eq!(sa.generation, *g);
        }
    }

    /// The key id pinned, computed apart from this crate (Python's hmac/hashlib HKDF: salt
    /// 32 zero bytes, info `scrambler-ledger-key-id-v1`, first 8 bytes).
    #[test]
    fn key_id_known_answer() {
        let id = kat::secret().key_id();
        assert_eq!(id.to_string(), "06dd6a667b810b36");
        let ff = ClusterSecret::from_bytes(vec![0xff; 32]).unwrap().key_id();
        assert_eq!(ff.to_string(), "4d01a57e48dc0771");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"06dd6a667b810b36\"");
        assert_eq!(
            serde_json::from_str::<KeyId>("\"06DD6A667B810B36\"").unwrap(),
            id
        );
        for bad in ["\"06dd\"", "\"06dd6a667b810b3g\"", "\"06dd6a667b810b3600\""] {
            assert!(serde_json::from_str::<KeyId>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_never_prints_key_material() {
        let s = secret();
        let sa = s.sa(a(), b(), 1);
        let d = format!("{sa:?} {s:?}");
        assert!(!d.contains(&format!("{:?}", sa.key)));
        assert!(d.contains("redacted"));
        assert!(!d.contains("7, 7"));
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(ClusterSecret::from_bytes(vec![1; 8]).is_err());
    }

    /// A key file written by `generate_file` in a fresh directory.
    fn key_file() -> (tempfile::TempDir, std::path::PathBuf, ClusterSecret) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let s = ClusterSecret::generate_file(&p).unwrap();
        (dir, p, s)
    }

    fn refusal(p: &Path) -> String {
        let e = ClusterSecret::from_file(p).unwrap_err();
        assert_eq!(e.code(), 106, "{e}");
        e.to_string()
    }

    #[test]
    fn key_file_written_0600_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let (x, y) = (super::tests::a, super::tests::b);
        let (_dir, p, a) = key_file();
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = ClusterSecret::from_file(&p).unwrap();
        assert_eq!(a.sa(x(), y(), 3).key, b.sa(x(), y(), 3).key);
        // whitespace (a line break in the middle) is ignored
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, format!("{}\n  {}", &text[..10], &text[10..])).unwrap();
        let c = ClusterSecret::from_file(&p).unwrap();
        assert_eq!(a.sa(x(), y(), 3).key, c.sa(x(), y(), 3).key);
    }

    #[test]
    fn key_file_readable_by_group_or_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, p, _) = key_file();
        for mode in [0o640, 0o604, 0o644, 0o610] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = refusal(&p);
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
        }
    }

    #[test]
    fn key_file_symlink_is_refused() {
        let (dir, p, _) = key_file();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        let e = refusal(&link);
        assert!(e.contains("symlink"), "{e}");
    }

    #[test]
    fn key_file_that_is_no_regular_file_is_refused() {
        use std::os::unix::fs::DirBuilderExt;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // no writer: a blocking open would hang here
        assert!(refusal(&fifo).contains("not a regular file"));
        let sub = dir.path().join("dir");
        std::fs::DirBuilder::new().mode(0o700).create(&sub).unwrap();
        assert!(refusal(&sub).contains("not a regular file"));
    }

    #[test]
    fn key_file_of_another_user_is_refused() {
        let (_dir, p, _) = key_file();
        let me = nix::unistd::geteuid().as_raw();
        let other = if me == 4242 { 4343 } else { 4242 };
        // only root may give a file away
        if !nix::unistd::geteuid().is_root() {
            panic!("this test needs root (chown to another uid)");
        }
        std::os::unix::fs::chown(&p, Some(other), None).unwrap();
        let e = refusal(&p);
        assert!(e.contains(&format!("uid {other}")), "{e}");
    }

    #[test]
    fn key_file_that_is_not_a_secret_is_refused() {
        let (_dir, p, _) = key_file();
        std::fs::write(&p, "zz").unwrap();
        assert!(refusal(&p).contains("not hex"));
        std::fs::write(&p, "abcd").unwrap();
        assert!(refusal(&p).contains("too short"));
        std::fs::write(&p, "ab".repeat(4000)).unwrap();
        assert!(refusal(&p).contains("larger than"));
    }

    #[test]
    fn generate_file_creates_missing_directories_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("etc/scrambler/cluster.key");
        ClusterSecret::generate_file(&p).unwrap();
        for d in ["etc", "etc/scrambler"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{d}");
        }
        ClusterSecret::from_file(&p).unwrap();
        // an existing key is never overwritten
        assert!(ClusterSecret::generate_file(&p).is_err());
    }

    proptest! {
        // On one receiver, every (sender, live generation) has its own SPI, and SPIs are ≥ 256.
        #[test]
        fn spis_unique_per_receiver(recv in 1u32..65535, base in 0u32..1_000_000,
                                    senders in proptest::collection::hash_map(1u32..65535, 1u64.., 1..40),
                                    recv_epoch in 1u64..,
                                    span in 1u32..SPI_GENERATIONS) {
            let mut seen = std::collections::HashSet::new();
            for (s, e) in senders.iter().filter(|(s, _)| **s != recv) {
                for g in [base, base + span] {
                    let v = spi(inc(*s, *e), inc(recv, recv_epoch), g);
                    prop_assert!(v >= 256);
                    prop_assert_eq!(spi_parts(v), Some((g % SPI_GENERATIONS, *s as u16)));
                    prop_assert_eq!(v & 0xff, ((*e ^ recv_epoch) & 0xff) as u32);
                    prop_assert!(seen.insert(v), "duplicate SPI {:#x}", v);
                }
            }
        }
    }
}

/// The known-answer vectors of the derivation: (sender, receiver, generation, key, salt,
/// SPI) for the cluster secret of the bytes 0, 1, …, 31, so that the dataplanes' tests
/// check what they install against the same bytes (cargo feature `test-vectors`).
#[cfg(any(test, feature = "test-vectors"))]
pub mod kat {
    use super::*;
    use crate::epoch::Epoch;
    use crate::mesh::NodeId;

    /// The cluster secret of the vectors: the bytes 0, 1, …, 31.
    pub fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes((0u8..32).collect()).unwrap_or_else(|_| unreachable!())
    }

    const fn inc(id: u16, epoch: u64) -> Incarnation {
        Incarnation {
            id: NodeId::from_raw(id),
            epoch: Epoch::from_raw(epoch),
        }
    }

    /// Node 1, epoch 0123456789abcdef.
    pub const A: Incarnation = inc(1, 0x0123_4567_89ab_cdef);
    /// Node 2, epoch fedcba9876543210.
    pub const B: Incarnation = inc(2, 0xfedc_ba98_7654_3210);
    /// Node 1 after a restart, with an epoch of another SPI tag.
    pub const A2: Incarnation = inc(1, 0x0123_4567_89ab_cd00);

    /// (sender, receiver, generation, key hex, salt hex, SPI).
    pub const VECTORS: &[(Incarnation, Incarnation, Generation, &str, &str, u32)] = &[
        (
            A,
            B,
            7,
            "41870e81df58f208f01da6e621340301",
            "aed5159b",
            0x0800_01ff,
        ),
        (
            B,
            A,
            7,
            "05e5ca8e3d70d75ebf869a79ec3a657a",
            "1a551a65",
            0x0800_02ff,
        ),
        (
            A2,
            B,
            7,
            "b44c93f305a0b87598d6cce6eaf84a54",
            "8d4f113a",
            0x0800_0110,
        ),
        (
            inc(0x1234, 1),
            inc(0xfffe, u64::MAX),
            130,
            "4ab31dab5061d3f7ef631f41f623f1d8",
            "00e8635c",
            0x0312_34fe,
        ),
    ];
}
