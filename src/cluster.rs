//! A cluster of wshost processes through Redis pub/sub (SPEC 9, `--cluster redis://…`).
//!
//! - **Messages.** A topic `T` is the Redis channel `wshost:t:T`. A node subscribes to the
//!   channels of the topics that have subscribers on it (and unsubscribes when the last one
//!   leaves), so it only hears what it delivers; a publish is one `PUBLISH` (batched in
//!   pipelines). Each message carries its node's id, and a node skips its own (it delivered
//!   them locally already). Centrifugo's Redis engine does the same, a channel per topic.
//! - **Counts.** `subscriberCount` is answered from memory, never by a round trip from a
//!   callback: each node announces on `wshost:presence` what changed in its counts as it
//!   changes, and its whole table every second (the heartbeat). A node unheard of for
//!   [`EXPIRY`] is dropped with its counts. A node that (re)joins says `hello` and the others
//!   answer with their tables at once.
//! - **Faults.** Redis is never needed to serve: down at start or lost later, the node goes on
//!   with its own connections, logs the outage once, and reconnects with backoff, subscribing
//!   again. A publish made while Redis is unreachable reaches this node's subscribers only.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use rustc_hash::{FxHashMap, FxHashSet};
use tokio::sync::{Notify, mpsc};

use crate::payload::Payload;
use crate::topics::Topics;

/// How often a node announces its whole table.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node not heard of for this long is gone, and so are its subscribers.
pub const EXPIRY: Duration = Duration::from_secs(3);
/// Without any message (our own heartbeats come back) for this long, the connection is dead.
const SILENCE: Duration = Duration::from_secs(5);
/// Publishes waiting to be sent to Redis, in number and in bytes; more are dropped (counted,
/// logged).
const OUTBOX: usize = 65_536;
const OUTBOX_BYTES: usize = 64 << 20;
const PRESENCE: &str = "wshost:presence";
const TOPIC_PREFIX: &str = "wshost:t:";

/// This host's name in a cluster (`NODE_ID`): a random 20-bit number, shown as 5 hex digits.
/// Clustered, it is also the top of every connection id (ids stay below 2^53, exact in
/// JavaScript), so ids differ across nodes unless two nodes draw the same number (about one
/// chance in 100,000 for a cluster of 5).
#[derive(Clone, Debug)]
pub struct NodeId {
    number: u64,
    name: Arc<str>,
}

impl NodeId {
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        // A randomly seeded hasher is the standard library's source of random bits.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hasher.write_u32(std::process::id());
        let number = (hasher.finish() & 0xf_ffff).max(1);
        Self {
            number,
            name: format!("{number:05x}").into(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    pub fn number(&self) -> u64 {
        self.number
    }
}

/// This node's link to the others.
pub struct Cluster {
    node: Arc<str>,
    /// The URL as shown in logs (without a password).
    shown: String,
    outbox: mpsc::Sender<(Arc<str>, Payload)>,
    /// Bytes of the publishes in `outbox`.
    outbox_bytes: AtomicUsize,
    connected: AtomicBool,
    /// Raised by [`Topics`] when a local count changes.
    changes: Notify,
    remote: Mutex<FxHashMap<String, Remote>>,
    stats: Stats,
}

/// What the cluster did, for `--metrics`.
#[derive(Default)]
pub struct Stats {
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Not sent to the other nodes: Redis was unreachable, or the outbox full.
    pub dropped: AtomicU64,
}

/// What this node knows of another.
struct Remote {
    seen: Instant,
    counts: FxHashMap<String, usize>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Presence {
    node: String,
    /// `hello` (joined: send me your tables), `full` (my whole table), `delta` (what changed;
    /// 0: none left), `bye`.
    kind: String,
    #[serde(default)]
    counts: FxHashMap<String, usize>,
}

impl Cluster {
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Passes a publish on to the other nodes (dropped while Redis is unreachable).
    pub(crate) fn publish(&self, topic: &str, payload: &Payload) {
        if !self.connected() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let len = payload.len();
        let room = self.outbox_bytes.fetch_add(len, Ordering::Relaxed) < OUTBOX_BYTES;
        if !room
            || self
                .outbox
                .try_send((Arc::from(topic), payload.clone()))
                .is_err()
        {
            self.outbox_bytes.fetch_sub(len, Ordering::Relaxed);
            let before = self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if before.is_power_of_two() {
                tracing::warn!(
                    "cluster: Redis does not keep up; {} publishes so far reached this node only",
                    before + 1
                );
            }
        }
    }

    pub(crate) fn counts_changed(&self) {
        self.changes.notify_one();
    }

    /// Subscribers of `topic` on the other live nodes.
    pub(crate) fn remote_count(&self, topic: &str) -> usize {
        let remote = self.remote.lock().unwrap();
        remote
            .values()
            .filter(|r| r.seen.elapsed() < EXPIRY)
            .filter_map(|r| r.counts.get(topic))
            .sum()
    }

    /// The other nodes heard of lately.
    pub fn nodes(&self) -> usize {
        let remote = self.remote.lock().unwrap();
        remote
            .values()
            .filter(|r| r.seen.elapsed() < EXPIRY)
            .count()
    }
}

/// Joins the cluster at `url` as `node`, on `runtime`: returns at once (Redis may be down; the
/// link keeps trying). Fails only on a URL it cannot use.
pub fn start(
    url: &str,
    node: &str,
    topics: Arc<Topics>,
    runtime: &tokio::runtime::Handle,
) -> anyhow::Result<Arc<Cluster>> {
    let client = redis::Client::open(url)
        .with_context(|| format!("--cluster {}: cannot use this Redis URL", shown(url)))?;
    let (outbox, rx) = mpsc::channel(OUTBOX);
    let cluster = Arc::new(Cluster {
        node: Arc::from(node),
        shown: shown(url),
        outbox,
        outbox_bytes: AtomicUsize::new(0),
        connected: AtomicBool::new(false),
        changes: Notify::new(),
        remote: Mutex::default(),
        stats: Stats::default(),
    });
    topics.join_cluster(cluster.clone());
    runtime.spawn(run(client, cluster.clone(), topics, rx));
    Ok(cluster)
}

/// `redis://user:secret@host` → `redis://…@host`.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}…{}", &url[..scheme + 3], &url[at..]),
        _ => url.to_string(),
    }
}

/// Connects, serves, and after a failure reconnects with backoff, forever.
async fn run(
    client: redis::Client,
    cluster: Arc<Cluster>,
    topics: Arc<Topics>,
    mut outbox: mpsc::Receiver<(Arc<str>, Payload)>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut ever_connected = false;
    let mut outage_logged = false;
    loop {
        let Err(failure) =
            serve(&client, &cluster, &topics, &mut outbox, &mut ever_connected).await;
        let was_connected = cluster.connected.swap(false, Ordering::Relaxed);
        if was_connected {
            backoff = Duration::from_millis(100);
            outage_logged = false;
        }
        if !outage_logged {
            outage_logged = true;
            if ever_connected {
                tracing::warn!(
                    "cluster: lost Redis at {} ({failure}); serving this node's connections, reconnecting",
                    cluster.shown
                );
            } else {
                tracing::warn!(
                    "cluster: cannot reach Redis at {} ({failure}); serving this node's connections, retrying",
                    cluster.shown
                );
            }
        } else {
            tracing::debug!("cluster: still no Redis at {}: {failure}", cluster.shown);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

fn topic_channel(topic: &str) -> String {
    format!("{TOPIC_PREFIX}{topic}")
}

/// One connection to Redis, served until it fails (it never ends otherwise).
async fn serve(
    client: &redis::Client,
    cluster: &Cluster,
    topics: &Topics,
    outbox: &mut mpsc::Receiver<(Arc<str>, Payload)>,
    ever_connected: &mut bool,
) -> anyhow::Result<Infallible> {
    let limit = Duration::from_secs(2);
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(limit))
        .set_response_timeout(Some(limit));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let pubsub = tokio::time::timeout(limit, client.get_async_pubsub())
        .await
        .context("timed out")??;
    let (mut sink, mut stream) = pubsub.split();
    sink.subscribe(PRESENCE).await?;
    // What the topics are now; changes from here on come through `changes`.
    topics.take_changes();
    let mut subscribed: FxHashSet<Arc<str>> = FxHashSet::default();
    for (topic, _) in topics.counts() {
        sink.subscribe(topic_channel(&topic)).await?;
        subscribed.insert(topic);
    }
    // What was published while Redis was unreachable stays on this node.
    while let Ok((_, payload)) = outbox.try_recv() {
        cluster
            .outbox_bytes
            .fetch_sub(payload.len(), Ordering::Relaxed);
        cluster.stats.dropped.fetch_add(1, Ordering::Relaxed);
    }
    cluster.connected.store(true, Ordering::Relaxed);
    tracing::info!(
        "cluster: {} Redis at {} as node {}",
        if *ever_connected {
            "back on"
        } else {
            "joined through"
        },
        cluster.shown,
        cluster.node
    );
    *ever_connected = true;
    announce(&mut conn, cluster, "hello", topics.counts()).await?;
    announce(&mut conn, cluster, "full", topics.counts()).await?;

    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    let mut last_heard = Instant::now();
    let mut batch = Vec::with_capacity(256);
    loop {
        // Biased, changes first: a subscribe made before a publish (in one callback, say) is
        // sent to Redis before it.
        tokio::select! {
            biased;
            _ = cluster.changes.notified() => {
                let changes = topics.take_changes();
                for (topic, n) in &changes {
                    if *n > 0 && !subscribed.contains(topic) {
                        sink.subscribe(topic_channel(topic)).await?;
                        subscribed.insert(topic.clone());
                    } else if *n == 0 && subscribed.remove(topic) {
                        sink.unsubscribe(topic_channel(topic)).await?;
                    }
                }
                announce(&mut conn, cluster, "delta", changes).await?;
            }
            message = stream.next() => {
                let Some(message) = message else {
                    anyhow::bail!("connection closed");
                };
                last_heard = Instant::now();
                if message.get_channel_name() == PRESENCE {
                    if heard(cluster, message.get_payload_bytes()) {
                        announce(&mut conn, cluster, "full", topics.counts()).await?;
                    }
                } else if let Some(topic) = message.get_channel_name().strip_prefix(TOPIC_PREFIX) {
                    received(cluster, topics, topic, message.get_payload_bytes());
                }
            }
            n = outbox.recv_many(&mut batch, 256) => {
                if n == 0 {
                    anyhow::bail!("the host stopped");
                }
                let mut pipe = redis::pipe();
                let mut bytes = 0;
                for (topic, payload) in batch.drain(..) {
                    bytes += payload.len();
                    pipe.publish(topic_channel(&topic), encode(&cluster.node, &payload)).ignore();
                }
                cluster.outbox_bytes.fetch_sub(bytes, Ordering::Relaxed);
                pipe.query_async::<()>(&mut conn).await?;
                cluster.stats.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > SILENCE {
                    anyhow::bail!("no answer for {} s", SILENCE.as_secs());
                }
                announce(&mut conn, cluster, "full", topics.counts()).await?;
                let mut remote = cluster.remote.lock().unwrap();
                remote.retain(|_, r| r.seen.elapsed() < EXPIRY);
            }
        }
    }
}

async fn announce(
    conn: &mut redis::aio::MultiplexedConnection,
    cluster: &Cluster,
    kind: &str,
    counts: Vec<(Arc<str>, usize)>,
) -> anyhow::Result<()> {
    let presence = Presence {
        node: cluster.node.to_string(),
        kind: kind.into(),
        counts: counts
            .into_iter()
            .map(|(t, n)| (t.to_string(), n))
            .collect(),
    };
    let text = serde_json::to_string(&presence)?;
    redis::cmd("PUBLISH")
        .arg(PRESENCE)
        .arg(text)
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// Takes in another node's presence message; true if it asks for our table.
fn heard(cluster: &Cluster, bytes: &[u8]) -> bool {
    let Ok(presence) = serde_json::from_slice::<Presence>(bytes) else {
        tracing::debug!("cluster: a presence message that is not ours, ignored");
        return false;
    };
    if *presence.node == *cluster.node {
        return false;
    }
    let mut remote = cluster.remote.lock().unwrap();
    let now = Instant::now();
    match presence.kind.as_str() {
        "hello" => {
            tracing::info!("cluster: node {} joined", presence.node);
            return true;
        }
        "bye" => {
            remote.remove(&presence.node);
        }
        "full" => {
            remote.insert(
                presence.node,
                Remote {
                    seen: now,
                    counts: presence.counts,
                },
            );
        }
        _ => {
            let entry = remote.entry(presence.node).or_insert_with(|| Remote {
                seen: now,
                counts: FxHashMap::default(),
            });
            entry.seen = now;
            for (topic, n) in presence.counts {
                if n == 0 {
                    entry.counts.remove(&topic);
                } else {
                    entry.counts.insert(topic, n);
                }
            }
        }
    }
    false
}

/// A message on the wire: kind (`t` text, `b` binary), the node's id and a space, the data.
fn encode(node: &str, payload: &Payload) -> Vec<u8> {
    let (kind, data) = match payload {
        Payload::Text(t) => (b't', t.as_str().as_bytes()),
        Payload::Binary(b) => (b'b', &b[..]),
    };
    let mut out = Vec::with_capacity(2 + node.len() + data.len());
    out.push(kind);
    out.extend_from_slice(node.as_bytes());
    out.push(b' ');
    out.extend_from_slice(data);
    out
}

fn decode(bytes: &[u8]) -> Option<(&[u8], Result<Payload, ()>)> {
    let (&kind, rest) = bytes.split_first()?;
    let space = rest.iter().position(|&b| b == b' ')?;
    let (node, data) = (&rest[..space], &rest[space + 1..]);
    let payload = match kind {
        b't' => std::str::from_utf8(data).map(Payload::text).map_err(|_| ()),
        b'b' => Ok(Payload::binary(bytes::Bytes::copy_from_slice(data))),
        _ => Err(()),
    };
    Some((node, payload))
}

/// Delivers what another node published to `topic` to this node's subscribers.
fn received(cluster: &Cluster, topics: &Topics, topic: &str, bytes: &[u8]) {
    match decode(bytes) {
        Some((node, _)) if node == cluster.node.as_bytes() => {}
        Some((_, Ok(payload))) => {
            cluster.stats.received.fetch_add(1, Ordering::Relaxed);
            topics.deliver(topic, payload, None);
        }
        _ => tracing::debug!("cluster: a message on {topic} that is not ours, ignored"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_keeps_its_kind_node_and_data() {
        let text = encode("n1", &Payload::text("hi there"));
        let (node, payload) = decode(&text).unwrap();
        assert_eq!(node, b"n1");
        assert_eq!(payload, Ok(Payload::text("hi there")));
        let binary = encode("n2", &Payload::binary(vec![0u8, 32, 255]));
        let (node, payload) = decode(&binary).unwrap();
        assert_eq!(node, b"n2");
        assert_eq!(payload, Ok(Payload::binary(vec![0u8, 32, 255])));
        assert!(decode(b"").is_none());
        assert_eq!(decode(b"tn1 \xff").unwrap().1, Err(()));
    }

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(shown("redis://u:secret@h:1/0"), "redis://…@h:1/0");
        assert_eq!(shown("redis://h:1"), "redis://h:1");
    }
}
