//! Framing of VPP's socket transport.
//!
//! Every message on `api.sock` is preceded by a 16-byte header, big endian: `u64 queue`
//! (0 from clients), `u32 msglen` (length of the message that follows) and `u32 timeout`
//! (0). The message itself starts with its `u16` message id.

use std::path::Path;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    let mut buf = Vec::with_capacity(FRAME_HEADER_LEN + msg.len());
    buf.extend_from_slice(&frame_header(len));
    buf.extend_from_slice(msg);
    w.write_all(&buf).await.map_err(io)?;
    w.flush().await.map_err(io)
}

/// Reads one framed message; `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    path: &Path,
) -> Result<Option<Vec<u8>>, VppError> {
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
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg)
        .await
        .map_err(|source| VppError::Io {
            path: path.to_path_buf(),
            op: "read",
            source,
        })?;
    Ok(Some(msg))
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
            read_frame(&mut b, p).await.unwrap().unwrap(),
            b"\x00\x0fhello"
        );
        assert!(read_frame(&mut b, p).await.unwrap().is_none());
    }
}
