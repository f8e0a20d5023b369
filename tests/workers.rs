//! `--workers N`: one script per worker thread, connections spread over them, and
//! `wss.connections` / `send` reaching across workers.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn connections_spread_over_workers_and_broadcast_reaches_all() {
    let mut host = Host::start_with(&fixture("workers.rhai"), &["--workers", "2"]);
    host.wait_stderr("2 script workers running", TIMEOUT)
        .expect("both started");
    let mut clients = Vec::new();
    let mut workers = BTreeSet::new();
    for _ in 0..4 {
        let mut ws = connect(&host.url("/")).await;
        workers.insert(recv_text(&mut ws).await);
        clients.push(ws);
    }
    assert_eq!(
        workers,
        BTreeSet::from(["worker 0".to_string(), "worker 1".to_string()]),
        "both workers serve connections"
    );
    // Every worker sees all four connections.
    for ws in clients.iter_mut() {
        send_text(ws, "count").await;
        assert_eq!(recv_text(ws).await, "count 4");
    }
    // A message reaches the three others, whichever worker holds them.
    send_text(&mut clients[0], "hello").await;
    for ws in clients.iter_mut().skip(1) {
        assert!(recv_text(ws).await.ends_with(": hello"));
    }
    assert_silent(&mut clients[0], Duration::from_millis(200)).await;

    host.terminate();
    for ws in clients.iter_mut() {
        assert_eq!(recv_close(ws).await.0, 1001);
    }
    let status = host.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{}", host.stderr());
}

#[tokio::test]
async fn the_chat_runs_on_two_workers() {
    let host = Host::start_with("scripts/chat.rhai", &["--workers", "2"]);
    host.wait_stderr("2 script workers running", TIMEOUT)
        .expect("both started");
    let mut a = connect(&host.url("/")).await;
    assert_eq!(recv_text(&mut a).await, "Welcome on the chat!");
    let mut b = connect(&host.url("/")).await;
    assert_eq!(recv_text(&mut b).await, "Welcome on the chat!");
    assert_eq!(recv_text(&mut a).await, "New client connected");
    let mut c = connect(&host.url("/")).await;
    recv_text(&mut c).await;
    recv_text(&mut a).await;
    recv_text(&mut b).await;
    send_text(&mut b, "across workers").await;
    assert_eq!(recv_text(&mut a).await, "across workers");
    assert_eq!(recv_text(&mut c).await, "across workers");
}
