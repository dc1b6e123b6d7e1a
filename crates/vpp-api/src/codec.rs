//! The wire encoding of VPP API messages: packed, big endian.
//!
//! [`Encode`] / [`Decode`] are implemented for the primitive types here and for every
//! generated type and message (see [`crate::api`]). Special cases, as VPP's C code and
//! vpp-papi have them: `bool` is one byte; `f64` travels in host byte order (VPP's f64 "byte
//! swap" is the identity; every VPP platform is little endian); fixed-length strings are
//! NUL-padded and must leave room for the NUL; variable strings are a `u32` length and the
//! bytes; variable arrays take their count from an earlier field.

use std::fmt;
use zeroize::{Zeroize, Zeroizing};

/// A value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError {
    /// `message.field` (or `type.field`) where it happened.
    pub field: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for CodecError {}

fn err(field: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError {
        field,
        reason: reason.into(),
    }
}

/// The buffer messages are encoded into, and framed messages wait in before they are sent.
///
/// Messages carry SA keys (`ipsec_sad_entry_add`), so no copy of their bytes may outlive
/// them: the buffer is zeroed when dropped, and when it grows, the old allocation is zeroed
/// before it is freed (a `Vec` would leave it as it was).
#[derive(Default)]
pub struct EncodeBuf(Zeroizing<Vec<u8>>);

impl EncodeBuf {
    /// An empty buffer with room for `n` bytes.
    pub fn with_capacity(n: usize) -> Self {
        EncodeBuf(Zeroizing::new(Vec::with_capacity(n)))
    }

    /// Makes room for `n` more bytes, zeroing the old allocation if it has to move.
    fn reserve(&mut self, n: usize) {
        let need = self.0.len().saturating_add(n);
        if need > self.0.capacity() {
            let mut bigger = Vec::with_capacity(need.max(self.0.capacity().saturating_mul(2)));
            bigger.extend_from_slice(&self.0);
            // the old vector is zeroed (all of its capacity) as it is dropped here
            self.0 = Zeroizing::new(bigger);
        }
    }

    /// Appends `bytes`.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.reserve(bytes.len());
        self.0.extend_from_slice(bytes);
    }

    /// Appends one byte.
    pub fn push(&mut self, b: u8) {
        self.reserve(1);
        self.0.push(b);
    }

    /// Appends `n` zero bytes.
    pub fn put_zeros(&mut self, n: usize) {
        self.reserve(n);
        let len = self.0.len() + n;
        self.0.resize(len, 0);
    }

    /// Bytes written.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing was written.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes the buffer holds without growing.
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// Empties the buffer (zeroing what it held), keeping its allocation.
    pub fn clear(&mut self) {
        self.0.zeroize();
    }
}

impl std::ops::Deref for EncodeBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for EncodeBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncodeBuf({} bytes)", self.0.len())
    }
}

impl zeroize::ZeroizeOnDrop for EncodeBuf {}

/// Appends the wire form of a value.
pub trait Encode {
    /// Appends `self` to `buf`.
    fn encode(&self, buf: &mut EncodeBuf) -> Result<(), CodecError>;
}

/// Reads a value from its wire form.
pub trait Decode: Sized {
    /// Reads one value, advancing `d`.
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError>;
}

/// A cursor over received bytes.
#[derive(Debug)]
pub struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Decoder<'a> {
    /// A decoder over `buf`; `what` names the message for errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Decoder { buf, pos: 0, what }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(err(
                self.what,
                format!(
                    "truncated: need {n} bytes at offset {}, have {}",
                    self.pos,
                    self.buf.len() - self.pos
                ),
            )),
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
}

macro_rules! be_int {
    ($($t:ty),*) => {$(
        impl Encode for $t {
            fn encode(&self, buf: &mut EncodeBuf) -> Result<(), CodecError> {
                buf.extend_from_slice(&self.to_be_bytes());
                Ok(())
            }
        }
        impl Decode for $t {
            fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(d.take(std::mem::size_of::<$t>())?);
                Ok(<$t>::from_be_bytes(a))
            }
        }
    )*};
}
be_int!(u8, i8, u16, i16, u32, i32, u64, i64);

impl Encode for f64 {
    fn encode(&self, buf: &mut EncodeBuf) -> Result<(), CodecError> {
        buf.extend_from_slice(&self.to_le_bytes());
        Ok(())
    }
}

impl Decode for f64 {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(d.take(8)?);
        Ok(f64::from_le_bytes(a))
    }
}

impl Encode for bool {
    fn encode(&self, buf: &mut EncodeBuf) -> Result<(), CodecError> {
        buf.push(u8::from(*self));
        Ok(())
    }
}

impl Decode for bool {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        Ok(d.take(1)?[0] != 0)
    }
}

impl<T: Encode, const N: usize> Encode for [T; N] {
    fn encode(&self, buf: &mut EncodeBuf) -> Result<(), CodecError> {
        self.iter().try_for_each(|e| e.encode(buf))
    }
}

impl<T: Decode + Default, const N: usize> Decode for [T; N] {
    fn decode(d: &mut Decoder<'_>) -> Result<Self, CodecError> {
        let mut out: [T; N] = std::array::from_fn(|_| T::default());
        for e in out.iter_mut() {
            *e = T::decode(d)?;
        }
        Ok(out)
    }
}

/// Writes a variable array's element count as the count field's type `C`.
pub fn put_count<C>(buf: &mut EncodeBuf, len: usize, field: &'static str) -> Result<(), CodecError>
where
    C: TryFrom<usize> + Encode,
{
    let c = C::try_from(len)
        .map_err(|_| err(field, format!("{len} elements do not fit the count field")))?;
    c.encode(buf)
}

/// Reads `n` elements of a variable array.
pub fn get_array<T: Decode>(
    d: &mut Decoder<'_>,
    n: usize,
    field: &'static str,
) -> Result<Vec<T>, CodecError> {
    // every element is at least one byte: a count beyond the remaining bytes is corrupt
    if n > d.remaining() {
        return Err(err(
            field,
            format!("count {n} exceeds the {} bytes left", d.remaining()),
        ));
    }
    (0..n).map(|_| T::decode(d)).collect()
}

/// Reads elements until the message ends (legacy arrays without a count field).
pub fn get_rest<T: Decode>(
    d: &mut Decoder<'_>,
    _field: &'static str,
) -> Result<Vec<T>, CodecError> {
    let mut v = Vec::new();
    while d.remaining() > 0 {
        v.push(T::decode(d)?);
    }
    Ok(v)
}

/// Writes a fixed-length string of `len` bytes: the text, NUL-padded (at most `len - 1` bytes).
pub fn put_fixed_string(
    buf: &mut EncodeBuf,
    s: &str,
    len: usize,
    field: &'static str,
) -> Result<(), CodecError> {
    if s.len() >= len {
        return Err(err(
            field,
            format!(
                "string of {} bytes is too long, at most {} fit",
                s.len(),
                len - 1
            ),
        ));
    }
    if s.as_bytes().contains(&0) {
        return Err(err(field, "string contains a NUL byte"));
    }
    buf.extend_from_slice(s.as_bytes());
    buf.put_zeros(len - s.len());
    Ok(())
}

/// Reads a fixed-length string: the bytes up to the first NUL.
pub fn get_fixed_string(
    d: &mut Decoder<'_>,
    len: usize,
    field: &'static str,
) -> Result<String, CodecError> {
    let b = d.take(len)?;
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8(b[..end].to_vec()).map_err(|_| err(field, "string is not UTF-8"))
}

/// Writes a variable-length string: `u32` length, then the bytes.
pub fn put_var_string(buf: &mut EncodeBuf, s: &str, field: &'static str) -> Result<(), CodecError> {
    put_count::<u32>(buf, s.len(), field)?;
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Reads a variable-length string (invalid UTF-8 is replaced, as VPP's texts are ASCII).
pub fn get_var_string(d: &mut Decoder<'_>, field: &'static str) -> Result<String, CodecError> {
    let n = u32::decode(d)? as usize;
    if n > d.remaining() {
        return Err(err(
            field,
            format!("length {n} exceeds the {} bytes left", d.remaining()),
        ));
    }
    let b = d.take(n)?;
    // VPP sometimes counts a trailing NUL
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_big_endian_f64_host_order() {
        let mut b = EncodeBuf::default();
        0x0102u16.encode(&mut b).unwrap();
        (-2i32).encode(&mut b).unwrap();
        1.0f64.encode(&mut b).unwrap();
        true.encode(&mut b).unwrap();
        assert_eq!(&b[..6], &[1, 2, 0xff, 0xff, 0xff, 0xfe]);
        assert_eq!(&b[6..14], &1.0f64.to_le_bytes());
        assert_eq!(b[14], 1);
        let mut d = Decoder::new(&b, "t");
        assert_eq!(u16::decode(&mut d).unwrap(), 0x0102);
        assert_eq!(i32::decode(&mut d).unwrap(), -2);
        assert_eq!(f64::decode(&mut d).unwrap(), 1.0);
        assert!(bool::decode(&mut d).unwrap());
        assert!(u8::decode(&mut d).is_err());
    }

    #[test]
    fn fixed_strings_are_nul_padded_and_bounded() {
        let mut b = EncodeBuf::default();
        put_fixed_string(&mut b, "abc", 8, "m.s").unwrap();
        assert_eq!(&*b, b"abc\0\0\0\0\0");
        assert_eq!(
            get_fixed_string(&mut Decoder::new(&b, "m"), 8, "m.s").unwrap(),
            "abc"
        );
        let e = put_fixed_string(&mut EncodeBuf::default(), "12345678", 8, "m.s").unwrap_err();
        assert_eq!(e.field, "m.s");
    }

    #[test]
    fn var_strings_and_counts() {
        let mut b = EncodeBuf::default();
        put_var_string(&mut b, "hi", "m.s").unwrap();
        assert_eq!(&*b, [0, 0, 0, 2, b'h', b'i']);
        assert!(put_count::<u8>(&mut EncodeBuf::default(), 256, "m.v").is_err());
        let mut d = Decoder::new(&[0, 0, 0, 9, 1], "m");
        assert!(get_var_string(&mut d, "m.s").is_err());
        let mut d = Decoder::new(&[1, 2], "m");
        assert!(get_array::<u32>(&mut d, 1000, "m.v").is_err());
    }

    #[test]
    fn encode_buf_grows_by_moving_and_keeps_its_bytes() {
        let mut b = EncodeBuf::with_capacity(2);
        b.extend_from_slice(&[1, 2]);
        assert_eq!(b.capacity(), 2);
        b.push(3);
        assert!(b.capacity() >= 4);
        b.put_zeros(2);
        b.extend_from_slice(&[9; 100]);
        assert_eq!(&b[..5], &[1, 2, 3, 0, 0]);
        assert_eq!(b.len(), 105);
        b.clear();
        assert!(b.is_empty());
        assert!(format!("{b:?}").contains("0 bytes"));
    }
}
