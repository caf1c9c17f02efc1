//! Events and event streams.
//!
//! An event is (tag, time, record). Time is Fluentd's EventTime: seconds and nanoseconds. The
//! record stays the MessagePack bytes it arrived as; fields are read in place through
//! [`crate::msgpack`]. An [`EventStream`] is the unit that moves through the router: one tag and
//! a MessagePack stream of `[time, record]` entries — the same layout as a Forward-protocol
//! PackedForward payload and a Fluentd chunk — so a batch can be routed and appended without
//! touching its records.

use bytes::Bytes;

use crate::msgpack::{self, DecodeError, Kind};

/// Fluentd's EventTime: seconds since the epoch and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventTime {
    /// Seconds since 1970-01-01 UTC.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: u32,
}

impl EventTime {
    /// A time from seconds and nanoseconds.
    pub const fn new(sec: i64, nsec: u32) -> Self {
        EventTime { sec, nsec }
    }

    /// The wall clock now.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        EventTime::new(d.as_secs() as i64, d.subsec_nanos())
    }

    /// Seconds as a float (loses precision below microseconds for current dates).
    pub fn as_f64(&self) -> f64 {
        self.sec as f64 + self.nsec as f64 / 1e9
    }

    /// From float seconds (the time form older clients send).
    pub fn from_f64(t: f64) -> Self {
        let sec = t.floor();
        let nsec = ((t - sec) * 1e9).round().clamp(0.0, 999_999_999.0) as u32;
        EventTime::new(sec as i64, nsec)
    }

    /// From the 8-byte payload of the EventTime extension (type 0): big-endian u32 seconds and
    /// u32 nanoseconds.
    pub fn from_ext(p: &[u8]) -> Self {
        let sec = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
        let nsec = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        EventTime::new(sec as i64, nsec.min(999_999_999))
    }

    /// Reads a time value: EventTime extension, integer or float seconds.
    pub fn decode(buf: &[u8], at: usize) -> Result<(EventTime, usize), DecodeError> {
        let (kind, end) = msgpack::head(buf, at)?;
        let t = match kind {
            Kind::Ext(0, s, 8) => EventTime::from_ext(&buf[s..s + 8]),
            Kind::Int(i) => EventTime::new(i, 0),
            Kind::UInt(u) => EventTime::new(u.min(i64::MAX as u64) as i64, 0),
            Kind::Float(f) if f.is_finite() => EventTime::from_f64(f),
            _ => return Err(DecodeError::Unexpected("an event time", at)),
        };
        Ok((t, end))
    }

    /// Appends the EventTime extension encoding (fixext8, type 0).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(0xd7);
        out.push(0x00);
        out.extend_from_slice(&(self.sec.clamp(0, u32::MAX as i64) as u32).to_be_bytes());
        out.extend_from_slice(&self.nsec.to_be_bytes());
    }
}

/// One entry of an event stream, borrowed from the stream's bytes.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// The event's time.
    pub time: EventTime,
    /// The record: one encoded MessagePack value (normally a map).
    pub record: &'a [u8],
    /// The whole encoded `[time, record]` entry.
    pub raw: &'a [u8],
}

/// Events of one tag: a MessagePack stream of `[time, record]` entries.
///
/// Invariant: `data` holds exactly `len` well-formed entries (checked by
/// [`EventStream::from_entries`] for bytes from outside, guaranteed by [`StreamBuilder`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventStream {
    data: Bytes,
    len: usize,
}

impl EventStream {
    /// Validates bytes from outside (e.g. a PackedForward payload) and counts the entries.
    /// Each entry must be a 2-element array `[time, record]` with a valid time.
    pub fn from_entries(data: Bytes) -> Result<EventStream, DecodeError> {
        let mut p = 0;
        let mut len = 0;
        while p < data.len() {
            let (_, end) = entry_at(&data, p)?;
            p = end;
            len += 1;
        }
        Ok(EventStream { data, len })
    }

    /// The encoded entries.
    pub fn bytes(&self) -> &Bytes {
        &self.data
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the stream holds no event.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries in order.
    pub fn iter(&self) -> EntryIter<'_> {
        EntryIter {
            data: &self.data,
            pos: 0,
        }
    }

    /// A stream of one event.
    pub fn single(time: EventTime, record: &[u8]) -> EventStream {
        let mut b = StreamBuilder::with_capacity(record.len() + 16);
        b.push(time, record);
        b.finish()
    }
}

/// Reads the entry starting at `p`.
fn entry_at(data: &[u8], p: usize) -> Result<(Entry<'_>, usize), DecodeError> {
    let (kind, body) = msgpack::head(data, p)?;
    if !matches!(kind, Kind::Array(2, _)) {
        return Err(DecodeError::Unexpected("a [time, record] entry", p));
    }
    let (time, rec_start) = EventTime::decode(data, body)?;
    let end = msgpack::skip(data, rec_start)?;
    Ok((
        Entry {
            time,
            record: &data[rec_start..end],
            raw: &data[p..end],
        },
        end,
    ))
}

/// Iterator over the entries of an [`EventStream`].
pub struct EntryIter<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Entry<'a>;
    fn next(&mut self) -> Option<Entry<'a>> {
        if self.pos >= self.data.len() {
            return None;
        }
        // Streams are validated on construction, so a failure here means a bug elsewhere;
        // stop rather than panic.
        let (e, end) = entry_at(self.data, self.pos).ok()?;
        self.pos = end;
        Some(e)
    }
}

/// Builds an [`EventStream`] entry by entry.
#[derive(Debug, Default)]
pub struct StreamBuilder {
    buf: Vec<u8>,
    len: usize,
}

impl StreamBuilder {
    /// A builder with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        StreamBuilder {
            buf: Vec::with_capacity(bytes),
            len: 0,
        }
    }

    /// Appends an event; `record` must be one encoded MessagePack value.
    pub fn push(&mut self, time: EventTime, record: &[u8]) {
        self.buf.push(0x92);
        time.encode(&mut self.buf);
        self.buf.extend_from_slice(record);
        self.len += 1;
    }

    /// Appends an entry taken from another stream, as is.
    pub fn push_entry(&mut self, e: &Entry<'_>) {
        self.buf.extend_from_slice(e.raw);
        self.len += 1;
    }

    /// Number of events so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The finished stream.
    pub fn finish(self) -> EventStream {
        EventStream {
            data: Bytes::from(self.buf),
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_iterate_roundtrip() {
        let mut rec = Vec::new();
        msgpack::write_from_json(&serde_json::json!({"a": 1}), &mut rec);
        let mut b = StreamBuilder::default();
        b.push(EventTime::new(1475539089, 5), &rec);
        b.push(EventTime::new(1475539090, 0), &rec);
        let s = b.finish();
        assert_eq!(s.len(), 2);
        let again = EventStream::from_entries(s.bytes().clone()).unwrap();
        assert_eq!(again, s);
        let times: Vec<_> = s.iter().map(|e| e.time).collect();
        assert_eq!(
            times,
            vec![EventTime::new(1475539089, 5), EventTime::new(1475539090, 0)]
        );
        assert!(s.iter().all(|e| e.record == rec.as_slice()));
    }

    #[test]
    fn integer_and_float_times() {
        // [1475539089, {}] and [1475539089.5, {}]
        let mut data = vec![0x92, 0xce];
        data.extend_from_slice(&1475539089u32.to_be_bytes());
        data.push(0x80);
        let s = EventStream::from_entries(Bytes::from(data)).unwrap();
        assert_eq!(s.iter().next().unwrap().time, EventTime::new(1475539089, 0));
        let mut f = vec![0x92, 0xcb];
        f.extend_from_slice(&1475539089.5f64.to_be_bytes());
        f.push(0x80);
        let s = EventStream::from_entries(Bytes::from(f)).unwrap();
        assert_eq!(
            s.iter().next().unwrap().time,
            EventTime::new(1475539089, 500_000_000)
        );
    }

    #[test]
    fn malformed_entries_are_errors() {
        assert!(EventStream::from_entries(Bytes::from_static(&[0x93, 1, 2, 3])).is_err());
        assert!(EventStream::from_entries(Bytes::from_static(&[0x92, 0xc0, 0x80])).is_err());
        assert!(EventStream::from_entries(Bytes::from_static(&[0x92, 1])).is_err());
    }
}
