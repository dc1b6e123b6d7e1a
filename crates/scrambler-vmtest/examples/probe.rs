//! Prints what the running kernel supports, as `kernel_has` sees it, and how long each
//! probe took: `cargo run -p scrambler-vmtest --example probe`.

use scrambler_vmtest::{kernel_has, Feature};
use std::time::Instant;

fn main() {
    for f in Feature::ALL {
        let t = Instant::now();
        let has = kernel_has(*f);
        println!("{f:?}: {has} ({:.1} ms)", t.elapsed().as_secs_f64() * 1e3);
    }
}
