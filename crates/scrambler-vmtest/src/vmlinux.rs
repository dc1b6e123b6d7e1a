//! Faster boots: the uncompressed kernel, booted through its PVH entry point.
//!
//! Under TCG a bzImage spends seconds in SeaBIOS and in decompressing itself (Debian's
//! is XZ). qemu can instead load the uncompressed ELF `vmlinux` and jump to its PVH
//! entry (kernels built with CONFIG_PVH=y, as Debian's are). The ELF is extracted once
//! per kernel image and cached (keyed by the image's path, size and mtime) under the
//! cargo target directory, next to the test binaries: `<target>/scrambler-vmtest/`.
//! If anything about that fails, the bzImage is booted as is.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// (magic bytes, decompressor command) of the payload formats Debian kernels use.
const PAYLOADS: &[(&[u8], &[&str])] = &[
    (b"\xfd7zXZ\x00", &["xz", "-dc", "--single-stream"]),
    (b"\x28\xb5\x2f\xfd", &["zstd", "-dcq"]),
    (b"\x1f\x8b\x08", &["gzip", "-dcq"]),
];

/// The image to hand to `qemu -kernel`: a cached PVH-capable vmlinux if one can be had,
/// otherwise `bzimage` itself.
pub(crate) fn boot_image(bzimage: &Path) -> PathBuf {
    pvh_vmlinux(bzimage).unwrap_or_else(|| bzimage.to_path_buf())
}

fn pvh_vmlinux(bzimage: &Path) -> Option<PathBuf> {
    if !has_pvh(bzimage) {
        return None;
    }
    let meta = std::fs::metadata(bzimage).ok()?;
    let name = bzimage.file_name()?.to_str()?.replace("vmlinuz", "vmlinux");
    let dir = cache_dir();
    let cached = dir.join(format!("{name}-{:x}-{:x}.elf", meta.size(), meta.mtime()));
    if cached.is_file() {
        return Some(cached);
    }
    let elf = extract(&std::fs::read(bzimage).ok()?)?;
    std::fs::create_dir_all(&dir).ok()?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).ok()?;
    tmp.write_all(&elf).ok()?;
    tmp.persist(&cached).ok()?;
    Some(cached)
}

/// True when the kernel's config (next to it in /boot) says CONFIG_PVH=y.
fn has_pvh(bzimage: &Path) -> bool {
    let Some(config) = bzimage
        .to_str()
        .filter(|p| p.contains("vmlinuz-"))
        .map(|p| p.replacen("vmlinuz-", "config-", 1))
    else {
        return false;
    };
    std::fs::read_to_string(config).is_ok_and(|c| c.lines().any(|l| l == "CONFIG_PVH=y"))
}

/// The ELF inside a bzImage: the first compressed payload that decompresses to one.
fn extract(bzimage: &[u8]) -> Option<Vec<u8>> {
    PAYLOADS.iter().find_map(|(magic, cmd)| {
        let at = find(bzimage, magic)?;
        let elf = decompress(&bzimage[at..], cmd)?;
        elf.starts_with(b"\x7fELF").then_some(elf)
    })
}

fn decompress(data: &[u8], cmd: &[&str]) -> Option<Vec<u8>> {
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = data.to_vec();
    // Feed stdin from a thread: the decompressor may stop reading early (trailing data).
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().ok()?;
    let _ = feeder.join();
    // gzip/zstd complain about the bytes after the stream; the output is what counts.
    (!out.stdout.is_empty()).then_some(out.stdout)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `<target>/scrambler-vmtest` when running from a cargo target directory (it holds
/// CACHEDIR.TAG), else a per-user directory under the system temp dir.
fn cache_dir() -> PathBuf {
    let target = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|d| d.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
    });
    match target {
        Some(t) => t.join("scrambler-vmtest"),
        None => {
            std::env::temp_dir().join(format!("scrambler-vmtest-cache-{}", nix::unistd::geteuid()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_gzip_payload_after_a_header() {
        let mut gz = Command::new("gzip")
            .args(["-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = gz.stdin.take().unwrap();
        stdin.write_all(b"\x7fELF fake kernel").unwrap();
        drop(stdin);
        let payload = gz.wait_with_output().unwrap().stdout;
        let mut image = b"bzImage setup code".to_vec();
        image.extend_from_slice(&payload);
        image.extend_from_slice(b"trailing junk");
        assert_eq!(extract(&image).unwrap(), b"\x7fELF fake kernel");
        assert!(extract(b"no payload here").is_none());
    }

    #[test]
    fn cache_lives_in_the_target_dir() {
        let dir = cache_dir();
        assert!(dir.ends_with("scrambler-vmtest") || dir.starts_with(std::env::temp_dir()));
    }
}
