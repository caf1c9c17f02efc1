//! Buffer placeholders: turning an output template such as out_file's `path` into the text for
//! one chunk, and checking templates against the chunk keys at start-up.
//!
//! Fluentd users name files and objects after what a chunk holds — `%Y%m%d` for its time
//! slice, `${tag}`/`${tag[N]}` for its tag, `${key}` for a record-field chunk key,
//! `${chunk_id}` for the chunk itself. [`extract`] expands a template for one chunk exactly as
//! Fluentd's `extract_placeholders` does (reference §2.3), including its path-safety rules: a
//! tag or value that would climb out of the configured directory makes the chunk
//! unrecoverable ([`PlaceholderError::Unrecoverable`], so it goes to the backup directory)
//! instead of writing outside it. [`validate`] is Fluentd's `placeholder_validate!` (§2.4):
//! a template must use exactly the chunk keys that are configured, so that two chunks never
//! write to the same name by accident.
//!
//! Expansion is one pass over the template after strftime, so text that comes from a tag or a
//! record value is never itself interpreted as a placeholder or a time directive.

use crate::buffer::chunk_id::ChunkId;
use crate::buffer::config::{BufferConfig, ChunkKeys};
use crate::buffer::metadata::Metadata;
use crate::event::EventTime;
use crate::format::time::{ruby_strftime, TimeView};
use crate::record_accessor::value_to_string;
use crate::time::Zone;

/// What a chunk's template expansion needs from the output's configuration.
#[derive(Debug, Clone)]
pub struct PlaceholderContext {
    /// The configured chunk keys: only placeholders of configured keys are expanded.
    pub chunk_keys: ChunkKeys,
    /// `timekey` in seconds (with a `time` key), for [`PlaceholderContext::validate`].
    pub timekey: Option<i64>,
    /// The zone `%Y…` are expanded in: `timekey_zone`, or UTC with `timekey_use_utc`.
    pub zone: Zone,
}

impl PlaceholderContext {
    /// The context of a buffer configuration (zone `+0000` when `timekey_use_utc`, as
    /// Fluentd's).
    pub fn from_buffer(cfg: &BufferConfig) -> PlaceholderContext {
        PlaceholderContext {
            chunk_keys: cfg.chunk_keys.clone(),
            timekey: cfg.timekey,
            zone: if cfg.timekey_use_utc {
                Zone::utc()
            } else {
                cfg.timekey_zone.clone()
            },
        }
    }

    /// [`validate`] with this context's chunk keys and timekey.
    pub fn validate(&self, param_name: &str, template: &str) -> Result<(), String> {
        validate(param_name, template, &self.chunk_keys, self.timekey)
    }
}

/// Why a template cannot be expanded for a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceholderError {
    /// The chunk can never be written under this template (its tag or a key value would
    /// leave the target directory). Retrying cannot help: the chunk goes to backup, as with
    /// Fluentd's `UnrecoverableError`. The text is Fluentd's.
    #[error("{0}")]
    Unrecoverable(String),
}

/// One placeholder found in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ph<'a> {
    /// `${name}` with `name` of `[-_.@$a-zA-Z0-9]+` (includes `tag` and `chunk_id`).
    Name(&'a str),
    /// `${tag[N]}`: the index text (`-1`, `3`, `007`).
    TagPart(&'a str),
}

fn name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-_.@$".contains(&c)
}

/// The placeholder starting at `i` (where `s[i..]` starts with `${`) and its end.
fn placeholder_at(s: &str, i: usize) -> Option<(Ph<'_>, usize)> {
    let b = s.as_bytes();
    let body = i + 2;
    let mut j = body;
    while j < b.len() && name_char(b[j]) {
        j += 1;
    }
    if j > body && b.get(j) == Some(&b'}') {
        return Some((Ph::Name(&s[body..j]), j + 1));
    }
    // ${tag[-?\d+]}
    if !s[body..].starts_with("tag[") {
        return None;
    }
    let digits_start = body + 4;
    let mut k = digits_start;
    if b.get(k) == Some(&b'-') {
        k += 1;
    }
    let d0 = k;
    while k < b.len() && b[k].is_ascii_digit() {
        k += 1;
    }
    if k > d0 && s[k..].starts_with("]}") {
        return Some((Ph::TagPart(&s[digits_start..k]), k + 2));
    }
    None
}

/// All placeholders of `s`, left to right, with their byte ranges.
fn placeholders(s: &str) -> Vec<(Ph<'_>, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(k) = s[i..].find("${") {
        let at = i + k;
        match placeholder_at(s, at) {
            Some((ph, end)) => {
                out.push((ph, at, end));
                i = end;
            }
            None => i = at + 1,
        }
    }
    out
}

/// Fluentd's `INVALID_PATH_COMPONENT_PATTERN`: `../` or `..\` anywhere, or `/` or `\` at the
/// start of a line.
fn invalid_path_component(s: &str) -> bool {
    s.contains("../")
        || s.contains("..\\")
        || s.starts_with(['/', '\\'])
        || s.contains("\n/")
        || s.contains("\n\\")
}

/// Number of non-overlapping `../` / `..\` in `s`.
fn parent_dirs(s: &str) -> usize {
    let b = s.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i + 3 <= b.len() {
        if b[i] == b'.' && b[i + 1] == b'.' && (b[i + 2] == b'/' || b[i + 2] == b'\\') {
            n += 1;
            i += 3;
        } else {
            i += 1;
        }
    }
    n
}

/// Ruby's `tag.split('.')`: trailing empty parts are dropped.
fn tag_parts(tag: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = tag.split('.').collect();
    while parts.last() == Some(&"") {
        parts.pop();
    }
    parts
}

/// The part `${tag[<index>]}` names, or "" when out of range. Only indexes written as Ruby
/// prints integers name a part (`${tag[01]}` and `${tag[-0]}` name none, as in Fluentd).
fn tag_part<'a>(parts: &[&'a str], index: &str) -> &'a str {
    let Ok(n) = index.parse::<i64>() else {
        return "";
    };
    if n.to_string() != index {
        return "";
    }
    let len = parts.len() as i64;
    let i = if n < 0 { len + n } else { n };
    if (0..len).contains(&i) {
        parts[i as usize]
    } else {
        ""
    }
}

/// Expands `template` for one chunk (Fluentd's `extract_placeholders`, reference §2.3).
///
/// - Empty metadata (no chunk keys, or a legacy chunk): only `${chunk_id}` is replaced.
/// - With a `time` key, the raw template first goes through strftime at the chunk's timekey
///   in the context's zone; without one, `%…` stays as written.
/// - With a `tag` key, `${tag}` and `${tag[N]}` (negative from the end, out of range empty).
/// - `${chunk_id}`: the 32-hex chunk id.
/// - With record-field keys, `${key}` becomes the value's `to_s` (nil: empty); other
///   `${name}` become empty with a warning. Without record-field keys they stay as written.
/// - Path safety: a tag (when used) or value containing `../`, `..\` or starting with `/` or
///   `\`, or an expansion that adds `../` compared to the template, is
///   [`PlaceholderError::Unrecoverable`].
pub fn extract(
    template: &str,
    metadata: &Metadata,
    chunk_id: &ChunkId,
    ctx: &PlaceholderContext,
) -> Result<String, PlaceholderError> {
    let id = chunk_id.to_string();
    if metadata.is_empty() {
        return Ok(template.replace("${chunk_id}", &id));
    }
    let expanded;
    let base: &str = match (ctx.chunk_keys.time, metadata.timekey) {
        (true, Some(tk)) => {
            expanded = ruby_strftime(
                template,
                &TimeView {
                    time: EventTime::new(tk, 0),
                    offset: ctx.zone.offset_at(tk),
                    gmt: false,
                    abbr: "",
                },
            );
            &expanded
        }
        _ => template,
    };
    let tag = if ctx.chunk_keys.tag {
        metadata.tag.as_deref()
    } else {
        None
    };
    if let Some(tag) = tag {
        let uses_tag = placeholders(template)
            .iter()
            .any(|(ph, _, _)| matches!(ph, Ph::Name("tag") | Ph::TagPart(_)));
        if uses_tag && invalid_path_component(tag) {
            return Err(PlaceholderError::Unrecoverable(format!(
                "Invalid path component detected in tag: {tag}"
            )));
        }
    }
    let parts = tag.map(tag_parts).unwrap_or_default();
    let keys_active = !ctx.chunk_keys.fields.is_empty() && !metadata.variables.is_empty();
    let mut out = String::with_capacity(base.len() + 32);
    let mut leftover: Option<&str> = None;
    let mut last = 0;
    for (ph, start, end) in placeholders(base) {
        out.push_str(&base[last..start]);
        last = end;
        let literal = &base[start..end];
        match ph {
            Ph::TagPart(index) => match tag {
                Some(_) => out.push_str(tag_part(&parts, index)),
                None => out.push_str(literal),
            },
            Ph::Name("tag") => match tag {
                Some(t) => out.push_str(t),
                None => {
                    out.push_str(literal);
                    leftover.get_or_insert("tag");
                }
            },
            Ph::Name("chunk_id") => out.push_str(&id),
            Ph::Name(name) if keys_active => {
                if ctx.chunk_keys.fields.iter().any(|k| k == name) {
                    let value = metadata
                        .variable(name)
                        .map(value_to_string)
                        .unwrap_or_default();
                    if invalid_path_component(&value) {
                        return Err(PlaceholderError::Unrecoverable(format!(
                            "Invalid path component detected in {literal}: {value}"
                        )));
                    }
                    out.push_str(&value);
                } else {
                    tracing::warn!(
                        "chunk key placeholder '{name}' not replaced. template:{template}"
                    );
                }
            }
            Ph::Name(name) => {
                out.push_str(literal);
                leftover.get_or_insert(name);
            }
        }
    }
    out.push_str(&base[last..]);
    if keys_active && parent_dirs(&out) > parent_dirs(template) {
        return Err(PlaceholderError::Unrecoverable(format!(
            "Invalid path component detected, replaced to: {out}"
        )));
    }
    if let Some(name) = leftover {
        tracing::warn!("chunk key placeholder '{name}' not replaced. template:{template}");
    }
    Ok(out)
}

/// Fluentd's probe instant for finding a template's finest time unit: 2016-01-01 00:00:00 UTC.
const TIMESTAMP_CHECK_BASE: i64 = 1_451_606_400;

/// The finest time unit a template's strftime directives resolve: (seconds, name, directive),
/// found as Fluentd does by formatting the probe instant and +1 s, +60 s, +3600 s, +86400 s.
/// `None` when none of these changes the text (no directive, or only coarser ones like `%Y%m`).
pub fn time_unit(template: &str) -> Option<(i64, &'static str, &'static str)> {
    let fmt = |t: i64| {
        ruby_strftime(
            template,
            &TimeView {
                time: EventTime::new(t, 0),
                offset: 0,
                gmt: true,
                abbr: "",
            },
        )
    };
    let base = fmt(TIMESTAMP_CHECK_BASE);
    [
        (1, "second", "%S"),
        (60, "minute", "%M"),
        (3600, "hour", "%H"),
        (86400, "day", "%d"),
    ]
    .into_iter()
    .find(|(sec, _, _)| fmt(TIMESTAMP_CHECK_BASE + sec) != base)
}

/// The tag parts a template uses, sorted: `-1` for `${tag}`, N for `${tag[N]}` (Fluentd's
/// `get_placeholders_tag`; out_file sizes its dummy tag for the writability check by it).
pub fn tag_placeholders(template: &str) -> Vec<i64> {
    let mut parts: Vec<i64> = placeholders(template)
        .into_iter()
        .filter_map(|(ph, _, _)| match ph {
            Ph::Name("tag") => Some(-1),
            // Ruby's to_i of a huge index saturates nowhere; an unparsable one is out of
            // range anyway, so it counts as the largest.
            Ph::TagPart(n) => Some(n.parse().unwrap_or(i64::MAX)),
            _ => None,
        })
        .collect();
    parts.sort_unstable();
    parts
}

/// The record-key placeholders a template uses, sorted (`${tag}` and `${chunk_id}` excluded;
/// `${time}` included, as in Fluentd's `get_placeholders_keys`).
pub fn key_placeholders(template: &str) -> Vec<String> {
    let mut keys: Vec<String> = placeholders(template)
        .into_iter()
        .filter_map(|(ph, _, _)| match ph {
            Ph::Name(n) if n != "tag" && n != "chunk_id" => Some(n.to_string()),
            _ => None,
        })
        .collect();
    keys.sort();
    keys
}

/// Checks a template against the chunk keys at start-up (Fluentd's `placeholder_validate!`,
/// reference §2.4): time first, then tag, then record keys; the first problem is returned as
/// Fluentd words it. `timekey` counts only when `time` is a chunk key.
pub fn validate(
    param_name: &str,
    template: &str,
    chunk_keys: &ChunkKeys,
    timekey: Option<i64>,
) -> Result<(), String> {
    let prefix = format!("Parameter '{param_name}: {template}'");
    let timekey = timekey.filter(|_| chunk_keys.time);
    match (time_unit(template), timekey) {
        (None, Some(k)) => {
            return Err(format!(
                "{prefix} doesn't have timestamp placeholders for timekey {k}"
            ))
        }
        (Some(_), None) => {
            return Err(format!(
                "{prefix} has timestamp placeholders, but chunk key 'time' is not configured"
            ))
        }
        (Some((sec, title, example)), Some(k)) if k < sec => {
            return Err(format!(
            "{prefix} doesn't have timestamp placeholder for {title}('{example}') for timekey {k}"
        ))
        }
        _ => {}
    }
    let parts = tag_placeholders(template);
    if chunk_keys.tag && parts.is_empty() {
        return Err(format!("{prefix} doesn't have tag placeholder"));
    }
    if !chunk_keys.tag && !parts.is_empty() {
        return Err(format!(
            "{prefix} has tag placeholders, but chunk key 'tag' is not configured"
        ));
    }
    let keys = key_placeholders(template);
    let mut missing: Vec<&String> = chunk_keys
        .fields
        .iter()
        .filter(|k| !keys.contains(k))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return Err(format!(
            "{prefix} doesn't have enough placeholders for keys {}",
            list.join(",")
        ));
    }
    let extra: Vec<&str> = keys
        .iter()
        .filter(|k| !chunk_keys.fields.contains(k))
        .map(|s| s.as_str())
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "{prefix} has placeholders, but chunk keys doesn't have keys {}",
            extra.join(",")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::Arc;

    /// The start of 2016-10-03 UTC.
    const DAY: i64 = 1475452800;

    fn keys(tag: bool, time: bool, fields: &[&str]) -> ChunkKeys {
        ChunkKeys {
            tag,
            time,
            fields: fields.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ctx(k: ChunkKeys, timekey: Option<i64>) -> PlaceholderContext {
        PlaceholderContext {
            chunk_keys: k,
            timekey,
            zone: Zone::utc(),
        }
    }

    fn enc(v: serde_json::Value) -> Bytes {
        let mut out = Vec::new();
        crate::msgpack::write_from_json(&v, &mut out);
        Bytes::from(out)
    }

    fn meta(
        timekey: Option<i64>,
        tag: Option<&str>,
        vars: &[(&str, serde_json::Value)],
    ) -> Metadata {
        Metadata {
            timekey,
            tag: tag.map(Arc::from),
            variables: vars
                .iter()
                .map(|(k, v)| (Arc::from(*k), enc(v.clone())))
                .collect(),
        }
    }

    fn id() -> ChunkId {
        ChunkId::parse_hex("53df3e4f9c6d1a2b3c4d5e6f70819203").unwrap()
    }

    fn ext(t: &str, m: &Metadata, c: &PlaceholderContext) -> Result<String, PlaceholderError> {
        extract(t, m, &id(), c)
    }

    fn unrecoverable(r: Result<String, PlaceholderError>) -> String {
        match r {
            Err(PlaceholderError::Unrecoverable(m)) => m,
            Ok(s) => panic!("expected an error, got {s}"),
        }
    }

    #[test]
    fn scenario_37_time_only() {
        let c = ctx(keys(false, true, &[]), Some(86400));
        let m = meta(Some(DAY), None, &[]);
        assert_eq!(
            ext("/out/app.%Y%m%d_**.log", &m, &c).unwrap(),
            "/out/app.20161003_**.log"
        );
        let m2 = meta(Some(DAY + 86400), None, &[]);
        assert_eq!(
            ext("/out/app.%Y%m%d_**.log", &m2, &c).unwrap(),
            "/out/app.20161004_**.log"
        );
    }

    #[test]
    fn timekey_in_zone_and_percent_in_values() {
        // Slice start 2016-04-11 20:30 +0900 (Fluentd's test), zone +0900.
        let mut c = ctx(keys(true, true, &["key1"]), Some(1800));
        c.zone = Zone::parse("+0900").unwrap();
        let m = meta(
            Some(1460374200),
            Some("a%Y.b"),
            &[("key1", serde_json::json!("v%d"))],
        );
        assert_eq!(
            ext("/p/%Y/%m/%d/%H-%M/${tag}/${key1}/%%/%Q", &m, &c).unwrap(),
            "/p/2016/04/11/20-30/a%Y.b/v%d/%/%Q"
        );
    }

    #[test]
    fn scenario_40_tag_parts() {
        let c = ctx(keys(true, true, &[]), Some(86400));
        let m = meta(Some(DAY), Some("a.b.c"), &[]);
        assert_eq!(
            ext(
                "/out/${tag[0]}/${tag[-1]}/${tag[3]}/x.%Y%m%d_**.log",
                &m,
                &c
            )
            .unwrap(),
            "/out/a/c//x.20161003_**.log"
        );
        assert_eq!(
            ext("${tag[-3]}|${tag[-4]}|${tag[1]}|${tag[01]}|${tag[-0]}|${tag[99999999999999999999]}", &m, &c).unwrap(),
            "a||b|||"
        );
        // Ruby's split drops trailing empty parts.
        let m = meta(Some(DAY), Some("a..b."), &[]);
        assert_eq!(
            ext("${tag[1]}|${tag[2]}|${tag[-1]}|${tag[3]}", &m, &c).unwrap(),
            "|b|b|"
        );
    }

    #[test]
    fn scenario_42_nothing_configured_or_only_tag() {
        let tmpl = "/mypath/%Y/%m/%d/${tag}/${tag[1]}/${tag[2]}/${key1}/${key2}/tail";
        let m = meta(
            Some(1460374200),
            Some("fluentd.test.output"),
            &[("key1", serde_json::json!("value1"))],
        );
        // Metadata carries values, but no chunk key is configured: nothing is replaced.
        assert_eq!(
            ext(tmpl, &m, &ctx(keys(false, false, &[]), None)).unwrap(),
            tmpl
        );
        // Empty metadata (no chunk keys): the same.
        assert_eq!(
            ext(
                tmpl,
                &Metadata::default(),
                &ctx(keys(false, false, &[]), None)
            )
            .unwrap(),
            tmpl
        );
        let only_tag = ctx(keys(true, false, &[]), None);
        let m = meta(None, Some("fluentd.test.output"), &[]);
        assert_eq!(
            ext(tmpl, &m, &only_tag).unwrap(),
            "/mypath/%Y/%m/%d/fluentd.test.output/test/output/${key1}/${key2}/tail"
        );
        // Only record keys: ${tag} stays, known keys expand, unknown ones become empty.
        let k = ctx(keys(false, false, &["key1", "key2"]), None);
        let m = meta(
            None,
            None,
            &[
                ("key1", serde_json::json!("value1")),
                ("key2", serde_json::json!("value2")),
            ],
        );
        assert_eq!(
            ext(
                "/mypath/%Y/${tag}/${tag[1]}/${key1}/${key2}/${key3}/tail",
                &m,
                &k
            )
            .unwrap(),
            "/mypath/%Y/${tag}/${tag[1]}/value1/value2//tail"
        );
    }

    #[test]
    fn scenario_45_record_tag_key() {
        let c = ctx(keys(true, true, &["$.tag"]), Some(86400));
        let t = "/out/${tag}/${$.tag}/x.%Y%m%d_**.log";
        let m = meta(
            Some(DAY),
            Some("ev.tag"),
            &[("$.tag", serde_json::json!("rec-tag"))],
        );
        assert_eq!(
            ext(t, &m, &c).unwrap(),
            "/out/ev.tag/rec-tag/x.20161003_**.log"
        );
        let m = meta(
            Some(DAY),
            Some("ev.tag"),
            &[("$.tag", serde_json::json!(null))],
        );
        assert_eq!(ext(t, &m, &c).unwrap(), "/out/ev.tag//x.20161003_**.log");
        let m = meta(
            Some(DAY),
            Some("ev.tag"),
            &[("$.tag", serde_json::json!(80))],
        );
        assert_eq!(ext(t, &m, &c).unwrap(), "/out/ev.tag/80/x.20161003_**.log");
    }

    #[test]
    fn chunk_id_everywhere() {
        let hex = id().to_string();
        assert_eq!(
            ext(
                "/p/${chunk_id}/${chunk_id}",
                &Metadata::default(),
                &ctx(keys(false, false, &[]), None)
            )
            .unwrap(),
            format!("/p/{hex}/{hex}")
        );
        let c = ctx(keys(false, true, &["k"]), Some(86400));
        let m = meta(Some(DAY), None, &[("k", serde_json::json!("v"))]);
        assert_eq!(
            ext("/p/${k}.${chunk_id}.%Y", &m, &c).unwrap(),
            format!("/p/v.{hex}.2016")
        );
    }

    #[test]
    fn scenario_54_tag_traversal() {
        let c = ctx(keys(true, false, &[]), None);
        let t = "/out/logs/${tag}_**.log";
        assert_eq!(
            unrecoverable(ext(t, &meta(None, Some("../evil"), &[]), &c)),
            "Invalid path component detected in tag: ../evil"
        );
        assert_eq!(
            ext(t, &meta(None, Some("ok.tag"), &[]), &c).unwrap(),
            "/out/logs/ok.tag_**.log"
        );
        for bad in ["..\\Windows\\System32", "/etc/passwd", "\\Windows", "a\n/b"] {
            let m = meta(None, Some(bad), &[]);
            assert_eq!(
                unrecoverable(ext("/d/${tag[0]}/log", &m, &c)),
                format!("Invalid path component detected in tag: {bad}")
            );
        }
        for good in ["app.web", "app/web", "my_tag-123", "app..web/log"] {
            assert_eq!(
                ext("/d/${tag}/log", &meta(None, Some(good), &[]), &c).unwrap(),
                format!("/d/{good}/log")
            );
        }
        // Not used in the template: not checked.
        assert_eq!(
            ext("/d/static/log", &meta(None, Some("../etc/passwd"), &[]), &c).unwrap(),
            "/d/static/log"
        );
    }

    #[test]
    fn scenario_55_value_traversal() {
        let c = ctx(keys(false, true, &["svc"]), Some(86400));
        let t = "/out/${svc}/x.%Y%m%d_**.log";
        assert_eq!(
            unrecoverable(ext(
                t,
                &meta(Some(DAY), None, &[("svc", serde_json::json!("../etc"))]),
                &c
            )),
            "Invalid path component detected in ${svc}: ../etc"
        );
        assert_eq!(
            ext(
                t,
                &meta(Some(DAY), None, &[("svc", serde_json::json!("ok"))]),
                &c
            )
            .unwrap(),
            "/out/ok/x.20161003_**.log"
        );
        // Values that are harmless one by one but climb together.
        let c = ctx(keys(true, false, &["dot", "dotslash", "file"]), None);
        for ds in ["./", ".\\"] {
            let m = meta(
                None,
                Some("app.web"),
                &[
                    ("dot", serde_json::json!(".")),
                    ("dotslash", serde_json::json!(ds)),
                    ("file", serde_json::json!("safe.log")),
                ],
            );
            assert_eq!(
                unrecoverable(ext("/data/${dot}${dotslash}${file}", &m, &c)),
                format!("Invalid path component detected, replaced to: /data/.{ds}safe.log")
            );
        }
        // `../` already in the template is not counted against the values.
        let c = ctx(keys(false, false, &["val1", "val2", "val3"]), None);
        let m = meta(
            None,
            None,
            &[
                ("val1", serde_json::json!("safe")),
                ("val2", serde_json::json!(".")),
            ],
        );
        assert_eq!(
            ext("../data/${val1}${val2}log", &m, &c).unwrap(),
            "../data/safe.log"
        );
    }

    #[test]
    fn values_are_not_reinterpreted() {
        let c = ctx(keys(true, false, &["k"]), None);
        let m = meta(None, Some("${k}"), &[("k", serde_json::json!("${tag}"))]);
        assert_eq!(ext("/d/${tag}/${k}", &m, &c).unwrap(), "/d/${k}/${tag}");
    }

    #[test]
    fn finest_time_unit() {
        assert_eq!(time_unit("x.%Y%m%d_**.log").map(|u| u.0), Some(86400));
        assert_eq!(time_unit("%Y%m%d%H").map(|u| u.1), Some("hour"));
        assert_eq!(time_unit("%H%M").map(|u| u.2), Some("%M"));
        assert_eq!(time_unit("%s").map(|u| u.0), Some(1));
        assert_eq!(time_unit("%Y%m"), None);
        assert_eq!(time_unit("/plain/${tag}"), None);
        assert_eq!(time_unit("%%d"), None);
    }

    #[test]
    fn validation_scenarios_4_6_7_9_10() {
        let day = Some(86400);
        // 4: no <buffer>: time key, 1d.
        assert_eq!(
            validate("path", "/data/o/${tag}/x.%Y%m%d_**.log", &keys(false, true, &[]), day).unwrap_err(),
            "Parameter 'path: /data/o/${tag}/x.%Y%m%d_**.log' has tag placeholders, but chunk key 'tag' is not configured"
        );
        // 6
        assert_eq!(
            validate("path", "/data/o/${tag}/x.%Y%m%d_**.log", &keys(true, true, &["host"]), day).unwrap_err(),
            "Parameter 'path: /data/o/${tag}/x.%Y%m%d_**.log' doesn't have enough placeholders for keys host"
        );
        // 7
        assert_eq!(
            validate("path", "/data/o/${time}/x.%Y%m%d_**.log", &keys(false, true, &[]), day).unwrap_err(),
            "Parameter 'path: /data/o/${time}/x.%Y%m%d_**.log' has placeholders, but chunk keys doesn't have keys time"
        );
        // 9
        assert_eq!(
            validate("path", "/data/o/${tag[0]}/%Y%m%d%H_**.log", &keys(false, true, &[]), Some(3600)).unwrap_err(),
            "Parameter 'path: /data/o/${tag[0]}/%Y%m%d%H_**.log' has tag placeholders, but chunk key 'tag' is not configured"
        );
        // 10
        assert_eq!(
            validate(
                "path",
                "/data/o/x.%Y%m%d%H_**.log",
                &keys(true, true, &[]),
                Some(3600)
            )
            .unwrap_err(),
            "Parameter 'path: /data/o/x.%Y%m%d%H_**.log' doesn't have tag placeholder"
        );
    }

    #[test]
    fn validation_time_rules() {
        let k = keys(false, true, &[]);
        assert_eq!(
            validate("path", "/p/file.log", &k, Some(60)).unwrap_err(),
            "Parameter 'path: /p/file.log' doesn't have timestamp placeholders for timekey 60"
        );
        assert_eq!(
            validate("path", "/p/file.%Y%m%d.log", &k, Some(3600)).unwrap_err(),
            "Parameter 'path: /p/file.%Y%m%d.log' doesn't have timestamp placeholder for day('%d') for timekey 3600"
        );
        assert_eq!(
            validate("path", "/p/%Y%m%d%H%M", &k, Some(30)).unwrap_err(),
            "Parameter 'path: /p/%Y%m%d%H%M' doesn't have timestamp placeholder for minute('%M') for timekey 30"
        );
        assert!(validate("path", "/p/%Y%m%d%H", &k, Some(7200)).is_ok());
        // A coarser-only template counts as no placeholder.
        assert_eq!(
            validate("path", "/p/%Y%m", &k, Some(86400)).unwrap_err(),
            "Parameter 'path: /p/%Y%m' doesn't have timestamp placeholders for timekey 86400"
        );
        // timekey without the time key does not count.
        assert_eq!(
            validate("path", "/my/path/file.%Y-%m-%d.log", &keys(false, false, &[]), Some(86400)).unwrap_err(),
            "Parameter 'path: /my/path/file.%Y-%m-%d.log' has timestamp placeholders, but chunk key 'time' is not configured"
        );
        assert!(validate("path", "/p/file.log", &keys(false, false, &[]), None).is_ok());
    }

    #[test]
    fn validation_key_lists_sorted() {
        let k = keys(true, false, &["zeta", "alpha", "$.k8s.ns"]);
        assert_eq!(
            validate("path", "/p/${tag}", &k, None).unwrap_err(),
            "Parameter 'path: /p/${tag}' doesn't have enough placeholders for keys $.k8s.ns,alpha,zeta"
        );
        assert_eq!(
            validate("path", "/p/${tag}/${zeta}/${alpha}/${$.k8s.ns}/${b}/${a}/${chunk_id}", &k, None).unwrap_err(),
            "Parameter 'path: /p/${tag}/${zeta}/${alpha}/${$.k8s.ns}/${b}/${a}/${chunk_id}' has placeholders, but chunk keys doesn't have keys a,b"
        );
        assert!(validate(
            "path",
            "/p/${tag[1]}/${zeta}/${alpha}/${$.k8s.ns}",
            &k,
            None
        )
        .is_ok());
    }

    #[test]
    fn placeholder_scanning() {
        assert_eq!(
            tag_placeholders("${tag}/${tag[2]}/${tag[-1]}/${tags}/${tag[x]}"),
            vec![-1, -1, 2]
        );
        assert_eq!(
            key_placeholders("${b}${a}${tag}${chunk_id}${a${c}${}"),
            vec!["a", "b", "c"]
        );
    }
}
