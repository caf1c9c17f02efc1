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
    /// `part_size` bytes, or the end of the data.
    pub fn next_part(&self, data: &Bytes, start: usize, part_size: u64) -> std::io::Result<Part> {
        let part_size = part_size as usize;
        if *self == Codec::Plain {
            let end = line_end(data, (start + part_size).min(data.len()));
            return Ok(Part {
                start,
                end,
                body: data.slice(start..end),
            });
        }
        let mut enc = Encoder::new(*self, part_size.min(data.len() - start) + 64)?;
        let mut pos = start;
        while pos < data.len() && enc.out_len() < part_size {
            let end = line_end(data, (pos + BLOCK).min(data.len()));
            enc.write(&data[pos..end])?;
            pos = end;
        }
        Ok(Part {
            start,
            end: pos,
            body: enc.finish()?,
        })
    }
}

/// The end of the line that `at` falls in (just after its `\n`), or `at` itself when it is a
/// line start or the data has no newline within a block after it.
fn line_end(data: &[u8], at: usize) -> usize {
    if at == 0 || at >= data.len() || data[at - 1] == b'\n' {
        return at;
    }
    let limit = (at + BLOCK).min(data.len());
    match memchr_newline(&data[at..limit]) {
        Some(i) => at + i + 1,
        None if limit == data.len() => limit,
        None => at,
    }
}

fn memchr_newline(s: &[u8]) -> Option<usize> {
    s.iter().position(|&b| b == b'\n')
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
        while start < data.len() {
            let p = codec.next_part(data, start, size).unwrap();
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
            .next_part(&data, a[1].start, 256 << 10)
            .unwrap();
        assert_eq!(resumed.body, a[1].body);
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
