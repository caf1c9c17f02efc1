//! The parsed configuration tree and typed access to its parameters.
//!
//! A plugin reads its parameters through the typed accessors ([`Element::size`],
//! [`Element::time`], …). Each accessor marks the parameter as used and records the typed value,
//! so that afterwards [`Element::unused`] lists what nobody read (Fluentd's
//! `parameter 'x' in <section> is not used.` warning) and `--show-config` can print what every
//! value was understood as.

use std::cell::{Cell, RefCell};

use super::error::{ConfigError, Pos};
use super::value;

/// One `key value` line.
#[derive(Debug, Clone)]
pub struct Param {
    /// The key as written.
    pub key: String,
    /// The value after unquoting and escape processing (JSON values re-serialized).
    pub value: String,
    /// Where the key starts.
    pub key_pos: Pos,
    /// Where the value starts (the error position for a bad value).
    pub value_pos: Pos,
    used: Cell<bool>,
    typed: RefCell<Option<String>>,
}

impl Param {
    /// A parameter as the parser found it, not yet read by any plugin.
    pub fn new(key: String, value: String, key_pos: Pos, value_pos: Pos) -> Param {
        Param {
            key,
            value,
            key_pos,
            value_pos,
            used: Cell::new(false),
            typed: RefCell::new(None),
        }
    }

    /// How the value was understood by the plugin that read it, if one did.
    pub fn typed(&self) -> Option<String> {
        self.typed.borrow().clone()
    }

    fn read(&self, shown: String) {
        self.used.set(true);
        *self.typed.borrow_mut() = Some(shown);
    }

    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.value_pos, message)
    }
}

/// A `<name arg>` section (or the file's root, named `ROOT`).
#[derive(Debug, Clone)]
pub struct Element {
    /// Section name: `source`, `match`, `buffer`, …
    pub name: String,
    /// The argument after the name: a match pattern, a label, chunk keys.
    pub arg: String,
    /// Where the section opens (`<`).
    pub pos: Pos,
    /// Where the argument starts.
    pub arg_pos: Pos,
    /// Parameters in file order; a repeated key's last value wins.
    pub params: Vec<Param>,
    /// Nested sections in file order.
    pub elements: Vec<Element>,
    used: Cell<bool>,
}

impl Element {
    /// An empty section.
    pub fn new(name: &str, arg: &str, pos: Pos) -> Element {
        Element {
            name: name.to_string(),
            arg: arg.to_string(),
            arg_pos: pos.clone(),
            pos,
            params: Vec::new(),
            elements: Vec::new(),
            used: Cell::new(false),
        }
    }

    /// `<name arg>` as written, for messages.
    pub fn header(&self) -> String {
        if self.arg.is_empty() {
            format!("<{}>", self.name)
        } else {
            format!("<{} {}>", self.name, self.arg)
        }
    }

    /// The last parameter named `key`, without marking it used.
    pub fn peek(&self, key: &str) -> Option<&Param> {
        self.params.iter().rev().find(|p| p.key == key)
    }

    /// Where the value of `key` starts, or where the section starts when `key` is absent (the
    /// position to report for a problem with that parameter).
    pub fn pos_of(&self, key: &str) -> crate::config::Pos {
        self.peek(key)
            .map(|p| p.value_pos.clone())
            .unwrap_or_else(|| self.pos.clone())
    }

    /// Whether a parameter named `key` is present.
    pub fn has(&self, key: &str) -> bool {
        self.peek(key).is_some()
    }

    /// Marks every parameter named `key` used and returns the last one.
    fn take(&self, key: &str) -> Option<&Param> {
        for p in self.params.iter().filter(|p| p.key == key) {
            p.used.set(true);
        }
        self.peek(key)
    }

    /// A string parameter.
    pub fn string(&self, key: &str) -> Option<String> {
        let p = self.take(key)?;
        p.read(format!("{:?}", p.value));
        Some(p.value.clone())
    }

    /// The parameter itself (for plugins that need its position), marked used.
    pub fn param(&self, key: &str) -> Option<&Param> {
        let p = self.take(key)?;
        p.read(format!("{:?}", p.value));
        Some(p)
    }

    /// A size in bytes (see [`value::parse_size`]).
    pub fn size(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        let Some(p) = self.take(key) else {
            return Ok(None);
        };
        let v = value::parse_size(&p.value).ok_or_else(|| {
            p.error(format!(
                "{key}: invalid value for Integer(): \"{}\"",
                p.value
            ))
        })?;
        p.read(v.to_string());
        Ok(Some(v))
    }

    /// A duration in seconds (see [`value::parse_time`]).
    pub fn time(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        Ok(self.time_raw(key)?.map(|t| t.0))
    }

    /// A duration in seconds and whether it was written without a unit.
    pub fn time_raw(&self, key: &str) -> Result<Option<(f64, bool)>, ConfigError> {
        let Some(p) = self.take(key) else {
            return Ok(None);
        };
        let v = value::parse_time(&p.value)
            .ok_or_else(|| p.error(format!("{key}: invalid value for Float(): \"{}\"", p.value)))?;
        p.read(format!("{}s", v.0));
        Ok(Some(v))
    }

    /// A bool (see [`value::parse_bool`]).
    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(p) = self.take(key) else {
            return Ok(None);
        };
        let v = value::parse_bool(&p.value).ok_or_else(|| {
            p.error(format!(
                "'{key}' parameter is required but nil is specified ({key}: invalid bool value: {})",
                p.value
            ))
        })?;
        p.read(v.to_string());
        Ok(Some(v))
    }

    /// A whole number.
    pub fn integer(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        let Some(p) = self.take(key) else {
            return Ok(None);
        };
        let v = value::parse_integer(&p.value).ok_or_else(|| {
            p.error(format!(
                "{key}: invalid value for Integer(): \"{}\"",
                p.value
            ))
        })?;
        p.read(v.to_string());
        Ok(Some(v))
    }

    /// A floating-point number.
    pub fn float(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        let Some(p) = self.take(key) else {
            return Ok(None);
        };
        let v = value::parse_float(&p.value)
            .ok_or_else(|| p.error(format!("{key}: invalid value for Float(): \"{}\"", p.value)))?;
        p.read(v.to_string());
        Ok(Some(v))
    }

    /// One of `options`.
    pub fn enumeration(
        &self,
        key: &str,
        options: &[&'static str],
    ) -> Result<Option<&'static str>, ConfigError> {
        let Some(p) = self.take(key) else {
            return Ok(None);
        };
        let v = options
            .iter()
            .find(|o| **o == p.value.trim())
            .ok_or_else(|| {
                p.error(format!(
                    "{key}: valid options are {} but got {}",
                    options.join(","),
                    p.value
                ))
            })?;
        p.read(v.to_string());
        Ok(Some(v))
    }

    /// An array of strings (see [`value::parse_array`]).
    pub fn array(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(p) = self.take(key) else {
            return Ok(None);
        };
        let v = value::parse_array(&p.value).map_err(|e| p.error(format!("{key}: {e}")))?;
        p.read(format!("{v:?}"));
        Ok(Some(v))
    }

    /// A hash of strings (see [`value::parse_hash`]).
    pub fn hash(&self, key: &str) -> Result<Option<Vec<(String, String)>>, ConfigError> {
        let Some(p) = self.take(key) else {
            return Ok(None);
        };
        let v = value::parse_hash(&p.value).map_err(|e| p.error(format!("{key}: {e}")))?;
        p.read(format!("{v:?}"));
        Ok(Some(v))
    }

    /// Nested sections named `name`, marked used.
    pub fn sections<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.elements.iter().filter(move |e| {
            let hit = e.name == name;
            if hit {
                e.used.set(true);
            }
            hit
        })
    }

    /// Marks this section as read (for sections handled as a whole).
    pub fn mark_used(&self) {
        self.used.set(true);
    }

    /// Marks every parameter of this section as read, whatever it holds (for sections whose
    /// keys are data, such as `<record>`).
    pub fn mark_all_params_used(&self) {
        for p in &self.params {
            p.used.set(true);
        }
    }

    /// Parameters and sections below this element that no plugin read, depth first.
    pub fn unused(&self) -> Vec<Unused<'_>> {
        let mut out = Vec::new();
        self.collect_unused(&mut out);
        out
    }

    fn collect_unused<'a>(&'a self, out: &mut Vec<Unused<'a>>) {
        for p in &self.params {
            if !p.used.get() && !p.key.starts_with('@') {
                out.push(Unused::Param {
                    section: self,
                    param: p,
                });
            }
        }
        for e in &self.elements {
            if e.used.get() {
                e.collect_unused(out);
            } else {
                out.push(Unused::Section {
                    parent: self,
                    section: e,
                });
            }
        }
    }
}

/// Something in the configuration that no plugin read.
#[derive(Debug)]
pub enum Unused<'a> {
    /// A parameter of a section.
    Param {
        /// The section holding it.
        section: &'a Element,
        /// The parameter.
        param: &'a Param,
    },
    /// A whole section.
    Section {
        /// The section holding it.
        parent: &'a Element,
        /// The unused section.
        section: &'a Element,
    },
}

impl Unused<'_> {
    /// Fluentd's wording: `parameter 'x' in <section> is not used.`
    pub fn to_error(&self) -> ConfigError {
        match self {
            Unused::Param { section, param } => ConfigError::at(
                &param.key_pos,
                format!(
                    "parameter '{}' in {} is not used.",
                    param.key,
                    section.header()
                ),
            ),
            Unused::Section { parent, section } => ConfigError::at(
                &section.pos,
                format!(
                    "section {} is not used in {}",
                    section.header(),
                    if parent.name == "ROOT" {
                        "the top level".to_string()
                    } else {
                        parent.header()
                    }
                ),
            ),
        }
    }
}
