//! What a hostile peer or script tries, kept so that no later change brings it back: a peer
//! that pings without reading, a message larger than the outgoing bound, data nested too deep
//! for the native stack, one native call asking for a huge size, malformed upgrades, dotfiles.
//! Each runs against the real binary with a real or raw client, bounded in time.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};

const SCRIPT: &str = "tests/fixtures/hostile.rhai";

fn upgrade(key: Option<&str>, version: &str) -> String {
    let key = key
        .map(|k| format!("Sec-WebSocket-Key: {k}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /sock HTTP/{version}\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {key}Sec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// The status line the server answers `request` with.
async fn answer(port: u16, request: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.lines().next().unwrap_or_default().to_string()
}

#[tokio::test]
async fn a_peer_that_pings_and_never_reads_is_closed_and_memory_stays_bounded() {
    let host = Host::start(SCRIPT);
    let before = host.rss_kib();
    let mut tcp = raw_upgraded(host.port).await;
    // 1,000 pings of 125 bytes each, masked as a client must, written again and again; never
    // a read. Each asks for a pong of 127 bytes.
    let mut burst = Vec::new();
    for _ in 0..1000 {
        let mut ping = Frame::ping(vec![b'p'; 125]);
        ping.header_mut().mask = Some([1, 2, 3, 4]);
        ping.format(&mut burst).unwrap();
    }
    let started = Instant::now();
    let mut peak = before;
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(6) {
        match tokio::time::timeout(Duration::from_millis(200), tcp.write_all(&burst)).await {
            Ok(Ok(())) => sent += burst.len(),
            Ok(Err(_)) => break, // the server closed the connection
            Err(_) => {}         // the server stopped reading us: its buffers are full
        }
        peak = peak.max(host.rss_kib());
        if host.stderr().contains("does not read") {
            break;
        }
    }
    assert!(
        host.wait_stderr("does not read", Duration::from_secs(5))
            .is_some(),
        "the pinging peer was not closed; sent {sent} bytes; stderr:\n{}",
        host.stderr()
    );
    // Unbounded, this grew by 700 MB in 3 s; the bound is some 16 MiB of unsent pongs.
    assert!(
        peak - before < 100 << 10,
        "RSS grew from {before} KiB to {peak} KiB"
    );
    // The host goes on.
    let mut ws = connect(&host.url("/sock")).await;
    send_text(&mut ws, "still there").await;
    assert_eq!(recv_text(&mut ws).await, "echo still there");
}

#[tokio::test]
async fn a_message_larger_than_the_outgoing_bound_reaches_every_reading_client() {
    // 9 MiB through a broadcast, over the 8 MiB outgoing bound: each reading client gets it.
    let host = Host::start(SCRIPT);
    let mut readers = Vec::new();
    for _ in 0..4 {
        readers.push(connect(&host.url("/sock")).await);
    }
    let mut sender = connect(&host.url("/sock")).await;
    send_text(&mut sender, "hello").await;
    assert_eq!(recv_text(&mut sender).await, "echo hello"); // all five are open
    // A small message just before it: the big one joins a queue that is not empty.
    let big = format!("broadcast {}", "x".repeat(9 << 20));
    send_text(&mut sender, "broadcast small").await;
    send_text(&mut sender, &big).await;
    assert_eq!(recv_text(&mut sender).await, "sent");
    assert_eq!(recv_text(&mut sender).await, "sent");
    for ws in &mut readers {
        assert_eq!(recv_text(ws).await, "broadcast small");
        let got = recv_text(ws).await;
        assert_eq!(got.len(), big.len());
    }
    // And an echo of as much comes back whole.
    let echo = "y".repeat(9 << 20);
    send_text(&mut sender, &echo).await;
    assert_eq!(recv_text(&mut sender).await.len(), echo.len() + 5);
    assert!(
        !host.stderr().contains("does not read"),
        "{}",
        host.stderr()
    );
}

#[tokio::test]
async fn a_large_message_joins_a_queue_that_is_not_full() {
    // With a 1,000-byte outgoing bound: "small" is still queued (the writer runs when the
    // callback returns) when 5,000 bytes join it. The queue was not full: both go.
    let host = Host::start_with(SCRIPT, &["--send-queue-bytes", "1000"]);
    let mut ws = connect(&host.url("/sock")).await;
    send_text(&mut ws, "small-then-big").await;
    assert_eq!(recv_text(&mut ws).await, "small");
    assert_eq!(recv_text(&mut ws).await.len(), 5000);
    send_text(&mut ws, "after").await;
    assert_eq!(recv_text(&mut ws).await, "echo after");
}

#[tokio::test]
async fn data_nested_too_deep_is_a_script_error_and_the_server_goes_on() {
    let host = Host::start(SCRIPT);
    let mut ws = connect(&host.url("/sock")).await;
    for command in ["deep-compare", "deep-send"] {
        send_text(&mut ws, command).await;
        let got = recv_text(&mut ws).await;
        assert!(
            got.starts_with("error 1:") && got.contains("nested deeper than 256"),
            "{command}: {got}"
        );
    }
    // Printing does not fail: a note stands for the value.
    send_text(&mut ws, "deep-print").await;
    assert_eq!(
        recv_text(&mut ws).await,
        "[array nested deeper than 256 levels]"
    );
    send_text(&mut ws, "after").await;
    assert_eq!(recv_text(&mut ws).await, "echo after");
}

#[tokio::test]
async fn one_native_call_asking_for_a_huge_size_fails_at_once() {
    let host = Host::start(SCRIPT);
    let mut hog = connect(&host.url("/sock")).await;
    let mut other = connect(&host.url("/sock")).await;
    for command in ["pad", "blob"] {
        let started = Instant::now();
        send_text(&mut hog, command).await;
        let got = recv_text(&mut hog).await;
        assert!(
            got.starts_with("error 1:") && got.contains("more than one call may allocate"),
            "{command}: {got}"
        );
        // Refused before allocating: no second passes, and the other client is answered.
        assert!(started.elapsed() < Duration::from_secs(1), "{command}");
        send_text(&mut other, "me too").await;
        assert_eq!(recv_text(&mut other).await, "echo me too");
    }
}

#[tokio::test]
async fn large_messages_to_a_busy_server_keep_memory_bounded() {
    // Three clients send 4 MiB binaries as fast as they can; each is read only when the worker
    // gets to it (a socket runs on its worker's thread), so what waits is in the kernel's
    // buffers and slows the peers, not in the host's memory.
    let host = Host::start(SCRIPT);
    let before = host.rss_kib();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let url = host.url("/sock");
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(&url).await;
            let blob = vec![7u8; 4 << 20];
            for _ in 0..10 {
                ws.send(Message::Binary(blob.clone().into())).await.unwrap();
            }
            let mut answers = 0;
            while answers < 10 {
                if let Message::Text(t) = recv(&mut ws).await {
                    assert_eq!(t.as_str(), "got 4194304 bytes");
                    answers += 1;
                }
            }
        }));
    }
    let mut peak = before;
    for task in tasks {
        while !task.is_finished() {
            peak = peak.max(host.rss_kib());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.await.unwrap();
    }
    // 120 MiB went through; what is held at once is a few messages.
    assert!(
        peak - before < 80 << 10,
        "RSS grew from {before} KiB to {peak} KiB"
    );
}

#[tokio::test]
async fn malformed_upgrades_are_refused_before_the_script_sees_them() {
    let host = Host::start(SCRIPT);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    for (request, status) in [
        (upgrade(None, "1.1"), " 400 "),
        (upgrade(Some(""), "1.1"), " 400 "),
        (upgrade(Some("c2hvcnQ="), "1.1"), " 400 "), // 5 bytes, not 16
        (upgrade(Some("not base64 at all!!"), "1.1"), " 400 "),
        (upgrade(Some(key), "1.0"), " 400 "),
        (upgrade(Some(key), "1.1"), " 101 "),
    ] {
        let got = answer(host.port, &request).await;
        assert!(got.contains(status), "{request:?}: {got}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = host.stdout().matches("onConnection /sock").count();
    assert_eq!(calls, 1, "{}", host.stdout());
}

#[tokio::test]
async fn dotfiles_under_the_static_folder_are_not_served() {
    let host = Host::start(SCRIPT);
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        answer(host.port, &get("/index.html"))
            .await
            .contains(" 200 ")
    );
    for path in ["/.env", "/.git/config", "/%2eenv", "/.git/"] {
        let status = answer(host.port, &get(path)).await;
        assert!(status.contains(" 404 "), "{path}: {status}");
    }
}

#[tokio::test]
async fn an_invalid_close_code_from_the_peer_is_reported() {
    let host = Host::start(SCRIPT);
    let mut tcp = raw_upgraded(host.port).await;
    // A close frame with code 999 (not a code a peer may send), masked.
    let mut close = Frame::message(
        999u16.to_be_bytes().to_vec(),
        OpCode::Control(Control::Close),
        true,
    );
    close.header_mut().mask = Some([9, 8, 7, 6]);
    let mut bytes = Vec::new();
    close.format(&mut bytes).unwrap();
    tcp.write_all(&bytes).await.unwrap();
    assert!(
        host.wait_stdout("onTerminate 1002", TIMEOUT).is_some(),
        "{}",
        host.stdout()
    );
    assert!(host.stdout().contains("onError 21: "), "{}", host.stdout());
}

#[tokio::test]
async fn a_stop_interrupts_a_stuck_callback_and_closes_every_connection() {
    // A callback allowed to loop for a minute: SIGTERM must not wait for it.
    let mut host = Host::start_with(
        SCRIPT,
        &[
            "--callback-timeout",
            "60000",
            "--max-operations",
            "1000000000000",
        ],
    );
    let mut stuck = connect(&host.url("/sock")).await;
    let mut other = connect(&host.url("/sock")).await;
    send_text(&mut other, "hello").await;
    assert_eq!(recv_text(&mut other).await, "echo hello");
    send_text(&mut stuck, "spin").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    host.terminate();
    // Both peers get a close frame (1001), not a bare TCP close; the process exits 0.
    assert_eq!(recv_close(&mut other).await.0, 1001);
    let status = host.wait_exit(Duration::from_secs(6)).expect("exited");
    assert!(status.success(), "{status:?}\n{}", host.stderr());
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "{:?}",
        stopping.elapsed()
    );
    assert!(
        host.stderr().contains("the host is stopping"),
        "{}",
        host.stderr()
    );
    let _ = stuck;
}
