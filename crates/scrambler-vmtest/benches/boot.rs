//! Boot cost of one VM run: qemu start to power-off, running `/bin/true` as the "test
//! binary", for the PVH vmlinux boot against the plain bzImage boot measured in the same
//! run. Prints medians and their ratio. `cargo bench -p scrambler-vmtest --bench boot`
//! (set SCRAMBLER_VMTEST_BENCH_RUNS to change the number of boots per variant, default 3).

use scrambler_vmtest::{VmStatus, VmTest};
use std::time::Duration;

fn median_boot(runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let outcome = VmTest::new("boot-bench").binary("/bin/true").run();
            assert!(
                matches!(outcome.status, VmStatus::Exited(0)),
                "boot failed: {}\n{}",
                outcome.status,
                outcome.console
            );
            outcome.elapsed
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // cargo test --benches asks for a list; this bench has no tests
    }
    let runs = std::env::var("SCRAMBLER_VMTEST_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    // Edition 2021 test binary, single-threaded here: setting the variable is sound.
    std::env::set_var(scrambler_vmtest::ENV_PVH, "0");
    let bzimage = median_boot(runs);
    std::env::set_var(scrambler_vmtest::ENV_PVH, "1");
    let pvh = median_boot(runs);
    println!(
        "boot+poweroff (median of {runs}): bzImage {:.2} s, PVH vmlinux {:.2} s, ratio {:.2}",
        bzimage.as_secs_f64(),
        pvh.as_secs_f64(),
        bzimage.as_secs_f64() / pvh.as_secs_f64()
    );
}
