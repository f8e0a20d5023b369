//! Test support: the real `wshost` binary on port 0, and a real WebSocket client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_wshost")
}

#[derive(Default)]
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
    closed: usize,
}

/// A running `wshost run SCRIPT --port 0`, killed on drop.
pub struct Host {
    child: Option<Child>,
    out: Arc<(Mutex<Output>, Condvar)>,
    /// The port of the first server that logged "listening on".
    pub port: u16,
}

impl Host {
    /// Starts `wshost run` on a script of the repo (relative path) and waits until it listens.
    pub fn start(script: &str) -> Host {
        Self::start_with(script, &[])
    }

    pub fn start_with(script: &str, args: &[&str]) -> Host {
        let mut host = Self::spawn(script, args);
        let line = host
            .wait_stderr("listening on ", TIMEOUT)
            .unwrap_or_else(|| panic!("wshost did not listen; stderr:\n{}", host.stderr()));
        host.port = port_of(&line);
        host
    }

    /// Starts `wshost run` without waiting for anything.
    pub fn spawn(script: &str, args: &[&str]) -> Host {
        let mut cmd = Command::new(bin());
        cmd.current_dir(repo())
            .arg("run")
            .arg(script)
            .args(["--port", "0"])
            .args(args);
        Self::spawn_command(cmd)
    }

    /// Runs `cmd` (a host started some other way, e.g. through `cargo run`) from the repo
    /// root and waits until it listens, at most `timeout`.
    pub fn start_command(cmd: Command, timeout: Duration) -> Host {
        let mut host = Self::spawn_command(cmd);
        let line = host
            .wait_stderr("listening on ", timeout)
            .unwrap_or_else(|| panic!("wshost did not listen; stderr:\n{}", host.stderr()));
        host.port = port_of(&line);
        host
    }

    fn spawn_command(mut cmd: Command) -> Host {
        cmd.current_dir(repo())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start wshost");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        collect(stdout, out.clone(), false);
        collect(stderr, out.clone(), true);
        Host {
            child: Some(child),
            out,
            port: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The resident memory of the process, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    pub fn stdout(&self) -> String {
        self.out.0.lock().unwrap().stdout.join("\n")
    }

    pub fn stderr(&self) -> String {
        self.out.0.lock().unwrap().stderr.join("\n")
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn wait_stdout(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_line(needle, timeout, false)
    }

    /// Waits for a stderr line containing `needle`; returns it.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_line(needle, timeout, true)
    }

    fn wait_line(&self, needle: &str, timeout: Duration, err: bool) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.out;
        let mut out = lock.lock().unwrap();
        loop {
            let lines = if err { &out.stderr } else { &out.stdout };
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline || out.closed == 2 {
                return None;
            }
            out = cond.wait_timeout(out, deadline - now).unwrap().0;
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.as_ref().unwrap().id();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // Let the readers drain what is left.
                let (lock, cond) = &*self.out;
                let mut out = lock.lock().unwrap();
                while out.closed < 2 {
                    out = cond.wait_timeout(out, Duration::from_secs(2)).unwrap().0;
                    if Instant::now() > deadline + Duration::from_secs(2) {
                        break;
                    }
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
    out: Arc<(Mutex<Output>, Condvar)>,
    err: bool,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let (lock, cond) = &*out;
            let mut o = lock.lock().unwrap();
            if err {
                o.stderr.push(line)
            } else {
                o.stdout.push(line)
            }
            cond.notify_all();
        }
        let (lock, cond) = &*out;
        lock.lock().unwrap().closed += 1;
        cond.notify_all();
    });
}

/// The port in a "listening on ws://127.0.0.1:PORT/…" (or wss://) line.
pub fn port_of(line: &str) -> u16 {
    let rest = &line[line.find("://").expect(":// in line") + 3..];
    let hostport = rest.split('/').next().unwrap();
    hostport.rsplit(':').next().unwrap().parse().expect("port")
}

/// Runs the binary to completion with `args`, from the repo root.
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(bin())
        .current_dir(repo())
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("run wshost");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Says that `test` could not run because `why` (a tool it needs is missing), and returns so
/// the test can `return`. In CI (`CI=true`, as `.ci/run` sets it, which installs the tools)
/// that is a failure. Elsewhere the test is skipped, and says so where it is seen: libtest
/// captures what a passing test prints with `eprintln!`, but not a write to the stderr handle
/// itself; and a line in `target/skipped-tests.txt`, which `.ci/run` counts as skipped.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test} cannot run: {why} (CI=true: a missing tool is a failure)");
    }
    let line = format!("SKIPPED: {test}: {why}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    let _ = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(skipped_tests_file())
        .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
}

/// `target/skipped-tests.txt` (beside the profile folder of the binary under test).
pub fn skipped_tests_file() -> PathBuf {
    let profile = Path::new(bin()).parent().expect("profile folder");
    profile
        .parent()
        .unwrap_or(profile)
        .join("skipped-tests.txt")
}

pub fn fixture(name: &str) -> String {
    let p = Path::new("tests/fixtures").join(name);
    p.to_string_lossy().into_owned()
}

pub async fn connect(url: &str) -> Client {
    tokio::time::timeout(TIMEOUT, connect_async(url))
        .await
        .expect("connect timed out")
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        .0
}

/// The next text or binary message (pings and pongs skipped).
pub async fn recv(ws: &mut Client) -> Message {
    loop {
        let m = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .expect("no message within the timeout")
            .expect("stream ended")
            .expect("read error");
        match m {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

pub async fn recv_text(ws: &mut Client) -> String {
    match recv(ws).await {
        Message::Text(t) => t.as_str().to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

pub async fn send_text(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// Reads until the server's close frame; returns its code and reason.
pub async fn recv_close(ws: &mut Client) -> (u16, String) {
    loop {
        match recv(ws).await {
            Message::Close(Some(f)) => return (u16::from(f.code), f.reason.as_str().to_string()),
            Message::Close(None) => return (1005, String::new()),
            _ => continue,
        }
    }
}

/// Asserts that nothing arrives within `wait`.
pub async fn assert_silent(ws: &mut Client, wait: Duration) {
    if let Ok(Some(Ok(m))) = tokio::time::timeout(wait, ws.next()).await {
        panic!("expected no message, got {m:?}");
    }
}

/// An upgrade request, as raw bytes, for clients that speak to the socket themselves.
pub const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A raw TCP connection that has done the WebSocket handshake (the 101 is read).
pub async fn raw_upgraded(port: u16) -> TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut buf))
        .await
        .expect("an answer to the upgrade")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tcp
}

/// Starts `script` with `--metrics 127.0.0.1:0` (and `args`); returns it with the metrics port.
pub fn start_with_metrics(script: &str, args: &[&str]) -> (Host, u16) {
    let mut all = vec!["--metrics", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let host = Host::start_with(script, &all);
    let line = host
        .wait_stderr("metrics on http://", TIMEOUT)
        .unwrap_or_else(|| panic!("no metrics line; stderr:\n{}", host.stderr()));
    (host, port_of(&line))
}

/// A plain HTTP GET; returns the status line and the body.
pub async fn get(port: u16, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let text = tokio::time::timeout(TIMEOUT, work).await.expect("HTTP GET");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// The value of the sample `name` (with its labels, as written: `m{a="b"}`), if present.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A port that was free a moment ago (bound to 127.0.0.1:0, then let go): for a server the
/// test starts itself, or one that must refuse.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `command` and returns the next text message (the fixtures answer each command).
pub async fn ask(ws: &mut Client, command: &str) -> String {
    send_text(ws, command).await;
    recv_text(ws).await
}

/// Asks `command` until the answer is `want`, at most [`TIMEOUT`] (for what takes a moment:
/// another node's announcement, a connection still closing).
pub async fn ask_until(ws: &mut Client, command: &str, want: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = ask(ws, command).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{command}: got {got}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
