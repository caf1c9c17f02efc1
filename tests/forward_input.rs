//! End to end: the real `sluice` binary with `<source> @type forward` and `<match **> @type
//! stdout`, fed by a Rust test client over TCP (every mode, acks, the shared-key handshake,
//! TLS, the UDP heartbeat, and a misbehaving client next to a good one). Every event sent must
//! appear on sluice's stdout.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

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
                Ok(line) => l.lock().unwrap().push(line),
                Err(_) => break,
            }
        }
    });
    lines
}

impl Sluice {
    /// Starts sluice with a forward source (plus `extra` inside `<source>`).
    fn start(extra: &str) -> Sluice {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_forward_port();
        let conf = format!(
            "<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n{extra}\n</source>\n\
             <match **>\n  @type stdout\n</match>\n"
        );
        let path = dir.path().join("sluice.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = Command::new(BIN)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sluice");
        let out = collect(child.stdout.take().unwrap());
        let err = collect(child.stderr.take().unwrap());
        let s = Sluice {
            child,
            port,
            out,
            err,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                panic!("sluice did not listen: {:?}", s.err.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn connect(&self) -> TcpStream {
        let c = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    /// Waits until stdout holds every id, each once.
    fn expect_ids(&self, ids: &[String]) {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let counts = {
                let out = self.out.lock().unwrap();
                let mut counts = std::collections::HashMap::<String, usize>::new();
                for l in out.iter() {
                    if let Some(id) = id_of(l) {
                        *counts.entry(id.to_string()).or_default() += 1;
                    }
                }
                counts
            };
            let missing: Vec<_> = ids
                .iter()
                .filter(|id| counts.get(id.as_str()) != Some(&1))
                .collect();
            if missing.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} ids missing or duplicated on stdout, e.g. {:?}\nstderr: {:#?}",
                    missing.len(),
                    &missing[..missing.len().min(10)],
                    self.err.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_contains(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if self.err.lock().unwrap().iter().any(|l| l.contains(text)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `id` field of a stdout line.
fn id_of(line: &str) -> Option<&str> {
    let start = line.find("\"id\":\"")? + 6;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

// ---- encoding -------------------------------------------------------------------------

fn event_time(out: &mut Vec<u8>, sec: u32, nsec: u32) {
    out.extend_from_slice(&[0xd7, 0x00]);
    out.extend_from_slice(&sec.to_be_bytes());
    out.extend_from_slice(&nsec.to_be_bytes());
}

fn record(out: &mut Vec<u8>, id: &str) {
    rmp::encode::write_map_len(out, 2).unwrap();
    rmp::encode::write_str(out, "id").unwrap();
    rmp::encode::write_str(out, id).unwrap();
    rmp::encode::write_str(out, "msg").unwrap();
    rmp::encode::write_str(out, "hello \"world\"").unwrap();
}

/// A msgpack stream of `[time, record]` entries with ids `{prefix}-{i}`.
fn entries(prefix: &str, n: usize) -> (Vec<u8>, Vec<String>) {
    let mut out = Vec::new();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        out.push(0x92);
        event_time(&mut out, 1_700_000_000 + i as u32, 123);
        record(&mut out, &id);
        ids.push(id);
    }
    (out, ids)
}

fn option(out: &mut Vec<u8>, chunk: Option<&str>, size: usize, gzip: bool) {
    let n = 1 + chunk.is_some() as u32 + gzip as u32;
    rmp::encode::write_map_len(out, n).unwrap();
    rmp::encode::write_str(out, "size").unwrap();
    rmp::encode::write_uint(out, size as u64).unwrap();
    if let Some(c) = chunk {
        rmp::encode::write_str(out, "chunk").unwrap();
        rmp::encode::write_str(out, c).unwrap();
    }
    if gzip {
        rmp::encode::write_str(out, "compressed").unwrap();
        rmp::encode::write_str(out, "gzip").unwrap();
    }
}

fn packed(tag: &str, payload: &[u8], n: usize, chunk: Option<&str>, gzip: bool) -> Vec<u8> {
    let mut f = Vec::new();
    rmp::encode::write_array_len(&mut f, 3).unwrap();
    rmp::encode::write_str(&mut f, tag).unwrap();
    rmp::encode::write_bin(&mut f, payload).unwrap();
    option(&mut f, chunk, n, gzip);
    f
}

fn gzip_members(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(p).unwrap();
        out.extend_from_slice(&e.finish().unwrap());
    }
    out
}

/// Reads one MessagePack value from the stream.
fn read_value(c: &mut impl Read) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    loop {
        if !buf.is_empty() && sluice::msgpack::skip(&buf, 0).is_ok() {
            return buf;
        }
        let n = c.read(&mut b).expect("response in time");
        assert!(n == 1, "connection closed while waiting for a response");
        buf.push(b[0]);
    }
}

fn json(v: &[u8]) -> serde_json::Value {
    sluice::msgpack::to_json_value(v).unwrap()
}

fn ack_of(c: &mut impl Read) -> String {
    let v = json(&read_value(c));
    v["ack"].as_str().expect("an ack").to_string()
}

// ---- tests ----------------------------------------------------------------------------

#[test]
fn packed_forward_with_and_without_ack() {
    let s = Sluice::start("");
    let mut c = s.connect();
    let (p1, mut ids) = entries("packed-ack", 200);
    c.write_all(&packed("test.packed", &p1, 200, Some("chunk-1"), false))
        .unwrap();
    assert_eq!(ack_of(&mut c), "chunk-1");
    let (p2, ids2) = entries("packed-noack", 50);
    c.write_all(&packed("test.packed", &p2, 50, None, false))
        .unwrap();
    ids.extend(ids2);
    // A second frame with ack on the same connection proves the first without one was read.
    let (p3, ids3) = entries("packed-ack2", 3);
    c.write_all(&packed("test.packed", &p3, 3, Some("chunk-2"), false))
        .unwrap();
    assert_eq!(ack_of(&mut c), "chunk-2");
    ids.extend(ids3);
    s.expect_ids(&ids);
    assert!(s
        .out
        .lock()
        .unwrap()
        .iter()
        .any(|l| l
            .contains(" test.packed: {\"id\":\"packed-ack-0\",\"msg\":\"hello \\\"world\\\"\"}")));
}

#[test]
fn compressed_packed_forward_with_ack() {
    let s = Sluice::start("");
    let mut c = s.connect();
    let (a, mut ids) = entries("gz-a", 100);
    let (b, ids_b) = entries("gz-b", 100);
    ids.extend(ids_b);
    let gz = gzip_members(&[&a, &b]);
    c.write_all(&packed("test.gzip", &gz, 200, Some("gz-chunk"), true))
        .unwrap();
    assert_eq!(ack_of(&mut c), "gz-chunk");
    // A large frame (several MiB expanded) with ack.
    let (big, ids_big) = entries("gz-big", 40_000);
    assert!(big.len() > 1 << 20);
    c.write_all(&packed(
        "test.gzip",
        &gzip_members(&[&big]),
        40_000,
        Some("big"),
        true,
    ))
    .unwrap();
    assert_eq!(ack_of(&mut c), "big");
    ids.extend(ids_big);
    // A large uncompressed frame too.
    let (big, ids_big) = entries("plain-big", 40_000);
    c.write_all(&packed("test.gzip", &big, 40_000, Some("big-plain"), false))
        .unwrap();
    assert_eq!(ack_of(&mut c), "big-plain");
    ids.extend(ids_big);
    // And without ack.
    let (d, ids_d) = entries("gz-noack", 10);
    c.write_all(&packed("test.gzip", &gzip_members(&[&d]), 10, None, true))
        .unwrap();
    ids.extend(ids_d);
    s.expect_ids(&ids);
}

#[test]
fn message_and_forward_modes() {
    let s = Sluice::start("");
    let mut c = s.connect();
    let mut ids = Vec::new();
    let mut buf = Vec::new();
    // Message mode: EventTime, integer and float times; the last one asks for an ack.
    for (i, time) in ["ext", "int", "float"].iter().enumerate() {
        let id = format!("message-{time}");
        let with_ack = i == 2;
        rmp::encode::write_array_len(&mut buf, if with_ack { 4 } else { 3 }).unwrap();
        rmp::encode::write_str(&mut buf, "test.message").unwrap();
        match *time {
            "ext" => event_time(&mut buf, 1_700_000_000, 5),
            "int" => {
                rmp::encode::write_uint(&mut buf, 1_700_000_000).unwrap();
            }
            _ => rmp::encode::write_f64(&mut buf, 1_700_000_000.5).unwrap(),
        }
        record(&mut buf, &id);
        if with_ack {
            option(&mut buf, Some("msg-chunk"), 1, false);
        }
        ids.push(id);
    }
    // Forward mode.
    rmp::encode::write_array_len(&mut buf, 3).unwrap();
    rmp::encode::write_str(&mut buf, "test.forward").unwrap();
    rmp::encode::write_array_len(&mut buf, 20).unwrap();
    for i in 0..20 {
        let id = format!("forward-{i}");
        rmp::encode::write_array_len(&mut buf, 2).unwrap();
        event_time(&mut buf, 1_700_000_000, i);
        record(&mut buf, &id);
        ids.push(id);
    }
    option(&mut buf, Some("fwd-chunk"), 20, false);
    // All frames in one write: the server must split them itself.
    c.write_all(&buf).unwrap();
    assert_eq!(ack_of(&mut c), "msg-chunk");
    assert_eq!(ack_of(&mut c), "fwd-chunk");
    s.expect_ids(&ids);
    let out = s.out.lock().unwrap().clone();
    assert!(out
        .iter()
        .any(|l| l.contains(".500000000 ") && l.contains("message-float")));
}

#[test]
fn many_small_writes_and_many_connections() {
    let s = Sluice::start("");
    let mut ids = Vec::new();
    let mut conns = Vec::new();
    for k in 0..8 {
        let mut c = s.connect();
        let (p, i) = entries(&format!("conn{k}"), 30);
        let frame = packed("test.many", &p, 30, Some(&format!("c{k}")), false);
        // Dribble the frame a few bytes at a time.
        for piece in frame.chunks(97) {
            c.write_all(piece).unwrap();
        }
        ids.extend(i);
        conns.push((k, c));
    }
    for (k, mut c) in conns {
        assert_eq!(ack_of(&mut c), format!("c{k}"));
    }
    s.expect_ids(&ids);
}

#[test]
fn bad_client_closes_only_its_connection() {
    let s = Sluice::start("chunk_size_limit 64k");
    let mut good = s.connect();
    let mut bad = s.connect();
    bad.write_all(&[0x93, 0xa3, b'b', b'a', b'd', 0xc1, 0xff])
        .unwrap();
    let mut b = [0u8; 8];
    assert!(
        matches!(bad.read(&mut b), Ok(0) | Err(_)),
        "bad connection closed"
    );
    // Oversized frame: declared 1 MiB binary against a 64 KiB limit.
    let mut big = s.connect();
    let mut hdr = vec![0x92, 0xa1, b't', 0xc6];
    hdr.extend_from_slice(&(1u32 << 20).to_be_bytes());
    big.write_all(&hdr).unwrap();
    assert!(
        matches!(big.read(&mut b), Ok(0) | Err(_)),
        "oversized frame closed"
    );
    assert!(s.stderr_contains("chunk_size_limit"));
    assert!(s.stderr_contains("malformed MessagePack"));
    let (p, ids) = entries("survivor", 5);
    good.write_all(&packed("test.good", &p, 5, Some("still-here"), false))
        .unwrap();
    assert_eq!(ack_of(&mut good), "still-here");
    s.expect_ids(&ids);
}

#[test]
fn udp_heartbeat_is_answered() {
    let s = Sluice::start("");
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 8];
    let mut answered = false;
    for _ in 0..5 {
        u.send_to(&[0], ("127.0.0.1", s.port)).unwrap();
        if let Ok((n, _)) = u.recv_from(&mut b) {
            assert_eq!(&b[..n], &[0]);
            answered = true;
            break;
        }
    }
    assert!(answered, "no heartbeat reply");
}

fn sha512_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha512::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads HELO and answers PING; returns the PONG.
fn handshake(c: &mut TcpStream, key: &str, user: Option<(&str, &str)>) -> serde_json::Value {
    let helo = read_value(c);
    let opts = sluice::msgpack::array_get(&helo, 1).unwrap().unwrap();
    assert_eq!(
        sluice::msgpack::as_str(sluice::msgpack::array_get(&helo, 0).unwrap().unwrap(), 0),
        Some("HELO")
    );
    let nonce =
        sluice::msgpack::as_bytes(sluice::msgpack::map_get(opts, "nonce").unwrap().unwrap(), 0)
            .unwrap()
            .to_vec();
    let auth =
        sluice::msgpack::as_bytes(sluice::msgpack::map_get(opts, "auth").unwrap().unwrap(), 0)
            .unwrap()
            .to_vec();
    let salt = b"0123456789abcdef";
    let digest = sha512_hex(&[salt, b"test-client", &nonce, key.as_bytes()]);
    let (uname, pdigest) = match user {
        Some((u, p)) => (
            u.to_string(),
            sha512_hex(&[&auth, u.as_bytes(), p.as_bytes()]),
        ),
        None => (String::new(), String::new()),
    };
    let mut ping = Vec::new();
    rmp::encode::write_array_len(&mut ping, 6).unwrap();
    rmp::encode::write_str(&mut ping, "PING").unwrap();
    rmp::encode::write_str(&mut ping, "test-client").unwrap();
    rmp::encode::write_bin(&mut ping, salt).unwrap();
    rmp::encode::write_str(&mut ping, &digest).unwrap();
    rmp::encode::write_str(&mut ping, &uname).unwrap();
    rmp::encode::write_str(&mut ping, &pdigest).unwrap();
    c.write_all(&ping).unwrap();
    let pong = json(&read_value(c));
    if pong[1] == true {
        // The server proves it knows the key too.
        let want = sha512_hex(&[salt, b"sluice-server", &nonce, key.as_bytes()]);
        assert_eq!(pong[4], want.as_str());
        assert_eq!(pong[3], "sluice-server");
    }
    pong
}

#[test]
fn shared_key_handshake() {
    let s = Sluice::start(
        "  <security>\n    self_hostname sluice-server\n    shared_key hunter2\n    user_auth true\n\
         <user>\n      username alice\n      password wonderland\n    </user>\n  </security>",
    );
    let mut c = s.connect();
    let pong = handshake(&mut c, "hunter2", Some(("alice", "wonderland")));
    assert_eq!(pong[1], true, "{pong}");
    let (p, ids) = entries("secure", 10);
    c.write_all(&packed("test.secure", &p, 10, Some("sec-1"), false))
        .unwrap();
    assert_eq!(ack_of(&mut c), "sec-1");
    s.expect_ids(&ids);

    let mut bad = s.connect();
    let pong = handshake(&mut bad, "wrong-key", Some(("alice", "wonderland")));
    assert_eq!(pong[1], false);
    assert_eq!(pong[2], "shared_key mismatch");
    let mut b = [0u8; 8];
    assert!(matches!(bad.read(&mut b), Ok(0) | Err(_)));

    let mut bad = s.connect();
    let pong = handshake(&mut bad, "hunter2", Some(("alice", "nope")));
    assert_eq!(pong[2], "username/password mismatch");
}

#[test]
fn tls_transport() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let cert_path = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let s = Sluice::start(&format!(
        "  <transport tls>\n    cert_path {}\n    private_key_path {}\n  </transport>",
        cert_path.display(),
        key_path.display()
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, s.connect());
    let (p, ids) = entries("tls", 25);
    tls.write_all(&packed("test.tls", &p, 25, Some("tls-chunk"), false))
        .unwrap();
    tls.flush().unwrap();
    assert_eq!(ack_of(&mut tls), "tls-chunk");
    s.expect_ids(&ids);

    // A plain-text client on the TLS port is refused without harm.
    let mut plain = s.connect();
    let (p, _) = entries("plain", 1);
    let _ = plain.write_all(&packed("test.tls", &p, 1, Some("x"), false));
    let mut b = [0u8; 8];
    let r = plain.read(&mut b);
    assert!(
        !matches!(r, Ok(n) if n > 0 && b[0] == 0x81),
        "no ack over plain text"
    );
    assert!(s.stderr_contains("TLS handshake failed"));
}

/// A port already in use stops start-up with exit code 1 and a message naming the input and
/// the address, as Fluentd fails to start (the forward, http and prometheus inputs alike).
#[test]
fn a_port_in_use_stops_start_up() {
    let d = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    for kind in ["forward", "http", "prometheus"] {
        let conf = common::write(
            d.path(),
            &format!("{kind}.conf"),
            &format!(
                "<source>\n  @type {kind}\n  bind 127.0.0.1\n  port {port}\n</source>\n<match **>\n  @type null\n</match>\n"
            ),
        );
        let mut daemon = common::Daemon::start(&conf, &[]);
        let code = daemon.exit_code_within(Duration::from_secs(10));
        let stderr = daemon.stderr();
        assert_eq!(code, Some(1), "{kind}: exit code\n{stderr}");
        let want = format!("{kind} input cannot listen on 127.0.0.1:{port}");
        assert!(stderr.contains(&want), "{kind}: no {want:?} in\n{stderr}");
    }
    drop(taken);
}
