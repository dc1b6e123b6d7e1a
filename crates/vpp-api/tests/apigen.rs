//! The generator itself: reproducible output, and it copes with every `.api.json` of the VPP
//! build in `../shared/vpp/api` (when that directory is there).

#[path = "../codegen/apigen.rs"]
#[allow(dead_code)]
mod apigen;

use std::path::Path;

#[test]
fn output_is_reproducible() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("api");
    let a = apigen::generate(&apigen::load_dir(&dir).unwrap()).unwrap();
    let b = apigen::generate(&apigen::load_dir(&dir).unwrap()).unwrap();
    assert_eq!(a, b);
    assert!(a.contains("pub struct IpsecSadEntryAddV2 {"));
    assert!(a.contains("const NAME_CRC: &'static str = \"show_version_51077d14\";"));
}

#[test]
fn handles_every_api_file_of_the_vpp_build() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/vpp/api");
    assert!(
        shared.exists(),
        "{} is missing: this test reads the whole API tree of the project's VPP fixture",
        shared.display()
    );
    let mut n = 0;
    for sub in ["core", "plugins"] {
        let files = apigen::load_dir(&shared.join(sub)).unwrap();
        n += files.len();
        apigen::generate(&files).unwrap_or_else(|e| panic!("{sub}: {e}"));
    }
    assert!(n >= 50, "only {n} files");
}
