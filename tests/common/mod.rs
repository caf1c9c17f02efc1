//! Helpers shared by the integration tests: writing configs, running the `sluice` binary and
//! reading its `config error …` lines, warnings and `--show-config` report.

#![allow(dead_code)]

pub mod crash;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// Writes `text` to `dir/name` (creating parent directories) and returns the full path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create config directory");
    }
    std::fs::write(&path, text).expect("write config");
    path
}

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error with ANSI colour codes removed.
    pub stderr: String,
}

impl Run {
    /// The `config error …` lines of stderr, parsed.
    pub fn errors(&self) -> Vec<ErrLine> {
        self.stderr.lines().filter_map(ErrLine::parse).collect()
    }

    /// The only `config error` line; panics (with the output) unless there is exactly one.
    pub fn single_error(&self) -> ErrLine {
        let errs = self.errors();
        assert_eq!(
            errs.len(),
            1,
            "expected exactly one config error line, got {self:#?}"
        );
        errs.into_iter().next().unwrap()
    }

    /// Asserts the run failed with exit code 1 and returns its single error line.
    pub fn expect_one_error(&self) -> ErrLine {
        assert_eq!(self.code, Some(1), "expected exit code 1: {self:#?}");
        self.single_error()
    }

    /// Asserts the run succeeded with no `config error` line.
    pub fn expect_ok(&self) {
        assert_eq!(self.code, Some(0), "expected exit code 0: {self:#?}");
        assert!(
            self.errors().is_empty(),
            "unexpected config errors: {self:#?}"
        );
    }

    /// Lines of stderr at warning level.
    pub fn warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains(" WARN "))
            .collect()
    }

    /// Whether some warning line contains `text`.
    pub fn has_warning(&self, text: &str) -> bool {
        self.warnings().iter().any(|l| l.contains(text))
    }

    /// The `--show-config` report, parsed.
    pub fn show(&self) -> Vec<ShowLine> {
        self.stdout.lines().filter_map(ShowLine::parse).collect()
    }

    /// The typed value `--show-config` printed for the parameter `key` written on `line` of
    /// `file` (a file name suffix is enough).
    pub fn typed_at(&self, key: &str, file: &str, line: u32) -> String {
        let show = self.show();
        let found: Vec<&ShowLine> = show
            .iter()
            .filter(|s| s.key == key && s.line == line && s.file.ends_with(file))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one --show-config line for {key} at {file}:{line}: {self:#?}"
        );
        found[0].typed.clone()
    }
}

/// Runs the binary with `args`, extra environment `env` (name, value) and variables to remove.
pub fn run_with(
    args: &[&str],
    env: &[(&str, &str)],
    env_remove: &[&str],
    cwd: Option<&Path>,
) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env("TZ", "UTC")
        .env_remove("SLUICE_LOG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    for k in env_remove {
        cmd.env_remove(k);
    }
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().expect("run sluice");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    }
}

/// `sluice --dry-run -c FILE`.
pub fn dry_run(conf: &Path) -> Run {
    run_with(&["--dry-run", "-c", conf.to_str().unwrap()], &[], &[], None)
}

/// `sluice --dry-run --strict -c FILE`.
pub fn dry_run_strict(conf: &Path) -> Run {
    run_with(
        &["--dry-run", "--strict", "-c", conf.to_str().unwrap()],
        &[],
        &[],
        None,
    )
}

/// `sluice --dry-run --show-config -c FILE`.
pub fn show_config(conf: &Path) -> Run {
    run_with(
        &["--dry-run", "--show-config", "-c", conf.to_str().unwrap()],
        &[],
        &[],
        None,
    )
}

/// Writes `text` as `dir/name` and dry-runs it.
pub fn dry(dir: &Path, name: &str, text: &str) -> (PathBuf, Run) {
    let p = write(dir, name, text);
    let r = dry_run(&p);
    (p, r)
}

/// Removes ANSI escape sequences (`ESC [ … letter`).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for n in chars.by_ref() {
                if n.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// One `config error file="F" line=L column=C error="TEXT"` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrLine {
    /// The file named.
    pub file: String,
    /// 1-based line.
    pub line: u32,
    /// 0-based column.
    pub column: u32,
    /// The message (everything up to the final quote).
    pub error: String,
}

impl ErrLine {
    /// Parses one stderr line; `None` when it is not a positioned config error line.
    pub fn parse(l: &str) -> Option<ErrLine> {
        let rest = l.strip_prefix("config error file=\"")?;
        let (file, rest) = rest.split_once("\" line=")?;
        let (line, rest) = rest.split_once(" column=")?;
        let (column, rest) = rest.split_once(" error=\"")?;
        let error = rest.strip_suffix('"')?;
        Some(ErrLine {
            file: file.to_string(),
            line: line.parse().ok()?,
            column: column.parse().ok()?,
            error: error.to_string(),
        })
    }

    /// Asserts the error names `file` and returns self.
    pub fn in_file(&self, file: &Path) -> &Self {
        assert_eq!(self.file, file.to_str().unwrap(), "file of {self:?}");
        self
    }

    /// Asserts the error points at `line` and returns self.
    pub fn at_line(&self, line: u32) -> &Self {
        assert_eq!(self.line, line, "line of {self:?}");
        self
    }
}

/// One parameter line of `--show-config`: `key value  # TYPED at file:line:column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowLine {
    pub key: String,
    pub value: String,
    pub typed: String,
    pub file: String,
    pub line: u32,
    pub column: u32,
}

impl ShowLine {
    /// Parses one stdout line; `None` for section lines and anything else.
    pub fn parse(l: &str) -> Option<ShowLine> {
        let t = l.trim_start();
        if t.starts_with('<') {
            return None;
        }
        let (key, rest) = t.split_once(' ')?;
        let at = rest.rfind(" at ")?;
        let (body, pos) = (&rest[..at], &rest[at + 4..]);
        let (value, typed) = body.split_once("  # ")?;
        let mut it = pos.rsplitn(3, ':');
        let column = it.next()?.parse().ok()?;
        let line = it.next()?.parse().ok()?;
        let file = it.next()?.to_string();
        Some(ShowLine {
            key: key.to_string(),
            value: value.to_string(),
            typed: typed.to_string(),
            file,
            line,
            column,
        })
    }
}

/// 1-based number of the first line of `text` that contains `needle`.
pub fn line_of(text: &str, needle: &str) -> u32 {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config")) as u32
        + 1
}

// ------------------------------------------------------------------------------------------
// Running sluice as a daemon and feeding it through the Forward protocol
// ------------------------------------------------------------------------------------------

/// A port free on 127.0.0.1 for both TCP and UDP (the forward input answers heartbeats on UDP
/// at the same port).
pub fn free_forward_port() -> u16 {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// Chunk files (`buffer.b*`, `buffer.q*`) of a file buffer directory.
pub fn chunk_files(buf: &Path) -> Vec<String> {
    std::fs::read_dir(buf)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("buffer.b") || n.starts_with("buffer.q"))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A running `sluice -c FILE` (with `TZ=UTC`, no colours) whose stderr is collected.
pub struct Daemon {
    child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    /// Starts sluice on `conf` with extra environment `env`.
    pub fn start(conf: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.arg("-c").arg(conf);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon::spawn(cmd)
    }

    /// Runs `cmd` (which runs sluice, possibly through a wrapper that `exec`s it) with the
    /// daemon's environment (`NO_COLOR=1`, `TZ=UTC`, no `SLUICE_LOG`, unless `cmd` sets them)
    /// and collects its stderr.
    pub fn spawn(mut cmd: Command) -> Daemon {
        let set: Vec<std::ffi::OsString> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        for (k, v) in [
            ("NO_COLOR", Some("1")),
            ("TZ", Some("UTC")),
            ("SLUICE_LOG", None),
        ] {
            if !set.iter().any(|s| s == k) {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start sluice");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().expect("stderr piped");
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = strip_ansi(&String::from_utf8_lossy(&buf[..n]));
                sink.lock().unwrap().push_str(&text);
            }
        });
        Daemon { child, stderr }
    }

    /// Starts sluice and waits until it accepts connections on `port`.
    pub fn start_listening(conf: &Path, env: &[(&str, &str)], port: u16) -> Daemon {
        Daemon::start(conf, env).listening(port)
    }

    /// Waits until the daemon accepts connections on `port`; panics with its stderr if it
    /// exits or does not listen within 5 s.
    pub fn listening(mut self, port: u16) -> Daemon {
        let d = &mut self;
        let up = wait_until(std::time::Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                || matches!(d.child.try_wait(), Ok(Some(_)))
        });
        if !up || matches!(d.child.try_wait(), Ok(Some(_))) {
            panic!("sluice did not start listening:\n{}", d.stderr());
        }
        self
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Number of stderr lines containing `text`.
    pub fn count_in_stderr(&self, text: &str) -> usize {
        self.stderr().lines().filter(|l| l.contains(text)).count()
    }

    /// Sends a signal (`USR1`, `TERM`, …) with `kill`.
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{name} failed");
    }

    /// Waits up to `timeout` for the process to exit on its own: its exit code, or None if it
    /// is still running.
    pub fn exit_code_within(&mut self, timeout: std::time::Duration) -> Option<i32> {
        let child = &mut self.child;
        let mut code = None;
        wait_until(timeout, || match child.try_wait() {
            Ok(Some(status)) => {
                code = status.code();
                true
            }
            _ => false,
        });
        // Let the reader thread take the last lines.
        std::thread::sleep(std::time::Duration::from_millis(50));
        code
    }

    /// SIGTERM, then waits (up to 10 s) for the exit; returns the exit code and stderr.
    pub fn stop(mut self) -> (Option<i32>, String) {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader thread take the last lines.
                std::thread::sleep(std::time::Duration::from_millis(50));
                return (status.code(), self.stderr());
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("sluice did not stop within 10 s:\n{}", self.stderr());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A Forward-protocol client sending PackedForward frames with EventTime timestamps.
pub struct ForwardClient {
    stream: std::net::TcpStream,
    pending: Vec<u8>,
}

impl ForwardClient {
    /// Connects to sluice's forward input on 127.0.0.1.
    pub fn connect(port: u16) -> ForwardClient {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        ForwardClient {
            stream,
            pending: Vec::new(),
        }
    }

    /// One PackedForward frame: `[tag, bin(entries), {size, chunk?}]`, each entry
    /// `[EventTime(sec, nsec), record]` with the record given as JSON.
    pub fn frame(
        tag: &str,
        events: &[(i64, u32, serde_json::Value)],
        chunk: Option<&str>,
    ) -> Vec<u8> {
        let mut entries = Vec::new();
        for (sec, nsec, record) in events {
            rmp::encode::write_array_len(&mut entries, 2).unwrap();
            entries.extend_from_slice(&[0xd7, 0x00]);
            entries.extend_from_slice(&(*sec as u32).to_be_bytes());
            entries.extend_from_slice(&nsec.to_be_bytes());
            sluice::msgpack::write_from_json(record, &mut entries);
        }
        let mut f = Vec::new();
        rmp::encode::write_array_len(&mut f, 3).unwrap();
        rmp::encode::write_str(&mut f, tag).unwrap();
        rmp::encode::write_bin(&mut f, &entries).unwrap();
        rmp::encode::write_map_len(&mut f, if chunk.is_some() { 2 } else { 1 }).unwrap();
        rmp::encode::write_str(&mut f, "size").unwrap();
        rmp::encode::write_uint(&mut f, events.len() as u64).unwrap();
        if let Some(c) = chunk {
            rmp::encode::write_str(&mut f, "chunk").unwrap();
            rmp::encode::write_str(&mut f, c).unwrap();
        }
        f
    }

    /// Sends the events as one emit without asking for an ack.
    pub fn send(&mut self, tag: &str, events: &[(i64, u32, serde_json::Value)]) {
        use std::io::Write;
        self.stream
            .write_all(&Self::frame(tag, events, None))
            .expect("send frame");
    }

    /// Sends the events as one emit asking for an ack with id `chunk`; does not wait.
    pub fn send_with_ack(
        &mut self,
        tag: &str,
        events: &[(i64, u32, serde_json::Value)],
        chunk: &str,
    ) {
        use std::io::Write;
        self.stream
            .write_all(&Self::frame(tag, events, Some(chunk)))
            .expect("send frame");
    }

    /// Sends the events as one emit and waits until sluice acknowledges them (stored).
    pub fn send_acked(&mut self, tag: &str, events: &[(i64, u32, serde_json::Value)], chunk: &str) {
        self.send_with_ack(tag, events, chunk);
        assert_eq!(self.read_ack(), chunk, "ack of {chunk}");
    }

    /// Reads the next ack response and returns its id.
    pub fn read_ack(&mut self) -> String {
        use std::io::Read;
        loop {
            if let Ok(end) = sluice::msgpack::skip(&self.pending, 0) {
                let value: Vec<u8> = self.pending.drain(..end).collect();
                let v = sluice::msgpack::to_json_value(&value).expect("a MessagePack response");
                return v["ack"].as_str().expect("an ack response").to_string();
            }
            let mut buf = [0u8; 256];
            let n = self.stream.read(&mut buf).expect("a response in time");
            assert!(n > 0, "connection closed while waiting for an ack");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

/// Every regular file below `dir` as (path relative to `dir`, contents), sorted by path.
pub fn files_below(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(d) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.is_file() {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
