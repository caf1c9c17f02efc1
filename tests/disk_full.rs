//! Disk full while S3 is down: the file buffer lives on a 2 MiB tmpfs (mounted in a private
//! mount namespace, for sluice only), and the s3 output's server is stopped, so chunks pile up
//! until the filesystem is full. sluice must keep running, stop acknowledging (the client keeps
//! what was refused), and once S3 is back and the buffer drains, take the rest: at the end every
//! acknowledged event is in the bucket exactly once.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::crash::{send_batch, Load};
use common::s3::{bucket_name, S3Server};
use common::{free_forward_port, wait_until, Daemon};

#[test]
fn disk_full_withholds_acks_and_recovers_without_loss() {
    let s3 = S3Server::start();
    let bucket = bucket_name("disk-full");
    s3.stop();
    let d = tempfile::tempdir().unwrap();
    let port = free_forward_port();
    let buf = d.path().join("buf");
    std::fs::create_dir_all(&buf).unwrap();
    let conf = common::write(
        d.path(),
        "full.conf",
        &format!(
            "<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>\n\
             <match **>\n  @type s3\n  s3_bucket {bucket}\n  s3_endpoint {}\n  aws_key_id test\n  aws_sec_key test\n\
             \x20 check_apikey_on_start false\n  check_bucket false\n  path full/\n  store_as json\n\
             \x20 <format>\n    @type json\n  </format>\n\
             \x20 <buffer>\n    @type file\n    path {}\n    chunk_limit_size 128k\n    total_limit_size 64m\n    flush_mode interval\n    flush_interval 0.2s\n    flush_thread_interval 0.1\n    retry_wait 0.3s\n    retry_max_interval 0.5s\n  </buffer>\n</match>\n",
            s3.endpoint(),
            buf.display()
        ),
    );
    // `unshare -m` gives sluice a mount namespace of its own; the tmpfs exists only there.
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "sh",
        "-c",
        "mount -t tmpfs -o size=2m tmpfs \"$1\" && exec \"$2\" -c \"$3\"",
        "sh",
    ])
    .arg(&buf)
    .arg(common::BIN)
    .arg(&conf);
    let daemon = Daemon::spawn(cmd).listening(port);

    let load = Load {
        tag: "full.test",
        batches: 0,
        batch: 20,
        pad: 1000,
        kills: 0,
        kill_gap_ms: (0, 0),
        deadline: Duration::from_secs(60),
        ack_timeout: Duration::from_millis(800),
    };
    // Fill the disk: ~20 KiB batches into 2 MiB, with S3 down nothing drains.
    let mut acked = Vec::new();
    let mut refused = None;
    for b in 0..400u64 {
        match send_batch(port, &load, b) {
            Ok(()) => acked.push(b),
            Err(_) => {
                refused = Some(b);
                break;
            }
        }
    }
    let first_refused = refused.expect("the 2 MiB buffer filesystem never filled up");
    assert!(
        acked.len() > 20,
        "only {} batches were accepted before the disk was full",
        acked.len()
    );
    // Still refused a moment later (nothing drains), and sluice is alive.
    assert!(send_batch(port, &load, first_refused).is_err());
    let log = daemon.stderr();
    assert!(
        log.contains("No space left on device"),
        "no disk-full error in the log:\n{log}"
    );

    // S3 comes back: the buffer drains and the refused batches are taken.
    s3.restart();
    s3.create_bucket(&bucket);
    let started = Instant::now();
    let mut b = first_refused;
    while b < first_refused + 60 {
        assert!(
            started.elapsed() < load.deadline,
            "batches still refused {:?} after S3 came back:\n{}",
            load.deadline,
            daemon.stderr()
        );
        match send_batch(port, &load, b) {
            Ok(()) => {
                acked.push(b);
                b += 1;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    daemon.signal("USR1");

    let expected: u64 = acked.len() as u64 * load.batch;
    let count = |seen: &mut BTreeMap<u64, u32>| {
        seen.clear();
        for obj in s3.objects(&bucket) {
            for line in obj.lines() {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("damaged line in {}: {line:?}: {e}", obj.key));
                *seen.entry(v["n"].as_u64().expect("numbered")).or_default() += 1;
            }
        }
    };
    let mut seen = BTreeMap::new();
    let arrived = wait_until(Duration::from_secs(30), || {
        count(&mut seen);
        seen.len() as u64 >= expected
    });
    assert!(
        arrived,
        "{} of {expected} acknowledged events reached S3:\n{}",
        seen.len(),
        daemon.stderr()
    );
    for b in &acked {
        for n in b * load.batch..(b + 1) * load.batch {
            assert_eq!(seen.get(&n), Some(&1), "event {n} of batch {b}");
        }
    }
    let (code, stderr) = daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
}
