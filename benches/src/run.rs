//! How a bench binary runs: full sizes under `cargo bench`, a quick pass under
//! `cargo test --benches`.

/// `cargo bench` passes `--bench`; `cargo test --benches` passes nothing.
pub fn quick() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// The mesh sizes to program: 100 and 1,000 peers, or 10 in a quick pass.
pub fn mesh_sizes() -> &'static [u32] {
    if quick() {
        &[10]
    } else {
        &[100, 1000]
    }
}

/// A two-thread tokio runtime.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
