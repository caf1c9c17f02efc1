//! Chunk metadata: the chunk-key tuple that decides which chunk an event lands in.
//!
//! Metadata = (timekey, tag, variables). `timekey` is the start of the event's time slice (only
//! with a `time` chunk key), `tag` the event's tag (only with a `tag` key), `variables` the
//! values of the record-field keys in configuration order, each kept as its encoded MessagePack
//! value so that types stay distinct (`80` and `"80"` are different chunks) and a missing field
//! is `nil`. Computing metadata reads only the configured fields of a record, in place.

use std::sync::Arc;

use bytes::Bytes;

use super::config::{BufferConfig, ChunkKeys};
use crate::event::EventTime;
use crate::record_accessor::{AccessError, RecordAccessor};
use crate::time::Zone;

/// The encoded MessagePack `nil`, the value of a missing field.
pub const NIL: &[u8] = &[0xc0];

/// One chunk's key tuple.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Metadata {
    /// Start of the time slice, epoch seconds (with a `time` key).
    pub timekey: Option<i64>,
    /// The tag (with a `tag` key).
    pub tag: Option<Arc<str>>,
    /// (key as configured, encoded value) for each record-field key, in configuration order.
    pub variables: Vec<(Arc<str>, Bytes)>,
}

impl Metadata {
    /// Whether nothing at all is known (no chunk keys, or a legacy chunk without metadata):
    /// placeholders other than `${chunk_id}` are then left as written.
    pub fn is_empty(&self) -> bool {
        self.timekey.is_none() && self.tag.is_none() && self.variables.is_empty()
    }

    /// The encoded value of record-field key `name`, if it is a chunk key.
    pub fn variable(&self, name: &str) -> Option<&[u8]> {
        self.variables
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// Computes metadata for events, from a buffer's chunk keys.
#[derive(Debug, Clone)]
pub struct MetadataBuilder {
    keys: ChunkKeys,
    accessors: Vec<(Arc<str>, RecordAccessor)>,
    timekey: Option<i64>,
    zone: Zone,
    use_utc: bool,
}

impl MetadataBuilder {
    /// A builder for this buffer configuration. Chunk keys were validated when the config
    /// was read, so accessor parsing cannot fail here; a key that does is treated as plain.
    pub fn new(cfg: &BufferConfig) -> MetadataBuilder {
        let accessors = cfg
            .chunk_keys
            .fields
            .iter()
            .map(|k| {
                let acc = RecordAccessor::parse(k).unwrap_or_else(|_| {
                    RecordAccessor::parse(&k.replace(['$', '[', ']', '\''], "")).expect("plain key")
                });
                (Arc::from(k.as_str()), acc)
            })
            .collect();
        MetadataBuilder {
            keys: cfg.chunk_keys.clone(),
            accessors,
            timekey: cfg.timekey,
            zone: cfg.timekey_zone.clone(),
            use_utc: cfg.timekey_use_utc,
        }
    }

    /// Whether metadata depends on nothing but the tag, so a whole stream shares one
    /// ("simple chunking": no per-event work).
    pub fn per_stream(&self) -> bool {
        !self.keys.time && self.accessors.is_empty()
    }

    /// Whether records must be read (record-field keys).
    pub fn reads_records(&self) -> bool {
        !self.accessors.is_empty()
    }

    /// The metadata of one event.
    pub fn metadata(
        &self,
        tag: &Arc<str>,
        time: EventTime,
        record: &[u8],
    ) -> Result<Metadata, AccessError> {
        let timekey = match (self.keys.time, self.timekey) {
            (true, Some(k)) => Some(self.slice_start(time.sec, k)),
            _ => None,
        };
        let mut variables = Vec::with_capacity(self.accessors.len());
        for (name, acc) in &self.accessors {
            let v = acc.get(record)?.unwrap_or(NIL);
            variables.push((name.clone(), Bytes::copy_from_slice(v)));
        }
        Ok(Metadata {
            timekey,
            tag: self.keys.tag.then(|| tag.clone()),
            variables,
        })
    }

    /// Start of the time slice holding `t` (Fluentd's exact arithmetic: named zones use their
    /// offset at the event time).
    pub fn slice_start(&self, t: i64, k: i64) -> i64 {
        if self.use_utc {
            t - t.rem_euclid(k)
        } else {
            let offset = self.zone.offset_at(t) as i64;
            t - (t + offset).rem_euclid(k)
        }
    }

    /// The zone placeholders and file names use.
    pub fn zone(&self) -> &Zone {
        &self.zone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::config::{BufferConfig, OutputDefaults};
    use crate::config::parser::parse_str;

    fn builder(buffer: &str) -> MetadataBuilder {
        let root = parse_str(
            &format!("<match **>\n{buffer}\n</match>\n"),
            "t.conf",
            ".".into(),
        )
        .unwrap();
        let m = &root.elements[0];
        let b = &m.elements[0];
        let d = OutputDefaults {
            chunk_keys: Default::default(),
            buffer_type: "memory",
            timekey: None,
            chunk_limit_size: None,
            flush_at_shutdown: None,
            plugin: "test",
        };
        MetadataBuilder::new(&BufferConfig::from_section(b, m, &d).unwrap())
    }

    fn rec(v: serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        crate::msgpack::write_from_json(&v, &mut out);
        out
    }

    #[test]
    fn timekey_arithmetic() {
        let b = builder("<buffer time>\ntimekey 1d\ntimekey_zone +0900\n</buffer>");
        // 2019-02-08 00:02:00 +0900 belongs to the slice starting 2019-02-08 00:00 +0900.
        let t = 1549551720;
        let m = b
            .metadata(
                &Arc::from("t"),
                EventTime::new(t, 0),
                &rec(serde_json::json!({})),
            )
            .unwrap();
        assert_eq!(m.timekey, Some(1549551600));
        let b = builder("<buffer time>\ntimekey 60\ntimekey_use_utc true\n</buffer>");
        assert_eq!(b.slice_start(125, 60), 120);
        assert_eq!(b.slice_start(-1, 60), -60);
    }

    #[test]
    fn variables_keep_types_and_nil() {
        let b = builder("<buffer tag,port,$.k.ns>\n</buffer>");
        let tag: Arc<str> = Arc::from("web");
        let t = EventTime::new(0, 0);
        let a = b
            .metadata(&tag, t, &rec(serde_json::json!({"port": 80})))
            .unwrap();
        let s = b
            .metadata(&tag, t, &rec(serde_json::json!({"port": "80"})))
            .unwrap();
        assert_ne!(a, s);
        assert_eq!(a.variable("$.k.ns"), Some(NIL));
        assert_eq!(a.tag.as_deref(), Some("web"));
        let err = b.metadata(&tag, t, &rec(serde_json::json!({"port": 1, "k": "str"})));
        assert!(err.is_err());
        assert!(!b.per_stream());
        assert!(builder("<buffer tag>\n</buffer>").per_stream());
    }
}
