//! Appending to the memory buffer: events/s on one core.
//!
//! Events are pre-encoded Forward entries `[EventTime, record]` of exactly 300 bytes (a seeded
//! web-access-log corpus, `bench/corpus.rs`). Two paths are measured:
//!
//! - `emit/...`: [`BufferedOutput`]'s `Output::emit`, the call the router makes for a
//!   PackedForward frame: group the stream by chunk keys, copy the entries, `Buffer::write`.
//!   The output is `@type null` with a `<buffer tag,time>` section read by the config parser
//!   (`<buffer tag>` for comparison: the per-stream path).
//! - `write/...`: `Buffer::write` alone with a pre-built group (the buffer's own cost).
//!
//! After every append, queued (full) chunks are dequeued and purged, which is what the null
//! output's flush worker does; so the buffer stays in steady state (chunks of `chunk_limit_size`
//! fill up, are queued and freed) and never overflows.
//!
//! Run: `cargo bench --bench buffer_append` (target for comparison: ≥ 2 million events/s).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice::buffer::config::BufferConfig;
use sluice::buffer::core::{Buffer, BufferLimits, Group};
use sluice::buffer::metadata::Metadata;
use sluice::event::EventStream;
use sluice::output::buffered::BufferedOutput;
use sluice::output::{null, BuildContext, Output};

#[path = "../bench/corpus.rs"]
mod corpus;

/// Size of one encoded entry.
const ENTRY: usize = 300;
/// Start of the events' times: a minute boundary, so a batch of 2,000 events 1 ms apart stays
/// in one `timekey 60` slice.
const T0: i64 = 1_727_913_600;
const TAG: &str = "bench.access";

fn config(chunk_keys: &str) -> BufferConfig {
    let text = format!(
        "<match bench.**>\n  @type null\n  <buffer {chunk_keys}>\n    @type memory\n    timekey 60\n    chunk_limit_size 8m\n    total_limit_size 512m\n  </buffer>\n</match>\n"
    );
    let root = sluice::config::parser::parse_str(&text, "bench.conf", PathBuf::from("."))
        .expect("bench config parses");
    let m = &root.elements[0];
    let b = m.sections("buffer").next().expect("a <buffer> section");
    BufferConfig::from_section(b, m, &null::defaults()).expect("valid <buffer>")
}

fn output(chunk_keys: &str) -> Arc<BufferedOutput> {
    Arc::new(BufferedOutput::new(
        "bench".into(),
        Arc::new(null::Null::default()),
        None,
        config(chunk_keys),
        &BuildContext::default(),
    ))
}

/// What the null output's flush worker does: write (discard) and purge every queued chunk.
fn drain(buffer: &Buffer) {
    while let Some(c) = buffer.dequeue() {
        buffer.purge(c.id);
    }
}

fn stream(n: usize) -> EventStream {
    let (data, _) = corpus::fixed_entries(42, n, ENTRY, T0, 1_000_000);
    EventStream::from_entries(Bytes::from(data)).expect("valid entries")
}

fn bench_emit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("buffer_append/emit");
    g.measurement_time(Duration::from_secs(5));
    for (keys, n) in [("tag,time", 2000), ("tag,time", 100), ("tag", 2000)] {
        let out = output(keys);
        let es = stream(n);
        assert_eq!(es.bytes().len(), n * ENTRY);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new(keys, n), |b| {
            b.iter(|| {
                let r = rt
                    .block_on(Output::emit(&*out, TAG, es.clone()))
                    .expect("stored");
                debug_assert!(r.rejected.is_empty());
                drain(out.buffer());
            })
        });
    }
    g.finish();
}

fn bench_write(c: &mut Criterion) {
    let mut g = c.benchmark_group("buffer_append/write");
    g.measurement_time(Duration::from_secs(5));
    let cfg = config("tag,time");
    for n in [2000usize, 100] {
        let buffer = Buffer::new(
            BufferLimits::from_config(&cfg),
            true,
            Arc::new(sluice::time::SystemClock),
        );
        let (data, ends) = corpus::fixed_entries(42, n, ENTRY, T0, 1_000_000);
        let groups = [Group {
            metadata: Metadata {
                timekey: Some(T0 - T0.rem_euclid(60)),
                tag: Some(Arc::from(TAG)),
                variables: Vec::new(),
            },
            bytes: Bytes::from(data),
            ends,
        }];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("tag,time", n), |b| {
            b.iter(|| {
                let r = buffer.write(&groups).expect("stored");
                debug_assert!(r.oversized.is_empty());
                drain(&buffer);
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_emit, bench_write);
criterion_main!(benches);
