//! Parser for Fluentd's v1 configuration syntax.
//!
//! The grammar is Fluentd's (`lib/fluent/config/v1_parser.rb` and `literal_parser.rb`), written
//! with winnow over a [`LocatingSlice`] so every element, parameter and error carries its byte
//! offset, turned into a line and column at the end:
//!
//! - `<name arg>` … `</name>` sections, nested to any depth;
//! - `key value` parameters; a key alone on its line has the empty value;
//! - unquoted values run to the end of the line, minus trailing blanks and a comment that starts
//!   with whitespace + `#` (`foo#bar` keeps its `#`); backslashes are literal;
//! - double-quoted values may span lines and know the escapes `\" \' \\ \r \n \t \f \b \0`,
//!   backslash + symbol gives the symbol, backslash + letter or digit is an error; `#{...}`
//!   embeds one of the Ruby forms listed in [`super::embedded`];
//! - single-quoted values know only `\'` and `\\`;
//! - a value starting with `[` or `{` is JSON, possibly over several lines, with `#` comments;
//! - `@include PATH` (and the older bare `include`) splices other files in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use winnow::error::{ErrMode, ModalResult, Needed, ParserError};
use winnow::stream::{LocatingSlice, Location, Stream};

use super::element::{Element, Param};
use super::error::{ConfigError, Pos};

type Input<'a> = LocatingSlice<&'a str>;

/// A syntax error at a byte offset of the text being parsed.
#[derive(Debug)]
struct Syntax {
    offset: usize,
    message: String,
}

impl<'a> ParserError<Input<'a>> for Syntax {
    type Inner = Self;
    fn from_input(input: &Input<'a>) -> Self {
        Syntax {
            offset: input.current_token_start(),
            message: "syntax error".into(),
        }
    }
    fn incomplete(input: &Input<'a>, _needed: Needed) -> Self {
        Self::from_input(input)
    }
    fn into_inner(self) -> Result<Self::Inner, Self> {
        Ok(self)
    }
}

type PResult<T> = ModalResult<T, Syntax>;

/// Stops parsing with `message` at the current position. Syntax errors are never backtracked.
fn fail<T>(input: &Input<'_>, message: impl Into<String>) -> PResult<T> {
    Err(ErrMode::Cut(Syntax {
        offset: input.current_token_start(),
        message: message.into(),
    }))
}

/// The result of an `@include` that could not be read or parsed.
#[derive(Debug)]
struct IncludeFailed(ConfigError);

/// Maps byte offsets of one file to line and column.
struct LineIndex<'a> {
    text: &'a str,
    file: Arc<str>,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str, file: Arc<str>) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, file, starts }
    }

    fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = match self.starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.starts[line];
        let column = self.text[start..offset].chars().count();
        Pos {
            file: self.file.clone(),
            line: line as u32 + 1,
            column: column as u32,
        }
    }
}

/// Parses a configuration file and the files it includes into a root element named `ROOT`.
pub fn parse_file(path: &Path) -> Result<Element, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        pos: None,
        message: format!("cannot read config file {}: {e}", path.display()),
    })?;
    parse_str(&text, &path.display().to_string(), base_dir(path))
}

fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Parses configuration text; `file` names it in positions, `base` resolves relative includes.
pub fn parse_str(text: &str, file: &str, base: PathBuf) -> Result<Element, ConfigError> {
    let file: Arc<str> = Arc::from(file);
    let mut root = Element::new(
        "ROOT",
        "",
        Pos {
            file: file.clone(),
            line: 1,
            column: 0,
        },
    );
    let mut ctx = Context { base, depth: 0 };
    parse_into(text, file, &mut ctx, &mut root)?;
    Ok(root)
}

/// State shared by a parse and the includes it pulls in.
struct Context {
    base: PathBuf,
    depth: usize,
}

/// Parses `text` as the body of `target` (root level: no closing tag expected).
fn parse_into(
    text: &str,
    file: Arc<str>,
    ctx: &mut Context,
    target: &mut Element,
) -> Result<(), ConfigError> {
    let index = LineIndex::new(text, file);
    let mut input = LocatingSlice::new(text);
    let mut parser = Parser {
        index: &index,
        ctx,
        include_error: None,
    };
    let result = parser.body(&mut input, None, target);
    if let Some(IncludeFailed(e)) = parser.include_error.take() {
        return Err(e);
    }
    match result {
        Ok(()) => Ok(()),
        Err(ErrMode::Cut(s)) | Err(ErrMode::Backtrack(s)) => {
            Err(ConfigError::at(&index.pos(s.offset), s.message))
        }
        Err(ErrMode::Incomplete(_)) => Err(ConfigError::at(
            &index.pos(text.len()),
            "unexpected end of file",
        )),
    }
}

struct Parser<'i, 'c> {
    index: &'i LineIndex<'i>,
    ctx: &'c mut Context,
    include_error: Option<IncludeFailed>,
}

/// Sections whose direct `@name` parameters must be one of the reserved ones.
const ELEM_SYMBOLS: &[&str] = &["match", "source", "filter", "system"];
/// The reserved `@` parameters.
const RESERVED_PARAMS: &[&str] = &["@type", "@id", "@label", "@log_level"];
/// Deepest `@include` nesting accepted (guards against include cycles).
const MAX_INCLUDE_DEPTH: usize = 32;

fn rest<'a>(input: &Input<'a>) -> &'a str {
    let s: &&str = input;
    s
}

fn advance(input: &mut Input<'_>, n: usize) {
    let _ = input.next_slice(n);
}

fn offset(input: &Input<'_>) -> usize {
    input.current_token_start()
}

/// Length of a run of blanks, newlines and comments at the start of `s` (Fluentd's SPACING).
fn spacing_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            _ => break,
        }
    }
    i
}

/// Length of Fluentd's LINE_END at the start of `s`: blanks, an optional comment, then a newline
/// or the end of the text, repeated. `None` when `s` does not start with a line end.
fn line_end_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut matched = false;
    loop {
        let mut j = i;
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
            j += 1;
        }
        if j < b.len() && b[j] == b'#' {
            while j < b.len() && b[j] != b'\n' && b[j] != b'\r' {
                j += 1;
            }
        }
        if j >= b.len() {
            return Some(j);
        }
        if b[j] == b'\r' || b[j] == b'\n' {
            j += 1;
            i = j;
            matched = true;
            continue;
        }
        return if matched { Some(i) } else { None };
    }
}

/// Where an unquoted string stops.
#[derive(Clone, Copy)]
enum Boundary {
    /// A value: at a line end (blanks, optional comment, newline).
    LineEnd,
    /// A key: at whitespace, a comment or the end.
    Spacing,
    /// A section argument: at optional blanks followed by `>`.
    TagEnd,
}

impl Boundary {
    fn at(self, s: &str) -> bool {
        match self {
            Boundary::LineEnd => line_end_len(s).is_some(),
            Boundary::Spacing => {
                s.is_empty() || matches!(s.as_bytes()[0], b' ' | b'\t' | b'\r' | b'\n')
            }
            Boundary::TagEnd => s
                .trim_start_matches([' ', '\t', '\r', '\n'])
                .starts_with('>'),
        }
    }
}

impl Parser<'_, '_> {
    fn pos(&self, offset: usize) -> Pos {
        self.index.pos(offset)
    }

    /// Parses parameters and sections until `</name>` (or the end of text at root level).
    fn body(
        &mut self,
        input: &mut Input<'_>,
        name: Option<&str>,
        elem: &mut Element,
    ) -> PResult<()> {
        loop {
            advance(input, spacing_len(rest(input)));
            let s = rest(input);
            if s.is_empty() {
                return match name {
                    None => Ok(()),
                    Some(n) => fail(
                        input,
                        format!("expected end tag '</{n}>' but got end of file"),
                    ),
                };
            }
            if s.starts_with('<') {
                let start = offset(input);
                advance(input, 1);
                if rest(input).starts_with('/') {
                    let tag_start = start;
                    advance(input, 1);
                    let e_name = element_name(input);
                    advance(input, blank_len(rest(input)));
                    if !rest(input).starts_with('>') {
                        return fail(input, "expected character in tag name");
                    }
                    advance(input, 1);
                    match line_end_len(rest(input)) {
                        Some(n) => advance(input, n),
                        None => return fail(input, "expected end of line after end tag"),
                    }
                    if Some(e_name) != name {
                        // Point at the end tag itself, not past it.
                        return Err(ErrMode::Cut(Syntax {
                            offset: tag_start,
                            message: "unmatched end tag".into(),
                        }));
                    }
                    return Ok(());
                }
                let e_name = element_name(input);
                if e_name.is_empty() {
                    return fail(input, "expected element name");
                }
                advance(input, blank_len(rest(input)));
                let arg_start = offset(input);
                let arg = self
                    .scan_string(input, Boundary::TagEnd)?
                    .unwrap_or_default();
                advance(input, blank_len(rest(input)));
                if !rest(input).starts_with('>') {
                    return fail(input, "expected '>'");
                }
                advance(input, 1);
                match line_end_len(rest(input)) {
                    Some(n) => advance(input, n),
                    None => return fail(input, "expected end of line after tag"),
                }
                let mut child = Element::new(e_name, arg.trim(), self.pos(start));
                child.arg_pos = self.pos(arg_start);
                self.body(input, Some(e_name), &mut child)?;
                elem.elements.push(child);
                continue;
            }

            let key_start = offset(input);
            let key = self
                .scan_string(input, Boundary::Spacing)?
                .unwrap_or_default();
            let ws = blank_or_newline_len(rest(input));
            let ws_text = &rest(input)[..ws];
            let had_newline = ws_text.contains('\n');
            advance(input, ws);
            let value_start = offset(input);
            if had_newline || rest(input).is_empty() {
                elem.params.push(Param::new(
                    key,
                    String::new(),
                    self.pos(key_start),
                    self.pos(value_start),
                ));
                continue;
            }
            if key == "@include" || key == "include" {
                let path = self
                    .scan_string(input, Boundary::LineEnd)?
                    .unwrap_or_default();
                self.include(input, &path, value_start, elem)?;
                if let Some(n) = line_end_len(rest(input)) {
                    advance(input, n);
                }
                continue;
            }
            if key.starts_with('@') && !RESERVED_PARAMS.contains(&key.as_str()) {
                let strict = name.is_none_or(|n| ELEM_SYMBOLS.contains(&n));
                if strict {
                    return fail(
                        input,
                        format!(
                            "'@' is the system reserved prefix. Don't use '@' prefix parameter in the configuration: {key}"
                        ),
                    );
                }
                tracing::warn!(
                    file = %self.index.file,
                    line = self.pos(key_start).line,
                    "'@' is the system reserved prefix. It works in the nested configuration for now but it will be rejected: {key}"
                );
            }
            let value = self.literal(input)?;
            match line_end_len(rest(input)) {
                Some(n) => advance(input, n),
                None => return fail(input, "expected end of line"),
            }
            elem.params.push(Param::new(
                key,
                value,
                self.pos(key_start),
                self.pos(value_start),
            ));
        }
    }

    /// A value: JSON when it starts with `[` or `{`, otherwise a (quoted) string.
    fn literal(&mut self, input: &mut Input<'_>) -> PResult<String> {
        advance(input, blank_len(rest(input)));
        let s = rest(input);
        if s.starts_with('[') || s.starts_with('{') {
            return self.json(input);
        }
        Ok(self
            .scan_string(input, Boundary::LineEnd)?
            .unwrap_or_default())
    }

    fn scan_string(
        &mut self,
        input: &mut Input<'_>,
        boundary: Boundary,
    ) -> PResult<Option<String>> {
        let s = rest(input);
        if s.starts_with('"') {
            advance(input, 1);
            return self.double_quoted(input).map(Some);
        }
        if s.starts_with('\'') {
            advance(input, 1);
            return single_quoted(input).map(Some);
        }
        Ok(nonquoted(input, boundary))
    }

    fn double_quoted(&mut self, input: &mut Input<'_>) -> PResult<String> {
        let mut out = String::new();
        loop {
            let s = rest(input);
            let mut chars = s.chars();
            let Some(c) = chars.next() else {
                return fail(input, "unexpected end of file in a double quoted string");
            };
            match c {
                '"' => {
                    advance(input, 1);
                    return Ok(out);
                }
                '\\' => {
                    let Some(e) = chars.next() else {
                        return fail(input, "unexpected end of file in a double quoted string");
                    };
                    match e {
                        // A backslash at the end of a line continues the string on the next one.
                        '\n' => {}
                        '\r' if chars.next() == Some('\n') => advance(input, 1),
                        '"' => out.push('"'),
                        '\'' => out.push('\''),
                        'r' => out.push('\r'),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'f' => out.push('\x0c'),
                        'b' => out.push('\x08'),
                        '0' => out.push('\0'),
                        e if e.is_ascii_alphanumeric() => {
                            return fail(
                                input,
                                format!("unexpected back-slash escape character '{e}'"),
                            );
                        }
                        e => out.push(e),
                    }
                    advance(input, 1 + e.len_utf8());
                }
                '#' if s.starts_with("#{") => {
                    let start = offset(input);
                    advance(input, 2);
                    let code = embedded_code(input)?;
                    match super::embedded::evaluate(code) {
                        Ok(v) => out.push_str(&v),
                        Err(msg) => {
                            return Err(ErrMode::Cut(Syntax {
                                offset: start,
                                message: msg,
                            }));
                        }
                    }
                }
                c => {
                    out.push(c);
                    advance(input, c.len_utf8());
                }
            }
        }
    }

    /// A JSON array or object, possibly spanning lines, with `#` comments outside strings.
    /// Returned re-serialized, as Fluentd does.
    fn json(&mut self, input: &mut Input<'_>) -> PResult<String> {
        let s = rest(input);
        let is_array = s.starts_with('[');
        let mut text = String::new();
        let mut depth = 0usize;
        let mut in_string = false;
        let mut escaped = false;
        let mut end = None;
        let mut iter = s.char_indices().peekable();
        while let Some((i, c)) = iter.next() {
            if in_string {
                text.push(c);
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
                continue;
            }
            match c {
                '#' => {
                    // A comment runs to the end of the line.
                    while let Some(&(_, n)) = iter.peek() {
                        if n == '\n' {
                            break;
                        }
                        iter.next();
                    }
                }
                '"' => {
                    in_string = true;
                    text.push(c);
                }
                '[' | '{' => {
                    depth += 1;
                    text.push(c);
                }
                ']' | '}' => {
                    text.push(c);
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                c => text.push(c),
            }
        }
        let kind = if is_array { "array" } else { "hash" };
        let Some(end) = end else {
            advance(input, s.len());
            return fail(input, format!("got incomplete JSON {kind} configuration"));
        };
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(v) => {
                advance(input, end);
                Ok(v.to_string())
            }
            Err(e) => fail(
                input,
                format!("got incomplete JSON {kind} configuration: {e}"),
            ),
        }
    }

    fn include(
        &mut self,
        input: &mut Input<'_>,
        path: &str,
        at: usize,
        elem: &mut Element,
    ) -> PResult<()> {
        let pos = self.pos(at);
        let err = |msg: String| ConfigError::at(&pos, msg);
        if path.starts_with("http://") || path.starts_with("https://") {
            return self.include_failed(
                input,
                err(format!("@include of a URL is not supported: {path}")),
            );
        }
        if self.ctx.depth >= MAX_INCLUDE_DEPTH {
            return self.include_failed(
                input,
                err(format!(
                    "@include nested deeper than {MAX_INCLUDE_DEPTH} files (a cycle?): {path}"
                )),
            );
        }
        let path = path.strip_prefix("file://").unwrap_or(path);
        let full = if Path::new(path).is_absolute() {
            PathBuf::from(path)
        } else {
            self.ctx.base.join(path)
        };
        let pattern = full.to_string_lossy().to_string();
        let is_glob = pattern.contains(['*', '?', '[']);
        let mut files: Vec<PathBuf> = match glob::glob(&pattern) {
            Ok(paths) => paths
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect(),
            Err(e) => {
                return self
                    .include_failed(input, err(format!("invalid @include pattern {path}: {e}")))
            }
        };
        files.sort();
        if files.is_empty() {
            if is_glob {
                tracing::warn!(file = %pos.file, line = pos.line, "@include pattern {path} matches no file");
            } else {
                return self.include_failed(
                    input,
                    err(format!("@include file not found: {}", full.display())),
                );
            }
        }
        for f in files {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) => {
                    return self.include_failed(
                        input,
                        err(format!("cannot read included file {}: {e}", f.display())),
                    )
                }
            };
            let saved = std::mem::replace(&mut self.ctx.base, base_dir(&f));
            self.ctx.depth += 1;
            let r = parse_into(&text, Arc::from(f.display().to_string()), self.ctx, elem);
            self.ctx.depth -= 1;
            self.ctx.base = saved;
            if let Err(e) = r {
                return self.include_failed(input, e);
            }
        }
        Ok(())
    }

    /// Aborts the parse of this file with an error that already has its own position.
    fn include_failed(&mut self, input: &Input<'_>, e: ConfigError) -> PResult<()> {
        self.include_error = Some(IncludeFailed(e));
        fail(input, "include failed")
    }
}

fn element_name<'a>(input: &mut Input<'a>) -> &'a str {
    let s = rest(input);
    let n = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    advance(input, n);
    &s[..n]
}

fn blank_len(s: &str) -> usize {
    s.bytes().take_while(|b| *b == b' ' || *b == b'\t').count()
}

fn blank_or_newline_len(s: &str) -> usize {
    s.bytes()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count()
}

fn single_quoted(input: &mut Input<'_>) -> PResult<String> {
    let mut out = String::new();
    loop {
        let s = rest(input);
        if s.starts_with('\'') {
            advance(input, 1);
            return Ok(out);
        }
        if s.starts_with("\\'") {
            out.push('\'');
            advance(input, 2);
            continue;
        }
        if s.starts_with("\\\\") {
            out.push('\\');
            advance(input, 2);
            continue;
        }
        match s.chars().next() {
            Some(c) if c != '\n' && c != '\r' => {
                out.push(c);
                advance(input, c.len_utf8());
            }
            _ => return fail(input, "unexpected end of line in a single quoted string"),
        }
    }
}

fn nonquoted(input: &mut Input<'_>, boundary: Boundary) -> Option<String> {
    let s = rest(input);
    let mut end = 0;
    for (i, c) in s.char_indices() {
        let r = &s[i..];
        if c != '#' && boundary.at(r) {
            break;
        }
        if matches!(boundary, Boundary::LineEnd) && (c == '\n' || c == '\r') {
            break;
        }
        end = i + c.len_utf8();
    }
    // A `#` right after whitespace starts a comment: LineEnd already stops there because the
    // blanks before it match; a `#` glued to text is part of the value.
    if end == 0 {
        return None;
    }
    advance(input, end);
    Some(s[..end].to_string())
}

/// The Ruby code between `#{` and its closing `}`, braces and quotes balanced.
fn embedded_code<'a>(input: &mut Input<'a>) -> PResult<&'a str> {
    let s = rest(input);
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '{' => depth += 1,
            '}' if depth == 0 => {
                advance(input, i + 1);
                return Ok(&s[..i]);
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    fail(
        input,
        "unterminated embedded code #{...} in a double quoted string",
    )
}
