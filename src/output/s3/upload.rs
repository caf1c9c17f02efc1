//! Writing one chunk as one object, exactly once, across retries and restarts.
//!
//! The steps, each journaled in the chunk before it can be lost (see [`super::journal`]):
//!
//! 1. **Key.** The journaled key if there is one, else the template's (for `%{index}` with
//!    `check_object`, the first index whose key is free). Journaled with the next step.
//! 2. **Small objects**: one PutObject with `If-None-Match: *`. A `412` means the key exists:
//!    if its `sluice-chunk-id` metadata is this chunk's, an earlier attempt succeeded and its
//!    reply was lost — done; otherwise the key is taken by something else (`overwrite`
//!    decides, as in fluent-plugin-s3).
//! 3. **Multipart** (the compressed chunk is larger than a part): `intent` journaled, then
//!    CreateMultipartUpload, then the upload id journaled at once; each part journaled after
//!    UploadPart; CompleteMultipartUpload (with `If-None-Match: *`), then a HEAD to verify the
//!    object's length and chunk id. Only then does the driver purge the chunk.
//! 4. **Resume.** An upload found in the journal is reconciled with ListParts: journaled
//!    parts S3 still has (same ETag) are kept, the rest is uploaded again from the chunk. If S3
//!    no longer knows the upload (`NoSuchUpload`), a HEAD tells whether it was completed (done)
//!    or aborted (start over from the chunk). An `intent` without an upload id means the crash
//!    came between CreateMultipartUpload and its journal record: uploads of that key are
//!    listed and aborted before a new one starts.
//!
//! 5. **Staged chunks** (file buffers, `upload_staged_parts`): [`Uploader::upload_staged`]
//!    runs steps 1 and 3 on a chunk that is still growing, one whole part at a time, as soon as
//!    a part's worth of records is on disk; the chunk's flush then goes through step 4 and
//!    completes the object. A part cut from a growing chunk is the part the flush would cut
//!    (see [`super::parts::Codec::is_full`]). Each journal record is synced with `fdatasync`,
//!    which also makes every records frame before it durable, so a journaled part never
//!    covers records a crash could take back.
//!
//! Parts are read from the chunk file a block at a time and compressed on blocking threads,
//! one part ahead of the upload, so memory stays at a few parts per chunk in flight whatever
//! the object size.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use super::client::{classify, ErrorClass, S3Error};
use super::journal::{self, Journal, PartRecord, Step};
use super::key::KeyVars;
use super::parts::{part_size_for, Part};
use super::Uploader;
use crate::buffer::records::ChunkRecords;
use crate::output::buffered::{ChunkWriteError, WriteChunk};

/// User metadata naming the chunk an object was written from.
pub const CHUNK_ID_META: &str = "sluice-chunk-id";

/// How an attempt at a chunk ended badly.
#[derive(Debug)]
pub enum Failure {
    /// An S3 request failed.
    S3(S3Error),
    /// Something else (journal, compression, key).
    Write(ChunkWriteError),
}

impl From<S3Error> for Failure {
    fn from(e: S3Error) -> Self {
        Failure::S3(e)
    }
}

impl From<ChunkWriteError> for Failure {
    fn from(e: ChunkWriteError) -> Self {
        Failure::Write(e)
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Applies the object attributes (`storage_class`, `acl`, grants, SSE, `tagging`,
/// `s3_metadata`, content type) to a PutObject or CreateMultipartUpload request.
macro_rules! object_attributes {
    ($req:expr, $u:expr, $chunk:expr, $metadata:expr) => {{
        let o = &$u.attributes;
        let mut r = $req
            .content_type($u.content_type)
            .metadata(CHUNK_ID_META, $chunk.to_string())
            .set_storage_class(o.storage_class.clone())
            .set_acl(o.acl.clone())
            .set_grant_full_control(o.grant_full_control.clone())
            .set_grant_read(o.grant_read.clone())
            .set_grant_read_acp(o.grant_read_acp.clone())
            .set_grant_write_acp(o.grant_write_acp.clone())
            .set_server_side_encryption(o.sse.clone())
            .set_ssekms_key_id(o.ssekms_key_id.clone())
            .set_tagging(o.tagging.clone())
            .set_checksum_algorithm(o.checksum.clone());
        for (k, v) in $metadata {
            r = r.metadata(k, v);
        }
        sse_c!(r, o)
    }};
}

/// Applies the SSE-C headers (they go on every request that touches the object's data).
macro_rules! sse_c {
    ($req:expr, $o:expr) => {
        $req.set_sse_customer_algorithm($o.sse_c.as_ref().map(|c| c.algorithm.clone()))
            .set_sse_customer_key($o.sse_c.as_ref().map(|c| c.key.clone()))
            .set_sse_customer_key_md5($o.sse_c.as_ref().and_then(|c| c.key_md5.clone()))
    };
}

impl Uploader {
    /// Writes chunk `wc` (its formatted records are `data`) to S3.
    pub async fn write_chunk(&self, wc: &WriteChunk, data: ChunkRecords) -> Result<String> {
        let j = Journal::from_records(&wc.current_deliveries());
        let key = match &j.key {
            Some(k) => k.clone(),
            None => self.choose_key(wc).await?,
        };
        let part_size = part_size_for(self.part_size, data.len() as u64);
        match j.step {
            Step::Upload {
                upload_id,
                part_size,
                parts,
            } => {
                self.resume_multipart(wc, &data, &key, upload_id, part_size, parts)
                    .await
            }
            Step::Intent => {
                self.abort_uploads_of(&key).await;
                self.fresh(wc, &data, &key, part_size).await
            }
            Step::Put | Step::None => self.fresh(wc, &data, &key, part_size).await,
        }
    }

    /// The key of a chunk that has none journaled yet.
    async fn choose_key(&self, wc: &WriteChunk) -> Result<String> {
        let uuid = if self.key.uses_uuid() {
            super::key::uuid_v4()
        } else {
            String::new()
        };
        let epoch = self.epoch();
        let render = |index| {
            self.key
                .render(
                    &wc.chunk.metadata,
                    &wc.chunk.id,
                    &KeyVars {
                        index,
                        epoch: &epoch,
                        uuid: &uuid,
                    },
                )
                .map_err(|e| match e {
                    crate::placeholder::PlaceholderError::Unrecoverable(m) => {
                        Failure::Write(ChunkWriteError::unrecoverable(m))
                    }
                })
        };
        if !(self.check_object && self.key.uses_index()) {
            return render(0);
        }
        // fluent-plugin-s3's search for a free %{index}: racy with several writers.
        let mut index = 0;
        loop {
            let key = render(index)?;
            match self.head(&key).await? {
                None => return Ok(key),
                Some(meta) if meta.chunk_id.as_deref() == Some(&wc.chunk.id.to_string()) => {
                    return Ok(key)
                }
                Some(_) => index += 1,
            }
        }
    }

    /// Writes the whole object from the start: one PutObject, or a new multipart upload.
    async fn fresh(
        &self,
        wc: &WriteChunk,
        data: &ChunkRecords,
        key: &str,
        part_size: u64,
    ) -> Result<String> {
        let first = self.cut(data, 0, part_size).await?;
        if first.end == data.len() {
            wc.record_delivery(&journal::put(key))?;
            self.put(wc, key, first.body).await?;
            return Ok(key.to_string());
        }
        wc.record_delivery(&journal::intent(key))?;
        let upload_id = self.create(wc, key).await?;
        wc.record_delivery(&journal::upload(key, &upload_id, part_size))?;
        self.counters
            .uploads_created
            .fetch_add(1, Ordering::Relaxed);
        self.continue_multipart(
            wc,
            data,
            key,
            &upload_id,
            part_size,
            Vec::new(),
            Some(first),
        )
        .await
    }

    /// Continues an upload found in the journal.
    async fn resume_multipart(
        &self,
        wc: &WriteChunk,
        data: &ChunkRecords,
        key: &str,
        upload_id: String,
        part_size: u64,
        journaled: Vec<PartRecord>,
    ) -> Result<String> {
        let on_server = match self.list_parts(key, &upload_id).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => {
                if self.is_ours(wc, key).await? {
                    tracing::info!(chunk_id = %wc.chunk.id, key, "object was completed before a restart; not writing it again");
                    return Ok(key.to_string());
                }
                tracing::warn!(chunk_id = %wc.chunk.id, key, upload_id, "multipart upload no longer exists (aborted or expired); uploading the chunk again");
                let size = part_size_for(self.part_size, data.len() as u64);
                return Box::pin(self.fresh(wc, data, key, size)).await;
            }
            // A 200 whose body cannot be read (an S3-compatible store's dialect): the upload
            // exists, and every journaled part was acknowledged by S3, so trust the journal;
            // CompleteMultipartUpload checks the parts anyway.
            Err(e) if e.status == Some(200) => {
                tracing::debug!(
                    key,
                    upload_id,
                    "unreadable ListParts reply, trusting the journal: {e}"
                );
                journaled
                    .iter()
                    .map(|p| (p.number, p.etag.clone()))
                    .collect()
            }
            Err(e) => return Err(e.into()),
        };
        // Keep the journaled parts S3 still has, up to the first gap.
        let mut kept = Vec::new();
        for p in journaled {
            let expected = kept.len() as i32 + 1;
            if p.number != expected || on_server.get(&p.number) != Some(&p.etag) {
                break;
            }
            kept.push(p);
        }
        tracing::info!(chunk_id = %wc.chunk.id, key, upload_id, parts = kept.len(), "resuming multipart upload");
        self.counters
            .uploads_resumed
            .fetch_add(1, Ordering::Relaxed);
        self.continue_multipart(wc, data, key, &upload_id, part_size, kept, None)
            .await
    }

    /// Uploads the parts after `done` (the first one may be cut already), then completes.
    #[allow(clippy::too_many_arguments)]
    async fn continue_multipart(
        &self,
        wc: &WriteChunk,
        data: &ChunkRecords,
        key: &str,
        upload_id: &str,
        part_size: u64,
        mut done: Vec<PartRecord>,
        first: Option<Part>,
    ) -> Result<String> {
        let mut start = done.last().map_or(0, |p| p.end);
        let mut next = match first {
            Some(p) if p.start == start => Some(p),
            _ if start < data.len() => Some(self.cut(data, start, part_size).await?),
            _ => None,
        };
        while let Some(part) = next.take() {
            start = part.end;
            // Compress the next part while this one uploads.
            let ahead = (start < data.len()).then(|| {
                let (codec, data) = (self.codec, data.clone());
                tokio::task::spawn_blocking(move || codec.next_part(&data, start, part_size))
            });
            // An upload that vanished under us (NoSuchUpload) is reconciled by the next attempt.
            let number = done.len() as i32 + 1;
            done.push(
                self.upload_and_journal(wc, key, upload_id, number, part)
                    .await?,
            );
            if let Some(h) = ahead {
                next = Some(joined(h.await)?);
            }
        }
        self.complete(wc, key, upload_id, &done).await?;
        Ok(key.to_string())
    }

    /// Uploads one part and journals it.
    async fn upload_and_journal(
        &self,
        wc: &WriteChunk,
        key: &str,
        upload_id: &str,
        number: i32,
        part: Part,
    ) -> Result<PartRecord> {
        let crc = crc32c::crc32c(&part.body);
        let len = part.body.len() as u64;
        let etag = self.upload_part(key, upload_id, number, part.body).await?;
        let rec = PartRecord {
            number,
            start: part.start,
            end: part.end,
            len,
            etag,
            crc,
        };
        wc.record_delivery(&journal::part(upload_id, &rec))?;
        Ok(rec)
    }

    /// Uploads the whole parts a chunk that is still staged holds beyond those journaled
    /// (`wc` carries a snapshot of its file): starts the multipart upload when the first whole
    /// part is there, then one part after the other. The chunk's flush completes the upload
    /// through the resume path. Parts are cut exactly as the flush would cut them (see
    /// [`super::parts::Codec::is_full`]).
    pub async fn upload_staged(&self, wc: &WriteChunk, part_size: u64) -> Result<Staged> {
        let data = wc.records_by_range()?;
        let j = Journal::from_records(&wc.current_deliveries());
        let mut out = Staged::default();
        let (key, upload_id, part_size, mut done) = match j.step {
            Step::Upload {
                upload_id,
                part_size,
                parts,
            } => (j.key.unwrap_or_default(), upload_id, part_size, parts),
            // A staged chunk is never written with PutObject.
            Step::Put => return Ok(out),
            Step::Intent | Step::None => {
                let Some(first) = self.cut_full(&data, 0, part_size, &mut out).await? else {
                    return Ok(out);
                };
                let key = match &j.key {
                    Some(k) => k.clone(),
                    None => self.choose_key(wc).await?,
                };
                if j.step == Step::Intent {
                    self.abort_uploads_of(&key).await;
                }
                wc.record_delivery(&journal::intent(&key))?;
                let upload_id = self.create(wc, &key).await?;
                wc.record_delivery(&journal::upload(&key, &upload_id, part_size))?;
                self.counters
                    .uploads_created
                    .fetch_add(1, Ordering::Relaxed);
                let first = self.staged_part(wc, &key, &upload_id, 1, first).await?;
                out.parts += 1;
                (key, upload_id, part_size, vec![first])
            }
        };
        loop {
            let start = done.last().map_or(0, |p| p.end);
            let Some(part) = self.cut_full(&data, start, part_size, &mut out).await? else {
                return Ok(out);
            };
            let number = done.len() as i32 + 1;
            done.push(self.staged_part(wc, &key, &upload_id, number, part).await?);
            out.parts += 1;
        }
    }

    /// One part of a staged chunk. If S3 no longer knows the upload, an `intent` record makes
    /// the next attempt start a new one.
    async fn staged_part(
        &self,
        wc: &WriteChunk,
        key: &str,
        upload_id: &str,
        number: i32,
        part: Part,
    ) -> Result<PartRecord> {
        let r = self
            .upload_and_journal(wc, key, upload_id, number, part)
            .await;
        match &r {
            Ok(_) => {
                self.counters
                    .staged_parts_uploaded
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(Failure::S3(e)) if e.code == "NoSuchUpload" => {
                wc.record_delivery(&journal::intent(key))?;
            }
            Err(_) => {}
        }
        r
    }

    /// The whole part at `start` of a growing chunk, if there is one; else notes in `out` how
    /// many records bytes to wait for.
    async fn cut_full(
        &self,
        data: &ChunkRecords,
        start: usize,
        part_size: u64,
        out: &mut Staged,
    ) -> Result<Option<Part>> {
        if !super::parts::Codec::could_be_full(start, part_size, data.len()) {
            return Ok(None);
        }
        let p = self.cut(data, start, part_size).await?;
        if self.codec.is_full(&p, part_size, data.len()) {
            return Ok(Some(p));
        }
        out.wait_for = super::parts::Codec::wait_for(&p, part_size);
        Ok(None)
    }

    /// Cuts one part on a blocking thread.
    async fn cut(&self, data: &ChunkRecords, start: usize, part_size: u64) -> Result<Part> {
        let (codec, data) = (self.codec, data.clone());
        joined(tokio::task::spawn_blocking(move || codec.next_part(&data, start, part_size)).await)
    }

    /// The `s3_metadata` of chunk `wc`'s object at `key`.
    fn object_metadata(&self, wc: &WriteChunk, key: &str) -> Result<Vec<(String, String)>> {
        let values = &self.attributes.metadata;
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let (m, id) = (&wc.chunk.metadata, &wc.chunk.id);
        let index = self.key.index_of(key, m, id, &self.epoch());
        values
            .iter()
            .map(|(k, v)| match self.key.metadata_value(v, m, id, index) {
                Ok(v) => Ok((k.clone(), v)),
                Err(crate::placeholder::PlaceholderError::Unrecoverable(e)) => {
                    Err(Failure::Write(ChunkWriteError::unrecoverable(e)))
                }
            })
            .collect()
    }

    async fn put(&self, wc: &WriteChunk, key: &str, body: Bytes) -> Result<()> {
        let conditional = self.check_object && self.conditional.load(Ordering::Relaxed);
        let len = body.len() as u64;
        let metadata = self.object_metadata(wc, key)?;
        let mut req = object_attributes!(
            self.client()
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_length(len as i64),
            self,
            wc.chunk.id,
            &metadata
        )
        .body(ByteStream::from(body.clone()));
        if conditional {
            req = req.if_none_match("*");
        }
        match req.send().await.map_err(|e| self.failed(&e)) {
            Ok(_) => Ok(()),
            Err(e) if conditional && e.is_not_implemented() => {
                tracing::warn!(bucket = %self.bucket, "the endpoint does not support conditional writes (If-None-Match); writing without them");
                self.conditional.store(false, Ordering::Relaxed);
                Box::pin(self.put(wc, key, body)).await
            }
            Err(e) if e.is_precondition_failed() => self.taken(wc, key).await,
            Err(e) => Err(e.into()),
        }
    }

    /// The key exists although this attempt's conditional write was the first to succeed or
    /// not: done if the object is this chunk's, else fluent-plugin-s3's duplicated-path rule.
    async fn taken(&self, wc: &WriteChunk, key: &str) -> Result<()> {
        if self.is_ours(wc, key).await? {
            tracing::info!(chunk_id = %wc.chunk.id, key, "object was written by an earlier attempt; not writing it again");
            return Ok(());
        }
        Err(Failure::Write(ChunkWriteError::retryable(
            "RuntimeError",
            format!(
                "duplicated path is generated. use %{{index}} or ${{chunk_id}} in s3_object_key_format: path = {key}"
            ),
        )))
    }

    async fn create(&self, wc: &WriteChunk, key: &str) -> Result<String> {
        let metadata = self.object_metadata(wc, key)?;
        let out = object_attributes!(
            self.client()
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key),
            self,
            wc.chunk.id,
            &metadata
        )
        .send()
        .await
        .map_err(|e| self.failed(&e))?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            Failure::S3(S3Error {
                code: "InvalidResponse".into(),
                status: None,
                message: "CreateMultipartUpload returned no upload id".into(),
                class: ErrorClass::Other,
            })
        })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> std::result::Result<String, S3Error> {
        let o = &self.attributes;
        let req = self
            .client()
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .content_length(body.len() as i64)
            .set_checksum_algorithm(o.checksum.clone())
            .body(ByteStream::from(body));
        let out = sse_c!(req, o).send().await.map_err(|e| self.failed(&e))?;
        self.counters.parts_uploaded.fetch_add(1, Ordering::Relaxed);
        out.e_tag().map(str::to_string).ok_or_else(|| S3Error {
            code: "InvalidResponse".into(),
            status: None,
            message: format!("could not find ETag in UploadPart response (part {number})"),
            class: ErrorClass::Other,
        })
    }

    async fn complete(
        &self,
        wc: &WriteChunk,
        key: &str,
        upload_id: &str,
        parts: &[PartRecord],
    ) -> Result<()> {
        let conditional = self.check_object && self.conditional.load(Ordering::Relaxed);
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|p| {
                        CompletedPart::builder()
                            .part_number(p.number)
                            .e_tag(&p.etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        let mut req = self
            .client()
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed);
        if conditional {
            req = req.if_none_match("*");
        }
        let req = sse_c!(req, &self.attributes);
        match req.send().await.map_err(|e| self.failed(&e)) {
            Ok(_) => {}
            Err(e) if conditional && e.is_not_implemented() => {
                self.conditional.store(false, Ordering::Relaxed);
                return Box::pin(self.complete(wc, key, upload_id, parts)).await;
            }
            Err(e) if e.is_precondition_failed() => {
                let r = self.taken(wc, key).await;
                if r.is_ok() {
                    self.abort(key, upload_id).await;
                }
                return r;
            }
            Err(e) if e.code == "NoSuchUpload" && self.is_ours(wc, key).await? => return Ok(()),
            Err(e) if matches!(e.code.as_str(), "InvalidPart" | "InvalidPartOrder") => {
                // S3 does not have the parts the journal lists: abandon this upload; the
                // `intent` record makes the next attempt start a new one from the chunk.
                tracing::warn!(
                    key,
                    upload_id,
                    "S3 rejected the journaled parts ({e}); the chunk is uploaded again"
                );
                self.abort(key, upload_id).await;
                wc.record_delivery(&journal::intent(key))?;
                return Err(e.into());
            }
            // A 200 whose body could not be read: the upload may well be complete; the HEAD
            // below decides.
            Err(e) if e.status == Some(200) => {
                tracing::debug!(
                    key,
                    upload_id,
                    "unreadable CompleteMultipartUpload reply, verifying the object: {e}"
                );
            }
            Err(e) => return Err(e.into()),
        }
        // Verify before the chunk is purged: the object is there, ours, with every byte.
        let expected: u64 = parts.iter().map(|p| p.len).sum();
        match self.head(key).await? {
            Some(m)
                if m.chunk_id.as_deref() == Some(&wc.chunk.id.to_string())
                    && m.length == expected =>
            {
                self.counters.uploads_completed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            other => Err(Failure::S3(S3Error {
                code: "VerificationFailed".into(),
                status: None,
                message: format!(
                    "object {key} after CompleteMultipartUpload is {other:?}, expected {expected} bytes of chunk {}",
                    wc.chunk.id
                ),
                class: ErrorClass::Other,
            })),
        }
    }

    /// Whether `key` holds this chunk's object.
    async fn is_ours(&self, wc: &WriteChunk, key: &str) -> Result<bool> {
        Ok(self
            .head(key)
            .await?
            .is_some_and(|m| m.chunk_id.as_deref() == Some(&wc.chunk.id.to_string())))
    }

    /// HEAD: the object's length and chunk id, or None when there is no such key.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectHead>> {
        let req = self.client().head_object().bucket(&self.bucket).key(key);
        match sse_c!(req, &self.attributes).send().await {
            Ok(out) => Ok(Some(ObjectHead {
                length: out.content_length().unwrap_or(0).max(0) as u64,
                chunk_id: out.metadata().and_then(|m| m.get(CHUNK_ID_META).cloned()),
            })),
            Err(e) => {
                let e = self.failed(&e);
                if e.is_not_found() {
                    Ok(None)
                } else {
                    Err(e.into())
                }
            }
        }
    }

    async fn list_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> std::result::Result<HashMap<i32, String>, S3Error> {
        let mut parts = HashMap::new();
        let mut marker: Option<String> = None;
        loop {
            let req = self
                .client()
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload_id)
                .set_part_number_marker(marker.clone());
            let out = sse_c!(req, &self.attributes)
                .send()
                .await
                .map_err(|e| self.failed(&e))?;
            for p in out.parts() {
                if let (Some(n), Some(t)) = (p.part_number(), p.e_tag()) {
                    parts.insert(n, t.to_string());
                }
            }
            match (out.is_truncated(), out.next_part_number_marker()) {
                (Some(true), Some(m)) => marker = Some(m.to_string()),
                _ => return Ok(parts),
            }
        }
    }

    /// In-progress uploads under `prefix`: (key, upload id).
    pub async fn list_uploads(
        &self,
        prefix: &str,
    ) -> std::result::Result<Vec<(String, String)>, S3Error> {
        let mut uploads = Vec::new();
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let out = self
                .client()
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| self.failed(&e))?;
            for u in out.uploads() {
                if let (Some(k), Some(id)) = (u.key(), u.upload_id()) {
                    uploads.push((k.to_string(), id.to_string()));
                }
            }
            if out.is_truncated() != Some(true) {
                return Ok(uploads);
            }
            key_marker = out.next_key_marker().map(str::to_string);
            id_marker = out.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && id_marker.is_none() {
                return Ok(uploads);
            }
        }
    }

    /// Aborts every in-progress upload of exactly `key` (after a crash between
    /// CreateMultipartUpload and its journal record).
    async fn abort_uploads_of(&self, key: &str) {
        match self.list_uploads(key).await {
            Ok(uploads) => {
                for (k, id) in uploads.into_iter().filter(|(k, _)| k == key) {
                    tracing::info!(key = %k, upload_id = %id, "aborting a multipart upload created before a crash");
                    self.abort(&k, &id).await;
                    self.counters
                        .orphans_aborted
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(
                    key,
                    "cannot list multipart uploads to clean up after a crash: {e}"
                )
            }
        }
    }

    /// Aborts one upload, logging failures (an upload left behind costs storage, not data).
    pub async fn abort(&self, key: &str, upload_id: &str) {
        let r = self
            .client()
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await;
        if let Err(e) = r {
            let e = self.failed(&e);
            if !e.is_not_found() {
                tracing::warn!(key, upload_id, "cannot abort multipart upload: {e}");
            }
        }
    }

    /// Classifies an SDK error and counts it.
    pub fn failed<E, R>(&self, e: &aws_sdk_s3::error::SdkError<E, R>) -> S3Error
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + super::client::HttpStatus + 'static,
    {
        let e = classify(e);
        let c = &self.counters;
        match e.class {
            ErrorClass::Auth => c.errors_auth.fetch_add(1, Ordering::Relaxed),
            ErrorClass::Transient => c.errors_transient.fetch_add(1, Ordering::Relaxed),
            ErrorClass::Permanent => c.errors_permanent.fetch_add(1, Ordering::Relaxed),
            ErrorClass::Other => c.errors_other.fetch_add(1, Ordering::Relaxed),
        };
        e
    }
}

/// What one pass over a staged chunk did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    /// Parts uploaded.
    pub parts: usize,
    /// When the next part fell short: the records length to wait for before trying again.
    pub wait_for: usize,
}

/// What a HEAD says of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHead {
    /// Content length.
    pub length: u64,
    /// The `sluice-chunk-id` metadata.
    pub chunk_id: Option<String>,
}

/// The result of a blocking compression task.
fn joined(r: std::result::Result<std::io::Result<Part>, tokio::task::JoinError>) -> Result<Part> {
    match r {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err(Failure::Write(ChunkWriteError::retryable(
            "IOError",
            format!("cannot compress part: {e}"),
        ))),
        Err(e) => Err(Failure::Write(ChunkWriteError::retryable(
            "RuntimeError",
            format!("compression task failed: {e}"),
        ))),
    }
}
