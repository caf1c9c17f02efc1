//! The `<buffer>` section: every parameter of Fluentd's buffer reference, with its default,
//! its validation and Fluentd's error wording.
//!
//! Defaults that depend on the output (chunk keys, buffer type, `chunk_limit_size` of stdout,
//! `flush_at_shutdown`) come in through [`OutputDefaults`].

use crate::config::value::ruby_float;
use crate::config::{ConfigError, Element};
use crate::time::Zone;

/// Where chunks are kept.
#[derive(Debug, Clone, PartialEq)]
pub enum BufferType {
    /// In memory (`@type memory`).
    Memory,
    /// On disk (`@type file`); `path` as configured, resolved by the file buffer.
    File {
        /// The `path` parameter, if given; the resolved path once the output is built.
        path: Option<String>,
        /// `path_suffix` of chunk files (default `.log`).
        path_suffix: String,
    },
}

/// Chunk keys: which parts of an event decide its chunk.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChunkKeys {
    /// `tag` is a key.
    pub tag: bool,
    /// `time` is a key (needs `timekey`).
    pub time: bool,
    /// Record-field keys, as written (`host`, `$.k8s.ns`).
    pub fields: Vec<String>,
}

/// `flush_mode` after resolving `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// Chunks are written when full, by time key, or at shutdown.
    Lazy,
    /// Chunks are enqueued `flush_interval` after their creation.
    Interval,
    /// Every write enqueues its chunks.
    Immediate,
}

/// What happens when the buffer is full at write time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowAction {
    /// Refuse the write (the input sees an error).
    ThrowException,
    /// Wait until there is space.
    Block,
    /// Drop the oldest queued chunk and retry the write.
    DropOldestChunk,
}

/// Retry interval growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryType {
    /// `retry_wait * base^k`.
    ExponentialBackoff,
    /// `retry_wait` every time.
    Periodic,
}

/// Compression of chunk contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compress {
    /// None.
    #[default]
    Text,
    /// Each write is a gzip member.
    Gzip,
    /// Each write is a zstd frame.
    Zstd,
}

/// How sluice makes file-buffer appends durable before acknowledging them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SyncMode {
    /// Every acknowledged append is covered by an fdatasync (group commit).
    Always,
    /// fdatasync at most every this many seconds.
    Interval(f64),
    /// No fsync (Fluentd's behaviour).
    None,
}

/// Output-dependent defaults of a `<buffer>` section.
#[derive(Debug, Clone)]
pub struct OutputDefaults {
    /// Chunk keys when the section has no argument (out_file: `time`; stdout: `tag`).
    pub chunk_keys: ChunkKeys,
    /// Buffer `@type` when none is given.
    pub buffer_type: &'static str,
    /// `timekey` when `time` is a key and none is given (out_file: 1 day).
    pub timekey: Option<i64>,
    /// `chunk_limit_size` override (stdout: 10 KiB).
    pub chunk_limit_size: Option<u64>,
    /// `flush_at_shutdown` override (stdout: true).
    pub flush_at_shutdown: Option<bool>,
    /// Name of the output plugin, for messages.
    pub plugin: &'static str,
}

/// A validated `<buffer>` section.
#[derive(Debug, Clone)]
pub struct BufferConfig {
    /// memory or file.
    pub buffer_type: BufferType,
    /// Chunk keys.
    pub chunk_keys: ChunkKeys,
    /// Time slice length in seconds (only with a `time` key).
    pub timekey: Option<i64>,
    /// Seconds to wait after a slice ends before flushing it.
    pub timekey_wait: f64,
    /// Zone for time slicing and placeholders.
    pub timekey_zone: Zone,
    /// `timekey_use_utc`.
    pub timekey_use_utc: bool,
    /// Max bytes per chunk.
    pub chunk_limit_size: u64,
    /// Max records per chunk.
    pub chunk_limit_records: Option<u64>,
    /// Hard limit of stage + queue bytes.
    pub total_limit_size: u64,
    /// Legacy queue length limit (already folded into `total_limit_size`).
    pub queue_limit_length: Option<u64>,
    /// Fraction of a limit at which a chunk is full.
    pub chunk_full_threshold: f64,
    /// Max queue length for timer-driven enqueueing.
    pub queued_chunks_limit_size: u64,
    /// Chunk compression.
    pub compress: Compress,
    /// Flush everything at shutdown.
    pub flush_at_shutdown: bool,
    /// Resolved flush mode.
    pub flush_mode: FlushMode,
    /// Seconds between interval flushes.
    pub flush_interval: f64,
    /// Number of flush workers.
    pub flush_thread_count: u64,
    /// Idle wake-up period of flush workers.
    pub flush_thread_interval: f64,
    /// Pause between writes while the queue is not empty.
    pub flush_thread_burst_interval: f64,
    /// Seconds before an uncommitted delayed write is rolled back.
    pub delayed_commit_timeout: f64,
    /// Overflow behaviour.
    pub overflow_action: OverflowAction,
    /// Give up after this many seconds of retrying.
    pub retry_timeout: f64,
    /// Never give up.
    pub retry_forever: bool,
    /// Give up after this many retries.
    pub retry_max_times: Option<u64>,
    /// Fraction of the retry budget after which the secondary is used.
    pub retry_secondary_threshold: f64,
    /// Interval growth.
    pub retry_type: RetryType,
    /// First retry wait, seconds.
    pub retry_wait: f64,
    /// Exponential base.
    pub retry_exponential_backoff_base: f64,
    /// Cap of one retry interval.
    pub retry_max_interval: Option<f64>,
    /// Randomize retry intervals by ±12.5 %.
    pub retry_randomize: bool,
    /// Throw unrecoverable chunks away instead of backing them up.
    pub disable_chunk_backup: bool,
    /// Most bytes a compressed chunk may decompress to.
    pub decompression_size_limit: u64,
    /// File-buffer durability.
    pub sync: SyncMode,
}

/// Matches Fluentd's plain chunk key rule `^[-_.@a-zA-Z0-9]+$`.
fn plain_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
}

/// Parses the section argument into chunk keys, with Fluentd's checks.
pub fn parse_chunk_keys(section: &Element, defaults: &ChunkKeys) -> Result<ChunkKeys, ConfigError> {
    let arg = section.arg.trim();
    let at = |m: String| ConfigError::at(&section.arg_pos, m);
    if arg.is_empty() {
        return Ok(defaults.clone());
    }
    let list =
        crate::config::value::parse_array(arg).map_err(|e| at(format!("chunk keys: {e}")))?;
    let mut keys = ChunkKeys::default();
    for k in list {
        let k = k.trim().to_string();
        match k.as_str() {
            "tag" => keys.tag = true,
            "time" => keys.time = true,
            _ if k.starts_with("$[") => {
                return Err(at("in chunk_keys: bracket notation is not allowed".into()));
            }
            _ if k.starts_with("$.") => {
                if k.contains(char::is_whitespace) {
                    return Err(at(format!(
                        "in chunk_keys: whitespace character is not allowed in dot notation. Use bracket notation: {k}"
                    )));
                }
                let body = &k[2..];
                let ok = !body.is_empty()
                    && body.split('.').all(|seg| {
                        let name = seg.split('[').next().unwrap_or("");
                        !name.is_empty()
                            && seg[name.len()..].split_terminator(']').all(|ix| {
                                ix.strip_prefix('[').is_some_and(|n| {
                                    !n.is_empty() && n.chars().all(|c| c.is_ascii_digit())
                                })
                            })
                    });
                if !ok {
                    return Err(at("chunk_keys specification includes invalid char".into()));
                }
                keys.fields.push(k);
            }
            _ if plain_key_ok(&k) => keys.fields.push(k),
            _ => return Err(at("chunk_keys specification includes invalid char".into())),
        }
    }
    Ok(keys)
}

impl BufferConfig {
    /// Reads a `<buffer>` section (or an empty one when the output has none). `output` is the
    /// enclosing `<match>`, for v0.12-style output-level `flush_interval`.
    pub fn from_section(
        section: &Element,
        output: &Element,
        defaults: &OutputDefaults,
    ) -> Result<BufferConfig, ConfigError> {
        let type_name = section
            .string("@type")
            .unwrap_or_else(|| defaults.buffer_type.to_string());
        let is_file = match type_name.as_str() {
            "memory" => false,
            "file" => true,
            other => {
                let pos = section.pos_of("@type");
                return Err(ConfigError::at(
                    &pos,
                    format!(
                        "Unknown buffer plugin '{other}'. Supported buffer plugins: file, memory"
                    ),
                ));
            }
        };
        let buffer_type = if is_file {
            BufferType::File {
                path: section.string("path"),
                path_suffix: section
                    .string("path_suffix")
                    .unwrap_or_else(|| ".log".into()),
            }
        } else {
            BufferType::Memory
        };

        let chunk_keys = parse_chunk_keys(section, &defaults.chunk_keys)?;

        let timekey_use_utc = section.bool("timekey_use_utc")?.unwrap_or(false);
        let timekey_zone = match section.param("timekey_zone") {
            Some(p) => Zone::parse(&p.value).map_err(|e| ConfigError::at(&p.value_pos, e))?,
            None => Zone::local_fixed(),
        };
        let timekey_zone = if timekey_use_utc {
            Zone::utc()
        } else {
            timekey_zone
        };
        let timekey_raw = section.time_raw("timekey")?;
        let timekey_wait = section.time("timekey_wait")?.unwrap_or(600.0);
        let mut timekey = None;
        if chunk_keys.time {
            let tk = match timekey_raw {
                Some(t) => Some(t),
                None => defaults.timekey.map(|t| (t as f64, false)),
            };
            let Some((k, unitless)) = tk else {
                return Err(ConfigError::at(
                    &section.arg_pos,
                    "<buffer ...> argument includes 'time', but timekey is not configured",
                ));
            };
            if k <= 0.0 {
                let shown = if unitless {
                    ruby_float(k)
                } else {
                    format!("{}", k as i64)
                };
                let pos = section.pos_of("timekey");
                return Err(ConfigError::at(
                    &pos,
                    format!("timekey should be greater than 0. current timekey: {shown}"),
                ));
            }
            timekey = Some((k as i64).max(1));
        }
        if chunk_keys.fields.len() + chunk_keys.tag as usize >= 4 {
            tracing::warn!(file = %section.pos.file, line = section.pos.line,
                "many chunk keys specified, and it may cause too many chunks on your system.");
        }

        let memory_limit = if is_file { 256 << 20 } else { 8 << 20 };
        let chunk_limit_size = section
            .size("chunk_limit_size")?
            .or(defaults.chunk_limit_size)
            .unwrap_or(memory_limit);
        let chunk_limit_records = section.size("chunk_limit_records")?;
        let queue_limit_length = section.size("queue_limit_length")?;
        let mut total_limit_size =
            section
                .size("total_limit_size")?
                .unwrap_or(if is_file { 64 << 30 } else { 512 << 20 });
        if let Some(q) = queue_limit_length {
            total_limit_size = chunk_limit_size.saturating_mul(q);
        }
        let chunk_full_threshold = section.float("chunk_full_threshold")?.unwrap_or(0.95);
        let compress = match section.enumeration("compress", &["text", "gzip", "zstd"])? {
            Some("gzip") => Compress::Gzip,
            Some("zstd") => Compress::Zstd,
            _ => Compress::Text,
        };
        let flush_at_shutdown = match section.bool("flush_at_shutdown")? {
            Some(v) => {
                if !v && !is_file {
                    tracing::warn!("'flush_at_shutdown' is false, and buffer plugin 'memory' is not persistent buffer.");
                    tracing::warn!("your configuration will lose buffered data at shutdown. please confirm your configuration again.");
                }
                v
            }
            None => defaults.flush_at_shutdown.unwrap_or(!is_file),
        };

        let explicit_mode =
            section.enumeration("flush_mode", &["default", "lazy", "interval", "immediate"])?;
        let inner_interval = section.time("flush_interval")?;
        let outer_interval = output.time("flush_interval")?;
        let flush_mode = match explicit_mode.unwrap_or("default") {
            "lazy" => FlushMode::Lazy,
            "interval" => FlushMode::Interval,
            "immediate" => FlushMode::Immediate,
            _ => {
                if outer_interval.is_some() {
                    tracing::info!("'flush_interval' is configured at out side of <buffer>. 'flush_mode' is set to 'interval' to keep existing behaviour");
                    FlushMode::Interval
                } else if chunk_keys.time {
                    FlushMode::Lazy
                } else {
                    FlushMode::Interval
                }
            }
        };
        if inner_interval.is_some() && flush_mode != FlushMode::Interval {
            let mode = match flush_mode {
                FlushMode::Lazy => "lazy",
                FlushMode::Immediate => "immediate",
                FlushMode::Interval => "interval",
            };
            if explicit_mode.is_some_and(|m| m != "default") {
                let p = section
                    .peek("flush_interval")
                    .expect("flush_interval was read");
                return Err(ConfigError::at(
                    &p.key_pos,
                    format!("'flush_interval' can't be specified when 'flush_mode' is not 'interval' explicitly: '{mode}'"),
                ));
            }
            tracing::warn!("'flush_interval' is ignored because default 'flush_mode' is not 'interval': '{mode}'");
        }
        let flush_interval = inner_interval.or(outer_interval).unwrap_or(60.0);
        let flush_thread_count = section.size("flush_thread_count")?.unwrap_or(1).max(1);
        let flush_thread_interval = section.time("flush_thread_interval")?.unwrap_or(1.0);
        let flush_thread_burst_interval =
            section.time("flush_thread_burst_interval")?.unwrap_or(1.0);
        let delayed_commit_timeout = section.time("delayed_commit_timeout")?.unwrap_or(60.0);
        let queued_chunks_limit_size = section
            .size("queued_chunks_limit_size")?
            .unwrap_or(flush_thread_count);
        let overflow_action = match section.enumeration(
            "overflow_action",
            &["throw_exception", "block", "drop_oldest_chunk"],
        )? {
            Some("block") => OverflowAction::Block,
            Some("drop_oldest_chunk") => OverflowAction::DropOldestChunk,
            _ => OverflowAction::ThrowException,
        };
        let retry_timeout = section.time("retry_timeout")?.unwrap_or(72.0 * 3600.0);
        let retry_forever = section.bool("retry_forever")?.unwrap_or(false);
        let retry_max_times = section.size("retry_max_times")?;
        let retry_secondary_threshold = section.float("retry_secondary_threshold")?.unwrap_or(0.8);
        let retry_type =
            match section.enumeration("retry_type", &["exponential_backoff", "periodic"])? {
                Some("periodic") => RetryType::Periodic,
                _ => RetryType::ExponentialBackoff,
            };
        let retry_wait = section.time("retry_wait")?.unwrap_or(1.0);
        let retry_exponential_backoff_base = section
            .float("retry_exponential_backoff_base")?
            .unwrap_or(2.0);
        let retry_max_interval = section.time("retry_max_interval")?;
        let retry_randomize = section.bool("retry_randomize")?.unwrap_or(true);
        let disable_chunk_backup = section.bool("disable_chunk_backup")?.unwrap_or(false);
        let decompression_size_limit = section
            .size("decompression_size_limit")?
            .unwrap_or(256 << 20);
        let sync = if is_file {
            match section.param("sync") {
                None => SyncMode::Always,
                Some(p) => match p.value.split_whitespace().collect::<Vec<_>>().as_slice() {
                    ["always"] => SyncMode::Always,
                    ["none"] => SyncMode::None,
                    ["interval", t] => SyncMode::Interval(
                        crate::config::value::parse_time(t)
                            .ok_or_else(|| {
                                ConfigError::at(
                                    &p.value_pos,
                                    format!("sync: invalid value for Float(): \"{t}\""),
                                )
                            })?
                            .0,
                    ),
                    _ => {
                        return Err(ConfigError::at(
                            &p.value_pos,
                            format!(
                                "sync: valid options are always,interval <time>,none but got {}",
                                p.value
                            ),
                        ))
                    }
                },
            }
        } else {
            SyncMode::None
        };

        Ok(BufferConfig {
            buffer_type,
            chunk_keys,
            timekey,
            timekey_wait,
            timekey_zone,
            timekey_use_utc,
            chunk_limit_size,
            chunk_limit_records,
            total_limit_size,
            queue_limit_length,
            chunk_full_threshold,
            queued_chunks_limit_size,
            compress,
            flush_at_shutdown,
            flush_mode,
            flush_interval,
            flush_thread_count,
            flush_thread_interval,
            flush_thread_burst_interval,
            delayed_commit_timeout,
            overflow_action,
            retry_timeout,
            retry_forever,
            retry_max_times,
            retry_secondary_threshold,
            retry_type,
            retry_wait,
            retry_exponential_backoff_base,
            retry_max_interval,
            retry_randomize,
            disable_chunk_backup,
            decompression_size_limit,
            sync,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parser::parse_str;

    fn defaults() -> OutputDefaults {
        OutputDefaults {
            chunk_keys: ChunkKeys {
                tag: true,
                ..Default::default()
            },
            buffer_type: "memory",
            timekey: None,
            chunk_limit_size: None,
            flush_at_shutdown: None,
            plugin: "stdout",
        }
    }

    fn conf(text: &str) -> Result<BufferConfig, ConfigError> {
        let root = parse_str(text, "t.conf", ".".into()).unwrap();
        let m = &root.elements[0];
        let b = m.elements.iter().find(|e| e.name == "buffer").unwrap();
        BufferConfig::from_section(b, m, &defaults())
    }

    #[test]
    fn defaults_and_flush_mode() {
        let c = conf("<match **>\n<buffer>\n</buffer>\n</match>\n").unwrap();
        assert!(c.chunk_keys.tag);
        assert_eq!(c.flush_mode, FlushMode::Interval);
        assert_eq!(c.chunk_limit_size, 8 << 20);
        assert_eq!(c.total_limit_size, 512 << 20);
        assert!(c.flush_at_shutdown);
        let c = conf("<match **>\n<buffer time>\ntimekey 1h\n</buffer>\n</match>\n").unwrap();
        assert_eq!(c.flush_mode, FlushMode::Lazy);
        assert_eq!(c.timekey, Some(3600));
        let c =
            conf("<match **>\nflush_interval 5s\n<buffer time>\ntimekey 1h\n</buffer>\n</match>\n")
                .unwrap();
        assert_eq!(c.flush_mode, FlushMode::Interval);
        assert_eq!(c.flush_interval, 5.0);
    }

    #[test]
    fn validation_messages() {
        let e = conf("<match **>\n<buffer time>\n</buffer>\n</match>\n").unwrap_err();
        assert_eq!(
            e.message,
            "<buffer ...> argument includes 'time', but timekey is not configured"
        );
        let e = conf("<match **>\n<buffer time>\ntimekey 0\n</buffer>\n</match>\n").unwrap_err();
        assert_eq!(
            e.message,
            "timekey should be greater than 0. current timekey: 0.0"
        );
        let e = conf("<match **>\n<buffer ke y>\n</buffer>\n</match>\n").unwrap_err();
        assert_eq!(e.message, "chunk_keys specification includes invalid char");
        let e = conf("<match **>\n<buffer $['key']>\n</buffer>\n</match>\n").unwrap_err();
        assert_eq!(e.message, "in chunk_keys: bracket notation is not allowed");
        let e = conf(
            "<match **>\n<buffer>\nflush_mode lazy\nflush_interval 10s\n</buffer>\n</match>\n",
        )
        .unwrap_err();
        assert_eq!(e.message, "'flush_interval' can't be specified when 'flush_mode' is not 'interval' explicitly: 'lazy'");
        let e =
            conf("<match **>\n<buffer>\nqueue_limit_length x\n</buffer>\n</match>\n").unwrap_err();
        assert_eq!(
            e.message,
            "queue_limit_length: invalid value for Integer(): \"x\""
        );
        let c = conf("<match **>\n<buffer>\nchunk_limit_size 1k\nqueue_limit_length 3\n</buffer>\n</match>\n").unwrap();
        assert_eq!(c.total_limit_size, 3072);
        let c = conf("<match **>\n<buffer [\"tag\",\"$.a.b\",\"$.c[0]\"]>\n</buffer>\n</match>\n")
            .unwrap();
        assert_eq!(c.chunk_keys.fields, vec!["$.a.b", "$.c[0]"]);
    }
}
