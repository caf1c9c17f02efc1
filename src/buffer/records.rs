//! A chunk's records read by byte range, so that a writer never needs the whole chunk in memory.
//!
//! A file-buffer chunk's records are the payloads of its records frames (see [`super::wal`]),
//! concatenated. [`FileRecords::open`] walks the frames once, one frame in memory at a time,
//! checking every checksum, and keeps only where each frame's records lie in the file; a read
//! of bytes `a..b` of the records then costs `b - a` bytes of memory, whatever the chunk's size.
//! An output that cuts a large chunk into pieces (the s3 output's multipart parts) therefore
//! holds one piece at a time, not the chunk.
//!
//! Damage is handled as [`super::wal::scan`] handles it: every intact frame is kept, a damaged
//! range costs only itself, and the walk resynchronizes on the next frame magic whose frame
//! checks out.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::wal::{self, Damage, FrameKind, HEADER_LEN};

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

/// What one pass over a chunk file found (see [`scan_file`]).
#[derive(Debug)]
pub struct FileScan {
    /// The records of the intact records frames, indexed.
    pub records: FileRecords,
    /// The first intact header frame's payload.
    pub header: Option<Bytes>,
    /// The intact delivery frames' payloads, in file order.
    pub deliveries: Vec<Bytes>,
    /// Byte ranges holding no intact frame (a torn tail is the last one).
    pub damage: Vec<Damage>,
    /// Where the last intact frame ends.
    pub end: u64,
    /// The bytes walked (the file's length, or `upto`).
    pub len: u64,
}

impl FileScan {
    /// The record count a damaged range claims to hold (see [`wal::records_claimed`]).
    pub fn records_claimed(&self, d: &Damage) -> Option<u32> {
        let n = (d.end - d.start).min((HEADER_LEN + 4) as u64) as usize;
        let mut head = vec![0u8; n];
        self.records.file.read_exact_at(&mut head, d.start).ok()?;
        wal::records_claimed(
            &head,
            &Damage {
                start: 0,
                end: n as u64,
            },
        )
    }
}

/// Walks the frames of the chunk file at `path` up to `upto` bytes (all of it when `None`; a
/// staged chunk's file grows while it is read, so its caller names the length it knows to be
/// complete frames), with [`wal::scan`]'s rules: every checksum is checked, and after damage
/// the walk resynchronizes on the next intact frame. Memory stays at a block plus the small
/// frames' payloads (header, deliveries) whatever the file's size: records frames are checked
/// block by block and only their place is kept.
pub fn scan_file(path: &Path, upto: Option<u64>) -> io::Result<FileScan> {
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
    let damage = records.scan_to(upto, |kind, payload| match kind {
        FrameKind::Header => {
            header.get_or_insert_with(|| Bytes::copy_from_slice(payload));
        }
        FrameKind::Delivery => deliveries.push(Bytes::copy_from_slice(payload)),
        FrameKind::Records => {}
    })?;
    let end = records.end;
    Ok(FileScan {
        records,
        header,
        deliveries,
        damage,
        end,
        len: upto,
    })
}

/// Bytes read at a time when checking a records frame or looking for the next frame.
const BLOCK: usize = 64 << 10;

impl FileRecords {
    /// Indexes the intact records frames of the chunk file at `path` (see [`scan_file`]).
    pub fn open(path: &Path, upto: Option<u64>) -> io::Result<FileRecords> {
        Ok(scan_file(path, upto)?.records)
    }

    /// The same file indexed further, up to `upto` bytes: a staged chunk's file only grows, so
    /// what was indexed before is not read again.
    pub fn extend(&self, upto: u64) -> io::Result<FileRecords> {
        let mut more = self.clone();
        more.scan_to(upto, |_, _| {})?;
        Ok(more)
    }

    /// Walks the frames from `self.end` to `upto`, indexing intact records frames and handing
    /// the other intact frames to `other`; returns the damaged ranges. `self.end` becomes the
    /// end of the last intact frame.
    fn scan_to(
        &mut self,
        upto: u64,
        mut other: impl FnMut(FrameKind, &[u8]),
    ) -> io::Result<Vec<Damage>> {
        let mut pieces = self.pieces.to_vec();
        let mut damage = Vec::new();
        let mut damage_start: Option<u64> = None;
        let mut block = Vec::new();
        let mut at = self.end;
        while at < upto {
            match self.frame_at(at, upto, &mut block)? {
                Some((kind, payload_at, plen)) => {
                    if let Some(start) = damage_start.take() {
                        damage.push(Damage { start, end: at });
                    }
                    if kind == FrameKind::Records {
                        if let Some(n) = records_count(&self.file, payload_at, plen)? {
                            let recs = plen as u64 - 4;
                            if recs > 0 {
                                pieces.push(Piece {
                                    at: self.len,
                                    offset: payload_at + 4,
                                    len: recs,
                                });
                            }
                            self.len += recs;
                            self.count += n as u64;
                        }
                    } else {
                        other(kind, &block);
                    }
                    at = payload_at + plen as u64;
                    self.end = at;
                }
                None => {
                    damage_start.get_or_insert(at);
                    at = self.next_magic(at + 1, upto, &mut block)?;
                }
            }
        }
        if let Some(start) = damage_start {
            damage.push(Damage { start, end: upto });
        }
        self.pieces = pieces.into();
        Ok(damage)
    }

    /// The intact frame at `at` (kind, payload offset, payload length), if one starts there and
    /// ends by `upto`. The payload of a frame that is not a records frame is left in `block`.
    fn frame_at(
        &self,
        at: u64,
        upto: u64,
        block: &mut Vec<u8>,
    ) -> io::Result<Option<(FrameKind, u64, u32)>> {
        if upto - at < HEADER_LEN as u64 {
            return Ok(None);
        }
        let mut head = [0u8; HEADER_LEN];
        self.file.read_exact_at(&mut head, at)?;
        let Some((kind, plen, crc)) = wal::parse_header(&head) else {
            return Ok(None);
        };
        let payload_at = at + HEADER_LEN as u64;
        if payload_at + plen as u64 > upto {
            return Ok(None);
        }
        // The checksum is checked a block at a time; only then is a (small) header or delivery
        // payload read whole, so a damaged length field costs no memory.
        let mut sum = wal::checksum_start(kind, plen);
        let mut done = 0u64;
        while done < plen as u64 {
            let n = (plen as u64 - done).min(BLOCK as u64) as usize;
            block.resize(n, 0);
            self.file.read_exact_at(block, payload_at + done)?;
            sum = crc32c::crc32c_append(sum, block);
            done += n as u64;
        }
        if sum != crc {
            return Ok(None);
        }
        if kind != FrameKind::Records {
            block.resize(plen as usize, 0);
            self.file.read_exact_at(block, payload_at)?;
        }
        Ok(Some((kind, payload_at, plen)))
    }

    /// The offset of the next frame magic at or after `from`, or `upto` when there is none.
    fn next_magic(&self, from: u64, upto: u64, block: &mut Vec<u8>) -> io::Result<u64> {
        let mut at = from;
        while at < upto {
            let n = (upto - at).min(BLOCK as u64) as usize;
            block.resize(n, 0);
            self.file.read_exact_at(block, at)?;
            if let Some(i) = block.windows(4).position(|w| w == wal::MAGIC) {
                return Ok(at + i as u64);
            }
            if at + n as u64 >= upto {
                break;
            }
            // Overlap by three bytes: a magic may straddle two blocks.
            at += n as u64 - 3;
        }
        Ok(upto)
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

/// The record count at the start of an intact records frame's payload (None when the payload
/// is too short to hold one).
fn records_count(file: &File, payload_at: u64, plen: u32) -> io::Result<Option<u32>> {
    if plen < 4 {
        return Ok(None);
    }
    let mut n = [0u8; 4];
    file.read_exact_at(&mut n, payload_at)?;
    Ok(Some(u32::from_be_bytes(n)))
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

    /// All the bytes (no copy for records in memory).
    pub fn read_all(&self) -> io::Result<Bytes> {
        match self {
            ChunkRecords::Memory(b) => Ok(b.clone()),
            ChunkRecords::File(f) => f.read_all(),
        }
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
            let r = FileRecords::open(&path, None).unwrap();
            prop_assert_eq!(r.len(), all.len() as u64);
            prop_assert_eq!(r.count(), payloads.len() as u64);
            let (x, y) = (a.index(all.len() + 1), b.index(all.len() + 1));
            let (x, y) = (x.min(y), x.max(y));
            prop_assert_eq!(&r.read(x as u64..y as u64).unwrap()[..], &all[x..y]);
            prop_assert_eq!(&r.read_all().unwrap()[..], &all[..]);
        }
    }

    proptest! {
        /// Any truncation or byte flips: the frame-at-a-time walk finds what the whole-file
        /// scan finds (the same records, deliveries and damaged ranges), with payloads larger
        /// than a block among them.
        #[test]
        fn the_walk_agrees_with_the_whole_file_scan(
            payloads in proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..64),
                    (1usize..3).prop_map(|k| vec![b'x'; k * BLOCK + 17]),
                ],
                1..6,
            ),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        ) {
            let d = tempfile::tempdir().unwrap();
            let path = write_file(d.path(), &payloads);
            let mut data = std::fs::read(&path).unwrap();
            data.truncate(cut.index(data.len() + 1));
            for (i, x) in &flips {
                if !data.is_empty() {
                    let k = i.index(data.len());
                    data[k] ^= x;
                }
            }
            std::fs::write(&path, &data).unwrap();
            let whole = wal::scan(&data);
            let payload = |f: &wal::Frame| &data[f.payload_offset as usize..(f.payload_offset + f.len as u64) as usize];
            let mut records = Vec::new();
            let mut deliveries = Vec::new();
            for f in &whole.frames {
                match f.kind {
                    FrameKind::Records => {
                        if let Some((_, r)) = wal::split_records(payload(f)) {
                            records.extend_from_slice(r);
                        }
                    }
                    FrameKind::Delivery => deliveries.push(payload(f).to_vec()),
                    FrameKind::Header => {}
                }
            }
            let walked = scan_file(&path, None).unwrap();
            prop_assert_eq!(&walked.damage, &whole.damage);
            prop_assert_eq!(&walked.records.read_all().unwrap()[..], &records[..]);
            let got: Vec<Vec<u8>> = walked.deliveries.iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(got, deliveries);
            let end = whole.frames.last().map_or(0, |f| f.payload_offset + f.len as u64);
            prop_assert_eq!(walked.end, end);
        }
    }

    #[test]
    fn torn_tails_grown_files_and_ranges() {
        let d = tempfile::tempdir().unwrap();
        let path = write_file(d.path(), &[b"one\n".to_vec(), b"two\n".to_vec()]);
        let full = std::fs::read(&path).unwrap();
        // A frame being appended (torn tail): the intact frames are kept, the tail is damage.
        let mut torn = full.clone();
        torn.extend_from_slice(&full[..10]);
        std::fs::write(&path, &torn).unwrap();
        let s = scan_file(&path, None).unwrap();
        assert_eq!(&s.records.read_all().unwrap()[..], b"one\ntwo\n");
        assert_eq!(
            s.damage,
            vec![Damage {
                start: full.len() as u64,
                end: torn.len() as u64
            }]
        );
        assert_eq!((s.end, s.len), (full.len() as u64, torn.len() as u64));
        let r = FileRecords::open(&path, Some(full.len() as u64)).unwrap();
        // A growing file is indexed further from where the last index stopped.
        let mut grown = full.clone();
        wal::encode_records(2, b"three\nfour\n", &mut grown);
        std::fs::write(&path, &grown).unwrap();
        let more = r.extend(grown.len() as u64).unwrap();
        assert_eq!(&more.read_all().unwrap()[..], b"one\ntwo\nthree\nfour\n");
        assert_eq!((more.count(), r.count()), (4, 2));
        // Out-of-range reads are errors, not panics.
        assert!(r.read(3..100).is_err());
        assert!(ChunkRecords::Memory(Bytes::from_static(b"abc"))
            .read(2..5)
            .is_err());
    }
}
