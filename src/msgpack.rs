//! MessagePack without trees: skip, look up and transcode values in place.
//!
//! Records travel through sluice as the MessagePack bytes the client sent. Routing, chunk keys
//! and most filters need one field or none, so this module reads values where they lie: it
//! finds the end of a value ([`skip`]), a key in a map ([`map_get`]), the entries of a map
//! ([`map_entries`]), and writes JSON straight from the bytes ([`write_json`]). Nothing here
//! allocates per value except the JSON output itself.
//!
//! Every reader is bounds-checked and returns [`DecodeError`] on malformed or truncated input;
//! nesting is limited to [`MAX_DEPTH`] so hostile input cannot overflow the stack.

use rmp::Marker;

/// Deepest nesting of arrays and maps accepted.
pub const MAX_DEPTH: usize = 128;

/// Malformed or truncated MessagePack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end inside a value.
    #[error("truncated MessagePack at byte {0}")]
    Truncated(usize),
    /// A marker byte that MessagePack reserves.
    #[error("invalid MessagePack marker 0x{0:02x} at byte {1}")]
    Reserved(u8, usize),
    /// Arrays and maps nested deeper than [`MAX_DEPTH`].
    #[error("MessagePack nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// A value of another type than the one required at this place.
    #[error("expected {0} at byte {1}")]
    Unexpected(&'static str, usize),
}

/// What a value is, with the position of its payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// nil
    Nil,
    /// true/false
    Bool(bool),
    /// Any integer that fits i64.
    Int(i64),
    /// An unsigned integer above i64::MAX.
    UInt(u64),
    /// float32/float64.
    Float(f64),
    /// A string: payload start and length.
    Str(usize, usize),
    /// Binary: payload start and length.
    Bin(usize, usize),
    /// An array with this many elements, which start at the given offset.
    Array(usize, usize),
    /// A map with this many pairs, which start at the given offset.
    Map(usize, usize),
    /// An extension: type, payload start and length.
    Ext(i8, usize, usize),
}

fn byte(buf: &[u8], at: usize) -> Result<u8, DecodeError> {
    buf.get(at).copied().ok_or(DecodeError::Truncated(at))
}

fn be(buf: &[u8], at: usize, n: usize) -> Result<u64, DecodeError> {
    let s = buf.get(at..at + n).ok_or(DecodeError::Truncated(at))?;
    Ok(s.iter().fold(0u64, |acc, b| (acc << 8) | *b as u64))
}

fn span(buf: &[u8], start: usize, len: usize) -> Result<(), DecodeError> {
    match start.checked_add(len) {
        Some(end) if end <= buf.len() => Ok(()),
        _ => Err(DecodeError::Truncated(buf.len())),
    }
}

/// Reads the header of the value at `at`: its kind and the offset just past the header.
/// For strings, binaries and extensions the payload is bounds-checked.
pub fn head(buf: &[u8], at: usize) -> Result<(Kind, usize), DecodeError> {
    let m = byte(buf, at)?;
    let p = at + 1;
    let sized =
        |kind: fn(usize, usize) -> Kind, len_bytes: usize| -> Result<(Kind, usize), DecodeError> {
            let len = be(buf, p, len_bytes)? as usize;
            let start = p + len_bytes;
            span(buf, start, len)?;
            Ok((kind(start, len), start + len))
        };
    Ok(match Marker::from_u8(m) {
        Marker::FixPos(v) => (Kind::Int(v as i64), p),
        Marker::FixNeg(v) => (Kind::Int(v as i64), p),
        Marker::Null => (Kind::Nil, p),
        Marker::True => (Kind::Bool(true), p),
        Marker::False => (Kind::Bool(false), p),
        Marker::U8 => (Kind::Int(be(buf, p, 1)? as i64), p + 1),
        Marker::U16 => (Kind::Int(be(buf, p, 2)? as i64), p + 2),
        Marker::U32 => (Kind::Int(be(buf, p, 4)? as i64), p + 4),
        Marker::U64 => {
            let v = be(buf, p, 8)?;
            (
                if v > i64::MAX as u64 {
                    Kind::UInt(v)
                } else {
                    Kind::Int(v as i64)
                },
                p + 8,
            )
        }
        Marker::I8 => (Kind::Int(be(buf, p, 1)? as u8 as i8 as i64), p + 1),
        Marker::I16 => (Kind::Int(be(buf, p, 2)? as u16 as i16 as i64), p + 2),
        Marker::I32 => (Kind::Int(be(buf, p, 4)? as u32 as i32 as i64), p + 4),
        Marker::I64 => (Kind::Int(be(buf, p, 8)? as i64), p + 8),
        Marker::F32 => (
            Kind::Float(f32::from_bits(be(buf, p, 4)? as u32) as f64),
            p + 4,
        ),
        Marker::F64 => (Kind::Float(f64::from_bits(be(buf, p, 8)?)), p + 8),
        Marker::FixStr(n) => {
            span(buf, p, n as usize)?;
            (Kind::Str(p, n as usize), p + n as usize)
        }
        Marker::Str8 => sized(Kind::Str, 1)?,
        Marker::Str16 => sized(Kind::Str, 2)?,
        Marker::Str32 => sized(Kind::Str, 4)?,
        Marker::Bin8 => sized(Kind::Bin, 1)?,
        Marker::Bin16 => sized(Kind::Bin, 2)?,
        Marker::Bin32 => sized(Kind::Bin, 4)?,
        Marker::FixArray(n) => (Kind::Array(n as usize, p), p),
        Marker::Array16 => (Kind::Array(be(buf, p, 2)? as usize, p + 2), p + 2),
        Marker::Array32 => (Kind::Array(be(buf, p, 4)? as usize, p + 4), p + 4),
        Marker::FixMap(n) => (Kind::Map(n as usize, p), p),
        Marker::Map16 => (Kind::Map(be(buf, p, 2)? as usize, p + 2), p + 2),
        Marker::Map32 => (Kind::Map(be(buf, p, 4)? as usize, p + 4), p + 4),
        Marker::FixExt1
        | Marker::FixExt2
        | Marker::FixExt4
        | Marker::FixExt8
        | Marker::FixExt16 => {
            let len = match Marker::from_u8(m) {
                Marker::FixExt1 => 1,
                Marker::FixExt2 => 2,
                Marker::FixExt4 => 4,
                Marker::FixExt8 => 8,
                _ => 16,
            };
            let ty = byte(buf, p)? as i8;
            span(buf, p + 1, len)?;
            (Kind::Ext(ty, p + 1, len), p + 1 + len)
        }
        Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => {
            let n = match Marker::from_u8(m) {
                Marker::Ext8 => 1,
                Marker::Ext16 => 2,
                _ => 4,
            };
            let len = be(buf, p, n)? as usize;
            let ty = byte(buf, p + n)? as i8;
            let start = p + n + 1;
            span(buf, start, len)?;
            (Kind::Ext(ty, start, len), start + len)
        }
        Marker::Reserved => return Err(DecodeError::Reserved(m, at)),
    })
}

/// Offset just past the value that starts at `at`.
pub fn skip(buf: &[u8], at: usize) -> Result<usize, DecodeError> {
    skip_depth(buf, at, 0)
}

fn skip_depth(buf: &[u8], at: usize, depth: usize) -> Result<usize, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let (kind, mut p) = head(buf, at)?;
    match kind {
        Kind::Array(n, _) => {
            for _ in 0..n {
                p = skip_depth(buf, p, depth + 1)?;
            }
        }
        Kind::Map(n, _) => {
            for _ in 0..n.saturating_mul(2) {
                p = skip_depth(buf, p, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(p)
}

/// The string at `at`, if the value there is a valid UTF-8 string.
pub fn as_str(buf: &[u8], at: usize) -> Option<&str> {
    match head(buf, at).ok()?.0 {
        Kind::Str(s, n) => std::str::from_utf8(&buf[s..s + n]).ok(),
        _ => None,
    }
}

/// The bytes of a string or binary value at `at`.
pub fn as_bytes(buf: &[u8], at: usize) -> Option<&[u8]> {
    match head(buf, at).ok()?.0 {
        Kind::Str(s, n) | Kind::Bin(s, n) => Some(&buf[s..s + n]),
        _ => None,
    }
}

/// The value stored under the string key `key` in the map `map` (a whole encoded value).
/// `Ok(None)` when the key is absent; an error when `map` is not a map or is malformed.
pub fn map_get<'a>(map: &'a [u8], key: &str) -> Result<Option<&'a [u8]>, DecodeError> {
    let (kind, mut p) = head(map, 0)?;
    let Kind::Map(n, _) = kind else {
        return Err(DecodeError::Unexpected("a map", 0));
    };
    let mut found = None;
    for _ in 0..n {
        let k_end = skip(map, p)?;
        let v_end = skip(map, k_end)?;
        if as_bytes(map, p) == Some(key.as_bytes()) {
            // The last occurrence wins, as in a decoded hash.
            found = Some(&map[k_end..v_end]);
        }
        p = v_end;
    }
    Ok(found)
}

/// The value at index `i` of the array `arr`, if it has one.
pub fn array_get(arr: &[u8], i: usize) -> Result<Option<&[u8]>, DecodeError> {
    let (kind, mut p) = head(arr, 0)?;
    let Kind::Array(n, _) = kind else {
        return Err(DecodeError::Unexpected("an array", 0));
    };
    for j in 0..n {
        let end = skip(arr, p)?;
        if j == i {
            return Ok(Some(&arr[p..end]));
        }
        p = end;
    }
    Ok(None)
}

/// One key/value pair of a map, as raw encoded slices.
#[derive(Debug, Clone, Copy)]
pub struct MapEntry<'a> {
    /// The encoded key.
    pub key: &'a [u8],
    /// The encoded value.
    pub value: &'a [u8],
}

impl MapEntry<'_> {
    /// The key as text, when it is a string.
    pub fn key_str(&self) -> Option<&str> {
        as_str(self.key, 0)
    }
}

/// The pairs of the map `map`, in order.
pub fn map_entries(map: &[u8]) -> Result<Vec<MapEntry<'_>>, DecodeError> {
    let (kind, mut p) = head(map, 0)?;
    let Kind::Map(n, _) = kind else {
        return Err(DecodeError::Unexpected("a map", 0));
    };
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let k_end = skip(map, p)?;
        let v_end = skip(map, k_end)?;
        out.push(MapEntry {
            key: &map[p..k_end],
            value: &map[k_end..v_end],
        });
        p = v_end;
    }
    Ok(out)
}

/// Appends `value` (one encoded value) to `out` as JSON.
///
/// Binary data is written as a string (invalid UTF-8 replaced), non-string map keys as their
/// JSON text, the EventTime extension as a float of seconds, other extensions as null.
pub fn write_json(value: &[u8], out: &mut Vec<u8>) -> Result<(), DecodeError> {
    write_json_at(value, 0, out, 0).map(|_| ())
}

fn write_json_at(
    buf: &[u8],
    at: usize,
    out: &mut Vec<u8>,
    depth: usize,
) -> Result<usize, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let (kind, mut p) = head(buf, at)?;
    match kind {
        Kind::Nil => out.extend_from_slice(b"null"),
        Kind::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Kind::Int(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
        Kind::UInt(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
        Kind::Float(f) => write_float(f, out),
        Kind::Str(s, n) | Kind::Bin(s, n) => {
            write_json_string(&String::from_utf8_lossy(&buf[s..s + n]), out)
        }
        Kind::Array(n, _) => {
            out.push(b'[');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                p = write_json_at(buf, p, out, depth + 1)?;
            }
            out.push(b']');
        }
        Kind::Map(n, _) => {
            out.push(b'{');
            for i in 0..n {
                if i > 0 {
                    out.push(b',');
                }
                match head(buf, p)?.0 {
                    Kind::Str(..) | Kind::Bin(..) => {
                        p = write_json_at(buf, p, out, depth + 1)?;
                    }
                    _ => {
                        let mut key = Vec::new();
                        p = write_json_at(buf, p, &mut key, depth + 1)?;
                        write_json_string(&String::from_utf8_lossy(&key), out);
                    }
                }
                out.push(b':');
                p = write_json_at(buf, p, out, depth + 1)?;
            }
            out.push(b'}');
        }
        Kind::Ext(0, s, 8) => {
            let t = crate::event::EventTime::from_ext(&buf[s..s + 8]);
            write_float(t.as_f64(), out);
        }
        Kind::Ext(..) => out.extend_from_slice(b"null"),
    }
    Ok(p)
}

fn write_float(f: f64, out: &mut Vec<u8>) {
    if f.is_finite() {
        // Ruby's to_json prints 1.0 for whole floats; keep the point so types survive.
        let mut b = ryu::Buffer::new();
        out.extend_from_slice(b.format_finite(f).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{:04x}", b).as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Appends the JSON value `v` to `out` as MessagePack.
pub fn write_from_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    use rmp::encode as e;
    use serde_json::Value as J;
    // Writing into a Vec cannot fail.
    match v {
        J::Null => e::write_nil(out).unwrap(),
        J::Bool(b) => e::write_bool(out, *b).unwrap(),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                e::write_sint(out, i).unwrap();
            } else if let Some(u) = n.as_u64() {
                e::write_uint(out, u).unwrap();
            } else {
                e::write_f64(out, n.as_f64().unwrap_or(0.0)).unwrap();
            }
        }
        J::String(s) => e::write_str(out, s).unwrap(),
        J::Array(a) => {
            e::write_array_len(out, a.len() as u32).unwrap();
            for x in a {
                write_from_json(x, out);
            }
        }
        J::Object(o) => {
            e::write_map_len(out, o.len() as u32).unwrap();
            for (k, x) in o {
                e::write_str(out, k).unwrap();
                write_from_json(x, out);
            }
        }
    }
}

/// Decodes one value into JSON (for filters and tests that need a tree).
pub fn to_json_value(value: &[u8]) -> Result<serde_json::Value, DecodeError> {
    let mut s = Vec::new();
    write_json(value, &mut s)?;
    serde_json::from_slice(&s).map_err(|_| DecodeError::Unexpected("a JSON-representable value", 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(v: &serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        write_from_json(v, &mut out);
        out
    }

    #[test]
    fn lookup_and_json() {
        let v = serde_json::json!({"a": 1, "b": {"c": [1, "x", null, true, 2.5]}, "s": "q\"\n"});
        let m = enc(&v);
        assert_eq!(skip(&m, 0).unwrap(), m.len());
        let b = map_get(&m, "b").unwrap().unwrap();
        let c = map_get(b, "c").unwrap().unwrap();
        assert_eq!(as_str(array_get(c, 1).unwrap().unwrap(), 0), Some("x"));
        assert!(map_get(&m, "zz").unwrap().is_none());
        let mut js = Vec::new();
        write_json(&m, &mut js).unwrap();
        assert_eq!(
            String::from_utf8(js).unwrap(),
            r#"{"a":1,"b":{"c":[1,"x",null,true,2.5]},"s":"q\"\n"}"#
        );
        assert_eq!(map_entries(&m).unwrap().len(), 3);
        assert_eq!(map_entries(&m).unwrap()[2].key_str(), Some("s"));
    }

    #[test]
    fn errors_not_panics() {
        assert_eq!(skip(&[0x92, 0x01], 0), Err(DecodeError::Truncated(2)));
        assert!(matches!(
            skip(&[0xc1], 0),
            Err(DecodeError::Reserved(0xc1, 0))
        ));
        assert!(skip(&[0xdb, 0xff, 0xff, 0xff, 0xff], 0).is_err());
        let deep = vec![0x91u8; 1000];
        assert_eq!(skip(&deep, 0), Err(DecodeError::TooDeep));
        assert!(map_get(&[0x01], "a").is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = skip(&bytes, 0);
            let _ = map_entries(&bytes);
            let mut out = Vec::new();
            let _ = write_json(&bytes, &mut out);
        }
    }
}
