//! The guest's initramfs: static busybox, the few modules needed to mount the host's
//! root over virtio-9p with an overlay, the init script and the per-run scripts.
//!
//! Everything else (bash, iproute2, tcpdump, the test binary, the full modules tree)
//! comes from the host's root file system, shared read-only, so the archive stays
//! around 3 MB and is rebuilt for every run in milliseconds: there is nothing worth
//! caching.

use crate::cpio::CpioWriter;
use crate::kernel::{module_bytes, module_name, GuestKernel};
use scrambler_core::Error;
use std::path::{Path, PathBuf};

/// Modules (with their dependencies) that /init loads before it can reach the host root.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

const INIT_SH: &str = include_str!("guest/init.sh");
const MODPROBE_SH: &str = include_str!("guest/modprobe.sh");

/// The scripts that differ from run to run (see `guest.rs`).
#[derive(Debug, Clone)]
pub(crate) struct RunScripts {
    /// Sourced by /init: shell variables (the exit marker's nonce).
    pub env_sh: String,
    /// Sourced by /init: mounts the guest's private /tmp and /var/tmp.
    pub tmp_sh: String,
    /// Runs in the guest root before the test: modules, extra files.
    pub prepare_sh: String,
    /// Runs the test binary in the guest root.
    pub run_test_sh: String,
}

/// The complete initramfs (uncompressed `newc` cpio) for one run.
pub(crate) fn build(
    kernel: &GuestKernel,
    busybox: &Path,
    run: &RunScripts,
) -> Result<Vec<u8>, Error> {
    let busybox_elf =
        std::fs::read(busybox).map_err(|e| Error::io("read busybox", busybox.display(), e))?;
    if !is_static_elf(&busybox_elf) {
        return Err(Error::Unsupported(format!(
            "{} is not a statically linked ELF executable (install busybox-static or set {})",
            busybox.display(),
            crate::config::ENV_BUSYBOX
        )));
    }
    let modules = kernel.load_order(BOOT_MODULES)?;

    let mut w = CpioWriter::new();
    for d in [
        "bin",
        "sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "lib",
        "lib/modules",
        "scrambler",
        "host",
        "rw",
        "newroot",
    ] {
        w.dir(d);
    }
    w.char_device("dev/console", 0o600, 5, 1);
    w.char_device("dev/null", 0o666, 1, 3);
    w.file("bin/busybox", 0o755, &busybox_elf);
    w.symlink("bin/sh", "busybox");
    w.file("init", 0o755, INIT_SH.as_bytes());
    w.file("sbin/modprobe", 0o755, MODPROBE_SH.as_bytes());

    let mut names = Vec::new();
    for path in &modules {
        let name = module_name(&path.to_string_lossy());
        w.file(
            &format!("lib/modules/{name}.ko"),
            0o644,
            &module_bytes(path)?,
        );
        names.push(name);
    }
    w.file(
        "scrambler/modules",
        0o644,
        (names.join("\n") + "\n").as_bytes(),
    );
    w.file("scrambler/env.sh", 0o644, run.env_sh.as_bytes());
    w.file("scrambler/tmp.sh", 0o644, run.tmp_sh.as_bytes());
    w.file("scrambler/prepare.sh", 0o644, run.prepare_sh.as_bytes());
    w.file("scrambler/run-test.sh", 0o644, run.run_test_sh.as_bytes());
    Ok(w.finish())
}

/// The first of `candidates` (or `explicit`) that exists.
pub(crate) fn find_busybox(explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    [
        "/bin/busybox",
        "/usr/bin/busybox",
        "/sbin/busybox",
        "/usr/sbin/busybox",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .ok_or_else(|| {
        Error::Unsupported(format!(
            "no busybox found: install busybox-static or set {}",
            crate::config::ENV_BUSYBOX
        ))
    })
}

/// An x86-64 ELF executable without a program interpreter (PT_INTERP).
fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    // 64-bit little-endian ELF only.
    if elf.get(0..6) != Some(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let at = phoff as usize + i * phentsize as usize;
        u32_at(at).is_some_and(|t| t != PT_INTERP)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_static_and_dynamic_executables() {
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(
            !is_static_elf(&sh),
            "/bin/sh is dynamically linked on Debian"
        );
        if let Ok(bb) = find_busybox(None) {
            assert!(is_static_elf(&std::fs::read(bb).unwrap()));
        }
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
