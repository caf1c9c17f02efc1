//! Fluentd's configuration language: parser, typed parameters, errors with positions.
//!
//! [`parser`] turns text into an [`Element`] tree (with `@include` resolved); plugins read typed
//! parameters from it through [`Element`]'s accessors; every problem is a [`ConfigError`] that
//! names file, line, column and the rule.

pub mod element;
pub mod embedded;
pub mod error;
pub mod parser;
pub mod value;

pub use element::{Element, Param, Unused};
pub use error::{ConfigError, ConfigErrors, Pos};
