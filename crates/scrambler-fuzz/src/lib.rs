//! # scrambler-fuzz
//!
//! Bounded, deterministic fuzzing of the parsers that read input from outside (CNI confs,
//! IPAM lease files, the mesh file, VPP API messages, netlink replies, …), as ordinary
//! `cargo test` tests on stable Rust. A test-only dependency: no crate depends on it
//! outside `[dev-dependencies]`.
//!
//! A [`Target`] names a corpus directory kept in the repository (one input per file). Its
//! [`Target::run`]
//!
//! 1. replays every corpus file through the check closure, then
//! 2. runs a fixed number of generated cases ([proptest] with a fixed seed): corpus entries
//!    mutated byte-wise (bit flips, boundary integers, truncation, deletion, insertion,
//!    dictionary tokens, splices of two entries), JSON-aware for JSON targets (a value
//!    replaced by a boundary value or another node, a key renamed or removed, an element
//!    duplicated, a node wrapped), and random bytes.
//!
//! The check closure must not panic: it calls the parser and asserts that the outcome is
//! `Ok` or a clean error (of the expected class). A panic fails the test with the smallest
//! input proptest shrank it to, hex-encoded, ready to become a regression corpus file.
//!
//! `SCRAMBLER_FUZZ_CASES=N` runs N generated cases per target instead of each target's
//! default; `SCRAMBLER_FUZZ_SEED=<u64>` varies the otherwise fixed seed (for long runs).
#![warn(missing_docs)]

mod mutate;

use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Environment variable overriding the number of generated cases of every target.
pub const CASES_VAR: &str = "SCRAMBLER_FUZZ_CASES";
/// Environment variable changing the generator's seed.
pub const SEED_VAR: &str = "SCRAMBLER_FUZZ_SEED";

/// The shape of a target's input, which decides how it is mutated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Binary input (frames, netlink datagrams, text): byte-wise mutations, those that
    /// shift the bytes after them included.
    Bytes,
    /// Binary input whose meaning hangs on offsets (a memory image with pointers): byte-wise
    /// mutations in place, and truncation.
    Layout,
    /// JSON (or text): JSON-aware mutations where an entry parses, byte-wise ones too.
    Json,
}

/// One fuzz target: a corpus and how to mutate it.
#[derive(Debug, Clone)]
pub struct Target {
    name: String,
    corpus: PathBuf,
    shape: Shape,
    cases: u32,
    dictionary: Vec<Vec<u8>>,
    seeds: Vec<(String, Vec<u8>)>,
}

/// How many inputs a [`Target::run`] tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Corpus files (and built-in seeds) replayed.
    pub corpus: usize,
    /// Generated cases.
    pub generated: usize,
}

impl Report {
    /// Every input tried.
    pub fn total(&self) -> usize {
        self.corpus + self.generated
    }
}

impl Target {
    /// The target `name` of a crate whose manifest directory is `crate_dir`: its corpus is
    /// `crate_dir/fuzz/corpus/name/`; `cases` generated cases unless [`CASES_VAR`] says.
    pub fn new(crate_dir: &str, name: &str, shape: Shape, cases: u32) -> Target {
        Target {
            name: name.to_string(),
            corpus: Path::new(crate_dir).join("fuzz/corpus").join(name),
            shape,
            cases,
            dictionary: Vec::new(),
            seeds: Vec::new(),
        }
    }

    /// Adds tokens that mutations insert or overwrite with (field names, magic values,
    /// valid pointers of a synthetic segment, …).
    pub fn dictionary<I, T>(mut self, tokens: I) -> Target
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.dictionary
            .extend(tokens.into_iter().map(|t| t.as_ref().to_vec()));
        self
    }

    /// Adds an input built by the test itself (e.g. a synthetic segment), replayed and
    /// mutated like a corpus file.
    pub fn seed(mut self, name: &str, input: Vec<u8>) -> Target {
        self.seeds.push((name.to_string(), input));
        self
    }

    /// The corpus files (sorted by name) and the built-in seeds. Panics when the corpus
    /// directory is missing or empty: a target without inputs would test nothing.
    pub fn inputs(&self) -> Vec<(String, Vec<u8>)> {
        let dir = &self.corpus;
        let rd =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()));
        let mut files: Vec<(String, Vec<u8>)> = rd
            .map(|e| {
                let e = e.unwrap_or_else(|e| panic!("fuzz corpus {}: {e}", dir.display()));
                let p = e.path();
                let body = std::fs::read(&p)
                    .unwrap_or_else(|e| panic!("fuzz corpus file {}: {e}", p.display()));
                (e.file_name().to_string_lossy().into_owned(), body)
            })
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "fuzz corpus {} is empty: add real inputs of target {}",
            dir.display(),
            self.name
        );
        files.extend(self.seeds.iter().cloned());
        files
    }

    /// Replays the corpus, then runs the generated cases, calling `check` on each input.
    /// Panics (failing the test) when `check` panics, naming the corpus file or printing
    /// the shrunk generated input. Prints and returns how many inputs ran.
    pub fn run(&self, check: impl Fn(&[u8])) -> Report {
        let inputs = self.inputs();
        for (name, body) in &inputs {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(body))) {
                panic!(
                    "fuzz target {}: corpus entry {name} failed: {}",
                    self.name,
                    panic_text(&p)
                );
            }
        }
        let cases = cases_for(self.cases);
        let generated = AtomicUsize::new(0);
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases,
                failure_persistence: None,
                max_shrink_iters: 2000,
                ..Config::default()
            },
            rng(),
        );
        let bodies: Vec<Vec<u8>> = inputs.iter().map(|(_, b)| b.clone()).collect();
        let strategy = mutate::inputs(bodies, self.dictionary.clone(), self.shape);
        let outcome = runner.run(&strategy, |input| {
            generated.fetch_add(1, Ordering::Relaxed);
            catch_unwind(AssertUnwindSafe(|| check(&input)))
                .map_err(|p| TestCaseError::fail(panic_text(&p)))
        });
        if let Err(e) = outcome {
            panic!(
                "fuzz target {}: {e}\n(add the failing input to {} as a regression entry)",
                self.name,
                self.corpus.display()
            );
        }
        let report = Report {
            corpus: inputs.len(),
            generated: generated.into_inner(),
        };
        println!(
            "fuzz target {}: {} inputs ran ({} corpus, {} generated)",
            self.name,
            report.total(),
            report.corpus,
            report.generated
        );
        report
    }
}

/// `r`'s value, or `None` when it is an error whose CNI code is among `codes`; panics
/// (naming `what`) on an error of another class.
pub fn expect_codes<T>(what: &str, r: scrambler_core::Result<T>, codes: &[u32]) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(
                codes.contains(&e.code()),
                "{what}: code {} not among {codes:?}: {e}",
                e.code()
            );
            None
        }
    }
}

/// A scratch directory for harnesses that write their input to files, on tmpfs when there is
/// one: rewriting a file in place on a disk file system costs a writeback per case.
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("scrambler-fuzz")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap_or_else(|e| panic!("fuzz scratch directory: {e}"))
}

fn cases_for(default: u32) -> u32 {
    match std::env::var(CASES_VAR) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{CASES_VAR}={v:?} is not a number of cases")),
        Err(_) => default,
    }
}

fn rng() -> TestRng {
    let seed: u64 = match std::env::var(SEED_VAR) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={v:?} is not a u64")),
        Err(_) => 0x5c7a_b1e7,
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRng::from_seed(RngAlgorithm::XorShift, &bytes[..16])
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic without a message".into())
}
