//! Forward-protocol load generator for sluice benchmarks (`bench/run.sh` drives it).
//!
//! Sends PackedForward frames (`--gzip`: CompressedPackedForward) of `--events` web-access-log
//! events (`bench/corpus.rs`, seeded, about 350 bytes each) over `--connections` TCP connections
//! to a loopback address, for `--duration` seconds after `--warmup` seconds. With acks (the
//! default) every frame carries a `chunk` id and each connection waits for `{"ack": id}` before
//! sending its next frame; `--no-ack` streams frames and ends each connection with one acked
//! fence frame, so everything counted was processed. `--rate` caps events/s (all connections).
//!
//! `--http` sends the same events to an `http` input instead: keep-alive `POST /<tag>` requests
//! whose body is a MessagePack array of the records (`--gzip`: gzip-encoded) and whose `?time=`
//! gives the events' time (the corpus records carry a `time` text field of their own), each
//! waiting for its 2xx response (sluice answers once the events are stored), which counts as
//! the ack.
//!
//! Prints events/s, MiB/s, ack latency percentiles and, with `--pid`, the CPU seconds per GiB
//! and peak RSS (VmHWM) of that process, read from `/proc`.
//!
//! ```sh
//! cargo run --release --example loadgen -- --port 24224 --connections 2 --events 2000 \
//!     --duration 20 --pid "$(pgrep -n sluice)"
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../bench/corpus.rs"]
mod corpus;

const USAGE: &str =
    "usage: loadgen [--host 127.0.0.1] [--port 24224] [--connections 2] [--events 2000]
               [--duration 20] [--warmup 2] [--rate EVENTS_PER_S] [--ack | --no-ack] [--gzip]
               [--tag bench.access] [--seed 42] [--frames 16] [--pid PID] [--http]";
/// Longest run accepted (the loop is bounded in time whatever is asked).
const MAX_SECONDS: f64 = 3600.0;
/// How long a connection waits for one ack before giving up.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
struct Opts {
    addr: SocketAddr,
    connections: usize,
    events: usize,
    duration: f64,
    warmup: f64,
    rate: Option<f64>,
    ack: bool,
    gzip: bool,
    tag: String,
    seed: u64,
    frames: usize,
    pid: Option<u32>,
    http: bool,
}

fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: invalid value {v:?}"))
}

fn parse_args() -> Result<Opts, String> {
    let mut host: IpAddr = [127, 0, 0, 1].into();
    let mut o = Opts {
        addr: SocketAddr::from(([127, 0, 0, 1], 24224)),
        connections: 2,
        events: 2000,
        duration: 20.0,
        warmup: 2.0,
        rate: None,
        ack: true,
        gzip: false,
        tag: "bench.access".into(),
        seed: 42,
        frames: 16,
        pid: None,
        http: false,
    };
    let mut port = 24224u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--host" => host = num("--host", val("--host")?)?,
            "--port" => port = num("--port", val("--port")?)?,
            "--connections" | "-c" => o.connections = num(&a, val(&a)?)?,
            "--events" | "-n" => o.events = num(&a, val(&a)?)?,
            "--duration" | "-d" => o.duration = num(&a, val(&a)?)?,
            "--warmup" => o.warmup = num(&a, val(&a)?)?,
            "--rate" => o.rate = Some(num(&a, val(&a)?)?),
            "--ack" => o.ack = true,
            "--no-ack" => o.ack = false,
            "--gzip" => o.gzip = true,
            "--tag" => o.tag = val(&a)?,
            "--seed" => o.seed = num(&a, val(&a)?)?,
            "--frames" => o.frames = num(&a, val(&a)?)?,
            "--pid" => o.pid = Some(num(&a, val(&a)?)?),
            "--http" => o.http = true,
            // `cargo bench`/`cargo run` may pass this through; nothing to do.
            "--bench" => {}
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if !host.is_loopback() {
        return Err(format!(
            "--host {host}: the load generator only sends to loopback addresses"
        ));
    }
    o.addr = SocketAddr::new(host, port);
    if o.connections == 0 || o.connections > 256 {
        return Err("--connections must be 1..=256".into());
    }
    if o.events == 0 || o.events > 1_000_000 {
        return Err("--events must be 1..=1000000".into());
    }
    if !(o.duration > 0.0 && o.duration + o.warmup <= MAX_SECONDS && o.warmup >= 0.0) {
        return Err(format!(
            "--duration must be > 0 and duration + warmup <= {MAX_SECONDS} s"
        ));
    }
    if o.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err("--rate must be positive".into());
    }
    if o.http && !o.ack {
        return Err("--http: every request waits for its response; --no-ack does not apply".into());
    }
    o.frames = o.frames.clamp(1, 1024);
    Ok(o)
}

/// One pre-encoded frame without its option map: `[tag, bin(entries)` and the option map's
/// fixed part are written around the per-frame chunk id.
struct Frame {
    /// Array header, tag, bin header and payload.
    prefix: Vec<u8>,
    /// Uncompressed entry bytes (what the events weigh).
    data_bytes: u64,
}

fn build_frames(o: &Opts) -> Vec<Frame> {
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(1_700_000_000);
    (0..o.frames)
        .map(|k| {
            let recs = corpus::records(
                o.seed.wrapping_add(k as u64),
                o.events,
                t0,
                1_000_000_000 / o.events as u64,
            );
            let mut entries = Vec::with_capacity(o.events * 400);
            for (sec, nsec, r) in &recs {
                corpus::put_entry(&mut entries, *sec, *nsec, r);
            }
            let data_bytes = entries.len() as u64;
            if o.http {
                return http_request(o, &recs, data_bytes);
            }
            let payload = if o.gzip { gzip(&entries) } else { entries };
            // A full frame with no option; cut the option map off to keep the prefix.
            let full = corpus::packed_forward(&o.tag, &payload, o.events, None, false);
            let prefix_len = full.len() - option_len(o.events, None, false);
            Frame {
                prefix: full[..prefix_len].to_vec(),
                data_bytes,
            }
        })
        .collect()
}

/// `data` as one gzip member (default level).
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip into memory");
    enc.finish().expect("gzip into memory")
}

/// A whole `POST /<tag>` request carrying `recs` as a MessagePack array of maps.
fn http_request(o: &Opts, recs: &[(i64, u32, Vec<u8>)], data_bytes: u64) -> Frame {
    let mut body = Vec::with_capacity(data_bytes as usize + 8);
    body.push(0xdd);
    body.extend_from_slice(&(recs.len() as u32).to_be_bytes());
    for (_, _, r) in recs {
        body.extend_from_slice(r);
    }
    let (body, encoding) = if o.gzip {
        (gzip(&body), "Content-Encoding: gzip\r\n")
    } else {
        (body, "")
    };
    let mut req = format!(
        "POST /{}?time={} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/msgpack\r\n{encoding}Content-Length: {}\r\n\r\n",
        o.tag,
        recs.first().map_or(0, |r| r.0),
        o.addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    Frame {
        prefix: req,
        data_bytes,
    }
}

/// Reads one HTTP response; Ok when its status is 2xx.
fn read_http_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> Result<(), String> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or(format!("bad response: {head:?}"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while pending.len() < end + 4 + len {
                read_more(s, pending)?;
            }
            pending.drain(..end + 4 + len);
            return if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP {status}"))
            };
        }
        read_more(s, pending)?;
    }
}

fn read_more(s: &mut TcpStream, pending: &mut Vec<u8>) -> Result<(), String> {
    let mut buf = [0u8; 4096];
    let n = s
        .read(&mut buf)
        .map_err(|e| format!("waiting for the response: {e}"))?;
    if n == 0 {
        return Err("connection closed while waiting for the response".into());
    }
    pending.extend_from_slice(&buf[..n]);
    Ok(())
}

/// Bytes of the option map `packed_forward` writes.
fn option_len(size: usize, chunk: Option<&str>, gzip: bool) -> usize {
    let full = corpus::packed_forward("", &[], size, chunk, gzip);
    full.len() - 4 // 0x93, fixstr "", bin8 header (2 bytes)
}

fn option_map(size: usize, chunk: Option<&str>, gzip: bool) -> Vec<u8> {
    let full = corpus::packed_forward("", &[], size, chunk, gzip);
    full[4..].to_vec()
}

#[derive(Default)]
struct Counters {
    frames: AtomicU64,
    events: AtomicU64,
    data_bytes: AtomicU64,
    wire_bytes: AtomicU64,
}

struct Shared {
    opts: Opts,
    frames: Vec<Frame>,
    stop: AtomicBool,
    measuring: AtomicBool,
    counters: Counters,
    latencies: Mutex<Vec<u32>>,
    errors: Mutex<Vec<String>>,
}

/// Reads one MessagePack response and returns the `ack` value.
fn read_ack(s: &mut TcpStream, pending: &mut Vec<u8>) -> Result<String, String> {
    loop {
        if let Ok(end) = sluice::msgpack::skip(pending, 0) {
            let v = sluice::msgpack::to_json_value(&pending[..end])
                .map_err(|e| format!("bad response: {e}"))?;
            pending.drain(..end);
            return v["ack"]
                .as_str()
                .map(str::to_string)
                .ok_or(format!("not an ack response: {v}"));
        }
        let mut buf = [0u8; 256];
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("waiting for ack: {e}"))?;
        if n == 0 {
            return Err("connection closed while waiting for an ack".into());
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

fn connection(sh: Arc<Shared>, id: usize, deadline: Instant) -> Result<(), String> {
    let o = &sh.opts;
    let mut s = TcpStream::connect_timeout(&o.addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {}: {e}", o.addr))?;
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(ACK_TIMEOUT)).ok();
    s.set_write_timeout(Some(ACK_TIMEOUT)).ok();
    let per_conn_rate = o.rate.map(|r| r / o.connections as f64);
    let start = Instant::now();
    let mut pending = Vec::new();
    let mut lat = Vec::new();
    let mut seq: u64 = 0;
    let plain_opt = option_map(o.events, None, o.gzip);
    let c = &sh.counters;
    loop {
        let now = Instant::now();
        if sh.stop.load(Ordering::Relaxed) || now >= deadline {
            break;
        }
        if let Some(r) = per_conn_rate {
            let due = start + Duration::from_secs_f64(seq as f64 * o.events as f64 / r);
            if due > now {
                std::thread::sleep((due - now).min(deadline - now));
                continue;
            }
        }
        let f = &sh.frames[(seq as usize + id) % sh.frames.len()];
        // A forward frame ends with its option map (with the chunk id to ack); an HTTP
        // request is whole and its response is the ack.
        let chunk = format!("c{id:03}-{seq:016x}");
        let opt = match (o.http, o.ack) {
            (true, _) => Vec::new(),
            (false, true) => option_map(o.events, Some(&chunk), o.gzip),
            (false, false) => plain_opt.clone(),
        };
        let t = Instant::now();
        s.write_all(&f.prefix)
            .and_then(|_| s.write_all(&opt))
            .map_err(|e| format!("send: {e}"))?;
        if o.http {
            read_http_response(&mut s, &mut pending)?;
        } else if o.ack {
            let got = read_ack(&mut s, &mut pending)?;
            if got != chunk {
                return Err(format!("ack {got:?} for frame {chunk:?}"));
            }
        }
        if o.ack && sh.measuring.load(Ordering::Relaxed) {
            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
        seq += 1;
        c.frames.fetch_add(1, Ordering::Relaxed);
        c.events.fetch_add(o.events as u64, Ordering::Relaxed);
        c.data_bytes.fetch_add(f.data_bytes, Ordering::Relaxed);
        c.wire_bytes
            .fetch_add((f.prefix.len() + opt.len()) as u64, Ordering::Relaxed);
    }
    if !o.ack {
        // Fence: frames on a connection are processed in order, so its ack means every frame
        // sent before it was stored.
        let f = &sh.frames[0];
        let chunk = format!("c{id:03}-fence");
        s.write_all(&f.prefix)
            .and_then(|_| s.write_all(&option_map(o.events, Some(&chunk), o.gzip)))
            .map_err(|e| format!("send fence: {e}"))?;
        let got = read_ack(&mut s, &mut pending)?;
        if got != chunk {
            return Err(format!("ack {got:?} for fence {chunk:?}"));
        }
    }
    sh.latencies.lock().unwrap().extend(lat);
    Ok(())
}

/// utime + stime of a process, in seconds.
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some((utime + stime) / tck.max(1) as f64)
}

/// A `kB` field of /proc/<pid>/status, in KiB.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn self_cpu() -> f64 {
    proc_cpu(std::process::id()).unwrap_or(0.0)
}

#[derive(Debug, Clone, Copy, Default)]
struct Snap {
    at: Option<Instant>,
    frames: u64,
    events: u64,
    data: u64,
    wire: u64,
    target_cpu: Option<f64>,
    self_cpu: f64,
}

fn snap(sh: &Shared) -> Snap {
    let c = &sh.counters;
    Snap {
        at: Some(Instant::now()),
        frames: c.frames.load(Ordering::Relaxed),
        events: c.events.load(Ordering::Relaxed),
        data: c.data_bytes.load(Ordering::Relaxed),
        wire: c.wire_bytes.load(Ordering::Relaxed),
        target_cpu: sh.opts.pid.and_then(proc_cpu),
        self_cpu: self_cpu(),
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let frames = build_frames(&o);
    let avg_event =
        frames.iter().map(|f| f.data_bytes).sum::<u64>() as f64 / (frames.len() * o.events) as f64;
    let avg_wire =
        frames.iter().map(|f| f.prefix.len()).sum::<usize>() as f64 / frames.len() as f64;
    println!(
        "loadgen: {} | {} connection(s) | frames of {} events ({:.0} B/event, {:.0} KiB/frame on the wire) | {} | {} | {}{} s (+{} s warm-up)",
        o.addr,
        o.connections,
        o.events,
        avg_event,
        avg_wire / 1024.0,
        if o.http {
            "HTTP POST, 2xx per request"
        } else if o.ack {
            "ack per frame"
        } else {
            "no ack (fenced)"
        },
        if o.gzip { "gzip" } else { "uncompressed" },
        o.rate.map(|r| format!("rate {r:.0} events/s | ")).unwrap_or_default(),
        o.duration,
        o.warmup
    );
    let sh = Arc::new(Shared {
        frames,
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(false),
        counters: Counters::default(),
        latencies: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        opts: o.clone(),
    });
    let hard_deadline = Instant::now() + Duration::from_secs_f64(o.warmup + o.duration + 1.0);
    let threads: Vec<_> = (0..o.connections)
        .map(|id| {
            let sh = sh.clone();
            std::thread::spawn(move || {
                if let Err(e) = connection(sh.clone(), id, hard_deadline) {
                    sh.errors
                        .lock()
                        .unwrap()
                        .push(format!("connection {id}: {e}"));
                    sh.stop.store(true, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(o.warmup));
    let begin = snap(&sh);
    sh.measuring.store(true, Ordering::Relaxed);
    let end_at = Instant::now() + Duration::from_secs_f64(o.duration);
    while Instant::now() < end_at && !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(
            Duration::from_millis(50).min(end_at.saturating_duration_since(Instant::now())),
        );
    }
    let mut end = snap(&sh);
    sh.stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    if !o.ack {
        // Everything sent was processed only once the fences are acked.
        end = Snap {
            at: Some(Instant::now()),
            target_cpu: o.pid.and_then(proc_cpu),
            self_cpu: self_cpu(),
            ..end
        };
    }
    let errors = sh.errors.lock().unwrap().clone();
    for e in &errors {
        eprintln!("loadgen: error: {e}");
    }
    let secs = end
        .at
        .unwrap()
        .duration_since(begin.at.unwrap())
        .as_secs_f64();
    let events = end.events - begin.events;
    let data = (end.data - begin.data) as f64;
    let wire = (end.wire - begin.wire) as f64;
    let mib = 1024.0 * 1024.0;
    let eps = events as f64 / secs;
    let data_mib_s = data / mib / secs;
    println!(
        "window           {secs:.2} s, {} frames, {events} events",
        end.frames - begin.frames
    );
    println!("events/s         {eps:.0}");
    println!(
        "event data       {data_mib_s:.1} MiB/s ({:.1} MB/s)",
        data / 1e6 / secs
    );
    println!("on the wire      {:.1} MiB/s", wire / mib / secs);
    let mut lat = sh.latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let (p50, p99, pmax) = (
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
    if o.ack {
        println!(
            "ack latency      p50 {p50:.2} ms, p99 {p99:.2} ms, max {pmax:.2} ms ({} acks)",
            lat.len()
        );
    }
    let gen_cpu = end.self_cpu - begin.self_cpu;
    println!(
        "loadgen cpu      {gen_cpu:.1} s ({:.2} cores)",
        gen_cpu / secs
    );
    let mut result = format!(
        "RESULT events_per_s={eps:.0} mib_per_s={data_mib_s:.1} wire_mib_per_s={:.1} seconds={secs:.2} events={events} ack_p50_ms={p50:.3} ack_p99_ms={p99:.3} ack_max_ms={pmax:.3} loadgen_cpu_s={gen_cpu:.2} frames_total={} errors={}",
        wire / mib / secs,
        sh.counters.frames.load(Ordering::Relaxed) + if o.ack { 0 } else { o.connections as u64 },
        errors.len()
    );
    if let Some(pid) = o.pid {
        let cpu = match (begin.target_cpu, end.target_cpu) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        let gib = data / (mib * 1024.0);
        let hwm = proc_status_kib(pid, "VmHWM:").map_or(f64::NAN, |k| k as f64 / 1024.0);
        let rss = proc_status_kib(pid, "VmRSS:").map_or(f64::NAN, |k| k as f64 / 1024.0);
        println!(
            "pid {pid}         cpu {cpu:.1} s ({:.2} cores), {:.2} cpu-s/GiB of event data, peak RSS (VmHWM) {hwm:.1} MiB, RSS now {rss:.1} MiB",
            cpu / secs,
            cpu / gib
        );
        result.push_str(&format!(
            " target_cpu_s={cpu:.2} cpu_s_per_gib={:.3} peak_rss_mib={hwm:.1} rss_mib={rss:.1}",
            cpu / gib
        ));
    }
    println!("{result}");
    if !errors.is_empty() {
        std::process::exit(1);
    }
}
