//! Generates the VPP message types from `api/*.api.json` into `$OUT_DIR/vpp_api.rs`.
//! The generator itself is `codegen/apigen.rs`; `cargo run -p scrambler-vpp-api --example
//! vpp-apigen` prints the same code for review.

#[path = "codegen/apigen.rs"]
#[allow(dead_code)]
mod apigen;

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("api");
    println!("cargo:rerun-if-changed=codegen/apigen.rs");
    println!("cargo:rerun-if-changed=api");
    let files = apigen::load_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for f in &files {
        println!("cargo:rerun-if-changed=api/{}.api.json", f.module);
    }
    let code = apigen::generate(&files).unwrap_or_else(|e| panic!("VPP API codegen: {e}"));
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("vpp_api.rs");
    std::fs::write(&out, code).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
