//! Framing of VPP's socket transport.
//!
//! Every message on `api.sock` is preceded by a 16-byte header, big endian: `u64 queue`
//! (0 from clients), `u32 msglen` (length of the message that follows) and `u32 timeout`
//! (0). The message itself starts with its `u16` message id.

use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use zeroize::{Zeroize, Zeroizing};

use crate::codec::EncodeBuf;
use crate::error::VppError;

/// Length of the frame header.
pub const FRAME_HEADER_LEN: usize = 16;

/// Largest message accepted from VPP (a sanity bound; dumps arrive one message per entry).
pub const MAX_MESSAGE_LEN: usize = 64 << 20;

/// The 16-byte frame header for a message of `len` bytes.
pub fn frame_header(len: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    // queue (u64) = 0, msglen (u32), timeout (u32) = 0
    h[8..12].copy_from_slice(&len.to_be_bytes());
    h
}

/// Writes one framed message.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &[u8],
    path: &Path,
) -> Result<(), VppError> {
    let len = u32::try_from(msg.len())
        .map_err(|_| VppError::Protocol(format!("message of {} bytes is too large", msg.len())))?;
    let io = |source| VppError::Io {
        path: path.to_path_buf(),
        op: "write",
        source,
    };
    let mut buf = EncodeBuf::with_capacity(FRAME_HEADER_LEN + msg.len());
    buf.extend_from_slice(&frame_header(len));
    buf.extend_from_slice(msg);
    w.write_all(&buf).await.map_err(io)?;
    w.flush().await.map_err(io)
}

/// Reads one framed message (in a buffer zeroed when dropped: SA dumps carry keys);
/// `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    path: &Path,
) -> Result<Option<Zeroizing<Vec<u8>>>, VppError> {
    let mut h = [0u8; FRAME_HEADER_LEN];
    match r.read_exact(&mut h).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(source) => {
            return Err(VppError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            })
        }
    }
    let len = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if !(2..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(VppError::Protocol(format!("frame of {len} bytes")));
    }
    let mut msg = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut msg)
        .await
        .map_err(|source| VppError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
    Ok(Some(msg))
}

/// A buffered reader that keeps no copy of what it hands out: each byte is zeroed in its
/// buffer as it is read, and the buffer when the reader is dropped (a `BufReader` would keep
/// the SA keys of a dump in its buffer).
pub struct ScrubbingReader<R> {
    inner: R,
    /// Fixed size, never reallocated.
    buf: Zeroizing<Vec<u8>>,
    pos: usize,
    filled: usize,
}

impl<R> ScrubbingReader<R> {
    /// Reads from `inner` in chunks of up to `capacity` bytes.
    pub fn with_capacity(capacity: usize, inner: R) -> Self {
        ScrubbingReader {
            inner,
            buf: Zeroizing::new(vec![0; capacity.max(1)]),
            pos: 0,
            filled: 0,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ScrubbingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if me.pos == me.filled {
            let mut rb = ReadBuf::new(&mut me.buf);
            ready!(Pin::new(&mut me.inner).poll_read(cx, &mut rb))?;
            me.filled = rb.filled().len();
            me.pos = 0;
        }
        let n = out.remaining().min(me.filled - me.pos);
        let chunk = &mut me.buf[me.pos..me.pos + n];
        out.put_slice(chunk);
        chunk.zeroize();
        me.pos += n;
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_queue_len_timeout_big_endian() {
        assert_eq!(
            frame_header(0x0102_0304),
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0]
        );
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let p = Path::new("test");
        write_frame(&mut a, b"\x00\x0fhello", p).await.unwrap();
        drop(a);
        assert_eq!(
            &**read_frame(&mut b, p).await.unwrap().unwrap(),
            b"\x00\x0fhello"
        );
        assert!(read_frame(&mut b, p).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn scrubbing_reader_reads_frames_and_zeroes_what_it_handed_out() {
        let (mut a, b) = tokio::io::duplex(1024);
        let p = Path::new("test");
        write_frame(&mut a, b"\x00\x0fsecret-one", p).await.unwrap();
        write_frame(&mut a, b"\x00\x0fsecret-two", p).await.unwrap();
        drop(a);
        let mut r = ScrubbingReader::with_capacity(7, b);
        assert_eq!(
            &*read_frame(&mut r, p).await.unwrap().unwrap(),
            b"\x00\x0fsecret-one"
        );
        assert!(r.buf.iter().all(|b| *b == 0), "{:?}", &*r.buf);
        assert_eq!(
            &*read_frame(&mut r, p).await.unwrap().unwrap(),
            b"\x00\x0fsecret-two"
        );
        assert!(r.buf.iter().all(|b| *b == 0));
        assert!(read_frame(&mut r, p).await.unwrap().is_none());
    }
}
