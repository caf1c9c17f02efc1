//! `@type file` (Fluentd's out_file) and `@type secondary_file`: buffered outputs that write
//! each chunk to a file named after the chunk.
//!
//! # out_file
//!
//! Always buffered, as in Fluentd: without a `<buffer>` section the buffer has chunk key `time`
//! and `timekey` 1d (with Fluentd's warnings). The file name comes from `path` through a
//! *template* built at start-up (reference §2.5):
//!
//! | `path` | template (timekey 1d, not `append`) |
//! |---|---|
//! | `/out/app` | `/out/app.%Y%m%d_**.log` |
//! | `/out/app.*.txt` | `/out/app.%Y%m%d_**.txt` (every `*` becomes time + index, no suffix) |
//! | `/out/%Y/%m/%d/app` | `/out/%Y/%m/%d/app_**.log` (all of the time format given: kept) |
//! | `/out/${tag}` with `<buffer tag>` | `/out/${tag}_**.log` (no time key: no time part) |
//!
//! The time format is `%Y%m%d%H%M%S`, `%Y%m%d%H%M`, `%Y%m%d%H` or `%Y%m%d` for a timekey under a
//! minute, an hour, a day, or longer; `append true` drops the `_**` index; `compress gzip` (or
//! `gz`) adds `.gz`, `compress zstd` `.zstd`; the legacy `time_slice_format` replaces the time
//! format and is always appended. A path with only some of the time format's directives is
//! `insufficient timestamp placeholders in path`. The template is then checked against the chunk
//! keys ([`placeholder::validate`]) and, expanded for a dummy chunk (tag `a`, key values `data`,
//! now), must be writable: `` out_file: `<path>` is not writable ``.
//!
//! Writing a chunk expands the template for it ([`placeholder::extract`]: a tag or value that
//! would leave the directory makes the chunk unrecoverable, so it goes to the backup directory).
//! Without `append`, `_**` becomes `_0`, `_1`, … — the first index whose file does not exist,
//! created exclusively so two writers never share one — and every chunk gets its own file; with
//! `append`, every chunk of the same expanded path is appended to one file. Compressed output
//! is one gzip member (zstd frame) per chunk; when the buffer already holds members of the same
//! kind and `recompress` is false, they are copied as they are.
//!
//! With a file buffer, `symlink_path` (placeholders expanded for the chunk) is a symbolic link
//! to the file of the newest staged chunk: the buffer reports each new staged chunk file
//! ([`Buffer::on_new_staged_file`]) and the link is replaced by a rename, unless the chunk is of
//! an older time slice than the one linked. `symlink_path_use_relative` links with a relative
//! path.
//!
//! # secondary_file
//!
//! Only valid as a `<secondary>`: writes the chunk's records to `<directory>/<basename>.<i>`
//! (first free index; `<directory>/<basename>` with `append`), plus `.gz` with `compress gzip`.
//! `directory` and `basename` may hold the primary's placeholders only.
//!
//! Files are created with `file_permission` (output parameter, else `<system>`'s, else 0644),
//! directories with `dir_permission` (else `<system>`'s, else 0755), and synced to disk before
//! the chunk is reported written.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::buffer::chunk_id::ChunkId;
use crate::buffer::config::{BufferConfig, BufferType, ChunkKeys, Compress, OutputDefaults};
use crate::buffer::core::Buffer;
use crate::buffer::metadata::{Metadata, MetadataBuilder};
use crate::config::{ConfigError, Element, Param};
use crate::event::EventTime;
use crate::format::inject::RecordFormat;
use crate::format::time::{ruby_strftime, TimeView};
use crate::placeholder::{self, PlaceholderContext, PlaceholderError};
use crate::time::Zone;

use super::buffered::{ChunkWriteError, ChunkWriter, WriteChunk};
use super::{BoxFuture, BuildContext};

/// out_file's default `timekey`: one day.
pub const DEFAULT_TIMEKEY: i64 = 86400;

/// Fluentd's error for `@type secondary_file` outside a `<secondary>`.
pub const SECONDARY_ONLY: &str = "This plugin can only be used in the <secondary> section";

/// Fluentd's error for a `*` path without a `time` chunk key (a RuntimeError in Fluentd; here a
/// configuration error with the same text).
pub const STAR_WITHOUT_TIMEKEY: &str =
    "BUG: configuration error must be raised for path including '*' without timekey";

/// Fluentd's error for a path holding some, but not all, of the time format's directives.
pub const INSUFFICIENT_TIMESTAMP: &str = "insufficient timestamp placeholders in path";

const WARN_NO_BUFFER: &str = "default timekey interval (1d) will be used because of missing <buffer> section. To change the output frequency, please modify the timekey value";
const WARN_NO_TIMEKEY: &str = "default timekey interval (1d) will be used. To change the output frequency, please modify the timekey value";

/// Buffer defaults of out_file: `@type file`, chunk key `time`, timekey 1d.
pub fn defaults() -> OutputDefaults {
    OutputDefaults {
        chunk_keys: ChunkKeys {
            time: true,
            ..Default::default()
        },
        buffer_type: "file",
        timekey: Some(DEFAULT_TIMEKEY),
        chunk_limit_size: None,
        flush_at_shutdown: None,
        plugin: "file",
    }
}

/// out_file's `compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCompress {
    /// Plain files.
    Text,
    /// `gzip` (or Fluentd's `gz`): `.gz` files.
    Gzip,
    /// `zstd`: `.zstd` files.
    Zstd,
}

impl FileCompress {
    /// The file name suffix this compression adds.
    pub fn suffix(self) -> &'static str {
        match self {
            FileCompress::Text => "",
            FileCompress::Gzip => ".gz",
            FileCompress::Zstd => ".zstd",
        }
    }

    /// The buffer compression whose chunk bytes are already in this format.
    fn same_as(self, stored: Compress) -> bool {
        matches!(
            (self, stored),
            (FileCompress::Gzip, Compress::Gzip) | (FileCompress::Zstd, Compress::Zstd)
        )
    }

    /// Encodes `data` as one gzip member or zstd frame (or returns it as is).
    fn encode(self, data: Bytes) -> std::io::Result<Bytes> {
        match self {
            FileCompress::Text => Ok(data),
            FileCompress::Gzip => gzip(&data).map(Bytes::from),
            FileCompress::Zstd => zstd::stream::encode_all(&data[..], 0).map(Bytes::from),
        }
    }
}

/// One gzip member holding `data`, with the header Ruby's `Zlib::GzipWriter` writes (mtime now,
/// OS Unix, default level).
fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    let mut enc = flate2::GzBuilder::new()
        .mtime(mtime)
        .operating_system(3)
        .write(
            Vec::with_capacity(data.len() / 2 + 32),
            flate2::Compression::default(),
        );
    enc.write_all(data)?;
    enc.finish()
}

/// Why a path template cannot be generated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `*` in the path without a time key.
    #[error("{}", STAR_WITHOUT_TIMEKEY)]
    StarWithoutTimekey,
    /// Some but not all of the time format's directives in the path.
    #[error("{}", INSUFFICIENT_TIMESTAMP)]
    InsufficientTimestamp,
}

/// The time format out_file appends for a timekey: seconds under a minute, minutes under an
/// hour, hours under a day, days otherwise.
pub fn timekey_to_timeformat(timekey: i64) -> &'static str {
    match timekey {
        k if k < 60 => "%Y%m%d%H%M%S",
        k if k < 3600 => "%Y%m%d%H%M",
        k if k < 86400 => "%Y%m%d%H",
        _ => "%Y%m%d",
    }
}

/// Builds out_file's path template from `path` (reference §2.5).
///
/// `timekey` is the buffer's timekey when `time` is a chunk key (else `None`); `path_suffix` is
/// empty when `add_path_suffix` is false; `time_slice_format` is the legacy parameter.
pub fn generate_path_template(
    path: &str,
    timekey: Option<i64>,
    append: bool,
    compress: FileCompress,
    path_suffix: &str,
    time_slice_format: Option<&str>,
) -> Result<String, TemplateError> {
    let comp = compress.suffix();
    let index = if append { "" } else { "_**" };
    if path.contains('*') {
        let Some(k) = timekey else {
            return Err(TemplateError::StarWithoutTimekey);
        };
        let time = time_slice_format.unwrap_or_else(|| timekey_to_timeformat(k));
        return Ok(format!(
            "{}{comp}",
            path.replace('*', &format!("{time}{index}"))
        ));
    }
    let Some(k) = timekey else {
        return Ok(format!("{path}{index}{path_suffix}{comp}"));
    };
    if let Some(tsf) = time_slice_format {
        return Ok(format!("{path}.{tsf}{index}{path_suffix}{comp}"));
    }
    let format = timekey_to_timeformat(k);
    // The format's two-character directives (`%Y`, `%m`, …).
    let directives: Vec<&str> = (0..format.len() / 2)
        .map(|i| &format[2 * i..2 * i + 2])
        .collect();
    let present = directives.iter().filter(|d| path.contains(*d)).count();
    if present == 0 {
        Ok(format!("{path}.{format}{index}{path_suffix}{comp}"))
    } else if present < directives.len() {
        Err(TemplateError::InsufficientTimestamp)
    } else {
        Ok(format!("{path}{index}{path_suffix}{comp}"))
    }
}

/// The template with its (first) `_**` index placeholder replaced by `_<i>`.
pub fn indexed(template: &str, i: u64) -> String {
    template.replacen("_**", &format!("_{i}"), 1)
}

/// Ruby's `File.dirname`: the parent, `.` for a bare name, `/` for the root.
fn dirname(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => Path::new("/"),
    }
}

/// Whether the effective user may write `path` (Ruby's `File.writable?`).
fn access_writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that lives across the call; faccessat only
    // reads it and has no other memory effects.
    unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0 }
}

/// Fluentd's `FileUtil.writable_p?`: an existing file must be writable (a directory never is);
/// otherwise the nearest existing ancestor must be a writable directory (as `mkdir -p` would
/// need).
pub fn writable_p(path: &Path) -> bool {
    if path.is_dir() {
        return false;
    }
    if path.exists() {
        return access_writable(path);
    }
    let mut dir = dirname(path);
    for _ in 0..4096 {
        if dir.exists() {
            return dir.is_dir() && access_writable(dir);
        }
        dir = dirname(dir);
    }
    false
}

/// `mkdir -p` giving each directory it creates exactly `mode` (as Ruby's `FileUtils.mkdir_p`
/// with `mode:`, which is not subject to the umask).
pub(crate) fn mkdir_p(dir: &Path, mode: u32) -> std::io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        mkdir_p(parent, mode)?;
    }
    match std::fs::DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Ruby's `Errno::…` class name for an I/O error, for log lines.
fn errno_class(e: &std::io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::EISDIR) => "EISDIR",
        Some(libc::ENOSPC) => "ENOSPC",
        Some(libc::EDQUOT) => "EDQUOT",
        Some(libc::EROFS) => "EROFS",
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENFILE) => "ENFILE",
        Some(libc::ENAMETOOLONG) => "ENAMETOOLONG",
        Some(libc::ELOOP) => "ELOOP",
        Some(libc::EIO) => "EIO",
        Some(libc::EBUSY) => "EBUSY",
        _ => return "IOError".into(),
    };
    format!("Errno::{name}")
}

fn io_failure(op: &str, path: &Path, e: std::io::Error) -> ChunkWriteError {
    ChunkWriteError::retryable(&errno_class(&e), format!("{e} @ {op} - {}", path.display()))
}

/// Serializes appends in this process, so two flush workers appending to the same file never
/// interleave.
static APPEND_LOCK: Mutex<()> = Mutex::new(());

/// Where and how chunk bytes land on disk (shared by out_file and secondary_file).
#[derive(Debug, Clone, Copy)]
struct Disk {
    file_mode: u32,
    dir_mode: u32,
}

impl Disk {
    /// Appends `content` to `path` (created if missing), then syncs it.
    fn append(&self, path: &Path, content: &[u8]) -> Result<(), ChunkWriteError> {
        mkdir_p(dirname(path), self.dir_mode).map_err(|e| io_failure("mkdir_p", path, e))?;
        let _guard = APPEND_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(self.file_mode)
            .open(path)
            .map_err(|e| io_failure("rb_sysopen", path, e))?;
        f.write_all(content)
            .and_then(|_| f.sync_data())
            .map_err(|e| io_failure("write", path, e))
    }

    /// Writes `content` to the first `name(i)`, i = 0, 1, …, that does not exist, and returns
    /// the path. The content is written and synced under a temporary name in the same directory
    /// and then linked to its final name, which fails if the name exists: a crash mid-write
    /// never leaves a torn output file (at most a hidden temporary one), and concurrent writers
    /// never pick the same file.
    fn create_first_free(
        &self,
        name: impl Fn(u64) -> String,
        content: &[u8],
        before_link: impl Fn(&Path) -> Result<(), ChunkWriteError>,
    ) -> Result<PathBuf, ChunkWriteError> {
        static TMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut i = 0u64;
        let mut tmp: Option<PathBuf> = None;
        let result = loop {
            let path = PathBuf::from(name(i));
            i += 1;
            if path.exists() {
                continue;
            }
            let dir = dirname(&path).to_path_buf();
            mkdir_p(&dir, self.dir_mode).map_err(|e| io_failure("mkdir_p", &path, e))?;
            if tmp.as_ref().is_none_or(|t| dirname(t) != dir) {
                if let Some(old) = tmp.take() {
                    let _ = std::fs::remove_file(old);
                }
                let n = TMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let t = dir.join(format!(".sluice-tmp-{}-{n}", std::process::id()));
                let written = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(self.file_mode)
                    .open(&t)
                    .and_then(|mut f| f.write_all(content).and_then(|_| f.sync_data()));
                if let Err(e) = written {
                    let _ = std::fs::remove_file(&t);
                    break Err(io_failure("write", &path, e));
                }
                tmp = Some(t);
            }
            if let Err(e) = before_link(&path) {
                break Err(e);
            }
            match std::fs::hard_link(tmp.as_ref().expect("written above"), &path) {
                Ok(()) => {
                    // The new name must survive a power loss before the chunk is purged.
                    let synced = std::fs::File::open(&dir).and_then(|d| d.sync_all());
                    break synced
                        .map(|_| path.clone())
                        .map_err(|e| io_failure("fsync", &dir, e));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => break Err(io_failure("link", &path, e)),
            }
        };
        if let Some(t) = tmp {
            let _ = std::fs::remove_file(t);
        }
        result
    }
}

/// Writes a chunk exactly once across crashes: before the output file gets its final name, the
/// name, length and CRC32C of its content are recorded in the chunk (synced). If sluice dies
/// after the file got its name but before the chunk was purged, the retry finds the record, sees
/// the file with that length and checksum, and does not write it again. A file of that name
/// with other content belongs to someone else: the chunk is written under a new name.
fn deliver_once(
    wc: &WriteChunk,
    content: &[u8],
    write: impl FnOnce(
        &dyn Fn(&Path) -> Result<(), ChunkWriteError>,
    ) -> Result<PathBuf, ChunkWriteError>,
) -> Result<PathBuf, ChunkWriteError> {
    if let Some(done) = wc.delivery().and_then(already_delivered) {
        tracing::info!(chunk_id = %wc.chunk.id, path = %done.display(), "chunk was already written before a restart; not writing it again");
        return Ok(done);
    }
    let len = content.len() as u64;
    let crc = crc32c::crc32c(content);
    write(&|dest: &Path| {
        let record =
            serde_json::json!({"dest": dest.display().to_string(), "len": len, "crc": crc});
        wc.record_delivery(record.to_string().as_bytes())
    })
}

/// The destination of a delivery record, if that file exists with the recorded length and
/// checksum.
fn already_delivered(record: &[u8]) -> Option<PathBuf> {
    let v: serde_json::Value = serde_json::from_slice(record).ok()?;
    let dest = PathBuf::from(v["dest"].as_str()?);
    let len = v["len"].as_u64()?;
    let crc = v["crc"].as_u64()? as u32;
    let meta = std::fs::metadata(&dest).ok()?;
    if meta.len() != len {
        return None;
    }
    let data = std::fs::read(&dest).ok()?;
    (crc32c::crc32c(&data) == crc).then_some(dest)
}

fn unrecoverable(e: PlaceholderError) -> ChunkWriteError {
    match e {
        PlaceholderError::Unrecoverable(m) => ChunkWriteError::unrecoverable(m),
    }
}

/// The part of out_file a flush worker needs (shared with the blocking write task).
#[derive(Debug)]
struct FileWriter {
    template: String,
    append: bool,
    compress: FileCompress,
    /// Copy chunk bytes already compressed as the output wants (`recompress false`, primary).
    copy_compressed: bool,
    placeholders: PlaceholderContext,
    disk: Disk,
}

impl FileWriter {
    /// The bytes to write for a chunk.
    fn content(&self, wc: &WriteChunk) -> Result<Bytes, ChunkWriteError> {
        if self.copy_compressed && self.compress.same_as(wc.compress) {
            return wc.chunk.stored.read_all().map_err(|e| {
                ChunkWriteError::retryable("IOError", format!("cannot read chunk: {e}"))
            });
        }
        let data = wc.records()?;
        self.compress.encode(data).map_err(|e| {
            ChunkWriteError::retryable("IOError", format!("cannot compress chunk: {e}"))
        })
    }

    /// Writes one chunk; returns the file written.
    fn write_chunk(&self, wc: &WriteChunk) -> Result<PathBuf, ChunkWriteError> {
        let path = placeholder::extract(
            &self.template,
            &wc.chunk.metadata,
            &wc.chunk.id,
            &self.placeholders,
        )
        .map_err(unrecoverable)?;
        let content = self.content(wc)?;
        if self.append {
            let p = PathBuf::from(&path);
            self.disk.append(&p, &content)?;
            Ok(p)
        } else {
            deliver_once(wc, &content, |before_link| {
                self.disk
                    .create_first_free(|i| indexed(&path, i), &content, before_link)
            })
        }
    }
}

/// Runs a blocking chunk write off the async workers.
fn spawn_write<W, F>(
    w: Arc<W>,
    wc: &WriteChunk,
    f: F,
) -> BoxFuture<'static, Result<(), ChunkWriteError>>
where
    W: Send + Sync + 'static,
    F: FnOnce(&W, &WriteChunk) -> Result<PathBuf, ChunkWriteError> + Send + 'static,
{
    let wc = wc.clone();
    Box::pin(async move {
        let id = wc.chunk.id;
        match tokio::task::spawn_blocking(move || f(&w, &wc)).await {
            Ok(Ok(path)) => {
                tracing::debug!(chunk_id = %id, "chunk written to {}", path.display());
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(ChunkWriteError::retryable(
                "RuntimeError",
                format!("file write task failed: {e}"),
            )),
        }
    })
}

/// `@type file`.
#[derive(Debug)]
pub struct FileOutput {
    writer: Arc<FileWriter>,
    format: RecordFormat,
    /// `symlink_path` with a file buffer.
    symlink: Option<Arc<Symlink>>,
}

/// out_file's `symlink_path` (Fluentd's `SymlinkBufferMixin`): a symbolic link to the file of
/// the newest staged chunk of the file buffer, moved to each new chunk file as it is created.
#[derive(Debug)]
struct Symlink {
    /// `symlink_path`, placeholders unexpanded.
    template: String,
    /// `symlink_path_use_relative`: link to a path relative to the link's directory.
    relative: bool,
    dir_mode: u32,
    placeholders: PlaceholderContext,
    /// The newest time slice linked so far: a chunk of an older slice (late events) does not
    /// take the link.
    latest_timekey: Mutex<Option<i64>>,
}

impl Symlink {
    /// A chunk file was created for `metadata`: point the link at it (`ln -sf`), unless it
    /// belongs to a slice older than the one linked.
    fn chunk_file_created(&self, metadata: &Metadata, id: ChunkId, chunk_path: &Path) {
        if let Some(t) = metadata.timekey {
            let mut latest = self
                .latest_timekey
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if latest.is_some_and(|l| t < l) {
                return;
            }
            *latest = Some(t);
        }
        let link = match placeholder::extract(&self.template, metadata, &id, &self.placeholders) {
            Ok(l) => PathBuf::from(l),
            Err(e) => {
                tracing::warn!(chunk_id = %id, "symlink_path is not updated: {e}");
                return;
            }
        };
        if let Err(e) = self.link(&link, chunk_path) {
            tracing::warn!(chunk_id = %id, "cannot link {} to {}: {e}", link.display(), chunk_path.display());
        }
    }

    /// Makes `link` a symbolic link to `target`, replacing what is there in one rename.
    fn link(&self, link: &Path, target: &Path) -> std::io::Result<()> {
        let dir = dirname(link);
        mkdir_p(dir, self.dir_mode)?;
        let target = std::path::absolute(target)?;
        let target = if self.relative {
            relative_to(&target, &std::path::absolute(dir)?)
        } else {
            target
        };
        let name = link.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{name}.sluice-link-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp)?;
        std::fs::rename(&tmp, link).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// `path` relative to the directory `base` (both absolute), as Ruby's
/// `Pathname#relative_path_from`.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    use std::path::Component;
    let norm = |p: &Path| -> Vec<std::ffi::OsString> {
        let mut v: Vec<std::ffi::OsString> = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => v.push(n.to_owned()),
                Component::ParentDir => {
                    v.pop();
                }
                _ => {}
            }
        }
        v
    };
    let (p, b) = (norm(path), norm(base));
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    for part in &p[common..] {
        out.push(part);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// out_file's own parameters.
struct Params {
    path: Param,
    append: bool,
    add_path_suffix: bool,
    path_suffix: String,
    compress: FileCompress,
    compress_name: &'static str,
    recompress: bool,
    symlink_path: Option<Param>,
    symlink_path_use_relative: bool,
    time_slice_format: Option<String>,
    disk: Disk,
}

/// Reads an octal permission parameter (`0644`).
fn octal(section: &Element, key: &str) -> Result<Option<u32>, ConfigError> {
    let Some(p) = section.param(key) else {
        return Ok(None);
    };
    u32::from_str_radix(p.value.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .map(Some)
        .ok_or_else(|| {
            ConfigError::at(
                &p.value_pos,
                format!("{key}: invalid octal permission \"{}\"", p.value),
            )
        })
}

fn disk(section: &Element, ctx: &BuildContext) -> Result<Disk, ConfigError> {
    Ok(Disk {
        file_mode: octal(section, "file_permission")?.unwrap_or(ctx.file_mode),
        dir_mode: octal(section, "dir_permission")?.unwrap_or(ctx.dir_mode),
    })
}

fn required<'a>(section: &'a Element, key: &str) -> Result<&'a Param, ConfigError> {
    section
        .param(key)
        .ok_or_else(|| ConfigError::at(&section.pos, format!("'{key}' parameter is required")))
}

impl Params {
    fn read(section: &Element, ctx: &BuildContext) -> Result<Params, ConfigError> {
        let path = required(section, "path")?.clone();
        let append = section.bool("append")?.unwrap_or(false);
        let add_path_suffix = section.bool("add_path_suffix")?.unwrap_or(true);
        let path_suffix = section
            .string("path_suffix")
            .unwrap_or_else(|| ".log".into());
        let compress_name = section
            .enumeration("compress", &["text", "gz", "gzip", "zstd"])?
            .unwrap_or("text");
        let compress = match compress_name {
            "gz" | "gzip" => FileCompress::Gzip,
            "zstd" => FileCompress::Zstd,
            _ => FileCompress::Text,
        };
        let recompress = section.bool("recompress")?.unwrap_or(false);
        let symlink_path = section.param("symlink_path").cloned();
        let symlink_path_use_relative = section.bool("symlink_path_use_relative")?.unwrap_or(false);
        let time_slice_format = section.string("time_slice_format");
        Ok(Params {
            path,
            append,
            add_path_suffix,
            path_suffix,
            compress,
            compress_name,
            recompress,
            symlink_path,
            symlink_path_use_relative,
            time_slice_format,
            disk: disk(section, ctx)?,
        })
    }

    /// The template for `timekey` (the buffer's, when `time` is a chunk key).
    fn template(&self, timekey: Option<i64>) -> Result<String, ConfigError> {
        let suffix = if self.add_path_suffix {
            self.path_suffix.as_str()
        } else {
            ""
        };
        generate_path_template(
            &self.path.value,
            timekey,
            self.append,
            self.compress,
            suffix,
            self.time_slice_format.as_deref(),
        )
        .map_err(|e| ConfigError::at(&self.path.value_pos, e.to_string()))
    }
}

/// Fluentd's warning for the v0.12-style `utc`/`localtime` output parameters.
fn warn_deprecated_time_params(section: &Element) {
    if section.has("utc") || section.has("localtime") {
        let name = if section.has("utc") {
            "utc"
        } else {
            "localtime"
        };
        tracing::warn!(file = %section.pos.file, line = section.pos.line,
            "'{name}' is deprecated for output plugin. This parameter is used for formatter plugin in compatibility layer. If you want to use same feature, use timekey_use_utc parameter in <buffer> directive instead");
    }
}

/// v0.12-style buffer parameters of the output section and their `<buffer>` names (Fluentd's
/// compatibility layer).
const LEGACY_BUFFER_PARAMS: &[(&str, &str)] = &[
    ("buffer_type", "@type"),
    ("buffer_path", "path"),
    ("num_threads", "flush_thread_count"),
    ("flush_interval", "flush_interval"),
    ("try_flush_interval", "flush_thread_interval"),
    ("queued_chunk_flush_interval", "flush_thread_burst_interval"),
    ("disable_retry_limit", "retry_forever"),
    ("retry_limit", "retry_max_times"),
    ("max_retry_wait", "retry_max_interval"),
    ("buffer_chunk_limit", "chunk_limit_size"),
    ("buffer_queue_limit", "queue_limit_length"),
    ("buffer_queue_full_action", "overflow_action"),
    ("flush_at_shutdown", "flush_at_shutdown"),
    ("time_slice_wait", "timekey_wait"),
    ("timezone", "timekey_zone"),
];

/// The `<buffer>` section Fluentd's compatibility layer makes from v0.12-style output
/// parameters when there is no `<buffer>` (`buffer_type`, `buffer_chunk_limit`,
/// `time_slice_format`, …), or `None` when the output has none of them.
pub(crate) fn legacy_buffer_section(section: &Element) -> Result<Option<Element>, ConfigError> {
    let has_tsf = section.has("time_slice_format");
    if !has_tsf && !LEGACY_BUFFER_PARAMS.iter().any(|(k, _)| section.has(k)) {
        return Ok(None);
    }
    let mut b = Element::new("buffer", "time", section.pos.clone());
    b.arg_pos = section.pos.clone();
    let mut push = |key: &str, value: String, p: Option<&Param>| {
        let (kp, vp) = match p {
            Some(p) => (p.key_pos.clone(), p.value_pos.clone()),
            None => (section.pos.clone(), section.pos.clone()),
        };
        b.params.push(Param::new(key.to_string(), value, kp, vp));
    };
    for (old, new) in LEGACY_BUFFER_PARAMS {
        if let Some(p) = section.param(old) {
            let value = if *old == "buffer_queue_full_action" && p.value.trim() == "exception" {
                "throw_exception".to_string()
            } else {
                p.value.clone()
            };
            push(new, value, Some(p));
        }
    }
    let timekey = match section.param("time_slice_format") {
        Some(p) => {
            let f = &p.value;
            let k = if f.contains("%S") {
                1
            } else if f.contains("%M") {
                60
            } else if f.contains("%H") {
                3600
            } else if f.contains("%d") {
                86400
            } else {
                return Err(ConfigError::at(
                    &p.value_pos,
                    "time_slice_format only with %Y or %m is too long",
                ));
            };
            match (section.peek("localtime"), section.peek("utc")) {
                (Some(_), Some(u)) => {
                    return Err(ConfigError::at(
                        &u.key_pos,
                        "both of utc and localtime are specified, use only one of them",
                    ))
                }
                (Some(l), None) => {
                    let v = section.bool("localtime")?.unwrap_or(true);
                    push("timekey_use_utc", (!v).to_string(), Some(l));
                }
                (None, Some(u)) => {
                    let v = section.bool("utc")?.unwrap_or(true);
                    push("timekey_use_utc", v.to_string(), Some(u));
                }
                (None, None) => {}
            }
            (k, Some(p.clone()))
        }
        None => (DEFAULT_TIMEKEY, None),
    };
    push("timekey", timekey.0.to_string(), timekey.1.as_ref());
    Ok(Some(b))
}

/// A dummy chunk's expansion of `template` for the writability check: tag `a` (or `a.a.…` up
/// to the highest `${tag[N]}`), each key placeholder's record value `data`, time now.
fn dummy_path(template: &str, cfg: &BufferConfig, now: EventTime) -> Result<String, String> {
    let max_index = placeholder::tag_placeholders(template)
        .into_iter()
        .max()
        .unwrap_or(1)
        .clamp(1, 4096);
    let tag: Arc<str> = Arc::from(vec!["a"; max_index as usize].join("."));
    let keys = placeholder::key_placeholders(template);
    let mut record = Vec::new();
    let _ = rmp::encode::write_map_len(&mut record, keys.len() as u32);
    for k in &keys {
        let _ = rmp::encode::write_str(&mut record, k);
        let _ = rmp::encode::write_str(&mut record, "data");
    }
    let metadata = MetadataBuilder::new(cfg)
        .metadata(&tag, now, &record)
        .map_err(|e| e.to_string())?;
    placeholder::extract(
        template,
        &metadata,
        &ChunkId::now(),
        &PlaceholderContext::from_buffer(cfg),
    )
    .map_err(|e| e.to_string())
}

/// Only the time rule of [`placeholder::validate`] (out_file as a secondary checks nothing
/// else: the primary's tag and keys may be anywhere in its path).
fn validate_time_only(
    name: &str,
    template: &str,
    time_key: bool,
    timekey: Option<i64>,
) -> Result<(), String> {
    let keys = ChunkKeys {
        time: time_key,
        tag: !placeholder::tag_placeholders(template).is_empty(),
        fields: placeholder::key_placeholders(template),
    };
    placeholder::validate(name, template, &keys, timekey)
}

impl FileOutput {
    /// Reads a `<match>` section of `@type file` and its `<buffer>` (or the default one).
    pub fn configure(
        section: &Element,
        buffer: Option<&Element>,
        ctx: &BuildContext,
    ) -> Result<(FileOutput, BufferConfig), ConfigError> {
        let params = Params::read(section, ctx)?;

        let legacy;
        let b: &Element = match buffer {
            Some(b) => {
                if !b.has("timekey") && b.arg.trim() != "[]" {
                    tracing::warn!(file = %b.pos.file, line = b.pos.line, "{WARN_NO_TIMEKEY}");
                }
                b
            }
            None => {
                legacy = match legacy_buffer_section(section)? {
                    Some(l) => l,
                    None => {
                        tracing::warn!(file = %section.pos.file, line = section.pos.line, "{WARN_NO_BUFFER}");
                        Element::new("buffer", "time", section.pos.clone())
                    }
                };
                &legacy
            }
        };
        warn_deprecated_time_params(section);
        let mut cfg = BufferConfig::from_section(b, section, &defaults())?;
        let has_root = section.has("@id") && ctx.root_dir.is_some();
        if let BufferType::File { path, .. } = &mut cfg.buffer_type {
            // The buffer lives beside the output unless placed explicitly (or under root_dir).
            if path.is_none() && !has_root {
                *path = Some(params.path.value.clone());
            }
        }
        ctx.claim_buffer_path(section, b, &mut cfg)?;

        let format = RecordFormat::configure(section, Some(&cfg.chunk_keys))?;

        let timekey = cfg.timekey.filter(|_| cfg.chunk_keys.time);
        let template = params.template(timekey)?;
        let ph = PlaceholderContext::from_buffer(&cfg);
        ph.validate("path", &template)
            .map_err(|m| ConfigError::at(&params.path.value_pos, m))?;
        let test_path = dummy_path(&template, &cfg, ctx.clock.now())
            .map_err(|m| ConfigError::at(&params.path.value_pos, m))?;
        if !writable_p(Path::new(&test_path)) {
            return Err(ConfigError::at(
                &params.path.value_pos,
                format!("out_file: `{test_path}` is not writable"),
            ));
        }

        let file_buffer = matches!(cfg.buffer_type, BufferType::File { .. });
        if let (Some(sp), true) = (&params.symlink_path, file_buffer) {
            let t = &sp.value;
            let timed = placeholder::time_unit(t).is_some();
            let keys = ChunkKeys {
                time: timed,
                ..cfg.chunk_keys.clone()
            };
            if let Err(e) =
                placeholder::validate("symlink_path", t, &keys, timed.then_some(i64::MAX))
            {
                tracing::warn!("{e}. This means multiple chunks are competing for a single symlink_path, so some logs may not be taken from the symlink.");
            }
            if params.compress != FileCompress::Text
                && cfg.compress != Compress::Text
                && !params.compress.same_as(cfg.compress)
            {
                let buf = match cfg.compress {
                    Compress::Gzip => "gzip",
                    Compress::Zstd => "zstd",
                    Compress::Text => "text",
                };
                return Err(ConfigError::at(
                    &sp.key_pos,
                    format!(
                        "You cannot specify different compression formats for Buffer (Buffer: {buf}, Self: {})",
                        params.compress_name
                    ),
                ));
            }
        }
        let symlink = match (&params.symlink_path, file_buffer) {
            (Some(sp), true) => Some(Arc::new(Symlink {
                template: sp.value.clone(),
                relative: params.symlink_path_use_relative,
                dir_mode: params.disk.dir_mode,
                placeholders: ph.clone(),
                latest_timekey: Mutex::new(None),
            })),
            _ => None,
        };

        let writer = FileWriter {
            template,
            append: params.append,
            compress: params.compress,
            copy_compressed: !params.recompress,
            placeholders: ph,
            disk: params.disk,
        };
        Ok((
            FileOutput {
                writer: Arc::new(writer),
                format,
                symlink,
            },
            cfg,
        ))
    }

    /// Reads a `<secondary>` section of `@type file` for a primary buffered as `primary` says:
    /// file names use the primary's timekey and chunk keys; only the time placeholders are
    /// checked; chunks are written decompressed (then compressed as `compress` says).
    pub fn configure_secondary(
        section: &Element,
        primary: &BufferConfig,
        ctx: &BuildContext,
    ) -> Result<FileOutput, ConfigError> {
        let params = Params::read(section, ctx)?;
        warn_deprecated_time_params(section);
        let format = RecordFormat::configure(section, None)?;
        let time_key = primary.chunk_keys.time;
        let timekey = primary.timekey.filter(|_| time_key);
        let template = params.template(timekey)?;
        validate_time_only("path", &template, time_key, timekey)
            .map_err(|m| ConfigError::at(&params.path.value_pos, m))?;
        if let Some(sp) = &params.symlink_path {
            return Err(ConfigError::at(
                &sp.key_pos,
                "symlink_path option is unavailable in <secondary>: consider to use secondary_file plugin",
            ));
        }
        let writer = FileWriter {
            template,
            append: params.append,
            compress: params.compress,
            copy_compressed: false,
            placeholders: PlaceholderContext::from_buffer(primary),
            disk: params.disk,
        };
        Ok(FileOutput {
            writer: Arc::new(writer),
            format,
            symlink: None,
        })
    }

    /// The path template built from `path` (for tests and `--show-config` style reports).
    pub fn template(&self) -> &str {
        &self.writer.template
    }
}

impl ChunkWriter for FileOutput {
    fn type_name(&self) -> &'static str {
        "file"
    }

    fn formats(&self) -> bool {
        true
    }

    fn format(&self, tag: &str, time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        self.format.format(tag, time, record, out);
    }

    fn write<'a>(&'a self, chunk: &'a WriteChunk) -> BoxFuture<'a, Result<(), ChunkWriteError>> {
        spawn_write(self.writer.clone(), chunk, |w, wc| w.write_chunk(wc))
    }

    /// With `symlink_path` and a file buffer: links the path to each new staged chunk file.
    fn start<'a>(&'a self, buffer: &'a Arc<Buffer>) -> BoxFuture<'a, Result<(), String>> {
        if let (Some(link), true) = (&self.symlink, buffer.store().is_some()) {
            let link = link.clone();
            buffer.on_new_staged_file(move |m, id, path| link.chunk_file_created(m, id, path));
        }
        Box::pin(async { Ok(()) })
    }
}

/// `@type secondary_file`.
#[derive(Debug)]
pub struct SecondaryFile {
    writer: Arc<SecondaryWriter>,
}

#[derive(Debug)]
struct SecondaryWriter {
    /// `<directory>/<basename>`, placeholders unexpanded.
    path_without_suffix: String,
    append: bool,
    gzip: bool,
    placeholders: PlaceholderContext,
    disk: Disk,
}

impl SecondaryWriter {
    fn write_chunk(&self, wc: &WriteChunk) -> Result<PathBuf, ChunkWriteError> {
        let base = placeholder::extract(
            &self.path_without_suffix,
            &wc.chunk.metadata,
            &wc.chunk.id,
            &self.placeholders,
        )
        .map_err(unrecoverable)?;
        let data = wc.records()?;
        let (content, suffix) = if self.gzip {
            let gz = gzip(&data).map_err(|e| {
                ChunkWriteError::retryable("IOError", format!("cannot compress chunk: {e}"))
            })?;
            (Bytes::from(gz), ".gz")
        } else {
            (data, "")
        };
        if self.append {
            let p = PathBuf::from(format!("{base}{suffix}"));
            self.disk.append(&p, &content)?;
            Ok(p)
        } else {
            self.disk
                .create_first_free(|i| format!("{base}.{i}{suffix}"), &content, |_| Ok(()))
        }
    }
}

/// Fluentd's placeholder pattern of secondary_file: `${tag}`, `${tag[N]}` or `${name}`; the
/// captured name.
fn secondary_placeholders(s: &str) -> Vec<String> {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"\$\{(tag(\[\d+\])?|[A-Za-z0-9_.@-]+)\}").expect("valid regex")
    });
    re.captures_iter(s).map(|c| c[1].to_string()).collect()
}

/// Whether strftime changes `s` (Fluentd's `has_time_format?`).
fn has_time_format(s: &str) -> bool {
    let now = EventTime::now();
    let view = TimeView {
        time: now,
        offset: Zone::local().offset_at(now.sec),
        gmt: false,
        abbr: "",
    };
    ruby_strftime(s, &view) != s
}

impl SecondaryFile {
    /// Reads a `<secondary>` section of `@type secondary_file` for a primary buffered as
    /// `primary` says.
    pub fn configure(
        section: &Element,
        primary: &BufferConfig,
        ctx: &BuildContext,
    ) -> Result<SecondaryFile, ConfigError> {
        let directory = required(section, "directory")?.clone();
        let basename = section.param("basename").cloned();
        let append = section.bool("append")?.unwrap_or(false);
        let gzip = section.enumeration("compress", &["text", "gzip"])? == Some("gzip");
        let disk = disk(section, ctx)?;
        let base_value = basename
            .as_ref()
            .map(|p| p.value.clone())
            .unwrap_or_else(|| "dump.bin".into());
        let base_pos = basename
            .as_ref()
            .map(|p| p.value_pos.clone())
            .unwrap_or_else(|| section.pos.clone());
        if base_value.contains('/') {
            return Err(ConfigError::at(
                &base_pos,
                "basename should not include `/`",
            ));
        }
        let dir = directory.value.trim_end_matches('/');
        let path_without_suffix = format!("{dir}/{base_value}");
        let at = |m: String| ConfigError::at(&directory.value_pos, m);
        let phs = secondary_placeholders(&path_without_suffix);
        if !primary.chunk_keys.time && has_time_format(&path_without_suffix) {
            return Err(at("out_secondary_file: basename or directory has an incompatible placeholder, remove time formats, like `%Y%m%d`, from basename or directory".into()));
        }
        if !primary.chunk_keys.tag {
            if let Some(ph) = phs.iter().find(|p| p.contains("tag")) {
                return Err(at(format!("out_secondary_file: basename or directory has an incompatible placeholder {ph}, remove tag placeholder, like `${{tag}}`, from basename or directory")));
            }
        }
        if let Some(ph) = phs.iter().find(|p| {
            !p.contains("tag") && *p != "chunk_id" && !primary.chunk_keys.fields.contains(p)
        }) {
            return Err(at(format!("out_secondary_file: basename or directory has an incompatible placeholder {ph}, remove variable placeholder, like `${{varname}}`, from basename or directory")));
        }
        if !writable_p(Path::new(&path_without_suffix)) {
            return Err(at(format!(
                "out_secondary_file: `{}` should be writable",
                directory.value
            )));
        }
        Ok(SecondaryFile {
            writer: Arc::new(SecondaryWriter {
                path_without_suffix,
                append,
                gzip,
                placeholders: PlaceholderContext::from_buffer(primary),
                disk,
            }),
        })
    }
}

impl ChunkWriter for SecondaryFile {
    fn type_name(&self) -> &'static str {
        "secondary_file"
    }

    fn formats(&self) -> bool {
        true
    }

    fn write<'a>(&'a self, chunk: &'a WriteChunk) -> BoxFuture<'a, Result<(), ChunkWriteError>> {
        spawn_write(self.writer.clone(), chunk, |w, wc| w.write_chunk(wc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::core::FlushChunk;
    use crate::buffer::metadata::Metadata;
    use crate::buffer::records::ChunkRecords;
    use crate::config::parser::parse_str;
    use std::io::Read;

    const DAY: i64 = 1475452800; // 2016-10-03 00:00:00 UTC

    fn gen(path: &str, timekey: Option<i64>) -> Result<String, TemplateError> {
        generate_path_template(path, timekey, false, FileCompress::Text, ".log", None)
    }

    #[test]
    fn template_rules() {
        // No `*`, time key, none of the format's directives: `.F` + index + suffix appended.
        assert_eq!(
            gen("/out/app", Some(86400)).unwrap(),
            "/out/app.%Y%m%d_**.log"
        );
        // The format follows the timekey: < 60 s, < 1 h, < 1 d, otherwise days.
        for (k, f) in [
            (1, "%Y%m%d%H%M%S"),
            (59, "%Y%m%d%H%M%S"),
            (60, "%Y%m%d%H%M"),
            (3599, "%Y%m%d%H%M"),
            (3600, "%Y%m%d%H"),
            (86399, "%Y%m%d%H"),
            (86400, "%Y%m%d"),
            (7 * 86400, "%Y%m%d"),
        ] {
            assert_eq!(timekey_to_timeformat(k), f, "timekey {k}");
            assert_eq!(gen("/o/x", Some(k)).unwrap(), format!("/o/x.{f}_**.log"));
        }
        // All of the format's directives already in the path: only index + suffix.
        assert_eq!(
            gen("/out/%Y/%m/%d/app", Some(86400)).unwrap(),
            "/out/%Y/%m/%d/app_**.log"
        );
        assert_eq!(
            gen("/data/o/${tag[0]}/%Y%m%d%H", Some(3600)).unwrap(),
            "/data/o/${tag[0]}/%Y%m%d%H_**.log"
        );
        // Scenario 34's path: the suffix follows the index even after `.log`.
        assert_eq!(
            gen("/p/${tag}/file.%Y%m%d.log", Some(86400)).unwrap(),
            "/p/${tag}/file.%Y%m%d.log_**.log"
        );
        // Only some of them: scenario 8.
        assert_eq!(
            gen("/data/o/%Y%m%d/file", Some(3600)),
            Err(TemplateError::InsufficientTimestamp)
        );
        assert_eq!(
            TemplateError::InsufficientTimestamp.to_string(),
            "insufficient timestamp placeholders in path"
        );
        assert_eq!(
            gen("/o/%d/x", Some(86400)),
            Err(TemplateError::InsufficientTimestamp)
        );
        // No time key: index + suffix only (scenario 53).
        assert_eq!(gen("/out/${tag}", None).unwrap(), "/out/${tag}_**.log");
        assert_eq!(gen("/out/app", None).unwrap(), "/out/app_**.log");
        // `*`: every star becomes format + index, no path suffix (scenario 48).
        assert_eq!(
            gen("/out/app.*.txt", Some(3600)).unwrap(),
            "/out/app.%Y%m%d%H_**.txt"
        );
        assert_eq!(
            gen("/o/*/x.*", Some(86400)).unwrap(),
            "/o/%Y%m%d_**/x.%Y%m%d_**"
        );
        // `*` without a time key: scenario 33.
        assert_eq!(
            gen("/data/o/x.*.log", None),
            Err(TemplateError::StarWithoutTimekey)
        );
        assert_eq!(
            TemplateError::StarWithoutTimekey.to_string(),
            "BUG: configuration error must be raised for path including '*' without timekey"
        );
        // append: no index.
        let t = |p: &str, k, append, c, suffix: &str, tsf| {
            generate_path_template(p, k, append, c, suffix, tsf).unwrap()
        };
        assert_eq!(
            t(
                "/o/app",
                Some(86400),
                true,
                FileCompress::Text,
                ".log",
                None
            ),
            "/o/app.%Y%m%d.log"
        );
        assert_eq!(
            t(
                "/o/app.*.txt",
                Some(86400),
                true,
                FileCompress::Text,
                ".log",
                None
            ),
            "/o/app.%Y%m%d.txt"
        );
        assert_eq!(
            t(
                "/o/app.${chunk_id}",
                Some(86400),
                true,
                FileCompress::Text,
                ".log",
                None
            ),
            "/o/app.${chunk_id}.%Y%m%d.log"
        );
        // Compression suffix last, also after a `*` path.
        assert_eq!(
            t(
                "/o/app",
                Some(86400),
                false,
                FileCompress::Gzip,
                ".log",
                None
            ),
            "/o/app.%Y%m%d_**.log.gz"
        );
        assert_eq!(
            t(
                "/o/app.*.txt",
                Some(86400),
                false,
                FileCompress::Gzip,
                ".log",
                None
            ),
            "/o/app.%Y%m%d_**.txt.gz"
        );
        assert_eq!(
            t("/o/app", None, true, FileCompress::Zstd, ".log", None),
            "/o/app.log.zstd"
        );
        // add_path_suffix false / another path_suffix.
        assert_eq!(
            t("/o/app", Some(86400), false, FileCompress::Text, "", None),
            "/o/app.%Y%m%d_**"
        );
        assert_eq!(
            t(
                "/o/app",
                Some(3600),
                false,
                FileCompress::Text,
                ".txt",
                None
            ),
            "/o/app.%Y%m%d%H_**.txt"
        );
        // Legacy time_slice_format replaces the format and is always appended.
        assert_eq!(
            t(
                "/o/%Y/app",
                Some(3600),
                false,
                FileCompress::Text,
                ".log",
                Some("%Y%m%d%H")
            ),
            "/o/%Y/app.%Y%m%d%H_**.log"
        );
        assert_eq!(
            t(
                "/o/app.*",
                Some(60),
                false,
                FileCompress::Text,
                ".log",
                Some("%H%M")
            ),
            "/o/app.%H%M_**"
        );
        assert_eq!(indexed("/o/a_**.log_**", 7), "/o/a_7.log_**");
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn configure_in(
        text: &str,
        ctx: &BuildContext,
    ) -> Result<(FileOutput, BufferConfig), ConfigError> {
        let root = parse_str(text, "t.conf", ".".into()).unwrap();
        let m = &root.elements[0];
        let b = super::super::single_section(m, "buffer").unwrap();
        FileOutput::configure(m, b, ctx)
    }

    fn configure(text: &str) -> Result<(FileOutput, BufferConfig), ConfigError> {
        configure_in(text, &BuildContext::default())
    }

    fn err(text: &str) -> String {
        configure(text).map(|_| ()).unwrap_err().message
    }

    fn match_file(path: &str, inner: &str, buffer: Option<&str>) -> String {
        // `b` is the section argument, then (after a newline) its body.
        let buffer = buffer.map(|b| {
            let (arg, body) = b.split_once('\n').unwrap_or((b, ""));
            format!("<buffer {arg}>\n@type memory\n{body}\n</buffer>\n")
        });
        format!(
            "<match **>\n@type file\npath {path}\n{inner}\n{}</match>\n",
            buffer.unwrap_or_default()
        )
    }

    fn meta(timekey: Option<i64>, tag: Option<&str>) -> Metadata {
        Metadata {
            timekey,
            tag: tag.map(Arc::from),
            variables: Vec::new(),
        }
    }

    fn chunk(metadata: Metadata, bytes: &[u8], compress: Compress) -> WriteChunk {
        let stored = match compress {
            Compress::Text => bytes.to_vec(),
            Compress::Gzip => gzip(bytes).unwrap(),
            Compress::Zstd => zstd::stream::encode_all(bytes, 0).unwrap(),
        };
        WriteChunk {
            chunk: FlushChunk {
                id: ChunkId::now(),
                metadata,
                stored: ChunkRecords::Memory(Bytes::from(stored)),
                records: 1,
                created: 0,
                compress,
                deliveries: Vec::new(),
            },
            compress,
            formatted: true,
            decompression_limit: 1 << 30,
            journal: None,
        }
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(b)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Number of gzip members in `b`.
    fn members(b: &[u8]) -> usize {
        let mut n = 0;
        let mut rest = b;
        while !rest.is_empty() {
            let mut d = flate2::bufread::GzDecoder::new(rest);
            std::io::copy(&mut d, &mut std::io::sink()).unwrap();
            let used = rest.len() - d.into_inner().len();
            rest = &rest[used..];
            n += 1;
        }
        n
    }

    #[test]
    fn configured_templates_and_defaults() {
        let d = tmp();
        let p = d.path().display();
        let (o, cfg) = configure(&match_file(&format!("{p}/app"), "", Some(""))).unwrap();
        assert_eq!(o.template(), format!("{p}/app.%Y%m%d_**.log"));
        assert!(cfg.chunk_keys.time && !cfg.chunk_keys.tag);
        assert_eq!(cfg.timekey, Some(86400));
        let (o, _) = configure(&match_file(
            &format!("{p}/app.*.txt"),
            "",
            Some("time\ntimekey 1h"),
        ))
        .unwrap();
        assert_eq!(o.template(), format!("{p}/app.%Y%m%d%H_**.txt"));
        let (o, _) = configure(&match_file(
            &format!("{p}/app"),
            "compress gz\nappend true",
            Some(""),
        ))
        .unwrap();
        assert_eq!(o.template(), format!("{p}/app.%Y%m%d.log.gz"));
        let (o, cfg) = configure(&match_file(&format!("{p}/app"), "", Some("[]"))).unwrap();
        assert_eq!(o.template(), format!("{p}/app_**.log"));
        assert!(!cfg.chunk_keys.time);
        // Legacy v0.12 parameters without <buffer>: time_slice_format decides the timekey.
        let (o, cfg) = configure(&match_file(
            &format!("{p}/app"),
            "time_slice_format %Y%m%d%H\nbuffer_type memory\nbuffer_chunk_limit 1k",
            None,
        ))
        .unwrap();
        assert_eq!(o.template(), format!("{p}/app.%Y%m%d%H_**.log"));
        assert_eq!(cfg.timekey, Some(3600));
        assert_eq!(cfg.chunk_limit_size, 1024);
        assert_eq!(cfg.buffer_type, BufferType::Memory);
        assert_eq!(
            err(&match_file(
                &format!("{p}/app"),
                "time_slice_format %Y%m\nbuffer_type memory",
                None
            )),
            "time_slice_format only with %Y or %m is too long"
        );
    }

    #[test]
    fn dry_run_errors() {
        let d = tmp();
        let p = d.path().display();
        // Scenario 4 (default buffer, time key only).
        assert_eq!(
            err(&match_file(&format!("{p}/o/${{tag}}/x"), "", None)),
            format!("Parameter 'path: {p}/o/${{tag}}/x.%Y%m%d_**.log' has tag placeholders, but chunk key 'tag' is not configured")
        );
        // Scenario 6.
        assert_eq!(
            err(&match_file(&format!("{p}/o/${{tag}}/x"), "", Some("time,tag,host"))),
            format!("Parameter 'path: {p}/o/${{tag}}/x.%Y%m%d_**.log' doesn't have enough placeholders for keys host")
        );
        // Scenario 7.
        assert_eq!(
            err(&match_file(&format!("{p}/o/${{time}}/x"), "", Some("time"))),
            format!("Parameter 'path: {p}/o/${{time}}/x.%Y%m%d_**.log' has placeholders, but chunk keys doesn't have keys time")
        );
        // Scenario 8.
        assert_eq!(
            err(&match_file(
                &format!("{p}/o/%Y%m%d/file"),
                "",
                Some("time\ntimekey 1h")
            )),
            "insufficient timestamp placeholders in path"
        );
        // Scenario 9.
        assert_eq!(
            err(&match_file(&format!("{p}/o/${{tag[0]}}/%Y%m%d%H"), "", Some("time\ntimekey 1h"))),
            format!("Parameter 'path: {p}/o/${{tag[0]}}/%Y%m%d%H_**.log' has tag placeholders, but chunk key 'tag' is not configured")
        );
        // Scenario 10 (file buffer with its own path): the placeholder error comes first.
        let text = format!(
            "<match **>\n@type file\npath {p}/o/x\n<buffer tag,time>\n@type file\npath {p}/b/buf.*.dat\ntimekey 1h\n</buffer>\n</match>\n"
        );
        assert_eq!(
            err(&text),
            format!("Parameter 'path: {p}/o/x.%Y%m%d%H_**.log' doesn't have tag placeholder")
        );
        // Scenario 33.
        assert_eq!(
            err(&match_file(&format!("{p}/o/x.*.log"), "", Some("tag"))),
            STAR_WITHOUT_TIMEKEY
        );
        // Scenario 34, as root: a path below a regular file.
        std::fs::write(d.path().join("afile"), b"x").unwrap();
        let ctx = BuildContext {
            clock: crate::time::FakeClock::at(1475616807), // 2016-10-04 21:33:27 UTC
            ..Default::default()
        };
        let e = configure_in(
            &match_file(
                &format!("{p}/afile/sub/${{tag}}/file.%Y%m%d.log"),
                "",
                Some("time,tag\ntimekey 86400\ntimekey_zone +0000"),
            ),
            &ctx,
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(
            e.message,
            format!("out_file: `{p}/afile/sub/a/file.20161004.log_**.log` is not writable")
        );
        // The dummy tag has as many parts as the highest ${tag[N]}.
        let e = configure_in(
            &match_file(
                &format!("{p}/afile/${{tag[2]}}/${{tag[0]}}/${{k}}/x"),
                "",
                Some("tag,k"),
            ),
            &ctx,
        )
        .map(|_| ())
        .unwrap_err();
        assert_eq!(
            e.message,
            format!("out_file: `{p}/afile//a/data/x_**.log` is not writable")
        );
        // The default buffer is a file buffer.
        configure(&match_file(&format!("{p}/ok"), "", None)).unwrap();
        configure(&format!(
            "<match **>\n@type file\npath {p}/ok2\n<buffer>\n</buffer>\n</match>\n"
        ))
        .unwrap();
        // Parameters.
        assert_eq!(
            err("<match **>\n@type file\n<buffer>\n@type memory\n</buffer>\n</match>\n"),
            "'path' parameter is required"
        );
        assert_eq!(
            err(&match_file(&format!("{p}/a"), "compress lz4", Some(""))),
            "compress: valid options are text,gz,gzip,zstd but got lz4"
        );
        assert_eq!(
            err(&match_file(
                &format!("{p}/a"),
                "file_permission 0999",
                Some("")
            )),
            "file_permission: invalid octal permission \"0999\""
        );
        assert_eq!(
            err(&match_file(&format!("{p}/a"), "append maybe", Some(""))),
            "'append' parameter is required but nil is specified (append: invalid bool value: maybe)"
        );
        assert!(configure(&match_file(
            &format!("{p}/a"),
            "<format>\n@type json\n</format>",
            Some("")
        ))
        .is_ok());
    }

    #[test]
    fn index_search_takes_the_first_free_index() {
        let d = tmp();
        let p = d.path().display().to_string();
        let (o, _) = configure(&match_file(
            &format!("{p}/app"),
            "utc",
            Some("time\ntimekey_use_utc true"),
        ))
        .unwrap();
        let w = &o.writer;
        let c = || chunk(meta(Some(DAY), None), b"line\n", Compress::Text);
        let f0 = w.write_chunk(&c()).unwrap();
        assert_eq!(f0, PathBuf::from(format!("{p}/app.20161003_0.log")));
        assert_eq!(
            w.write_chunk(&c()).unwrap(),
            PathBuf::from(format!("{p}/app.20161003_1.log"))
        );
        // A gap is filled first; a directory in the way is skipped.
        std::fs::remove_file(&f0).unwrap();
        std::fs::create_dir(format!("{p}/app.20161003_2.log")).unwrap();
        assert_eq!(w.write_chunk(&c()).unwrap(), f0);
        assert_eq!(
            w.write_chunk(&c()).unwrap(),
            PathBuf::from(format!("{p}/app.20161003_3.log"))
        );
        assert_eq!(std::fs::read(&f0).unwrap(), b"line\n");
        // Another day, another name.
        let next = chunk(meta(Some(DAY + 86400), None), b"x\n", Compress::Text);
        assert_eq!(
            w.write_chunk(&next).unwrap(),
            PathBuf::from(format!("{p}/app.20161004_0.log"))
        );
    }

    #[test]
    fn append_writes_every_chunk_of_a_path_to_one_file() {
        let d = tmp();
        let p = d.path().display().to_string();
        let (o, _) = configure(&match_file(
            &format!("{p}/${{tag}}/app"),
            "append true",
            Some("tag,time\ntimekey_use_utc true"),
        ))
        .unwrap();
        for line in [&b"1\n"[..], b"2\n", b"3\n"] {
            let f = o
                .writer
                .write_chunk(&chunk(meta(Some(DAY), Some("a.b")), line, Compress::Text))
                .unwrap();
            assert_eq!(f, PathBuf::from(format!("{p}/a.b/app.20161003.log")));
        }
        assert_eq!(
            std::fs::read(format!("{p}/a.b/app.20161003.log")).unwrap(),
            b"1\n2\n3\n"
        );
    }

    #[test]
    fn gzip_output() {
        let d = tmp();
        let p = d.path().display().to_string();
        let data = b"2016-10-03T23:58:09Z\tmy.tag\t{\"a\":1}\n";
        // Text buffer: each chunk becomes one gzip member in its own `.gz` file.
        let (o, _) = configure(&match_file(
            &format!("{p}/t/app"),
            "compress gzip",
            Some("time\ntimekey_use_utc true"),
        ))
        .unwrap();
        let f = o
            .writer
            .write_chunk(&chunk(meta(Some(DAY), None), data, Compress::Text))
            .unwrap();
        assert_eq!(f, PathBuf::from(format!("{p}/t/app.20161003_0.log.gz")));
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        assert_eq!(bytes[9], 3, "OS byte Unix, as Ruby writes it");
        assert_eq!(gunzip(&bytes), data);
        // Gzip buffer, recompress false: the chunk's members are copied as they are.
        let mut c = chunk(meta(Some(DAY), None), data, Compress::Gzip);
        let mut two = c.chunk.stored.read_all().unwrap().to_vec();
        two.extend_from_slice(&gzip(b"second\n").unwrap());
        c.chunk.stored = ChunkRecords::Memory(Bytes::from(two.clone()));
        let f = o.writer.write_chunk(&c).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), two);
        assert_eq!(members(&two), 2);
        // recompress true: one new member with the decompressed data.
        let (o, _) = configure(&match_file(
            &format!("{p}/r/app"),
            "compress gzip\nrecompress true",
            Some("time\ntimekey_use_utc true"),
        ))
        .unwrap();
        let f = o.writer.write_chunk(&c).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        assert_eq!(members(&bytes), 1);
        assert_eq!(gunzip(&bytes), [&data[..], b"second\n"].concat());
        // A zstd buffer under a gzip output is recompressed, never copied.
        let z = chunk(meta(Some(DAY), None), data, Compress::Zstd);
        let f = o.writer.write_chunk(&z).unwrap();
        assert_eq!(gunzip(&std::fs::read(&f).unwrap()), data);
        // Append mode adds a member per chunk.
        let (o, _) = configure(&match_file(
            &format!("{p}/a/app"),
            "compress gzip\nappend true",
            Some("time\ntimekey_use_utc true"),
        ))
        .unwrap();
        for _ in 0..2 {
            o.writer
                .write_chunk(&chunk(meta(Some(DAY), None), data, Compress::Text))
                .unwrap();
        }
        let bytes = std::fs::read(format!("{p}/a/app.20161003.log.gz")).unwrap();
        assert_eq!(members(&bytes), 2);
        assert_eq!(gunzip(&bytes), [&data[..], &data[..]].concat());
        // zstd output.
        let (o, _) = configure(&match_file(
            &format!("{p}/z/app"),
            "compress zstd",
            Some("[]"),
        ))
        .unwrap();
        let f = o
            .writer
            .write_chunk(&chunk(Metadata::default(), data, Compress::Text))
            .unwrap();
        assert_eq!(f, PathBuf::from(format!("{p}/z/app_0.log.zstd")));
        assert_eq!(
            zstd::stream::decode_all(&std::fs::read(&f).unwrap()[..]).unwrap(),
            data
        );
    }

    #[test]
    fn unsafe_tags_and_values_are_unrecoverable() {
        let d = tmp();
        let p = d.path().display().to_string();
        let (o, _) =
            configure(&match_file(&format!("{p}/logs/${{tag}}"), "", Some("tag"))).unwrap();
        let e = o
            .writer
            .write_chunk(&chunk(meta(None, Some("../evil")), b"x\n", Compress::Text))
            .unwrap_err();
        assert!(e.unrecoverable);
        assert_eq!(e.message, "Invalid path component detected in tag: ../evil");
        assert!(!d.path().join("evil_0.log").exists());
        let f = o
            .writer
            .write_chunk(&chunk(meta(None, Some("ok.tag")), b"x\n", Compress::Text))
            .unwrap();
        assert_eq!(f, PathBuf::from(format!("{p}/logs/ok.tag_0.log")));
        // An I/O failure is retryable, with Ruby's errno class.
        std::fs::write(d.path().join("blocked"), b"").unwrap();
        let (o, _) = configure(&match_file(&format!("{p}/${{tag}}/x"), "", Some("tag"))).unwrap();
        let e = o
            .writer
            .write_chunk(&chunk(meta(None, Some("blocked")), b"x\n", Compress::Text))
            .unwrap_err();
        assert!(!e.unrecoverable);
        assert_eq!(e.class, "Errno::EEXIST");
    }

    #[test]
    fn permissions() {
        let d = tmp();
        let p = d.path().display().to_string();
        let (o, _) = configure(&match_file(
            &format!("{p}/sub/dir/app"),
            "file_permission 0600\ndir_permission 0700",
            Some("[]"),
        ))
        .unwrap();
        let f = o
            .writer
            .write_chunk(&chunk(Metadata::default(), b"x\n", Compress::Text))
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&f), 0o600);
        assert_eq!(mode(&d.path().join("sub")), 0o700);
        assert_eq!(mode(&d.path().join("sub/dir")), 0o700);
        // Defaults come from the build context (`<system>`, else 0644/0755).
        let ctx = BuildContext {
            dir_mode: 0o750,
            ..Default::default()
        };
        let (o, _) =
            configure_in(&match_file(&format!("{p}/d2/app"), "", Some("[]")), &ctx).unwrap();
        o.writer
            .write_chunk(&chunk(Metadata::default(), b"x\n", Compress::Text))
            .unwrap();
        assert_eq!(mode(&d.path().join("d2")), 0o750);
    }

    #[test]
    fn formats_lines_with_inject() {
        let d = tmp();
        let p = d.path().display().to_string();
        let (o, _) = configure(&match_file(
            &format!("{p}/app"),
            "<inject>\ntag_key t\n</inject>\n<format>\n@type out_file\nutc true\n</format>",
            Some(""),
        ))
        .unwrap();
        let mut rec = Vec::new();
        crate::msgpack::write_from_json(&serde_json::json!({"a": 1}), &mut rec);
        let mut out = Vec::new();
        o.format("my.tag", EventTime::new(1475539089, 0), &rec, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2016-10-03T23:58:09Z\tmy.tag\t{\"a\":1,\"t\":\"my.tag\"}\n"
        );
    }

    fn primary(buffer: &str) -> BufferConfig {
        let root = parse_str(
            &{
                let (arg, body) = buffer.split_once('\n').unwrap_or((buffer, ""));
                format!("<match **>\n<buffer {arg}>\n{body}\n</buffer>\n</match>\n")
            },
            "p.conf",
            ".".into(),
        )
        .unwrap();
        let m = &root.elements[0];
        let mut d = super::super::plain_defaults("stdout");
        d.timekey = Some(86400);
        BufferConfig::from_section(&m.elements[0], m, &d).unwrap()
    }

    fn secondary_section(text: &str) -> Element {
        let root = parse_str(text, "s.conf", ".".into()).unwrap();
        root.elements[0].clone()
    }

    #[test]
    fn file_as_secondary_uses_the_primary_keys() {
        let d = tmp();
        let p = d.path().display().to_string();
        let prim = primary("tag,time\ntimekey_use_utc true");
        let s = secondary_section(&format!(
            "<secondary>\n@type file\npath {p}/sec/${{tag}}/x\n</secondary>\n"
        ));
        let o = FileOutput::configure_secondary(&s, &prim, &BuildContext::default()).unwrap();
        assert_eq!(o.template(), format!("{p}/sec/${{tag}}/x.%Y%m%d_**.log"));
        let c = chunk(meta(Some(DAY), Some("a.b")), b"z\n", Compress::Gzip);
        let f = o.writer.write_chunk(&c).unwrap();
        assert_eq!(f, PathBuf::from(format!("{p}/sec/a.b/x.20161003_0.log")));
        assert_eq!(std::fs::read(&f).unwrap(), b"z\n", "written decompressed");
        // Only time placeholders are checked: a tag placeholder without a tag key is fine, a
        // time placeholder without a time key is not.
        let no_time = primary("tag");
        assert!(FileOutput::configure_secondary(
            &secondary_section(&format!(
                "<secondary>\n@type file\npath {p}/${{tag}}/${{k}}\n</secondary>\n"
            )),
            &primary("time"),
            &BuildContext::default()
        )
        .is_ok());
        let e = FileOutput::configure_secondary(
            &secondary_section(&format!(
                "<secondary>\n@type file\npath {p}/%Y%m%d/x\n</secondary>\n"
            )),
            &no_time,
            &BuildContext::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            format!("Parameter 'path: {p}/%Y%m%d/x_**.log' has timestamp placeholders, but chunk key 'time' is not configured")
        );
        let e = FileOutput::configure_secondary(
            &secondary_section(&format!(
                "<secondary>\n@type file\npath {p}/x\nsymlink_path {p}/l\n</secondary>\n"
            )),
            &no_time,
            &BuildContext::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "symlink_path option is unavailable in <secondary>: consider to use secondary_file plugin"
        );
    }

    #[test]
    fn secondary_file_naming_and_checks() {
        let d = tmp();
        let p = d.path().display().to_string();
        let prim = primary("tag,time\ntimekey_use_utc true");
        let ctx = BuildContext::default();
        let s = secondary_section(&format!(
            "<secondary>\n@type secondary_file\ndirectory {p}/dump/${{tag}}/\n</secondary>\n"
        ));
        let o = SecondaryFile::configure(&s, &prim, &ctx).unwrap();
        let c = chunk(meta(Some(DAY), Some("a.b")), b"r1\n", Compress::Gzip);
        for i in 0..2 {
            let f = o.writer.write_chunk(&c).unwrap();
            assert_eq!(f, PathBuf::from(format!("{p}/dump/a.b/dump.bin.{i}")));
            assert_eq!(std::fs::read(&f).unwrap(), b"r1\n");
        }
        let s = secondary_section(&format!(
            "<secondary>\n@type secondary_file\ndirectory {p}/gz\nbasename ${{tag}}_%Y%m%d\nappend true\ncompress gzip\n</secondary>\n"
        ));
        let o = SecondaryFile::configure(&s, &prim, &ctx).unwrap();
        for _ in 0..2 {
            let f = o.writer.write_chunk(&c).unwrap();
            assert_eq!(f, PathBuf::from(format!("{p}/gz/a.b_20161003.gz")));
        }
        let bytes = std::fs::read(format!("{p}/gz/a.b_20161003.gz")).unwrap();
        assert_eq!(members(&bytes), 2);
        assert_eq!(gunzip(&bytes), b"r1\nr1\n");

        let e = |body: &str, prim: &BufferConfig| {
            SecondaryFile::configure(
                &secondary_section(&format!(
                    "<secondary>\n@type secondary_file\n{body}\n</secondary>\n"
                )),
                prim,
                &ctx,
            )
            .map(|_| ())
            .unwrap_err()
            .message
        };
        assert_eq!(e("basename x", &prim), "'directory' parameter is required");
        assert_eq!(
            e(&format!("directory {p}\nbasename a/b"), &prim),
            "basename should not include `/`"
        );
        assert_eq!(
            e(&format!("directory {p}/%Y"), &primary("tag")),
            "out_secondary_file: basename or directory has an incompatible placeholder, remove time formats, like `%Y%m%d`, from basename or directory"
        );
        assert_eq!(
            e(&format!("directory {p}/${{tag[1]}}"), &primary("time")),
            "out_secondary_file: basename or directory has an incompatible placeholder tag[1], remove tag placeholder, like `${tag}`, from basename or directory"
        );
        assert_eq!(
            e(&format!("directory {p}/${{host}}"), &primary("tag,time")),
            "out_secondary_file: basename or directory has an incompatible placeholder host, remove variable placeholder, like `${varname}`, from basename or directory"
        );
        assert!(SecondaryFile::configure(
            &secondary_section(&format!("<secondary>\n@type secondary_file\ndirectory {p}/${{host}}/${{chunk_id}}\n</secondary>\n")),
            &primary("host"),
            &ctx
        )
        .is_ok());
        std::fs::write(d.path().join("plain"), b"").unwrap();
        assert_eq!(
            e(&format!("directory {p}/plain/sub"), &prim),
            format!("out_secondary_file: `{p}/plain/sub` should be writable")
        );
    }

    #[test]
    fn writability_rules() {
        let d = tmp();
        let f = d.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert!(writable_p(&f), "an existing file");
        assert!(!writable_p(d.path()), "a directory is not a writable file");
        assert!(
            writable_p(&d.path().join("a/b/c")),
            "missing parents are created"
        );
        assert!(!writable_p(&f.join("x/y")), "below a regular file");
    }

    #[tokio::test]
    async fn write_runs_off_the_async_workers() {
        let d = tmp();
        let p = d.path().display().to_string();
        let (o, _) = configure(&match_file(&format!("{p}/app"), "", Some("[]"))).unwrap();
        let c = chunk(Metadata::default(), b"x\n", Compress::Text);
        o.write(&c).await.unwrap();
        assert_eq!(std::fs::read(format!("{p}/app_0.log")).unwrap(), b"x\n");
        let bad = chunk(meta(None, Some("/abs")), b"x\n", Compress::Text);
        let (o, _) = configure(&match_file(&format!("{p}/${{tag}}"), "", Some("tag"))).unwrap();
        assert!(o.write(&bad).await.unwrap_err().unrecoverable);
    }

    #[test]
    fn relative_link_targets() {
        let r = |p: &str, b: &str| relative_to(Path::new(p), Path::new(b));
        assert_eq!(
            r("/o/app/buffer.b1.log", "/o/links"),
            Path::new("../app/buffer.b1.log")
        );
        assert_eq!(
            r("/o/app/buffer.b1.log", "/o/app"),
            Path::new("buffer.b1.log")
        );
        assert_eq!(r("/o/b.log", "/o/x/y"), Path::new("../../b.log"));
        assert_eq!(r("/o/x/../b.log", "/o"), Path::new("b.log"));
    }
}
