//! What every generated VPP message is: [`Message`] (name, CRC, header layout), and the
//! request/reply pairings [`Request`] and [`Dump`] taken from the `.api.json` services.

use crate::codec::{Decode, Encode, EncodeBuf};

/// Which of the standard header fields follow a message's `_vl_msg_id`.
///
/// The client fills them in: `client_index` with its socket registration, `context` with a
/// fresh number per request so replies are matched to it. They are not fields of the
/// generated structs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// Neither.
    None,
    /// `client_index` only.
    ClientIndex,
    /// `context` only (replies, details).
    Context,
    /// `client_index` then `context` (requests).
    ClientIndexContext,
}

impl Header {
    /// Byte offset of `context` in the message (after the 2-byte message id), if it has one.
    pub fn context_offset(self) -> Option<usize> {
        match self {
            Header::Context => Some(2),
            Header::ClientIndexContext => Some(6),
            Header::None | Header::ClientIndex => None,
        }
    }

    /// Length of the header, message id included.
    pub fn len(self) -> usize {
        match self {
            Header::None => 2,
            Header::ClientIndex | Header::Context => 6,
            Header::ClientIndexContext => 10,
        }
    }

    /// Never true: a header holds at least the message id.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// A VPP API message. [`Encode`]/[`Decode`] handle the fields after the header.
pub trait Message: Encode + Decode + Send + Sync + std::fmt::Debug + 'static {
    /// The message name (`show_version`).
    const NAME: &'static str;
    /// The CRC of its definition, which the running VPP must have too.
    const CRC: u32;
    /// `name_crc` as VPP's message table spells it (`show_version_51077d14`).
    const NAME_CRC: &'static str;
    /// Which header fields it carries.
    const HEADER: Header;

    /// The `retval` of a reply (0 = success, negative = a VPP error), if it has one.
    fn retval(&self) -> Option<i32> {
        None
    }
}

/// A request answered by exactly one reply.
pub trait Request: Message {
    /// The reply message.
    type Reply: Message;
}

/// A request answered by zero or more details messages (terminated by `control_ping`).
pub trait Dump: Message {
    /// The details message.
    type Details: Message;
}

/// Static facts of one generated message (see [`crate::api::MESSAGES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageInfo {
    /// The `.api` file it comes from.
    pub module: &'static str,
    /// Message name.
    pub name: &'static str,
    /// CRC.
    pub crc: u32,
    /// Header layout.
    pub header: Header,
}

impl MessageInfo {
    /// `name_crc` as in VPP's message table.
    pub fn name_crc(&self) -> String {
        format!("{}_{:08x}", self.name, self.crc)
    }
}

/// Splits a message-table entry `name_crc` into name and CRC.
pub fn split_name_crc(s: &str) -> Option<(&str, u32)> {
    let (name, crc) = s.rsplit_once('_')?;
    if crc.len() != 8 {
        return None;
    }
    Some((name, u32::from_str_radix(crc, 16).ok()?))
}

/// The full wire form of `msg`: message id, the header fields `M` has, then the body (in a
/// buffer zeroed when dropped: messages may carry SA keys).
pub fn encode_message<M: Message>(
    msg: &M,
    id: u16,
    client_index: u32,
    context: u32,
) -> Result<EncodeBuf, crate::codec::CodecError> {
    let mut buf = EncodeBuf::with_capacity(64);
    buf.extend_from_slice(&id.to_be_bytes());
    match M::HEADER {
        Header::None => {}
        Header::ClientIndex => buf.extend_from_slice(&client_index.to_be_bytes()),
        Header::Context => buf.extend_from_slice(&context.to_be_bytes()),
        Header::ClientIndexContext => {
            buf.extend_from_slice(&client_index.to_be_bytes());
            buf.extend_from_slice(&context.to_be_bytes());
        }
    }
    msg.encode(&mut buf)?;
    Ok(buf)
}

/// Decodes a full message (id and header are skipped, not checked).
pub fn decode_message<M: Message>(frame: &[u8]) -> Result<M, crate::codec::CodecError> {
    let body = frame
        .get(M::HEADER.len()..)
        .ok_or(crate::codec::CodecError {
            field: M::NAME,
            reason: "shorter than its header".into(),
        })?;
    M::decode(&mut crate::codec::Decoder::new(body, M::NAME))
}
