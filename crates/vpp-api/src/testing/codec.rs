//! Every generated message driven generically (see [`crate::api::CODECS`]): a framed default
//! value to start from, and a check that decoding arbitrary bytes fails cleanly or yields a
//! message whose own encoding decodes back to the same bytes.

use crate::codec::{CodecError, Decoder, EncodeBuf};
use crate::message::{decode_message, encode_message, Message};

/// One generated message, type-erased.
#[derive(Debug, Clone, Copy)]
pub struct MessageCodec {
    /// `name_crc`, as in VPP's message table.
    pub name_crc: &'static str,
    /// The default value, framed (message id 1, client index 2, context 3).
    pub default_frame: fn() -> Vec<u8>,
    /// [`round_trip`] of this message.
    pub round_trip: fn(&[u8]) -> Result<(), CodecError>,
}

/// The framed default value of `M` (empty if it cannot be encoded).
pub fn default_frame<M: Message + Default>() -> Vec<u8> {
    encode_message(&M::default(), 1, 2, 3)
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

/// Decodes `frame` as `M`; a decoded message must format, and when it encodes, its encoding
/// must decode to a message that encodes to the same bytes. Panics when it does not.
pub fn round_trip<M: Message>(frame: &[u8]) -> Result<(), CodecError> {
    let m: M = decode_message(frame)?;
    let _ = format!("{m:?}");
    let mut once = EncodeBuf::with_capacity(64);
    // decoded values need not be encodable (a fixed string VPP filled to the last byte)
    if m.encode(&mut once).is_err() {
        return Ok(());
    }
    let again = M::decode(&mut Decoder::new(&once, M::NAME))
        .unwrap_or_else(|e| panic!("{}: its own encoding does not decode: {e}", M::NAME));
    let mut twice = EncodeBuf::with_capacity(64);
    again
        .encode(&mut twice)
        .unwrap_or_else(|e| panic!("{}: a decoded message does not encode: {e}", M::NAME));
    assert_eq!(&*once, &*twice, "{}: encoding is not stable", M::NAME);
    Ok(())
}
