//! Topics (SPEC 9): "send this to everyone interested", fanned out natively.
//!
//! A connection subscribes to any number of topics (strings); a publish hands one encoded
//! [`Payload`] (its bytes shared, not copied) to the queue of every subscriber, without script
//! code per recipient. The table is the host's, shared by its workers: a subscriber on any
//! worker gets the message, and its socket task (on its own worker) writes it. A connection
//! leaves every topic when it closes.
//!
//! With `--cluster`, the [`Cluster`] hears of every publish (to pass it to the other nodes) and
//! of every change of a topic's local count (to subscribe to the topic's Redis channel and to
//! share the count); it delivers what other nodes publish through [`Topics::deliver`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rustc_hash::{FxHashMap, FxHashSet};

use crate::cluster::Cluster;
use crate::event::{ConnId, ConnectionHandle, SendError, Status};
use crate::payload::Payload;

/// The longest topic name, in bytes (a name is kept once per subscriber and, clustered, is
/// part of a Redis channel name).
pub const MAX_TOPIC_LEN: usize = 1024;
/// The most topics one connection may be subscribed to (the table is native memory, outside
/// the scripts' memory limit: a script that subscribes to names its peers choose stays bounded).
pub const MAX_TOPICS_PER_CONNECTION: usize = 4096;

/// The topics of one host and their subscribers.
#[derive(Default)]
pub struct Topics {
    inner: Mutex<Table>,
    cluster: OnceLock<Arc<Cluster>>,
    /// Messages published here, whatever their number of recipients (for `--metrics`).
    publishes: AtomicU64,
}

#[derive(Default)]
struct Table {
    topics: FxHashMap<Arc<str>, Subscribers>,
    /// Each connection's topics, in the order it subscribed (`ws.topics`).
    of_conn: FxHashMap<ConnId, Vec<Arc<str>>>,
    /// Topics whose local count changed since the cluster last looked.
    changed: FxHashSet<Arc<str>>,
}

impl Table {
    fn has(&self, topic: &str, conn: ConnId) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|s| s.at.contains_key(&conn))
    }
}

/// The subscribers of one topic: a list to fan out over, and where each one is in it.
#[derive(Default)]
struct Subscribers {
    list: Vec<ConnectionHandle>,
    at: FxHashMap<ConnId, usize>,
}

impl Subscribers {
    fn insert(&mut self, handle: &ConnectionHandle) -> bool {
        if self.at.contains_key(&handle.id()) {
            return false;
        }
        self.at.insert(handle.id(), self.list.len());
        self.list.push(handle.clone());
        true
    }

    fn remove(&mut self, id: ConnId) -> bool {
        let Some(i) = self.at.remove(&id) else {
            return false;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.at.insert(moved.id(), i);
        }
        true
    }
}

/// Why a topic name was refused.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "a topic is at most {MAX_TOPIC_LEN} bytes, got {}",
            topic.len()
        ));
    }
    Ok(())
}

impl Topics {
    /// Links the host to its cluster: publishes and count changes go to it from now on.
    pub(crate) fn join_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub(crate) fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Subscribes `conn` to `topic`; false if it already was, or is closed. An error if it
    /// has [`MAX_TOPICS_PER_CONNECTION`] topics already.
    pub fn subscribe(&self, conn: &ConnectionHandle, topic: &str) -> Result<bool, String> {
        let mut table = self.inner.lock().unwrap();
        // Checked under the lock: the connection's worker marks it closed before it makes it
        // leave its topics, so a subscribe from another worker cannot slip in between.
        if conn.status() == Status::Closed {
            return Ok(false);
        }
        let mine = table.of_conn.get(&conn.id()).map_or(0, Vec::len);
        if mine >= MAX_TOPICS_PER_CONNECTION {
            if table.has(topic, conn.id()) {
                return Ok(false);
            }
            return Err(format!(
                "a connection subscribes to at most {MAX_TOPICS_PER_CONNECTION} topics"
            ));
        }
        let key = match table.topics.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => Arc::from(topic),
        };
        if !table.topics.entry(key.clone()).or_default().insert(conn) {
            return Ok(false);
        }
        table
            .of_conn
            .entry(conn.id())
            .or_default()
            .push(key.clone());
        self.changed(&mut table, key);
        Ok(true)
    }

    /// Unsubscribes `conn` from `topic`; false if it was not subscribed.
    pub fn unsubscribe(&self, conn: ConnId, topic: &str) -> bool {
        let mut table = self.inner.lock().unwrap();
        let Some(key) = table.topics.get_key_value(topic).map(|(k, _)| k.clone()) else {
            return false;
        };
        if !Self::remove(&mut table, &key, conn) {
            return false;
        }
        if let Some(mine) = table.of_conn.get_mut(&conn) {
            mine.retain(|t| **t != *topic);
            if mine.is_empty() {
                table.of_conn.remove(&conn);
            }
        }
        self.changed(&mut table, key);
        true
    }

    /// Makes a closing connection leave every topic.
    pub fn leave_all(&self, conn: ConnId) {
        let mut table = self.inner.lock().unwrap();
        let Some(mine) = table.of_conn.remove(&conn) else {
            return;
        };
        for key in mine {
            Self::remove(&mut table, &key, conn);
            self.changed(&mut table, key);
        }
    }

    fn remove(table: &mut Table, key: &Arc<str>, conn: ConnId) -> bool {
        let Some(subscribers) = table.topics.get_mut(key) else {
            return false;
        };
        let removed = subscribers.remove(conn);
        if subscribers.list.is_empty() {
            table.topics.remove(key);
        }
        removed
    }

    fn changed(&self, table: &mut Table, key: Arc<str>) {
        if let Some(cluster) = self.cluster.get() {
            table.changed.insert(key);
            cluster.counts_changed();
        }
    }

    pub fn is_subscribed(&self, conn: ConnId, topic: &str) -> bool {
        self.inner.lock().unwrap().has(topic, conn)
    }

    /// The topics of `conn`, in the order it subscribed.
    pub fn topics_of(&self, conn: ConnId) -> Vec<Arc<str>> {
        let table = self.inner.lock().unwrap();
        table.of_conn.get(&conn).cloned().unwrap_or_default()
    }

    /// Subscribers of `topic` on this node.
    pub fn local_count(&self, topic: &str) -> usize {
        let table = self.inner.lock().unwrap();
        table.topics.get(topic).map_or(0, |s| s.list.len())
    }

    /// Subscribers of `topic` on every node of the cluster (this one only, unclustered).
    pub fn subscriber_count(&self, topic: &str) -> usize {
        let remote = self.cluster.get().map_or(0, |c| c.remote_count(topic));
        self.local_count(topic) + remote
    }

    /// Topics with subscribers here.
    pub fn topic_count(&self) -> usize {
        self.inner.lock().unwrap().topics.len()
    }

    pub fn publishes(&self) -> u64 {
        self.publishes.load(Ordering::Relaxed)
    }

    /// Publishes `payload` to `topic`: to every subscriber here but `except`, and through the
    /// cluster to the other nodes. Returns how many subscribers here it was handed to.
    pub fn publish(&self, topic: &str, payload: Payload, except: Option<ConnId>) -> usize {
        self.publishes.fetch_add(1, Ordering::Relaxed);
        if let Some(cluster) = self.cluster.get() {
            cluster.publish(topic, &payload);
        }
        self.deliver(topic, payload, except)
    }

    /// Hands `payload` to every subscriber of `topic` here but `except` (what another node
    /// published arrives here). Returns how many it was handed to.
    pub fn deliver(&self, topic: &str, payload: Payload, except: Option<ConnId>) -> usize {
        let table = self.inner.lock().unwrap();
        let Some(subscribers) = table.topics.get(topic) else {
            return 0;
        };
        let mut delivered = 0;
        for handle in &subscribers.list {
            if Some(handle.id()) == except {
                continue;
            }
            match handle.send(payload.clone()) {
                Ok(()) => delivered += 1,
                Err(SendError::NotOpen) => {}
                Err(SendError::QueueFull) => tracing::warn!(
                    conn = handle.id(),
                    "connection {}: the peer does not read; closing it with 1008",
                    handle.id()
                ),
            }
        }
        delivered
    }

    /// The local count of each topic that changed since the last call (0: no subscriber here
    /// any more), for the cluster.
    pub(crate) fn take_changes(&self) -> Vec<(Arc<str>, usize)> {
        let mut table = self.inner.lock().unwrap();
        let changed = std::mem::take(&mut table.changed);
        changed
            .into_iter()
            .map(|t| {
                let n = table.topics.get(&t).map_or(0, |s| s.list.len());
                (t, n)
            })
            .collect()
    }

    /// Every topic with subscribers here, and their number.
    pub(crate) fn counts(&self) -> Vec<(Arc<str>, usize)> {
        let table = self.inner.lock().unwrap();
        table
            .topics
            .iter()
            .map(|(t, s)| (t.clone(), s.list.len()))
            .collect()
    }
}
