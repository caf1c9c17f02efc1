//! The upload journal of one chunk: what the s3 output did with it in earlier attempts.
//!
//! Each step of an upload is recorded in the chunk itself, as a delivery record (a checksummed,
//! synced frame of the chunk file for file buffers; memory for memory buffers) **before** the
//! step it announces can be lost:
//!
//! | record | written | holds |
//! | --- | --- | --- |
//! | `put` | before PutObject | the key |
//! | `intent` | before CreateMultipartUpload | the key |
//! | `upload` | right after CreateMultipartUpload | key, upload id, part size |
//! | `part` | right after UploadPart | upload id, part number, byte range, length, ETag, CRC32C |
//!
//! Records are small JSON objects, so `sluice buffer cat` shows them as they are. The last
//! `put`/`intent`/`upload` record decides the state; `part` records count only for the upload
//! they name. A key, once journaled, is the chunk's key forever: `%{index}` and
//! `%{uuid_flush}` are chosen once per chunk, not per attempt.

use bytes::Bytes;
use serde_json::{json, Value};

/// One uploaded part, as journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartRecord {
    /// Part number, from 1.
    pub number: i32,
    /// First byte of the chunk's formatted records in this part.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// Compressed length.
    pub len: u64,
    /// The ETag S3 returned.
    pub etag: String,
    /// CRC32C of the compressed bytes.
    pub crc: u32,
}

/// What earlier attempts left of a chunk's upload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Journal {
    /// The chunk's key, once chosen.
    pub key: Option<String>,
    /// How the object is being written.
    pub step: Step,
}

/// The last step journaled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    #[default]
    None,
    /// A PutObject of the whole object may have been sent.
    Put,
    /// CreateMultipartUpload may have been sent; its upload id was not journaled.
    Intent,
    /// A multipart upload exists with these parts uploaded.
    Upload {
        /// The upload id.
        upload_id: String,
        /// The part size the parts were cut with.
        part_size: u64,
        /// Uploaded parts, in part-number order.
        parts: Vec<PartRecord>,
    },
}

impl Journal {
    /// Rebuilds the journal from a chunk's delivery records (records of other outputs or that
    /// cannot be read are skipped).
    pub fn from_records(records: &[Bytes]) -> Journal {
        let mut j = Journal::default();
        for r in records {
            let Ok(v) = serde_json::from_slice::<Value>(r) else {
                continue;
            };
            let key = v["key"].as_str().map(str::to_string);
            match v["s3"].as_str() {
                Some("put") => {
                    j.key = key.or(j.key);
                    j.step = Step::Put;
                }
                Some("intent") => {
                    j.key = key.or(j.key);
                    j.step = Step::Intent;
                }
                Some("upload") => {
                    let (Some(id), Some(size)) = (v["upload_id"].as_str(), v["part_size"].as_u64())
                    else {
                        continue;
                    };
                    j.key = key.or(j.key);
                    j.step = Step::Upload {
                        upload_id: id.to_string(),
                        part_size: size,
                        parts: Vec::new(),
                    };
                }
                Some("part") => {
                    let Step::Upload {
                        upload_id, parts, ..
                    } = &mut j.step
                    else {
                        continue;
                    };
                    if v["upload_id"].as_str() != Some(upload_id.as_str()) {
                        continue;
                    }
                    if let Some(p) = part_of(&v) {
                        parts.retain(|q| q.number != p.number);
                        parts.push(p);
                        parts.sort_by_key(|q| q.number);
                    }
                }
                _ => {}
            }
        }
        j
    }
}

fn part_of(v: &Value) -> Option<PartRecord> {
    Some(PartRecord {
        number: i32::try_from(v["n"].as_i64()?).ok()?,
        start: v["start"].as_u64()? as usize,
        end: v["end"].as_u64()? as usize,
        len: v["len"].as_u64()?,
        etag: v["etag"].as_str()?.to_string(),
        crc: u32::try_from(v["crc"].as_u64()?).ok()?,
    })
}

/// The `put` record.
pub fn put(key: &str) -> Vec<u8> {
    json!({"s3": "put", "key": key}).to_string().into_bytes()
}

/// The `intent` record.
pub fn intent(key: &str) -> Vec<u8> {
    json!({"s3": "intent", "key": key}).to_string().into_bytes()
}

/// The `upload` record.
pub fn upload(key: &str, upload_id: &str, part_size: u64) -> Vec<u8> {
    json!({"s3": "upload", "key": key, "upload_id": upload_id, "part_size": part_size})
        .to_string()
        .into_bytes()
}

/// The `part` record.
pub fn part(upload_id: &str, p: &PartRecord) -> Vec<u8> {
    json!({"s3": "part", "upload_id": upload_id, "n": p.number, "start": p.start,
        "end": p.end, "len": p.len, "etag": p.etag, "crc": p.crc})
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(v: Vec<u8>) -> Bytes {
        Bytes::from(v)
    }

    fn p(n: i32, start: usize, end: usize) -> PartRecord {
        PartRecord {
            number: n,
            start,
            end,
            len: 10,
            etag: format!("\"e{n}\""),
            crc: 7,
        }
    }

    #[test]
    fn replays_the_last_upload_and_its_parts() {
        let records = vec![
            rec(intent("k")),
            rec(upload("k", "u1", 100)),
            rec(part("u1", &p(1, 0, 10))),
            // The first upload vanished (NoSuchUpload): a new one starts.
            rec(intent("k")),
            rec(upload("k", "u2", 100)),
            rec(part("u1", &p(2, 10, 20))),
            rec(part("u2", &p(1, 0, 10))),
            rec(part("u2", &p(2, 10, 20))),
            rec(b"{\"dest\":\"/some/file\"}".to_vec()),
            rec(b"garbage".to_vec()),
        ];
        let j = Journal::from_records(&records);
        assert_eq!(j.key.as_deref(), Some("k"));
        assert_eq!(
            j.step,
            Step::Upload {
                upload_id: "u2".into(),
                part_size: 100,
                parts: vec![p(1, 0, 10), p(2, 10, 20)]
            }
        );
    }

    #[test]
    fn an_intent_without_upload_id_and_a_put() {
        let j = Journal::from_records(&[rec(intent("k1"))]);
        assert_eq!((j.key.as_deref(), j.step), (Some("k1"), Step::Intent));
        let j = Journal::from_records(&[rec(put("k2"))]);
        assert_eq!((j.key.as_deref(), j.step), (Some("k2"), Step::Put));
        assert_eq!(Journal::from_records(&[]), Journal::default());
    }
}
