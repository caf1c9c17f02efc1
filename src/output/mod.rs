//! Outputs: where events leave sluice.
//!
//! A `<match>` section becomes a [`Target`]: an [`Output`] plugin, or one of the routing
//! outputs the router carries out itself (`relabel`, `copy`). This module builds targets,
//! enforcing Fluentd's rules on `<buffer>` and `<secondary>` sections with Fluentd's wording.

pub mod buffered;
pub mod file;
pub mod null;
pub mod retry;
pub mod s3;
pub mod stdout;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::buffer::config::{BufferConfig, OutputDefaults};
use crate::config::{ConfigError, Element};
use crate::event::EventStream;
use buffered::ChunkWriter;

/// Why an output refused a whole stream at emit time. Nothing of the stream was stored; the
/// router sends it to the `@ERROR` label when there is one, otherwise back to the input (which
/// must not acknowledge it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmitError {
    /// The buffer is full (`overflow_action throw_exception`, or `drop_oldest_chunk` with
    /// nothing to drop).
    #[error("buffer space has too many data")]
    BufferOverflow,
    /// The output is stopping and takes no more events.
    #[error("output is shutting down")]
    ShuttingDown,
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Events of a stream an output could not store although it stored the rest: records larger
/// than a chunk, records whose chunk-key path runs through a non-map value. They can never be
/// stored by retrying, so the input is not asked to resend; the router sends them to `@ERROR`
/// or reports them.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// Fluentd's error class for the log line.
    pub class: &'static str,
    /// What was wrong with each record, joined by `, ` (Fluentd's wording).
    pub message: String,
    /// The rejected events.
    pub events: EventStream,
}

impl EmitError {
    /// Fluentd's error class name for this error, for log lines users search for.
    pub fn class(&self) -> &'static str {
        match self {
            EmitError::BufferOverflow | EmitError::ShuttingDown => {
                "Fluent::Plugin::Buffer::BufferOverflowError"
            }
            EmitError::Other(_) => "RuntimeError",
        }
    }
}

/// What an emit promises: the events are stored, and — for durable buffers — a way to wait
/// until they are on disk. Inputs acknowledge (forward `ack`, HTTP 2xx) only after
/// [`Receipt::durable`] returns `Ok`.
#[derive(Debug, Default)]
pub struct Receipt {
    waits: Vec<DurableWait>,
    /// Events that were not stored although the rest was.
    pub rejected: Vec<Rejected>,
}

/// One buffer's promise to make appends up to `seq` durable.
#[derive(Debug)]
pub struct DurableWait {
    /// The buffer's progress: appends up to this sequence number are durable.
    pub progress: tokio::sync::watch::Receiver<SyncProgress>,
    /// The sequence number of this emit's last append.
    pub seq: u64,
}

/// Durability progress published by a file buffer's group-commit task.
#[derive(Debug, Clone, Default)]
pub struct SyncProgress {
    /// Every append with a sequence number up to this one is durable.
    pub synced: u64,
    /// Set when syncing failed: appends after `synced` will not become durable.
    pub failed: Option<Arc<str>>,
}

impl Receipt {
    /// A receipt for events stored with nothing more to wait for (memory buffers, unbuffered
    /// outputs).
    pub fn stored() -> Receipt {
        Receipt::default()
    }

    /// A receipt that waits for one buffer's sync.
    pub fn wait_for(w: DurableWait) -> Receipt {
        Receipt {
            waits: vec![w],
            rejected: Vec::new(),
        }
    }

    /// Adds another receipt's waits and rejections (an emit that reached several buffers).
    pub fn merge(&mut self, other: Receipt) {
        self.waits.extend(other.waits);
        self.rejected.extend(other.rejected);
    }

    /// Waits until every buffer the events went to has made them durable.
    pub async fn durable(self) -> Result<(), EmitError> {
        for mut w in self.waits {
            let seq = w.seq;
            let r = w
                .progress
                .wait_for(|p| p.synced >= seq || p.failed.is_some())
                .await
                .map(|p| p.clone());
            match r {
                Ok(p) if p.synced >= seq => {}
                Ok(p) => {
                    return Err(EmitError::Other(format!(
                        "buffer sync failed: {}",
                        p.failed.as_deref().unwrap_or("unknown error")
                    )))
                }
                Err(_) => return Err(EmitError::ShuttingDown),
            }
        }
        Ok(())
    }
}

/// A boxed future, for the few async methods of plugin traits.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An output plugin instance.
pub trait Output: Send + Sync + std::fmt::Debug {
    /// Takes a stream of events of one tag. Returns once the events are stored as far as this
    /// output promises (written for unbuffered outputs, appended for buffered ones).
    fn emit<'a>(
        &'a self,
        tag: &'a str,
        es: EventStream,
    ) -> BoxFuture<'a, Result<Receipt, EmitError>>;

    /// Buffer and retry figures, for metrics (None for unbuffered outputs).
    fn metrics(&self) -> Option<buffered::OutputMetrics> {
        None
    }

    /// Starts background work (flush workers; opening a file buffer; an s3 output's client
    /// and bucket check). Called once, before any input starts; an error stops sluice's
    /// start-up.
    fn start(self: Arc<Self>) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Enqueues and writes everything buffered now (SIGUSR1).
    fn force_flush(&self) {}

    /// Stops: flushes according to `flush_at_shutdown` and waits for the writes.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What a `<match>` (or `<store>`, `<secondary>`) section routes to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A plugin that writes events somewhere.
    Output(Arc<dyn Output>),
    /// `@type relabel`: re-emit into the label named here (with its `@`).
    Relabel(String),
    /// `@type copy`: every store gets every event.
    Copy(Vec<Target>),
}

/// Output types this build knows.
pub const TYPES: &[&str] = &[
    "copy",
    "file",
    "null",
    "relabel",
    "s3",
    "secondary_file",
    "stdout",
];

/// Fluentd's class name for an output type, for messages users search for.
fn fluentd_class(type_name: &str) -> String {
    match type_name {
        "relabel" => "Fluent::Plugin::RelabelOutput".into(),
        "copy" => "Fluent::Plugin::CopyOutput".into(),
        "stdout" => "Fluent::Plugin::StdoutOutput".into(),
        "null" => "Fluent::Plugin::NullOutput".into(),
        "file" => "Fluent::Plugin::FileOutput".into(),
        "secondary_file" => "Fluent::Plugin::SecondaryFileOutput".into(),
        "s3" => "Fluent::Plugin::S3Output".into(),
        other => other.into(),
    }
}

/// Whether an output type can have a `<buffer>` section.
fn can_buffer(type_name: &str) -> bool {
    matches!(
        type_name,
        "null" | "stdout" | "file" | "secondary_file" | "s3"
    )
}

/// Plugin-wide settings every output build needs.
#[derive(Debug)]
pub struct BuildContext {
    /// `<system> root_dir`.
    pub root_dir: Option<std::path::PathBuf>,
    /// The clock buffered outputs read (a fake one in tests).
    pub clock: Arc<dyn crate::time::Clock>,
    /// File-buffer paths already taken by a plugin (two plugins may not share one).
    pub buffer_paths: std::sync::Mutex<Vec<String>>,
    /// Permissions of files sluice creates (`<system> file_permission`, default 0644).
    pub file_mode: u32,
    /// Permissions of directories sluice creates (`<system> dir_permission`, default 0755).
    pub dir_mode: u32,
}

impl Default for BuildContext {
    fn default() -> Self {
        BuildContext::new(None)
    }
}

impl BuildContext {
    /// A context for a configuration with this `root_dir`.
    pub fn new(root_dir: Option<std::path::PathBuf>) -> BuildContext {
        BuildContext {
            root_dir,
            clock: Arc::new(crate::time::SystemClock),
            buffer_paths: Default::default(),
            file_mode: 0o644,
            dir_mode: 0o755,
        }
    }

    /// Checks where a file buffer will live: it needs a `path`, or an `@id` with `root_dir`,
    /// and no other plugin may use the same path.
    fn claim_buffer_path(
        &self,
        output: &Element,
        buffer: &Element,
        cfg: &mut BufferConfig,
    ) -> Result<(), ConfigError> {
        let crate::buffer::config::BufferType::File { path, .. } = &mut cfg.buffer_type else {
            return Ok(());
        };
        let slot = path;
        let path = &*slot;
        let path = match path {
            Some(p) => p.clone(),
            None => match (output.peek("@id"), &self.root_dir) {
                (Some(id), Some(root)) => root
                    .join("worker0")
                    .join(&id.value)
                    .join("buffer")
                    .display()
                    .to_string(),
                _ => {
                    return Err(ConfigError::at(
                        &buffer.pos,
                        "buffer path is not configured. specify 'path' in <buffer>",
                    ))
                }
            },
        };
        let mut taken = self.buffer_paths.lock().unwrap_or_else(|p| p.into_inner());
        if taken.contains(&path) {
            let pos = buffer.pos_of("path");
            return Err(ConfigError::at(
                &pos,
                format!("Other 'file' plugin already use same buffer path: type = file, buffer path = {path}"),
            ));
        }
        taken.push(path.clone());
        *slot = Some(path);
        Ok(())
    }
}

/// The `@type` of a section, or Fluentd's error for a missing one.
pub fn type_of(section: &Element) -> Result<String, ConfigError> {
    section.string("@type").ok_or_else(|| {
        ConfigError::at(
            &section.pos,
            format!("Missing '@type' parameter on <{}> directive", section.name),
        )
    })
}

/// Returns the single section named `name`, or Fluentd's error when it appears twice.
pub fn single_section<'a>(
    parent: &'a Element,
    name: &'a str,
) -> Result<Option<&'a Element>, ConfigError> {
    let mut it = parent.sections(name);
    let first = it.next();
    if let Some(second) = it.next() {
        return Err(ConfigError::at(
            &second.pos,
            format!("'<{name}>' section cannot be written twice or more"),
        ));
    }
    Ok(first)
}

/// Builds the target of a `<match>`, `<store>` or `<secondary>` section.
pub fn build(section: &Element, ctx: &BuildContext) -> Result<Target, ConfigError> {
    let type_name = type_of(section)?;
    build_typed(section, &type_name, ctx)
}

fn build_typed(
    section: &Element,
    type_name: &str,
    ctx: &BuildContext,
) -> Result<Target, ConfigError> {
    if !TYPES.contains(&type_name) {
        let pos = section.pos_of("@type");
        return Err(ConfigError::at(
            &pos,
            format!(
                "Unknown output plugin '{type_name}'. Supported output plugins: {}",
                TYPES.join(", ")
            ),
        ));
    }
    let buffer = single_section(section, "buffer")?;
    let secondary = single_section(section, "secondary")?;
    // The `<secondary>` writer is built once the primary's buffer configuration is known: a
    // file secondary names its files after the primary's chunk keys.
    let mut secondary_spec: Option<(&Element, String)> = None;
    if let Some(b) = buffer {
        if !can_buffer(type_name) {
            return Err(ConfigError::at(
                &b.pos,
                format!(
                    "<buffer> section is configured, but plugin '{}' doesn't support buffering",
                    fluentd_class(type_name)
                ),
            ));
        }
    }
    if let Some(s) = secondary {
        // out_file and s3 are buffered even without a <buffer> section.
        if buffer.is_none() && !matches!(type_name, "file" | "s3") {
            return Err(ConfigError::at(
                &s.pos,
                "Invalid <secondary> section for non-buffered plugin",
            ));
        }
        if let Some(b) = s.sections("buffer").next() {
            return Err(ConfigError::at(
                &b.pos,
                "<secondary> section cannot have <buffer> section",
            ));
        }
        if let Some(b) = s.sections("secondary").next() {
            return Err(ConfigError::at(
                &b.pos,
                "<secondary> section cannot have <secondary> section",
            ));
        }
        let sec_type = s.string("@type").unwrap_or_else(|| type_name.to_string());
        if TYPES.contains(&sec_type.as_str()) && !can_buffer(&sec_type) {
            return Err(ConfigError::at(
                &s.pos,
                format!(
                    "Failed to setup secondary plugin in '{type_name}'. '{sec_type}' plugin in not allowed due to non buffered output"
                ),
            ));
        }
        let custom_format = |t: &str| matches!(t, "file" | "stdout");
        if sec_type != type_name
            && sec_type != "secondary_file"
            && (custom_format(type_name) || custom_format(&sec_type))
        {
            tracing::warn!(primary = %fluentd_class(type_name), secondary = %fluentd_class(&sec_type),
                "Use different plugin for secondary. Check the plugin works with primary like secondary_file");
        }
        if let Some(b) = buffer {
            if let Some(t) = b.float("retry_secondary_threshold")? {
                if !(t > 0.0 && t < 1.0) {
                    let p = b.peek("retry_secondary_threshold").expect("was read");
                    return Err(ConfigError::at(
                        &p.value_pos,
                        format!("retry_secondary_threshold {t}: secondary_transition_threshold MUST be between 0 and 1"),
                    ));
                }
            }
        }
        secondary_spec = Some((s, sec_type));
    }
    match type_name {
        "relabel" => {
            let label = section.string("@label").ok_or_else(|| {
                ConfigError::at(&section.pos, "relabel output requires '@label' parameter")
            })?;
            Ok(Target::Relabel(label))
        }
        "copy" => {
            let _ = section.bool("deep_copy")?;
            let _ = section.enumeration("copy_mode", &["no_copy", "shallow", "deep", "marshal"])?;
            let mut stores = Vec::new();
            for store in section.sections("store") {
                let _ = store.bool("ignore_error")?;
                stores.push(build(store, ctx)?);
            }
            if stores.is_empty() {
                return Err(ConfigError::at(
                    &section.pos,
                    "copy output needs at least one <store> section",
                ));
            }
            Ok(Target::Copy(stores))
        }
        "stdout" | "null" => {
            let defaults = if type_name == "stdout" {
                stdout::defaults()
            } else {
                null::defaults()
            };
            match buffered(section, buffer, &defaults, ctx)? {
                None if type_name == "stdout" => Ok(Target::Output(Arc::new(
                    stdout::Stdout::configure(section)?,
                ))),
                None => Ok(Target::Output(Arc::new(null::Null::configure(section)?))),
                Some(cfg) => {
                    let writer = build_writer(section, type_name, None, ctx)?;
                    buffered_target(section, writer, cfg, &secondary_spec, ctx)
                }
            }
        }
        "file" => {
            let (writer, cfg) = file::FileOutput::configure(section, buffer, ctx)?;
            buffered_target(section, Arc::new(writer), cfg, &secondary_spec, ctx)
        }
        "s3" => {
            let legacy;
            let b = match buffer {
                Some(b) => b,
                None => {
                    legacy = file::legacy_buffer_section(section)?
                        .unwrap_or_else(|| Element::new("buffer", "time", section.pos.clone()));
                    &legacy
                }
            };
            let mut cfg = BufferConfig::from_section(b, section, &s3::defaults())?;
            ctx.claim_buffer_path(section, b, &mut cfg)?;
            let writer = s3::S3Output::configure(section, &cfg)?;
            buffered_target(section, Arc::new(writer), cfg, &secondary_spec, ctx)
        }
        "secondary_file" => Err(ConfigError::at(&section.pos, file::SECONDARY_ONLY)),
        _ => unreachable!("type checked against TYPES above"),
    }
}

/// A buffered output: `writer` behind a buffer configured as `cfg`, with its `<secondary>`.
fn buffered_target(
    section: &Element,
    writer: Arc<dyn ChunkWriter>,
    cfg: BufferConfig,
    secondary_spec: &Option<(&Element, String)>,
    ctx: &BuildContext,
) -> Result<Target, ConfigError> {
    let secondary = secondary_writer(secondary_spec, &cfg, ctx)?;
    Ok(Target::Output(Arc::new(buffered::BufferedOutput::new(
        plugin_id(section),
        writer,
        secondary,
        cfg,
        ctx,
    ))))
}

/// Builds the `<secondary>` writer, if any, for a primary buffered as `primary` says.
fn secondary_writer(
    spec: &Option<(&Element, String)>,
    primary: &BufferConfig,
    ctx: &BuildContext,
) -> Result<Option<Arc<dyn ChunkWriter>>, ConfigError> {
    spec.as_ref()
        .map(|(s, t)| build_writer(s, t, Some(primary), ctx))
        .transpose()
}

/// Builds the chunk writer of a buffered output (`secondary_of` None) or of a `<secondary>`
/// (with the primary's buffer configuration).
fn build_writer(
    section: &Element,
    type_name: &str,
    secondary_of: Option<&BufferConfig>,
    ctx: &BuildContext,
) -> Result<Arc<dyn ChunkWriter>, ConfigError> {
    match (type_name, secondary_of) {
        ("file", Some(p)) => Ok(Arc::new(file::FileOutput::configure_secondary(
            section, p, ctx,
        )?)),
        ("secondary_file", Some(p)) => {
            Ok(Arc::new(file::SecondaryFile::configure(section, p, ctx)?))
        }
        ("secondary_file", None) => Err(ConfigError::at(&section.pos, file::SECONDARY_ONLY)),
        ("stdout", _) => Ok(Arc::new(stdout::Stdout::configure(section)?)),
        ("null", _) => Ok(Arc::new(null::Null::configure(section)?)),
        (other, _) => Err(ConfigError::at(
            &section.pos,
            format!("output plugin '{other}' cannot be used as a secondary"),
        )),
    }
}

/// The plugin id: `@id`, or for anonymous plugins `object_<hex>` derived from where the
/// section is, so it stays the same across restarts (backup directories keep their name).
pub fn plugin_id(section: &Element) -> String {
    if let Some(id) = section.peek("@id") {
        return id.value.clone();
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    section.pos.file.hash(&mut h);
    section.pos.line.hash(&mut h);
    format!("object_{:08x}", h.finish() as u32)
}

/// Reads the `<buffer>` section of a buffered output, if it has one.
fn buffered(
    section: &Element,
    buffer: Option<&Element>,
    defaults: &OutputDefaults,
    ctx: &BuildContext,
) -> Result<Option<BufferConfig>, ConfigError> {
    let Some(b) = buffer else { return Ok(None) };
    let mut cfg = BufferConfig::from_section(b, section, defaults)?;
    ctx.claim_buffer_path(section, b, &mut cfg)?;
    Ok(Some(cfg))
}

/// Defaults shared by outputs whose buffer has no chunk keys.
pub fn plain_defaults(plugin: &'static str) -> OutputDefaults {
    OutputDefaults {
        chunk_keys: Default::default(),
        buffer_type: "memory",
        timekey: None,
        chunk_limit_size: None,
        flush_at_shutdown: None,
        plugin,
    }
}
