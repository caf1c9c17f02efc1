//! `@type null`: accepts events and discards them (for tests, benchmarks and muting tags).

use crate::buffer::config::OutputDefaults;
use crate::config::{ConfigError, Element};
use crate::event::EventStream;

use super::{BoxFuture, EmitError, Output, Receipt};

/// The null output. Counts what it discards, so benchmarks and tests can see it arrived.
#[derive(Debug, Default)]
pub struct Null {
    events: std::sync::atomic::AtomicU64,
}

/// Buffer defaults of the null output.
pub fn defaults() -> OutputDefaults {
    super::plain_defaults("null")
}

impl Null {
    /// Reads a `<match>` section of type null.
    pub fn configure(section: &Element) -> Result<Null, ConfigError> {
        let _ = section.bool("never_flush")?;
        Ok(Null::default())
    }

    /// Events discarded so far.
    pub fn events(&self) -> u64 {
        self.events.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Output for Null {
    fn emit<'a>(
        &'a self,
        _tag: &'a str,
        es: EventStream,
    ) -> BoxFuture<'a, Result<Receipt, EmitError>> {
        self.events
            .fetch_add(es.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(Receipt::stored())))
    }
}

impl super::buffered::ChunkWriter for Null {
    fn type_name(&self) -> &'static str {
        "null"
    }

    fn formats(&self) -> bool {
        false
    }

    fn write<'a>(
        &'a self,
        chunk: &'a super::buffered::WriteChunk,
    ) -> BoxFuture<'a, Result<(), super::buffered::ChunkWriteError>> {
        self.events
            .fetch_add(chunk.chunk.records, std::sync::atomic::Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }
}
