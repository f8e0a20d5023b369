//! Topics (SPEC 9) through the real binary and real clients: subscribe, publish to everyone
//! but the sender or to all, counts, leaving on close, and subscribers on several workers.

mod common;

use common::*;
use std::time::Duration;

#[tokio::test]
async fn a_publish_reaches_every_subscriber_but_the_sender() {
    let host = Host::start(&fixture("topics.rhai"));
    let url = host.url("/");
    let (mut a, mut b, mut c) = (
        connect(&url).await,
        connect(&url).await,
        connect(&url).await,
    );
    assert_eq!(ask(&mut a, "sub room").await, "sub room true");
    assert_eq!(
        ask(&mut a, "sub room").await,
        "sub room false",
        "already subscribed"
    );
    assert_eq!(ask(&mut b, "sub room").await, "sub room true");
    assert_eq!(ask(&mut a, "sub news").await, "sub news true");
    assert_eq!(ask(&mut a, "topics").await, r#"topics ["room", "news"]"#);
    assert_eq!(ask(&mut a, "is room").await, "is room true");
    assert_eq!(ask(&mut c, "is room").await, "is room false");
    assert_eq!(ask(&mut c, "count room").await, "count room 2");
    assert_eq!(ask(&mut c, "count nobody").await, "count nobody 0");

    // ws.publish: every subscriber but the sender (a subscriber itself here).
    assert_eq!(ask(&mut a, "pub room hello").await, "pub 1");
    assert_eq!(recv_text(&mut b).await, "hello");
    // A sender need not be a subscriber; wss.publish reaches the sender too.
    assert_eq!(ask(&mut c, "pub room from-c").await, "pub 2");
    assert_eq!(recv_text(&mut a).await, "from-c");
    assert_eq!(recv_text(&mut b).await, "from-c");
    assert_eq!(ask(&mut b, "all room everyone").await, "everyone");
    assert_eq!(recv_text(&mut b).await, "all 2");
    assert_eq!(recv_text(&mut a).await, "everyone");
    // Data other than a string is sent as JSON, as `send` does.
    send_text(&mut c, "json room").await;
    assert_eq!(recv_text(&mut c).await, "json 2");
    let json: serde_json::Value = serde_json::from_str(&recv_text(&mut a).await).unwrap();
    assert_eq!(json["n"], 1);
    let same: serde_json::Value = serde_json::from_str(&recv_text(&mut b).await).unwrap();
    assert_eq!(same, json);
    // Nothing else arrived anywhere (c is no subscriber).
    assert_silent(&mut c, Duration::from_millis(100)).await;

    assert_eq!(ask(&mut a, "unsub room").await, "unsub room true");
    assert_eq!(ask(&mut a, "unsub room").await, "unsub room false");
    assert_eq!(ask(&mut c, "pub room only-b").await, "pub 1");
    assert_eq!(recv_text(&mut b).await, "only-b");
    assert_silent(&mut a, Duration::from_millis(100)).await;

    // A closing connection leaves its topics before its onTerminate, which publishes a
    // goodbye to "room": b (gone) is not counted, a (back in the room) gets it.
    assert_eq!(ask(&mut a, "sub room").await, "sub room true");
    b.close(None).await.unwrap();
    let bye = recv_text(&mut a).await;
    assert!(bye.starts_with("bye ") && bye.ends_with(" 0"), "{bye}");
    assert_eq!(ask(&mut c, "count room").await, "count room 1");
}

/// With `--workers 2` connections are spread over two threads: a publish on one reaches the
/// subscribers of the other.
#[tokio::test]
async fn subscribers_on_every_worker_get_a_publish() {
    let host = Host::start_with(&fixture("topics.rhai"), &["--workers", "2"]);
    let url = host.url("/");
    let mut clients = Vec::new();
    for _ in 0..6 {
        let mut ws = connect(&url).await;
        assert_eq!(ask(&mut ws, "sub t").await, "sub t true");
        clients.push(ws);
    }
    let mut sender = connect(&url).await;
    assert_eq!(ask(&mut sender, "count t").await, "count t 6");
    for i in 0..20 {
        assert_eq!(ask(&mut sender, &format!("pub t m{i}")).await, "pub 6");
    }
    for ws in &mut clients {
        for i in 0..20 {
            assert_eq!(
                recv_text(ws).await,
                format!("m{i}"),
                "in order, nothing lost"
            );
        }
    }
}

#[tokio::test]
async fn topic_names_and_topics_per_connection_are_bounded() {
    let host = Host::start(&fixture("topics.rhai"));
    let mut ws = connect(&host.url("/")).await;
    let long = "x".repeat(2000);
    send_text(&mut ws, &format!("sub {long}")).await;
    // The callback fails (logged); the connection stays usable.
    assert!(
        host.wait_stderr("a topic is at most 1024 bytes", TIMEOUT)
            .is_some(),
        "{}",
        host.stderr()
    );
    assert_eq!(ask(&mut ws, "sub ok").await, "sub ok true");
    // So is the number of topics of one connection.
    assert_eq!(ask(&mut ws, "many 4000").await, "many 4001");
    send_text(&mut ws, "many 5000").await;
    assert!(
        host.wait_stderr("a connection subscribes to at most 4096 topics", TIMEOUT)
            .is_some(),
        "{}",
        host.stderr()
    );
    assert_eq!(ask(&mut ws, "is m4000").await, "is m4000 true");
    assert_eq!(ask(&mut ws, "is m4095").await, "is m4095 false");
}

/// A subscriber that stops reading is closed with 1008 once its queue is full (as for any
/// `send`); the publisher and the other subscribers go on, and memory stays bounded.
#[tokio::test]
async fn a_subscriber_that_never_reads_is_closed_and_memory_stays_bounded() {
    let host = Host::start(&fixture("topics.rhai"));
    let url = host.url("/");
    let (mut slow, mut fine, mut publisher) = (
        connect(&url).await,
        connect(&url).await,
        connect(&url).await,
    );
    assert_eq!(ask(&mut slow, "sub room").await, "sub room true");
    assert_eq!(ask(&mut fine, "sub room").await, "sub room true");
    let before = host.rss_kib();
    // 400 × 100 KB = 40 MB published; `slow` reads nothing from here on.
    let big = "x".repeat(100_000);
    let mut delivered_to_two = 0;
    for _ in 0..400 {
        let answer = ask(&mut publisher, &format!("pub room {big}")).await;
        if answer == "pub 2" {
            delivered_to_two += 1;
        }
        assert_eq!(recv_text(&mut fine).await.len(), big.len());
    }
    assert!(
        delivered_to_two < 400,
        "the slow subscriber was never dropped"
    );
    assert!(
        host.wait_stderr("the peer does not read; closing it with 1008", TIMEOUT)
            .is_some(),
        "{}",
        host.stderr()
    );
    let grown = host.rss_kib().saturating_sub(before);
    assert!(grown < 100 * 1024, "RSS grew by {grown} KiB");
    // It leaves the topic when it is closed (its close frame waits up to 2 s for the peer).
    ask_until(&mut publisher, "count room", "count room 1").await;
    drop(slow);
}
