//! The command line: options, logging set-up, and the `--dry-run` / `--show-config` reports.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Element, Unused};

/// sluice: a log forwarder that reads Fluentd configuration files.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Args {
    /// Configuration file (Fluentd v1 syntax). Without it, the embedded default runs.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Parse, validate and build every plugin without starting anything; exit 0 when valid,
    /// 1 with one `config error …` line per problem otherwise.
    #[arg(long)]
    pub dry_run: bool,

    /// Treat unused parameters as errors instead of warnings.
    #[arg(long)]
    pub strict: bool,

    /// Print every parameter as sluice understood it (with --dry-run or alone).
    #[arg(long)]
    pub show_config: bool,

    /// More log output (-v debug, -vv trace).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Less log output (-q warnings and errors, -qq errors only).
    #[arg(short = 'q', long = "quiet", action = clap::ArgAction::Count)]
    pub quiet: u8,

    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Tools instead of running a pipeline.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `sluice <command>`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Look into and repair buffer directories (safe next to a running sluice, except requeue).
    #[command(subcommand)]
    Buffer(BufferCommand),
}

/// `sluice buffer <command>`.
#[derive(Debug, Subcommand)]
pub enum BufferCommand {
    /// List chunks: id, state, metadata, bytes, records, age.
    Ls {
        /// The buffer `path` (directory or pattern, as in `<buffer>`).
        path: String,
    },
    /// Print a chunk's records (MessagePack chunks as JSON lines).
    Cat {
        /// The buffer `path`.
        path: String,
        /// The chunk id (32 hex characters).
        id: String,
    },
    /// Check every chunk file's checksums; exit 1 when something is damaged.
    Verify {
        /// The buffer `path`.
        path: String,
    },
    /// Put backed-up chunks back into a buffer, to be written at the next start (refused while
    /// sluice owns the buffer).
    Requeue {
        /// A backup directory (`…/backup/worker0/<plugin id>`).
        backup_dir: String,
        /// The buffer `path`.
        path: String,
    },
}

/// Runs a `sluice buffer` command; returns the process exit code.
pub fn run_buffer_command(cmd: &BufferCommand) -> u8 {
    use crate::buffer::tool;
    use std::io::Write;
    let result: Result<(Vec<u8>, bool), String> = match cmd {
        BufferCommand::Ls { path } => tool::ls(path)
            .map(|s| (s.into_bytes(), true))
            .map_err(|e| e.to_string()),
        BufferCommand::Cat { path, id } => tool::cat(path, id)
            .map(|b| (b, true))
            .map_err(|e| e.to_string()),
        BufferCommand::Verify { path } => tool::verify(path)
            .map(|(s, ok)| (s.into_bytes(), ok))
            .map_err(|e| e.to_string()),
        BufferCommand::Requeue { backup_dir, path } => {
            tool::requeue(backup_dir, path).map(|s| (s.into_bytes(), true))
        }
    };
    match result {
        Ok((out, ok)) => {
            let _ = std::io::stdout().write_all(&out);
            if ok {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("sluice buffer: {e}");
            1
        }
    }
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Args {
    /// The log level the flags ask for, or `None` to use `<system> log_level` (default info).
    pub fn level_override(&self) -> Option<&'static str> {
        match (self.verbose as i32) - (self.quiet as i32) {
            0 => None,
            1 => Some("debug"),
            v if v >= 2 => Some("trace"),
            -1 => Some("warn"),
            _ => Some("error"),
        }
    }
}

/// Changes the log level after start-up (once `<system> log_level` is known).
pub type LevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Installs the global log subscriber (stderr) at `level`; `SLUICE_LOG` overrides it.
pub fn init_logging(level: &str, format: LogFormat) -> Option<LevelHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(level_filter(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let ok = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .with_target(false),
            )
            .try_init(),
    };
    ok.ok().map(|_| handle)
}

/// Sets the log level of a running subscriber.
pub fn set_level(handle: &LevelHandle, level: &str) {
    let _ = handle.modify(|f| *f = level_filter(level));
}

fn level_filter(level: &str) -> tracing_subscriber::EnvFilter {
    let level = match level {
        "fatal" => "error",
        other => other,
    };
    tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
}

/// Renders the configuration tree with each parameter's typed value, for `--show-config`.
pub fn show_config(root: &Element) -> String {
    fn walk(e: &Element, depth: usize, out: &mut String) {
        let pad = "  ".repeat(depth);
        for p in &e.params {
            let typed = p.typed().unwrap_or_else(|| "(not used)".into());
            out.push_str(&format!(
                "{pad}{} {}  # {} at {}\n",
                p.key,
                crate::config::error::one_line(&p.value),
                typed,
                p.key_pos
            ));
        }
        for c in &e.elements {
            out.push_str(&format!("{pad}{}\n", c.header()));
            walk(c, depth + 1, out);
            out.push_str(&format!("{pad}</{}>\n", c.name));
        }
    }
    let mut out = String::new();
    walk(root, 0, &mut out);
    out
}

/// Logs one warning per unused parameter or section.
pub fn warn_unused(unused: &[Unused<'_>]) {
    for u in unused {
        let e = u.to_error();
        if let Some(p) = &e.pos {
            tracing::warn!(file = %p.file, line = p.line, column = p.column, "{}", e.message);
        }
    }
}
