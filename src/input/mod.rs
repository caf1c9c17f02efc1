//! Inputs: where events enter sluice.
//!
//! An input runs as a task; it emits [`EventStream`](crate::event::EventStream)s into the
//! router under the label its `@label` names (the top level otherwise) and stops when the
//! shutdown signal flips.

pub mod forward;
pub mod http;
pub mod prometheus;
pub mod sample;
pub mod unix;

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{ConfigError, Element};
use crate::router::{LabelId, Router};

/// What a running input needs.
#[derive(Debug, Clone)]
pub struct InputContext {
    /// Where events go.
    pub router: Arc<Router>,
    /// The label events are emitted into.
    pub label: LabelId,
    /// Becomes `true` when sluice stops; inputs finish their current emit and return.
    pub shutdown: watch::Receiver<bool>,
}

/// Waits for the next connection a listener accepts; `None` once sluice stops. Accept errors
/// (EMFILE and friends) are logged and retried after a short pause instead of spinning.
pub async fn accept_next<T, F, Fut>(
    mut accept: F,
    shutdown: &mut watch::Receiver<bool>,
    input: &'static str,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    loop {
        if *shutdown.borrow_and_update() {
            return None;
        }
        tokio::select! {
            r = accept() => match r {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::warn!(input, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() {
                    return None;
                }
            }
        }
    }
}

/// Binds a TCP listener on `bind:port` (a host name is resolved; the first address is used)
/// with `SO_REUSEADDR`, as every socket input does.
pub async fn listen_tcp(
    bind: &str,
    port: u16,
    backlog: u32,
) -> std::io::Result<tokio::net::TcpListener> {
    let addr: std::net::SocketAddr = tokio::net::lookup_host((bind, port))
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "bind address not found")
        })?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(backlog)
}

/// Accepts TCP connections until sluice stops and runs `handle`'s future for each admitted one
/// as a task of its own; at most `max` run at once (the rest are refused with a log line).
/// Returns once every connection task has finished.
pub(crate) async fn serve_tcp<F, Fut>(
    listener: tokio::net::TcpListener,
    max: usize,
    input: &'static str,
    mut shutdown: watch::Receiver<bool>,
    mut handle: F,
) where
    F: FnMut(tokio::net::TcpStream, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut conns = forward::Connections::new(max, input);
    while let Some((stream, addr)) = accept_next(|| listener.accept(), &mut shutdown, input).await {
        let Some(permit) = conns.admit(&addr) else {
            drop(stream);
            continue;
        };
        let conn = handle(stream, addr);
        conns.spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
    drop(listener);
    conns.drain().await;
}

/// An input plugin instance.
pub trait Input: Send + Sync + std::fmt::Debug {
    /// Binds what the input listens on, before any input runs. An error stops sluice's
    /// start-up, as Fluentd's does (a port in use, a socket path that cannot be created). The
    /// default has nothing to bind.
    fn bind(&self) -> crate::output::BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Runs the input until shutdown (binding first if [`Input::bind`] was not called).
    fn run(self: Arc<Self>, ctx: InputContext) -> crate::output::BoxFuture<'static, ()>;
}

/// What [`Input::bind`] bound, kept until [`Input::run`] takes it.
#[derive(Debug)]
pub struct Bound<T>(std::sync::Mutex<Option<T>>);

impl<T> Default for Bound<T> {
    fn default() -> Self {
        Bound(std::sync::Mutex::new(None))
    }
}

impl<T> Bound<T> {
    /// Binds with `listen` and keeps the listener for [`Bound::take_or`]; a failure is the
    /// start-up error `<what>: <error>`.
    pub async fn bind<F, Fut>(&self, what: String, listen: F) -> Result<(), String>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<T>>,
    {
        let t = listen().await.map_err(|e| format!("{what}: {e}"))?;
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
        Ok(())
    }

    /// The listener [`Input::bind`] bound, or a new one from `listen`.
    pub async fn take_or<F, Fut>(&self, listen: F) -> std::io::Result<T>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<T>>,
    {
        let bound = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        match bound {
            Some(t) => Ok(t),
            None => listen().await,
        }
    }
}

/// Input types this build knows (`dummy` is the old name of `sample`; the two monitors are
/// accepted for fluent-plugin-prometheus configurations and do nothing, see [`prometheus`]).
pub const TYPES: &[&str] = &[
    "dummy",
    "forward",
    "http",
    "prometheus",
    "prometheus_monitor",
    "prometheus_output_monitor",
    "sample",
    "unix",
];

/// Builds the input a `<source>` section describes.
pub fn build(section: &Element) -> Result<Arc<dyn Input>, ConfigError> {
    let type_name = section.string("@type").ok_or_else(|| {
        ConfigError::at(
            &section.pos,
            "Missing '@type' parameter on <source> directive",
        )
    })?;
    match type_name.as_str() {
        "sample" | "dummy" => Ok(Arc::new(sample::Sample::configure(section)?)),
        "forward" => Ok(Arc::new(forward::Forward::configure(section)?)),
        "http" => Ok(Arc::new(http::Http::configure(section)?)),
        "unix" => Ok(Arc::new(unix::Unix::configure(section)?)),
        "prometheus" => Ok(Arc::new(prometheus::Prometheus::configure(section)?)),
        t @ ("prometheus_monitor" | "prometheus_output_monitor") => {
            Ok(Arc::new(prometheus::Monitor::configure(section, t)?))
        }
        other => {
            let pos = section.pos_of("@type");
            Err(ConfigError::at(
                &pos,
                format!(
                    "Unknown input plugin '{other}'. Supported input plugins: {}",
                    TYPES.join(", ")
                ),
            ))
        }
    }
}
