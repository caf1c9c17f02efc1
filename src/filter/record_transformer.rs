//! `@type record_transformer`: adds, overwrites and removes record fields, with placeholders.
//!
//! The configuration is Fluentd's `filter_record_transformer` without Ruby (`enable_ruby` is a
//! configuration error: sluice has no Ruby interpreter). Each `<record>` parameter is a field to
//! set; its value (and its name) may hold placeholders:
//!
//! | placeholder | value |
//! |---|---|
//! | `${tag}` | the event's tag |
//! | `${tag_parts[N]}` | the N-th dot-separated part of the tag; negative N counts from the end |
//! | `${tag_prefix[N]}` | parts 0..=N joined with dots |
//! | `${tag_suffix[N]}` | parts N.. joined with dots |
//! | `${hostname}` | this machine's host name |
//! | `${time}` | the event time as Ruby's `Time#to_s` prints it in local time: `2010-05-04 03:02:01 +0000` |
//! | `${record["key"]}`, `${record['key']}`, `${key}` | the top-level field `key`, as its `to_s` |
//!
//! A value that is exactly one placeholder keeps the field's original type when
//! `auto_typecast` is true (Fluentd v1's default): `${record["count"]}` stays an integer.
//! Values written as JSON objects or arrays keep their structure, with placeholders expanded
//! inside strings and object keys. `__UPPER__` tokens are placeholders too, as in Fluentd, and
//! since none is defined they expand to nothing.
//!
//! Then, as Fluentd does: `renew_record` starts from an empty record (plus `keep_keys`), the
//! `<record>` fields are merged (an existing key is overwritten where it stands, a new one is
//! appended), `renew_time_key` takes the event time from a field of the result, and
//! `remove_keys` (record_accessor paths) deletes fields last.
//!
//! Records are rebuilt from the raw slices of the fields they keep; field values are never
//! decoded unless a placeholder or a nested `remove_keys` path needs them.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

use crate::config::{ConfigError, Element};
use crate::event::{EventStream, EventTime, StreamBuilder};
use crate::filter::Filter;
use crate::msgpack::{self, Kind};
use crate::record_accessor::{delete_at_path, value_to_string, RecordAccessor, Step};

/// Fluentd's placeholder syntax: `${anything but a closing brace}` or `__UPPER_CASE__`.
static PLACEHOLDER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\$\{[^}]+\}|__[A-Z_]+__").expect("valid placeholder regex"));

/// What sluice's placeholders are, for the `enable_ruby` error.
const SUPPORTED: &str = "${tag}, ${tag_parts[N]}, ${tag_prefix[N]}, ${tag_suffix[N]}, \
${hostname}, ${time}, ${record[\"key\"]}, ${record['key']} and ${key}";

/// One placeholder, resolved at configure time to what it reads.
#[derive(Debug, Clone, PartialEq)]
enum Ph {
    Tag,
    TagParts(i64),
    TagPrefix(i64),
    TagSuffix(i64),
    Hostname,
    Time,
    /// A top-level field of the incoming record, by the `to_s` of its key.
    Record(String),
    /// A `__NAME__` token (kept for the warning): Fluentd defines none, so it is always nil.
    Unknown(String),
}

#[derive(Debug)]
enum Part {
    Lit(String),
    Ph(Ph),
}

/// A string with placeholders.
#[derive(Debug)]
struct StrTmpl {
    parts: Vec<Part>,
    /// The whole string is exactly one placeholder (auto_typecast keeps its value's type).
    single: bool,
}

/// A `<record>` value: a string with placeholders, a JSON structure holding some, or an
/// encoded constant.
#[derive(Debug)]
enum Tmpl {
    Lit(Vec<u8>),
    Str(StrTmpl),
    Array(Vec<Tmpl>),
    Map(Vec<(StrTmpl, Tmpl)>),
}

/// The record_transformer filter.
#[derive(Debug)]
pub struct RecordTransformer {
    /// `<record>` fields in order (repeated names merged, as a Ruby hash does).
    map: Vec<(StrTmpl, Tmpl)>,
    remove_keys: Vec<RecordAccessor>,
    keep_keys: Vec<String>,
    renew_record: bool,
    renew_time_key: Option<String>,
    auto_typecast: bool,
    /// Whether any template reads `${time}` (its text is built only then).
    uses_time: bool,
    hostname: String,
    /// The zone `${time}` is printed in: the process's local zone, as Ruby's `Time#to_s`.
    tz: jiff::tz::TimeZone,
}

impl RecordTransformer {
    /// Reads a `<filter>` section of `@type record_transformer`, with Fluentd's configuration
    /// errors, and refuses `enable_ruby true` since no Ruby runs here.
    pub fn configure(section: &Element) -> Result<RecordTransformer, ConfigError> {
        let remove_keys = match section.array("remove_keys")? {
            Some(keys) => {
                let pos = section.pos_of("remove_keys");
                keys.iter()
                    .map(|k| RecordAccessor::parse(k).map_err(|m| ConfigError::at(&pos, m)))
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => Vec::new(),
        };
        let keep_keys = section.array("keep_keys")?;
        let renew_record = section.bool("renew_record")?.unwrap_or(false);
        let renew_time_key = section.string("renew_time_key");
        let enable_ruby = section.bool("enable_ruby")?.unwrap_or(false);
        let auto_typecast = section.bool("auto_typecast")?.unwrap_or(true);

        if enable_ruby {
            let pos = section.pos_of("enable_ruby");
            return Err(ConfigError::at(
                &pos,
                format!(
                    "enable_ruby true is not supported: sluice has no Ruby interpreter, so ${{...}} \
                     cannot hold Ruby expressions. Supported placeholders: {SUPPORTED}. Remove \
                     enable_ruby and rewrite the placeholders with these"
                ),
            ));
        }
        if keep_keys.is_some() && !renew_record {
            let pos = section.pos_of("keep_keys");
            return Err(ConfigError::at(
                &pos,
                "`renew_record` must be true to use `keep_keys`",
            ));
        }

        let mut raw: Vec<(&str, &str)> = Vec::new();
        for rec in section.sections("record") {
            rec.mark_all_params_used();
            for p in &rec.params {
                match raw.iter_mut().find(|(k, _)| *k == p.key) {
                    Some(slot) => slot.1 = &p.value,
                    None => raw.push((&p.key, &p.value)),
                }
            }
        }
        let map: Vec<(StrTmpl, Tmpl)> = raw
            .iter()
            .map(|(k, v)| (compile_str(k), parse_value(v)))
            .collect();

        let mut uses_time = false;
        for (k, v) in &map {
            visit_str(k, &mut |ph| uses_time |= *ph == Ph::Time);
            visit(v, &mut |ph| uses_time |= *ph == Ph::Time);
        }
        for (k, v) in &map {
            let mut warn = |ph: &Ph| {
                if let Ph::Unknown(token) = ph {
                    // Fluentd's wording; it logs this for every event, sluice once.
                    tracing::warn!("unknown placeholder `{token}` found");
                }
            };
            visit_str(k, &mut warn);
            visit(v, &mut warn);
        }

        Ok(RecordTransformer {
            map,
            remove_keys,
            keep_keys: keep_keys.unwrap_or_default(),
            renew_record,
            renew_time_key,
            auto_typecast,
            uses_time,
            hostname: crate::hostname(),
            tz: jiff::tz::TimeZone::system(),
        })
    }

    /// Rewrites one record into `out`; returns the event's (possibly renewed) time. An error
    /// means the event cannot go on (Fluentd sends it to `@ERROR`).
    fn reform(
        &self,
        env: &Env<'_>,
        time: EventTime,
        record: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<EventTime, String> {
        let (kind, _) = msgpack::head(record, 0).map_err(|e| e.to_string())?;
        if !matches!(kind, Kind::Map(..)) {
            return Err("the record is not a map".into());
        }

        // Expand the <record> fields first: the result borrows from them.
        let mut keys: Vec<String> = Vec::with_capacity(self.map.len());
        let mut vbuf: Vec<u8> = Vec::new();
        let mut ranges: Vec<Option<(usize, usize)>> = Vec::with_capacity(self.map.len());
        for (kt, vt) in &self.map {
            let mut k = String::new();
            self.expand_str(kt, env, &mut k);
            keys.push(k);
            if let Tmpl::Lit(_) = vt {
                ranges.push(None);
            } else {
                let start = vbuf.len();
                self.expand_value(vt, env, &mut vbuf);
                ranges.push(Some((start, vbuf.len())));
            }
        }

        let mut res = Fields::default();
        if self.renew_record {
            for k in &self.keep_keys {
                if let Some(v) = msgpack::map_get(record, k).map_err(|e| e.to_string())? {
                    res.set(
                        KeyId::Str(k.as_bytes()),
                        OutKey::Str(k.as_str()),
                        Val::Raw(v),
                    );
                }
            }
        } else {
            for e in msgpack::map_entries(record).map_err(|e| e.to_string())? {
                res.set(key_id(e.key), OutKey::Raw(e.key), Val::Raw(e.value));
            }
        }
        for (i, k) in keys.iter().enumerate() {
            let v = match (ranges[i], &self.map[i].1) {
                (Some((s, e)), _) => &vbuf[s..e],
                (None, Tmpl::Lit(b)) => b.as_slice(),
                (None, _) => continue,
            };
            res.set(
                KeyId::Str(k.as_bytes()),
                OutKey::Str(k.as_str()),
                Val::Raw(v),
            );
        }

        let mut time = time;
        if let Some(name) = &self.renew_time_key {
            if let Some(v) = res.get(&KeyId::Str(name.as_bytes())) {
                time = ruby_to_time(v.bytes())?;
            }
        }

        for acc in &self.remove_keys {
            let steps = acc.steps();
            let id = match &steps[0] {
                Step::Key(k) => KeyId::Str(k.as_bytes()),
                Step::Index(n) => KeyId::Int(*n),
            };
            if steps.len() == 1 {
                res.remove(&id);
            } else if let Some(i) = res.index.get(&id).copied() {
                if let Some((_, v)) = &mut res.entries[i] {
                    if let Some(new) = delete_at_path(v.bytes(), &steps[1..]) {
                        *v = Val::Owned(new);
                    }
                }
            }
        }

        res.encode(out);
        Ok(time)
    }

    /// Appends the string a template expands to (placeholders as their `to_s`).
    fn expand_str(&self, t: &StrTmpl, env: &Env<'_>, out: &mut String) {
        for p in &t.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Ph(ph) => match self.resolve(ph, env) {
                    Resolved::Str(s) => out.push_str(s),
                    Resolved::Raw(v) => match msgpack::as_str(v, 0) {
                        Some(s) => out.push_str(s),
                        None => out.push_str(&value_to_string(v)),
                    },
                    Resolved::Nil => {}
                },
            }
        }
    }

    /// Appends the encoded value a template expands to.
    fn expand_value(&self, t: &Tmpl, env: &Env<'_>, out: &mut Vec<u8>) {
        match t {
            Tmpl::Lit(b) => out.extend_from_slice(b),
            Tmpl::Str(st) => {
                if self.auto_typecast && st.single {
                    if let Part::Ph(ph) = &st.parts[0] {
                        match self.resolve(ph, env) {
                            Resolved::Str(s) => write_str(out, s),
                            Resolved::Raw(v) => out.extend_from_slice(v),
                            Resolved::Nil => out.push(0xc0),
                        }
                        return;
                    }
                }
                let mut s = String::new();
                self.expand_str(st, env, &mut s);
                write_str(out, &s);
            }
            Tmpl::Array(items) => {
                let _ = rmp::encode::write_array_len(out, items.len() as u32);
                for it in items {
                    self.expand_value(it, env, out);
                }
            }
            Tmpl::Map(pairs) => {
                // Expanded keys may collide; a Ruby hash keeps the first place, last value.
                let mut fields: Vec<(String, Vec<u8>)> = Vec::with_capacity(pairs.len());
                for (kt, vt) in pairs {
                    let mut k = String::new();
                    self.expand_str(kt, env, &mut k);
                    let mut v = Vec::new();
                    self.expand_value(vt, env, &mut v);
                    match fields.iter_mut().find(|(fk, _)| *fk == k) {
                        Some(slot) => slot.1 = v,
                        None => fields.push((k, v)),
                    }
                }
                let _ = rmp::encode::write_map_len(out, fields.len() as u32);
                for (k, v) in fields {
                    write_str(out, &k);
                    out.extend_from_slice(&v);
                }
            }
        }
    }

    fn resolve<'e>(&'e self, ph: &Ph, env: &Env<'e>) -> Resolved<'e> {
        let pick = |list: &'e [String], n: i64| match index(n, list.len()) {
            Some(i) => Resolved::Str(list[i].as_str()),
            None => Resolved::Nil,
        };
        match ph {
            Ph::Tag => Resolved::Str(env.tag.tag),
            Ph::TagParts(n) => match index(*n, env.tag.parts.len()) {
                Some(i) => Resolved::Str(env.tag.parts[i]),
                None => Resolved::Nil,
            },
            Ph::TagPrefix(n) => pick(&env.tag.prefix, *n),
            Ph::TagSuffix(n) => pick(&env.tag.suffix, *n),
            Ph::Hostname => Resolved::Str(&self.hostname),
            Ph::Time => Resolved::Str(env.time),
            Ph::Record(k) => match record_field(env.record, k) {
                Some(v) => Resolved::Raw(v),
                None => Resolved::Nil,
            },
            Ph::Unknown(_) => Resolved::Nil,
        }
    }
}

impl Filter for RecordTransformer {
    fn filter_stream(&self, tag: &str, es: EventStream) -> EventStream {
        let tag_env = TagEnv::new(tag);
        let mut b = StreamBuilder::with_capacity(es.bytes().len() + es.len() * 64);
        let mut out = Vec::new();
        let mut time_text: Option<(i64, String)> = None;
        for e in es.iter() {
            if self.uses_time && time_text.as_ref().map(|(s, _)| *s) != Some(e.time.sec) {
                time_text = Some((e.time.sec, ruby_time_to_s(e.time, &self.tz)));
            }
            let env = Env {
                tag: &tag_env,
                time: time_text.as_ref().map(|(_, t)| t.as_str()).unwrap_or(""),
                record: e.record,
            };
            out.clear();
            match self.reform(&env, e.time, e.record, &mut out) {
                Ok(t) => b.push(t, &out),
                Err(err) => {
                    tracing::warn!(tag, error = %err, "record_transformer dropped an event it could not rewrite (Fluentd routes such events to @ERROR)");
                }
            }
        }
        b.finish()
    }
}

/// The tag and the parts placeholders read, computed once per stream.
struct TagEnv<'a> {
    tag: &'a str,
    parts: Vec<&'a str>,
    prefix: Vec<String>,
    suffix: Vec<String>,
}

impl<'a> TagEnv<'a> {
    fn new(tag: &'a str) -> TagEnv<'a> {
        let mut parts: Vec<&str> = tag.split('.').collect();
        // Ruby's String#split drops trailing empty fields.
        while parts.last() == Some(&"") {
            parts.pop();
        }
        let prefix = (0..parts.len()).map(|i| parts[..=i].join(".")).collect();
        let suffix = (0..parts.len()).map(|i| parts[i..].join(".")).collect();
        TagEnv {
            tag,
            parts,
            prefix,
            suffix,
        }
    }
}

/// What placeholders of one event read.
struct Env<'a> {
    tag: &'a TagEnv<'a>,
    /// `${time}` text (empty when no template reads it).
    time: &'a str,
    record: &'a [u8],
}

enum Resolved<'a> {
    Str(&'a str),
    Raw(&'a [u8]),
    Nil,
}

/// Which key a map entry has, as a Ruby hash compares keys: strings (and binaries) by bytes,
/// integers by value, anything else by its encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyId<'a> {
    Str(&'a [u8]),
    Int(i64),
    UInt(u64),
    Other(&'a [u8]),
}

fn key_id(k: &[u8]) -> KeyId<'_> {
    match msgpack::head(k, 0) {
        Ok((Kind::Str(s, n) | Kind::Bin(s, n), _)) => KeyId::Str(&k[s..s + n]),
        Ok((Kind::Int(i), _)) => KeyId::Int(i),
        Ok((Kind::UInt(u), _)) => KeyId::UInt(u),
        _ => KeyId::Other(k),
    }
}

enum OutKey<'a> {
    /// An encoded key from the incoming record.
    Raw(&'a [u8]),
    /// A new string key.
    Str(&'a str),
}

enum Val<'a> {
    Raw(&'a [u8]),
    Owned(Vec<u8>),
}

impl Val<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Val::Raw(b) => b,
            Val::Owned(v) => v,
        }
    }
}

/// The output record under construction: fields in Ruby hash order, removed ones left as holes.
#[derive(Default)]
struct Fields<'a> {
    entries: Vec<Option<(OutKey<'a>, Val<'a>)>>,
    index: HashMap<KeyId<'a>, usize>,
}

impl<'a> Fields<'a> {
    /// Overwrites the value in place when the key exists, appends otherwise.
    fn set(&mut self, id: KeyId<'a>, key: OutKey<'a>, val: Val<'a>) {
        match self.index.get(&id) {
            Some(&i) => {
                if let Some((_, v)) = &mut self.entries[i] {
                    *v = val;
                }
            }
            None => {
                self.index.insert(id, self.entries.len());
                self.entries.push(Some((key, val)));
            }
        }
    }

    fn get(&self, id: &KeyId<'a>) -> Option<&Val<'a>> {
        let i = *self.index.get(id)?;
        self.entries[i].as_ref().map(|(_, v)| v)
    }

    fn remove(&mut self, id: &KeyId<'a>) {
        if let Some(i) = self.index.remove(id) {
            self.entries[i] = None;
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let live = self.entries.iter().flatten().count();
        let _ = rmp::encode::write_map_len(out, live as u32);
        for (k, v) in self.entries.iter().flatten() {
            match k {
                OutKey::Raw(b) => out.extend_from_slice(b),
                OutKey::Str(s) => write_str(out, s),
            }
            out.extend_from_slice(v.bytes());
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_str(out, s);
}

/// The position `n` names in a list of `len` (negative from the end), if in range.
fn index(n: i64, len: usize) -> Option<usize> {
    let i = if n < 0 { len as i64 + n } else { n };
    (i >= 0 && (i as u64) < len as u64).then_some(i as usize)
}

/// The top-level field whose key's `to_s` is `key` (the last one if repeated, as in a decoded
/// hash), read in place.
fn record_field<'r>(record: &'r [u8], key: &str) -> Option<&'r [u8]> {
    let (Kind::Map(n, _), mut p) = msgpack::head(record, 0).ok()? else {
        return None;
    };
    let mut found = None;
    for _ in 0..n {
        let k_end = msgpack::skip(record, p).ok()?;
        let v_end = msgpack::skip(record, k_end).ok()?;
        let hit = match msgpack::as_bytes(record, p) {
            Some(b) => b == key.as_bytes(),
            None => value_to_string(&record[p..k_end]) == key,
        };
        if hit {
            found = Some(&record[k_end..v_end]);
        }
        p = v_end;
    }
    found
}

/// Fluentd's `parse_value`: text starting with `{` or `[` is JSON (kept as text, with a
/// warning, when it does not parse); anything else is a string.
fn parse_value(v: &str) -> Tmpl {
    if v.starts_with(['{', '[']) {
        match serde_json::from_str::<serde_json::Value>(v) {
            Ok(j) => return compile_json(&j),
            Err(e) => tracing::warn!("failed to parse {v} as json. Assuming {v} is a string: {e}"),
        }
    }
    compile_value_str(v)
}

fn compile_json(j: &serde_json::Value) -> Tmpl {
    use serde_json::Value as J;
    let lit = || {
        let mut b = Vec::new();
        msgpack::write_from_json(j, &mut b);
        Tmpl::Lit(b)
    };
    match j {
        J::String(s) => compile_value_str(s),
        J::Array(items) => {
            let items: Vec<Tmpl> = items.iter().map(compile_json).collect();
            if items.iter().all(|t| matches!(t, Tmpl::Lit(_))) {
                lit()
            } else {
                Tmpl::Array(items)
            }
        }
        J::Object(o) => {
            let pairs: Vec<(StrTmpl, Tmpl)> = o
                .iter()
                .map(|(k, v)| (compile_str(k), compile_json(v)))
                .collect();
            let constant = pairs.iter().all(|(k, v)| {
                k.parts.iter().all(|p| matches!(p, Part::Lit(_))) && matches!(v, Tmpl::Lit(_))
            });
            if constant {
                lit()
            } else {
                Tmpl::Map(pairs)
            }
        }
        _ => lit(),
    }
}

/// A string value: encoded once when it holds no placeholder.
fn compile_value_str(s: &str) -> Tmpl {
    let t = compile_str(s);
    if t.parts.iter().all(|p| matches!(p, Part::Lit(_))) {
        let mut b = Vec::new();
        write_str(&mut b, s);
        Tmpl::Lit(b)
    } else {
        Tmpl::Str(t)
    }
}

fn compile_str(s: &str) -> StrTmpl {
    let mut parts = Vec::new();
    let mut last = 0;
    for m in PLACEHOLDER.find_iter(s) {
        if m.start() > last {
            parts.push(Part::Lit(s[last..m.start()].to_string()));
        }
        parts.push(Part::Ph(classify(m.as_str())));
        last = m.end();
    }
    if last < s.len() {
        parts.push(Part::Lit(s[last..].to_string()));
    }
    // One match spanning the whole text is exactly Fluentd's `\A(placeholder)\z` test.
    let single = parts.len() == 1 && matches!(parts[0], Part::Ph(_));
    StrTmpl { parts, single }
}

/// What a placeholder's text reads.
fn classify(ph: &str) -> Ph {
    if ph.starts_with("__") {
        return Ph::Unknown(ph.to_string());
    }
    let inner = &ph[2..ph.len() - 1];
    match inner {
        "tag" => return Ph::Tag,
        "hostname" => return Ph::Hostname,
        "time" => return Ph::Time,
        _ => {}
    }
    for (name, make) in [
        ("tag_parts", Ph::TagParts as fn(i64) -> Ph),
        ("tag_prefix", Ph::TagPrefix),
        ("tag_suffix", Ph::TagSuffix),
    ] {
        if let Some(n) = indexed(inner, name) {
            return make(n);
        }
    }
    let quoted = |q: &str| {
        inner
            .strip_prefix("record[")
            .and_then(|r| r.strip_prefix(q))
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|r| r.strip_suffix(q))
    };
    if let Some(k) = quoted("\"").or_else(|| quoted("'")) {
        return Ph::Record(k.to_string());
    }
    Ph::Record(inner.to_string())
}

/// `name[N]` with N written as Ruby prints an integer (`0`, `3`, `-1`), as Fluentd's
/// placeholder table spells it.
fn indexed(inner: &str, name: &str) -> Option<i64> {
    let n = inner
        .strip_prefix(name)?
        .strip_prefix('[')?
        .strip_suffix(']')?;
    let v: i64 = n.parse().ok()?;
    (v.to_string() == n).then_some(v)
}

fn visit_str(t: &StrTmpl, f: &mut impl FnMut(&Ph)) {
    for p in &t.parts {
        if let Part::Ph(ph) = p {
            f(ph);
        }
    }
}

fn visit(t: &Tmpl, f: &mut impl FnMut(&Ph)) {
    match t {
        Tmpl::Lit(_) => {}
        Tmpl::Str(s) => visit_str(s, f),
        Tmpl::Array(items) => items.iter().for_each(|i| visit(i, f)),
        Tmpl::Map(pairs) => {
            for (k, v) in pairs {
                visit_str(k, f);
                visit(v, f);
            }
        }
    }
}

/// Ruby's `Time.at(t).to_s`: `%Y-%m-%d %H:%M:%S %z` in the given zone, no fraction.
fn ruby_time_to_s(t: EventTime, tz: &jiff::tz::TimeZone) -> String {
    match jiff::Timestamp::new(t.sec, 0) {
        Ok(ts) => ts
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%d %H:%M:%S %z")
            .to_string(),
        Err(_) => t.sec.to_string(),
    }
}

/// The event time `renew_time_key`'s value gives: Ruby's `to_f` of it as Unix seconds.
/// Strings are read as `String#to_f` does (a numeric prefix, else 0); nil is 0; maps, arrays
/// and bools have no `to_f` and are an error.
fn ruby_to_time(v: &[u8]) -> Result<EventTime, String> {
    let (kind, _) = msgpack::head(v, 0).map_err(|e| e.to_string())?;
    let f = match kind {
        Kind::Int(i) => return Ok(EventTime::new(i, 0)),
        Kind::UInt(u) => return Ok(EventTime::new(u.min(i64::MAX as u64) as i64, 0)),
        Kind::Nil => 0.0,
        Kind::Float(f) => f,
        Kind::Str(s, n) | Kind::Bin(s, n) => ruby_str_to_f(&String::from_utf8_lossy(&v[s..s + n])),
        Kind::Ext(0, s, 8) => return Ok(EventTime::from_ext(&v[s..s + 8])),
        Kind::Bool(_) => {
            return Err("renew_time_key field is a boolean, which has no time value".into())
        }
        Kind::Array(..) => {
            return Err("renew_time_key field is an array, which has no time value".into())
        }
        Kind::Map(..) => {
            return Err("renew_time_key field is a map, which has no time value".into())
        }
        Kind::Ext(..) => {
            return Err(
                "renew_time_key field is an extension value, which has no time value".into(),
            )
        }
    };
    if !f.is_finite() {
        return Err(format!("renew_time_key field is {f}, not a time"));
    }
    Ok(EventTime::from_f64(f))
}

/// Ruby's `String#to_f`: the longest numeric prefix after leading whitespace (`_` allowed
/// between digits), 0.0 when there is none.
fn ruby_str_to_f(s: &str) -> f64 {
    let b = s
        .trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c'])
        .as_bytes();
    let mut num = String::new();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        num.push(b[i] as char);
        i += 1;
    }
    let digits = |i: &mut usize, num: &mut String| {
        let start = *i;
        while *i < b.len() {
            if b[*i].is_ascii_digit() {
                num.push(b[*i] as char);
            } else if !(b[*i] == b'_'
                && *i > start
                && *i + 1 < b.len()
                && b[*i + 1].is_ascii_digit())
            {
                break;
            }
            *i += 1;
        }
        *i > start
    };
    let int = digits(&mut i, &mut num);
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        num.push_str(if int { "." } else { "0." });
        i += 1;
        digits(&mut i, &mut num);
    } else if !int {
        return 0.0;
    }
    if i + 1 < b.len() && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        let mut exp = String::from("e");
        if b[j] == b'+' || b[j] == b'-' {
            exp.push(b[j] as char);
            j += 1;
        }
        if digits(&mut j, &mut exp) {
            num.push_str(&exp);
        }
    }
    num.parse().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::parse_str;
    use serde_json::{json, Value};

    const TAG: &str = "test.tag";
    /// 2010-05-04 03:02:01 UTC
    const T: EventTime = EventTime::new(1_272_942_121, 0);

    fn section(body: &str) -> Element {
        let text = format!("<filter **>\n  @type record_transformer\n{body}\n</filter>\n");
        let mut root = parse_str(&text, "test.conf", ".".into()).unwrap();
        root.elements.remove(0)
    }

    fn configure(body: &str) -> Result<RecordTransformer, ConfigError> {
        RecordTransformer::configure(&section(body)).map(|mut f| {
            f.tz = jiff::tz::TimeZone::UTC;
            f
        })
    }

    fn err(body: &str) -> String {
        configure(body).unwrap_err().message
    }

    fn stream(records: &[Value]) -> EventStream {
        let mut b = StreamBuilder::default();
        for r in records {
            let mut rec = Vec::new();
            msgpack::write_from_json(r, &mut rec);
            b.push(T, &rec);
        }
        b.finish()
    }

    fn run_tag(body: &str, tag: &str, records: &[Value]) -> Vec<(EventTime, Value)> {
        let f = configure(body).unwrap();
        f.filter_stream(tag, stream(records))
            .iter()
            .map(|e| (e.time, msgpack::to_json_value(e.record).unwrap()))
            .collect()
    }

    fn run(body: &str, records: &[Value]) -> Vec<Value> {
        run_tag(body, TAG, records)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    fn one(body: &str, record: Value) -> Value {
        run(body, &[record]).remove(0)
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(|k| k.as_str()).collect()
    }

    const CONFIG: &str = r#"
      <record>
        hostname ${hostname}
        tag ${tag}
        time ${time}
        message ${hostname} ${tag_parts[-1]} ${record["message"]}
      </record>"#;

    fn base(msg: &str) -> Value {
        json!({"foo": "bar", "message": msg, "nest": {"k1": "v1", "k2": "v2"}})
    }

    #[test]
    fn typical_usage() {
        let host = crate::hostname();
        let out = run(CONFIG, &[base("1"), base("2")]);
        for (i, r) in out.iter().enumerate() {
            assert_eq!(r["foo"], "bar");
            assert_eq!(r["hostname"], host.as_str());
            assert_eq!(r["tag"], TAG);
            assert_eq!(r["time"], "2010-05-04 03:02:01 +0000");
            assert_eq!(r["message"], format!("{host} tag {}", i + 1));
            assert_eq!(r["nest"], json!({"k1": "v1", "k2": "v2"}));
            // Existing keys stay in place (message overwritten there), new ones are appended.
            assert_eq!(
                keys(r),
                vec!["foo", "message", "nest", "hostname", "tag", "time"]
            );
        }
    }

    #[test]
    fn time_in_a_zone() {
        let mut f = configure("<record>\n t ${time}\n</record>").unwrap();
        f.tz = jiff::tz::TimeZone::fixed(jiff::tz::offset(9));
        let out = f.filter_stream(TAG, stream(&[json!({})]));
        let r = msgpack::to_json_value(out.iter().next().unwrap().record).unwrap();
        assert_eq!(r["t"], "2010-05-04 12:02:01 +0900");
        assert_eq!(
            ruby_time_to_s(EventTime::new(0, 999), &jiff::tz::TimeZone::UTC),
            "1970-01-01 00:00:00 +0000"
        );
    }

    #[test]
    fn remove_keys() {
        let r = one(&format!("{CONFIG}\nremove_keys foo,message"), base(""));
        assert_eq!(keys(&r), vec!["nest", "hostname", "tag", "time"]);
        let r = one(&format!("{CONFIG}\nremove_keys $.nest.k1"), base(""));
        assert_eq!(r["nest"], json!({"k2": "v2"}));
        // Keys added by <record> can be removed too; missing ones are no-ops.
        let r = one(
            "remove_keys added, missing, $.nest.zz, $.foo.x\n<record>\n added 1\n</record>",
            base("m"),
        );
        assert_eq!(r, base("m"));
        let r = one(
            r#"remove_keys ["$.a[0]", "$['b c'][-1]['d']"]"#,
            json!({"a": [1, 2], "b c": [{"d": 1, "e": 2}]}),
        );
        assert_eq!(r, json!({"a": [2], "b c": [{"e": 2}]}));
        assert_eq!(
            err("remove_keys $.a[x"),
            "'[' found but ']' not found. Invalid syntax: $.a[x"
        );
    }

    #[test]
    fn renew_record_and_keep_keys() {
        let host = crate::hostname();
        let r = one(&format!("{CONFIG}\nrenew_record true"), base("1"));
        assert_eq!(keys(&r), vec!["hostname", "tag", "time", "message"]);
        assert_eq!(r["message"], format!("{host} tag 1"));

        let out = run(
            "renew_record true\nkeep_keys foo, bar, baz, message",
            &[base("1"), json!({"foo": "bar", "message": null})],
        );
        assert_eq!(
            out,
            vec![
                json!({"foo": "bar", "message": "1"}),
                json!({"foo": "bar", "message": null})
            ]
        );
        // keep_keys order, then <record> fields merged over them.
        let r = one(
            "renew_record true\nkeep_keys message,foo\n<record>\n foo new\n x y\n</record>",
            base("1"),
        );
        assert_eq!(r, json!({"message": "1", "foo": "new", "x": "y"}));
        assert_eq!(keys(&r), vec!["message", "foo", "x"]);
        assert_eq!(
            err("keep_keys a"),
            "`renew_record` must be true to use `keep_keys`"
        );
        assert_eq!(
            err("keep_keys a\nrenew_record false"),
            "`renew_record` must be true to use `keep_keys`"
        );
    }

    #[test]
    fn renew_time_key() {
        let recs = vec![
            json!({"message": "1273028523.5"}),
            json!({"message": 1273028524}),
            json!({"message": 1273028525.25}),
            json!({"message": " 12_3abc"}),
            json!({"message": "junk"}),
            json!({"message": null}),
            json!({"other": 1}),
        ];
        let out = run_tag("renew_time_key message", TAG, &recs);
        let times: Vec<EventTime> = out.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            times,
            vec![
                EventTime::new(1273028523, 500_000_000),
                EventTime::new(1273028524, 0),
                EventTime::new(1273028525, 250_000_000),
                EventTime::new(123, 0),
                EventTime::new(0, 0),
                EventTime::new(0, 0),
                T,
            ]
        );
        assert!(out.iter().take(6).all(|(_, r)| r.get("message").is_some()));
        // The time is read after the merge and before remove_keys.
        let body =
            "renew_time_key event_time_key\nremove_keys event_time_key\nauto_typecast true\n\
                    <record>\n event_time_key ${record[\"message\"]}\n</record>";
        let out = run_tag(body, TAG, &[json!({"message": "1273028523.0"})]);
        assert_eq!(
            out,
            vec![(
                EventTime::new(1273028523, 0),
                json!({"message": "1273028523.0"})
            )]
        );
        // A field with no to_f: the event cannot go on.
        let out = run_tag(
            "renew_time_key message",
            TAG,
            &[json!({"message": {"a": 1}}), json!({"message": 5})],
        );
        assert_eq!(out, vec![(EventTime::new(5, 0), json!({"message": 5}))]);
    }

    #[test]
    fn ruby_string_to_f() {
        for (s, f) in [
            ("1.5", 1.5),
            ("  -2.5e3x", -2500.0),
            ("1_000.5", 1000.5),
            (".5", 0.5),
            ("-.5x", -0.5),
            ("1.", 1.0),
            ("1e", 1.0),
            ("abc", 0.0),
            ("", 0.0),
            ("+7", 7.0),
        ] {
            assert_eq!(ruby_str_to_f(s), f, "{s:?}");
        }
    }

    #[test]
    fn json_values_keep_structure() {
        let host = crate::hostname();
        let r = one("<record>\n hash_field {\"k1\":100, \"k2\":\"foobar\"}\n array_field [1, 2, 3]\n mixed_field {\"hello\":[1,2,3], \"world\":{\"foo\":\"bar\"}}\n</record>", json!({}));
        assert_eq!(
            r,
            json!({"hash_field": {"k1": 100, "k2": "foobar"}, "array_field": [1, 2, 3], "mixed_field": {"hello": [1, 2, 3], "world": {"foo": "bar"}}})
        );
        let body = "<record>\n hash_field {\n  \"hostname\":\"${hostname}\",\n  \"tag\":\"${tag}\",\n  \"${tag}\":100\n }\n array_field [\"${hostname}\", \"${tag}\", {\"t\": \"${tag_parts[0]}\", \"n\": [null, true]}]\n</record>";
        let r = one(body, json!({}));
        assert_eq!(
            r["hash_field"],
            json!({"hostname": host, "tag": TAG, "test.tag": 100})
        );
        assert_eq!(
            r["array_field"],
            json!([host, TAG, {"t": "test", "n": [null, true]}])
        );
        // Keys that expand to the same text collapse: first place, last value.
        let r = one(
            "<record>\n h {\"${tag}\": 1, \"b\": 2, \"test.tag\": 3}\n</record>",
            json!({}),
        );
        assert_eq!(r["h"], json!({"test.tag": 3, "b": 2}));
        assert_eq!(keys(&r["h"]), vec!["test.tag", "b"]);
        // A quoted value starting with [ or { is still JSON to Fluentd; if it does not parse,
        // it is a string.
        let r = one(
            "<record>\n a \"[1, 2]\"\n b \"[not json\"\n</record>",
            json!({}),
        );
        assert_eq!(r, json!({"a": [1, 2], "b": "[not json"}));
    }

    #[test]
    fn keys_with_placeholders() {
        let host = crate::hostname();
        let r = one(
            "renew_record true\n<record>\n ${hostname} hostname\n foo.${tag} tag\n</record>",
            json!({"a": 1}),
        );
        assert_eq!(keys(&r), vec![host.as_str(), "foo.test.tag"]);
        assert_eq!(r[&host], "hostname");
        assert_eq!(r["foo.test.tag"], "tag");
    }

    #[test]
    fn tag_placeholders() {
        let body = "<record>\n message ${tag_prefix[1]} ${tag_prefix[-2]} ${tag_suffix[2]} ${tag_suffix[-3]}\n parts ${tag_parts[0]} ${tag_parts[-1]} ${tag_parts[3]}\n</record>";
        let out = run_tag(body, "prefix.test.tag.suffix", &[json!({})]);
        assert_eq!(
            out[0].1["message"],
            "prefix.test prefix.test.tag tag.suffix test.tag.suffix"
        );
        assert_eq!(out[0].1["parts"], "prefix suffix suffix");
        // Out of range: nothing, or nil when the value is the placeholder alone.
        let r = one(
            "<record>\n a x${tag_parts[2]}x\n b ${tag_parts[-3]}\n c ${tag_suffix[2]}\n</record>",
            json!({}),
        );
        assert_eq!(r, json!({"a": "xx", "b": null, "c": null}));
        // Ruby's split drops trailing empty parts.
        let out = run_tag(
            "<record>\n a ${tag_parts[-1]}|${tag_prefix[1]}\n</record>",
            "a..b.",
            &[json!({})],
        );
        assert_eq!(out[0].1["a"], "b|a.");
        // Index text must be as Ruby prints the integer.
        let r = one(
            "<record>\n a ${tag_parts[01]}\n</record>",
            json!({"tag_parts[01]": "field"}),
        );
        assert_eq!(r["a"], "field");
    }

    #[test]
    fn record_placeholders() {
        let body = "<record>\n a ${record[\"@timestamp\"]}\n b ${record['x']}\n c ${x}-${y}\n d ${record[\"missing\"]}\n e <${nope}>\n</record>";
        let r = one(body, json!({"@timestamp": "foo", "x": "X", "y": 2}));
        assert_eq!(r["a"], "foo");
        assert_eq!(r["b"], "X");
        assert_eq!(r["c"], "X-2");
        assert_eq!(r["d"], Value::Null);
        assert_eq!(r["e"], "<>");
        // Reserved names win over record fields; record[...] reaches the field.
        let r = one(
            "<record>\n new_tag ${tag}\n new_record_tag ${record[\"tag\"]}\n</record>",
            json!({"tag": "tag", "time": "time"}),
        );
        assert_eq!(r["new_tag"], TAG);
        assert_eq!(r["new_record_tag"], "tag");
        // Placeholders read the incoming record, not fields set by <record>.
        let r = one(
            "<record>\n a new\n b ${record[\"a\"]}\n</record>",
            json!({"a": "old"}),
        );
        assert_eq!(r, json!({"a": "new", "b": "old"}));
        // Only top-level keys: a nested path is a key that does not exist.
        let r = one(
            "<record>\n a ${record[\"n\"][\"k\"]}\n</record>",
            json!({"n": {"k": 1}}),
        );
        assert_eq!(r["a"], Value::Null);
    }

    fn typecast_records() -> Vec<Value> {
        vec![
            json!({"source": "string"}),
            json!({"source": 123}),
            json!({"source": [1, 2]}),
            json!({"source": {"a": 1, "b": 2}}),
            json!({"source": null}),
            json!({"source": 1.0}),
        ]
    }

    const TYPECAST: &str = r#"
      <record>
        single      ${record["source"]}
        multiple    ${record["source"]}${record["source"]}
        with_prefix prefix-${record["source"]}
        with_suffix ${record["source"]}-suffix
        with_quote  record["source"][""]
      </record>"#;

    #[test]
    fn typecast_disabled() {
        let out = run(
            &format!("auto_typecast false\n{TYPECAST}"),
            &typecast_records(),
        );
        let to_s = ["string", "123", "[1,2]", "{\"a\":1,\"b\":2}", "", "1.0"];
        for (r, s) in out.iter().zip(to_s) {
            assert_eq!(r["single"], s);
            assert_eq!(r["multiple"], format!("{s}{s}"));
            assert_eq!(r["with_prefix"], format!("prefix-{s}"));
            assert_eq!(r["with_suffix"], format!("{s}-suffix"));
            assert_eq!(r["with_quote"], "record[\"source\"][\"\"]");
        }
    }

    #[test]
    fn typecast_enabled_by_default() {
        for body in [
            TYPECAST.to_string(),
            format!("auto_typecast yes\n{TYPECAST}"),
        ] {
            let recs = typecast_records();
            let out = run(&body, &recs);
            let to_s = ["string", "123", "[1,2]", "{\"a\":1,\"b\":2}", "", "1.0"];
            for ((r, src), s) in out.iter().zip(&recs).zip(to_s) {
                assert_eq!(r["single"], src["source"]);
                assert_eq!(r["multiple"], format!("{s}{s}"));
                assert_eq!(r["with_prefix"], format!("prefix-{s}"));
                assert_eq!(r["with_suffix"], format!("{s}-suffix"));
            }
        }
        // Single tag placeholders stay strings; JSON keys are always strings, values inside
        // JSON keep their type too.
        let r = one(
            "<record>\n t ${tag}\n h {\"${record['n']}\": \"${n}\", \"l\": [\"${n}\"]}\n</record>",
            json!({"n": 7}),
        );
        assert_eq!(r["t"], TAG);
        assert_eq!(r["h"], json!({"7": 7, "l": [7]}));
    }

    #[test]
    fn upper_case_tokens_expand_to_nothing() {
        let r = one(
            "<record>\n a x__FOO__y\n b __BAR__\n c __lower__\n</record>",
            json!({}),
        );
        assert_eq!(r, json!({"a": "xy", "b": null, "c": "__lower__"}));
        let r = one(
            "auto_typecast false\n<record>\n b __BAR__\n</record>",
            json!({}),
        );
        assert_eq!(r["b"], "");
    }

    #[test]
    fn enable_ruby_is_refused() {
        let e =
            configure("enable_ruby yes\n<record>\n m ${tag_parts.last}\n</record>").unwrap_err();
        assert!(
            e.message
                .starts_with("enable_ruby true is not supported: sluice has no Ruby interpreter"),
            "{}",
            e.message
        );
        assert!(e.message.contains("${record[\"key\"]}"));
        assert_eq!(e.pos.unwrap().line, 3);
        assert!(configure("enable_ruby false\n<record>\n m ${tag}\n</record>").is_ok());
        assert!(err("enable_ruby maybe").contains("invalid bool value"));
    }

    #[test]
    fn record_sections_merge_and_are_used() {
        let s = section(
            "<record>\n a 1\n b 2\n a 3\n</record>\n<record>\n b 4\n c 5\n</record>\nbogus 1",
        );
        let f = RecordTransformer::configure(&s).unwrap();
        let unused: Vec<String> = s.unused().iter().map(|u| u.to_error().message).collect();
        assert_eq!(
            unused,
            vec!["parameter 'bogus' in <filter **> is not used.".to_string()]
        );
        let out = f.filter_stream(TAG, stream(&[json!({"z": 0})]));
        let r = msgpack::to_json_value(out.iter().next().unwrap().record).unwrap();
        assert_eq!(r, json!({"z": 0, "a": "3", "b": "4", "c": "5"}));
        assert_eq!(keys(&r), vec!["z", "a", "b", "c"]);
    }

    #[test]
    fn duplicate_and_raw_keys() {
        // {"a": 1, "b": 2, "a": 3} with a str8 key: decoded as Ruby would (first place, last
        // value), untouched keys copied as encoded.
        let rec = [
            0x83, 0xa1, b'a', 0x01, 0xd9, 0x01, b'b', 0x02, 0xa1, b'a', 0x03,
        ];
        let mut b = StreamBuilder::default();
        b.push(T, &rec);
        let f = configure("<record>\n c x\n</record>").unwrap();
        let out = f.filter_stream(TAG, b.finish());
        let r = out.iter().next().unwrap().record.to_vec();
        assert_eq!(
            r,
            [
                &[0x83, 0xa1, b'a', 0x03, 0xd9, 0x01, b'b', 0x02][..],
                &[0xa1, b'c', 0xa1, b'x']
            ]
            .concat()
        );
    }

    #[test]
    fn non_map_records_are_dropped() {
        let f = configure("<record>\n c x\n</record>").unwrap();
        let mut b = StreamBuilder::default();
        b.push(T, &[0xa1, b's']);
        b.push(T, &[0x80]);
        let out = f.filter_stream(TAG, b.finish());
        assert_eq!(out.len(), 1);
        assert_eq!(
            msgpack::to_json_value(out.iter().next().unwrap().record).unwrap(),
            json!({"c": "x"})
        );
    }

    #[test]
    fn built_through_filter_build() {
        let s = section("<record>\n k v\n</record>");
        let f = crate::filter::build(&s, "record_transformer").unwrap();
        let out = f.filter_stream(TAG, stream(&[json!({})]));
        assert_eq!(out.len(), 1);
        let s = section("regexp1 k v");
        assert!(crate::filter::build(&s, "grep").is_ok());
        assert!(crate::filter::build(&s, "nope")
            .unwrap_err()
            .message
            .starts_with("Unknown filter plugin 'nope'"));
    }
}
