//! What a VM run produced, and the assertions tests make on it.

use scrambler_core::Error;
use std::fmt;
use std::time::Duration;

/// How a VM run ended.
#[derive(Debug)]
pub enum VmStatus {
    /// `SCRAMBLER_VM=skip`: nothing was booted.
    Skipped,
    /// The guest ran the test binary, which exited with this status (125: the guest's
    /// own setup failed before the test could start).
    Exited(i32),
    /// The run exceeded its timeout; qemu was killed.
    TimedOut(Duration),
    /// qemu ended without the guest reporting an exit status (kernel panic, qemu error).
    Crashed(String),
    /// The harness could not start the VM (no qemu, no kernel, …).
    Error(Error),
}

impl fmt::Display for VmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmStatus::Skipped => write!(f, "skipped ({}=skip)", crate::config::ENV_VM),
            VmStatus::Exited(0) => write!(f, "test binary exited with status 0"),
            VmStatus::Exited(code) if *code == crate::guest::SETUP_FAILED => {
                write!(f, "guest setup failed (status {code}; see console)")
            }
            VmStatus::Exited(code) => write!(f, "test binary exited with status {code}"),
            VmStatus::TimedOut(d) => write!(
                f,
                "timed out after {} s (raise {})",
                d.as_secs(),
                crate::config::ENV_TIMEOUT
            ),
            VmStatus::Crashed(why) => write!(f, "VM ended without an exit status: {why}"),
            VmStatus::Error(e) => write!(
                f,
                "could not run the VM: {e} (set {}=skip to skip VM tests)",
                crate::config::ENV_VM
            ),
        }
    }
}

/// The verdict libtest printed for one test in the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestResult {
    /// `... ok`
    Passed,
    /// `... FAILED`
    Failed,
    /// `... ignored`
    Ignored,
}

/// Result of one VM run: status, full console text, wall time.
#[derive(Debug)]
pub struct VmOutcome {
    /// What was run (the test filter), for messages.
    pub what: String,
    /// How the run ended.
    pub status: VmStatus,
    /// Serial console of the guest (kernel messages, test output), `\r` and escape
    /// sequences removed; also qemu's own stderr lines prefixed with `qemu: `.
    pub console: String,
    /// Wall time from qemu start to its exit (boot + tests + power-off).
    pub elapsed: Duration,
    /// The process id qemu ran as (none when it was not started), to check it is gone.
    pub qemu_pid: Option<u32>,
}

impl VmOutcome {
    pub(crate) fn skipped(what: &str) -> Self {
        VmOutcome {
            what: what.into(),
            status: VmStatus::Skipped,
            console: String::new(),
            elapsed: Duration::ZERO,
            qemu_pid: None,
        }
    }

    pub(crate) fn error(what: &str, e: Error) -> Self {
        VmOutcome {
            what: what.into(),
            status: VmStatus::Error(e),
            console: String::new(),
            elapsed: Duration::ZERO,
            qemu_pid: None,
        }
    }

    /// True when `SCRAMBLER_VM=skip` prevented the run.
    pub fn is_skipped(&self) -> bool {
        matches!(self.status, VmStatus::Skipped)
    }

    /// True when the test binary exited 0 in the guest and ran at least one test.
    pub fn is_success(&self) -> bool {
        matches!(self.status, VmStatus::Exited(0)) && self.tests_run().is_some_and(|n| n > 0)
    }

    /// How many tests libtest said it was running in the guest (`running N tests`).
    pub fn tests_run(&self) -> Option<usize> {
        self.console.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("running ")?;
            let (n, word) = rest.split_once(' ')?;
            (word == "test" || word == "tests").then(|| n.parse().ok())?
        })
    }

    /// libtest's verdict for `name` (the test function's name or its full path) in the guest.
    pub fn test_result(&self, name: &str) -> Option<TestResult> {
        self.verdict(name).map(|(result, _)| result)
    }

    /// [`test_result`](Self::test_result) with the reason libtest gave for an ignored test.
    fn verdict(&self, name: &str) -> Option<(TestResult, Option<&str>)> {
        self.verdicts().find_map(|(path, result, reason)| {
            (path == name || path.ends_with(&format!("::{name}"))).then_some((result, reason))
        })
    }

    /// The tests libtest reported as ignored in the guest, each with its reason (`ignored,
    /// <reason>`) if it gave one: `path` or `path (reason)`.
    pub fn ignored_tests(&self) -> Vec<String> {
        self.verdicts()
            .filter(|(_, result, _)| *result == TestResult::Ignored)
            .map(|(path, _, reason)| match reason {
                Some(why) => format!("{path} ({why})"),
                None => path.to_string(),
            })
            .collect()
    }

    /// Every `test <path> ... <verdict>` line of the console: path, verdict, and the
    /// reason after `ignored, ` if any.
    fn verdicts(&self) -> impl Iterator<Item = (&str, TestResult, Option<&str>)> {
        self.console.lines().filter_map(|l| {
            let rest = l.trim().strip_prefix("test ")?;
            let (path, verdict) = rest.split_once(" ... ")?;
            let result = match verdict.split([',', ' ']).next()? {
                "ok" => TestResult::Passed,
                "FAILED" => TestResult::Failed,
                "ignored" => TestResult::Ignored,
                _ => return None,
            };
            let reason = verdict.strip_prefix("ignored, ").map(str::trim);
            Some((path, result, reason))
        })
    }

    /// Returns if the run succeeded and no test in it was ignored; prints a loud notice and
    /// returns if it was skipped (`SCRAMBLER_VM=skip`); panics with the reason and the end
    /// of the console otherwise (naming the ignored tests: an ignored test did not pass).
    #[track_caller]
    pub fn assert_success(&self) {
        if self.is_skipped() {
            announce_skip(&self.what);
            return;
        }
        let ignored = self.ignored_tests();
        if self.is_success() && ignored.is_empty() {
            return;
        }
        let why = match (&self.status, self.tests_run()) {
            (VmStatus::Exited(0), n) if n.unwrap_or(0) == 0 => {
                format!("the filter {:?} matched no test in the guest", self.what)
            }
            (VmStatus::Exited(0), _) => format!(
                "the guest ignored {} test(s), which therefore did not pass: {}",
                ignored.len(),
                ignored.join(", ")
            ),
            (status, _) => status.to_string(),
        };
        panic!(
            "VM run of {:?} failed after {:.1} s: {why}\n--- end of guest console ---\n{}",
            self.what,
            self.elapsed.as_secs_f64(),
            tail(&self.console, 80)
        );
    }

    /// Like [`assert_success`](Self::assert_success) for one test of a run that ran
    /// several: passes if libtest reported `name` as ok; panics if it failed, was ignored
    /// (it did not pass) or reported nothing.
    #[track_caller]
    pub fn assert_test_passed(&self, name: &str) {
        if self.is_skipped() {
            announce_skip(name);
            return;
        }
        match self.verdict(name) {
            Some((TestResult::Passed, _)) => {}
            Some((TestResult::Ignored, reason)) => panic!(
                "{name} was ignored in the VM ({}), so it did not pass",
                reason.unwrap_or("no reason given")
            ),
            Some((TestResult::Failed, _)) => panic!(
                "{name} failed in the VM:\n{}",
                failure_section(&self.console, name).unwrap_or_else(|| tail(&self.console, 80))
            ),
            None => panic!(
                "{name} did not report a result in the VM run of {:?} ({}); \
                 is it selected by that filter?\n--- end of guest console ---\n{}",
                self.what,
                self.status,
                tail(&self.console, 80)
            ),
        }
    }
}

fn announce_skip(what: &str) {
    eprintln!(
        "\n!!! SKIPPED {what}: it needs a VM and {}=skip is set !!!\n",
        crate::config::ENV_VM
    );
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// libtest's captured output of a failed test: from `---- <path> stdout ----` to the next
/// section.
fn failure_section(console: &str, name: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in console.lines() {
        let t = line.trim();
        if let Some(path) = t
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            inside = path == name || path.ends_with(&format!("::{name}"));
        } else if inside && (t == "failures:" || t.starts_with("test result:")) {
            inside = false;
        }
        if inside {
            out.push(line);
        }
    }
    (!out.is_empty()).then(|| out.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONSOLE: &str = "\
running 3 tests
test tests::vm_a ... ok
test tests::vm_b ... FAILED
test vm_c ... ignored, needs root

failures:

---- tests::vm_b stdout ----
thread 'tests::vm_b' panicked at src/x.rs:1:1:
boom

failures:
    tests::vm_b

test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out
";

    fn outcome(status: VmStatus) -> VmOutcome {
        VmOutcome {
            what: "vm_".into(),
            status,
            console: CONSOLE.into(),
            elapsed: Duration::from_secs(1),
            qemu_pid: None,
        }
    }

    #[test]
    fn parses_libtest_verdicts() {
        let o = outcome(VmStatus::Exited(101));
        assert_eq!(o.tests_run(), Some(3));
        assert_eq!(o.test_result("vm_a"), Some(TestResult::Passed));
        assert_eq!(o.test_result("tests::vm_b"), Some(TestResult::Failed));
        assert_eq!(o.test_result("vm_c"), Some(TestResult::Ignored));
        assert_eq!(o.test_result("vm_d"), None);
        assert_eq!(o.test_result("a"), None);
        let section = failure_section(CONSOLE, "vm_b").unwrap();
        assert!(section.contains("boom"));
        assert!(!section.contains("test result"));
    }

    #[test]
    fn success_needs_exit_zero_and_some_tests() {
        assert!(outcome(VmStatus::Exited(0)).is_success());
        assert!(!outcome(VmStatus::Exited(1)).is_success());
        let mut none = outcome(VmStatus::Exited(0));
        none.console = "running 0 tests\n".into();
        assert!(!none.is_success());
    }

    #[test]
    #[should_panic(expected = "matched no test")]
    fn empty_filter_match_fails_loudly() {
        let mut none = outcome(VmStatus::Exited(0));
        none.console = "running 0 tests\n".into();
        none.assert_success();
    }

    #[test]
    fn skipped_runs_pass_and_one_test_can_be_checked() {
        VmOutcome::skipped("x").assert_success();
        outcome(VmStatus::Exited(101)).assert_test_passed("vm_a");
    }

    #[test]
    #[should_panic(expected = "vm_c was ignored in the VM (needs root), so it did not pass")]
    fn an_ignored_test_did_not_pass() {
        outcome(VmStatus::Exited(0)).assert_test_passed("vm_c");
    }

    #[test]
    #[should_panic(
        expected = "the guest ignored 1 test(s), which therefore did not pass: vm_c (needs root)"
    )]
    fn a_run_with_an_ignored_test_did_not_succeed() {
        let mut run = outcome(VmStatus::Exited(0));
        run.console = run.console.replace("test tests::vm_b ... FAILED\n", "");
        assert_eq!(run.ignored_tests(), vec!["vm_c (needs root)".to_string()]);
        run.assert_success();
    }

    #[test]
    #[should_panic(expected = "boom")]
    fn failed_test_shows_its_output() {
        outcome(VmStatus::Exited(101)).assert_test_passed("vm_b");
    }
}
