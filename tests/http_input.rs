//! End to end: the real `sluice` binary with `<source> @type http` and `<match **> @type
//! stdout`, fed by a plain `std::net` HTTP/1.1 client. Every content type must reach stdout
//! with the right tag and time; bad bodies get 400 and harm nothing else; oversized bodies get
//! 413; a full buffer gets 503 with `Retry-After`; the response options, CORS, gzip and
//! keep-alive work as Fluentd's in_http.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, BIN};

/// A running sluice whose stdout and stderr are collected line by line.
struct Sluice {
    child: Child,
    port: u16,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).lines() {
            match line {
                Ok(line) => l.lock().unwrap().push(common::strip_ansi(&line)),
                Err(_) => break,
            }
        }
    });
    lines
}

impl Sluice {
    /// Starts sluice with an http source (plus `extra` inside `<source>`) and `matcher` as the
    /// `<match **>` body (`@type stdout` when empty).
    fn start_with(extra: &str, matcher: &str) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_forward_port();
        let matcher = if matcher.is_empty() {
            "  @type stdout\n"
        } else {
            matcher
        };
        let conf = format!(
            "<source>\n  @type http\n  bind 127.0.0.1\n  port {port}\n{extra}\n</source>\n\
             <match **>\n{matcher}</match>\n"
        );
        let path = dir.path().join("sluice.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = Command::new(BIN)
            .arg("-c")
            .arg(&path)
            .env("TZ", "UTC")
            .env("NO_COLOR", "1")
            .env_remove("SLUICE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let mut s = Sluice {
            child,
            port,
            out,
            err,
            _dir: dir,
        };
        let up = wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || matches!(s.child.try_wait(), Ok(Some(_)))
        });
        if !up || matches!(s.child.try_wait(), Ok(Some(_))) {
            panic!("sluice did not listen: {:?}", s.err.lock().unwrap());
        }
        s
    }

    fn start(extra: &str) -> Sluice {
        Sluice::start_with(extra, "")
    }

    /// Waits until stdout has a line ending with `suffix`, returns it.
    fn expect_line(&self, suffix: &str) -> String {
        self.expect(suffix, |l| l.ends_with(suffix))
    }

    /// Waits until stdout has a line containing `part`, returns it.
    fn expect_containing(&self, part: &str) -> String {
        self.expect(part, |l| l.contains(part))
    }

    fn expect(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut found = None;
        wait_until(Duration::from_secs(8), || {
            found = self.out.lock().unwrap().iter().find(|l| pred(l)).cloned();
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no stdout line matches {what:?}\nstdout: {:#?}\nstderr: {:#?}",
                self.out.lock().unwrap(),
                self.err.lock().unwrap()
            )
        })
    }

    fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    fn request(&self, req: &Req) -> Reply {
        send(self.port, &req.bytes())
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request (sent with `Connection: close`).
struct Req {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Req {
    fn post(target: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Req {
        Req {
            method: "POST",
            target: target.into(),
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
            chunked: false,
        }
    }

    fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\n",
            self.method, self.target
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        if self.chunked {
            out.push_str("Transfer-Encoding: chunked\r\n");
        } else if !self.body.is_empty() || self.method == "POST" {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        if self.chunked {
            for piece in self.body.chunks(1000) {
                bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                bytes.extend_from_slice(piece);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        } else {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// A parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses one response from the front of `data`; returns it and the bytes it used, or `None`
/// when `data` does not yet hold a whole response.
fn parse_reply(data: &[u8]) -> Option<(Reply, usize)> {
    let head_end = data.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&data[..head_end]);
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    if data.len() < head_end + len {
        return None;
    }
    let body = data[head_end..head_end + len].to_vec();
    Some((
        Reply {
            status,
            headers,
            body,
        },
        head_end + len,
    ))
}

/// Sends raw bytes on a new connection and reads the response (the server closes after it).
fn send(port: u16, bytes: &[u8]) -> Reply {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may answer (413) and close before taking the whole body.
    let _ = c.write_all(bytes);
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some((r, _)) = parse_reply(&data) {
            return r;
        }
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "reading the response: {e}; got {:?}",
                String::from_utf8_lossy(&data)
            ),
        }
    }
    parse_reply(&data)
        .unwrap_or_else(|| panic!("no whole response in {:?}", String::from_utf8_lossy(&data)))
        .0
}

fn msgpack_of(v: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    sluice::msgpack::write_from_json(v, &mut out);
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
fn every_content_type_reaches_stdout() {
    let s = Sluice::start("");
    let cases: Vec<(Req, Vec<&str>)> = vec![
        (
            Req::post(
                "/app/web?time=1293974055",
                "application/json",
                r#"{"k":"json-object"}"#,
            ),
            vec![r#"2011-01-02 13:14:15.000000000 +0000 app.web: {"k":"json-object"}"#],
        ),
        (
            Req::post(
                "/arr",
                "application/json; charset=utf-8",
                r#"[{"k":"arr-1","time":1293974056},{"k":"arr-2","time":1293974057.5}]"#,
            ),
            vec![
                r#"2011-01-02 13:14:16.000000000 +0000 arr: {"k":"arr-1"}"#,
                r#"2011-01-02 13:14:17.500000000 +0000 arr: {"k":"arr-2"}"#,
            ],
        ),
        (
            Req::post(
                "/nd?time=1293974058",
                "application/x-ndjson",
                "{\"k\":\"nd-1\"}\n\n{\"k\":\"nd-2\"}\n",
            ),
            vec![
                r#"2011-01-02 13:14:18.000000000 +0000 nd: {"k":"nd-1"}"#,
                r#"2011-01-02 13:14:18.000000000 +0000 nd: {"k":"nd-2"}"#,
            ],
        ),
        (
            Req::post(
                "/mp",
                "application/msgpack",
                msgpack_of(&serde_json::json!({"k": "mp-map", "time": 1293974059, "n": [1, 2.5]})),
            ),
            vec![r#"2011-01-02 13:14:19.000000000 +0000 mp: {"k":"mp-map","n":[1,2.5]}"#],
        ),
        (
            Req::post(
                "/xmp?time=1293974060",
                "application/x-msgpack",
                msgpack_of(&serde_json::json!([{"k": "xmp-1"}, {"k": "xmp-2"}])),
            ),
            vec![
                r#"2011-01-02 13:14:20.000000000 +0000 xmp: {"k":"xmp-1"}"#,
                r#"2011-01-02 13:14:20.000000000 +0000 xmp: {"k":"xmp-2"}"#,
            ],
        ),
        (
            Req::post(
                "/form",
                "application/x-www-form-urlencoded",
                format!(
                    "json={}&time=1293974061.25",
                    urlencode(br#"{"k":"form json"}"#)
                ),
            ),
            vec![r#"2011-01-02 13:14:21.250000000 +0000 form: {"k":"form json"}"#],
        ),
        (
            Req::post(
                "/formmp",
                "application/x-www-form-urlencoded",
                format!(
                    "msgpack={}&time=1293974062",
                    urlencode(&msgpack_of(&serde_json::json!({"k": "form-mp"})))
                ),
            ),
            vec![r#"2011-01-02 13:14:22.000000000 +0000 formmp: {"k":"form-mp"}"#],
        ),
        (
            Req::post(
                &format!(
                    "/query?json={}&time=1293974063",
                    urlencode(br#"{"k":"in-query"}"#)
                ),
                "text/plain",
                "",
            ),
            vec![r#"2011-01-02 13:14:23.000000000 +0000 query: {"k":"in-query"}"#],
        ),
    ];
    for (req, lines) in &cases {
        let r = s.request(req);
        assert_eq!(r.status, 200, "{} {}: {}", req.method, req.target, r.text());
        assert_eq!(r.header("content-type"), Some("text/plain"));
        for l in lines {
            s.expect_line(l);
        }
    }
    // Nothing else was printed.
    let want: usize = cases.iter().map(|(_, l)| l.len()).sum();
    assert_eq!(s.stdout().len(), want, "{:#?}", s.stdout());
}

#[test]
fn bad_bodies_get_400_and_harm_nothing_else() {
    let s = Sluice::start("");
    let bad: Vec<(Req, &str)> = vec![
        (
            Req::post("/bad", "application/json", "{\"a\":"),
            "invalid JSON",
        ),
        (
            Req::post("/bad", "application/json", "[1,2]"),
            "not an object",
        ),
        (
            Req::post("/bad", "application/json", "\"str\""),
            "not a string",
        ),
        (
            Req::post(
                "/bad",
                "application/json",
                r#"[{"ok":1},{"time":"yesterday"}]"#,
            ),
            "invalid time field 'time'",
        ),
        (
            Req::post("/bad", "application/x-ndjson", "{}\nnope\n"),
            "ndjson line 2",
        ),
        (
            Req::post("/bad", "application/msgpack", vec![0x92, 0x01]),
            "invalid MessagePack",
        ),
        (
            Req::post("/bad", "application/msgpack", vec![0x07]),
            "not an integer",
        ),
        (
            Req::post("/bad", "text/plain", "{}"),
            "'json', 'ndjson' or 'msgpack' parameter is required",
        ),
        (
            Req::post("/bad", "application/json", "{}").header("Content-Encoding", "gzip"),
            "fails to decode payload",
        ),
    ];
    for (req, why) in &bad {
        let r = s.request(req);
        assert_eq!(
            r.status,
            400,
            "{:?}: {}",
            String::from_utf8_lossy(&req.body),
            r.text()
        );
        assert!(r.text().starts_with("400 Bad Request\n"), "{}", r.text());
        assert!(r.text().contains(why), "wanted {why:?} in {}", r.text());
    }
    // A client speaking nonsense loses only its own connection.
    let mut junk = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    junk.write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .unwrap();
    let r = s.request(&Req::post(
        "/good",
        "application/json",
        r#"{"still":"fine"}"#,
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    s.expect_line(r#"good: {"still":"fine"}"#);
    // The partial first record of the refused array was not emitted either.
    assert_eq!(s.stdout().len(), 1, "{:#?}", s.stdout());
}

#[test]
fn oversized_bodies_get_413() {
    let s = Sluice::start("  body_size_limit 1k");
    let big = format!(r#"{{"k":"{}"}}"#, "x".repeat(2000));
    let r = s.request(&Req::post("/big", "application/json", big.clone()));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    // Without Content-Length (chunked) it is caught while reading.
    let mut chunked = Req::post("/big", "application/json", big);
    chunked.chunked = true;
    let r = s.request(&chunked);
    assert_eq!(r.status, 413, "{}", r.text());
    // Exactly at the limit is fine.
    let at = format!(r#"{{"k":"{}"}}"#, "y".repeat(1024 - 8));
    assert_eq!(at.len(), 1024);
    let r = s.request(&Req::post("/at?time=1293974055", "application/json", at));
    assert_eq!(r.status, 200, "{}", r.text());
    s.expect_line(&format!(r#"at: {{"k":"{}"}}"#, "y".repeat(1016)));
    // Expect: 100-continue with a too large declared size.
    let r = s.request(
        &Req::post("/big", "application/json", "x".repeat(1500)).header("Expect", "100-continue"),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(s.stdout().len(), 1, "{:#?}", s.stdout());
}

#[test]
fn full_buffer_answers_503_with_retry_after() {
    let s = Sluice::start_with(
        "",
        "  @type stdout\n  <buffer>\n    total_limit_size 1\n  </buffer>\n",
    );
    let r = s.request(&Req::post("/full", "application/json", r#"{"a":1}"#));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(
        r.text().contains("buffer space has too many data"),
        "{}",
        r.text()
    );
    // An empty request needs no buffer space: still a success.
    let r = s.request(&Req::post("/full", "application/json", "[]"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(s.stdout().is_empty(), "{:#?}", s.stdout());
}

#[test]
fn response_options_and_health_check() {
    let s = Sluice::start("  use_204_response true");
    let r = s.request(&Req::post("/x", "application/json", "{}"));
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    let get = Req {
        method: "GET",
        target: "/".into(),
        headers: Vec::new(),
        body: Vec::new(),
        chunked: false,
    };
    let r = s.request(&get);
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    drop(s);

    let s = Sluice::start("  respond_with_empty_img true");
    let r = s.request(&Req::post("/x", "application/json", "{}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/gif; charset=utf-8"));
    assert!(r.body.starts_with(b"GIF89a"), "{:?}", r.body);
    assert_eq!(r.body.len(), 35);
}

#[test]
fn added_fields_tag_prefix_and_gzip() {
    let s = Sluice::start(
        "  add_http_headers true\n  add_remote_addr true\n  add_query_params true\n  add_tag_prefix pre",
    );
    let r = s.request(
        &Req::post("/t?time=1293974055&q-x=v", "application/json", r#"{"a":1}"#)
            .header("X-Custom", "hello"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let line = s.expect_containing(" pre.t: ");
    assert!(
        line.starts_with("2011-01-02 13:14:15.000000000 +0000 pre.t: {\"a\":1,"),
        "{line}"
    );
    assert!(line.contains(r#""HTTP_X_CUSTOM":"hello""#), "{line}");
    assert!(line.contains(r#""HTTP_HOST":"localhost""#), "{line}");
    assert!(
        line.contains(r#""QUERY_TIME":"1293974055","QUERY_Q_X":"v""#),
        "{line}"
    );
    assert!(line.ends_with(r#""REMOTE_ADDR":"127.0.0.1"}"#), "{line}");
    // X-Forwarded-For names the client.
    let r = s.request(
        &Req::post("/xff", "application/json", r#"{"b":2}"#)
            .header("X-Forwarded-For", "10.1.2.3, 127.0.0.1"),
    );
    assert_eq!(r.status, 200);
    let line = s.expect_containing(" pre.xff: ");
    assert!(line.ends_with(r#""REMOTE_ADDR":"10.1.2.3"}"#), "{line}");

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(br#"[{"z":"gzipped","time":1293974055}]"#)
        .unwrap();
    let r = s.request(
        &Req::post("/gz", "application/json", gz.finish().unwrap())
            .header("Content-Encoding", "gzip"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let line = s.expect_containing(" pre.gz: ");
    assert!(
        line.starts_with("2011-01-02 13:14:15.000000000 +0000 pre.gz: {\"z\":\"gzipped\","),
        "{line}"
    );
}

#[test]
fn cors_preflight_and_refusal() {
    let s = Sluice::start("  cors_allow_origins [\"http://*.example.com\"]");
    let pre = Req {
        method: "OPTIONS",
        target: "/x".into(),
        headers: vec![
            ("Origin".into(), "http://www.example.com".into()),
            ("Access-Control-Request-Method".into(), "POST".into()),
            (
                "Access-Control-Request-Headers".into(),
                "Content-Type".into(),
            ),
        ],
        body: Vec::new(),
        chunked: false,
    };
    let r = s.request(&pre);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://www.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type")
    );
    let r = s.request(
        &Req::post("/c?time=1293974055", "application/json", r#"{"c":1}"#)
            .header("Origin", "http://api.example.com"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://api.example.com")
    );
    s.expect_line(r#"c: {"c":1}"#);
    let r = s.request(
        &Req::post("/c", "application/json", r#"{"c":2}"#).header("Origin", "http://evil.org"),
    );
    assert_eq!(r.status, 403);
    // Server-to-server requests (no Origin) pass.
    let r = s.request(&Req::post("/c", "application/json", r#"{"c":3}"#));
    assert_eq!(r.status, 200);
    s.expect_line(r#"c: {"c":3}"#);
    assert_eq!(s.stdout().len(), 2, "{:#?}", s.stdout());
}

#[test]
fn keep_alive_connection_serves_many_requests() {
    let s = Sluice::start("");
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut pending = Vec::new();
    for i in 0..20 {
        let body = format!(r#"{{"seq":{i}}}"#);
        let req = format!(
            "POST /ka?time=1293974055 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        c.write_all(req.as_bytes()).unwrap();
        let reply = loop {
            if let Some((r, used)) = parse_reply(&pending) {
                pending.drain(..used);
                break r;
            }
            let mut buf = [0u8; 4096];
            let n = c.read(&mut buf).expect("a response in time");
            assert!(n > 0, "connection closed after {i} requests");
            pending.extend_from_slice(&buf[..n]);
        };
        assert_eq!(reply.status, 200);
    }
    for i in 0..20 {
        s.expect_line(&format!(r#"ka: {{"seq":{i}}}"#));
    }
}

#[test]
fn file_buffer_acknowledges_after_sync_and_delivers() {
    let buf = tempfile::tempdir().unwrap();
    let s = Sluice::start_with(
        "",
        &format!(
            "  @type stdout\n  <buffer>\n    @type file\n    path {}\n    flush_mode interval\n    flush_interval 1s\n  </buffer>\n",
            buf.path().join("b").display()
        ),
    );
    for i in 0..5 {
        let r = s.request(&Req::post(
            "/durable?time=1293974055",
            "application/json",
            format!(r#"[{{"n":{i},"m":"a"}},{{"n":{i},"m":"b"}}]"#),
        ));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for i in 0..5 {
        s.expect_line(&format!(r#"durable: {{"n":{i},"m":"a"}}"#));
        s.expect_line(&format!(r#"durable: {{"n":{i},"m":"b"}}"#));
    }
}

#[test]
fn stops_promptly_with_idle_keep_alive_connections() {
    let mut s = Sluice::start("");
    let mut c = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = r#"{"k":"before-stop"}"#;
    let req = format!(
        "POST /stop?time=1293974055 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    c.write_all(req.as_bytes()).unwrap();
    let mut data = Vec::new();
    while parse_reply(&data).is_none() {
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0);
        data.extend_from_slice(&buf[..n]);
    }
    assert_eq!(parse_reply(&data).unwrap().0.status, 200);
    // The connection stays open and idle while sluice is asked to stop.
    let started = std::time::Instant::now();
    let ok = Command::new("kill")
        .arg("-TERM")
        .arg(s.child.id().to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut status = None;
    wait_until(Duration::from_secs(8), || {
        status = s.child.try_wait().unwrap();
        status.is_some()
    });
    let status =
        status.unwrap_or_else(|| panic!("sluice did not stop: {:?}", s.err.lock().unwrap()));
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    s.expect_line(r#"stop: {"k":"before-stop"}"#);
    // The idle connection was closed by the server.
    let mut buf = [0u8; 16];
    assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
}
