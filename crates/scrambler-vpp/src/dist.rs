//! Finding a VPP build to run: the relocatable tree from `vpp-dist.tar.xz`
//! (see `../shared/vpp/README.md`), for the lab and for tests.
//!
//! [`locate`] returns, in order: `SCRAMBLER_VPP_DIST` when set and not empty (an extracted
//! `vpp/` tree, holding `bin/vpp`); else the tarball ([`tarball`]: `SCRAMBLER_VPP_TARBALL`, else
//! `../shared/vpp/vpp-dist.tar.xz` beside the workspace) extracted once into
//! `<target>/vpp-dist/` and re-extracted when the tarball changes. Extraction runs under an
//! exclusive `flock` on `<target>/vpp-dist.lock` (processes and threads alike wait for it),
//! goes to a temporary directory first and is renamed into place, so nobody sees half a
//! tree and a tree whose stamp matches the tarball is never removed.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    // crates/scrambler-vpp -> workspace root
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The VPP tarball: `SCRAMBLER_VPP_TARBALL`, else `../shared/vpp/vpp-dist.tar.xz` beside the
/// workspace.
pub fn tarball() -> PathBuf {
    std::env::var_os("SCRAMBLER_VPP_TARBALL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root()
                .join("../shared/vpp/vpp-dist.tar.xz")
                .components()
                .collect()
        })
}

/// The VPP tree to run (a directory holding `bin/vpp`), extracting the tarball on first use.
///
/// Errors say which variable or file is missing and how to provide it.
pub fn locate() -> io::Result<PathBuf> {
    if let Some(d) = std::env::var_os("SCRAMBLER_VPP_DIST").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        if !d.join("bin/vpp").is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("SCRAMBLER_VPP_DIST={}: no bin/vpp there", d.display()),
            ));
        }
        return Ok(d);
    }
    let tar = tarball();
    let meta = std::fs::metadata(&tar).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "VPP tarball {} not found ({e}): set SCRAMBLER_VPP_DIST (an extracted vpp/ \
                 tree) or SCRAMBLER_VPP_TARBALL (see ../shared/vpp/README.md)",
                tar.display()
            ),
        )
    })?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stamp_text = format!("{} {} {}\n", tar.display(), meta.len(), mtime);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dest = target.join("vpp-dist");
    let current = || {
        std::fs::read_to_string(dest.join(".stamp")).ok().as_deref() == Some(stamp_text.as_str())
            && dest.join("vpp/bin/vpp").exists()
    };
    if current() {
        return Ok(dest.join("vpp"));
    }
    std::fs::create_dir_all(&target)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", target.display())))?;
    let lock_path = target.join("vpp-dist.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", lock_path.display())))?;
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| io::Error::other(format!("lock {}: {e}", lock_path.display())))?;
    // whoever held the lock before may have extracted this very tarball
    if !current() {
        extract(&tar, &target, &dest, &stamp_text)?;
    }
    Ok(dest.join("vpp"))
}

/// Extracts `tar` beside `dest` and renames it into place.
fn extract(tar: &Path, target: &Path, dest: &Path, stamp_text: &str) -> io::Result<()> {
    let context = |what: &str, p: &Path, e: io::Error| {
        io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
    };
    let tmp = target.join(format!("vpp-dist.tmp.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| context("create", &tmp, e))?;
    let st = Command::new("tar")
        .arg("-xJf")
        .arg(tar)
        .arg("-C")
        .arg(&tmp)
        .status()
        .map_err(|e| context("run tar for", tar, e));
    match st {
        Ok(s) if s.success() => {}
        Ok(s) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io::Error::other(format!(
                "extracting {} failed: tar {s}",
                tar.display()
            )));
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    }
    std::fs::write(tmp.join(".stamp"), stamp_text)
        .map_err(|e| context("write stamp in", &tmp, e))?;
    // under the lock, and only when the stamp differs: the old tree is stale
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp);
        context("install", dest, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tarball_defaults_beside_the_workspace() {
        if std::env::var_os("SCRAMBLER_VPP_TARBALL").is_none() {
            assert!(tarball().ends_with("shared/vpp/vpp-dist.tar.xz"));
        }
    }
}
