//! The framing of file-buffer chunk files: checksummed, length-prefixed frames.
//!
//! A chunk file is a sequence of frames:
//!
//! ```text
//! frame   = magic:u32 "SLCF" | kind:u8 | len:u32 | crc:u32 | payload:len bytes
//! crc     = CRC32C over kind, len (big-endian bytes) and payload
//! ```
//!
//! All integers are big-endian. The first frame of a file is a [`FrameKind::Header`] holding the
//! chunk's metadata (written once; metadata never changes). Every commit of appended records is
//! one [`FrameKind::Records`] frame whose payload starts with the record count (u32) followed
//! by the records' bytes as the chunk holds them (formatted records, MessagePack entries, or a
//! gzip member / zstd frame).
//!
//! Recovery reads frames in order and keeps every frame whose checksum holds ([`scan`] over
//! bytes in memory; [`super::records::scan_file`] walks a file with the same rules without
//! reading it whole). A torn
//! tail (the process died mid-write) or damaged bytes are reported as a [`Damage`] with their
//! byte range; after damage the scan looks for the next magic whose frame checks out, so one bad
//! frame costs only itself and the rest of the chunk is kept.

/// The 4 bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"SLCF";
/// Bytes before a frame's payload.
pub const HEADER_LEN: usize = 13;
/// Largest payload accepted when reading (a frame claiming more is damage).
pub const MAX_PAYLOAD: u32 = 1 << 30;

/// What a frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The chunk's metadata (first frame).
    Header,
    /// Committed records.
    Records,
    /// Where an output is delivering the chunk (written before the delivery, so a retry after a
    /// crash can tell whether it already happened).
    Delivery,
}

impl FrameKind {
    fn byte(self) -> u8 {
        match self {
            FrameKind::Header => 1,
            FrameKind::Records => 2,
            FrameKind::Delivery => 3,
        }
    }

    fn from_byte(b: u8) -> Option<FrameKind> {
        match b {
            1 => Some(FrameKind::Header),
            2 => Some(FrameKind::Records),
            3 => Some(FrameKind::Delivery),
            _ => None,
        }
    }
}

fn checksum(kind: u8, len: u32, payload: &[u8]) -> u32 {
    let mut c = crc32c::crc32c(&[kind]);
    c = crc32c::crc32c_append(c, &len.to_be_bytes());
    crc32c::crc32c_append(c, payload)
}

/// Appends one frame to `out`.
pub fn encode(kind: FrameKind, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len() as u32;
    out.extend_from_slice(&MAGIC);
    out.push(kind.byte());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&checksum(kind.byte(), len, payload).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Appends a records frame: `count` then the records' bytes.
pub fn encode_records(count: u32, records: &[u8], out: &mut Vec<u8>) {
    let mut payload = Vec::with_capacity(4 + records.len());
    payload.extend_from_slice(&count.to_be_bytes());
    payload.extend_from_slice(records);
    encode(FrameKind::Records, &payload, out);
}

/// One intact frame found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Its kind.
    pub kind: FrameKind,
    /// Offset of the frame (its magic) in the file.
    pub offset: u64,
    /// Offset of its payload.
    pub payload_offset: u64,
    /// Payload length.
    pub len: u32,
}

/// A byte range that held no intact frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// First damaged byte.
    pub start: u64,
    /// One past the last damaged byte.
    pub end: u64,
}

/// The result of scanning a chunk file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// Intact frames in file order.
    pub frames: Vec<Frame>,
    /// Damaged ranges in file order (a torn tail is the last one, ending at the file's end).
    pub damage: Vec<Damage>,
}

/// A frame's header: kind, payload length and checksum, when `h` (at least [`HEADER_LEN`]
/// bytes) starts with one that can be read (magic, known kind, length within bounds).
pub fn parse_header(h: &[u8]) -> Option<(FrameKind, u32, u32)> {
    let h = h.get(..HEADER_LEN)?;
    if h[..4] != MAGIC {
        return None;
    }
    let kind = FrameKind::from_byte(h[4])?;
    let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    if len > MAX_PAYLOAD {
        return None;
    }
    let crc = u32::from_be_bytes([h[9], h[10], h[11], h[12]]);
    Some((kind, len, crc))
}

/// The checksum of a frame of this kind and payload length before any payload byte: feed the
/// payload to `crc32c::crc32c_append` piece by piece to check a frame without holding it.
pub fn checksum_start(kind: FrameKind, len: u32) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&[kind.byte()]), &len.to_be_bytes())
}

/// Whether `payload` is what a frame of this kind and checksum holds.
pub fn verify(kind: FrameKind, crc: u32, payload: &[u8]) -> bool {
    checksum(kind.byte(), payload.len() as u32, payload) == crc
}

/// Reads the frame at `at`, if an intact one starts there.
fn frame_at(data: &[u8], at: usize) -> Option<Frame> {
    let (kind, len, crc) = parse_header(data.get(at..)?)?;
    let start = at + HEADER_LEN;
    let payload = data.get(start..start.checked_add(len as usize)?)?;
    if !verify(kind, crc, payload) {
        return None;
    }
    Some(Frame {
        kind,
        offset: at as u64,
        payload_offset: start as u64,
        len,
    })
}

/// The record count a damaged range claims to hold: when it starts with the header of a records
/// frame whose count field lies inside the range. The frame failed its checksum, so the count
/// is what the writer meant to store unless the damage hit those very bytes: an estimate, for
/// the log line.
pub fn records_claimed(data: &[u8], d: &Damage) -> Option<u32> {
    let start = usize::try_from(d.start).ok()?;
    let end = usize::try_from(d.end).ok()?.min(data.len());
    let h = data.get(start..start + HEADER_LEN + 4)?;
    if start + HEADER_LEN + 4 > end
        || h[..4] != MAGIC
        || FrameKind::from_byte(h[4]) != Some(FrameKind::Records)
    {
        return None;
    }
    Some(u32::from_be_bytes([h[13], h[14], h[15], h[16]]))
}

/// Scans a whole chunk file: every intact frame, and every damaged range between them.
pub fn scan(data: &[u8]) -> Scan {
    let mut out = Scan::default();
    let mut at = 0usize;
    let mut damage_start: Option<usize> = None;
    while at < data.len() {
        match frame_at(data, at) {
            Some(f) => {
                if let Some(s) = damage_start.take() {
                    out.damage.push(Damage {
                        start: s as u64,
                        end: at as u64,
                    });
                }
                at = (f.payload_offset + f.len as u64) as usize;
                out.frames.push(f);
            }
            None => {
                damage_start.get_or_insert(at);
                // Resynchronize on the next magic.
                at = match data[at + 1..].windows(4).position(|w| w == MAGIC) {
                    Some(p) => at + 1 + p,
                    None => data.len(),
                };
            }
        }
    }
    if let Some(s) = damage_start {
        out.damage.push(Damage {
            start: s as u64,
            end: data.len() as u64,
        });
    }
    out
}

/// The record count and records' bytes of a records frame's payload.
pub fn split_records(payload: &[u8]) -> Option<(u32, &[u8])> {
    let n = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    Some((n, &payload[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_damaged_records_frame_tells_how_many_records_it_held() {
        let mut data = Vec::new();
        encode(FrameKind::Header, b"meta", &mut data);
        let at = data.len();
        encode_records(7, b"seven records", &mut data);
        let last = data.len() - 1;
        data[last] ^= 0xff; // the payload's last byte: the checksum fails
        let s = scan(&data);
        assert_eq!(s.damage.len(), 1);
        assert_eq!(s.damage[0].start, at as u64);
        assert_eq!(records_claimed(&data, &s.damage[0]), Some(7));
        // A torn header says nothing.
        let torn = &data[..at + 6];
        let s = scan(torn);
        assert_eq!(records_claimed(torn, &s.damage[0]), None);
    }

    fn file(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(FrameKind::Header, b"meta", &mut out);
        for p in payloads {
            encode_records(1, p, &mut out);
        }
        out
    }

    #[test]
    fn roundtrip() {
        let f = file(&[b"one\n", b"two\n"]);
        let s = scan(&f);
        assert!(s.damage.is_empty());
        assert_eq!(s.frames.len(), 3);
        let p = &s.frames[2];
        let payload = &f[p.payload_offset as usize..(p.payload_offset + p.len as u64) as usize];
        assert_eq!(split_records(payload), Some((1, &b"two\n"[..])));
    }

    #[test]
    fn torn_tail_is_cut() {
        let f = file(&[b"one\n", b"two\n"]);
        let torn = &f[..f.len() - 2];
        let s = scan(torn);
        assert_eq!(s.frames.len(), 2);
        assert_eq!(
            s.damage,
            vec![Damage {
                start: s.frames[1].payload_offset + s.frames[1].len as u64,
                end: torn.len() as u64
            }]
        );
    }

    #[test]
    fn flipped_byte_costs_one_frame() {
        let mut f = file(&[b"one\n", b"two\n", b"three\n"]);
        let s = scan(&f);
        let mid = s.frames[2].payload_offset as usize + 5;
        f[mid] ^= 0xff;
        let s2 = scan(&f);
        assert_eq!(s2.frames.len(), 3, "header, one, three survive");
        assert_eq!(s2.damage.len(), 1);
        assert_eq!(s2.damage[0].start, s.frames[2].offset);
        assert_eq!(s2.damage[0].end, s.frames[3].offset);
    }

    proptest! {
        /// Any truncation or byte flips: no panic, every surviving frame is one that was
        /// written (same offset), and damage plus frames cover the file without overlap.
        #[test]
        fn damage_never_invents_frames(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cut in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
        ) {
            let refs: Vec<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
            let original = file(&refs);
            let written: Vec<u64> = scan(&original).frames.iter().map(|f| f.offset).collect();
            let mut data = original[..cut.index(original.len() + 1)].to_vec();
            for (i, x) in &flips {
                if !data.is_empty() {
                    let k = i.index(data.len());
                    data[k] ^= x;
                }
            }
            let s = scan(&data);
            for f in &s.frames {
                prop_assert!(written.contains(&f.offset));
            }
            let mut covered = 0u64;
            let mut spans: Vec<(u64, u64)> = s.frames.iter().map(|f| (f.offset, f.payload_offset + f.len as u64)).collect();
            spans.extend(s.damage.iter().map(|d| (d.start, d.end)));
            spans.sort();
            for (a, b) in spans {
                prop_assert_eq!(a, covered);
                covered = b;
            }
            prop_assert_eq!(covered, data.len() as u64);
        }
    }
}
