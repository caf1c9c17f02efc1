//! Crash test: a client sends numbered events with acks through the forward input into a file
//! buffer and the file output, while sluice is killed with SIGKILL at random moments (at least
//! 20 times, the seed is printed) and restarted on the same buffer path. The client re-sends
//! every batch whose ack it did not get. At the end every acknowledged event must be in the
//! output exactly once — except events of batches the client re-sent after a lost ack, which
//! may appear twice (counted and printed) — and no output line may be damaged.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{files_below, free_forward_port, wait_until, Daemon, ForwardClient};

const BATCHES: u64 = 120;
const BATCH: u64 = 50;
const KILLS: u32 = 20;

/// xorshift64*: enough randomness for kill timing, reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Sends one batch and waits for its ack; any failure (killed server, closed connection,
/// timeout) is an `Err` and the batch is re-sent later.
fn send_batch(port: u16, b: u64) -> Result<(), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let events: Vec<(i64, u32, serde_json::Value)> = (0..BATCH)
        .map(|i| {
            (
                1_700_000_000,
                0,
                serde_json::json!({"n": b * BATCH + i, "pad": "x".repeat(100)}),
            )
        })
        .collect();
    let chunk = format!("batch-{b}");
    s.write_all(&ForwardClient::frame("crash.test", &events, Some(&chunk)))
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        if let Ok(end) = sluice::msgpack::skip(&got, 0) {
            let v = sluice::msgpack::to_json_value(&got[..end]).map_err(|e| e.to_string())?;
            return if v["ack"] == chunk.as_str() {
                Ok(())
            } else {
                Err(format!("unexpected response {v}"))
            };
        }
        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before the ack".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_event() {
    let seed = std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash test seed {seed} (set SLUICE_CRASH_SEED to replay)");
    let d = tempfile::tempdir().unwrap();
    let port = free_forward_port();
    let out = d.path().join("out");
    let buf = d.path().join("buf");
    let conf = common::write(
        d.path(),
        "crash.conf",
        &format!(
            "<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>\n\
             <match **>\n  @type file\n  path {}/events\n  <buffer>\n    @type file\n    path {}\n    flush_mode interval\n    flush_interval 0.3s\n    flush_thread_interval 0.1\n    retry_wait 0.2s\n  </buffer>\n</match>\n",
            out.display(),
            buf.display()
        ),
    );
    let daemon = Arc::new(Mutex::new(Some(Daemon::start_listening(&conf, &[], port))));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // The killer: SIGKILL at random moments, restart on the same buffer path.
    let killer = {
        let daemon = daemon.clone();
        let stop = stop.clone();
        let conf = conf.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut kills = 0u32;
            while kills < KILLS && !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(80 + rng.next() % 320));
                let mut slot = daemon.lock().unwrap();
                drop(slot.take()); // Drop sends SIGKILL and reaps the child.
                kills += 1;
                *slot = Some(Daemon::start_listening(&conf, &[], port));
            }
            kills
        })
    };

    let started = Instant::now();
    let mut acked: Vec<bool> = Vec::new();
    let mut attempts: Vec<u32> = Vec::new();
    let mut resent = 0u64;
    let mut b = 0u64;
    // At least BATCHES batches, and keep sending until every kill has happened.
    while b < BATCHES || !killer.is_finished() {
        if acked.len() <= b as usize {
            acked.push(false);
            attempts.push(0);
        }
        attempts[b as usize] += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "batches not acknowledged in time"
        );
        match send_batch(port, b) {
            Ok(()) => {
                acked[b as usize] = true;
                b += 1;
            }
            Err(_) => {
                resent += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let kills = killer.join().unwrap();
    assert!(kills >= KILLS, "only {kills} kills happened");

    // Flush what is buffered, then stop gracefully.
    let last = daemon.lock().unwrap().take().unwrap();
    last.signal("USR1");
    let chunk_files = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("buffer."))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(20), || chunk_files(&buf) == 0),
        "buffer not drained:\n{}",
        last.stderr()
    );
    let (code, stderr) = last.stop();
    assert_eq!(code, Some(0), "{stderr}");

    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for (name, data) in files_below(&out) {
        // A temporary file a killed process left behind is not output.
        if name
            .rsplit('/')
            .next()
            .is_some_and(|b| b.starts_with(".sluice-tmp-"))
        {
            continue;
        }
        let text = String::from_utf8(data).unwrap_or_else(|_| panic!("{name} is not UTF-8"));
        for line in text.lines() {
            let json = line
                .splitn(3, '\t')
                .nth(2)
                .unwrap_or_else(|| panic!("damaged line in {name}: {line:?}"));
            let v: serde_json::Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("damaged line in {name}: {line:?}: {e}"));
            *seen.entry(v["n"].as_u64().expect("numbered")).or_default() += 1;
        }
    }
    let mut missing = Vec::new();
    for (i, a) in acked.iter().enumerate() {
        if *a {
            for n in i as u64 * BATCH..(i as u64 + 1) * BATCH {
                if !seen.contains_key(&n) {
                    missing.push(n);
                }
            }
        }
    }
    let duplicates: u64 = seen.values().map(|c| (*c as u64).saturating_sub(1)).sum();
    // Events of batches the client sent once must be there exactly once: any duplicate of those
    // is sluice's own (a chunk written twice), not the client's re-send.
    let mut written_twice = Vec::new();
    for (i, a) in attempts.iter().enumerate() {
        if *a == 1 {
            for n in i as u64 * BATCH..(i as u64 + 1) * BATCH {
                if seen.get(&n).copied().unwrap_or(0) > 1 {
                    written_twice.push(n);
                }
            }
        }
    }
    println!(
        "crash test: {kills} kills, {} events acknowledged, {} distinct in the output, {duplicates} duplicates, {resent} batches re-sent",
        acked.iter().filter(|a| **a).count() as u64 * BATCH,
        seen.len()
    );
    assert!(
        written_twice.is_empty(),
        "events sent once but written {} times: first {:?}, seed {seed}",
        written_twice.len(),
        &written_twice[..written_twice.len().min(10)]
    );
    assert!(
        missing.is_empty(),
        "acknowledged events missing from the output: {} (first {:?}), seed {seed}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}
