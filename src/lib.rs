//! sluice: a log forwarder that reads Fluentd's configuration, buffers exactly as Fluentd's
//! `<buffer>` section says, and delivers without loss or duplication.
//!
//! Modules follow the data flow: [`config`] → inputs → [`router`] → filters → buffer → outputs.

pub mod config;

/// This machine's host name, as `hostname` placeholders and `Socket.gethostname` give it.
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}
pub mod buffer;
pub mod cli;
pub mod event;
pub mod filter;
pub mod format;
pub mod input;
pub mod msgpack;
pub mod output;
pub mod pipeline;
pub mod placeholder;
pub mod record_accessor;
pub mod router;
pub mod time;
