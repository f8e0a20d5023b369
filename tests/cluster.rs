//! A cluster of two real wshost processes through a real `redis-server` (started here on a
//! free port, never a mock): publishes cross nodes, counts are cluster-wide, and Redis going
//! away (at start, or while running) never stops a node from serving its own clients.

mod common;

use common::*;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` on 127.0.0.1:`port`, with nothing saved to disk; killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// None when `redis-server` is not installed.
    fn start(port: u16) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Redis { child, port };
        let deadline = Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }

    fn url(&self) -> String {
        url(self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}")
}

fn have_redis(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip(
            test,
            "redis-server is not installed (Debian package redis-server)",
        );
    }
    found
}

fn node(redis_url: &str) -> Host {
    Host::start_with(&fixture("topics.rhai"), &["--cluster", redis_url])
}

fn wait_log(host: &Host, needle: &str) {
    assert!(
        host.wait_stderr(needle, TIMEOUT).is_some(),
        "no {needle:?} in the log:\n{}",
        host.stderr()
    );
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_subscribers_on_the_other() {
    if !have_redis("a_publish_on_one_node_reaches_subscribers_on_the_other") {
        return;
    }
    let redis = Redis::start(free_port()).unwrap();
    let (node_a, node_b) = (node(&redis.url()), node(&redis.url()));
    wait_log(&node_a, "joined through Redis");
    wait_log(&node_b, "joined through Redis");
    let mut a = connect(&node_a.url("/")).await;
    let mut b = connect(&node_b.url("/")).await;

    // Each node has its own NODE_ID, and connection ids differ across nodes.
    let (who_a, who_b) = (ask(&mut a, "whoami").await, ask(&mut b, "whoami").await);
    let (id_a, id_b) = (
        who_a.split_once(' ').unwrap(),
        who_b.split_once(' ').unwrap(),
    );
    assert_ne!(id_a.0, id_b.0, "NODE_IDs");
    assert_ne!(id_a.1, id_b.1, "connection ids");

    assert_eq!(ask(&mut a, "sub room").await, "sub room true");
    assert_eq!(ask(&mut b, "sub room").await, "sub room true");
    // subscriberCount counts both nodes.
    ask_until(&mut a, "count room", "count room 2").await;
    ask_until(&mut b, "count room", "count room 2").await;

    // ws.publish: no other subscriber on node A; the one on node B gets it.
    assert_eq!(ask(&mut a, "pub room hello").await, "pub 0");
    assert_eq!(recv_text(&mut b).await, "hello");
    // wss.publish on B: its own subscriber (the sender) and A's.
    assert_eq!(ask(&mut b, "all room both").await, "both");
    assert_eq!(recv_text(&mut b).await, "all 1");
    assert_eq!(recv_text(&mut a).await, "both");
    // JSON crosses as text.
    assert_eq!(ask(&mut b, "json room").await, "json 0");
    let json: serde_json::Value = serde_json::from_str(&recv_text(&mut a).await).unwrap();
    assert_eq!(json["n"], 1);
    // A node does not deliver its own publish twice (once locally, once back from Redis).
    assert_silent(&mut a, Duration::from_millis(300)).await;
    assert_silent(&mut b, Duration::from_millis(300)).await;

    // Leaving is seen across nodes too, and a closed connection leaves.
    b.close(None).await.unwrap();
    ask_until(&mut a, "count room", "count room 1").await;
}

#[tokio::test]
async fn redis_going_away_never_stops_a_node() {
    if !have_redis("redis_going_away_never_stops_a_node") {
        return;
    }
    // Redis down at start: node A serves its own clients, and keeps trying.
    let port = free_port();
    let node_a = node(&url(port));
    let mut a1 = connect(&node_a.url("/")).await;
    let mut a2 = connect(&node_a.url("/")).await;
    assert_eq!(ask(&mut a1, "sub room").await, "sub room true");
    assert_eq!(ask(&mut a2, "pub room local").await, "pub 1");
    assert_eq!(recv_text(&mut a1).await, "local");
    wait_log(&node_a, "cannot reach Redis");

    // Redis comes: A joins by itself; B joins too, and they talk.
    let redis = Redis::start(port).unwrap();
    wait_log(&node_a, "joined through Redis");
    let node_b = node(&redis.url());
    wait_log(&node_b, "joined through Redis");
    let mut b1 = connect(&node_b.url("/")).await;
    assert_eq!(ask(&mut b1, "sub room").await, "sub room true");
    ask_until(&mut a2, "count room", "count room 2").await;
    assert_eq!(ask(&mut a2, "pub room first").await, "pub 1");
    assert_eq!(recv_text(&mut a1).await, "first");
    assert_eq!(recv_text(&mut b1).await, "first");

    // Redis lost while running: each node still serves its own clients; logged once.
    drop(redis);
    wait_log(&node_a, "lost Redis");
    wait_log(&node_b, "lost Redis");
    assert_eq!(ask(&mut a2, "pub room during").await, "pub 1");
    assert_eq!(recv_text(&mut a1).await, "during");
    // What was published during the outage stays on its node.
    assert_silent(&mut b1, Duration::from_millis(300)).await;

    // Redis back on the same port: both nodes reconnect and subscribe again, by themselves.
    let _redis = Redis::start(port).unwrap();
    wait_log(&node_a, "back on Redis");
    wait_log(&node_b, "back on Redis");
    assert_eq!(ask(&mut a2, "pub room again").await, "pub 1");
    assert_eq!(recv_text(&mut a1).await, "again");
    assert_eq!(recv_text(&mut b1).await, "again");
    ask_until(&mut b1, "count room", "count room 2").await;

    for host in [&node_a, &node_b] {
        let log = host.stderr();
        assert_eq!(log.matches("lost Redis").count(), 1, "logged once:\n{log}");
    }
    assert_eq!(
        node_a.stderr().matches("cannot reach Redis").count(),
        1,
        "logged once"
    );
}

/// The README's two-node chat: a client on each node, in the same room, hear each other.
#[tokio::test]
async fn the_chat_spans_two_nodes() {
    if !have_redis("the_chat_spans_two_nodes") {
        return;
    }
    let redis = Redis::start(free_port()).unwrap();
    let args = ["--cluster", &redis.url()];
    let (node_a, node_b) = (
        Host::start_with("scripts/chat.rhai", &args),
        Host::start_with("scripts/chat.rhai", &args),
    );
    wait_log(&node_a, "joined through Redis");
    wait_log(&node_b, "joined through Redis");
    let mut a = connect(&node_a.url("/?name=ann&room=ops")).await;
    assert_eq!(recv_text(&mut a).await, "Welcome on the chat!");
    // Wait until node B knows that node A has a member in "ops" (its channel is subscribed).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = connect(&node_b.url("/?name=bo&room=ops")).await;
    assert_eq!(recv_text(&mut b).await, "Welcome on the chat!");
    assert_eq!(recv_text(&mut a).await, "New client connected");
    send_text(&mut a, r#"{"name":"ann","text":"hi from node A"}"#).await;
    assert_eq!(
        recv_text(&mut b).await,
        r#"{"name":"ann","text":"hi from node A"}"#
    );
    send_text(&mut b, "and back").await;
    assert_eq!(recv_text(&mut a).await, "and back");
}

/// A node that dies without a word (SIGKILL) is forgotten with its subscribers; the
/// cluster is also joined through `WSHOST_CLUSTER`.
#[tokio::test]
async fn a_dead_nodes_subscribers_stop_counting() {
    if !have_redis("a_dead_nodes_subscribers_stop_counting") {
        return;
    }
    let redis = Redis::start(free_port()).unwrap();
    let node_a = node(&redis.url());
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["run", &fixture("topics.rhai"), "--port", "0"])
        .env("WSHOST_CLUSTER", redis.url());
    let node_b = Host::start_command(cmd, TIMEOUT);
    wait_log(&node_a, "joined through Redis");
    wait_log(&node_b, "joined through Redis");
    let mut a = connect(&node_a.url("/")).await;
    let mut b = connect(&node_b.url("/")).await;
    assert_eq!(ask(&mut a, "sub room").await, "sub room true");
    assert_eq!(ask(&mut b, "sub room").await, "sub room true");
    ask_until(&mut a, "count room", "count room 2").await;
    drop(node_b); // SIGKILL: no goodbye, no last announcement; forgotten after 3 s of silence
    let killed = Instant::now();
    ask_until(&mut a, "count room", "count room 1").await;
    let forgotten = killed.elapsed();
    assert!(
        forgotten < Duration::from_secs(8),
        "forgotten after {forgotten:?}"
    );
}

/// `/metrics` counts topics, publishes and what crossed through Redis.
#[tokio::test]
async fn metrics_count_topics_and_the_cluster() {
    if !have_redis("metrics_count_topics_and_the_cluster") {
        return;
    }
    let redis = Redis::start(free_port()).unwrap();
    let (node_a, mport) = start_with_metrics(&fixture("topics.rhai"), &["--cluster", &redis.url()]);
    let node_b = node(&redis.url());
    wait_log(&node_a, "joined through Redis");
    wait_log(&node_b, "joined through Redis");
    let mut a = connect(&node_a.url("/")).await;
    let mut b = connect(&node_b.url("/")).await;
    assert_eq!(ask(&mut a, "sub t1").await, "sub t1 true");
    assert_eq!(ask(&mut a, "sub t2").await, "sub t2 true");
    assert_eq!(ask(&mut b, "sub t1").await, "sub t1 true");
    ask_until(&mut b, "count t1", "count t1 2").await;
    assert_eq!(ask(&mut b, "pub t1 x").await, "pub 0");
    assert_eq!(recv_text(&mut a).await, "x");
    assert_eq!(ask(&mut a, "pub t1 y").await, "pub 0");
    assert_eq!(recv_text(&mut b).await, "y");

    let (_, metrics) = get(mport, "/metrics").await;
    let expect = [
        ("wshost_topics", 2.0),
        ("wshost_publishes_total", 1.0),
        ("wshost_cluster_publishes_sent_total", 1.0),
        ("wshost_cluster_publishes_received_total", 1.0),
        ("wshost_cluster_nodes", 2.0),
        ("wshost_cluster_redis_connected", 1.0),
    ];
    for (name, value) in expect {
        assert_eq!(sample(&metrics, name), Some(value), "{name} in:\n{metrics}");
    }
}

#[test]
fn a_bad_cluster_url_is_refused_at_start() {
    let (status, _, stderr) = run_cli(&[
        "run",
        &fixture("topics.rhai"),
        "--port",
        "0",
        "--cluster",
        "http://nope",
    ]);
    assert!(!status.success());
    assert!(
        stderr.contains("--cluster http://nope: cannot use this Redis URL"),
        "{stderr}"
    );
}
