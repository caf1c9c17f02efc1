//! Interoperability: Python's real `fluent-logger` client (`fluent.sender` and
//! `fluent.asyncsender`) sends to the `sluice` binary's forward input, and every event must
//! appear on sluice's stdout.
//!
//! fluent-logger-python has no `require_ack_response` option (only the Ruby, Java and Go
//! loggers do), so the acknowledged half uses the real `msgpack` package to send
//! PackedForward and Message frames with a `chunk` option and checks each `{"ack": chunk}`.
//!
//! Needs `python3`; installs `fluent-logger` and `msgpack` with pip when they are missing. A
//! missing Python fails the test (it does not skip).

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const N: usize = 200;

const SCRIPT: &str = r#"
import socket, sys, time, uuid
import msgpack
from fluent import sender, asyncsender

port, n = int(sys.argv[1]), int(sys.argv[2])

# Message mode, integer times.
s = sender.FluentSender('py', host='127.0.0.1', port=port)
for i in range(n):
    if not s.emit('plain', {'id': 'py-plain-%d' % i, 'n': i}):
        raise SystemExit('emit failed: %r' % (s.last_error,))
s.close()

# Message mode, EventTime (nanosecond) times.
s = sender.FluentSender('py', host='127.0.0.1', port=port, nanosecond_precision=True)
for i in range(n):
    if not s.emit('nano', {'id': 'py-nano-%d' % i, 'f': 1.5, 'l': [1, None, True]}):
        raise SystemExit('emit failed: %r' % (s.last_error,))
s.close()

# The background-thread sender; close() drains its queue.
a = asyncsender.FluentSender('py', host='127.0.0.1', port=port)
for i in range(n):
    a.emit('async', {'id': 'py-async-%d' % i})
a.close()

# Acknowledged sends, as require_ack_response clients do.
sock = socket.create_connection(('127.0.0.1', port), timeout=5)
unpacker = msgpack.Unpacker(raw=False)

def wait_ack(chunk):
    while True:
        for obj in unpacker:
            if obj != {'ack': chunk}:
                raise SystemExit('unexpected response %r' % (obj,))
            return
        data = sock.recv(4096)
        if not data:
            raise SystemExit('connection closed before the ack')
        unpacker.feed(data)

per = 50
for b in range(n // per):
    entries = b''.join(
        msgpack.packb([int(time.time()), {'id': 'py-ack-%d' % (b * per + j)}])
        for j in range(per))
    chunk = uuid.uuid4().hex
    sock.sendall(msgpack.packb(['py.ack', entries, {'chunk': chunk, 'size': per}],
                               use_bin_type=True))
    wait_ack(chunk)
for i in range(10):
    chunk = uuid.uuid4().hex
    sock.sendall(msgpack.packb(['py.ackmsg', int(time.time()), {'id': 'py-ackmsg-%d' % i},
                                {'chunk': chunk}]))
    wait_ack(chunk)
sock.close()
print('done')
"#;

fn python_ready() {
    let version = Command::new("python3").arg("--version").output();
    match version {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 is needed for this test but `python3 --version` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("python3 is needed for this test but cannot be run: {e}"),
    }
    let import = || {
        Command::new("python3")
            .args(["-c", "import fluent.sender, fluent.asyncsender, msgpack"])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if import() {
        return;
    }
    let pip = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "fluent-logger",
            "msgpack",
        ])
        .output()
        .expect("run pip");
    assert!(
        import(),
        "cannot import fluent-logger/msgpack even after `python3 -m pip install fluent-logger msgpack`: {}",
        String::from_utf8_lossy(&pip.stderr)
    );
}

fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            l.lock().unwrap().push(line);
        }
    });
    lines
}

#[test]
fn python_fluent_logger_events_arrive() {
    python_ready();
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_forward_port();
    let conf = dir.path().join("sluice.conf");
    std::fs::write(
        &conf,
        format!(
            "<source>\n  @type forward\n  bind 127.0.0.1\n  port {port}\n</source>\n\
             <match **>\n  @type stdout\n</match>\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let stop = |child: &mut std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            stop(&mut child);
            panic!("sluice did not listen: {:?}", err.lock().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let script = dir.path().join("send.py");
    std::fs::write(&script, SCRIPT).unwrap();
    let py = Command::new("python3")
        .arg(&script)
        .arg(port.to_string())
        .arg(N.to_string())
        .output()
        .expect("run python3");
    if !py.status.success() {
        stop(&mut child);
        panic!(
            "python client failed: {}\n{}\nsluice stderr: {:#?}",
            String::from_utf8_lossy(&py.stdout),
            String::from_utf8_lossy(&py.stderr),
            err.lock().unwrap()
        );
    }

    let mut ids = Vec::new();
    for kind in ["plain", "nano", "async", "ack"] {
        ids.extend((0..N).map(|i| format!("py-{kind}-{i}")));
    }
    ids.extend((0..10).map(|i| format!("py-ackmsg-{i}")));
    let deadline = Instant::now() + Duration::from_secs(5);
    let missing = loop {
        let lines = out.lock().unwrap().clone();
        let missing: Vec<&String> = ids
            .iter()
            .filter(|id| {
                let needle = format!("\"id\":\"{id}\"");
                lines.iter().filter(|l| l.contains(&needle)).count() != 1
            })
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    stop(&mut child);
    assert!(
        missing.is_empty(),
        "{} of {} events missing or duplicated, e.g. {:?}; sluice stderr: {:#?}",
        missing.len(),
        ids.len(),
        &missing[..missing.len().min(5)],
        err.lock().unwrap()
    );
    let lines = out.lock().unwrap();
    assert!(lines.iter().any(|l| l.contains(" py.nano: ")));
    assert!(lines.iter().any(|l| l.contains(" py.ack: ")));
}
