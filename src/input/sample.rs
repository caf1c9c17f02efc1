//! `@type sample` (alias `dummy`): generates events, for demos, tests and benchmarks.
//!
//! Parameters as Fluentd's in_sample: `tag` (default `sample`), `rate` (emits per second,
//! default 1), `size` (events per emit, default 1), `sample` (also `dummy`: one JSON object or
//! an array of objects used in turn; default `[{"message":"sample"}]`), `auto_increment_key`
//! (adds a counter field starting at 0), `suspend` (accepted; the counter restarts at 0).
//! As in Fluentd, a second is cut into ten bins: each bin emits `rate / 10` times and the
//! remaining `rate % 10` emits close the second.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, Element};
use crate::event::{EventTime, StreamBuilder};
use crate::msgpack;
use crate::output::BoxFuture;

use super::{Input, InputContext};

/// The sample input.
#[derive(Debug)]
pub struct Sample {
    tag: String,
    rate: u64,
    size: u64,
    samples: Vec<serde_json::Map<String, serde_json::Value>>,
    auto_increment_key: Option<String>,
}

impl Sample {
    /// Reads a `<source>` section of type sample.
    pub fn configure(section: &Element) -> Result<Sample, ConfigError> {
        let tag = section.string("tag").unwrap_or_else(|| "sample".into());
        let rate = section.integer("rate")?.unwrap_or(1);
        let size = section.integer("size")?.unwrap_or(1);
        let _ = section.bool("suspend")?;
        let auto_increment_key = section.string("auto_increment_key");
        let param = section.param("sample").or_else(|| section.param("dummy"));
        let samples = match param {
            None => vec![serde_json::Map::from_iter([(
                "message".to_string(),
                serde_json::Value::String("sample".into()),
            )])],
            Some(p) => {
                let v: serde_json::Value = serde_json::from_str(&p.value).map_err(|e| {
                    ConfigError::at(&p.value_pos, format!("{}: invalid JSON: {e}", p.key))
                })?;
                let list = match v {
                    serde_json::Value::Array(a) => a,
                    other => vec![other],
                };
                let mut out = Vec::new();
                for item in list {
                    match item {
                        serde_json::Value::Object(m) => out.push(m),
                        _ => {
                            return Err(ConfigError::at(
                                &p.value_pos,
                                format!("{} must be a JSON object or an array of objects", p.key),
                            ))
                        }
                    }
                }
                if out.is_empty() {
                    return Err(ConfigError::at(
                        &p.value_pos,
                        format!("{} must not be empty", p.key),
                    ));
                }
                out
            }
        };
        if rate < 1 {
            let p = section.peek("rate").expect("rate was read");
            return Err(ConfigError::at(&p.value_pos, "rate must be 1 or more"));
        }
        if size < 1 {
            let p = section.peek("size").expect("size was read");
            return Err(ConfigError::at(&p.value_pos, "size must be 1 or more"));
        }
        Ok(Sample {
            tag,
            rate: rate as u64,
            size: size as u64,
            samples,
            auto_increment_key,
        })
    }

    /// Pre-encoded records, used in turn when there is no counter to add.
    fn encoded(&self) -> Vec<Vec<u8>> {
        self.samples
            .iter()
            .map(|m| {
                let mut b = Vec::new();
                msgpack::write_from_json(&serde_json::Value::Object(m.clone()), &mut b);
                b
            })
            .collect()
    }
}

/// Generator state across emits.
struct Cursor {
    next_sample: usize,
    counter: u64,
}

impl Sample {
    async fn emit(&self, ctx: &InputContext, encoded: &[Vec<u8>], cur: &mut Cursor, times: u64) {
        for _ in 0..times {
            let now = EventTime::now();
            let mut b = StreamBuilder::with_capacity(64 * self.size as usize);
            for _ in 0..self.size {
                let i = cur.next_sample % self.samples.len();
                cur.next_sample = cur.next_sample.wrapping_add(1);
                match &self.auto_increment_key {
                    None => b.push(now, &encoded[i]),
                    Some(key) => {
                        let mut m = self.samples[i].clone();
                        m.insert(key.clone(), serde_json::Value::from(cur.counter));
                        cur.counter += 1;
                        let mut rec = Vec::new();
                        msgpack::write_from_json(&serde_json::Value::Object(m), &mut rec);
                        b.push(now, &rec);
                    }
                }
            }
            // Errors were logged by the router; a generator simply goes on.
            let _ = ctx.router.emit(ctx.label, &self.tag, b.finish()).await;
        }
    }
}

impl Input for Sample {
    fn run(self: Arc<Self>, mut ctx: InputContext) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let encoded = self.encoded();
            let mut cur = Cursor {
                next_sample: 0,
                counter: 0,
            };
            let per_bin = self.rate / 10;
            let residual = self.rate % 10;
            let mut shutdown = ctx.shutdown.clone();
            loop {
                let second_start = tokio::time::Instant::now();
                for bin in 1..=10u32 {
                    if per_bin > 0 {
                        self.emit(&ctx, &encoded, &mut cur, per_bin).await;
                    }
                    let until = second_start + Duration::from_millis(100) * bin;
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = shutdown.changed() => return,
                    }
                    if *ctx.shutdown.borrow_and_update() {
                        return;
                    }
                }
                self.emit(&ctx, &encoded, &mut cur, residual).await;
            }
        })
    }
}
