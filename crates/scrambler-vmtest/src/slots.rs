//! Limits how many VMs run at once on the host (`SCRAMBLER_VM_JOBS`, default 1), across
//! threads and processes, with advisory file locks: TCG guests are CPU-bound, and
//! parallel boots only make every run slower and closer to its timeout.

use fs2::FileExt;
use scrambler_core::Error;
use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A held VM slot; released when dropped (or when the process dies).
pub(crate) struct Slot {
    _file: File,
}

/// Waits until one of `jobs` slots is free and takes it. Waiting time does not count
/// against a run's timeout.
pub(crate) fn acquire(jobs: u32) -> Result<Slot, Error> {
    let dir = slot_dir();
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create", dir.display(), e))?;
    let started = Instant::now();
    let mut announced = false;
    loop {
        for i in 0..jobs.max(1) {
            let path = dir.join(format!("slot-{i}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open", path.display(), e))?;
            if file.try_lock_exclusive().is_ok() {
                if announced {
                    eprintln!(
                        "scrambler-vmtest: got a VM slot after {:.1} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                return Ok(Slot { _file: file });
            }
        }
        if !announced {
            eprintln!(
                "scrambler-vmtest: waiting for a VM slot ({} busy; {} raises the limit)",
                jobs,
                crate::config::ENV_JOBS
            );
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn slot_dir() -> PathBuf {
    std::env::temp_dir().join(format!("scrambler-vmtest-{}", nix::unistd::geteuid()))
}
