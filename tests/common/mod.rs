//! Helpers shared by the integration tests: writing configs, running the `sluice` binary and
//! reading its `config error …` lines, warnings and `--show-config` report.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Writes `text` to `dir/name` (creating parent directories) and returns the full path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create config directory");
    }
    std::fs::write(&path, text).expect("write config");
    path
}

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error with ANSI colour codes removed.
    pub stderr: String,
}

impl Run {
    /// The `config error …` lines of stderr, parsed.
    pub fn errors(&self) -> Vec<ErrLine> {
        self.stderr.lines().filter_map(ErrLine::parse).collect()
    }

    /// The only `config error` line; panics (with the output) unless there is exactly one.
    pub fn single_error(&self) -> ErrLine {
        let errs = self.errors();
        assert_eq!(
            errs.len(),
            1,
            "expected exactly one config error line, got {self:#?}"
        );
        errs.into_iter().next().unwrap()
    }

    /// Asserts the run failed with exit code 1 and returns its single error line.
    pub fn expect_one_error(&self) -> ErrLine {
        assert_eq!(self.code, Some(1), "expected exit code 1: {self:#?}");
        self.single_error()
    }

    /// Asserts the run succeeded with no `config error` line.
    pub fn expect_ok(&self) {
        assert_eq!(self.code, Some(0), "expected exit code 0: {self:#?}");
        assert!(
            self.errors().is_empty(),
            "unexpected config errors: {self:#?}"
        );
    }

    /// Lines of stderr at warning level.
    pub fn warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains(" WARN "))
            .collect()
    }

    /// Whether some warning line contains `text`.
    pub fn has_warning(&self, text: &str) -> bool {
        self.warnings().iter().any(|l| l.contains(text))
    }

    /// The `--show-config` report, parsed.
    pub fn show(&self) -> Vec<ShowLine> {
        self.stdout.lines().filter_map(ShowLine::parse).collect()
    }

    /// The typed value `--show-config` printed for the parameter `key` written on `line` of
    /// `file` (a file name suffix is enough).
    pub fn typed_at(&self, key: &str, file: &str, line: u32) -> String {
        let show = self.show();
        let found: Vec<&ShowLine> = show
            .iter()
            .filter(|s| s.key == key && s.line == line && s.file.ends_with(file))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one --show-config line for {key} at {file}:{line}: {self:#?}"
        );
        found[0].typed.clone()
    }
}

/// Runs the binary with `args`, extra environment `env` (name, value) and variables to remove.
pub fn run_with(
    args: &[&str],
    env: &[(&str, &str)],
    env_remove: &[&str],
    cwd: Option<&Path>,
) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env("TZ", "UTC")
        .env_remove("SLUICE_LOG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in env_remove {
        cmd.env_remove(k);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().expect("run sluice");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// `sluice --dry-run -c FILE`.
pub fn dry_run(conf: &Path) -> Run {
    run_with(&["--dry-run", "-c", conf.to_str().unwrap()], &[], &[], None)
}

/// `sluice --dry-run --strict -c FILE`.
pub fn dry_run_strict(conf: &Path) -> Run {
    run_with(
        &["--dry-run", "--strict", "-c", conf.to_str().unwrap()],
        &[],
        &[],
        None,
    )
}

/// `sluice --dry-run --show-config -c FILE`.
pub fn show_config(conf: &Path) -> Run {
    run_with(
        &["--dry-run", "--show-config", "-c", conf.to_str().unwrap()],
        &[],
        &[],
        None,
    )
}

/// Writes `text` as `dir/name` and dry-runs it.
pub fn dry(dir: &Path, name: &str, text: &str) -> (PathBuf, Run) {
    let p = write(dir, name, text);
    let r = dry_run(&p);
    (p, r)
}

/// Removes ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One `config error file="F" line=L column=C error="TEXT"` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrLine {
    /// The file named.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 0-based column.
    pub column: u32,
    /// The message (everything up to the final quote).
    pub error: String,
}

impl ErrLine {
    /// Parses one stderr line; `None` when it is not a positioned config error line.
    pub fn parse(l: &str) -> Option<ErrLine> {
        let rest = l.strip_prefix("config error file=\"")?;
        let (file, rest) = rest.split_once("\" line=")?;
        let (line, rest) = rest.split_once(" column=")?;
        let (column, rest) = rest.split_once(" error=\"")?;
        let error = rest.strip_suffix('"')?;
        Some(ErrLine {
            file: file.to_string(),
            line: line.parse().ok()?,
            column: column.parse().ok()?,
            error: error.to_string(),
        })
    }

    /// Asserts the error names `file` and returns self.
    pub fn in_file(&self, file: &Path) -> &Self {
        assert_eq!(self.file, file.to_str().unwrap(), "file of {self:?}");
        self
    }

    /// Asserts the error points at `line` and returns self.
    pub fn at_line(&self, line: u32) -> &Self {
        assert_eq!(self.line, line, "line of {self:?}");
        self
    }
}

/// One parameter line of `--show-config`: `key value  # TYPED at file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowLine {
    pub key: String,
    pub value: String,
    pub typed: String,
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl ShowLine {
    /// Parses one stdout line; `None` for section lines and anything else.
    pub fn parse(l: &str) -> Option<ShowLine> {
        let t = l.trim_start();
        if t.starts_with('<') {
            return None;
        }
        let (key, rest) = t.split_once(' ')?;
        let at = rest.rfind(" at ")?;
        let (body, pos) = (&rest[..at], &rest[at + 4..]);
        let (value, typed) = body.split_once("  # ")?;
        let mut it = pos.rsplitn(3, ':');
        let column = it.next()?.parse().ok()?;
        let line = it.next()?.parse().ok()?;
        let file = it.next()?.to_string();
        Some(ShowLine {
            key: key.to_string(),
            value: value.to_string(),
            typed: typed.to_string(),
            file,
            line,
            column,
        })
    }
}

/// 1-based number of the first line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> u32 {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config")) as u32
        + 1
}
