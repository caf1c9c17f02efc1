//! Configuration errors and source positions.
//!
//! Every error a user can get from a config file carries the file, line and column it points at,
//! so `sluice --dry-run` can print one searchable line per problem. Columns count the characters
//! before the position on its line (the first column is 0), exactly as Fluentd's parser reports
//! them, so positions printed by both tools agree.

use std::fmt;
use std::sync::Arc;

/// A position in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pos {
    /// Path of the file as the user named it (or as `@include` resolved it).
    pub file: Arc<str>,
    /// 1-based line number.
    pub line: u32,
    /// Characters before the position on its line (0-based, as Fluentd counts).
    pub column: u32,
}

impl Pos {
    /// Position used for things that come from no file (command-line defaults, built-ins).
    pub fn builtin() -> Pos {
        Pos {
            file: Arc::from("<builtin>"),
            line: 0,
            column: 0,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A configuration problem: what is wrong and where.
///
/// `message` keeps Fluentd's wording where Fluentd has one, so users can search for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Where the problem is; `None` only for problems with no place in a file (e.g. the file
    /// itself cannot be read, which names the file in the message).
    pub pos: Option<Pos>,
    /// The rule that was broken.
    pub message: String,
}

impl ConfigError {
    /// An error at a known position.
    pub fn at(pos: &Pos, message: impl Into<String>) -> ConfigError {
        ConfigError {
            pos: Some(pos.clone()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    /// The one-line form printed by `--dry-run`:
    /// `config error file="F" line=L column=C error="TEXT"`.
    ///
    /// TEXT runs to the last quote of the line; quotes inside it are not escaped, so the text
    /// can be searched for as written. Control characters are escaped to keep one line per error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = one_line(&self.message);
        match &self.pos {
            Some(p) => write!(
                f,
                "config error file=\"{}\" line={} column={} error=\"{}\"",
                p.file, p.line, p.column, text
            ),
            None => write!(f, "config error error=\"{text}\""),
        }
    }
}

/// Escapes control characters so a message stays on one line.
pub fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A list of configuration errors, reported together by `--dry-run`.
#[derive(Debug, Default, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}
