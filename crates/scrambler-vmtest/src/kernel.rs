//! The guest kernel: which image to boot and which of its modules the initramfs needs.

use scrambler_core::Error;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// A bootable kernel image with its modules tree.
#[derive(Debug, Clone)]
pub(crate) struct GuestKernel {
    /// The bzImage (`/boot/vmlinuz-<version>`).
    pub image: PathBuf,
    /// `/lib/modules/<version>`.
    pub modules_dir: PathBuf,
}

impl GuestKernel {
    /// `explicit` (from `SCRAMBLER_VM_KERNEL`) or the newest `/boot/vmlinuz-*` whose
    /// modules are installed.
    pub(crate) fn find(explicit: Option<&Path>) -> Result<Self, Error> {
        match explicit {
            Some(image) => Self::from_image(image),
            None => Self::newest_in(Path::new("/boot"), Path::new("/lib/modules")),
        }
    }

    fn from_image(image: &Path) -> Result<Self, Error> {
        let version = image
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .ok_or_else(|| Error::InvalidEnvironment {
                var: crate::config::ENV_KERNEL.into(),
                reason: format!("{} is not named vmlinuz-<version>", image.display()),
            })?;
        let kernel = GuestKernel {
            image: image.to_path_buf(),
            modules_dir: Path::new("/lib/modules").join(version),
        };
        kernel.check()?;
        Ok(kernel)
    }

    fn newest_in(boot: &Path, modules: &Path) -> Result<Self, Error> {
        let entries = std::fs::read_dir(boot).map_err(|e| Error::io("list", boot.display(), e))?;
        let mut versions: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_owned))
            .filter(|v| modules.join(v).join("modules.dep").is_file())
            .collect();
        versions.sort_by_key(|v| version_key(v));
        let version = versions.pop().ok_or_else(|| {
            Error::Unsupported(format!(
                "no {}/vmlinuz-<ver> with {}/<ver>/modules.dep: install linux-image-amd64 \
                 (or set {})",
                boot.display(),
                modules.display(),
                crate::config::ENV_KERNEL
            ))
        })?;
        let kernel = GuestKernel {
            image: boot.join(format!("vmlinuz-{version}")),
            modules_dir: modules.join(&version),
        };
        kernel.check()?;
        Ok(kernel)
    }

    fn check(&self) -> Result<(), Error> {
        std::fs::File::open(&self.image)
            .map_err(|e| Error::io("open kernel image", self.image.display(), e))?;
        let dep = self.modules_dir.join("modules.dep");
        std::fs::metadata(&dep).map_err(|e| Error::io("read", dep.display(), e))?;
        Ok(())
    }

    /// The module files needed to load `wanted` (dependencies first, each once), skipping
    /// modules built into the kernel.
    pub(crate) fn load_order(&self, wanted: &[&str]) -> Result<Vec<PathBuf>, Error> {
        let dep_path = self.modules_dir.join("modules.dep");
        let deps = std::fs::read_to_string(&dep_path)
            .map_err(|e| Error::io("read", dep_path.display(), e))?;
        let builtin_path = self.modules_dir.join("modules.builtin");
        let builtin = std::fs::read_to_string(&builtin_path).unwrap_or_default();
        let graph = ModuleGraph::parse(&deps);
        let builtin: HashSet<String> = builtin.lines().map(module_name).collect();
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in wanted {
            let name = normalize(name);
            if builtin.contains(&name) {
                continue;
            }
            let rel = graph.path_of(&name).ok_or_else(|| {
                Error::Unsupported(format!(
                    "kernel module {name} not in {} (and not built in)",
                    dep_path.display()
                ))
            })?;
            graph.visit(rel, &mut seen, &mut order);
        }
        Ok(order
            .into_iter()
            .map(|rel| self.modules_dir.join(rel))
            .collect())
    }
}

/// modules.dep as a graph: relative module path -> its dependencies' paths.
struct ModuleGraph<'a> {
    deps: HashMap<&'a str, Vec<&'a str>>,
    by_name: HashMap<String, &'a str>,
}

impl<'a> ModuleGraph<'a> {
    fn parse(text: &'a str) -> Self {
        let mut deps = HashMap::new();
        let mut by_name = HashMap::new();
        for line in text.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            by_name.insert(module_name(module), module);
            deps.insert(module, rest.split_whitespace().collect());
        }
        ModuleGraph { deps, by_name }
    }

    fn path_of(&self, name: &str) -> Option<&'a str> {
        self.by_name.get(name).copied()
    }

    /// Depth-first: a module's dependencies (modprobe loads the listed ones last-first)
    /// before the module itself.
    fn visit(&self, module: &'a str, seen: &mut HashSet<&'a str>, order: &mut Vec<&'a str>) {
        if !seen.insert(module) {
            return;
        }
        for dep in self.deps.get(module).into_iter().flatten().rev() {
            self.visit(dep, seen, order);
        }
        order.push(module);
    }
}

/// `kernel/fs/9p/9p.ko.xz` -> `9p`; dashes become underscores like modprobe does.
pub(crate) fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalize(stem)
}

fn normalize(name: &str) -> String {
    name.trim().replace('-', "_")
}

/// Orders `6.1.0-9-amd64` before `6.1.0-10-amd64`.
fn version_key(v: &str) -> Vec<(u64, String)> {
    v.split(['.', '-', '+', '_'])
        .map(|part| (part.parse().unwrap_or(0), part.to_owned()))
        .collect()
}

/// A module file's contents, decompressed if it is stored as `.ko.xz`, `.ko.zst` or
/// `.ko.gz` (busybox insmod wants a plain ELF object).
pub(crate) fn module_bytes(path: &Path) -> Result<Vec<u8>, Error> {
    let name = path.to_string_lossy();
    let tool: Option<&[&str]> = if name.ends_with(".ko.xz") {
        Some(&["xz", "-dc"])
    } else if name.ends_with(".ko.zst") {
        Some(&["zstd", "-dcq"])
    } else if name.ends_with(".ko.gz") {
        Some(&["gzip", "-dc"])
    } else {
        None
    };
    let Some(tool) = tool else {
        return std::fs::read(path).map_err(|e| Error::io("read kernel module", path.display(), e));
    };
    let out = std::process::Command::new(tool[0])
        .args(&tool[1..])
        .arg(path)
        .output()
        .map_err(|e| Error::io("run decompressor for", path.display(), e))?;
    if !out.status.success() {
        return Err(Error::Unsupported(format!(
            "{} could not decompress {}",
            tool[0],
            path.display()
        )));
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/netfs/netfs.ko:
kernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko
kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko
kernel/net/9p/9pnet.ko:
kernel/drivers/char/hw_random/virtio-rng.ko.xz: kernel/drivers/virtio/virtio.ko
";

    #[test]
    fn dependencies_come_first_and_once() {
        let g = ModuleGraph::parse(DEP);
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        g.visit(g.path_of("9p").unwrap(), &mut seen, &mut order);
        g.visit(g.path_of("fscache").unwrap(), &mut seen, &mut order);
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(names, ["netfs", "fscache", "9pnet", "9p"]);
    }

    #[test]
    fn names_drop_suffix_and_dashes() {
        assert_eq!(
            module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz"),
            "virtio_rng"
        );
        assert_eq!(module_name("kernel/net/9p/9pnet_virtio.ko"), "9pnet_virtio");
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["6.1.0-10-amd64", "6.1.0-9-amd64", "5.10.0-30-amd64"];
        v.sort_by_key(|x| version_key(x));
        assert_eq!(v, ["5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64"]);
    }
}
