//! The mesh file ([`MeshFile`], from scrambler-core, where embedders find it too) and the
//! steps of a key rotation.
//!
//! The same file serves every node; `scrambler mesh apply --node NAME` cuts that node's mesh
//! from it. Key rotation edits `keys` in three phases (see [`next_rotation_phase`]), each
//! applied on every node before the next.

pub use scrambler_core::MeshFile;
use scrambler_core::{Error, Keys, Result};

/// One step of a key rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationPhase {
    /// Accept generation g+1 inbound everywhere (still sending with g).
    Prepare,
    /// Send with g+1 (every node already accepts it).
    Switch,
    /// Drop generation g after the grace period.
    Finish,
}

impl std::fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RotationPhase::Prepare => "prepare (install inbound states of the new generation)",
            RotationPhase::Switch => "switch (send with the new generation)",
            RotationPhase::Finish => "finish (remove the old generation)",
        })
    }
}

/// The next rotation phase for `keys`, and the keys after it.
///
/// `{tx g, rx {g}}` → Prepare → `{tx g, rx {g, g+1}}` → Switch → `{tx g+1, rx {g, g+1}}` →
/// Finish → `{tx g+1, rx {g+1}}`. Each phase must be applied on every node before the next
/// starts: that order is what keeps a node from sending with an SPI its peer cannot yet
/// receive. Fails when `tx` is the last generation number (there is no g+1).
pub fn next_rotation_phase(keys: &Keys) -> Result<(RotationPhase, Keys)> {
    let newest = keys.rx.last().copied().unwrap_or(keys.tx);
    Ok(if newest > keys.tx {
        let mut k = keys.clone();
        k.tx = newest;
        (RotationPhase::Switch, k)
    } else if keys.rx.len() > 1 {
        (RotationPhase::Finish, Keys::single(keys.tx))
    } else {
        let next = keys.tx.checked_add(1).ok_or_else(|| {
            Error::mesh(format!(
                "key generation {} is the last one: no rotation can follow it",
                keys.tx
            ))
        })?;
        let mut k = keys.clone();
        k.rx.insert(next);
        (RotationPhase::Prepare, k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_goes_prepare_switch_finish() {
        let k1 = Keys::single(1);
        let (p, k) = next_rotation_phase(&k1).unwrap();
        assert_eq!(p, RotationPhase::Prepare);
        assert_eq!(
            (k.tx, k.rx.iter().copied().collect::<Vec<_>>()),
            (1, vec![1, 2])
        );
        let (p, k) = next_rotation_phase(&k).unwrap();
        assert_eq!(p, RotationPhase::Switch);
        assert_eq!((k.tx, k.rx.len()), (2, 2));
        let (p, k) = next_rotation_phase(&k).unwrap();
        assert_eq!(p, RotationPhase::Finish);
        assert_eq!(k, Keys::single(2));
        assert_eq!(
            next_rotation_phase(&Keys::single(u32::MAX))
                .unwrap_err()
                .code(),
            7
        );
    }
}
