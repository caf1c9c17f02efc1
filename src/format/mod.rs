//! Formatters: how an event becomes the bytes an output writes (Fluentd's `<format>` section).
//!
//! out_file, out_s3 and stdout do not write records themselves: they hand each event to a
//! formatter chosen by `<format @type …>`, and users rely on the exact bytes (log shippers and
//! parsers downstream read these files). sluice implements Fluentd's built-in formatters with
//! their parameters and defaults:
//!
//! | type | line |
//! |---|---|
//! | `out_file` | `<time>\t<tag>\t<record JSON>\n` (time ISO-8601 by default) |
//! | `json` | `<record JSON>\n` |
//! | `ltsv` | `k1:v1\tk2:v2\n` |
//! | `single_value` | `<record[message_key]>\n` |
//! | `csv` | `"v1","v2"\n` for the configured `fields` |
//! | `tsv` | `v1\tv2\n` for the configured `keys` |
//! | `msgpack` | the record as MessagePack |
//! | `stdout` | `<time> <tag>: <record as output_type>\n` |
//!
//! Every formatter writes straight from the record's MessagePack bytes (no decoded tree), and
//! accepts Fluentd's time parameters (`time_type`, `time_format`, `localtime`, `utc`,
//! `timezone`) whether it uses them or not, as Fluentd's do. Without a `<format>` section the
//! v0.12-style parameters Fluentd's compatibility layer moves into one (`format`, `delimiter`,
//! `utc`, `output_tag`, …) are read from the output's own section.
//!
//! [`inject`] is the `<inject>` section (adding time, tag and host name to records);
//! [`time`] formats times as Ruby does.

pub mod inject;
pub mod time;

use std::fmt::Debug;

use crate::config::{ConfigError, Element, Param, Pos};
use crate::event::EventTime;
use crate::msgpack::{self, Kind};
use crate::record_accessor::{value_to_string, RecordAccessor};

use self::time::{zone_mode, TimeFormatter, TimeParams, ZoneMode};

/// Turns one event into bytes. Implementations are configured once and shared by flush
/// threads, hence `Send + Sync`.
pub trait Formatter: Send + Sync + Debug {
    /// Appends the formatted event to `out`. `record` is one encoded MessagePack value
    /// (normally a map). Formatting cannot fail: a value that cannot be shown is written as
    /// empty (or `null` in JSON).
    fn format(&self, tag: &str, time: EventTime, record: &[u8], out: &mut Vec<u8>);
}

/// The formatter types sluice supports, for messages.
pub const TYPES: &[&str] = &[
    "out_file",
    "json",
    "ltsv",
    "single_value",
    "csv",
    "tsv",
    "msgpack",
    "stdout",
];

/// Output-level parameters that Fluentd's compatibility layer moves into a `<format>` section
/// when the output has none (`compat_parameters` FORMATTER_PARAMS; `format` becomes `@type`).
const LEGACY_KEYS: &[&str] = &[
    "delimiter",
    "force_quotes",
    "keys",
    "fields",
    "json_parser",
    "label_delimiter",
    "output_time",
    "output_tag",
    "localtime",
    "utc",
    "timezone",
    "message_key",
    "add_newline",
    "output_type",
];

/// Builds the formatter of an output.
///
/// `section` is the output's `<format>` section, if any; its `@type` (default
/// `default_type`) picks the formatter. `legacy_parent` is the output's own section: when
/// there is no `<format>`, the parameters Fluentd's compatibility layer accepts there
/// (`format`, `delimiter`, `utc`, `localtime`, `timezone`, `output_tag`, `output_time`,
/// `add_newline`, `message_key`, `fields`, `keys`, `force_quotes`, `label_delimiter`,
/// `json_parser`, `output_type`, and `time_as_epoch`) are read from it instead.
pub fn build(
    section: Option<&Element>,
    default_type: &str,
    legacy_parent: &Element,
) -> Result<Box<dyn Formatter>, ConfigError> {
    let params = Params {
        section,
        legacy: legacy_parent,
    };
    let (type_name, type_pos) = match section {
        Some(s) => match s.param("@type") {
            Some(p) => (p.value.clone(), p.value_pos.clone()),
            None => (default_type.to_string(), s.pos.clone()),
        },
        None => match legacy_parent.param("format") {
            Some(p) => (p.value.clone(), p.value_pos.clone()),
            None => (default_type.to_string(), legacy_parent.pos.clone()),
        },
    };
    build_typed(params, type_name.trim(), &type_pos)
}

fn build_typed(
    p: Params<'_>,
    type_name: &str,
    type_pos: &Pos,
) -> Result<Box<dyn Formatter>, ConfigError> {
    Ok(match type_name {
        "out_file" => Box::new(OutFile::configure(p)?),
        "json" => Box::new(Json::configure(p)?),
        "ltsv" => Box::new(Ltsv::configure(p)?),
        "single_value" => Box::new(SingleValue::configure(p)?),
        "csv" => Box::new(Csv::configure(p)?),
        "tsv" => Box::new(Tsv::configure(p)?),
        "msgpack" => {
            p.time_params("string")?;
            Box::new(MessagePack)
        }
        "stdout" => Box::new(Stdout::configure(p)?),
        other => {
            return Err(ConfigError::at(
                type_pos,
                format!(
                    "Unknown formatter plugin '{other}'. Supported formatter plugins: {}",
                    TYPES.join(", ")
                ),
            ))
        }
    })
}

/// Where a formatter's parameters come from: its `<format>` section, or (without one) the
/// output section for the keys Fluentd's compatibility layer carries over.
#[derive(Clone, Copy)]
struct Params<'a> {
    section: Option<&'a Element>,
    legacy: &'a Element,
}

impl<'a> Params<'a> {
    fn source(&self, key: &str) -> Option<&'a Element> {
        match self.section {
            Some(s) => Some(s),
            None => LEGACY_KEYS.contains(&key).then_some(self.legacy),
        }
    }

    /// Where errors about the section as a whole point.
    fn pos(&self) -> &'a Pos {
        match self.section {
            Some(s) => &s.pos,
            None => &self.legacy.pos,
        }
    }

    fn has(&self, key: &str) -> bool {
        self.source(key).is_some_and(|e| e.has(key))
    }

    fn string(&self, key: &str) -> Option<String> {
        self.source(key)?.string(key)
    }

    fn param(&self, key: &str) -> Option<&'a Param> {
        self.source(key)?.param(key)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.source(key) {
            Some(e) => e.bool(key),
            None => Ok(None),
        }
    }

    fn array(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.source(key) {
            Some(e) => e.array(key),
            None => Ok(None),
        }
    }

    fn enumeration(
        &self,
        key: &str,
        options: &[&'static str],
    ) -> Result<Option<&'static str>, ConfigError> {
        match self.source(key) {
            Some(e) => e.enumeration(key, options),
            None => Ok(None),
        }
    }

    /// `newline` (`lf` or `crlf`, Fluentd's Newline mixin).
    fn newline(&self) -> Result<&'static str, ConfigError> {
        Ok(match self.enumeration("newline", &["lf", "crlf"])? {
            Some("crlf") => "\r\n",
            _ => "\n",
        })
    }

    /// `add_newline` (default true) combined with `newline`.
    fn line_end(&self) -> Result<&'static str, ConfigError> {
        let nl = self.newline()?;
        Ok(if self.bool("add_newline")?.unwrap_or(true) {
            nl
        } else {
            ""
        })
    }

    /// Fluentd's TimeMixin parameters, with its rules: `localtime` wins over `utc`, both given
    /// and agreeing is an error, `timezone` wins over both.
    fn time_params(&self, default_type: &'static str) -> Result<TimeParams, ConfigError> {
        let mut time_type = self
            .enumeration("time_type", &["string", "unixtime", "float", "mixed"])?
            .unwrap_or(default_type);
        if self.section.is_none()
            && (self.legacy.has("format") || LEGACY_KEYS.iter().any(|k| self.legacy.has(k)))
            && self.legacy.bool("time_as_epoch")? == Some(true)
        {
            time_type = "unixtime";
        }
        let time_format = self.string("time_format");
        let fallbacks = self.array("time_format_fallbacks")?.unwrap_or_default();
        let has_localtime = self.has("localtime");
        let has_utc = self.has("utc");
        let utc = self.bool("utc")?.unwrap_or(false);
        let localtime = match self.bool("localtime")? {
            Some(v) => v,
            None if has_utc => !utc,
            None => true,
        };
        if has_localtime && has_utc && localtime == utc {
            let pos = self
                .source("utc")
                .and_then(|e| e.peek("utc"))
                .map(|p| p.key_pos.clone())
                .unwrap_or_else(|| self.pos().clone());
            return Err(ConfigError::at(
                &pos,
                "both of utc and localtime are specified, use only one of them",
            ));
        }
        if time_type == "mixed"
            && self.has("time_type")
            && time_format.is_none()
            && fallbacks.is_empty()
        {
            let pos = self
                .source("time_type")
                .and_then(|e| e.peek("time_type"))
                .map(|p| p.value_pos.clone())
                .unwrap_or_else(|| self.pos().clone());
            return Err(ConfigError::at(
                &pos,
                "time_type is :mixed but time_format and time_format_fallbacks is empty.",
            ));
        }
        let tz = self.param("timezone");
        let zone = zone_mode(
            localtime && tz.is_none() && !utc,
            false,
            tz.map(|p| (p.value.as_str(), &p.value_pos)),
        )?;
        Ok(TimeParams {
            time_type,
            time_format,
            zone,
        })
    }
}

/// Appends the record as JSON; a record that is not valid MessagePack becomes `null`.
fn write_record_json(record: &[u8], out: &mut Vec<u8>) {
    let mark = out.len();
    if msgpack::write_json(record, out).is_err() {
        out.truncate(mark);
        out.extend_from_slice(b"null");
    }
}

/// The pairs of a record map; anything that is not a map has none.
fn entries(record: &[u8]) -> Vec<msgpack::MapEntry<'_>> {
    msgpack::map_entries(record).unwrap_or_default()
}

/// Ruby's `record[key].to_s` (missing or nil: empty).
fn field_to_s(record: &[u8], key: &str) -> String {
    match msgpack::map_get(record, key) {
        Ok(Some(v)) => value_to_string(v),
        _ => String::new(),
    }
}

/// `@type out_file`: `<time><delimiter><tag><delimiter><record JSON><newline>` — the default
/// of out_file, whose files users parse.
#[derive(Debug)]
pub struct OutFile {
    time: Option<TimeFormatter>,
    output_tag: bool,
    delimiter: String,
    newline: &'static str,
}

impl OutFile {
    fn configure(p: Params<'_>) -> Result<OutFile, ConfigError> {
        let output_time = p.bool("output_time")?.unwrap_or(true);
        let output_tag = p.bool("output_tag")?.unwrap_or(true);
        let delimiter = match p.string("delimiter") {
            None => "\t".to_string(),
            Some(d) => match d.to_ascii_uppercase().as_str() {
                "SPACE" => " ".to_string(),
                "COMMA" => ",".to_string(),
                "TAB" | "\\T" | "" => "\t".to_string(),
                _ => d,
            },
        };
        let newline = p.newline()?;
        let time = p.time_params("string")?.formatter();
        Ok(OutFile {
            time: output_time.then_some(time),
            output_tag,
            delimiter,
            newline,
        })
    }
}

impl Formatter for OutFile {
    fn format(&self, tag: &str, time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        if let Some(tf) = &self.time {
            tf.write(time, out);
            out.extend_from_slice(self.delimiter.as_bytes());
        }
        if self.output_tag {
            out.extend_from_slice(tag.as_bytes());
            out.extend_from_slice(self.delimiter.as_bytes());
        }
        write_record_json(record, out);
        out.extend_from_slice(self.newline.as_bytes());
    }
}

/// `@type json`: the record as one JSON object per line (`add_newline`, `newline`;
/// `json_parser` is accepted and makes no difference).
#[derive(Debug)]
pub struct Json {
    line_end: &'static str,
}

impl Json {
    fn configure(p: Params<'_>) -> Result<Json, ConfigError> {
        let _ = p.string("json_parser");
        let line_end = p.line_end()?;
        p.time_params("string")?;
        Ok(Json { line_end })
    }
}

impl Formatter for Json {
    fn format(&self, _tag: &str, _time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        write_record_json(record, out);
        out.extend_from_slice(self.line_end.as_bytes());
    }
}

/// `@type ltsv`: `label<label_delimiter>value` pairs joined by `delimiter`; a value's own
/// delimiter occurrences are replaced by `replacement`.
#[derive(Debug)]
pub struct Ltsv {
    delimiter: String,
    label_delimiter: String,
    replacement: String,
    line_end: &'static str,
}

impl Ltsv {
    fn configure(p: Params<'_>) -> Result<Ltsv, ConfigError> {
        let delimiter = p.string("delimiter").unwrap_or_else(|| "\t".into());
        let label_delimiter = p.string("label_delimiter").unwrap_or_else(|| ":".into());
        let replacement = p.string("replacement").unwrap_or_else(|| " ".into());
        let line_end = p.line_end()?;
        p.time_params("string")?;
        Ok(Ltsv {
            delimiter,
            label_delimiter,
            replacement,
            line_end,
        })
    }
}

impl Formatter for Ltsv {
    fn format(&self, _tag: &str, _time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        for e in entries(record) {
            if out.len() > start {
                out.extend_from_slice(self.delimiter.as_bytes());
            }
            out.extend_from_slice(value_to_string(e.key).as_bytes());
            out.extend_from_slice(self.label_delimiter.as_bytes());
            let v = value_to_string(e.value);
            let v = v.replace(self.delimiter.as_str(), &self.replacement);
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(self.line_end.as_bytes());
    }
}

/// `@type single_value`: one field's text (`message_key`, default `message`) per line.
#[derive(Debug)]
pub struct SingleValue {
    message_key: String,
    line_end: &'static str,
}

impl SingleValue {
    fn configure(p: Params<'_>) -> Result<SingleValue, ConfigError> {
        let message_key = p.string("message_key").unwrap_or_else(|| "message".into());
        let line_end = p.line_end()?;
        p.time_params("string")?;
        Ok(SingleValue {
            message_key,
            line_end,
        })
    }
}

impl Formatter for SingleValue {
    fn format(&self, _tag: &str, _time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(field_to_s(record, &self.message_key).as_bytes());
        out.extend_from_slice(self.line_end.as_bytes());
    }
}

/// `@type csv`: the configured `fields` (record_accessor syntax) as one CSV row, quoted as
/// Ruby's CSV writer quotes (`force_quotes` default true).
#[derive(Debug)]
pub struct Csv {
    fields: Vec<RecordAccessor>,
    delimiter: String,
    force_quotes: bool,
    row_sep: &'static str,
}

impl Csv {
    fn configure(p: Params<'_>) -> Result<Csv, ConfigError> {
        let delimiter = match p.string("delimiter") {
            None => ",".to_string(),
            Some(d) if d == "\\t" || d == "TAB" => "\t".to_string(),
            Some(d) => d,
        };
        let force_quotes = p.bool("force_quotes")?.unwrap_or(true);
        let row_sep = if p.bool("add_newline")?.unwrap_or(true) {
            "\n"
        } else {
            ""
        };
        let fields_pos = p
            .source("fields")
            .and_then(|e| e.peek("fields"))
            .map(|f| f.value_pos.clone());
        let fields = p
            .array("fields")?
            .ok_or_else(|| ConfigError::at(p.pos(), "'fields' parameter is required"))?;
        let fields_pos = fields_pos.unwrap_or_else(|| p.pos().clone());
        let fields: Vec<String> = fields.into_iter().filter(|f| !f.is_empty()).collect();
        if fields.is_empty() {
            return Err(ConfigError::at(
                &fields_pos,
                "empty value is specified in fields parameter",
            ));
        }
        let fields = fields
            .iter()
            .map(|f| {
                RecordAccessor::parse(f)
                    .map_err(|e| ConfigError::at(&fields_pos, format!("fields: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        p.time_params("string")?;
        Ok(Csv {
            fields,
            delimiter,
            force_quotes,
            row_sep,
        })
    }

    fn write_field(&self, value: Option<&[u8]>, out: &mut Vec<u8>) {
        let nil = value.is_none_or(|v| matches!(msgpack::head(v, 0), Ok((Kind::Nil, _))));
        if nil && !self.force_quotes {
            return;
        }
        let s = value.map(value_to_string).unwrap_or_default();
        let quote = self.force_quotes
            || s.is_empty()
            || s.chars()
                .any(|c| c == '\r' || c == '\n' || c == '"' || self.delimiter.contains(c));
        if quote {
            out.push(b'"');
            out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(s.as_bytes());
        }
    }
}

impl Formatter for Csv {
    fn format(&self, _tag: &str, _time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(self.delimiter.as_bytes());
            }
            // A path that does not fit the record (Fluentd raises) is written as empty.
            let v = f.get(record).ok().flatten();
            self.write_field(v, out);
        }
        out.extend_from_slice(self.row_sep.as_bytes());
    }
}

/// `@type tsv`: the configured `keys` joined by `delimiter` (no quoting, as Fluentd's).
#[derive(Debug)]
pub struct Tsv {
    keys: Vec<String>,
    delimiter: String,
    line_end: &'static str,
}

impl Tsv {
    fn configure(p: Params<'_>) -> Result<Tsv, ConfigError> {
        let keys = p
            .array("keys")?
            .ok_or_else(|| ConfigError::at(p.pos(), "'keys' parameter is required"))?;
        let delimiter = p.string("delimiter").unwrap_or_else(|| "\t".into());
        let line_end = p.line_end()?;
        p.time_params("string")?;
        Ok(Tsv {
            keys,
            delimiter,
            line_end,
        })
    }
}

impl Formatter for Tsv {
    fn format(&self, _tag: &str, _time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        for (i, k) in self.keys.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(self.delimiter.as_bytes());
            }
            out.extend_from_slice(field_to_s(record, k).as_bytes());
        }
        out.extend_from_slice(self.line_end.as_bytes());
    }
}

/// `@type msgpack`: the record's MessagePack bytes as they are (no separator).
#[derive(Debug)]
pub struct MessagePack;

impl Formatter for MessagePack {
    fn format(&self, _tag: &str, _time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(record);
    }
}

/// `@type stdout`: `<time> <tag>: <record formatted by output_type>\n`, time as
/// `%Y-%m-%d %H:%M:%S.%N %z` (or `time_format`).
#[derive(Debug)]
pub struct Stdout {
    zone: ZoneMode,
    time_format: String,
    sub: Box<dyn Formatter>,
}

/// Fluentd's stdout formatter time format.
pub const STDOUT_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S.%N %z";

impl Stdout {
    fn configure(p: Params<'_>) -> Result<Stdout, ConfigError> {
        let tp = p.time_params("string")?;
        let (output_type, pos) = match p.param("output_type") {
            Some(param) => (param.value.trim().to_string(), param.value_pos.clone()),
            None => ("json".to_string(), p.pos().clone()),
        };
        if output_type == "stdout" {
            return Err(ConfigError::at(
                &pos,
                "output_type 'stdout' cannot be used in the stdout formatter",
            ));
        }
        let sub = build_typed(p, &output_type, &pos)?;
        Ok(Stdout {
            zone: tp.zone,
            time_format: tp
                .time_format
                .unwrap_or_else(|| STDOUT_TIME_FORMAT.to_string()),
            sub,
        })
    }
}

impl Formatter for Stdout {
    fn format(&self, tag: &str, time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(self.zone.strftime(time, &self.time_format).as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b": ");
        let mark = out.len();
        self.sub.format(tag, time, record, out);
        // Ruby's chomp: one trailing "\r\n", "\n" or "\r".
        if out.len() > mark && out.ends_with(b"\n") {
            out.pop();
            if out.len() > mark && out.ends_with(b"\r") {
                out.pop();
            }
        } else if out.len() > mark && out.ends_with(b"\r") {
            out.pop();
        }
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::parse_str;
    use serde_json::json;

    /// 2016-10-03 23:58:09 UTC.
    const T: EventTime = EventTime::new(1475539089, 0);

    fn root(conf: &str) -> Element {
        parse_str(conf, "t.conf", ".".into()).unwrap()
    }

    fn rec(v: serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        msgpack::write_from_json(&v, &mut out);
        out
    }

    /// Builds from `<match>` body `body` and formats one event.
    fn fmt_with(
        body: &str,
        default_type: &str,
        tag: &str,
        t: EventTime,
        r: serde_json::Value,
    ) -> String {
        let root = root(&format!("<match **>\n{body}\n</match>\n"));
        let m = &root.elements[0];
        let section = m.sections("format").next();
        let f = build(section, default_type, m).unwrap();
        let mut out = Vec::new();
        f.format(tag, t, &rec(r), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn err(body: &str, default_type: &str) -> String {
        let root = root(&format!("<match **>\n{body}\n</match>\n"));
        let m = &root.elements[0];
        let section = m.sections("format").next();
        build(section, default_type, m).unwrap_err().message
    }

    #[test]
    fn out_file_scenarios_37_38() {
        // Scenario 37 under TZ=UTC: local time printed with +00:00. The process zone of the
        // test runner is unknown, so pin the zone the way `timezone` would for local time.
        let line = fmt_with(
            "<format>\ntimezone Etc/UTC\n</format>",
            "out_file",
            "my.tag",
            T,
            json!({"a": 1}),
        );
        assert_eq!(line, "2016-10-03T23:58:09+00:00\tmy.tag\t{\"a\":1}\n");
        assert_eq!(line.len(), 41);
        // Scenario 38: `utc` at output level (no <format>) gives the Z suffix.
        assert_eq!(
            fmt_with("utc", "out_file", "my.tag", T, json!({"a": 1})),
            "2016-10-03T23:58:09Z\tmy.tag\t{\"a\":1}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\nlocaltime false\n</format>",
                "out_file",
                "my.tag",
                T,
                json!({"a": 1})
            ),
            "2016-10-03T23:58:09Z\tmy.tag\t{\"a\":1}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\ntimezone +09:00\n</format>",
                "out_file",
                "t",
                T,
                json!({})
            ),
            "2016-10-04T08:58:09+09:00\tt\t{}\n"
        );
    }

    #[test]
    fn out_file_local_time_follows_the_process_zone() {
        let line = fmt_with("", "out_file", "t", T, json!({"n": 1}));
        let expected = ZoneMode::local().iso8601(T);
        assert_eq!(line, format!("{expected}\tt\t{{\"n\":1}}\n"));
    }

    #[test]
    fn out_file_parameters() {
        let r = json!({"a": "x"});
        assert_eq!(
            fmt_with(
                "<format>\nutc\ndelimiter COMMA\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "2016-10-03T23:58:09Z,t,{\"a\":\"x\"}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\nutc\ndelimiter space\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "2016-10-03T23:58:09Z t {\"a\":\"x\"}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\nutc\ndelimiter |\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "2016-10-03T23:58:09Z|t|{\"a\":\"x\"}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\noutput_time false\noutput_tag false\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "{\"a\":\"x\"}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\nutc\ntime_format %Y%m%d %H:%M:%S.%3N\nnewline crlf\n</format>",
                "out_file",
                "t",
                EventTime::new(1475539089, 123_456_789),
                r.clone()
            ),
            "20161003 23:58:09.123\tt\t{\"a\":\"x\"}\r\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\ntime_type unixtime\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "1475539089\tt\t{\"a\":\"x\"}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\ntime_type float\n</format>",
                "out_file",
                "t",
                EventTime::new(1475539089, 5),
                r.clone()
            ),
            "1475539089.000000005\tt\t{\"a\":\"x\"}\n"
        );
        // Legacy output-level parameters, used only without <format>.
        assert_eq!(
            fmt_with(
                "utc\noutput_tag false\ndelimiter SPACE",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "2016-10-03T23:58:09Z {\"a\":\"x\"}\n"
        );
        assert_eq!(
            fmt_with("format json", "out_file", "t", T, r.clone()),
            "{\"a\":\"x\"}\n"
        );
        assert_eq!(
            fmt_with("utc\ntime_as_epoch true", "out_file", "t", T, r.clone()),
            "1475539089\tt\t{\"a\":\"x\"}\n"
        );
    }

    #[test]
    fn time_parameter_errors() {
        // Fluentd rejects both only when they contradict each other.
        for (u, l) in [("true", "true"), ("false", "false")] {
            assert_eq!(
                err(
                    &format!("<format>\nutc {u}\nlocaltime {l}\n</format>"),
                    "out_file"
                ),
                "both of utc and localtime are specified, use only one of them"
            );
        }
        assert_eq!(
            fmt_with(
                "<format>\nutc true\nlocaltime false\n</format>",
                "out_file",
                "t",
                T,
                json!({})
            ),
            "2016-10-03T23:58:09Z\tt\t{}\n"
        );
        assert_eq!(
            err("<format>\ntime_type mixed\n</format>", "out_file"),
            "time_type is :mixed but time_format and time_format_fallbacks is empty."
        );
        assert_eq!(
            err("<format>\ntimezone JST\n</format>", "out_file"),
            "Unsupported timezone 'JST'"
        );
        assert!(err("<format>\n@type nope\n</format>", "out_file")
            .starts_with("Unknown formatter plugin 'nope'"));
        assert_eq!(
            err("<format>\n@type csv\n</format>", "out_file"),
            "'fields' parameter is required"
        );
        assert_eq!(
            err("<format>\n@type csv\nfields ,\n</format>", "out_file"),
            "empty value is specified in fields parameter"
        );
        assert_eq!(
            err("<format>\n@type tsv\n</format>", "out_file"),
            "'keys' parameter is required"
        );
        assert!(err("<format>\nnewline cr\n</format>", "out_file")
            .contains("valid options are lf,crlf but got cr"));
    }

    #[test]
    fn json_formatter() {
        let r = json!({"a": 1, "b": [true, null], "s": "q\"\n"});
        assert_eq!(
            fmt_with(
                "<format>\n@type json\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "{\"a\":1,\"b\":[true,null],\"s\":\"q\\\"\\n\"}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\n@type json\nadd_newline false\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "{\"a\":1,\"b\":[true,null],\"s\":\"q\\\"\\n\"}"
        );
        assert_eq!(fmt_with("", "json", "t", T, json!({})), "{}\n");
        // Not MessagePack at all: null rather than half a line.
        let f = build(None, "json", &root("<match **>\n</match>\n").elements[0]).unwrap();
        let mut out = Vec::new();
        f.format("t", T, &[0x82, 0xa1], &mut out);
        assert_eq!(out, b"null\n");
    }

    #[test]
    fn ltsv_formatter() {
        let r = json!({"a": "x\ty", "n": 1, "z": null, "m": {"k": 1}});
        assert_eq!(
            fmt_with(
                "<format>\n@type ltsv\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "a:x y\tn:1\tz:\tm:{\"k\":1}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\n@type ltsv\ndelimiter ,\nlabel_delimiter =\nreplacement _\nadd_newline false\n</format>",
                "out_file",
                "t",
                T,
                json!({"a": "1,2", "b": 2.5})
            ),
            "a=1_2,b=2.5"
        );
    }

    #[test]
    fn single_value_formatter() {
        assert_eq!(
            fmt_with(
                "<format>\n@type single_value\n</format>",
                "out_file",
                "t",
                T,
                json!({"message": "hello", "x": 1})
            ),
            "hello\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\n@type single_value\nmessage_key x\nadd_newline false\n</format>",
                "out_file",
                "t",
                T,
                json!({"x": 1})
            ),
            "1"
        );
        assert_eq!(
            fmt_with(
                "<format>\n@type single_value\n</format>",
                "out_file",
                "t",
                T,
                json!({})
            ),
            "\n"
        );
        // Legacy: message_key and add_newline carried over from the output section.
        assert_eq!(
            fmt_with(
                "format single_value\nmessage_key x\nadd_newline false",
                "out_file",
                "t",
                T,
                json!({"x": "v"})
            ),
            "v"
        );
    }

    #[test]
    fn csv_formatter() {
        let r = json!({"a": "x", "b": "say \"hi\"", "c": null, "n": 3, "nest": {"k": "deep"}});
        assert_eq!(
            fmt_with(
                "<format>\n@type csv\nfields a,b,c,n,missing\n</format>",
                "out_file",
                "t",
                T,
                r.clone()
            ),
            "\"x\",\"say \"\"hi\"\"\",\"\",\"3\",\"\"\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\n@type csv\nfields [\"a\",\"b\",\"c\",\"n\",\"$.nest.k\",\"e\"]\nforce_quotes false\n</format>",
                "out_file",
                "t",
                T,
                json!({"a": "x,y", "b": "say \"hi\"", "c": null, "n": 3, "nest": {"k": "deep"}, "e": ""})
            ),
            "\"x,y\",\"say \"\"hi\"\"\",,3,deep,\"\"\n"
        );
        assert_eq!(
            fmt_with("<format>\n@type csv\nfields a,b\ndelimiter TAB\nforce_quotes false\nadd_newline false\n</format>", "out_file", "t", T, json!({"a": "1", "b": "2\n"})),
            "1\t\"2\n\""
        );
    }

    #[test]
    fn tsv_formatter() {
        assert_eq!(
            fmt_with(
                "<format>\n@type tsv\nkeys a,b,c\n</format>",
                "out_file",
                "t",
                T,
                json!({"a": 1, "b": "x y", "c": null})
            ),
            "1\tx y\t\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\n@type tsv\nkeys a,b\ndelimiter ,\nadd_newline false\n</format>",
                "out_file",
                "t",
                T,
                json!({"a": 1, "b": 2})
            ),
            "1,2"
        );
    }

    #[test]
    fn msgpack_formatter() {
        let r = rec(json!({"a": 1}));
        let m = root("<match **>\n<format>\n@type msgpack\n</format>\n</match>\n");
        let f = build(
            m.elements[0].sections("format").next(),
            "out_file",
            &m.elements[0],
        )
        .unwrap();
        let mut out = Vec::new();
        f.format("t", T, &r, &mut out);
        assert_eq!(out, vec![0x81, 0xa1, b'a', 0x01]);
    }

    #[test]
    fn stdout_formatter() {
        assert_eq!(
            fmt_with(
                "<format>\n@type stdout\nutc\n</format>",
                "out_file",
                "my.tag",
                EventTime::new(1475539089, 5),
                json!({"a": 1})
            ),
            "2016-10-03 23:58:09.000000005 +0000 my.tag: {\"a\":1}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\ntimezone +09:00\n</format>",
                "stdout",
                "t",
                T,
                json!({"a": 1})
            ),
            "2016-10-04 08:58:09.000000000 +0900 t: {\"a\":1}\n"
        );
        assert_eq!(
            fmt_with(
                "<format>\n@type stdout\noutput_type ltsv\nutc\n</format>",
                "out_file",
                "t",
                T,
                json!({"a": 1, "b": 2})
            ),
            "2016-10-03 23:58:09.000000000 +0000 t: a:1\tb:2\n"
        );
        assert_eq!(
            fmt_with("<format>\n@type stdout\noutput_type single_value\nnewline crlf\nutc\ntime_format %H:%M\n</format>", "out_file", "t", T, json!({"message": "m"})),
            "23:58 t: m\n"
        );
        assert!(err(
            "<format>\n@type stdout\noutput_type nope\n</format>",
            "out_file"
        )
        .starts_with("Unknown formatter plugin 'nope'"));
        assert!(err(
            "<format>\n@type stdout\noutput_type stdout\n</format>",
            "out_file"
        )
        .contains("cannot be used"));
    }

    #[test]
    fn unread_parameters_stay_unused() {
        let root =
            root("<match **>\ndelimiter ,\n<format>\n@type json\nfoo 1\n</format>\n</match>\n");
        let m = &root.elements[0];
        build(m.sections("format").next(), "out_file", m).unwrap();
        let unused: Vec<String> = m.unused().iter().map(|u| u.to_error().message).collect();
        // With a <format> section, output-level `delimiter` is not the formatter's.
        assert_eq!(unused.len(), 2, "{unused:?}");
    }
}
