//! The `prometheus` source against the real binary: a forward source, a metrics endpoint on a
//! free port and a buffered `file` output with a file buffer. Figures are read with a plain
//! HTTP GET, as a Prometheus scrape would.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;

/// The labels of the file output in these configurations.
const LABELS: &str = r#"{plugin_id="out_file",type="file"}"#;

/// Now, in seconds: events of the current time keep the chunk out of reach of the timekey
/// rules (only SIGUSR1 flushes it).
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Two distinct free ports: (forward, metrics).
fn ports() -> (u16, u16) {
    let forward = free_forward_port();
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = l.local_addr().unwrap().port();
        if port != forward {
            return (forward, port);
        }
    }
}

fn config(dir: &Path, forward: u16, metrics: u16) -> PathBuf {
    let d = dir.display();
    write(
        dir,
        "metrics.conf",
        &format!(
            "<source>\n  @type forward\n  bind 127.0.0.1\n  port {forward}\n</source>\n\
             <source>\n  @type prometheus\n  bind 127.0.0.1\n  port {metrics}\n  metrics_path /metrics\n</source>\n\
             <source>\n  @type prometheus_output_monitor\n  interval 10\n</source>\n\
             <match **>\n  @type file\n  @id out_file\n  path {d}/out/events\n  <buffer>\n    @type file\n    path {d}/buffer\n    flush_mode interval\n    flush_interval 1h\n    flush_at_shutdown false\n  </buffer>\n</match>\n"
        ),
    )
}

/// `GET path` on 127.0.0.1:port; (status line, body), or None when nothing answers.
fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// The metrics page (panics unless it is served with 200).
fn scrape(port: u16) -> String {
    let (status, body) = get(port, "/metrics").expect("the metrics endpoint answers");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    body
}

/// The value of the sample `name` + `labels`, if the page has it.
fn value(page: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{labels} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse().expect("a number"))
}

/// Starts sluice and waits until both the forward and the metrics port answer.
fn start(conf: &Path, forward: u16, metrics: u16) -> Daemon {
    let d = Daemon::start_listening(conf, &[], forward);
    assert!(
        wait_until(Duration::from_secs(5), || get(metrics, "/metrics")
            .is_some()),
        "the metrics endpoint did not come up:\n{}",
        d.stderr()
    );
    d
}

#[test]
fn emit_records_and_write_count_of_a_file_output() {
    let dir = tempfile::tempdir().unwrap();
    let (fport, mport) = ports();
    let conf = config(dir.path(), fport, mport);
    let d = start(&conf, fport, mport);

    let page = scrape(mport);
    assert_eq!(
        value(&page, "fluentd_output_status_emit_records", LABELS),
        Some(0.0),
        "{page}"
    );
    assert!(page.contains("# TYPE fluentd_output_status_emit_records gauge"));

    let mut c = ForwardClient::connect(fport);
    let mut sent = 0;
    for batch in 0..5 {
        let events: Vec<_> = (0..(batch + 1))
            .map(|i| (now(), 0u32, json!({"batch": batch, "i": i})))
            .collect();
        sent += events.len();
        c.send_acked("app.metrics", &events, &format!("c{batch}"));
    }

    let page = scrape(mport);
    assert_eq!(
        value(&page, "fluentd_output_status_emit_records", LABELS),
        Some(sent as f64),
        "{page}"
    );
    assert_eq!(
        value(&page, "fluentd_output_status_emit_count", LABELS),
        Some(5.0),
        "{page}"
    );
    assert_eq!(
        value(&page, "fluentd_output_status_write_count", LABELS),
        Some(0.0),
        "{page}"
    );
    let staged = value(
        &page,
        "fluentd_output_status_buffer_stage_byte_size",
        LABELS,
    )
    .unwrap();
    assert!(staged > 0.0, "{page}");
    assert_eq!(
        value(&page, "fluentd_output_status_buffer_total_bytes", LABELS),
        Some(staged),
        "{page}"
    );
    assert_eq!(
        value(&page, "sluice_buffer_damaged_frames_total", LABELS),
        Some(0.0),
        "{page}"
    );

    d.signal("USR1");
    let mut last = String::new();
    let flushed = wait_until(Duration::from_secs(10), || {
        last = scrape(mport);
        value(&last, "fluentd_output_status_write_count", LABELS).unwrap_or(0.0) >= 1.0
    });
    assert!(flushed, "write_count did not rise after a flush:\n{last}");
    assert_eq!(
        value(&last, "fluentd_output_status_buffer_total_bytes", LABELS),
        Some(0.0),
        "{last}"
    );
    assert_eq!(
        value(&last, "fluentd_output_status_num_errors", LABELS),
        Some(0.0),
        "{last}"
    );

    // Other paths are not the metrics.
    let (status, _) = get(mport, "/nope").unwrap();
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    let (code, stderr) = d.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("unused") && !stderr.contains("not used"),
        "the monitor's parameters are read:\n{stderr}"
    );
}

#[test]
fn damaged_frame_in_a_chunk_file_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (fport, mport) = ports();
    let conf = config(dir.path(), fport, mport);

    // A staged chunk written in ten commits (one records frame each), left on disk at stop.
    let d = start(&conf, fport, mport);
    let mut c = ForwardClient::connect(fport);
    for n in 0..10 {
        c.send_acked(
            "app.damage",
            &[(now(), 0, json!({"n": n, "pad": "x".repeat(40)}))],
            &format!("d{n}"),
        );
    }
    drop(c);
    let (code, stderr) = d.stop();
    assert_eq!(code, Some(0), "{stderr}");

    let chunks: Vec<PathBuf> = std::fs::read_dir(dir.path().join("buffer"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("buffer.b") && name.ends_with(".log")
        })
        .collect();
    assert_eq!(chunks.len(), 1, "one staged chunk file: {chunks:?}");
    let mut data = std::fs::read(&chunks[0]).unwrap();
    let mid = data.len() / 2;
    for b in &mut data[mid..mid + 4] {
        *b ^= 0xff;
    }
    std::fs::write(&chunks[0], &data).unwrap();

    let d = start(&conf, fport, mport);
    let page = scrape(mport);
    let frames = value(&page, "sluice_buffer_damaged_frames_total", LABELS).unwrap_or(0.0);
    assert!(frames >= 1.0, "{page}\n{}", d.stderr());
    let bytes = value(&page, "sluice_buffer_damaged_bytes_total", LABELS).unwrap_or(0.0);
    assert!(bytes >= 4.0, "{page}");
    assert!(
        page.contains("# TYPE sluice_buffer_damaged_frames counter"),
        "{page}"
    );
    // The intact frames are still there: 9 or 10 records were resumed.
    let staged = value(&page, "fluentd_output_status_buffer_stage_length", LABELS);
    assert_eq!(staged, Some(1.0), "{page}");
    let (code, stderr) = d.stop();
    assert_eq!(code, Some(0), "{stderr}");
}
