//! Prints the Rust code generated from VPP `.api.json` files — the same code `build.rs`
//! generates for this crate.
//!
//! ```text
//! cargo run -p scrambler-vpp-api --example vpp-apigen              # crates/vpp-api/api
//! cargo run -p scrambler-vpp-api --example vpp-apigen -- DIR > out.rs
//! ```

#[path = "apigen.rs"]
#[allow(dead_code)]
mod apigen;

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("api"));
    let result = apigen::load_dir(&dir).and_then(|files| apigen::generate(&files));
    match result {
        Ok(code) => print!("{code}"),
        Err(e) => {
            eprintln!("vpp-apigen: {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
}
