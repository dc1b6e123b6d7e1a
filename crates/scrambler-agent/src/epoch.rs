//! The epoch of the node's dataplane: a random nonzero 64-bit value, new whenever the agent
//! finds the dataplane without any Scrambler SA (first start, reboot, VPP restart, after
//! `mesh remove`), reused while the dataplane keeps its SAs (an agent restart). Keys bind
//! both ends' epochs, so a dataplane that starts over never sends under an old key.
//!
//! Kept in `<state dir>/epoch` (16 hex digits, mode 0600).

use scrambler_core::{Epoch, Error, Mesh, Netns, Result, Tunnel};
use std::path::{Path, PathBuf};

/// The epoch file in `state_dir`.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("epoch")
}

/// The saved epoch, if any.
pub fn load(state_dir: &Path) -> Result<Option<Epoch>> {
    let p = path(state_dir);
    match std::fs::read_to_string(&p) {
        Ok(s) => match s.trim().parse::<Epoch>() {
            Ok(e) => Ok(Some(e)),
            Err(_) => Err(Error::Corrupt {
                object: p.display().to_string(),
                reason: "not a nonzero 64-bit hex epoch".into(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read epoch", p.display(), e)),
    }
}

/// Saves `epoch` (mode 0600, replaced atomically).
pub fn save(state_dir: &Path, epoch: Epoch) -> Result<()> {
    crate::status::write_atomic(&path(state_dir), format!("{epoch}\n").as_bytes(), 0o600)
}

/// True when the dataplane holds any Scrambler SA for a peer of `last` (the mesh the agent
/// last applied). Without a last mesh, or when the dataplane cannot say, the answer is no:
/// a new epoch is always safe, a reused one only when the SAs it keyed are still there.
pub async fn dataplane_has_sas(tunnel: &dyn Tunnel, netns: &Netns, last: Option<&Mesh>) -> bool {
    let Some(mesh) = last else { return false };
    match tunnel.status(netns, mesh).await {
        Ok(st) => st.peers.iter().any(|p| {
            p.outbound || p.inbound || p.tx_generation.is_some() || !p.rx_generations.is_empty()
        }),
        Err(e) => {
            tracing::warn!("reading the dataplane for Scrambler SAs: {e}; taking a new epoch");
            false
        }
    }
}

/// The epoch to publish: the saved one when the dataplane still has SAs, else a new one
/// (saved; [`Epoch::generate`] makes its SPI bits differ from the saved one's, so every SPI
/// with the node changes too). Returns it and whether it was reused.
pub async fn choose(
    tunnel: &dyn Tunnel,
    netns: &Netns,
    state_dir: &Path,
    last: Option<&Mesh>,
) -> Result<(Epoch, bool)> {
    let saved = load(state_dir).unwrap_or_else(|e| {
        tracing::warn!("{e}; taking a new epoch");
        None
    });
    if let Some(e) = saved {
        if dataplane_has_sas(tunnel, netns, last).await {
            return Ok((e, true));
        }
    }
    let e = Epoch::generate(saved)?;
    save(state_dir, e)?;
    Ok((e, false))
}
