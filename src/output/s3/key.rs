//! Object keys: `s3_object_key_format` expanded for one chunk, as fluent-plugin-s3 does.
//!
//! The expansion runs in fluent-plugin-s3's order: `%{path}` and `%{file_extension}` first,
//! then the buffer placeholders (`${tag}`, `${tag[N]}`, `${key}`, `${chunk_id}`, strftime of
//! the chunk's timekey), then `%{time_slice}`, `%{index}`, `%{hex_random}`, `%{uuid_flush}`
//! and sluice's `%{epoch}` and `%{chunk_id}`. Unknown `%{…}` variables expand to nothing, as in
//! Ruby's `gsub` with a hash. Text that came from a tag or a record is never re-read as a
//! variable, because each pass only looks at what the previous one left of the template.
//!
//! sluice's default format, `%{path}%{time_slice}_%{epoch}_%{chunk_id}.%{file_extension}`, names
//! an object after its chunk, so every attempt at a chunk — a retry after a timeout, a replay
//! after a crash — targets the same key. `%{epoch}` is random per buffer directory, so a buffer
//! that was wiped and rebuilt never reuses a key. `%{index}` keeps fluent-plugin-s3's meaning
//! (the first free index found with HEAD requests), which races when several writers share a
//! prefix.

use crate::buffer::chunk_id::ChunkId;
use crate::buffer::metadata::Metadata;
use crate::event::EventTime;
use crate::format::time::{ruby_strftime, TimeView};
use crate::placeholder::{self, PlaceholderContext, PlaceholderError};

/// sluice's default `s3_object_key_format`.
pub const DEFAULT_FORMAT: &str = "%{path}%{time_slice}_%{epoch}_%{chunk_id}.%{file_extension}";

/// S3's longest key, in bytes.
const MAX_KEY_LEN: usize = 1024;

/// An `s3_object_key_format` ready to expand.
#[derive(Debug, Clone)]
pub struct KeyTemplate {
    /// The format with `%{path}`, `%{file_extension}` and `%{hostname}` already substituted.
    template: String,
    /// `time_slice_format` (or the one derived from `timekey`).
    time_slice_format: String,
    /// Zone of `%{time_slice}` and of strftime placeholders.
    placeholders: PlaceholderContext,
    /// `index_format`, a printf integer format such as `%d` or `%08d`.
    index_format: IndexFormat,
    /// `hex_random_length`.
    hex_random_length: usize,
}

/// Per-attempt values of a key.
#[derive(Debug, Clone, Default)]
pub struct KeyVars<'a> {
    /// `%{index}`.
    pub index: u64,
    /// `%{epoch}`.
    pub epoch: &'a str,
    /// `%{uuid_flush}`.
    pub uuid: &'a str,
}

/// `index_format`: `%d`, `%Nd` or `%0Nd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFormat {
    width: usize,
    zero: bool,
}

impl IndexFormat {
    /// Parses a printf integer format; only decimal conversions are accepted.
    pub fn parse(s: &str) -> Result<IndexFormat, String> {
        let bad = || format!("index_format '{s}' is not supported (use %d, %Nd or %0Nd)");
        let body = s
            .strip_prefix('%')
            .and_then(|r| r.strip_suffix('d'))
            .ok_or_else(bad)?;
        let zero = body.starts_with('0');
        let width = if body.is_empty() {
            0
        } else {
            body.parse::<usize>().map_err(|_| bad())?
        };
        Ok(IndexFormat { width, zero })
    }

    fn format(&self, n: u64) -> String {
        if self.zero {
            format!("{n:0width$}", width = self.width)
        } else {
            format!("{n:width$}", width = self.width)
        }
    }
}

/// fluent-plugin-s3's time slice format for a timekey: `%Y%m%d` for a day or more, `%Y%m%d%H`
/// for an hour or more, `%Y%m%d%H%M` for a minute or more, else `%Y%m%d%H%M%S`.
pub fn time_slice_format_for(timekey: Option<i64>) -> &'static str {
    match timekey {
        None => "",
        Some(t) if t < 60 => "%Y%m%d%H%M%S",
        Some(t) if t < 3600 => "%Y%m%d%H%M",
        Some(t) if t < 86400 => "%Y%m%d%H",
        Some(_) => "%Y%m%d",
    }
}

impl KeyTemplate {
    /// A template from the output's parameters. `path` may hold buffer placeholders.
    pub fn new(
        format: &str,
        path: &str,
        extension: &str,
        time_slice_format: String,
        placeholders: PlaceholderContext,
        index_format: IndexFormat,
        hex_random_length: usize,
    ) -> KeyTemplate {
        let template = format
            .replace("%{path}", path)
            .replace("%{file_extension}", extension)
            .replace("%{hostname}", &crate::hostname());
        KeyTemplate {
            template,
            time_slice_format,
            placeholders,
            index_format,
            hex_random_length,
        }
    }

    /// Whether the key changes with `%{index}`.
    pub fn uses_index(&self) -> bool {
        self.template.contains("%{index}")
    }

    /// Whether the key changes with `%{uuid_flush}`.
    pub fn uses_uuid(&self) -> bool {
        self.template.contains("%{uuid_flush}")
    }

    /// Whether every chunk gets its own key (the chunk id, its reversed hex or a random uuid is
    /// in it).
    pub fn unique_per_chunk(&self) -> bool {
        [
            "%{chunk_id}",
            "${chunk_id}",
            "%{uuid_flush}",
            "%{hex_random}",
        ]
        .iter()
        .any(|v| self.template.contains(v))
    }

    /// Whether the key holds the buffer directory's epoch.
    pub fn uses_epoch(&self) -> bool {
        self.template.contains("%{epoch}")
    }

    /// The fixed text every key starts with (up to the first variable or placeholder): where
    /// to look for uploads of this output.
    pub fn static_prefix(&self) -> &str {
        let t = &self.template;
        let end = [t.find("%"), t.find("${")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(t.len());
        &t[..end]
    }

    /// The key of chunk `id` with metadata `metadata`.
    pub fn render(
        &self,
        metadata: &Metadata,
        id: &ChunkId,
        vars: &KeyVars<'_>,
    ) -> Result<String, PlaceholderError> {
        let expanded = placeholder::extract(&self.template, metadata, id, &self.placeholders)?;
        let time_slice = match metadata.timekey {
            Some(tk) if !self.time_slice_format.is_empty() => ruby_strftime(
                &self.time_slice_format,
                &TimeView {
                    time: EventTime::new(tk, 0),
                    offset: self.placeholders.zone.offset_at(tk),
                    gmt: false,
                    abbr: "",
                },
            ),
            _ => String::new(),
        };
        let out = expand_variables(&expanded, |name, out| match name {
            "time_slice" => out.push_str(&time_slice),
            "index" => out.push_str(&self.index_format.format(vars.index)),
            "hex_random" => {
                let rev: String = id.to_string().chars().rev().collect();
                out.push_str(&rev[..self.hex_random_length.min(rev.len())]);
            }
            "uuid_flush" => out.push_str(vars.uuid),
            "epoch" => out.push_str(vars.epoch),
            "chunk_id" => out.push_str(&id.to_string()),
            _ => {}
        });
        check_key(&out)?;
        Ok(out)
    }

    /// The `%{index}` that `key` was rendered with for this chunk (0 when the template has no
    /// `%{index}`, or when the key cannot be rendered again, e.g. with `%{uuid_flush}`).
    pub fn index_of(&self, key: &str, metadata: &Metadata, id: &ChunkId, epoch: &str) -> u64 {
        if !self.uses_index() || self.uses_uuid() {
            return 0;
        }
        (0..10_000)
            .find(|&index| {
                let vars = KeyVars {
                    index,
                    epoch,
                    uuid: "",
                };
                self.render(metadata, id, &vars).as_deref() == Ok(key)
            })
            .unwrap_or(0)
    }

    /// An `s3_metadata` value for a chunk, as fluent-plugin-s3 makes it: buffer placeholders
    /// expanded, `%{index}` the index of the chunk's key, any other `%{...}` removed.
    pub fn metadata_value(
        &self,
        value: &str,
        metadata: &Metadata,
        id: &ChunkId,
        index: u64,
    ) -> Result<String, PlaceholderError> {
        let expanded = placeholder::extract(value, metadata, id, &self.placeholders)?;
        Ok(expand_variables(&expanded, |name, out| {
            if name == "index" {
                out.push_str(&self.index_format.format(index));
            }
        }))
    }
}

/// `text` with every `%{name}` replaced by what `var` writes for it (an unterminated `%{` is
/// kept as it is).
fn expand_variables(text: &str, mut var: impl FnMut(&str, &mut String)) -> String {
    let mut out = String::with_capacity(text.len() + 48);
    let mut rest = text;
    while let Some(i) = rest.find("%{") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(close) = after.find('}') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        var(&after[..close], &mut out);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Keys S3 cannot store, or that would be unsafe to write: too long, empty, control bytes.
fn check_key(key: &str) -> Result<(), PlaceholderError> {
    let bad = |why: &str| {
        Err(PlaceholderError::Unrecoverable(format!(
            "invalid S3 object key {key:?}: {why}"
        )))
    };
    if key.is_empty() {
        return bad("empty");
    }
    if key.len() > MAX_KEY_LEN {
        return bad("longer than 1024 bytes");
    }
    if key.chars().any(|c| c.is_control()) {
        return bad("it contains control characters");
    }
    Ok(())
}

/// A random RFC 4122 version-4 UUID (`%{uuid_flush}`).
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = n.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::config::ChunkKeys;
    use crate::time::Zone;
    use std::sync::Arc;

    fn ctx(tag: bool, time: bool) -> PlaceholderContext {
        PlaceholderContext {
            chunk_keys: ChunkKeys {
                tag,
                time,
                ..Default::default()
            },
            timekey: time.then_some(3600),
            zone: Zone::utc(),
        }
    }

    fn meta(tag: &str, timekey: Option<i64>) -> Metadata {
        Metadata {
            timekey,
            tag: Some(Arc::from(tag)),
            variables: Vec::new(),
        }
    }

    fn id() -> ChunkId {
        ChunkId::parse_hex("5f0c2a1b3c4d5e6f708192a3b4c5d6e7").unwrap()
    }

    #[test]
    fn fluent_plugin_s3_default_shape_with_index() {
        let t = KeyTemplate::new(
            "%{path}%{time_slice}_%{index}.%{file_extension}",
            "logs/${tag}/",
            "gz",
            time_slice_format_for(Some(3600)).into(),
            ctx(true, true),
            IndexFormat::parse("%d").unwrap(),
            4,
        );
        // 2026-08-21 10:00:00 UTC
        let key = t
            .render(
                &meta("app.web", Some(1_787_306_400)),
                &id(),
                &KeyVars {
                    index: 2,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(key, "logs/app.web/2026082110_2.gz");
        assert!(t.uses_index());
        assert!(!t.unique_per_chunk());
        assert_eq!(t.static_prefix(), "logs/");
    }

    #[test]
    fn sluice_default_names_the_chunk_and_epoch() {
        let t = KeyTemplate::new(
            DEFAULT_FORMAT,
            "",
            "zst",
            "%Y/%m/%d/".into(),
            ctx(false, true),
            IndexFormat::parse("%d").unwrap(),
            4,
        );
        let key = t
            .render(
                &meta("x", Some(1_787_306_400)),
                &id(),
                &KeyVars {
                    epoch: "00112233aabbccdd",
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            key,
            "2026/08/21/_00112233aabbccdd_5f0c2a1b3c4d5e6f708192a3b4c5d6e7.zst"
        );
        assert!(t.unique_per_chunk() && t.uses_epoch());
    }

    #[test]
    fn variables_hex_random_uuid_tag_parts_and_unknowns() {
        let t = KeyTemplate::new(
            "${tag[1]}/%{hex_random}-%{uuid_flush}-%{nope}-${chunk_id}%Y",
            "",
            "gz",
            String::new(),
            ctx(true, true),
            IndexFormat::parse("%05d").unwrap(),
            6,
        );
        let key = t
            .render(
                &meta("app.web", Some(1_787_306_400)),
                &id(),
                &KeyVars {
                    uuid: "U",
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(key, "web/7e6d5c-U--5f0c2a1b3c4d5e6f708192a3b4c5d6e72026");
    }

    #[test]
    fn tag_text_is_not_reinterpreted() {
        let t = KeyTemplate::new(
            "${tag}/%{index}",
            "",
            "gz",
            String::new(),
            ctx(true, false),
            IndexFormat::parse("%d").unwrap(),
            4,
        );
        // strftime runs on the template before the tag is put in, so a `%Y` in a tag stays.
        // (A `%{…}` in a tag would be expanded by the variable pass, as in fluent-plugin-s3,
        // which substitutes variables after the placeholders.)
        let key = t
            .render(&meta("a%Yb", None), &id(), &KeyVars::default())
            .unwrap();
        assert_eq!(key, "a%Yb/0");
    }

    #[test]
    fn index_format_and_bad_keys() {
        assert_eq!(IndexFormat::parse("%08d").unwrap().format(42), "00000042");
        assert_eq!(IndexFormat::parse("%3d").unwrap().format(4), "  4");
        assert!(IndexFormat::parse("%s").is_err());
        assert!(check_key(&"a".repeat(1025)).is_err());
        assert!(check_key("a\nb").is_err());
        assert!(check_key("").is_err());
        assert!(check_key("ok/key.gz").is_ok());
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid_v4());
    }
}
