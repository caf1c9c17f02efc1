//! `@type grep`: keeps or drops events by matching record fields against regular expressions.
//!
//! The configuration is Fluentd's `filter_grep`, read unchanged:
//!
//! - `<regexp>` / `<exclude>` sections with `key` (a [record_accessor](crate::record_accessor)
//!   path) and `pattern` (`/re/flags` or bare regex text);
//! - `<and>` / `<or>` blocks holding either `<regexp>` or `<exclude>` sections;
//! - the deprecated `regexp1`…`regexp20` / `exclude1`…`exclude20` parameters (`key pattern`).
//!
//! The rules are Fluentd's, including the ones that surprise: several top-level `<regexp>` must
//! all match (and), several top-level `<exclude>` drop on any match (or); top-level `<regexp>`
//! share one table with `<and><regexp>` and top-level `<exclude>` with `<or><exclude>`, so a key
//! may appear only once across each pair. The field's value is matched as Ruby's `to_s` gives it,
//! so a missing field is matched as the empty string (`pattern /^$/` matches it). A record whose
//! shape a path cannot follow (digging into a string) is kept with a warning, as Fluentd's
//! rescue keeps it.
//!
//! Kept events are copied byte for byte; records are never decoded.

use regex::{Regex, RegexBuilder};

use crate::config::{ConfigError, Element, Pos};
use crate::event::{EventStream, StreamBuilder};
use crate::filter::Filter;
use crate::msgpack;
use crate::record_accessor::{value_to_string, AccessError, RecordAccessor};

/// How many numbered `regexpN` / `excludeN` parameters Fluentd reads.
const REGEXP_MAX_NUM: usize = 20;

/// One `key` + `pattern` test.
#[derive(Debug)]
struct Expression {
    key: RecordAccessor,
    pattern: Regex,
}

impl Expression {
    /// Whether the field's `to_s` matches; a missing field is the empty string.
    fn matches(&self, record: &[u8]) -> Result<bool, AccessError> {
        let Some(v) = self.key.get(record)? else {
            return Ok(self.pattern.is_match(""));
        };
        if let Some(s) = msgpack::as_str(v, 0) {
            return Ok(self.pattern.is_match(s));
        }
        Ok(self.pattern.is_match(&value_to_string(v)))
    }
}

/// A condition table keyed by the `key` text as written, in insertion order (Fluentd keeps a
/// hash per table and refuses a key twice).
#[derive(Debug, Default)]
struct Table(Vec<(String, Expression)>);

impl Table {
    fn has(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    fn insert(&mut self, key: String, e: Expression) {
        self.0.push((key, e));
    }

    fn exprs(&self) -> impl Iterator<Item = &Expression> {
        self.0.iter().map(|(_, e)| e)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The grep filter: four condition tables, evaluated in Fluentd's order.
#[derive(Debug)]
pub struct Grep {
    /// Top-level `<regexp>`, `regexpN` and `<and><regexp>`: every one must match.
    regexp_and: Table,
    /// `<or><regexp>`: at least one must match.
    regexp_or: Table,
    /// `<and><exclude>`: the event is dropped when all match.
    exclude_and: Table,
    /// Top-level `<exclude>`, `excludeN` and `<or><exclude>`: the event is dropped when any
    /// matches.
    exclude_or: Table,
}

/// A `<regexp>`/`<exclude>` section as read: its key text, where that was written, the test.
struct Read {
    key: String,
    key_pos: Pos,
    expr: Expression,
}

impl Grep {
    /// Reads a `<filter>` section of `@type grep`, with Fluentd's configuration errors.
    pub fn configure(section: &Element) -> Result<Grep, ConfigError> {
        let mut regexp_and = Table::default();
        let mut regexp_or = Table::default();
        let mut exclude_and = Table::default();
        let mut exclude_or = Table::default();

        for (kind, table) in [("regexp", &mut regexp_and), ("exclude", &mut exclude_or)] {
            for i in 1..=REGEXP_MAX_NUM {
                let name = format!("{kind}{i}");
                let Some(p) = section.param(&name) else {
                    continue;
                };
                tracing::warn!("'{name}' parameter is deprecated: Use <{kind}> section");
                let Some((key, pattern)) = p.value.split_once(' ') else {
                    return Err(ConfigError::at(
                        &p.value_pos,
                        format!("{name} does not contain 2 parameters"),
                    ));
                };
                if table.has(key) {
                    return Err(ConfigError::at(
                        &p.value_pos,
                        format!("{name} contains a duplicated key, {key}"),
                    ));
                }
                let expr = Expression {
                    key: RecordAccessor::parse(key)
                        .map_err(|m| ConfigError::at(&p.value_pos, m))?,
                    // The numbered form is compiled as written: no `/.../` syntax.
                    pattern: compile_ruby_regex(pattern, false, false)
                        .map_err(|m| ConfigError::at(&p.value_pos, format!("{name}: {m}")))?,
                };
                table.insert(key.to_string(), expr);
            }
        }

        let regexps = read_all(section, "regexp", "regexp")?;
        if regexps.len() > 1 {
            tracing::info!("Top level multiple <regexp> is interpreted as 'and' condition");
        }
        for r in regexps {
            if regexp_and.has(&r.key) {
                return Err(ConfigError::at(
                    &r.key_pos,
                    format!("Duplicate key: {}", r.key),
                ));
            }
            regexp_and.insert(r.key, r.expr);
        }
        let excludes = read_all(section, "exclude", "exclude")?;
        if excludes.len() > 1 {
            tracing::info!("Top level multiple <exclude> is interpreted as 'or' condition");
        }
        for r in excludes {
            if exclude_or.has(&r.key) {
                return Err(ConfigError::at(
                    &r.key_pos,
                    format!("Duplicate key: {}", r.key),
                ));
            }
            exclude_or.insert(r.key, r.expr);
        }

        for (block, regexp_table, exclude_table) in [
            ("and", &mut regexp_and, &mut exclude_and),
            ("or", &mut regexp_or, &mut exclude_or),
        ] {
            for b in section.sections(block) {
                let regexps = read_all(b, "regexp", &format!("{block} > regexp"))?;
                let excludes = read_all(b, "exclude", &format!("{block} > exclude"))?;
                if !regexps.is_empty() && !excludes.is_empty() {
                    return Err(ConfigError::at(
                        &b.pos,
                        format!("Do not specify both <regexp> and <exclude> in <{block}>"),
                    ));
                }
                for (rs, table) in [
                    (regexps, &mut *regexp_table),
                    (excludes, &mut *exclude_table),
                ] {
                    for r in rs {
                        if table.has(&r.key) {
                            return Err(ConfigError::at(
                                &r.key_pos,
                                format!("Duplicate key in <{block}>: {}", r.key),
                            ));
                        }
                        table.insert(r.key, r.expr);
                    }
                }
            }
        }

        Ok(Grep {
            regexp_and,
            regexp_or,
            exclude_and,
            exclude_or,
        })
    }

    /// Whether the event goes on. Conditions are tried in Fluentd's order and short-circuit as
    /// Ruby's `any?`/`none?`/`all?` do, so a shape error is raised (or not) exactly where
    /// Fluentd raises it.
    fn keep(&self, record: &[u8]) -> Result<bool, AccessError> {
        for e in self.regexp_and.exprs() {
            if !e.matches(record)? {
                return Ok(false);
            }
        }
        if !self.regexp_or.is_empty() && !any(&self.regexp_or, record)? {
            return Ok(false);
        }
        if !self.exclude_and.is_empty() {
            let mut all = true;
            for e in self.exclude_and.exprs() {
                if !e.matches(record)? {
                    all = false;
                    break;
                }
            }
            if all {
                return Ok(false);
            }
        }
        if !self.exclude_or.is_empty() && any(&self.exclude_or, record)? {
            return Ok(false);
        }
        Ok(true)
    }
}

fn any(t: &Table, record: &[u8]) -> Result<bool, AccessError> {
    for e in t.exprs() {
        if e.matches(record)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads every `<name>` section below `parent`; `stack` names the section path for messages.
fn read_all(parent: &Element, name: &str, stack: &str) -> Result<Vec<Read>, ConfigError> {
    parent.sections(name).map(|e| read_one(e, stack)).collect()
}

fn read_one(e: &Element, stack: &str) -> Result<Read, ConfigError> {
    let required = |p: &str| {
        ConfigError::at(
            &e.pos,
            format!("'{p}' parameter is required, in section {stack}"),
        )
    };
    let key = e.param("key").ok_or_else(|| required("key"))?;
    let pattern = e.param("pattern").ok_or_else(|| required("pattern"))?;
    let accessor =
        RecordAccessor::parse(&key.value).map_err(|m| ConfigError::at(&key.value_pos, m))?;
    let regex =
        parse_regexp_value(&pattern.value).map_err(|m| ConfigError::at(&pattern.value_pos, m))?;
    Ok(Read {
        key: key.value.clone(),
        key_pos: key.value_pos.clone(),
        expr: Expression {
            key: accessor,
            pattern: regex,
        },
    })
}

impl Filter for Grep {
    fn filter_stream(&self, _tag: &str, es: EventStream) -> EventStream {
        // Until the first dropped event nothing is copied: if every event goes on, the stream
        // itself is passed on.
        let mut out: Option<StreamBuilder> = None;
        for (i, e) in es.iter().enumerate() {
            let keep = self.keep(e.record).unwrap_or_else(|err| {
                tracing::warn!(error = %err, "failed to grep events");
                true
            });
            match (&mut out, keep) {
                (Some(b), true) => b.push_entry(&e),
                (Some(_), false) => {}
                (None, true) => {}
                (None, false) => {
                    let mut b = StreamBuilder::with_capacity(es.bytes().len());
                    for prev in es.iter().take(i) {
                        b.push_entry(&prev);
                    }
                    out = Some(b);
                }
            }
        }
        match out {
            Some(b) => b.finish(),
            None => es,
        }
    }
}

/// Fluentd's `:regexp` parameter type: `/body/` with up to two option letters after the last
/// slash (`i` ignores case, `m` lets `.` match newlines; other letters are ignored, as in
/// Fluentd), or, without a leading slash, the whole text as the regex.
pub fn parse_regexp_value(s: &str) -> Result<Regex, String> {
    if !s.starts_with('/') {
        return compile_ruby_regex(s, false, false);
    }
    let right = s.rfind('/').unwrap_or(0);
    let options = &s[right + 1..];
    if options.chars().count() > 2 {
        return Err(format!("invalid regexp: missing right slash: {s}"));
    }
    let body = if right == 0 { "" } else { &s[1..right] };
    compile_ruby_regex(body, options.contains('i'), options.contains('m'))
}

/// Compiles a Ruby regex with the `regex` crate, keeping Ruby's meaning where the two differ in
/// ways configs rely on:
///
/// - `^` and `$` match at line boundaries (always so in Ruby);
/// - Ruby's `m` option (and inline `(?m)`) lets `.` match newlines, which is `s` here;
/// - `\d \w \s \h` (and their negations) are ASCII-only as in Ruby; `\h` is a hex digit;
/// - `\Z` (end, or before a final newline) is supported.
///
/// Features the `regex` crate lacks (look-around, back-references, possessive quantifiers) are
/// an error naming the pattern rather than a silent difference.
pub fn compile_ruby_regex(src: &str, ignore_case: bool, multiline: bool) -> Result<Regex, String> {
    RegexBuilder::new(&translate_ruby_regex(src))
        .multi_line(true)
        .case_insensitive(ignore_case)
        .dot_matches_new_line(multiline)
        .build()
        .map_err(|e| format!("invalid regexp /{src}/: {e}"))
}

/// Rewrites the Ruby-only parts of a pattern into `regex` crate syntax (see
/// [`compile_ruby_regex`]).
fn translate_ruby_regex(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len() + 8);
    let mut depth = 0usize; // nesting of character classes
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' if i + 1 < chars.len() => {
                let d = chars[i + 1];
                let rep = match d {
                    'd' => Some("[0-9]"),
                    'D' => Some("[^0-9]"),
                    'w' => Some("[0-9A-Za-z_]"),
                    'W' => Some("[^0-9A-Za-z_]"),
                    's' => Some("[\\t\\n\\x0B\\x0C\\r ]"),
                    'S' => Some("[^\\t\\n\\x0B\\x0C\\r ]"),
                    'h' => Some("[0-9A-Fa-f]"),
                    'H' => Some("[^0-9A-Fa-f]"),
                    'Z' if depth == 0 => Some("(?:\\n?\\z)"),
                    _ => None,
                };
                match rep {
                    Some(r) => out.push_str(r),
                    None => {
                        out.push('\\');
                        out.push(d);
                    }
                }
                i += 2;
            }
            '[' => {
                depth += 1;
                out.push('[');
                i += 1;
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                // A `]` right after the opening is a literal in both dialects.
                if chars.get(i) == Some(&']') {
                    out.push_str("\\]");
                    i += 1;
                }
            }
            ']' if depth > 0 => {
                depth -= 1;
                out.push(']');
                i += 1;
            }
            '(' if depth == 0 && chars.get(i + 1) == Some(&'?') => {
                // Inline options `(?mix-mix)` / `(?mix-mix:...)`: Ruby's m is dot-all.
                let mut j = i + 2;
                while j < chars.len() && matches!(chars[j], 'i' | 'm' | 'x' | '-') {
                    j += 1;
                }
                if j > i + 2 && matches!(chars.get(j), Some(':') | Some(')')) {
                    out.push_str("(?");
                    for &f in &chars[i + 2..j] {
                        out.push(if f == 'm' { 's' } else { f });
                    }
                    out.push(chars[j]);
                    i = j + 1;
                } else {
                    out.push_str("(?");
                    i += 2;
                }
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::parse_str;
    use crate::event::EventTime;
    use serde_json::{json, Value};

    fn section(body: &str) -> Element {
        let text = format!("<filter **>\n  @type grep\n{body}\n</filter>\n");
        let mut root = parse_str(&text, "test.conf", ".".into()).unwrap();
        root.elements.remove(0)
    }

    fn configure(body: &str) -> Result<Grep, ConfigError> {
        Grep::configure(&section(body))
    }

    fn stream(records: &[Value]) -> EventStream {
        let mut b = StreamBuilder::default();
        for r in records {
            let mut rec = Vec::new();
            msgpack::write_from_json(r, &mut rec);
            b.push(EventTime::new(1_357_801_331, 0), &rec);
        }
        b.finish()
    }

    fn run(body: &str, records: &[Value]) -> Vec<Value> {
        let g = configure(body).unwrap();
        let out = g.filter_stream("filter.test", stream(records));
        out.iter()
            .map(|e| msgpack::to_json_value(e.record).unwrap())
            .collect()
    }

    fn err(body: &str) -> String {
        configure(body).unwrap_err().message
    }

    fn messages() -> Vec<Value> {
        [
            "2013/01/13T07:02:11.124202 INFO GET /ping",
            "2013/01/13T07:02:13.232645 WARN POST /auth",
            "2013/01/13T07:02:21.542145 WARN GET /favicon.ico",
            "2013/01/13T07:02:43.632145 WARN POST /login",
        ]
        .iter()
        .map(|m| json!({"foo": "bar", "message": m}))
        .collect()
    }

    fn records() -> Vec<Value> {
        [
            ("INFO", "GET", "/ping"),
            ("WARN", "POST", "/auth"),
            ("WARN", "GET", "/favicon.ico"),
            ("WARN", "POST", "/login"),
            ("ERROR", "POST", "/login"),
            ("ERROR", "GET", "/ping"),
            ("WARN", "GET", "/info"),
            ("WARN", "POST", "/ban"),
        ]
        .iter()
        .map(|(l, m, p)| json!({"level": l, "method": m, "path": p}))
        .collect()
    }

    fn pick(all: &[Value], idx: &[usize]) -> Vec<Value> {
        idx.iter().map(|i| all[*i].clone()).collect()
    }

    fn cond(kind: &str, key: &str, pattern: &str) -> String {
        format!("<{kind}>\n key {key}\n pattern {pattern}\n</{kind}>\n")
    }

    #[test]
    fn empty_config_keeps_everything_without_copying() {
        let g = configure("").unwrap();
        let es = stream(&messages());
        let out = g.filter_stream("t", es.clone());
        assert_eq!(out, es);
        assert_eq!(out.bytes().as_ptr(), es.bytes().as_ptr());
    }

    #[test]
    fn numbered_parameters() {
        let out = run("regexp1 message WARN", &messages());
        assert_eq!(out, pick(&messages(), &[1, 2, 3]));
        let out = run("exclude1 message favicon", &messages());
        assert_eq!(out, pick(&messages(), &[0, 1, 3]));
        // Everything after the first space is the pattern, leading spaces included, and
        // the numbered form has no `/.../` syntax.
        let recs = vec![json!({"message": "a foo"}), json!({"message": "afoo"})];
        assert_eq!(run("regexp1 message  foo", &recs), vec![recs[0].clone()]);
        let recs = vec![json!({"m": "/x/"}), json!({"m": "x"})];
        assert_eq!(run("regexp1 m /x/", &recs), vec![recs[0].clone()]);
        // Several numbered regexps must all match; several excludes drop on any.
        let out = run(
            "regexp1 message WARN\nregexp2 foo ^bar$\nexclude1 message auth",
            &messages(),
        );
        assert_eq!(out, pick(&messages(), &[2, 3]));
        let out = run("exclude1 message auth\nexclude2 foo ^baz$", &messages());
        assert_eq!(out, pick(&messages(), &[0, 2, 3]));
        assert_eq!(
            err("regexp1 message"),
            "regexp1 does not contain 2 parameters"
        );
        assert_eq!(
            err("exclude3 message"),
            "exclude3 does not contain 2 parameters"
        );
        assert_eq!(
            err("regexp1 message test\nregexp2 message test2"),
            "regexp2 contains a duplicated key, message"
        );
        assert_eq!(
            err("exclude1 message test\nexclude2 message test2"),
            "exclude2 contains a duplicated key, message"
        );
        // A regexp and an exclude on the same key are fine.
        assert!(configure("regexp1 message a\nexclude1 message b").is_ok());
    }

    #[test]
    fn sections() {
        assert_eq!(
            run(&cond("regexp", "message", "WARN"), &messages()),
            pick(&messages(), &[1, 2, 3])
        );
        assert_eq!(
            run(&cond("exclude", "message", "favicon"), &messages()),
            pick(&messages(), &[0, 1, 3])
        );
        // Top-level regexps: and. Top-level excludes: or.
        let body = cond("regexp", "level", "^ERROR|WARN$")
            + &cond("regexp", "method", "^GET|POST$")
            + &cond("regexp", "path", "^/login$");
        assert_eq!(run(&body, &records()), pick(&records(), &[3, 4]));
        let body = cond("exclude", "level", "^WARN$") + &cond("exclude", "method", "^GET$");
        assert_eq!(run(&body, &records()), pick(&records(), &[4]));
    }

    #[test]
    fn duplicate_keys() {
        let r = |k: &str| cond("regexp", k, "test");
        let x = |k: &str| cond("exclude", k, "test");
        let and = |s: String| format!("<and>\n{s}</and>\n");
        let or = |s: String| format!("<or>\n{s}</or>\n");
        assert_eq!(
            err(&(r("message") + &r("message"))),
            "Duplicate key: message"
        );
        assert_eq!(
            err(&(x("message") + &x("message"))),
            "Duplicate key: message"
        );
        assert_eq!(
            err(&format!("regexp1 message test\n{}", r("message"))),
            "Duplicate key: message"
        );
        assert_eq!(
            err(&format!("exclude1 message test\n{}", x("message"))),
            "Duplicate key: message"
        );
        assert_eq!(
            err(&and(r("message") + &r("message"))),
            "Duplicate key in <and>: message"
        );
        assert_eq!(
            err(&(and(r("message")) + &and(r("message")))),
            "Duplicate key in <and>: message"
        );
        assert_eq!(
            err(&(r("message") + &and(r("message")))),
            "Duplicate key in <and>: message"
        );
        assert_eq!(
            err(&and(x("message") + &x("message"))),
            "Duplicate key in <and>: message"
        );
        assert_eq!(
            err(&(and(x("message")) + &and(x("message")))),
            "Duplicate key in <and>: message"
        );
        assert_eq!(
            err(&(x("message") + &or(x("message")))),
            "Duplicate key in <or>: message"
        );
        assert_eq!(
            err(&(or(r("message")) + &or(r("message")))),
            "Duplicate key in <or>: message"
        );
        // Different tables: no clash.
        assert!(configure(&(x("message") + &and(x("message")))).is_ok());
        assert!(configure(&(r("message") + &or(r("message")))).is_ok());
        // The error points at the repeated key.
        let e = configure(&(r("a") + &r("a"))).unwrap_err();
        assert_eq!(e.pos.unwrap().line, 8);
    }

    #[test]
    fn and_or_content_checks() {
        let both = cond("regexp", "message", "/test/") + &cond("exclude", "level", "/debug/");
        assert_eq!(
            err(&format!("<and>\n{both}</and>")),
            "Do not specify both <regexp> and <exclude> in <and>"
        );
        assert_eq!(
            err(&format!("<or>\n{both}</or>")),
            "Do not specify both <regexp> and <exclude> in <or>"
        );
        // Empty blocks are allowed and change nothing.
        assert_eq!(run("<and>\n</and>\n<or>\n</or>", &records()), records());
        assert_eq!(
            err("<regexp>\n pattern x\n</regexp>"),
            "'key' parameter is required, in section regexp"
        );
        assert_eq!(
            err("<or>\n<exclude>\n key x\n</exclude>\n</or>"),
            "'pattern' parameter is required, in section or > exclude"
        );
    }

    #[test]
    fn and_or_semantics() {
        let and = |s: String| format!("<and>\n{s}</and>\n");
        let or = |s: String| format!("<or>\n{s}</or>\n");
        let re_info_get = cond("regexp", "level", "^INFO$") + &cond("regexp", "method", "^GET$");
        let ex_info_get = cond("exclude", "level", "^INFO$") + &cond("exclude", "method", "^GET$");
        assert_eq!(
            run(&and(re_info_get.clone()), &records()),
            pick(&records(), &[0])
        );
        assert_eq!(
            run(&or(re_info_get), &records()),
            pick(&records(), &[0, 2, 5, 6])
        );
        assert_eq!(
            run(&and(ex_info_get.clone()), &records()),
            pick(&records(), &[1, 2, 3, 4, 5, 6, 7])
        );
        assert_eq!(
            run(&or(ex_info_get), &records()),
            pick(&records(), &[1, 3, 4, 7])
        );

        let re = cond("regexp", "level", "^ERROR|WARN$") + &cond("regexp", "method", "^GET|POST$");
        let ex = cond("exclude", "level", "^WARN$") + &cond("exclude", "method", "^GET$");
        let all = &records();
        assert_eq!(
            run(&(and(re.clone()) + &or(ex.clone())), all),
            pick(all, &[4])
        );
        assert_eq!(
            run(&(and(re.clone()) + &and(ex.clone())), all),
            pick(all, &[1, 3, 4, 5, 7])
        );
        assert_eq!(
            run(&(or(re.clone()) + &and(ex.clone())), all),
            pick(all, &[0, 1, 3, 4, 5, 7])
        );
        assert_eq!(
            run(&(or(re.clone()) + &or(ex.clone())), all),
            pick(all, &[4])
        );
        assert_eq!(
            run(
                &(and(re.clone()) + &cond("regexp", "path", "^/login$")),
                all
            ),
            pick(all, &[3, 4])
        );
        assert_eq!(run(&(re.clone() + &or(ex.clone())), all), pick(all, &[4]));
        assert_eq!(run(&(re + &and(ex)), all), pick(all, &[1, 3, 4, 5, 7]));
    }

    #[test]
    fn patterns_with_slashes_and_options() {
        let recs = vec![
            json!({"m": "atest"}),
            json!({"m": "Atest"}),
            json!({"m": "a\ntest"}),
        ];
        assert_eq!(
            run(&cond("regexp", "m", "/[a-z]test/"), &recs),
            pick(&recs, &[0])
        );
        assert_eq!(
            run(&cond("exclude", "m", "/[A-Z]test/"), &recs),
            pick(&recs, &[0, 2])
        );
        assert_eq!(
            run(&cond("regexp", "m", "/ATEST/i"), &recs),
            pick(&recs, &[0, 1])
        );
        assert_eq!(
            run(&cond("regexp", "m", "/a.test/"), &recs),
            Vec::<Value>::new()
        );
        assert_eq!(
            run(&cond("regexp", "m", "/a.test/m"), &recs),
            pick(&recs, &[2])
        );
        // Unknown option letters are ignored, as in Fluentd.
        assert_eq!(
            run(&cond("regexp", "m", "/ATEST/ix"), &recs),
            pick(&recs, &[0, 1])
        );
        // Bare text is the regex itself.
        assert_eq!(
            run(&cond("regexp", "m", "^[a-z]test$"), &recs),
            pick(&recs, &[0])
        );
        assert_eq!(
            err(&cond("regexp", "m", "/foo/abc")),
            "invalid regexp: missing right slash: /foo/abc"
        );
        assert!(err(&cond("regexp", "m", "/(foo/")).starts_with("invalid regexp /(foo/:"));
        assert!(err("regexp1 m (foo").starts_with("regexp1: invalid regexp /(foo/:"));
    }

    #[test]
    fn ruby_regex_dialect() {
        let m = |re: &str, s: &str| compile_ruby_regex(re, false, false).unwrap().is_match(s);
        // ^ and $ are line anchors in Ruby.
        assert!(m("^b$", "a\nb\nc"));
        assert!(!m("\\Ab\\z", "a\nb"));
        assert!(m("a\\Z", "a\n"));
        assert!(m("a\\Z", "a"));
        assert!(!m("a\\Z", "a\nb"));
        // ASCII-only classes, \h.
        assert!(!m("^\\d$", "٣"));
        assert!(!m("^\\w$", "é"));
        assert!(m("^[\\d\\s]+$", "1 2"));
        assert!(m("^[^\\d]+$", "abc"));
        assert!(m("^\\h+$", "09afAF"));
        assert!(!m("\\h", "xyz"));
        // Ruby's inline m is dot-all.
        assert!(m("(?m:a.b)", "a\nb"));
        assert!(m("(?mi)A.B", "a\nb"));
        assert!(!m("a.b", "a\nb"));
        // Escaped slash, named groups, literal ] at class start.
        assert!(m("\\/ping", "GET /ping"));
        assert!(m("(?<lvl>WARN)", "WARN x"));
        assert!(m("[]x]", "]"));
        assert!(compile_ruby_regex("(?=x)", false, false).is_err());
    }

    #[test]
    fn nested_keys() {
        let recs: Vec<Value> = ["INFO", "WARN", "WARN"]
            .iter()
            .map(|l| json!({"foo": "bar", "message": {"nest1": {"nest2": l}}}))
            .collect();
        assert_eq!(
            run(&cond("regexp", "$.message.nest1.nest2", "WARN"), &recs),
            pick(&recs, &[1, 2])
        );
        assert_eq!(
            run(&cond("exclude", "$.message.nest1.nest2", "WARN"), &recs),
            pick(&recs, &[0])
        );
        assert_eq!(
            run(
                &cond("regexp", "$['message']['nest1']['nest2']", "INFO"),
                &recs
            ),
            pick(&recs, &[0])
        );
        assert_eq!(
            run("regexp1 $.message.nest1.nest2 INFO", &recs),
            pick(&recs, &[0])
        );
        let recs = vec![json!({"a": [{"b": "x"}, {"b": "y"}]})];
        assert_eq!(run(&cond("regexp", "$.a[-1].b", "^y$"), &recs), recs);
        assert_eq!(
            run(&cond("regexp", "$.a[0].b", "^y$"), &recs),
            Vec::<Value>::new()
        );
        assert_eq!(
            err(&cond("regexp", "$.", "x")),
            "empty keys in dot notation"
        );
        assert_eq!(
            err("regexp1 $.a[x] x"),
            "invalid value for Integer(): \"x\""
        );
        // Dots split the path before brackets are read, as in Fluentd.
        assert_eq!(
            err("regexp1 $.a[1.5] x"),
            "'[' found but ']' not found. Invalid syntax: $.a[1.5]"
        );
    }

    #[test]
    fn non_string_values_are_matched_as_ruby_to_s() {
        for v in [json!(["0"]), json!({"0": "0"}), json!(0), json!(0.1)] {
            let recs = vec![json!({"foo": "bar", "message": v})];
            assert_eq!(run("regexp1 message 0", &recs), recs);
        }
        let recs = vec![
            json!({"message": true}),
            json!({"message": 2.0}),
            json!({"message": null}),
        ];
        assert_eq!(run("regexp1 message true", &recs), pick(&recs, &[0]));
        assert_eq!(run("regexp1 message ^2\\.0$", &recs), pick(&recs, &[1]));
        assert_eq!(run("regexp1 message ^$", &recs), pick(&recs, &[2]));
        assert_eq!(
            run(
                &cond("regexp", "message", "/^\\[\"x\",1\\]$/"),
                &[json!({"message": ["x", 1]})]
            )
            .len(),
            1
        );
    }

    #[test]
    fn missing_fields_are_the_empty_string() {
        let recs = vec![json!({"a": "x"}), json!({"b": "y"}), json!({"a": ""})];
        assert_eq!(run(&cond("regexp", "a", "x"), &recs), pick(&recs, &[0]));
        assert_eq!(run(&cond("exclude", "a", "x"), &recs), pick(&recs, &[1, 2]));
        // A pattern that matches "" matches a missing field, as in Fluentd.
        assert_eq!(run(&cond("exclude", "a", "/^$/"), &recs), pick(&recs, &[0]));
        assert_eq!(
            run(&cond("regexp", "a", "/^$/"), &recs),
            pick(&recs, &[1, 2])
        );
        assert_eq!(
            run(&cond("regexp", "$.a.b", "/^$/"), &[json!({"c": 1})]).len(),
            1
        );
    }

    #[test]
    fn shape_errors_keep_the_event() {
        // Digging into a string raises in Fluentd; its rescue passes the record on.
        let recs = vec![json!({"message": "text", "level": "DEBUG"})];
        assert_eq!(
            run(&cond("regexp", "$.message.inner", "never"), &recs),
            recs
        );
        // Conditions evaluated before the failing one still drop.
        let body = cond("regexp", "level", "INFO") + &cond("exclude", "$.message.inner", "x");
        assert_eq!(run(&body, &recs), Vec::<Value>::new());
    }

    #[test]
    fn kept_entries_are_byte_identical() {
        // Integer time and a str8-encoded key: re-encoding would change both.
        let mut raw = vec![0x92, 0xce];
        raw.extend_from_slice(&1_475_539_089u32.to_be_bytes());
        raw.extend_from_slice(&[0x81, 0xd9, 0x01, b'm', 0xa1, b'x']);
        let mut drop = vec![0x92, 0x01, 0x81, 0xa1, b'm', 0xa1, b'y'];
        let mut data = raw.clone();
        data.append(&mut drop);
        data.extend_from_slice(&raw);
        let es = EventStream::from_entries(bytes::Bytes::from(data)).unwrap();
        let out = configure("regexp1 m x").unwrap().filter_stream("t", es);
        assert_eq!(out.len(), 2);
        assert_eq!(out.bytes().as_ref(), [raw.clone(), raw].concat().as_slice());
    }

    #[test]
    fn invalid_utf8_does_not_panic() {
        let rec = [0x81, 0xa1, b'm', 0xa2, 0xff, b'W'];
        let mut b = StreamBuilder::default();
        b.push(EventTime::new(1, 0), &rec);
        let out = configure("regexp1 m W")
            .unwrap()
            .filter_stream("t", b.finish());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn parameters_are_marked_used() {
        let s = section(
            &(cond("regexp", "a", "x")
                + "<and>\n"
                + &cond("exclude", "b", "y")
                + "</and>\nregexp2 c z\nregexp21 d w"),
        );
        Grep::configure(&s).unwrap();
        let unused: Vec<String> = s.unused().iter().map(|u| u.to_error().message).collect();
        assert_eq!(
            unused,
            vec!["parameter 'regexp21' in <filter **> is not used.".to_string()]
        );
    }
}
