//! The client side (`WebSocket.new`) and timers, with the real binary: against wshost's own
//! server, a TLS server with a certificate made at test time, an independent server written in
//! Python, and every failure path.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Runs `wshost run SCRIPT ARGS…` to its end (bounded) and returns (exit code, stdout, stderr).
fn run_to_end(script: &str, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut host = Host::spawn(script, extra);
    let status = host.wait_exit(Duration::from_secs(20));
    let status = status.unwrap_or_else(|| panic!("did not end; stdout:\n{}", host.stdout()));
    (status.code(), host.stdout(), host.stderr())
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn client_talks_to_a_server_of_the_same_script_in_order() {
    let (code, stdout, stderr) = run_to_end(&fixture("client_self.rhai"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let out = lines(&stdout);
    assert!(
        out[0].starts_with("client status Connecting ws://127.0.0.1:"),
        "{stdout}"
    );
    assert!(out[0].ends_with("/chat WebSocket"), "{stdout}");
    assert_eq!(
        out[1..].to_vec(),
        vec![
            "client open Connected",
            // Headers from the handler reached the server (a repeated header as an array).
            r#"client message {"cookie":"a=1; b=2","xa":["one","two"]}"#,
            // Sent while connecting: goes out first, once connected.
            "client message echo: queued",
            "client message echo: hello",
            "client terminate 4002 server says bye true Closed",
        ],
        "{stdout}"
    );
}

#[test]
fn every_failure_is_on_error_then_on_terminate_1006() {
    let port = free_port().to_string();
    let (code, stdout, stderr) = run_to_end(&fixture("client_failures.rhai"), &[&port]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stdout.contains("OPENED"), "{stdout}");
    assert!(!stdout.contains("no error for"), "{stdout}");
    for (name, code, words) in [
        ("refused", 24, "connection refused"),
        ("dns", 24, "DNS failure"),
        ("http", 26, "refused the upgrade: HTTP 403"),
        ("tls", 25, "TLS failure"),
    ] {
        let error = stdout
            .lines()
            .position(|l| l.starts_with(&format!("{name} error {code}:")) && l.contains(words))
            .unwrap_or_else(|| panic!("no {name} error with {words:?} in\n{stdout}"));
        let terminate = stdout
            .lines()
            .position(|l| l == format!("{name} terminate 1006 false"))
            .unwrap_or_else(|| panic!("no {name} terminate in\n{stdout}"));
        assert!(error < terminate, "{stdout}");
        assert_eq!(stdout.matches(&format!("{name} terminate")).count(), 1);
    }
    assert!(
        stdout.contains("caught WebSocket.new: URL \"http://example.com/\" has scheme \"http\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("caught WebSocket.new: cannot parse URL \"not a url\""),
        "{stdout}"
    );
    assert!(stdout.contains("caught WebSocket.new:"), "{stdout}");
    assert_eq!(stdout.matches("caught ").count(), 3, "{stdout}");
}

#[test]
fn timers_fire_in_order_and_cleared_ones_do_not() {
    let (code, stdout, stderr) = run_to_end(&fixture("timers.rhai"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        lines(&stdout),
        vec!["tick 1", "tick 2", "tick 3", "named 40", "timeout 80"],
        "{stdout}"
    );
}

#[tokio::test]
async fn a_server_sees_a_client_terminate_code() {
    // wshost client -> wshost server in another process: the server's onTerminate sees 1000.
    let server = Host::start(&fixture("features.rhai"));
    let url = server.url("/");
    let (code, stdout, _) =
        tokio::task::spawn_blocking(move || run_to_end(&fixture("client_echo.rhai"), &[&url]))
            .await
            .unwrap();
    assert_eq!(code, Some(0));
    assert!(stdout.contains("message string unknown: hi"), "{stdout}");
    assert!(stdout.contains("terminate 1000 true Closed"), "{stdout}");
    assert!(
        server.wait_stdout(" 1000 done", TIMEOUT).is_some(),
        "{}",
        server.stdout()
    );
}

/// A TLS echo server with a certificate made now; returns its port and the CA file.
async fn tls_echo_server(dir: &std::path::Path) -> (u16, std::path::PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() || m.is_binary() {
                        let _ = ws.send(m).await;
                    }
                }
            });
        }
    });
    (port, ca)
}

#[tokio::test]
async fn wss_with_a_certificate_made_at_test_time() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca) = tls_echo_server(dir.path()).await;
    let url = format!("wss://localhost:{port}/");
    let ca_arg = ca.to_string_lossy().into_owned();

    let trusted = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            run_to_end(&fixture("client_echo.rhai"), &["--ca-file", &ca_arg, &url])
        })
    };
    let (code, stdout, stderr) = trusted.await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        lines(&stdout),
        vec![
            format!("open {url}").as_str(),
            "message string hi",
            "message blob [0909]",
            "terminate 1000 true Closed"
        ],
        "{stdout}"
    );

    // Without the CA the certificate is not trusted: a TLS failure, then 1006.
    let (code, stdout, _) =
        tokio::task::spawn_blocking(move || run_to_end(&fixture("client_echo.rhai"), &[&url]))
            .await
            .unwrap();
    assert_eq!(code, Some(0));
    assert!(stdout.contains("error 25: TLS failure"), "{stdout}");
    assert!(stdout.contains("terminate 1006 false Closed"), "{stdout}");
}

const PYTHON_SERVER: &str = r#"
import asyncio, json, sys
import websockets

async def handler(ws):
    await ws.send("cookie=" + ws.request.headers.get("Cookie", ""))
    async for message in ws:
        await ws.send(message)

async def main():
    async with websockets.serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.sleep(30)

asyncio.run(main())
"#;

#[test]
fn against_an_independent_python_server() {
    let has_websockets = std::process::Command::new("python3")
        .args(["-c", "import websockets"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_websockets {
        return skip(
            "client::against_an_independent_python_server",
            "python3 with the `websockets` package is not installed (pip install websockets)",
        );
    }
    let mut py = std::process::Command::new("python3")
        .args(["-c", PYTHON_SERVER])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(py.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    let url = format!("ws://127.0.0.1:{}/", first.trim());
    let (code, stdout, stderr) = run_to_end(&fixture("client_echo.rhai"), &[&url]);
    let _ = py.kill();
    let _ = py.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        lines(&stdout),
        vec![
            format!("open {url}").as_str(),
            "message string cookie=a=1; b=2",
            "message string hi",
            // Echoed before the server read the close frame.
            "message blob [0909]",
            "terminate 1000 true Closed"
        ],
        "{stdout}"
    );
}

#[tokio::test]
async fn the_process_keeps_running_while_a_client_is_open() {
    // A plain tokio-tungstenite server that answers one message, then waits.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut host = Host::spawn(&fixture("client_echo.rhai"), &[&url]);
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let first = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, Message::text("hi"));
    ws.send(Message::text("one")).await.unwrap();
    // One answer only: the client waits for a second and the process must stay up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        host.wait_exit(Duration::from_millis(10)).is_none(),
        "exited early"
    );
    ws.send(Message::text("two")).await.unwrap();
    // The client closes after the second answer; finish the handshake.
    while let Some(Ok(m)) = tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap() {
        if m.is_close() {
            break;
        }
    }
    drop(ws);
    let status = host.wait_exit(TIMEOUT).expect("exits after the close");
    assert!(status.success());
}
