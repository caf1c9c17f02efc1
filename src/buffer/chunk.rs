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

/// One chunk.
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
        }
    }

    /// Bytes held, including uncommitted appends.
    pub fn bytesize(&self) -> u64 {
        match &self.frozen {
            Some(b) => b.len() as u64,
            None => self.data.len() as u64,
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
            None => self.committed_len as u64,
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

    /// Makes every append so far permanent.
    pub fn commit(&mut self, now: i64) {
        if self.committed_len != self.data.len() || self.committed_records != self.records {
            self.modified = now;
        }
        self.committed_len = self.data.len();
        self.committed_records = self.records;
    }

    /// Takes back appends since the last commit.
    pub fn rollback(&mut self) {
        self.data.truncate(self.committed_len);
        self.records = self.committed_records;
    }

    /// The committed bytes, frozen so writers can hold them without copying. After this the
    /// chunk takes no more appends.
    pub fn freeze(&mut self) -> Bytes {
        if self.frozen.is_none() {
            self.data.truncate(self.committed_len);
            self.records = self.committed_records;
            self.frozen = Some(Bytes::from(std::mem::take(&mut self.data)));
        }
        self.frozen.clone().expect("frozen above")
    }

    /// The committed bytes as stored (compressed when the buffer compresses).
    pub fn stored_bytes(&self) -> &[u8] {
        match &self.frozen {
            Some(b) => b,
            None => &self.data[..self.committed_len],
        }
    }
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
        assert_eq!(c.freeze(), Bytes::from_static(b"abc"));
    }

    #[test]
    fn compressed_members_concatenate() {
        for comp in [Compress::Gzip, Compress::Zstd] {
            let mut c = chunk();
            c.append(b"line1\n", 1, comp);
            c.append(b"line2\n", 1, comp);
            c.commit(1);
            let out = decompress(c.stored_bytes(), comp, 1 << 20).unwrap();
            assert_eq!(out, b"line1\nline2\n");
            assert!(decompress(c.stored_bytes(), comp, 4).is_err());
        }
    }
}
