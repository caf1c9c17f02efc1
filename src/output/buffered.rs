//! The buffered-output driver shared by every buffered output: emit into the buffer, flush
//! workers, the enqueue timer, retries, the `<secondary>`, unrecoverable errors, backups and
//! shutdown.
//!
//! A plugin implements only [`ChunkWriter`]: how to format an event for its chunks (or keep
//! MessagePack entries) and how to write one chunk. Everything about *when* lives here, once:
//!
//! - **Emit**: events are grouped by metadata (chunk keys), formatted, and written to the
//!   [`Buffer`]. On overflow `overflow_action` applies: `throw_exception` refuses the stream,
//!   `block` waits for space, `drop_oldest_chunk` moves the oldest queued chunk to the backup
//!   directory and retries once. Records the buffer cannot take (larger than a chunk, chunk-key
//!   path through a non-map) come back in the receipt's `rejected`.
//! - **Flush**: `flush_thread_count` workers write the queue head; an emit that queues a chunk
//!   wakes one; the enqueue timer applies timekey and `flush_interval` rules.
//! - **Retry**: one output-wide [`OutputRetry`]; a failed chunk goes back to the queue head;
//!   while retrying, workers wait for the next retry time and write one chunk. At and after the
//!   secondary switch the `<secondary>` writes. Giving up moves **every queued chunk to the
//!   backup directory** — nothing is deleted.
//! - **Unrecoverable errors** skip retries: secondary if it can help, else backup.
//! - **Shutdown**: with `flush_at_shutdown`, everything is queued and written unless the output
//!   is retrying; whatever a memory buffer still holds then goes to the backup directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::retry::{FailureOutcome, OutputRetry, RetryPolicy};
use super::{BoxFuture, DurableWait, EmitError, Output, Receipt, Rejected, SyncProgress};
use crate::buffer::chunk::decompress;
use crate::buffer::config::{
    BufferConfig, BufferType, Compress, FlushMode, OverflowAction, SyncMode,
};
use crate::buffer::core::{Buffer, BufferLimits, BufferStats, FlushChunk, Group, WriteError};
use crate::buffer::file::{FileStore, Layout};
use crate::buffer::metadata::{Metadata, MetadataBuilder};
use crate::event::{EventStream, EventTime, StreamBuilder};
use crate::time::{until, Clock, Zone};

/// Why a chunk could not be written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ChunkWriteError {
    /// Error class for the log line (Fluentd's where one applies).
    pub class: String,
    /// What went wrong.
    pub message: String,
    /// Retrying cannot help (bad path component, invalid key): skip retries.
    pub unrecoverable: bool,
}

impl ChunkWriteError {
    /// A failure that may pass on retry (I/O error, destination down).
    pub fn retryable(class: &str, message: impl Into<String>) -> Self {
        ChunkWriteError {
            class: class.into(),
            message: message.into(),
            unrecoverable: false,
        }
    }

    /// A failure retrying cannot fix.
    pub fn unrecoverable(message: impl Into<String>) -> Self {
        ChunkWriteError {
            class: "Fluent::UnrecoverableError".into(),
            message: message.into(),
            unrecoverable: true,
        }
    }
}

/// A chunk handed to a writer.
#[derive(Debug, Clone)]
pub struct WriteChunk {
    /// Id, metadata, stored bytes and counts.
    pub chunk: FlushChunk,
    /// How the stored bytes are compressed.
    pub compress: Compress,
    /// Whether the bytes are formatted records (else MessagePack `[time, record]` entries).
    pub formatted: bool,
    /// `decompression_size_limit`.
    pub decompression_limit: u64,
    /// The buffer the chunk is in flight from, for delivery records (none for backups and
    /// tests).
    pub journal: Option<Arc<Buffer>>,
}

impl WriteChunk {
    /// The last delivery record of an earlier attempt, if any.
    pub fn delivery(&self) -> Option<&[u8]> {
        self.chunk.deliveries.last().map(|d| &d[..])
    }

    /// Every delivery record of earlier attempts, oldest first.
    pub fn deliveries(&self) -> &[Bytes] {
        &self.chunk.deliveries
    }

    /// Durably records where this chunk is about to be delivered, before delivering it.
    pub fn record_delivery(&self, payload: &[u8]) -> Result<(), ChunkWriteError> {
        match &self.journal {
            Some(b) => b.record_delivery(self.chunk.id, payload).map_err(|e| {
                ChunkWriteError::retryable(
                    "IOError",
                    format!("cannot record the delivery of chunk {}: {e}", self.chunk.id),
                )
            }),
            None => Ok(()),
        }
    }

    /// The chunk's records' bytes, decompressed.
    pub fn data(&self) -> std::io::Result<Bytes> {
        match self.compress {
            Compress::Text => Ok(self.chunk.bytes.clone()),
            c => decompress(&self.chunk.bytes, c, self.decompression_limit).map(Bytes::from),
        }
    }
}

/// What a buffered output plugin provides.
pub trait ChunkWriter: Send + Sync + std::fmt::Debug {
    /// The plugin type (`file`, `stdout`, …), to compare primary and secondary.
    fn type_name(&self) -> &'static str;

    /// Whether chunks hold formatted records ([`ChunkWriter::format`]) rather than
    /// MessagePack entries.
    fn formats(&self) -> bool;

    /// Appends one event, formatted for this output's chunks.
    fn format(&self, tag: &str, time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        let _ = (tag, time, record, out);
    }

    /// Writes one chunk to the destination.
    fn write<'a>(&'a self, chunk: &'a WriteChunk) -> BoxFuture<'a, Result<(), ChunkWriteError>>;

    /// Prepares the destination before the first flush (connects, checks credentials and
    /// buckets, finds what an earlier run left half done in `buffer`). An error stops
    /// sluice's start-up.
    fn start<'a>(&'a self, buffer: &'a Arc<Buffer>) -> BoxFuture<'a, Result<(), String>> {
        let _ = buffer;
        Box::pin(async { Ok(()) })
    }

    /// Figures of this writer's own (name, value), added to the output's metrics.
    fn metrics(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// Figures the metrics endpoint publishes for one buffered output.
#[derive(Debug, Clone, Default)]
pub struct OutputMetrics {
    /// Plugin id.
    pub plugin_id: String,
    /// The output's `@type` (the primary writer's type).
    pub type_name: &'static str,
    /// Stage/queue lengths and bytes.
    pub buffer: BufferStats,
    /// `total_limit_size` of the buffer.
    pub total_limit_size: Option<u64>,
    /// Steps of the current retry state (0 when not retrying).
    pub retry_count: u64,
    /// Next retry time, epoch seconds.
    pub next_retry_time: Option<i64>,
    /// While retrying: the next retry time minus the time of the first failure of this retry
    /// episode, in seconds (Fluentd's `retry_wait` figure).
    pub retry_wait: Option<f64>,
    /// Emit calls and records.
    pub emit_count: u64,
    /// Records emitted.
    pub emit_records: u64,
    /// Chunks written successfully.
    pub write_count: u64,
    /// Failed writes.
    pub write_errors: u64,
    /// Emits refused for overflow.
    pub buffer_overflows: u64,
    /// Chunks moved to the backup directory.
    pub backed_up: u64,
    /// Chunks taken back into the queue after a failed write (Fluentd's `rollback_count`).
    pub rollback_count: u64,
    /// Frames of file-buffer chunk files cut out as damaged when the buffer was resumed.
    pub damaged_frames: u64,
    /// Bytes of those damaged frames.
    pub damaged_bytes: u64,
    /// The writer's own figures (e.g. an s3 output's uploads and errors by class).
    pub writer: Vec<(&'static str, u64)>,
}

#[derive(Debug, Default)]
struct Counters {
    emit_count: AtomicU64,
    emit_records: AtomicU64,
    write_count: AtomicU64,
    write_errors: AtomicU64,
    buffer_overflows: AtomicU64,
    backed_up: AtomicU64,
    rollback_count: AtomicU64,
}

/// A stream split for the buffer: per-metadata groups, the stream index of each group's
/// records, and the events whose chunk keys could not be read (with the reasons).
type Grouped = (Vec<Group>, Vec<Vec<usize>>, Option<(String, EventStream)>);

/// A buffered output: a [`ChunkWriter`] behind a buffer and the flush/retry machinery.
#[derive(Debug)]
pub struct BufferedOutput {
    plugin_id: String,
    primary: Arc<dyn ChunkWriter>,
    secondary: Option<Arc<dyn ChunkWriter>>,
    /// Set at construction (memory) or at start (file: opening takes the lock and resumes).
    buffer: std::sync::OnceLock<Arc<Buffer>>,
    /// Where a file buffer lives and its permissions (file, dir), opened at start.
    file: Option<(Layout, u32, u32)>,
    sync_tx: tokio::sync::watch::Sender<SyncProgress>,
    sync_wake: tokio::sync::Notify,
    metadata: MetadataBuilder,
    cfg: BufferConfig,
    retry: Mutex<OutputRetry>,
    clock: Arc<dyn Clock>,
    wake: tokio::sync::Notify,
    stop: tokio::sync::watch::Sender<bool>,
    stopping: AtomicBool,
    backup_dir: PathBuf,
    log_zone: Zone,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    counters: Counters,
}

/// Where backups go: `<root_dir | $FLUENT_BACKUP_DIR | /tmp/fluent>/backup/worker0/<plugin id>`.
pub fn backup_dir(root_dir: Option<&std::path::Path>, plugin_id: &str) -> PathBuf {
    let base = match root_dir {
        Some(r) => r.to_path_buf(),
        None => std::env::var_os("FLUENT_BACKUP_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/fluent")),
    };
    base.join("backup").join("worker0").join(plugin_id)
}

/// A plugin id safe as a directory name: `@id` with ` "/\:;|*<>?` replaced by `_`.
pub fn safe_plugin_id(id: &str) -> String {
    id.chars()
        .map(|c| if " \"/\\:;|*<>?".contains(c) { '_' } else { c })
        .collect()
}

impl BufferedOutput {
    /// A buffered output around `primary` (and `secondary`), configured by `cfg`. A file
    /// buffer is only opened by [`Output::start`], so building (and `--dry-run`) touches no disk.
    pub fn new(
        plugin_id: String,
        primary: Arc<dyn ChunkWriter>,
        secondary: Option<Arc<dyn ChunkWriter>>,
        cfg: BufferConfig,
        ctx: &super::BuildContext,
    ) -> BufferedOutput {
        let clock = ctx.clock.clone();
        let policy = RetryPolicy::from_config(&cfg, secondary.is_some());
        let (stop, _) = tokio::sync::watch::channel(false);
        let buffer = std::sync::OnceLock::new();
        let file = match &cfg.buffer_type {
            BufferType::File {
                path: Some(p),
                path_suffix,
            } => Some((Layout::resolve(p, path_suffix), ctx.file_mode, ctx.dir_mode)),
            _ => {
                let standard = !primary.formats();
                let _ = buffer.set(Arc::new(Buffer::new(
                    BufferLimits::from_config(&cfg),
                    standard,
                    clock.clone(),
                )));
                None
            }
        };
        BufferedOutput {
            backup_dir: backup_dir(ctx.root_dir.as_deref(), &safe_plugin_id(&plugin_id)),
            plugin_id,
            metadata: MetadataBuilder::new(&cfg),
            primary,
            secondary,
            buffer,
            file,
            sync_tx: tokio::sync::watch::channel(SyncProgress::default()).0,
            sync_wake: tokio::sync::Notify::new(),
            retry: Mutex::new(OutputRetry::new(policy)),
            clock,
            wake: tokio::sync::Notify::new(),
            stop,
            stopping: AtomicBool::new(false),
            log_zone: Zone::local(),
            tasks: Mutex::new(Vec::new()),
            counters: Counters::default(),
            cfg,
        }
    }

    /// The buffer (for tests and tools). Panics before [`Output::start`] for file buffers.
    pub fn buffer(&self) -> &Arc<Buffer> {
        self.buffer.get().expect("the buffer is opened at start")
    }

    /// Opens the file buffer: lock, resume, back up unreadable chunk files.
    fn open_file_buffer(&self) -> Result<(), String> {
        let Some((layout, file_mode, dir_mode)) = &self.file else {
            return Ok(());
        };
        if self.buffer.get().is_some() {
            return Ok(());
        }
        let store =
            FileStore::open(layout.clone(), *file_mode, *dir_mode).map_err(|e| e.to_string())?;
        let standard = !self.primary.formats();
        let (buffer, broken) = Buffer::open_file(
            BufferLimits::from_config(&self.cfg),
            standard,
            self.clock.clone(),
            store,
        )
        .map_err(|e| format!("cannot resume buffer {}: {e}", layout.dir.display()))?;
        for b in broken {
            let chunk = FlushChunk {
                id: b.id,
                metadata: Metadata::default(),
                bytes: b.records,
                records: b.count,
                created: 0,
                // Without a header the compression is unknown: assume the configured one.
                compress: self.cfg.compress,
                deliveries: Vec::new(),
            };
            if self.backup(&chunk, "found broken chunk file during resume") {
                let _ = std::fs::remove_file(&b.path);
            }
        }
        let stats = buffer.stats();
        if stats.stage_length + stats.queue_length > 0 {
            tracing::info!(plugin_id = %self.plugin_id, staged = stats.stage_length, queued = stats.queue_length,
                bytes = stats.stage_bytes + stats.queue_bytes, "resumed buffered chunks from {}", layout.dir.display());
        }
        let _ = self.buffer.set(Arc::new(buffer));
        Ok(())
    }

    /// Makes everything written so far durable and publishes the progress (group commit).
    async fn sync_pass(&self) {
        let Some(buffer) = self.buffer.get() else {
            return;
        };
        let Some((files, dir_dirty, seq)) = buffer.take_dirty() else {
            return;
        };
        let dir = self.file.as_ref().map(|f| f.0.dir.clone());
        let r = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            for f in files {
                f.sync_data()?;
            }
            if let (true, Some(d)) = (dir_dirty, dir) {
                std::fs::File::open(d)?.sync_all()?;
            }
            Ok(())
        })
        .await;
        match r {
            Ok(Ok(())) => self.sync_tx.send_modify(|p| {
                p.synced = p.synced.max(seq);
                p.failed = None;
            }),
            Ok(Err(e)) => {
                tracing::error!(plugin_id = %self.plugin_id, "fdatasync of buffer chunk files failed; the writes it covers are not acknowledged: {e}");
                self.sync_tx
                    .send_modify(|p| p.failed = Some(Arc::from(e.to_string())));
            }
            Err(e) => self
                .sync_tx
                .send_modify(|p| p.failed = Some(Arc::from(e.to_string()))),
        }
    }

    async fn sync_task(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        loop {
            match self.cfg.sync {
                SyncMode::Interval(t) => tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs_f64(t.max(0.001))) => {}
                    _ = stop.changed() => break,
                },
                _ => tokio::select! {
                    _ = self.sync_wake.notified() => {}
                    _ = stop.changed() => break,
                },
            }
            self.sync_pass().await;
        }
        self.sync_pass().await;
    }

    fn retrying(&self) -> bool {
        self.retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_retrying()
    }

    /// Splits a stream into per-metadata groups of formatted records or entries. Events whose
    /// chunk keys cannot be read are returned separately with the reason.
    fn groups(&self, tag: &str, es: &EventStream) -> Grouped {
        let tag: Arc<str> = Arc::from(tag);
        let formats = self.primary.formats();
        let mut metas: Vec<Metadata> = Vec::new();
        let mut bufs: Vec<(Vec<u8>, Vec<usize>, Vec<usize>)> = Vec::new();
        let mut bad = StreamBuilder::default();
        let mut bad_reasons: Vec<String> = Vec::new();
        let per_stream = self.metadata.per_stream();
        let stream_meta = per_stream.then(|| {
            self.metadata
                .metadata(&tag, EventTime::default(), &[0x80])
                .unwrap_or_default()
        });
        let mut last = 0usize;
        for (idx, e) in es.iter().enumerate() {
            let m = match &stream_meta {
                Some(m) => m.clone(),
                None => match self.metadata.metadata(&tag, e.time, e.record) {
                    Ok(m) => m,
                    Err(err) => {
                        if bad_reasons.len() < 10 {
                            bad_reasons.push(format!("event {idx}: {err}"));
                        }
                        bad.push_entry(&e);
                        continue;
                    }
                },
            };
            let gi = if metas.get(last) == Some(&m) {
                last
            } else if let Some(i) = metas.iter().position(|x| *x == m) {
                i
            } else {
                metas.push(m);
                bufs.push((Vec::new(), Vec::new(), Vec::new()));
                metas.len() - 1
            };
            last = gi;
            let (bytes, ends, idxs) = &mut bufs[gi];
            if formats {
                self.primary.format(&tag, e.time, e.record, bytes);
            } else {
                bytes.extend_from_slice(e.raw);
            }
            ends.push(bytes.len());
            idxs.push(idx);
        }
        let rejected = (!bad.is_empty()).then(|| (bad_reasons.join(", "), bad.finish()));
        let mut groups = Vec::with_capacity(metas.len());
        let mut indexes = Vec::with_capacity(metas.len());
        for (m, (bytes, ends, idxs)) in metas.into_iter().zip(bufs) {
            groups.push(Group {
                metadata: m,
                bytes: Bytes::from(bytes),
                ends,
            });
            indexes.push(idxs);
        }
        (groups, indexes, rejected)
    }

    async fn emit_stream(&self, tag: &str, es: EventStream) -> Result<Receipt, EmitError> {
        if self.stopping.load(Ordering::Acquire) {
            return Err(EmitError::ShuttingDown);
        }
        self.counters.emit_count.fetch_add(1, Ordering::Relaxed);
        self.counters
            .emit_records
            .fetch_add(es.len() as u64, Ordering::Relaxed);
        let (groups, indexes, invalid) = self.groups(tag, &es);
        let mut dropped_one = false;
        let report = loop {
            match self.buffer().write(&groups) {
                Ok(r) => break r,
                Err(err) => {
                    if let WriteError::Io(e) = &err {
                        tracing::error!(plugin_id = %self.plugin_id, "cannot store events in the buffer: {e}");
                    }
                    let action = self.cfg.overflow_action;
                    tracing::warn!(
                        plugin_id = %self.plugin_id,
                        "failed to write data into buffer by buffer overflow action=:{}",
                        match action {
                            OverflowAction::ThrowException => "throw_exception",
                            OverflowAction::Block => "block",
                            OverflowAction::DropOldestChunk => "drop_oldest_chunk",
                        }
                    );
                    match action {
                        OverflowAction::ThrowException => {
                            self.counters
                                .buffer_overflows
                                .fetch_add(1, Ordering::Relaxed);
                            return Err(EmitError::BufferOverflow);
                        }
                        OverflowAction::Block => {
                            tracing::debug!(plugin_id = %self.plugin_id, "buffer.write is now blocking");
                            loop {
                                if self.stopping.load(Ordering::Acquire) {
                                    tracing::error!(plugin_id = %self.plugin_id, "breaking block behavior to shutdown Fluentd");
                                    return Err(EmitError::BufferOverflow);
                                }
                                let freed = self.buffer().space_freed.notified();
                                if tokio::time::timeout(Duration::from_secs(1), freed)
                                    .await
                                    .is_ok()
                                {
                                    break;
                                }
                            }
                            tracing::debug!(plugin_id = %self.plugin_id, "retrying buffer.write after blocked operation");
                        }
                        OverflowAction::DropOldestChunk => {
                            if dropped_one {
                                self.counters
                                    .buffer_overflows
                                    .fetch_add(1, Ordering::Relaxed);
                                return Err(EmitError::BufferOverflow);
                            }
                            dropped_one = true;
                            match self.buffer().dequeue() {
                                Some(chunk) => {
                                    tracing::warn!(plugin_id = %self.plugin_id, chunk_id = %chunk.id,
                                        "dropping oldest chunk to make space after buffer overflow (moved to the backup directory)");
                                    self.move_to_backup(
                                        &chunk,
                                        "dropped by overflow_action drop_oldest_chunk",
                                    );
                                }
                                None => {
                                    tracing::error!(plugin_id = %self.plugin_id, "no queued chunks to be dropped for drop_oldest_chunk");
                                    self.counters
                                        .buffer_overflows
                                        .fetch_add(1, Ordering::Relaxed);
                                    return Err(EmitError::BufferOverflow);
                                }
                            }
                        }
                    }
                }
            }
        };
        if report.enqueued && !self.retrying() {
            self.wake.notify_one();
        }
        let mut receipt = match (report.sync_seq, self.cfg.sync) {
            (Some(seq), SyncMode::Always | SyncMode::Interval(_)) => {
                self.sync_wake.notify_one();
                Receipt::wait_for(DurableWait {
                    progress: self.sync_tx.subscribe(),
                    seq,
                })
            }
            _ => Receipt::stored(),
        };
        if !report.oversized.is_empty() {
            let mut b = StreamBuilder::default();
            let entries: Vec<_> = es.iter().collect();
            for o in &report.oversized {
                if let Some(e) = indexes
                    .get(o.group)
                    .and_then(|ix| ix.get(o.nth))
                    .and_then(|i| entries.get(*i))
                {
                    b.push_entry(e);
                }
            }
            receipt.rejected.push(Rejected {
                class: "Fluent::Plugin::Buffer::BufferChunkOverflowError",
                message: report
                    .oversized
                    .iter()
                    .map(|o| o.message.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                events: b.finish(),
            });
        }
        if let Some((message, events)) = invalid {
            receipt.rejected.push(Rejected {
                class: "TypeError",
                message,
                events,
            });
        }
        Ok(receipt)
    }

    fn write_chunk(&self, chunk: FlushChunk) -> WriteChunk {
        WriteChunk {
            compress: chunk.compress,
            chunk,
            formatted: self.primary.formats(),
            decompression_limit: self.cfg.decompression_size_limit,
            journal: self.buffer.get().cloned(),
        }
    }

    /// Writes one dequeued chunk and handles the outcome. Returns whether it was written.
    async fn flush_chunk(&self, chunk: FlushChunk) -> bool {
        let now = self.clock.now();
        let on_secondary = self
            .retry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .should_use_secondary(now);
        let writer = match (&self.secondary, on_secondary) {
            (Some(s), true) => s.clone(),
            _ => self.primary.clone(),
        };
        let wc = self.write_chunk(chunk);
        match writer.write(&wc).await {
            Ok(()) => {
                self.buffer().purge(wc.chunk.id);
                self.counters.write_count.fetch_add(1, Ordering::Relaxed);
                if self
                    .retry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .succeeded()
                {
                    if on_secondary {
                        tracing::warn!(plugin_id = %self.plugin_id, "retry succeeded by secondary.");
                    } else {
                        tracing::warn!(plugin_id = %self.plugin_id, "retry succeeded.");
                    }
                }
                true
            }
            Err(e) if e.unrecoverable => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                self.unrecoverable(wc, e, on_secondary).await;
                false
            }
            Err(e) => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                self.buffer().takeback(wc.chunk.id);
                self.counters.rollback_count.fetch_add(1, Ordering::Relaxed);
                let outcome = self
                    .retry
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .failed(self.clock.now());
                let with = if on_secondary {
                    " with secondary output"
                } else {
                    ""
                };
                match outcome {
                    FailureOutcome::Retry(f) => tracing::warn!(
                        plugin_id = %self.plugin_id,
                        "failed to flush the buffer{with}. {} chunk=\"{}\" error_class={} error=\"{}\"",
                        f.text(&self.log_zone), wc.chunk.id, e.class, e.message
                    ),
                    FailureOutcome::GiveUp { retry_times } => {
                        let chunks = self.take_queue();
                        let records: u64 = chunks.iter().map(|c| c.records).sum();
                        tracing::error!(
                            plugin_id = %self.plugin_id,
                            "Hit limit for retries. dropping all chunks in the buffer queue. retry_times={retry_times} records={records} error_class={} error=\"{}\" (sluice moves them to {} instead)",
                            e.class, e.message, self.backup_dir.display()
                        );
                        for c in &chunks {
                            self.move_to_backup(c, "retries exhausted");
                        }
                    }
                }
                false
            }
        }
    }

    async fn unrecoverable(&self, wc: WriteChunk, e: ChunkWriteError, on_secondary: bool) {
        let id = wc.chunk.id;
        if on_secondary {
            tracing::warn!(plugin_id = %self.plugin_id, error = %e, "got unrecoverable error in secondary.");
        } else {
            match &self.secondary {
                None => {
                    tracing::warn!(plugin_id = %self.plugin_id, error = %e, "got unrecoverable error in primary and no secondary")
                }
                Some(s) if s.type_name() == self.primary.type_name() => tracing::warn!(
                    plugin_id = %self.plugin_id, error = %e,
                    "got unrecoverable error in primary and secondary type is same as primary. Skip secondary"
                ),
                Some(s) => {
                    tracing::warn!(plugin_id = %self.plugin_id, error = %e, "got unrecoverable error in primary. Skip retry and flush chunk to secondary");
                    match s.write(&wc).await {
                        Ok(()) => {
                            self.buffer().purge(id);
                            self.counters.write_count.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(e2) => {
                            tracing::warn!(plugin_id = %self.plugin_id, error = %e2, "got an error in secondary for unrecoverable error")
                        }
                    }
                }
            }
        }
        if self.cfg.disable_chunk_backup {
            tracing::warn!(plugin_id = %self.plugin_id, "disable_chunk_backup is true. {id} chunk is thrown away");
            self.buffer().purge(id);
        } else {
            self.move_to_backup(&wc.chunk, &e.message);
        }
    }

    /// Takes every queued chunk in flight, for moving to the backup directory.
    fn take_queue(&self) -> Vec<FlushChunk> {
        std::iter::from_fn(|| self.buffer().dequeue()).collect()
    }

    /// Writes an in-flight chunk to the backup directory, then removes it from the buffer. If the
    /// backup cannot be written the chunk goes back to the queue: it is never dropped.
    fn move_to_backup(&self, chunk: &FlushChunk, reason: &str) {
        if self.backup(chunk, reason) {
            self.buffer().purge(chunk.id);
        } else {
            self.buffer().takeback(chunk.id);
        }
    }

    /// Writes a chunk's records to the backup directory: `<chunk id>.log` holds the data as
    /// Fluentd writes it (decompressed), `<chunk id>.log.meta.json` what is needed to replay it.
    fn backup(&self, chunk: &FlushChunk, reason: &str) -> bool {
        self.counters.backed_up.fetch_add(1, Ordering::Relaxed);
        let path = self.backup_dir.join(format!("{}.log", chunk.id));
        let wc = self.write_chunk(chunk.clone());
        let result = (|| -> std::io::Result<()> {
            std::fs::create_dir_all(&self.backup_dir)?;
            let data = wc.data()?;
            let meta = serde_json::json!({
                "id": chunk.id.to_string(),
                "tag": chunk.metadata.tag.as_deref(),
                "timekey": chunk.metadata.timekey,
                "variables": chunk.metadata.variables.iter().map(|(k, v)| {
                    (k.to_string(), crate::msgpack::to_json_value(v).unwrap_or(serde_json::Value::Null))
                }).collect::<serde_json::Map<_, _>>(),
                "records": chunk.records,
                "created": chunk.created,
                "format": if wc.formatted { "formatted" } else { "msgpack" },
                "reason": reason,
            });
            std::fs::write(
                path.with_extension("log.meta.json"),
                serde_json::to_vec_pretty(&meta)?,
            )?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            std::io::Write::write_all(&mut f, &data)?;
            f.sync_all()
        })();
        match result {
            Ok(()) => {
                tracing::warn!(plugin_id = %self.plugin_id, "bad chunk is moved to {}", path.display());
                true
            }
            Err(e) => {
                tracing::error!(plugin_id = %self.plugin_id, chunk_id = %chunk.id, "cannot write backup {}: {e}; the chunk stays in the buffer", path.display());
                false
            }
        }
    }

    /// One flush worker.
    async fn flush_worker(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let idle = Duration::from_secs_f64(self.cfg.flush_thread_interval.max(0.001));
        let burst = Duration::from_secs_f64(self.cfg.flush_thread_burst_interval.max(0.0));
        loop {
            if *stop.borrow() {
                return;
            }
            let now = self.clock.now();
            let wait = self
                .retry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .next_time()
                .map(|t| until(now, t))
                .filter(|d| !d.is_zero());
            if let Some(d) = wait {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            match self.buffer().dequeue() {
                Some(chunk) => {
                    let written = self.flush_chunk(chunk).await;
                    if written && self.buffer().has_queued() && !burst.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(burst) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(idle) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// The enqueue timer's period (Fluentd's rule: a time key uses min(timekey, timekey_wait),
    /// interval mode flush_interval; divided by 11, at least flush_thread_interval).
    pub fn enqueue_period(&self) -> Option<Duration> {
        let c = &self.cfg;
        let interval = c.flush_mode == FlushMode::Interval;
        let timekey = c.chunk_keys.time.then_some(c.timekey).flatten();
        if !interval && timekey.is_none() {
            return None;
        }
        let mut base = if interval {
            c.flush_interval
        } else {
            f64::INFINITY
        };
        if let Some(k) = timekey {
            if !interval || (k as f64) < c.flush_interval {
                base = (k as f64).min(c.timekey_wait);
            }
        }
        Some(Duration::from_secs_f64(
            (base / 11.0).max(c.flush_thread_interval).max(0.001),
        ))
    }

    async fn enqueue_timer(self: Arc<Self>, period: Duration) {
        let mut stop = self.stop.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => return,
            }
            if self.buffer().enqueue_due() > 0 && !self.retrying() {
                self.wake.notify_one();
            }
        }
    }

    async fn stop_and_flush(&self) {
        self.stopping.store(true, Ordering::Release);
        let _ = self.stop.send(true);
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            let _ = t.await;
        }
        if self.buffer.get().is_none() {
            // Never started (its file buffer could not be opened): nothing to flush.
            return;
        }
        if self.cfg.flush_at_shutdown {
            self.buffer().enqueue_all();
            while !self.retrying() {
                let Some(chunk) = self.buffer().dequeue() else {
                    break;
                };
                self.flush_chunk(chunk).await;
            }
        }
        if self.file.is_some() {
            // Chunk files stay where they are and are resumed at the next start.
            self.sync_pass().await;
            return;
        }
        // A memory buffer loses what it holds when the process ends: keep it in the backup
        // directory instead, so nothing disappears silently.
        self.buffer().enqueue_all();
        let left = self.take_queue();
        if !left.is_empty() {
            let records: u64 = left.iter().map(|c| c.records).sum();
            tracing::warn!(plugin_id = %self.plugin_id, chunks = left.len(), records,
                "buffered chunks could not be written before shutdown; moving them to {}", self.backup_dir.display());
            for c in &left {
                self.move_to_backup(c, "not written before shutdown");
            }
        }
    }
}

impl BufferedOutput {
    /// Opens the file buffer, starts the writers (primary and secondary), then the tasks.
    fn start_output(self: Arc<Self>) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async move {
            self.open_file_buffer()
                .map_err(|e| format!("{}: {e}", self.plugin_id))?;
            let buffer = self.buffer().clone();
            for w in std::iter::once(&self.primary).chain(self.secondary.as_ref()) {
                w.start(&buffer)
                    .await
                    .map_err(|e| format!("{}: {e}", self.plugin_id))?;
            }
            self.spawn_tasks();
            Ok(())
        })
    }

    /// Starts the sync task, the flush workers and the enqueue timer.
    fn spawn_tasks(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        if self.file.is_some() {
            tasks.push(tokio::spawn(self.clone().sync_task()));
        }
        for _ in 0..self.cfg.flush_thread_count.max(1) {
            tasks.push(tokio::spawn(self.clone().flush_worker()));
        }
        if let Some(p) = self.enqueue_period() {
            tasks.push(tokio::spawn(self.clone().enqueue_timer(p)));
        }
    }
}

impl Output for BufferedOutput {
    fn emit<'a>(
        &'a self,
        tag: &'a str,
        es: EventStream,
    ) -> BoxFuture<'a, Result<Receipt, EmitError>> {
        Box::pin(self.emit_stream(tag, es))
    }

    fn start(self: Arc<Self>) -> BoxFuture<'static, Result<(), String>> {
        BufferedOutput::start_output(self)
    }

    fn force_flush(&self) {
        if self.buffer().enqueue_all() > 0 || self.buffer().has_queued() {
            for _ in 0..self.cfg.flush_thread_count.max(1) {
                self.wake.notify_one();
            }
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.stop_and_flush())
    }

    fn metrics(&self) -> Option<OutputMetrics> {
        let (retry_count, next_retry_time, retry_wait) = {
            let r = self.retry.lock().unwrap_or_else(|p| p.into_inner());
            let secs = |t: EventTime| t.sec as f64 + f64::from(t.nsec) / 1e9;
            (
                r.state().map(|s| s.steps()).unwrap_or(0),
                r.next_time().map(|t| t.sec),
                r.state().map(|s| secs(s.next_time()) - secs(s.start())),
            )
        };
        let c = &self.counters;
        let buffer = self.buffer.get();
        let store = buffer.and_then(|b| b.store());
        let damage = |a: fn(&FileStore) -> &AtomicU64| {
            store
                .as_deref()
                .map(|s| a(s).load(Ordering::Relaxed))
                .unwrap_or(0)
        };
        Some(OutputMetrics {
            plugin_id: self.plugin_id.clone(),
            type_name: self.primary.type_name(),
            buffer: buffer.map(|b| b.stats()).unwrap_or_default(),
            total_limit_size: Some(self.cfg.total_limit_size),
            retry_count,
            next_retry_time,
            retry_wait,
            emit_count: c.emit_count.load(Ordering::Relaxed),
            emit_records: c.emit_records.load(Ordering::Relaxed),
            write_count: c.write_count.load(Ordering::Relaxed),
            write_errors: c.write_errors.load(Ordering::Relaxed),
            buffer_overflows: c.buffer_overflows.load(Ordering::Relaxed),
            backed_up: c.backed_up.load(Ordering::Relaxed),
            rollback_count: c.rollback_count.load(Ordering::Relaxed),
            damaged_frames: damage(|s| &s.damaged_frames),
            damaged_bytes: damage(|s| &s.damaged_bytes),
            writer: self.primary.metrics(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::config::OutputDefaults;
    use crate::config::parser::parse_str;
    use crate::time::TokioClock;
    use std::sync::atomic::AtomicUsize;

    /// A writer that fails while `failing` is set and records the times of its attempts.
    #[derive(Debug, Default)]
    struct Flaky {
        failing: AtomicBool,
        unrecoverable: AtomicBool,
        attempts: Mutex<Vec<f64>>,
        written: AtomicUsize,
        clock: Mutex<Option<Arc<dyn Clock>>>,
        name: &'static str,
    }

    impl ChunkWriter for Flaky {
        fn type_name(&self) -> &'static str {
            if self.name.is_empty() {
                "flaky"
            } else {
                self.name
            }
        }
        fn formats(&self) -> bool {
            true
        }
        fn format(&self, _tag: &str, _time: EventTime, _record: &[u8], out: &mut Vec<u8>) {
            out.extend_from_slice(b"x\n");
        }
        fn write<'a>(
            &'a self,
            chunk: &'a WriteChunk,
        ) -> BoxFuture<'a, Result<(), ChunkWriteError>> {
            let now = self
                .clock
                .lock()
                .unwrap()
                .as_ref()
                .map(|c| c.now().as_f64())
                .unwrap_or(0.0);
            self.attempts.lock().unwrap().push(now);
            let r = if self.unrecoverable.load(Ordering::SeqCst) {
                Err(ChunkWriteError::unrecoverable("bad path"))
            } else if self.failing.load(Ordering::SeqCst) {
                Err(ChunkWriteError::retryable("Errno::ECONNREFUSED", "down"))
            } else {
                self.written
                    .fetch_add(chunk.chunk.records as usize, Ordering::SeqCst);
                Ok(())
            };
            Box::pin(std::future::ready(r))
        }
    }

    fn config(buffer: &str) -> BufferConfig {
        let root = parse_str(
            &format!("<match **>\n<buffer>\n{buffer}\n</buffer>\n</match>\n"),
            "t.conf",
            ".".into(),
        )
        .unwrap();
        let m = &root.elements[0];
        let d = OutputDefaults {
            chunk_keys: Default::default(),
            buffer_type: "memory",
            timekey: None,
            chunk_limit_size: None,
            flush_at_shutdown: None,
            plugin: "test",
        };
        BufferConfig::from_section(&m.elements[0], m, &d).unwrap()
    }

    fn one_event() -> EventStream {
        EventStream::single(EventTime::new(1_000_000, 0), &[0x80])
    }

    fn setup(
        buffer: &str,
        secondary: Option<Arc<Flaky>>,
    ) -> (
        Arc<BufferedOutput>,
        Arc<Flaky>,
        Arc<dyn Clock>,
        tempfile::TempDir,
    ) {
        let clock: Arc<dyn Clock> = TokioClock::starting_at(EventTime::new(1_000_000, 0));
        let primary = Arc::new(Flaky::default());
        *primary.clock.lock().unwrap() = Some(clock.clone());
        if let Some(s) = &secondary {
            *s.clock.lock().unwrap() = Some(clock.clone());
        }
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = crate::output::BuildContext::new(Some(dir.path().to_path_buf()));
        ctx.clock = clock.clone();
        let out = Arc::new(BufferedOutput::new(
            "retr".into(),
            primary.clone(),
            secondary.map(|s| s as Arc<dyn ChunkWriter>),
            config(buffer),
            &ctx,
        ));
        (out, primary, clock, dir)
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_retries_then_backup_instead_of_drop() {
        // Scenario 81 on virtual time: attempts at t0, t0+1, t0+2, then give-up; sluice keeps the
        // chunk in the backup directory.
        let (out, primary, _clock, dir) = setup(
            "flush_mode interval\nflush_interval 1s\nretry_type periodic\nretry_wait 1s\nretry_max_times 2\nretry_randomize false\nflush_thread_interval 0.1",
            None,
        );
        primary.failing.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let attempts = primary.attempts.lock().unwrap().clone();
        assert_eq!(attempts.len(), 3, "{attempts:?}");
        let t0 = attempts[0];
        assert!(
            (attempts[1] - t0 - 1.0).abs() < 0.01 && (attempts[2] - t0 - 2.0).abs() < 0.01,
            "{attempts:?}"
        );
        let backup = dir.path().join("backup/worker0/retr");
        let files: Vec<_> = std::fs::read_dir(&backup)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            files.iter().filter(|f| f.ends_with(".log")).count(),
            1,
            "{files:?}"
        );
        assert_eq!(out.buffer().stats(), BufferStats::default());
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_while_retrying_and_after() {
        let (out, primary, _clock, _dir) = setup(
            "flush_mode interval\nflush_interval 1s\nretry_type periodic\nretry_wait 2s\nretry_randomize false\nflush_thread_interval 0.1\ntotal_limit_size 1m",
            None,
        );
        primary.failing.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let m = out.metrics().unwrap();
        assert_eq!(m.type_name, "flaky");
        assert_eq!(m.total_limit_size, Some(1 << 20));
        assert_eq!((m.emit_count, m.emit_records), (1, 1));
        assert_eq!((m.write_errors, m.rollback_count, m.write_count), (1, 1, 0));
        assert_eq!(m.retry_wait, Some(2.0));
        assert!(m.next_retry_time.is_some());
        assert_eq!((m.damaged_frames, m.damaged_bytes), (0, 0));
        primary.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let m = out.metrics().unwrap();
        assert_eq!((m.write_errors, m.rollback_count, m.write_count), (1, 1, 1));
        assert_eq!((m.retry_wait, m.next_retry_time), (None, None));
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn secondary_takes_over_at_threshold() {
        // Exponential wait 1, retry_timeout 60: the switch happens at t0 + 48.
        let secondary = Arc::new(Flaky {
            name: "secondary",
            ..Default::default()
        });
        let (out, primary, _clock, _dir) = setup(
            "flush_mode interval\nflush_interval 1s\nretry_timeout 60\nretry_randomize false\nflush_thread_interval 0.1",
            Some(secondary.clone()),
        );
        primary.failing.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(70)).await;
        let p = primary.attempts.lock().unwrap().clone();
        let s = secondary.attempts.lock().unwrap().clone();
        assert_eq!(s.len(), 1, "primary {p:?} secondary {s:?}");
        assert!((s[0] - p[0] - 48.0).abs() < 0.01, "{p:?} {s:?}");
        assert_eq!(secondary.written.load(Ordering::SeqCst), 1);
        assert_eq!(out.metrics().unwrap().retry_count, 0);
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn unrecoverable_goes_to_backup_without_retry() {
        let (out, primary, _clock, dir) = setup("flush_mode immediate", None);
        primary.unrecoverable.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(primary.attempts.lock().unwrap().len(), 1);
        let data = std::fs::read_dir(dir.path().join("backup/worker0/retr"))
            .unwrap()
            .count();
        assert_eq!(data, 2, "data file and its metadata");
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn overflow_actions() {
        let (out, primary, _clock, _dir) = setup(
            "flush_mode lazy\nchunk_limit_size 4\ntotal_limit_size 8",
            None,
        );
        primary.failing.store(true, Ordering::SeqCst);
        for _ in 0..4 {
            out.emit("t", one_event()).await.unwrap();
        }
        assert!(matches!(
            out.emit("t", one_event()).await,
            Err(EmitError::BufferOverflow)
        ));

        let (out, _primary, _clock, dir) = setup("flush_mode lazy\nchunk_limit_size 4\ntotal_limit_size 8\noverflow_action drop_oldest_chunk", None);
        for _ in 0..4 {
            out.emit("t", one_event()).await.unwrap();
        }
        out.emit("t", one_event()).await.unwrap();
        assert!(
            dir.path().join("backup/worker0/retr").exists(),
            "the dropped chunk is kept"
        );

        let (out, primary, _clock, _dir) = setup("flush_mode lazy\nchunk_limit_size 4\ntotal_limit_size 8\noverflow_action block\nretry_randomize false", None);
        primary.failing.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        for _ in 0..4 {
            out.emit("t", one_event()).await.unwrap();
        }
        let o = out.clone();
        let blocked = tokio::spawn(async move { o.emit("t", one_event()).await });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !blocked.is_finished(),
            "blocked while the destination fails"
        );
        primary.failing.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(blocked.await.unwrap().is_ok());
        assert!(primary.written.load(Ordering::SeqCst) >= 4);
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_in_retry_state_keeps_memory_chunks() {
        let (out, primary, _clock, dir) = setup(
            "flush_mode interval\nflush_interval 1s\nretry_wait 5s\nflush_thread_interval 0.1",
            None,
        );
        primary.failing.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        out.emit("t", one_event()).await.unwrap();
        out.shutdown().await;
        let logs = std::fs::read_dir(dir.path().join("backup/worker0/retr"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".log")
            })
            .count();
        assert_eq!(logs, 2, "the failing chunk and the staged one");
    }
}
