//! Limits and bad input, each hit for real: close codes, slow peers, runaway callbacks,
//! garbage on the socket, many abrupt disconnects.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Reads until EOF (bounded); returns what came.
async fn read_to_end(tcp: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, tcp.read_to_end(&mut out)).await;
    out
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009() {
    let host = Host::start_with("scripts/echo.rhai", &["--max-message-size", "1024"]);
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, &"a".repeat(1000)).await;
    assert_eq!(recv_text(&mut ws).await.len(), 1000);
    send_text(&mut ws, &"b".repeat(2000)).await;
    assert_eq!(recv_close(&mut ws).await.0, 1009);
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let host = Host::start("scripts/echo.rhai");
    let mut ws = connect(&host.url("/")).await;
    let frame = Frame::message(vec![0xffu8, 0xfe, 0x41], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(recv_close(&mut ws).await.0, 1007);
}

#[tokio::test]
async fn a_protocol_violation_closes_with_1002() {
    let host = Host::start("scripts/echo.rhai");
    let mut tcp = raw_upgraded(host.port).await;
    // FIN + RSV1 (no extension agreed) + text, masked, empty.
    tcp.write_all(&[0xC1, 0x80, 1, 2, 3, 4]).await.unwrap();
    let got = read_to_end(&mut tcp, TIMEOUT).await;
    assert_eq!(
        &got[..4],
        &[0x88, 0x02, 0x03, 0xEA],
        "close frame 1002: {got:?}"
    );
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_closed_1008_and_others_keep_going() {
    let host = Host::start(&fixture("limits.rhai"));
    let mut normal = connect(&host.url("/")).await;
    let mut slow = connect(&host.url("/")).await;
    send_text(&mut slow, "id").await;
    let slow_id = recv_text(&mut slow).await;
    // Ask for 128 MiB and never read it.
    send_text(&mut slow, "flood").await;
    for i in 1..=20 {
        send_text(&mut normal, "count").await;
        assert_eq!(recv_text(&mut normal).await, format!("count {i}"));
    }
    let line = host
        .wait_stdout(&format!("terminate {slow_id} 1008"), TIMEOUT)
        .unwrap_or_else(|| {
            panic!(
                "slow peer not closed:\n{}\n{}",
                host.stdout(),
                host.stderr()
            )
        });
    assert!(line.contains("1008"));
    assert!(
        host.stdout().contains(&format!("error {slow_id} 23:")),
        "{}",
        host.stdout()
    );
    assert!(host.stderr().contains("does not read"), "{}", host.stderr());
    send_text(&mut normal, "count").await;
    assert_eq!(recv_text(&mut normal).await, "count 21");
    drop(slow);
}

#[tokio::test]
async fn max_connections_refuses_with_503() {
    let host = Host::start(&fixture("limits.rhai"));
    host.wait_stderr("/limited", TIMEOUT)
        .expect("second server listening");
    let url = host.url("/limited");
    let mut a = connect(&url).await;
    let _b = connect(&url).await;
    let err = tokio_tungstenite::connect_async(&url)
        .await
        .expect_err("third refused");
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 503),
        "{err}"
    );
    a.close(None).await.unwrap();
    // Once one has gone, there is room again.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok((mut c, _)) = tokio_tungstenite::connect_async(&url).await {
            send_text(&mut c, "hi").await;
            assert_eq!(recv_text(&mut c).await, "limited hi");
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn origins_not_allowed_are_refused_with_403() {
    let host = Host::start(&fixture("limits.rhai"));
    host.wait_stderr("/limited", TIMEOUT)
        .expect("second server listening");
    let with_origin = |origin: &str| {
        let mut req = host.url("/limited").into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    let err = tokio_tungstenite::connect_async(with_origin("https://evil.example"))
        .await
        .expect_err("bad origin");
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(r) if r.status() == 403),
        "{err}"
    );
    let (mut ok, _) = tokio_tungstenite::connect_async(with_origin("https://good.example"))
        .await
        .unwrap();
    send_text(&mut ok, "x").await;
    assert_eq!(recv_text(&mut ok).await, "limited x");
}

#[tokio::test]
async fn a_silent_peer_is_dropped_and_a_live_one_is_kept_by_pings() {
    let host = Host::start_with(
        "scripts/echo.rhai",
        &["--ping-interval", "0.2", "--idle-timeout", "0.6"],
    );
    let mut silent = raw_upgraded(host.port).await;
    let live = connect(&host.url("/")).await;
    let (mut tx, mut rx) = live.split();
    // Reading answers the server's pings.
    let reader = tokio::spawn(async move {
        let mut texts = Vec::new();
        while let Some(Ok(m)) = rx.next().await {
            if let Message::Text(t) = m {
                texts.push(t.as_str().to_string());
                break;
            }
        }
        texts
    });
    let started = Instant::now();
    let _ = read_to_end(&mut silent, Duration::from_secs(5)).await;
    let dropped_after = started.elapsed();
    assert!(dropped_after < Duration::from_secs(4), "{dropped_after:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    tx.send(Message::text("still here")).await.unwrap();
    let texts = tokio::time::timeout(TIMEOUT, reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(texts, vec!["still here".to_string()]);
}

#[tokio::test]
async fn a_runaway_callback_is_stopped_and_the_next_message_is_handled() {
    let host = Host::start_with(&fixture("limits.rhai"), &["--callback-timeout", "300"]);
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "id").await;
    let id = recv_text(&mut ws).await;
    let started = Instant::now();
    send_text(&mut ws, "spin").await;
    send_text(&mut ws, "count").await;
    assert_eq!(recv_text(&mut ws).await, "count 1");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        host.wait_stdout(&format!("error {id} 2: "), TIMEOUT)
            .is_some(),
        "{}",
        host.stdout()
    );
    send_text(&mut ws, "recurse").await;
    send_text(&mut ws, "count").await;
    assert_eq!(recv_text(&mut ws).await, "count 2");
    let line = host
        .wait_stderr("too many nested calls", TIMEOUT)
        .expect("logged");
    assert!(line.contains("tests/fixtures/limits.rhai:"), "{line}");
    // A string that doubles without end is stopped by the memory budget.
    send_text(&mut ws, "hog").await;
    send_text(&mut ws, "count").await;
    assert_eq!(recv_text(&mut ws).await, "count 3");
    host.wait_stderr("past its memory budget", TIMEOUT)
        .expect("logged");
}

#[tokio::test]
async fn garbage_and_oversized_headers_get_http_errors_and_the_server_keeps_serving() {
    let host = Host::start("scripts/echo.rhai");
    for garbage in [
        b"\x00\x01\x02 not http at all\r\n\r\n".to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n".to_vec(),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "y".repeat(40_000)).into_bytes(),
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec(),
    ] {
        let mut tcp = TcpStream::connect(("127.0.0.1", host.port)).await.unwrap();
        let _ = tcp.write_all(&garbage).await;
        let got = read_to_end(&mut tcp, TIMEOUT).await;
        let head = String::from_utf8_lossy(&got);
        assert!(
            head.is_empty() || head.starts_with("HTTP/1.1 4"),
            "answer to garbage: {head}"
        );
    }
    // A frame cut off in the middle, then the socket closed.
    let mut cut = raw_upgraded(host.port).await;
    cut.write_all(&[0x81, 0xFE, 0x10, 0x00, 1, 2, 3, 4, b'a'])
        .await
        .unwrap();
    drop(cut);
    let mut ws = connect(&host.url("/")).await;
    send_text(&mut ws, "fine").await;
    assert_eq!(recv_text(&mut ws).await, "fine");
}

#[tokio::test]
async fn a_thousand_abrupt_disconnects_leave_no_connection_and_no_memory_behind() {
    let host = Host::start(&fixture("limits.rhai"));
    let mut probe = connect(&host.url("/")).await;
    // Warm up the allocator with a first round, then measure around a second one.
    for round in 0..2 {
        let before = host.rss_kib();
        let mut clients = Vec::new();
        for _ in 0..1000 {
            let (ws, _) = tokio_tungstenite::connect_async(host.url("/"))
                .await
                .unwrap();
            clients.push(ws);
        }
        let mut peak_conns = String::new();
        let deadline = Instant::now() + TIMEOUT;
        while peak_conns != "1001" && Instant::now() < deadline {
            send_text(&mut probe, "conns").await;
            peak_conns = recv_text(&mut probe).await;
        }
        assert_eq!(peak_conns, "1001");
        let peak = host.rss_kib();
        // Gone without a close frame: the TCP sockets just close.
        for ws in clients {
            drop(ws.into_inner());
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            send_text(&mut probe, "conns").await;
            if recv_text(&mut probe).await == "1" {
                break;
            }
            assert!(Instant::now() < deadline, "connections still open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = host.rss_kib();
        println!(
            "round {round}: RSS {before} KiB before, {peak} KiB with 1000 connections, \
             {after} KiB after they dropped"
        );
        if round == 1 {
            assert!(
                after < before + 4096,
                "memory kept: {before} -> {after} KiB"
            );
        }
    }
}

#[tokio::test]
async fn state_that_grows_across_callbacks_is_bounded() {
    let host = Host::start_with(&fixture("hoard.rhai"), &["--script-memory", "4"]);
    let mut small = connect(&host.url("/")).await;
    send_text(&mut small, "tiny").await;
    assert_eq!(recv_text(&mut small).await, "kept 1");
    let mut hoarder = connect(&host.url("/")).await;
    let chunk = "z".repeat(100_000);
    // Each message is kept: 80 of them are 8 MB, twice the limit.
    let mut closed = None;
    for i in 1..=200 {
        send_text(&mut hoarder, &chunk).await;
        match recv(&mut hoarder).await {
            Message::Text(t) => assert_eq!(t.as_str(), format!("kept {i}")),
            Message::Close(f) => {
                closed = f.map(|f| u16::from(f.code));
                break;
            }
            other => panic!("{other:?}"),
        }
        if i % 20 == 0 {
            // Give the once-a-second measurement its chance.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(closed, Some(1008), "the hoarding connection is let go");
    let deadline = Instant::now() + TIMEOUT;
    while !host
        .stdout()
        .lines()
        .any(|l| l.starts_with("error ") && l.ends_with(" 3"))
    {
        assert!(
            Instant::now() < deadline,
            "no onError errCode 3: {}",
            host.stdout()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        host.wait_stderr("over the limit of 4 MiB", TIMEOUT)
            .is_some(),
        "{}",
        host.stderr()
    );
    // The other connection is untouched.
    send_text(&mut small, "still").await;
    assert_eq!(recv_text(&mut small).await, "kept 2");
}
