//! A real S3-compatible server for the end-to-end tests: moto's standalone server
//! (`moto_server`) run as a child process on a free port of 127.0.0.1, and a synchronous
//! client (aws-sdk-s3 on a runtime of its own) to look at what reached it.
//!
//! moto keeps everything in memory: after `stop()` + `restart()` the server answers on the
//! same port but holds no bucket; tests create their buckets again.
//!
//! Observed behaviour of moto 5.1.22 (the version scripts/test installs; from 5.2 on, moto
//! answers ListParts and CompleteMultipartUpload with root elements the Rust SDK rejects) that
//! matters to the tests:
//! - any access key and secret are accepted (no signature check);
//! - checksums are stored and returned but not verified: a wrong `x-amz-checksum-crc32` or
//!   `Content-MD5` is accepted;
//! - `If-None-Match: *` is enforced on PutObject and CompleteMultipartUpload (412
//!   PreconditionFailed when the key exists);
//! - every part of a multipart upload but the last must hold at least 5 MiB
//!   (`EntityTooSmall` at CompleteMultipartUpload), and a failed completion leaves the upload
//!   in progress; completing an upload a second time succeeds again;
//! - GetObject with `partNumber` returns the whole object; HeadObject with `partNumber`
//!   gives the part's length and the parts count, which is what `part_sizes` uses.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use aws_sdk_s3::error::DisplayErrorContext;

const NOT_FOUND: &str =
    "moto_server not found: install it with pip install 'moto[server]' — scripts/test does this";

/// How much of moto's output is kept for error messages.
const LOG_TAIL: usize = 16 << 10;

/// A running (or stopped) moto server and a client for it.
pub struct S3Server {
    port: u16,
    process: Mutex<Option<MotoProcess>>,
    rt: tokio::runtime::Runtime,
    client: aws_sdk_s3::Client,
}

/// One object as stored.
#[derive(Debug, Clone)]
pub struct Object {
    pub key: String,
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// User metadata (`x-amz-meta-*`), names without the prefix.
    pub metadata: HashMap<String, String>,
    /// The ETag without quotes (`<md5>-<parts>` for a multipart object).
    pub etag: String,
}

impl Object {
    /// The body decompressed according to the key's extension.
    pub fn decoded(&self) -> Vec<u8> {
        decode(&self.key, &self.body)
    }

    /// The decoded body as text lines (without their `\n`).
    pub fn lines(&self) -> Vec<String> {
        let text = String::from_utf8(self.decoded())
            .unwrap_or_else(|e| panic!("object {} is not UTF-8: {e}", self.key));
        text.lines().map(str::to_string).collect()
    }

    /// The parts count of a multipart object (from the ETag suffix); 1 for a single PUT.
    pub fn etag_parts(&self) -> usize {
        match self.etag.rsplit_once('-') {
            Some((_, n)) => n.parse().unwrap_or(1),
            None => 1,
        }
    }
}

/// One multipart upload still in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub key: String,
    pub upload_id: String,
}

impl S3Server {
    /// The server shared by all tests of one test binary that never stop it.
    pub fn shared() -> &'static S3Server {
        static SHARED: OnceLock<S3Server> = OnceLock::new();
        SHARED.get_or_init(S3Server::start)
    }

    /// Starts a server of its own on a free port; it is killed on drop.
    pub fn start() -> S3Server {
        // A port found free may be taken before moto binds it; try a few.
        let mut last = String::new();
        for _ in 0..3 {
            let port = super::free_forward_port();
            match MotoProcess::spawn(port) {
                Ok(process) => {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("a tokio runtime for the S3 client");
                    return S3Server {
                        port,
                        process: Mutex::new(Some(process)),
                        rt,
                        client: client(port),
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("moto_server did not start: {last}");
    }

    /// The port moto listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, for `s3_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server (S3 becomes unreachable: connections are refused).
    pub fn stop(&self) {
        if let Some(p) = self.process.lock().unwrap().take() {
            p.kill();
        }
        let down = super::wait_until(Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", self.port)).is_err()
        });
        assert!(down, "moto_server still answers on port {}", self.port);
    }

    /// Starts the server again on the same port (empty: no bucket).
    pub fn restart(&self) {
        let mut guard = self.process.lock().unwrap();
        assert!(guard.is_none(), "restart() of a running moto_server");
        let mut last = String::new();
        // The port was just released; a bind can fail for a moment.
        for _ in 0..3 {
            match MotoProcess::spawn(self.port) {
                Ok(p) => {
                    *guard = Some(p);
                    return;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("moto_server did not restart on port {}: {last}", self.port);
    }

    /// The aws-sdk-s3 client, for what the wrappers below do not cover (use `block_on`).
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Runs a future on the client's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Creates `bucket`.
    pub fn create_bucket(&self, bucket: &str) {
        self.block_on(self.client.create_bucket().bucket(bucket).send())
            .unwrap_or_else(|e| panic!("create bucket {bucket}: {}", DisplayErrorContext(e)));
    }

    /// Whether `bucket` exists.
    pub fn bucket_exists(&self, bucket: &str) -> bool {
        match self.block_on(self.client.head_bucket().bucket(bucket).send()) {
            Ok(_) => true,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => false,
            Err(e) => panic!("head bucket {bucket}: {}", DisplayErrorContext(e)),
        }
    }

    /// Every key of `bucket`, sorted; an error when the bucket does not exist.
    pub fn try_keys(&self, bucket: &str) -> Result<Vec<String>, String> {
        self.block_on(async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .into_paginator()
                .send();
            let mut keys = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| DisplayErrorContext(e).to_string())?;
                keys.extend(
                    page.contents()
                        .iter()
                        .filter_map(|o| o.key().map(String::from)),
                );
            }
            keys.sort();
            Ok(keys)
        })
    }

    /// Every key of `bucket`, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        self.try_keys(bucket)
            .unwrap_or_else(|e| panic!("list bucket {bucket}: {e}"))
    }

    /// One object with its body and headers.
    pub fn get(&self, bucket: &str, key: &str) -> Object {
        self.block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("get {bucket}/{key}: {}", DisplayErrorContext(e)));
            let content_type = out.content_type().map(String::from);
            let content_encoding = out.content_encoding().map(String::from);
            let metadata = out.metadata().cloned().unwrap_or_default();
            let etag = out
                .e_tag()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            let body = out
                .body
                .collect()
                .await
                .unwrap_or_else(|e| panic!("read {bucket}/{key}: {e}"))
                .into_bytes()
                .to_vec();
            Object {
                key: key.to_string(),
                body,
                content_type,
                content_encoding,
                metadata,
                etag,
            }
        })
    }

    /// Every object of `bucket`, sorted by key.
    pub fn objects(&self, bucket: &str) -> Vec<Object> {
        self.keys(bucket)
            .iter()
            .map(|k| self.get(bucket, k))
            .collect()
    }

    /// The byte length of each part of an object (one entry for a single PUT).
    pub fn part_sizes(&self, bucket: &str, key: &str) -> Vec<u64> {
        let head = |n: i32| {
            self.block_on(
                self.client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .part_number(n)
                    .send(),
            )
            .unwrap_or_else(|e| panic!("head {bucket}/{key} part {n}: {}", DisplayErrorContext(e)))
        };
        let first = head(1);
        match first.parts_count() {
            Some(count) if count > 1 => (1..=count)
                .map(|n| head(n).content_length().unwrap_or(0) as u64)
                .collect(),
            _ => vec![first.content_length().unwrap_or(0) as u64],
        }
    }

    /// Multipart uploads of `bucket` started and neither completed nor aborted.
    pub fn uploads_in_progress(&self, bucket: &str) -> Vec<Upload> {
        self.block_on(async {
            let mut out = Vec::new();
            let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
            loop {
                let page = self
                    .client
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .set_key_marker(key_marker.clone())
                    .set_upload_id_marker(id_marker.clone())
                    .send()
                    .await
                    .unwrap_or_else(|e| {
                        panic!("list uploads of {bucket}: {}", DisplayErrorContext(e))
                    });
                out.extend(page.uploads().iter().map(|u| Upload {
                    key: u.key().unwrap_or_default().to_string(),
                    upload_id: u.upload_id().unwrap_or_default().to_string(),
                }));
                if !page.is_truncated().unwrap_or(false) {
                    return out;
                }
                key_marker = page.next_key_marker().map(String::from);
                id_marker = page.next_upload_id_marker().map(String::from);
            }
        })
    }

    /// Sizes of the parts uploaded so far to an upload in progress, by part number.
    pub fn uploaded_parts(&self, bucket: &str, upload: &Upload) -> Vec<u64> {
        self.block_on(async {
            let out = self
                .client
                .list_parts()
                .bucket(bucket)
                .key(&upload.key)
                .upload_id(&upload.upload_id)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!("list parts of {}: {}", upload.key, DisplayErrorContext(e))
                });
            let mut parts: Vec<(i32, u64)> = out
                .parts()
                .iter()
                .map(|p| (p.part_number().unwrap_or(0), p.size().unwrap_or(0) as u64))
                .collect();
            parts.sort_unstable();
            parts.into_iter().map(|p| p.1).collect()
        })
    }

    /// Stores `body` at `key` (for checking the harness itself).
    pub fn put(&self, bucket: &str, key: &str, body: Vec<u8>) {
        self.block_on(
            self.client
                .put_object()
                .bucket(bucket)
                .key(key)
                .body(body.into())
                .send(),
        )
        .unwrap_or_else(|e| panic!("put {bucket}/{key}: {}", DisplayErrorContext(e)));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(p) = self.process.get_mut().unwrap().take() {
            p.kill();
        }
    }
}

/// A bucket name (3–63 lowercase letters, digits, hyphens) made from a test name.
pub fn bucket_name(test: &str) -> String {
    let mut name: String = test
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-').to_string();
    assert!(name.len() >= 3, "bucket name too short: {name:?}");
    name
}

/// Decompresses an object's body by the extension of its key: `.gz` (any number of gzip
/// members), `.zst` (any number of zstd frames), anything else as it is.
pub fn decode(key: &str, bytes: &[u8]) -> Vec<u8> {
    if key.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{key} is not gzip: {e}"));
        out
    } else if key.ends_with(".zst") {
        zstd::stream::decode_all(bytes).unwrap_or_else(|e| panic!("{key} is not zstd: {e}"))
    } else {
        bytes.to_vec()
    }
}

/// Whether something answers HTTP on the port.
fn answers_http(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 8];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.")
}

/// The client the tests read the bucket with: path-style, us-east-1, static credentials.
fn client(port: u16) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::timeout::TimeoutConfig;
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    use aws_smithy_http_client::tls;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .endpoint_url(format!("http://127.0.0.1:{port}"))
        .force_path_style(true)
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(30))
                .build(),
        )
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// One moto_server process. A thread of its own spawns it and stays alive with it: the child
/// gets SIGKILL when that thread ends (`PR_SET_PDEATHSIG` follows the spawning thread), which
/// happens on `kill()` or when the test binary exits, even when the server lives in a static.
struct MotoProcess {
    stop: mpsc::Sender<()>,
    keeper: JoinHandle<()>,
}

impl MotoProcess {
    /// Starts `moto_server -H 127.0.0.1 -p PORT` and waits (≤ 30 s) until it answers HTTP.
    fn spawn(port: u16) -> Result<MotoProcess, String> {
        let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let exited: Arc<Mutex<Option<ExitStatus>>> = Arc::default();
        let log: Arc<Mutex<String>> = Arc::default();
        let (exited2, log2) = (exited.clone(), log.clone());
        let keeper = std::thread::spawn(move || {
            let mut cmd = Command::new("moto_server");
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // moto logs every request: drain both pipes so that it never blocks on them.
            let readers: Vec<Box<dyn Read + Send>> = vec![
                Box::new(child.stdout.take().unwrap()),
                Box::new(child.stderr.take().unwrap()),
            ];
            for mut pipe in readers {
                let log = log2.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = pipe.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut l = log.lock().unwrap();
                        l.push_str(&String::from_utf8_lossy(&buf[..n]));
                        if l.len() > 2 * LOG_TAIL {
                            let mut cut = l.len() - LOG_TAIL;
                            while !l.is_char_boundary(cut) {
                                cut += 1;
                            }
                            l.drain(..cut);
                        }
                    }
                });
            }
            loop {
                match stop_rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Ok(Some(status)) = child.try_wait() {
                            *exited2.lock().unwrap() = Some(status);
                        }
                    }
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        });

        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => panic!("{NOT_FOUND}"),
            Ok(Err(e)) => panic!("moto_server could not be run: {e}"),
            Err(_) => panic!("moto_server could not be run"),
        }
        let process = MotoProcess {
            stop: stop_tx,
            keeper,
        };
        let up = super::wait_until(Duration::from_secs(30), || {
            answers_http(port) || exited.lock().unwrap().is_some()
        });
        let status = *exited.lock().unwrap();
        if up && status.is_none() {
            return Ok(process);
        }
        process.kill();
        let output = log.lock().unwrap().clone();
        // A pyenv shim without the package, or a Python without moto's server extras.
        if status.and_then(|s| s.code()) == Some(127)
            || output.contains("command not found")
            || output.contains("No module named")
        {
            panic!("{NOT_FOUND}\n{output}");
        }
        Err(match status {
            Some(s) => format!("exited with {s} on port {port}:\n{output}"),
            None => format!("no HTTP answer on port {port} within 30 s:\n{output}"),
        })
    }

    /// Kills the process and waits for it.
    fn kill(self) {
        let _ = self.stop.send(());
        let _ = self.keeper.join();
    }
}

// ------------------------------------------------------------------------------------------
// moto with IAM authentication enforced
// ------------------------------------------------------------------------------------------
//
// Observed behaviour of moto 5.1.22 with authentication enforced (moto/core/authorization.py,
// moto/iam/access_control.py):
// - moto counts the requests that reach a service backend and checks none of the first
//   `INITIAL_NO_AUTH_ACTION_COUNT` (infinite by default: no check at all). POST
//   `/moto-api/reset-auth` with a number as body sets that budget and zeroes the count at any
//   time; it is not itself counted or checked. The harness uses it instead of the environment
//   variable: the readiness probe (`GET /`) and the IAM set-up then need no counting;
// - once the budget is spent, every request must carry a SigV4 `Authorization` header whose
//   access key belongs to an IAM user of moto (its secret re-signs the request with
//   botocore's S3SigV4Auth, which must give the same signature), and the user's policies
//   must allow the action (`s3:ListBucket`, `s3:PutObject`, …);
// - an unknown key id: 403 `InvalidAccessKeyId` ("The AWS Access Key Id you provided does not
//   exist in our records."); a known key with a wrong secret: 403 `SignatureDoesNotMatch`;
//   no policy allowing the action: 403 `AccessDenied`. HEAD requests (HeadBucket,
//   HeadObject) get a bare 403 without a body, so the SDK sees no error code;
// - the `<Message>` of these errors is a CDATA section, which the Rust SDK reads as empty:
//   sluice logs e.g. `InvalidAccessKeyId (HTTP 403): ` with nothing after the colon;
// - the signature check miscomputes requests with a `/` in a query value: ListObjectsV2 with
//   `prefix=logs/` (sent as `logs%2F`) gets `SignatureDoesNotMatch` with the right key, from
//   boto3 as well; a prefix without `/` (or with a space) passes. Tests that enforce
//   authentication use key prefixes without `/` before the first placeholder;
// - a request without an `Authorization` header (e.g. `GET /`) gets 500 (a KeyError inside
//   moto), not 403;
// - `stop()` + `restart()` start a fresh moto: no IAM user, no enforcement.

/// An IAM access key (key id and secret) that moto knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessKey {
    pub id: String,
    pub secret: String,
}

/// Creates the IAM user `sluice-tests` with an access key and an inline policy allowing
/// `s3:*` on everything, then enforces authentication from the next request on; prints the
/// key id and the secret on one line.
const IAM_SETUP: &str = r#"
import json, sys, urllib.request
import boto3
ep = sys.argv[1]
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1",
                   aws_access_key_id="setup", aws_secret_access_key="setup")
iam.create_user(UserName="sluice-tests")
key = iam.create_access_key(UserName="sluice-tests")["AccessKey"]
iam.put_user_policy(UserName="sluice-tests", PolicyName="s3-all", PolicyDocument=json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
}))
# Not form-encoded (urllib's default): moto reads the raw body as the number.
req = urllib.request.Request(ep + "/moto-api/reset-auth", data=b"0", method="POST",
                             headers={"Content-Type": "text/plain"})
with urllib.request.urlopen(req) as r:
    answer = json.loads(r.read())
    assert answer.get("status") == "ok", answer
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

impl S3Server {
    /// Starts a server of its own that enforces IAM authentication, with one IAM user allowed
    /// `s3:*`; returns it and that user's access key. The harness client signs with that key
    /// (its methods keep working); any other key gets 403. Creating buckets and reading them
    /// back goes through the harness as usual. `restart()` brings back a server without
    /// enforcement (moto keeps nothing).
    pub fn start_with_auth() -> (S3Server, AccessKey) {
        let mut s3 = S3Server::start();
        let out = Command::new("python3")
            .arg("-c")
            .arg(IAM_SETUP)
            .arg(s3.endpoint())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("python3 could not be run (boto3 comes with moto): {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the IAM set-up of moto failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let key = match stdout.trim().split_once(' ') {
            Some((id, secret)) if !id.is_empty() && !secret.is_empty() => AccessKey {
                id: id.to_string(),
                secret: secret.to_string(),
            },
            _ => panic!("the IAM set-up of moto printed no access key: {stdout:?}"),
        };
        s3.client = s3.client_with(&key.id, &key.secret);
        (s3, key)
    }

    /// A client like the harness's one, signing with another key id and secret.
    pub fn client_with(&self, key_id: &str, secret: &str) -> aws_sdk_s3::Client {
        use aws_sdk_s3::config::Credentials;
        let conf = self
            .client
            .config()
            .to_builder()
            .credentials_provider(Credentials::new(key_id, secret, None, None, "tests"))
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}
