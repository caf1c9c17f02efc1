//! Builds a running pipeline from a configuration and runs it until a signal stops it.
//!
//! Building reads every plugin's parameters (so `--dry-run` checks all of them), reports all
//! errors found rather than the first, and turns parameters no plugin read into warnings
//! (errors with `--strict`).

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{ConfigError, ConfigErrors, Element};
use crate::input::{self, Input, InputContext};
use crate::output::{self, Output};
use crate::router::{LabelId, Router};

/// `<system>` settings.
#[derive(Debug, Clone, Default)]
pub struct SystemConfig {
    /// `log_level`: trace, debug, info, warn, error, fatal.
    pub log_level: Option<String>,
    /// `root_dir`: where buffers and backups go when a plugin has an `@id`.
    pub root_dir: Option<std::path::PathBuf>,
    /// `file_permission` for files sluice creates (octal).
    pub file_permission: Option<u32>,
    /// `dir_permission` for directories sluice creates (octal).
    pub dir_permission: Option<u32>,
}

impl SystemConfig {
    /// Reads the `<system>` section(s) of the root.
    pub fn from_root(root: &Element) -> Result<SystemConfig, ConfigError> {
        let mut sys = SystemConfig::default();
        for s in root.sections("system") {
            if let Some(l) = s.enumeration(
                "log_level",
                &["trace", "debug", "info", "warn", "error", "fatal"],
            )? {
                sys.log_level = Some(l.to_string());
            }
            if let Some(d) = s.string("root_dir") {
                sys.root_dir = Some(d.into());
            }
            if let Some(w) = s.integer("workers")? {
                if w != 1 {
                    let p = s.peek("workers").expect("workers was read");
                    return Err(ConfigError::at(
                        &p.value_pos,
                        "workers: sluice runs one worker per process; run one sluice per buffer directory instead",
                    ));
                }
            }
            sys.file_permission = octal(s, "file_permission")?.or(sys.file_permission);
            sys.dir_permission = octal(s, "dir_permission")?.or(sys.dir_permission);
            let _ = s.string("process_name");
            let _ = s.bool("suppress_repeated_stacktrace")?;
        }
        Ok(sys)
    }
}

fn octal(s: &Element, key: &str) -> Result<Option<u32>, ConfigError> {
    let Some(p) = s.param(key) else {
        return Ok(None);
    };
    u32::from_str_radix(p.value.trim(), 8)
        .map(Some)
        .map_err(|_| {
            ConfigError::at(
                &p.value_pos,
                format!("{key}: invalid octal permission \"{}\"", p.value),
            )
        })
}

/// How to build.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// Unused parameters are errors instead of warnings.
    pub strict: bool,
}

/// A built pipeline, ready to run.
#[derive(Debug)]
pub struct Pipeline {
    /// `<system>` settings.
    pub system: SystemConfig,
    /// The router with every filter and output.
    pub router: Arc<Router>,
    /// Sources and the label each emits into.
    pub inputs: Vec<(Arc<dyn Input>, LabelId)>,
    /// Every output instance (started before inputs, stopped after them).
    pub outputs: Vec<Arc<dyn Output>>,
    /// Non-fatal findings (unused parameters), already formatted as config errors.
    pub warnings: Vec<ConfigError>,
}

/// Builds every plugin of `root`.
pub fn build(root: &Element, opts: BuildOptions) -> Result<Pipeline, ConfigErrors> {
    let mut errors = Vec::new();
    let system = SystemConfig::from_root(root).unwrap_or_else(|e| {
        errors.push(e);
        SystemConfig::default()
    });
    for w in root.elements.iter().filter(|e| e.name == "worker") {
        w.mark_used();
        errors.push(ConfigError::at(
            &w.pos,
            "<worker> directive is not supported: sluice runs one worker per process",
        ));
    }
    let mut ctx = output::BuildContext::new(system.root_dir.clone());
    ctx.file_mode = system.file_permission.unwrap_or(0o644);
    ctx.dir_mode = system.dir_permission.unwrap_or(0o755);
    let router = match Router::build(root, &ctx) {
        Ok(r) => Some(Arc::new(r)),
        Err(ConfigErrors(es)) => {
            errors.extend(es);
            None
        }
    };
    let mut inputs = Vec::new();
    for s in root.sections("source") {
        match input::build(s) {
            Ok(i) => {
                let label = match s.param("@label") {
                    None => Some(LabelId::ROOT),
                    Some(p) => match router.as_ref().map(|r| r.label(p.value.trim())) {
                        Some(Some(l)) => Some(l),
                        Some(None) => {
                            errors.push(ConfigError::at(
                                &p.value_pos,
                                format!("@label {} is not defined", p.value.trim()),
                            ));
                            None
                        }
                        None => None,
                    },
                };
                if let Some(l) = label {
                    inputs.push((i, l));
                }
            }
            Err(e) => errors.push(e),
        }
    }
    check_log_levels(root, &mut errors);
    let mut warnings = Vec::new();
    for u in root.unused() {
        let e = u.to_error();
        if opts.strict {
            errors.push(e);
        } else {
            warnings.push(e);
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let router = router.expect("router built when there are no errors");
    Ok(Pipeline {
        system,
        outputs: router.outputs(),
        router,
        inputs,
        warnings,
    })
}

/// Checks every `@log_level` value. sluice applies one log level to the whole process (from
/// `-v`/`-q` or `<system> log_level`); a plugin's `@log_level` is validated and accepted so
/// Fluentd configs run unchanged.
fn check_log_levels(e: &Element, errors: &mut Vec<ConfigError>) {
    const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "fatal"];
    if let Some(p) = e.peek("@log_level") {
        if !LEVELS.contains(&p.value.trim()) {
            errors.push(ConfigError::at(
                &p.value_pos,
                format!(
                    "@log_level: valid options are {} but got {}",
                    LEVELS.join(","),
                    p.value
                ),
            ));
        }
    }
    for c in &e.elements {
        check_log_levels(c, errors);
    }
}

/// What stops or nudges a running pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Flush every buffer now, keep running (SIGUSR1).
    Flush,
    /// Stop gracefully (SIGTERM, SIGINT).
    Stop,
}

impl Pipeline {
    /// Runs until `control` says stop: starts outputs, then inputs; on stop, stops inputs
    /// first (no new events), then shuts outputs down (flushing as configured).
    pub async fn run(
        self,
        mut control: tokio::sync::mpsc::Receiver<Control>,
    ) -> Result<(), String> {
        for o in &self.outputs {
            if let Err(e) = o.clone().start().await {
                for started in &self.outputs {
                    started.shutdown().await;
                }
                return Err(e);
            }
        }
        // Every input binds before any runs: a port in use stops start-up, as in Fluentd.
        for (input, _) in &self.inputs {
            if let Err(e) = input.bind().await {
                for started in &self.outputs {
                    started.shutdown().await;
                }
                return Err(e);
            }
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for (input, label) in &self.inputs {
            let ctx = InputContext {
                router: self.router.clone(),
                label: *label,
                shutdown: stop_rx.clone(),
            };
            tasks.push(tokio::spawn(input.clone().run(ctx)));
        }
        tracing::info!(
            inputs = self.inputs.len(),
            outputs = self.outputs.len(),
            "sluice started"
        );
        while let Some(c) = control.recv().await {
            match c {
                Control::Flush => {
                    tracing::info!("force flushing buffered events");
                    for o in &self.outputs {
                        o.force_flush();
                    }
                }
                Control::Stop => break,
            }
        }
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
        for o in &self.outputs {
            o.shutdown().await;
        }
        tracing::info!("shutdown complete");
        Ok(())
    }
}
