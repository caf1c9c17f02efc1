//! A chunk's records read by byte range, so that a writer never needs the whole chunk in memory.
//!
//! A file-buffer chunk's records are the payloads of its records frames (see [`super::wal`]),
//! concatenated. [`FileRecords::open`] walks the frames once, one frame in memory at a time,
//! checking every checksum, and keeps only where each frame's records lie in the file; a read
//! of bytes `a..b` of the records then costs `b - a` bytes of memory, whatever the chunk's size.
//! An output that cuts a large chunk into pieces (the s3 output's multipart parts) therefore
//! holds one piece at a time, not the chunk.
//!
//! A file with a damaged frame is not indexed ([`FileRecords::open`] says `None`): the caller
//! falls back to reading the intact frames whole, as resume does, which keeps every intact
//! frame and skips only the damage.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::wal::{self, FrameKind, HEADER_LEN};

/// Where one records frame's records lie.
#[derive(Debug, Clone, Copy)]
struct Piece {
    /// Offset in the records (the concatenation of every frame's records).
    at: u64,
    /// Offset in the file.
    offset: u64,
    /// Length.
    len: u64,
}

/// The records of a chunk file, indexed for reads by range.
#[derive(Debug, Clone)]
pub struct FileRecords {
    file: Arc<File>,
    pieces: Arc<[Piece]>,
    len: u64,
    count: u64,
    /// Where the frames indexed so far end in the file.
    end: u64,
}

/// What one pass over an intact chunk file found (see [`scan_file`]).
#[derive(Debug)]
pub struct FileScan {
    /// The records, indexed.
    pub records: FileRecords,
    /// The header frame's payload.
    pub header: Option<Bytes>,
    /// The delivery frames' payloads, in file order.
    pub deliveries: Vec<Bytes>,
    /// Where the last frame ends.
    pub end: u64,
}

/// Walks the frames of the chunk file at `path`, one frame in memory at a time, checking every
/// checksum, up to `upto` bytes (all of it when `None`; a staged chunk's file grows while it is
/// read, so its caller names the length it knows to be complete frames). `Ok(None)` when a
/// frame is damaged or torn: the caller then reads the file whole with [`wal::scan`], which
/// resynchronizes after damage.
pub fn scan_file(path: &Path, upto: Option<u64>) -> io::Result<Option<FileScan>> {
    let file = File::open(path)?;
    let upto = match upto {
        Some(n) => n,
        None => file.metadata()?.len(),
    };
    let mut records = FileRecords {
        file: Arc::new(file),
        pieces: Arc::from(Vec::new()),
        len: 0,
        count: 0,
        end: 0,
    };
    let (mut header, mut deliveries) = (None, Vec::new());
    let intact = records.scan_to(upto, |kind, payload| match kind {
        FrameKind::Header => {
            header.get_or_insert_with(|| Bytes::copy_from_slice(payload));
        }
        FrameKind::Delivery => deliveries.push(Bytes::copy_from_slice(payload)),
        FrameKind::Records => {}
    })?;
    Ok(intact.then(|| FileScan {
        end: records.end,
        records,
        header,
        deliveries,
    }))
}

impl FileRecords {
    /// Indexes the records of the chunk file at `path` (see [`scan_file`]).
    pub fn open(path: &Path, upto: Option<u64>) -> io::Result<Option<FileRecords>> {
        Ok(scan_file(path, upto)?.map(|s| s.records))
    }

    /// The same file indexed further, up to `upto` bytes: a staged chunk's file only grows, so
    /// what was indexed before is not read again. `Ok(None)` when a new frame is damaged.
    pub fn extend(&self, upto: u64) -> io::Result<Option<FileRecords>> {
        let mut more = self.clone();
        Ok(more.scan_to(upto, |_, _| {})?.then_some(more))
    }

    /// Walks the frames from `self.end` to `upto`, indexing records frames and handing the
    /// others to `other`. False when a frame is damaged or torn.
    fn scan_to(&mut self, upto: u64, mut other: impl FnMut(FrameKind, &[u8])) -> io::Result<bool> {
        let mut pieces = self.pieces.to_vec();
        let mut head = [0u8; HEADER_LEN];
        let mut payload = Vec::new();
        while self.end < upto {
            let at = self.end;
            if upto - at < HEADER_LEN as u64 {
                return Ok(false);
            }
            self.file.read_exact_at(&mut head, at)?;
            let Some((kind, plen, crc)) = wal::parse_header(&head) else {
                return Ok(false);
            };
            let payload_at = at + HEADER_LEN as u64;
            if payload_at + plen as u64 > upto {
                return Ok(false);
            }
            payload.resize(plen as usize, 0);
            self.file.read_exact_at(&mut payload, payload_at)?;
            if !wal::verify(kind, crc, &payload) {
                return Ok(false);
            }
            if kind == FrameKind::Records {
                if let Some((n, recs)) = wal::split_records(&payload) {
                    let skip = (payload.len() - recs.len()) as u64;
                    if !recs.is_empty() {
                        pieces.push(Piece {
                            at: self.len,
                            offset: payload_at + skip,
                            len: recs.len() as u64,
                        });
                    }
                    self.len += recs.len() as u64;
                    self.count += n as u64;
                }
            } else {
                other(kind, &payload);
            }
            self.end = payload_at + plen as u64;
        }
        self.pieces = pieces.into();
        Ok(true)
    }

    /// Bytes of records.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records, as the frames count them.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Appends bytes `range` of the records to `out`.
    pub fn read_into(&self, range: Range<u64>, out: &mut Vec<u8>) -> io::Result<()> {
        if range.end > self.len || range.start > range.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "records range {range:?} outside the chunk's {} bytes",
                    self.len
                ),
            ));
        }
        let first = self.pieces.partition_point(|p| p.at + p.len <= range.start);
        let base = out.len();
        out.resize(base + (range.end - range.start) as usize, 0);
        let mut w = base;
        for p in &self.pieces[first..] {
            if p.at >= range.end {
                break;
            }
            let from = range.start.max(p.at);
            let to = range.end.min(p.at + p.len);
            let n = (to - from) as usize;
            self.file
                .read_exact_at(&mut out[w..w + n], p.offset + (from - p.at))?;
            w += n;
        }
        Ok(())
    }

    /// Bytes `range` of the records.
    pub fn read(&self, range: Range<u64>) -> io::Result<Bytes> {
        let mut out = Vec::with_capacity((range.end.saturating_sub(range.start)) as usize);
        self.read_into(range, &mut out)?;
        Ok(Bytes::from(out))
    }

    /// All the records.
    pub fn read_all(&self) -> io::Result<Bytes> {
        self.read(0..self.len)
    }
}

/// A chunk's records for a writer that reads them piece by piece: in memory already (memory
/// buffers, decompressed chunks), or in a chunk file.
#[derive(Debug, Clone)]
pub enum ChunkRecords {
    /// The bytes.
    Memory(Bytes),
    /// A chunk file, read by range.
    File(FileRecords),
}

impl ChunkRecords {
    /// Bytes of records.
    pub fn len(&self) -> usize {
        match self {
            ChunkRecords::Memory(b) => b.len(),
            ChunkRecords::File(f) => f.len() as usize,
        }
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `range` (no copy for records in memory).
    pub fn read(&self, range: Range<usize>) -> io::Result<Bytes> {
        match self {
            ChunkRecords::Memory(b) => {
                if range.end > b.len() || range.start > range.end {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "records range {range:?} outside the chunk's {} bytes",
                            b.len()
                        ),
                    ));
                }
                Ok(b.slice(range))
            }
            ChunkRecords::File(f) => f.read(range.start as u64..range.end as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A chunk file with a header frame, one records frame per payload, and a delivery frame
    /// after the first records frame.
    fn write_file(dir: &Path, payloads: &[Vec<u8>]) -> std::path::PathBuf {
        let mut data = Vec::new();
        wal::encode(FrameKind::Header, b"meta", &mut data);
        for (i, p) in payloads.iter().enumerate() {
            wal::encode_records(1, p, &mut data);
            if i == 0 {
                wal::encode(FrameKind::Delivery, b"{\"s3\":\"intent\"}", &mut data);
            }
        }
        let path = dir.join("chunk");
        std::fs::write(&path, &data).unwrap();
        path
    }

    proptest! {
        /// Any range reads what the concatenated records hold there.
        #[test]
        fn ranges_read_the_concatenated_records(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..10),
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
        ) {
            let d = tempfile::tempdir().unwrap();
            let path = write_file(d.path(), &payloads);
            let all: Vec<u8> = payloads.concat();
            let r = FileRecords::open(&path, None).unwrap().expect("intact file");
            prop_assert_eq!(r.len(), all.len() as u64);
            prop_assert_eq!(r.count(), payloads.len() as u64);
            let (x, y) = (a.index(all.len() + 1), b.index(all.len() + 1));
            let (x, y) = (x.min(y), x.max(y));
            prop_assert_eq!(&r.read(x as u64..y as u64).unwrap()[..], &all[x..y]);
            prop_assert_eq!(&r.read_all().unwrap()[..], &all[..]);
        }
    }

    #[test]
    fn damage_and_torn_tails_are_not_indexed_but_a_known_length_is() {
        let d = tempfile::tempdir().unwrap();
        let path = write_file(d.path(), &[b"one\n".to_vec(), b"two\n".to_vec()]);
        let full = std::fs::read(&path).unwrap();
        // A frame being appended (torn tail): indexing up to the last complete frame works.
        let mut torn = full.clone();
        torn.extend_from_slice(&full[..10]);
        std::fs::write(&path, &torn).unwrap();
        assert!(FileRecords::open(&path, None).unwrap().is_none());
        let r = FileRecords::open(&path, Some(full.len() as u64))
            .unwrap()
            .unwrap();
        assert_eq!(&r.read_all().unwrap()[..], b"one\ntwo\n");
        // A flipped byte in a payload.
        let mut bad = full.clone();
        let n = bad.len();
        bad[n - 2] ^= 0x55;
        std::fs::write(&path, &bad).unwrap();
        assert!(FileRecords::open(&path, None).unwrap().is_none());
        // A growing file is indexed further from where the last index stopped.
        let mut grown = full.clone();
        wal::encode_records(2, b"three\nfour\n", &mut grown);
        std::fs::write(&path, &grown).unwrap();
        let more = r.extend(grown.len() as u64).unwrap().unwrap();
        assert_eq!(&more.read_all().unwrap()[..], b"one\ntwo\nthree\nfour\n");
        assert_eq!((more.count(), r.count()), (4, 2));
        assert!(r.extend(grown.len() as u64 + 5).unwrap().is_none());
        // Out-of-range reads are errors, not panics.
        assert!(r.read(3..100).is_err());
        assert!(ChunkRecords::Memory(Bytes::from_static(b"abc"))
            .read(2..5)
            .is_err());
    }
}
