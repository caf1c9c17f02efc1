//! Output buffers: the `<buffer>` section, chunks, stage and queue.
//!
//! [`config`] reads and validates a `<buffer>` section into a [`config::BufferConfig`] with
//! Fluentd's defaults and rules.

pub mod chunk;
pub mod chunk_id;
pub mod config;
pub mod core;
pub mod file;
pub mod metadata;
pub mod records;
pub mod tool;
pub mod wal;
