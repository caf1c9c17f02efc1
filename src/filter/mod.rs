//! Filters: `<filter PATTERN>` plugins that drop, keep or rewrite events on their way to an
//! output.
//!
//! A filter gets a whole [`EventStream`] of one tag and returns the stream to pass on. Filters
//! that only select events (grep) copy the selected entries' bytes as they are; filters that
//! rewrite records (record_transformer) re-encode only the records they change.

use std::sync::Arc;

pub mod grep;
pub mod record_transformer;

use crate::config::{ConfigError, Element};
use crate::event::EventStream;

/// A `<filter>` plugin.
pub trait Filter: Send + Sync + std::fmt::Debug {
    /// Returns the events of `es` (all tagged `tag`) that go on, possibly rewritten.
    fn filter_stream(&self, tag: &str, es: EventStream) -> EventStream;
}

/// Filter types this build knows, for the unknown-type error.
pub const TYPES: &[&str] = &["grep", "record_transformer"];

/// Builds the filter a `<filter>` section describes.
pub fn build(section: &Element, type_name: &str) -> Result<Arc<dyn Filter>, ConfigError> {
    match type_name {
        "grep" => Ok(Arc::new(grep::Grep::configure(section)?)),
        "record_transformer" => Ok(Arc::new(record_transformer::RecordTransformer::configure(
            section,
        )?)),
        _ => Err(unknown(section, type_name)),
    }
}

/// The error for a `@type` no filter answers to.
pub fn unknown(section: &Element, type_name: &str) -> ConfigError {
    let pos = section.pos_of("@type");
    ConfigError::at(
        &pos,
        format!(
            "Unknown filter plugin '{type_name}'. Supported filter plugins: {}",
            TYPES.join(", ")
        ),
    )
}
