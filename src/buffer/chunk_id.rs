//! Chunk ids: 16 bytes, time-ordered, printed as 32 lowercase hex characters.
//!
//! As Fluentd's: the first 8 bytes are `(microseconds since the epoch << 12) | 12 random bits`,
//! big-endian; the last 8 bytes are random. Ids made later sort after ids made earlier (to the
//! microsecond), so a directory listing sorted by name is roughly creation order.

use std::fmt;

/// A chunk's unique id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 16]);

impl ChunkId {
    /// A new id for a chunk created at `micros` microseconds since the epoch.
    pub fn generate(micros: u64) -> ChunkId {
        let r1 = random_u64();
        let r2 = random_u64();
        let head = (micros << 12) | (r1 & 0xfff);
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&head.to_be_bytes());
        b[8..].copy_from_slice(&r2.to_be_bytes());
        ChunkId(b)
    }

    /// A new id for a chunk created now.
    pub fn now() -> ChunkId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        ChunkId::generate(micros)
    }

    /// Parses 32 hex characters.
    pub fn parse_hex(s: &str) -> Option<ChunkId> {
        if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let mut b = [0u8; 16];
        for (i, out) in b.iter_mut().enumerate() {
            *out = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(ChunkId(b))
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// A random u64 from the standard library's per-process random hasher keys, mixed with a
/// counter so successive calls differ.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_roundtrip_and_order() {
        let a = ChunkId::generate(1_475_539_089_000_000);
        let b = ChunkId::generate(1_475_539_089_000_001);
        assert!(a < b);
        let s = a.to_string();
        assert_eq!(s.len(), 32);
        assert!(s
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(ChunkId::parse_hex(&s), Some(a));
        assert_eq!(ChunkId::parse_hex("xyz"), None);
        // 2016 ids start with 53df…, as Fluentd's do.
        assert!(s.starts_with("53df"), "{s}");
        assert_ne!(ChunkId::now(), ChunkId::now());
    }
}
