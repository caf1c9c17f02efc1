//! Cutting a chunk's formatted records into object parts, each compressed on its own.
//!
//! An S3 object is either one PutObject body or the concatenation of multipart parts. sluice
//! builds both the same way: a part is a contiguous byte range of the chunk's formatted records,
//! compressed as one independent gzip member or zstd frame. Concatenated members and frames are
//! a valid gzip / zstd stream, so the object decompresses to exactly the chunk's records, and
//! each part is readable on its own.
//!
//! Parts are sized on **compressed** bytes: a part ends at the first line boundary after its
//! compressed output reached the part size, so every part but the last is at least the part
//! size (S3's 5 MiB minimum holds whatever the compression ratio). Cuts fall on line
//! boundaries (`\n`) so that a part holds whole records; a format without newlines
//! (`msgpack`) is cut at block boundaries instead. Cutting is a pure function of the data, the
//! codec and the part size: a retry or a restart rebuilds byte-identical parts.

use std::io::Write;

use bytes::Bytes;

use crate::buffer::records::ChunkRecords;

/// How each part is compressed (`store_as`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// One gzip member per part, at this level (0–9).
    Gzip(u32),
    /// One zstd frame per part, at this level.
    Zstd(i32),
    /// Parts are the formatted bytes as they are (`json`, `text`).
    Plain,
}

/// Input fed to the compressor between two checks of its output size.
const BLOCK: usize = 64 << 10;

/// S3's largest part number.
pub const MAX_PARTS: usize = 10_000;

/// The part size for `data_len` bytes of records: the configured one, raised so that the
/// object needs at most 9,000 parts (a margin under S3's 10,000 for compressed parts slightly
/// larger than their input).
pub fn part_size_for(configured: u64, data_len: u64) -> u64 {
    configured.max(data_len.div_ceil(9_000))
}

/// One compressed part: records `start..end` of the chunk's formatted bytes.
#[derive(Debug, Clone)]
pub struct Part {
    /// First byte of the range.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// The compressed bytes.
    pub body: Bytes,
}

impl Codec {
    /// Compresses `data` as one member / frame.
    pub fn compress(&self, data: &Bytes) -> std::io::Result<Bytes> {
        let mut enc = Encoder::new(*self, data.len() / 4 + 64)?;
        enc.write(data)?;
        enc.finish()
    }

    /// Cuts the part that starts at `start`: whole lines until the compressed output reaches
    /// `part_size` bytes, or the end of the data. Reads the records a block at a time, so
    /// memory is the part plus a block whatever the chunk's size.
    pub fn next_part(
        &self,
        data: &ChunkRecords,
        start: usize,
        part_size: u64,
    ) -> std::io::Result<Part> {
        let part_size = part_size as usize;
        let len = data.len();
        if *self == Codec::Plain {
            let want = (start + part_size).min(len);
            let window = data.read(start..(want + BLOCK).min(len))?;
            let end = start + line_end(&window, want - start, start + window.len() == len);
            return Ok(Part {
                start,
                end,
                body: window.slice(..end - start),
            });
        }
        let mut enc = Encoder::new(*self, part_size.min(len - start) + 64)?;
        let mut window = Window::new(data, start);
        let mut pos = start;
        while pos < len && enc.out_len() < part_size {
            let want = (pos + BLOCK).min(len);
            let to = (want + BLOCK).min(len);
            let w = window.get(pos, to)?;
            let end = pos + line_end(w, want - pos, to == len);
            enc.write(&w[..end - pos])?;
            pos = end;
        }
        Ok(Part {
            start,
            end: pos,
            body: enc.finish()?,
        })
    }

    /// Whether `available` bytes of records could hold a whole part starting at `start` (see
    /// [`Codec::is_full`]): a cheap test before compressing.
    pub fn could_be_full(start: usize, part_size: u64, available: usize) -> bool {
        available >= start + part_size as usize + 2 * BLOCK
    }

    /// Whether part `p`, cut from the first `available` bytes of a chunk that is still growing,
    /// is a whole part that more records appended later would not change: its size reached
    /// `part_size`, and every cut it made lies at least two blocks before `available`.
    pub fn is_full(&self, p: &Part, part_size: u64, available: usize) -> bool {
        let reached = match self {
            Codec::Plain => (p.end - p.start) as u64 >= part_size,
            _ => p.body.len() as u64 >= part_size,
        };
        reached && p.end + 2 * BLOCK <= available
    }

    /// The records length worth waiting for before cutting at `start` again, after `p` (cut
    /// from everything there was) fell short of `part_size`: what the compression ratio seen
    /// so far says a whole part needs, plus a tenth.
    pub fn wait_for(p: &Part, part_size: u64) -> usize {
        let ratio = (p.end - p.start) as f64 / p.body.len().max(1) as f64;
        p.start + (ratio * part_size as f64 * 1.1) as usize + 2 * BLOCK
    }
}

/// Where a cut near offset `at` of `window` falls: just after the `\n` ending the line `at` is
/// in, or `at` itself when it is a line start, when `at` is the end of the data, or when no
/// newline follows within the window (`window` holds up to a block after `at`; `at_end` says
/// that it reaches the end of the data).
fn line_end(window: &[u8], at: usize, at_end: bool) -> usize {
    if at == 0 || at >= window.len() || window[at - 1] == b'\n' {
        return at;
    }
    match window[at..].iter().position(|&b| b == b'\n') {
        Some(i) => at + i + 1,
        None if at_end => window.len(),
        None => at,
    }
}

/// The records a part is being cut from, read forward: a file chunk is read once, a block at a
/// time (what the previous window read past the cut is kept for the next one); records in memory
/// are not copied.
struct Window<'a> {
    data: &'a ChunkRecords,
    /// Offset of `buf[0]` in the records.
    base: usize,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    fn new(data: &'a ChunkRecords, start: usize) -> Window<'a> {
        Window {
            data,
            base: start,
            buf: Vec::new(),
        }
    }

    /// Records `from..to`; `from` never goes back.
    fn get(&mut self, from: usize, to: usize) -> std::io::Result<&[u8]> {
        let f = match self.data {
            ChunkRecords::Memory(b) => {
                return b.get(from..to).ok_or_else(|| {
                    std::io::Error::other(format!("records {from}..{to} beyond {}", b.len()))
                })
            }
            ChunkRecords::File(f) => f,
        };
        let drop = (from - self.base).min(self.buf.len());
        self.buf.drain(..drop);
        self.base = from.max(self.base + drop);
        let have = self.base + self.buf.len();
        if to > have {
            f.read_into(have as u64..to as u64, &mut self.buf)?;
        }
        Ok(&self.buf[from - self.base..to - self.base])
    }
}

/// A streaming compressor that can report how much output it produced so far.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(codec: Codec, capacity: usize) -> std::io::Result<Encoder> {
        let out = Vec::with_capacity(capacity);
        Ok(match codec {
            // mtime 0: the same records give the same bytes on every attempt.
            Codec::Gzip(level) => Encoder::Gzip(
                flate2::GzBuilder::new()
                    .operating_system(3)
                    .write(out, flate2::Compression::new(level)),
            ),
            Codec::Zstd(level) => {
                let mut e = zstd::stream::write::Encoder::new(out, level)?;
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
            Codec::Plain => unreachable!("plain parts are not encoded"),
        })
    }

    fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data),
            Encoder::Zstd(e) => e.write_all(data),
        }
    }

    fn out_len(&self) -> usize {
        match self {
            Encoder::Gzip(e) => e.get_ref().len(),
            Encoder::Zstd(e) => e.get_ref().len(),
        }
    }

    fn finish(self) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.finish().map(Bytes::from),
            Encoder::Zstd(e) => e.finish().map(Bytes::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: usize) -> Bytes {
        let mut v = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(format!("{{\"n\":{i},\"r\":\"{x:016x}\"}}\n").as_bytes());
        }
        Bytes::from(v)
    }

    fn gunzip(b: &[u8]) -> Vec<u8> {
        crate::buffer::chunk::decompress(b, crate::buffer::config::Compress::Gzip, 1 << 30).unwrap()
    }

    fn all_parts(codec: Codec, data: &Bytes, size: u64) -> Vec<Part> {
        let mut parts = Vec::new();
        let mut start = 0;
        let src = ChunkRecords::Memory(data.clone());
        while start < data.len() {
            let p = codec.next_part(&src, start, size).unwrap();
            assert!(p.end > p.start, "a part always advances");
            start = p.end;
            parts.push(p);
        }
        parts
    }

    #[test]
    fn gzip_parts_are_large_enough_whole_lines_and_concatenate_to_the_data() {
        let data = lines(200_000);
        let size = 1 << 20;
        let parts = all_parts(Codec::Gzip(6), &data, size);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        for p in &parts[..parts.len() - 1] {
            assert!(
                p.body.len() as u64 >= size,
                "part of {} bytes",
                p.body.len()
            );
            assert_eq!(data[p.end - 1], b'\n', "parts end on a line boundary");
            // Each part decompresses on its own to its range.
            assert_eq!(gunzip(&p.body), &data[p.start..p.end]);
        }
        let mut object = Vec::new();
        for p in &parts {
            object.extend_from_slice(&p.body);
        }
        assert_eq!(gunzip(&object), &data[..]);
    }

    #[test]
    fn zstd_parts_concatenate_to_the_data() {
        let data = lines(100_000);
        let parts = all_parts(Codec::Zstd(3), &data, 512 << 10);
        assert!(parts.len() >= 2);
        let mut object = Vec::new();
        for p in &parts {
            object.extend_from_slice(&p.body);
        }
        assert_eq!(zstd::stream::decode_all(&object[..]).unwrap(), &data[..]);
    }

    #[test]
    fn parts_are_the_same_bytes_on_every_attempt() {
        let data = lines(50_000);
        let a = all_parts(Codec::Gzip(6), &data, 256 << 10);
        let b = all_parts(Codec::Gzip(6), &data, 256 << 10);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.start, x.end, &x.body), (y.start, y.end, &y.body));
        }
        // Resuming from a journaled part boundary gives the same later parts.
        let resumed = Codec::Gzip(6)
            .next_part(&ChunkRecords::Memory(data.clone()), a[1].start, 256 << 10)
            .unwrap();
        assert_eq!(resumed.body, a[1].body);
    }

    /// The whole part at `start` of a growing chunk, as the s3 output cuts it.
    fn next_full_part(codec: Codec, data: &ChunkRecords, start: usize, size: u64) -> Option<Part> {
        if !Codec::could_be_full(start, size, data.len()) {
            return None;
        }
        let p = codec.next_part(data, start, size).unwrap();
        codec.is_full(&p, size, data.len()).then_some(p)
    }

    #[test]
    fn a_full_part_of_a_growing_chunk_is_the_part_of_the_whole_chunk() {
        let data = lines(120_000);
        for codec in [Codec::Gzip(6), Codec::Zstd(3), Codec::Plain] {
            let whole = all_parts(codec, &data, 256 << 10);
            // Every prefix either has no full part yet, or has the same first two parts.
            for cut in (0..data.len()).step_by(data.len() / 40) {
                let prefix = ChunkRecords::Memory(data.slice(..cut));
                let Some(p) = next_full_part(codec, &prefix, 0, 256 << 10) else {
                    continue;
                };
                assert_eq!(
                    (p.end, &p.body),
                    (whole[0].end, &whole[0].body),
                    "{codec:?} {cut}"
                );
                if let Some(q) = next_full_part(codec, &prefix, p.end, 256 << 10) {
                    assert_eq!((q.end, &q.body), (whole[1].end, &whole[1].body));
                }
            }
            // The whole data has full parts but the last.
            let src = ChunkRecords::Memory(data.clone());
            assert!(next_full_part(codec, &src, 0, 256 << 10).is_some());
            let last = whole.last().unwrap();
            assert!(next_full_part(codec, &src, last.start, 256 << 10).is_none());
        }
    }

    #[test]
    fn parts_read_from_a_chunk_file_are_the_parts_of_its_records_in_memory() {
        let data = lines(60_000);
        let d = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        crate::buffer::wal::encode(crate::buffer::wal::FrameKind::Header, b"h", &mut file);
        // Frames of uneven sizes, cut mid-line.
        let mut at = 0;
        for (i, size) in [1usize, 70_000, 3, 250_000].iter().cycle().enumerate() {
            if at >= data.len() {
                break;
            }
            let end = (at + size).min(data.len());
            crate::buffer::wal::encode_records(i as u32, &data[at..end], &mut file);
            at = end;
        }
        let path = d.path().join("c");
        std::fs::write(&path, &file).unwrap();
        let on_disk =
            ChunkRecords::File(crate::buffer::records::FileRecords::open(&path, None).unwrap());
        let in_memory = all_parts(Codec::Gzip(6), &data, 200 << 10);
        let mut start = 0;
        for p in &in_memory {
            let q = Codec::Gzip(6)
                .next_part(&on_disk, start, 200 << 10)
                .unwrap();
            assert_eq!((q.start, q.end, &q.body), (p.start, p.end, &p.body));
            start = q.end;
        }
        assert_eq!(start, data.len());
    }

    #[test]
    fn plain_parts_are_slices_on_line_boundaries() {
        let data = lines(10_000);
        let parts = all_parts(Codec::Plain, &data, 50_000);
        for p in &parts[..parts.len() - 1] {
            assert!(p.body.len() >= 50_000);
            assert_eq!(data[p.end - 1], b'\n');
        }
        assert_eq!(parts.last().unwrap().end, data.len());
    }

    #[test]
    fn data_without_newlines_is_cut_at_blocks() {
        let data = Bytes::from(vec![7u8; 1 << 20]);
        let parts = all_parts(Codec::Plain, &data, 300_000);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0].end, 300_000);
    }

    #[test]
    fn part_size_is_raised_for_huge_chunks() {
        assert_eq!(part_size_for(8 << 20, 1 << 30), 8 << 20);
        let big = 200u64 << 30;
        let size = part_size_for(8 << 20, big);
        assert!(big / size < MAX_PARTS as u64);
    }
}
