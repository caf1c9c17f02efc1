//! A chunk: the bytes of events that share one metadata, written to the destination together.
//!
//! Appends are transactional as in Fluentd: [`Chunk::append`] adds bytes and records that
//! [`Chunk::commit`] makes permanent and [`Chunk::rollback`] takes back. With `compress gzip`
//! or `zstd` every append becomes its own gzip member / zstd frame, and sizes count compressed
//! bytes.

use std::io::Write;

use bytes::Bytes;

use super::chunk_id::ChunkId;
use super::config::Compress;
use super::metadata::Metadata;

/// Where a chunk is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Created while splitting a write; not reachable through the stage.
    Unstaged,
    /// The writable chunk of its metadata.
    Staged,
    /// Waiting in the queue to be written.
    Queued,
    /// Taken by a flush worker.
    InFlight,
}

/// Where a file-buffer chunk lives on disk, and what of it is there.
#[derive(Debug)]
pub struct FileBacking {
    /// Current path (`….b<id>…` while staged, `….q<id>…` once queued).
    pub path: std::path::PathBuf,
    /// Data bytes (records, not framing) already on disk.
    pub disk_len: u64,
    /// Records already on disk.
    pub disk_records: u64,
    /// File length on disk (framing included).
    pub file_len: u64,
    /// Open handle, opened on first write and dropped when the chunk is queued, so a backlog of
    /// queued chunks holds no descriptors.
    pub file: Option<std::sync::Arc<std::fs::File>>,
    /// Header frame to write when the file is created.
    pub header: Vec<u8>,
    /// `file_permission`.
    pub mode: u32,
}

/// One chunk.
///
/// Data not yet written to disk lives in `data`: for memory chunks that is everything, for file
/// chunks only what was appended since the last [`Chunk::persist`].
#[derive(Debug)]
pub struct Chunk {
    /// Unique, time-ordered id.
    pub id: ChunkId,
    /// The chunk-key values all its events share.
    pub metadata: Metadata,
    /// Lifecycle state.
    pub state: ChunkState,
    /// Creation time, epoch seconds (wall clock).
    pub created: i64,
    /// Time of the last commit, epoch seconds.
    pub modified: i64,
    data: Vec<u8>,
    frozen: Option<Bytes>,
    committed_len: usize,
    records: u64,
    committed_records: u64,
    /// Records counted in `data` that are committed but not yet persisted.
    unpersisted_records: u64,
    /// The file of a file-buffer chunk.
    pub backing: Option<FileBacking>,
    /// How appends are compressed (a chunk resumed from disk keeps the compression it was
    /// written with).
    pub compress: Compress,
    /// The delivery records an output made for this chunk, oldest first (see
    /// [`FlushChunk::deliveries`]).
    ///
    /// [`FlushChunk::deliveries`]: super::core::FlushChunk::deliveries
    pub deliveries: Vec<Bytes>,
}

impl Chunk {
    /// An empty chunk created at `now` (epoch seconds).
    pub fn new(id: ChunkId, metadata: Metadata, state: ChunkState, now: i64) -> Chunk {
        Chunk {
            id,
            metadata,
            state,
            created: now,
            modified: now,
            data: Vec::new(),
            frozen: None,
            committed_len: 0,
            records: 0,
            committed_records: 0,
            unpersisted_records: 0,
            backing: None,
            compress: Compress::Text,
            deliveries: Vec::new(),
        }
    }

    /// State of a chunk loaded from disk: `bytes` data bytes and `records` records, all on disk.
    pub fn set_resumed(&mut self, bytes: u64, records: u64) {
        let _ = bytes;
        self.records = records;
        self.committed_records = records;
    }

    fn base(&self) -> u64 {
        self.backing.as_ref().map_or(0, |b| b.disk_len)
    }

    /// Bytes held, including uncommitted appends.
    pub fn bytesize(&self) -> u64 {
        match &self.frozen {
            Some(b) => b.len() as u64,
            None => self.base() + self.data.len() as u64,
        }
    }

    /// Records held, including uncommitted appends.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Committed bytes.
    pub fn committed_bytes(&self) -> u64 {
        match &self.frozen {
            Some(b) => b.len() as u64,
            None => self.base() + self.committed_len as u64,
        }
    }

    /// Whether nothing is committed.
    pub fn is_empty(&self) -> bool {
        self.committed_bytes() == 0
    }

    /// Appends `n` records' bytes (uncommitted). With compression, `bytes` becomes one gzip
    /// member or zstd frame.
    pub fn append(&mut self, bytes: &[u8], n: u64, compress: Compress) {
        debug_assert!(self.frozen.is_none(), "append to a frozen chunk");
        match compress {
            Compress::Text => self.data.extend_from_slice(bytes),
            Compress::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(&mut self.data, flate2::Compression::default());
                // Writing into a Vec cannot fail.
                let _ = enc.write_all(bytes);
                let _ = enc.finish();
            }
            Compress::Zstd => {
                let _ = zstd::stream::copy_encode(bytes, &mut self.data, 0);
            }
        }
        self.records += n;
    }

    /// Makes every append so far permanent (in memory; file chunks also need [`Chunk::persist`]).
    pub fn commit(&mut self, now: i64) {
        if self.committed_len != self.data.len() || self.committed_records != self.records {
            self.modified = now;
        }
        self.unpersisted_records += self.records - self.committed_records;
        self.committed_len = self.data.len();
        self.committed_records = self.records;
    }

    /// Takes back appends since the last commit.
    pub fn rollback(&mut self) {
        self.data.truncate(self.committed_len);
        self.records = self.committed_records;
    }

    /// Writes committed data not yet on disk as one records frame (file chunks; a no-op for
    /// memory chunks). On failure the file is cut back to where it was and the data stays in
    /// memory, so the caller can roll the write back. Returns the file handle to sync, if any
    /// was written, and whether the file was created.
    pub fn persist(&mut self) -> std::io::Result<Option<(std::sync::Arc<std::fs::File>, bool)>> {
        let Some(b) = self.backing.as_mut() else {
            return Ok(None);
        };
        if self.committed_len == 0 {
            return Ok(None);
        }
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let mut created = false;
        if b.file.is_none() {
            let mut opts = std::fs::OpenOptions::new();
            opts.read(true).write(true).mode(b.mode);
            if b.file_len == 0 {
                opts.create(true);
                created = true;
            }
            b.file = Some(std::sync::Arc::new(opts.open(&b.path)?));
        }
        let f = b.file.clone().expect("opened above");
        let mut frame = Vec::with_capacity(
            self.committed_len + 2 * super::wal::HEADER_LEN + b.header.len() + 4,
        );
        if b.file_len == 0 {
            super::wal::encode(super::wal::FrameKind::Header, &b.header, &mut frame);
        }
        super::wal::encode_records(
            self.unpersisted_records as u32,
            &self.data[..self.committed_len],
            &mut frame,
        );
        if let Err(e) = f.write_all_at(&frame, b.file_len) {
            let _ = f.set_len(b.file_len);
            return Err(e);
        }
        b.file_len += frame.len() as u64;
        b.disk_len += self.committed_len as u64;
        b.disk_records += self.unpersisted_records;
        self.data.drain(..self.committed_len);
        self.committed_len = 0;
        self.unpersisted_records = 0;
        Ok(Some((f, created)))
    }

    /// Undoes the last [`Chunk::persist`] of `len` data bytes / `records` records written as
    /// `frame_len` bytes (a write that failed elsewhere is rolled back whole).
    pub fn unpersist(&mut self, prev_file_len: u64, prev_disk_len: u64, prev_disk_records: u64) {
        if let Some(b) = self.backing.as_mut() {
            if let Some(f) = &b.file {
                let _ = f.set_len(prev_file_len);
            }
            b.file_len = prev_file_len;
            b.disk_len = prev_disk_len;
            b.disk_records = prev_disk_records;
        }
        self.data.clear();
        self.committed_len = 0;
        self.records = prev_disk_records;
        self.committed_records = prev_disk_records;
        self.unpersisted_records = 0;
    }

    /// The committed bytes, frozen so writers can hold them without copying. After this the
    /// chunk takes no more appends. File chunks are read back from their frames.
    pub fn freeze(&mut self) -> std::io::Result<Bytes> {
        if self.frozen.is_none() {
            self.data.truncate(self.committed_len);
            self.records = self.committed_records;
            let bytes = match &self.backing {
                None => Bytes::from(std::mem::take(&mut self.data)),
                Some(b) => {
                    let mut out = read_records(&b.path)?;
                    out.extend_from_slice(&self.data);
                    Bytes::from(out)
                }
            };
            self.frozen = Some(bytes);
        }
        Ok(self.frozen.clone().expect("frozen above"))
    }

    /// The committed bytes as stored (compressed when the buffer compresses).
    pub fn stored_bytes(&self) -> std::io::Result<Bytes> {
        if let Some(b) = &self.frozen {
            return Ok(b.clone());
        }
        match &self.backing {
            None => Ok(Bytes::copy_from_slice(&self.data[..self.committed_len])),
            Some(b) => {
                let mut out = if b.file_len > 0 {
                    read_records(&b.path)?
                } else {
                    Vec::new()
                };
                out.extend_from_slice(&self.data[..self.committed_len]);
                Ok(Bytes::from(out))
            }
        }
    }
}

/// Writes a delivery frame at offset `at` of a chunk file; returns the file (for the caller
/// to sync) and the frame's length.
pub fn write_delivery_frame(
    path: &std::path::Path,
    at: u64,
    payload: &[u8],
) -> std::io::Result<(std::fs::File, u64)> {
    use std::os::unix::fs::FileExt;
    let mut frame = Vec::with_capacity(payload.len() + super::wal::HEADER_LEN);
    super::wal::encode(super::wal::FrameKind::Delivery, payload, &mut frame);
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    if let Err(e) = f.write_all_at(&frame, at) {
        let _ = f.set_len(at);
        return Err(e);
    }
    Ok((f, frame.len() as u64))
}

/// The records' bytes of a chunk file's intact records frames.
pub fn read_records(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let r = super::records::FileRecords::open(path, None)?;
    let mut out = Vec::with_capacity(r.len() as usize);
    r.read_into(0..r.len(), &mut out)?;
    Ok(out)
}

/// Decompresses a chunk's stored bytes (concatenated gzip members or zstd frames), refusing to
/// produce more than `limit` bytes.
pub fn decompress(stored: &[u8], compress: Compress, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    match compress {
        Compress::Text => return Ok(stored.to_vec()),
        Compress::Gzip => {
            flate2::read::MultiGzDecoder::new(stored)
                .take(limit + 1)
                .read_to_end(&mut out)?;
        }
        Compress::Zstd => {
            zstd::stream::read::Decoder::new(stored)?
                .take(limit + 1)
                .read_to_end(&mut out)?;
        }
    }
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "decompressed chunk exceeds decompression_size_limit ({limit} bytes)"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> Chunk {
        Chunk::new(
            ChunkId::generate(1),
            Metadata::default(),
            ChunkState::Staged,
            0,
        )
    }

    #[test]
    fn commit_and_rollback() {
        let mut c = chunk();
        c.append(b"abc", 1, Compress::Text);
        c.commit(5);
        c.append(b"def", 1, Compress::Text);
        assert_eq!((c.bytesize(), c.records()), (6, 2));
        c.rollback();
        assert_eq!((c.bytesize(), c.records(), c.modified), (3, 1, 5));
        assert_eq!(c.freeze().unwrap(), Bytes::from_static(b"abc"));
    }

    #[test]
    fn compressed_members_concatenate() {
        for comp in [Compress::Gzip, Compress::Zstd] {
            let mut c = chunk();
            c.append(b"line1\n", 1, comp);
            c.append(b"line2\n", 1, comp);
            c.commit(1);
            let out = decompress(&c.stored_bytes().unwrap(), comp, 1 << 20).unwrap();
            assert_eq!(out, b"line1\nline2\n");
            assert!(decompress(&c.stored_bytes().unwrap(), comp, 4).is_err());
        }
    }
}
