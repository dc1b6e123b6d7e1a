//! The async VPP API client: connect over `api.sock`, send requests, collect dumps.
//!
//! ```no_run
//! use scrambler_vpp_api::api::interface::SwInterfaceSetFlags;
//! use scrambler_vpp_api::api::types::IfStatusFlags;
//! use scrambler_vpp_api::VppClient;
//!
//! # async fn demo() -> Result<(), scrambler_vpp_api::VppError> {
//! let vpp = VppClient::connect("/run/vpp/api.sock").await?;
//! let v = vpp.show_version().await?;
//! println!("{} {}", v.program, v.version);
//! for i in vpp.interfaces().await? {
//!     println!("{} {}", i.sw_if_index, i.interface_name);
//! }
//! // any generated request, with its reply type checked at compile time
//! vpp.request(&SwInterfaceSetFlags { sw_if_index: 1, flags: IfStatusFlags::IF_STATUS_API_FLAG_ADMIN_UP })
//!     .await?;
//! vpp.close().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::api::types::{FibPath, IpRoute};
use crate::api::{interface, ip, memclnt, vlib, vpe, MESSAGES};
use crate::codec::{Encode, EncodeBuf};
use crate::error::VppError;
use crate::message::{decode_message, encode_message, split_name_crc, Dump, Message, Request};
use crate::transport::{frame_header, read_frame, write_frame, ScrubbingReader};

/// Message id of `sockclnt_create`: fixed, since it is sent before the client has the
/// message table (memclnt's messages are registered first, from id 1).
const SOCKCLNT_CREATE_ID: u16 = 15;
/// Message id of `sockclnt_create_reply`.
const SOCKCLNT_CREATE_REPLY_ID: u16 = 16;

/// Read buffer of the socket: replies to requests sent together arrive together.
const READ_BUFFER: usize = 64 << 10;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Client name VPP shows in `show api clients` (at most 63 bytes).
    pub name: String,
    /// How long to wait for each reply (and for each message of a dump).
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            name: "scrambler".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// A connection to VPP's binary API over its unix socket.
///
/// Requests may be issued concurrently from many tasks (`&self`); replies are matched to
/// requests by their `context`. Dropping the client closes the socket; [`VppClient::close`]
/// also unregisters it from VPP first.
#[derive(Debug)]
pub struct VppClient {
    inner: Arc<Inner>,
    reader: tokio::task::JoinHandle<()>,
}

/// Frames are handed over in buffers zeroed when dropped (SA dumps carry keys).
type Frame = Zeroizing<Vec<u8>>;

type Pending = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Frame>>>>;

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    /// Framed messages waiting for the writer: whoever holds it next sends all of them in
    /// one write (requests issued together leave together). Zeroed when sent (SA keys).
    outbox: Mutex<EncodeBuf>,
    /// `name_crc` -> message id, as the running VPP announced them.
    table: HashMap<String, u16>,
    pending: Pending,
    /// Set by the reader when the socket is gone.
    closed: Arc<AtomicBool>,
    next_context: AtomicU32,
    /// Our registration (`index` of sockclnt_create_reply), sent as `client_index`.
    index: u32,
    timeout: Duration,
}

/// Removes a pending context when the request ends or is cancelled.
struct PendingGuard<'a> {
    pending: &'a Pending,
    context: u32,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.context);
        }
    }
}

impl VppClient {
    /// Connects to the API socket at `path` (VPP's `socksvr { socket-name … }`) with default
    /// options, and registers with `sockclnt_create`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, VppError> {
        Self::connect_with(path, ConnectOptions::default()).await
    }

    /// Like [`VppClient::connect`], with options.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        opts: ConnectOptions,
    ) -> Result<Self, VppError> {
        let path = path.as_ref().to_path_buf();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| VppError::Io {
                path: path.clone(),
                op: "connect",
                source,
            })?;
        let (mut rd, mut wr) = stream.into_split();
        let (index, table) =
            tokio::time::timeout(opts.timeout, handshake(&mut rd, &mut wr, &path, &opts.name))
                .await
                .map_err(|_| VppError::Timeout {
                    message: memclnt::SockclntCreate::NAME,
                    secs: opts.timeout.as_secs_f64(),
                })??;
        tracing::debug!(path = %path.display(), index, messages = table.len(), "connected to VPP");

        // context offset per message id, for the messages this client knows
        let mut offsets = HashMap::new();
        for m in MESSAGES {
            if let (Some(id), Some(off)) = (table.get(&m.name_crc()), m.header.context_offset()) {
                offsets.insert(*id, off);
            }
        }
        let pending: Pending = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_loop(
            ScrubbingReader::with_capacity(READ_BUFFER, rd),
            path.clone(),
            offsets,
            pending.clone(),
            closed.clone(),
        ));
        Ok(VppClient {
            inner: Arc::new(Inner {
                path,
                writer: tokio::sync::Mutex::new(wr),
                outbox: Mutex::default(),
                table,
                pending,
                closed,
                next_context: AtomicU32::new(1),
                index,
                timeout: opts.timeout,
            }),
            reader,
        })
    }

    /// The socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The message id of `name` with `crc` in the running VPP.
    ///
    /// Fails with [`VppError::CrcMismatch`] when VPP has the message with another CRC (its
    /// definition differs from the one this client was generated for), and with
    /// [`VppError::UnknownMessage`] when VPP lacks it.
    pub fn message_id(&self, name: &str, crc: u32) -> Result<u16, VppError> {
        let key = format!("{name}_{crc:08x}");
        if let Some(id) = self.inner.table.get(&key) {
            return Ok(*id);
        }
        let theirs = self
            .inner
            .table
            .keys()
            .filter_map(|k| split_name_crc(k))
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c);
        Err(match theirs {
            Some(theirs) => VppError::CrcMismatch {
                message: name.to_string(),
                ours: crc,
                theirs,
            },
            None => VppError::UnknownMessage {
                message: name.to_string(),
                crc,
            },
        })
    }

    /// The message id of `M` in the running VPP (see [`VppClient::message_id`]).
    pub fn id_of<M: Message>(&self) -> Result<u16, VppError> {
        self.message_id(M::NAME, M::CRC)
    }

    /// Sends `msg` and waits for its reply. A negative `retval` becomes
    /// [`VppError::Retval`] naming the message and VPP's error.
    ///
    /// ```no_run
    /// # async fn f(vpp: &scrambler_vpp_api::VppClient) -> Result<(), scrambler_vpp_api::VppError> {
    /// use scrambler_vpp_api::api::vpe::ShowVersion;
    /// let reply = vpp.request(&ShowVersion {}).await?;
    /// assert_eq!(reply.program, "vpe");
    /// # Ok(()) }
    /// ```
    pub async fn request<M: Request>(&self, msg: &M) -> Result<M::Reply, VppError> {
        let reply = self.request_unchecked(msg).await?;
        match reply.retval() {
            Some(rv) if rv < 0 => Err(VppError::Retval {
                message: M::NAME,
                retval: rv,
            }),
            _ => Ok(reply),
        }
    }

    /// Like [`VppClient::request`], but returns the reply whatever its `retval`.
    pub async fn request_unchecked<M: Request>(&self, msg: &M) -> Result<M::Reply, VppError> {
        let id = self.id_of::<M>()?;
        let reply_id = self.id_of::<M::Reply>()?;
        let (context, mut rx, _guard) = self.register(M::NAME)?;
        let buf = self.encode(msg, id, context)?;
        self.send(&[buf]).await?;
        let frame = self.recv(&mut rx, M::NAME).await?;
        let got = frame_id(&frame)?;
        if got != reply_id {
            return Err(VppError::Protocol(format!(
                "{} answered with message id {got}, expected {} ({reply_id})",
                M::NAME,
                <M::Reply as Message>::NAME
            )));
        }
        decode_body::<M::Reply>(&frame)
    }

    /// Sends the dump request `msg` followed by `control_ping`, and collects the details
    /// messages until the `control_ping_reply` arrives.
    ///
    /// ```no_run
    /// # async fn f(vpp: &scrambler_vpp_api::VppClient) -> Result<(), scrambler_vpp_api::VppError> {
    /// use scrambler_vpp_api::api::ipip::IpipTunnelDump;
    /// let tunnels = vpp.dump(&IpipTunnelDump { sw_if_index: u32::MAX }).await?;
    /// println!("{} ipip tunnels", tunnels.len());
    /// # Ok(()) }
    /// ```
    pub async fn dump<M: Dump>(&self, msg: &M) -> Result<Vec<M::Details>, VppError> {
        let id = self.id_of::<M>()?;
        let details_id = self.id_of::<M::Details>()?;
        let ping_id = self.id_of::<memclnt::ControlPing>()?;
        let ping_reply_id = self.id_of::<memclnt::ControlPingReply>()?;
        let (context, mut rx, _guard) = self.register(M::NAME)?;
        let req = self.encode(msg, id, context)?;
        let ping = self.encode(&memclnt::ControlPing {}, ping_id, context)?;
        self.send(&[req, ping]).await?;
        let mut out = Vec::new();
        loop {
            let frame = self.recv(&mut rx, M::NAME).await?;
            let got = frame_id(&frame)?;
            if got == details_id {
                out.push(decode_body::<M::Details>(&frame)?);
            } else if got == ping_reply_id {
                return Ok(out);
            } else {
                return Err(VppError::Protocol(format!(
                    "{} dump got message id {got}, expected {} ({details_id}) or control_ping_reply ({ping_reply_id})",
                    M::NAME,
                    <M::Details as Message>::NAME
                )));
            }
        }
    }

    /// `control_ping`: a round trip that proves VPP's API is alive.
    pub async fn control_ping(&self) -> Result<memclnt::ControlPingReply, VppError> {
        self.request(&memclnt::ControlPing {}).await
    }

    /// `show_version`: program, version, build date and directory.
    pub async fn show_version(&self) -> Result<vpe::ShowVersionReply, VppError> {
        self.request(&vpe::ShowVersion {}).await
    }

    /// Every software interface (`sw_interface_dump`).
    pub async fn interfaces(&self) -> Result<Vec<interface::SwInterfaceDetails>, VppError> {
        self.dump(&interface::SwInterfaceDump::default()).await
    }

    /// Adds (`is_add`) or deletes the route of `prefix` in the main table with `paths`
    /// (`ip_route_add_del`, not multipath: an add replaces the paths the route had).
    pub async fn route_add_del(
        &self,
        prefix: ipnet::IpNet,
        paths: Vec<FibPath>,
        is_add: bool,
    ) -> Result<(), VppError> {
        self.request(&ip::IpRouteAddDel {
            is_add,
            is_multipath: false,
            route: IpRoute {
                table_id: 0,
                stats_index: 0,
                prefix: prefix.into(),
                paths,
            },
        })
        .await?;
        Ok(())
    }

    /// Runs a debug-CLI command through the API (`cli_inband`) and returns its output.
    pub async fn cli(&self, cmd: &str) -> Result<String, VppError> {
        let r = self
            .request(&vlib::CliInband {
                cmd: cmd.to_string(),
            })
            .await?;
        Ok(r.reply)
    }

    /// Unregisters from VPP (`sockclnt_delete`) and closes the socket.
    pub async fn close(self) -> Result<(), VppError> {
        let msg = memclnt::SockclntDelete {
            index: self.inner.index,
        };
        let r = match self.request_unchecked(&msg).await {
            Ok(r) => r,
            // VPP may close the socket before its reply leaves
            Err(VppError::Closed { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if r.response < 0 {
            return Err(VppError::Retval {
                message: memclnt::SockclntDelete::NAME,
                retval: r.response,
            });
        }
        Ok(())
    }

    fn register(
        &self,
        message: &'static str,
    ) -> Result<(u32, mpsc::UnboundedReceiver<Frame>, PendingGuard<'_>), VppError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut p = self.inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        // checked under the lock the reader takes to clear `pending`
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(VppError::Closed {
                path: self.inner.path.clone(),
                message,
            });
        }
        let context = loop {
            let c = self.inner.next_context.fetch_add(1, Ordering::Relaxed);
            if c != 0 && !p.contains_key(&c) {
                break c;
            }
        };
        p.insert(context, tx);
        drop(p);
        Ok((
            context,
            rx,
            PendingGuard {
                pending: &self.inner.pending,
                context,
            },
        ))
    }

    fn encode<M: Message>(&self, msg: &M, id: u16, context: u32) -> Result<EncodeBuf, VppError> {
        encode_message(msg, id, self.inner.index, context).map_err(|source| VppError::Codec {
            message: M::NAME,
            source,
        })
    }

    async fn send(&self, msgs: &[EncodeBuf]) -> Result<(), VppError> {
        {
            let mut out = self.inner.outbox.lock().unwrap_or_else(|e| e.into_inner());
            for m in msgs {
                let len = u32::try_from(m.len()).map_err(|_| {
                    VppError::Protocol(format!("message of {} bytes is too large", m.len()))
                })?;
                out.extend_from_slice(&frame_header(len));
                out.extend_from_slice(m);
            }
        }
        let mut w = self.inner.writer.lock().await;
        let batch =
            std::mem::take(&mut *self.inner.outbox.lock().unwrap_or_else(|e| e.into_inner()));
        // empty: a request that held the writer before us sent ours along
        if !batch.is_empty() {
            let io = |source| VppError::Io {
                path: self.inner.path.clone(),
                op: "write",
                source,
            };
            w.write_all(&batch).await.map_err(io)?;
            w.flush().await.map_err(io)?;
        }
        Ok(())
    }

    async fn recv(
        &self,
        rx: &mut mpsc::UnboundedReceiver<Frame>,
        message: &'static str,
    ) -> Result<Frame, VppError> {
        match tokio::time::timeout(self.inner.timeout, rx.recv()).await {
            Err(_) => Err(VppError::Timeout {
                message,
                secs: self.inner.timeout.as_secs_f64(),
            }),
            Ok(None) => Err(VppError::Closed {
                path: self.inner.path.clone(),
                message,
            }),
            Ok(Some(f)) => Ok(f),
        }
    }
}

impl Drop for VppClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn frame_id(frame: &[u8]) -> Result<u16, VppError> {
    match frame {
        [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
        _ => Err(VppError::Protocol("message shorter than its id".into())),
    }
}

fn decode_body<M: Message>(frame: &[u8]) -> Result<M, VppError> {
    decode_message(frame).map_err(|source| VppError::Codec {
        message: M::NAME,
        source,
    })
}

/// Registers with `sockclnt_create`; returns our index and the message table.
async fn handshake(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    path: &Path,
    name: &str,
) -> Result<(u32, HashMap<String, u16>), VppError> {
    let mut buf = EncodeBuf::default();
    buf.extend_from_slice(&SOCKCLNT_CREATE_ID.to_be_bytes());
    buf.extend_from_slice(&0u32.to_be_bytes()); // context
    memclnt::SockclntCreate {
        name: name.to_string(),
    }
    .encode(&mut buf)
    .map_err(|source| VppError::Codec {
        message: memclnt::SockclntCreate::NAME,
        source,
    })?;
    write_frame(wr, &buf, path).await?;
    let frame = read_frame(rd, path)
        .await?
        .ok_or_else(|| VppError::Closed {
            path: path.to_path_buf(),
            message: memclnt::SockclntCreate::NAME,
        })?;
    let id = frame_id(&frame)?;
    if id != SOCKCLNT_CREATE_REPLY_ID {
        return Err(VppError::Protocol(format!(
            "sockclnt_create answered with message id {id}, expected {SOCKCLNT_CREATE_REPLY_ID}"
        )));
    }
    let reply = decode_body::<memclnt::SockclntCreateReply>(&frame)?;
    if reply.response < 0 {
        return Err(VppError::Retval {
            message: memclnt::SockclntCreate::NAME,
            retval: reply.response,
        });
    }
    let table: HashMap<String, u16> = reply
        .message_table
        .into_iter()
        .map(|e| (e.name, e.index))
        .collect();
    // the handshake itself relied on these two definitions
    for (name, crc) in [
        (memclnt::SockclntCreate::NAME, memclnt::SockclntCreate::CRC),
        (
            memclnt::SockclntCreateReply::NAME,
            memclnt::SockclntCreateReply::CRC,
        ),
    ] {
        if !table.contains_key(&format!("{name}_{crc:08x}")) {
            if let Some((_, theirs)) = table
                .keys()
                .filter_map(|k| split_name_crc(k))
                .find(|(n, _)| *n == name)
            {
                return Err(VppError::CrcMismatch {
                    message: name.into(),
                    ours: crc,
                    theirs,
                });
            }
        }
    }
    Ok((reply.index, table))
}

/// Reads frames and hands each to the request waiting on its context.
async fn read_loop(
    mut rd: ScrubbingReader<OwnedReadHalf>,
    path: PathBuf,
    offsets: HashMap<u16, usize>,
    pending: Pending,
    closed: Arc<AtomicBool>,
) {
    loop {
        let frame = match read_frame(&mut rd, &path).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::debug!(path = %path.display(), "VPP closed the API socket");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading from VPP failed");
                break;
            }
        };
        let Ok(id) = frame_id(&frame) else { continue };
        let context = offsets
            .get(&id)
            .and_then(|off| frame.get(*off..*off + 4))
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let Some(context) = context.filter(|c| *c != 0) else {
            tracing::trace!(id, "VPP message without a context of ours, ignored");
            continue;
        };
        let tx = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&context)
            .cloned();
        match tx {
            Some(tx) => {
                let _ = tx.send(frame);
            }
            None => tracing::trace!(id, context, "reply for a request no longer waiting"),
        }
    }
    // wake every waiter: their senders go away; later requests fail at once
    closed.store(true, Ordering::SeqCst);
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
