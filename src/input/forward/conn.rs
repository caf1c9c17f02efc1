//! One forward-protocol connection, over any byte stream (TCP, TLS, Unix socket).
//!
//! Reading: bytes go into one buffer; [`Scanner`] finds where each frame ends; a frame larger
//! than `chunk_size_limit` (known from its header or from the bytes buffered) closes the
//! connection. The buffer never holds more than `chunk_size_limit` plus one byte (its
//! allocation may reach about twice that while growing).
//!
//! Acknowledging: each frame is emitted into the router in arrival order. When its option
//! carried `chunk`, the emit's [`Receipt`] goes to this connection's writer task, which waits
//! for [`Receipt::durable`] and only then writes `{"ack": chunk}`. Acks go out in frame order;
//! at most `MAX_PENDING_ACKS` frames wait for durability before reading pauses (back-pressure
//! instead of an unbounded queue). An emit error or a failed sync sends no ack: the client
//! resends. Frames without `chunk` get no response, as in Fluentd.
//!
//! Faults: anything wrong with the bytes a client sends (malformed MessagePack, wrong types,
//! oversized or stalled frames, a failed handshake, idleness past `idle_timeout`) closes this
//! connection only, with a rate-limited warning that names the peer and the reason.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};

use crate::config::{ConfigError, Element};
use crate::event::EventStream;
use crate::output::{BoxFuture, EmitError, Receipt};
use crate::router::{LabelId, Router};

use super::protocol::{self, DecodeOptions, Frame, Scanner};
use super::security::Security;

/// Frames whose acks may wait for durability at once, per connection.
pub const MAX_PENDING_ACKS: usize = 64;
/// Smallest read.
const READ_CHUNK: usize = 64 << 10;
/// Most buffer space reserved ahead of a declared payload at once (a client that declares a
/// large binary and then sends nothing does not get the whole limit allocated).
const MAX_RESERVE: usize = 8 << 20;
/// Frames smaller than this are copied out of the read buffer so it can be reused in place.
const COPY_BELOW: usize = 64 << 10;
/// How long after shutdown a pending ack may still wait for durability.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often the same kind of warning is logged.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Where a connection's events go. The router in production; tests plug in their own to
/// control durability.
pub trait Sink: Send + Sync + 'static {
    /// Emits one stream; see [`Router::emit`]. May wait (a full buffer that blocks): reading
    /// from the connection pauses meanwhile, which is the back-pressure the design asks for.
    fn emit<'a>(
        &'a self,
        tag: &'a str,
        es: EventStream,
    ) -> BoxFuture<'a, Result<Receipt, EmitError>>;
}

/// The router and the label a source emits into.
#[derive(Debug)]
pub struct RouterSink {
    /// The router.
    pub router: Arc<Router>,
    /// The source's label.
    pub label: LabelId,
}

impl Sink for RouterSink {
    fn emit<'a>(
        &'a self,
        tag: &'a str,
        es: EventStream,
    ) -> BoxFuture<'a, Result<Receipt, EmitError>> {
        Box::pin(self.router.emit(self.label, tag, es))
    }
}

/// Protocol parameters shared by `forward` and `unix`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Event checks and decompression bound.
    pub decode: DecodeOptions,
    /// Largest frame accepted; larger ones close the connection.
    pub chunk_size_limit: usize,
    /// Frames larger than this are logged.
    pub chunk_size_warn_limit: Option<usize>,
    /// `tag`: replaces the tag clients send.
    pub tag: Option<String>,
    /// `add_tag_prefix`: prepended to the tag with a dot.
    pub add_tag_prefix: Option<String>,
    /// `source_address_key`: record field for the client's IP address.
    pub source_address_key: Option<String>,
    /// `source_hostname_key`: record field for the client's host name.
    pub source_hostname_key: Option<String>,
    /// `deny_keepalive`: close after the first frame (and its ack).
    pub deny_keepalive: bool,
    /// `idle_timeout` (sluice): close connections silent this long between frames.
    pub idle_timeout: Option<Duration>,
    /// `frame_timeout` (sluice): close when a started frame gets no byte for this long, or a
    /// response cannot be written for this long.
    pub frame_timeout: Duration,
    /// `<security>`: the handshake, when configured.
    pub security: Option<Security>,
}

/// Fluentd has no default `chunk_size_limit`; sluice needs one to bound memory. 256 MiB is the
/// largest chunk Fluentd's own forward output sends by default (file buffer
/// `chunk_limit_size`), so unchanged senders keep working.
pub const DEFAULT_CHUNK_SIZE_LIMIT: u64 = 256 << 20;
/// Fluentd's `decompression_size_limit` default.
pub const DEFAULT_DECOMPRESSION_SIZE_LIMIT: u64 = 256 << 20;

fn positive_secs(section: &Element, key: &str) -> Result<Option<Duration>, ConfigError> {
    match section.time(key)? {
        None => Ok(None),
        Some(t) if t > 0.0 && t.is_finite() => Ok(Some(Duration::from_secs_f64(t))),
        Some(_) => Ok(None),
    }
}

fn non_empty(section: &Element, key: &str) -> Result<Option<String>, ConfigError> {
    match section.param(key) {
        Some(p) if p.value.is_empty() => Err(ConfigError::at(
            &p.value_pos,
            format!("'{key}' parameter must not be empty"),
        )),
        Some(p) => Ok(Some(p.value.clone())),
        None => Ok(None),
    }
}

impl Settings {
    /// Reads the protocol parameters of a `<source>` (both `forward` and `unix`).
    pub fn configure(section: &Element) -> Result<Settings, ConfigError> {
        let limit = section
            .size("chunk_size_limit")?
            .unwrap_or(DEFAULT_CHUNK_SIZE_LIMIT);
        if limit == 0 {
            let p = section.peek("chunk_size_limit").expect("was read");
            return Err(ConfigError::at(
                &p.value_pos,
                "chunk_size_limit must be positive",
            ));
        }
        let warn = section.size("chunk_size_warn_limit")?;
        let decompression = section
            .size("decompression_size_limit")?
            .unwrap_or(DEFAULT_DECOMPRESSION_SIZE_LIMIT);
        let skip_invalid_event = section.bool("skip_invalid_event")?.unwrap_or(true);
        let tag = non_empty(section, "tag")?;
        let add_tag_prefix = non_empty(section, "add_tag_prefix")?;
        let deny_keepalive = section.bool("deny_keepalive")?.unwrap_or(false);
        let idle_timeout = positive_secs(section, "idle_timeout")?;
        let frame_timeout =
            positive_secs(section, "frame_timeout")?.unwrap_or(Duration::from_secs(60));
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Ok(Settings {
            decode: DecodeOptions {
                skip_invalid_event,
                decompression_size_limit: clamp(decompression),
            },
            chunk_size_limit: clamp(limit),
            chunk_size_warn_limit: warn.map(clamp),
            tag,
            add_tag_prefix,
            source_address_key: None,
            source_hostname_key: None,
            deny_keepalive,
            idle_timeout,
            frame_timeout,
            security: None,
        })
    }
}

/// Who is on the other end.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's IP address (none for Unix sockets).
    pub addr: Option<IpAddr>,
    /// The client's port (0 for Unix sockets).
    pub port: u16,
    /// The client's host name (reverse lookup with `resolve_hostname`, the address otherwise,
    /// the socket path for Unix sockets).
    pub host: String,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            Some(a) => write!(f, "{a}:{}", self.port),
            None => f.write_str(&self.host),
        }
    }
}

/// Logs at most one warning of each kind per interval, counting the rest.
#[derive(Debug, Default)]
pub struct WarnLimiter {
    seen: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl WarnLimiter {
    /// `Some(suppressed)` when a warning of `kind` may be logged now.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match seen.get_mut(kind) {
            Some((last, n)) if now.duration_since(*last) < WARN_INTERVAL => {
                *n += 1;
                None
            }
            Some((last, n)) => {
                let s = *n;
                *last = now;
                *n = 0;
                Some(s)
            }
            None => {
                seen.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// Serves connections for one input.
pub struct Handler {
    settings: Arc<Settings>,
    sink: Arc<dyn Sink>,
    warn: WarnLimiter,
    /// The input type, for log lines.
    kind: &'static str,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A pending ack: written once the receipt is durable.
struct AckJob {
    chunk: Bytes,
    receipt: Receipt,
}

/// How a read loop ended.
enum End {
    /// The client closed between frames, or sluice is stopping.
    Clean,
    /// `deny_keepalive`: done after one frame; close gracefully.
    Done,
    /// The client broke the protocol or timed out.
    Fault(&'static str, String),
}

impl Handler {
    /// A handler emitting into `sink`; `kind` names the input in logs.
    pub fn new(settings: Arc<Settings>, sink: Arc<dyn Sink>, kind: &'static str) -> Handler {
        Handler {
            settings,
            sink,
            warn: WarnLimiter::default(),
            kind,
        }
    }

    /// Logs a rate-limited warning.
    pub fn warn(&self, kind: &'static str, peer: &dyn std::fmt::Display, what: &str) {
        if let Some(suppressed) = self.warn.allow(kind) {
            if suppressed > 0 {
                tracing::warn!(
                    input = self.kind,
                    peer = %peer,
                    suppressed,
                    "{what} ({suppressed} similar warnings suppressed)"
                );
            } else {
                tracing::warn!(input = self.kind, peer = %peer, "{what}");
            }
        }
    }

    /// Serves one connection until the client closes it, breaks the protocol, or sluice stops.
    pub async fn serve<S>(self: Arc<Self>, stream: S, peer: Peer, shutdown: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut reader = Reader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            scanner: Scanner::new(),
            shutdown: shutdown.clone(),
            first: true,
        };
        tracing::trace!(input = self.kind, peer = %peer, "accepted connection");

        if let Some(sec) = &self.settings.security {
            match self.handshake(sec, &mut reader, &mut wr, &peer).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(reason) => {
                    self.warn("handshake", &peer, &format!("closing connection: {reason}"));
                    return;
                }
            }
        }

        let (tx, rx) = mpsc::channel::<AckJob>(MAX_PENDING_ACKS);
        let writer = tokio::spawn(self.clone().write_acks(wr, rx, peer.clone(), shutdown));
        let end = self.read_loop(&mut reader, &tx, &peer).await;
        drop(tx);
        let wr = writer.await.ok().flatten();
        match end {
            End::Clean => {}
            End::Done => {
                if let Some(wr) = wr {
                    graceful_close(reader, wr, self.settings.frame_timeout).await;
                }
            }
            End::Fault(kind, reason) => {
                self.warn(kind, &peer, &format!("closing connection: {reason}"));
            }
        }
    }

    /// Runs the HELO/PING/PONG exchange. `Ok(true)`: authenticated; `Ok(false)`: refused (the
    /// failure PONG was sent and the connection closed).
    async fn handshake<S: AsyncRead + AsyncWrite>(
        &self,
        sec: &Security,
        reader: &mut Reader<S>,
        wr: &mut WriteHalf<S>,
        peer: &Peer,
    ) -> Result<bool, String> {
        let mut nonce = [0u8; 16];
        let mut auth_salt = [0u8; 16];
        getrandom::fill(&mut nonce)
            .and_then(|_| getrandom::fill(&mut auth_salt))
            .map_err(|e| format!("no randomness for the handshake: {e}"))?;
        let helo = protocol::helo(&nonce, &auth_salt, !self.settings.deny_keepalive);
        write_timed(wr, &helo, self.settings.frame_timeout).await?;
        // The handshake must finish in bounded time even without `idle_timeout`: a client that
        // never authenticates must not hold a connection slot.
        let limit = self.settings.frame_timeout;
        let frame = match tokio::time::timeout(limit, reader.next_frame(&self.settings)).await {
            Err(_) => return Err(format!("no PING within {}s of HELO", limit.as_secs_f64())),
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return Ok(false),
            Ok(Err((_, reason))) => return Err(reason),
        };
        let result = match protocol::parse_ping(&frame) {
            None => Err("invalid ping message".to_string()),
            Some(ping) => sec.check_ping(&ping, peer.addr, &nonce, &auth_salt),
        };
        match result {
            Ok(pong) => {
                write_timed(wr, &pong, self.settings.frame_timeout).await?;
                tracing::debug!(input = self.kind, peer = %peer, "connection established");
                Ok(true)
            }
            Err(reason) => {
                self.warn(
                    "handshake",
                    peer,
                    &format!("handshake failed, closing connection: {reason}"),
                );
                let _ = write_timed(
                    wr,
                    &protocol::pong_fail(&reason),
                    self.settings.frame_timeout,
                )
                .await;
                let _ = wr.shutdown().await;
                Ok(false)
            }
        }
    }

    async fn read_loop<S: AsyncRead>(
        &self,
        reader: &mut Reader<S>,
        tx: &mpsc::Sender<AckJob>,
        peer: &Peer,
    ) -> End {
        let s = &self.settings;
        loop {
            let frame = match reader.next_frame(s).await {
                Ok(Some(f)) => f,
                Ok(None) => return End::Clean,
                Err((kind, reason)) => return End::Fault(kind, reason),
            };
            if let Some(w) = s.chunk_size_warn_limit.filter(|w| frame.len() > *w) {
                self.warn(
                    "size_warn",
                    peer,
                    &format!(
                        "Input chunk size is larger than 'chunk_size_warn_limit': size={} limit={w}",
                        frame.len()
                    ),
                );
            }
            // Large frames (gzip expansion, big Forward batches) are decoded off the async
            // threads so one client's work does not stall every other connection.
            let decoded = if protocol::is_heavy(&frame) {
                let (f, opts) = (frame.clone(), s.decode.clone());
                tokio::task::spawn_blocking(move || protocol::decode_frame(&f, &opts))
                    .await
                    .unwrap_or_else(|e| {
                        Err(protocol::FrameError::Invalid(format!(
                            "decoder failed: {e}"
                        )))
                    })
            } else {
                protocol::decode_frame(&frame, &s.decode)
            };
            let events = match decoded {
                Ok(Frame::Heartbeat) => continue,
                Ok(Frame::Events(e)) => e,
                Err(e) => return End::Fault("frame", e.to_string()),
            };
            drop(frame);
            if events.skipped > 0 {
                self.warn(
                    "skip",
                    peer,
                    &format!(
                        "skip invalid event: tag={:?} skipped={} reason={}",
                        events.tag,
                        events.skipped,
                        events.skip_reason.as_deref().unwrap_or("invalid")
                    ),
                );
            }
            if let Some(why) = &events.dropped {
                self.warn(
                    "signal",
                    peer,
                    &format!("dropped frame with tag={:?}: {why}", events.tag),
                );
            }
            let mut tag = s.tag.clone().unwrap_or(events.tag);
            if let Some(p) = &s.add_tag_prefix {
                tag = format!("{p}.{tag}");
            }
            let stream = self.inject(events.stream, peer);
            match (self.sink.emit(&tag, stream).await, events.chunk) {
                (Ok(receipt), Some(chunk)) => {
                    if tx.send(AckJob { chunk, receipt }).await.is_err() {
                        return End::Fault("write", "the response writer stopped".into());
                    }
                }
                (Ok(_), None) => {}
                // The router logged the error; without an ack the client sends again.
                (Err(e), chunk) => {
                    tracing::debug!(input = self.kind, peer = %peer, tag, error = %e, acked = false, has_chunk = chunk.is_some(), "emit failed");
                }
            }
            if s.deny_keepalive {
                return End::Done;
            }
        }
    }

    fn inject(&self, es: EventStream, peer: &Peer) -> EventStream {
        let s = &self.settings;
        if es.is_empty() || (s.source_address_key.is_none() && s.source_hostname_key.is_none()) {
            return es;
        }
        let addr = peer
            .addr
            .map(|a| a.to_canonical().to_string())
            .unwrap_or_default();
        let mut fields: Vec<(&str, &str)> = Vec::with_capacity(2);
        if let Some(k) = &s.source_address_key {
            fields.push((k, &addr));
        }
        if let Some(k) = &s.source_hostname_key {
            fields.push((k, &peer.host));
        }
        protocol::inject_stream(&es, &fields)
    }

    /// Writes acks in order, each once its receipt is durable. Returns the write half when it
    /// is still usable.
    async fn write_acks<S: AsyncWrite>(
        self: Arc<Self>,
        mut wr: WriteHalf<S>,
        mut rx: mpsc::Receiver<AckJob>,
        peer: Peer,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<WriteHalf<S>> {
        while let Some(job) = rx.recv().await {
            let durable = tokio::select! {
                r = job.receipt.durable() => r,
                _ = stopping_then(&mut shutdown, SHUTDOWN_GRACE) => {
                    Err(EmitError::ShuttingDown)
                }
            };
            match durable {
                Ok(()) => {
                    let resp = protocol::ack_response(&job.chunk);
                    if let Err(e) = write_timed(&mut wr, &resp, self.settings.frame_timeout).await {
                        self.warn("write", &peer, &format!("closing connection: {e}"));
                        return None;
                    }
                }
                Err(e) => {
                    self.warn(
                        "durable",
                        &peer,
                        &format!("events not acknowledged, the client will resend: {e}"),
                    );
                }
            }
        }
        Some(wr)
    }
}

/// Resolves `grace` after the shutdown flag is set (never if it is not).
async fn stopping_then(shutdown: &mut watch::Receiver<bool>, grace: Duration) {
    loop {
        if *shutdown.borrow_and_update() {
            break;
        }
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    tokio::time::sleep(grace).await;
}

async fn write_timed<W: AsyncWrite + Unpin>(
    wr: &mut W,
    data: &[u8],
    limit: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(limit, async {
        wr.write_all(data).await?;
        wr.flush().await
    })
    .await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot write response: {e}")),
        Err(_) => Err(format!(
            "client did not read its response for {}s",
            limit.as_secs_f64()
        )),
    }
}

/// Closes after the last response: FIN, then wait (bounded) for the client to close, so
/// that `SO_LINGER 0` cannot turn the close into a reset that discards the response.
async fn graceful_close<S: AsyncRead + AsyncWrite>(
    mut reader: Reader<S>,
    mut wr: WriteHalf<S>,
    limit: Duration,
) {
    let _ = wr.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(limit.min(Duration::from_secs(5)), async {
        while let Ok(n) = reader.rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The read side: a growing buffer and the frame scanner.
struct Reader<S> {
    rd: ReadHalf<S>,
    buf: BytesMut,
    scanner: Scanner,
    shutdown: watch::Receiver<bool>,
    first: bool,
}

type Fault = (&'static str, String);

impl<S: AsyncRead> Reader<S> {
    /// The next complete frame; `Ok(None)` at a clean end (EOF between frames, shutdown).
    async fn next_frame(&mut self, s: &Settings) -> Result<Option<Bytes>, Fault> {
        let limit = s.chunk_size_limit;
        loop {
            if !self.buf.is_empty() {
                if self.first {
                    self.first = false;
                    if matches!(self.buf[0], b'{' | b'[') {
                        return Err((
                            "frame",
                            "JSON frames are not supported; send MessagePack".into(),
                        ));
                    }
                }
                match self.scanner.scan(&self.buf) {
                    Ok(Some(end)) => {
                        self.scanner.reset();
                        if end > limit {
                            return Err(too_large(end, limit));
                        }
                        let frame = if end < COPY_BELOW {
                            let f = Bytes::copy_from_slice(&self.buf[..end]);
                            let _ = self.buf.split_to(end);
                            f
                        } else {
                            self.buf.split_to(end).freeze()
                        };
                        if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                            self.buf = BytesMut::with_capacity(READ_CHUNK);
                        }
                        return Ok(Some(frame));
                    }
                    Ok(None) => {}
                    Err(e) => return Err(("frame", format!("malformed MessagePack: {e}"))),
                }
                if let Some(n) = self.scanner.needed(&self.buf).filter(|n| *n > limit) {
                    return Err(too_large(n, limit));
                }
                if self.buf.len() > limit {
                    return Err(too_large(self.buf.len(), limit));
                }
            }
            if *self.shutdown.borrow() {
                return Ok(None);
            }
            // Room for the rest of a declared payload (bounded by the limit) or one read.
            let want = self
                .scanner
                .needed(&self.buf)
                .map(|n| n.saturating_sub(self.buf.len()))
                .unwrap_or(0)
                .clamp(READ_CHUNK, MAX_RESERVE)
                .min(limit + 1 - self.buf.len().min(limit) + READ_CHUNK);
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(want);
            }
            let timeout = if self.buf.is_empty() {
                s.idle_timeout
            } else {
                Some(s.frame_timeout)
            };
            let pending = self.buf.len();
            // Never read past the limit (plus the one byte that proves a frame is too large).
            let allowed = (limit + 1).saturating_sub(pending).max(1) as u64;
            let (rd, buf) = (&mut self.rd, &mut self.buf);
            let mut rd = rd.take(allowed);
            let read = async {
                match timeout {
                    Some(t) => tokio::time::timeout(t, rd.read_buf(buf))
                        .await
                        .map_err(|_| t),
                    None => Ok(rd.read_buf(buf).await),
                }
            };
            let r = tokio::select! {
                r = read => r,
                _ = shutdown_signal(&mut self.shutdown) => return Ok(None),
            };
            match r {
                Ok(Ok(0)) if pending == 0 => return Ok(None),
                Ok(Ok(0)) => {
                    return Err((
                        "eof",
                        format!("connection closed inside a frame ({pending} bytes unread)"),
                    ))
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(("io", format!("read error: {e}"))),
                Err(t) if pending == 0 => {
                    return Err(("idle", format!("idle for {}s", t.as_secs_f64())))
                }
                Err(t) => {
                    return Err((
                        "stalled",
                        format!(
                            "no data for {}s inside a frame ({pending} bytes buffered)",
                            t.as_secs_f64()
                        ),
                    ))
                }
            }
        }
    }
}

fn too_large(size: usize, limit: usize) -> Fault {
    (
        "size",
        format!("Input chunk size is larger than 'chunk_size_limit', dropped: size={size} limit={limit}"),
    )
}

/// Resolves when the shutdown flag is (or becomes) set, or its sender is gone.
async fn shutdown_signal(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

/// The host name of `ip` by reverse DNS, when it has one (`resolve_hostname`).
pub fn reverse_lookup(ip: IpAddr) -> Option<String> {
    let sa: socket2::SockAddr = std::net::SocketAddr::new(ip, 0).into();
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: `sa` is a valid socket address of `sa.len()` bytes; `host` is a writable buffer of
    // the length passed; no service buffer is requested.
    let rc = unsafe {
        libc::getnameinfo(
            sa.as_ptr() as *const libc::sockaddr,
            sa.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo succeeded, so `host` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    name.to_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::super::protocol::tests::{enc, entries, packed_frame};
    use super::*;
    use crate::msgpack;
    use crate::output::{DurableWait, SyncProgress};
    use serde_json::json;
    use tokio::io::DuplexStream;

    /// A sink whose receipts become durable only when the test says so.
    struct TestSink {
        progress: watch::Receiver<SyncProgress>,
        seq: Mutex<u64>,
        got: Mutex<Vec<(String, usize)>>,
        fail: bool,
    }

    impl Sink for TestSink {
        fn emit<'a>(
            &'a self,
            tag: &'a str,
            es: EventStream,
        ) -> BoxFuture<'a, Result<Receipt, EmitError>> {
            Box::pin(async move {
                if self.fail {
                    return Err(EmitError::BufferOverflow);
                }
                self.got.lock().unwrap().push((tag.to_string(), es.len()));
                let mut seq = self.seq.lock().unwrap();
                *seq += 1;
                Ok(Receipt::wait_for(DurableWait {
                    progress: self.progress.clone(),
                    seq: *seq,
                }))
            })
        }
    }

    struct Harness {
        client: DuplexStream,
        sync: watch::Sender<SyncProgress>,
        sink: Arc<TestSink>,
        _stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    fn settings() -> Settings {
        let root = crate::config::parser::parse_str(
            "<source>\n@type forward\n</source>\n",
            "t.conf",
            ".".into(),
        )
        .unwrap();
        let mut s = Settings::configure(&root.elements[0]).unwrap();
        s.frame_timeout = Duration::from_secs(2);
        s
    }

    fn start(s: Settings, fail: bool) -> Harness {
        let (sync, progress) = watch::channel(SyncProgress::default());
        let sink = Arc::new(TestSink {
            progress,
            seq: Mutex::new(0),
            got: Mutex::new(Vec::new()),
            fail,
        });
        let handler = Arc::new(Handler::new(Arc::new(s), sink.clone(), "forward"));
        let (client, server) = tokio::io::duplex(1 << 20);
        let (stop, stop_rx) = watch::channel(false);
        let peer = Peer {
            addr: Some("127.0.0.1".parse().unwrap()),
            port: 5555,
            host: "127.0.0.1".into(),
        };
        let task = tokio::spawn(handler.serve(server, peer, stop_rx));
        Harness {
            client,
            sync,
            sink,
            _stop: stop,
            task,
        }
    }

    async fn read_value(c: &mut DuplexStream) -> serde_json::Value {
        read_values(c, 1).await.remove(0)
    }

    /// Reads exactly `n` responses (which may arrive in one read).
    async fn read_values(c: &mut DuplexStream, n: usize) -> Vec<serde_json::Value> {
        let mut buf = Vec::new();
        let mut sc = Scanner::new();
        let mut out = Vec::new();
        while out.len() < n {
            if let Some(end) = sc.scan(&buf).unwrap() {
                out.push(msgpack::to_json_value(&buf[..end]).unwrap());
                buf.drain(..end);
                sc.reset();
                continue;
            }
            let mut b = [0u8; 256];
            let got = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
                .await
                .expect("response in time")
                .unwrap();
            assert!(got > 0, "connection closed");
            buf.extend_from_slice(&b[..got]);
        }
        assert!(buf.is_empty(), "unexpected extra response bytes");
        out
    }

    async fn closed(c: &mut DuplexStream) -> bool {
        let mut b = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn ack_only_after_durable() {
        let mut h = start(settings(), false);
        let f = packed_frame(
            "t",
            &entries(3),
            Some(&enc(&json!({"chunk": "c-1", "size": 3}))),
        );
        h.client.write_all(&f).await.unwrap();
        // Emitted, but not durable: no ack may arrive.
        let mut b = [0u8; 16];
        let early = tokio::time::timeout(Duration::from_millis(300), h.client.read(&mut b)).await;
        assert!(early.is_err(), "an ack was sent before durability");
        assert_eq!(
            h.sink.got.lock().unwrap().clone(),
            vec![("t".to_string(), 3)]
        );
        h.sync.send_modify(|p| p.synced = 1);
        assert_eq!(read_value(&mut h.client).await, json!({"ack": "c-1"}));
    }

    #[tokio::test]
    async fn acks_in_order_and_frames_without_chunk_get_none() {
        let mut h = start(settings(), false);
        let mut all = Vec::new();
        all.extend(packed_frame(
            "a",
            &entries(1),
            Some(&enc(&json!({"chunk": "1"}))),
        ));
        all.extend(enc(&json!(["b", 1_700_000_000, {"x": 1}])));
        all.extend(enc(
            &json!(["c", [[1_700_000_000, {"y": 1}]], {"chunk": "3"}]),
        ));
        h.client.write_all(&all).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.sync.send_modify(|p| p.synced = 3);
        assert_eq!(
            read_values(&mut h.client, 2).await,
            vec![json!({"ack": "1"}), json!({"ack": "3"})]
        );
        let got = h.sink.got.lock().unwrap().clone();
        assert_eq!(got.len(), 3);
    }

    #[tokio::test]
    async fn failed_sync_or_emit_sends_no_ack() {
        let mut h = start(settings(), false);
        h.client
            .write_all(&enc(&json!(["t", 1_700_000_000, {"a": 1}, {"chunk": "z"}])))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.sync.send_modify(|p| p.failed = Some("disk full".into()));
        let mut b = [0u8; 16];
        assert!(
            tokio::time::timeout(Duration::from_millis(300), h.client.read(&mut b))
                .await
                .is_err(),
            "no ack after a failed sync"
        );
        let mut h = start(settings(), true);
        h.client
            .write_all(&enc(&json!(["t", 1_700_000_000, {"a": 1}, {"chunk": "z"}])))
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), h.client.read(&mut b))
                .await
                .is_err(),
            "no ack after an emit error"
        );
    }

    #[tokio::test]
    async fn malformed_frame_closes_only_that_connection() {
        let mut bad = start(settings(), false);
        let mut good = start(settings(), false);
        bad.client
            .write_all(&[0x93, 0xa1, b't', 0xc1])
            .await
            .unwrap();
        assert!(closed(&mut bad.client).await);
        bad.task.await.unwrap();
        good.client
            .write_all(&enc(
                &json!(["ok", 1_700_000_000, {"a": 1}, {"chunk": "g"}]),
            ))
            .await
            .unwrap();
        good.sync.send_modify(|p| p.synced = 1);
        assert_eq!(read_value(&mut good.client).await, json!({"ack": "g"}));
        // Wrong types close too.
        let mut h = start(settings(), false);
        h.client
            .write_all(&enc(&json!({"not": "a frame"})))
            .await
            .unwrap();
        assert!(closed(&mut h.client).await);
    }

    #[tokio::test]
    async fn oversized_frame_closes_from_its_header() {
        let mut s = settings();
        s.chunk_size_limit = 1024;
        let mut h = start(s, false);
        // Declares a 1 MiB binary: refused before the payload arrives.
        let mut hdr = vec![0x92, 0xa1, b't', 0xc6];
        hdr.extend_from_slice(&(1u32 << 20).to_be_bytes());
        h.client.write_all(&hdr).await.unwrap();
        assert!(closed(&mut h.client).await);
        assert!(h.sink.got.lock().unwrap().is_empty());
        // A Forward frame that grows past the limit is refused too.
        let mut s = settings();
        s.chunk_size_limit = 1024;
        let mut h = start(s, false);
        let mut f = vec![0x92, 0xa1, b't', 0xdd, 0, 1, 0, 0];
        for _ in 0..200 {
            f.extend(enc(&json!([1, {"pad": "xxxxxxxxxx"}])));
        }
        let _ = h.client.write_all(&f).await;
        assert!(closed(&mut h.client).await);
    }

    #[tokio::test]
    async fn stalled_frame_times_out() {
        let mut s = settings();
        s.frame_timeout = Duration::from_millis(200);
        let mut h = start(s, false);
        h.client.write_all(&[0x93, 0xa1]).await.unwrap();
        assert!(closed(&mut h.client).await);
    }

    #[tokio::test]
    async fn deny_keepalive_closes_after_first_ack() {
        let mut s = settings();
        s.deny_keepalive = true;
        let mut h = start(s, false);
        h.sync.send_modify(|p| p.synced = 10);
        h.client
            .write_all(&enc(
                &json!(["t", 1_700_000_000, {"a": 1}, {"chunk": "only"}]),
            ))
            .await
            .unwrap();
        assert_eq!(read_value(&mut h.client).await, json!({"ack": "only"}));
        assert!(closed(&mut h.client).await);
    }

    #[tokio::test]
    async fn tag_rewrite_and_source_fields() {
        let mut s = settings();
        s.add_tag_prefix = Some("in".into());
        s.source_address_key = Some("src".into());
        s.source_hostname_key = Some("host".into());
        let (sync, progress) = watch::channel(SyncProgress::default());
        struct Capture(
            Mutex<Vec<(String, EventStream)>>,
            watch::Receiver<SyncProgress>,
        );
        impl Sink for Capture {
            fn emit<'a>(
                &'a self,
                tag: &'a str,
                es: EventStream,
            ) -> BoxFuture<'a, Result<Receipt, EmitError>> {
                self.0.lock().unwrap().push((tag.into(), es));
                let _ = &self.1;
                Box::pin(async { Ok(Receipt::stored()) })
            }
        }
        let cap = Arc::new(Capture(Mutex::new(Vec::new()), progress));
        let handler = Arc::new(Handler::new(Arc::new(s), cap.clone(), "forward"));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let (_stop, stop_rx) = watch::channel(false);
        let peer = Peer {
            addr: Some("::ffff:10.0.0.9".parse().unwrap()),
            port: 1,
            host: "box.example".into(),
        };
        tokio::spawn(handler.serve(server, peer, stop_rx));
        client
            .write_all(&enc(
                &json!(["app", 1_700_000_000, {"a": 1}, {"chunk": "x"}]),
            ))
            .await
            .unwrap();
        assert_eq!(read_value(&mut client).await, json!({"ack": "x"}));
        let got = cap.0.lock().unwrap();
        assert_eq!(got[0].0, "in.app");
        let rec = msgpack::to_json_value(got[0].1.iter().next().unwrap().record).unwrap();
        assert_eq!(
            rec,
            json!({"a": 1, "src": "10.0.0.9", "host": "box.example"})
        );
        drop(sync);
    }

    fn secure_settings() -> Settings {
        let root = crate::config::parser::parse_str(
            "<security>\nself_hostname server.example\nshared_key s3cret\n</security>\n",
            "t.conf",
            ".".into(),
        )
        .unwrap();
        let mut s = settings();
        s.security = Some(Security::configure(&root.elements[0]).unwrap());
        s
    }

    async fn read_raw(c: &mut DuplexStream) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut sc = Scanner::new();
        loop {
            let mut b = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut b))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&b[..n]);
            if let Some(end) = sc.scan(&buf).unwrap() {
                buf.truncate(end);
                return buf;
            }
        }
    }

    fn nonce_of(helo: &[u8]) -> Vec<u8> {
        let opts = msgpack::array_get(helo, 1).unwrap().unwrap();
        let n = msgpack::map_get(opts, "nonce").unwrap().unwrap();
        msgpack::as_bytes(n, 0).unwrap().to_vec()
    }

    fn ping(nonce: &[u8], key: &str) -> Vec<u8> {
        let digest = protocol::sha512_hex(&[b"salt", b"cli", nonce, key.as_bytes()]);
        enc(&json!(["PING", "cli", "salt", digest, "", ""]))
    }

    #[tokio::test]
    async fn handshake_success_then_events() {
        let mut h = start(secure_settings(), false);
        let helo = read_raw(&mut h.client).await;
        assert_eq!(
            msgpack::as_str(msgpack::array_get(&helo, 0).unwrap().unwrap(), 0),
            Some("HELO")
        );
        let nonce = nonce_of(&helo);
        assert_eq!(nonce.len(), 16);
        h.client.write_all(&ping(&nonce, "s3cret")).await.unwrap();
        let pong = read_value(&mut h.client).await;
        assert_eq!(pong[0], "PONG");
        assert_eq!(pong[1], true);
        assert_eq!(pong[3], "server.example");
        let want = protocol::sha512_hex(&[b"salt", b"server.example", &nonce, b"s3cret"]);
        assert_eq!(pong[4], want.as_str());
        h.sync.send_modify(|p| p.synced = 5);
        h.client
            .write_all(&enc(
                &json!(["t", 1_700_000_000, {"a": 1}, {"chunk": "after"}]),
            ))
            .await
            .unwrap();
        assert_eq!(read_value(&mut h.client).await, json!({"ack": "after"}));
    }

    #[tokio::test]
    async fn handshake_failure_closes_without_emitting() {
        let mut h = start(secure_settings(), false);
        let helo = read_raw(&mut h.client).await;
        let nonce = nonce_of(&helo);
        h.client.write_all(&ping(&nonce, "wrong")).await.unwrap();
        let pong = read_value(&mut h.client).await;
        assert_eq!(pong, json!(["PONG", false, "shared_key mismatch", "", ""]));
        assert!(closed(&mut h.client).await);
        // Events sent without a handshake are not accepted either.
        let mut h = start(secure_settings(), false);
        let _ = read_raw(&mut h.client).await;
        h.client
            .write_all(&enc(&json!(["t", 1_700_000_000, {"a": 1}, {"chunk": "x"}])))
            .await
            .unwrap();
        let pong = read_value(&mut h.client).await;
        assert_eq!(pong[1], false);
        assert!(closed(&mut h.client).await);
        assert!(h.sink.got.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn silent_client_times_out_in_handshake() {
        let mut s = secure_settings();
        s.frame_timeout = Duration::from_millis(200);
        let mut h = start(s, false);
        let _helo = read_raw(&mut h.client).await;
        assert!(closed(&mut h.client).await);
    }

    #[test]
    fn reverse_lookup_does_not_fail_hard() {
        // Whatever the resolver says, the answer is a name or nothing.
        if let Some(name) = reverse_lookup("127.0.0.1".parse().unwrap()) {
            assert!(!name.is_empty());
        }
        let _ = reverse_lookup("::1".parse().unwrap());
    }

    #[test]
    fn warn_limiter_counts_suppressed() {
        let w = WarnLimiter::default();
        assert_eq!(w.allow("a"), Some(0));
        assert_eq!(w.allow("a"), None);
        assert_eq!(w.allow("b"), Some(0));
    }
}
