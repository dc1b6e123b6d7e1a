//! Renders the per-run guest scripts: what to prepare in the guest root and which
//! command to run there.

use crate::initramfs::RunScripts;
use scrambler_core::Error;

/// Directory in the guest whose entries (`with_binary`) come first in PATH.
pub(crate) const GUEST_PATH_DIR: &str = "/run/scrambler-vm/path";
/// Busybox applets the host may lack (ping, nc, …), last in PATH.
pub(crate) const GUEST_FALLBACK_DIR: &str = "/run/scrambler-vm/fallback";
const GUEST_BUSYBOX: &str = "/run/scrambler-vm/fallback/busybox";

/// Status the guest reports when its own setup failed before the test could run.
pub(crate) const SETUP_FAILED: i32 = 125;

/// Directories that get a fresh, empty tmpfs in the guest.
const PRIVATE_TMP_DIRS: [&str; 2] = ["/tmp", "/var/tmp"];

/// Everything the guest needs to know about one run. Paths are absolute and the same in
/// the guest as on the host (the guest sees the host's root file system).
#[derive(Debug, Clone, Default)]
pub(crate) struct GuestPlan {
    /// Random token in the exit marker, so test output cannot fake it.
    pub nonce: String,
    /// Working directory of the test process.
    pub cwd: String,
    /// Program and its arguments.
    pub command: Vec<String>,
    /// Environment of the test process (nothing else is inherited).
    pub env: Vec<(String, String)>,
    /// Modules to load before the test (`modprobe -a`).
    pub modules: Vec<String>,
    /// (host path, guest path): copied.
    pub files: Vec<(String, String)>,
    /// (host path, guest path): bind-mounted.
    pub dirs: Vec<(String, String)>,
    /// Host paths made callable by file name (symlinked into the first PATH entry).
    pub binaries: Vec<String>,
}

/// The guest PATH: caller's binaries, the host's usual directories, busybox fallbacks.
pub(crate) fn guest_path() -> String {
    format!(
        "{GUEST_PATH_DIR}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{GUEST_FALLBACK_DIR}"
    )
}

/// Renders `plan` into the three scripts the initramfs carries.
pub(crate) fn render(plan: &GuestPlan) -> Result<RunScripts, Error> {
    for (name, value) in &plan.env {
        check_env(name, value)?;
    }
    Ok(RunScripts {
        env_sh: format!("SCRAMBLER_NONCE={}\n", sh_quote(&plan.nonce)),
        tmp_sh: tmp_script(&kept_tmp_entries(&host_paths(plan)), |p| {
            std::path::Path::new(p).is_dir()
        }),
        prepare_sh: prepare_script(plan),
        run_test_sh: run_test_script(plan),
    })
}

/// Every host path the run names: its working directory, program, binaries, the sources
/// of its files and directories, and environment values that are absolute host paths
/// (except the private tmp directories themselves, e.g. `TMPDIR=/tmp`: a place to write
/// in, not host content the run needs).
fn host_paths(plan: &GuestPlan) -> Vec<&str> {
    let mut paths = vec![plan.cwd.as_str()];
    paths.extend(plan.command.first().map(String::as_str));
    paths.extend(plan.binaries.iter().map(String::as_str));
    paths.extend(plan.files.iter().map(|(h, _)| h.as_str()));
    paths.extend(plan.dirs.iter().map(|(h, _)| h.as_str()));
    paths.extend(
        plan.env
            .iter()
            .map(|(_, v)| v.as_str())
            .filter(|v| v.starts_with('/') && std::path::Path::new(v).exists())
            .filter(|v| !PRIVATE_TMP_DIRS.contains(&v.trim_end_matches('/'))),
    );
    paths
}

/// The entries of the private tmp directories that `paths` lie in (`/tmp/x` for
/// `/tmp/x/y/z`), or a directory itself when a path is that directory: those stay as the
/// host has them.
fn kept_tmp_entries(paths: &[&str]) -> Vec<String> {
    let mut kept: Vec<String> = Vec::new();
    for p in paths {
        for root in PRIVATE_TMP_DIRS {
            let Ok(rest) = std::path::Path::new(p).strip_prefix(root) else {
                continue;
            };
            let entry = match rest.components().next() {
                None => root.to_string(),
                Some(std::path::Component::Normal(first)) => {
                    format!("{root}/{}", first.to_string_lossy())
                }
                Some(_) => continue,
            };
            if !kept.contains(&entry) {
                kept.push(entry);
            }
        }
    }
    kept
}

/// The script /init sources to mount the guest's private /tmp and /var/tmp (fresh tmpfs,
/// so the host's clutter is not there) with the `kept` entries bound back in from the
/// overlaid host root: a checkout or a program under /tmp stays reachable, and the guest's
/// writes there still stay in the guest. A directory that is itself kept gets no tmpfs.
fn tmp_script(kept: &[String], is_dir: impl Fn(&str) -> bool) -> String {
    let mut s = String::from("# scrambler-vmtest: private /tmp and /var/tmp (sourced by /init)\n");
    for (n, root) in PRIVATE_TMP_DIRS.iter().enumerate() {
        if kept.iter().any(|k| k == root) {
            continue;
        }
        // (stash in the initramfs root, the entry quoted, how to make a mount point for it)
        let entries: Vec<(String, String, &str)> = kept
            .iter()
            .filter(|k| k.starts_with(&format!("{root}/")))
            .enumerate()
            .map(|(i, k)| {
                let make = if is_dir(k) { "mkdir -p" } else { "touch" };
                (format!("/kept/{n}-{i}"), sh_quote(k), make)
            })
            .collect();
        s += &format!("if [ -d \"$N\"{} ]; then\n", sh_quote(root));
        for (stash, entry, make) in &entries {
            s += &format!(
                "    $B mkdir -p /kept && $B {make} {stash} && $B mount --bind \"$N\"{entry} {stash} || die \"keep \"{entry}\n"
            );
        }
        s += &format!(
            "    $B mount -t tmpfs -o mode=1777 tmp \"$N\"{root} || die \"mount {root}\"\n"
        );
        for (stash, entry, make) in &entries {
            s += &format!(
                "    $B {make} \"$N\"{entry} && $B mount --bind {stash} \"$N\"{entry} || die \"keep \"{entry}\n"
            );
        }
        s += "fi\n";
    }
    s
}

fn prepare_script(plan: &GuestPlan) -> String {
    let b = GUEST_BUSYBOX;
    let mut s =
        String::from("# scrambler-vmtest: prepare the guest root (runs chrooted)\nset -e\n");
    if !plan.modules.is_empty() {
        let mods: Vec<String> = plan.modules.iter().map(|m| sh_quote(m)).collect();
        let list = mods.join(" ");
        s += &format!(
            "for m in {list}; do /sbin/modprobe \"$m\" || echo \"scrambler-vmtest: modprobe $m failed\"; done\n"
        );
    }
    for (host, guest) in &plan.files {
        let (h, g) = (sh_quote(host), sh_quote(guest));
        s += &format!("{b} mkdir -p \"$({b} dirname {g})\"\n{b} cp -a {h} {g}\n");
    }
    for (host, guest) in &plan.dirs {
        let (h, g) = (sh_quote(host), sh_quote(guest));
        s += &format!("{b} mkdir -p {g}\n{b} mount --bind {h} {g}\n");
    }
    for bin in &plan.binaries {
        let name = bin.rsplit('/').next().unwrap_or(bin);
        s += &format!(
            "{b} ln -sf {} {}\n",
            sh_quote(bin),
            sh_quote(&format!("{GUEST_PATH_DIR}/{name}"))
        );
    }
    s
}

fn run_test_script(plan: &GuestPlan) -> String {
    let mut s = String::from("# scrambler-vmtest: run the test (chrooted)\n");
    s += &format!("cd {} || exit {SETUP_FAILED}\n", sh_quote(&plan.cwd));
    s += &format!("exec {GUEST_BUSYBOX} env -i");
    for (k, v) in &plan.env {
        s += &format!(" \\\n    {}", sh_quote(&format!("{k}={v}")));
    }
    for arg in &plan.command {
        s += &format!(" \\\n    {}", sh_quote(arg));
    }
    s.push('\n');
    s
}

fn check_env(name: &str, value: &str) -> Result<(), Error> {
    let valid_name = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name || value.contains('\0') {
        return Err(Error::InvalidEnvironment {
            var: name.into(),
            reason: "not a valid name, or the value contains NUL".into(),
        });
    }
    Ok(())
}

/// Quotes `s` for POSIX sh: single quotes, with embedded `'` as `'\''`.
pub(crate) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_shell() {
        let nasty = "a b'c\"$(echo x)`\\\n";
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote(nasty)))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), nasty);
    }

    #[test]
    fn run_script_clears_env_and_quotes_args() {
        let plan = GuestPlan {
            nonce: "n".into(),
            cwd: "/w d".into(),
            command: vec!["/t/bin".into(), "it's".into()],
            env: vec![("A".into(), "1 2".into())],
            ..Default::default()
        };
        let s = render(&plan).unwrap().run_test_sh;
        assert!(s.contains("cd '/w d'"));
        assert!(s.contains("env -i"));
        assert!(s.contains("'A=1 2'"));
        assert!(s.contains("'it'\\''s'"));
    }

    #[test]
    fn paths_under_tmp_keep_their_top_entry() {
        let kept = kept_tmp_entries(&[
            "/tmp/co/crates/x",
            "/tmp/co/target/debug/x",
            "/var/tmp/t/bin",
            "/usr/bin/ip",
            "/tmpfoo/x",
        ]);
        assert_eq!(kept, ["/tmp/co", "/var/tmp/t"]);
        assert_eq!(kept_tmp_entries(&["/tmp"]), ["/tmp"]);
    }

    #[test]
    fn tmp_script_binds_kept_entries_back_over_the_tmpfs() {
        let s = tmp_script(&["/tmp/co".into(), "/tmp/f".into()], |p| p == "/tmp/co");
        let lines: Vec<&str> = s.lines().map(str::trim).collect();
        let at = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle:?} not in\n{s}"))
        };
        let stash = at("$B mkdir -p /kept/0-0 && $B mount --bind \"$N\"'/tmp/co' /kept/0-0");
        let file = at("$B touch /kept/0-1 && $B mount --bind \"$N\"'/tmp/f' /kept/0-1");
        let tmpfs = at("mount -t tmpfs -o mode=1777 tmp \"$N\"/tmp ");
        let back = at("$B mkdir -p \"$N\"'/tmp/co' && $B mount --bind /kept/0-0 \"$N\"'/tmp/co'");
        assert!(stash < tmpfs && file < tmpfs && tmpfs < back, "{s}");
        assert!(s.contains("tmp \"$N\"/var/tmp "), "{s}");

        let whole = tmp_script(&["/tmp".into()], |_| true);
        assert!(!whole.contains("\"$N\"/tmp "), "{whole}");
        assert!(whole.contains("\"$N\"/var/tmp "), "{whole}");
    }

    #[test]
    fn bad_env_names_are_rejected() {
        let plan = GuestPlan {
            env: vec![("A=B".into(), "x".into())],
            ..Default::default()
        };
        assert!(render(&plan).is_err());
    }
}
