//! Routing through the real binary (§6.5, scenario 115): `sample` inputs, `record_transformer`
//! filters that mark which filters ran, `stdout` outputs; the process is stopped with SIGTERM
//! and must exit successfully.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// How long to wait for enough output before giving up.
const WAIT: Duration = Duration::from_secs(10);

/// One line printed by a stdout output.
#[derive(Debug, Clone)]
struct Line {
    /// The tag, for lines in the default format; `None` for `<format> @type json` lines.
    tag: Option<String>,
    record: Map<String, Value>,
}

impl Line {
    /// Parses `<date> <time> <zone> <tag>: <json>` or a bare JSON record.
    fn parse(l: &str) -> Line {
        if l.starts_with('{') {
            return Line {
                tag: None,
                record: json_object(l),
            };
        }
        let mut parts = l.splitn(4, ' ');
        let (_date, _time, _zone) = (parts.next(), parts.next(), parts.next());
        let rest = parts
            .next()
            .unwrap_or_else(|| panic!("unexpected stdout line {l:?}"));
        let (tag, json) = rest
            .split_once(": ")
            .unwrap_or_else(|| panic!("unexpected stdout line {l:?}"));
        Line {
            tag: Some(tag.to_string()),
            record: json_object(json),
        }
    }

    fn src(&self) -> &str {
        self.record
            .get("src")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("record without src: {self:?}"))
    }

    fn seq(&self) -> u64 {
        self.record
            .get("seq")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("record without seq: {self:?}"))
    }

    /// The record's keys other than `src` and `seq`, i.e. the marks filters added.
    fn marks(&self) -> BTreeSet<String> {
        self.record
            .keys()
            .filter(|k| *k != "src" && *k != "seq")
            .cloned()
            .collect()
    }
}

fn json_object(s: &str) -> Map<String, Value> {
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => m,
        other => panic!("not a JSON object: {s:?} ({other:?})"),
    }
}

/// A running `sluice -c FILE`.
struct Sluice {
    child: Child,
    rx: Receiver<String>,
    reader: Option<JoinHandle<()>>,
    stderr_path: PathBuf,
    lines: Vec<Line>,
}

impl Sluice {
    fn start(dir: &Path, config: &str) -> Sluice {
        let conf = common::write(dir, "sluice.conf", config);
        let stderr_path = dir.join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut child = Command::new(common::BIN)
            .args(["-c", conf.to_str().unwrap()])
            .env("NO_COLOR", "1")
            .env("TZ", "UTC")
            .env_remove("SLUICE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn sluice");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sluice {
            child,
            rx,
            reader: Some(reader),
            stderr_path,
            lines: Vec::new(),
        }
    }

    fn stderr(&self) -> String {
        common::strip_ansi(&std::fs::read_to_string(&self.stderr_path).unwrap_or_default())
    }

    /// Reads lines until `enough` holds for all lines read so far; panics after [`WAIT`].
    fn wait_for(&mut self, what: &str, enough: impl Fn(&[Line]) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !enough(&self.lines) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(l) => self.lines.push(Line::parse(&l)),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!(
                        "sluice closed stdout before {what}; lines {:#?}; stderr:\n{}",
                        self.lines,
                        self.stderr()
                    );
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}; lines {:#?}; stderr:\n{}",
                    self.lines,
                    self.stderr()
                );
            }
        }
    }

    /// Sends SIGTERM, waits for the exit, and returns the status with every line printed.
    fn stop(mut self) -> (ExitStatus, Vec<Line>, String) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "sluice did not stop within {WAIT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(r) = self.reader.take() {
            r.join().expect("reader thread");
        }
        let mut lines = std::mem::take(&mut self.lines);
        lines.extend(self.rx.try_iter().map(|l| Line::parse(&l)));
        let stderr = self.stderr();
        (status, lines, stderr)
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A sample source emitting `{"src": SRC}` (plus `seq`) under `tag`, 20 times a second.
fn source(tag: &str, src: &str, extra: &str) -> String {
    format!(
        "<source>\n  @type sample\n  tag {tag}\n  rate 20\n  auto_increment_key seq\n  sample {{\"src\":\"{src}\"}}\n{extra}</source>\n"
    )
}

/// A record_transformer filter that adds the field `mark` (value `yes`).
fn mark(pattern: &str, mark: &str) -> String {
    format!(
        "<filter {pattern}>\n  @type record_transformer\n  <record>\n    {mark} yes\n  </record>\n</filter>\n"
    )
}

fn stdout_match(pattern: &str) -> String {
    format!("<match {pattern}>\n  @type stdout\n</match>\n")
}

fn json_stdout_match(pattern: &str) -> String {
    format!(
        "<match {pattern}>\n  @type stdout\n  <format>\n    @type json\n  </format>\n</match>\n"
    )
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn count(lines: &[Line], f: impl Fn(&Line) -> bool) -> usize {
    lines.iter().filter(|l| f(l)).count()
}

/// Each `seq` of `src` appears exactly once in `lines` and they run 0, 1, 2, … without gaps.
fn assert_each_event_once(lines: &[&Line], what: &str) {
    let seqs: Vec<u64> = lines.iter().map(|l| l.seq()).collect();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    let expected: Vec<u64> = (0..sorted.len() as u64).collect();
    assert_eq!(sorted, expected, "{what}: seqs {seqs:?}");
}

#[test]
fn scenario_115_filters_after_the_winning_match_do_not_run() {
    let d = tempfile::tempdir().unwrap();
    let config = [
        source("a.b", "ab", ""),
        source("a.c", "ac", ""),
        mark("a.**", "f1"),
        stdout_match("a.b"),
        mark("a.**", "f2"),
        json_stdout_match("a.**"),
    ]
    .concat();
    let mut s = Sluice::start(d.path(), &config);
    s.wait_for("5 lines of each tag", |ls| {
        count(ls, |l| l.tag.is_some()) >= 5 && count(ls, |l| l.tag.is_none()) >= 5
    });
    let (status, lines, stderr) = s.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );

    for l in &lines {
        match &l.tag {
            // Printed by <match a.b>: only the filter before it ran.
            Some(tag) => {
                assert_eq!(tag, "a.b", "{l:?}");
                assert_eq!(l.src(), "ab", "{l:?}");
                assert_eq!(l.marks(), set(&["f1"]), "{l:?}");
            }
            // Printed by the later <match a.**>: never receives a.b.
            None => {
                assert_eq!(l.src(), "ac", "a.b reached the second <match>: {l:?}");
                assert_eq!(l.marks(), set(&["f1", "f2"]), "{l:?}");
            }
        }
        assert_eq!(l.record.get("f1"), Some(&Value::from("yes")), "{l:?}");
    }
    let ab: Vec<&Line> = lines.iter().filter(|l| l.tag.is_some()).collect();
    let ac: Vec<&Line> = lines.iter().filter(|l| l.tag.is_none()).collect();
    assert_each_event_once(&ab, "a.b");
    assert_each_event_once(&ac, "a.c");
}

#[test]
fn source_label_routes_into_the_label_only() {
    let d = tempfile::tempdir().unwrap();
    let config = [
        source("x.in", "labelled", "  @label @X\n"),
        source("x.in", "top", ""),
        mark("**", "top_filter"),
        stdout_match("**"),
        "<label @X>\n".to_string(),
        mark("**", "label_filter"),
        stdout_match("x.**"),
        "</label>\n".to_string(),
    ]
    .concat();
    let mut s = Sluice::start(d.path(), &config);
    s.wait_for("5 lines from each source", |ls| {
        count(ls, |l| l.src() == "labelled") >= 5 && count(ls, |l| l.src() == "top") >= 5
    });
    let (status, lines, stderr) = s.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    for l in &lines {
        assert_eq!(l.tag.as_deref(), Some("x.in"), "{l:?}");
        match l.src() {
            "labelled" => assert_eq!(l.marks(), set(&["label_filter"]), "{l:?}"),
            "top" => assert_eq!(l.marks(), set(&["top_filter"]), "{l:?}"),
            other => panic!("unexpected src {other}"),
        }
    }
    for src in ["labelled", "top"] {
        let ls: Vec<&Line> = lines.iter().filter(|l| l.src() == src).collect();
        assert_each_event_once(&ls, src);
    }
}

#[test]
fn relabel_output_reemits_into_the_label() {
    let d = tempfile::tempdir().unwrap();
    let config = [
        source("r.one", "r", ""),
        source("other", "o", ""),
        mark("**", "before"),
        "<match r.**>\n  @type relabel\n  @label @R\n</match>\n".to_string(),
        mark("**", "after_relabel_match"),
        stdout_match("**"),
        "<label @R>\n".to_string(),
        mark("**", "in_r"),
        stdout_match("**"),
        "</label>\n".to_string(),
    ]
    .concat();
    let mut s = Sluice::start(d.path(), &config);
    s.wait_for("5 lines from each source", |ls| {
        count(ls, |l| l.src() == "r") >= 5 && count(ls, |l| l.src() == "o") >= 5
    });
    let (status, lines, stderr) = s.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    for l in &lines {
        match l.src() {
            "r" => {
                assert_eq!(l.tag.as_deref(), Some("r.one"), "{l:?}");
                assert_eq!(l.marks(), set(&["before", "in_r"]), "{l:?}");
            }
            "o" => {
                assert_eq!(l.tag.as_deref(), Some("other"), "{l:?}");
                assert_eq!(l.marks(), set(&["before", "after_relabel_match"]), "{l:?}");
            }
            other => panic!("unexpected src {other}"),
        }
    }
    for src in ["r", "o"] {
        let ls: Vec<&Line> = lines.iter().filter(|l| l.src() == src).collect();
        assert_each_event_once(&ls, src);
    }
}

#[test]
fn copy_output_delivers_every_event_to_both_stores() {
    let d = tempfile::tempdir().unwrap();
    let config = [
        source("c", "c", ""),
        "<match c>\n  @type copy\n  <store>\n    @type stdout\n  </store>\n  <store>\n    @type stdout\n    <format>\n      @type json\n    </format>\n  </store>\n</match>\n".to_string(),
    ]
    .concat();
    let mut s = Sluice::start(d.path(), &config);
    s.wait_for("5 lines from each store", |ls| {
        count(ls, |l| l.tag.is_some()) >= 5 && count(ls, |l| l.tag.is_none()) >= 5
    });
    let (status, lines, stderr) = s.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    let first: Vec<&Line> = lines.iter().filter(|l| l.tag.is_some()).collect();
    let second: Vec<&Line> = lines.iter().filter(|l| l.tag.is_none()).collect();
    for l in &first {
        assert_eq!(l.tag.as_deref(), Some("c"), "{l:?}");
    }
    for l in lines.iter() {
        assert_eq!(l.src(), "c", "{l:?}");
        assert!(l.marks().is_empty(), "{l:?}");
    }
    assert_each_event_once(&first, "first store");
    assert_each_event_once(&second, "second store");
    assert_eq!(first.len(), second.len(), "both stores got every event");
}

#[test]
fn alternation_and_double_star_patterns() {
    let d = tempfile::tempdir().unwrap();
    let tags = ["a.x", "b.x", "c.x", "ab.x", "d", "d.e.f", "e.f", "zeta"];
    let mut config: Vec<String> = tags.iter().map(|t| source(t, t, "")).collect();
    config.extend([
        mark("**", "s1"),
        stdout_match("{a,b}.x"),
        mark("**", "s2"),
        // Two patterns separated by whitespace: either matches.
        stdout_match("d.** e.f"),
        mark("**", "s3"),
        // `**` glued to text matches anything starting with it.
        stdout_match("ze**"),
        mark("**", "s4"),
        stdout_match("**"),
    ]);
    let mut s = Sluice::start(d.path(), &config.concat());
    s.wait_for("3 lines of every tag", |ls| {
        tags.iter()
            .all(|t| count(ls, |l| l.tag.as_deref() == Some(*t)) >= 3)
    });
    let (status, lines, stderr) = s.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );

    let expected: BTreeMap<&str, BTreeSet<String>> = [
        ("a.x", set(&["s1"])),
        ("b.x", set(&["s1"])),
        ("d", set(&["s1", "s2"])),
        ("d.e.f", set(&["s1", "s2"])),
        ("e.f", set(&["s1", "s2"])),
        ("zeta", set(&["s1", "s2", "s3"])),
        ("c.x", set(&["s1", "s2", "s3", "s4"])),
        ("ab.x", set(&["s1", "s2", "s3", "s4"])),
    ]
    .into_iter()
    .collect();
    for l in &lines {
        let tag = l.tag.as_deref().expect("default format");
        assert_eq!(l.src(), tag, "{l:?}");
        let want = expected
            .get(tag)
            .unwrap_or_else(|| panic!("unexpected tag {tag}"));
        assert_eq!(
            &l.marks(),
            want,
            "tag {tag} went through the wrong rules: {l:?}"
        );
    }
    for t in tags {
        let ls: Vec<&Line> = lines
            .iter()
            .filter(|l| l.tag.as_deref() == Some(t))
            .collect();
        assert_each_event_once(&ls, t);
    }
}

#[test]
fn tag_matched_only_by_filters_is_dropped_with_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let config = [
        source("kept", "kept", ""),
        source("lost", "lost", ""),
        mark("**", "seen"),
        stdout_match("kept"),
    ]
    .concat();
    let mut s = Sluice::start(d.path(), &config);
    s.wait_for("5 lines of kept", |ls| {
        count(ls, |l| l.src() == "kept") >= 5
    });
    let (status, lines, stderr) = s.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    for l in &lines {
        assert_eq!(l.tag.as_deref(), Some("kept"), "{l:?}");
        assert_eq!(l.marks(), set(&["seen"]), "{l:?}");
    }
    assert!(
        stderr.contains("no patterns matched tag=\"lost\""),
        "missing warning; stderr:\n{stderr}"
    );
    // Rate-limited: not one warning per event.
    assert_eq!(
        stderr.matches("no patterns matched tag=\"lost\"").count(),
        1,
        "stderr:\n{stderr}"
    );
}

#[test]
fn refused_streams_go_to_the_error_label_once() {
    // Every emit overflows the first output's buffer (its hard total limit is 1 byte), so the
    // stream is refused and must arrive through <label @ERROR>, exactly once per event.
    let d = tempfile::tempdir().unwrap();
    let config = [
        source("e.x", "err", ""),
        "<match e.**>\n  @type stdout\n  <buffer>\n    total_limit_size 1\n  </buffer>\n</match>\n"
            .to_string(),
        "<label @ERROR>\n".to_string(),
        mark("**", "via_error"),
        json_stdout_match("**"),
        "</label>\n".to_string(),
    ]
    .concat();
    let mut s = Sluice::start(d.path(), &config);
    s.wait_for("5 lines through @ERROR", |ls| {
        count(ls, |l| l.tag.is_none()) >= 5
    });
    let (status, lines, stderr) = s.stop();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{stderr}"
    );
    assert!(
        lines.iter().all(|l| l.tag.is_none()),
        "nothing reached the overflowing output"
    );
    for l in &lines {
        assert_eq!(l.marks(), set(&["via_error"]), "{l:?}");
    }
    let all: Vec<&Line> = lines.iter().collect();
    assert_each_event_once(&all, "e.x");
    assert!(
        stderr.contains("send an error event stream to @ERROR"),
        "{stderr}"
    );
}
