//! `@type s3`: fluent-plugin-s3's output, writing each buffer chunk as exactly one object.
//!
//! Configuration follows fluent-plugin-s3 (`s3_bucket`, `s3_region`, `s3_endpoint`, `path`,
//! `s3_object_key_format`, `store_as`, `<format>`, `<inject>`, object attributes,
//! credentials); the buffer is the normal `<buffer>` section, so a file buffer is the local
//! spool. What sluice adds is in [`upload`]: deterministic keys, journaled and resumable
//! multipart uploads, verification before a chunk is purged, the start-up sweep of uploads no
//! journal knows, and uploads of staged chunks' parts ahead of their flush (a background task,
//! [`ChunkWriter::background`]; one lock per chunk keeps it and the flush from writing one
//! chunk's journal at the same time).
//!
//! Modules: [`key`] expands object keys, [`parts`] cuts and compresses parts, [`journal`]
//! reads and writes the per-chunk upload journal, [`client`] builds the AWS client and
//! classifies its errors, [`upload`] runs the protocol for one chunk.

pub mod client;
pub mod journal;
pub mod key;
pub mod parts;
pub mod upload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectCannedAcl, ServerSideEncryption, StorageClass};

use super::buffered::{ChunkWriteError, ChunkWriter, WriteChunk};
use super::BoxFuture;
use crate::buffer::chunk_id::ChunkId;
use crate::buffer::config::Compress;
use crate::buffer::config::{BufferConfig, ChunkKeys, OutputDefaults};
use crate::buffer::core::{Buffer, FlushChunk, StagedFile};
use crate::buffer::records::{ChunkRecords, FileRecords};
use crate::config::{ConfigError, Element};
use crate::event::EventTime;
use crate::format::inject::RecordFormat;
use crate::placeholder::PlaceholderContext;
use client::{ClientConfig, CredentialSource, ErrorClass};
use key::{IndexFormat, KeyTemplate};
use parts::Codec;
use upload::Failure;

/// The smallest part S3 accepts (except for the last one).
pub const MIN_PART_SIZE: u64 = 5 << 20;

/// Default `part_size`.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;

/// The file in a buffer directory that holds its epoch.
pub const EPOCH_FILE: &str = "sluice-s3.epoch";

/// Buffer defaults of fluent-plugin-s3: chunk key `time`, timekey one day, memory buffer.
pub fn defaults() -> OutputDefaults {
    OutputDefaults {
        chunk_keys: ChunkKeys {
            time: true,
            ..Default::default()
        },
        buffer_type: "memory",
        timekey: Some(86400),
        chunk_limit_size: None,
        flush_at_shutdown: None,
        plugin: "s3",
    }
}

/// Object attributes sent with PutObject and CreateMultipartUpload.
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    storage_class: Option<StorageClass>,
    acl: Option<ObjectCannedAcl>,
    grant_full_control: Option<String>,
    grant_read: Option<String>,
    grant_read_acp: Option<String>,
    grant_write_acp: Option<String>,
    sse: Option<ServerSideEncryption>,
    ssekms_key_id: Option<String>,
    sse_c: Option<SseC>,
    tagging: Option<String>,
    metadata: Vec<(String, String)>,
    checksum: Option<ChecksumAlgorithm>,
}

/// SSE-C parameters.
#[derive(Debug, Clone)]
pub struct SseC {
    algorithm: String,
    key: String,
    key_md5: Option<String>,
}

/// Counters of the s3 output, published with the output's metrics.
#[derive(Debug, Default)]
pub struct Counters {
    objects_written: AtomicU64,
    uploads_created: AtomicU64,
    uploads_resumed: AtomicU64,
    uploads_completed: AtomicU64,
    parts_uploaded: AtomicU64,
    staged_parts_uploaded: AtomicU64,
    orphans_aborted: AtomicU64,
    errors_auth: AtomicU64,
    errors_transient: AtomicU64,
    errors_permanent: AtomicU64,
    errors_other: AtomicU64,
}

/// The part of the output that talks to S3 (shared by the flush workers).
#[derive(Debug)]
pub struct Uploader {
    client_config: ClientConfig,
    client: OnceLock<aws_sdk_s3::Client>,
    bucket: String,
    key: KeyTemplate,
    codec: Codec,
    content_type: &'static str,
    part_size: u64,
    attributes: Attributes,
    check_object: bool,
    check_bucket: bool,
    auto_create_bucket: bool,
    check_apikey_on_start: bool,
    /// `If-None-Match: *` on writes (turned off when the endpoint does not implement it).
    conditional: AtomicBool,
    epoch: OnceLock<String>,
    warn_for_delay: Option<f64>,
    counters: Counters,
    /// The part size for uploads of staged chunks (`upload_staged_parts`; sized for a chunk of
    /// `chunk_limit_size`), or None when staged chunks are not uploaded ahead of their flush.
    staged_part_size: Option<u64>,
    /// How often staged chunks are looked at (`flush_thread_interval`).
    stage_check: std::time::Duration,
    /// One lock per chunk being uploaded: a flush waits for an upload of the chunk's staged
    /// parts to finish, so one chunk's journal has one writer at a time.
    chunk_locks: Mutex<HashMap<ChunkId, Arc<tokio::sync::Mutex<()>>>>,
}

/// `@type s3`.
#[derive(Debug)]
pub struct S3Output {
    uploader: Arc<Uploader>,
    format: RecordFormat,
}

impl S3Output {
    /// Reads a `<match>` section of `@type s3` with its buffer configuration.
    pub fn configure(section: &Element, cfg: &BufferConfig) -> Result<S3Output, ConfigError> {
        let bucket = section
            .string("s3_bucket")
            .ok_or_else(|| ConfigError::at(&section.pos, "'s3_bucket' parameter is required"))?;
        let region = section
            .string("s3_region")
            .or_else(|| std::env::var("AWS_REGION").ok())
            .unwrap_or_else(|| "us-east-1".into());
        let endpoint = section.string("s3_endpoint");
        let force_path_style = section.bool("force_path_style")?.unwrap_or(false);
        let path_style = force_path_style
            || endpoint
                .as_deref()
                .is_some_and(client::endpoint_needs_path_style);
        let path = section.string("path").unwrap_or_default();
        let format = section
            .string("s3_object_key_format")
            .unwrap_or_else(|| key::DEFAULT_FORMAT.to_string());

        let store_as = section
            .enumeration("store_as", &["gzip", "zstd", "json", "text", "txt"])?
            .unwrap_or("gzip");
        let level = match super::single_section(section, "compress")? {
            Some(c) => c.integer("level")?,
            None => None,
        };
        let (codec, extension, content_type) = match store_as {
            "gzip" => (
                Codec::Gzip(level.map_or(6, |l| l.clamp(0, 9) as u32)),
                "gz",
                "application/x-gzip",
            ),
            "zstd" => (
                Codec::Zstd(level.map_or(3, |l| l.clamp(-7, 22) as i32)),
                "zst",
                "application/x-zst",
            ),
            "json" => (Codec::Plain, "json", "application/json"),
            _ => (Codec::Plain, "txt", "text/plain"),
        };

        let index_format = match section.string("index_format") {
            Some(f) => IndexFormat::parse(&f)
                .map_err(|e| ConfigError::at(&section.pos_of("index_format"), e))?,
            None => IndexFormat::parse("%d").expect("valid"),
        };
        let hex_random_length = section.integer("hex_random_length")?.unwrap_or(4);
        if !(0..=16).contains(&hex_random_length) {
            return Err(ConfigError::at(
                &section.pos_of("hex_random_length"),
                "hex_random_length parameter must be less than or equal to 16",
            ));
        }
        let timekey = cfg.timekey.filter(|_| cfg.chunk_keys.time);
        let time_slice_format = section
            .string("time_slice_format")
            .unwrap_or_else(|| key::time_slice_format_for(timekey).to_string());
        let key = KeyTemplate::new(
            &format,
            &path,
            extension,
            time_slice_format,
            PlaceholderContext::from_buffer(cfg),
            index_format,
            hex_random_length as usize,
        );
        // (sluice's default format names objects after chunks.)
        if cfg.flush_thread_count > 1 && !key.unique_per_chunk() {
            tracing::warn!(file = %section.pos.file, line = section.pos.line,
                "No ${{chunk_id}} or %{{uuid_flush}} in s3_object_key_format with multiple flush threads. Recommend to set ${{chunk_id}} or %{{uuid_flush}} to avoid data lost by object conflict");
        }
        if key.uses_index() {
            tracing::warn!(file = %section.pos.file, line = section.pos.line,
                "%{{index}} in s3_object_key_format is found with HEAD requests and races when several flush threads or hosts write the same prefix; prefer %{{chunk_id}}");
        }

        let part_size = section.size("part_size")?.unwrap_or(DEFAULT_PART_SIZE);
        if part_size < MIN_PART_SIZE {
            return Err(ConfigError::at(
                &section.pos_of("part_size"),
                format!("part_size {part_size} is smaller than S3's minimum part size (5m)"),
            ));
        }

        let upload_staged_parts = section.bool("upload_staged_parts")?.unwrap_or(true);

        let attributes = Attributes::configure(section)?;
        let credentials = CredentialSource::configure(section)?;
        let _ = section.bool("overwrite")?;
        let warn_for_delay = section.time("warn_for_delay")?;

        let format = RecordFormat::configure(section, Some(&cfg.chunk_keys))?;
        let checksums = attributes.checksum.is_some();
        let uploader = Uploader {
            client_config: ClientConfig {
                region,
                endpoint,
                path_style,
                credentials,
                checksums,
            },
            client: OnceLock::new(),
            bucket,
            key,
            codec,
            content_type,
            part_size,
            attributes,
            check_object: section.bool("check_object")?.unwrap_or(true),
            check_bucket: section.bool("check_bucket")?.unwrap_or(true),
            auto_create_bucket: section.bool("auto_create_bucket")?.unwrap_or(true),
            check_apikey_on_start: section.bool("check_apikey_on_start")?.unwrap_or(true),
            conditional: AtomicBool::new(true),
            epoch: OnceLock::new(),
            warn_for_delay,
            counters: Counters::default(),
            staged_part_size: upload_staged_parts
                .then(|| parts::part_size_for(part_size, cfg.chunk_limit_size)),
            stage_check: std::time::Duration::from_secs_f64(cfg.flush_thread_interval.max(0.05)),
            chunk_locks: Mutex::new(HashMap::new()),
        };
        Ok(S3Output {
            uploader: Arc::new(uploader),
            format,
        })
    }
}

impl Attributes {
    fn configure(section: &Element) -> Result<Attributes, ConfigError> {
        let storage_class = section
            .enumeration(
                "storage_class",
                &[
                    "STANDARD",
                    "REDUCED_REDUNDANCY",
                    "STANDARD_IA",
                    "ONEZONE_IA",
                    "INTELLIGENT_TIERING",
                    "GLACIER",
                    "GLACIER_IR",
                    "DEEP_ARCHIVE",
                    "EXPRESS_ONEZONE",
                ],
            )?
            .map(StorageClass::from);
        if section.bool("reduced_redundancy")? == Some(true) {
            tracing::warn!(
                "reduced_redundancy parameter is deprecated. Use storage_class parameter instead"
            );
        }
        let acl = section
            .enumeration(
                "acl",
                &[
                    "private",
                    "public-read",
                    "public-read-write",
                    "authenticated-read",
                    "aws-exec-read",
                    "bucket-owner-read",
                    "bucket-owner-full-control",
                ],
            )?
            .map(ObjectCannedAcl::from);
        let sse = section
            .enumeration(
                "use_server_side_encryption",
                &["AES256", "aws:kms", "aws:kms:dsse"],
            )?
            .map(ServerSideEncryption::from);
        let sse_c = match (
            section.string("sse_customer_algorithm"),
            section.string("sse_customer_key"),
        ) {
            (Some(algorithm), Some(key)) => Some(SseC {
                algorithm,
                key,
                key_md5: section.string("sse_customer_key_md5"),
            }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::at(
                    &section.pos,
                    "sse_customer_algorithm and sse_customer_key must be set together",
                ))
            }
        };
        let checksum = section
            .enumeration("checksum_algorithm", &["CRC32", "CRC32C", "SHA1", "SHA256"])?
            .map(ChecksumAlgorithm::from);
        Ok(Attributes {
            storage_class,
            acl,
            grant_full_control: section.string("grant_full_control"),
            grant_read: section.string("grant_read"),
            grant_read_acp: section.string("grant_read_acp"),
            grant_write_acp: section.string("grant_write_acp"),
            sse,
            ssekms_key_id: section.string("ssekms_key_id"),
            sse_c,
            tagging: section.string("tagging"),
            metadata: section.hash("s3_metadata")?.unwrap_or_default(),
            checksum,
        })
    }
}

impl Uploader {
    /// The client (built by [`ChunkWriter::start`]).
    fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get()
            .expect("s3 output started before its first write")
    }

    /// This buffer directory's epoch (`%{epoch}`).
    fn epoch(&self) -> String {
        self.epoch.get().cloned().unwrap_or_default()
    }

    /// Reads (or creates) the epoch of the buffer directory; a memory buffer gets a fresh one.
    fn load_epoch(&self, buffer: &Buffer) -> Result<String, String> {
        let fresh = || {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).map_err(|e| format!("cannot draw a random epoch: {e}"))?;
            Ok::<_, String>(b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        };
        let Some(store) = buffer.store() else {
            return fresh();
        };
        let path = store.layout.dir.join(EPOCH_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let t = text.trim();
            if t.len() == 16 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(t.to_string());
            }
            tracing::warn!(path = %path.display(), "epoch file is damaged; drawing a new epoch (keys already journaled in chunks are kept)");
        }
        let e = fresh()?;
        crate::buffer::file::write_atomically(&path, format!("{e}\n").as_bytes())
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        Ok(e)
    }

    /// Connects, checks credentials and the bucket, loads the epoch and sweeps orphan uploads.
    async fn start(&self, buffer: &Buffer) -> Result<(), String> {
        let client = client::build(&self.client_config).await;
        let _ = self.client.set(client);
        let epoch = self.load_epoch(buffer)?;
        let _ = self.epoch.set(epoch);
        if self.check_apikey_on_start {
            let r = self
                .client()
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.key.static_prefix())
                .max_keys(1)
                .send()
                .await;
            if let Err(e) = r {
                let e = self.failed(&e);
                match e.class {
                    ErrorClass::Auth => {
                        return Err(format!("can't call S3 API. Please check your credentials or s3_region configuration. error = {e}"))
                    }
                    _ if e.code == "NoSuchBucket" => {}
                    _ => tracing::warn!(bucket = %self.bucket, "cannot reach S3 at start-up (chunks stay buffered and are retried): {e}"),
                }
            }
        }
        if self.check_bucket {
            self.ensure_bucket().await?;
        }
        self.sweep(buffer).await;
        Ok(())
    }

    /// fluent-plugin-s3's `ensure_bucket`: create a missing bucket, or fail start-up.
    async fn ensure_bucket(&self) -> Result<(), String> {
        match self
            .client()
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = self.failed(&e);
                if !e.is_not_found() {
                    tracing::warn!(bucket = %self.bucket, "cannot check the bucket at start-up: {e}");
                    return Ok(());
                }
                if !self.auto_create_bucket {
                    return Err(format!(
                        "The specified bucket does not exist: bucket = {}",
                        self.bucket
                    ));
                }
                tracing::info!(bucket = %self.bucket, "Creating bucket {} on {}", self.bucket, self.client_config.endpoint.as_deref().unwrap_or("S3"));
                let mut req = self.client().create_bucket().bucket(&self.bucket);
                if self.client_config.region != "us-east-1" {
                    req = req.create_bucket_configuration(
                        aws_sdk_s3::types::CreateBucketConfiguration::builder()
                            .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                                self.client_config.region.as_str(),
                            ))
                            .build(),
                    );
                }
                match req.send().await {
                    Ok(_) => Ok(()),
                    Err(e) => {
                        let e = self.failed(&e);
                        if matches!(
                            e.code.as_str(),
                            "BucketAlreadyOwnedByYou" | "BucketAlreadyExists"
                        ) {
                            return Ok(());
                        }
                        Err(format!("cannot create bucket {}: {e}", self.bucket))
                    }
                }
            }
        }
    }

    /// Aborts in-progress uploads of this buffer's epoch that no chunk's journal knows: uploads
    /// created just before a crash. Runs before any flush, so no upload of this process can be
    /// mistaken for one.
    async fn sweep(&self, buffer: &Buffer) {
        if !self.key.uses_epoch() || buffer.store().is_none() {
            return;
        }
        let epoch = self.epoch();
        let known: std::collections::HashSet<String> = buffer
            .all_deliveries()
            .iter()
            .filter_map(|r| serde_json::from_slice::<serde_json::Value>(r).ok())
            .filter(|v| v["s3"] == "upload")
            .filter_map(|v| v["upload_id"].as_str().map(str::to_string))
            .collect();
        let uploads = match self.list_uploads(self.key.static_prefix()).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(bucket = %self.bucket, "cannot list multipart uploads at start-up; uploads left by a crash are not cleaned up: {e}");
                return;
            }
        };
        for (key, id) in uploads {
            if key.contains(&epoch) && !known.contains(&id) {
                tracing::info!(
                    key,
                    upload_id = id,
                    "aborting a multipart upload no chunk knows (left by a crash)"
                );
                self.abort(&key, &id).await;
                self.counters
                    .orphans_aborted
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The chunk's formatted records, read by range; a compressed chunk is decompressed on a
    /// blocking thread.
    async fn records(wc: &WriteChunk) -> Result<ChunkRecords, ChunkWriteError> {
        if wc.compress == Compress::Text {
            return wc.records_by_range();
        }
        let wc2 = wc.clone();
        tokio::task::spawn_blocking(move || wc2.records_by_range())
            .await
            .unwrap_or_else(|e| {
                Err(ChunkWriteError::retryable(
                    "RuntimeError",
                    format!("decompression task failed: {e}"),
                ))
            })
    }

    /// The lock of one chunk's upload (locks nobody holds are dropped on the way).
    fn chunk_lock(&self, id: ChunkId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.chunk_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id).or_default().clone()
    }

    /// Uploads the parts of staged chunks as soon as whole parts are there (Fluent Bit's
    /// large-object model), until `stop` flips. Failures are logged and retried later: the
    /// chunk's flush writes whatever is not uploaded by then, on the buffer's retry schedule.
    async fn upload_staged_chunks(
        self: Arc<Self>,
        buffer: Weak<Buffer>,
        part_size: u64,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        // Per chunk: the records length to wait for, and the time before which not to retry.
        let mut waits: HashMap<ChunkId, (usize, std::time::Instant)> = HashMap::new();
        // Per chunk: its file as indexed so far (a staged file only grows).
        let mut indexes: HashMap<ChunkId, FileRecords> = HashMap::new();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.stage_check) => {}
                _ = stop.changed() => return,
            }
            let Some(buffer) = buffer.upgrade() else {
                return;
            };
            let staged = buffer.staged_files();
            waits.retain(|id, _| staged.iter().any(|s| s.id == *id));
            indexes.retain(|id, _| staged.iter().any(|s| s.id == *id));
            for s in staged {
                if *stop.borrow() {
                    return;
                }
                let uploaded_to = match journal::Journal::from_records(&s.deliveries).step {
                    journal::Step::Upload { parts, .. } => parts.last().map_or(0, |p| p.end),
                    _ => 0,
                };
                let available = s.records_len as usize;
                if !Codec::could_be_full(uploaded_to, part_size, available) {
                    continue;
                }
                if let Some((len, until)) = waits.get(&s.id) {
                    if available < *len || std::time::Instant::now() < *until {
                        continue;
                    }
                }
                // A chunk whose flush holds the lock is not staged any more.
                let lock = self.chunk_lock(s.id);
                let Ok(_held) = lock.try_lock() else {
                    continue;
                };
                // Stopping mid-upload is safe: each step is journaled before the next one.
                let pass = tokio::select! {
                    r = self.upload_staged_chunk(&buffer, &s, part_size, &mut indexes) => r,
                    _ = stop.changed() => return,
                };
                match pass {
                    Ok(done) => {
                        waits.insert(s.id, (done.wait_for, std::time::Instant::now()));
                    }
                    Err(e) => {
                        tracing::warn!(chunk_id = %s.id, "cannot upload parts of a staged chunk yet (its flush will): {e}");
                        let later = std::time::Instant::now() + std::time::Duration::from_secs(30);
                        waits.insert(s.id, (0, later));
                    }
                }
            }
        }
    }

    /// One pass over one staged chunk, with its lock held.
    async fn upload_staged_chunk(
        &self,
        buffer: &Arc<Buffer>,
        s: &StagedFile,
        part_size: u64,
        indexes: &mut HashMap<ChunkId, FileRecords>,
    ) -> Result<upload::Staged, String> {
        // The chunk may have been queued (its file renamed) or flushed meanwhile: then its
        // flush does the rest.
        if !buffer.is_staged(s.id) {
            return Ok(upload::Staged::default());
        }
        // Index the file (further) on a blocking thread: it reads what was appended since.
        let (path, upto, known) = (s.path.clone(), s.file_len, indexes.remove(&s.id));
        let indexed = tokio::task::spawn_blocking(move || match known {
            Some(f) => f.extend(upto),
            None => FileRecords::open(&path, Some(upto)),
        })
        .await
        .map_err(|e| format!("indexing task failed: {e}"))?;
        let file = match indexed {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(upload::Staged::default())
            }
            Err(e) => return Err(format!("cannot read {}: {e}", s.path.display())),
        };
        indexes.insert(s.id, file.clone());
        let wc = WriteChunk {
            chunk: FlushChunk {
                id: s.id,
                metadata: s.metadata.clone(),
                records: file.count(),
                stored: ChunkRecords::File(file),
                created: 0,
                compress: Compress::Text,
                deliveries: s.deliveries.clone(),
            },
            compress: Compress::Text,
            formatted: true,
            decompression_limit: u64::MAX,
            journal: Some(buffer.clone()),
        };
        match self.upload_staged(&wc, part_size).await {
            Ok(done) => {
                if done.parts > 0 {
                    tracing::debug!(chunk_id = %s.id, parts = done.parts, "uploaded parts of a staged chunk");
                }
                Ok(done)
            }
            Err(Failure::S3(e)) => Err(e.to_string()),
            Err(Failure::Write(e)) => Err(e.to_string()),
        }
    }

    async fn write(&self, wc: &WriteChunk) -> Result<(), ChunkWriteError> {
        if let (Some(limit), Some(tk)) = (self.warn_for_delay, wc.chunk.metadata.timekey) {
            let delay = EventTime::now().sec - tk;
            if delay as f64 > limit {
                tracing::warn!(chunk_id = %wc.chunk.id, delay, "Outdated chunk");
            }
        }
        let lock = self.chunk_lock(wc.chunk.id);
        let _held = lock.lock().await;
        let data = Self::records(wc).await?;
        let result = self.write_chunk(wc, data).await;
        match result {
            Ok(key) => {
                self.counters
                    .objects_written
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(chunk_id = %wc.chunk.id, bucket = %self.bucket, key, "chunk written to S3");
                Ok(())
            }
            Err(Failure::Write(e)) => Err(e),
            Err(Failure::S3(e)) => {
                let class = match e.class {
                    ErrorClass::Auth => "Aws::S3::Errors::AccessDenied",
                    ErrorClass::Transient => "Aws::S3::Errors::ServiceError",
                    ErrorClass::Permanent => "Aws::S3::Errors::InvalidArgument",
                    ErrorClass::Other => "Aws::S3::Errors::ServiceError",
                };
                if e.class == ErrorClass::Auth {
                    tracing::error!(bucket = %self.bucket, chunk_id = %wc.chunk.id,
                        "S3 refused the credentials; the chunk stays buffered and is retried: {e}");
                }
                if e.class == ErrorClass::Permanent {
                    Err(ChunkWriteError::unrecoverable(format!("{class}: {e}")))
                } else {
                    Err(ChunkWriteError::retryable(class, e.to_string()))
                }
            }
        }
    }
}

impl ChunkWriter for S3Output {
    fn type_name(&self) -> &'static str {
        "s3"
    }

    fn formats(&self) -> bool {
        true
    }

    fn format(&self, tag: &str, time: EventTime, record: &[u8], out: &mut Vec<u8>) {
        self.format.format(tag, time, record, out);
    }

    fn start<'a>(&'a self, buffer: &'a Arc<Buffer>) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(self.uploader.start(buffer))
    }

    fn write<'a>(&'a self, chunk: &'a WriteChunk) -> BoxFuture<'a, Result<(), ChunkWriteError>> {
        Box::pin(self.uploader.write(chunk))
    }

    fn background(
        &self,
        buffer: &Arc<Buffer>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Option<BoxFuture<'static, ()>> {
        let part_size = self.uploader.staged_part_size?;
        buffer.store()?;
        let task =
            self.uploader
                .clone()
                .upload_staged_chunks(Arc::downgrade(buffer), part_size, stop);
        Some(Box::pin(task))
    }

    fn metrics(&self) -> Vec<(&'static str, u64)> {
        let c = &self.uploader.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("s3_objects_written", l(&c.objects_written)),
            ("s3_multipart_uploads_created", l(&c.uploads_created)),
            ("s3_multipart_uploads_resumed", l(&c.uploads_resumed)),
            ("s3_multipart_uploads_completed", l(&c.uploads_completed)),
            ("s3_parts_uploaded", l(&c.parts_uploaded)),
            ("s3_staged_parts_uploaded", l(&c.staged_parts_uploaded)),
            ("s3_orphan_uploads_aborted", l(&c.orphans_aborted)),
            ("s3_errors_auth", l(&c.errors_auth)),
            ("s3_errors_transient", l(&c.errors_transient)),
            ("s3_errors_permanent", l(&c.errors_permanent)),
            ("s3_errors_other", l(&c.errors_other)),
        ]
    }
}
