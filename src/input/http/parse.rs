//! Request → events: the part of the http input that needs no socket.
//!
//! [`events`] turns one request (content type, query string, body, headers, peer address) into
//! an [`EventStream`] or a [`BadRequest`] naming what is wrong. A request is all or nothing:
//! either every record in it is valid and the whole stream is returned, or nothing is emitted.
//!
//! # Parameters, as Fluentd builds them
//!
//! The query string is decoded (`application/x-www-form-urlencoded` rules: `+` is a space,
//! `%XX` a byte, a later duplicate replaces an earlier one). The body then adds to them by its
//! content type (a prefix match, parameters such as `; charset=utf-8` ignored):
//!
//! | content type | becomes |
//! |---|---|
//! | `application/x-www-form-urlencoded` | its own parameters (`json=`, `msgpack=`, `ndjson=`, `time=`, …) |
//! | `application/json`, `application/csp-report` | `json` |
//! | `application/msgpack`, `application/x-msgpack` | `msgpack` |
//! | `application/x-ndjson` | `ndjson` |
//! | anything else | nothing (the query string must then carry `json=`, `msgpack=` or `ndjson=`) |
//!
//! Records come from the first of `msgpack`, `json`, `ndjson` present. `json` is one object or
//! an array of objects; `ndjson` is one such JSON value per line (blank lines skipped);
//! `msgpack` is a sequence of values, each a map or an array of maps. JSON is parsed one
//! record at a time (the elements of an array are converted as they are read, so memory holds
//! the output and one record's tree, never a tree of the whole body) and written out as
//! MessagePack with [`write_from_json`](crate::msgpack::write_from_json); MessagePack records
//! are validated and copied as they are, re-encoded only when a field is removed or added.
//!
//! With a `<parse>` section of `@type json`, `msgpack` or `none`, the whole body is given to
//! that parser instead, whatever its content type.
//!
//! # Time
//!
//! `time=` (query or form): Ruby's `to_f` of the text (`"1.5"`, `"1700000000"`; text that is
//! not a number reads as 0); 0 means now. Without it, the record field `time_key` (default
//! `time`) gives the time and is removed from the record unless `keep_time_key`; a missing
//! (or `null`/`false`) field means now. Without `time_type`, the field must be a number
//! (integer or float seconds, or an EventTime); `time_type float` and `unixtime` also accept
//! numeric strings as Fluentd's numeric time parsers do.
//!
//! # Added fields
//!
//! `add_http_headers`: every parameter whose name starts with `HTTP_` — each request header
//! as `HTTP_<NAME>` (upper case, `-` → `_`; a repeated header gives an array). `add_query_params`:
//! each query parameter as `QUERY_<NAME>`. `add_remote_addr`: `REMOTE_ADDR`, the peer address
//! or the first entry of `X-Forwarded-For`. A field already in the record is replaced where it
//! stands; new ones are appended.

use std::collections::HashMap;
use std::io::Read;

use bytes::Bytes;
use serde_json::Value;

use crate::event::{EventStream, EventTime, StreamBuilder};
use crate::msgpack::{self, Kind};

/// A request that cannot be turned into events; the text says why (sent in the 400 body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

/// Which parser reads the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Fluentd's built-in `in_http` parser: the content type chooses (see the module docs).
    Default,
    /// `<parse> @type json`: the whole body is one JSON object or an array of objects.
    Json,
    /// `<parse> @type msgpack`: the whole body is a sequence of maps or arrays of maps.
    Msgpack,
    /// `<parse> @type none`: the whole body is one record `{message_key: body}`.
    None {
        /// The field that holds the body.
        message_key: String,
    },
}

/// How a record's time field is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeType {
    /// in_http without `time_type`: Ruby's `Time.at(value)`; the value must be a number.
    Number,
    /// `time_type float`: a number or a numeric string; seconds and fraction.
    Float,
    /// `time_type unixtime`: a number or a numeric string; whole seconds.
    Unixtime,
}

/// Everything [`events`] needs from the configuration.
#[derive(Debug, Clone)]
pub struct ParseSettings {
    /// The body parser.
    pub format: Format,
    /// The record field holding the event time (`None`: the time is always now).
    pub time_key: Option<String>,
    /// Keep the time field in the record.
    pub keep_time_key: bool,
    /// How the time field is read.
    pub time_type: TimeType,
    /// `add_http_headers`.
    pub add_http_headers: bool,
    /// `add_query_params`.
    pub add_query_params: bool,
    /// `add_remote_addr`.
    pub add_remote_addr: bool,
}

impl Default for ParseSettings {
    fn default() -> Self {
        ParseSettings {
            format: Format::Default,
            time_key: Some("time".into()),
            keep_time_key: false,
            time_type: TimeType::Number,
            add_http_headers: false,
            add_query_params: false,
            add_remote_addr: false,
        }
    }
}

/// The parts of one request that become events.
#[derive(Debug, Clone, Default)]
pub struct RequestData {
    /// The `Content-Type` header (empty when absent).
    pub content_type: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// The body, already decompressed.
    pub body: Bytes,
    /// Request headers in arrival order: name and every value (a repeated header has several).
    pub headers: Vec<(String, Vec<String>)>,
    /// The peer's address (or the first `X-Forwarded-For` entry).
    pub remote_addr: Option<String>,
}

/// The tag for a request path: `/a/b` → `a.b`, as Fluentd's `path.split('/').join('.')`
/// (empty segments inside are kept, trailing ones dropped), after `add_tag_prefix`.
pub fn tag_of(path: &str, prefix: Option<&str>) -> String {
    let path = path.strip_prefix('/').unwrap_or(path);
    let mut parts: Vec<&str> = path.split('/').collect();
    while parts.last() == Some(&"") {
        parts.pop();
    }
    let tag = parts.join(".");
    match prefix {
        Some(p) => format!("{p}.{tag}"),
        None => tag,
    }
}

/// Decodes a `Content-Encoding` of `gzip` (several members allowed) or `deflate` (zlib), at
/// most `limit` bytes of output. Other encodings leave the body as it is, as Fluentd does.
pub fn decode_body(encoding: &str, body: Bytes, limit: usize) -> Result<Bytes, BadRequest> {
    fn read_limited(r: impl Read, limit: usize) -> Result<Bytes, BadRequest> {
        let mut out = Vec::new();
        r.take(limit as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|e| bad(format!("fails to decode payload: {e}")))?;
        if out.len() > limit {
            return Err(bad(format!(
                "fails to decode payload: decompressed data exceeds limit of {limit} bytes"
            )));
        }
        Ok(Bytes::from(out))
    }
    match encoding.trim() {
        e if e.eq_ignore_ascii_case("gzip") => {
            read_limited(flate2::read::MultiGzDecoder::new(&body[..]), limit)
        }
        e if e.eq_ignore_ascii_case("deflate") => {
            read_limited(flate2::read::ZlibDecoder::new(&body[..]), limit)
        }
        _ => Ok(body),
    }
}

// ------------------------------------------------------------------------------------------
// Parameters
// ------------------------------------------------------------------------------------------

/// A parameter value: bytes (query, form, body) or header values.
#[derive(Debug, Clone)]
enum PVal<'a> {
    Bytes(std::borrow::Cow<'a, [u8]>),
    Headers(&'a [String]),
}

/// Fluentd's `params` hash: insertion-ordered, a later value for a key replaces the earlier
/// one in place.
#[derive(Debug, Default)]
struct Params<'a> {
    items: Vec<(Vec<u8>, PVal<'a>)>,
    index: HashMap<Vec<u8>, usize>,
}

impl<'a> Params<'a> {
    fn set(&mut self, key: Vec<u8>, v: PVal<'a>) {
        match self.index.get(&key) {
            Some(&i) => self.items[i].1 = v,
            None => {
                self.index.insert(key.clone(), self.items.len());
                self.items.push((key, v));
            }
        }
    }

    fn get(&self, key: &str) -> Option<&PVal<'a>> {
        self.index.get(key.as_bytes()).map(|&i| &self.items[i].1)
    }

    fn bytes(&self, key: &str) -> Option<&[u8]> {
        match self.get(key)? {
            PVal::Bytes(b) => Some(b),
            PVal::Headers(_) => None,
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one form component: `+` → space, `%XX` → byte; a `%` not followed by two hex
/// digits stays as it is (Ruby's `decode_www_form_component` behaviour inside
/// `decode_www_form`).
fn form_decode(s: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !s.iter().any(|&b| b == b'+' || b == b'%') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                match (
                    s.get(i + 1).and_then(|&b| hex(b)),
                    s.get(i + 2).and_then(|&b| hex(b)),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                    }
                    _ => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Decodes `k=v&k2=v2` into (key, value) pairs in order.
fn parse_query(q: &[u8]) -> Vec<(Vec<u8>, std::borrow::Cow<'_, [u8]>)> {
    if q.is_empty() {
        return Vec::new();
    }
    q.split(|&b| b == b'&')
        .map(|part| {
            let (k, v) = match part.iter().position(|&b| b == b'=') {
                Some(i) => (&part[..i], &part[i + 1..]),
                None => (part, &part[part.len()..]),
            };
            (form_decode(k).into_owned(), form_decode(v))
        })
        .collect()
}

/// `k.tr('-', '_').upcase` for ASCII.
fn env_name(prefix: &str, k: &[u8]) -> Vec<u8> {
    let mut out = prefix.as_bytes().to_vec();
    out.extend(k.iter().map(|&b| match b {
        b'-' => b'_',
        b => b.to_ascii_uppercase(),
    }));
    out
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

// ------------------------------------------------------------------------------------------
// Added fields
// ------------------------------------------------------------------------------------------

/// Fields added to every record of a request: key and MessagePack-encoded value, unique keys,
/// in the order Fluentd adds them.
#[derive(Debug, Default)]
struct Extras {
    items: Vec<(String, Vec<u8>)>,
    index: HashMap<String, usize>,
}

impl Extras {
    fn set(&mut self, key: String, value: Vec<u8>) {
        match self.index.get(&key) {
            Some(&i) => self.items[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.items.len());
                self.items.push((key, value));
            }
        }
    }

    fn get(&self, key: &[u8]) -> Option<usize> {
        if self.items.is_empty() {
            return None;
        }
        std::str::from_utf8(key)
            .ok()
            .and_then(|k| self.index.get(k).copied())
    }

    fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

fn encode_str(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 5);
    rmp::encode::write_str_len(&mut out, s.len() as u32).expect("Vec write");
    out.extend_from_slice(s);
    out
}

fn encode_pval(v: &PVal<'_>) -> Vec<u8> {
    match v {
        PVal::Bytes(b) => encode_str(b),
        PVal::Headers(vals) if vals.len() == 1 => encode_str(vals[0].as_bytes()),
        PVal::Headers(vals) => {
            let mut out = Vec::new();
            rmp::encode::write_array_len(&mut out, vals.len() as u32).expect("Vec write");
            for v in vals.iter() {
                out.extend_from_slice(&encode_str(v.as_bytes()));
            }
            out
        }
    }
}

fn build_extras(s: &ParseSettings, params: &Params<'_>) -> Extras {
    let mut ex = Extras::default();
    if s.add_http_headers {
        for (k, v) in &params.items {
            if k.starts_with(b"HTTP_") {
                ex.set(String::from_utf8_lossy(k).into_owned(), encode_pval(v));
            }
        }
    }
    if s.add_query_params {
        for (k, v) in &params.items {
            if k.starts_with(b"QUERY_") {
                ex.set(String::from_utf8_lossy(k).into_owned(), encode_pval(v));
            }
        }
    }
    if s.add_remote_addr {
        let v = match params.get("REMOTE_ADDR") {
            Some(v) => encode_pval(v),
            None => vec![0xc0],
        };
        ex.set("REMOTE_ADDR".into(), v);
    }
    ex
}

// ------------------------------------------------------------------------------------------
// Time
// ------------------------------------------------------------------------------------------

/// A time field's value, from JSON or MessagePack.
#[derive(Debug, Clone, PartialEq)]
enum TimeSrc<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a [u8]),
    Event(EventTime),
    Other(&'static str),
}

impl TimeSrc<'_> {
    fn from_json(v: &Value) -> TimeSrc<'_> {
        match v {
            Value::Null => TimeSrc::Nil,
            Value::Bool(b) => TimeSrc::Bool(*b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => TimeSrc::Int(i),
                (None, Some(u)) => TimeSrc::UInt(u),
                _ => TimeSrc::Float(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(s) => TimeSrc::Str(s.as_bytes()),
            Value::Array(_) => TimeSrc::Other("an array"),
            Value::Object(_) => TimeSrc::Other("an object"),
        }
    }

    fn from_msgpack(v: &[u8]) -> TimeSrc<'_> {
        match msgpack::head(v, 0) {
            Ok((Kind::Nil, _)) => TimeSrc::Nil,
            Ok((Kind::Bool(b), _)) => TimeSrc::Bool(b),
            Ok((Kind::Int(i), _)) => TimeSrc::Int(i),
            Ok((Kind::UInt(u), _)) => TimeSrc::UInt(u),
            Ok((Kind::Float(f), _)) => TimeSrc::Float(f),
            Ok((Kind::Str(s, n), _)) | Ok((Kind::Bin(s, n), _)) => TimeSrc::Str(&v[s..s + n]),
            Ok((Kind::Ext(0, s, 8), _)) => TimeSrc::Event(EventTime::from_ext(&v[s..s + 8])),
            Ok((Kind::Array(..), _)) => TimeSrc::Other("an array"),
            Ok((Kind::Map(..), _)) => TimeSrc::Other("a map"),
            Ok((Kind::Ext(..), _)) => TimeSrc::Other("an extension value"),
            Err(_) => TimeSrc::Other("malformed MessagePack"),
        }
    }

    fn describe(&self) -> &'static str {
        match self {
            TimeSrc::Nil => "nil",
            TimeSrc::Bool(_) => "a boolean",
            TimeSrc::Int(_) | TimeSrc::UInt(_) => "an integer",
            TimeSrc::Float(_) => "a float",
            TimeSrc::Str(_) => "a string",
            TimeSrc::Event(_) => "an EventTime",
            TimeSrc::Other(w) => w,
        }
    }
}

/// Ruby's `String#to_i`: optional leading whitespace and sign, then digits (single `_` between
/// digits allowed); anything else ends the number; no digits read as 0. Saturates at i64.
pub fn ruby_to_i(s: &[u8]) -> i64 {
    let mut i = 0;
    while i < s.len() && (s[i] == b' ' || (b'\t'..=b'\r').contains(&s[i])) {
        i += 1;
    }
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut v: i64 = 0;
    let mut prev_digit = false;
    while i < s.len() {
        match s[i] {
            d @ b'0'..=b'9' => {
                v = v.saturating_mul(10).saturating_add((d - b'0') as i64);
                prev_digit = true;
            }
            b'_' if prev_digit && s.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                prev_digit = false;
            }
            _ => break,
        }
        i += 1;
    }
    if neg {
        -v
    } else {
        v
    }
}

/// Ruby's `String#to_f`: the longest prefix that reads as a decimal float (after leading
/// whitespace); 0.0 when there is none.
pub fn ruby_to_f(s: &[u8]) -> f64 {
    let mut i = 0;
    while i < s.len() && (s[i] == b' ' || (b'\t'..=b'\r').contains(&s[i])) {
        i += 1;
    }
    let mut text = String::new();
    if matches!(s.get(i), Some(b'-') | Some(b'+')) {
        text.push(s[i] as char);
        i += 1;
    }
    let digits = |i: &mut usize, text: &mut String| -> usize {
        let mut n = 0;
        while *i < s.len() {
            match s[*i] {
                d @ b'0'..=b'9' => {
                    text.push(d as char);
                    n += 1;
                }
                b'_' if n > 0 && s.get(*i + 1).is_some_and(u8::is_ascii_digit) => {}
                _ => break,
            }
            *i += 1;
        }
        n
    };
    let int_digits = digits(&mut i, &mut text);
    if int_digits == 0 {
        // Ruby needs a digit before the point (".5".to_f is 0.5 though): accept both.
        if s.get(i) != Some(&b'.') {
            return 0.0;
        }
    }
    if s.get(i) == Some(&b'.') && s.get(i + 1).is_some_and(u8::is_ascii_digit) {
        text.push('.');
        i += 1;
        digits(&mut i, &mut text);
    } else if int_digits == 0 {
        return 0.0;
    }
    if matches!(s.get(i), Some(b'e') | Some(b'E')) {
        let mut j = i + 1;
        let mut exp = String::from("e");
        if matches!(s.get(j), Some(b'-') | Some(b'+')) {
            exp.push(s[j] as char);
            j += 1;
        }
        if s.get(j).is_some_and(u8::is_ascii_digit) {
            while j < s.len() && s[j].is_ascii_digit() {
                exp.push(s[j] as char);
                j += 1;
            }
            text.push_str(&exp);
        }
    }
    text.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .unwrap_or(0.0)
}

/// `Fluent::EventTime.from_time(Time.at(f))`: exact seconds and truncated nanoseconds of the
/// float's binary value.
fn exact_float_time(f: f64) -> EventTime {
    let sec = f.floor();
    if !(i64::MIN as f64..=i64::MAX as f64).contains(&sec) {
        return EventTime::from_f64(f);
    }
    let bits = f.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let mantissa = if exp == 0 {
        (bits & ((1 << 52) - 1)) << 1
    } else {
        (bits & ((1 << 52) - 1)) | (1 << 52)
    };
    // f = ±mantissa × 2^(exp - 1075)
    let shift = 1075 - exp;
    if f >= 0.0 && (1..=64).contains(&shift) {
        let m = mantissa as u128;
        let frac = m & ((1u128 << shift) - 1);
        let nsec = (frac * 1_000_000_000) >> shift;
        return EventTime::new((m >> shift) as i64, nsec as u32);
    }
    if shift <= 0 {
        return EventTime::new(sec as i64, 0);
    }
    let nsec = ((f - sec) * 1e9).floor().clamp(0.0, 999_999_999.0) as u32;
    EventTime::new(sec as i64, nsec)
}

/// Fluentd's float time parser on text: seconds before the first `.`, up to ten digits after
/// it read as nanoseconds (padded to nine); both with Ruby's lenient `to_i`.
fn float_text_time(text: &[u8]) -> EventTime {
    let mut parts = text.splitn(3, |&b| b == b'.');
    let sec = ruby_to_i(parts.next().unwrap_or(b""));
    let nsec = match parts.next() {
        None => 0,
        Some(n) => {
            let mut n = n[..n.len().min(10)].to_vec();
            while n.len() < 9 {
                n.push(b'0');
            }
            ruby_to_i(&n)
        }
    };
    EventTime::new(sec, nsec.clamp(0, 999_999_999) as u32)
}

/// Fluentd's float time parser on a float: its shortest decimal text, split at the point.
fn float_value_time(f: f64) -> EventTime {
    if !f.is_finite() {
        return EventTime::new(0, 0);
    }
    let mut b = ryu::Buffer::new();
    let s = b.format_finite(f);
    if s.contains('e') || s.contains('E') {
        return exact_float_time(f);
    }
    float_text_time(s.as_bytes())
}

/// The event time a `?time=` parameter gives: Ruby's `to_f`; 0 means now.
fn param_time(v: &[u8], now: EventTime) -> EventTime {
    let f = ruby_to_f(v);
    if f == 0.0 {
        now
    } else {
        float_value_time(f)
    }
}

/// The event time a record's time field gives.
fn field_time(
    src: TimeSrc<'_>,
    ty: TimeType,
    key: &str,
    now: EventTime,
) -> Result<EventTime, BadRequest> {
    let wrong = |src: &TimeSrc<'_>, want: &str| {
        bad(format!(
            "invalid time field '{key}': {want}, got {}",
            src.describe()
        ))
    };
    match ty {
        TimeType::Number => match src {
            TimeSrc::Nil | TimeSrc::Bool(false) => Ok(now),
            TimeSrc::Int(i) => Ok(EventTime::new(i, 0)),
            TimeSrc::UInt(u) => Ok(EventTime::new(u.min(i64::MAX as u64) as i64, 0)),
            TimeSrc::Float(f) if f.is_finite() => Ok(exact_float_time(f)),
            TimeSrc::Event(t) => Ok(t),
            other => Err(wrong(&other, "expected a number of seconds")),
        },
        TimeType::Float => match src {
            TimeSrc::Int(i) => Ok(EventTime::new(i, 0)),
            TimeSrc::UInt(u) => Ok(EventTime::new(u.min(i64::MAX as u64) as i64, 0)),
            TimeSrc::Float(f) if f.is_finite() => Ok(float_value_time(f)),
            TimeSrc::Str(s) => Ok(float_text_time(s)),
            TimeSrc::Event(t) => Ok(t),
            other => Err(wrong(&other, "value must be a string or a number")),
        },
        TimeType::Unixtime => match src {
            TimeSrc::Int(i) => Ok(EventTime::new(i, 0)),
            TimeSrc::UInt(u) => Ok(EventTime::new(u.min(i64::MAX as u64) as i64, 0)),
            TimeSrc::Float(f) if f.is_finite() => Ok(EventTime::new(f.trunc() as i64, 0)),
            TimeSrc::Str(s) => Ok(EventTime::new(ruby_to_i(s), 0)),
            TimeSrc::Event(t) => Ok(EventTime::new(t.sec, 0)),
            other => Err(wrong(&other, "value must be a string or a number")),
        },
    }
}

// ------------------------------------------------------------------------------------------
// Records
// ------------------------------------------------------------------------------------------

/// Per-request state shared by every record.
struct Ctx<'s> {
    settings: &'s ParseSettings,
    extras: Extras,
    /// `?time=` when given: every record gets this time and keeps its own time field.
    fixed_time: Option<EventTime>,
    /// Custom parsers read the time field before fields are added; in_http's own parser after.
    time_first: bool,
    now: EventTime,
    out: StreamBuilder,
    /// Scratch space for one record.
    rec: Vec<u8>,
}

/// One field of the record being written.
enum Part<'a> {
    Msgpack(&'a [u8], &'a [u8]),
    Json(&'a str, &'a Value),
    Extra(usize),
}

impl Ctx<'_> {
    /// The time key to look for, if the time comes from a record field.
    fn time_key(&self) -> Option<&str> {
        if self.fixed_time.is_some() {
            return None;
        }
        self.settings.time_key.as_deref()
    }

    /// Writes the record from its fields, applying the extras and the time-key rule, and
    /// pushes the event.
    fn push_fields<'a>(
        &mut self,
        fields: impl Iterator<Item = (&'a [u8], Part<'a>, TimeSrc<'a>)>,
    ) -> Result<(), BadRequest> {
        let time_key = self.time_key().map(str::to_owned);
        let keep = self.settings.keep_time_key;
        let mut parts: Vec<Part<'a>> = Vec::new();
        let mut used = vec![false; self.extras.items.len()];
        let mut own_time: Option<TimeSrc<'a>> = None;
        for (key, part, tsrc) in fields {
            let is_time = time_key.as_deref().is_some_and(|k| k.as_bytes() == key);
            if is_time {
                own_time = Some(tsrc);
            }
            // The record's own field is removed by the time rule.
            let drop_own = is_time && !keep;
            match self.extras.get(key) {
                Some(i) => {
                    if used[i] {
                        // A repeated key: the added field already stands at the first one.
                        continue;
                    }
                    if self.time_first {
                        // Time read first, then fields added: an added field replaces the
                        // record's where it stands, or is appended if the time rule took it.
                        if drop_own {
                            continue;
                        }
                        used[i] = true;
                        parts.push(Part::Extra(i));
                    } else {
                        // Fields added first, then the time rule (which may remove this one).
                        used[i] = true;
                        if !drop_own {
                            parts.push(Part::Extra(i));
                        }
                    }
                }
                None => {
                    if !drop_own {
                        parts.push(part);
                    }
                }
            }
        }
        for (i, (k, _)) in self.extras.items.iter().enumerate() {
            if used[i] {
                continue;
            }
            let is_time = time_key.as_deref() == Some(k.as_str());
            if is_time && !keep && !self.time_first {
                continue;
            }
            parts.push(Part::Extra(i));
        }
        let time = match (self.fixed_time, &time_key) {
            (Some(t), _) => t,
            (None, None) => self.now,
            (None, Some(k)) => {
                let extra = (!self.time_first)
                    .then(|| self.extras.get(k.as_bytes()))
                    .flatten();
                let src = match extra {
                    Some(i) => Some(TimeSrc::from_msgpack(&self.extras.items[i].1)),
                    None => own_time,
                };
                match src {
                    None => self.now,
                    Some(s) => field_time(s, self.settings.time_type, k, self.now)?,
                }
            }
        };
        self.rec.clear();
        rmp::encode::write_map_len(&mut self.rec, parts.len() as u32).expect("Vec write");
        for p in parts {
            match p {
                Part::Msgpack(k, v) => {
                    self.rec.extend_from_slice(k);
                    self.rec.extend_from_slice(v);
                }
                Part::Json(k, v) => {
                    rmp::encode::write_str(&mut self.rec, k).expect("Vec write");
                    msgpack::write_from_json(v, &mut self.rec);
                }
                Part::Extra(i) => {
                    let (k, v) = &self.extras.items[i];
                    rmp::encode::write_str(&mut self.rec, k).expect("Vec write");
                    self.rec.extend_from_slice(v);
                }
            }
        }
        self.out.push(time, &self.rec);
        Ok(())
    }

    /// Adds one JSON object as a record.
    fn push_json(&mut self, map: &serde_json::Map<String, Value>) -> Result<(), BadRequest> {
        let untouched = self.extras.is_empty()
            && match self.time_key() {
                None => true,
                Some(k) => !map.contains_key(k),
            };
        if untouched {
            self.rec.clear();
            rmp::encode::write_map_len(&mut self.rec, map.len() as u32).expect("Vec write");
            for (k, v) in map {
                rmp::encode::write_str(&mut self.rec, k).expect("Vec write");
                msgpack::write_from_json(v, &mut self.rec);
            }
            let t = self.fixed_time.unwrap_or(self.now);
            self.out.push(t, &self.rec);
            return Ok(());
        }
        self.push_fields(
            map.iter()
                .map(|(k, v)| (k.as_bytes(), Part::Json(k, v), TimeSrc::from_json(v))),
        )
    }

    /// Adds one MessagePack map (a whole encoded value) as a record.
    fn push_msgpack(&mut self, map: &[u8]) -> Result<(), BadRequest> {
        let entries = msgpack::map_entries(map)
            .map_err(|e| bad(format!("invalid MessagePack record: {e}")))?;
        // Values must be complete too (map_entries skipped over each, so they are).
        let time_present = self.time_key().is_some_and(|k| {
            entries
                .iter()
                .any(|e| msgpack::as_bytes(e.key, 0) == Some(k.as_bytes()))
        });
        if self.extras.is_empty() && (!time_present || self.settings.keep_time_key) {
            let t = match (self.fixed_time, self.time_key()) {
                (Some(t), _) => t,
                (None, Some(k)) if time_present => {
                    let v = msgpack::map_get(map, k)
                        .map_err(|e| bad(format!("invalid MessagePack record: {e}")))?
                        .unwrap_or(&[0xc0]);
                    field_time(
                        TimeSrc::from_msgpack(v),
                        self.settings.time_type,
                        k,
                        self.now,
                    )?
                }
                _ => self.now,
            };
            self.out.push(t, map);
            return Ok(());
        }
        self.push_fields(entries.iter().map(|e| {
            (
                msgpack::as_bytes(e.key, 0).unwrap_or(&[]),
                Part::Msgpack(e.key, e.value),
                TimeSrc::from_msgpack(e.value),
            )
        }))
    }

    /// Adds every record of a JSON text: one object or an array of objects. Array elements
    /// are pushed as they are parsed, so at most one record's tree exists at a time.
    fn json_text(&mut self, text: &[u8], what: &str) -> Result<(), BadRequest> {
        use serde::de::DeserializeSeed;
        let mut records = JsonRecords {
            ctx: self,
            what,
            failure: None,
        };
        let mut de = serde_json::Deserializer::from_slice(text);
        let r = (&mut records).deserialize(&mut de).and_then(|()| de.end());
        match (r, records.failure) {
            (_, Some(f)) => Err(f),
            (Err(e), None) => Err(bad(format!("invalid JSON in {what}: {e}"))),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Adds every record of newline-delimited JSON; blank lines are skipped.
    fn ndjson_text(&mut self, text: &[u8]) -> Result<(), BadRequest> {
        for (n, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.json_text(line, &format!("ndjson line {}", n + 1))?;
        }
        Ok(())
    }

    /// Adds every record of a MessagePack sequence: maps, or arrays of maps.
    fn msgpack_data(&mut self, data: &[u8]) -> Result<(), BadRequest> {
        let mut p = 0;
        if data.is_empty() {
            return Err(bad("empty MessagePack body"));
        }
        while p < data.len() {
            let end =
                msgpack::skip(data, p).map_err(|e| bad(format!("invalid MessagePack: {e}")))?;
            let value = &data[p..end];
            match msgpack::head(value, 0).map_err(|e| bad(format!("invalid MessagePack: {e}")))? {
                (Kind::Map(..), _) => self.push_msgpack(value)?,
                (Kind::Array(n, mut q), _) => {
                    for i in 0..n {
                        let e = msgpack::skip(value, q)
                            .map_err(|e| bad(format!("invalid MessagePack: {e}")))?;
                        let item = &value[q..e];
                        match msgpack::head(item, 0) {
                            Ok((Kind::Map(..), _)) => self.push_msgpack(item)?,
                            _ => {
                                return Err(bad(format!(
                                    "element {i} of the MessagePack array is not a map but {}",
                                    msgpack_kind(item)
                                )))
                            }
                        }
                        q = e;
                    }
                }
                _ => {
                    return Err(bad(format!(
                        "MessagePack body must be a map or an array of maps, not {}",
                        msgpack_kind(value)
                    )))
                }
            }
            p = end;
        }
        Ok(())
    }
}

/// Reads a JSON text record by record (see [`Ctx::json_text`]). A record the context refuses
/// stops the parse; the reason is kept in `failure`.
struct JsonRecords<'c, 's> {
    ctx: &'c mut Ctx<'s>,
    what: &'c str,
    failure: Option<BadRequest>,
}

impl JsonRecords<'_, '_> {
    fn fail<E: serde::de::Error>(&mut self, why: BadRequest) -> E {
        self.failure = Some(why);
        E::custom("record refused")
    }

    fn not_container<E: serde::de::Error>(&mut self, kind: &str) -> Result<(), E> {
        let why = bad(format!(
            "{} must be a JSON object or an array of objects, not {kind}",
            self.what
        ));
        Err(self.fail(why))
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut JsonRecords<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut JsonRecords<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object or an array of objects")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        use serde::Deserialize;
        let m = serde_json::Map::<String, Value>::deserialize(
            serde::de::value::MapAccessDeserializer::new(map),
        )?;
        match self.ctx.push_json(&m) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0usize;
        while let Some(v) = seq.next_element::<Value>()? {
            let r = match &v {
                Value::Object(m) => self.ctx.push_json(m),
                other => Err(bad(format!(
                    "element {i} of the JSON array in {} is not an object but {}",
                    self.what,
                    json_kind(other)
                ))),
            };
            if let Err(e) = r {
                return Err(self.fail(e));
            }
            i += 1;
        }
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.not_container("null")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        self.not_container("a boolean")
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        self.not_container("a number")
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.not_container("a number")
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        self.not_container("a number")
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        self.not_container("a string")
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn msgpack_kind(v: &[u8]) -> &'static str {
    match msgpack::head(v, 0) {
        Ok((Kind::Nil, _)) => "nil",
        Ok((Kind::Bool(_), _)) => "a boolean",
        Ok((Kind::Int(_), _)) | Ok((Kind::UInt(_), _)) => "an integer",
        Ok((Kind::Float(_), _)) => "a float",
        Ok((Kind::Str(..), _)) => "a string",
        Ok((Kind::Bin(..), _)) => "binary data",
        Ok((Kind::Array(..), _)) => "an array",
        Ok((Kind::Map(..), _)) => "a map",
        Ok((Kind::Ext(..), _)) => "an extension value",
        Err(_) => "malformed data",
    }
}

/// Turns one request into events (see the module docs). `now` is the time of events that
/// carry none.
pub fn events(
    settings: &ParseSettings,
    req: &RequestData,
    now: EventTime,
) -> Result<EventStream, BadRequest> {
    let ct = req.content_type.trim_start();
    let query = req.query.as_deref().unwrap_or("").as_bytes();
    let mut params = Params::default();
    for (k, v) in parse_query(query) {
        params.set(k, PVal::Bytes(v));
    }
    let body = &req.body[..];
    if settings.format == Format::Default {
        if starts_with_ci(ct, "application/x-www-form-urlencoded") {
            for (k, v) in parse_query(body) {
                params.set(k, PVal::Bytes(v));
            }
        } else if starts_with_ci(ct, "multipart/form-data") {
            return Err(bad(
                "multipart/form-data bodies are not supported; send application/json, application/x-ndjson, application/msgpack or application/x-www-form-urlencoded",
            ));
        } else if starts_with_ci(ct, "application/json")
            || starts_with_ci(ct, "application/csp-report")
        {
            params.set(b"json".to_vec(), PVal::Bytes(body.into()));
        } else if starts_with_ci(ct, "application/msgpack")
            || starts_with_ci(ct, "application/x-msgpack")
        {
            params.set(b"msgpack".to_vec(), PVal::Bytes(body.into()));
        } else if starts_with_ci(ct, "application/x-ndjson") {
            params.set(b"ndjson".to_vec(), PVal::Bytes(body.into()));
        }
    }
    if settings.add_query_params {
        for (k, v) in parse_query(query) {
            params.set(env_name("QUERY_", &k), PVal::Bytes(v));
        }
    }
    if settings.add_http_headers {
        for (name, values) in &req.headers {
            params.set(env_name("HTTP_", name.as_bytes()), PVal::Headers(values));
        }
    }
    if let Some(addr) = &req.remote_addr {
        params.set(
            b"REMOTE_ADDR".to_vec(),
            PVal::Bytes(addr.as_bytes().to_vec().into()),
        );
    }

    let fixed_time = params.bytes("time").map(|t| param_time(t, now));
    let mut ctx = Ctx {
        settings,
        extras: build_extras(settings, &params),
        fixed_time,
        time_first: settings.format != Format::Default,
        now,
        out: StreamBuilder::with_capacity(body.len().min(1 << 20) + 64),
        rec: Vec::new(),
    };
    match &settings.format {
        Format::Default => {
            if let Some(m) = params.bytes("msgpack") {
                ctx.msgpack_data(m)?;
            } else if let Some(j) = params.bytes("json") {
                ctx.json_text(j, "the JSON body")?;
            } else if let Some(n) = params.bytes("ndjson") {
                ctx.ndjson_text(n)?;
            } else {
                return Err(bad(format!(
                    "'json', 'ndjson' or 'msgpack' parameter is required (content type {:?} is not one of application/json, application/x-ndjson, application/msgpack, application/x-www-form-urlencoded)",
                    req.content_type
                )));
            }
        }
        Format::Json => ctx.json_text(body, "the JSON body")?,
        Format::Msgpack => ctx.msgpack_data(body)?,
        Format::None { message_key } => {
            let mut rec = Vec::with_capacity(body.len() + message_key.len() + 16);
            rmp::encode::write_map_len(&mut rec, 1).expect("Vec write");
            rmp::encode::write_str(&mut rec, message_key).expect("Vec write");
            rec.extend_from_slice(&encode_str(body));
            ctx.push_msgpack(&rec)?;
        }
    }
    Ok(ctx.out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const NOW: EventTime = EventTime::new(1_700_000_000, 42);

    fn req(ct: &str, query: Option<&str>, body: &[u8]) -> RequestData {
        RequestData {
            content_type: ct.into(),
            query: query.map(str::to_owned),
            body: Bytes::copy_from_slice(body),
            headers: Vec::new(),
            remote_addr: Some("127.0.0.1".into()),
        }
    }

    fn run(s: &ParseSettings, r: &RequestData) -> Result<Vec<(EventTime, Value)>, BadRequest> {
        let es = events(s, r, NOW)?;
        Ok(es
            .iter()
            .map(|e| (e.time, msgpack::to_json_value(e.record).unwrap()))
            .collect())
    }

    fn ok(ct: &str, query: Option<&str>, body: &[u8]) -> Vec<(EventTime, Value)> {
        run(&ParseSettings::default(), &req(ct, query, body)).unwrap()
    }

    fn err(ct: &str, query: Option<&str>, body: &[u8]) -> String {
        run(&ParseSettings::default(), &req(ct, query, body))
            .unwrap_err()
            .0
    }

    fn mp(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        msgpack::write_from_json(v, &mut out);
        out
    }

    fn urlencode(b: &[u8]) -> String {
        b.iter()
            .map(|&c| {
                if c.is_ascii_alphanumeric() {
                    (c as char).to_string()
                } else {
                    format!("%{c:02X}")
                }
            })
            .collect()
    }

    #[test]
    fn tags_follow_fluentd() {
        assert_eq!(tag_of("/a/b/c", None), "a.b.c");
        assert_eq!(tag_of("/a//b/", None), "a..b");
        assert_eq!(tag_of("/app", Some("p")), "p.app");
        assert_eq!(tag_of("/", None), "");
        assert_eq!(tag_of("/a%20b", None), "a%20b");
    }

    #[test]
    fn json_object_and_array() {
        assert_eq!(
            ok("application/json", None, br#"{"a":1,"b":"x"}"#),
            vec![(NOW, json!({"a":1,"b":"x"}))]
        );
        assert_eq!(
            ok(
                "application/json; charset=utf-8",
                Some("time=1293974055"),
                br#"[{"a":1},{"a":2}]"#
            ),
            vec![
                (EventTime::new(1293974055, 0), json!({"a":1})),
                (EventTime::new(1293974055, 0), json!({"a":2}))
            ]
        );
        assert_eq!(ok("application/csp-report", None, br#"{"c":1}"#).len(), 1);
        // Key order survives; a duplicate key keeps the first place and the last value.
        let r = ok("application/json", None, br#"{"z":1,"a":2,"z":3}"#);
        let bytes = events(
            &ParseSettings::default(),
            &req("application/json", None, br#"{"z":1,"a":2,"z":3}"#),
            NOW,
        )
        .unwrap();
        let mut s = Vec::new();
        msgpack::write_json(bytes.iter().next().unwrap().record, &mut s).unwrap();
        assert_eq!(String::from_utf8(s).unwrap(), r#"{"z":3,"a":2}"#);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn bad_json_bodies_are_400_with_a_reason() {
        assert!(err("application/json", None, b"{").contains("invalid JSON"));
        assert!(err("application/json", None, b"").contains("invalid JSON"));
        assert!(err("application/json", None, b"42").contains("not a number"));
        assert!(err("application/json", None, b"null").contains("not null"));
        assert!(err("application/json", None, br#"[{"a":1}, 3]"#)
            .contains("element 1 of the JSON array in the JSON body is not an object"));
        assert!(err("application/json", None, br#""s""#).contains("not a string"));
        assert!(err("application/json", None, b"true").contains("not a boolean"));
        assert!(err("application/json", None, br#"[{"a":1}] x"#).contains("trailing characters"));
        assert!(err("application/json", None, br#"{"a":1}{"b":2}"#).contains("invalid JSON"));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(err("application/json", None, deep.as_bytes()).contains("invalid JSON"));
        assert!(err("text/plain", None, b"{}").contains("'json', 'ndjson' or 'msgpack'"));
        assert!(err("multipart/form-data; boundary=x", None, b"").contains("not supported"));
    }

    #[test]
    fn large_arrays_stream() {
        let n = 100_000;
        let mut body = String::from("[");
        for i in 0..n {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(r#"{{"i":{i}}}"#));
        }
        body.push(']');
        let es = events(
            &ParseSettings::default(),
            &req("application/json", None, body.as_bytes()),
            NOW,
        )
        .unwrap();
        assert_eq!(es.len(), n);
        let last = es.iter().last().unwrap();
        assert_eq!(
            msgpack::to_json_value(last.record).unwrap(),
            json!({"i": n - 1})
        );
    }

    #[test]
    fn ndjson_lines() {
        let r = ok(
            "application/x-ndjson",
            None,
            b"{\"a\":1}\r\n\n{\"a\":2}\n[{\"a\":3}]\n",
        );
        assert_eq!(
            r.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>(),
            vec![json!({"a":1}), json!({"a":2}), json!({"a":3})]
        );
        assert!(ok("application/x-ndjson", None, b"").is_empty());
        let e = err("application/x-ndjson", None, b"{\"a\":1}\n{oops\n");
        assert!(e.contains("ndjson line 2"), "{e}");
        assert!(err("application/x-ndjson", None, b"1\n").contains("not a number"));
    }

    #[test]
    fn msgpack_map_array_and_sequence() {
        let m = mp(&json!({"a": 1, "b": [1, 2]}));
        for ct in ["application/msgpack", "application/x-msgpack"] {
            assert_eq!(ok(ct, None, &m), vec![(NOW, json!({"a":1,"b":[1,2]}))]);
        }
        let arr = mp(&json!([{"a": 1}, {"a": 2}]));
        assert_eq!(ok("application/msgpack", None, &arr).len(), 2);
        let mut seq = m.clone();
        seq.extend_from_slice(&arr);
        assert_eq!(ok("application/msgpack", None, &seq).len(), 3);
        // Untouched maps are copied byte for byte.
        let es = events(
            &ParseSettings::default(),
            &req("application/msgpack", None, &m),
            NOW,
        )
        .unwrap();
        assert_eq!(es.iter().next().unwrap().record, &m[..]);
    }

    #[test]
    fn bad_msgpack_bodies() {
        assert!(err("application/msgpack", None, &[0x92, 0x01]).contains("invalid MessagePack"));
        assert!(err("application/msgpack", None, &[0xc1]).contains("invalid MessagePack"));
        assert!(err("application/msgpack", None, &[0x01]).contains("not an integer"));
        assert!(err("application/msgpack", None, &[0xc0]).contains("not nil"));
        assert!(
            err("application/msgpack", None, &mp(&json!([{"a":1}, "x"])))
                .contains("element 1 of the MessagePack array is not a map but a string")
        );
        assert!(err("application/msgpack", None, b"").contains("empty"));
        // A map whose value is truncated.
        assert!(
            err("application/msgpack", None, &[0x81, 0xa1, b'a', 0xa5, b'x'])
                .contains("invalid MessagePack")
        );
    }

    #[test]
    fn form_parameters() {
        let body = format!("json={}", urlencode(br#"{"a":"x y","b":1}"#));
        assert_eq!(
            ok("application/x-www-form-urlencoded", None, body.as_bytes()),
            vec![(NOW, json!({"a":"x y","b":1}))]
        );
        let m = mp(&json!({"m": true}));
        let body = format!("msgpack={}&time=1293974055.5", urlencode(&m));
        assert_eq!(
            ok("application/x-www-form-urlencoded", None, body.as_bytes()),
            vec![(EventTime::new(1293974055, 500_000_000), json!({"m":true}))]
        );
        // `+` is a space; msgpack wins over json.
        let body = format!(
            "json=%7B%22a%22%3A%22b+c%22%7D&msgpack={}",
            urlencode(&mp(&json!({"w":1})))
        );
        assert_eq!(
            ok("application/x-www-form-urlencoded", None, body.as_bytes())[0].1,
            json!({"w":1})
        );
        let body = "json=%7B%22a%22%3A%22b+c%22%7D";
        assert_eq!(
            ok("application/x-www-form-urlencoded", None, body.as_bytes())[0].1,
            json!({"a":"b c"})
        );
        // The query string works with any content type.
        assert_eq!(ok("", Some("json=%7B%7D"), b"").len(), 1);
        assert!(err("application/x-www-form-urlencoded", None, b"a=1").contains("required"));
        assert!(
            err("application/x-www-form-urlencoded", None, b"json=%ZZ").contains("invalid JSON")
        );
    }

    #[test]
    fn time_parameter() {
        let j = br#"{"a":1,"time":5}"#;
        // ?time= wins and the record keeps its own time field.
        assert_eq!(
            ok("application/json", Some("time=1293974055.123"), j),
            vec![(
                EventTime::new(1293974055, 123_000_000),
                json!({"a":1,"time":5})
            )]
        );
        // Zero or not a number: now.
        assert_eq!(ok("application/json", Some("time=0"), j)[0].0, NOW);
        assert_eq!(ok("application/json", Some("time=abc"), j)[0].0, NOW);
        assert_eq!(
            ok("application/json", Some("time=12x"), j)[0].0,
            EventTime::new(12, 0)
        );
    }

    #[test]
    fn time_field_rules() {
        // Integer and float seconds; the field is removed.
        let r = ok(
            "application/json",
            None,
            br#"[{"a":1,"time":1293974055},{"a":2,"time":1293974055.5}]"#,
        );
        assert_eq!(r[0], (EventTime::new(1293974055, 0), json!({"a":1})));
        assert_eq!(
            r[1],
            (EventTime::new(1293974055, 500_000_000), json!({"a":2}))
        );
        // null means now (the field still goes).
        assert_eq!(
            ok("application/json", None, br#"{"time":null,"a":1}"#),
            vec![(NOW, json!({"a":1}))]
        );
        // A string is refused, as Ruby's Time.at refuses it.
        assert!(err("application/json", None, br#"{"time":"2020-01-01"}"#)
            .contains("invalid time field 'time'"));
        // MessagePack: EventTime extension and integers.
        let mut m = Vec::new();
        rmp::encode::write_map_len(&mut m, 2).unwrap();
        rmp::encode::write_str(&mut m, "time").unwrap();
        EventTime::new(1_600_000_000, 7).encode(&mut m);
        rmp::encode::write_str(&mut m, "k").unwrap();
        rmp::encode::write_str(&mut m, "v").unwrap();
        assert_eq!(
            ok("application/msgpack", None, &m),
            vec![(EventTime::new(1_600_000_000, 7), json!({"k":"v"}))]
        );
        // keep_time_key keeps it.
        let s = ParseSettings {
            keep_time_key: true,
            ..Default::default()
        };
        let r = run(&s, &req("application/msgpack", None, &m)).unwrap();
        assert_eq!(r[0].0, EventTime::new(1_600_000_000, 7));
        assert_eq!(r[0].1["k"], json!("v"));
        assert!(r[0].1.get("time").is_some());
        let r = run(&s, &req("application/json", None, br#"{"time":10,"a":1}"#)).unwrap();
        assert_eq!(r, vec![(EventTime::new(10, 0), json!({"time":10,"a":1}))]);
        // Another time key.
        let s = ParseSettings {
            time_key: Some("ts".into()),
            ..Default::default()
        };
        let r = run(
            &s,
            &req("application/json", None, br#"{"time":10,"ts":20}"#),
        )
        .unwrap();
        assert_eq!(r, vec![(EventTime::new(20, 0), json!({"time":10}))]);
    }

    #[test]
    fn time_types() {
        let float = ParseSettings {
            time_type: TimeType::Float,
            ..Default::default()
        };
        let r = run(
            &float,
            &req("application/json", None, br#"{"time":"1293974055.25"}"#),
        )
        .unwrap();
        assert_eq!(r[0].0, EventTime::new(1293974055, 250_000_000));
        assert!(run(&float, &req("application/json", None, br#"{"time":[1]}"#)).is_err());
        let unix = ParseSettings {
            time_type: TimeType::Unixtime,
            ..Default::default()
        };
        let r = run(
            &unix,
            &req("application/json", None, br#"{"time":"1293974055.75"}"#),
        )
        .unwrap();
        assert_eq!(r[0].0, EventTime::new(1293974055, 0));
        let r = run(&unix, &req("application/json", None, br#"{"time":12.9}"#)).unwrap();
        assert_eq!(r[0].0, EventTime::new(12, 0));
    }

    #[test]
    fn exact_float_times_truncate_like_ruby() {
        assert_eq!(exact_float_time(1.5), EventTime::new(1, 500_000_000));
        // 1293974055.123 is 1293974055.12299990654… in binary.
        assert_eq!(
            exact_float_time(1293974055.123),
            EventTime::new(1293974055, 122_999_906)
        );
        assert_eq!(exact_float_time(0.0), EventTime::new(0, 0));
        assert_eq!(
            exact_float_time(1e18),
            EventTime::new(1_000_000_000_000_000_000, 0)
        );
        // The float parser reads the decimal text instead.
        assert_eq!(
            float_value_time(1293974055.123),
            EventTime::new(1293974055, 123_000_000)
        );
    }

    #[test]
    fn ruby_number_reading() {
        assert_eq!(ruby_to_f(b"1.5"), 1.5);
        assert_eq!(ruby_to_f(b"  -2e3x"), -2000.0);
        assert_eq!(ruby_to_f(b"abc"), 0.0);
        assert_eq!(ruby_to_f(b".5"), 0.5);
        assert_eq!(ruby_to_f(b"1_000.5"), 1000.5);
        assert_eq!(ruby_to_f(b"1."), 1.0);
        assert_eq!(ruby_to_i(b" 42abc"), 42);
        assert_eq!(ruby_to_i(b"-7"), -7);
        assert_eq!(ruby_to_i(b"x"), 0);
        assert_eq!(ruby_to_i(b"99999999999999999999999"), i64::MAX);
        assert_eq!(float_text_time(b"12.5"), EventTime::new(12, 500_000_000));
        assert_eq!(float_text_time(b"12"), EventTime::new(12, 0));
        assert_eq!(
            float_text_time(b"12.123456789"),
            EventTime::new(12, 123_456_789)
        );
    }

    #[test]
    fn added_fields() {
        let s = ParseSettings {
            add_http_headers: true,
            add_query_params: true,
            add_remote_addr: true,
            ..Default::default()
        };
        let mut r = req(
            "application/json",
            Some("x-y=1&json=%7B%7D"),
            br#"{"a":1,"REMOTE_ADDR":"old","time":3}"#,
        );
        r.headers = vec![
            ("user-agent".into(), vec!["t/1".into()]),
            ("x-multi".into(), vec!["a".into(), "b".into()]),
        ];
        let out = run(&s, &r).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, EventTime::new(3, 0));
        let mut keys = Vec::new();
        let es = events(&s, &r, NOW).unwrap();
        for e in msgpack::map_entries(es.iter().next().unwrap().record).unwrap() {
            keys.push(e.key_str().unwrap().to_string());
        }
        // REMOTE_ADDR replaced in place, the others appended in Fluentd's order.
        assert_eq!(
            keys,
            vec![
                "a",
                "REMOTE_ADDR",
                "HTTP_USER_AGENT",
                "HTTP_X_MULTI",
                "QUERY_X_Y",
                "QUERY_JSON"
            ]
        );
        let v = &out[0].1;
        assert_eq!(v["REMOTE_ADDR"], json!("127.0.0.1"));
        assert_eq!(v["HTTP_USER_AGENT"], json!("t/1"));
        assert_eq!(v["HTTP_X_MULTI"], json!(["a", "b"]));
        assert_eq!(v["QUERY_X_Y"], json!("1"));
        // Nothing added without the flags.
        let plain = run(&ParseSettings::default(), &r).unwrap();
        assert_eq!(plain[0].1, json!({"a":1,"REMOTE_ADDR":"old"}));
        // MessagePack records get the same fields.
        let mut r2 = r.clone();
        r2.content_type = "application/msgpack".into();
        r2.query = None;
        r2.body = Bytes::from(mp(&json!({"b": 2, "time": 4})));
        let out = run(&s, &r2).unwrap();
        assert_eq!(out[0].0, EventTime::new(4, 0));
        assert_eq!(
            out[0].1,
            json!({"b":2,"HTTP_USER_AGENT":"t/1","HTTP_X_MULTI":["a","b"],"REMOTE_ADDR":"127.0.0.1"})
        );
    }

    #[test]
    fn custom_parsers() {
        let json_s = ParseSettings {
            format: Format::Json,
            time_type: TimeType::Float,
            ..Default::default()
        };
        // Any content type: the body is JSON.
        let r = run(
            &json_s,
            &req("text/plain", None, br#"[{"a":1,"time":"5.5"}]"#),
        )
        .unwrap();
        assert_eq!(r, vec![(EventTime::new(5, 500_000_000), json!({"a":1}))]);
        assert!(run(&json_s, &req("", None, b"nope")).is_err());
        let mp_s = ParseSettings {
            format: Format::Msgpack,
            time_key: None,
            ..Default::default()
        };
        let r = run(&mp_s, &req("", None, &mp(&json!({"time": 1, "x": 2})))).unwrap();
        assert_eq!(r, vec![(NOW, json!({"time":1,"x":2}))]);
        let none = ParseSettings {
            format: Format::None {
                message_key: "message".into(),
            },
            time_key: None,
            ..Default::default()
        };
        let r = run(
            &none,
            &req("application/json", Some("time=7"), b"raw line\n"),
        )
        .unwrap();
        assert_eq!(
            r,
            vec![(EventTime::new(7, 0), json!({"message":"raw line\n"}))]
        );
    }

    #[test]
    fn decompression() {
        use std::io::Write;
        let raw = br#"{"a":1}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(raw).unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(
            &decode_body("gzip", Bytes::from(gz.clone()), 100).unwrap()[..],
            raw
        );
        // Two members.
        let mut two = gz.clone();
        two.extend_from_slice(&gz);
        assert_eq!(
            decode_body("gzip", Bytes::from(two), 100).unwrap().len(),
            14
        );
        assert!(decode_body("gzip", Bytes::from(gz), 3)
            .unwrap_err()
            .0
            .contains("exceeds limit"));
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(raw).unwrap();
        let z = z.finish().unwrap();
        assert_eq!(
            &decode_body("deflate", Bytes::from(z), 100).unwrap()[..],
            raw
        );
        assert!(decode_body("gzip", Bytes::from_static(b"not gzip"), 100).is_err());
        assert_eq!(
            &decode_body("identity", Bytes::from_static(b"x"), 0).unwrap()[..],
            b"x"
        );
    }

    fn all_settings() -> Vec<ParseSettings> {
        let extras = |mut s: ParseSettings| {
            s.add_http_headers = true;
            s.add_query_params = true;
            s.add_remote_addr = true;
            s
        };
        vec![
            ParseSettings::default(),
            extras(ParseSettings::default()),
            extras(ParseSettings {
                keep_time_key: true,
                time_type: TimeType::Float,
                ..Default::default()
            }),
            ParseSettings {
                format: Format::Json,
                time_type: TimeType::Float,
                ..Default::default()
            },
            extras(ParseSettings {
                format: Format::Msgpack,
                time_key: Some("time".into()),
                time_type: TimeType::Unixtime,
                ..Default::default()
            }),
            ParseSettings {
                format: Format::None {
                    message_key: "m".into(),
                },
                ..Default::default()
            },
        ]
    }

    const TYPES: &[&str] = &[
        "application/json",
        "application/x-ndjson",
        "application/msgpack",
        "application/x-msgpack",
        "application/x-www-form-urlencoded",
        "application/csp-report",
        "multipart/form-data; boundary=b",
        "text/plain",
        "",
    ];

    proptest! {
        #[test]
        fn random_bodies_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            query in proptest::option::of("[a-z%=&+0-9.]{0,40}"),
            ct in 0..TYPES.len(),
        ) {
            for s in all_settings() {
                let mut r = req(TYPES[ct], query.as_deref(), &body);
                r.headers = vec![("x-a".into(), vec!["1".into()])];
                if let Ok(es) = events(&s, &r, NOW) {
                    // Whatever came out is a well-formed stream.
                    prop_assert!(EventStream::from_entries(es.bytes().clone()).is_ok());
                }
            }
            let _ = decode_body("gzip", Bytes::from(body.clone()), 1 << 16);
            let _ = decode_body("deflate", Bytes::from(body.clone()), 1 << 16);
            let _ = ruby_to_f(&body);
            let _ = ruby_to_i(&body);
            let _ = float_text_time(&body);
        }

        #[test]
        fn structured_msgpack_bodies_never_panic(
            v in proptest::collection::vec(any::<u8>(), 0..64),
            cut in 0usize..200,
        ) {
            // Valid-looking maps with a random tail cut and mutated bytes.
            let mut m = mp(&json!([{"time": 1, "a": "x"}, {"b": [1, 2, {"c": null}]}]));
            m.extend_from_slice(&v);
            let cut = cut.min(m.len());
            for s in all_settings() {
                let _ = events(&s, &req("application/msgpack", Some("time=3"), &m[..cut]), NOW);
                let _ = events(&s, &req("application/msgpack", None, &m), NOW);
            }
        }

        #[test]
        fn random_floats_give_times(f in any::<f64>()) {
            let _ = exact_float_time(f);
            let _ = float_value_time(f);
            let _ = field_time(TimeSrc::Float(f), TimeType::Number, "t", NOW);
            let _ = field_time(TimeSrc::Float(f), TimeType::Unixtime, "t", NOW);
        }
    }
}
