//! The `<inject>` section: adding the event's time, tag, host name or worker id to records
//! before they are formatted.
//!
//! Outputs such as out_file and out_s3 write records without their tag and time unless told
//! otherwise; `<inject>` is how Fluentd configs put them back into the record
//! (`time_key`, `tag_key`, `hostname_key`, `worker_id_key`). Keys already in the record are
//! overwritten where they stand; new keys are appended in Fluentd's order (host name, worker
//! id, tag, time). Without an `<inject>` section — or with one that names no key — records
//! pass untouched, and [`Inject::configure`] says so by returning `None`.
//!
//! The v0.12-style output parameters (`include_time_key`, `time_key`, `include_tag_key`,
//! `tag_key`, `time_format`, `timezone`, `localtime`, `utc`, `time_as_epoch`) are turned into
//! the same thing by [`Inject::configure_with_legacy`], as Fluentd's compatibility layer does.

use crate::buffer::config::ChunkKeys;
use crate::config::{ConfigError, Element, Pos};
use crate::event::EventTime;
use crate::msgpack;

use super::time::{zone_mode, TimeFormatter, TimeStyle};

/// How the injected time is written (`time_type`).
#[derive(Debug, Clone)]
pub enum InjectTime {
    /// `float` (default): seconds as a float, truncated to microseconds.
    Float,
    /// `unixtime`: whole seconds.
    Unixtime,
    /// `unixtime_millis`: integer milliseconds.
    Millis,
    /// `unixtime_micros`: integer microseconds.
    Micros,
    /// `unixtime_nanos`: integer nanoseconds.
    Nanos,
    /// `string`: text from a time formatter (`time_format`, zone).
    Text(TimeFormatter),
}

/// A configured `<inject>` section with at least one key to add.
#[derive(Debug, Clone)]
pub struct Inject {
    hostname: Option<(String, String)>,
    hostname_key_pos: Option<Pos>,
    worker_id_key: Option<String>,
    tag_key: Option<String>,
    time: Option<(String, InjectTime)>,
}

/// The worker id sluice reports: it runs one worker per process, Fluentd's worker 0.
const WORKER_ID: i64 = 0;

impl Inject {
    /// Reads an `<inject>` section. `None` when there is no section or it names no key
    /// (records then pass untouched, as in Fluentd).
    pub fn configure(section: Option<&Element>) -> Result<Option<Inject>, ConfigError> {
        let Some(s) = section else {
            return Ok(None);
        };
        let hostname_key = s
            .param("hostname_key")
            .map(|p| (p.value.clone(), p.key_pos.clone()));
        let hostname = s.string("hostname");
        let worker_id_key = s.string("worker_id_key");
        let tag_key = s.string("tag_key");
        let time_key = s.string("time_key");
        let time_type = s
            .enumeration(
                "time_type",
                &[
                    "float",
                    "unixtime",
                    "unixtime_millis",
                    "unixtime_micros",
                    "unixtime_nanos",
                    "string",
                ],
            )?
            .unwrap_or("float");
        let time_format = s.string("time_format");
        let localtime = s.bool("localtime")?.unwrap_or(true);
        let utc = s.bool("utc")?.unwrap_or(false);
        let _ = s.array("time_format_fallbacks")?;
        let tz = s.param("timezone");
        let zone = zone_mode(
            localtime && !utc,
            false,
            tz.map(|p| (p.value.as_str(), &p.value_pos)),
        )?;
        if time_key.is_none() && time_format.is_some() {
            tracing::warn!("'time_format' specified without 'time_key', will be ignored");
        }
        let time = time_key.map(|k| {
            let t = match time_type {
                "unixtime" => InjectTime::Unixtime,
                "unixtime_millis" => InjectTime::Millis,
                "unixtime_micros" => InjectTime::Micros,
                "unixtime_nanos" => InjectTime::Nanos,
                "string" => InjectTime::Text(TimeFormatter::new(TimeStyle::Text {
                    format: time_format.clone(),
                    zone: zone.clone(),
                })),
                _ => InjectTime::Float,
            };
            (k, t)
        });
        Ok(Inject::assemble(
            hostname_key,
            hostname,
            worker_id_key,
            tag_key,
            time,
        ))
    }

    /// Reads the `<inject>` section of `parent`, or — when it has none — the v0.12-style
    /// parameters of `parent` itself that Fluentd's compatibility layer turns into one
    /// (`include_time_key` → `time_key time` with `time_type string`, `time_as_epoch` →
    /// `unixtime`, `include_tag_key` → `tag_key tag`, `localtime`/`utc`, `time_format`,
    /// `timezone`).
    pub fn configure_with_legacy(parent: &Element) -> Result<Option<Inject>, ConfigError> {
        let mut sections = parent.sections("inject");
        if let Some(s) = sections.next() {
            if let Some(second) = sections.next() {
                return Err(ConfigError::at(
                    &second.pos,
                    "'<inject>' section cannot be written twice or more",
                ));
            }
            return Inject::configure(Some(s));
        }
        const KEYS: &[&str] = &[
            "include_time_key",
            "time_key",
            "time_format",
            "timezone",
            "include_tag_key",
            "tag_key",
            "localtime",
            "utc",
        ];
        if !KEYS.iter().any(|k| parent.has(k)) {
            return Ok(None);
        }
        let mut time_key = parent.string("time_key");
        let time_format = parent.string("time_format");
        let mut tag_key = parent.string("tag_key");
        let mut time_type = "float";
        if parent.bool("include_time_key")? == Some(true) {
            time_key.get_or_insert_with(|| "time".into());
            time_type = "string";
        }
        if parent.bool("time_as_epoch")? == Some(true) {
            time_key.get_or_insert_with(|| "time".into());
            time_type = "unixtime";
        }
        let has_l = parent.has("localtime");
        let has_u = parent.has("utc");
        let l = parent.bool("localtime")?;
        let u = parent.bool("utc")?;
        if has_l && has_u && l.unwrap_or(false) == u.unwrap_or(false) {
            let pos = parent
                .peek("utc")
                .map(|p| p.key_pos.clone())
                .unwrap_or(parent.pos.clone());
            return Err(ConfigError::at(
                &pos,
                "both of utc and localtime are specified, use only one of them",
            ));
        }
        let localtime = match (l, u) {
            (Some(l), _) => l,
            (None, Some(u)) => !u,
            (None, None) => true,
        };
        if parent.bool("include_tag_key")? == Some(true) {
            tag_key.get_or_insert_with(|| "tag".into());
        }
        let tz = parent.param("timezone");
        let zone = zone_mode(
            localtime,
            false,
            tz.map(|p| (p.value.as_str(), &p.value_pos)),
        )?;
        let time = time_key.map(|k| {
            let t = match time_type {
                "unixtime" => InjectTime::Unixtime,
                "string" => InjectTime::Text(TimeFormatter::new(TimeStyle::Text {
                    format: time_format.clone(),
                    zone: zone.clone(),
                })),
                _ => InjectTime::Float,
            };
            (k, t)
        });
        Ok(Inject::assemble(None, None, None, tag_key, time))
    }

    fn assemble(
        hostname_key: Option<(String, Pos)>,
        hostname: Option<String>,
        worker_id_key: Option<String>,
        tag_key: Option<String>,
        time: Option<(String, InjectTime)>,
    ) -> Option<Inject> {
        let (hostname, hostname_key_pos) = match hostname_key {
            Some((key, pos)) => {
                let name = hostname.unwrap_or_else(|| {
                    let h = crate::hostname();
                    tracing::info!(host_key = %key, host_name = %h, "using hostname for specified field");
                    h
                });
                (Some((key, name)), Some(pos))
            }
            None => (None, None),
        };
        if hostname.is_none() && worker_id_key.is_none() && tag_key.is_none() && time.is_none() {
            return None;
        }
        Some(Inject {
            hostname,
            hostname_key_pos,
            worker_id_key,
            tag_key,
            time,
        })
    }

    /// Fluentd refuses a `hostname_key` that is also a buffer chunk key: chunks are keyed
    /// before records are injected, so the key would never hold the host name there.
    pub fn check_chunk_keys(&self, chunk_keys: &ChunkKeys) -> Result<(), ConfigError> {
        if let (Some((key, _)), Some(pos)) = (&self.hostname, &self.hostname_key_pos) {
            if chunk_keys.fields.iter().any(|k| k == key) {
                return Err(ConfigError::at(
                    pos,
                    "the key specified by 'hostname_key' in <inject> cannot be used in buffering chunk key.",
                ));
            }
        }
        Ok(())
    }

    /// The key/value pairs to add, in Fluentd's order; a key named twice keeps its first
    /// place and its last value (as successive `Hash#[]=` do).
    fn values(&self, tag: &str, time: EventTime) -> Vec<(&str, Vec<u8>)> {
        let mut out: Vec<(&str, Vec<u8>)> = Vec::with_capacity(4);
        fn put<'a>(out: &mut Vec<(&'a str, Vec<u8>)>, k: &'a str, v: Vec<u8>) {
            match out.iter_mut().find(|(key, _)| *key == k) {
                Some(e) => e.1 = v,
                None => out.push((k, v)),
            }
        }
        if let Some((k, h)) = &self.hostname {
            put(&mut out, k, enc_str(h));
        }
        if let Some(k) = &self.worker_id_key {
            put(&mut out, k, enc_int(WORKER_ID));
        }
        if let Some(k) = &self.tag_key {
            put(&mut out, k, enc_str(tag));
        }
        if let Some((k, t)) = &self.time {
            let v = match t {
                InjectTime::Float => {
                    // Ruby's `time.to_r.truncate(6).to_f`: exact microseconds, one rounding.
                    let micros = time.sec as i128 * 1_000_000 + (time.nsec / 1_000) as i128;
                    let mut b = Vec::with_capacity(9);
                    let _ = rmp::encode::write_f64(&mut b, micros as f64 / 1e6);
                    b
                }
                InjectTime::Unixtime => enc_int(time.sec),
                InjectTime::Millis => enc_int(time.sec * 1_000 + (time.nsec / 1_000_000) as i64),
                InjectTime::Micros => enc_int(time.sec * 1_000_000 + (time.nsec / 1_000) as i64),
                InjectTime::Nanos => enc_int(time.sec * 1_000_000_000 + time.nsec as i64),
                InjectTime::Text(f) => enc_str(&f.format(time)),
            };
            put(&mut out, k, v);
        }
        out
    }

    /// `record` (one encoded map) with the configured keys added, re-encoded: keys already
    /// present keep their place and get the new value, new keys are appended. A record that
    /// is not a map is returned unchanged.
    pub fn apply(&self, tag: &str, time: EventTime, record: &[u8]) -> Vec<u8> {
        let Ok(entries) = msgpack::map_entries(record) else {
            return record.to_vec();
        };
        let adds = self.values(tag, time);
        let mut used = vec![false; adds.len()];
        let mut body = Vec::with_capacity(record.len() + 64);
        for e in &entries {
            let key = msgpack::as_bytes(e.key, 0);
            match adds.iter().position(|(k, _)| key == Some(k.as_bytes())) {
                Some(i) => {
                    used[i] = true;
                    body.extend_from_slice(e.key);
                    body.extend_from_slice(&adds[i].1);
                }
                None => {
                    body.extend_from_slice(e.key);
                    body.extend_from_slice(e.value);
                }
            }
        }
        let mut count = entries.len();
        for (i, (k, v)) in adds.iter().enumerate() {
            if !used[i] {
                body.extend_from_slice(&enc_str(k));
                body.extend_from_slice(v);
                count += 1;
            }
        }
        let mut out = Vec::with_capacity(body.len() + 5);
        let _ = rmp::encode::write_map_len(&mut out, count as u32);
        out.extend_from_slice(&body);
        out
    }
}

fn enc_str(s: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(s.len() + 5);
    let _ = rmp::encode::write_str(&mut b, s);
    b
}

fn enc_int(v: i64) -> Vec<u8> {
    let mut b = Vec::with_capacity(9);
    let _ = rmp::encode::write_sint(&mut b, v);
    b
}

/// How an output that formats its chunks (out_file, s3) turns an event into chunk bytes:
/// `<inject>` first (when configured), then the `<format>` formatter.
#[derive(Debug)]
pub struct RecordFormat {
    formatter: Box<dyn super::Formatter>,
    inject: Option<Inject>,
}

impl RecordFormat {
    /// Reads the `<inject>` section (and the v0.12 inject parameters) and the `<format>`
    /// section (default `out_file`) of an output. With `chunk_keys` (a primary output), an
    /// injected key may not be a chunk key.
    pub fn configure(
        section: &Element,
        chunk_keys: Option<&ChunkKeys>,
    ) -> Result<RecordFormat, ConfigError> {
        let inject = Inject::configure_with_legacy(section)?;
        if let (Some(i), Some(keys)) = (&inject, chunk_keys) {
            i.check_chunk_keys(keys)?;
        }
        let formatter = super::build(
            crate::output::single_section(section, "format")?,
            "out_file",
            section,
        )?;
        Ok(RecordFormat { formatter, inject })
    }

    /// Appends one event, formatted.
    pub fn format(&self, tag: &str, time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        match &self.inject {
            Some(i) => self
                .formatter
                .format(tag, time, &i.apply(tag, time, record), out),
            None => self.formatter.format(tag, time, record, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::parse_str;
    use serde_json::json;

    const T: EventTime = EventTime::new(1475539089, 123_456_789);

    fn conf(body: &str) -> Element {
        let root = parse_str(
            &format!("<match **>\n{body}\n</match>\n"),
            "t.conf",
            ".".into(),
        )
        .unwrap();
        root.elements[0].clone()
    }

    fn inject(body: &str) -> Option<Inject> {
        let m = conf(body);
        let section = m.sections("inject").next();
        Inject::configure(section).unwrap()
    }

    fn rec(v: serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        msgpack::write_from_json(&v, &mut out);
        out
    }

    #[test]
    fn absent_or_empty_section_is_none() {
        assert!(inject("").is_none());
        assert!(inject("<inject>\ntime_format %Y\nutc\n</inject>").is_none());
        assert!(Inject::configure_with_legacy(&conf("path /x"))
            .unwrap()
            .is_none());
        assert!(Inject::configure_with_legacy(&conf("utc"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn keys_appended_in_fluentd_order_and_overwritten_in_place() {
        let i = inject(
            "<inject>\ntime_key t\ntag_key tag\nhostname_key host\nhostname h1\nworker_id_key w\ntime_type unixtime\n</inject>",
        )
        .unwrap();
        let out = i.apply("my.tag", T, &rec(json!({"tag": "old", "a": 1})));
        let mut expected = Vec::new();
        expected.push(0x85);
        expected.extend_from_slice(&[0xa3, b't', b'a', b'g', 0xa6]);
        expected.extend_from_slice(b"my.tag");
        expected.extend_from_slice(&[0xa1, b'a', 0x01]);
        expected.extend_from_slice(&[0xa4, b'h', b'o', b's', b't', 0xa2, b'h', b'1']);
        expected.extend_from_slice(&[0xa1, b'w', 0x00]);
        expected.extend_from_slice(&[0xa1, b't', 0xce]);
        expected.extend_from_slice(&1475539089u32.to_be_bytes());
        assert_eq!(out, expected);
        assert_eq!(
            msgpack::to_json_value(&out).unwrap(),
            json!({"tag": "my.tag", "a": 1, "host": "h1", "w": 0, "t": 1475539089})
        );
    }

    #[test]
    fn time_types() {
        let get = |body: &str| {
            let i = inject(body).unwrap();
            msgpack::to_json_value(&i.apply("t", T, &rec(json!({})))).unwrap()["time"].clone()
        };
        // Float: truncated to microseconds, encoded as float64.
        let i = inject("<inject>\ntime_key time\n</inject>").unwrap();
        let out = i.apply("t", T, &rec(json!({})));
        let mut expected = vec![0x81, 0xa4, b't', b'i', b'm', b'e', 0xcb];
        expected.extend_from_slice(&1475539089.123456f64.to_be_bytes());
        assert_eq!(out, expected);
        assert_eq!(
            get("<inject>\ntime_key time\ntime_type unixtime_millis\n</inject>"),
            json!(1475539089123i64)
        );
        assert_eq!(
            get("<inject>\ntime_key time\ntime_type unixtime_micros\n</inject>"),
            json!(1475539089123456i64)
        );
        assert_eq!(
            get("<inject>\ntime_key time\ntime_type unixtime_nanos\n</inject>"),
            json!(1475539089123456789i64)
        );
        assert_eq!(
            get("<inject>\ntime_key time\ntime_type string\nutc\n</inject>"),
            json!("2016-10-03T23:58:09Z")
        );
        assert_eq!(
            get("<inject>\ntime_key time\ntime_type string\ntime_format %Y-%m-%d %H:%M:%S.%3N %z\ntimezone +09:00\n</inject>"),
            json!("2016-10-04 08:58:09.123 +0900")
        );
        assert_eq!(
            get("<inject>\ntime_key time\ntime_type string\nlocaltime false\n</inject>"),
            json!("2016-10-03T23:58:09Z")
        );
    }

    #[test]
    fn same_key_twice_keeps_first_place_last_value() {
        let i = inject("<inject>\ntag_key k\ntime_key k\ntime_type unixtime\n</inject>").unwrap();
        let out = i.apply("t", T, &rec(json!({"a": 1})));
        assert_eq!(
            msgpack::to_json_value(&out).unwrap(),
            json!({"a": 1, "k": 1475539089})
        );
        assert_eq!(msgpack::map_entries(&out).unwrap().len(), 2);
    }

    #[test]
    fn default_hostname_and_non_map_records() {
        let i = inject("<inject>\nhostname_key host\n</inject>").unwrap();
        let out = i.apply("t", T, &rec(json!({})));
        assert_eq!(
            msgpack::to_json_value(&out).unwrap(),
            json!({"host": crate::hostname()})
        );
        assert_eq!(i.apply("t", T, &rec(json!("str"))), rec(json!("str")));
    }

    #[test]
    fn hostname_key_cannot_be_a_chunk_key() {
        let i = inject("<inject>\nhostname_key host\n</inject>").unwrap();
        let keys = ChunkKeys {
            fields: vec!["host".into()],
            ..Default::default()
        };
        assert_eq!(
            i.check_chunk_keys(&keys).unwrap_err().message,
            "the key specified by 'hostname_key' in <inject> cannot be used in buffering chunk key."
        );
        assert!(i.check_chunk_keys(&ChunkKeys::default()).is_ok());
    }

    #[test]
    fn legacy_parameters() {
        let i = Inject::configure_with_legacy(&conf(
            "include_time_key true\nutc\ninclude_tag_key true",
        ))
        .unwrap()
        .unwrap();
        let out = i.apply("my.tag", T, &rec(json!({"a": 1})));
        assert_eq!(
            msgpack::to_json_value(&out).unwrap(),
            json!({"a": 1, "tag": "my.tag", "time": "2016-10-03T23:58:09Z"})
        );
        let i = Inject::configure_with_legacy(&conf(
            "include_time_key true\ntime_as_epoch true\ntime_key ts",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            msgpack::to_json_value(&i.apply("t", T, &rec(json!({})))).unwrap(),
            json!({"ts": 1475539089})
        );
        assert_eq!(
            Inject::configure_with_legacy(&conf("include_time_key true\nutc true\nlocaltime true"))
                .unwrap_err()
                .message,
            "both of utc and localtime are specified, use only one of them"
        );
        // An <inject> section wins over output-level parameters.
        let i = Inject::configure_with_legacy(&conf(
            "include_tag_key true\n<inject>\ntag_key t2\n</inject>",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            msgpack::to_json_value(&i.apply("x", T, &rec(json!({})))).unwrap(),
            json!({"t2": "x"})
        );
    }
}
