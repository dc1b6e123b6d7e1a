//! Statistics segments built in memory the way VPP lays them out (see [`crate::stats`]), for
//! tests of the reader without a VPP.

use crate::stats::{dir_type, ENTRY_SIZE, NAME_OFFSET, SEGMENT_VERSION};

/// A segment under construction: 64-bit words, and the address VPP would map it at.
#[derive(Debug, Clone)]
pub struct SyntheticSegment {
    /// The segment, word by word.
    pub words: Vec<u64>,
    /// The VPP address of word 0 (every pointer inside is relative to it).
    pub base: u64,
}

impl SyntheticSegment {
    /// The header alone: version, `base`, epoch 7, not in progress, no directory.
    pub fn new(base: u64) -> SyntheticSegment {
        SyntheticSegment {
            words: vec![SEGMENT_VERSION, base, 7, 0, 0],
            base,
        }
    }

    /// Appends a VPP vector of `n` elements made of `words`; returns its VPP pointer.
    pub fn vector(&mut self, n: usize, words: &[u64]) -> u64 {
        self.words.push(n as u64); // vector header: u32 length in the word before the data
        let ptr = self.base + (self.words.len() * 8) as u64;
        self.words.extend_from_slice(words);
        ptr
    }

    /// One directory entry: `type`, the data word, the name.
    pub fn entry(ty: u32, data: u64, name: &str) -> Vec<u64> {
        let mut bytes = [0u8; ENTRY_SIZE];
        bytes[..4].copy_from_slice(&ty.to_ne_bytes());
        bytes[8..16].copy_from_slice(&data.to_ne_bytes());
        let name = &name.as_bytes()[..name.len().min(ENTRY_SIZE - NAME_OFFSET - 1)];
        bytes[NAME_OFFSET..NAME_OFFSET + name.len()].copy_from_slice(name);
        bytes
            .chunks(8)
            .map(|c| u64::from_ne_bytes(c.try_into().unwrap_or_default()))
            .collect()
    }

    /// Appends `entries` (the concatenated words of `n` entries) as the directory.
    pub fn set_directory(&mut self, n: usize, entries: &[u64]) {
        let d = self.vector(n, entries);
        self.words[4] = d;
    }

    /// The segment as VPP's memory holds it.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    /// A segment with one entry of every kind: `/sys/heartbeat` (scalar 42),
    /// `/net/ipsec/sa` (combined, two threads, two SAs), `/if/drops` (simple, one thread,
    /// `[0, 5, 9]`), `/if/names` (`["local0", free]`), `/interfaces/ul0/drops` (symlink to
    /// `/if/drops` element 2) and `/gone` (empty).
    pub fn sample() -> SyntheticSegment {
        let mut f = SyntheticSegment::new(0x1_3000_0000);
        let t0 = f.vector(2, &[10, 1000, 20, 2000]);
        let t1 = f.vector(2, &[1, 100, 2, 200]);
        let sa = f.vector(2, &[t0, t1]);
        let d0 = f.vector(3, &[0, 5, 9]);
        let drops = f.vector(1, &[d0]);
        let n0 = f.vector(7, &[u64::from_ne_bytes(*b"local0\0\0")]);
        let names = f.vector(2, &[n0, 0]);
        let mut symlink = [0u8; 8];
        symlink[..4].copy_from_slice(&2u32.to_ne_bytes());
        symlink[4..].copy_from_slice(&2u32.to_ne_bytes());
        let mut dir = Vec::new();
        for (ty, data, name) in [
            (dir_type::SCALAR_INDEX, 42, "/sys/heartbeat"),
            (dir_type::COUNTER_VECTOR_COMBINED, sa, "/net/ipsec/sa"),
            (dir_type::COUNTER_VECTOR_SIMPLE, drops, "/if/drops"),
            (dir_type::NAME_VECTOR, names, "/if/names"),
            (
                dir_type::SYMLINK,
                u64::from_ne_bytes(symlink),
                "/interfaces/ul0/drops",
            ),
            (dir_type::EMPTY, 0, "/gone"),
        ] {
            dir.extend(SyntheticSegment::entry(ty, data, name));
        }
        f.set_directory(6, &dir);
        f
    }
}
