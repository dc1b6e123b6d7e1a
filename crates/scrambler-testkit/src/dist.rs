//! Finding a VPP to run, for the lab and for tests.
//!
//! [`find`] is what the lab uses: `SCRAMBLER_VPP_DIST` when set (a VPP tree holding
//! `bin/vpp`, or a `vpp-dist` tarball of one, see [`locate`]); else an installed VPP (a
//! `vpp` program on `PATH`, e.g. FD.io's packages' `/usr/bin/vpp`, with its plugin
//! directory beside it, see [`installed`]); else the project's CI fixture tarball.
//!
//! [`locate`] returns a VPP *tree*: `SCRAMBLER_VPP_DIST` when set and not empty (a
//! directory holding `bin/vpp`, or a tarball extracted as below); else the tarball
//! [`tarball`] (`SCRAMBLER_VPP_TARBALL`, else the project's CI fixture beside the
//! workspace), extracted once into `<target>/vpp-dist/` and re-extracted when the tarball
//! changes. Extraction runs under an exclusive `flock` on `<target>/vpp-dist.lock`
//! (processes and threads alike wait for it), goes to a temporary directory first and is
//! renamed into place, so nobody sees half a tree and a tree whose stamp matches the
//! tarball is never removed.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    // crates/scrambler-testkit -> workspace root
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The VPP tarball: `SCRAMBLER_VPP_TARBALL`, else the project's CI fixture beside the
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

/// What to give when no VPP was found.
const HOW_TO_GET_VPP: &str = "install FD.io VPP (a `vpp` program on PATH), or set \
     SCRAMBLER_VPP_DIST to a VPP tree (a directory holding bin/vpp) or a tarball of one";

/// A VPP to start: the program, its plugin directory and, for a relocatable tree, the
/// directory of its libraries (`LD_LIBRARY_PATH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VppInstall {
    /// The `vpp` program.
    pub vpp: PathBuf,
    /// Its plugins (`plugins { path … }` of startup.conf).
    pub plugins: PathBuf,
    /// The tree's `lib/`, where its libraries are not in the system's search path.
    pub libs: Option<PathBuf>,
}

impl VppInstall {
    /// The VPP of a tree (`<root>/bin/vpp`, `<root>/lib`, plugins in `lib/vpp_plugins` or
    /// `lib/<arch>-linux-gnu/vpp_plugins`).
    pub fn from_tree(root: &Path) -> io::Result<Self> {
        let vpp = root.join("bin/vpp");
        if !vpp.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no bin/vpp there", root.display()),
            ));
        }
        Ok(VppInstall {
            plugins: plugin_dir(root).ok_or_else(|| no_plugins(&vpp))?,
            vpp,
            libs: Some(root.join("lib")),
        })
    }
}

/// The VPP to run: `SCRAMBLER_VPP_DIST`, else an installed VPP ([`installed`]), else the
/// project's CI fixture tarball (see the module docs). Errors say how to provide one.
pub fn find() -> io::Result<VppInstall> {
    if dist_env().is_none() {
        if let Some(found) = installed() {
            return found;
        }
    }
    VppInstall::from_tree(&locate()?)
}

/// An installed VPP: the first `vpp` program on `PATH` (symlinks resolved), with the
/// plugin directory of its prefix (`<prefix>/lib/<arch>-linux-gnu/vpp_plugins`, as FD.io's
/// Debian packages install it, or `<prefix>/lib/vpp_plugins`, `<prefix>/lib64/vpp_plugins`).
/// `None` when there is no `vpp` on `PATH`.
pub fn installed() -> Option<io::Result<VppInstall>> {
    installed_on(&std::env::var_os("PATH")?)
}

/// [`installed`] with `path` as `PATH`.
fn installed_on(path: &std::ffi::OsStr) -> Option<io::Result<VppInstall>> {
    let vpp = std::env::split_paths(path)
        .map(|dir| dir.join("vpp"))
        .find(|p| is_executable(p))?;
    let vpp = std::fs::canonicalize(&vpp).unwrap_or(vpp);
    let prefix = vpp.parent().and_then(Path::parent)?;
    Some(
        plugin_dir(prefix)
            .map(|plugins| VppInstall {
                vpp: vpp.clone(),
                plugins,
                libs: None,
            })
            .ok_or_else(|| no_plugins(&vpp)),
    )
}

fn plugin_dir(prefix: &Path) -> Option<PathBuf> {
    let multiarch = format!("lib/{}-linux-gnu/vpp_plugins", std::env::consts::ARCH);
    [multiarch.as_str(), "lib/vpp_plugins", "lib64/vpp_plugins"]
        .iter()
        .map(|d| prefix.join(d))
        .find(|d| d.is_dir())
}

fn no_plugins(vpp: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "{}: no vpp_plugins directory under its prefix (lib/{}-linux-gnu, lib or lib64)",
            vpp.display(),
            std::env::consts::ARCH
        ),
    )
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `SCRAMBLER_VPP_DIST` when set and not empty.
fn dist_env() -> Option<PathBuf> {
    std::env::var_os("SCRAMBLER_VPP_DIST")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
}

/// The VPP tree to run (a directory holding `bin/vpp`), extracting a tarball on first use.
///
/// Errors say which variable or file is missing and how to provide it.
pub fn locate() -> io::Result<PathBuf> {
    if let Some(d) = dist_env() {
        if d.is_file() {
            return extracted(&d);
        }
        if !d.join("bin/vpp").is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "SCRAMBLER_VPP_DIST={}: neither a tarball nor a tree with bin/vpp",
                    d.display()
                ),
            ));
        }
        return Ok(d);
    }
    extracted(&tarball())
}

/// The tree of tarball `tar`, extracted once into `<target>/vpp-dist/`.
fn extracted(tar: &Path) -> io::Result<PathBuf> {
    let meta = std::fs::metadata(tar).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "no VPP found (VPP tarball {}: {e}): {HOW_TO_GET_VPP}",
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
        extract(tar, &target, &dest, &stamp_text)?;
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
    fn a_tree_has_its_program_plugins_and_libraries() {
        let root = tempfile::tempdir().unwrap();
        assert!(VppInstall::from_tree(root.path()).is_err(), "no bin/vpp");
        std::fs::create_dir_all(root.path().join("bin")).unwrap();
        std::fs::write(root.path().join("bin/vpp"), "").unwrap();
        let err = VppInstall::from_tree(root.path()).unwrap_err();
        assert!(err.to_string().contains("vpp_plugins"), "{err}");
        std::fs::create_dir_all(root.path().join("lib/vpp_plugins")).unwrap();
        let v = VppInstall::from_tree(root.path()).unwrap();
        assert_eq!(v.vpp, root.path().join("bin/vpp"));
        assert_eq!(v.plugins, root.path().join("lib/vpp_plugins"));
        assert_eq!(v.libs, Some(root.path().join("lib")));
    }

    #[test]
    fn packages_keep_plugins_in_the_multiarch_directory() {
        let prefix = tempfile::tempdir().unwrap();
        let multiarch = prefix.path().join(format!(
            "lib/{}-linux-gnu/vpp_plugins",
            std::env::consts::ARCH
        ));
        std::fs::create_dir_all(&multiarch).unwrap();
        std::fs::create_dir_all(prefix.path().join("lib/vpp_plugins")).unwrap();
        assert_eq!(plugin_dir(prefix.path()), Some(multiarch));
    }

    #[test]
    fn an_installed_vpp_is_found_on_path_with_its_plugins() {
        use std::os::unix::fs::PermissionsExt;
        let prefix = tempfile::tempdir().unwrap();
        let bin = prefix.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let path = std::env::join_paths([Path::new("/nonexistent"), &bin]).unwrap();
        assert!(installed_on(&path).is_none(), "no vpp there yet");
        std::fs::write(bin.join("vpp"), "#!/bin/sh\n").unwrap();
        assert!(installed_on(&path).is_none(), "not executable");
        std::fs::set_permissions(bin.join("vpp"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(installed_on(&path).unwrap().is_err(), "no plugin directory");
        let plugins = prefix.path().join("lib64/vpp_plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let v = installed_on(&path).unwrap().unwrap();
        assert_eq!(v.vpp, std::fs::canonicalize(bin.join("vpp")).unwrap());
        assert_eq!(v.plugins.file_name(), plugins.file_name());
        assert_eq!(v.libs, None);
    }

    #[test]
    fn tarball_defaults_beside_the_workspace() {
        if std::env::var_os("SCRAMBLER_VPP_TARBALL").is_none() {
            assert!(tarball().ends_with("shared/vpp/vpp-dist.tar.xz"));
        }
    }
}
