//! Fluentd's record_accessor syntax: naming one field of a record, possibly nested.
//!
//! Plugins that take a field name (`<regexp> key`, `remove_keys`, …) accept it in three forms,
//! and configs written for Fluentd must keep meaning the same field here:
//!
//! - a plain name, `key` or `this.is.key`: one top-level key, taken literally (dots included);
//! - dot notation, `$.a.b`, with array indexes `$.a[0].b` (negative indexes count from the end);
//! - bracket notation, `$['a']['b c']` or `$["a"][0]`, for keys holding dots or spaces.
//!
//! Parsing follows Fluentd's rules and error wording (`lib/fluent/plugin_helper/record_accessor.rb`),
//! including its leniencies, so a config Fluentd accepts is accepted here. Reading a field
//! follows Ruby's `Hash#dig`: a missing key or an intermediate `nil` gives nothing, while
//! digging into a string or number is an error ([`AccessError`]) that callers report the way
//! Fluentd's plugins do.
//!
//! Records stay MessagePack bytes: [`RecordAccessor::get`] returns the encoded value where it
//! lies, and [`delete_at_path`] rebuilds only the containers on the path.
//! [`value_to_string`] gives Ruby's `to_s` of a value, which grep and placeholders match and
//! interpolate.

use std::fmt::Write as _;

use crate::msgpack::{self, DecodeError, Kind};

/// One step of a record path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A string key of a map.
    Key(String),
    /// An index of an array (negative counts from the end), or an integer key of a map —
    /// as Ruby's `dig` treats an integer argument.
    Index(i64),
}

/// A parsed record_accessor expression: which field of a record a parameter names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordAccessor {
    source: String,
    steps: Vec<Step>,
    nested: bool,
}

/// Why a field could not be read: the record's shape does not fit the path.
///
/// Fluentd raises in these cases (e.g. `String does not have #dig method`); each plugin decides
/// what that means for the event (grep keeps it, as Fluentd's rescue does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The path continues below a value that holds no fields.
    #[error("{subject} is {what}, not a map or an array, so {step} cannot be looked up in it")]
    NotContainer {
        /// `field $.a.b` or `the record`.
        subject: String,
        /// The value's type in words: `a string`, `an integer`, …
        what: &'static str,
        /// The step that could not be taken: `key "c"` or `index 0`.
        step: String,
    },
    /// A string key was asked of an array.
    #[error("{subject} is an array, so key {key:?} cannot be looked up in it (arrays take integer indexes)")]
    KeyInArray {
        /// `field $.a.b` or `the record`.
        subject: String,
        /// The key asked for.
        key: String,
    },
    /// The record bytes are not valid MessagePack.
    #[error("record is not valid MessagePack: {0}")]
    Decode(#[from] DecodeError),
}

impl RecordAccessor {
    /// Parses a record_accessor expression as Fluentd does. Errors carry Fluentd's wording
    /// (`empty keys in dot notation`, `'[' found but ']' not found. Invalid syntax: …`, …) so
    /// they can be searched for.
    pub fn parse(s: &str) -> Result<RecordAccessor, String> {
        let (steps, nested) = if let Some(rest) = s.strip_prefix("$.") {
            (parse_dot(s, rest)?, true)
        } else if s.starts_with("$[") {
            (parse_bracket(s)?, true)
        } else {
            (vec![Step::Key(s.to_string())], false)
        };
        Ok(RecordAccessor {
            source: s.to_string(),
            steps,
            nested,
        })
    }

    /// The encoded value the path names in `record` (one encoded map), where it lies.
    ///
    /// `Ok(None)` when a key is missing, an index is out of range, or an intermediate value is
    /// nil (Ruby's `dig` gives nil then). A present nil is `Ok(Some(nil))`. Digging into a
    /// string, number or bool, or asking an array for a string key, is an [`AccessError`].
    pub fn get<'a>(&self, record: &'a [u8]) -> Result<Option<&'a [u8]>, AccessError> {
        let mut cur = record;
        for (i, step) in self.steps.iter().enumerate() {
            let (kind, _) = msgpack::head(cur, 0)?;
            let next = match (kind, step) {
                (Kind::Map(..), Step::Key(k)) => msgpack::map_get(cur, k)?,
                (Kind::Map(..), Step::Index(n)) => map_get_int(cur, *n)?,
                (Kind::Array(len, _), Step::Index(n)) => match normalize_index(*n, len) {
                    Some(idx) => msgpack::array_get(cur, idx)?,
                    None => None,
                },
                (Kind::Array(..), Step::Key(k)) => {
                    return Err(AccessError::KeyInArray {
                        subject: subject(&self.steps[..i]),
                        key: k.clone(),
                    })
                }
                (Kind::Nil, _) if i > 0 => return Ok(None),
                (other, step) => {
                    return Err(AccessError::NotContainer {
                        subject: subject(&self.steps[..i]),
                        what: kind_name(&other),
                        step: step_words(step),
                    })
                }
            };
            match next {
                Some(v) => cur = v,
                None => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// `record` (one encoded map) without the field the path names, re-encoded; `None` when
    /// there was nothing to remove. A record whose shape does not fit the path is left alone,
    /// as Fluentd's accessor `delete` ignores such records.
    pub fn delete(&self, record: &[u8]) -> Option<Vec<u8>> {
        delete_at_path(record, &self.steps)
    }

    /// Whether the expression was written as a path (`$.…` or `$[…]`) rather than a plain key
    /// (Fluentd's `record_accessor_nested?`). When false, [`Self::source`] is the key itself
    /// and a plain [`msgpack::map_get`] reads the field.
    pub fn is_nested(&self) -> bool {
        self.nested
    }

    /// The expression as written in the config, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The parsed steps, first to last (always at least one). A plain key is one
    /// [`Step::Key`] holding the whole text.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

/// `value` (one encoded value) without the element the path `steps` names, re-encoded; `None`
/// when nothing was removed (missing key, index out of range, or a value of another shape on
/// the way). Only the containers on the path are rebuilt; everything else is copied as is.
pub fn delete_at_path(value: &[u8], steps: &[Step]) -> Option<Vec<u8>> {
    let (first, rest) = steps.split_first()?;
    let (kind, body) = msgpack::head(value, 0).ok()?;
    if rest.is_empty() {
        return match (kind, first) {
            (Kind::Map(..), step) => {
                let entries = msgpack::map_entries(value).ok()?;
                let keep: Vec<_> = entries
                    .iter()
                    .filter(|e| !key_matches(e.key, step))
                    .collect();
                if keep.len() == entries.len() {
                    return None;
                }
                let mut out = Vec::with_capacity(value.len());
                rmp::encode::write_map_len(&mut out, keep.len() as u32).ok()?;
                for e in keep {
                    out.extend_from_slice(e.key);
                    out.extend_from_slice(e.value);
                }
                Some(out)
            }
            (Kind::Array(len, _), Step::Index(n)) => {
                let idx = normalize_index(*n, len)?;
                let mut out = Vec::with_capacity(value.len());
                rmp::encode::write_array_len(&mut out, (len - 1) as u32).ok()?;
                let mut p = body;
                for j in 0..len {
                    let end = msgpack::skip(value, p).ok()?;
                    if j != idx {
                        out.extend_from_slice(&value[p..end]);
                    }
                    p = end;
                }
                Some(out)
            }
            _ => None,
        };
    }
    // Descend: the container keeps its element count, so only the child's bytes change.
    let (start, end) = match (kind, first) {
        (Kind::Map(n, _), step) => {
            let mut p = body;
            let mut found = None;
            for _ in 0..n {
                let k_end = msgpack::skip(value, p).ok()?;
                let v_end = msgpack::skip(value, k_end).ok()?;
                if key_matches(&value[p..k_end], step) {
                    found = Some((k_end, v_end));
                }
                p = v_end;
            }
            found?
        }
        (Kind::Array(len, _), Step::Index(n)) => {
            let idx = normalize_index(*n, len)?;
            let mut p = body;
            for _ in 0..idx {
                p = msgpack::skip(value, p).ok()?;
            }
            (p, msgpack::skip(value, p).ok()?)
        }
        _ => return None,
    };
    let child = delete_at_path(&value[start..end], rest)?;
    let mut out = Vec::with_capacity(value.len());
    out.extend_from_slice(&value[..start]);
    out.extend_from_slice(&child);
    out.extend_from_slice(&value[end..]);
    Some(out)
}

/// Ruby's `to_s` of an encoded value, as Fluentd matches and interpolates it: a string as is
/// (invalid UTF-8 replaced), nil as the empty string, numbers and bools as Ruby prints them
/// (`1.0`, `1.0e+20`), an EventTime as its seconds. Maps and arrays become JSON — a stable,
/// readable form where Ruby would print its own `inspect` syntax.
pub fn value_to_string(v: &[u8]) -> String {
    let Ok((kind, _)) = msgpack::head(v, 0) else {
        return String::new();
    };
    match kind {
        Kind::Nil => String::new(),
        Kind::Bool(b) => b.to_string(),
        Kind::Int(i) => i.to_string(),
        Kind::UInt(u) => u.to_string(),
        Kind::Float(f) => ruby_float_to_s(f),
        Kind::Str(s, n) | Kind::Bin(s, n) => String::from_utf8_lossy(&v[s..s + n]).into_owned(),
        Kind::Array(..) | Kind::Map(..) => {
            let mut out = Vec::new();
            match msgpack::write_json(v, &mut out) {
                Ok(()) => String::from_utf8_lossy(&out).into_owned(),
                Err(_) => String::new(),
            }
        }
        Kind::Ext(0, s, 8) => crate::event::EventTime::from_ext(&v[s..s + 8])
            .sec
            .to_string(),
        Kind::Ext(..) => String::new(),
    }
}

/// Ruby's `Float#to_s`: shortest round-trip digits, fixed notation for decimal exponents from
/// -4 to 16, otherwise `d.ddde+XX`.
pub fn ruby_float_to_s(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // `{:e}` gives the shortest digits that round-trip: "1.2345e-5", "1e16".
    let sci = format!("{:e}", f.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let decpt = exp + 1;
    let nd = digits.len() as i32;
    let mut out = String::from(sign);
    if decpt > 0 && decpt <= 16 {
        if nd <= decpt {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', (decpt - nd) as usize));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..decpt as usize]);
            out.push('.');
            out.push_str(&digits[decpt as usize..]);
        }
    } else if decpt <= 0 && decpt > -4 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-decpt) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        out.push('.');
        out.push_str(if nd > 1 { &digits[1..] } else { "0" });
        let e = decpt - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    out
}

/// Whether the encoded map key `key` is the one `step` names: a string (or binary) key with
/// the same bytes, or an integer key equal to the index.
fn key_matches(key: &[u8], step: &Step) -> bool {
    match (msgpack::head(key, 0), step) {
        (Ok((Kind::Str(s, n) | Kind::Bin(s, n), _)), Step::Key(k)) => {
            &key[s..s + n] == k.as_bytes()
        }
        (Ok((Kind::Int(i), _)), Step::Index(n)) => i == *n,
        _ => false,
    }
}

/// The value under the integer key `n` of the map `map` (the last one if repeated).
fn map_get_int(map: &[u8], n: i64) -> Result<Option<&[u8]>, DecodeError> {
    let step = Step::Index(n);
    Ok(msgpack::map_entries(map)?
        .iter()
        .rev()
        .find(|e| key_matches(e.key, &step))
        .map(|e| e.value))
}

/// The position an index names in an array of `len` elements, if it is in range.
fn normalize_index(n: i64, len: usize) -> Option<usize> {
    let idx = if n < 0 { len as i64 + n } else { n };
    (idx >= 0 && (idx as u64) < len as u64).then_some(idx as usize)
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Nil => "nil",
        Kind::Bool(_) => "a boolean",
        Kind::Int(_) | Kind::UInt(_) => "an integer",
        Kind::Float(_) => "a float",
        Kind::Str(..) => "a string",
        Kind::Bin(..) => "binary data",
        Kind::Array(..) => "an array",
        Kind::Map(..) => "a map",
        Kind::Ext(..) => "an extension value",
    }
}

fn step_words(step: &Step) -> String {
    match step {
        Step::Key(k) => format!("key {k:?}"),
        Step::Index(n) => format!("index {n}"),
    }
}

/// `field $.a.b[0]` for a path prefix (bracket notation when a key needs it), or
/// `the record` for the empty prefix.
fn subject(prefix: &[Step]) -> String {
    if prefix.is_empty() {
        return "the record".into();
    }
    let simple = prefix.iter().all(|s| match s {
        Step::Key(k) => {
            !k.is_empty()
                && !k.contains(['.', '[', ']', '\'', '"'])
                && !k.contains(char::is_whitespace)
        }
        Step::Index(_) => true,
    });
    let mut out = String::from("field $");
    for s in prefix {
        match s {
            Step::Key(k) if simple => {
                out.push('.');
                out.push_str(k);
            }
            Step::Key(k) if k.contains('\'') => {
                let _ = write!(out, "[\"{k}\"]");
            }
            Step::Key(k) => {
                let _ = write!(out, "['{k}']");
            }
            Step::Index(n) => {
                let _ = write!(out, "[{n}]");
            }
        }
    }
    out
}

/// Ruby's `\s`: space, tab, CR, LF, form feed, vertical tab.
fn is_ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '\x0c' | '\x0b')
}

fn parse_dot(param: &str, rest: &str) -> Result<Vec<Step>, String> {
    let mut parts: Vec<&str> = rest.split('.').collect();
    // Ruby's String#split drops trailing empty fields.
    while parts.last() == Some(&"") {
        parts.pop();
    }
    let mut result = Vec::new();
    for key in parts {
        if key.contains('[') {
            parse_dot_array_op(key, param, &mut result)?;
        } else {
            result.push(Step::Key(key.to_string()));
        }
    }
    if result.is_empty() {
        return Err("empty keys in dot notation".into());
    }
    for s in &result {
        if let Step::Key(k) = s {
            if k.contains(is_ruby_space) {
                return Err(format!(
                    "whitespace character is not allowed in dot notation. Use bracket notation: {k}"
                ));
            }
        }
    }
    Ok(result)
}

/// One dot-separated part holding `[N]` indexes: `key[0][1]` or `[0]`.
fn parse_dot_array_op(key: &str, param: &str, result: &mut Vec<Step>) -> Result<(), String> {
    let start = key.find('[').unwrap_or(0);
    if start > 0 {
        result.push(Step::Key(key[..start].to_string()));
    }
    let mut rest = &key[start + 1..];
    let mut in_bracket = true;
    while !rest.is_empty() {
        if in_bracket {
            let Some(i) = rest.find(']') else {
                return Err(format!(
                    "'[' found but ']' not found. Invalid syntax: {param}"
                ));
            };
            // Ruby's `s[0..i-1]` is the whole string when i is 0.
            let index = if i == 0 { rest } else { &rest[..i] };
            if index == "]" {
                return Err(format!(
                    "missing array index in '[]'. Invalid syntax: {param}"
                ));
            }
            result.push(Step::Index(ruby_integer(index)?));
            rest = &rest[i + 1..];
            in_bracket = false;
        } else {
            let Some(i) = rest.find('[') else {
                return Err(format!(
                    "found more characters after ']'. Invalid syntax: {param}"
                ));
            };
            rest = &rest[i + 1..];
            in_bracket = true;
        }
    }
    Ok(())
}

fn parse_bracket(orig: &str) -> Result<Vec<Step>, String> {
    let mut result = Vec::new();
    let mut p = &orig[1..];
    let mut in_bracket = false;
    while !p.is_empty() {
        if in_bracket {
            let q = p.as_bytes()[0];
            if q == b'\'' || q == b'"' {
                let Some(i) = p.find("']").or_else(|| p.find("\"]")) else {
                    return Err(format!("Incomplete bracket. Invalid syntax: {orig}"));
                };
                if p.as_bytes()[i] != q {
                    return Err(format!("Mismatched quotes. Invalid syntax: {orig}"));
                }
                let key = if i == 0 { &p[1..] } else { &p[1..i] };
                result.push(Step::Key(key.to_string()));
                p = &p[i + 2..];
            } else {
                let Some(i) = p.find(']') else {
                    return Err(format!(
                        "'[' found but ']' not found. Invalid syntax: {orig}"
                    ));
                };
                let index = if i == 0 { p } else { &p[..i] };
                if index == "]" {
                    return Err(format!("missing array index in '[]'. Invalid syntax: {p}"));
                }
                result.push(Step::Index(ruby_integer(index)?));
                p = &p[i + 1..];
            }
            in_bracket = false;
        } else {
            let Some(i) = p.find('[') else {
                return Err(format!(
                    "found more characters after ']'. Invalid syntax: {orig}"
                ));
            };
            p = &p[i + 1..];
            in_bracket = true;
        }
    }
    if result.is_empty() {
        return Err("empty keys in bracket notation".into());
    }
    Ok(result)
}

/// Ruby's `Integer(s)` for array indexes: surrounding whitespace, a sign, `0x`/`0b`/`0o`/`0d`
/// or a leading `0` (octal) prefix, and `_` between digits.
fn ruby_integer(s: &str) -> Result<i64, String> {
    let err = || format!("invalid value for Integer(): \"{}\"", s.escape_debug());
    let t = s.trim_matches(is_ruby_space);
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = t.get(..2).map(|p| p.to_ascii_lowercase());
    let (radix, digits) = match lower.as_deref() {
        Some("0x") => (16, &t[2..]),
        Some("0b") => (2, &t[2..]),
        Some("0o") => (8, &t[2..]),
        Some("0d") => (10, &t[2..]),
        _ if t.len() > 1 && t.starts_with('0') => (8, &t[1..]),
        _ => (10, t),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.chars().all(|c| c == '_' || c.is_digit(radix))
    {
        return Err(err());
    }
    let clean: String = digits.chars().filter(|c| *c != '_').collect();
    let v = i64::from_str_radix(&clean, radix).map_err(|_| err())?;
    Ok(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc(v: &serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        msgpack::write_from_json(v, &mut out);
        out
    }

    fn steps(s: &str) -> Vec<Step> {
        RecordAccessor::parse(s).unwrap().steps().to_vec()
    }

    fn k(s: &str) -> Step {
        Step::Key(s.into())
    }

    #[test]
    fn plain_keys_are_literal() {
        for s in ["key1", "ke y2", "this.is.key3", "", "$", "$x", "a[0]"] {
            let a = RecordAccessor::parse(s).unwrap();
            assert_eq!(a.steps(), &[k(s)]);
            assert!(!a.is_nested());
            assert_eq!(a.source(), s);
        }
    }

    #[test]
    fn dot_and_bracket_notation() {
        let expect = vec![k("key1"), k("key2"), Step::Index(0)];
        assert_eq!(steps("$.key1.key2[0]"), expect);
        assert_eq!(steps("$['key1']['key2'][0]"), expect);
        assert_eq!(steps("$[\"key1\"][\"key2\"][0]"), expect);
        let expect = vec![k("key1"), Step::Index(0), k("ke y2")];
        assert_eq!(steps("$['key1'][0]['ke y2']"), expect);
        assert_eq!(steps("$[\"key1\"][0][\"ke y2\"]"), expect);
        let expect = vec![Step::Index(0), k("key1"), Step::Index(1), k("key2")];
        assert_eq!(steps("$.[0].key1.[1].key2"), expect);
        assert_eq!(steps("$[0]['key1'][1]['key2']"), expect);
        assert_eq!(
            steps("$['key1']['this.is.key3']"),
            vec![k("key1"), k("this.is.key3")]
        );
        assert_eq!(
            steps("$.a[-1][2]"),
            vec![k("a"), Step::Index(-1), Step::Index(2)]
        );
        assert_eq!(steps("$.a[0x10]"), vec![k("a"), Step::Index(16)]);
        assert_eq!(steps("$.a[ 1_0 ]"), vec![k("a"), Step::Index(10)]);
        // Ruby's split drops trailing empty parts; inner empty parts are empty keys.
        assert_eq!(steps("$.a."), vec![k("a")]);
        assert_eq!(steps("$.a..b"), vec![k("a"), k(""), k("b")]);
        assert!(RecordAccessor::parse("$.a").unwrap().is_nested());
    }

    #[test]
    fn syntax_errors_in_fluentd_words() {
        for (s, msg) in [
            ("$['key1'", "Incomplete bracket. Invalid syntax: $['key1'"),
            (
                "$.hello[]",
                "missing array index in '[]'. Invalid syntax: $.hello[]",
            ),
            ("$[]", "missing array index in '[]'. Invalid syntax: ]"),
            (
                "$['hello'][]",
                "missing array index in '[]'. Invalid syntax: ]",
            ),
            (
                "$.key1[0]foo",
                "found more characters after ']'. Invalid syntax: $.key1[0]foo",
            ),
            (
                "$['a']x",
                "found more characters after ']'. Invalid syntax: $['a']x",
            ),
            (
                "$.key[0].ke y",
                "whitespace character is not allowed in dot notation. Use bracket notation: ke y",
            ),
            ("$.", "empty keys in dot notation"),
            ("$.....", "empty keys in dot notation"),
            ("$[", "empty keys in bracket notation"),
            (
                "$['key1']['key2\"]",
                "Mismatched quotes. Invalid syntax: $['key1']['key2\"]",
            ),
            (
                "$[\"key1\"][\"key2']",
                "Mismatched quotes. Invalid syntax: $[\"key1\"][\"key2']",
            ),
            (
                "$.a[1",
                "'[' found but ']' not found. Invalid syntax: $.a[1",
            ),
            ("$[1", "'[' found but ']' not found. Invalid syntax: $[1"),
            ("$.a[x]", "invalid value for Integer(): \"x\""),
            ("$[1.5]", "invalid value for Integer(): \"1.5\""),
            // Dots split the path first, even inside brackets.
            (
                "$.a[1.5]",
                "'[' found but ']' not found. Invalid syntax: $.a[1.5]",
            ),
            ("$[09]", "invalid value for Integer(): \"09\""),
        ] {
            assert_eq!(RecordAccessor::parse(s), Err(msg.to_string()), "{s}");
        }
    }

    #[test]
    fn get_follows_dig() {
        let r = enc(&json!({
            "key1": {"key2": [1, 2, 3], "this.is.key3": "v"},
            "ke y2": "v2",
            "this.is.key3": "v3",
            "arr": [{"ke y2": "value"}, null],
            "s": "text",
            "n": null
        }));
        let get = |s: &str| {
            RecordAccessor::parse(s)
                .unwrap()
                .get(&r)
                .map(|v| v.map(|v| msgpack::to_json_value(v).unwrap()))
        };
        assert_eq!(get("this.is.key3"), Ok(Some(json!("v3"))));
        assert_eq!(get("ke y2"), Ok(Some(json!("v2"))));
        assert_eq!(get("$.key1.key2[0]"), Ok(Some(json!(1))));
        assert_eq!(get("$.key1.key2[-1]"), Ok(Some(json!(3))));
        assert_eq!(get("$.key1.key2[3]"), Ok(None));
        assert_eq!(get("$.key1.key2[-4]"), Ok(None));
        assert_eq!(get("$['key1']['this.is.key3']"), Ok(Some(json!("v"))));
        assert_eq!(get("$[\"arr\"][0][\"ke y2\"]"), Ok(Some(json!("value"))));
        assert_eq!(
            get("$.key1"),
            Ok(Some(json!({"key2": [1, 2, 3], "this.is.key3": "v"})))
        );
        assert_eq!(get("missing"), Ok(None));
        assert_eq!(get("$.missing.deeper"), Ok(None));
        // An intermediate nil ends the dig with nothing; a final nil is a present nil.
        assert_eq!(get("$.arr[1].x"), Ok(None));
        assert_eq!(get("$.n.x"), Ok(None));
        assert_eq!(get("n"), Ok(Some(json!(null))));
        // Integer steps on a map look for integer keys, which JSON records do not have.
        assert_eq!(get("$[0]"), Ok(None));
    }

    #[test]
    fn get_reports_shape_errors() {
        let r = enc(&json!({"a": "text", "b": [1], "c": {"d": 5}}));
        let err = |s: &str| {
            RecordAccessor::parse(s)
                .unwrap()
                .get(&r)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("$.a.b"),
            "field $.a is a string, not a map or an array, so key \"b\" cannot be looked up in it"
        );
        assert_eq!(
            err("$.c.d[0]"),
            "field $.c.d is an integer, not a map or an array, so index 0 cannot be looked up in it"
        );
        assert_eq!(
            err("$.b.x"),
            "field $.b is an array, so key \"x\" cannot be looked up in it (arrays take integer indexes)"
        );
        let r2 = enc(&json!({"a b": true}));
        let e = RecordAccessor::parse("$['a b'][0]")
            .unwrap()
            .get(&r2)
            .unwrap_err();
        assert!(
            e.to_string().starts_with("field $['a b'] is a boolean"),
            "{e}"
        );
        let e = RecordAccessor::parse("x")
            .unwrap()
            .get(&enc(&json!("str")))
            .unwrap_err();
        assert!(e.to_string().starts_with("the record is a string"), "{e}");
        let e = RecordAccessor::parse("x")
            .unwrap()
            .get(&[0x82, 0xa1])
            .unwrap_err();
        assert!(matches!(e, AccessError::Decode(_)));
    }

    #[test]
    fn delete_rebuilds_only_the_path() {
        let r = enc(&json!({"a": 1, "nest": {"k1": "v1", "k2": [1, 2, {"x": 1, "y": 2}]}, "b": 2}));
        let del = |s: &str| {
            RecordAccessor::parse(s)
                .unwrap()
                .delete(&r)
                .map(|v| msgpack::to_json_value(&v).unwrap())
        };
        assert_eq!(
            del("a"),
            Some(json!({"nest": {"k1": "v1", "k2": [1, 2, {"x": 1, "y": 2}]}, "b": 2}))
        );
        assert_eq!(
            del("$.nest.k1"),
            Some(json!({"a": 1, "nest": {"k2": [1, 2, {"x": 1, "y": 2}]}, "b": 2}))
        );
        assert_eq!(
            del("$.nest.k2[0]"),
            Some(json!({"a": 1, "nest": {"k1": "v1", "k2": [2, {"x": 1, "y": 2}]}, "b": 2}))
        );
        assert_eq!(
            del("$.nest.k2[-1].x"),
            Some(json!({"a": 1, "nest": {"k1": "v1", "k2": [1, 2, {"y": 2}]}, "b": 2}))
        );
        // Nothing there, or a shape that does not fit: left alone, no error.
        assert_eq!(del("zz"), None);
        assert_eq!(del("$.nest.k2[5]"), None);
        assert_eq!(del("$.nest.k1.x"), None);
        assert_eq!(del("$.nest.k2.x"), None);
        assert_eq!(del("$['key1']['key2']['key3']"), None);
    }

    #[test]
    fn ruby_to_s() {
        let s = |v: serde_json::Value| value_to_string(&enc(&v));
        assert_eq!(s(json!("text")), "text");
        assert_eq!(s(json!(null)), "");
        assert_eq!(s(json!(true)), "true");
        assert_eq!(s(json!(-12)), "-12");
        assert_eq!(s(json!(u64::MAX)), "18446744073709551615");
        assert_eq!(s(json!(0.1)), "0.1");
        assert_eq!(s(json!(2.0)), "2.0");
        assert_eq!(s(json!(["0", 1])), "[\"0\",1]");
        assert_eq!(s(json!({"a": {"b": null}})), "{\"a\":{\"b\":null}}");
        let mut t = Vec::new();
        crate::event::EventTime::new(1475539089, 5).encode(&mut t);
        assert_eq!(value_to_string(&t), "1475539089");
        assert_eq!(value_to_string(&[0xc1]), "");
        for (f, r) in [
            (1e15, "1000000000000000.0"),
            (1e16, "1.0e+16"),
            (1.5e20, "1.5e+20"),
            (0.0001, "0.0001"),
            (0.00001, "1.0e-05"),
            (1.25e-7, "1.25e-07"),
            (-3.5, "-3.5"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(ruby_float_to_s(f), r, "{f}");
        }
    }

    #[test]
    fn ruby_integers() {
        assert_eq!(ruby_integer("12"), Ok(12));
        assert_eq!(ruby_integer(" -3 "), Ok(-3));
        assert_eq!(ruby_integer("0b101"), Ok(5));
        assert_eq!(ruby_integer("017"), Ok(15));
        assert_eq!(ruby_integer("0o17"), Ok(15));
        assert_eq!(ruby_integer("0"), Ok(0));
        for bad in [
            "",
            "1__0",
            "_1",
            "1_",
            "0x",
            "abc",
            "- 1",
            "99999999999999999999",
        ] {
            assert!(ruby_integer(bad).is_err(), "{bad}");
        }
    }
}
