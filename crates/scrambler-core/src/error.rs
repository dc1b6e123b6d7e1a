//! One error type for every Scrambler crate.
//!
//! Each variant says which object and which operation failed, and maps to a CNI error
//! code (CNI SPEC, "Error"): 1–7 and 11 are the spec's well-known codes, 100 and up are
//! Scrambler's own. Error texts never contain key material.

use serde::Serialize;
use std::fmt;

/// Result alias used across Scrambler.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The well-known CNI error codes of the CNI specification, plus Scrambler's own (≥ 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[repr(u32)]
pub enum CniCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables (CNI_COMMAND, CNI_CONTAINERID, …).
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    Io = 5,
    /// 6: failed to decode content.
    Decode = 6,
    /// 7: invalid network config.
    InvalidConfig = 7,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 100: a netlink or kernel operation failed.
    Kernel = 100,
    /// 101: the address range is exhausted.
    RangeExhausted = 101,
    /// 102: an object (interface, address, lease) already exists / is in use.
    AlreadyExists = 102,
    /// 103: CHECK found the state differs from what was expected.
    CheckFailed = 103,
    /// 104: a dataplane (VPP, delegated plugin) failed.
    Dataplane = 104,
    /// 105: the running kernel or dataplane lacks a needed feature.
    Unsupported = 105,
    /// 106: a secret or key file is unusable.
    Secret = 106,
    /// 107: persistent state (lease store) is corrupt.
    Corrupt = 107,
}

impl CniCode {
    /// The numeric code as it appears in the CNI error JSON.
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// Every error Scrambler reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CNI version asked for is not one we speak.
    #[error("incompatible CNI version {requested}: supported are {supported}")]
    IncompatibleVersion {
        /// Version the caller asked for.
        requested: String,
        /// Comma-separated supported versions.
        supported: String,
    },
    /// A conf field holds a value we do not support.
    #[error("unsupported value in field {field}: {reason}")]
    UnsupportedField {
        /// The conf field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The container / network namespace / attachment does not exist.
    #[error("unknown container: {0}")]
    UnknownContainer(String),
    /// A CNI_* environment variable is missing or malformed.
    #[error("invalid environment variable {var}: {reason}")]
    InvalidEnvironment {
        /// Variable name.
        var: String,
        /// Why.
        reason: String,
    },
    /// An I/O operation on a named object failed.
    #[error("{op} {object}: {source}")]
    Io {
        /// What we were doing ("write lease", "open netns" …).
        op: &'static str,
        /// Which object (a path, an interface).
        object: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Input could not be decoded.
    #[error("decode {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: String,
        /// Parser message.
        reason: String,
    },
    /// The network configuration is invalid.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// A mesh (its nodes, names, addresses, CIDRs or key generations) is invalid.
    #[error("invalid mesh: {0}")]
    InvalidMesh(String),
    /// A transient condition; the runtime should retry.
    #[error("try again later: {0}")]
    TryAgainLater(String),
    /// A kernel (netlink) operation on an object failed.
    #[error("{op} {object}: {reason}")]
    Kernel {
        /// The operation ("add xfrm policy", "create veth" …).
        op: &'static str,
        /// The object it acted on.
        object: String,
        /// Kernel's answer (errno text).
        reason: String,
    },
    /// No free address left.
    #[error("no free address in {range}")]
    RangeExhausted {
        /// Range description.
        range: String,
    },
    /// An object already exists or is in use by someone else.
    #[error("{object} already exists: {reason}")]
    AlreadyExists {
        /// The object.
        object: String,
        /// Detail.
        reason: String,
    },
    /// CHECK found a difference.
    #[error("check {object}: {reason}")]
    CheckFailed {
        /// The object that differs.
        object: String,
        /// How it differs.
        reason: String,
    },
    /// A dataplane or delegated plugin failed.
    #[error("{dataplane}: {op}: {reason}")]
    Dataplane {
        /// Which dataplane / plugin.
        dataplane: String,
        /// What was being done.
        op: String,
        /// Its answer.
        reason: String,
    },
    /// A needed kernel/dataplane feature is missing.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A secret could not be used (never contains the secret itself).
    #[error("secret {object}: {reason}")]
    Secret {
        /// File or name of the secret.
        object: String,
        /// Why it is unusable.
        reason: String,
    },
    /// Persistent state is corrupt.
    #[error("corrupt {object}: {reason}")]
    Corrupt {
        /// The file.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// An error reported by a delegated CNI plugin, passed through with its own code.
    #[error("{plugin}: {msg}")]
    Delegated {
        /// Plugin name.
        plugin: String,
        /// Its code.
        code: u32,
        /// Its message.
        msg: String,
        /// Its details.
        details: String,
    },
}

impl Error {
    /// The CNI error code of this error.
    pub fn code(&self) -> u32 {
        use CniCode as C;
        let c = match self {
            Error::IncompatibleVersion { .. } => C::IncompatibleVersion,
            Error::UnsupportedField { .. } => C::UnsupportedField,
            Error::UnknownContainer(_) => C::UnknownContainer,
            Error::InvalidEnvironment { .. } => C::InvalidEnvironment,
            Error::Io { .. } => C::Io,
            Error::Decode { .. } => C::Decode,
            Error::InvalidConfig(_) | Error::InvalidMesh(_) => C::InvalidConfig,
            Error::TryAgainLater(_) => C::TryAgainLater,
            Error::Kernel { .. } => C::Kernel,
            Error::RangeExhausted { .. } => C::RangeExhausted,
            Error::AlreadyExists { .. } => C::AlreadyExists,
            Error::CheckFailed { .. } => C::CheckFailed,
            Error::Dataplane { .. } => C::Dataplane,
            Error::Unsupported(_) => C::Unsupported,
            Error::Secret { .. } => C::Secret,
            Error::Corrupt { .. } => C::Corrupt,
            Error::Delegated { code, .. } => return *code,
        };
        c.as_u32()
    }

    /// The CNI error object (`cniVersion`, `code`, `msg`, `details`) for this error.
    pub fn to_cni(&self, cni_version: &str) -> CniErrorJson {
        let (msg, details) = match self {
            Error::Delegated { msg, details, .. } => (msg.clone(), details.clone()),
            other => (other.short_msg(), other.to_string()),
        };
        CniErrorJson {
            cni_version: cni_version.to_string(),
            code: self.code(),
            msg,
            details,
        }
    }

    fn short_msg(&self) -> String {
        match self {
            Error::IncompatibleVersion { .. } => "incompatible CNI version".into(),
            Error::UnsupportedField { field, .. } => format!("unsupported field {field}"),
            Error::UnknownContainer(_) => "unknown container".into(),
            Error::InvalidEnvironment { var, .. } => format!("invalid environment variable {var}"),
            Error::Io { op, .. } => format!("failed to {op}"),
            Error::Decode { what, .. } => format!("failed to decode {what}"),
            Error::InvalidConfig(_) => "invalid network config".into(),
            Error::InvalidMesh(_) => "invalid mesh".into(),
            Error::TryAgainLater(_) => "try again later".into(),
            Error::Kernel { op, .. } => format!("failed to {op}"),
            Error::RangeExhausted { .. } => "no free address".into(),
            Error::AlreadyExists { object, .. } => format!("{object} already exists"),
            Error::CheckFailed { object, .. } => format!("check failed for {object}"),
            Error::Dataplane { dataplane, .. } => format!("{dataplane} failed"),
            Error::Unsupported(_) => "unsupported".into(),
            Error::Secret { .. } => "unusable secret".into(),
            Error::Corrupt { object, .. } => format!("corrupt {object}"),
            Error::Delegated { msg, .. } => msg.clone(),
        }
    }

    /// Helper: an I/O error on `object` during `op`.
    pub fn io(op: &'static str, object: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            op,
            object: object.to_string(),
            source,
        }
    }

    /// Helper: a kernel operation `op` on `object` failed with `reason`.
    pub fn kernel(op: &'static str, object: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Kernel {
            op,
            object: object.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Helper: invalid configuration.
    pub fn config(msg: impl fmt::Display) -> Self {
        Error::InvalidConfig(msg.to_string())
    }

    /// Helper: an invalid mesh.
    pub fn mesh(msg: impl fmt::Display) -> Self {
        Error::InvalidMesh(msg.to_string())
    }

    /// Helper: a decode failure of `what`.
    pub fn decode(what: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Decode {
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The CNI error result, as printed on stdout by a failing plugin.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CniErrorJson {
    /// The CNI version of the error object.
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer details.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec() {
        assert_eq!(Error::config("x").code(), 7);
        assert_eq!(Error::decode("stdin", "eof").code(), 6);
        assert_eq!(Error::UnknownContainer("c".into()).code(), 3);
        assert_eq!(Error::TryAgainLater("busy".into()).code(), 11);
        assert_eq!(
            Error::RangeExhausted {
                range: "10.0.0.0/30".into()
            }
            .code(),
            101
        );
    }

    #[test]
    fn error_json_has_spec_fields() {
        let j = Error::config("missing field \"ipam\"").to_cni("1.1.0");
        let v = serde_json::to_value(&j).unwrap();
        assert_eq!(v["code"], 7);
        assert_eq!(v["cniVersion"], "1.1.0");
        assert!(v["details"].as_str().unwrap().contains("ipam"));
    }
}
