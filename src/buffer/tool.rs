//! `sluice buffer`: look into and repair buffer directories without running a pipeline.
//!
//! - `ls PATH`: every chunk with its id, state, metadata, bytes, records and age;
//! - `cat PATH ID`: a chunk's records (MessagePack chunks as JSON lines
//!   `{"time":…,"tag":…,"record":…}`, formatted chunks as they will be written);
//! - `verify PATH`: checks every frame's checksum and lists damaged byte ranges;
//! - `requeue BACKUP_DIR PATH`: turns backed-up chunks (`<id>.log` + `<id>.log.meta.json`)
//!   into queued chunks of PATH, replayed at the next start. It takes PATH's lock, so it refuses
//!   to run while sluice owns that buffer; requeued backup files are moved to
//!   `BACKUP_DIR/requeued/`, never deleted.
//!
//! Reading (`ls`, `cat`, `verify`) takes no lock and changes nothing, so it is safe next to a
//! running sluice.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::chunk::decompress;
use super::chunk_id::ChunkId;
use super::config::Compress;
use super::file::{decode_header, encode_header, FileStore, Header, Layout};
use super::metadata::Metadata;
use super::wal;
use crate::event::EventStream;
use crate::msgpack;

/// What `ls` shows of one chunk file.
#[derive(Debug, Clone)]
pub struct ChunkInfo {
    /// File path.
    pub path: PathBuf,
    /// `staged` or `queued`.
    pub state: &'static str,
    /// Header, when readable.
    pub header: Option<Header>,
    /// Data bytes in intact frames.
    pub bytes: u64,
    /// Records in intact frames.
    pub records: u64,
    /// Seconds since the file was last written.
    pub age: u64,
    /// Damaged byte ranges.
    pub damage: Vec<wal::Damage>,
}

/// Every chunk file of a buffer path.
pub fn chunks(path: &str) -> std::io::Result<Vec<ChunkInfo>> {
    let layout = Layout::resolve(path, ".log");
    let mut out = Vec::new();
    let now = std::time::SystemTime::now();
    for entry in std::fs::read_dir(&layout.dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((state, _)) = layout.parse_name(&name) else {
            continue;
        };
        let scan = super::records::scan_file(&entry.path(), None)?;
        let header = scan.header.as_deref().and_then(decode_header);
        let (bytes, records) = (scan.records.len(), scan.records.count());
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .map_or(0, |d| d.as_secs());
        out.push(ChunkInfo {
            path: entry.path(),
            state: if state == 'b' { "staged" } else { "queued" },
            header,
            bytes,
            records,
            age,
            damage: scan.damage,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn metadata_text(m: &Metadata) -> String {
    let mut s = String::new();
    if let Some(t) = &m.tag {
        let _ = write!(s, "tag={t} ");
    }
    if let Some(k) = m.timekey {
        let _ = write!(s, "timekey={k} ");
    }
    for (k, v) in &m.variables {
        let v = msgpack::to_json_value(v).unwrap_or(serde_json::Value::Null);
        let _ = write!(s, "{k}={v} ");
    }
    s.trim_end().to_string()
}

/// The `ls` report.
pub fn ls(path: &str) -> std::io::Result<String> {
    let mut out = String::new();
    let list = chunks(path)?;
    let _ = writeln!(
        out,
        "{:<32}  {:<6}  {:>12}  {:>9}  {:>8}  metadata",
        "id", "state", "bytes", "records", "age(s)"
    );
    for c in &list {
        let id = c
            .header
            .as_ref()
            .map_or_else(|| "(no readable header)".to_string(), |h| h.id.to_string());
        let meta = c
            .header
            .as_ref()
            .map(|h| metadata_text(&h.metadata))
            .unwrap_or_default();
        let damage = if c.damage.is_empty() {
            String::new()
        } else {
            format!("  DAMAGED ({} ranges)", c.damage.len())
        };
        let _ = writeln!(
            out,
            "{id:<32}  {:<6}  {:>12}  {:>9}  {:>8}  {meta}{damage}",
            c.state, c.bytes, c.records, c.age
        );
    }
    let _ = writeln!(
        out,
        "{} chunks, {} records, {} bytes",
        list.len(),
        list.iter().map(|c| c.records).sum::<u64>(),
        list.iter().map(|c| c.bytes).sum::<u64>()
    );
    Ok(out)
}

/// The `cat` output for chunk `id`.
pub fn cat(path: &str, id: &str) -> std::io::Result<Vec<u8>> {
    let want = ChunkId::parse_hex(id)
        .ok_or_else(|| std::io::Error::other(format!("not a chunk id: {id}")))?;
    let layout = Layout::resolve(path, ".log");
    let file = ['b', 'q']
        .iter()
        .map(|s| layout.chunk_path(*s, want))
        .find(|p| p.exists())
        .ok_or_else(|| {
            std::io::Error::other(format!("no chunk {id} in {}", layout.dir.display()))
        })?;
    let scan = super::records::scan_file(&file, None)?;
    let header = scan.header.as_deref().and_then(decode_header);
    let records = scan.records.read_all()?;
    let compress = header.as_ref().map_or(Compress::Text, |h| h.compress);
    let plain = decompress(&records, compress, u64::MAX / 2)?;
    if header.as_ref().is_some_and(|h| h.formatted) {
        return Ok(plain);
    }
    let tag = header.as_ref().and_then(|h| h.metadata.tag.clone());
    let es = EventStream::from_entries(Bytes::from(plain)).map_err(|e| {
        std::io::Error::other(format!("chunk records are not MessagePack entries: {e}"))
    })?;
    let mut out = Vec::new();
    for e in es.iter() {
        out.extend_from_slice(b"{\"time\":");
        out.extend_from_slice(format!("{}.{:09}", e.time.sec, e.time.nsec).as_bytes());
        if let Some(t) = &tag {
            out.extend_from_slice(b",\"tag\":");
            msgpack::write_json_string(t, &mut out);
        }
        out.extend_from_slice(b",\"record\":");
        msgpack::write_json(e.record, &mut out)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        out.extend_from_slice(b"}\n");
    }
    Ok(out)
}

/// The `verify` report and whether every file is intact.
pub fn verify(path: &str) -> std::io::Result<(String, bool)> {
    let mut out = String::new();
    let list = chunks(path)?;
    let mut ok = true;
    for c in &list {
        if c.header.is_none() {
            ok = false;
            let _ = writeln!(out, "{}: no readable header", c.path.display());
        }
        for d in &c.damage {
            ok = false;
            let _ = writeln!(
                out,
                "{}: damaged bytes {}..{}",
                c.path.display(),
                d.start,
                d.end
            );
        }
    }
    let _ = writeln!(
        out,
        "{} chunk files checked: {}",
        list.len(),
        if ok { "all intact" } else { "damage found" }
    );
    Ok((out, ok))
}

/// Moves backed-up chunks of `backup_dir` into the buffer at `path` as queued chunks. Returns
/// a report.
pub fn requeue(backup_dir: &str, path: &str) -> Result<String, String> {
    let layout = Layout::resolve(path, ".log");
    let store = FileStore::open(layout.clone(), 0o644, 0o755).map_err(|e| e.to_string())?;
    let done_dir = Path::new(backup_dir).join("requeued");
    let mut report = String::new();
    let mut n = 0;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(backup_dir)
        .map_err(|e| format!("cannot read {backup_dir}: {e}"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    entries.sort();
    for data_path in entries {
        let meta_path = PathBuf::from(format!("{}.meta.json", data_path.display()));
        let result = requeue_one(&store, &data_path, &meta_path).and_then(|id| {
            std::fs::create_dir_all(&done_dir).map_err(|e| e.to_string())?;
            for p in [&data_path, &meta_path] {
                if p.exists() {
                    let to = done_dir.join(p.file_name().expect("a file"));
                    std::fs::rename(p, &to).map_err(|e| e.to_string())?;
                }
            }
            Ok(id)
        });
        match result {
            Ok(id) => {
                n += 1;
                let _ = writeln!(report, "requeued {} as chunk {id}", data_path.display());
            }
            Err(e) => {
                let _ = writeln!(report, "skipped {}: {e}", data_path.display());
            }
        }
    }
    let _ = writeln!(report, "{n} chunks requeued into {}", layout.dir.display());
    Ok(report)
}

fn requeue_one(store: &FileStore, data_path: &Path, meta_path: &Path) -> Result<ChunkId, String> {
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(meta_path)
            .map_err(|e| format!("no metadata file {}: {e}", meta_path.display()))?,
    )
    .map_err(|e| format!("unreadable metadata {}: {e}", meta_path.display()))?;
    let data = std::fs::read(data_path).map_err(|e| e.to_string())?;
    let id = meta["id"]
        .as_str()
        .and_then(ChunkId::parse_hex)
        .unwrap_or_else(ChunkId::now);
    let mut variables = Vec::new();
    if let Some(vars) = meta["variables"].as_object() {
        for (k, v) in vars {
            let mut enc = Vec::new();
            msgpack::write_from_json(v, &mut enc);
            variables.push((std::sync::Arc::from(k.as_str()), Bytes::from(enc)));
        }
    }
    let header = Header {
        id,
        metadata: Metadata {
            timekey: meta["timekey"].as_i64(),
            tag: meta["tag"].as_str().map(std::sync::Arc::from),
            variables,
        },
        created: meta["created"].as_i64().unwrap_or(0),
        compress: Compress::Text,
        formatted: meta["format"].as_str() == Some("formatted"),
    };
    let records = meta["records"].as_u64().unwrap_or(0) as u32;
    let mut file = Vec::new();
    wal::encode(wal::FrameKind::Header, &encode_header(&header), &mut file);
    wal::encode_records(records, &data, &mut file);
    let target = store.layout.chunk_path('q', id);
    if target.exists() {
        return Err(format!("{} exists already", target.display()));
    }
    super::file::write_atomically(&target, &file).map_err(|e| e.to_string())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::config::FlushMode;
    use crate::buffer::core::{Buffer, BufferLimits, Group};
    use crate::time::FakeClock;

    fn limits() -> BufferLimits {
        BufferLimits {
            chunk_limit_size: 1 << 20,
            chunk_limit_records: None,
            chunk_full_threshold: 0.95,
            total_limit_size: 1 << 30,
            compress: Compress::Text,
            queued_chunks_limit_size: 1,
            flush_mode: FlushMode::Lazy,
            flush_interval: 60.0,
            timekey: None,
            timekey_wait: 600.0,
        }
    }

    #[test]
    fn ls_cat_verify_and_requeue() {
        let d = tempfile::tempdir().unwrap();
        let buf = d.path().join("buf");
        let path = buf.display().to_string();
        let id = {
            let store = FileStore::open(Layout::resolve(&path, ".log"), 0o644, 0o755).unwrap();
            let (b, _) = Buffer::open_file(limits(), true, FakeClock::at(1000), store).unwrap();
            let mut rec = Vec::new();
            msgpack::write_from_json(&serde_json::json!({"a": 1}), &mut rec);
            let es = EventStream::single(crate::event::EventTime::new(5, 0), &rec);
            let meta = Metadata {
                tag: Some("t.x".into()),
                ..Default::default()
            };
            let g = Group {
                metadata: meta,
                bytes: es.bytes().clone(),
                ends: vec![es.bytes().len()],
            };
            b.write(&[g]).unwrap();
            b.enqueue_all();
            let c = b.dequeue().unwrap();
            b.takeback(c.id);
            c.id
        };
        let listing = ls(&path).unwrap();
        assert!(
            listing.contains(&id.to_string())
                && listing.contains("queued")
                && listing.contains("tag=t.x"),
            "{listing}"
        );
        let text = String::from_utf8(cat(&path, &id.to_string()).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"time\":5.000000000,\"tag\":\"t.x\",\"record\":{\"a\":1}}\n"
        );
        assert!(verify(&path).unwrap().1);
        // Damage is reported.
        let f = Layout::resolve(&path, ".log").chunk_path('q', id);
        let mut data = std::fs::read(&f).unwrap();
        let last = data.len() - 1;
        data[last] ^= 0xff;
        std::fs::write(&f, &data).unwrap();
        let (report, ok) = verify(&path).unwrap();
        assert!(!ok && report.contains("damaged bytes"), "{report}");
        std::fs::remove_file(&f).unwrap();

        // A backup made by the driver comes back as a queued chunk.
        let backup = d.path().join("backup");
        std::fs::create_dir_all(&backup).unwrap();
        let bid = ChunkId::now();
        std::fs::write(backup.join(format!("{bid}.log")), "line 1\nline 2\n").unwrap();
        std::fs::write(
            backup.join(format!("{bid}.log.meta.json")),
            serde_json::json!({"id": bid.to_string(), "tag": "t", "timekey": null, "variables": {}, "records": 2, "created": 7, "format": "formatted"}).to_string(),
        )
        .unwrap();
        let report = requeue(&backup.display().to_string(), &path).unwrap();
        assert!(report.contains("1 chunks requeued"), "{report}");
        assert!(backup.join("requeued").join(format!("{bid}.log")).exists());
        assert_eq!(cat(&path, &bid.to_string()).unwrap(), b"line 1\nline 2\n");
        let store = FileStore::open(Layout::resolve(&path, ".log"), 0o644, 0o755).unwrap();
        let (b, _) = Buffer::open_file(limits(), false, FakeClock::at(1000), store).unwrap();
        let c = b.dequeue().unwrap();
        assert_eq!(
            (c.id, c.records, c.stored.read_all().unwrap()),
            (bid, 2, Bytes::from_static(b"line 1\nline 2\n"))
        );
    }
}
