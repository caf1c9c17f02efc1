//! Crash test: a client sends numbered events with acks through the forward input into a file
//! buffer and the file output, while sluice is killed with SIGKILL at random moments (at least
//! 20 times, the seed is printed) and restarted on the same buffer path. The client re-sends
//! every batch whose ack it did not get. At the end every acknowledged event must be in the
//! output exactly once — except events of batches the client re-sent after a lost ack, which
//! may appear twice (counted and printed) — and no output line may be damaged.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::crash::{check_exactly_once, run_with_kills, seed, Load};
use common::{chunk_files, files_below, free_forward_port, wait_until};

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_event() {
    let seed = seed("crash test");
    let d = tempfile::tempdir().unwrap();
    let port = free_forward_port();
    let out = d.path().join("out");
    let buf = d.path().join("buf");
    let conf = common::write(
        d.path(),
        "crash.conf",
        &format!(
            "<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>\n\
             <match **>\n  @type file\n  path {}/events\n  <buffer>\n    @type file\n    path {}\n    flush_mode interval\n    flush_interval 0.3s\n    flush_thread_interval 0.1\n    retry_wait 0.2s\n  </buffer>\n</match>\n",
            out.display(),
            buf.display()
        ),
    );
    let load = Load {
        tag: "crash.test",
        batches: 120,
        batch: 50,
        pad: 100,
        kills: 20,
        kill_gap_ms: (80, 320),
        deadline: Duration::from_secs(120),
        ack_timeout: Duration::from_secs(3),
    };
    let o = run_with_kills(&conf, port, seed, &load);
    assert!(o.kills >= load.kills, "only {} kills happened", o.kills);

    // Flush what is buffered, then stop gracefully.
    o.last.signal("USR1");
    assert!(
        wait_until(Duration::from_secs(20), || chunk_files(&buf).is_empty()),
        "buffer not drained:\n{}",
        o.last.stderr()
    );

    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    for (name, data) in files_below(&out) {
        // A temporary file a killed process left behind is not output.
        if name
            .rsplit('/')
            .next()
            .is_some_and(|b| b.starts_with(".sluice-tmp-"))
        {
            continue;
        }
        let text = String::from_utf8(data).unwrap_or_else(|_| panic!("{name} is not UTF-8"));
        for line in text.lines() {
            let json = line
                .splitn(3, '\t')
                .nth(2)
                .unwrap_or_else(|| panic!("damaged line in {name}: {line:?}"));
            let v: serde_json::Value = serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("damaged line in {name}: {line:?}: {e}"));
            *seen.entry(v["n"].as_u64().expect("numbered")).or_default() += 1;
        }
    }
    check_exactly_once(&o, &load, &seen, seed, "crash test");
    let (code, stderr) = o.last.stop();
    assert_eq!(code, Some(0), "{stderr}");
}
