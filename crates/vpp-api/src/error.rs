//! Errors of the VPP client, and VPP's `retval` codes by name.

use std::path::PathBuf;

/// What went wrong talking to VPP.
#[derive(Debug, thiserror::Error)]
pub enum VppError {
    /// The socket could not be opened, read or written.
    #[error("VPP API socket {path}: {op}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The connection is closed (VPP went away or the client was closed).
    #[error("VPP API socket {path}: connection closed while waiting for {message}")]
    Closed {
        /// Socket path.
        path: PathBuf,
        /// The message whose reply was awaited.
        message: &'static str,
    },
    /// No reply in time.
    #[error("VPP did not answer {message} within {secs:.1}s")]
    Timeout {
        /// The request.
        message: &'static str,
        /// The timeout.
        secs: f64,
    },
    /// The running VPP has the message with a different definition.
    #[error(
        "VPP message {message} has CRC {theirs:#010x} in the running VPP, but this client was \
         built for CRC {ours:#010x}: the VPP version does not match the .api.json this client \
         was generated from"
    )]
    CrcMismatch {
        /// Message name.
        message: String,
        /// The CRC this client was generated for.
        ours: u32,
        /// The CRC the running VPP announced.
        theirs: u32,
    },
    /// The running VPP does not know the message at all (plugin not loaded?).
    #[error("VPP does not know message {message} (CRC {crc:#010x}); is its plugin loaded?")]
    UnknownMessage {
        /// Message name.
        message: String,
        /// Our CRC.
        crc: u32,
    },
    /// VPP answered with a negative retval.
    #[error("VPP {message} failed: {} ({retval})", retval_name(*retval).unwrap_or("unknown VPP error"))]
    Retval {
        /// The request.
        message: &'static str,
        /// VPP's return value.
        retval: i32,
    },
    /// A message could not be encoded or a reply decoded.
    #[error("VPP message {message}: {source}")]
    Codec {
        /// The message.
        message: &'static str,
        /// The codec error.
        #[source]
        source: crate::codec::CodecError,
    },
    /// VPP broke the protocol (unexpected reply, bad frame).
    #[error("VPP API protocol: {0}")]
    Protocol(String),
}

impl VppError {
    /// VPP's retval when this is a [`VppError::Retval`].
    pub fn retval(&self) -> Option<i32> {
        match self {
            VppError::Retval { retval, .. } => Some(*retval),
            _ => None,
        }
    }
}

/// Common VPP return values (`vnet/api_errno.h`; the numbers are stable across releases).
pub mod retval {
    /// Unspecified error.
    pub const UNSPECIFIED: i32 = -1;
    /// Invalid sw_if_index.
    pub const INVALID_SW_IF_INDEX: i32 = -2;
    /// No such FIB / VRF.
    pub const NO_SUCH_FIB: i32 = -3;
    /// No such entry.
    pub const NO_SUCH_ENTRY: i32 = -6;
    /// Invalid value.
    pub const INVALID_VALUE: i32 = -7;
    /// Unimplemented.
    pub const UNIMPLEMENTED: i32 = -9;
    /// Invalid sw_if_index #2.
    pub const INVALID_SW_IF_INDEX_2: i32 = -10;
    /// System call error #1.
    pub const SYSCALL_ERROR_1: i32 = -11;
    /// Feature disabled by configuration.
    pub const FEATURE_DISABLED: i32 = -30;
    /// Next hop not in FIB.
    pub const NEXT_HOP_NOT_IN_FIB: i32 = -50;
    /// Invalid source address.
    pub const INVALID_SRC_ADDRESS: i32 = -57;
    /// Invalid destination address.
    pub const INVALID_DST_ADDRESS: i32 = -58;
    /// Address length mismatch.
    pub const ADDRESS_LENGTH_MISMATCH: i32 = -59;
    /// Address not found for interface.
    pub const ADDRESS_NOT_FOUND_FOR_INTERFACE: i32 = -60;
    /// No such table.
    pub const NO_SUCH_TABLE: i32 = -65;
    /// Invalid interface.
    pub const INVALID_INTERFACE: i32 = -71;
    /// Invalid argument.
    pub const INVALID_ARGUMENT: i32 = -73;
    /// Tunnel already exists.
    pub const TUNNEL_EXIST: i32 = -75;
    /// Interface already exists.
    pub const IF_ALREADY_EXISTS: i32 = -79;
    /// Value already exists.
    pub const VALUE_EXIST: i32 = -81;
    /// Source and destination are the same.
    pub const SAME_SRC_DST: i32 = -82;
    /// Invalid address family.
    pub const INVALID_ADDRESS_FAMILY: i32 = -97;
    /// Address in use.
    pub const ADDRESS_IN_USE: i32 = -105;
    /// Address not in use.
    pub const ADDRESS_NOT_IN_USE: i32 = -106;
    /// Address found for interface.
    pub const ADDRESS_FOUND_FOR_INTERFACE: i32 = -114;
    /// Entry already exists.
    pub const ENTRY_ALREADY_EXISTS: i32 = -116;
    /// Unsupported.
    pub const UNSUPPORTED: i32 = -126;
    /// Address already present on another interface.
    pub const DUPLICATE_IF_ADDRESS: i32 = -127;
    /// Instance in use.
    pub const INSTANCE_IN_USE: i32 = -147;
}

const RETVALS: &[(i32, &str)] = &[
    (-1, "VNET_API_ERROR_UNSPECIFIED: unspecified error"),
    (
        -2,
        "VNET_API_ERROR_INVALID_SW_IF_INDEX: invalid sw_if_index",
    ),
    (-3, "VNET_API_ERROR_NO_SUCH_FIB: no such FIB / VRF"),
    (
        -4,
        "VNET_API_ERROR_NO_SUCH_INNER_FIB: no such inner FIB / VRF",
    ),
    (-5, "VNET_API_ERROR_NO_SUCH_LABEL: no such label"),
    (-6, "VNET_API_ERROR_NO_SUCH_ENTRY: no such entry"),
    (-7, "VNET_API_ERROR_INVALID_VALUE: invalid value"),
    (-8, "VNET_API_ERROR_INVALID_VALUE_2: invalid value #2"),
    (-9, "VNET_API_ERROR_UNIMPLEMENTED: unimplemented"),
    (
        -10,
        "VNET_API_ERROR_INVALID_SW_IF_INDEX_2: invalid sw_if_index #2",
    ),
    (-11, "VNET_API_ERROR_SYSCALL_ERROR_1: system call error #1"),
    (-12, "VNET_API_ERROR_SYSCALL_ERROR_2: system call error #2"),
    (-13, "VNET_API_ERROR_SYSCALL_ERROR_3: system call error #3"),
    (
        -30,
        "VNET_API_ERROR_FEATURE_DISABLED: feature disabled by configuration",
    ),
    (
        -31,
        "VNET_API_ERROR_INVALID_REGISTRATION: invalid registration",
    ),
    (
        -50,
        "VNET_API_ERROR_NEXT_HOP_NOT_IN_FIB: next hop not in FIB",
    ),
    (
        -51,
        "VNET_API_ERROR_UNKNOWN_DESTINATION: unknown destination",
    ),
    (
        -52,
        "VNET_API_ERROR_PREFIX_MATCHES_NEXT_HOP: prefix matches next hop",
    ),
    (
        -54,
        "VNET_API_ERROR_NO_MATCHING_INTERFACE: no matching interface",
    ),
    (
        -57,
        "VNET_API_ERROR_INVALID_SRC_ADDRESS: invalid source address",
    ),
    (
        -58,
        "VNET_API_ERROR_INVALID_DST_ADDRESS: invalid destination address",
    ),
    (
        -59,
        "VNET_API_ERROR_ADDRESS_LENGTH_MISMATCH: address length mismatch",
    ),
    (
        -60,
        "VNET_API_ERROR_ADDRESS_NOT_FOUND_FOR_INTERFACE: address not found for interface",
    ),
    (
        -61,
        "VNET_API_ERROR_ADDRESS_NOT_DELETABLE: address not deletable",
    ),
    (-62, "VNET_API_ERROR_IP6_NOT_ENABLED: ip6 not enabled"),
    (-63, "VNET_API_ERROR_NO_SUCH_NODE: no such graph node"),
    (-65, "VNET_API_ERROR_NO_SUCH_TABLE: no such table"),
    (
        -68,
        "VNET_API_ERROR_SUBIF_ALREADY_EXISTS: subinterface already exists",
    ),
    (
        -70,
        "VNET_API_ERROR_INVALID_MEMORY_SIZE: invalid memory size",
    ),
    (-71, "VNET_API_ERROR_INVALID_INTERFACE: invalid interface"),
    (-73, "VNET_API_ERROR_INVALID_ARGUMENT: invalid argument"),
    (
        -74,
        "VNET_API_ERROR_UNEXPECTED_INTF_STATE: unexpected interface state",
    ),
    (-75, "VNET_API_ERROR_TUNNEL_EXIST: tunnel already exists"),
    (-77, "VNET_API_ERROR_RESPONSE_NOT_READY: response not ready"),
    (
        -79,
        "VNET_API_ERROR_IF_ALREADY_EXISTS: interface already exists",
    ),
    (-81, "VNET_API_ERROR_VALUE_EXIST: value already exists"),
    (
        -82,
        "VNET_API_ERROR_SAME_SRC_DST: source and destination are the same",
    ),
    (
        -97,
        "VNET_API_ERROR_INVALID_ADDRESS_FAMILY: invalid address family",
    ),
    (-105, "VNET_API_ERROR_ADDRESS_IN_USE: address in use"),
    (
        -106,
        "VNET_API_ERROR_ADDRESS_NOT_IN_USE: address not in use",
    ),
    (-107, "VNET_API_ERROR_QUEUE_FULL: queue full"),
    (
        -114,
        "VNET_API_ERROR_ADDRESS_FOUND_FOR_INTERFACE: address found for interface",
    ),
    (
        -116,
        "VNET_API_ERROR_ENTRY_ALREADY_EXISTS: entry already exists",
    ),
    (-126, "VNET_API_ERROR_UNSUPPORTED: unsupported"),
    (
        -127,
        "VNET_API_ERROR_DUPLICATE_IF_ADDRESS: address already present on another interface",
    ),
    (-144, "VNET_API_ERROR_INIT_FAILED: initialization failed"),
    (-147, "VNET_API_ERROR_INSTANCE_IN_USE: instance in use"),
];

/// VPP's name and text for a retval, when it is one of the common ones.
pub fn retval_name(retval: i32) -> Option<&'static str> {
    RETVALS.iter().find(|(v, _)| *v == retval).map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retval_errors_name_message_and_vpp_error() {
        let e = VppError::Retval {
            message: "sw_interface_add_del_address",
            retval: retval::ADDRESS_IN_USE,
        };
        let s = e.to_string();
        assert!(s.contains("sw_interface_add_del_address"), "{s}");
        assert!(s.contains("VNET_API_ERROR_ADDRESS_IN_USE"), "{s}");
        assert!(s.contains("-105"), "{s}");
        assert!(VppError::Retval {
            message: "x",
            retval: -9999
        }
        .to_string()
        .contains("unknown VPP error"));
    }

    #[test]
    fn crc_mismatch_names_both_crcs() {
        let e = VppError::CrcMismatch {
            message: "show_version".into(),
            ours: 0x51077d14,
            theirs: 0xdeadbeef,
        };
        let s = e.to_string();
        assert!(
            s.contains("show_version") && s.contains("0x51077d14") && s.contains("0xdeadbeef"),
            "{s}"
        );
    }
}
