//! `@type forward`: Fluentd's Forward Protocol v1 over TCP (optionally TLS), with the UDP
//! heartbeat on the same port.
//!
//! # Protocol
//!
//! A connection carries a sequence of MessagePack frames, each one of:
//! * Message `[tag, time, record(, option)]`
//! * Forward `[tag, [[time, record], ...](, option)]`
//! * PackedForward `[tag, bin|str of MessagePack [time, record] entries(, option)]` — checked
//!   once and routed as the bytes that arrived; records are not decoded or re-encoded
//! * CompressedPackedForward: the same with `option.compressed` `"gzip"` (concatenated gzip
//!   members) or `"zstd"`
//! * `nil`: a TCP heartbeat, ignored.
//!
//! Times may be the EventTime extension (type 0), integers or floats (and Fluent Bit's
//! `[time, metadata]`, whose metadata is dropped). With `<security>` the connection starts with
//! the HELO/PING/PONG shared-key handshake ([`security`]). UDP datagrams to the port are
//! answered with one `0x00` byte, as Fluentd's heartbeat responder does.
//!
//! # Acknowledgement contract
//!
//! A frame whose option carries `chunk` is answered `{"ack": chunk}` only after
//! [`Router::emit`](crate::router::Router::emit) returned `Ok` **and** the receipt's
//! [`durable`](crate::output::Receipt::durable) returned `Ok`: an acknowledged event survives a
//! crash. If either fails, no ack is sent and the client resends (at-least-once). Acks are sent
//! in frame order; reading pauses while [`conn::MAX_PENDING_ACKS`] frames wait (back-pressure).
//!
//! # Limits
//!
//! * A frame larger than `chunk_size_limit` (default 256 MiB; Fluentd has none) closes the
//!   connection — sluice cannot drop it and keep reading without buffering it. The read buffer
//!   of a connection holds at most `chunk_size_limit` plus one byte (allocated: at most about
//!   twice that), so memory is bounded by `max_connections` × `chunk_size_limit`.
//! * A compressed payload may expand to at most `decompression_size_limit` (default 256 MiB).
//! * At most `max_connections` (default 1024) connections at once; more are closed at accept.
//! * A started frame that receives no byte for `frame_timeout` (default 60 s), a response the
//!   client does not read for as long, and (when set) `idle_timeout` between frames close the
//!   connection.
//! * Whatever a client does wrong closes its own connection, with a rate-limited warning that
//!   names the peer and the reason; other connections and the process are unaffected.
//!
//! # Parameters
//!
//! Fluentd's names and defaults: `bind` (0.0.0.0), `port` (24224), `backlog`, `linger_timeout`
//! (0: reset on close, as Fluentd; also in `<transport>`), `blocking_timeout` (accepted, no
//! effect), `resolve_hostname`, `deny_keepalive`, `send_keepalive_packet` (SO_KEEPALIVE),
//! `chunk_size_warn_limit`, `chunk_size_limit`, `decompression_size_limit`,
//! `skip_invalid_event` (default true, as Fluentd ≥ 1.18: invalid events are skipped with a
//! warning; false refuses the whole frame and closes the connection, no ack),
//! `source_address_key`, `source_hostname_key` (the only case where records are re-encoded),
//! `tag`, `add_tag_prefix`, `<security>` (`self_hostname`, `shared_key`, `user_auth`,
//! `allow_anonymous_source`, `<user>`, `<client>`), `<transport tcp|tls>` ([`tls`]).
//! sluice's own: `max_connections`, `idle_timeout` (default none, as Fluentd: an idle client
//! that is cut off may lose its next unacknowledged write), `frame_timeout`.
//!
//! Not supported: JSON frames (Fluentd also accepts JSON on this port; such a connection is
//! closed with a clear warning).

pub mod conn;
pub mod protocol;
pub mod security;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::config::{ConfigError, Element};
use crate::output::BoxFuture;

use super::{Input, InputContext};
use conn::{Handler, Peer, RouterSink, Settings, WarnLimiter};
use security::Security;

/// Fluentd's forward port.
pub const DEFAULT_PORT: u16 = 24224;
/// Default connection limit (sluice-specific).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Listen backlog when `backlog` is not given.
const DEFAULT_BACKLOG: u32 = 1024;
/// How long a stopping input waits for its connections to finish their acks.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// The forward input.
#[derive(Debug)]
pub struct Forward {
    /// The TCP listener and UDP heartbeat socket, from bind to run.
    bound: super::Bound<(tokio::net::TcpListener, Option<UdpSocket>)>,
    bind: String,
    port: u16,
    backlog: u32,
    /// `SO_LINGER` seconds; Fluentd sets 0 (reset on close, no TIME_WAIT at the server).
    linger_timeout: Option<u32>,
    send_keepalive_packet: bool,
    resolve_hostname: bool,
    max_connections: usize,
    settings: Arc<Settings>,
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

impl Forward {
    /// Reads a `<source>` section of type forward, with Fluentd's parameter names, defaults
    /// and errors.
    pub fn configure(section: &Element) -> Result<Forward, ConfigError> {
        let port = int_in(section, "port", 0, 65535, DEFAULT_PORT as i64)? as u16;
        let bind = section.string("bind").unwrap_or_else(|| "0.0.0.0".into());
        let backlog = int_in(
            section,
            "backlog",
            1,
            i32::MAX as i64,
            DEFAULT_BACKLOG as i64,
        )? as u32;
        let mut linger_timeout = section
            .integer("linger_timeout")?
            .map(|v| v.clamp(0, u16::MAX as i64) as u32);
        // Cool.io's loop timeout: meaningless here, accepted so configs stay valid.
        let _ = section.time("blocking_timeout")?;
        let send_keepalive_packet = section.bool("send_keepalive_packet")?.unwrap_or(false);
        let max_connections = int_in(
            section,
            "max_connections",
            1,
            1 << 20,
            DEFAULT_MAX_CONNECTIONS as i64,
        )? as usize;

        let mut settings = Settings::configure(section)?;
        settings.source_address_key = section.string("source_address_key");
        settings.source_hostname_key = section.string("source_hostname_key");
        let mut resolve_hostname = section.bool("resolve_hostname")?;
        if settings.source_hostname_key.is_some() {
            match resolve_hostname {
                None => resolve_hostname = Some(true),
                Some(true) => {}
                Some(false) => {
                    let p = section.peek("resolve_hostname").expect("was read");
                    return Err(ConfigError::at(
                        &p.value_pos,
                        "resolve_hostname must be true with source_hostname_key",
                    ));
                }
            }
        }
        if send_keepalive_packet && settings.deny_keepalive {
            return Err(ConfigError::at(
                &section.pos,
                "both 'send_keepalive_packet' and 'deny_keepalive' cannot be set to true",
            ));
        }
        if let Some(s) = crate::output::single_section(section, "security")? {
            settings.security = Some(Security::configure(s)?);
        }
        let mut tls = None;
        if let Some(t) = crate::output::single_section(section, "transport")? {
            match t.arg.trim() {
                "" | "tcp" => {}
                "tls" => tls = Some(tls::configure(t)?),
                other => {
                    return Err(ConfigError::at(
                        &t.arg_pos,
                        format!("transport: valid options are tcp,tls but got {other}"),
                    ))
                }
            }
            if let Some(v) = t.integer("linger_timeout")? {
                linger_timeout = Some(v.clamp(0, u16::MAX as i64) as u32);
            }
        }
        Ok(Forward {
            bound: super::Bound::default(),
            bind,
            port,
            backlog,
            linger_timeout: Some(linger_timeout.unwrap_or(0)),
            send_keepalive_packet,
            resolve_hostname: resolve_hostname.unwrap_or(false),
            max_connections,
            settings: Arc::new(settings),
            tls,
        })
    }

    async fn listen(&self) -> std::io::Result<(tokio::net::TcpListener, Option<UdpSocket>)> {
        let listener = super::listen_tcp(&self.bind, self.port, self.backlog).await?;
        let addr = listener.local_addr()?;
        let udp = match UdpSocket::bind(listener.local_addr()?).await {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::error!(input = "forward", bind = %addr, error = %e, "cannot bind the UDP heartbeat socket; heartbeats will not be answered");
                None
            }
        };
        Ok((listener, udp))
    }

    fn tune(&self, stream: &TcpStream) {
        let sock = socket2::SockRef::from(stream);
        if let Some(l) = self.linger_timeout {
            let _ = sock.set_linger(Some(Duration::from_secs(l as u64)));
        }
        if self.send_keepalive_packet {
            let _ = sock.set_keepalive(true);
        }
    }
}

/// Answers UDP heartbeats with one 0x00 byte until shutdown.
async fn heartbeat(udp: UdpSocket, mut shutdown: watch::Receiver<bool>) {
    let mut buf = [0u8; 128];
    loop {
        tokio::select! {
            r = udp.recv_from(&mut buf) => {
                if let Ok((_, from)) = r {
                    tracing::trace!(input = "forward", peer = %from, "heartbeat udp data arrived");
                    let _ = udp.send_to(b"\0", from).await;
                }
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Connection slots and tasks of one listener.
pub(crate) struct Connections {
    slots: Arc<Semaphore>,
    max: usize,
    tasks: JoinSet<()>,
    warn: WarnLimiter,
    kind: &'static str,
}

impl Connections {
    /// Room for `max` connections; `kind` names the input in logs.
    pub(crate) fn new(max: usize, kind: &'static str) -> Connections {
        Connections {
            slots: Arc::new(Semaphore::new(max)),
            max,
            tasks: JoinSet::new(),
            warn: WarnLimiter::default(),
            kind,
        }
    }

    /// A slot for a new connection, or `None` (logged) when all are taken.
    pub(crate) fn admit(&mut self, peer: &dyn std::fmt::Display) -> Option<OwnedSemaphorePermit> {
        while self.tasks.try_join_next().is_some() {}
        match self.slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                if let Some(suppressed) = self.warn.allow("limit") {
                    tracing::warn!(
                        input = self.kind,
                        peer = %peer,
                        max_connections = self.max,
                        suppressed,
                        "connection limit reached, closing new connection"
                    );
                }
                None
            }
        }
    }

    /// Runs a connection task (holding its slot's permit).
    pub(crate) fn spawn(&mut self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(f);
    }

    /// Waits (bounded) for open connections to send their last acks.
    pub(crate) async fn drain(mut self) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_LIMIT, all).await.is_err() {
            tracing::warn!(
                input = self.kind,
                open = self.tasks.len(),
                "connections still open at shutdown were closed"
            );
            self.tasks.abort_all();
        }
    }
}

impl Input for Forward {
    fn bind(&self) -> BoxFuture<'_, Result<(), String>> {
        let what = format!("forward input cannot listen on {}:{}", self.bind, self.port);
        Box::pin(self.bound.bind(what, || self.listen()))
    }

    fn run(self: Arc<Self>, ctx: InputContext) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let (listener, udp) = match self.bound.take_or(|| self.listen()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(input = "forward", bind = %self.bind, port = self.port, error = %e, "cannot listen");
                    return;
                }
            };
            let local = listener.local_addr().ok();
            tracing::info!(input = "forward", port = self.port, bind = %self.bind, addr = ?local, "listening port");
            if let Some(udp) = udp {
                tokio::spawn(heartbeat(udp, ctx.shutdown.clone()));
            }
            let sink = Arc::new(RouterSink {
                router: ctx.router.clone(),
                label: ctx.label,
            });
            let handler = Arc::new(Handler::new(self.settings.clone(), sink, "forward"));
            let acceptor = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
            let me = self.clone();
            super::serve_tcp(
                listener,
                self.max_connections,
                "forward",
                ctx.shutdown.clone(),
                move |stream, addr| {
                    me.tune(&stream);
                    let me = me.clone();
                    let handler = handler.clone();
                    let acceptor = acceptor.clone();
                    let stop = ctx.shutdown.clone();
                    async move {
                        let ip = addr.ip().to_canonical();
                        let host = if me.resolve_hostname {
                            let lookup =
                                tokio::task::spawn_blocking(move || conn::reverse_lookup(ip));
                            match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                                Ok(Ok(Some(h))) => h,
                                _ => ip.to_string(),
                            }
                        } else {
                            ip.to_string()
                        };
                        let peer = Peer {
                            addr: Some(ip),
                            port: addr.port(),
                            host,
                        };
                        match acceptor {
                            None => handler.serve(stream, peer, stop).await,
                            Some(acc) => {
                                match tls::handshake(&acc, stream, me.settings.frame_timeout).await
                                {
                                    Ok(tls) => handler.serve(tls, peer, stop).await,
                                    Err(why) => handler.warn("tls", &peer, &why),
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

    fn source(text: &str) -> Element {
        let root = crate::config::parser::parse_str(text, "t.conf", ".".into()).unwrap();
        root.elements.into_iter().next().unwrap()
    }

    #[test]
    fn defaults_follow_fluentd() {
        let f = Forward::configure(&source("<source>\n@type forward\n</source>\n")).unwrap();
        assert_eq!(f.port, 24224);
        assert_eq!(f.bind, "0.0.0.0");
        assert_eq!(f.linger_timeout, Some(0));
        assert!(f.settings.decode.skip_invalid_event);
        assert_eq!(f.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert!(!f.resolve_hostname);
        assert!(f.tls.is_none());
    }

    #[test]
    fn config_errors() {
        for (text, msg) in [
            ("port 70000", "out of range"),
            ("source_hostname_key h\nresolve_hostname false", "resolve_hostname must be true"),
            ("send_keepalive_packet true\ndeny_keepalive true", "cannot be set to true"),
            ("add_tag_prefix \"\"", "must not be empty"),
            ("<transport udp>\n</transport>", "valid options are tcp,tls"),
            ("<transport tls>\ncert_path /x\nprivate_key_path /y\nprivate_key_passphrase p\n</transport>", "encrypted private keys are not supported"),
            ("<transport tls>\n</transport>", "needs cert_path"),
            ("<transport tls>\ncert_path /nonexistent.pem\nprivate_key_path /y\n</transport>", "cannot read certificates"),
            ("<transport tls>\nversion TLSv1_1\ncert_path /x\nprivate_key_path /y\n</transport>", "below 1.2"),
            ("<security>\nself_hostname a\n</security>", "'shared_key' parameter is required"),
        ] {
            let e = Forward::configure(&source(&format!(
                "<source>\n@type forward\n{text}\n</source>\n"
            )))
            .unwrap_err();
            assert!(e.message.contains(msg), "{text}: got {}", e.message);
        }
    }

    #[test]
    fn source_hostname_key_turns_on_resolution() {
        let f = Forward::configure(&source(
            "<source>\n@type forward\nsource_hostname_key h\n</source>\n",
        ))
        .unwrap();
        assert!(f.resolve_hostname);
    }

    #[test]
    fn tls_from_generated_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let f = Forward::configure(&source(&format!(
            "<source>\n@type forward\n<transport tls>\ncert_path {}\nprivate_key_path {}\nmin_version TLSv1_2\nmax_version TLSv1_3\n</transport>\n</source>\n",
            cert.display(),
            key.display()
        )))
        .unwrap();
        assert!(f.tls.is_some());
        // Client auth needs a CA.
        let e = Forward::configure(&source(&format!(
            "<source>\n@type forward\n<transport tls>\ncert_path {}\nprivate_key_path {}\nclient_cert_auth true\n</transport>\n</source>\n",
            cert.display(),
            key.display()
        )))
        .unwrap_err();
        assert!(e.message.contains("needs ca_path"), "{}", e.message);
    }
}
