//! `@type stdout`: prints events to standard output in Fluentd's line format
//! `<time> <tag>: <record JSON>`, time as `%Y-%m-%d %H:%M:%S.%N %z` in local time (or UTC with
//! `utc`/`localtime false` in `<format>`).

use std::io::Write;

use crate::buffer::config::{BufferConfig, ChunkKeys, OutputDefaults};
use crate::config::{ConfigError, Element};
use crate::event::EventStream;
use crate::msgpack;
use crate::time::Zone;

use super::{EmitError, Output, Receipt};

/// The stdout output.
#[derive(Debug)]
pub struct Stdout {
    zone: Zone,
    json_only: bool,
    _buffer: Option<BufferConfig>,
}

/// Buffer defaults of stdout: chunk key `tag`, 10 KiB chunks, flush at shutdown.
pub fn defaults() -> OutputDefaults {
    OutputDefaults {
        chunk_keys: ChunkKeys {
            tag: true,
            ..Default::default()
        },
        buffer_type: "memory",
        timekey: None,
        chunk_limit_size: Some(10 << 10),
        flush_at_shutdown: Some(true),
        plugin: "stdout",
    }
}

impl Stdout {
    /// Reads a `<match>` section of type stdout.
    pub fn configure(
        section: &Element,
        buffer: Option<BufferConfig>,
    ) -> Result<Stdout, ConfigError> {
        let mut zone = Zone::local();
        let mut json_only = false;
        if let Some(f) = super::single_section(section, "format")? {
            match f.string("@type").as_deref().unwrap_or("stdout") {
                "stdout" => {
                    let _ = f.enumeration("output_type", &["json"])?;
                }
                "json" => json_only = true,
                other => {
                    return Err(ConfigError::at(
                        &f.pos,
                        format!("stdout: <format> @type '{other}' is not supported (supported: stdout, json)"),
                    ))
                }
            }
            if f.bool("utc")? == Some(true) || f.bool("localtime")? == Some(false) {
                zone = Zone::utc();
            }
            if let Some(tz) = f.param("timezone") {
                zone = Zone::parse(&tz.value).map_err(|e| ConfigError::at(&tz.value_pos, e))?;
            }
        }
        Ok(Stdout {
            zone,
            json_only,
            _buffer: buffer,
        })
    }

    /// Formats one stream the way Fluentd's stdout formatter does.
    pub fn format(&self, tag: &str, es: &EventStream, out: &mut Vec<u8>) {
        for e in es.iter() {
            if !self.json_only {
                out.extend_from_slice(
                    self.zone
                        .strftime(e.time, "%Y-%m-%d %H:%M:%S.%N %z")
                        .as_bytes(),
                );
                out.push(b' ');
                out.extend_from_slice(tag.as_bytes());
                out.extend_from_slice(b": ");
            }
            if msgpack::write_json(e.record, out).is_err() {
                out.extend_from_slice(b"null");
            }
            out.push(b'\n');
        }
    }
}

impl Output for Stdout {
    fn emit(&self, tag: &str, es: EventStream) -> Result<Receipt, EmitError> {
        let mut buf = Vec::with_capacity(es.bytes().len() * 2 + 64);
        self.format(tag, &es, &mut buf);
        let mut out = std::io::stdout().lock();
        out.write_all(&buf)
            .and_then(|_| out.flush())
            .map_err(|e| EmitError::Other(format!("cannot write to stdout: {e}")))?;
        Ok(Receipt::stored())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventTime, StreamBuilder};

    #[test]
    fn fluentd_line_format() {
        let root = crate::config::parser::parse_str(
            "<match **>\n@type stdout\n<format>\nutc\n</format>\n</match>\n",
            "t.conf",
            ".".into(),
        )
        .unwrap();
        let s = Stdout::configure(&root.elements[0], None).unwrap();
        let mut rec = Vec::new();
        msgpack::write_from_json(&serde_json::json!({"a": 1}), &mut rec);
        let mut b = StreamBuilder::default();
        b.push(EventTime::new(1475539089, 0), &rec);
        let mut out = Vec::new();
        s.format("my.tag", &b.finish(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2016-10-03 23:58:09.000000000 +0000 my.tag: {\"a\":1}\n"
        );
    }
}
