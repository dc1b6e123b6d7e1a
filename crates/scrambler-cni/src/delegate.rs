//! Delegation: executing another CNI plugin as the spec's delegation protocol says — found
//! by name on `CNI_PATH`, run with the caller's environment (with `CNI_COMMAND` set) and
//! the network configuration on stdin; its stdout is the result, or an error object whose
//! code is passed through ([`Error::Delegated`]).
//!
//! When a delegate rejects the conf's `cniVersion` (code 1), the conf is retried at the
//! newest version both sides speak, found with the delegate's `VERSION`; its result is
//! read in whatever version it answers (0.1.0 through 1.1.0, see
//! [`scrambler_core::CniResult::from_json`]).
//!
//! [`DelegatedIpam`] wraps an IPAM plugin (host-local, static, dhcp, …) as an
//! [`scrambler_core::Ipam`].

use async_trait::async_trait;
use scrambler_core::result::SUPPORTED_VERSIONS;

pub use scrambler_core::result::parse_version;
use scrambler_core::{AllocRequest, AttachmentId, CniResult, Error, Ipam, Lease, Result};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// Finds the plugin executable `name` in the directories of `CNI_PATH`.
pub fn find_plugin(name: &str, cni_path: &[PathBuf]) -> Result<PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::config(format!(
            "plugin type {name:?} is not a plain file name"
        )));
    }
    for dir in cni_path {
        let p = dir.join(name);
        if let Ok(md) = std::fs::metadata(&p) {
            if md.is_file() && md.permissions().mode() & 0o111 != 0 {
                return Ok(p);
            }
        }
    }
    Err(Error::config(format!(
        "plugin {name:?} not found in CNI_PATH ({})",
        cni_path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    )))
}

/// One plugin to delegate to.
#[derive(Debug, Clone)]
pub struct Delegate {
    /// Plugin name (its `type`).
    pub name: String,
    /// Executable.
    pub path: PathBuf,
    /// Environment passed to it (the caller's; `CNI_COMMAND` is replaced per call).
    pub vars: Vec<(String, String)>,
}

impl Delegate {
    /// The plugin `name` found on `cni_path`, to be run with `vars`.
    pub fn find(name: &str, cni_path: &[PathBuf], vars: Vec<(String, String)>) -> Result<Self> {
        Ok(Delegate {
            name: name.to_string(),
            path: find_plugin(name, cni_path)?,
            vars,
        })
    }

    /// Runs `command` with `conf` on stdin; returns its stdout parsed as JSON (`None` when
    /// it printed nothing), or its error.
    pub async fn exec(&self, command: &str, conf: &Value) -> Result<Option<Value>> {
        let stdin = serde_json::to_vec(conf).map_err(|e| Error::decode("delegate conf", e))?;
        exec_plugin(&self.name, &self.path, command, &self.vars, &stdin).await
    }

    /// Like [`Delegate::exec`], retrying at a version the delegate speaks when it rejects
    /// the conf's.
    pub async fn exec_negotiated(&self, command: &str, conf: &Value) -> Result<Option<Value>> {
        match self.exec(command, conf).await {
            Err(Error::Delegated { code: 1, .. }) => {
                let wanted = conf.get("cniVersion").and_then(Value::as_str).unwrap_or("");
                let version = self.best_version(wanted).await?;
                tracing::debug!(plugin = %self.name, %version, "retrying delegate at a lower CNI version");
                let mut conf = conf.clone();
                conf["cniVersion"] = Value::from(version);
                self.exec(command, &conf).await
            }
            other => other,
        }
    }

    /// The versions the delegate reports with `VERSION`.
    pub async fn versions(&self) -> Result<Vec<String>> {
        let out = self
            .exec(
                "VERSION",
                &serde_json::json!({"cniVersion": scrambler_core::result::CURRENT_VERSION}),
            )
            .await?
            .ok_or_else(|| self.dataplane_err("VERSION", "printed nothing"))?;
        let list = out
            .get("supportedVersions")
            .and_then(Value::as_array)
            .ok_or_else(|| self.dataplane_err("VERSION", "no supportedVersions"))?;
        Ok(list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }

    /// True when the delegate speaks `version`.
    pub async fn supports(&self, version: &str) -> Result<bool> {
        Ok(self.versions().await?.iter().any(|v| v == version))
    }

    /// The newest version ≤ `wanted` that both we and the delegate speak.
    async fn best_version(&self, wanted: &str) -> Result<String> {
        let theirs = self.versions().await?;
        let w = parse_version(wanted);
        SUPPORTED_VERSIONS
            .iter()
            .rev()
            .find(|v| parse_version(v) <= w && theirs.iter().any(|t| t == *v))
            .map(|v| v.to_string())
            .ok_or_else(|| Error::IncompatibleVersion {
                requested: wanted.to_string(),
                supported: format!("{} speaks {}", self.name, theirs.join(", ")),
            })
    }

    fn dataplane_err(&self, op: &str, reason: impl Into<String>) -> Error {
        Error::Dataplane {
            dataplane: self.name.clone(),
            op: op.to_string(),
            reason: reason.into(),
        }
    }
}

/// A delegate's error object, read leniently: older plugins omit `cniVersion` (and
/// sometimes `details`).
#[derive(Debug, serde::Deserialize)]
struct DelegateError {
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

/// Executes the plugin at `path` for `command` with environment `vars` and `stdin`.
pub async fn exec_plugin(
    name: &str,
    path: &Path,
    command: &str,
    vars: &[(String, String)],
    stdin: &[u8],
) -> Result<Option<Value>> {
    let mut cmd = tokio::process::Command::new(path);
    cmd.env_clear()
        .envs(
            vars.iter()
                .filter(|(k, _)| k != "CNI_COMMAND")
                .map(|(k, v)| (k, v)),
        )
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("execute plugin", path.display(), e))?;
    if let Some(mut sin) = child.stdin.take() {
        match sin.write_all(stdin).await {
            // a plugin may answer without reading its stdin (the reference plugins' VERSION
            // does) and be gone before the write: its exit status and output decide
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            res => res.map_err(|e| Error::io("write stdin of plugin", path.display(), e))?,
        }
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::io("wait for plugin", path.display(), e))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.trim().is_empty() {
        tracing::debug!(plugin = name, command, stderr = %stderr.trim(), "delegate stderr");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.success() {
        if stdout.trim().is_empty() {
            return Ok(None);
        }
        return serde_json::from_str(&stdout)
            .map(Some)
            .map_err(|e| Error::decode(format!("output of {name} {command}"), e));
    }
    match serde_json::from_str::<DelegateError>(&stdout) {
        Ok(err) => Err(Error::Delegated {
            plugin: name.to_string(),
            code: err.code,
            msg: err.msg,
            details: err.details,
        }),
        Err(_) => Err(Error::Dataplane {
            dataplane: name.to_string(),
            op: command.to_string(),
            reason: format!(
                "exited with {}: {}",
                out.status,
                if stdout.trim().is_empty() {
                    stderr.trim()
                } else {
                    stdout.trim()
                }
            ),
        }),
    }
}

/// An IPAM plugin run by delegation, as an [`Ipam`].
///
/// It holds the network configuration of the invocation (the delegate receives the same
/// conf as the plugin, as the spec says), so `allocate`, `release` and `check` act on the
/// attachment of that invocation.
#[derive(Debug, Clone)]
pub struct DelegatedIpam {
    delegate: Delegate,
    conf: Value,
}

impl DelegatedIpam {
    /// An IPAM delegate running `delegate` with `conf` on stdin.
    pub fn new(delegate: Delegate, conf: Value) -> Self {
        DelegatedIpam { delegate, conf }
    }

    /// The delegate.
    pub fn delegate(&self) -> &Delegate {
        &self.delegate
    }

    /// STATUS of the delegate; delegates that predate CNI 1.1 only have to exist.
    pub async fn status(&self) -> Result<()> {
        if self.delegate.supports("1.1.0").await? {
            self.delegate.exec("STATUS", &self.conf).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Ipam for DelegatedIpam {
    async fn allocate(&self, _req: &AllocRequest) -> Result<CniResult> {
        let out = self
            .delegate
            .exec_negotiated("ADD", &self.conf)
            .await?
            .ok_or_else(|| self.delegate.dataplane_err("ADD", "printed no result"))?;
        CniResult::from_json(&out)
    }

    async fn release(&self, _id: &AttachmentId) -> Result<()> {
        self.delegate
            .exec_negotiated("DEL", &self.conf)
            .await
            .map(|_| ())
    }

    async fn check(&self, _id: &AttachmentId) -> Result<Vec<Lease>> {
        self.delegate.exec_negotiated("CHECK", &self.conf).await?;
        Ok(Vec::new())
    }

    async fn gc(&self, _valid: &[AttachmentId]) -> Result<Vec<Lease>> {
        // the conf already carries cni.dev/valid-attachments
        if self.delegate.supports("1.1.0").await? {
            self.delegate.exec("GC", &self.conf).await?;
        } else {
            tracing::info!(plugin = %self.delegate.name, "delegate predates CNI 1.1: no GC");
        }
        Ok(Vec::new())
    }

    async fn list(&self) -> Result<Vec<Lease>> {
        Err(Error::Unsupported(format!(
            "listing leases of delegated IPAM {}",
            self.delegate.name
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_are_found_only_by_plain_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fake");
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = vec![PathBuf::from("/nonexistent"), dir.path().to_path_buf()];
        assert_eq!(find_plugin("fake", &path).unwrap(), p);
        assert_eq!(find_plugin("../fake", &path).unwrap_err().code(), 7);
        assert_eq!(find_plugin("missing", &path).unwrap_err().code(), 7);
    }

    #[tokio::test]
    async fn errors_of_delegates_pass_through_with_their_code() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("failing");
        std::fs::write(
            &p,
            "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"busy\",\"details\":\"come back\"}'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = Delegate::find("failing", &[dir.path().to_path_buf()], vec![]).unwrap();
        let e = d.exec("ADD", &serde_json::json!({})).await.unwrap_err();
        assert_eq!(e.code(), 11);
        assert_eq!(e.to_cni("1.0.0").msg, "busy");
    }
}
