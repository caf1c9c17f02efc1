//! `@type null`: accepts events and discards them (for tests, benchmarks and muting tags).

use crate::buffer::config::{BufferConfig, OutputDefaults};
use crate::config::{ConfigError, Element};
use crate::event::EventStream;

use super::{EmitError, Output, Receipt};

/// The null output. Counts what it discards, so benchmarks and tests can see it arrived.
#[derive(Debug, Default)]
pub struct Null {
    events: std::sync::atomic::AtomicU64,
    _buffer: Option<BufferConfig>,
}

/// Buffer defaults of the null output.
pub fn defaults() -> OutputDefaults {
    super::plain_defaults("null")
}

impl Null {
    /// Reads a `<match>` section of type null.
    pub fn configure(section: &Element, buffer: Option<BufferConfig>) -> Result<Null, ConfigError> {
        let _ = section.bool("never_flush")?;
        Ok(Null {
            events: Default::default(),
            _buffer: buffer,
        })
    }

    /// Events discarded so far.
    pub fn events(&self) -> u64 {
        self.events.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Output for Null {
    fn emit(&self, _tag: &str, es: EventStream) -> Result<Receipt, EmitError> {
        self.events
            .fetch_add(es.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Receipt::stored())
    }
}
