//! `@type stdout`: prints events to standard output in Fluentd's line format
//! `<time> <tag>: <record JSON>`, time as `%Y-%m-%d %H:%M:%S.%N %z` in local time (or UTC with
//! `utc`/`localtime false` in `<format>`).

use std::io::Write;

use crate::buffer::config::{ChunkKeys, OutputDefaults};
use crate::config::{ConfigError, Element};
use crate::event::EventStream;
use crate::msgpack;
use crate::time::Zone;

use super::{BoxFuture, EmitError, Output, Receipt};

/// The stdout output.
#[derive(Debug)]
pub struct Stdout {
    zone: Zone,
    json_only: bool,
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
    pub fn configure(section: &Element) -> Result<Stdout, ConfigError> {
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
        Ok(Stdout { zone, json_only })
    }

    /// Formats one stream the way Fluentd's stdout formatter does.
    pub fn format(&self, tag: &str, es: &EventStream, out: &mut Vec<u8>) {
        for e in es.iter() {
            self.format_event(tag, e.time, e.record, out);
        }
    }

    /// Formats one event: `<time> <tag>: <record JSON>` and a newline.
    pub fn format_event(
        &self,
        tag: &str,
        time: crate::event::EventTime,
        record: &[u8],
        out: &mut Vec<u8>,
    ) {
        if !self.json_only {
            out.extend_from_slice(
                self.zone
                    .strftime(time, "%Y-%m-%d %H:%M:%S.%N %z")
                    .as_bytes(),
            );
            out.push(b' ');
            out.extend_from_slice(tag.as_bytes());
            out.extend_from_slice(b": ");
        }
        if msgpack::write_json(record, out).is_err() {
            out.extend_from_slice(b"null");
        }
        out.push(b'\n');
    }
}

impl Output for Stdout {
    fn emit<'a>(
        &'a self,
        tag: &'a str,
        es: EventStream,
    ) -> BoxFuture<'a, Result<Receipt, EmitError>> {
        let mut buf = Vec::with_capacity(es.bytes().len() * 2 + 64);
        self.format(tag, &es, &mut buf);
        let r = write_stdout(&buf)
            .map(|_| Receipt::stored())
            .map_err(|e| EmitError::Other(format!("cannot write to stdout: {e}")));
        Box::pin(std::future::ready(r))
    }
}

/// Writes bytes to the process's standard output in one locked write.
pub fn write_stdout(buf: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(buf)?;
    out.flush()
}

impl super::buffered::ChunkWriter for Stdout {
    fn type_name(&self) -> &'static str {
        "stdout"
    }

    fn formats(&self) -> bool {
        true
    }

    fn format(&self, tag: &str, time: crate::event::EventTime, record: &[u8], out: &mut Vec<u8>) {
        self.format_event(tag, time, record, out);
    }

    fn write<'a>(
        &'a self,
        chunk: &'a super::buffered::WriteChunk,
    ) -> BoxFuture<'a, Result<(), super::buffered::ChunkWriteError>> {
        let r = chunk.data().and_then(|d| write_stdout(&d)).map_err(|e| {
            super::buffered::ChunkWriteError::retryable(
                "Errno::EIO",
                format!("cannot write to stdout: {e}"),
            )
        });
        Box::pin(std::future::ready(r))
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
        let s = Stdout::configure(&root.elements[0]).unwrap();
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
