//! Tag patterns of `<match>` and `<filter>` directives, with the semantics of Fluentd v1.
//!
//! A directive's argument holds one or more patterns separated by whitespace; the directive takes
//! a tag when any of them matches it. An empty argument stands for `**`. Each pattern is one of:
//!
//! * `**` alone, which matches every tag.
//! * `/regex/`, a pattern that starts and ends with `/`: the text between the slashes is a regular
//!   expression matched against the tag with `\A` put before it and an end anchor after it. As in
//!   Fluentd the anchors are not wrapped around the expression in a group, so `/a|b/` takes every
//!   tag that starts with `a` or ends with `b`. The syntax is the [`regex`] crate's, not Ruby's
//!   (there is no look-around and no back-reference); `^` and `$` match at line ends, as in Ruby.
//!   A pattern that starts with `/` but does not end with one is the error
//!   `invalid match - regex`; an expression that does not compile is an error naming it.
//! * a glob, matched against the whole tag:
//!   * tag parts are separated by `.`;
//!   * `*` matches one part: any characters but `.`, possibly none (`a.*` matches `a.` and `a.b`,
//!     not `a` nor `a.b.c`);
//!   * `**` matches zero or more parts: `a.**` matches `a`, `a.b` and `a.b.c` but not `ab`,
//!     `**.b` matches `b`, `x.b` and `x.y.b`; glued to text (`a**`) it matches any characters, so
//!     `a**` takes every tag that starts with `a`;
//!   * `{x,y}` matches either alternative; alternatives may hold dots, `**` and nested groups
//!     (`a.{b.**,c}` matches `a.b`, `a.b.c` and `a.c`, not `a.c.d`);
//!   * `\` takes the next character literally, and every other character is literal too.
//!
//! Fluentd compiles a glob into a Ruby regular expression; this module reproduces the outcome of
//! that translation exactly, quirks included:
//!
//! * A `.` at the very end of a glob is dropped (`a.` matches `a`), as is a trailing lone `\`.
//! * `.**` glued to following text asks for a `.` (or the end) and then any characters: `a.**b`
//!   matches `a.b` and `a.xb` but not `ab`.
//! * A `{` left unclosed is closed at the end of the pattern, but Fluentd then joins its
//!   alternatives as *literal strings* holding their translated regular-expression text: `{a,b`
//!   matches `a` and `b`, while `{b.c` matches only the six characters `b\.c`. Such a literal that
//!   would exceed 1 MiB (only deep unclosed nesting makes one) matches nothing.
//! * `}` and `,` outside any group are literal characters.
//! * Like Ruby's `.`, the `**` of a glob does not cross a newline, and like Ruby's `\Z` the end of
//!   any pattern but a lone `**` also matches just before a final newline.
//!
//! Groups with several alternatives may be nested at most [`MAX_GROUP_DEPTH`] deep; deeper
//! nesting is an error (Fluentd has no such limit of its own).

use regex::{Regex, RegexBuilder};

/// How deeply groups with several alternatives may nest inside one another in a glob.
pub const MAX_GROUP_DEPTH: usize = 256;

/// The longest translated text an unclosed group's alternative keeps; a longer one matches nothing.
const MAX_SOURCE_LEN: usize = 1 << 20;

/// One compiled pattern list of a `<match>`/`<filter>` directive.
#[derive(Debug, Clone)]
pub struct MatchPatterns {
    source: String,
    patterns: Vec<MatchPattern>,
}

impl MatchPatterns {
    /// Parses a directive argument (whitespace-separated patterns; empty = `**`).
    ///
    /// The first pattern that does not compile is the error.
    pub fn parse(arg: &str) -> Result<MatchPatterns, String> {
        let mut patterns = arg
            .split(is_ruby_space)
            .filter(|p| !p.is_empty())
            .map(MatchPattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            patterns.push(MatchPattern {
                source: "**".to_owned(),
                kind: Kind::All,
            });
        }
        Ok(MatchPatterns {
            source: arg.to_owned(),
            patterns,
        })
    }

    /// Whether `tag` matches any of the patterns.
    pub fn matches(&self, tag: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(tag))
    }

    /// The patterns of the list, in the order the argument gave them.
    pub fn patterns(&self) -> &[MatchPattern] {
        &self.patterns
    }

    /// The directive argument this list was parsed from, for messages.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// One compiled pattern: `**`, a `/regex/` or a glob.
#[derive(Debug, Clone)]
pub struct MatchPattern {
    source: String,
    kind: Kind,
}

/// What a [`MatchPattern`] compiled to.
#[derive(Debug, Clone)]
enum Kind {
    /// A lone `**`: every tag.
    All,
    /// A `/regex/`, anchors added.
    Regex(Regex),
    /// A glob, as the sequence of steps its translation performs.
    Glob(Vec<Node>),
}

impl MatchPattern {
    /// Parses one pattern (no whitespace splitting): `**`, `/regex/` or a glob.
    pub fn parse(pattern: &str) -> Result<MatchPattern, String> {
        let kind = if pattern == "**" {
            Kind::All
        } else if let Some(rest) = pattern.strip_prefix('/') {
            if !pattern.ends_with('/') {
                return Err("invalid match - regex".to_owned());
            }
            // A lone "/" both starts and ends with a slash; its expression is empty.
            let body = rest.strip_suffix('/').unwrap_or("");
            Kind::Regex(compile_regex(pattern, body)?)
        } else {
            Kind::Glob(compile_glob(pattern)?)
        };
        Ok(MatchPattern {
            source: pattern.to_owned(),
            kind,
        })
    }

    /// Whether `tag` matches this pattern.
    pub fn matches(&self, tag: &str) -> bool {
        match &self.kind {
            Kind::All => true,
            Kind::Regex(re) => re.is_match(tag),
            Kind::Glob(nodes) => glob_matches(nodes, tag.as_bytes()),
        }
    }

    /// The pattern text this was parsed from, for messages.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// Whether `c` is whitespace to Ruby's `\s`, which splits a directive argument.
fn is_ruby_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Compiles the expression of a `/regex/` pattern the way Fluentd does: `\A` + body + `\Z`.
fn compile_regex(pattern: &str, body: &str) -> Result<Regex, String> {
    // Ruby's `\Z` is the end of the text or the place before a final newline; as the last item of
    // the expression `\n?\z` decides the same. A body ending in an unpaired backslash turns the
    // appended `\Z` into a literal backslash and `Z`, in both syntaxes.
    let trailing_backslashes = body.bytes().rev().take_while(|&b| b == b'\\').count();
    let end = if trailing_backslashes % 2 == 1 {
        r"\Z"
    } else {
        r"\n?\z"
    };
    RegexBuilder::new(&format!(r"\A{body}{end}"))
        .multi_line(true)
        .build()
        .map_err(|e| format!("invalid match - regex {pattern}: {e}"))
}

/// One step of a compiled glob, named after the Ruby regular-expression text Fluentd emits.
#[derive(Debug, Clone)]
enum Node {
    /// These bytes, literally.
    Lit(Vec<u8>),
    /// `[^\.]*`, from `*`: any bytes but `.`.
    Segment,
    /// `.*`, from `**`: any bytes but a newline.
    Any,
    /// `(?:.*\.|\A)`, from `**.`: the start of the tag, or anything up to and including a `.`.
    DeepPrefix,
    /// `(?![^\.])`, from `.` before `**`: the next byte is `.` or the tag ends here.
    DotAhead,
    /// A literal too long to keep; matches nothing.
    Never,
    /// A group: any of the sequences.
    Alt(Vec<Vec<Node>>),
}

/// The translation of one alternative (or of the whole glob) while it is being read.
struct Frame {
    nodes: Vec<Node>,
    /// The Ruby regular-expression text Fluentd builds for it; `None` once longer than
    /// [`MAX_SOURCE_LEN`]. It matters only when the frame ends up in an unclosed group.
    src: Option<String>,
    /// How deeply groups with several alternatives nest in `nodes`.
    depth: usize,
}

impl Frame {
    fn new() -> Frame {
        Frame {
            nodes: Vec::new(),
            src: Some(String::new()),
            depth: 0,
        }
    }

    /// Appends a step and its Ruby text.
    fn emit(&mut self, node: Node, src: &str) {
        self.push_node(node);
        self.push_src(src);
    }

    fn push_node(&mut self, node: Node) {
        if let (Node::Lit(more), Some(Node::Lit(prev))) = (&node, self.nodes.last_mut()) {
            prev.extend_from_slice(more);
        } else {
            self.nodes.push(node);
        }
    }

    fn push_src(&mut self, src: &str) {
        if let Some(s) = &mut self.src {
            s.push_str(src);
            if s.len() > MAX_SOURCE_LEN {
                self.src = None;
            }
        }
    }

    /// Appends a finished group: its steps, Ruby text and nesting depth.
    fn append_group(&mut self, nodes: Vec<Node>, src: Option<String>, depth: usize) {
        for n in nodes {
            self.push_node(n);
        }
        match src {
            Some(s) => self.push_src(&s),
            None => self.src = None,
        }
        self.depth = self.depth.max(depth);
    }
}

/// Translates a glob the way Fluentd does, into steps for [`glob_matches`].
fn compile_glob(pat: &str) -> Result<Vec<Node>, String> {
    let chars: Vec<char> = pat.chars().collect();
    // The finished alternatives of each open `{`, innermost last.
    let mut groups: Vec<Vec<Frame>> = Vec::new();
    // The alternative being read in each open `{`, after the top-level frame.
    let mut frames = vec![Frame::new()];
    let mut escape = false;
    let mut dot = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if escape {
            let mut src = String::new();
            ruby_quote(c, &mut src);
            top(&mut frames).emit(Node::Lit(utf8(c)), &src);
            escape = false;
            i += 1;
            continue;
        }
        if c == '*' && chars.get(i + 1) == Some(&'*') {
            let cur = top(&mut frames);
            if dot {
                cur.emit(Node::DotAhead, r"(?![^\.])");
                dot = false;
            }
            if chars.get(i + 2) == Some(&'.') {
                cur.emit(Node::DeepPrefix, r"(?:.*\.|\A)");
                i += 3;
            } else {
                cur.emit(Node::Any, ".*");
                i += 2;
            }
            continue;
        }
        if dot {
            top(&mut frames).emit(Node::Lit(vec![b'.']), r"\.");
            dot = false;
        }
        match c {
            '\\' => escape = true,
            '.' => dot = true,
            '*' => top(&mut frames).emit(Node::Segment, r"[^\.]*"),
            '{' => {
                groups.push(Vec::new());
                frames.push(Frame::new());
            }
            '}' if !groups.is_empty() => {
                let mut alts = groups.pop().unwrap_or_default();
                alts.push(frames.pop().unwrap_or_else(Frame::new));
                close_group(top(&mut frames), alts)?;
            }
            ',' if !groups.is_empty() => {
                let alt = frames.pop().unwrap_or_else(Frame::new);
                if let Some(g) = groups.last_mut() {
                    g.push(alt);
                }
                frames.push(Frame::new());
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                top(&mut frames).emit(Node::Lit(utf8(c)), c.encode_utf8(&mut [0; 4]));
            }
            c => {
                let mut src = String::from("\\");
                src.push(c);
                top(&mut frames).emit(Node::Lit(utf8(c)), &src);
            }
        }
        i += 1;
    }
    // A pending `.` or `\` at the end is dropped; unclosed groups are closed, innermost first.
    while let Some(mut alts) = groups.pop() {
        alts.push(frames.pop().unwrap_or_else(Frame::new));
        close_unclosed_group(top(&mut frames), alts);
    }
    Ok(frames.pop().map(|f| f.nodes).unwrap_or_default())
}

/// The frame being read: the innermost open group's current alternative, or the top level.
fn top(frames: &mut Vec<Frame>) -> &mut Frame {
    if frames.is_empty() {
        frames.push(Frame::new());
    }
    let last = frames.len() - 1;
    &mut frames[last]
}

fn utf8(c: char) -> Vec<u8> {
    c.encode_utf8(&mut [0; 4]).as_bytes().to_vec()
}

/// Appends a group closed by `}`: its alternatives are matched as translated.
fn close_group(into: &mut Frame, mut alts: Vec<Frame>) -> Result<(), String> {
    let src = render(&alts, ruby_closed_group);
    if alts.len() == 1 {
        let alt = alts.pop().unwrap_or_else(Frame::new);
        into.append_group(alt.nodes, src, alt.depth);
        return Ok(());
    }
    let depth = 1 + alts.iter().map(|a| a.depth).max().unwrap_or(0);
    if depth > MAX_GROUP_DEPTH {
        return Err(format!(
            "invalid match - `{{...}}` groups nested deeper than {MAX_GROUP_DEPTH}"
        ));
    }
    let branches = alts.into_iter().map(|a| a.nodes).collect();
    into.append_group(vec![Node::Alt(branches)], src, depth);
    Ok(())
}

/// Appends a group left open at the end of the pattern: Fluentd joins its alternatives' Ruby
/// texts as literal strings, so each alternative matches its own translation, character for
/// character.
fn close_unclosed_group(into: &mut Frame, alts: Vec<Frame>) {
    let src = render(&alts, ruby_unclosed_group);
    let mut branches: Vec<Vec<Node>> = alts
        .into_iter()
        .map(|a| match a.src {
            Some(s) if !s.is_empty() => vec![Node::Lit(s.into_bytes())],
            Some(_) => Vec::new(),
            None => vec![Node::Never],
        })
        .collect();
    if branches.len() == 1 {
        into.append_group(branches.pop().unwrap_or_default(), src, 0);
    } else {
        into.append_group(vec![Node::Alt(branches)], src, 1);
    }
}

/// Renders a group's Ruby text from its alternatives', unless one is too long to keep.
fn render(alts: &[Frame], how: fn(&[&str]) -> String) -> Option<String> {
    let srcs = alts
        .iter()
        .map(|a| a.src.as_deref())
        .collect::<Option<Vec<&str>>>()?;
    let out = how(&srcs);
    (out.len() <= MAX_SOURCE_LEN).then_some(out)
}

/// The text of a union of the alternatives compiled one by one (`}` in Fluentd), as Ruby's
/// `Regexp#to_s` writes it.
fn ruby_closed_group(srcs: &[&str]) -> String {
    if let [only] = srcs {
        return ruby_to_s(only, Some('/'));
    }
    let joined = srcs
        .iter()
        .map(|s| ruby_to_s(s, None))
        .collect::<Vec<_>>()
        .join("|");
    ruby_to_s(&joined, Some('/'))
}

/// The text of a union of the alternatives taken as literal strings (an unclosed `{`), as Ruby's
/// `Regexp#to_s` writes it.
fn ruby_unclosed_group(srcs: &[&str]) -> String {
    let mut joined = String::new();
    for (k, s) in srcs.iter().enumerate() {
        if k > 0 {
            joined.push('|');
        }
        for c in s.chars() {
            ruby_quote(c, &mut joined);
        }
    }
    ruby_to_s(&joined, Some('/'))
}

/// Appends `c` as Ruby's `Regexp.escape` writes it.
fn ruby_quote(c: char, out: &mut String) {
    match c {
        '[' | ']' | '{' | '}' | '(' | ')' | '|' | '-' | '*' | '.' | '\\' | '?' | '+' | '^'
        | '$' | ' ' | '#' => {
            out.push('\\');
            out.push(c);
        }
        '\t' => out.push_str("\\t"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\x0c' => out.push_str("\\f"),
        '\x0b' => out.push_str("\\v"),
        _ => out.push(c),
    }
}

/// The text Ruby's `Regexp#to_s` gives a flagless expression whose source is `src`: wrapped in
/// `(?-mix:` `)`, after unwrapping one option group that spans the whole source, with `term`
/// and unprintable ASCII escaped.
fn ruby_to_s(src: &str, term: Option<char>) -> String {
    let body = unwrap_option_group(src).unwrap_or(src);
    let mut out = String::with_capacity(body.len() + 8);
    out.push_str("(?-mix:");
    ruby_expr_str(body, term, &mut out);
    out.push(')');
    out
}

/// The inside of `src` when it is one `(?opts:...)` group spanning the whole text.
fn unwrap_option_group(src: &str) -> Option<&str> {
    let b = src.as_bytes();
    if b.len() < 4 || !src.starts_with("(?") {
        return None;
    }
    let is_opt = |x: u8| matches!(x, b'm' | b'i' | b'x');
    let mut i = 2;
    while i < b.len() && is_opt(b[i]) {
        i += 1;
    }
    if b.len() - i > 1 && b[i] == b'-' {
        i += 1;
        while i < b.len() && is_opt(b[i]) {
            i += 1;
        }
    }
    if i < b.len() - 1 && b[i] == b':' && b[b.len() - 1] == b')' {
        let middle = &src[i + 1..b.len() - 1];
        if parens_balance(middle) {
            return Some(middle);
        }
    }
    None
}

/// Whether the parentheses of a generated expression balance, so that it compiles on its own.
fn parens_balance(s: &str) -> bool {
    let mut depth = 0usize;
    let mut in_class = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' if !in_class => in_class = true,
            ']' if in_class => in_class = false,
            '(' if !in_class => depth += 1,
            ')' if !in_class => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => {}
        }
    }
    depth == 0 && !in_class
}

/// Appends `s` as Ruby writes an expression's source: `term` and unprintable ASCII escaped
/// unless a backslash already precedes them.
fn ruby_expr_str(s: &str, term: Option<char>, out: &mut String) {
    let printable = |c: char| (' '..='~').contains(&c);
    let needs_escape = s
        .chars()
        .any(|c| c.is_ascii() && (Some(c) == term || !printable(c)));
    if !needs_escape {
        out.push_str(s);
        return;
    }
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(c);
                out.push(next);
                continue;
            }
        }
        if !c.is_ascii() || (printable(c) && Some(c) != term) {
            out.push(c);
        } else if Some(c) == term {
            out.push('\\');
            out.push(c);
        } else if !matches!(c, '\t' | '\n' | '\x0b' | '\x0c' | '\r') {
            out.push_str(&format!("\\x{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
}

/// Whether a compiled glob matches the whole of `tag`.
///
/// Runs the steps over the set of positions reachable so far, which decides exactly what the
/// backtracking Ruby expression decides, in time linear in the steps times the tag length.
/// Positions are bytes: `.` and newlines never occur inside a multi-byte character, and a literal
/// never starts on a continuation byte.
fn glob_matches(nodes: &[Node], tag: &[u8]) -> bool {
    let n = tag.len();
    let mut start = vec![false; n + 1];
    start[0] = true;
    let end = run(nodes, tag, start);
    end[n] || (n > 0 && tag[n - 1] == b'\n' && end[n - 1])
}

/// The positions where `nodes` can end, starting from those set in `cur`.
fn run(nodes: &[Node], tag: &[u8], mut cur: Vec<bool>) -> Vec<bool> {
    for node in nodes {
        if !cur.contains(&true) {
            break;
        }
        cur = step(node, tag, &cur);
    }
    cur
}

/// The positions where `node` can end, starting from those set in `cur`.
fn step(node: &Node, tag: &[u8], cur: &[bool]) -> Vec<bool> {
    let n = tag.len();
    let mut next = vec![false; n + 1];
    match node {
        Node::Lit(lit) => {
            for p in 0..=n {
                if cur[p] && tag[p..].starts_with(lit) {
                    next[p + lit.len()] = true;
                }
            }
        }
        Node::Segment => next = sweep(tag, cur, b'.'),
        Node::Any => next = sweep(tag, cur, b'\n'),
        Node::DeepPrefix => {
            let reach = sweep(tag, cur, b'\n');
            for q in 0..n {
                if reach[q] && tag[q] == b'.' {
                    next[q + 1] = true;
                }
            }
            next[0] |= cur[0];
        }
        Node::DotAhead => {
            for p in 0..=n {
                next[p] = cur[p] && (p == n || tag[p] == b'.');
            }
        }
        Node::Never => {}
        Node::Alt(branches) => {
            for branch in branches {
                let ends = run(branch, tag, cur.to_vec());
                for (slot, end) in next.iter_mut().zip(ends) {
                    *slot |= end;
                }
            }
        }
    }
    next
}

/// The positions reachable from `cur` over any run of bytes other than `stop`.
fn sweep(tag: &[u8], cur: &[bool], stop: u8) -> Vec<bool> {
    let mut next = vec![false; tag.len() + 1];
    let mut reach = false;
    for q in 0..=tag.len() {
        reach |= cur[q];
        next[q] = reach;
        if q < tag.len() && tag[q] == stop {
            reach = false;
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(arg: &str, tag: &str) -> bool {
        MatchPatterns::parse(arg)
            .unwrap_or_else(|e| panic!("{arg:?} should parse: {e}"))
            .matches(tag)
    }

    #[track_caller]
    fn yes(arg: &str, tags: &[&str]) {
        for tag in tags {
            assert!(m(arg, tag), "{arg:?} should match {tag:?}");
        }
    }

    #[track_caller]
    fn no(arg: &str, tags: &[&str]) {
        for tag in tags {
            assert!(!m(arg, tag), "{arg:?} should not match {tag:?}");
        }
    }

    #[test]
    fn literal_tags() {
        yes("a", &["a"]);
        yes("a.b", &["a.b"]);
        yes("app_1.log", &["app_1.log"]);
        no("a", &["b", "ab", "a.b", ""]);
        no("a.b", &["aab", "a.bc", "a"]);
    }

    #[test]
    fn single_star_matches_one_part() {
        yes("a.*", &["a.b", "a.c", "a."]);
        no("a.*", &["a", "ab", "a.b.c"]);
        yes("a*", &["a", "ab", "abc"]);
        no("a*", &["a.b", "ab.c", "ba"]);
        yes("*a", &["a", "ba", "cba"]);
        no("*a", &["ab", "b.a"]);
        yes("*a*", &["a", "ba", "ac", "bac"]);
        yes("a.*.c", &["a.b.c", "a.c.c", "a..c"]);
        no("a.*.c", &["a.c", "a.b.b.c"]);
        yes("*", &["a", ""]);
        no("*", &["a.b"]);
    }

    #[test]
    fn double_star_matches_zero_or_more_parts() {
        yes("a.**", &["a", "a.b", "a.b.c", "a."]);
        no("a.**", &["ab", "abc", "ab.c", "ab.d.e", "b.a"]);
        yes("**.b", &["b", "x.b", "x.y.b", ".b"]);
        no("**.b", &["xb", "c.xb", "b.c"]);
        yes("a.**.b", &["a.b", "a.x.b", "a.x.y.b"]);
        no("a.**.b", &["ab", "a.xb", "a.b.c"]);
        yes("a.{b,c}.**", &["a.b", "a.c", "a.b.x.y"]);
        no("a.{b,c}.**", &["a.d", "a.cd"]);
    }

    #[test]
    fn double_star_glued_to_text_matches_anything() {
        yes("a**", &["a", "ab", "abc", "a.b", "ab.c", "ab.d.e"]);
        no("a**", &["ba", "b.a"]);
        yes("**a", &["a", "ba", "c.ba", "b.a", "d.e.a"]);
        no("**a", &["ab"]);
        // `.` before `**` asks for a dot or the end right there.
        yes("a.**b", &["a.b", "a.xb", "a.x.b"]);
        no("a.**b", &["ab", "axb"]);
    }

    #[test]
    fn lone_double_star_matches_everything() {
        yes("**", &["", "a", "a.b.c", "...", "x\ny", "日本.語"]);
        yes("a ** b", &["zzz"]);
    }

    #[test]
    fn alternation() {
        yes("a.{b,c}", &["a.b", "a.c"]);
        no("a.{b,c}", &["a.d", "a.bc", "a"]);
        yes("{a,b}.c", &["a.c", "b.c"]);
        no("{a,b}.c", &["c.c", "ab.c", "a.b.c"]);
        yes("a.{b.**,c}", &["a.b", "a.b.c", "a.b.c.d", "a.c"]);
        no("a.{b.**,c}", &["a.c.d", "a.bc", "a.d"]);
        yes("{a.b,c}.d", &["a.b.d", "c.d"]);
        no("{a.b,c}.d", &["a.d", "b.d"]);
        yes("x.{a,{b,c.d}}", &["x.a", "x.b", "x.c.d"]);
        no("x.{a,{b,c.d}}", &["x.c", "x.d", "x.{a,b}"]);
        yes("{,x}a", &["a", "xa"]);
        yes("{a}", &["a"]);
        yes("{**}", &["", "a.b"]);
        yes("{**.a,b}", &["a", "x.a", "b"]);
    }

    #[test]
    fn braces_and_commas_outside_groups_are_literal() {
        yes("a,b", &["a,b"]);
        no("a,b", &["a", "b"]);
        yes("a}", &["a}"]);
        no("a}", &["a"]);
        yes("{a,b}}", &["a}", "b}"]);
    }

    #[test]
    fn unclosed_group_is_closed_at_the_end() {
        yes("{a,b", &["a", "b"]);
        no("{a,b", &["{a,b", "c", "ab"]);
        yes("x.{a,b", &["x.a", "x.b"]);
        no("x.{a,b", &["x.c", "x.a.b"]);
        yes("{a", &["a"]);
        no("{a", &["{a"]);
        // Fluentd unions an unclosed group's alternatives as literal strings of their
        // translated regular-expression text.
        yes("{b.c", &[r"b\.c"]);
        no("{b.c", &["b.c"]);
        yes("{x*,y", &[r"x[^\.]*", "y"]);
        no("{x*,y", &["x", "xz"]);
        yes("{a,{b}", &["a", "(?-mix:b)"]);
        no("{a,{b}", &["b"]);
        yes("{a,{b", &["a", "(?-mix:b)"]);
        yes("{a,{**.}", &["a", r"(?-mix:.*\.|\A)"]);
    }

    #[test]
    fn deeply_nested_unclosed_groups_stay_bounded() {
        let pat = "{".repeat(40) + "a";
        let p = MatchPatterns::parse(&pat).unwrap();
        assert!(!p.matches("a"));
        assert!(!p.matches(&pat));
        // Groups with a single alternative do not nest at all once closed.
        let closed = "{".repeat(5000) + "a" + &"}".repeat(5000);
        assert!(m(&closed, "a"));
    }

    #[test]
    fn too_deeply_nested_alternatives_are_an_error() {
        let depth = MAX_GROUP_DEPTH + 1;
        let pat = "{a,".repeat(depth) + "b" + &"}".repeat(depth);
        assert!(MatchPatterns::parse(&pat).is_err());
        let ok = "{a,".repeat(MAX_GROUP_DEPTH) + "b" + &"}".repeat(MAX_GROUP_DEPTH);
        assert!(m(&ok, "b"));
        assert!(m(&ok, "a"));
    }

    #[test]
    fn backslash_escapes_the_next_character() {
        yes(r"a\*", &["a*"]);
        no(r"a\*", &["a", "ab"]);
        yes(r"a\.b", &["a.b"]);
        yes(r"\{a,b\}", &["{a,b}"]);
        no(r"\{a,b\}", &["a", "b"]);
        yes(r"a\\b", &[r"a\b"]);
        yes(r"\**", &["*", "*x"]);
        no(r"\**", &["x"]);
        yes(r"\/a/", &["/a/"]);
        // A trailing lone backslash, like a trailing dot, adds nothing.
        yes(r"a\", &["a"]);
        yes("a.", &["a"]);
        no("a.", &["a."]);
    }

    #[test]
    fn other_characters_are_literal() {
        yes("a-b+c?d", &["a-b+c?d"]);
        no("a-b+c?d", &["a-bbc?d", "a-b+cd"]);
        yes("[ab]", &["[ab]"]);
        no("[ab]", &["a"]);
        yes("a|b", &["a|b"]);
        no("a|b", &["a", "b"]);
        yes("(a)$^", &["(a)$^"]);
        yes("日本.*", &["日本.語"]);
        no("日本.*", &["日本語"]);
    }

    #[test]
    fn several_patterns_any_matches() {
        yes("a.b a.c", &["a.b", "a.c"]);
        no("a.b a.c", &["a.d", "a"]);
        yes("a.b.** a.c.**", &["a.b", "a.c", "a.c.x"]);
        no("a.b.** a.c.**", &["a.d", "a.cd"]);
        yes("a.b.** a.c", &["a.b", "a.b.c", "a.c"]);
        no("a.b.** a.c", &["a.c.d"]);
        yes("a\tb\n c", &["a", "b", "c"]);
        let p = MatchPatterns::parse("  x   y ").unwrap();
        assert_eq!(p.patterns().len(), 2);
        assert_eq!(p.patterns()[1].as_str(), "y");
        assert_eq!(p.as_str(), "  x   y ");
    }

    #[test]
    fn empty_argument_means_everything() {
        yes("", &["a", "a.b.c", ""]);
        yes(" \t", &["a.b"]);
        assert_eq!(
            MatchPatterns::parse("").unwrap().patterns()[0].as_str(),
            "**"
        );
    }

    #[test]
    fn regex_patterns_are_anchored() {
        yes("/a/", &["a"]);
        no("/a/", &["abc", "ba"]);
        yes("/a.*/", &["abc", "a.b"]);
        no("/b.*/", &["abc"]);
        yes(r"/a\..*/", &["a.b.c"]);
        no(r"/a\..*/", &["b.b.c", "ab"]);
        yes("/(foo|bar)\\.[0-9]+/", &["foo.1", "bar.42"]);
        no("/(foo|bar)\\.[0-9]+/", &["foo.x", "baz.1", "foo.1.2"]);
        // As in Fluentd, the anchors bind to the first and last alternative only.
        yes("/a|b/", &["a", "b", "ax", "xb"]);
        no("/a|b/", &["xa", "bx"]);
        // A lone slash is an empty expression.
        yes("/", &[""]);
        no("/", &["a"]);
        yes("//", &[""]);
        yes("/x/ a.**", &["x", "a.b"]);
    }

    #[test]
    fn regex_errors() {
        assert_eq!(
            MatchPatterns::parse("/abc").unwrap_err(),
            "invalid match - regex"
        );
        assert_eq!(
            MatchPatterns::parse("a.b /abc").unwrap_err(),
            "invalid match - regex"
        );
        assert_eq!(
            MatchPattern::parse("/a").unwrap_err(),
            "invalid match - regex"
        );
        let e = MatchPatterns::parse("/(a/").unwrap_err();
        assert!(e.starts_with("invalid match - regex /(a/"), "{e}");
        assert!(MatchPatterns::parse("a /[/").is_err());
    }

    #[test]
    fn end_of_pattern_also_matches_before_a_final_newline() {
        yes("a", &["a\n"]);
        yes("/a/", &["a\n"]);
        no("a", &["a\n\n", "a\nb"]);
        no("a.**", &["a.b\nc"]);
        yes("a.*", &["a.b\nc"]);
    }

    proptest! {
        #[test]
        fn parse_never_panics(arg in any::<String>()) {
            let _ = MatchPatterns::parse(&arg);
        }

        #[test]
        fn parse_and_match_never_panic(
            arg in "[ab.*{},\\\\/ |()\\[\\]日\n]{0,16}",
            tag in "[ab.,{}\\\\/日\n]{0,12}",
            any_tag in any::<String>(),
        ) {
            if let Ok(p) = MatchPatterns::parse(&arg) {
                let _ = p.matches(&tag);
                let _ = p.matches(&any_tag);
            }
        }

        #[test]
        fn arbitrary_patterns_match_arbitrary_tags_without_panicking(
            arg in any::<String>(),
            tag in any::<String>(),
        ) {
            if let Ok(p) = MatchPatterns::parse(&arg) {
                let _ = p.matches(&tag);
            }
        }

        #[test]
        fn dotted_tags_match_themselves_and_their_prefix_globs(
            parts in proptest::collection::vec("[a-z0-9_]{1,5}", 1..5),
            cut in 0usize..5,
        ) {
            let tag = parts.join(".");
            prop_assert!(m(&tag, &tag));
            prop_assert!(m("**", &tag));
            let cut = cut.min(parts.len());
            let prefix = parts[..cut].join(".");
            let deep = if prefix.is_empty() { "**".to_owned() } else { format!("{prefix}.**") };
            prop_assert!(m(&deep, &tag));
            let stars = vec!["*"; parts.len()].join(".");
            prop_assert!(m(&stars, &tag));
            let too_many = format!("{stars}.*");
            prop_assert!(!m(&too_many, &tag));
        }
    }
}
