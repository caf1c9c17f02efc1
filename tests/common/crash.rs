//! The kill loop shared by the crash tests: a client sends numbered batches with acks through
//! the forward input while another thread SIGKILLs sluice at random moments and restarts it on
//! the same configuration. Batches whose ack did not arrive are re-sent. The caller then reads
//! what reached the destination and checks it with [`check_exactly_once`].

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Daemon, ForwardClient};

/// xorshift64*: enough randomness for kill timing and payloads, reproducible from the seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `len` characters of a 64-letter alphabet (about 6 bits of entropy each): text that
    /// compresses about 4:3.
    pub fn text(&mut self, len: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        (0..len)
            .map(|_| A[(self.next() % 64) as usize] as char)
            .collect()
    }
}

/// The seed: `SLUICE_CRASH_SEED`, or the clock. Printed so that a failure can be replayed.
pub fn seed(test: &str) -> u64 {
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
    println!("{test}: seed {seed} (set SLUICE_CRASH_SEED to replay)");
    seed
}

/// What one crash run sends.
#[derive(Debug, Clone)]
pub struct Load {
    /// Tag of every event.
    pub tag: &'static str,
    /// At least this many batches.
    pub batches: u64,
    /// Events per batch.
    pub batch: u64,
    /// Bytes of pseudo-random hex padding per event (compresses about 2:1).
    pub pad: usize,
    /// SIGKILLs to deliver.
    pub kills: u32,
    /// Pause before each kill: `min + rand % spread` milliseconds.
    pub kill_gap_ms: (u64, u64),
    /// Give up when batches are not acknowledged within this time.
    pub deadline: Duration,
    /// How long one batch waits for its ack before it counts as refused.
    pub ack_timeout: Duration,
}

/// What the client saw.
pub struct Outcome {
    /// Per batch: acknowledged.
    pub acked: Vec<bool>,
    /// Per batch: how many times it was sent.
    pub attempts: Vec<u32>,
    /// Sends that failed (and were repeated).
    pub resent: u64,
    /// Kills delivered.
    pub kills: u32,
    /// The sluice running at the end.
    pub last: Daemon,
}

/// Event `n`'s padding: hex of a per-event pseudo-random stream.
fn pad(n: u64, len: usize) -> String {
    let mut r = Rng(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut s = String::with_capacity(len + 16);
    while s.len() < len {
        s.push_str(&format!("{:016x}", r.next()));
    }
    s.truncate(len);
    s
}

/// Sends batch `b` and waits for its ack; any failure is an `Err` and the batch is re-sent.
pub fn send_batch(port: u16, load: &Load, b: u64) -> Result<(), String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(load.ack_timeout))
        .map_err(|e| e.to_string())?;
    let events: Vec<(i64, u32, serde_json::Value)> = (0..load.batch)
        .map(|i| {
            let n = b * load.batch + i;
            (
                1_700_000_000,
                0,
                serde_json::json!({"n": n, "pad": pad(n, load.pad)}),
            )
        })
        .collect();
    let chunk = format!("batch-{b}");
    s.write_all(&ForwardClient::frame(load.tag, &events, Some(&chunk)))
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

/// Runs sluice on `conf` (listening on `port`), sends `load`, and kills it `load.kills` times.
pub fn run_with_kills(conf: &Path, port: u16, seed: u64, load: &Load) -> Outcome {
    let daemon = Arc::new(Mutex::new(Some(Daemon::start_listening(conf, &[], port))));
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let daemon = daemon.clone();
        let stop = stop.clone();
        let conf = conf.to_path_buf();
        let (min, spread) = load.kill_gap_ms;
        let kills_wanted = load.kills;
        std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut kills = 0u32;
            while kills < kills_wanted && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(min + rng.next() % spread.max(1)));
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
    // At least `batches` batches, and keep sending until every kill has happened.
    while b < load.batches || !killer.is_finished() {
        if acked.len() <= b as usize {
            acked.push(false);
            attempts.push(0);
        }
        attempts[b as usize] += 1;
        if started.elapsed() > load.deadline {
            stop.store(true, Ordering::SeqCst);
            panic!("batches not acknowledged within {:?}", load.deadline);
        }
        match send_batch(port, load, b) {
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
    stop.store(true, Ordering::SeqCst);
    let kills = killer.join().unwrap();
    let last = daemon.lock().unwrap().take().unwrap();
    Outcome {
        acked,
        attempts,
        resent,
        kills,
        last,
    }
}

/// Asserts that every acknowledged event is in `seen` (event number → copies), and that
/// events of batches sent once are there exactly once (a duplicate of those is sluice's own:
/// a chunk written twice). Returns the duplicates caused by the client's re-sends.
pub fn check_exactly_once(
    o: &Outcome,
    load: &Load,
    seen: &BTreeMap<u64, u32>,
    seed: u64,
    what: &str,
) -> u64 {
    let batch = load.batch;
    let mut missing = Vec::new();
    for (i, a) in o.acked.iter().enumerate() {
        if *a {
            for n in i as u64 * batch..(i as u64 + 1) * batch {
                if !seen.contains_key(&n) {
                    missing.push(n);
                }
            }
        }
    }
    let duplicates: u64 = seen.values().map(|c| (*c as u64).saturating_sub(1)).sum();
    let mut written_twice = Vec::new();
    for (i, a) in o.attempts.iter().enumerate() {
        if *a == 1 {
            for n in i as u64 * batch..(i as u64 + 1) * batch {
                if seen.get(&n).copied().unwrap_or(0) > 1 {
                    written_twice.push(n);
                }
            }
        }
    }
    println!(
        "{what}: {} kills, {} events acknowledged, {} distinct delivered, {duplicates} duplicates from re-sent batches, {} batches re-sent",
        o.kills,
        o.acked.iter().filter(|a| **a).count() as u64 * batch,
        seen.len(),
        o.resent
    );
    assert!(
        written_twice.is_empty(),
        "events sent once but delivered {} times: first {:?}, seed {seed}",
        written_twice.len(),
        &written_twice[..written_twice.len().min(10)]
    );
    assert!(
        missing.is_empty(),
        "acknowledged events missing: {} (first {:?}), seed {seed}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    duplicates
}
