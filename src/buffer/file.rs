//! The durable file buffer (`<buffer> @type file`): where chunk files live, the lock that makes
//! one process own a buffer path, and resume after a restart or a crash.
//!
//! # On-disk format
//!
//! One file per chunk, named as Fluentd names them so operators find them where they expect:
//! `<dir>/buffer.b<id>.log` while staged and `buffer.q<id>.log` once queued (or, with a path
//! pattern `/p/app.*.txt`, `/p/app.b<id>.txt`). The content is sluice's own: a sequence of
//! checksummed frames ([`super::wal`]) — a header frame with the chunk's metadata, then one
//! records frame per committed write. There is no separate `.meta` file: metadata never changes
//! after creation, record counts are in the frames, and so enqueueing is one atomic rename of one
//! file, with no window in which data and metadata disagree.
//!
//! # Invariants
//!
//! - A chunk file only grows by whole frames appended at its end; a failed append is cut back.
//! - An acknowledged append is on disk: the group-commit task fdatasyncs every file written since
//!   its last pass (and the directory when files were created) before publishing progress, and
//!   inputs acknowledge only after that (`sync always`).
//! - Resume keeps every intact frame. A torn tail or damaged bytes are cut out, logged with the
//!   file and byte range, and counted; a file without a readable header goes to the backup
//!   directory with whatever records can be read.
//! - Only queued chunks' files are closed: a backlog of any size holds no descriptors; staged
//!   chunks hold one each.
//! - One process owns a buffer path: a second one fails to take the lock and stops.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::chunk::{Chunk, ChunkState, FileBacking};
use super::chunk_id::ChunkId;
use super::config::Compress;
use super::metadata::Metadata;
use crate::msgpack;

/// Writes `data` to `target` so that a crash leaves either the old file or the whole new one:
/// a temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_atomically(target: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, data)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, target)?;
    std::fs::File::open(&dir)?.sync_all()
}

/// How chunk file names are built from a buffer `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Directory holding the chunk files.
    pub dir: PathBuf,
    /// File name before `b<id>` / `q<id>`.
    pub prefix: String,
    /// File name after the id.
    pub suffix: String,
}

impl Layout {
    /// Resolves a buffer `path` as Fluentd does (§5.1): an existing directory, or a path that
    /// does not exist and has no `.*`, is a directory of `buffer.*<suffix>` files; a basename with
    /// `.*.` is a pattern used as is; one ending in `.*` gets the suffix; any other path gets
    /// `.*<suffix>` appended.
    pub fn resolve(path: &str, path_suffix: &str) -> Layout {
        let p = Path::new(path);
        if p.is_dir() || (!p.exists() && !path.contains(".*")) {
            return Layout {
                dir: p.to_path_buf(),
                prefix: "buffer.".into(),
                suffix: path_suffix.into(),
            };
        }
        let dir = p
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let base = p
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (prefix, suffix) = if let Some(i) = base.find(".*.") {
            (base[..i + 1].to_string(), base[i + 2..].to_string())
        } else if let Some(stem) = base.strip_suffix(".*") {
            (format!("{stem}."), path_suffix.to_string())
        } else {
            (format!("{base}."), path_suffix.to_string())
        };
        Layout {
            dir,
            prefix,
            suffix,
        }
    }

    /// The file of chunk `id` in state `b` (staged) or `q` (queued).
    pub fn chunk_path(&self, state: char, id: ChunkId) -> PathBuf {
        self.dir
            .join(format!("{}{state}{id}{}", self.prefix, self.suffix))
    }

    /// The state letter and id of a file name of this layout.
    pub fn parse_name(&self, name: &str) -> Option<(char, ChunkId)> {
        let rest = name
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        let mut chars = rest.chars();
        let state = chars.next().filter(|c| *c == 'b' || *c == 'q')?;
        Some((state, ChunkId::parse_hex(chars.as_str())?))
    }

    /// The lock file of this buffer path.
    pub fn lock_path(&self) -> PathBuf {
        self.dir
            .join(format!(".{}sluice.lock", self.prefix.replace('/', "_")))
    }
}

/// Why a file buffer cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the buffer path.
    #[error("buffer path {path} is in use by another sluice process (lock {lock})")]
    Locked {
        /// The buffer directory.
        path: String,
        /// The lock file.
        lock: String,
    },
    /// The directory or lock file cannot be created.
    #[error("cannot use buffer path {path}: {source}")]
    Io {
        /// The buffer directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// An open file buffer: its layout, its lock, permissions and damage counters.
#[derive(Debug)]
pub struct FileStore {
    /// Where chunk files go.
    pub layout: Layout,
    /// `file_permission`.
    pub file_mode: u32,
    _lock: std::fs::File,
    /// Frames cut out during resume (torn tails and damaged ranges).
    pub damaged_frames: AtomicU64,
    /// Bytes cut out during resume.
    pub damaged_bytes: AtomicU64,
    /// Whether chunks hold formatted records (else MessagePack entries); recorded in headers
    /// for `sluice buffer cat`.
    pub formatted: bool,
}

impl FileStore {
    /// Creates the directory (with `dir_mode`) and takes the lock.
    pub fn open(layout: Layout, file_mode: u32, dir_mode: u32) -> Result<FileStore, OpenError> {
        let io = |source| OpenError::Io {
            path: layout.dir.display().to_string(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(&layout.dir)
            .map_err(io)?;
        let lock_path = layout.lock_path();
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .open(&lock_path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; it has no memory effects.
        let r = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&lock),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if r != 0 {
            return Err(OpenError::Locked {
                path: layout.dir.display().to_string(),
                lock: lock_path.display().to_string(),
            });
        }
        Ok(FileStore {
            layout,
            file_mode,
            _lock: lock,
            damaged_frames: AtomicU64::new(0),
            damaged_bytes: AtomicU64::new(0),
            formatted: false,
        })
    }

    /// A new empty file-backed chunk (its file is created at the first persist).
    pub fn new_chunk(
        &self,
        meta: &Metadata,
        state: ChunkState,
        now: i64,
        compress: Compress,
    ) -> Chunk {
        let id = ChunkId::now();
        let mut c = Chunk::new(id, meta.clone(), state, now);
        c.compress = compress;
        c.backing = Some(FileBacking {
            path: self.layout.chunk_path('b', id),
            disk_len: 0,
            disk_records: 0,
            file_len: 0,
            file: None,
            header: encode_header(&Header {
                id,
                metadata: meta.clone(),
                created: now,
                compress,
                formatted: self.formatted,
            }),
            mode: self.file_mode,
        });
        c
    }

    /// Renames a chunk's file to its queued name and closes it.
    pub fn mark_queued(&self, c: &mut Chunk) {
        let Some(b) = c.backing.as_mut() else { return };
        b.file = None;
        let to = self.layout.chunk_path('q', c.id);
        if b.file_len > 0 && b.path != to {
            if let Err(e) = std::fs::rename(&b.path, &to) {
                tracing::error!(from = %b.path.display(), to = %to.display(), "cannot rename chunk file to its queued name: {e}");
                return;
            }
        }
        b.path = to;
    }

    /// Deletes a written chunk's file.
    pub fn remove(&self, c: &Chunk) {
        if let Some(b) = &c.backing {
            if b.file_len > 0 {
                if let Err(e) = std::fs::remove_file(&b.path) {
                    tracing::error!(path = %b.path.display(), "cannot delete written chunk file: {e}");
                }
            }
        }
    }

    /// Loads every chunk file of the layout. Returns staged and queued chunks (queued in
    /// modified order) and the broken ones that have no readable header (with their records).
    pub fn resume(&self) -> std::io::Result<Resumed> {
        let mut out = Resumed::default();
        let mut found: Vec<(char, ChunkId, PathBuf, std::time::SystemTime)> = Vec::new();
        for entry in std::fs::read_dir(&self.layout.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((state, id)) = self.layout.parse_name(&name) else {
                continue;
            };
            let mtime = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            found.push((state, id, entry.path(), mtime));
        }
        found.sort_by_key(|f| (f.3, f.1));
        for (state, id, path, mtime) in found {
            let f = super::records::scan_file(&path, None)?;
            for d in &f.damage {
                self.damaged_frames.fetch_add(1, Ordering::Relaxed);
                self.damaged_bytes
                    .fetch_add(d.end - d.start, Ordering::Relaxed);
                let lost = match f.records_claimed(d) {
                    Some(n) => n.to_string(),
                    None => "unknown".to_string(),
                };
                tracing::error!(
                    path = %path.display(), start = d.start, end = d.end, records_lost = %lost,
                    "damaged bytes in buffer chunk file cut out during resume (torn write or corruption); the rest of the chunk is kept"
                );
            }
            let (count, records_len) = (f.records.count(), f.records.len());
            let header = f.header.as_deref().and_then(decode_header);
            let Some(h) = header.filter(|h| h.id == id) else {
                tracing::error!(path = %path.display(), "found broken chunk file during resume: no readable metadata");
                out.broken.push(BrokenChunk {
                    id,
                    records: f.records.read_all()?,
                    path,
                    count,
                });
                continue;
            };
            if count == 0 {
                // Created but never written to: nothing to keep.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let (end, file_len) = (f.end, f.len);
            if state == 'b' && end < file_len {
                // Appends continue after the last intact frame.
                let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                f.set_len(end)?;
                f.sync_all()?;
            }
            let modified = mtime
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(h.created);
            let mut c = Chunk::new(
                h.id,
                h.metadata.clone(),
                if state == 'b' {
                    ChunkState::Staged
                } else {
                    ChunkState::Queued
                },
                h.created,
            );
            c.modified = modified;
            c.compress = h.compress;
            c.deliveries = f.deliveries;
            c.set_resumed(records_len, count);
            c.backing = Some(FileBacking {
                path: path.clone(),
                disk_len: records_len,
                disk_records: count,
                file_len: if state == 'b' { end } else { file_len },
                file: None,
                header: encode_header(&h),
                mode: self.file_mode,
            });
            tracing::debug!(path = %path.display(), records = count, "restoring buffer file");
            if state == 'b' {
                out.staged.push(c);
            } else {
                out.queued.push(c);
            }
        }
        Ok(out)
    }
}

/// What resume found.
#[derive(Debug, Default)]
pub struct Resumed {
    /// Staged chunks, oldest first.
    pub staged: Vec<Chunk>,
    /// Queued chunks, oldest first.
    pub queued: Vec<Chunk>,
    /// Files without readable metadata.
    pub broken: Vec<BrokenChunk>,
}

/// A chunk file whose metadata could not be read.
#[derive(Debug)]
pub struct BrokenChunk {
    /// Id from the file name.
    pub id: ChunkId,
    /// The file.
    pub path: PathBuf,
    /// The records that could be read.
    pub records: Bytes,
    /// How many.
    pub count: u64,
}

/// What a chunk file's header frame says.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The chunk id (also in the file name).
    pub id: ChunkId,
    /// Chunk keys.
    pub metadata: Metadata,
    /// Creation time, epoch seconds.
    pub created: i64,
    /// How each records frame's bytes are compressed.
    pub compress: Compress,
    /// Formatted records (else MessagePack `[time, record]` entries).
    pub formatted: bool,
}

/// Encodes the header frame's payload: a MessagePack map of id, created, timekey, tag,
/// variables, compress and format.
pub fn encode_header(h: &Header) -> Vec<u8> {
    use rmp::encode as e;
    let mut out = Vec::new();
    let meta = &h.metadata;
    let _ = e::write_map_len(&mut out, 7);
    let _ = e::write_str(&mut out, "id");
    let _ = e::write_bin(&mut out, &h.id.0);
    let _ = e::write_str(&mut out, "created");
    let _ = e::write_sint(&mut out, h.created);
    let _ = e::write_str(&mut out, "timekey");
    match meta.timekey {
        Some(t) => {
            let _ = e::write_sint(&mut out, t);
        }
        None => {
            let _ = e::write_nil(&mut out);
        }
    }
    let _ = e::write_str(&mut out, "tag");
    match &meta.tag {
        Some(t) => {
            let _ = e::write_str(&mut out, t);
        }
        None => {
            let _ = e::write_nil(&mut out);
        }
    }
    let _ = e::write_str(&mut out, "variables");
    let _ = e::write_map_len(&mut out, meta.variables.len() as u32);
    for (k, v) in &meta.variables {
        let _ = e::write_str(&mut out, k);
        out.extend_from_slice(v);
    }
    let _ = e::write_str(&mut out, "compress");
    let _ = e::write_str(
        &mut out,
        match h.compress {
            Compress::Text => "text",
            Compress::Gzip => "gzip",
            Compress::Zstd => "zstd",
        },
    );
    let _ = e::write_str(&mut out, "format");
    let _ = e::write_str(&mut out, if h.formatted { "formatted" } else { "msgpack" });
    out
}

/// Decodes a header payload.
pub fn decode_header(p: &[u8]) -> Option<Header> {
    let id = msgpack::as_bytes(msgpack::map_get(p, "id").ok()??, 0)?;
    let id = ChunkId(id.try_into().ok()?);
    let int = |k: &str| -> Option<Option<i64>> {
        let v = msgpack::map_get(p, k).ok()??;
        match msgpack::head(v, 0).ok()?.0 {
            msgpack::Kind::Int(i) => Some(Some(i)),
            msgpack::Kind::Nil => Some(None),
            _ => None,
        }
    };
    let text = |k: &str| {
        msgpack::map_get(p, k)
            .ok()
            .flatten()
            .and_then(|v| msgpack::as_str(v, 0))
    };
    let created = int("created")??;
    let timekey = int("timekey")?;
    let tag = text("tag").map(std::sync::Arc::from);
    let mut variables = Vec::new();
    if let Some(vars) = msgpack::map_get(p, "variables").ok()? {
        for e in msgpack::map_entries(vars).ok()? {
            variables.push((
                std::sync::Arc::from(e.key_str()?),
                Bytes::copy_from_slice(e.value),
            ));
        }
    }
    let compress = match text("compress") {
        None | Some("text") => Compress::Text,
        Some("gzip") => Compress::Gzip,
        Some("zstd") => Compress::Zstd,
        Some(_) => return None,
    };
    Some(Header {
        id,
        metadata: Metadata {
            timekey,
            tag,
            variables,
        },
        created,
        compress,
        formatted: text("format") == Some("formatted"),
    })
}

/// Groups resumed staged chunks: the first of each metadata stays staged, later ones (and
/// full ones, decided by the caller) are queued — Fluentd's rule for same-metadata chunks.
pub fn split_staged(staged: Vec<Chunk>) -> (Vec<Chunk>, Vec<Chunk>) {
    let mut keep: HashMap<Metadata, Chunk> = HashMap::new();
    let mut order = Vec::new();
    let mut extra = Vec::new();
    for c in staged {
        if let Some(prev) = keep.remove(&c.metadata) {
            // The newer one stays staged; the older is queued.
            extra.push(prev);
        } else {
            order.push(c.metadata.clone());
        }
        keep.insert(c.metadata.clone(), c);
    }
    let staged = order.into_iter().filter_map(|m| keep.remove(&m)).collect();
    (staged, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_fluentd() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        let l = Layout::resolve(&dir, ".log");
        assert_eq!((l.prefix.as_str(), l.suffix.as_str()), ("buffer.", ".log"));
        let l = Layout::resolve(&format!("{dir}/buffer"), ".log");
        assert_eq!(l.dir, d.path().join("buffer"));
        let l = Layout::resolve(&format!("{dir}/x.*.dat"), ".log");
        let id = ChunkId::parse_hex("53dfeb7408640000aaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(l.chunk_path('b', id), d.path().join(format!("x.b{id}.dat")));
        assert_eq!(l.parse_name(&format!("x.q{id}.dat")), Some(('q', id)));
        assert_eq!(l.parse_name("x.20160416.dat"), None);
        let l = Layout::resolve(&format!("{dir}/app.*"), ".buf");
        assert_eq!(
            l.chunk_path('q', id),
            d.path().join(format!("app.q{id}.buf"))
        );
    }

    #[test]
    fn header_roundtrip() {
        let id = ChunkId::now();
        let meta = Metadata {
            timekey: Some(1475535600),
            tag: Some("web.app".into()),
            variables: vec![(
                "service".into(),
                Bytes::from_static(&[0xa3, b'a', b'p', b'i']),
            )],
        };
        let h = Header {
            id,
            metadata: meta,
            created: 42,
            compress: Compress::Gzip,
            formatted: true,
        };
        assert_eq!(decode_header(&encode_header(&h)), Some(h));
        assert_eq!(decode_header(&[0x80]), None);
    }

    #[test]
    fn second_process_is_locked_out() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::resolve(&d.path().display().to_string(), ".log");
        let _a = FileStore::open(l.clone(), 0o644, 0o755).unwrap();
        // flock locks are per open file description, so a second open in this process conflicts
        // just as another process would.
        assert!(matches!(
            FileStore::open(l, 0o644, 0o755),
            Err(OpenError::Locked { .. })
        ));
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;
    use crate::buffer::config::FlushMode;
    use crate::buffer::core::{Buffer, BufferLimits, Group};
    use crate::time::FakeClock;
    use proptest::prelude::*;

    fn limits() -> BufferLimits {
        BufferLimits {
            chunk_limit_size: 1 << 20,
            chunk_limit_records: Some(20),
            chunk_full_threshold: 0.95,
            total_limit_size: 1 << 30,
            compress: Compress::Text,
            queued_chunks_limit_size: 1,
            flush_mode: FlushMode::Lazy,
            flush_interval: 60.0,
            timekey: None,
            timekey_wait: 600.0,
        }
    }

    fn open(dir: &Path) -> (Buffer, Vec<BrokenChunk>) {
        let store = FileStore::open(
            Layout::resolve(&dir.display().to_string(), ".log"),
            0o644,
            0o755,
        )
        .unwrap();
        Buffer::open_file(limits(), false, FakeClock::at(1_000), store).unwrap()
    }

    fn record(n: u32) -> Vec<u8> {
        format!("record {n:05}\n").into_bytes()
    }

    fn write(b: &Buffer, from: u32, to: u32) {
        for n in from..to {
            let r = record(n);
            let g = Group {
                metadata: Metadata::default(),
                bytes: Bytes::from(r.clone()),
                ends: vec![r.len()],
            };
            b.write(&[g]).unwrap();
        }
    }

    /// Every record readable after a restart, in order.
    fn drain(b: &Buffer) -> Vec<u32> {
        b.enqueue_all();
        let mut out = Vec::new();
        while let Some(c) = b.dequeue() {
            for line in c
                .stored
                .read_all()
                .unwrap()
                .split(|x| *x == b'\n')
                .filter(|l| !l.is_empty())
            {
                let s = std::str::from_utf8(line).unwrap();
                out.push(s.trim_start_matches("record ").parse().unwrap());
            }
            b.purge(c.id);
        }
        out
    }

    #[test]
    fn many_staged_chunks_keep_few_files_open() {
        let d = tempfile::tempdir().unwrap();
        let (b, _) = open(d.path());
        let tagged = |tag: usize, n: u32| {
            let r = record(n);
            Group {
                metadata: Metadata {
                    tag: Some(std::sync::Arc::from(format!("t{tag}"))),
                    ..Metadata::default()
                },
                bytes: Bytes::from(r.clone()),
                ends: vec![r.len()],
            }
        };
        let mut max_open = 0;
        for round in 0..2u32 {
            for tag in 0..1000 {
                b.write(&[tagged(tag, round * 1000 + tag as u32)]).unwrap();
                max_open = max_open.max(b.open_staged_files());
            }
        }
        assert_eq!(b.layout().1.len(), 1000, "one staged chunk per tag");
        assert!(max_open <= 257, "{max_open} files open at once");
        // Files closed in between took their second record: everything is on disk.
        drop(b);
        let (b, broken) = open(d.path());
        assert!(broken.is_empty());
        let mut got = drain(&b);
        got.sort_unstable();
        assert_eq!(got, (0..2000).collect::<Vec<_>>());
    }

    #[test]
    fn restart_resumes_staged_and_queued_chunks() {
        let d = tempfile::tempdir().unwrap();
        {
            let (b, broken) = open(d.path());
            assert!(broken.is_empty());
            write(&b, 0, 50);
            assert_eq!(b.layout(), (vec![19, 19], vec![12]));
        }
        let (b, _) = open(d.path());
        assert_eq!(b.layout(), (vec![19, 19], vec![12]));
        write(&b, 50, 55);
        assert_eq!(b.layout(), (vec![19, 19], vec![17]));
        assert_eq!(drain(&b), (0..55).collect::<Vec<_>>());
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .collect();
        assert!(left.is_empty(), "written chunks are deleted: {left:?}");
    }

    #[test]
    fn new_staged_chunk_files_are_reported() {
        let d = tempfile::tempdir().unwrap();
        let (b, _) = open(d.path());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        assert!(b.on_new_staged_file(move |_, id, path| {
            sink.lock()
                .unwrap()
                .push((id, path.to_path_buf(), path.is_file()));
        }));
        let seen = || seen.lock().unwrap().clone();
        write(&b, 0, 1);
        let first = seen();
        assert_eq!(first.len(), 1);
        let (id, path, existed) = &first[0];
        assert!(existed, "reported once the file exists");
        assert_eq!(path, &d.path().join(format!("buffer.b{id}.log")));
        // Appends to the same chunk, and queueing it when full, report nothing.
        write(&b, 1, 19);
        assert_eq!(b.layout(), (vec![19], vec![]));
        assert_eq!(seen().len(), 1);
        // The next chunk's file is reported.
        write(&b, 19, 20);
        assert_eq!(seen().len(), 2);
        assert_ne!(seen()[1].0, *id);
        // A write split over several chunks reports only the one left staged.
        let recs: Vec<Vec<u8>> = (20..65).map(record).collect();
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for r in &recs {
            bytes.extend_from_slice(r);
            ends.push(bytes.len());
        }
        b.write(&[Group {
            metadata: Metadata::default(),
            bytes: Bytes::from(bytes),
            ends,
        }])
        .unwrap();
        assert_eq!(b.layout(), (vec![19, 19, 19], vec![8]));
        let all = seen();
        assert_eq!(all.len(), 3, "{all:?}");
        assert!(all[2].1.is_file(), "the staged chunk's file");
        assert!(!b.on_new_staged_file(|_, _, _| {}), "one hook only");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Truncating or flipping bytes of chunk files: resume never panics, keeps records in
        /// order, never invents one, and loses only records of damaged frames.
        #[test]
        fn torn_and_flipped_files_keep_every_intact_frame(
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..3),
            victim in any::<prop::sample::Index>(),
        ) {
            let d = tempfile::tempdir().unwrap();
            {
                let (b, _) = open(d.path());
                write(&b, 0, 50);
            }
            let mut files: Vec<PathBuf> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().path()).filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.')).collect();
            files.sort();
            let f = &files[victim.index(files.len())];
            let mut data = std::fs::read(f).unwrap();
            let frames_before = crate::buffer::wal::scan(&data).frames.len();
            data.truncate(cut.index(data.len() + 1));
            for (i, x) in &flips {
                if !data.is_empty() {
                    let k = i.index(data.len());
                    data[k] ^= x;
                }
            }
            std::fs::write(f, &data).unwrap();
            let (b, broken) = open(d.path());
            let mut got = drain(&b);
            for bc in &broken {
                for line in bc.records.split(|x| *x == b'\n').filter(|l| !l.is_empty()) {
                    got.push(std::str::from_utf8(line).unwrap().trim_start_matches("record ").parse().unwrap());
                }
            }
            got.sort_unstable();
            let mut dedup = got.clone();
            dedup.dedup();
            prop_assert_eq!(&dedup, &got, "no record twice");
            prop_assert!(got.iter().all(|n| *n < 50));
            // Each records frame holds one record here, so at most (damaged frames) are lost.
            let lost = 50 - got.len();
            prop_assert!(lost <= frames_before, "lost {} of a file with {} frames", lost, frames_before);
        }
    }
}
