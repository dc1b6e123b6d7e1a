//! A minimal writer for the `newc` cpio format the kernel unpacks as an initramfs.
//!
//! Only what an initramfs needs: directories, regular files and symlinks, all owned by
//! root. Several archives may be concatenated; the kernel unpacks them in order, later
//! entries overriding earlier ones.

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Builds one `newc` archive in memory.
pub(crate) struct CpioWriter {
    out: Vec<u8>,
    next_ino: u32,
}

impl CpioWriter {
    /// An empty archive.
    pub(crate) fn new() -> Self {
        CpioWriter {
            out: Vec::new(),
            next_ino: 1,
        }
    }

    /// Adds a directory (`path` without leading `/`).
    pub(crate) fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, 2, &[]);
    }

    /// Adds a regular file with permission bits `perm` (e.g. `0o755`).
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data);
    }

    /// Adds a symlink at `path` pointing to `target`.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, target.as_bytes());
    }

    /// Adds a character device node (e.g. `dev/console`, 5:1).
    pub(crate) fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry_with_rdev(path, S_IFCHR | (perm & 0o7777), 1, &[], (major, minor));
    }

    /// Writes the trailer and returns the archive bytes.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.next_ino = 0;
        self.entry(TRAILER, 0, 1, &[]);
        self.out
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) {
        self.entry_with_rdev(name, mode, nlink, data, (0, 0));
    }

    fn entry_with_rdev(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) {
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(MAGIC.as_bytes());
        for f in fields {
            self.out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
        self.out.extend_from_slice(data);
        self.pad4();
    }

    fn pad4(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_aligned_and_trailer_ends_the_archive() {
        let mut w = CpioWriter::new();
        w.dir("bin");
        w.file("bin/x", 0o755, b"hello");
        w.symlink("bin/y", "x");
        let a = w.finish();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn system_cpio_lists_our_archive() {
        let Ok(cpio) = which("cpio") else { return };
        let mut w = CpioWriter::new();
        w.dir("d");
        w.file("d/f", 0o644, b"abc");
        w.symlink("d/l", "f");
        let a = w.finish();
        let mut child = std::process::Command::new(cpio)
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&a).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "d\nd/f\nd/l\n");
    }

    fn which(name: &str) -> Result<std::path::PathBuf, ()> {
        ["/usr/bin", "/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(name))
            .find(|p| p.exists())
            .ok_or(())
    }
}
