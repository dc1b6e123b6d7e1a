//! XFRM netlink plumbing: one socket, pipelined requests with every ACK checked, dumps.
//!
//! Requests are written back to back into one buffer and sent with one `send`; the
//! kernel handles the whole buffer in that call and queues one ACK per request
//! (`NLM_F_ACK`). ACKs are matched to requests by sequence number, so one failing
//! request is reported with its own object and the others still count. A window bounds
//! how many ACKs can be queued at once so none is lost to a full receive buffer.

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_xfrm::XfrmMessage;
use netlink_sys::{protocols::NETLINK_XFRM, Socket};
use scrambler_core::{Error, Result};
use std::fmt;
use zeroize::Zeroizing;

/// Requests in flight at once (their ACKs must fit the receive buffer).
const WINDOW: usize = 128;
/// Receive buffer size asked for (capped by `net.core.rmem_max`).
const RCVBUF: usize = 4 << 20;
/// Netlink flag on an ACK carrying extended-ACK TLVs.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// The extended-ACK TLV holding the kernel's message.
const NLMSGERR_ATTR_MSG: u16 = 1;

/// A kernel error answer: errno plus the extended-ACK message, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NlError {
    /// Positive errno.
    pub errno: i32,
    /// The kernel's extended-ACK text.
    pub msg: Option<String>,
}

impl fmt::Display for NlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = std::io::Error::from_raw_os_error(self.errno);
        match &self.msg {
            Some(m) => write!(f, "{m} ({e})"),
            None => write!(f, "{e}"),
        }
    }
}

/// One request of a batch: the message plus what it is, for error messages.
pub(crate) struct Request {
    /// The message; its key material is zeroed when the request is dropped — sent or not,
    /// e.g. the later phases of a reconcile that failed early.
    pub msg: Scrubbed<XfrmMessage>,
    /// Operation name ("add xfrm policy" …).
    pub op: &'static str,
    /// The object it acts on (never contains key material).
    pub object: String,
}

/// A netlink message (built for sending, or parsed from an answer) whose XFRM key material
/// is zeroed when it is dropped.
pub(crate) struct Scrubbed<T: Scrub>(pub T);

impl<T: Scrub> Drop for Scrubbed<T> {
    fn drop(&mut self) {
        self.0.scrub();
    }
}

impl<T: Scrub> std::ops::Deref for Scrubbed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Scrub> std::ops::DerefMut for Scrubbed<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

/// What can hold XFRM key material and be zeroed.
pub(crate) trait Scrub {
    /// Zeroes the key material.
    fn scrub(&mut self);
}

impl Scrub for XfrmMessage {
    fn scrub(&mut self) {
        scrub(self);
    }
}

impl Scrub for NetlinkMessage<XfrmMessage> {
    fn scrub(&mut self) {
        if let NetlinkPayload::InnerMessage(m) = &mut self.payload {
            scrub(m);
        }
    }
}

/// One message of an answer (short-lived: split, matched, and the messages moved on).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Answer {
    /// An XFRM message (a dump entry).
    Message(Scrubbed<XfrmMessage>),
    /// An ACK or error.
    Error(netlink_packet_core::ErrorMessage),
    /// The end of a dump.
    Done,
    /// Anything else.
    Other,
}

/// A netlink XFRM socket bound to the network namespace it was opened in.
pub(crate) struct XfrmSocket {
    sock: Socket,
    seq: u32,
    buf: Zeroizing<Vec<u8>>,
}

impl XfrmSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self> {
        let mut sock = Socket::new(NETLINK_XFRM)
            .map_err(|e| Error::io("open xfrm netlink socket", "NETLINK_XFRM", e))?;
        sock.bind_auto()
            .map_err(|e| Error::io("bind xfrm netlink socket", "NETLINK_XFRM", e))?;
        // Best effort: small ACKs, readable errors, room for a window of ACKs.
        let _ = sock.set_cap_ack(true);
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_rx_buf_sz(RCVBUF as i32);
        Ok(XfrmSocket {
            sock,
            seq: 1,
            buf: Zeroizing::new(Vec::with_capacity(256 * 1024)),
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Sends every request (pipelined, in order) and returns one result per request.
    /// Only a socket failure is an `Err`; kernel refusals are per request.
    pub fn execute(&mut self, reqs: &[Request]) -> Result<Vec<Result<(), NlError>>> {
        let mut results = Vec::with_capacity(reqs.len());
        for chunk in reqs.chunks(WINDOW) {
            let first = self.seq.wrapping_add(1);
            let msgs: Vec<Scrubbed<NetlinkMessage<XfrmMessage>>> = chunk
                .iter()
                .map(|r| {
                    let mut header = NetlinkHeader::default();
                    header.flags = NLM_F_REQUEST | NLM_F_ACK;
                    header.sequence_number = self.next_seq();
                    let mut m =
                        NetlinkMessage::new(header, NetlinkPayload::InnerMessage(r.msg.0.clone()));
                    m.finalize();
                    Scrubbed(m)
                })
                .collect();
            // sized once: a growing buffer would leave copies of the keys behind
            let mut out = Zeroizing::new(vec![0u8; msgs.iter().map(|m| m.buffer_len()).sum()]);
            let mut start = 0;
            for m in &msgs {
                let end = start + m.buffer_len();
                m.serialize(&mut out[start..end]);
                start = end;
            }
            drop(msgs);
            self.sock
                .send(&out, 0)
                .map_err(|e| Error::io("send xfrm requests", "NETLINK_XFRM", e))?;
            let mut answers: Vec<Option<Result<(), NlError>>> = vec![None; chunk.len()];
            let mut pending = chunk.len();
            while pending > 0 {
                for (seq, res) in self.recv_acks()? {
                    let idx = seq.wrapping_sub(first) as usize;
                    if idx < answers.len() && answers[idx].is_none() {
                        answers[idx] = Some(res);
                        pending -= 1;
                    }
                }
            }
            results.extend(answers.into_iter().map(|a| a.unwrap_or(Ok(()))));
        }
        Ok(results)
    }

    /// Receives one datagram and returns the ACKs / errors in it by sequence number.
    fn recv_acks(&mut self) -> Result<Vec<(u32, Result<(), NlError>)>> {
        self.recv_datagram()?;
        let mut acks = Vec::new();
        for (header, answer) in split(&self.buf)? {
            if let Answer::Error(e) = answer {
                acks.push((header.sequence_number, ack_result(&header, &e)));
            }
        }
        Ok(acks)
    }

    fn recv_datagram(&mut self) -> Result<()> {
        self.buf.clear();
        loop {
            match self.sock.recv(&mut *self.buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("receive xfrm answer", "NETLINK_XFRM", e)),
            }
        }
    }

    /// Sends `msg` (which carries no key material) with `flags` under a new sequence
    /// number and returns that number.
    fn send_one(
        &mut self,
        msg: XfrmMessage,
        flags: u16,
        op: &'static str,
        what: &str,
    ) -> Result<u32> {
        let seq = self.next_seq();
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        m.finalize();
        let mut out = vec![0u8; m.buffer_len()];
        m.serialize(&mut out);
        self.sock
            .send(&out, 0)
            .map_err(|e| Error::io(op, what, e))?;
        Ok(seq)
    }

    /// Sends one request that the kernel answers with one message (a GET by key) and
    /// returns that message, or `None` when the kernel answers ENOENT.
    pub fn get(&mut self, msg: XfrmMessage, what: &str) -> Result<Option<Scrubbed<XfrmMessage>>> {
        let seq = self.send_one(msg, NLM_F_REQUEST, "send xfrm get request", what)?;
        loop {
            self.recv_datagram()?;
            for (h, answer) in split(&self.buf)? {
                if h.sequence_number != seq {
                    continue;
                }
                match answer {
                    Answer::Message(m) => return Ok(Some(m)),
                    Answer::Error(e) => match ack_result(&h, &e) {
                        Err(e) if e.errno == nix::errno::Errno::ENOENT as i32 => return Ok(None),
                        Err(e) => return Err(Error::kernel("get", what, e)),
                        Ok(()) => return Ok(None),
                    },
                    Answer::Done | Answer::Other => {}
                }
            }
        }
    }

    /// Dumps with `msg` (`NLM_F_DUMP`) and returns every answer message (state dumps carry
    /// keys: each is zeroed when dropped).
    pub fn dump(&mut self, msg: XfrmMessage, what: &str) -> Result<Vec<Scrubbed<XfrmMessage>>> {
        let seq = self.send_one(
            msg,
            NLM_F_REQUEST | NLM_F_DUMP,
            "send xfrm dump request",
            what,
        )?;
        let mut found = Vec::new();
        loop {
            self.recv_datagram()?;
            for (h, answer) in split(&self.buf)? {
                if h.sequence_number != seq {
                    continue;
                }
                match answer {
                    Answer::Done => return Ok(found),
                    Answer::Error(e) => match ack_result(&h, &e) {
                        Ok(()) => return Ok(found),
                        Err(e) => return Err(Error::kernel("dump", what, e)),
                    },
                    Answer::Message(m) => found.push(m),
                    Answer::Other => {}
                }
            }
        }
    }
}

pub(crate) fn split(buf: &[u8]) -> Result<Vec<(NetlinkHeader, Answer)>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let nb = NetlinkBuffer::new_checked(&buf[off..])
            .map_err(|e| Error::decode("xfrm netlink answer", e))?;
        let len = nb.length() as usize;
        if len < 16 || off + len > buf.len() {
            return Err(Error::decode("xfrm netlink answer", "bad message length"));
        }
        // netlink-packet-xfrm 0.5 slices some payloads without checking their length (a
        // NEWSA shorter than xfrm_usersa_info panics): a malformed answer is a decode error
        let frame = &buf[off..off + len];
        let m = std::panic::catch_unwind(|| NetlinkMessage::<XfrmMessage>::deserialize(frame))
            .map_err(|_| Error::decode("xfrm netlink answer", "malformed message"))?
            .map_err(|e| Error::decode("xfrm netlink answer", e))?;
        let (h, p) = m.into_parts();
        let answer = match p {
            NetlinkPayload::InnerMessage(m) => Answer::Message(Scrubbed(m)),
            NetlinkPayload::Error(e) => Answer::Error(e),
            NetlinkPayload::Done(_) => Answer::Done,
            _ => Answer::Other,
        };
        out.push((h, answer));
        off += (len + 3) & !3;
    }
    Ok(out)
}

pub(crate) fn ack_result(
    header: &NetlinkHeader,
    e: &netlink_packet_core::ErrorMessage,
) -> Result<(), NlError> {
    match e.code {
        None => Ok(()),
        Some(code) => Err(NlError {
            errno: code.get().saturating_abs(),
            msg: ext_ack_msg(header, &e.header),
        }),
    }
}

/// The NLMSGERR_ATTR_MSG text after the (capped) request header of an error answer.
fn ext_ack_msg(header: &NetlinkHeader, rest: &[u8]) -> Option<String> {
    if header.flags & NLM_F_ACK_TLVS == 0 || rest.len() < 16 {
        return None;
    }
    // The echoed request header says how long the echoed request is; with CAP_ACK it is
    // only the 16-byte header.
    let echoed = if header.flags & 0x100 != 0 {
        16
    } else {
        u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize
    };
    let mut tlvs = rest.get((echoed + 3) & !3..)?;
    while tlvs.len() >= 4 {
        let len = u16::from_ne_bytes([tlvs[0], tlvs[1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]);
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let s = &tlvs[4..len];
            let s = s.split(|b| *b == 0).next().unwrap_or(s);
            return Some(String::from_utf8_lossy(s).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// Zeroes key material held by a parsed or built message before it is dropped.
pub(crate) fn scrub(msg: &mut XfrmMessage) {
    use netlink_packet_xfrm::XfrmAttrs;
    use zeroize::Zeroize;
    let nlas = match msg {
        XfrmMessage::AddSa(m) | XfrmMessage::UpdateSa(m) => &mut m.nlas,
        _ => return,
    };
    for nla in nlas.iter_mut() {
        match nla {
            XfrmAttrs::EncryptionAlgAead(a) => a.alg_key.zeroize(),
            XfrmAttrs::EncryptionAlg(a) | XfrmAttrs::AuthenticationAlg(a) => a.alg_key.zeroize(),
            XfrmAttrs::AuthenticationAlgTrunc(a) => a.alg_key.zeroize(),
            _ => {}
        }
    }
}

/// Maps a refused request to a Scrambler error for `op` on `object`.
pub(crate) fn to_error(op: &'static str, object: &str, e: &NlError) -> Error {
    use nix::errno::Errno;
    match Errno::from_raw(e.errno) {
        Errno::EEXIST => Error::AlreadyExists {
            object: object.to_string(),
            reason: format!("{op}: {e} (held by someone else; Scrambler does not touch it)"),
        },
        Errno::ENOSYS | Errno::EPROTONOSUPPORT | Errno::EOPNOTSUPP | Errno::EAFNOSUPPORT
            if op.contains("state") =>
        {
            Error::Unsupported(format!(
                "{op} {object}: {e}: the kernel lacks ESP / {} (esp4, esp6, aes-gcm modules)",
                scrambler_core::esp::KERNEL_AEAD
            ))
        }
        _ => Error::kernel(op, object, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_xfrm::{AlgAead, XfrmAttrs};

    /// An XFRM_MSG_NEWSA carrying `key` as its AEAD key.
    fn add_sa(key: &[u8]) -> XfrmMessage {
        let mut m = netlink_packet_xfrm::state::ModifyMessage::default();
        m.nlas.push(XfrmAttrs::EncryptionAlgAead(AlgAead {
            alg_name: [0; 64],
            alg_key_len: (key.len() * 8) as u32,
            alg_icv_len: 128,
            alg_key: key.to_vec(),
        }));
        XfrmMessage::AddSa(m)
    }

    fn key_of(m: &XfrmMessage) -> Vec<u8> {
        let XfrmMessage::AddSa(m) = m else {
            panic!("not a state")
        };
        m.nlas
            .iter()
            .find_map(|a| match a {
                XfrmAttrs::EncryptionAlgAead(a) => Some(a.alg_key.clone()),
                _ => None,
            })
            .expect("an AEAD key")
    }

    #[test]
    fn scrubbed_zeroes_when_dropped() {
        struct Probe(std::rc::Rc<std::cell::Cell<u32>>);
        impl Scrub for Probe {
            fn scrub(&mut self) {
                self.0.set(self.0.get() + 1);
            }
        }
        let n = std::rc::Rc::new(std::cell::Cell::new(0));
        drop(Scrubbed(Probe(n.clone())));
        assert_eq!(n.get(), 1);
        // requests hold their message as Scrubbed (a type check: the field is one)
        let r = Request {
            msg: Scrubbed(add_sa(&[7; 20])),
            op: "add xfrm state",
            object: "s".into(),
        };
        let _: &Scrubbed<XfrmMessage> = &r.msg;
    }

    #[test]
    fn scrub_zeroes_sent_and_received_keys() {
        let mut m = add_sa(&[7; 20]);
        m.scrub();
        // zeroize writes zeros over the bytes, then empties the vector
        assert!(key_of(&m).is_empty());
        let mut n = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(add_sa(&[7; 20])),
        );
        n.finalize();
        let mut wire = vec![0u8; n.buffer_len()];
        n.serialize(&mut wire);
        n.scrub();
        let NetlinkPayload::InnerMessage(inner) = &n.payload else {
            panic!()
        };
        assert!(key_of(inner).is_empty());
        // an answer carrying a state comes back as a Scrubbed message
        let answers = split(&wire).unwrap();
        let [(_, Answer::Message(got))] = &answers[..] else {
            panic!("one message expected")
        };
        assert_eq!(key_of(got), vec![7; 20]);
    }

    #[test]
    fn ext_ack_text_is_extracted() {
        let mut h = NetlinkHeader::default();
        h.flags = NLM_F_ACK_TLVS | 0x100;
        let mut rest = vec![0u8; 16];
        let text = b"Requested AEAD algorithm not found\0";
        let len = 4 + text.len();
        rest.extend_from_slice(&(len as u16).to_ne_bytes());
        rest.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        rest.extend_from_slice(text);
        assert_eq!(
            ext_ack_msg(&h, &rest).as_deref(),
            Some("Requested AEAD algorithm not found")
        );
        h.flags = 0;
        assert_eq!(ext_ack_msg(&h, &rest), None);
    }

    #[test]
    fn errors_name_object_and_map_codes() {
        let e = NlError {
            errno: nix::errno::Errno::ENOSYS as i32,
            msg: Some("Requested AEAD algorithm not found".into()),
        };
        let err = to_error("add xfrm state", "spi 0x1000101", &e);
        assert_eq!(err.code(), 105);
        assert!(err.to_string().contains("spi 0x1000101"), "{err}");
        let e = NlError {
            errno: nix::errno::Errno::EEXIST as i32,
            msg: None,
        };
        assert_eq!(to_error("add xfrm policy", "p", &e).code(), 102);
        let e = NlError {
            errno: nix::errno::Errno::EINVAL as i32,
            msg: None,
        };
        assert_eq!(to_error("add xfrm policy", "p", &e).code(), 100);
    }
}
