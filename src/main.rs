//! The `sluice` binary: command line, signals, exit codes.

use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{self, Args};
use sluice::config::parser;
use sluice::pipeline::{self, BuildOptions, Control};

/// The configuration `sluice` runs without `-c`.
const DEFAULT_CONFIG: &str = include_str!("default.conf");

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(cli::Command::Buffer(cmd)) = &args.command {
        return Ok(ExitCode::from(cli::run_buffer_command(cmd)));
    }
    // Logging first, so warnings of the parser are seen; `<system> log_level` applies after.
    let handle = cli::init_logging(args.level_override().unwrap_or("info"), args.log_format);
    let parsed = match &args.config {
        Some(path) => parser::parse_file(path),
        None => parser::parse_str(DEFAULT_CONFIG, "<default config>", std::env::current_dir()?),
    };
    let root = match parsed {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(1));
        }
    };
    let system_level = root
        .elements
        .iter()
        .filter(|e| e.name == "system")
        .filter_map(|s| s.peek("log_level").map(|p| p.value.trim().to_string()))
        .next_back();
    if let (None, Some(level), Some(h)) = (args.level_override(), system_level, &handle) {
        cli::set_level(h, &level);
    }

    let built = pipeline::build(
        &root,
        BuildOptions {
            strict: args.strict,
        },
    );
    if args.show_config {
        print!("{}", cli::show_config(&root));
    }
    let pipeline = match built {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            return Ok(ExitCode::from(1));
        }
    };
    cli::warn_unused(&root.unused());
    if args.dry_run {
        tracing::info!("configuration is valid");
        return Ok(ExitCode::SUCCESS);
    }
    if uses_type(&root.elements, "s3") {
        bound_large_allocations();
    }
    drop(root);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice")
        .build()?;
    let result = rt.block_on(async move {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        spawn_signal_handlers(tx).map_err(|e| e.to_string())?;
        pipeline.run(rx).await
    });
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("sluice: cannot start: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// SIGTERM/SIGINT stop gracefully; SIGUSR1 flushes every buffer.
fn spawn_signal_handlers(tx: tokio::sync::mpsc::Sender<Control>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::spawn(async move {
        loop {
            let c = tokio::select! {
                _ = term.recv() => Control::Stop,
                _ = int.recv() => Control::Stop,
                _ = usr1.recv() => Control::Flush,
            };
            if tx.send(c).await.is_err() || c == Control::Stop {
                break;
            }
        }
    });
    Ok(())
}

/// Whether a `<match>`, `<store>` or `<secondary>` below `elements` has `@type ty`.
fn uses_type(elements: &[sluice::config::Element], ty: &str) -> bool {
    elements.iter().any(|e| {
        (matches!(e.name.as_str(), "match" | "store" | "secondary")
            && e.peek("@type").is_some_and(|p| p.value.trim() == ty))
            || uses_type(&e.elements, ty)
    })
}

/// With an s3 output, large buffers (a chunk read whole for its upload, compressed parts) go
/// straight to `mmap` and back to the system when freed. glibc otherwise raises its mmap
/// threshold after the first large free and serves later large buffers from arenas that keep
/// the memory: measured with file buffer → s3, the peak RSS was 190–260 MiB with the default
/// and 75–90 MiB with a fixed 4 MiB threshold. Other pipelines keep glibc's default: for them
/// the fixed threshold cost ~17 % of the memory-buffer throughput (fresh pages for every 8 MiB
/// chunk). An explicit `MALLOC_MMAP_THRESHOLD_` in the environment wins.
fn bound_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only changes allocator tuning and is thread-safe; it runs before the
        // runtime starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        }
    }
}
