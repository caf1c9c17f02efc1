//! `@type http`: Fluentd's in_http — events sent as HTTP requests, on hyper over tokio.
//!
//! # Routes
//!
//! * `POST /<tag path>` (any method other than `GET` and `OPTIONS`, as in Fluentd): the body
//!   becomes events tagged with the path, `/` turned into `.` (`/app/web` → `app.web`), after
//!   `add_tag_prefix`. Bodies: `application/json` (an object or an array of objects),
//!   `application/x-ndjson`, `application/msgpack` or `application/x-msgpack` (maps, or arrays
//!   of maps), `application/x-www-form-urlencoded` with `json=`, `msgpack=` or `ndjson=`, or
//!   those parameters in the query string; `Content-Encoding: gzip` or `deflate`. `?time=`
//!   sets the time of every event; otherwise each record's `time` field does (and is removed
//!   unless `keep_time_key`). [`parse`] has the details.
//! * `GET` (any path): `200` with an empty body — Fluentd's health check (it answers every
//!   GET so for load balancers; sluice does the same rather than invent an `/api/health`).
//! * `OPTIONS`: the CORS preflight (`cors_allow_origins`); `403` when CORS is not configured,
//!   the method asked for is not `POST`, or the origin is not allowed.
//!
//! # Status codes
//!
//! | code | when |
//! |---|---|
//! | 200 (empty body) | the events are durable; also a request that holds no record (`[]`, blank ndjson) |
//! | 204 | the same with `use_204_response` |
//! | 200 `image/gif` | the same with `respond_with_empty_img` (a 1×1 GIF) |
//! | 400 | the body cannot become events: bad JSON or MessagePack, a value that is not an object, a time field of the wrong type, no `json`/`msgpack`/`ndjson` parameter, undecodable `Content-Encoding`. The body says why: `400 Bad Request\n<reason>\n` |
//! | 403 | CORS refused the origin (the connection is closed) |
//! | 408 | the body stopped arriving for `keepalive_timeout` (closed) |
//! | 413 | the body (or its `Content-Length`) is over `body_size_limit` (closed) |
//! | 417 | an `Expect` other than `100-continue` (closed) |
//! | 500 | the router refused the events for another reason, or the buffer's sync failed |
//! | 503 + `Retry-After: 1` | the buffer is full (`BufferOverflowError`) or sluice is stopping |
//!
//! # Acknowledgement contract
//!
//! A 2xx answer is sent only after [`Router::emit`](crate::router::Router::emit) returned
//! `Ok` **and** the receipt's [`durable`](crate::output::Receipt::durable) returned `Ok`: an
//! acknowledged request survives a crash. Anything else answers 4xx/5xx and the client should
//! resend (at-least-once). A request is all or nothing: one bad record refuses the whole
//! request (400) and nothing of it is emitted. With `overflow_action block` the answer waits
//! while the buffer is full — back-pressure on the client, never an unbounded queue.
//!
//! # Limits and faults
//!
//! A request body is held in memory up to `body_size_limit` (default 32 MiB; larger bodies get
//! 413 before being read when `Content-Length` says so) and its decoded form up to
//! `decompression_size_limit`; at most `max_connections` (default 1024, sluice's own)
//! connections are served at once, so memory is bounded by their product. A connection idle for
//! `keepalive_timeout` is closed, as is one whose body stalls that long. Whatever a client
//! sends wrong affects its own request or connection only, with a rate-limited log line.
//!
//! # Parameters
//!
//! Fluentd's names and defaults: `port` (9880), `bind` (0.0.0.0), `body_size_limit` (32m),
//! `decompression_size_limit` (256m), `keepalive_timeout` (10s), `backlog`,
//! `add_http_headers`, `add_remote_addr` (honours `X-Forwarded-For`), `add_query_params`,
//! `cors_allow_origins` (entries may hold one `*` wildcard), `cors_allow_credentials`,
//! `respond_with_empty_img`, `use_204_response`, `dump_error_log` (true), `add_tag_prefix`,
//! `blocking_timeout` (accepted, no effect), `<parse>` (or the old `format`) of `@type`
//! `in_http` (the default), `json`, `msgpack` or `none` with `time_key`, `keep_time_key`,
//! `time_type` `float`/`unixtime`, `message_key` (none), `estimate_current_event`; and
//! `<transport tls>` as for `forward`. sluice's own: `max_connections`.
//!
//! Refused with a clear error: other `<parse>` types, string times (`time_format`,
//! `time_type string`), `types`, `null_value_pattern`, `null_empty_string`, `timeout`.
//! `multipart/form-data` bodies are answered 400 (Fluentd accepts them).

pub mod parse;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::config::{ConfigError, Element};
use crate::event::EventTime;
use crate::output::{BoxFuture, EmitError};
use crate::router::{LabelId, Router};

use super::forward::conn::WarnLimiter;
use super::{Input, InputContext};
use parse::{Format, ParseSettings, RequestData, TimeType};

/// Fluentd's in_http port.
pub const DEFAULT_PORT: u16 = 9880;
/// Fluentd's `body_size_limit` default: 32 MiB.
pub const DEFAULT_BODY_SIZE_LIMIT: u64 = 32 << 20;
/// Fluentd's `decompression_size_limit` default: 256 MiB.
pub const DEFAULT_DECOMPRESSION_SIZE_LIMIT: u64 = 256 << 20;
/// Fluentd's `keepalive_timeout` default, in seconds.
pub const DEFAULT_KEEPALIVE_TIMEOUT: f64 = 10.0;
/// Default connection limit (sluice-specific).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Listen backlog when `backlog` is not given.
const DEFAULT_BACKLOG: u32 = 1024;
/// Bodies larger than this are parsed on the blocking pool, off the I/O threads.
const PARSE_INLINE_BELOW: usize = 256 << 10;
/// Most memory reserved ahead for a body from its `Content-Length`.
const MAX_RESERVE: usize = 1 << 20;

/// The 1×1 transparent GIF Fluentd answers with `respond_with_empty_img`.
pub const EMPTY_GIF: &[u8] = &[
    b'G', b'I', b'F', b'8', b'9', b'a', 0x01, 0x00, 0x01, 0x00, 0x80, 0xff, 0x00, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, b',', 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, b'D',
    0x01, 0x00, b';',
];

/// What a successful request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Success {
    /// `200 OK`, empty `text/plain` body.
    Ok,
    /// `204 No Content` (`use_204_response`).
    NoContent,
    /// `200 OK` with [`EMPTY_GIF`] (`respond_with_empty_img`).
    EmptyGif,
}

/// The http input.
#[derive(Debug)]
pub struct Http {
    /// The listener, from bind to run.
    bound: super::Bound<tokio::net::TcpListener>,
    bind: String,
    port: u16,
    backlog: u32,
    body_size_limit: usize,
    decompression_size_limit: usize,
    keepalive_timeout: Duration,
    cors_allow_origins: Option<Vec<String>>,
    cors_allow_credentials: bool,
    success: Success,
    dump_error_log: bool,
    add_tag_prefix: Option<String>,
    max_connections: usize,
    parse: Arc<ParseSettings>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

fn int_in(
    section: &Element,
    key: &str,
    lo: i64,
    hi: i64,
    default: i64,
) -> Result<i64, ConfigError> {
    match section.integer(key)? {
        None => Ok(default),
        Some(v) if (lo..=hi).contains(&v) => Ok(v),
        Some(v) => {
            let p = section.peek(key).expect("was read");
            Err(ConfigError::at(
                &p.value_pos,
                format!("{key}: {v} is out of range ({lo}..{hi})"),
            ))
        }
    }
}

/// Parser parameters sluice does not implement, with why.
const UNSUPPORTED_PARSE_PARAMS: &[(&str, &str)] = &[
    ("time_format", "string times are not supported by the http input; send numbers (or numeric strings with time_type float/unixtime)"),
    ("types", "value type conversion is not supported by the http input"),
    ("null_value_pattern", "null_value_pattern is not supported by the http input"),
    ("null_empty_string", "null_empty_string is not supported by the http input"),
    ("timeout", "parser timeouts are not supported by the http input"),
];

/// Reads `<parse>` (or the legacy `format` parameter with its siblings) into parse settings.
fn parse_settings(section: &Element) -> Result<ParseSettings, ConfigError> {
    let mut s = ParseSettings {
        add_http_headers: section.bool("add_http_headers")?.unwrap_or(false),
        add_query_params: section.bool("add_query_params")?.unwrap_or(false),
        add_remote_addr: section.bool("add_remote_addr")?.unwrap_or(false),
        ..Default::default()
    };
    let parse = crate::output::single_section(section, "parse")?;
    let (el, type_name, type_pos) = match parse {
        Some(p) => (
            p,
            p.string("@type").unwrap_or_else(|| "in_http".into()),
            p.pos_of("@type"),
        ),
        None => match section.param("format") {
            Some(f) => (section, f.value.trim().to_string(), f.value_pos.clone()),
            None => {
                // The built-in parser may still be tuned at the top level (Fluentd's compat
                // conversion only applies with `format`; these are then unused).
                return Ok(s);
            }
        },
    };
    for (key, why) in UNSUPPORTED_PARSE_PARAMS {
        if let Some(p) = el.param(key) {
            return Err(ConfigError::at(&p.key_pos, format!("{key}: {why}")));
        }
    }
    let _ = el.bool("estimate_current_event")?;
    let time_type = |default: Option<TimeType>| -> Result<Option<TimeType>, ConfigError> {
        match el.enumeration("time_type", &["string", "unixtime", "float", "mixed"])? {
            None => Ok(default),
            Some("unixtime") => Ok(Some(TimeType::Unixtime)),
            Some("float") => Ok(Some(TimeType::Float)),
            Some(other) => {
                let p = el.peek("time_type").expect("was read");
                Err(ConfigError::at(
                    &p.value_pos,
                    format!("time_type {other}: string times are not supported by the http input; use float or unixtime"),
                ))
            }
        }
    };
    match type_name.as_str() {
        "in_http" => {
            s.format = Format::Default;
            s.time_key = Some(el.string("time_key").unwrap_or_else(|| "time".into()));
            s.keep_time_key = el.bool("keep_time_key")?.unwrap_or(false);
            s.time_type = time_type(Some(TimeType::Number))?.unwrap_or(TimeType::Number);
        }
        "json" => {
            s.format = Format::Json;
            let _ = el.enumeration("json_parser", &["oj", "yajl", "json"])?;
            let _ = el.integer("stream_buffer_size")?;
            s.time_key = Some(el.string("time_key").unwrap_or_else(|| "time".into()));
            s.keep_time_key = el.bool("keep_time_key")?.unwrap_or(false);
            s.time_type = time_type(Some(TimeType::Float))?.unwrap_or(TimeType::Float);
        }
        "msgpack" => {
            s.format = Format::Msgpack;
            s.time_key = el.string("time_key");
            s.keep_time_key = el.bool("keep_time_key")?.unwrap_or(false);
            match (time_type(None)?, &s.time_key) {
                (Some(t), _) => s.time_type = t,
                (None, None) => {}
                (None, Some(_)) => {
                    let p = el.peek("time_key").expect("was read");
                    return Err(ConfigError::at(
                        &p.value_pos,
                        "time_key with @type msgpack reads string times by default, which the http input does not support; add time_type float or unixtime",
                    ));
                }
            }
        }
        "none" => {
            s.format = Format::None {
                message_key: el.string("message_key").unwrap_or_else(|| "message".into()),
            };
            s.time_key = None;
        }
        other => {
            return Err(ConfigError::at(
                &type_pos,
                format!("http input: <parse> @type '{other}' is not supported; supported: in_http (the default), json, msgpack, none"),
            ))
        }
    }
    Ok(s)
}

impl Http {
    /// Reads a `<source>` section of type http, with Fluentd's parameter names, defaults and
    /// errors.
    pub fn configure(section: &Element) -> Result<Http, ConfigError> {
        let port = int_in(section, "port", 0, 65535, DEFAULT_PORT as i64)? as u16;
        let bind = section.string("bind").unwrap_or_else(|| "0.0.0.0".into());
        let backlog = int_in(
            section,
            "backlog",
            1,
            i32::MAX as i64,
            DEFAULT_BACKLOG as i64,
        )? as u32;
        let clamp = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        let body_size_limit = clamp(
            section
                .size("body_size_limit")?
                .unwrap_or(DEFAULT_BODY_SIZE_LIMIT),
        );
        let decompression_size_limit = clamp(
            section
                .size("decompression_size_limit")?
                .unwrap_or(DEFAULT_DECOMPRESSION_SIZE_LIMIT),
        );
        let keepalive = section
            .time("keepalive_timeout")?
            .unwrap_or(DEFAULT_KEEPALIVE_TIMEOUT);
        // Fluentd checks idleness once a second, so 0 closes idle connections within a second.
        let keepalive_timeout = Duration::from_secs_f64(if keepalive.is_finite() {
            keepalive.clamp(1.0, 1e9)
        } else {
            1e9
        });
        // cool.io's loop timeout: meaningless here, accepted so configs stay valid.
        let _ = section.time("blocking_timeout")?;
        let cors_allow_origins = section.array("cors_allow_origins")?;
        let cors_allow_credentials = section.bool("cors_allow_credentials")?.unwrap_or(false);
        if cors_allow_credentials
            && cors_allow_origins
                .as_ref()
                .is_none_or(|o| o.iter().any(|x| x == "*"))
        {
            let p = section.peek("cors_allow_credentials").expect("was read");
            return Err(ConfigError::at(
                &p.value_pos,
                "Cannot enable cors_allow_credentials without specific origins",
            ));
        }
        let respond_with_empty_img = section.bool("respond_with_empty_img")?.unwrap_or(false);
        let use_204_response = section.bool("use_204_response")?.unwrap_or(false);
        let success = if respond_with_empty_img {
            Success::EmptyGif
        } else if use_204_response {
            Success::NoContent
        } else {
            Success::Ok
        };
        let dump_error_log = section.bool("dump_error_log")?.unwrap_or(true);
        let add_tag_prefix = match section.param("add_tag_prefix") {
            Some(p) if p.value.is_empty() => {
                return Err(ConfigError::at(
                    &p.value_pos,
                    "'add_tag_prefix' parameter must not be empty",
                ))
            }
            Some(p) => Some(p.value.clone()),
            None => None,
        };
        let max_connections = int_in(
            section,
            "max_connections",
            1,
            1 << 20,
            DEFAULT_MAX_CONNECTIONS as i64,
        )? as usize;
        let parse = parse_settings(section)?;
        let mut tls = None;
        if let Some(t) = crate::output::single_section(section, "transport")? {
            match t.arg.trim() {
                "" | "tcp" => {}
                "tls" => tls = Some(super::forward::tls::configure(t)?),
                other => {
                    return Err(ConfigError::at(
                        &t.arg_pos,
                        format!("transport: valid options are tcp,tls but got {other}"),
                    ))
                }
            }
        }
        Ok(Http {
            bound: super::Bound::default(),
            bind,
            port,
            backlog,
            body_size_limit,
            decompression_size_limit,
            keepalive_timeout,
            cors_allow_origins,
            cors_allow_credentials,
            success,
            dump_error_log,
            add_tag_prefix,
            max_connections,
            parse: Arc::new(parse),
            tls,
        })
    }

    async fn listen(&self) -> std::io::Result<tokio::net::TcpListener> {
        super::listen_tcp(&self.bind, self.port, self.backlog).await
    }
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: Option<&'static str>, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Resp {
    respond(status, Some("text/plain"), body)
}

/// Marks a response as the last on its connection.
fn closing(mut r: Resp) -> Resp {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn header_string(h: &HeaderMap, name: header::HeaderName) -> Option<String> {
    h.get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
}

/// Why reading a body stopped.
enum BodyError {
    TooLarge,
    Stalled,
    Broken(hyper::Error),
}

/// Reads a whole body, at most `limit` bytes, each piece within `idle`.
async fn read_body(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
    hint: Option<u64>,
) -> Result<Bytes, BodyError> {
    let reserve = hint.map_or(0, |h| (h as usize).min(limit).min(MAX_RESERVE));
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(BodyError::Stalled),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Broken(e)),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
        if have + data.len() > limit {
            return Err(BodyError::TooLarge);
        }
        match first.take() {
            // One piece is kept as it came; a second one starts a copy.
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(f) => {
                buf.reserve(reserve.max(f.len() + data.len()));
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// Serves requests of one input.
struct Server {
    http: Arc<Http>,
    router: Arc<Router>,
    label: LabelId,
    warn: WarnLimiter,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("http", &self.http).finish()
    }
}

impl Server {
    fn warn(&self, kind: &'static str, peer: &SocketAddr, what: &str) {
        if let Some(suppressed) = self.warn.allow(kind) {
            if suppressed > 0 {
                tracing::warn!(input = "http", peer = %peer, suppressed, "{what} ({suppressed} similar warnings suppressed)");
            } else {
                tracing::warn!(input = "http", peer = %peer, "{what}");
            }
        }
    }

    fn error(&self, kind: &'static str, peer: &SocketAddr, what: &str, e: &dyn std::fmt::Display) {
        if !self.http.dump_error_log {
            return;
        }
        if let Some(suppressed) = self.warn.allow(kind) {
            tracing::error!(input = "http", peer = %peer, error = %e, suppressed, "{what}");
        }
    }

    /// Whether `origin` matches an entry of `cors_allow_origins` (exactly, or around one `*`).
    fn origin_allowed(&self, origin: &str) -> bool {
        let Some(list) = &self.http.cors_allow_origins else {
            return false;
        };
        list.iter().filter(|o| !o.is_empty()).any(|o| {
            if o == origin {
                return true;
            }
            match o.split_once('*') {
                Some((start, end)) => {
                    origin.len() >= start.len() + end.len()
                        && origin.starts_with(start)
                        && origin.ends_with(end)
                }
                None => false,
            }
        })
    }

    fn wildcard(&self) -> bool {
        self.http
            .cors_allow_origins
            .as_ref()
            .is_some_and(|l| l.iter().any(|o| o == "*"))
    }

    /// Adds the CORS headers Fluentd adds to answers of allowed origins.
    fn add_cors(&self, r: &mut Resp, origin: Option<&str>) {
        if self.http.cors_allow_origins.is_none() {
            return;
        }
        let h = r.headers_mut();
        if self.wildcard() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else if let Some(o) = origin.filter(|o| self.origin_allowed(o)) {
            if let Ok(v) = HeaderValue::from_str(o) {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
            }
            if self.http.cors_allow_credentials {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
    }

    /// The CORS preflight.
    fn preflight(&self, headers: &HeaderMap, origin: Option<&str>) -> Resp {
        let forbidden = || closing(text(StatusCode::FORBIDDEN, ""));
        if self.http.cors_allow_origins.is_none() {
            return forbidden();
        }
        if headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .map(HeaderValue::as_bytes)
            != Some(b"POST")
        {
            return forbidden();
        }
        let mut r = text(StatusCode::OK, "");
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
                .unwrap_or_else(|| HeaderValue::from_static("")),
        );
        if self.wildcard() {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else if let Some(o) = origin.filter(|o| self.origin_allowed(o)) {
            match HeaderValue::from_str(o) {
                Ok(v) => h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v),
                Err(_) => return forbidden(),
            };
            if self.http.cors_allow_credentials {
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        } else {
            return forbidden();
        }
        closing(r)
    }

    fn success(&self) -> Resp {
        match self.http.success {
            Success::Ok => text(StatusCode::OK, ""),
            Success::NoContent => respond(StatusCode::NO_CONTENT, None, ""),
            Success::EmptyGif => respond(
                StatusCode::OK,
                Some("image/gif; charset=utf-8"),
                Bytes::from_static(EMPTY_GIF),
            ),
        }
    }

    fn emit_failed(&self, e: &EmitError, peer: &SocketAddr) -> Resp {
        self.error("emit", peer, "failed to emit data", e);
        match e {
            EmitError::BufferOverflow | EmitError::ShuttingDown => {
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("503 Service Unavailable\n{e}\n"),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
            EmitError::Other(_) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("500 Internal Server Error\n{e}\n"),
            ),
        }
    }

    /// Answers one request.
    async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let (parts, body) = req.into_parts();
        let h = &parts.headers;
        let limit = self.http.body_size_limit;
        let content_length: Option<u64> = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse().ok());
        if let Some(expect) = h.get(header::EXPECT) {
            if expect.as_bytes() != b"100-continue" {
                return closing(text(StatusCode::EXPECTATION_FAILED, ""));
            }
            if content_length.is_some_and(|n| n >= limit as u64) {
                return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "Too large"));
            }
        }
        if content_length.is_some_and(|n| n > limit as u64) {
            return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "Too large"));
        }
        let origin = header_string(h, header::ORIGIN);
        if parts.method == Method::GET {
            return closing(text(StatusCode::OK, ""));
        }
        if parts.method == Method::OPTIONS {
            return self.preflight(h, origin.as_deref());
        }
        if self.http.cors_allow_origins.is_some() {
            if let Some(o) = &origin {
                if !self.wildcard() && !self.origin_allowed(o) {
                    return closing(text(StatusCode::FORBIDDEN, ""));
                }
            }
        }
        let body = match read_body(body, limit, self.http.keepalive_timeout, content_length).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return closing(text(StatusCode::PAYLOAD_TOO_LARGE, "Too large"))
            }
            Err(BodyError::Stalled) => {
                self.warn(
                    "stalled",
                    &peer,
                    "request body stalled past keepalive_timeout, closing connection",
                );
                return closing(text(StatusCode::REQUEST_TIMEOUT, ""));
            }
            Err(BodyError::Broken(e)) => {
                self.warn(
                    "body",
                    &peer,
                    &format!("cannot read request body, closing connection: {e}"),
                );
                return closing(text(
                    StatusCode::BAD_REQUEST,
                    format!("400 Bad Request\n{e}\n"),
                ));
            }
        };
        let encoding = header_string(h, header::CONTENT_ENCODING).unwrap_or_default();
        let remote_addr = match h.get("x-forwarded-for") {
            Some(v) => String::from_utf8_lossy(v.as_bytes())
                .split(',')
                .next()
                .unwrap_or("")
                .to_string(),
            None => peer.ip().to_canonical().to_string(),
        };
        let mut headers = Vec::new();
        if self.http.parse.add_http_headers {
            for name in h.keys() {
                let values = h
                    .get_all(name)
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                headers.push((name.as_str().to_string(), values));
            }
        }
        let data = RequestData {
            content_type: header_string(h, header::CONTENT_TYPE).unwrap_or_default(),
            query: parts.uri.query().map(str::to_owned),
            body,
            headers,
            remote_addr: Some(remote_addr),
        };
        let settings = self.http.parse.clone();
        let decompression_limit = self.http.decompression_size_limit;
        let inline = content_length.is_some_and(|n| (n as usize) < PARSE_INLINE_BELOW)
            && encoding.is_empty();
        let work = move || {
            let mut data = data;
            data.body = parse::decode_body(
                &encoding,
                std::mem::take(&mut data.body),
                decompression_limit,
            )?;
            parse::events(&settings, &data, EventTime::now())
        };
        let parsed = if inline {
            work()
        } else {
            match tokio::task::spawn_blocking(work).await {
                Ok(r) => r,
                Err(e) => Err(parse::BadRequest(format!(
                    "request could not be parsed: {e}"
                ))),
            }
        };
        let origin = origin.as_deref();
        let mut resp = match parsed {
            Err(e) => {
                self.error("parse", &peer, "failed to process request", &e);
                text(StatusCode::BAD_REQUEST, format!("400 Bad Request\n{e}\n"))
            }
            Ok(es) if es.is_empty() => self.success(),
            Ok(es) => {
                let tag = parse::tag_of(parts.uri.path(), self.http.add_tag_prefix.as_deref());
                match self.router.emit(self.label, &tag, es).await {
                    Ok(receipt) => match receipt.durable().await {
                        Ok(()) => self.success(),
                        Err(e) => self.emit_failed(&e, &peer),
                    },
                    Err(e) => self.emit_failed(&e, &peer),
                }
            }
        };
        self.add_cors(&mut resp, origin);
        resp
    }

    /// Serves one connection until the client closes it, it idles out, or sluice stops.
    async fn serve<S>(self: Arc<Self>, io: S, peer: SocketAddr, mut shutdown: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let me = me.clone();
            async move { Ok::<_, Infallible>(me.handle(req, peer).await) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(self.http.keepalive_timeout);
        let conn = builder.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let mut stopping = *shutdown.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        if e.is_timeout() || e.is_incomplete_message() || e.is_canceled() {
                            tracing::debug!(input = "http", peer = %peer, error = %e, "connection closed");
                        } else {
                            self.warn("conn", &peer, &format!("closing connection: {e}"));
                        }
                    }
                    return;
                }
                r = shutdown.changed(), if !stopping => {
                    if r.is_err() || *shutdown.borrow() {
                        stopping = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

impl Input for Http {
    fn bind(&self) -> BoxFuture<'_, Result<(), String>> {
        let what = format!("http input cannot listen on {}:{}", self.bind, self.port);
        Box::pin(self.bound.bind(what, || self.listen()))
    }

    fn run(self: Arc<Self>, ctx: InputContext) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let listener = match self.bound.take_or(|| self.listen()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(input = "http", bind = %self.bind, port = self.port, error = %e, "cannot listen");
                    return;
                }
            };
            let local = listener.local_addr().ok();
            tracing::info!(input = "http", port = self.port, bind = %self.bind, addr = ?local, "listening http");
            let server = Arc::new(Server {
                http: self.clone(),
                router: ctx.router.clone(),
                label: ctx.label,
                warn: WarnLimiter::default(),
            });
            let acceptor = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
            let limit = self.keepalive_timeout;
            super::serve_tcp(
                listener,
                self.max_connections,
                "http",
                ctx.shutdown.clone(),
                move |stream, addr| {
                    let _ = stream.set_nodelay(true);
                    let server = server.clone();
                    let acceptor = acceptor.clone();
                    let stop = ctx.shutdown.clone();
                    async move {
                        match acceptor {
                            None => server.serve(stream, addr, stop).await,
                            Some(acc) => {
                                match crate::input::forward::tls::handshake(&acc, stream, limit)
                                    .await
                                {
                                    Ok(tls) => server.serve(tls, addr, stop).await,
                                    Err(why) => server.warn("tls", &addr, &why),
                                }
                            }
                        }
                    }
                },
            )
            .await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn source(text: &str) -> Element {
        let root = crate::config::parser::parse_str(text, "t.conf", ".".into()).unwrap();
        root.elements.into_iter().next().unwrap()
    }

    fn conf(body: &str) -> Result<Http, ConfigError> {
        Http::configure(&source(&format!(
            "<source>\n@type http\n{body}\n</source>\n"
        )))
    }

    #[test]
    fn defaults_follow_fluentd() {
        let h = conf("").unwrap();
        assert_eq!(h.port, 9880);
        assert_eq!(h.bind, "0.0.0.0");
        assert_eq!(h.body_size_limit, 32 << 20);
        assert_eq!(h.decompression_size_limit, 256 << 20);
        assert_eq!(h.keepalive_timeout, Duration::from_secs(10));
        assert_eq!(h.success, Success::Ok);
        assert!(h.dump_error_log);
        assert!(h.cors_allow_origins.is_none());
        assert_eq!(h.parse.format, Format::Default);
        assert_eq!(h.parse.time_key.as_deref(), Some("time"));
        assert!(!h.parse.keep_time_key);
        assert_eq!(h.parse.time_type, TimeType::Number);
        assert!(h.tls.is_none());
        assert_eq!(EMPTY_GIF.len(), 35);
    }

    #[test]
    fn parameters_are_read() {
        let h = conf(
            "port 0\nbind 127.0.0.1\nbody_size_limit 1k\nkeepalive_timeout 3s\nadd_http_headers true\nadd_remote_addr true\nadd_query_params true\ncors_allow_origins [\"http://a.com\"]\ncors_allow_credentials true\nuse_204_response true\nadd_tag_prefix p\nblocking_timeout 1s\n<parse>\nkeep_time_key true\ntime_key ts\ntime_type float\n</parse>",
        )
        .unwrap();
        assert_eq!(h.body_size_limit, 1024);
        assert_eq!(h.keepalive_timeout, Duration::from_secs(3));
        assert_eq!(h.success, Success::NoContent);
        assert_eq!(h.add_tag_prefix.as_deref(), Some("p"));
        assert!(h.parse.add_http_headers && h.parse.add_remote_addr && h.parse.add_query_params);
        assert!(h.parse.keep_time_key);
        assert_eq!(h.parse.time_key.as_deref(), Some("ts"));
        assert_eq!(h.parse.time_type, TimeType::Float);
        let h = conf("respond_with_empty_img true\nuse_204_response true").unwrap();
        assert_eq!(h.success, Success::EmptyGif);
        let h = conf("<parse>\n@type json\n</parse>").unwrap();
        assert_eq!(h.parse.format, Format::Json);
        assert_eq!(h.parse.time_type, TimeType::Float);
        let h = conf("<parse>\n@type none\nmessage_key log\n</parse>").unwrap();
        assert_eq!(
            h.parse.format,
            Format::None {
                message_key: "log".into()
            }
        );
        let h = conf("format msgpack").unwrap();
        assert_eq!(h.parse.format, Format::Msgpack);
        assert_eq!(h.parse.time_key, None);
    }

    #[test]
    fn config_errors() {
        for (text, msg) in [
            ("port 70000", "out of range"),
            (
                "cors_allow_credentials true",
                "Cannot enable cors_allow_credentials without specific origins",
            ),
            (
                "cors_allow_origins [\"*\"]\ncors_allow_credentials true",
                "without specific origins",
            ),
            ("add_tag_prefix \"\"", "must not be empty"),
            (
                "<parse>\n@type regexp\n</parse>",
                "<parse> @type 'regexp' is not supported; supported: in_http",
            ),
            ("format csv", "'csv' is not supported"),
            (
                "<parse>\ntime_format %iso8601\n</parse>",
                "string times are not supported",
            ),
            (
                "<parse>\ntime_type string\n</parse>",
                "string times are not supported",
            ),
            (
                "<parse>\n@type msgpack\ntime_key t\n</parse>",
                "add time_type float or unixtime",
            ),
            ("<parse>\n@type json\ntypes a:integer\n</parse>", "types"),
            (
                "<parse>\n</parse>\n<parse>\n</parse>",
                "cannot be written twice",
            ),
            ("<transport udp>\n</transport>", "valid options are tcp,tls"),
            ("body_size_limit abc", "invalid value"),
        ] {
            let e = conf(text).unwrap_err();
            assert!(e.message.contains(msg), "{text}: got {}", e.message);
        }
    }

    /// An http input on an ephemeral port in front of a null output; returns the port.
    async fn start(extra: &str) -> (u16, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let text = format!(
            "<source>\n@type http\nbind 127.0.0.1\nport {port}\n{extra}\n</source>\n<match **>\n@type null\n</match>\n"
        );
        let root = crate::config::parser::parse_str(&text, "t.conf", ".".into()).unwrap();
        let router =
            Arc::new(Router::build(&root, &crate::output::BuildContext::new(None)).unwrap());
        let http = Arc::new(Http::configure(&root.elements[0]).unwrap());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(http.run(InputContext {
            router,
            label: LabelId::ROOT,
            shutdown: stop_rx,
        }));
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (port, stop, task)
    }

    /// Sends raw request bytes on a fresh connection and returns the whole answer.
    async fn exchange(port: u16, request: &[u8]) -> String {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(request).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    fn post(path: &str, ct: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn status_codes_in_process() {
        let (port, stop, task) =
            start("body_size_limit 64\ncors_allow_origins [\"http://*.ok.com\"]").await;
        let r = exchange(port, &post("/a/b", "application/json", r#"{"a":1}"#)).await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        let r = exchange(port, &post("/a", "application/json", "[1]")).await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        assert!(r.contains("element 0 of the JSON array"), "{r}");
        let big = "x".repeat(100);
        let r = exchange(port, &post("/a", "application/json", &big)).await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        let r = exchange(port, b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = exchange(
            port,
            b"POST /a HTTP/1.1\r\nHost: x\r\nExpect: weird\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 417"), "{r}");
        // Chunked body over the limit.
        let r = exchange(
            port,
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{}\r\n40\r\n{}\r\n0\r\n\r\n",
                "y".repeat(64),
                "y".repeat(64)
            )
            .as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        // CORS: preflight for an allowed origin, refusal of another.
        let r = exchange(port, b"OPTIONS /a HTTP/1.1\r\nHost: x\r\nOrigin: http://s.ok.com\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: Content-Type\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(
            r.to_ascii_lowercase()
                .contains("access-control-allow-origin: http://s.ok.com"),
            "{r}"
        );
        let req = b"POST /a HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.com\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let r = exchange(port, req).await;
        assert!(r.starts_with("HTTP/1.1 403"), "{r}");
        // Garbage closes only its own connection.
        let r = exchange(port, b"\x00\x01garbage\r\n\r\n").await;
        assert!(!r.starts_with("HTTP/1.1 200"), "{r}");
        let r = exchange(port, &post("/ok", "application/x-ndjson", "{}\n{}\n")).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn idle_and_stalled_connections_are_closed() {
        let (port, stop, task) = start("keepalive_timeout 1").await;
        // Idle: closed after about a second, without an answer.
        let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let t = std::time::Instant::now();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut out))
            .await
            .expect("idle connection closed")
            .ok();
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
        // A body that stops arriving: 408 and closed.
        let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        slow.write_all(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"a\"")
            .await
            .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut out))
            .await
            .expect("stalled connection closed")
            .ok();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests() {
        let (port, stop, task) = start("use_204_response true").await;
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let one = "POST /k HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let mut seen = String::new();
        for _ in 0..3 {
            c.write_all(one.as_bytes()).await.unwrap();
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert_eq!(seen.matches("HTTP/1.1 204").count(), 3, "{seen}");
        drop(c);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .unwrap()
            .unwrap();
    }
}
