//! The file output (`@type file`, Fluentd's out_file) against the reference scenarios of
//! the Fluentd buffer reference (`reference/fluentd-buffer.md`): start-up checks through `sluice --dry-run`
//! (§8.1: 4, 6–10, 33, 34), and file names and contents through the real binary fed by the
//! Forward protocol, flushed with SIGUSR1 and stopped with SIGTERM ("FLUSH-STOP"), compared
//! byte for byte (§8.2: 37–55, with fresh processes for 46, §8.3: 57–64, §8.4: 73 (STOP
//! only), §8.5: 76), §8.6: 95 (STOP in retry state, memory and file buffers) and §8.7: 97 (the
//! backup below `root_dir`, with `dir_permission`).
//!
//! Run scenarios use `<buffer> @type memory </buffer>` where the reference relies on
//! out_file's default file buffer (file names and contents do not depend on the buffer type);
//! the `symlink_path` tests use the default file buffer, whose chunk files the link points to.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;
use tempfile::TempDir;

/// 2016-10-03 23:58:09 UTC.
const T: i64 = 1475539089;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// The reference's line(n): `2016-10-03T23:58:09+00:00\tt\t{"n":<n>}\n` (36 bytes).
fn line(n: u32) -> String {
    format!("2016-10-03T23:58:09+00:00\tt\t{{\"n\":{n}}}\n")
}

fn ev(record: serde_json::Value) -> (i64, u32, serde_json::Value) {
    (T, 0, record)
}

// ------------------------------------------------------------------------------------------
// §8.1 start-up checks (DRY)
// ------------------------------------------------------------------------------------------

/// `<match **>` of type file with `path` and the given extra lines (already indented).
fn file_match(path: &str, extra: &str) -> String {
    format!("<match **>\n  @type file\n  path {path}\n{extra}</match>\n")
}

const WARN_MISSING_BUFFER: &str = "default timekey interval (1d) will be used because of missing <buffer> section. To change the output frequency, please modify the timekey value";
const WARN_NO_TIMEKEY: &str =
    "default timekey interval (1d) will be used. To change the output frequency, please modify the timekey value";

#[test]
fn scenario_004_tag_placeholder_without_buffer_section() {
    let d = tmp();
    let (p, r) = dry(d.path(), "s4.conf", &file_match("/data/o/${tag}/x", ""));
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "Parameter 'path: /data/o/${tag}/x.%Y%m%d_**.log' has tag placeholders, but chunk key 'tag' is not configured"
    );
    e.in_file(&p).at_line(3);
    assert!(
        r.has_warning(WARN_MISSING_BUFFER),
        "missing warning: {r:#?}"
    );
    let warn_at = r.stderr.find(WARN_MISSING_BUFFER).unwrap();
    let err_at = r.stderr.find("config error").unwrap();
    assert!(warn_at < err_at, "the warning precedes the error: {r:#?}");
}

#[test]
fn scenario_006_key_missing_from_path() {
    let d = tmp();
    let text = file_match(
        "/data/o/${tag}/x",
        "  <buffer time,tag,host>\n  </buffer>\n",
    );
    let (p, r) = dry(d.path(), "s6.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "Parameter 'path: /data/o/${tag}/x.%Y%m%d_**.log' doesn't have enough placeholders for keys host"
    );
    e.in_file(&p).at_line(3);
}

#[test]
fn scenario_007_time_is_not_a_record_key() {
    let d = tmp();
    let text = file_match("/data/o/${time}/x", "  <buffer time>\n  </buffer>\n");
    let (_, r) = dry(d.path(), "s7.conf", &text);
    assert_eq!(
        r.expect_one_error().error,
        "Parameter 'path: /data/o/${time}/x.%Y%m%d_**.log' has placeholders, but chunk keys doesn't have keys time"
    );
}

#[test]
fn scenario_008_insufficient_timestamp_placeholders() {
    let d = tmp();
    let text = file_match(
        "/data/o/%Y%m%d/file",
        "  <buffer time>\n    timekey 1h\n  </buffer>\n",
    );
    let (p, r) = dry(d.path(), "s8.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(e.error, "insufficient timestamp placeholders in path");
    e.in_file(&p).at_line(3);
}

#[test]
fn scenario_009_tag_part_without_tag_key() {
    let d = tmp();
    let text = file_match(
        "/data/o/${tag[0]}/%Y%m%d%H",
        "  <buffer time>\n    timekey 1h\n  </buffer>\n",
    );
    let (_, r) = dry(d.path(), "s9.conf", &text);
    assert_eq!(
        r.expect_one_error().error,
        "Parameter 'path: /data/o/${tag[0]}/%Y%m%d%H_**.log' has tag placeholders, but chunk key 'tag' is not configured"
    );
}

#[test]
fn scenario_010_tag_key_without_tag_placeholder() {
    let d = tmp();
    let text = file_match(
        "/data/o/x",
        "  <buffer tag,time>\n    @type file\n    path /data/b/buf.*.dat\n    timekey 1h\n  </buffer>\n",
    );
    let (_, r) = dry(d.path(), "s10.conf", &text);
    assert_eq!(
        r.expect_one_error().error,
        "Parameter 'path: /data/o/x.%Y%m%d%H_**.log' doesn't have tag placeholder"
    );
}

#[test]
fn scenario_033_star_without_time_key() {
    let d = tmp();
    let text = file_match("/data/o/x.*.log", "  <buffer tag>\n  </buffer>\n");
    let (p, r) = dry(d.path(), "s33.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "BUG: configuration error must be raised for path including '*' without timekey"
    );
    e.in_file(&p).at_line(3);
}

fn utc_day(ts: jiff::Timestamp) -> String {
    ts.to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%d")
        .to_string()
}

#[test]
fn scenario_034_path_not_writable() {
    // sluice runs as root in CI, and root may write anywhere: a directory is made
    // unwritable by putting a regular file where the path needs a directory.
    let d = tmp();
    std::fs::write(d.path().join("afile"), b"not a directory").unwrap();
    let dir = d.path().display();
    let text = file_match(
        &format!("{dir}/afile/sub/${{tag}}/file.%Y%m%d.log"),
        "  <buffer time,tag>\n    @type memory\n    timekey 86400\n    timekey_zone +0000\n  </buffer>\n",
    );
    let before = utc_day(jiff::Timestamp::now());
    let (p, r) = dry(d.path(), "s34.conf", &text);
    let after = utc_day(jiff::Timestamp::now());
    let e = r.expect_one_error();
    let expect =
        |day: &str| format!("out_file: `{dir}/afile/sub/a/file.{day}.log_**.log` is not writable");
    assert!(
        e.error == expect(&before) || e.error == expect(&after),
        "{e:?}"
    );
    e.in_file(&p).at_line(3);
}

#[test]
fn file_and_memory_buffers_accepted() {
    let d = tmp();
    let out = d.path().join("out");
    let path = format!("{}/app", out.display());
    let (_, r) = dry(d.path(), "fb1.conf", &file_match(&path, ""));
    let (_, r2) = dry(
        d.path(),
        "fb2.conf",
        &file_match(&path, "  <buffer>\n    @type file\n  </buffer>\n"),
    );
    // The default buffer (file) and an explicit file buffer are valid.
    r.expect_ok();
    r2.expect_ok();
    // Memory buffer: valid; a <buffer> without timekey warns about the default.
    let (_, r) = dry(
        d.path(),
        "mem.conf",
        &file_match(&path, "  <buffer>\n    @type memory\n  </buffer>\n"),
    );
    r.expect_ok();
    assert!(r.has_warning(WARN_NO_TIMEKEY), "{r:#?}");
    assert!(!out.exists(), "a dry run creates nothing");
    // secondary_file only as a <secondary>; with a file primary it is fine.
    let (_, r) = dry(
        d.path(),
        "sf.conf",
        "<match **>\n  @type secondary_file\n  directory /tmp/x\n</match>\n",
    );
    assert_eq!(
        r.expect_one_error().error,
        "This plugin can only be used in the <secondary> section"
    );
    let text = file_match(
        &path,
        &format!(
            "  <buffer>\n    @type memory\n  </buffer>\n  <secondary>\n    @type secondary_file\n    directory {}/dump\n  </secondary>\n",
            d.path().display()
        ),
    );
    let (_, r) = dry(d.path(), "sec.conf", &text);
    r.expect_ok();
}

// ------------------------------------------------------------------------------------------
// Run scenarios (FLUSH-STOP)
// ------------------------------------------------------------------------------------------

/// A running sluice with a forward source and the given `<match>` sections, writing below
/// `out`.
struct Scenario {
    dir: TempDir,
    out: PathBuf,
    daemon: Daemon,
    client: ForwardClient,
}

impl Scenario {
    /// Starts sluice; `$OUT` in `matches` and `system` is replaced by the output directory
    /// and `$TMP` by the scenario's temporary directory. `prepare` runs before the start.
    fn start_with(matches: &str, system: &str, prepare: impl FnOnce(&Path)) -> Scenario {
        let dir = tmp();
        std::fs::create_dir(dir.path().join("out")).unwrap();
        prepare(&dir.path().join("out"));
        Scenario::start_in(dir, matches, system)
    }

    /// Starts a fresh sluice process in `dir` (whose `out` directory exists), as
    /// [`Scenario::start_with`] does: a later run of a scenario over what earlier ones left.
    fn start_in(dir: TempDir, matches: &str, system: &str) -> Scenario {
        let out = dir.path().join("out");
        let port = free_forward_port();
        let subst = |s: &str| {
            s.replace("$OUT", &out.display().to_string())
                .replace("$TMP", &dir.path().display().to_string())
        };
        let system = if system.is_empty() {
            String::new()
        } else {
            format!("<system>\n{}\n</system>\n", subst(system))
        };
        let conf = format!(
            "{system}<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>\n{}",
            subst(matches)
        );
        let conf_path = write(dir.path(), "sluice.conf", &conf);
        let daemon = Daemon::start_listening(&conf_path, &[], port);
        let client = ForwardClient::connect(port);
        Scenario {
            dir,
            out,
            daemon,
            client,
        }
    }

    fn start(matches: &str) -> Scenario {
        Scenario::start_with(matches, "", |_| {})
    }

    /// One emit, acknowledged (stored) before returning.
    fn emit(&mut self, tag: &str, events: &[(i64, u32, serde_json::Value)]) {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = format!("e{}", N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.client.send_acked(tag, events, &id);
    }

    /// FLUSH-STOP: SIGUSR1, wait until every `expected` file (relative to `out`) exists, then
    /// SIGTERM. Returns every file below `out` and sluice's stderr.
    fn flush_stop(self, expected: &[&str]) -> (Vec<(String, Vec<u8>)>, String, TempDir) {
        let out = self.out.clone();
        self.flush_stop_when(&format!("files {expected:?}"), || {
            expected.iter().all(|f| out.join(f).is_file())
        })
    }

    /// FLUSH-STOP: SIGUSR1, wait until `done` holds (`what` describes it), then SIGTERM.
    /// Returns every file below `out` and sluice's stderr.
    fn flush_stop_when(
        self,
        what: &str,
        done: impl FnMut() -> bool,
    ) -> (Vec<(String, Vec<u8>)>, String, TempDir) {
        self.daemon.signal("USR1");
        let ok = wait_until(Duration::from_secs(5), done);
        let (code, stderr) = self.daemon.stop();
        assert!(
            ok,
            "{what} did not appear; found {:?}\n{stderr}",
            files_below(&self.out)
                .iter()
                .map(|f| &f.0)
                .collect::<Vec<_>>()
        );
        assert_eq!(code, Some(0), "exit code\n{stderr}");
        (files_below(&self.out), stderr, self.dir)
    }
}

fn memory(arg: &str, body: &str) -> String {
    format!("  <buffer {arg}>\n    @type memory\n{body}  </buffer>\n")
}

fn owned(files: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = files
        .iter()
        .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn scenario_037_daily_files_in_local_time() {
    let mut s = Scenario::start(&file_match("$OUT/app", &memory("", "")));
    s.emit("my.tag", &[ev(json!({"a": 1}))]);
    s.emit("my.tag", &[(1475539201, 0, json!({"a": 2}))]);
    let (files, _, _d) = s.flush_stop(&["app.20161003_0.log", "app.20161004_0.log"]);
    assert_eq!(
        files,
        owned(&[
            (
                "app.20161003_0.log",
                "2016-10-03T23:58:09+00:00\tmy.tag\t{\"a\":1}\n"
            ),
            (
                "app.20161004_0.log",
                "2016-10-04T00:00:01+00:00\tmy.tag\t{\"a\":2}\n"
            ),
        ])
    );
    assert_eq!(files[0].1.len(), 41);
}

#[test]
fn scenario_038_utc_at_output_level() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app",
        &format!("  utc\n{}", memory("", "    timekey_use_utc true\n")),
    ));
    s.emit("my.tag", &[ev(json!({"a": 1}))]);
    let (files, stderr, _d) = s.flush_stop(&["app.20161003_0.log"]);
    assert_eq!(
        files,
        owned(&[(
            "app.20161003_0.log",
            "2016-10-03T23:58:09Z\tmy.tag\t{\"a\":1}\n"
        )])
    );
    assert!(
        stderr.contains("'utc' is deprecated for output plugin. This parameter is used for formatter plugin in compatibility layer. If you want to use same feature, use timekey_use_utc parameter in <buffer> directive instead"),
        "{stderr}"
    );
}

#[test]
fn scenario_040_tag_parts_out_of_range_are_empty() {
    let mut s = Scenario::start(&file_match(
        "$OUT/${tag[0]}/${tag[-1]}/${tag[3]}/x",
        &format!("  utc\n{}", memory("tag,time", "")),
    ));
    s.emit("a.b.c", &[ev(json!({"a": 1}))]);
    // `$OUT/a/c//x.20161003_0.log`: the empty part collapses on disk.
    let (files, _, _d) = s.flush_stop(&["a/c/x.20161003_0.log"]);
    assert_eq!(
        files,
        owned(&[(
            "a/c/x.20161003_0.log",
            "2016-10-03T23:58:09Z\ta.b.c\t{\"a\":1}\n"
        )])
    );
}

#[test]
fn scenario_045_record_field_named_tag() {
    let mut s = Scenario::start(&file_match(
        "$OUT/${tag}/${$.tag}/x",
        &memory("time,tag,$.tag", ""),
    ));
    s.emit("ev.tag", &[ev(json!({"tag": "rec-tag"}))]);
    s.emit("ev.tag", &[ev(json!({}))]);
    let (files, _, _d) =
        s.flush_stop(&["ev.tag/rec-tag/x.20161003_0.log", "ev.tag/x.20161003_0.log"]);
    assert_eq!(
        files,
        owned(&[
            (
                "ev.tag/rec-tag/x.20161003_0.log",
                "2016-10-03T23:58:09+00:00\tev.tag\t{\"tag\":\"rec-tag\"}\n"
            ),
            (
                "ev.tag/x.20161003_0.log",
                "2016-10-03T23:58:09+00:00\tev.tag\t{}\n"
            ),
        ])
    );
}

/// 2011-01-02 13:14:15 UTC.
const T46: i64 = 1293974055;

/// What each run of scenario 46 writes (two events, `utc`).
const S46_LINES: &str =
    "2011-01-02T13:14:15Z\ttest\t{\"a\":1}\n2011-01-02T13:14:15Z\ttest\t{\"a\":2}\n";

/// One run of scenario 46 in a fresh process on `dir`: `test @ 2011-01-02 13:14:15 UTC`
/// `{"a":1}` and `{"a":2}`, then FLUSH-STOP once `done(out)` holds.
fn s46_run(
    dir: TempDir,
    matches: &str,
    what: &str,
    done: impl Fn(&Path) -> bool,
) -> (Vec<(String, Vec<u8>)>, TempDir) {
    let mut s = Scenario::start_in(dir, matches, "");
    s.emit("test", &[(T46, 0, json!({"a": 1}))]);
    s.emit("test", &[(T46, 0, json!({"a": 2}))]);
    let out = s.out.clone();
    let (files, _, dir) = s.flush_stop_when(what, || done(&out));
    (files, dir)
}

fn gunzip(gz: &[u8]) -> String {
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip file");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(gz), &mut text).unwrap();
    text
}

#[test]
fn scenario_046_gz_fresh_runs_take_the_next_index() {
    // Three fresh processes on the same directory: each finds the files of the earlier runs
    // and takes the next index.
    let matches = file_match(
        "$OUT/out_file_test",
        &format!(
            "  compress gz\n  utc\n{}",
            memory("", "    timekey_use_utc true\n")
        ),
    );
    let mut dir = tmp();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let mut names: Vec<String> = Vec::new();
    for run in 0..3 {
        let name = format!("out_file_test.20110102_{run}.log.gz");
        let (files, d) = s46_run(dir, &matches, &name, |out| out.join(&name).is_file());
        dir = d;
        names.push(name);
        assert_eq!(
            files.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
            names,
            "after run {}",
            run + 1
        );
        for (name, gz) in &files {
            assert_eq!(gunzip(gz), S46_LINES, "{name} after run {}", run + 1);
        }
    }
}

#[test]
fn scenario_046_append_fresh_runs_append_to_one_file() {
    // `append true` (no compress): every run appends its two lines to the same file.
    let matches = file_match(
        "$OUT/out_file_test",
        &format!(
            "  append true\n  utc\n{}",
            memory("", "    timekey_use_utc true\n")
        ),
    );
    let name = "out_file_test.20110102.log";
    let mut dir = tmp();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    for run in 1..=3 {
        let expect = S46_LINES.repeat(run);
        let (files, d) = s46_run(dir, &matches, &format!("{} lines", 2 * run), |out| {
            std::fs::read(out.join(name)).is_ok_and(|c| c.len() >= expect.len())
        });
        dir = d;
        assert_eq!(files, owned(&[(name, &expect)]), "after run {run}");
        assert_eq!(expect.lines().count(), 2 * run);
    }
}

#[test]
fn scenario_047_gzip() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app",
        &format!("  compress gzip\n  utc\n{}", memory("", "")),
    ));
    s.emit("my.tag", &[ev(json!({"a": 1}))]);
    let (files, _, _d) = s.flush_stop(&["app.20161003_0.log.gz"]);
    assert_eq!(files.len(), 1, "{files:?}");
    let (name, gz) = &files[0];
    assert_eq!(name, "app.20161003_0.log.gz");
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a gzip file");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::MultiGzDecoder::new(&gz[..]), &mut text)
        .unwrap();
    assert_eq!(text, "2016-10-03T23:58:09Z\tmy.tag\t{\"a\":1}\n");
    assert_eq!(gz.len(), 56, "same size as Fluentd's");
}

#[test]
fn scenario_048_star_path_hourly() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app.*.txt",
        &format!("  utc\n{}", memory("time", "    timekey 1h\n")),
    ));
    s.emit("my.tag", &[ev(json!({"a": 1}))]);
    let (files, _, _d) = s.flush_stop(&["app.2016100323_0.txt"]);
    assert_eq!(
        files,
        owned(&[(
            "app.2016100323_0.txt",
            "2016-10-03T23:58:09Z\tmy.tag\t{\"a\":1}\n"
        )])
    );
}

#[test]
fn scenario_051_chunk_id_in_path_with_append() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app.${chunk_id}",
        &format!("  append true\n{}", memory("", "")),
    ));
    s.emit("t", &[ev(json!({"n": 1}))]);
    s.daemon.signal("USR1");
    let out = s.out.clone();
    let named = |files: &[(String, Vec<u8>)]| {
        files.len() == 1 && {
            let n = &files[0].0;
            n.len() == "app.".len() + 32 + ".20161003.log".len()
                && n.starts_with("app.")
                && n.ends_with(".20161003.log")
                && n[4..36]
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        }
    };
    assert!(wait_until(Duration::from_secs(5), || named(&files_below(
        &out
    ))));
    let (code, stderr) = s.daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    let files = files_below(&out);
    assert!(named(&files), "{files:?}");
    assert_eq!(files[0].1, line(1).into_bytes());
}

#[test]
fn scenario_053_no_time_key() {
    let matches = format!(
        "<match x.y>\n  @type file\n  path $OUT/a/${{tag}}\n{}</match>\n<match plain>\n  @type file\n  path $OUT/b/app\n{}</match>\n",
        memory("tag", ""),
        memory("[]", "")
    );
    let mut s = Scenario::start(&matches);
    s.emit("x.y", &[ev(json!({"n": 1}))]);
    s.emit("plain", &[ev(json!({"n": 2}))]);
    let (files, stderr, _d) = s.flush_stop(&["a/x.y_0.log", "b/app_0.log"]);
    assert_eq!(
        files,
        owned(&[
            ("a/x.y_0.log", "2016-10-03T23:58:09+00:00\tx.y\t{\"n\":1}\n"),
            (
                "b/app_0.log",
                "2016-10-03T23:58:09+00:00\tplain\t{\"n\":2}\n"
            ),
        ])
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains(WARN_NO_TIMEKEY))
            .count(),
        1,
        "the <buffer tag> output warns, the <buffer []> one does not\n{stderr}"
    );
}

/// The single `<chunk id>.log` data file of a backup directory.
fn backup_file(dir: &Path) -> (String, Vec<u8>) {
    let logs: Vec<(String, Vec<u8>)> = files_below(dir)
        .into_iter()
        .filter(|(n, _)| n.ends_with(".log"))
        .collect();
    assert_eq!(
        logs.len(),
        1,
        "one backed-up chunk in {}: {logs:?}",
        dir.display()
    );
    logs.into_iter().next().unwrap()
}

fn is_chunk_log(name: &str) -> bool {
    name.len() == 36 && name.ends_with(".log") && name[..32].chars().all(|c| c.is_ascii_hexdigit())
}

#[test]
fn scenario_054_tag_traversal_goes_to_backup() {
    let matches = format!(
        "<match **>\n  @type file\n  @id trav\n  path $OUT/logs/${{tag}}\n{}</match>\n",
        memory("tag", "")
    );
    let mut s = Scenario::start_with(&matches, "  root_dir $TMP/root", |_| {});
    s.emit("../evil", &[ev(json!({"n": 1}))]);
    s.emit("ok.tag", &[ev(json!({"n": 2}))]);
    let root = s.dir.path().join("root");
    let backup = root.join("backup/worker0/trav");
    s.daemon.signal("USR1");
    assert!(wait_until(Duration::from_secs(5), || {
        s.out.join("logs/ok.tag_0.log").is_file() && files_below(&backup).len() >= 2
    }));
    let out = s.out.clone();
    let (code, stderr) = s.daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        files_below(&out),
        owned(&[(
            "logs/ok.tag_0.log",
            "2016-10-03T23:58:09+00:00\tok.tag\t{\"n\":2}\n"
        )])
    );
    let (name, data) = backup_file(&backup);
    assert!(is_chunk_log(&name), "{name}");
    assert_eq!(data, b"2016-10-03T23:58:09+00:00\t../evil\t{\"n\":1}\n");
    let warn = stderr
        .lines()
        .find(|l| l.contains("got unrecoverable error in primary and no secondary"))
        .unwrap_or_else(|| panic!("no unrecoverable warning:\n{stderr}"));
    assert!(
        warn.contains("Invalid path component detected in tag: ../evil"),
        "{warn}"
    );
}

#[test]
fn scenario_055_value_traversal_goes_to_backup() {
    let matches = format!(
        "<match **>\n  @type file\n  path $OUT/${{svc}}/x\n{}</match>\n",
        memory("time,svc", "")
    );
    let mut s = Scenario::start_with(&matches, "  root_dir $TMP/root", |_| {});
    s.emit("t", &[ev(json!({"svc": "../etc"}))]);
    s.emit("t", &[ev(json!({"svc": "ok"}))]);
    let workers = s.dir.path().join("root/backup/worker0");
    s.daemon.signal("USR1");
    assert!(wait_until(Duration::from_secs(5), || {
        s.out.join("ok/x.20161003_0.log").is_file() && files_below(&workers).len() >= 2
    }));
    let out = s.out.clone();
    let (code, stderr) = s.daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        files_below(&out),
        owned(&[(
            "ok/x.20161003_0.log",
            "2016-10-03T23:58:09+00:00\tt\t{\"svc\":\"ok\"}\n"
        )])
    );
    // Without @id the directory is object_<hex>.
    let ids: Vec<String> = std::fs::read_dir(&workers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].starts_with("object_"), "{ids:?}");
    let (name, data) = backup_file(&workers.join(&ids[0]));
    assert!(is_chunk_log(&name), "{name}");
    assert_eq!(
        data,
        b"2016-10-03T23:58:09+00:00\tt\t{\"svc\":\"../etc\"}\n"
    );
    assert!(
        stderr.contains("Invalid path component detected in ${svc}: ../etc"),
        "{stderr}"
    );
}

fn lines(ns: &[u32]) -> String {
    ns.iter().map(|n| line(*n)).collect()
}

#[test]
fn scenario_057_chunk_limit_records_one_emit() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app",
        &memory("", "    chunk_limit_records 2\n"),
    ));
    let events: Vec<_> = (1..=5).map(|n| ev(json!({ "n": n }))).collect();
    s.emit("t", &events);
    let names = [
        "app.20161003_0.log",
        "app.20161003_1.log",
        "app.20161003_2.log",
    ];
    let (files, _, _d) = s.flush_stop(&names);
    assert_eq!(
        files,
        owned(&[
            (names[0], &lines(&[1, 2])),
            (names[1], &lines(&[3, 4])),
            (names[2], &lines(&[5])),
        ])
    );
}

#[test]
fn scenario_058_chunk_limit_records_separate_emits() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app",
        &memory("", "    chunk_limit_records 2\n"),
    ));
    for n in 1..=5 {
        s.emit("t", &[ev(json!({ "n": n }))]);
    }
    let names = [
        "app.20161003_0.log",
        "app.20161003_1.log",
        "app.20161003_2.log",
    ];
    let (files, _, _d) = s.flush_stop(&names);
    assert_eq!(
        files,
        owned(&[
            (names[0], &lines(&[1, 2])),
            (names[1], &lines(&[3, 4])),
            (names[2], &lines(&[5])),
        ])
    );
}

#[test]
fn scenario_060_oversized_records_are_skipped() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app",
        &memory("", "    chunk_limit_size 100\n"),
    ));
    s.emit(
        "t",
        &[
            ev(json!({"n": 1})),
            ev(json!({"big": "x".repeat(200)})),
            ev(json!({"n": 3})),
            ev(json!({"big2": "y".repeat(300)})),
        ],
    );
    let (files, stderr, _d) = s.flush_stop(&["app.20161003_0.log"]);
    assert_eq!(files, owned(&[("app.20161003_0.log", &lines(&[1, 3]))]));
    assert!(
        stderr.contains("a 239 bytes record (nth: 1) is larger than buffer chunk limit size (100), a 340 bytes record (nth: 3) is larger than buffer chunk limit size (100)"),
        "{stderr}"
    );
}

#[test]
fn scenario_061_not_full_below_threshold() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app",
        &memory("", "    chunk_limit_size 200\n"),
    ));
    for n in 1..=5 {
        s.emit("t", &[ev(json!({ "n": n }))]);
    }
    let (files, _, _d) = s.flush_stop(&["app.20161003_0.log"]);
    assert_eq!(
        files,
        owned(&[("app.20161003_0.log", &lines(&[1, 2, 3, 4, 5]))])
    );
    assert_eq!(files[0].1.len(), 180);
}

#[test]
fn scenario_064_immediate_mode() {
    let mut s = Scenario::start(&file_match(
        "$OUT/app",
        &memory("", "    flush_mode immediate\n"),
    ));
    for n in 1..=3 {
        s.emit("t", &[ev(json!({ "n": n }))]);
    }
    let names = [
        "app.20161003_0.log",
        "app.20161003_1.log",
        "app.20161003_2.log",
    ];
    let (files, _, _d) = s.flush_stop(&names);
    assert_eq!(
        files,
        owned(&[
            (names[0], &line(1)),
            (names[1], &line(2)),
            (names[2], &line(3)),
        ])
    );
}

#[test]
fn scenario_073_lazy_flush_at_shutdown_writes_app_0() {
    // `<buffer []>` `flush_mode lazy`, memory buffer: no enqueue timer, so nothing is written
    // while sluice runs (the "a day later" part runs on virtual time in
    // `output::buffered::tests::scenario_073_lazy_without_time_key_waits_for_shutdown`);
    // STOP alone (memory: flush_at_shutdown true) writes `app_0.log`.
    let mut s = Scenario::start(&file_match(
        "$OUT/app",
        &memory("[]", "    flush_mode lazy\n"),
    ));
    s.emit("t", &[ev(json!({"n": 1}))]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(files_below(&s.out), vec![], "nothing written before STOP");
    let out = s.out.clone();
    let (code, stderr) = s.daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(files_below(&out), owned(&[("app_0.log", &line(1))]));
}

#[test]
fn scenario_076_overflow_with_a_hard_total_limit() {
    // §8.5: the destination directory `$OUT/t` is blocked by a regular file, so every flush
    // fails; sluice's total_limit_size is hard, so emits 6-8 are refused (Fluentd's soft
    // limit accepts emit 6).
    let matches = file_match(
        "$OUT/${tag}/x",
        &memory(
            "tag",
            "    chunk_limit_size 100\n    total_limit_size 200\n    flush_mode lazy\n",
        ),
    );
    let mut s = Scenario::start_with(&matches, "  root_dir $TMP/root", |out| {
        std::fs::write(out.join("t"), b"in the way").unwrap();
    });
    for n in 1..=5 {
        s.emit("t", &[ev(json!({ "n": n }))]);
    }
    for n in 6..=8 {
        s.client
            .send_with_ack("t", &[ev(json!({ "n": n }))], &format!("refused-{n}"));
    }
    let refused = "failed to write data into buffer by buffer overflow action=:throw_exception";
    assert!(
        wait_until(Duration::from_secs(5), || s.daemon.count_in_stderr(refused)
            == 3),
        "{}",
        s.daemon.stderr()
    );
    assert!(
        s.daemon.stderr().contains("buffer space has too many data"),
        "{}",
        s.daemon.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(3), || s
            .daemon
            .stderr()
            .contains("failed to flush the buffer")),
        "the first chunk's flush failed: {}",
        s.daemon.stderr()
    );
    // Repair the destination, then FLUSH-STOP.
    std::fs::remove_file(s.out.join("t")).unwrap();
    let (files, stderr, d) = s.flush_stop(&["t/x_0.log", "t/x_1.log", "t/x_2.log"]);
    assert_eq!(
        files,
        owned(&[
            ("t/x_0.log", &lines(&[1, 2])),
            ("t/x_1.log", &lines(&[3, 4])),
            ("t/x_2.log", &lines(&[5])),
        ])
    );
    assert!(stderr.contains("retry succeeded."), "{stderr}");
    assert!(
        !d.path().join("root/backup").exists(),
        "nothing was backed up"
    );
}

/// Scenario 95's `<match>` (`@id s95`): `<buffer []>` with the buffer type lines `buffer`,
/// `flush_mode interval` `flush_interval 1s` `retry_wait 5s` `flush_at_shutdown true`, writing
/// `$OUT/d/app_<n>.log`, which fails while `$OUT/d` is a regular file.
fn s95_match(buffer: &str) -> String {
    file_match(
        "$OUT/d/app",
        &format!(
            "  @id s95\n  <buffer []>\n{buffer}    flush_mode interval\n    flush_interval 1s\n    retry_wait 5s\n    flush_at_shutdown true\n  </buffer>\n"
        ),
    )
}

/// Scenario 95 up to STOP (root_dir `$TMP/root`): line(1), the flush fails (retry state, next
/// retry 5 s later), the destination is repaired, line(2), STOP before the retry. Returns
/// sluice's stderr and the scenario directory.
fn s95_until_stop(buffer: &str) -> (String, TempDir) {
    let mut s = Scenario::start_with(&s95_match(buffer), "  root_dir $TMP/root", |_| {});
    // Blocked after the start-up check (which refuses a destination it cannot write).
    std::fs::write(s.out.join("d"), b"in the way").unwrap();
    s.emit("t", &[ev(json!({"n": 1}))]);
    let failed = "failed to flush the buffer. retry_times=0";
    assert!(
        wait_until(Duration::from_secs(5), || s.daemon.count_in_stderr(failed)
            == 1),
        "{}",
        s.daemon.stderr()
    );
    let failed_at = std::time::Instant::now();
    std::fs::remove_file(s.out.join("d")).unwrap();
    s.emit("t", &[ev(json!({"n": 2}))]);
    let (code, stderr) = s.daemon.stop();
    assert!(
        failed_at.elapsed() < Duration::from_secs(4),
        "STOP came before the retry"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        stderr.matches("failed to flush the buffer").count(),
        1,
        "no attempt after the first one (retry state at STOP)\n{stderr}"
    );
    assert!(!stderr.contains("retry succeeded"), "{stderr}");
    (stderr, s.dir)
}

#[test]
fn scenario_095_stop_in_retry_state_memory_buffer_goes_to_backup() {
    // Deviation from Fluentd (reference preface and §4, docs/compatibility.md "Stopping while
    // the output is retrying … does not lose memory chunks"): Fluentd writes no file and loses
    // both events; sluice writes no file either, but keeps both memory chunks in the backup
    // directory instead of losing them.
    let (stderr, d) = s95_until_stop("    @type memory\n");
    assert_eq!(
        files_below(&d.path().join("out")),
        vec![],
        "no file is written"
    );
    let backup = d.path().join("root/backup/worker0/s95");
    let files = files_below(&backup);
    // Chunk ids are time-ordered: the failed chunk, then the one staged at STOP.
    let data: Vec<&(String, Vec<u8>)> = files.iter().filter(|f| is_chunk_log(&f.0)).collect();
    assert_eq!(
        data.iter().map(|f| f.1.clone()).collect::<Vec<_>>(),
        vec![line(1).into_bytes(), line(2).into_bytes()],
        "{files:?}"
    );
    let mut names: Vec<String> = data
        .iter()
        .flat_map(|f| [f.0.clone(), format!("{}.meta.json", f.0)])
        .collect();
    names.sort();
    assert_eq!(
        files.iter().map(|f| f.0.clone()).collect::<Vec<_>>(),
        names,
        "each data file with its metadata, nothing else"
    );
    for (name, meta) in files.iter().filter(|f| f.0.ends_with(".meta.json")) {
        let meta: serde_json::Value = serde_json::from_slice(meta).unwrap();
        assert_eq!(meta["records"], 1, "{name}");
        assert_eq!(meta["reason"], "not written before shutdown", "{name}");
    }
    let warn = stderr
        .lines()
        .find(|l| l.contains("buffered chunks could not be written before shutdown"))
        .unwrap_or_else(|| panic!("no shutdown warning:\n{stderr}"));
    assert!(
        warn.contains(&format!("moving them to {}", backup.display()))
            && warn.contains("chunks=2 records=2"),
        "{warn}"
    );
    assert_eq!(
        stderr.matches("bad chunk is moved to").count(),
        2,
        "{stderr}"
    );
}

#[test]
fn scenario_095_stop_in_retry_state_file_buffer_keeps_queued_chunks() {
    // File buffer: at STOP every pending chunk is queued on disk, the one staged at stop time
    // included, as `buffer.q<id>.log`. Deviation from Fluentd: sluice keeps a chunk's metadata
    // in a header frame inside the chunk file (src/buffer/file.rs), so there is no
    // `buffer.q<id>.log.meta` beside it; besides the chunks the directory holds only sluice's
    // lock file.
    let buffer = "    @type file\n    path $OUT/buf\n";
    let (_stderr, d) = s95_until_stop(buffer);
    let out = d.path().join("out");
    let is_queued = |n: &str| {
        n.len() == "buffer.q".len() + 32 + ".log".len()
            && n.starts_with("buffer.q")
            && n.ends_with(".log")
            && n[8..40].chars().all(|c| c.is_ascii_hexdigit())
    };
    let files = files_below(&out);
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert!(
        names
            .iter()
            .all(|n| *n == "buf/.buffer.sluice.lock"
                || n.strip_prefix("buf/").is_some_and(is_queued)),
        "only queued chunk files (and the lock) in the buffer directory, no output: {names:?}"
    );
    // Ids are time-ordered: the failed chunk, then the one staged at STOP, each holding its
    // line inside sluice's frames.
    let chunks: Vec<&(String, Vec<u8>)> = files
        .iter()
        .filter(|f| f.0.strip_prefix("buf/").is_some_and(is_queued))
        .collect();
    assert_eq!(chunks.len(), 2, "{names:?}");
    for (chunk, n) in chunks.iter().zip([1, 2]) {
        let l = line(n);
        assert!(
            chunk.1.windows(l.len()).any(|w| w == l.as_bytes()),
            "{} holds line({n})",
            chunk.0
        );
    }
    assert!(!d.path().join("root/backup").exists(), "nothing backed up");
    // The next start resumes them and, the destination being repaired, writes them in order.
    let s = Scenario::start_in(d, &s95_match(buffer), "  root_dir $TMP/root");
    let (files, _, _d) = s.flush_stop(&["d/app_0.log", "d/app_1.log"]);
    assert_eq!(
        files,
        owned(&[
            ("buf/.buffer.sluice.lock", ""),
            ("d/app_0.log", &line(1)),
            ("d/app_1.log", &line(2)),
        ])
    );
}

#[test]
fn scenario_097_backup_below_root_dir_with_dir_permission() {
    // The driver tests (`output::buffered::tests::scenario_097_…`) cover every unrecoverable
    // error class; here the real binary shows where `<system> root_dir` and `dir_permission`
    // put the backup of out_file's unrecoverable error (a tag that leaves the directory).
    for (dir_permission, mode) in [("", 0o755), ("\n  dir_permission 744", 0o744)] {
        let matches = format!(
            "<match **>\n  @type file\n  @id backup_test\n  path $OUT/logs/${{tag}}\n{}</match>\n",
            memory("tag", "")
        );
        let system = format!("  root_dir $TMP/root{dir_permission}");
        let mut s = Scenario::start_with(&matches, &system, |_| {});
        s.emit("../evil", &[ev(json!({"n": 1}))]);
        let root = s.dir.path().join("root");
        let backup = root.join("backup/worker0/backup_test");
        s.daemon.signal("USR1");
        assert!(
            wait_until(Duration::from_secs(5), || files_below(&backup)
                .iter()
                .any(|f| is_chunk_log(&f.0))),
            "{}",
            s.daemon.stderr()
        );
        let (code, stderr) = s.daemon.stop();
        assert_eq!(code, Some(0), "{stderr}");
        let (name, data) = backup_file(&backup);
        assert!(is_chunk_log(&name), "{name}");
        assert_eq!(data, b"2016-10-03T23:58:09+00:00\t../evil\t{\"n\":1}\n");
        for d in ["backup", "backup/worker0", "backup/worker0/backup_test"] {
            let m = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(root.join(d)).unwrap().permissions(),
            ) & 0o777;
            assert_eq!(
                format!("{m:o}"),
                format!("{mode:o}"),
                "{d} with system{dir_permission:?}"
            );
        }
        assert!(
            stderr.contains("got unrecoverable error in primary and no secondary error_class=Fluent::UnrecoverableError error=\"Invalid path component detected in tag: ../evil\""),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "bad chunk is moved to {} ",
                backup.join(&name).display()
            )),
            "{stderr}"
        );
        assert!(
            !stderr.contains("failed to flush the buffer"),
            "not retried\n{stderr}"
        );
        assert_eq!(files_below(&s.out), vec![], "nothing written");
    }
}

/// The target of the symbolic link `link`, which must be a staged chunk file
/// `buffer.b<32 hex>.log` of the buffer directory `dir` that exists.
fn staged_chunk_target(link: &Path, dir: &Path) -> PathBuf {
    let target = std::fs::read_link(link)
        .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", link.display()));
    assert_eq!(target.parent(), Some(dir), "{}", target.display());
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.len() == "buffer.b".len() + 32 + ".log".len()
            && name.starts_with("buffer.b")
            && name.ends_with(".log")
            && name[8..40].chars().all(|c| c.is_ascii_hexdigit()),
        "{name}"
    );
    assert!(target.is_file(), "{} exists", target.display());
    target
}

#[test]
fn symlink_path_follows_the_staged_chunk_file() {
    // out_file's default buffer is a file buffer in `$OUT/app/`: the link points to the staged
    // chunk file, and to the next chunk's file once the first one was flushed.
    let mut s = Scenario::start(&file_match("$OUT/app", "  symlink_path $OUT/current.log\n"));
    let link = s.out.join("current.log");
    let dir = s.out.join("app");
    s.emit("t", &[ev(json!({"n": 1}))]);
    let first = staged_chunk_target(&link, &dir);
    // sluice's chunk files hold framed, checksummed data: the line is inside a frame.
    let data = std::fs::read(&link).unwrap();
    assert!(
        data.windows(line(1).len()).any(|w| w == line(1).as_bytes()),
        "{data:?}"
    );
    // More events go to the same chunk: the link stays.
    s.emit("t", &[ev(json!({"n": 2}))]);
    assert_eq!(staged_chunk_target(&link, &dir), first);
    s.daemon.signal("USR1");
    let written = s.out.join("app.20161003_0.log");
    assert!(
        wait_until(Duration::from_secs(5), || written.is_file()
            && !first.exists()),
        "{}",
        s.daemon.stderr()
    );
    assert_eq!(std::fs::read_to_string(&written).unwrap(), lines(&[1, 2]));
    s.emit("t", &[ev(json!({"n": 3}))]);
    let second = staged_chunk_target(&link, &dir);
    assert_ne!(second, first, "the link follows the new chunk");
    let (code, stderr) = s.daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("symlink"),
        "no warning about symlink_path:\n{stderr}"
    );
}

#[test]
fn symlink_path_placeholders_come_from_the_chunk() {
    // Placeholders of symlink_path are expanded for the chunk (tag and time slice); the buffer
    // directory keeps the literal `${tag}` of `path` (reference §2.5); with
    // symlink_path_use_relative the link holds a path relative to its directory.
    let matches = file_match(
        "$OUT/${tag}/app",
        "  symlink_path $OUT/links/${tag}.%Y%m%d.log\n  symlink_path_use_relative true\n  <buffer tag,time>\n    timekey 1d\n  </buffer>\n",
    );
    let mut s = Scenario::start(&matches);
    s.emit("web", &[ev(json!({"n": 1}))]);
    let link = s.out.join("links/web.20161003.log");
    let target = std::fs::read_link(&link)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", link.display(), s.daemon.stderr()));
    assert_eq!(
        target.parent(),
        Some(Path::new("../${tag}/app")),
        "{}",
        target.display()
    );
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("buffer.b") && name.ends_with(".log"),
        "{name}"
    );
    assert!(s.out.join("${tag}/app").join(&name).is_file());
    assert!(link.is_file(), "the link resolves");
    let (code, stderr) = s.daemon.stop();
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn file_secondary_checks_use_the_primary_chunk_keys() {
    let d = tmp();
    let text = file_match(
        "/data/o/${tag}/x",
        "  <buffer tag>\n    @type memory\n  </buffer>\n  <secondary>\n    path /data/s/%Y%m%d/y\n  </secondary>\n",
    );
    let (p, r) = dry(d.path(), "sec_time.conf", &text);
    let e = r.expect_one_error();
    assert_eq!(
        e.error,
        "Parameter 'path: /data/s/%Y%m%d/y_**.log' has timestamp placeholders, but chunk key 'time' is not configured"
    );
    e.in_file(&p).at_line(8);
    let text = file_match(
        "/data/o/${tag}/x",
        "  <buffer tag>\n    @type memory\n  </buffer>\n  <secondary>\n    @type secondary_file\n    directory /data/s/${host}\n  </secondary>\n",
    );
    let (_, r) = dry(d.path(), "sec_var.conf", &text);
    assert_eq!(
        r.expect_one_error().error,
        "out_secondary_file: basename or directory has an incompatible placeholder host, remove variable placeholder, like `${varname}`, from basename or directory"
    );
}

#[test]
fn unrecoverable_chunk_is_written_by_secondary_file() {
    let matches = format!(
        "<match **>\n  @type file\n  path $OUT/logs/${{tag}}\n{}  <secondary>\n    @type secondary_file\n    directory $OUT/dump\n  </secondary>\n</match>\n",
        memory("tag", "")
    );
    let mut s = Scenario::start_with(&matches, "  root_dir $TMP/root", |_| {});
    s.emit("../evil", &[ev(json!({"n": 1}))]);
    s.emit("ok", &[ev(json!({"n": 2}))]);
    let (files, stderr, d) = s.flush_stop(&["dump/dump.bin.0", "logs/ok_0.log"]);
    assert_eq!(
        files,
        owned(&[
            (
                "dump/dump.bin.0",
                "2016-10-03T23:58:09+00:00\t../evil\t{\"n\":1}\n"
            ),
            (
                "logs/ok_0.log",
                "2016-10-03T23:58:09+00:00\tok\t{\"n\":2}\n"
            ),
        ])
    );
    assert!(
        stderr.contains(
            "got unrecoverable error in primary. Skip retry and flush chunk to secondary"
        ),
        "{stderr}"
    );
    assert!(!d.path().join("root/backup").exists());
}
