//! Crash test of the s3 output: forward (acks) → file buffer → s3 with multipart uploads,
//! against a real S3-compatible server (moto). sluice is SIGKILLed at random moments (at least
//! 20 times, the seed is printed) and restarted on the same buffer. At the end every
//! acknowledged event is in the bucket exactly once (events of batches the client re-sent
//! after a lost ack may be there twice, counted apart), no multipart upload is left in
//! progress, and every object is one chunk's, whole. A second run keeps everything in one
//! chunk that is flushed only at the end, so that its parts are uploaded while it is staged
//! (Fluent Bit's large-object model) and the kills land in the middle of those uploads.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::crash::{check_exactly_once, run_with_kills, seed, Load};
use common::s3::{bucket_name, S3Server};
use common::{chunk_files, free_forward_port, wait_until};

#[test]
fn s3_sigkill_at_random_moments_loses_and_duplicates_nothing() {
    // Chunks of up to 16 MiB flushed every second, parts of 5 MiB (compressed): most chunks
    // become multipart uploads of two or three parts, small ones single PUTs.
    crash_run("s3-crash", "16m", "1s", false);
}

#[test]
fn s3_sigkill_during_uploads_of_staged_chunks() {
    // One chunk that never fills, flushed at the end: its parts are uploaded while it is
    // staged, and every restart continues the same upload.
    crash_run("s3-crash-staged", "4g", "1h", true);
}

fn crash_run(name: &str, chunk_limit: &str, flush_interval: &str, staged: bool) {
    let seed = seed(name);
    let s3 = S3Server::start();
    let bucket = bucket_name(name);
    s3.create_bucket(&bucket);
    let d = tempfile::tempdir().unwrap();
    let port = free_forward_port();
    let buf = d.path().join("buf");
    let conf = common::write(
        d.path(),
        "s3crash.conf",
        &format!(
            "<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>\n\
             <match **>\n  @type s3\n  s3_bucket {bucket}\n  s3_endpoint {}\n  aws_key_id test\n  aws_sec_key test\n\
             \x20 path logs/\n  part_size 5m\n  <format>\n    @type json\n  </format>\n\
             \x20 <buffer>\n    @type file\n    path {}\n    chunk_limit_size {chunk_limit}\n    flush_mode interval\n    flush_interval {flush_interval}\n    flush_thread_count 2\n    flush_thread_interval 0.1\n    retry_wait 0.2s\n    retry_max_interval 1s\n  </buffer>\n</match>\n",
            s3.endpoint(),
            buf.display()
        ),
    );
    let load = Load {
        tag: "crash.s3",
        batches: 400,
        batch: 100,
        pad: 900,
        kills: 20,
        kill_gap_ms: (300, 900),
        deadline: Duration::from_secs(240),
        ack_timeout: Duration::from_secs(3),
    };
    let o = run_with_kills(&conf, port, seed, &load);
    assert!(o.kills >= load.kills, "only {} kills happened", o.kills);
    if staged {
        // Tens of MiB of records are staged: parts of them are uploaded before any flush.
        let uploading = wait_until(Duration::from_secs(20), || {
            s3.uploads_in_progress(&bucket)
                .iter()
                .any(|u| !s3.uploaded_parts(&bucket, u).is_empty())
        });
        assert!(
            uploading,
            "no part of a staged chunk was uploaded:\n{}",
            o.last.stderr()
        );
    }

    // Flush what is buffered and wait until the buffer is empty.
    o.last.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(60), || chunk_files(&buf).is_empty()),
        "buffer not drained:\n{}",
        o.last.stderr()
    );

    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let objects = s3.objects(&bucket);
    let mut multipart = 0;
    for obj in &objects {
        // Every object is one chunk's, named after it.
        let chunk = obj
            .metadata
            .get("sluice-chunk-id")
            .unwrap_or_else(|| panic!("{} has no chunk id", obj.key));
        assert!(
            obj.key.starts_with("logs/") && obj.key.ends_with(&format!("_{chunk}.gz")),
            "stray object {}",
            obj.key
        );
        if obj.etag_parts() > 1 {
            multipart += 1;
        }
        for line in obj.lines() {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("damaged line in {}: {line:?}: {e}", obj.key));
            *seen.entry(v["n"].as_u64().expect("numbered")).or_default() += 1;
        }
    }
    println!("{name}: {} objects, {multipart} multipart", objects.len());
    check_exactly_once(&o, &load, &seen, seed, name);
    assert!(
        multipart > 0,
        "no chunk was large enough for a multipart upload"
    );
    let left = s3.uploads_in_progress(&bucket);
    assert!(
        left.is_empty(),
        "multipart uploads left in progress: {left:?}"
    );
    let (code, stderr) = o.last.stop();
    assert_eq!(code, Some(0), "{stderr}");
}
