//! The buffer: stage (metadata → writable chunk) and queue (chunks ready to write), with
//! Fluentd's write algorithm, limits and enqueue rules.
//!
//! - **Write** ([`Buffer::write`]): per metadata group, the whole group is first appended to the
//!   staged chunk; if that makes the chunk *over* its limits, standard-format outputs (chunks of
//!   MessagePack entries) enqueue a non-empty staged chunk and retry in a fresh one, and then
//!   both formats fall back to Fluentd's step-by-step split: the group is cut into 10 slices
//!   (×10 each time a slice overflows a chunk, down to single records), slices fill the staged
//!   chunk and then new unstaged chunks. A single record larger than `chunk_limit_size` is
//!   skipped and reported (`a <N> bytes record (nth: <i>) is larger than buffer chunk limit
//!   size (<limit>)`); the rest of the group is kept. All groups of one write are committed
//!   together.
//! - **Limits**: `total_limit_size` is hard: a write that would take stage + queue (in-flight
//!   included) past it is refused whole, before anything is appended.
//! - **Enqueue**: a chunk that becomes *full* (`chunk_full_threshold` of a limit) is queued at
//!   once; `flush_mode immediate` queues every touched chunk; [`Buffer::enqueue_due`] applies
//!   the timer rules (timekey + timekey_wait, flush_interval since creation) up to
//!   `queued_chunks_limit_size`; [`Buffer::enqueue_all`] queues everything (force flush,
//!   shutdown).
//! - **Flush**: [`Buffer::dequeue`] takes the queue head in flight; [`Buffer::purge`] removes it
//!   after a successful write; [`Buffer::takeback`] puts it back at the head after a failure.
//! - **New chunk files** (file buffer): after a write that created the file of a chunk that is
//!   now staged, the hook set with [`Buffer::on_new_staged_file`] is called with its metadata,
//!   id and path (out_file's `symlink_path`), under the buffer lock, in creation order.
//!
//! Invariants (tested): no record is lost or duplicated by writes and splits; every chunk stays
//! within its limits except a chunk holding a single record equal to the limit; the order of
//! records within one metadata is preserved across chunks and the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::chunk::{Chunk, ChunkState};
use super::chunk_id::ChunkId;
use super::config::{BufferConfig, Compress, FlushMode};
use super::file::FileStore;
use super::metadata::Metadata;
use super::records::{ChunkRecords, FileRecords};
use crate::time::Clock;

/// The records of one metadata that one write appends: their bytes back to back, and where
/// each record ends.
#[derive(Debug, Clone)]
pub struct Group {
    /// Chunk keys of these records.
    pub metadata: Metadata,
    /// Records' bytes, concatenated (formatted lines or MessagePack entries).
    pub bytes: Bytes,
    /// End offset of each record in `bytes`, ascending.
    pub ends: Vec<usize>,
}

impl Group {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn range(&self, from: usize, to: usize) -> &[u8] {
        let start = if from == 0 { 0 } else { self.ends[from - 1] };
        let end = if to == 0 { 0 } else { self.ends[to - 1] };
        &self.bytes[start..end]
    }
}

/// A record that was not stored because it is larger than a chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversized {
    /// Index of the group in the write.
    pub group: usize,
    /// Index of the record in its group.
    pub nth: usize,
    /// Fluentd's message for it.
    pub message: String,
}

/// What a successful write did.
#[derive(Debug, Default)]
pub struct WriteReport {
    /// Records skipped because each alone exceeds `chunk_limit_size`.
    pub oversized: Vec<Oversized>,
    /// Whether any chunk was queued (a flush worker should wake).
    pub enqueued: bool,
    /// For file buffers: the write's sequence number, durable once the sync task has
    /// published it.
    pub sync_seq: Option<u64>,
}

/// Why a write was refused whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Storing the write would exceed `total_limit_size`.
    #[error("buffer space has too many data")]
    Overflow,
    /// The chunk files could not be written (disk full, I/O error); nothing of the write was
    /// stored and what was stored before is intact.
    #[error("cannot write buffer chunk files: {0}")]
    Io(String),
}

/// Buffer sizes and counts, for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferStats {
    /// Staged chunks.
    pub stage_length: usize,
    /// Bytes in staged chunks.
    pub stage_bytes: u64,
    /// Queued chunks (not in flight).
    pub queue_length: usize,
    /// Bytes queued or in flight.
    pub queue_bytes: u64,
    /// Chunks in flight.
    pub in_flight: usize,
}

/// A queued chunk handed to a flush worker.
#[derive(Debug, Clone)]
pub struct FlushChunk {
    /// Its id.
    pub id: ChunkId,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its bytes as stored (compressed when the buffer compresses): in memory for memory
    /// buffers, else left in the chunk file and read by range on demand, so that a flush
    /// worker never has to hold a whole chunk.
    pub stored: ChunkRecords,
    /// Its record count.
    pub records: u64,
    /// Creation time.
    pub created: i64,
    /// How `bytes` is compressed.
    pub compress: Compress,
    /// The delivery records an output wrote for this chunk in earlier attempts (before a crash
    /// or a failed attempt), oldest first: an output that can check its destination uses them to
    /// write exactly once, and to resume where it stopped.
    pub deliveries: Vec<Bytes>,
}

/// A staged chunk's file as far as it is written (see [`Buffer::staged_files`]).
#[derive(Debug, Clone)]
pub struct StagedFile {
    /// The chunk's id.
    pub id: ChunkId,
    /// Its metadata.
    pub metadata: Metadata,
    /// Its file (the staged name; it changes when the chunk is queued).
    pub path: std::path::PathBuf,
    /// Bytes of the file made of complete frames.
    pub file_len: u64,
    /// Bytes of records in those frames.
    pub records_len: u64,
    /// Its delivery records.
    pub deliveries: Vec<Bytes>,
}

/// The limits and modes the write and enqueue rules need.
#[derive(Debug, Clone)]
pub struct BufferLimits {
    /// Max bytes per chunk.
    pub chunk_limit_size: u64,
    /// Max records per chunk.
    pub chunk_limit_records: Option<u64>,
    /// Full-threshold fraction.
    pub chunk_full_threshold: f64,
    /// Hard limit on stage + queue bytes.
    pub total_limit_size: u64,
    /// Compression of chunk data.
    pub compress: Compress,
    /// Timer-driven enqueue stops at this queue length.
    pub queued_chunks_limit_size: usize,
    /// Resolved flush mode.
    pub flush_mode: FlushMode,
    /// Seconds after creation an interval-mode chunk is enqueued.
    pub flush_interval: f64,
    /// Time-slice length (time chunk key).
    pub timekey: Option<i64>,
    /// Seconds after a slice ends before it is flushed.
    pub timekey_wait: f64,
}

impl BufferLimits {
    /// The limits of a `<buffer>` section.
    pub fn from_config(c: &BufferConfig) -> BufferLimits {
        BufferLimits {
            chunk_limit_size: c.chunk_limit_size,
            chunk_limit_records: c.chunk_limit_records,
            chunk_full_threshold: c.chunk_full_threshold,
            total_limit_size: c.total_limit_size,
            compress: c.compress,
            queued_chunks_limit_size: c.queued_chunks_limit_size as usize,
            flush_mode: c.flush_mode,
            flush_interval: c.flush_interval,
            timekey: if c.chunk_keys.time { c.timekey } else { None },
            timekey_wait: c.timekey_wait,
        }
    }

    fn over(&self, c: &Chunk) -> bool {
        c.bytesize() > self.chunk_limit_size
            || self.chunk_limit_records.is_some_and(|r| c.records() > r)
    }

    fn full(&self, c: &Chunk) -> bool {
        c.bytesize() as f64 >= self.chunk_limit_size as f64 * self.chunk_full_threshold
            || self
                .chunk_limit_records
                .is_some_and(|r| c.records() as f64 >= r as f64 * self.chunk_full_threshold)
    }
}

/// How many chunk files staged chunks may keep open for appends before they are all closed:
/// many tags (thousands of staged chunks) must not need thousands of descriptors.
const MAX_OPEN_STAGED_FILES: usize = 256;

#[derive(Debug, Default)]
struct State {
    /// Compression of new chunks.
    compress: Compress,
    /// The file buffer, when chunks live on disk.
    store: Option<Arc<FileStore>>,
    /// Files written since the last sync pass.
    dirty: Vec<Arc<std::fs::File>>,
    /// A chunk file was created since the last sync pass (the directory needs an fsync).
    dir_dirty: bool,
    /// Chunk files opened for appends since staged files were last closed (an upper bound of
    /// the descriptors staged chunks hold).
    open_files: usize,
    /// Sequence number of the last write that reached the files.
    write_seq: u64,
    stage: HashMap<Metadata, Chunk>,
    /// Staged metadata in creation order (timer enqueue walks chunks oldest first).
    stage_order: Vec<Metadata>,
    queue: VecDeque<Chunk>,
    in_flight: HashMap<ChunkId, Chunk>,
    stage_bytes: u64,
    queue_bytes: u64,
}

impl State {
    /// Closes the append descriptors of every staged chunk (they reopen on their next append).
    /// Files written since the last sync pass stay open through `dirty` until that pass has
    /// synced them, so closing never loses a sync.
    fn close_staged_files(&mut self) {
        for c in self.stage.values_mut() {
            if let Some(b) = c.backing.as_mut() {
                b.file = None;
            }
        }
        self.open_files = 0;
    }

    fn enqueue_staged(&mut self, meta: &Metadata) -> bool {
        let Some(c) = self.stage.remove(meta) else {
            return false;
        };
        self.stage_order.retain(|m| m != meta);
        self.stage_bytes -= c.committed_bytes();
        if c.is_empty() {
            return false;
        }
        self.push_queued(c);
        true
    }

    fn enqueue_unstaged(&mut self, c: Chunk) -> bool {
        if c.is_empty() {
            return false;
        }
        self.push_queued(c);
        true
    }

    fn push_queued(&mut self, mut c: Chunk) {
        c.state = ChunkState::Queued;
        if let Some(s) = &self.store {
            s.mark_queued(&mut c);
        }
        self.queue_bytes += c.committed_bytes();
        self.queue.push_back(c);
    }

    fn new_chunk(&self, meta: &Metadata, state: ChunkState, now: i64) -> Chunk {
        let mut c = match &self.store {
            Some(s) => s.new_chunk(meta, state, now, self.compress),
            None => Chunk::new(ChunkId::now(), meta.clone(), state, now),
        };
        c.compress = self.compress;
        c
    }

    fn stage_new(&mut self, meta: &Metadata, now: i64) {
        let c = self.new_chunk(meta, ChunkState::Staged, now);
        self.stage.insert(meta.clone(), c);
        self.stage_order.push(meta.clone());
    }

    /// A queued chunk whose file cannot be read: it leaves the queue (its file stays on disk
    /// for the next start or an operator) with an error naming it.
    fn unreadable(&mut self, c: Chunk, e: std::io::Error) {
        self.queue_bytes -= c.committed_bytes();
        let path = c
            .backing
            .as_ref()
            .map(|b| b.path.display().to_string())
            .unwrap_or_default();
        tracing::error!(chunk_id = %c.id, path, "cannot read buffer chunk file; it is left on disk and skipped: {e}");
    }

    /// The chunk with this id, wherever it is.
    fn chunk_mut(&mut self, id: ChunkId) -> Option<&mut Chunk> {
        if let Some(c) = self.in_flight.get_mut(&id) {
            return Some(c);
        }
        if let Some(c) = self.queue.iter_mut().find(|c| c.id == id) {
            return Some(c);
        }
        self.stage.values_mut().find(|c| c.id == id)
    }

    fn recount_stage(&mut self) {
        self.stage_bytes = self.stage.values().map(|c| c.committed_bytes()).sum();
    }
}

/// Which chunk a step of a write touched.
#[derive(Debug)]
enum Touched {
    /// The staged chunk of this metadata (appended, not yet committed).
    Staged(Metadata),
    /// A chunk made during the write and not staged.
    Unstaged(Box<Chunk>),
}

/// Called with a staged chunk's metadata, id and file path when its file was created.
pub type NewFileHook = Box<dyn Fn(&Metadata, ChunkId, &std::path::Path) + Send + Sync>;

/// The memory buffer of one output: stage, queue and in-flight chunks behind one lock.
pub struct Buffer {
    limits: BufferLimits,
    /// Standard format: chunks hold MessagePack entries (Fluentd's whole-stream-first rule).
    standard_format: bool,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Signalled whenever space is freed (purge, drop), for `overflow_action block`.
    pub space_freed: tokio::sync::Notify,
    /// Told about new staged chunk files (file buffers).
    new_staged_file: std::sync::OnceLock<NewFileHook>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("limits", &self.limits)
            .field("standard_format", &self.standard_format)
            .field("state", &self.state)
            .field("new_staged_file", &self.new_staged_file.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Buffer {
    /// An empty buffer. `standard_format` is true for outputs whose chunks hold MessagePack
    /// entries rather than formatted records.
    pub fn new(limits: BufferLimits, standard_format: bool, clock: Arc<dyn Clock>) -> Buffer {
        let compress = limits.compress;
        Buffer {
            limits,
            standard_format,
            clock,
            state: Mutex::new(State {
                compress,
                ..State::default()
            }),
            space_freed: tokio::sync::Notify::new(),
            new_staged_file: std::sync::OnceLock::new(),
        }
    }

    /// Sets the hook told, after each write, about every chunk file the write created whose
    /// chunk is staged at the end of it (not the pieces of a split that went straight to the
    /// queue). It runs under the buffer lock, in the order the files were created. Only one hook
    /// can be set; returns false if one was already.
    pub fn on_new_staged_file(
        &self,
        hook: impl Fn(&Metadata, ChunkId, &std::path::Path) + Send + Sync + 'static,
    ) -> bool {
        self.new_staged_file.set(Box::new(hook)).is_ok()
    }

    /// The limits this buffer applies.
    pub fn limits(&self) -> &BufferLimits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> i64 {
        self.clock.now().sec
    }

    /// Appends groups of records (one group per metadata). Refused whole when it would exceed
    /// `total_limit_size`; otherwise every record is stored except those larger than a chunk,
    /// which the report lists.
    pub fn write(&self, groups: &[Group]) -> Result<WriteReport, WriteError> {
        let incoming: u64 = groups.iter().map(|g| g.bytes.len() as u64).sum();
        let now = self.now();
        let mut st = self.lock();
        if st.stage_bytes + st.queue_bytes + incoming > self.limits.total_limit_size {
            return Err(WriteError::Overflow);
        }
        let mut report = WriteReport::default();
        let mut touched: Vec<Touched> = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            if g.is_empty() {
                continue;
            }
            let (mut t, errs) = self.write_group(&mut st, g, now, &mut report.enqueued);
            touched.append(&mut t);
            report
                .oversized
                .extend(errs.into_iter().map(|(nth, message)| Oversized {
                    group: gi,
                    nth,
                    message,
                }));
        }
        let before = st.write_seq;
        let (enqueued, created) = self.commit(&mut st, touched, now)?;
        report.enqueued |= enqueued;
        if st.write_seq != before {
            report.sync_seq = Some(st.write_seq);
        }
        if let Some(hook) = self.new_staged_file.get() {
            for (m, id) in created {
                let staged = st.stage.get(&m).filter(|c| c.id == id);
                if let Some(b) = staged.and_then(|c| c.backing.as_ref()) {
                    hook(&m, id, &b.path);
                }
            }
        }
        Ok(report)
    }

    /// Phase 2 of a write: commit every touched chunk, then enqueue per Fluentd's rules, in the
    /// order the chunks were touched: an unstaged chunk is queued; a staged chunk is queued when
    /// full (or in immediate mode), and then the last unstaged chunk of its metadata, if not
    /// full and not yet queued, becomes the staged chunk. Returns whether a chunk was queued and
    /// the chunks whose files this write created.
    fn commit(
        &self,
        st: &mut State,
        touched: Vec<Touched>,
        now: i64,
    ) -> Result<(bool, Vec<(Metadata, ChunkId)>), WriteError> {
        let immediate = self.limits.flush_mode == FlushMode::Immediate;
        let mut enqueued = false;
        let mut items: Vec<Option<Touched>> = Vec::with_capacity(touched.len());
        let mut unstaged_of: Vec<(Metadata, Vec<usize>)> = Vec::new();
        for t in touched {
            match t {
                Touched::Staged(m) => {
                    if let Some(c) = st.stage.get_mut(&m) {
                        let before = c.committed_bytes();
                        c.commit(now);
                        st.stage_bytes += c.committed_bytes() - before;
                    }
                    items.push(Some(Touched::Staged(m)));
                }
                Touched::Unstaged(mut c) => {
                    c.commit(now);
                    match unstaged_of.iter_mut().find(|(m, _)| *m == c.metadata) {
                        Some((_, v)) => v.push(items.len()),
                        None => unstaged_of.push((c.metadata.clone(), vec![items.len()])),
                    }
                    items.push(Some(Touched::Unstaged(c)));
                }
            }
        }
        let created = self.persist(st, &mut items)?;
        for i in 0..items.len() {
            match items[i].take() {
                None => {}
                Some(Touched::Unstaged(c)) => enqueued |= st.enqueue_unstaged(*c),
                Some(Touched::Staged(m)) => {
                    let due = st
                        .stage
                        .get(&m)
                        .is_some_and(|c| immediate || self.limits.full(c));
                    if !due {
                        continue;
                    }
                    enqueued |= st.enqueue_staged(&m);
                    let last = unstaged_of
                        .iter_mut()
                        .find(|(um, _)| *um == m)
                        .and_then(|(_, v)| v.pop());
                    if let Some(j) = last {
                        let promote = matches!(&items[j], Some(Touched::Unstaged(c)) if !self.limits.full(c))
                            && !immediate
                            && !st.stage.contains_key(&m);
                        if promote {
                            if let Some(Touched::Unstaged(mut c)) = items[j].take() {
                                c.state = ChunkState::Staged;
                                st.stage_bytes += c.committed_bytes();
                                st.stage_order.push(m.clone());
                                st.stage.insert(m.clone(), *c);
                            }
                        }
                    }
                }
            }
        }
        Ok((enqueued, created))
    }

    /// Writes the committed data of every touched chunk to its file (file buffers). All or
    /// nothing: on an error every file is cut back and every chunk returns to what was on disk
    /// before this write. Returns the chunks whose files were created, in creation order.
    fn persist(
        &self,
        st: &mut State,
        items: &mut [Option<Touched>],
    ) -> Result<Vec<(Metadata, ChunkId)>, WriteError> {
        if st.store.is_none() {
            return Ok(Vec::new());
        }
        let mut new_files = Vec::new();
        let mut done: Vec<(usize, u64, u64, u64)> = Vec::new();
        let mut files = Vec::new();
        let mut created = false;
        let mut failure = None;
        let mut opened = 0usize;
        for (i, item) in items.iter_mut().enumerate() {
            let c = match item {
                Some(Touched::Staged(m)) => st.stage.get_mut(m),
                Some(Touched::Unstaged(c)) => Some(&mut **c),
                None => None,
            };
            let Some(c) = c else { continue };
            let Some(b) = &c.backing else { continue };
            let prev = (b.file_len, b.disk_len, b.disk_records);
            let was_closed = b.file.is_none();
            match c.persist() {
                Ok(Some((f, new_file))) => {
                    opened += usize::from(was_closed);
                    files.push(f);
                    created |= new_file;
                    if new_file {
                        new_files.push((c.metadata.clone(), c.id));
                    }
                    done.push((i, prev.0, prev.1, prev.2));
                }
                Ok(None) => done.push((i, prev.0, prev.1, prev.2)),
                Err(e) => {
                    c.unpersist(prev.0, prev.1, prev.2);
                    failure = Some(e);
                    break;
                }
            }
        }
        let Some(e) = failure else {
            if !files.is_empty() {
                // One fdatasync per file per pass, however many writes it took.
                for f in files {
                    if !st.dirty.iter().any(|d| Arc::ptr_eq(d, &f)) {
                        st.dirty.push(f);
                    }
                }
                st.dir_dirty |= created;
                st.write_seq += 1;
            }
            st.open_files += opened;
            if st.open_files > MAX_OPEN_STAGED_FILES {
                st.close_staged_files();
            }
            return Ok(new_files);
        };
        // Undo the chunks written before the failure, and drop this write's data everywhere.
        for (i, fl, dl, dr) in done {
            let c = match &mut items[i] {
                Some(Touched::Staged(m)) => st.stage.get_mut(m),
                Some(Touched::Unstaged(c)) => Some(&mut **c),
                None => None,
            };
            if let Some(c) = c {
                c.unpersist(fl, dl, dr);
            }
        }
        for item in items.iter_mut() {
            match item {
                Some(Touched::Unstaged(c)) => {
                    if let Some(b) = &c.backing {
                        if b.file_len == 0 {
                            let _ = std::fs::remove_file(&b.path);
                        }
                    }
                    *item = None;
                }
                Some(Touched::Staged(m)) => {
                    if let Some(c) = st.stage.get_mut(m) {
                        if let Some(b) = &c.backing {
                            let (fl, dl, dr) = (b.file_len, b.disk_len, b.disk_records);
                            c.unpersist(fl, dl, dr);
                        }
                    }
                }
                None => {}
            }
        }
        st.recount_stage();
        tracing::error!("cannot write buffer chunk files: {e}; the write is refused and nothing stored is changed");
        Err(WriteError::Io(e.to_string()))
    }

    /// Files to fdatasync for durability, whether the directory needs an fsync, and the write
    /// sequence number they cover (`None` when nothing was written since the last call).
    pub fn take_dirty(&self) -> Option<(Vec<Arc<std::fs::File>>, bool, u64)> {
        let mut st = self.lock();
        if st.dirty.is_empty() && !st.dir_dirty {
            return None;
        }
        let files = std::mem::take(&mut st.dirty);
        let dir = std::mem::take(&mut st.dir_dirty);
        Some((files, dir, st.write_seq))
    }

    /// The file buffer, if chunks live on disk.
    pub fn store(&self) -> Option<Arc<FileStore>> {
        self.lock().store.clone()
    }

    /// Opens a file buffer: resumes every chunk file found (staged ones stay staged unless full
    /// or a newer chunk of the same metadata exists; the queue is ordered by modification time)
    /// and returns the files without readable metadata for the caller to back up.
    pub fn open_file(
        limits: BufferLimits,
        standard_format: bool,
        clock: Arc<dyn Clock>,
        store: FileStore,
    ) -> std::io::Result<(Buffer, Vec<super::file::BrokenChunk>)> {
        let mut store = store;
        store.formatted = !standard_format;
        let resumed = store.resume()?;
        let buffer = Buffer::new(limits, standard_format, clock);
        let store = Arc::new(store);
        {
            let mut st = buffer.lock();
            st.store = Some(store);
            let (staged, extra) = super::file::split_staged(resumed.staged);
            let mut queue: Vec<Chunk> = resumed.queued;
            queue.extend(extra);
            for c in staged {
                // A chunk written with another compression takes no appends of this one.
                if buffer.limits.full(&c) || c.compress != buffer.limits.compress {
                    queue.push(c);
                } else {
                    st.stage_order.push(c.metadata.clone());
                    st.stage.insert(c.metadata.clone(), c);
                }
            }
            queue.sort_by_key(|c| (c.modified, c.id));
            for c in queue {
                st.push_queued(c);
            }
            st.recount_stage();
        }
        Ok((buffer, resumed.broken))
    }

    /// Phase 1 for one group: appends without committing; returns what was touched and the
    /// oversized records (nth, message).
    fn write_group(
        &self,
        st: &mut State,
        g: &Group,
        now: i64,
        enqueued: &mut bool,
    ) -> (Vec<Touched>, Vec<(usize, String)>) {
        let m = &g.metadata;
        // Whole group into the staged chunk first.
        loop {
            if !st.stage.contains_key(m) {
                st.stage_new(m, now);
            }
            let c = st.stage.get_mut(m).expect("staged above");
            let was_empty = c.bytesize() == 0;
            c.append(&g.bytes, g.len() as u64, self.limits.compress);
            if !self.limits.over(c) {
                return (vec![Touched::Staged(m.clone())], Vec::new());
            }
            let adding = c.bytesize() - c.committed_bytes();
            if self.standard_format && was_empty {
                if c.bytesize() > self.limits.chunk_limit_size {
                    tracing::warn!(
                        "chunk bytes limit exceeds for an emitted event stream: {adding}bytes"
                    );
                } else {
                    tracing::warn!(
                        "chunk size limit exceeds for an emitted event stream: {}records",
                        c.records()
                    );
                }
            }
            c.rollback();
            if self.standard_format && !was_empty {
                // Keep a stream in one chunk when it fits into an empty one.
                *enqueued |= st.enqueue_staged(m);
                continue;
            }
            break;
        }
        self.write_step_by_step(st, g, now, enqueued)
    }

    /// Fluentd's split: slices of the group fill the staged chunk, then new chunks.
    fn write_step_by_step(
        &self,
        st: &mut State,
        g: &Group,
        now: i64,
        enqueued: &mut bool,
    ) -> (Vec<Touched>, Vec<(usize, String)>) {
        let n = g.len();
        let limit = self.limits.chunk_limit_size;
        let m = g.metadata.clone();
        let mut splits_count = 10usize;
        'retry: loop {
            let sc = splits_count.min(n).max(1);
            let slice = if n % sc == 0 { n / sc } else { n / (sc - 1) };
            let splits: Vec<(usize, usize)> = (0..n)
                .step_by(slice.max(1))
                .map(|s| (s, (s + slice).min(n)))
                .collect();
            let mut touched: Vec<Touched> = Vec::new();
            let mut errors: Vec<(usize, String)> = Vec::new();
            // Index in `touched` of the chunk being filled; None = take the next one.
            let mut staged_used = false;
            let mut i = 0;
            while i < splits.len() {
                // Get the next chunk: the staged one first, then new unstaged ones.
                if !staged_used && !st.stage.contains_key(&m) {
                    st.stage_new(&m, now);
                }
                if staged_used
                    || touched
                        .iter()
                        .any(|t| matches!(t, Touched::Staged(x) if *x == m))
                {
                    let c = st.new_chunk(&m, ChunkState::Unstaged, now);
                    touched.push(Touched::Unstaged(Box::new(c)));
                } else {
                    touched.push(Touched::Staged(m.clone()));
                }
                staged_used = true;
                let cur = touched.len() - 1;
                let mut committed = chunk_of(st, &mut touched[cur]).bytesize();
                while i < splits.len() {
                    let (from, to) = splits[i];
                    let single = to - from == 1;
                    let bytes = g.range(from, to);
                    let c = chunk_of(st, &mut touched[cur]);
                    if single {
                        let determined =
                            (self.limits.compress == Compress::Text).then_some(bytes.len() as u64);
                        if let Some(d) = determined {
                            if d > limit {
                                errors.push((from, format!("a {d} bytes record (nth: {i}) is larger than buffer chunk limit size ({limit})")));
                                i += 1;
                                continue;
                            }
                        }
                        if determined.is_none_or(|d| c.bytesize() + d > limit) {
                            // Keep what is there before trying a record that may not fit.
                            let before = c.committed_bytes();
                            c.commit(now);
                            committed = c.bytesize();
                            let delta = c.committed_bytes() - before;
                            if matches!(touched[cur], Touched::Staged(_)) {
                                st.stage_bytes += delta;
                            }
                        }
                    }
                    let c = chunk_of(st, &mut touched[cur]);
                    c.append(bytes, (to - from) as u64, self.limits.compress);
                    let adding = c.bytesize() - committed;
                    if self.limits.over(c) {
                        c.rollback();
                        committed = c.bytesize();
                        if single {
                            if adding > limit {
                                errors.push((from, format!("concatenated/appended a {adding} bytes record (nth: {i}) is larger than buffer chunk limit size ({limit})")));
                                i += 1;
                                continue;
                            }
                            // Keep what this chunk holds and go on in a fresh one.
                            if let Touched::Staged(sm) = &touched[cur] {
                                let sm = sm.clone();
                                if let Some(mut sc) = st.stage.remove(&sm) {
                                    st.stage_order.retain(|x| *x != sm);
                                    st.stage_bytes -= sc.committed_bytes();
                                    sc.state = ChunkState::Unstaged;
                                    touched[cur] = Touched::Unstaged(Box::new(sc));
                                }
                                staged_used = false;
                            }
                            break;
                        }
                        let enqueue_before_retry = self.limits.full(c);
                        if !enqueue_before_retry {
                            splits_count *= 10;
                        }
                        // Undo this attempt and start over.
                        for t in touched {
                            if let Touched::Staged(sm) = t {
                                if let Some(c) = st.stage.get_mut(&sm) {
                                    c.rollback();
                                }
                            }
                        }
                        if enqueue_before_retry {
                            *enqueued |= st.enqueue_staged(&m);
                        }
                        continue 'retry;
                    }
                    i += 1;
                    if self.limits.full(c) {
                        break;
                    }
                }
            }
            return (touched, errors);
        }
    }

    /// Timer-driven enqueue (the enqueue thread): staged chunks whose time slice is over
    /// (`timekey + timekey + timekey_wait <= now`) or, in interval mode, whose age reached
    /// `flush_interval`. Stops once the queue holds `queued_chunks_limit_size` chunks.
    /// Returns how many were queued.
    pub fn enqueue_due(&self) -> usize {
        let now = self.clock.now();
        let now_sec = now.sec;
        let mut st = self.lock();
        let mut due = Vec::new();
        for m in &st.stage_order {
            let Some(c) = st.stage.get(m) else { continue };
            let by_time = match (self.limits.timekey, m.timekey) {
                (Some(k), Some(t)) => (t + k) as f64 + self.limits.timekey_wait <= now_sec as f64,
                _ => false,
            };
            let by_interval = self.limits.flush_mode == FlushMode::Interval
                && (c.created as f64) + self.limits.flush_interval <= now.as_f64();
            if by_time || by_interval {
                due.push(m.clone());
            }
        }
        let mut n = 0;
        for m in due {
            if st.queue.len() >= self.limits.queued_chunks_limit_size.max(1) {
                break;
            }
            if st.enqueue_staged(&m) {
                n += 1;
            }
        }
        n
    }

    /// Queues every staged chunk (force flush, shutdown), ignoring `queued_chunks_limit_size`.
    pub fn enqueue_all(&self) -> usize {
        let mut st = self.lock();
        let metas: Vec<Metadata> = st.stage_order.clone();
        metas.iter().filter(|m| st.enqueue_staged(m)).count()
    }

    /// Takes the queue head in flight, for a flush worker.
    pub fn dequeue(&self) -> Option<FlushChunk> {
        loop {
            let mut st = self.lock();
            let mut c = st.queue.pop_front()?;
            c.state = ChunkState::InFlight;
            let path = c.backing.as_ref().map(|b| b.path.clone());
            let Some(path) = path else {
                // A memory chunk: freezing hands its bytes over without copying.
                let bytes = match c.freeze() {
                    Ok(b) => b,
                    Err(e) => {
                        st.unreadable(c, e);
                        continue;
                    }
                };
                let fc = flush_chunk(&c, ChunkRecords::Memory(bytes));
                st.in_flight.insert(c.id, c);
                return Some(fc);
            };
            // A file chunk is indexed (its frames walked, not kept) without holding the buffer
            // lock, so emits go on meanwhile.
            let fc = flush_chunk(&c, ChunkRecords::Memory(Bytes::new()));
            let id = c.id;
            st.in_flight.insert(id, c);
            drop(st);
            match FileRecords::open(&path, None) {
                Ok(f) => {
                    return Some(FlushChunk {
                        stored: ChunkRecords::File(f),
                        ..fc
                    })
                }
                Err(e) => {
                    let mut st = self.lock();
                    if let Some(c) = st.in_flight.remove(&id) {
                        st.unreadable(c, e);
                    }
                }
            }
        }
    }

    /// Records, before an output delivers a chunk, where it is delivering it (synced to the
    /// chunk file for file buffers). The chunk may be in flight, queued or staged (an output
    /// may deliver a staged chunk's beginning ahead of its flush).
    ///
    /// The frame is written under the buffer lock (appends to a staged chunk's file are too, so
    /// they cannot interleave) and synced after the lock is released.
    pub fn record_delivery(&self, id: ChunkId, payload: &[u8]) -> std::io::Result<()> {
        let mut st = self.lock();
        let c = st
            .chunk_mut(id)
            .ok_or_else(|| std::io::Error::other(format!("chunk {id} is not in the buffer")))?;
        let written = match c.backing.as_mut() {
            Some(b) if b.file_len == 0 => {
                return Err(std::io::Error::other(format!("chunk {id} has no file yet")))
            }
            Some(b) => {
                let (file, len) = super::chunk::write_delivery_frame(&b.path, b.file_len, payload)?;
                b.file_len += len;
                Some(file)
            }
            None => None,
        };
        c.deliveries.push(Bytes::copy_from_slice(payload));
        drop(st);
        match written {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// Whether the chunk is staged.
    pub fn is_staged(&self, id: ChunkId) -> bool {
        self.lock().stage.values().any(|c| c.id == id)
    }

    /// The delivery records of a chunk in the buffer, oldest first.
    pub fn deliveries_of(&self, id: ChunkId) -> Option<Vec<Bytes>> {
        self.lock().chunk_mut(id).map(|c| c.deliveries.clone())
    }

    /// The staged chunks of a file buffer whose records are stored uncompressed and have
    /// reached the disk: what an output may start delivering before the chunk is queued.
    pub fn staged_files(&self) -> Vec<StagedFile> {
        let st = self.lock();
        st.stage_order
            .iter()
            .filter_map(|m| st.stage.get(m))
            .filter(|c| c.compress == Compress::Text)
            .filter_map(|c| {
                let b = c.backing.as_ref()?;
                (b.disk_len > 0).then(|| StagedFile {
                    id: c.id,
                    metadata: c.metadata.clone(),
                    path: b.path.clone(),
                    file_len: b.file_len,
                    records_len: b.disk_len,
                    deliveries: c.deliveries.clone(),
                })
            })
            .collect()
    }

    /// Removes a written chunk. Returns false when it was not in flight.
    pub fn purge(&self, id: ChunkId) -> bool {
        let mut st = self.lock();
        let Some(c) = st.in_flight.remove(&id) else {
            return false;
        };
        st.queue_bytes -= c.committed_bytes();
        if let Some(s) = &st.store {
            s.remove(&c);
        }
        drop(st);
        self.space_freed.notify_waiters();
        true
    }

    /// Puts a chunk whose write failed back at the head of the queue.
    pub fn takeback(&self, id: ChunkId) -> bool {
        let mut st = self.lock();
        let Some(mut c) = st.in_flight.remove(&id) else {
            return false;
        };
        c.state = ChunkState::Queued;
        st.queue.push_front(c);
        true
    }

    /// The delivery records of every chunk in the buffer (staged, queued and in flight): what
    /// outputs started delivering before a restart, e.g. the multipart uploads an s3 output
    /// must not abort as orphans.
    pub fn all_deliveries(&self) -> Vec<Bytes> {
        let st = self.lock();
        st.stage
            .values()
            .chain(st.queue.iter())
            .chain(st.in_flight.values())
            .flat_map(|c| c.deliveries.iter().cloned())
            .collect()
    }

    /// Staged chunks holding an open append descriptor (tests of the descriptor bound).
    #[cfg(test)]
    pub fn open_staged_files(&self) -> usize {
        let st = self.lock();
        st.stage
            .values()
            .filter(|c| c.backing.as_ref().is_some_and(|b| b.file.is_some()))
            .count()
    }

    /// Whether anything is queued.
    pub fn has_queued(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    /// Current sizes.
    pub fn stats(&self) -> BufferStats {
        let st = self.lock();
        BufferStats {
            stage_length: st.stage.len(),
            stage_bytes: st.stage_bytes,
            queue_length: st.queue.len(),
            queue_bytes: st.queue_bytes,
            in_flight: st.in_flight.len(),
        }
    }

    /// Record counts of queued chunks in order, then of staged chunks (for tests and
    /// `sluice buffer ls`).
    pub fn layout(&self) -> (Vec<u64>, Vec<u64>) {
        let st = self.lock();
        let q = st.queue.iter().map(|c| c.records()).collect();
        let s = st
            .stage_order
            .iter()
            .filter_map(|m| st.stage.get(m))
            .map(|c| c.records())
            .collect();
        (q, s)
    }

    /// Copies of the committed bytes of queued chunks, then staged chunks (tests).
    pub fn contents(&self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let st = self.lock();
        let q = st
            .queue
            .iter()
            .map(|c| c.stored_bytes().map(|b| b.to_vec()).unwrap_or_default())
            .collect();
        let s = st
            .stage_order
            .iter()
            .filter_map(|m| st.stage.get(m))
            .map(|c| c.stored_bytes().map(|b| b.to_vec()).unwrap_or_default())
            .collect();
        (q, s)
    }
}

/// What a flush worker gets of chunk `c`, with its bytes.
fn flush_chunk(c: &Chunk, stored: ChunkRecords) -> FlushChunk {
    FlushChunk {
        id: c.id,
        metadata: c.metadata.clone(),
        stored,
        records: c.records(),
        created: c.created,
        compress: c.compress,
        deliveries: c.deliveries.clone(),
    }
}

fn chunk_of<'a>(st: &'a mut State, t: &'a mut Touched) -> &'a mut Chunk {
    match t {
        Touched::Staged(m) => st
            .stage
            .get_mut(m)
            .expect("staged chunk exists while touched"),
        Touched::Unstaged(c) => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::FakeClock;
    use proptest::prelude::*;

    fn limits(size: u64, records: Option<u64>) -> BufferLimits {
        BufferLimits {
            chunk_limit_size: size,
            chunk_limit_records: records,
            chunk_full_threshold: 0.95,
            total_limit_size: 512 << 20,
            compress: Compress::Text,
            queued_chunks_limit_size: 1,
            flush_mode: FlushMode::Lazy,
            flush_interval: 60.0,
            timekey: None,
            timekey_wait: 600.0,
        }
    }

    fn buffer(l: BufferLimits, standard: bool) -> Buffer {
        Buffer::new(l, standard, FakeClock::at(1_475_539_089))
    }

    fn group(records: &[Vec<u8>]) -> Group {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for r in records {
            bytes.extend_from_slice(r);
            ends.push(bytes.len());
        }
        Group {
            metadata: Metadata::default(),
            bytes: Bytes::from(bytes),
            ends,
        }
    }

    /// line(n) of the reference: 36 bytes.
    fn line(n: u32) -> Vec<u8> {
        format!("2016-10-03T23:58:09+00:00\tt\t{{\"n\":{n}}}\n").into_bytes()
    }

    fn lines(ns: &[u32]) -> Vec<u8> {
        ns.iter().flat_map(|n| line(*n)).collect()
    }

    #[test]
    fn scenario_057_records_limit_one_emit() {
        let b = buffer(limits(8 << 20, Some(2)), false);
        b.write(&[group(&(1..=5).map(line).collect::<Vec<_>>())])
            .unwrap();
        b.enqueue_all();
        let (q, s) = b.contents();
        assert!(s.is_empty());
        assert_eq!(q, vec![lines(&[1, 2]), lines(&[3, 4]), lines(&[5])]);
    }

    #[test]
    fn scenario_058_records_limit_separate_emits() {
        let b = buffer(limits(8 << 20, Some(2)), false);
        for n in 1..=5 {
            b.write(&[group(&[line(n)])]).unwrap();
        }
        b.enqueue_all();
        assert_eq!(
            b.contents().0,
            vec![lines(&[1, 2]), lines(&[3, 4]), lines(&[5])]
        );
    }

    #[test]
    fn scenario_060_oversized_records_reported_rest_kept() {
        let b = buffer(limits(100, None), false);
        let big = |k: &str, c: char, n: usize| {
            format!(
                "2016-10-03T23:58:09+00:00\tt\t{{\"{k}\":\"{}\"}}\n",
                c.to_string().repeat(n)
            )
            .into_bytes()
        };
        let recs = vec![
            line(1),
            big("big", 'x', 200),
            line(3),
            big("big2", 'y', 300),
        ];
        assert_eq!((recs[1].len(), recs[3].len()), (239, 340));
        let r = b.write(&[group(&recs)]).unwrap();
        let msgs: Vec<_> = r.oversized.iter().map(|o| o.message.as_str()).collect();
        assert_eq!(
            msgs.join(", "),
            "a 239 bytes record (nth: 1) is larger than buffer chunk limit size (100), a 340 bytes record (nth: 3) is larger than buffer chunk limit size (100)"
        );
        assert_eq!(
            r.oversized.iter().map(|o| o.nth).collect::<Vec<_>>(),
            vec![1, 3]
        );
        b.enqueue_all();
        assert_eq!(b.contents().0, vec![lines(&[1, 3])]);
    }

    #[test]
    fn scenario_061_not_full_below_threshold() {
        let b = buffer(limits(200, None), false);
        for n in 1..=5 {
            b.write(&[group(&[line(n)])]).unwrap();
        }
        assert_eq!(b.layout(), (vec![], vec![5]));
    }

    #[test]
    fn scenario_064_immediate_mode_enqueues_every_write() {
        let mut l = limits(8 << 20, None);
        l.flush_mode = FlushMode::Immediate;
        let b = buffer(l, false);
        for n in 1..=3 {
            assert!(b.write(&[group(&[line(n)])]).unwrap().enqueued);
        }
        assert_eq!(b.layout(), (vec![1, 1, 1], vec![]));
    }

    fn rec128(tag: u8) -> Vec<u8> {
        vec![tag; 128]
    }

    #[test]
    fn scenario_065_whole_stream_moves_or_fills() {
        for (standard, expect) in [
            (true, (vec![5000], vec![8000])),
            (false, (vec![9800], vec![3200])),
        ] {
            let b = buffer(limits(1_280_000, None), standard);
            b.write(&[group(&vec![rec128(1); 5000])]).unwrap();
            b.write(&[group(&vec![rec128(2); 8000])]).unwrap();
            assert_eq!(b.layout(), expect, "standard={standard}");
        }
    }

    #[test]
    fn scenario_066_standard_split_of_large_stream() {
        let b = buffer(limits(1_280_000, None), true);
        b.write(&[group(&vec![rec128(1); 5000])]).unwrap();
        b.write(&[group(&vec![rec128(2); 45000])]).unwrap();
        assert_eq!(b.layout(), (vec![5000, 9900, 9900, 9900, 9900], vec![5400]));
    }

    #[test]
    fn scenario_067_three_large_records() {
        let b = buffer(limits(1_280_000, None), true);
        b.write(&[group(&vec![rec128(b'x'); 5000])]).unwrap();
        let r = b
            .write(&[group(&[
                vec![b'a'; 1_000_000],
                vec![b'b'; 1_000_000],
                vec![b'c'; 1_000_000],
            ])])
            .unwrap();
        assert!(r.oversized.is_empty());
        let (q, s) = b.contents();
        assert_eq!(q.len(), 3);
        assert_eq!(q[1], vec![b'a'; 1_000_000]);
        assert_eq!(q[2], vec![b'b'; 1_000_000]);
        assert_eq!(s, vec![vec![b'c'; 1_000_000]]);
    }

    #[test]
    fn scenario_068_compressed_oversized_record() {
        let one = {
            let mut c = Chunk::new(ChunkId::now(), Metadata::default(), ChunkState::Staged, 0);
            c.append(b"aaa", 1, Compress::Gzip);
            c.bytesize()
        };
        let mut l = limits(one, None);
        l.compress = Compress::Gzip;
        let b = buffer(l, true);
        let long: Vec<u8> = (0..2000u32).flat_map(|i| i.to_le_bytes()).collect();
        let r = b
            .write(&[group(&[long, b"aaa".to_vec(), b"bbb".to_vec()])])
            .unwrap();
        assert_eq!(r.oversized.len(), 1);
        assert!(
            r.oversized[0]
                .message
                .starts_with("concatenated/appended a "),
            "{}",
            r.oversized[0].message
        );
        assert!(r.oversized[0].message.ends_with(&format!(
            "bytes record (nth: 0) is larger than buffer chunk limit size ({one})"
        )));
        let (q, s) = b.contents();
        assert!(s.is_empty());
        let q: Vec<Vec<u8>> = q
            .iter()
            .map(|c| super::super::chunk::decompress(c, Compress::Gzip, 1 << 20).unwrap())
            .collect();
        assert_eq!(q, vec![b"aaa".to_vec(), b"bbb".to_vec()]);
    }

    #[test]
    fn total_limit_is_hard() {
        let mut l = limits(100, None);
        l.total_limit_size = 200;
        let b = buffer(l, false);
        for n in 1..=5 {
            b.write(&[group(&[line(n)])]).unwrap();
        }
        assert_eq!(
            b.write(&[group(&[line(6)])]).unwrap_err(),
            WriteError::Overflow
        );
        assert_eq!(b.stats().stage_bytes + b.stats().queue_bytes, 180);
    }

    #[test]
    fn flush_cycle_and_takeback() {
        let b = buffer(limits(100, None), false);
        for n in 1..=3 {
            b.write(&[group(&[line(n)])]).unwrap();
        }
        b.enqueue_all();
        let first = b.dequeue().unwrap();
        assert_eq!(first.stored.read_all().unwrap(), lines(&[1, 2]));
        assert!(b.takeback(first.id));
        let again = b.dequeue().unwrap();
        assert_eq!(again.id, first.id);
        assert!(b.purge(again.id));
        assert_eq!(b.stats().queue_bytes, 36);
        let last = b.dequeue().unwrap();
        assert!(b.purge(last.id));
        assert_eq!(b.stats(), BufferStats::default());
    }

    #[test]
    fn timer_enqueue_rules() {
        let clock = FakeClock::at(1000);
        let mut l = limits(1 << 20, None);
        l.timekey = Some(60);
        l.timekey_wait = 10.0;
        l.queued_chunks_limit_size = 10;
        let b = Buffer::new(l, false, clock.clone());
        let mut g = group(&[line(1)]);
        g.metadata.timekey = Some(960);
        b.write(&[g]).unwrap();
        clock.set(crate::event::EventTime::new(1029, 0));
        assert_eq!(b.enqueue_due(), 0);
        clock.set(crate::event::EventTime::new(1030, 0));
        assert_eq!(b.enqueue_due(), 1);

        let clock = FakeClock::at(1000);
        let mut l = limits(1 << 20, None);
        l.flush_mode = FlushMode::Interval;
        l.flush_interval = 10.0;
        let b = Buffer::new(l, false, clock.clone());
        b.write(&[group(&[line(1)])]).unwrap();
        clock.advance(9.5);
        assert_eq!(b.enqueue_due(), 0);
        clock.advance(0.5);
        assert_eq!(b.enqueue_due(), 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// No record lost or duplicated, every chunk within its limits, order kept per metadata.
        #[test]
        fn writes_keep_every_record_in_order(
            limit in 40u64..400,
            rec_limit in proptest::option::of(1u64..8),
            standard in any::<bool>(),
            emits in proptest::collection::vec(proptest::collection::vec((0u8..3, 1usize..120), 1..30), 1..12),
        ) {
            let b = buffer(limits(limit, rec_limit), standard);
            let mut expected: HashMap<u8, Vec<Vec<u8>>> = HashMap::new();
            let mut counter = 0u32;
            for emit in emits {
                let mut groups: Vec<(u8, Vec<Vec<u8>>)> = Vec::new();
                for (key, size) in emit {
                    counter += 1;
                    let mut r = format!("{counter:08}|").into_bytes();
                    r.resize(size.max(10), b'.');
                    r.push(b'\n');
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, v)) => v.push(r),
                        None => groups.push((key, vec![r])),
                    }
                }
                let gs: Vec<Group> = groups.iter().map(|(k, rs)| {
                    let mut g = group(rs);
                    g.metadata.tag = Some(Arc::from(k.to_string().as_str()));
                    g
                }).collect();
                let report = b.write(&gs).unwrap();
                for (gi, (k, rs)) in groups.iter().enumerate() {
                    for (i, r) in rs.iter().enumerate() {
                        let skipped = report.oversized.iter().any(|o| o.group == gi && o.nth == i);
                        prop_assert_eq!(skipped, r.len() as u64 > limit);
                        if !skipped {
                            expected.entry(*k).or_default().push(r.clone());
                        }
                    }
                }
            }
            b.enqueue_all();
            let mut got: HashMap<u8, Vec<Vec<u8>>> = HashMap::new();
            while let Some(c) = b.dequeue() {
                let bytes = c.stored.read_all().unwrap();
                prop_assert!(bytes.len() as u64 <= limit);
                if let Some(rl) = rec_limit { prop_assert!(c.records <= rl); }
                let k: u8 = c.metadata.tag.as_deref().unwrap().parse().unwrap();
                let recs: Vec<Vec<u8>> = bytes.split_inclusive(|b| *b == b'\n').map(|s| s.to_vec()).collect();
                prop_assert_eq!(recs.len() as u64, c.records);
                got.entry(k).or_default().extend(recs);
                b.purge(c.id);
            }
            prop_assert_eq!(got, expected);
            prop_assert_eq!(b.stats(), BufferStats::default());
        }
    }
}
