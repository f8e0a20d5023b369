//! `wshost connect URL`: typed lines out as text messages, messages in printed, Ctrl-D (the
//! end of stdin) closes with 1000; against the real `wshost run scripts/echo.rhai`, and
//! tokio-tungstenite servers made here for what echo.rhai does not do (binary messages, a
//! close the server starts, upgrade headers).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// A running `wshost connect URL ARGS…`: its stdin to type into, its output line by line.
struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Session {
    fn start(url: &str, args: &[&str]) -> Session {
        let mut child = Command::new(bin())
            .arg("connect")
            .arg(url)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wshost connect");
        let stdout = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        let stdin = child.stdin.take();
        Session {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to wshost connect");
        stdin.flush().unwrap();
    }

    /// Ctrl-D.
    fn end_input(&mut self) {
        self.stdin.take();
    }

    fn next_stdout(&self) -> String {
        self.stdout
            .recv_timeout(TIMEOUT)
            .expect("a line on stdout within the timeout")
    }

    fn next_stderr(&self) -> String {
        self.stderr
            .recv_timeout(TIMEOUT)
            .expect("a line on stderr within the timeout")
    }

    /// The exit code, the session having ended by itself.
    fn exit_code(&mut self) -> Option<i32> {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines_of(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn typed_lines_go_out_and_answers_are_printed_then_ctrl_d_closes_with_1000() {
    let host = Host::start("scripts/echo.rhai");
    let url = host.url("/");
    let mut session = Session::start(&url, &[]);
    assert!(
        session
            .next_stderr()
            .starts_with(&format!("connected to {url}")),
        "{}",
        host.stderr()
    );
    session.type_line("hello");
    assert_eq!(session.next_stdout(), "hello");
    session.type_line("héllo wörld");
    assert_eq!(session.next_stdout(), "héllo wörld");
    session.end_input();
    assert_eq!(session.next_stderr(), "closed: 1000");
    assert_eq!(session.exit_code(), Some(0));
}

#[test]
fn piped_input_is_sent_line_by_line() {
    let host = Host::start("scripts/echo.rhai");
    let mut child = Command::new(bin())
        .args(["connect", &host.url("/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The script's answers come back before the close: one line, then wait for it, so that
    // the close is not racing the echo.
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"one\r\n").unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "one\n");
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.ends_with("closed: 1000\n"), "{stderr}");
}

/// A one-connection tokio-tungstenite server: sends the request's `x-token` header back, then
/// a short and a long binary message, then closes with 4001 "bye" when told to by a message.
// The handshake callback's error type is tungstenite's, large as it is.
#[allow(clippy::result_large_err)]
async fn scripted_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut token = String::new();
        let callback = |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
                        response| {
            token = request
                .headers()
                .get_all("x-token")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(",");
            Ok(response)
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .unwrap();
        ws.send(Message::text(format!("x-token: {token}")))
            .await
            .unwrap();
        ws.send(Message::binary(vec![0u8, 1, 0xab])).await.unwrap();
        ws.send(Message::binary((0..100u8).collect::<Vec<_>>()))
            .await
            .unwrap();
        while let Some(Ok(m)) = ws.next().await {
            if m.is_text() {
                let frame = CloseFrame {
                    code: 4001.into(),
                    reason: "bye".into(),
                };
                ws.close(Some(frame)).await.unwrap();
            }
        }
    });
    (port, task)
}

#[tokio::test]
async fn headers_binary_messages_and_a_close_the_server_starts() {
    let (port, server) = scripted_server().await;
    let url = format!("ws://127.0.0.1:{port}/");
    let session = tokio::task::spawn_blocking(move || {
        let mut session = Session::start(&url, &["--header", "X-Token: abc", "-H", "x-token:d"]);
        assert!(session.next_stderr().starts_with("connected to"));
        assert_eq!(session.next_stdout(), "x-token: abc,d");
        assert_eq!(session.next_stdout(), "[binary 3 bytes: 00 01 ab]");
        assert_eq!(
            session.next_stdout(),
            "[binary 100 bytes: 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f …]"
        );
        session.type_line("please close");
        assert_eq!(session.next_stderr(), "closed: 4001 bye");
        // Input still open: the server's close alone ends the session.
        session.exit_code()
    });
    let code = tokio::time::timeout(TIMEOUT * 2, session)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(0));
    tokio::time::timeout(TIMEOUT, server)
        .await
        .unwrap()
        .unwrap();
}

#[test]
fn a_refused_connection_is_one_line_and_exit_1() {
    let port = free_port();
    let (status, stdout, stderr) = run_cli(&["connect", &format!("ws://127.0.0.1:{port}/")]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("connection refused"), "{stderr}");
}

#[test]
fn a_refused_upgrade_names_the_http_status() {
    // chat.rhai refuses `?name=root` with 403.
    let host = Host::start("scripts/chat.rhai");
    let (status, _, stderr) = run_cli(&["connect", &host.url("/?name=root")]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("HTTP 403"), "{stderr}");
}

#[test]
fn a_bad_url_or_header_is_one_line_and_exit_2() {
    for args in [
        vec!["connect", "http://127.0.0.1/"],
        vec!["connect", "ws://127.0.0.1:1/", "--header", "no colon"],
    ] {
        let (status, _, stderr) = run_cli(&args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
    }
}
