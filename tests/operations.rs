//! Operating wshost (SPEC 10): `/metrics` counts real traffic, `/healthz` and new upgrades
//! turn 503 during a SIGTERM drain, `--log-format json` writes one JSON object per line.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn metrics_count_real_traffic() {
    let (host, mport) =
        start_with_metrics("tests/fixtures/limits.rhai", &["--max-operations", "10000"]);
    let mut ws = connect(&host.url("/")).await;
    for i in 0..3 {
        send_text(&mut ws, &format!("hello {i}")).await;
        assert_eq!(recv_text(&mut ws).await, format!("hello {i}"));
    }
    // A budget stop: counted as one, and its message as one more in.
    send_text(&mut ws, "spin").await;
    host.wait_stdout("error ", TIMEOUT)
        .expect("onError after the budget stop");
    // A refused origin.
    let mut req = host.url("/limited").into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect_err("bad origin");

    let (status, metrics) = get(mport, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let expect = [
        ("wshost_messages_in_total", 4.0),
        ("wshost_messages_out_total", 3.0),
        ("wshost_connections_open{path=\"*\"}", 1.0),
        ("wshost_connections_accepted_total{path=\"*\"}", 1.0),
        ("wshost_connections_refused_total{reason=\"origin\"}", 1.0),
        ("wshost_callback_budget_stops_total", 1.0),
        (
            "wshost_callback_duration_seconds_count{callback=\"onMessage\"}",
            4.0,
        ),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&metrics, name), Some(value), "{name} in:\n{metrics}");
    }
    assert_eq!(
        sample(&metrics, "wshost_bytes_in_total"),
        Some((3 * "hello 0".len() + "spin".len()) as f64)
    );
    assert!(!metrics.contains("conn=") && !metrics.contains("conn_id"));
}

#[tokio::test]
async fn healthz_and_new_upgrades_say_503_during_a_drain() {
    let (mut host, mport) = start_with_metrics("scripts/echo.rhai", &[]);
    assert!(get(mport, "/healthz").await.0.contains("200"));
    // A peer that never reads keeps the drain going until its close times out (2 s).
    let stuck = raw_upgraded(host.port).await;

    let started = Instant::now();
    host.terminate();
    let mut health = String::new();
    while started.elapsed() < Duration::from_secs(2) {
        health = get(mport, "/healthz").await.0;
        if health.contains("503") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(health.contains("503"), "{health}");

    let mut late = TcpStream::connect(("127.0.0.1", host.port)).await.unwrap();
    late.write_all(UPGRADE.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(TIMEOUT, late.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let (_, metrics) = get(mport, "/metrics").await;
    assert_eq!(
        sample(&metrics, "wshost_connections_refused_total{reason=\"503\"}"),
        Some(1.0),
        "{metrics}"
    );

    let status = host.wait_exit(TIMEOUT).expect("exits");
    assert_eq!(status.code(), Some(0), "{}", host.stderr());
    drop(stuck);
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let host = Host::start_with(
        "tests/fixtures/limits.rhai",
        &["--log-format", "json", "--max-operations", "10000"],
    );
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "spin").await;
    host.wait_stdout("error ", TIMEOUT)
        .expect("onError after the budget stop");
    let conn_line = host
        .wait_stderr("\"conn\"", TIMEOUT)
        .unwrap_or_else(|| panic!("no conn field:\n{}", host.stderr()));
    let stderr = host.stderr();
    for line in stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nall:\n{stderr}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
    }
    let v: serde_json::Value = serde_json::from_str(&conn_line).unwrap();
    assert_eq!(v["level"], "ERROR");
    assert_eq!(v["callback"], "onMessage");
    assert_eq!(v["path"], "*");
    let location = v["location"].as_str().unwrap();
    // A budget stop names where the callback was stopped: the `loop {}`.
    assert!(location.ends_with("limits.rhai:17:24"), "{location}");
}

#[tokio::test]
async fn a_drain_past_drain_timeout_is_forced_and_exits_3() {
    let mut host = Host::start_with("scripts/echo.rhai", &["--drain-timeout", "0.5"]);
    // This peer never answers the close frame: its close would wait 2 s, past the 0.5 s.
    let stuck = raw_upgraded(host.port).await;
    let started = Instant::now();
    host.terminate();
    let status = host.wait_exit(TIMEOUT).expect("exits");
    assert_eq!(status.code(), Some(3), "{}", host.stderr());
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
}

#[tokio::test]
async fn a_stop_ends_with_500_clients_and_a_client_that_reconnects() {
    let mut host = Host::start_with(
        &fixture("reconnecting_stop.rhai"),
        &["--drain-timeout", "3"],
    );
    host.wait_stdout("link open", TIMEOUT)
        .expect("the script's client connects");
    let mut clients = Vec::new();
    for _ in 0..500 {
        clients.push(connect(&host.url("/")).await);
    }
    let started = Instant::now();
    host.terminate();
    for ws in clients.iter_mut() {
        assert_eq!(recv_close(ws).await.0, 1001);
    }
    let status = host.wait_exit(TIMEOUT).expect("exits");
    assert!(status.success(), "{status:?}\n{}", host.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let out = host.stdout();
    // The client closed with 1001, saw the stop, and its reconnect was not made.
    assert!(out.contains("link closed 1001, stopping: true"), "{out}");
    assert!(!out.contains("link error"), "{out}");
}

#[tokio::test]
async fn a_second_signal_during_a_stop_exits_at_once() {
    let mut host = Host::start_with("scripts/echo.rhai", &["--drain-timeout", "10"]);
    // This peer never answers the close frame: the stop would wait 2 s for it.
    let stuck = raw_upgraded(host.port).await;
    host.terminate();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    host.terminate();
    let status = host.wait_exit(TIMEOUT).expect("exits");
    assert_eq!(status.code(), Some(3), "{}", host.stderr());
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert!(
        host.stderr().contains("a second signal"),
        "{}",
        host.stderr()
    );
    drop(stuck);
}

#[test]
fn a_server_that_cannot_listen_exits_2_even_with_a_reconnecting_client() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut child = std::process::Command::new(bin())
        .current_dir(repo())
        .args(["run", &fixture("reconnecting_stop.rhai"), "--port", &port])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(8);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running after 8 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn a_reconnect_that_never_checks_stopping_still_ends_the_stop() {
    // onTerminate reconnects at once, every time: once stopping, the new client runs no
    // callback, so the chain ends.
    let script = "let h = #{ onTerminate: |ws, e| { print(`closed ${e.code}`); \
                  WebSocket.new(ws.url, ws.handler); } };\n\
                  let s = WebSocketServer.new(#{ onConnection: |wss, e| #{ onMessage: |ws, e| () } });\n\
                  WebSocket.new(`ws://127.0.0.1:${s.port}/`, h);\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eager.rhai");
    std::fs::write(&path, script).unwrap();
    let mut host = Host::start(path.to_str().unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    host.terminate();
    let status = host.wait_exit(TIMEOUT).expect("exits");
    assert!(status.success(), "{status:?}\n{}", host.stderr());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        host.stdout().matches("closed ").count(),
        1,
        "{}",
        host.stdout()
    );
    assert!(
        host.stderr().contains("the host is stopping"),
        "{}",
        host.stderr()
    );
}
