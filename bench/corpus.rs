//! A seeded corpus of web-access-log events, shared by `benches/buffer_append.rs` and
//! `examples/loadgen.rs` (included with `#[path]`).
//!
//! Each event is a Forward-protocol entry `[EventTime, record]`; the record is a MessagePack map
//! `{ip, method, path, status, bytes, referer, agent, time}` like a parsed nginx/Apache
//! combined-log line. The same seed always gives the same bytes.

#![allow(dead_code)]

/// SplitMix64: small, fast, deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// One element of `items`.
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const METHODS: &[&str] = &[
    "GET", "GET", "GET", "GET", "GET", "POST", "POST", "PUT", "DELETE", "HEAD",
];
const SECTIONS: &[&str] = &[
    "api/v1/users",
    "api/v1/orders",
    "api/v2/search",
    "static/js",
    "static/css",
    "images/products",
    "account/settings",
    "checkout/cart",
    "blog/posts",
    "healthz",
];
const EXTS: &[&str] = &["", ".json", ".js", ".css", ".png", ".html", ""];
const LANGS: &[&str] = &["en-US", "de-DE", "fr-FR", "ja-JP", "pt-BR"];
const PARAMS: &[&str] = &[
    "",
    "&page=2",
    "&sort=price-asc&page=3",
    "&utm_source=newsletter&utm_campaign=autumn-sale",
    "&filter=color%3Ablue",
];
const STATUSES: &[u16] = &[200, 200, 200, 200, 200, 200, 304, 301, 404, 500, 201, 204];
const REFERERS: &[&str] = &[
    "-",
    "https://www.example.com/",
    "https://www.example.com/search?q=running+shoes&page=2",
    "https://news.example.org/articles/2024/10/03/some-long-article-title",
    "https://www.google.com/",
    "https://duckduckgo.com/?q=example+shop+discount+code&ia=web",
    "https://www.example.com/checkout/cart?step=payment&coupon=AUTUMN24",
];
const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:131.0) Gecko/20100101 Firefox/131.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/129.0.6668.81 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];
const MONTHS: &[&str] = &[
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn put_str(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v < 1 << 16 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    }
}

/// An approximate civil date (good enough for a log line) from epoch seconds.
fn clf_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's days-from-civil inverse.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The encoded record of one access-log event at `t` (epoch seconds). With `agent_len`, the
/// agent string is cut or padded to exactly that many bytes (to give records an exact size).
fn record(rng: &mut Rng, t: i64, agent_len: Option<usize>) -> Vec<u8> {
    let ip = format!(
        "{}.{}.{}.{}",
        rng.below(223) + 1,
        rng.below(256),
        rng.below(256),
        rng.below(254) + 1
    );
    let path = format!(
        "/{}/{}{}?id={}&session={:016x}&lang={}{}",
        rng.pick(SECTIONS),
        rng.below(100_000),
        rng.pick(EXTS),
        rng.below(1 << 20),
        rng.next_u64(),
        rng.pick(LANGS),
        rng.pick(PARAMS)
    );
    let status = STATUSES[rng.below(STATUSES.len() as u64) as usize];
    let bytes = rng.below(200_000);
    let mut agent = rng.pick(AGENTS).to_string();
    if let Some(n) = agent_len {
        while agent.len() < n {
            agent.push_str(" compatible");
        }
        agent.truncate(n);
    }
    let mut out = Vec::with_capacity(384);
    out.push(0x88); // fixmap, 8 entries
    put_str(&mut out, "ip");
    put_str(&mut out, &ip);
    put_str(&mut out, "method");
    put_str(&mut out, rng.pick(METHODS));
    put_str(&mut out, "path");
    put_str(&mut out, &path);
    put_str(&mut out, "status");
    put_uint(&mut out, u64::from(status));
    put_str(&mut out, "bytes");
    put_uint(&mut out, bytes);
    put_str(&mut out, "referer");
    put_str(&mut out, rng.pick(REFERERS));
    put_str(&mut out, "agent");
    put_str(&mut out, &agent);
    put_str(&mut out, "time");
    put_str(&mut out, &clf_time(t));
    out
}

/// Appends the entry `[EventTime(sec, nsec), record]`.
pub fn put_entry(out: &mut Vec<u8>, sec: i64, nsec: u32, record: &[u8]) {
    out.push(0x92);
    out.extend_from_slice(&[0xd7, 0x00]);
    out.extend_from_slice(&(sec as u32).to_be_bytes());
    out.extend_from_slice(&nsec.to_be_bytes());
    out.extend_from_slice(record);
}

/// `n` records of natural size (about 350 bytes each), times starting at `t0` with `step_ns`
/// nanoseconds between events. Returns (sec, nsec, encoded record) for each.
pub fn records(seed: u64, n: usize, t0: i64, step_ns: u64) -> Vec<(i64, u32, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let ns = i as u64 * step_ns;
            let sec = t0 + (ns / 1_000_000_000) as i64;
            let nsec = (ns % 1_000_000_000) as u32;
            (sec, nsec, record(&mut rng, sec, None))
        })
        .collect()
}

/// Entries of exactly `entry_size` bytes each (the agent string is sized to fit), concatenated,
/// with the end offset of each. `entry_size` must be between about 220 and 450.
pub fn fixed_entries(
    seed: u64,
    n: usize,
    entry_size: usize,
    t0: i64,
    step_ns: u64,
) -> (Vec<u8>, Vec<usize>) {
    let mut rng = Rng::new(seed);
    let mut data = Vec::with_capacity(n * entry_size);
    let mut ends = Vec::with_capacity(n);
    for i in 0..n {
        let ns = i as u64 * step_ns;
        let sec = t0 + (ns / 1_000_000_000) as i64;
        let nsec = (ns % 1_000_000_000) as u32;
        // Size the agent: measure with a 32-byte agent, then fill the difference; draw again
        // (bounded) when the other fields alone are too long.
        let mut agent = None;
        for _ in 0..1000 {
            let mut probe = rng.clone();
            let base = record(&mut probe, sec, Some(32)).len() + 11;
            if base <= entry_size && entry_size - base < 256 - 32 {
                agent = Some(32 + entry_size - base);
                break;
            }
            rng.next_u64();
        }
        let agent = agent.unwrap_or_else(|| panic!("entry size {entry_size} out of range"));
        let rec = record(&mut rng, sec, Some(agent));
        put_entry(&mut data, sec, nsec, &rec);
        ends.push(data.len());
        assert_eq!(
            ends.len() * entry_size,
            data.len(),
            "entry {i} is not {entry_size} bytes"
        );
    }
    (data, ends)
}

/// MessagePack `[tag, bin(entries), {"size": n[, "chunk": id][, "compressed": "gzip"]}]`: a
/// PackedForward (or, with `compressed`, CompressedPackedForward) frame.
pub fn packed_forward(
    tag: &str,
    entries: &[u8],
    size: usize,
    chunk: Option<&str>,
    compressed: bool,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(entries.len() + 64);
    f.push(0x93);
    put_str(&mut f, tag);
    let n = entries.len();
    if n < 256 {
        f.extend_from_slice(&[0xc4, n as u8]);
    } else if n < 1 << 16 {
        f.push(0xc5);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0xc6);
        f.extend_from_slice(&(n as u32).to_be_bytes());
    }
    f.extend_from_slice(entries);
    let keys = 1 + usize::from(chunk.is_some()) + usize::from(compressed);
    f.push(0x80 | keys as u8);
    put_str(&mut f, "size");
    put_uint(&mut f, size as u64);
    if let Some(c) = chunk {
        put_str(&mut f, "chunk");
        put_str(&mut f, c);
    }
    if compressed {
        put_str(&mut f, "compressed");
        put_str(&mut f, "gzip");
    }
    f
}
