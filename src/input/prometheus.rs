//! `@type prometheus`: a Prometheus metrics endpoint, configured as fluent-plugin-prometheus's
//! `in_prometheus` is (`bind` 0.0.0.0, `port` 24231, `metrics_path` /metrics,
//! `aggregated_metrics_path` /aggregated_metrics — one worker, so both serve the same figures).
//!
//! `GET <metrics_path>` answers with the OpenMetrics text exposition (which Prometheus scrapes
//! and which classic text-format parsers read) of every buffered output's figures, labelled
//! `plugin_id` and `type` as `prometheus_output_monitor` labels them:
//!
//! - fluent-plugin-prometheus's `fluentd_output_status_*` gauges: buffer queue/stage lengths and
//!   bytes, available space ratio (percent of `total_limit_size`), `retry_count` and
//!   `num_errors` (both count failed writes, as Fluentd's monitor agent does), `emit_count`,
//!   `emit_records`, `write_count`, `rollback_count`, `retry_wait`;
//! - sluice's own: `sluice_output_retry_steps`, `sluice_output_next_retry_time_seconds` (while
//!   retrying), the counters `sluice_output_buffer_overflows_total`,
//!   `sluice_output_chunks_backed_up_total`, `sluice_buffer_damaged_frames_total`,
//!   `sluice_buffer_damaged_bytes_total`, and each figure a writer reports as `sluice_<name>`
//!   (e.g. `sluice_s3_errors_auth`).
//!
//! The figures are read from the outputs at each scrape, so `prometheus_output_monitor` (and
//! `prometheus_monitor`) sources have nothing left to do: they are accepted, their `interval`
//! and `<labels>` read, and they run nothing ([`Monitor`]). Their `<labels>` are not added.
//!
//! Other paths are answered 404, other methods 405. A port that cannot be bound stops
//! start-up, as it stops Fluentd's.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::config::{ConfigError, Element};
use crate::output::buffered::OutputMetrics;
use crate::output::{BoxFuture, Output};

use super::{Input, InputContext};

/// fluent-plugin-prometheus's port.
pub const DEFAULT_PORT: u16 = 24231;
/// fluent-plugin-prometheus's `metrics_path`.
pub const DEFAULT_METRICS_PATH: &str = "/metrics";
/// fluent-plugin-prometheus's `aggregated_metrics_path`.
pub const DEFAULT_AGGREGATED_METRICS_PATH: &str = "/aggregated_metrics";
/// The content type of the exposition `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapers connected at once (more are closed at accept).
const MAX_CONNECTIONS: usize = 64;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The `prometheus` input: the metrics endpoint.
#[derive(Debug)]
pub struct Prometheus {
    /// The listener, from bind to run.
    bound: super::Bound<tokio::net::TcpListener>,
    bind: String,
    port: u16,
    metrics_path: String,
    aggregated_metrics_path: String,
}

fn path_param(section: &Element, key: &str, default: &str) -> Result<String, ConfigError> {
    match section.param(key) {
        None => Ok(default.to_string()),
        Some(p) if p.value.starts_with('/') => Ok(p.value.clone()),
        Some(p) => Err(ConfigError::at(
            &p.value_pos,
            format!(
                "{key}: a path starting with '/' is expected, got \"{}\"",
                p.value
            ),
        )),
    }
}

impl Prometheus {
    /// Reads a `<source>` section of type prometheus.
    pub fn configure(section: &Element) -> Result<Prometheus, ConfigError> {
        let port = match section.integer("port")? {
            None => DEFAULT_PORT,
            Some(v) => u16::try_from(v).map_err(|_| {
                let p = section.peek("port").expect("was read");
                ConfigError::at(
                    &p.value_pos,
                    format!("port: {v} is out of range (0..65535)"),
                )
            })?,
        };
        Ok(Prometheus {
            bound: super::Bound::default(),
            bind: section.string("bind").unwrap_or_else(|| "0.0.0.0".into()),
            port,
            metrics_path: path_param(section, "metrics_path", DEFAULT_METRICS_PATH)?,
            aggregated_metrics_path: path_param(
                section,
                "aggregated_metrics_path",
                DEFAULT_AGGREGATED_METRICS_PATH,
            )?,
        })
    }

    async fn listen(&self) -> std::io::Result<tokio::net::TcpListener> {
        super::listen_tcp(&self.bind, self.port, 128).await
    }

    /// The answer to one request.
    fn respond(&self, req: &Request<hyper::body::Incoming>, registry: &Registry) -> Resp {
        let path = req.uri().path();
        if path != self.metrics_path && path != self.aggregated_metrics_path {
            return plain(StatusCode::NOT_FOUND, "404 Not Found\n");
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n");
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let mut body = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
            tracing::error!(input = "prometheus", error = %e, "cannot encode metrics");
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "500 Internal Server Error\n",
            );
        }
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        r
    }

    /// Serves one scraper's connection until it closes, idles out, or sluice stops.
    async fn serve(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        registry: Arc<Registry>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let me = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let r = me.respond(&req, &registry);
            async move { Ok::<_, Infallible>(r) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(IDLE_TIMEOUT);
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        let mut stopping = *shutdown.borrow();
        if stopping {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(input = "prometheus", peer = %peer, error = %e, "connection closed");
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

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, body: &'static str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

impl Input for Prometheus {
    fn bind(&self) -> BoxFuture<'_, Result<(), String>> {
        let what = format!(
            "prometheus input cannot listen on {}:{}",
            self.bind, self.port
        );
        Box::pin(self.bound.bind(what, || self.listen()))
    }

    fn run(self: Arc<Self>, ctx: InputContext) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let listener = match self.bound.take_or(|| self.listen()).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(input = "prometheus", bind = %self.bind, port = self.port, error = %e,
                        "cannot listen: the metrics endpoint is NOT available");
                    return;
                }
            };
            let local = listener.local_addr().ok();
            tracing::info!(input = "prometheus", port = self.port, bind = %self.bind, addr = ?local,
                path = %self.metrics_path, "serving metrics");
            let registry = Arc::new(registry(OutputsCollector {
                outputs: ctx.router.outputs(),
            }));
            let me = self.clone();
            super::serve_tcp(
                listener,
                MAX_CONNECTIONS,
                "prometheus",
                ctx.shutdown.clone(),
                move |stream, addr| {
                    let _ = stream.set_nodelay(true);
                    let me = me.clone();
                    let registry = registry.clone();
                    let stop = ctx.shutdown.clone();
                    async move { me.serve(stream, addr, registry, stop).await }
                },
            )
            .await;
        })
    }
}

/// `prometheus_output_monitor` and `prometheus_monitor`: accepted so Fluentd configurations run
/// unchanged, with nothing to do — the `prometheus` source reads the outputs' figures at each
/// scrape.
#[derive(Debug)]
pub struct Monitor;

impl Monitor {
    /// Reads a `<source>` of type `type_name` (`interval`, `gauge_all`, `<labels>`).
    pub fn configure(section: &Element, type_name: &str) -> Result<Monitor, ConfigError> {
        let _ = section.time("interval")?;
        let _ = section.bool("gauge_all")?;
        for labels in section.sections("labels") {
            labels.mark_all_params_used();
            if !labels.params.is_empty() {
                tracing::warn!(
                    input = type_name,
                    "<labels> of {type_name} are not added to sluice's metrics: outputs are labelled plugin_id and type only"
                );
            }
        }
        Ok(Monitor)
    }
}

impl Input for Monitor {
    fn run(self: Arc<Self>, _ctx: InputContext) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

// ------------------------------------------------------------------------------------------
// The figures
// ------------------------------------------------------------------------------------------

/// A registry holding one collector.
fn registry(c: impl Collector) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(c));
    r
}

/// Reads every output's figures at each scrape.
#[derive(Debug)]
struct OutputsCollector {
    outputs: Vec<Arc<dyn Output>>,
}

impl Collector for OutputsCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot: Vec<OutputMetrics> =
            self.outputs.iter().filter_map(|o| o.metrics()).collect();
        encode_outputs(&snapshot, encoder)
    }
}

/// Fixed figures as of one moment (for tests).
#[derive(Debug)]
struct Snapshot(Vec<OutputMetrics>);

impl Collector for Snapshot {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_outputs(&self.0, encoder)
    }
}

/// The exposition of these figures, as the endpoint serves it.
pub fn render(metrics: &[OutputMetrics]) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry(Snapshot(metrics.to_vec())))
        .expect("writing to a String cannot fail");
    out
}

/// One sample's value.
#[derive(Debug, Clone, Copy)]
enum Value {
    Int(u64),
    Float(f64),
}

/// One metric family: name (counters without `_total`, which the encoder adds), help, type,
/// and the value for an output (`None`: no sample for that output).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    value: fn(&OutputMetrics) -> Option<Value>,
}

const GAUGE: MetricType = MetricType::Gauge;
const COUNTER: MetricType = MetricType::Counter;

fn int(v: u64) -> Option<Value> {
    Some(Value::Int(v))
}

fn total_bytes(m: &OutputMetrics) -> u64 {
    m.buffer.stage_bytes + m.buffer.queue_bytes
}

const FAMILIES: &[Family] = &[
    Family {
        name: "fluentd_output_status_buffer_queue_length",
        help: "Chunks in the buffer queue.",
        kind: GAUGE,
        value: |m| int(m.buffer.queue_length as u64),
    },
    Family {
        name: "fluentd_output_status_buffer_stage_length",
        help: "Chunks in the buffer stage.",
        kind: GAUGE,
        value: |m| int(m.buffer.stage_length as u64),
    },
    Family {
        name: "fluentd_output_status_buffer_total_bytes",
        help: "Bytes in the buffer stage and queue.",
        kind: GAUGE,
        value: |m| int(total_bytes(m)),
    },
    Family {
        name: "fluentd_output_status_buffer_stage_byte_size",
        help: "Bytes in the buffer stage.",
        kind: GAUGE,
        value: |m| int(m.buffer.stage_bytes),
    },
    Family {
        name: "fluentd_output_status_queue_byte_size",
        help: "Bytes in the buffer queue (chunks being written included).",
        kind: GAUGE,
        value: |m| int(m.buffer.queue_bytes),
    },
    Family {
        name: "fluentd_output_status_buffer_available_space_ratio",
        help: "Free buffer space, percent of total_limit_size.",
        kind: GAUGE,
        value: |m| {
            let limit = m.total_limit_size.filter(|l| *l > 0)?;
            let used = total_bytes(m) as f64 / limit as f64;
            Some(Value::Float(((1.0 - used) * 100.0).clamp(0.0, 100.0)))
        },
    },
    Family {
        name: "fluentd_output_status_retry_count",
        help: "Failed writes (Fluentd's monitor agent reports num_errors as retry_count).",
        kind: GAUGE,
        value: |m| int(m.write_errors),
    },
    Family {
        name: "fluentd_output_status_num_errors",
        help: "Failed writes.",
        kind: GAUGE,
        value: |m| int(m.write_errors),
    },
    Family {
        name: "fluentd_output_status_emit_count",
        help: "Emits into the output.",
        kind: GAUGE,
        value: |m| int(m.emit_count),
    },
    Family {
        name: "fluentd_output_status_emit_records",
        help: "Records emitted into the output.",
        kind: GAUGE,
        value: |m| int(m.emit_records),
    },
    Family {
        name: "fluentd_output_status_write_count",
        help: "Chunks written.",
        kind: GAUGE,
        value: |m| int(m.write_count),
    },
    Family {
        name: "fluentd_output_status_rollback_count",
        help: "Chunks taken back into the queue after a failed write.",
        kind: GAUGE,
        value: |m| int(m.rollback_count),
    },
    Family {
        name: "fluentd_output_status_retry_wait",
        help: "While retrying, seconds from the first failure to the next retry; 0 otherwise.",
        kind: GAUGE,
        value: |m| Some(Value::Float(m.retry_wait.unwrap_or(0.0))),
    },
    Family {
        name: "sluice_output_retry_steps",
        help: "Steps of the current retry episode (0 when not retrying).",
        kind: GAUGE,
        value: |m| int(m.retry_count),
    },
    Family {
        name: "sluice_output_next_retry_time_seconds",
        help: "While retrying, when the next retry is due (Unix time).",
        kind: GAUGE,
        value: |m| m.next_retry_time.map(|t| Value::Int(t.max(0) as u64)),
    },
    Family {
        name: "sluice_output_buffer_overflows",
        help: "Emits refused because the buffer was full.",
        kind: COUNTER,
        value: |m| int(m.buffer_overflows),
    },
    Family {
        name: "sluice_output_chunks_backed_up",
        help: "Chunks moved to the backup directory.",
        kind: COUNTER,
        value: |m| int(m.backed_up),
    },
    Family {
        name: "sluice_buffer_damaged_frames",
        help: "Damaged frames cut out of file-buffer chunk files when the buffer was resumed.",
        kind: COUNTER,
        value: |m| int(m.damaged_frames),
    },
    Family {
        name: "sluice_buffer_damaged_bytes",
        help: "Bytes of damaged frames cut out of file-buffer chunk files.",
        kind: COUNTER,
        value: |m| int(m.damaged_bytes),
    },
];

/// The `plugin_id` and `type` labels of an output.
fn labels(m: &OutputMetrics) -> [(&'static str, &str); 2] {
    [("plugin_id", m.plugin_id.as_str()), ("type", m.type_name)]
}

fn encode_sample(
    encoder: prometheus_client::encoding::MetricEncoder,
    kind: MetricType,
    v: Value,
) -> Result<(), std::fmt::Error> {
    match (kind, v) {
        (MetricType::Counter, Value::Int(i)) => ConstCounter::new(i).encode(encoder),
        (MetricType::Counter, Value::Float(f)) => ConstCounter::new(f).encode(encoder),
        (_, Value::Int(i)) => ConstGauge::new(i).encode(encoder),
        (_, Value::Float(f)) => ConstGauge::new(f).encode(encoder),
    }
}

/// A metric name made of the characters Prometheus allows.
fn metric_name(raw: &str) -> String {
    raw.chars()
        .enumerate()
        .map(|(i, c)| {
            if c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit()) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Writes every family for these outputs.
fn encode_outputs(
    outputs: &[OutputMetrics],
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    for f in FAMILIES {
        let samples: Vec<(&OutputMetrics, Value)> = outputs
            .iter()
            .filter_map(|m| (f.value)(m).map(|v| (m, v)))
            .collect();
        if samples.is_empty() {
            continue;
        }
        let mut family = encoder.encode_descriptor(f.name, f.help, None, f.kind)?;
        for (m, v) in samples {
            let l = labels(m);
            encode_sample(family.encode_family(&l)?, f.kind, v)?;
        }
    }
    // The writers' own figures, by name, in name order.
    let mut by_name: BTreeMap<String, Vec<(&OutputMetrics, u64)>> = BTreeMap::new();
    for m in outputs {
        for (name, v) in &m.writer {
            by_name
                .entry(metric_name(&format!("sluice_{name}")))
                .or_default()
                .push((m, *v));
        }
    }
    for (name, samples) in &by_name {
        let help = "A figure the output plugin reports (see its documentation).";
        let mut family = encoder.encode_descriptor(name, help, None, GAUGE)?;
        for (m, v) in samples {
            let l = labels(m);
            encode_sample(family.encode_family(&l)?, GAUGE, Value::Int(*v))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::core::BufferStats;

    fn source(text: &str) -> Element {
        let root = crate::config::parser::parse_str(text, "t.conf", ".".into()).unwrap();
        root.elements.into_iter().next().unwrap()
    }

    fn sample_metrics() -> OutputMetrics {
        OutputMetrics {
            plugin_id: "out_file".into(),
            type_name: "file",
            buffer: BufferStats {
                stage_length: 2,
                stage_bytes: 300,
                queue_length: 1,
                queue_bytes: 200,
                in_flight: 0,
            },
            total_limit_size: Some(1000),
            retry_count: 3,
            next_retry_time: Some(1_700_000_000),
            retry_wait: Some(7.5),
            emit_count: 4,
            emit_records: 40,
            write_count: 5,
            write_errors: 6,
            buffer_overflows: 7,
            backed_up: 8,
            rollback_count: 9,
            damaged_frames: 10,
            damaged_bytes: 11,
            writer: vec![("s3_errors_auth", 12), ("s3_parts_uploaded", 13)],
        }
    }

    /// The sample lines of `text` (no comments).
    fn samples(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn renders_every_figure_with_plugin_id_and_type() {
        let text = render(&[sample_metrics()]);
        let l = r#"{plugin_id="out_file",type="file"}"#;
        for (name, value) in [
            ("fluentd_output_status_buffer_queue_length", "1"),
            ("fluentd_output_status_buffer_stage_length", "2"),
            ("fluentd_output_status_buffer_total_bytes", "500"),
            ("fluentd_output_status_buffer_stage_byte_size", "300"),
            ("fluentd_output_status_queue_byte_size", "200"),
            ("fluentd_output_status_buffer_available_space_ratio", "50.0"),
            ("fluentd_output_status_retry_count", "6"),
            ("fluentd_output_status_num_errors", "6"),
            ("fluentd_output_status_emit_count", "4"),
            ("fluentd_output_status_emit_records", "40"),
            ("fluentd_output_status_write_count", "5"),
            ("fluentd_output_status_rollback_count", "9"),
            ("fluentd_output_status_retry_wait", "7.5"),
            ("sluice_output_retry_steps", "3"),
            ("sluice_output_next_retry_time_seconds", "1700000000"),
            ("sluice_output_buffer_overflows_total", "7"),
            ("sluice_output_chunks_backed_up_total", "8"),
            ("sluice_buffer_damaged_frames_total", "10"),
            ("sluice_buffer_damaged_bytes_total", "11"),
            ("sluice_s3_errors_auth", "12"),
            ("sluice_s3_parts_uploaded", "13"),
        ] {
            let line = format!("{name}{l} {value}");
            assert!(
                samples(&text).contains(&line.as_str()),
                "missing {line:?} in:\n{text}"
            );
        }
        assert_eq!(samples(&text).len(), 21, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE fluentd_output_status_emit_records gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE sluice_buffer_damaged_frames counter\n"),
            "{text}"
        );
    }

    #[test]
    fn one_family_per_name_with_a_sample_per_output() {
        let a = sample_metrics();
        let mut b = sample_metrics();
        b.plugin_id = "object_1234abcd".into();
        b.type_name = "s3";
        b.writer = vec![("s3_errors_auth", 1)];
        let text = render(&[a, b]);
        assert_eq!(
            text.matches("# TYPE fluentd_output_status_write_count gauge")
                .count(),
            1
        );
        assert_eq!(
            text.matches("# TYPE sluice_s3_errors_auth gauge").count(),
            1
        );
        let s = samples(&text);
        assert!(s.contains(&r#"sluice_s3_errors_auth{plugin_id="out_file",type="file"} 12"#));
        assert!(s.contains(&r#"sluice_s3_errors_auth{plugin_id="object_1234abcd",type="s3"} 1"#));
        assert!(s.contains(
            &r#"fluentd_output_status_emit_records{plugin_id="object_1234abcd",type="s3"} 40"#
        ));
    }

    #[test]
    fn leaves_out_what_is_not_known() {
        let m = OutputMetrics {
            plugin_id: "p".into(),
            type_name: "null",
            ..Default::default()
        };
        let text = render(&[m]);
        assert!(!text.contains("available_space_ratio"), "{text}");
        assert!(!text.contains("next_retry_time"), "{text}");
        assert!(samples(&text)
            .contains(&r#"fluentd_output_status_retry_wait{plugin_id="p",type="null"} 0.0"#));
        // Nothing at all without outputs.
        assert_eq!(render(&[]), "# EOF\n");
    }

    #[test]
    fn label_values_are_escaped_and_names_sanitized() {
        let mut m = sample_metrics();
        m.plugin_id = "a\"b\\c".into();
        m.writer = vec![("odd-name.x", 1)];
        let text = render(&[m]);
        assert!(
            text.contains(
                r#"fluentd_output_status_write_count{plugin_id="a\"b\\c",type="file"} 5"#
            ),
            "{text}"
        );
        assert!(text.contains("sluice_odd_name_x{"), "{text}");
    }

    #[test]
    fn configuration_defaults_and_values() {
        let p = Prometheus::configure(&source("<source>\n@type prometheus\n</source>\n")).unwrap();
        assert_eq!(p.bind, "0.0.0.0");
        assert_eq!(p.port, 24231);
        assert_eq!(p.metrics_path, "/metrics");
        assert_eq!(p.aggregated_metrics_path, "/aggregated_metrics");
        let p = Prometheus::configure(&source(
            "<source>\n@type prometheus\nbind 127.0.0.1\nport 9100\nmetrics_path /m\n</source>\n",
        ))
        .unwrap();
        assert_eq!(
            (p.bind.as_str(), p.port, p.metrics_path.as_str()),
            ("127.0.0.1", 9100, "/m")
        );
        let e = Prometheus::configure(&source(
            "<source>\n@type prometheus\nport 70000\n</source>\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = Prometheus::configure(&source(
            "<source>\n@type prometheus\nmetrics_path metrics\n</source>\n",
        ))
        .unwrap_err();
        assert!(e.to_string().contains("starting with '/'"), "{e}");
    }

    #[test]
    fn monitors_read_their_parameters() {
        let s = source(
            "<source>\n@type prometheus_output_monitor\ninterval 10\n<labels>\nhost ${hostname}\n</labels>\n</source>\n",
        );
        Monitor::configure(&s, "prometheus_output_monitor").unwrap();
        assert!(s.unused().is_empty(), "{:?}", s.unused());
    }

    /// Sends one raw HTTP/1.1 request and returns the whole response.
    async fn request(port: u16, req: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn serves_the_metrics_path_and_404_elsewhere() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let text = format!(
            "<source>\n@type prometheus\nbind 127.0.0.1\nport {port}\n</source>\n<match **>\n@type null\n<buffer>\n@type memory\n</buffer>\n</match>\n"
        );
        let root = crate::config::parser::parse_str(&text, "t.conf", ".".into()).unwrap();
        let pipeline =
            crate::pipeline::build(&root, crate::pipeline::BuildOptions::default()).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let run = tokio::spawn(pipeline.run(rx));
        let up = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), up)
            .await
            .expect("the endpoint listens");
        let ok = request(
            port,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        assert!(
            ok.contains(",type=\"null\"} 0\r\n") || ok.contains(",type=\"null\"} 0\n"),
            "{ok}"
        );
        assert!(ok.trim_end().ends_with("# EOF"), "{ok}");
        let missing = request(
            port,
            "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
        let post = request(
            port,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(post.starts_with("HTTP/1.1 405 "), "{post}");
        tx.send(crate::pipeline::Control::Stop).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("stops")
            .unwrap()
            .unwrap();
    }
}
