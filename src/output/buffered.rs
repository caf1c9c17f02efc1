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
//! - **Delayed commit** (Fluentd's `try_write`): a writer whose [`ChunkWriter::delayed_commit`]
//!   is true gets the chunk with a [`CommitHandle`] and the chunk stays in flight until the
//!   writer commits it (then it is purged) or rolls it back. A chunk not committed within
//!   `delayed_commit_timeout` of the start of its `try_write` goes back to the head of the queue
//!   (warn `failed to flush the buffer chunk, timeout to commit.`) and counts as a failed flush
//!   in the retry state; flush workers watch the deadlines. At shutdown, chunks still waiting
//!   for their commit are rolled back (info `delayed commit for buffer chunks was cancelled in
//!   shutdown`).
//! - **Shutdown**: with `flush_at_shutdown`, everything is queued and written unless the output
//!   is retrying; whatever a memory buffer still holds then goes to the backup directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;

use super::retry::{FailureOutcome, OutputRetry, RetryPolicy};
use super::{BoxFuture, DurableWait, EmitError, Output, Receipt, Rejected, SyncProgress};
use crate::buffer::chunk::decompress;
use crate::buffer::chunk_id::ChunkId;
use crate::buffer::config::{
    BufferConfig, BufferType, Compress, FlushMode, OverflowAction, SyncMode,
};
use crate::buffer::core::{Buffer, BufferLimits, BufferStats, FlushChunk, Group, WriteError};
use crate::buffer::file::{FileStore, Layout};
use crate::buffer::metadata::{Metadata, MetadataBuilder};
use crate::buffer::records::ChunkRecords;
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

    /// The chunk's records' bytes, decompressed, for a writer: a chunk that cannot be
    /// decompressed is a retryable write error (Fluentd's class for it).
    pub fn records(&self) -> Result<Bytes, ChunkWriteError> {
        self.data().map_err(|e| {
            ChunkWriteError::retryable(
                "Zlib::GzipFile::Error",
                format!("cannot decompress chunk {}: {e}", self.chunk.id),
            )
        })
    }

    /// The chunk's records' bytes, decompressed.
    pub fn data(&self) -> std::io::Result<Bytes> {
        let stored = self.chunk.stored.read_all()?;
        match self.compress {
            Compress::Text => Ok(stored),
            c => decompress(&stored, c, self.decompression_limit).map(Bytes::from),
        }
    }

    /// The chunk's records for a writer that reads them range by range: a file chunk stays on
    /// disk (memory independent of the chunk's size); a compressed chunk is decompressed whole.
    pub fn records_by_range(&self) -> Result<ChunkRecords, ChunkWriteError> {
        match self.compress {
            Compress::Text => Ok(self.chunk.stored.clone()),
            _ => self.records().map(ChunkRecords::Memory),
        }
    }

    /// The delivery records as the buffer has them now: those of earlier attempts and any
    /// written since this chunk was taken for flushing (e.g. by an output delivering a staged
    /// chunk ahead of its flush).
    pub fn current_deliveries(&self) -> Vec<Bytes> {
        self.journal
            .as_ref()
            .and_then(|b| b.deliveries_of(self.chunk.id))
            .unwrap_or_else(|| self.chunk.deliveries.clone())
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

    /// Whether this writer commits its chunks later (Fluentd's delayed commit: `try_write`
    /// preferred over `write`). The driver then calls [`ChunkWriter::try_write`] instead of
    /// [`ChunkWriter::write`], also when this writer is the `<secondary>`.
    fn delayed_commit(&self) -> bool {
        false
    }

    /// Starts delivering one chunk whose success is only known later (e.g. a forward output
    /// waiting for the receiver's ack). `Ok` means the chunk was handed over: it stays in flight
    /// until `commit` is used — [`CommitHandle::commit`] purges it, [`CommitHandle::rollback`]
    /// puts it back at the head of the queue and counts a failed flush. Dropping the handle
    /// without either leaves the decision to `delayed_commit_timeout`. `Err` is handled as a
    /// failed [`ChunkWriter::write`] (retry, or backup for an unrecoverable error); the handle
    /// is then void. The default writes synchronously and commits at once.
    fn try_write<'a>(
        &'a self,
        chunk: &'a WriteChunk,
        commit: CommitHandle,
    ) -> BoxFuture<'a, Result<(), ChunkWriteError>> {
        Box::pin(async move {
            self.write(chunk).await?;
            commit.commit();
            Ok(())
        })
    }

    /// Prepares the destination before the first flush (connects, checks credentials and
    /// buckets, finds what an earlier run left half done in `buffer`). An error stops
    /// sluice's start-up.
    fn start<'a>(&'a self, buffer: &'a Arc<Buffer>) -> BoxFuture<'a, Result<(), String>> {
        let _ = buffer;
        Box::pin(async { Ok(()) })
    }

    /// A task the driver runs beside its flush workers, from start-up until `stop` flips (at
    /// shutdown, before the final flush): e.g. the s3 output uploading the parts of staged
    /// chunks ahead of their flush. None by default.
    fn background(
        &self,
        buffer: &Arc<Buffer>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<BoxFuture<'static, ()>> {
        let _ = (buffer, stop);
        None
    }

    /// Figures of this writer's own (name, value), added to the output's metrics.
    fn metrics(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// The commit of one chunk handed to [`ChunkWriter::try_write`] (Fluentd's `commit_write` /
/// `rollback_write` for that chunk id). It can be moved to another task or thread and used
/// once; a handle used after its chunk timed out or was cancelled at shutdown does nothing (the
/// chunk is in the queue again and will be delivered again: at-least-once).
#[derive(Debug)]
pub struct CommitHandle {
    id: ChunkId,
    /// Which `try_write` of the chunk this handle belongs to.
    attempt: u64,
    output: Weak<BufferedOutput>,
}

impl CommitHandle {
    /// A handle that reports to nobody (tests of writers outside a buffered output).
    pub fn detached(id: ChunkId) -> CommitHandle {
        CommitHandle {
            id,
            attempt: 0,
            output: Weak::new(),
        }
    }

    /// The chunk this handle commits.
    pub fn chunk_id(&self) -> ChunkId {
        self.id
    }

    /// The destination has the chunk: it leaves the buffer, and a retry state ends
    /// (`retry succeeded.`).
    pub fn commit(self) {
        if let Some(out) = self.output.upgrade() {
            out.delayed_committed(self.id);
        }
    }

    /// The destination did not take the chunk: it goes back to the head of the queue and the
    /// failure counts in the retry state (warn `failed to flush the buffer.`). Unrecoverable
    /// errors should be returned by `try_write` itself; here every error is retried. A rollback
    /// of an attempt that already timed out does nothing (even if a later attempt of the same
    /// chunk is in flight).
    pub fn rollback(self, error: ChunkWriteError) {
        if let Some(out) = self.output.upgrade() {
            out.delayed_rolled_back(self.id, self.attempt, error);
        }
    }
}

/// A chunk handed to a delayed-commit writer, waiting for its commit.
#[derive(Debug, Clone, Copy)]
struct Pending {
    id: ChunkId,
    /// Which `try_write` of the chunk (a number unique within the output).
    attempt: u64,
    /// When its `try_write` started (Fluentd's `flushed_at`).
    started: EventTime,
    /// `started + delayed_commit_timeout`: rolled back when the clock reaches it.
    deadline: EventTime,
    /// Whether the secondary is delivering it.
    on_secondary: bool,
}

/// `t` plus `d`.
fn time_after(t: EventTime, d: Duration) -> EventTime {
    let nanos = t.nsec as u128 + d.subsec_nanos() as u128;
    EventTime::new(
        t.sec
            .saturating_add(d.as_secs().min(i64::MAX as u64) as i64)
            .saturating_add((nanos / 1_000_000_000) as i64),
        (nanos % 1_000_000_000) as u32,
    )
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
    /// Permissions of backup files and of the directories created for them (`<system>`
    /// `file_permission`, `dir_permission`).
    backup_modes: (u32, u32),
    log_zone: Zone,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    counters: Counters,
    /// This output, for the [`CommitHandle`]s of delayed-commit writes (set at start).
    me: std::sync::OnceLock<Weak<BufferedOutput>>,
    /// Chunks handed to a delayed-commit writer and not committed yet, oldest first.
    pending: Mutex<Vec<Pending>>,
    /// Numbers the `try_write` attempts.
    attempts: AtomicU64,
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
            backup_modes: (ctx.file_mode, ctx.dir_mode),
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
            me: std::sync::OnceLock::new(),
            pending: Mutex::new(Vec::new()),
            attempts: AtomicU64::new(0),
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
                stored: ChunkRecords::Memory(b.records),
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

    /// Writes one dequeued chunk and handles the outcome. Returns whether it was written (for a
    /// delayed-commit writer: handed over, its commit comes later).
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
        let id = wc.chunk.id;
        let result = if writer.delayed_commit() {
            let timeout = Duration::from_secs_f64(self.cfg.delayed_commit_timeout.max(0.0));
            let attempt = self.attempts.fetch_add(1, Ordering::Relaxed) + 1;
            self.pending_lock().push(Pending {
                id,
                attempt,
                started: now,
                deadline: time_after(now, timeout),
                on_secondary,
            });
            let handle = CommitHandle {
                id,
                attempt,
                output: self.me.get().cloned().unwrap_or_default(),
            };
            match writer.try_write(&wc, handle).await {
                // In flight until the writer commits (which it may have done already).
                Ok(()) => return true,
                Err(e) => {
                    if self.take_pending(id, Some(attempt)).is_none() {
                        tracing::warn!(plugin_id = %self.plugin_id, chunk_id = %id, error = %e,
                            "try_write failed after the chunk was committed or rolled back; the error is ignored");
                        return false;
                    }
                    Err(e)
                }
            }
        } else {
            writer.write(&wc).await
        };
        match result {
            Ok(()) => {
                self.buffer().purge(id);
                self.written(on_secondary);
                true
            }
            Err(e) if e.unrecoverable => {
                self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
                self.unrecoverable(wc, e, on_secondary).await;
                false
            }
            Err(e) => {
                self.failed_flush(id, Some(&e), on_secondary);
                false
            }
        }
    }

    /// A chunk was written (and purged): counts it and ends a retry state.
    fn written(&self, on_secondary: bool) {
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
    }

    /// A flush of in-flight chunk `id` failed (`error`), or its delayed commit timed out (no
    /// `error`): the chunk goes back to the head of the queue and the retry state steps; at the
    /// limit every queued chunk goes to the backup directory.
    fn failed_flush(&self, id: ChunkId, error: Option<&ChunkWriteError>, on_secondary: bool) {
        if !self.buffer().takeback(id) {
            return;
        }
        self.counters.write_errors.fetch_add(1, Ordering::Relaxed);
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
        let timeout = ChunkWriteError::retryable("DelayedCommitTimeout", "timeout to commit");
        let e = error.unwrap_or(&timeout);
        match outcome {
            FailureOutcome::Retry(f) => match error {
                Some(e) => tracing::warn!(
                    plugin_id = %self.plugin_id,
                    "failed to flush the buffer{with}. {} chunk=\"{id}\" error_class={} error=\"{}\"",
                    f.text(&self.log_zone), e.class, e.message
                ),
                // The timeout has been logged; Fluentd adds nothing for the retry step.
                None => {
                    tracing::debug!(plugin_id = %self.plugin_id, chunk_id = %id, "the commit timeout counts as a failed flush: {}", f.text(&self.log_zone))
                }
            },
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
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, Vec<Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the pending delayed commit of chunk `id` (of that attempt only, if given).
    fn take_pending(&self, id: ChunkId, attempt: Option<u64>) -> Option<Pending> {
        let mut pending = self.pending_lock();
        let i = pending
            .iter()
            .position(|p| p.id == id && attempt.is_none_or(|a| a == p.attempt))?;
        Some(pending.remove(i))
    }

    /// [`CommitHandle::commit`]: the chunk is delivered (by whichever attempt: a late commit
    /// of an attempt that timed out still purges the chunk if a later attempt has it in flight).
    fn delayed_committed(&self, id: ChunkId) {
        let pending = self.take_pending(id, None);
        let purged = self.buffer.get().is_some_and(|b| b.purge(id));
        if !purged {
            tracing::debug!(plugin_id = %self.plugin_id, chunk_id = %id,
                "commit of a chunk no longer in flight (timed out or cancelled in shutdown); it stays in the buffer");
            return;
        }
        self.written(pending.is_some_and(|p| p.on_secondary));
    }

    /// [`CommitHandle::rollback`]: the delivery failed.
    fn delayed_rolled_back(&self, id: ChunkId, attempt: u64, error: ChunkWriteError) {
        let Some(p) = self.take_pending(id, Some(attempt)) else {
            tracing::debug!(plugin_id = %self.plugin_id, chunk_id = %id,
                "rollback of a chunk no longer waiting for its commit; nothing to do");
            return;
        };
        if self.buffer.get().is_some() {
            self.failed_flush(id, Some(&error), p.on_secondary);
        }
    }

    /// The earliest deadline of the pending delayed commits.
    fn next_commit_deadline(&self) -> Option<EventTime> {
        self.pending_lock().iter().map(|p| p.deadline).min()
    }

    /// `d`, shortened to end at the next delayed-commit deadline (flush workers sleep no longer).
    fn nap(&self, d: Duration) -> Duration {
        match self.next_commit_deadline() {
            Some(t) => d.min(until(self.clock.now(), t)),
            None => d,
        }
    }

    /// Takes back every chunk whose delayed commit is overdue (Fluentd's `try_rollback_write`).
    fn expire_commits(&self) {
        let now = self.clock.now();
        let expired: Vec<Pending> = {
            let mut pending = self.pending_lock();
            let (expired, keep) = pending.drain(..).partition(|p| p.deadline <= now);
            *pending = keep;
            expired
        };
        for p in expired {
            tracing::warn!(plugin_id = %self.plugin_id, chunk_id = %p.id,
                flushed_at = %self.log_zone.strftime(p.started, "%Y-%m-%d %H:%M:%S %z"),
                "failed to flush the buffer chunk, timeout to commit.");
            self.failed_flush(p.id, None, p.on_secondary);
        }
    }

    /// Shutdown: chunks still waiting for their commit go back to the queue (Fluentd's
    /// `try_rollback_all`).
    fn cancel_commits(&self) {
        let all: Vec<Pending> = std::mem::take(&mut *self.pending_lock());
        for p in all {
            if self.buffer().takeback(p.id) {
                self.counters.rollback_count.fetch_add(1, Ordering::Relaxed);
                tracing::info!(plugin_id = %self.plugin_id, chunk_id = %p.id,
                    "delayed commit for buffer chunks was cancelled in shutdown");
            }
        }
    }

    async fn unrecoverable(&self, wc: WriteChunk, e: ChunkWriteError, on_secondary: bool) {
        let id = wc.chunk.id;
        // Fluentd logs the error as `error_class=<class> error="<message>"` after the text.
        let error =
            |e: &ChunkWriteError| format!("error_class={} error=\"{}\"", e.class, e.message);
        if on_secondary {
            tracing::warn!(plugin_id = %self.plugin_id, "got unrecoverable error in secondary. {}", error(&e));
        } else {
            match &self.secondary {
                None => tracing::warn!(
                    plugin_id = %self.plugin_id,
                    "got unrecoverable error in primary and no secondary {}", error(&e)
                ),
                Some(s) if s.type_name() == self.primary.type_name() => tracing::warn!(
                    plugin_id = %self.plugin_id,
                    "got unrecoverable error in primary and secondary type is same as primary. Skip secondary {}",
                    error(&e)
                ),
                // A delayed commit of the secondary would leave the chunk in flight on both sides.
                Some(s) if s.delayed_commit() => tracing::warn!(
                    plugin_id = %self.plugin_id,
                    "got unrecoverable error in primary and secondary is async output. Skip secondary for backup {}",
                    error(&e)
                ),
                Some(s) => {
                    tracing::warn!(plugin_id = %self.plugin_id,
                        "got unrecoverable error in primary. Skip retry and flush chunk to secondary {}", error(&e));
                    match s.write(&wc).await {
                        Ok(()) => {
                            self.buffer().purge(id);
                            self.written(true);
                            return;
                        }
                        Err(e2) => tracing::warn!(
                            plugin_id = %self.plugin_id,
                            "got an error in secondary for unrecoverable error {}", error(&e2)
                        ),
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
        let (file_mode, dir_mode) = self.backup_modes;
        let create = |p: &std::path::Path| {
            std::os::unix::fs::OpenOptionsExt::mode(
                std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(true),
                file_mode,
            )
            .open(p)
        };
        let result = (|| -> std::io::Result<()> {
            super::file::mkdir_p(&self.backup_dir, dir_mode)?;
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
            let mut m = create(&path.with_extension("log.meta.json"))?;
            std::io::Write::write_all(&mut m, &serde_json::to_vec_pretty(&meta)?)?;
            m.sync_all()?;
            // Truncated, not appended as Fluentd does: a backup interrupted by a crash is
            // written again whole (the chunk is still in the buffer), never twice.
            let mut f = create(&path)?;
            std::io::Write::write_all(&mut f, &data)?;
            f.sync_all()?;
            // The new names must survive a crash too: the chunk is purged right after.
            std::fs::File::open(&self.backup_dir)?.sync_all()
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
            self.expire_commits();
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
                    _ = tokio::time::sleep(self.nap(d)) => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            match self.buffer().dequeue() {
                Some(chunk) => {
                    let written = self.flush_chunk(chunk).await;
                    if written && self.buffer().has_queued() && !burst.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(self.nap(burst)) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
                None => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(self.nap(idle)) => {}
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
        self.cancel_commits();
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
            let _ = self.me.set(Arc::downgrade(&self));
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
        if let Some(task) = self
            .primary
            .background(self.buffer(), self.stop.subscribe())
        {
            tasks.push(tokio::spawn(task));
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

    /// A chunk a test writer wrote: when (virtual epoch seconds), its tag and record count.
    #[derive(Debug, Clone, PartialEq)]
    struct Written {
        at: f64,
        tag: Option<String>,
        records: u64,
    }

    /// A writer that fails while `failing` is set and records the times of its attempts and the
    /// chunks it wrote. Each event is formatted as `line_len` bytes (`x…x\n`; 2 when 0). While
    /// `unrecoverable` is set it fails with an unrecoverable error of class `class`
    /// (`Fluent::UnrecoverableError` when empty).
    #[derive(Debug, Default)]
    struct Flaky {
        failing: AtomicBool,
        unrecoverable: AtomicBool,
        class: &'static str,
        attempts: Mutex<Vec<f64>>,
        /// The chunk of each attempt.
        attempted: Mutex<Vec<ChunkId>>,
        writes: Mutex<Vec<Written>>,
        written: AtomicUsize,
        clock: Mutex<Option<Arc<dyn Clock>>>,
        name: &'static str,
        line_len: usize,
    }

    impl Flaky {
        fn now(&self) -> f64 {
            self.clock
                .lock()
                .unwrap()
                .as_ref()
                .map(|c| c.now().as_f64())
                .unwrap_or(0.0)
        }

        fn writes(&self) -> Vec<Written> {
            self.writes.lock().unwrap().clone()
        }
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
            let n = self.line_len.max(2);
            out.extend(std::iter::repeat_n(b'x', n - 1));
            out.push(b'\n');
        }
        fn write<'a>(
            &'a self,
            chunk: &'a WriteChunk,
        ) -> BoxFuture<'a, Result<(), ChunkWriteError>> {
            let now = self.now();
            self.attempts.lock().unwrap().push(now);
            self.attempted.lock().unwrap().push(chunk.chunk.id);
            let r = if self.unrecoverable.load(Ordering::SeqCst) {
                let mut e = ChunkWriteError::unrecoverable("bad path");
                if !self.class.is_empty() {
                    e.class = self.class.into();
                }
                Err(e)
            } else if self.failing.load(Ordering::SeqCst) {
                Err(ChunkWriteError::retryable("Errno::ECONNREFUSED", "down"))
            } else {
                self.written
                    .fetch_add(chunk.chunk.records as usize, Ordering::SeqCst);
                self.writes.lock().unwrap().push(Written {
                    at: now,
                    tag: chunk.chunk.metadata.tag.as_deref().map(str::to_string),
                    records: chunk.chunk.records,
                });
                Ok(())
            };
            Box::pin(std::future::ready(r))
        }
    }

    /// Log lines (DEBUG and up) emitted on this thread while the guard lives. Tests on the
    /// paused clock run on a current-thread runtime, so the driver's tasks log here too.
    #[derive(Debug, Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
            let logs = Logs::default();
            let sink = logs.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || sink.clone())
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .without_time()
                .finish();
            (logs, tracing::subscriber::set_default(subscriber))
        }

        /// The lines containing `text`.
        fn lines(&self, text: &str) -> Vec<String> {
            String::from_utf8_lossy(&self.0.lock().unwrap())
                .lines()
                .filter(|l| l.contains(text))
                .map(str::to_string)
                .collect()
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn config(arg: &str, buffer: &str) -> BufferConfig {
        let root = parse_str(
            &format!("<match **>\n<buffer {arg}>\n{buffer}\n</buffer>\n</match>\n"),
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

    /// Sleeps (virtual time) until the clock reads `sec` epoch seconds.
    async fn sleep_until(clock: &Arc<dyn Clock>, sec: f64) {
        let target = EventTime::new(sec.floor() as i64, ((sec.fract()) * 1e9).round() as u32);
        tokio::time::sleep(until(clock.now(), target)).await;
    }

    type Setup = (
        Arc<BufferedOutput>,
        Arc<Flaky>,
        Arc<dyn Clock>,
        tempfile::TempDir,
    );

    fn setup(buffer: &str, secondary: Option<Arc<Flaky>>) -> Setup {
        setup_with(1_000_000, "", buffer, Flaky::default(), secondary)
    }

    /// An output around `primary` whose clock starts at `now` (epoch seconds), with
    /// `<buffer arg>` holding `buffer`.
    fn setup_with(
        now: i64,
        arg: &str,
        buffer: &str,
        primary: Flaky,
        secondary: Option<Arc<Flaky>>,
    ) -> Setup {
        let clock: Arc<dyn Clock> = TokioClock::starting_at(EventTime::new(now, 0));
        let primary = Arc::new(primary);
        *primary.clock.lock().unwrap() = Some(clock.clone());
        if let Some(s) = &secondary {
            *s.clock.lock().unwrap() = Some(clock.clone());
        }
        let (out, dir) = build(
            &clock,
            arg,
            buffer,
            primary.clone(),
            secondary.map(|s| s as Arc<dyn ChunkWriter>),
        );
        (out, primary, clock, dir)
    }

    /// A buffered output (plugin id `retr`, backups below the returned directory) on `clock`.
    fn build(
        clock: &Arc<dyn Clock>,
        arg: &str,
        buffer: &str,
        primary: Arc<dyn ChunkWriter>,
        secondary: Option<Arc<dyn ChunkWriter>>,
    ) -> (Arc<BufferedOutput>, tempfile::TempDir) {
        build_as(clock, "retr", |_| {}, arg, buffer, primary, secondary)
    }

    /// [`build`] with plugin id `id` and the build context (root_dir = the returned directory)
    /// changed by `adjust`.
    fn build_as(
        clock: &Arc<dyn Clock>,
        id: &str,
        adjust: impl FnOnce(&mut crate::output::BuildContext),
        arg: &str,
        buffer: &str,
        primary: Arc<dyn ChunkWriter>,
        secondary: Option<Arc<dyn ChunkWriter>>,
    ) -> (Arc<BufferedOutput>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut ctx = crate::output::BuildContext::new(Some(dir.path().to_path_buf()));
        ctx.clock = clock.clone();
        adjust(&mut ctx);
        let out = Arc::new(BufferedOutput::new(
            id.into(),
            primary,
            secondary,
            config(arg, buffer),
            &ctx,
        ));
        (out, dir)
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

    /// Permission bits of `p`.
    fn mode_of(p: &std::path::Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// The names in directory `d`, sorted.
    fn names_in(d: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("{}: {e}", d.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// An output `backup_test` (`<buffer tag>`, interval mode, flush_interval 1) whose primary
    /// fails with an unrecoverable error of `class`; root_dir is the returned directory and
    /// `adjust` changes the build context (e.g. `<system> dir_permission`).
    fn unrecoverable_setup(
        class: &'static str,
        buffer: &str,
        adjust: impl FnOnce(&mut crate::output::BuildContext),
    ) -> Setup {
        let clock: Arc<dyn Clock> = TokioClock::starting_at(EventTime::new(1_000_000, 0));
        let primary = Arc::new(Flaky {
            class,
            line_len: 8,
            ..Default::default()
        });
        *primary.clock.lock().unwrap() = Some(clock.clone());
        primary.unrecoverable.store(true, Ordering::SeqCst);
        let (out, root) = build_as(
            &clock,
            "backup_test",
            adjust,
            "tag",
            &format!("flush_interval 1\nflush_thread_burst_interval 0.1\n{buffer}"),
            primary.clone(),
            None,
        );
        (out, primary, clock, root)
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_097_unrecoverable_error_goes_to_backup_without_retry() {
        // Each error class Fluentd treats as unrecoverable (sluice's writers mark such errors
        // `unrecoverable` and name the class), with the default directory mode, then once more
        // with `<system> dir_permission 744` (the build context's dir_mode).
        let classes = [
            "Fluent::UnrecoverableError",
            "TypeError",
            "ArgumentError",
            "NoMethodError",
            "MessagePack::UnpackError",
            "EncodingError",
            "JSON::GeneratorError",
        ];
        let cases = classes
            .iter()
            .map(|c| (*c, None))
            .chain([("Fluent::UnrecoverableError", Some(0o744))]);
        for (class, dir_permission) in cases {
            let (logs, guard) = Logs::capture();
            let (out, primary, _clock, root) = unrecoverable_setup(class, "", |ctx| {
                if let Some(m) = dir_permission {
                    ctx.dir_mode = m;
                }
            });
            out.clone().start().await.unwrap();
            out.emit("test.tag.1", one_event()).await.unwrap();
            // Written within 2 s (flush_interval 1); a retry would come 1 s (retry_wait) later.
            tokio::time::sleep(Duration::from_secs(60)).await;
            let attempted = primary.attempted.lock().unwrap().clone();
            assert_eq!(attempted.len(), 1, "{class}: not retried");
            let id = attempted[0].to_string();
            assert!(
                id.len() == 32
                    && id
                        .chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
                "{id}"
            );
            // R/backup/worker0/backup_test/<chunk id hex>.log holds the chunk's data.
            let backup_dir = root.path().join("backup/worker0/backup_test");
            let data = backup_dir.join(format!("{id}.log"));
            assert_eq!(
                names_in(&backup_dir),
                vec![format!("{id}.log"), format!("{id}.log.meta.json")],
                "{class}"
            );
            assert_eq!(std::fs::read(&data).unwrap(), b"xxxxxxx\n");
            let warn = logs.lines("got unrecoverable error in primary and no secondary");
            assert_eq!(warn.len(), 1, "{class}: {}", logs.text());
            assert!(
                warn[0].contains("WARN")
                    && warn[0].contains(&format!(
                        "no secondary error_class={class} error=\"bad path\""
                    )),
                "{warn:?}"
            );
            let moved = logs.lines("bad chunk is moved to ");
            assert_eq!(moved.len(), 1, "{}", logs.text());
            assert!(
                moved[0].contains(&format!("bad chunk is moved to {} ", data.display())),
                "{moved:?}"
            );
            // No retry state, nothing left in the buffer.
            assert!(logs.lines("failed to flush the buffer").is_empty());
            assert!(!out.retrying());
            assert_eq!(out.buffer().stats(), BufferStats::default());
            let m = out.metrics().unwrap();
            assert_eq!(
                (m.write_errors, m.backed_up, m.write_count, m.rollback_count),
                (1, 1, 0, 0)
            );
            // Directories 0755 (or dir_permission), files 0644, as Fluentd creates them.
            let dir_mode = dir_permission.unwrap_or(0o755);
            for d in ["backup", "backup/worker0", "backup/worker0/backup_test"] {
                assert_eq!(
                    format!("{:o}", mode_of(&root.path().join(d))),
                    format!("{dir_mode:o}"),
                    "{d} with dir_permission {dir_permission:?}"
                );
            }
            assert_eq!(format!("{:o}", mode_of(&data)), "644");
            out.shutdown().await;
            drop(guard);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_098_disable_chunk_backup_throws_the_chunk_away() {
        let (logs, _guard) = Logs::capture();
        let (out, primary, _clock, root) = unrecoverable_setup(
            "Fluent::UnrecoverableError",
            "disable_chunk_backup true",
            |_| {},
        );
        out.clone().start().await.unwrap();
        out.emit("test.tag.1", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let attempted = primary.attempted.lock().unwrap().clone();
        assert_eq!(attempted.len(), 1, "not retried");
        assert_eq!(
            logs.lines("got unrecoverable error in primary and no secondary")
                .len(),
            1,
            "{}",
            logs.text()
        );
        let thrown = logs.lines("disable_chunk_backup is true");
        assert_eq!(thrown.len(), 1, "{}", logs.text());
        assert!(
            thrown[0].contains("WARN")
                && thrown[0].contains(&format!(
                    "disable_chunk_backup is true. {} chunk is thrown away",
                    attempted[0]
                )),
            "{thrown:?}"
        );
        // No backup file (not even the directory), and the chunk is gone.
        assert!(!root.path().join("backup").exists());
        assert!(logs.lines("bad chunk is moved to").is_empty());
        assert!(logs.lines("failed to flush the buffer").is_empty());
        assert_eq!(out.buffer().stats(), BufferStats::default());
        let m = out.metrics().unwrap();
        assert_eq!((m.write_errors, m.backed_up, m.write_count), (1, 0, 0));
        out.shutdown().await;
        assert!(!root.path().join("backup").exists(), "nothing left at stop");
    }

    #[tokio::test(start_paused = true)]
    async fn overflow_throw_exception_and_drop_oldest_queued_chunk() {
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
    }

    /// 2019-02-08 00:01:00 +0900.
    const S71_START: i64 = 1_549_551_660;
    /// 2019-02-08 00:02:00 +0900, the event.
    const S71_EVENT: i64 = 1_549_551_720;
    /// 2019-02-09 00:00:00 +0900: the end of the event's day in +0900.
    const S71_DAY_END: i64 = 1_549_638_000;

    #[tokio::test(start_paused = true)]
    async fn scenario_071_timekey_wait_with_zone() {
        // timekey 1d, timekey_wait 10 s in +0900: the chunk of 2019-02-08 (+0900) becomes
        // flushable at 2019-02-09 00:00:10 +0900; the enqueue timer runs every
        // max(min(86400, 10) / 11, flush_thread_interval) = 1 s.
        let (out, primary, clock, _dir) = setup_with(
            S71_START,
            "time",
            "timekey 86400\ntimekey_wait 10\ntimekey_zone +0900\nflush_thread_count 1\nflush_thread_burst_interval 0.01",
            Flaky::default(),
            None,
        );
        assert_eq!(out.enqueue_period(), Some(Duration::from_secs(1)));
        out.clone().start().await.unwrap();
        out.emit(
            "test.tag",
            EventStream::single(EventTime::new(S71_EVENT, 0), &[0x80]),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(primary.attempts.lock().unwrap().is_empty());
        // Not written at 2019-02-09 00:00:08 +0900 (nor one tick before it is due).
        sleep_until(&clock, (S71_DAY_END + 8) as f64).await;
        assert!(primary.attempts.lock().unwrap().is_empty());
        sleep_until(&clock, (S71_DAY_END + 9) as f64 + 0.5).await;
        assert!(primary.attempts.lock().unwrap().is_empty());
        // Written by 00:00:12 +0900, at the first enqueue pass at or after 00:00:10.
        sleep_until(&clock, (S71_DAY_END + 12) as f64).await;
        let w = primary.writes();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].records, 1);
        let due = (S71_DAY_END + 10) as f64;
        assert!(
            w[0].at >= due && w[0].at <= due + 1.0,
            "written {} s after 00:00:00 +0900",
            w[0].at - S71_DAY_END as f64
        );
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_073_lazy_without_time_key_waits_for_shutdown() {
        // `<buffer []>` `flush_mode lazy`: no enqueue timer, so nothing is written even a day
        // later; the memory buffer's flush_at_shutdown writes the chunk at STOP.
        let (out, primary, clock, dir) =
            setup_with(1_000_000, "[]", "flush_mode lazy", Flaky::default(), None);
        assert_eq!(out.enqueue_period(), None, "no enqueue timer");
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(86_400 + 3_600)).await;
        assert!(primary.attempts.lock().unwrap().is_empty());
        assert_eq!(out.buffer().layout(), (vec![], vec![1]), "still staged");
        let stopped_at = clock.now().as_f64();
        out.shutdown().await;
        let w = primary.writes();
        assert_eq!(
            w,
            vec![Written {
                at: stopped_at,
                tag: None,
                records: 1
            }]
        );
        assert!(!dir.path().join("backup").exists(), "nothing left over");
    }

    /// 2016-04-13 14:04:01 +0900.
    const S74_START: i64 = 1_460_523_841;

    #[tokio::test(start_paused = true)]
    async fn scenario_074_full_chunk_written_at_once_rest_after_interval() {
        // `<buffer tag>` flush_interval 10, chunk_limit_size 1024, 197-byte events: a chunk is
        // full at 5 events (985 >= 1024 * 0.95).
        let (out, primary, clock, _dir) = setup_with(
            S74_START,
            "tag",
            "flush_interval 10\nflush_thread_count 1\nflush_thread_burst_interval 0.1\nchunk_limit_size 1024\nqueued_chunks_limit_size 100",
            Flaky {
                line_len: 197,
                ..Default::default()
            },
            None,
        );
        out.clone().start().await.unwrap();
        let tags = [
            "test.tag.1",
            "test.tag.2",
            "test.tag.1",
            "test.tag.1",
            "test.tag.1",
            "test.tag.1",
            "test.tag.1",
            "test.tag.1",
            "test.tag.2",
            "test.tag.1",
            "test.tag.2",
        ];
        for t in tags {
            out.emit(t, one_event()).await.unwrap();
        }
        let t0 = S74_START as f64;
        // test.tag.1's first chunk became full: written at once.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let w = primary.writes();
        assert_eq!(
            w,
            vec![Written {
                at: t0,
                tag: Some("test.tag.1".into()),
                records: 5
            }]
        );
        assert_eq!(out.buffer().stats().stage_length, 2);
        // 14:04:09: 8 s after the staged chunks were created, nothing more.
        sleep_until(&clock, t0 + 8.0).await;
        assert_eq!(primary.writes().len(), 1);
        sleep_until(&clock, t0 + 9.9).await;
        assert_eq!(primary.writes().len(), 1);
        assert_eq!(out.buffer().stats().stage_length, 2);
        // 10 s after their creation both staged chunks are written.
        sleep_until(&clock, t0 + 14.0).await;
        let w = primary.writes();
        assert_eq!(w.len(), 3, "{w:?}");
        let mut rest: Vec<(Option<String>, u64)> =
            w[1..].iter().map(|x| (x.tag.clone(), x.records)).collect();
        rest.sort();
        assert_eq!(
            rest,
            vec![
                (Some("test.tag.1".into()), 3),
                (Some("test.tag.2".into()), 3)
            ]
        );
        for x in &w[1..] {
            assert!(x.at >= t0 + 10.0 && x.at <= t0 + 10.2, "{w:?}");
        }
        assert_eq!(w.iter().map(|x| x.records).sum::<u64>(), 11);
        assert_eq!(out.buffer().stats(), BufferStats::default());
        out.shutdown().await;
    }

    /// `n` emits of one event each to `tag`.
    async fn emit_n(out: &BufferedOutput, tag: &str, n: usize) {
        for _ in 0..n {
            out.emit(tag, one_event()).await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_075_full_chunk_written_at_once_unless_retrying() {
        // 100-byte events, chunk_limit_size 1000: the tenth event makes a chunk full
        // (1000 >= 1000 * 0.95; nine are 900).
        let flaky = || Flaky {
            line_len: 100,
            ..Default::default()
        };
        let w = |at: f64, records: u64| Written {
            at,
            tag: None,
            records,
        };

        // Time key (lazy mode): the day's chunk is due at 1970-01-13 00:10:00 UTC (timekey end
        // 1_036_800 + timekey_wait 600), but a full chunk is written at once.
        let t0 = 1_000_000.0;
        let (out, primary, clock, _dir) = setup_with(
            t0 as i64,
            "time",
            "timekey 86400\ntimekey_zone +0000\ntimekey_wait 600\nchunk_limit_size 1000\nflush_thread_burst_interval 0.1",
            flaky(),
            None,
        );
        out.clone().start().await.unwrap();
        emit_n(&out, "t", 12).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(primary.writes(), vec![w(t0, 10)]);
        assert_eq!(
            out.buffer().layout(),
            (vec![], vec![2]),
            "the rest is staged"
        );
        // The staged rest waits for timekey + timekey_wait.
        sleep_until(&clock, 1_037_399.0).await;
        assert_eq!(primary.writes().len(), 1);
        sleep_until(&clock, 1_037_500.0).await;
        let ws = primary.writes();
        assert_eq!(ws.len(), 2, "{ws:?}");
        assert_eq!(ws[1].records, 2);
        assert!(ws[1].at >= 1_037_400.0, "{ws:?}");
        out.shutdown().await;

        // Interval mode, flush_interval 60: the same, the rest is written 60 s after its
        // chunk was created.
        let (out, primary, clock, _dir) = setup_with(
            t0 as i64,
            "[]",
            "flush_mode interval\nflush_interval 60\nchunk_limit_size 1000\nflush_thread_burst_interval 0.1",
            flaky(),
            None,
        );
        out.clone().start().await.unwrap();
        emit_n(&out, "t", 12).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(primary.writes(), vec![w(t0, 10)]);
        sleep_until(&clock, t0 + 59.9).await;
        assert_eq!(primary.writes().len(), 1);
        sleep_until(&clock, t0 + 70.0).await;
        let ws = primary.writes();
        assert_eq!(ws.len(), 2, "{ws:?}");
        assert_eq!(ws[1].records, 2);
        assert!(ws[1].at >= t0 + 60.0 && ws[1].at <= t0 + 66.0, "{ws:?}");
        out.shutdown().await;

        // In retry state a chunk that becomes full waits for the retry time: chunk A fails at
        // t0 (next retry t0 + 10); the destination is repaired; chunk B becomes full at t0 + 2
        // and is not written before the retry writes A at t0 + 10; B follows after the burst
        // interval.
        let (logs, _guard) = Logs::capture();
        let (out, primary, clock, _dir) = setup_with(
            t0 as i64,
            "time",
            "timekey 86400\ntimekey_zone +0000\ntimekey_wait 600\nchunk_limit_size 1000\nflush_thread_burst_interval 0.5\nretry_wait 10\nretry_randomize false",
            flaky(),
            None,
        );
        primary.failing.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        emit_n(&out, "t", 10).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*primary.attempts.lock().unwrap(), vec![t0], "A at once");
        assert!(out.retrying());
        primary.failing.store(false, Ordering::SeqCst);
        sleep_until(&clock, t0 + 2.0).await;
        emit_n(&out, "t", 10).await;
        assert_eq!(out.buffer().layout(), (vec![10, 10], vec![]), "B is queued");
        sleep_until(&clock, t0 + 9.9).await;
        assert_eq!(
            *primary.attempts.lock().unwrap(),
            vec![t0],
            "B waits for the retry time"
        );
        sleep_until(&clock, t0 + 15.0).await;
        assert_eq!(primary.writes(), vec![w(t0 + 10.0, 10), w(t0 + 10.5, 10)]);
        let ids = primary.attempted.lock().unwrap().clone();
        assert_eq!(ids.len(), 3);
        assert!(ids[0] == ids[1] && ids[2] != ids[0], "A, A again, then B");
        assert_eq!(logs.lines("retry succeeded.").len(), 1, "{}", logs.text());
        assert_eq!(out.buffer().stats(), BufferStats::default());
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_078_drop_oldest_with_everything_staged() {
        // Eight tags of 512 bytes fill total_limit_size 4096 with staged chunks only: the
        // ninth emit finds no queued chunk to drop.
        let (logs, _guard) = Logs::capture();
        let (out, primary, _clock, dir) = setup_with(
            1_000_000,
            "tag",
            "total_limit_size 4096\noverflow_action drop_oldest_chunk",
            Flaky {
                line_len: 512,
                ..Default::default()
            },
            None,
        );
        out.clone().start().await.unwrap();
        for i in 0..8 {
            out.emit(&format!("t{i}"), one_event()).await.unwrap();
        }
        let stats = out.buffer().stats();
        assert_eq!(
            (stats.stage_length, stats.stage_bytes, stats.queue_length),
            (8, 4096, 0)
        );
        assert!(matches!(
            out.emit("t8", one_event()).await,
            Err(EmitError::BufferOverflow)
        ));
        assert_eq!(
            logs.lines(
                "failed to write data into buffer by buffer overflow action=:drop_oldest_chunk"
            )
            .len(),
            1,
            "{}",
            logs.text()
        );
        let e = logs.lines("no queued chunks to be dropped for drop_oldest_chunk");
        assert_eq!(e.len(), 1, "{}", logs.text());
        assert!(e[0].contains("ERROR"), "{e:?}");
        // Nothing was dropped or written.
        assert_eq!(out.buffer().stats(), stats);
        assert_eq!(out.metrics().unwrap().buffer_overflows, 1);
        assert!(primary.attempts.lock().unwrap().is_empty());
        assert!(!dir.path().join("backup").exists());
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_079_block_waits_for_a_flush() {
        // Two full chunks (2 records of 2 bytes each) fill total_limit_size 8 while the
        // destination fails: the fifth emit blocks until the first successful write frees space.
        let (logs, _guard) = Logs::capture();
        let (out, primary, clock, _dir) = setup("flush_mode lazy\nchunk_limit_size 4\ntotal_limit_size 8\noverflow_action block\nretry_randomize false", None);
        primary.failing.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        for _ in 0..4 {
            out.emit("t", one_event()).await.unwrap();
        }
        let t0 = clock.now().as_f64();
        let o = out.clone();
        let c = clock.clone();
        let blocked = tokio::spawn(async move {
            let r = o.emit("t", one_event()).await;
            (r.is_ok(), c.now().as_f64())
        });
        // Attempts at t0, t0+1, t0+3 fail; the destination is back at t0+5; the retry at t0+7
        // succeeds.
        sleep_until(&clock, t0 + 5.0).await;
        assert!(
            !blocked.is_finished(),
            "blocked while the destination fails"
        );
        assert_eq!(
            *primary.attempts.lock().unwrap(),
            vec![t0, t0 + 1.0, t0 + 3.0]
        );
        primary.failing.store(false, Ordering::SeqCst);
        sleep_until(&clock, t0 + 6.9).await;
        assert!(!blocked.is_finished(), "no flush freed space yet");
        sleep_until(&clock, t0 + 10.0).await;
        let (ok, returned_at) = blocked.await.unwrap();
        assert!(ok);
        let first_write = primary.writes()[0].at;
        assert_eq!(first_write, t0 + 7.0);
        assert_eq!(
            returned_at, first_write,
            "the emit returns when the flush frees space"
        );
        assert_eq!(primary.written.load(Ordering::SeqCst), 4);
        for text in [
            "failed to write data into buffer by buffer overflow action=:block",
            "buffer.write is now blocking",
            "retrying buffer.write after blocked operation",
        ] {
            assert_eq!(logs.lines(text).len(), 1, "{text}: {}", logs.text());
        }
        out.shutdown().await;
        assert_eq!(primary.written.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_095_shutdown_in_retry_state_keeps_memory_chunks() {
        // `flush_interval 1s` `retry_wait 5s` `flush_at_shutdown true`, memory buffer: the first
        // chunk fails, a second event comes, STOP while retrying. Nothing more is attempted (as
        // in Fluentd), but where Fluentd loses both events, sluice writes both memory chunks to
        // the backup directory (docs/compatibility.md, "Stopping while the output is retrying").
        // The real binary runs this scenario in tests/file_output.rs.
        let (logs, _guard) = Logs::capture();
        let (out, primary, _clock, dir) = setup(
            "flush_mode interval\nflush_interval 1s\nretry_wait 5s\nflush_at_shutdown true\nflush_thread_interval 0.1",
            None,
        );
        primary.failing.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(primary.attempts.lock().unwrap().len(), 1);
        assert!(out.retrying());
        // The destination is repaired; one more event; STOP before the retry.
        primary.failing.store(false, Ordering::SeqCst);
        out.emit("t", one_event()).await.unwrap();
        out.shutdown().await;
        assert_eq!(
            primary.attempts.lock().unwrap().len(),
            1,
            "no write at shutdown while retrying"
        );
        assert!(primary.writes().is_empty());
        let backup = dir.path().join("backup/worker0/retr");
        let names = names_in(&backup);
        let logs_files: Vec<&String> = names.iter().filter(|n| n.ends_with(".log")).collect();
        assert_eq!(
            logs_files.len(),
            2,
            "the failing chunk and the staged one: {names:?}"
        );
        for n in logs_files {
            assert_eq!(std::fs::read(backup.join(n)).unwrap(), b"x\n");
        }
        let warn = logs.lines("buffered chunks could not be written before shutdown");
        assert_eq!(warn.len(), 1, "{}", logs.text());
        assert!(warn[0].contains("chunks=2 records=2"), "{warn:?}");
    }

    /// A delayed-commit writer: records each `try_write` (time, chunk id) and keeps the
    /// handles for the test to commit or roll back; commits at once when `commit_at_once`.
    #[derive(Debug)]
    struct Delayed {
        clock: Arc<dyn Clock>,
        tries: Mutex<Vec<(f64, ChunkId)>>,
        handles: Mutex<Vec<CommitHandle>>,
        commit_at_once: AtomicBool,
    }

    impl Delayed {
        fn new(clock: &Arc<dyn Clock>) -> Arc<Delayed> {
            Arc::new(Delayed {
                clock: clock.clone(),
                tries: Mutex::default(),
                handles: Mutex::default(),
                commit_at_once: AtomicBool::new(false),
            })
        }

        fn tries(&self) -> Vec<(f64, ChunkId)> {
            self.tries.lock().unwrap().clone()
        }

        /// The handle of the (first remaining) try of chunk `id`.
        fn take(&self, id: ChunkId) -> CommitHandle {
            let mut h = self.handles.lock().unwrap();
            let i = h.iter().position(|h| h.chunk_id() == id).unwrap();
            h.remove(i)
        }
    }

    impl ChunkWriter for Delayed {
        fn type_name(&self) -> &'static str {
            "delayed"
        }
        fn formats(&self) -> bool {
            true
        }
        fn format(&self, _tag: &str, _time: EventTime, _record: &[u8], out: &mut Vec<u8>) {
            out.extend_from_slice(b"x\n");
        }
        fn write<'a>(
            &'a self,
            _chunk: &'a WriteChunk,
        ) -> BoxFuture<'a, Result<(), ChunkWriteError>> {
            panic!("a delayed-commit writer is written with try_write")
        }
        fn delayed_commit(&self) -> bool {
            true
        }
        fn try_write<'a>(
            &'a self,
            chunk: &'a WriteChunk,
            commit: CommitHandle,
        ) -> BoxFuture<'a, Result<(), ChunkWriteError>> {
            assert_eq!(commit.chunk_id(), chunk.chunk.id);
            self.tries
                .lock()
                .unwrap()
                .push((self.clock.now().as_f64(), chunk.chunk.id));
            if self.commit_at_once.load(Ordering::SeqCst) {
                commit.commit();
            } else {
                self.handles.lock().unwrap().push(commit);
            }
            Box::pin(std::future::ready(Ok(())))
        }
    }

    fn delayed_setup(
        buffer: &str,
    ) -> (
        Arc<BufferedOutput>,
        Arc<Delayed>,
        Arc<dyn Clock>,
        tempfile::TempDir,
    ) {
        let clock: Arc<dyn Clock> = TokioClock::starting_at(EventTime::new(1_000_000, 0));
        let writer = Delayed::new(&clock);
        let (out, dir) = build(&clock, "", buffer, writer.clone(), None);
        (out, writer, clock, dir)
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_096_delayed_commit_timeout_requeues_uncommitted() {
        let (logs, _guard) = Logs::capture();
        let (out, writer, clock, _dir) =
            delayed_setup("flush_mode immediate\ndelayed_commit_timeout 30\nretry_randomize false");
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        let t0 = clock.now().as_f64();
        // A at t0; B after the burst interval. Both stay in flight.
        sleep_until(&clock, t0 + 5.0).await;
        let tries = writer.tries();
        assert_eq!(
            tries.iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![t0, t0 + 1.0]
        );
        let (a, b) = (tries[0].1, tries[1].1);
        assert_eq!(out.buffer().stats().in_flight, 2);
        // A is committed in time: purged, never written again.
        writer.take(a).commit();
        let m = out.metrics().unwrap();
        assert_eq!((m.write_count, m.rollback_count), (1, 0));
        assert_eq!(out.buffer().stats().in_flight, 1);
        // B is not: taken back 30 s after its try_write (t0+31), not earlier.
        sleep_until(&clock, t0 + 30.9).await;
        assert_eq!(out.metrics().unwrap().rollback_count, 0);
        assert!(logs.lines("timeout to commit").is_empty());
        sleep_until(&clock, t0 + 31.5).await;
        let timeouts = logs.lines("failed to flush the buffer chunk, timeout to commit.");
        assert_eq!(timeouts.len(), 1, "{}", logs.text());
        assert!(
            timeouts[0].contains("WARN") && timeouts[0].contains(&b.to_string()),
            "{timeouts:?}"
        );
        let m = out.metrics().unwrap();
        assert_eq!((m.write_count, m.rollback_count, m.write_errors), (1, 1, 1));
        // The timeout is a failure of the retry state: the next attempt is retry_wait (1 s) later.
        assert!(out.retrying());
        assert_eq!(m.next_retry_time, Some(t0 as i64 + 32));
        let st = out.buffer().stats();
        assert_eq!(
            (st.queue_length, st.in_flight),
            (1, 0),
            "B is back at the head of the queue"
        );
        sleep_until(&clock, t0 + 32.5).await;
        assert_eq!(writer.tries()[2], (t0 + 32.0, b));
        let stale = writer.take(b);
        // The timed-out attempt's rollback comes late: the new attempt stays in flight.
        stale.rollback(ChunkWriteError::retryable("Errno::ECONNRESET", "late"));
        let st = out.buffer().stats();
        assert_eq!((st.queue_length, st.in_flight), (0, 1));
        assert_eq!(out.metrics().unwrap().rollback_count, 1);
        writer.take(b).commit();
        assert_eq!(logs.lines("retry succeeded.").len(), 1, "{}", logs.text());
        assert!(!out.retrying());
        assert_eq!(out.buffer().stats(), BufferStats::default());
        let m = out.metrics().unwrap();
        assert_eq!((m.write_count, m.rollback_count), (2, 1));
        sleep_until(&clock, t0 + 100.0).await;
        assert_eq!(writer.tries().len(), 3, "committed chunks stay purged");
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_commit_rollback_and_immediate_commit() {
        let (logs, _guard) = Logs::capture();
        let (out, writer, clock, _dir) =
            delayed_setup("flush_mode immediate\nretry_randomize false\nretry_wait 2");
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        let t0 = clock.now().as_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, id) = writer.tries()[0];
        // The writer learns that the delivery failed: taken back, counted, retried.
        writer
            .take(id)
            .rollback(ChunkWriteError::retryable("Errno::ECONNRESET", "ack lost"));
        let failed = logs.lines("failed to flush the buffer. retry_times=0");
        assert_eq!(failed.len(), 1, "{}", logs.text());
        assert!(
            failed[0].contains("error_class=Errno::ECONNRESET error=\"ack lost\""),
            "{failed:?}"
        );
        assert_eq!(out.metrics().unwrap().rollback_count, 1);
        // The retry (2 s after the failure at t0+1) commits during try_write.
        writer.commit_at_once.store(true, Ordering::SeqCst);
        sleep_until(&clock, t0 + 4.0).await;
        assert_eq!(
            writer.tries().iter().map(|t| t.0).collect::<Vec<_>>(),
            vec![t0, t0 + 3.0]
        );
        assert_eq!(logs.lines("retry succeeded.").len(), 1, "{}", logs.text());
        assert_eq!(out.buffer().stats(), BufferStats::default());
        assert_eq!(out.metrics().unwrap().write_count, 1);
        out.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_commit_cancelled_in_shutdown() {
        let (logs, _guard) = Logs::capture();
        let (out, writer, _clock, dir) = delayed_setup("flush_mode immediate");
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, id) = writer.tries()[0];
        out.shutdown().await;
        let cancelled = logs.lines("delayed commit for buffer chunks was cancelled in shutdown");
        assert_eq!(cancelled.len(), 1, "{}", logs.text());
        assert!(cancelled[0].contains("INFO") && cancelled[0].contains(&id.to_string()));
        assert_eq!(out.metrics().unwrap().rollback_count, 1);
        // Rolled back, the memory chunk is kept in the backup directory.
        let backup = dir.path().join(format!("backup/worker0/retr/{id}.log"));
        assert_eq!(std::fs::read(&backup).unwrap(), b"x\n");
        // The commit comes too late: nothing changes.
        writer.take(id).commit();
        assert_eq!(out.metrics().unwrap().write_count, 0);
        assert!(backup.exists());
    }

    #[tokio::test(start_paused = true)]
    async fn scenario_099_unrecoverable_error_and_the_secondary() {
        // Same type as the primary: straight to the backup.
        let (logs, _guard) = Logs::capture();
        let same = Arc::new(Flaky::default());
        let (out, primary, _clock, dir) = setup("flush_mode immediate", Some(same.clone()));
        primary.unrecoverable.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(same.attempts.lock().unwrap().is_empty());
        assert_eq!(
            logs.lines("got unrecoverable error in primary and secondary type is same as primary. Skip secondary").len(),
            1
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("backup/worker0/retr"))
                .unwrap()
                .count(),
            2
        );
        out.shutdown().await;

        // Another type that fails too: tried once, then the backup.
        let other = Arc::new(Flaky {
            name: "other",
            ..Default::default()
        });
        other.failing.store(true, Ordering::SeqCst);
        let (out, primary, _clock, dir) = setup("flush_mode immediate", Some(other.clone()));
        primary.unrecoverable.store(true, Ordering::SeqCst);
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(other.attempts.lock().unwrap().len(), 1);
        for text in [
            "got unrecoverable error in primary. Skip retry and flush chunk to secondary",
            "got an error in secondary for unrecoverable error",
        ] {
            assert_eq!(logs.lines(text).len(), 1, "{text}: {}", logs.text());
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("backup/worker0/retr"))
                .unwrap()
                .count(),
            2
        );
        out.shutdown().await;

        // A delayed-commit (async) secondary is skipped.
        let clock: Arc<dyn Clock> = TokioClock::starting_at(EventTime::new(1_000_000, 0));
        let primary = Arc::new(Flaky::default());
        primary.unrecoverable.store(true, Ordering::SeqCst);
        let secondary = Delayed::new(&clock);
        let (out, dir) = build(
            &clock,
            "",
            "flush_mode immediate",
            primary.clone(),
            Some(secondary.clone()),
        );
        out.clone().start().await.unwrap();
        out.emit("t", one_event()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(secondary.tries().is_empty());
        assert_eq!(
            logs.lines("got unrecoverable error in primary and secondary is async output. Skip secondary for backup").len(),
            1,
            "{}",
            logs.text()
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("backup/worker0/retr"))
                .unwrap()
                .count(),
            2
        );
        assert_eq!(out.buffer().stats(), BufferStats::default());
        out.shutdown().await;
    }
}
