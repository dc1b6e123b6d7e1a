//! Logging: tracing events go to the file the conf names in `"logFile"` (level
//! `"logLevel"`, default `info`), never to stdout (which carries only the CNI result) nor,
//! by default, to stderr.

use std::path::Path;
use tracing_subscriber::EnvFilter;

/// The `logFile` and `logLevel` of a conf, read leniently (the conf may be malformed; the
/// error about that is reported on stdout, not here).
pub fn log_target(stdin: &[u8]) -> Option<(std::path::PathBuf, String)> {
    let v: serde_json::Value = serde_json::from_slice(stdin).ok()?;
    let file = v.get("logFile")?.as_str().filter(|s| !s.is_empty())?;
    let level = v
        .get("logLevel")
        .and_then(|l| l.as_str())
        .unwrap_or("info")
        .to_string();
    Some((file.into(), level))
}

/// A subscriber appending to `file` at `level`; `None` when the file cannot be opened
/// (the plugin then runs without logs rather than failing the container).
pub fn file_subscriber(
    file: &Path,
    level: &str,
) -> Option<impl tracing::Subscriber + Send + Sync + 'static> {
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .ok()?;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    Some(
        tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .with_env_filter(filter)
            .finish(),
    )
}
