//! `@type unix`: the Forward protocol on a Unix domain socket, as Fluentd's in_unix.
//!
//! Parameters: `path` (default `$FLUENT_SOCKET` or `/var/run/fluent/fluent.sock`), `backlog`,
//! `tag` (replaces the clients' tag), and the protocol limits shared with `forward`
//! (`chunk_size_limit`, `chunk_size_warn_limit`, `decompression_size_limit`,
//! `skip_invalid_event`, `add_tag_prefix`, `deny_keepalive`, `idle_timeout`, `frame_timeout`,
//! `max_connections`). Connections are served by the same handler as `forward`
//! ([`super::forward::conn`]), so every mode, the limits and the acknowledgement contract are
//! the same — including `{"ack": chunk}` after durability, which Fluentd's in_unix never sends
//! (a client asking for acks there would wait forever; here it gets them). There is no
//! handshake: access is controlled by the socket file's permissions.
//!
//! An existing file at `path` is removed at start (with a warning, as Fluentd does) and the
//! socket file is removed at shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{ConfigError, Element};
use crate::output::BoxFuture;

use super::forward::conn::{Handler, Peer, RouterSink, Settings};
use super::forward::Connections;
use super::{Input, InputContext};

/// Fluentd's default socket path (overridden by `$FLUENT_SOCKET`).
pub const DEFAULT_SOCKET_PATH: &str = "/var/run/fluent/fluent.sock";

/// The unix input.
#[derive(Debug)]
pub struct Unix {
    /// The listener, from bind to run.
    bound: super::Bound<tokio::net::UnixListener>,
    path: PathBuf,
    backlog: i32,
    max_connections: usize,
    settings: Arc<Settings>,
}

impl Unix {
    /// Reads a `<source>` section of type unix.
    pub fn configure(section: &Element) -> Result<Unix, ConfigError> {
        let path = section
            .string("path")
            .or_else(|| std::env::var("FLUENT_SOCKET").ok())
            .unwrap_or_else(|| DEFAULT_SOCKET_PATH.into());
        let backlog = match section.integer("backlog")? {
            None => 1024,
            Some(b) if b > 0 && b <= i32::MAX as i64 => b as i32,
            Some(b) => {
                let p = section.peek("backlog").expect("was read");
                return Err(ConfigError::at(
                    &p.value_pos,
                    format!("backlog: {b} must be positive"),
                ));
            }
        };
        let max_connections = match section.integer("max_connections")? {
            None => super::forward::DEFAULT_MAX_CONNECTIONS,
            Some(m) if m > 0 && m <= 1 << 20 => m as usize,
            Some(m) => {
                let p = section.peek("max_connections").expect("was read");
                return Err(ConfigError::at(
                    &p.value_pos,
                    format!("max_connections: {m} is out of range (1..1048576)"),
                ));
            }
        };
        let settings = Settings::configure(section)?;
        Ok(Unix {
            bound: super::Bound::default(),
            path: PathBuf::from(path),
            backlog,
            max_connections,
            settings: Arc::new(settings),
        })
    }

    fn listen(&self) -> std::io::Result<tokio::net::UnixListener> {
        if self.path.exists() {
            tracing::warn!(input = "unix", path = %self.path.display(), "Found existing '{}'. Remove this file for in_unix plugin", self.path.display());
            std::fs::remove_file(&self.path)?;
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
        sock.bind(&socket2::SockAddr::unix(&self.path)?)?;
        sock.listen(self.backlog)?;
        sock.set_nonblocking(true)?;
        let std_listener: std::os::unix::net::UnixListener = sock.into();
        tokio::net::UnixListener::from_std(std_listener)
    }
}

impl Input for Unix {
    fn bind(&self) -> BoxFuture<'_, Result<(), String>> {
        let what = format!("unix input cannot listen on {}", self.path.display());
        Box::pin(self.bound.bind(what, || async { self.listen() }))
    }

    fn run(self: Arc<Self>, ctx: InputContext) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let listener = match self.bound.take_or(|| async { self.listen() }).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(input = "unix", path = %self.path.display(), error = %e, "cannot listen");
                    return;
                }
            };
            tracing::info!(input = "unix", path = %self.path.display(), "listening fluent socket");
            let sink = Arc::new(RouterSink {
                router: ctx.router.clone(),
                label: ctx.label,
            });
            let handler = Arc::new(Handler::new(self.settings.clone(), sink, "unix"));
            let mut conns = Connections::new(self.max_connections, "unix");
            let mut shutdown = ctx.shutdown.clone();
            let display = self.path.display().to_string();
            while let Some((stream, _)) =
                super::accept_next(|| listener.accept(), &mut shutdown, "unix").await
            {
                let Some(permit) = conns.admit(&display) else {
                    drop(stream);
                    continue;
                };
                let peer = Peer {
                    addr: None,
                    port: 0,
                    host: display.clone(),
                };
                let handler = handler.clone();
                let stop = ctx.shutdown.clone();
                conns.spawn(async move {
                    let _permit = permit;
                    handler.serve(stream, peer, stop).await;
                });
            }
            drop(listener);
            let _ = std::fs::remove_file(&self.path);
            conns.drain().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::parse_str;
    use crate::event::EventTime;
    use crate::router::{LabelId, Router};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    #[test]
    fn configure_defaults_and_errors() {
        let root = parse_str(
            "<source>\n@type unix\npath /tmp/x.sock\n</source>\n",
            "t.conf",
            ".".into(),
        )
        .unwrap();
        let u = Unix::configure(&root.elements[0]).unwrap();
        assert_eq!(u.path, PathBuf::from("/tmp/x.sock"));
        assert_eq!(u.backlog, 1024);
        let root = parse_str(
            "<source>\n@type unix\nbacklog -1\n</source>\n",
            "t.conf",
            ".".into(),
        )
        .unwrap();
        assert!(Unix::configure(&root.elements[0]).is_err());
    }

    #[tokio::test]
    async fn events_and_ack_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/f.sock");
        let root = parse_str(
            &format!(
                "<source>\n@type unix\npath {}\n</source>\n<match **>\n@type null\n</match>\n",
                path.display()
            ),
            "t.conf",
            ".".into(),
        )
        .unwrap();
        let router =
            Arc::new(Router::build(&root, &crate::output::BuildContext::new(None)).unwrap());
        let input = Arc::new(Unix::configure(&root.elements[0]).unwrap());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(input.run(InputContext {
            router,
            label: LabelId::ROOT,
            shutdown: stop_rx,
        }));
        let mut client = None;
        for _ in 0..100 {
            if let Ok(c) = tokio::net::UnixStream::connect(&path).await {
                client = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut c = client.expect("unix socket is listening");
        let mut frame = Vec::new();
        rmp::encode::write_array_len(&mut frame, 4).unwrap();
        rmp::encode::write_str(&mut frame, "u.tag").unwrap();
        EventTime::new(1_700_000_000, 0).encode(&mut frame);
        crate::msgpack::write_from_json(&serde_json::json!({"a": 1}), &mut frame);
        crate::msgpack::write_from_json(&serde_json::json!({"chunk": "u1"}), &mut frame);
        c.write_all(&frame).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            crate::msgpack::to_json_value(&buf[..n]).unwrap(),
            serde_json::json!({"ack": "u1"})
        );
        drop(c);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .unwrap()
            .unwrap();
        assert!(!path.exists(), "socket file removed at shutdown");
    }
}
