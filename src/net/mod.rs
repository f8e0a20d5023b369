//! The network side: listening sockets, HTTP upgrades and one task pair per connection.
//!
//! It owns every socket and never runs script code: it turns what arrives into [`Event`]s for
//! the worker that owns the server, and carries out the [`Command`]s that come back.
//!
//! [`Event`]: crate::event::Event
//! [`Command`]: crate::event::Command

mod client;
mod connection;
mod keepalive;
mod listener;
mod static_files;

pub use client::{ClientRequest, tls_config};
pub use listener::{ConnTable, ListenOptions, Network, Route, tls_acceptor};

use std::path::PathBuf;
use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Settings of the network side that are the same for every server of a host.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Largest incoming message; over it the connection is closed with 1009.
    pub max_message_size: usize,
    /// Largest incoming frame.
    pub max_frame_size: usize,
    /// Read buffer allocated per connection.
    pub read_buffer_size: usize,
    /// Outgoing messages queued per connection before the peer counts as too slow (1008).
    pub send_queue: usize,
    /// Outgoing bytes queued per connection before the peer counts as too slow (1008).
    pub send_queue_bytes: usize,
    /// How often to ping a connection (None: never).
    pub ping_interval: Option<Duration>,
    /// A connection from which nothing (not even a pong) came for this long is dropped.
    pub idle_timeout: Option<Duration>,
    /// Largest HTTP request head (request line and headers) of an upgrade.
    pub max_header_bytes: usize,
    /// Incoming messages per connection waiting for the worker before reading pauses.
    pub inflight: usize,
    /// Time allowed for the HTTP request and the script's `onConnection` answer.
    pub handshake_timeout: Duration,
    /// Time allowed for the peer to answer a close frame.
    pub close_timeout: Duration,
    /// A PEM file of extra certificate authorities that clients (`wss://`) trust.
    pub extra_ca: Option<PathBuf>,
}

impl NetConfig {
    fn websocket(&self) -> WebSocketConfig {
        let config = WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_size)
            .max_message_size(Some(self.max_message_size))
            .max_frame_size(Some(self.max_frame_size));
        // What tungstenite may hold unwritten: our own sends come from a queue already bounded
        // (one message over the bound goes through), but it queues the answers to a peer's
        // pings itself, and a peer that pings without reading would grow them without end.
        // Over this, writing fails and the peer is closed as too slow (1008).
        let most = config.write_buffer_size
            + self.send_queue_bytes.max(self.max_message_size)
            + (64 << 10);
        config.max_write_buffer_size(most)
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            read_buffer_size: 1 << 10,
            send_queue: 1024,
            send_queue_bytes: 8 << 20,
            ping_interval: Some(Duration::from_secs(20)),
            idle_timeout: Some(Duration::from_secs(60)),
            max_header_bytes: 16 << 10,
            inflight: 64,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(2),
            extra_ca: None,
        }
    }
}
