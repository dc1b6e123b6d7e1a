//! Checks every CNI plugin binary of the workspace must pass, run against the built binary
//! as a person or a runtime runs it. A plugin crate's integration
//! test runs them all with [`plugin_binary_tests!`](crate::plugin_binary_tests).

use scrambler_core::cni::MAX_CONF_BYTES;
use scrambler_core::result::SUPPORTED_VERSIONS;
use serde_json::Value;
use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `bin` with exactly `env` (nothing inherited), `args`, and `stdin` written from a
/// thread until it is written or the plugin closes its end.
pub fn run(bin: &Path, args: &[&str], env: &[(&[u8], &[u8])], stdin: &[u8]) -> Output {
    run_with_input(bin, args, env, |w| {
        let _ = w.write_all(stdin);
    })
}

fn run_with_input(
    bin: &Path,
    args: &[&str],
    env: &[(&[u8], &[u8])],
    feed: impl FnOnce(&mut std::process::ChildStdin) + Send,
) -> Output {
    let mut child = Command::new(bin)
        .args(args)
        .env_clear()
        .envs(
            env.iter()
                .map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    let mut input = child.stdin.take().expect("stdin");
    std::thread::scope(|s| {
        // dropping `input` when the feed ends closes the plugin's stdin
        s.spawn(move || feed(&mut input));
        child.wait_with_output().expect("wait for plugin")
    })
}

/// The CNI error object on stdout, checked to come with exit status 1.
pub fn error_of(out: &Output) -> Value {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a CNI error; stdout {} stderr {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "error is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `--help` and `--version` answer on stdout, and a run without `CNI_COMMAND` prints
/// `CNI <name> plugin v…` and the supported versions on stderr, all with status 0, as the
/// reference plugins' `skel` does.
pub fn assert_answers_a_person(bin: &Path, name: &str) {
    let about = format!("CNI {name} plugin v");
    let versions = format!(
        "CNI protocol versions supported: {}",
        SUPPORTED_VERSIONS.join(", ")
    );
    for arg in ["--help", "--version"] {
        let out = run(bin, &[arg], &[], b"");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{arg}: {:?}", out.status);
        assert!(text.starts_with(&about), "{arg}: {text}");
        assert!(text.contains(&versions), "{arg}: {text}");
        assert!(out.stderr.is_empty(), "{arg}");
    }
    let help = run(bin, &["--help"], &[], b"");
    assert!(String::from_utf8_lossy(&help.stdout).contains("CNI_COMMAND"));
    for env in [&[][..], &[(&b"CNI_COMMAND"[..], &b""[..])][..]] {
        let out = run(bin, &[], env, b"");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{:?}: {text}", out.status);
        assert!(out.stdout.is_empty(), "stdout must stay empty");
        assert!(
            text.starts_with(&about) && text.contains(&versions),
            "{text}"
        );
    }
}

/// A variable that is not UTF-8 and not `CNI_*` is ignored; a `CNI_*` one is code 4
/// naming it. `add_env` is a complete ADD environment, `conf` a valid conf for it.
pub fn assert_non_utf8_environment(bin: &Path, add_env: &[(&[u8], &[u8])], conf: &[u8]) {
    let version = run(
        bin,
        &[],
        &[(b"CNI_COMMAND", b"VERSION"), (b"FOO", b"\xff")],
        b"",
    );
    assert!(version.status.success(), "{version:?}");
    let v: Value = serde_json::from_slice(&version.stdout).expect("VERSION answer");
    assert_eq!(v["supportedVersions"].as_array().map(Vec::len), Some(7));
    for (var, value) in [
        (&b"CNI_ARGS"[..], &b"IP=\xff"[..]),
        (b"CNI_IFNAME", b"eth\xff"),
    ] {
        let mut env: Vec<(&[u8], &[u8])> =
            add_env.iter().filter(|(k, _)| *k != var).copied().collect();
        env.push((var, value));
        let e = error_of(&run(bin, &[], &env, conf));
        assert_eq!(e["code"], 4, "{e}");
        let name = String::from_utf8_lossy(var);
        assert!(e.to_string().contains(&*name), "{e} does not name {name}");
    }
}

/// A conf larger than 1 MiB is refused with code 6 after the plugin read at most a little
/// more than 1 MiB: the stream fed here never ends, so a plugin reading it all would hang.
pub fn assert_conf_is_capped(bin: &Path, env: &[(&[u8], &[u8])]) {
    let out = run_with_input(bin, &[], env, |w| {
        let chunk = vec![b' '; 64 * 1024];
        let mut written = 0usize;
        while w.write_all(&chunk).is_ok() {
            written += chunk.len();
        }
        assert!(
            written <= MAX_CONF_BYTES + 4 * chunk.len() + 1024 * 1024,
            "the plugin read {written} bytes"
        );
    });
    let e = error_of(&out);
    assert_eq!(e["code"], 6, "{e}");
    assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
}

/// A complete ADD environment whose netns does not exist (the checks never get that far).
pub fn add_env() -> Vec<(&'static [u8], &'static [u8])> {
    vec![
        (b"CNI_COMMAND", b"ADD"),
        (b"CNI_CONTAINERID", b"c1"),
        (b"CNI_NETNS", b"/var/run/netns/scrambler-no-such-pod"),
        (b"CNI_IFNAME", b"eth0"),
        (b"CNI_PATH", b"/usr/lib/cni"),
    ]
}

/// The tests of a plugin binary run by hand or by a careless environment: `--help`, no
/// `CNI_COMMAND`, variables that are not UTF-8 (a refused ADD leaves the conf's data
/// directory empty), a conf over 1 MiB. `$conf` makes a valid ADD conf whose state lives
/// under the directory it is given.
#[macro_export]
macro_rules! plugin_binary_tests {
    ($bin:expr, $name:expr, $conf:expr) => {
        #[test]
        fn help_version_and_no_command_print_the_about_line() {
            $crate::plugin::assert_answers_a_person(::std::path::Path::new($bin), $name);
        }

        #[test]
        fn non_utf8_variables_are_code_4_only_when_they_are_cni_ones() {
            let data = tempfile::tempdir().unwrap();
            let make: fn(&::std::path::Path) -> serde_json::Value = $conf;
            $crate::plugin::assert_non_utf8_environment(
                ::std::path::Path::new($bin),
                &$crate::plugin::add_env(),
                make(data.path()).to_string().as_bytes(),
            );
            let left: Vec<_> = ::std::fs::read_dir(data.path()).unwrap().collect();
            assert!(left.is_empty(), "a refused ADD left {left:?}");
        }

        #[test]
        fn a_conf_over_one_mib_is_code_6() {
            $crate::plugin::assert_conf_is_capped(
                ::std::path::Path::new($bin),
                &$crate::plugin::add_env(),
            );
        }
    };
}
