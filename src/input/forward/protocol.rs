//! The Forward Protocol v1 wire format, without any I/O.
//!
//! * [`Scanner`] finds where a frame ends in a growing read buffer. It walks MessagePack headers
//!   incrementally (each byte is looked at once however the frame is split across reads) and
//!   knows early when a declared string/binary is larger than the frame limit, so a hostile
//!   `bin32` header is refused before its payload is buffered.
//! * [`decode_frame`] turns one complete frame into an [`Events`] batch: the Message, Forward,
//!   PackedForward and CompressedPackedForward modes, their `option` map (`chunk`, `size`,
//!   `compressed`, `fluent_signal`), and the event checks of Fluentd's `skip_invalid_event`.
//!   A PackedForward payload that needs no change is routed as the very bytes that arrived.
//! * The handshake messages (HELO, PING, PONG) and the `{"ack": chunk}` response.

use std::io::Read;

use bytes::Bytes;
use sha2::{Digest, Sha512};

use crate::event::{EventStream, EventTime, StreamBuilder};
use crate::msgpack::{self, DecodeError, Kind, MAX_DEPTH};

/// Finds the end of one MessagePack value in a buffer that grows between calls.
///
/// Why not `msgpack::skip` on every read: a large Forward-mode frame arriving in many small
/// reads would be re-walked from its start each time (quadratic). The scanner keeps its place.
#[derive(Debug, Default)]
pub struct Scanner {
    pos: usize,
    /// Elements still expected by each open array/map (maps count keys and values).
    open: Vec<u64>,
}

impl Scanner {
    /// A scanner at the start of a frame.
    pub fn new() -> Scanner {
        Scanner::default()
    }

    /// Forgets the current frame (call after taking a complete frame out of the buffer).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
    }

    /// Scans `buf` (which starts at the frame's first byte and only grows between calls):
    /// `Ok(Some(end))` when the frame is complete, `Ok(None)` when more bytes are needed.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        loop {
            let (kind, next) = match msgpack::head(buf, self.pos) {
                Ok(v) => v,
                Err(DecodeError::Truncated(_)) => return Ok(None),
                Err(e) => return Err(e),
            };
            self.pos = next;
            let children = match kind {
                Kind::Array(n, _) => n as u64,
                Kind::Map(n, _) => (n as u64).saturating_mul(2),
                _ => 0,
            };
            if children > 0 {
                if self.open.len() >= MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                self.open.push(children);
                continue;
            }
            // A value is complete: close every container it completes.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }

    /// The smallest frame size the bytes seen so far imply, when the value being read is a
    /// string, binary or extension whose declared length is known. Lets a connection refuse
    /// an oversized frame from its header alone.
    pub fn needed(&self, buf: &[u8]) -> Option<usize> {
        sized_end(buf, self.pos)
    }
}

/// End of the str/bin/ext value at `at` from its header alone, if the header is complete.
fn sized_end(buf: &[u8], at: usize) -> Option<usize> {
    let m = *buf.get(at)?;
    let be = |n: usize| -> Option<usize> {
        let s = buf.get(at + 1..at + 1 + n)?;
        Some(s.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
    };
    let (header, len) = match m {
        0xa0..=0xbf => (1, (m & 0x1f) as usize),
        0xc4 | 0xd9 => (2, be(1)?),
        0xc5 | 0xda => (3, be(2)?),
        0xc6 | 0xdb => (5, be(4)?),
        0xc7 => (3, be(1)?),
        0xc8 => (4, be(2)?),
        0xc9 => (6, be(4)?),
        0xd4..=0xd8 => (2, 1usize << (m - 0xd4)),
        _ => return None,
    };
    at.checked_add(header)?.checked_add(len)
}

/// How frames are decoded (the input's parameters that matter here).
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Fluentd's `skip_invalid_event`: skip events with a bad time or a non-map record
    /// (`true`), or refuse the whole frame (`false`).
    pub skip_invalid_event: bool,
    /// Most bytes a compressed payload may expand to (gzip/zstd bombs).
    pub decompression_size_limit: usize,
}

/// Which of the protocol's modes a frame used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `[tag, time, record(, option)]`
    Message,
    /// `[tag, [[time, record], ...](, option)]`
    Forward,
    /// `[tag, packed entries(, option)]`
    PackedForward,
    /// `[tag, gzip/zstd packed entries, {"compressed": ...}]`
    CompressedPackedForward,
}

/// One decoded frame.
#[derive(Debug)]
pub enum Frame {
    /// A bare `nil`: the protocol's TCP heartbeat; nothing to do.
    Heartbeat,
    /// A batch of events.
    Events(Events),
}

/// The events of one frame and what the client asked for.
#[derive(Debug)]
pub struct Events {
    /// The tag as sent.
    pub tag: String,
    /// The valid events, in order.
    pub stream: EventStream,
    /// The encoded `chunk` option value: when present, the client waits for
    /// `{"ack": chunk}`.
    pub chunk: Option<Bytes>,
    /// The mode the frame used.
    pub mode: Mode,
    /// Invalid events skipped (with `skip_invalid_event`).
    pub skipped: usize,
    /// Why the first skipped event was invalid.
    pub skip_reason: Option<String>,
    /// Set when the frame carried no log events (Fluent Bit's `fluent_signal` for metrics or
    /// traces): the stream is empty and the reason says why.
    pub dropped: Option<String>,
}

/// Why a frame was refused. Every variant closes the connection: the client did not follow
/// the protocol, and without a trustworthy frame boundary nothing after it can be trusted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    /// Not well-formed MessagePack.
    #[error("malformed MessagePack: {0}")]
    Malformed(#[from] DecodeError),
    /// Well-formed, but not a forward-protocol frame.
    #[error("{0}")]
    Invalid(String),
    /// An invalid event with `skip_invalid_event false`: the frame is refused.
    #[error("invalid event: {0}")]
    InvalidEvent(String),
    /// The compressed payload could not be expanded (corrupt, or over the size limit).
    #[error("{0}")]
    Decompress(String),
}

fn invalid(msg: impl Into<String>) -> FrameError {
    FrameError::Invalid(msg.into())
}

/// The options of a frame.
#[derive(Debug, Default)]
struct Options {
    chunk: Option<Bytes>,
    compressed: Option<Compression>,
    fluent_signal: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    Gzip,
    Zstd,
}

fn parse_options(frame: &Bytes, at: Option<usize>) -> Result<Options, FrameError> {
    let mut o = Options::default();
    let Some(at) = at else { return Ok(o) };
    let end = msgpack::skip(frame, at)?;
    let raw = &frame[at..end];
    match msgpack::head(raw, 0)?.0 {
        Kind::Nil => return Ok(o),
        Kind::Map(..) => {}
        _ => return Err(invalid("the option element must be a map")),
    }
    for e in msgpack::map_entries(raw)? {
        match e.key_str() {
            Some("chunk") => {
                let s = e.value.as_ptr() as usize - frame.as_ptr() as usize;
                o.chunk = Some(frame.slice(s..s + e.value.len()));
            }
            Some("compressed") => {
                o.compressed = match msgpack::as_str(e.value, 0) {
                    Some("gzip") => Some(Compression::Gzip),
                    Some("zstd") => Some(Compression::Zstd),
                    Some("text") => None,
                    Some(other) => {
                        return Err(invalid(format!("unknown compression {other:?}")));
                    }
                    None => return Err(invalid("option 'compressed' must be a string")),
                };
            }
            Some("fluent_signal") => {
                if let Kind::Int(i) = msgpack::head(e.value, 0)?.0 {
                    o.fluent_signal = Some(i);
                }
            }
            // `size` is a hint (number of events); everything else is ignored, as Fluentd does.
            _ => {}
        }
    }
    Ok(o)
}

/// The element offsets of the top-level array (at most 4 are of interest).
fn elements(frame: &[u8], n: usize, first: usize) -> Result<Vec<usize>, DecodeError> {
    let mut out = Vec::with_capacity(n.min(4));
    let mut p = first;
    for _ in 0..n.min(4) {
        out.push(p);
        p = msgpack::skip(frame, p)?;
    }
    Ok(out)
}

/// Whether decoding `frame` may take long: a large frame, or a compressed payload (whose
/// expansion can be up to `decompression_size_limit`). Such frames are decoded off the async
/// threads.
pub fn is_heavy(frame: &[u8]) -> bool {
    if frame.len() > 1 << 20 {
        return true;
    }
    let heavy = || -> Result<bool, DecodeError> {
        let (kind, first) = msgpack::head(frame, 0)?;
        let Kind::Array(n, _) = kind else {
            return Ok(false);
        };
        if n < 3 {
            return Ok(false);
        }
        let second = msgpack::skip(frame, first)?;
        if !matches!(
            msgpack::head(frame, second)?.0,
            Kind::Str(..) | Kind::Bin(..)
        ) {
            return Ok(false);
        }
        let third = msgpack::skip(frame, second)?;
        let end = msgpack::skip(frame, third)?;
        Ok(matches!(
            msgpack::map_get(&frame[third..end], "compressed"),
            Ok(Some(_))
        ))
    };
    heavy().unwrap_or(false)
}

/// Decodes one complete frame (as found by [`Scanner`]).
pub fn decode_frame(frame: &Bytes, opts: &DecodeOptions) -> Result<Frame, FrameError> {
    let (kind, first) = msgpack::head(frame, 0)?;
    let n = match kind {
        Kind::Nil => return Ok(Frame::Heartbeat),
        Kind::Array(n, _) if n >= 2 => n,
        Kind::Array(..) => return Err(invalid("a frame must have a tag and entries")),
        _ => return Err(invalid("a frame must be an array")),
    };
    let el = elements(frame, n, first)?;
    let tag = match msgpack::as_bytes(frame, el[0]) {
        Some(t) => std::str::from_utf8(t)
            .map_err(|_| invalid("the tag is not valid UTF-8"))?
            .to_string(),
        None => return Err(invalid("the tag must be a string")),
    };
    let mut checker = Checker::new(opts.skip_invalid_event);
    let (second, _) = msgpack::head(frame, el[1])?;
    let (mode, stream, options) = match second {
        Kind::Str(s, len) | Kind::Bin(s, len) => {
            let options = parse_options(frame, el.get(2).copied())?;
            let payload = frame.slice(s..s + len);
            let (mode, payload) = match options.compressed {
                None => (Mode::PackedForward, payload),
                Some(c) => (
                    Mode::CompressedPackedForward,
                    decompress(c, &payload, opts.decompression_size_limit)?,
                ),
            };
            if let Some(sig) = options.fluent_signal.filter(|s| *s != 0) {
                return Ok(Frame::Events(Events {
                    tag,
                    stream: EventStream::default(),
                    chunk: options.chunk,
                    mode,
                    skipped: 0,
                    skip_reason: None,
                    dropped: Some(format!(
                        "fluent_signal {sig} (metrics or traces) is not a log event stream"
                    )),
                }));
            }
            (mode, checker.packed(payload)?, options)
        }
        Kind::Array(m, body) => {
            let options = parse_options(frame, el.get(2).copied())?;
            let mut b = StreamBuilder::with_capacity(frame.len());
            let mut p = body;
            for _ in 0..m {
                let end = msgpack::skip(frame, p)?;
                checker.entry(&frame[p..end], &mut b)?;
                p = end;
            }
            (Mode::Forward, b.finish(), options)
        }
        _ => {
            if n < 3 {
                return Err(invalid("a Message-mode frame must be [tag, time, record]"));
            }
            let options = parse_options(frame, el.get(3).copied())?;
            let rec_end = msgpack::skip(frame, el[2])?;
            let mut b = StreamBuilder::with_capacity(rec_end - el[2] + 16);
            checker.event(&frame[el[1]..el[2]], &frame[el[2]..rec_end], &mut b)?;
            (Mode::Message, b.finish(), options)
        }
    };
    Ok(Frame::Events(Events {
        tag,
        stream,
        chunk: options.chunk,
        mode,
        skipped: checker.skipped,
        skip_reason: checker.reason,
        dropped: None,
    }))
}

/// Applies Fluentd's event checks: the time must be an EventTime, an integer or a float
/// (Fluentd also accepts `[time, metadata]` as Fluent Bit sends it), the record a map. A nil
/// record is dropped silently and a zero time becomes now, as in Fluentd.
struct Checker {
    skip_invalid: bool,
    skipped: usize,
    reason: Option<String>,
    now: Option<EventTime>,
}

enum Verdict {
    Keep(EventTime),
    Drop,
    Invalid(String),
}

impl Checker {
    fn new(skip_invalid: bool) -> Checker {
        Checker {
            skip_invalid,
            skipped: 0,
            reason: None,
            now: None,
        }
    }

    fn now(&mut self) -> EventTime {
        *self.now.get_or_insert_with(EventTime::now)
    }

    fn verdict(&mut self, time: &[u8], record: &[u8]) -> Verdict {
        let t = match msgpack::head(time, 0) {
            // Fluent Bit's event format: [[time, metadata], record].
            Ok((Kind::Array(n, first), _)) if n >= 1 => EventTime::decode(time, first),
            _ => EventTime::decode(time, 0),
        };
        let t = match t {
            Ok((t, _)) => t,
            Err(_) => return Verdict::Invalid("time is not an integer, float or EventTime".into()),
        };
        match msgpack::head(record, 0) {
            Ok((Kind::Map(..), _)) => {}
            Ok((Kind::Nil, _)) if !self.skip_invalid => return Verdict::Drop,
            _ => return Verdict::Invalid("record is not a map".into()),
        }
        if t == EventTime::default() {
            return Verdict::Keep(self.now());
        }
        Verdict::Keep(t)
    }

    fn invalid(&mut self, why: String) -> Result<(), FrameError> {
        if !self.skip_invalid {
            return Err(FrameError::InvalidEvent(why));
        }
        self.skipped += 1;
        self.reason.get_or_insert(why);
        Ok(())
    }

    /// One `[time, record]` entry (a whole encoded value) into `b`.
    fn entry(&mut self, raw: &[u8], b: &mut StreamBuilder) -> Result<(), FrameError> {
        match msgpack::head(raw, 0)? {
            (Kind::Array(n, p), _) if n >= 2 => {
                let t_end = msgpack::skip(raw, p)?;
                let r_end = msgpack::skip(raw, t_end)?;
                self.event(&raw[p..t_end], &raw[t_end..r_end], b)
            }
            _ => self.invalid("an entry is not a [time, record] array".into()),
        }
    }

    fn event(
        &mut self,
        time: &[u8],
        record: &[u8],
        b: &mut StreamBuilder,
    ) -> Result<(), FrameError> {
        match self.verdict(time, record) {
            Verdict::Keep(t) => b.push(t, record),
            Verdict::Drop => {}
            Verdict::Invalid(why) => self.invalid(why)?,
        }
        Ok(())
    }

    /// A PackedForward payload. When every entry is a valid `[time, record]` with a non-zero
    /// time, the payload is routed as it arrived (checked once, no copy); otherwise the valid
    /// events are rebuilt into a new stream.
    fn packed(&mut self, payload: Bytes) -> Result<EventStream, FrameError> {
        if let Ok(es) = EventStream::from_entries(payload.clone()) {
            let clean = es.iter().all(|e| {
                e.time != EventTime::default()
                    && matches!(msgpack::head(e.record, 0), Ok((Kind::Map(..), _)))
            });
            if clean {
                return Ok(es);
            }
        }
        let mut b = StreamBuilder::with_capacity(payload.len());
        let mut p = 0;
        while p < payload.len() {
            let end = msgpack::skip(&payload, p)?;
            self.entry(&payload[p..end], &mut b)?;
            p = end;
        }
        Ok(b.finish())
    }
}

/// Expands a compressed payload: concatenated gzip members or zstd frames, at most `limit`
/// bytes in total.
fn decompress(c: Compression, data: &[u8], limit: usize) -> Result<Bytes, FrameError> {
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit).min(64 << 20));
    let too_big = || {
        FrameError::Decompress(format!(
            "decompressed payload exceeds decompression_size_limit ({limit} bytes)"
        ))
    };
    let cap = (limit as u64).saturating_add(1);
    match c {
        Compression::Gzip => {
            flate2::read::MultiGzDecoder::new(data)
                .take(cap)
                .read_to_end(&mut out)
                .map_err(|e| FrameError::Decompress(format!("invalid gzip payload: {e}")))?;
            if out.len() > limit {
                return Err(too_big());
            }
        }
        Compression::Zstd => {
            // The decoder reads concatenated frames as one stream.
            zstd::stream::read::Decoder::new(data)
                .map_err(|e| FrameError::Decompress(format!("invalid zstd payload: {e}")))?
                .take(cap)
                .read_to_end(&mut out)
                .map_err(|e| FrameError::Decompress(format!("invalid zstd payload: {e}")))?;
            if out.len() > limit {
                return Err(too_big());
            }
        }
    }
    Ok(Bytes::from(out))
}

/// `{"ack": chunk}`, the response to a frame whose option carried `chunk`.
pub fn ack_response(chunk: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 5);
    out.push(0x81);
    out.extend_from_slice(&[0xa3, b'a', b'c', b'k']);
    out.extend_from_slice(chunk);
    out
}

/// Returns the record with `fields` set (existing keys of the same name replaced). Used for
/// `source_address_key`/`source_hostname_key`, the only case where records are re-encoded.
pub fn inject_fields(record: &[u8], fields: &[(&str, &str)]) -> Vec<u8> {
    let Ok(entries) = msgpack::map_entries(record) else {
        return record.to_vec();
    };
    let kept: Vec<_> = entries
        .iter()
        .filter(|e| !fields.iter().any(|(k, _)| e.key_str() == Some(*k)))
        .collect();
    let mut out = Vec::with_capacity(record.len() + 64);
    rmp::encode::write_map_len(&mut out, (kept.len() + fields.len()) as u32)
        .expect("writing to a Vec cannot fail");
    for e in kept {
        out.extend_from_slice(e.key);
        out.extend_from_slice(e.value);
    }
    for (k, v) in fields {
        rmp::encode::write_str(&mut out, k).expect("writing to a Vec cannot fail");
        rmp::encode::write_str(&mut out, v).expect("writing to a Vec cannot fail");
    }
    out
}

/// A stream with `fields` added to every record.
pub fn inject_stream(es: &EventStream, fields: &[(&str, &str)]) -> EventStream {
    let mut b = StreamBuilder::with_capacity(es.bytes().len() + es.len() * 48);
    for e in es.iter() {
        b.push(e.time, &inject_fields(e.record, fields));
    }
    b.finish()
}

/// Lowercase hex of the SHA-512 of the concatenated parts: the digest every handshake check
/// uses.
pub fn sha512_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

/// Compares two byte strings in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `["HELO", {"nonce": nonce, "auth": auth_salt, "keepalive": keepalive}]`; nonce and salt are
/// sent as binary, as Fluentd does.
pub fn helo(nonce: &[u8], auth_salt: &[u8], keepalive: bool) -> Vec<u8> {
    use rmp::encode as e;
    let mut out = Vec::with_capacity(64);
    let w = |r: Result<(), _>| r.expect("writing to a Vec cannot fail");
    w(e::write_array_len(&mut out, 2).map(|_| ()));
    w(e::write_str(&mut out, "HELO"));
    w(e::write_map_len(&mut out, 3).map(|_| ()));
    w(e::write_str(&mut out, "nonce"));
    w(e::write_bin(&mut out, nonce));
    w(e::write_str(&mut out, "auth"));
    w(e::write_bin(&mut out, auth_salt));
    w(e::write_str(&mut out, "keepalive"));
    e::write_bool(&mut out, keepalive).expect("writing to a Vec cannot fail");
    out
}

/// A client's PING: `["PING", hostname, shared_key_salt, sha512_hex(salt + hostname + nonce +
/// shared_key), username, sha512_hex(auth_salt + username + password)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// The client's self-declared host name.
    pub hostname: Vec<u8>,
    /// The client's salt for the shared-key digests.
    pub shared_key_salt: Vec<u8>,
    /// The client's shared-key digest (hex).
    pub shared_key_digest: Vec<u8>,
    /// The user name ('' without user authentication).
    pub username: Vec<u8>,
    /// The password digest (hex, '' without user authentication).
    pub password_digest: Vec<u8>,
}

/// Reads a PING frame; `None` when the frame is not a well-formed PING.
pub fn parse_ping(frame: &[u8]) -> Option<Ping> {
    let (kind, first) = msgpack::head(frame, 0).ok()?;
    let Kind::Array(6, _) = kind else { return None };
    let el = {
        let mut v = Vec::with_capacity(6);
        let mut p = first;
        for _ in 0..6 {
            v.push(msgpack::as_bytes(frame, p)?.to_vec());
            p = msgpack::skip(frame, p).ok()?;
        }
        v
    };
    if el[0] != b"PING" {
        return None;
    }
    let mut it = el.into_iter().skip(1);
    Some(Ping {
        hostname: it.next()?,
        shared_key_salt: it.next()?,
        shared_key_digest: it.next()?,
        username: it.next()?,
        password_digest: it.next()?,
    })
}

/// `["PONG", true, "", self_hostname, digest]`.
pub fn pong_ok(self_hostname: &str, digest_hex: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(180);
    rmp::encode::write_array_len(&mut out, 5).expect("Vec write");
    rmp::encode::write_str(&mut out, "PONG").expect("Vec write");
    rmp::encode::write_bool(&mut out, true).expect("Vec write");
    rmp::encode::write_str(&mut out, "").expect("Vec write");
    rmp::encode::write_str(&mut out, self_hostname).expect("Vec write");
    rmp::encode::write_str(&mut out, digest_hex).expect("Vec write");
    out
}

/// `["PONG", false, reason, "", ""]`; the server closes the connection after it.
pub fn pong_fail(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reason.len() + 16);
    rmp::encode::write_array_len(&mut out, 5).expect("Vec write");
    rmp::encode::write_str(&mut out, "PONG").expect("Vec write");
    rmp::encode::write_bool(&mut out, false).expect("Vec write");
    rmp::encode::write_str(&mut out, reason).expect("Vec write");
    rmp::encode::write_str(&mut out, "").expect("Vec write");
    rmp::encode::write_str(&mut out, "").expect("Vec write");
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn enc(v: &serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        msgpack::write_from_json(v, &mut out);
        out
    }

    pub(crate) fn ext_time(sec: u32, nsec: u32) -> Vec<u8> {
        let mut out = Vec::new();
        EventTime::new(sec as i64, nsec).encode(&mut out);
        out
    }

    /// `[tag, bin(entries), option]`
    pub(crate) fn packed_frame(tag: &str, entries: &[u8], option: Option<&[u8]>) -> Vec<u8> {
        let mut f = Vec::new();
        rmp::encode::write_array_len(&mut f, if option.is_some() { 3 } else { 2 }).unwrap();
        rmp::encode::write_str(&mut f, tag).unwrap();
        rmp::encode::write_bin(&mut f, entries).unwrap();
        if let Some(o) = option {
            f.extend_from_slice(o);
        }
        f
    }

    pub(crate) fn entries(n: usize) -> Vec<u8> {
        let mut b = StreamBuilder::default();
        for i in 0..n {
            b.push(
                EventTime::new(1_700_000_000 + i as i64, 7),
                &enc(&json!({"i": i, "msg": "hello"})),
            );
        }
        b.finish().bytes().to_vec()
    }

    fn opts() -> DecodeOptions {
        DecodeOptions {
            skip_invalid_event: true,
            decompression_size_limit: 1 << 20,
        }
    }

    fn events(frame: &[u8], o: &DecodeOptions) -> Events {
        match decode_frame(&Bytes::copy_from_slice(frame), o).unwrap() {
            Frame::Events(e) => e,
            Frame::Heartbeat => panic!("heartbeat"),
        }
    }

    fn records(e: &Events) -> Vec<serde_json::Value> {
        e.stream
            .iter()
            .map(|x| msgpack::to_json_value(x.record).unwrap())
            .collect()
    }

    #[test]
    fn scanner_finds_frames_split_anywhere() {
        let mut stream = packed_frame("a", &entries(3), Some(&enc(&json!({"chunk": "x"}))));
        let first_len = stream.len();
        let mut msg = Vec::new();
        rmp::encode::write_array_len(&mut msg, 3).unwrap();
        rmp::encode::write_str(&mut msg, "b").unwrap();
        rmp::encode::write_array_len(&mut msg, 2).unwrap();
        for i in 0..2 {
            rmp::encode::write_array_len(&mut msg, 2).unwrap();
            rmp::encode::write_uint(&mut msg, 1_700_000_000).unwrap();
            msg.extend_from_slice(&enc(&json!({"k": [i, {"deep": [1, 2, {}]}], "e": []})));
        }
        msg.push(0xc0);
        stream.extend_from_slice(&msg);
        // Feed byte by byte: the scanner must report each end exactly once, at the right spot.
        let mut sc = Scanner::new();
        let mut start = 0;
        let mut ends = Vec::new();
        for upto in 1..=stream.len() {
            if let Some(end) = sc.scan(&stream[start..upto]).unwrap() {
                ends.push(start + end);
                start += end;
                sc.reset();
            }
        }
        assert_eq!(ends, vec![first_len, stream.len()]);
    }

    #[test]
    fn scanner_rejects_garbage_and_depth() {
        let mut sc = Scanner::new();
        assert!(sc.scan(&[0xc1]).is_err());
        let mut sc = Scanner::new();
        assert_eq!(sc.scan(&[0x91; 1000]), Err(DecodeError::TooDeep));
        // A declared 4 GiB binary is known to be too large from its header.
        let sc = Scanner::new();
        let hdr = [0x92, 0xa1, b'a', 0xc6, 0xff, 0xff, 0xff, 0xff];
        let mut s2 = Scanner::new();
        assert_eq!(s2.scan(&hdr).unwrap(), None);
        assert_eq!(s2.needed(&hdr), Some(8 + 0xffff_ffff));
        assert_eq!(sc.needed(&[]), None);
    }

    #[test]
    fn packed_forward_routes_payload_bytes_unchanged() {
        let ent = entries(5);
        let frame = packed_frame(
            "app.x",
            &ent,
            Some(&enc(&json!({"chunk": "abc", "size": 5}))),
        );
        let e = events(&frame, &opts());
        assert_eq!(e.mode, Mode::PackedForward);
        assert_eq!(e.tag, "app.x");
        assert_eq!(e.stream.len(), 5);
        assert_eq!(e.stream.bytes().as_ref(), ent.as_slice());
        assert_eq!(e.chunk.as_deref(), Some(&enc(&json!("abc"))[..]));
        assert_eq!(
            ack_response(e.chunk.as_deref().unwrap()),
            enc(&json!({"ack": "abc"}))
        );
    }

    #[test]
    fn packed_forward_as_str_without_option() {
        let ent = entries(2);
        let mut f = Vec::new();
        rmp::encode::write_array_len(&mut f, 2).unwrap();
        rmp::encode::write_str(&mut f, "t").unwrap();
        rmp::encode::write_str_len(&mut f, ent.len() as u32).unwrap();
        f.extend_from_slice(&ent);
        let e = events(&f, &opts());
        assert_eq!(e.stream.len(), 2);
        assert!(e.chunk.is_none());
    }

    #[test]
    fn compressed_packed_forward_concatenated_members() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let a = entries(3);
        let b = entries(4);
        let mut gz = Vec::new();
        for part in [&a, &b] {
            let mut enc_ = GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc_.write_all(part).unwrap();
            gz.extend_from_slice(&enc_.finish().unwrap());
        }
        let frame = packed_frame(
            "z",
            &gz,
            Some(&enc(
                &json!({"compressed": "gzip", "size": 7, "chunk": "c1"}),
            )),
        );
        let e = events(&frame, &opts());
        assert_eq!(e.mode, Mode::CompressedPackedForward);
        assert_eq!(e.stream.len(), 7);
        assert_eq!(e.chunk.as_deref(), Some(&enc(&json!("c1"))[..]));
    }

    proptest::proptest! {
        #[test]
        fn random_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let mut sc = Scanner::new();
            let scanned = sc.scan(&bytes);
            // The scanner agrees with msgpack::skip on complete values.
            if let Ok(end) = msgpack::skip(&bytes, 0) {
                proptest::prop_assert_eq!(scanned, Ok(Some(end)));
            }
            let _ = sc.needed(&bytes);
            let _ = is_heavy(&bytes);
            let _ = decode_frame(&Bytes::from(bytes.clone()), &opts());
            let _ = parse_ping(&bytes);
        }
    }

    #[test]
    fn heavy_frames() {
        let small = packed_frame("t", &entries(2), Some(&enc(&json!({"chunk": "a"}))));
        assert!(!is_heavy(&small));
        let gz = packed_frame("t", b"x", Some(&enc(&json!({"compressed": "gzip"}))));
        assert!(is_heavy(&gz));
        assert!(!is_heavy(&[0xc1]));
    }

    #[test]
    fn gzip_bomb_is_bounded() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        // 4 MiB of zeros compress to a few KiB; the limit is 1 MiB.
        let mut enc_ = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..4 {
            enc_.write_all(&zeros).unwrap();
        }
        let gz = enc_.finish().unwrap();
        assert!(gz.len() < 64 << 10);
        let frame = packed_frame("z", &gz, Some(&enc(&json!({"compressed": "gzip"}))));
        let err = decode_frame(&Bytes::from(frame), &opts()).unwrap_err();
        assert!(
            matches!(err, FrameError::Decompress(ref m) if m.contains("decompression_size_limit")),
            "{err}"
        );
        // Corrupt gzip is an error too, not a panic.
        let frame = packed_frame(
            "z",
            b"\x1f\x8bnot gzip",
            Some(&enc(&json!({"compressed": "gzip"}))),
        );
        assert!(matches!(
            decode_frame(&Bytes::from(frame), &opts()),
            Err(FrameError::Decompress(_))
        ));
    }

    #[test]
    fn zstd_concatenated_frames_and_bound() {
        let a = entries(3);
        let b = entries(2);
        let mut z = zstd::encode_all(&a[..], 1).unwrap();
        z.extend(zstd::encode_all(&b[..], 1).unwrap());
        let frame = packed_frame("z", &z, Some(&enc(&json!({"compressed": "zstd"}))));
        let e = events(&frame, &opts());
        assert_eq!(e.mode, Mode::CompressedPackedForward);
        assert_eq!(e.stream.len(), 5);
        let zeros = vec![0u8; 2 << 20];
        let bomb = zstd::encode_all(&zeros[..], 1).unwrap();
        let frame = packed_frame("z", &bomb, Some(&enc(&json!({"compressed": "zstd"}))));
        assert!(matches!(
            decode_frame(&Bytes::from(frame), &opts()),
            Err(FrameError::Decompress(_))
        ));
    }

    #[test]
    fn zstd_payload_is_rejected_cleanly_when_corrupt() {
        let frame = packed_frame("z", b"garbage", Some(&enc(&json!({"compressed": "zstd"}))));
        assert!(matches!(
            decode_frame(&Bytes::from(frame), &opts()),
            Err(FrameError::Decompress(_))
        ));
        let frame = packed_frame("z", b"", Some(&enc(&json!({"compressed": "lz4"}))));
        assert!(matches!(
            decode_frame(&Bytes::from(frame), &opts()),
            Err(FrameError::Invalid(_))
        ));
    }

    #[test]
    fn forward_mode_and_time_forms() {
        let mut f = Vec::new();
        rmp::encode::write_array_len(&mut f, 3).unwrap();
        rmp::encode::write_str(&mut f, "fwd").unwrap();
        rmp::encode::write_array_len(&mut f, 4).unwrap();
        // EventTime, integer, float, Fluent Bit's [time, metadata].
        f.extend_from_slice(&[0x92]);
        f.extend_from_slice(&ext_time(1_700_000_000, 5));
        f.extend_from_slice(&enc(&json!({"n": 0})));
        f.extend_from_slice(&[0x92]);
        rmp::encode::write_uint(&mut f, 1_700_000_001).unwrap();
        f.extend_from_slice(&enc(&json!({"n": 1})));
        f.extend_from_slice(&[0x92]);
        rmp::encode::write_f64(&mut f, 1_700_000_002.25).unwrap();
        f.extend_from_slice(&enc(&json!({"n": 2})));
        f.extend_from_slice(&[0x92, 0x92]);
        f.extend_from_slice(&ext_time(1_700_000_003, 0));
        f.extend_from_slice(&enc(&json!({"meta": 1})));
        f.extend_from_slice(&enc(&json!({"n": 3})));
        f.extend_from_slice(&enc(&json!({"chunk": "q"})));
        let e = events(&f, &opts());
        assert_eq!(e.mode, Mode::Forward);
        let times: Vec<_> = e.stream.iter().map(|x| x.time).collect();
        assert_eq!(
            times,
            vec![
                EventTime::new(1_700_000_000, 5),
                EventTime::new(1_700_000_001, 0),
                EventTime::new(1_700_000_002, 250_000_000),
                EventTime::new(1_700_000_003, 0),
            ]
        );
        assert_eq!(records(&e)[3], json!({"n": 3}));
        assert!(e.chunk.is_some());
    }

    #[test]
    fn message_mode() {
        let mut f = Vec::new();
        rmp::encode::write_array_len(&mut f, 4).unwrap();
        rmp::encode::write_str(&mut f, "msg").unwrap();
        f.extend_from_slice(&ext_time(1_700_000_000, 1));
        f.extend_from_slice(&enc(&json!({"a": "b"})));
        f.extend_from_slice(&enc(&json!({"chunk": "m1"})));
        let e = events(&f, &opts());
        assert_eq!(e.mode, Mode::Message);
        assert_eq!(records(&e), vec![json!({"a": "b"})]);
        assert_eq!(
            e.stream.iter().next().unwrap().time,
            EventTime::new(1_700_000_000, 1)
        );
        // Without option, integer time 0 becomes now.
        let f = enc(&json!(["msg", 0, {"a": 1}]));
        let e = events(&f, &opts());
        assert!(e.stream.iter().next().unwrap().time.sec > 1_600_000_000);
        assert!(e.chunk.is_none());
    }

    #[test]
    fn invalid_events_skipped_or_frame_refused() {
        let f =
            enc(&json!(["t", [[1, {"ok": 1}], [1, "not a map"], ["x", {}], 5, [2, {"ok": 2}]]]));
        let e = events(&f, &opts());
        assert_eq!(records(&e), vec![json!({"ok": 1}), json!({"ok": 2})]);
        assert_eq!(e.skipped, 3);
        assert!(e.skip_reason.is_some());
        let strict = DecodeOptions {
            skip_invalid_event: false,
            ..opts()
        };
        assert!(matches!(
            decode_frame(&Bytes::from(f), &strict),
            Err(FrameError::InvalidEvent(_))
        ));
        // Packed entries with a bad record take the slow path and keep the good ones.
        let mut ent = entries(1);
        ent.extend_from_slice(&enc(&json!([1, [1, 2]])));
        ent.extend_from_slice(&entries(1));
        let e = events(&packed_frame("t", &ent, None), &opts());
        assert_eq!(e.stream.len(), 2);
        assert_eq!(e.skipped, 1);
    }

    #[test]
    fn wrong_shapes_are_errors_not_panics() {
        let o = opts();
        for v in [
            json!({"a": 1}),
            json!(["only-tag"]),
            json!([1, 2, 3]),
            json!(["t", 1]),
            json!(["t", [[1, {}]], "not a map option"]),
            json!(["t", "", {"compressed": 1}]),
        ] {
            assert!(
                decode_frame(&Bytes::from(enc(&v)), &o).is_err(),
                "{v} should be refused"
            );
        }
        assert!(matches!(
            decode_frame(&Bytes::from_static(&[0xc0]), &o),
            Ok(Frame::Heartbeat)
        ));
        assert!(matches!(
            decode_frame(
                &Bytes::from_static(&[0x92, 0xa1, b't', 0xc4, 3, 0x92, 1]),
                &o
            ),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn fluent_bit_metrics_signal_is_dropped_but_acknowledgeable() {
        let frame = packed_frame(
            "m",
            &enc(&json!({"meta": {}})),
            Some(&enc(&json!({"fluent_signal": 2, "chunk": "k"}))),
        );
        let e = events(&frame, &opts());
        assert!(e.stream.is_empty());
        assert!(e.dropped.is_some());
        assert!(e.chunk.is_some());
    }

    #[test]
    fn field_injection_replaces_and_appends() {
        let rec = enc(&json!({"a": 1, "host": "old"}));
        let out = inject_fields(&rec, &[("host", "h1"), ("addr", "1.2.3.4")]);
        assert_eq!(
            msgpack::to_json_value(&out).unwrap(),
            json!({"a": 1, "host": "h1", "addr": "1.2.3.4"})
        );
    }

    #[test]
    fn handshake_messages() {
        let h = helo(&[1; 16], &[2; 16], true);
        let v = msgpack::to_json_value(&h).unwrap();
        assert_eq!(v[0], "HELO");
        assert_eq!(v[1]["keepalive"], true);
        let ping = enc(&json!(["PING", "client", "salt", "digest", "", ""]));
        let p = parse_ping(&ping).unwrap();
        assert_eq!(p.hostname, b"client");
        assert_eq!(p.shared_key_salt, b"salt");
        assert!(parse_ping(&enc(&json!(["PING", "a"]))).is_none());
        assert!(parse_ping(&enc(&json!(["PONG", "a", "b", "c", "d", "e"]))).is_none());
        let v = msgpack::to_json_value(&pong_fail("nope")).unwrap();
        assert_eq!(v, json!(["PONG", false, "nope", "", ""]));
        assert_eq!(sha512_hex(&[b"a", b"bc"]), sha512_hex(&[b"abc"]));
        assert_eq!(sha512_hex(&[b""]).len(), 128);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
