//! What flows between the network side and a script worker.
//!
//! Socket tasks send [`Event`]s to the worker that owns the server; the worker answers with
//! [`Command`]s through a [`ConnectionHandle`]. A handle is an id plus a sender, so a script can
//! hold it whichever thread (or, later, machine) owns the socket. Nothing here knows about Rhai
//! or tungstenite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, oneshot};

use crate::cancel::Cancel;
use crate::payload::Payload;

/// Identifies a connection across the whole process.
pub type ConnId = u64;
/// Identifies a server across the whole process.
pub type ServerId = u64;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id, unique in this process (connections and servers share the sequence); in a
/// cluster, unique across its nodes (see [`start_ids_at`]).
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Makes the ids from now on start with `prefix` (bits 32 and up): a clustered node's number,
/// so its connection ids differ from every other node's.
pub fn start_ids_at(prefix: u64) {
    let low = NEXT_ID.load(Ordering::Relaxed) & 0xffff_ffff;
    NEXT_ID.store(prefix << 32 | low, Ordering::Relaxed);
}

/// The life of a connection as scripts see it (`ws.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Status {
    Connecting = 0,
    Connected = 1,
    Closing = 2,
    Closed = 3,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "Connecting",
            Self::Connected => "Connected",
            Self::Closing => "Closing",
            Self::Closed => "Closed",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Connecting,
            1 => Self::Connected,
            2 => Self::Closing,
            _ => Self::Closed,
        }
    }
}

/// What a worker asks a socket task to do.
#[derive(Debug)]
pub enum Command {
    Send(Payload),
    Close {
        code: u16,
        reason: String,
    },
    /// Keepalive: send a ping, or close if the peer has been silent too long (queued by the
    /// loop's keepalive timer, never by scripts).
    Ping,
    /// Write out what tungstenite queued itself (pongs); queued by the socket's reader.
    Flush,
}

/// Why a `send` did not queue the message.
#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    /// The connection is closing or closed; the message is dropped, as browsers do.
    NotOpen,
    /// The peer does not read fast enough; the connection is being closed with 1008.
    QueueFull,
}

struct Shared {
    // flume, not tokio's mpsc: its queue grows as used, where tokio allocates a block of
    // 32 slots per channel up front (1.3 KiB per idle connection).
    commands: flume::Sender<Command>,
    status: AtomicU8,
    /// Cancelled when the outgoing queue overflowed: the socket task closes with 1008. (Also
    /// when a client is closed before it connected: its connect gives up.)
    overflow: Cancel,
    /// Messages the socket task may still hand to the worker before it stops reading (an
    /// atomic count, not a semaphore: giving room back is on every message's path, and
    /// takes no lock here), and the socket task's wait for room.
    room: AtomicUsize,
    room_max: usize,
    room_freed: Notify,
    /// Bytes queued for sending and not written yet, and the most allowed.
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
}

/// A connection as the script side holds it: an id plus a way to reach its socket task.
#[derive(Clone)]
pub struct ConnectionHandle {
    id: ConnId,
    shared: Arc<Shared>,
}

/// The socket task's end of a [`ConnectionHandle`].
pub struct ConnectionPort {
    pub commands: flume::Receiver<Command>,
    pub handle: ConnectionHandle,
}

impl ConnectionHandle {
    /// A new handle with an outgoing queue of `limits.send_queue` messages and
    /// `limits.send_queue_bytes` bytes, and at most `limits.inflight` incoming messages
    /// waiting for the worker.
    pub fn channel(status: Status, limits: &crate::net::NetConfig) -> ConnectionPort {
        let (queue, inflight) = (limits.send_queue, limits.inflight);
        let (tx, rx) = flume::bounded(queue.max(1));
        let handle = ConnectionHandle {
            id: next_id(),
            shared: Arc::new(Shared {
                commands: tx,
                status: AtomicU8::new(status as u8),
                overflow: Cancel::default(),
                room: AtomicUsize::new(inflight.max(1)),
                room_max: inflight.max(1),
                room_freed: Notify::new(),
                queued_bytes: AtomicUsize::new(0),
                max_queued_bytes: limits.send_queue_bytes,
            }),
        };
        ConnectionPort {
            commands: rx,
            handle,
        }
    }

    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn status(&self) -> Status {
        Status::from_u8(self.shared.status.load(Ordering::Acquire))
    }

    pub fn set_status(&self, status: Status) {
        self.shared.status.store(status as u8, Ordering::Release);
    }

    /// Moves from `Connecting` to `Connected` (a `terminate()` meanwhile keeps `Closing`).
    pub fn connected(&self) {
        let _ = self.shared.status.compare_exchange(
            Status::Connecting as u8,
            Status::Connected as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Moves to `Closing` unless already closing or closed; true if it moved.
    pub fn begin_closing(&self) -> bool {
        let mut cur = self.shared.status.load(Ordering::Acquire);
        loop {
            if cur >= Status::Closing as u8 {
                return false;
            }
            match self.shared.status.compare_exchange(
                cur,
                Status::Closing as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Asks the socket task for a keepalive ping; dropped if its queue is full (it is being
    /// closed as too slow then).
    pub(crate) fn ping(&self) {
        let _ = self.shared.commands.try_send(Command::Ping);
    }

    /// Asks the socket task to write out what tungstenite queued (pongs); dropped if its queue
    /// is full.
    pub(crate) fn flush(&self) {
        let _ = self.shared.commands.try_send(Command::Flush);
    }

    /// Queues a message without waiting. Messages sent while connecting are kept in order.
    pub fn send(&self, payload: Payload) -> Result<(), SendError> {
        if self.status() >= Status::Closing {
            return Err(SendError::NotOpen);
        }
        let len = payload.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // Too slow is a queue that is full already, not a large message: a message goes to a
        // peer whose queue holds less than the bound, however large it is (the host accepted
        // it; a broadcast shares its bytes). So a queue holds at most the bound plus one
        // message.
        if before >= self.shared.max_queued_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.overflowed();
            return Err(SendError::QueueFull);
        }
        match self.shared.commands.try_send(Command::Send(payload)) {
            Ok(()) => Ok(()),
            Err(flume::TrySendError::Disconnected(_)) => {
                self.sent(len);
                Err(SendError::NotOpen)
            }
            Err(flume::TrySendError::Full(_)) => {
                self.sent(len);
                self.overflowed();
                Err(SendError::QueueFull)
            }
        }
    }

    /// The peer does not read: the socket task closes it with 1008; later sends are dropped.
    fn overflowed(&self) {
        self.begin_closing();
        self.shared.overflow.cancel();
    }

    /// Called by the writer once a message of `len` bytes is out of the queue.
    pub(crate) fn sent(&self, len: usize) {
        self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
    }

    /// Starts the closing handshake with `code` and `reason` (already validated).
    /// Returns false if the connection was already closing.
    pub fn close(&self, code: u16, reason: String) -> bool {
        let connecting = self.status() == Status::Connecting;
        if !self.begin_closing() {
            return false;
        }
        if connecting {
            // A client still connecting: nothing is open to close; its connect gives up.
            self.shared.overflow.cancel();
            return true;
        }
        if let Err(flume::TrySendError::Full(_)) = self
            .shared
            .commands
            .try_send(Command::Close { code, reason })
        {
            // The peer is not reading; closing it is what the overflow path does anyway.
            self.shared.overflow.cancel();
        }
        true
    }

    pub(crate) fn overflow(&self) -> &Cancel {
        &self.shared.overflow
    }

    /// Takes room for one more message of this connection if the worker has it.
    pub(crate) fn try_acquire_inflight(&self) -> bool {
        self.shared
            .room
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Waits until the worker has room for one more message of this connection.
    pub(crate) async fn acquire_inflight(&self) {
        loop {
            let freed = self.shared.room_freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so room given back meanwhile is not missed.
            freed.as_mut().enable();
            if self.try_acquire_inflight() {
                return;
            }
            freed.await;
        }
    }

    /// True when the worker has handled every message of this connection it was given.
    pub(crate) fn worker_idle(&self) -> bool {
        self.shared.room.load(Ordering::Acquire) >= self.shared.room_max
    }

    /// Called by the worker once it has handled a message of this connection.
    pub fn message_done(&self) {
        if self.shared.room.fetch_add(1, Ordering::AcqRel) == 0 {
            self.shared.room_freed.notify_one();
        }
    }
}

/// The HTTP upgrade request of a new connection, as `onConnection` sees it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Request target: path and query (`/chat?room=1`).
    pub url: String,
    /// Headers by lower-case name, in arrival order (a name may repeat).
    pub headers: Vec<(String, String)>,
    /// Decoded query parameters, in order (a name may repeat).
    pub query: Vec<(String, String)>,
    /// The peer's IP address.
    pub remote_address: String,
}

/// A server's answer to a connection request.
#[derive(Debug)]
pub enum Verdict {
    Accept,
    /// Refuse with this HTTP status.
    Refuse(u16),
}

/// Kinds of error that reach `onError`, with their `errCode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// A callback raised an error.
    Script = 1,
    /// A callback ran past its operation or time budget.
    Budget = 2,
    /// The scripts' objects hold more than the memory limit.
    Memory = 3,
    /// A message for a `dataType: "object"` handler was not valid JSON.
    Json = 10,
    /// The socket failed (reset, I/O error).
    Io = 20,
    /// The peer broke the WebSocket protocol.
    Protocol = 21,
    /// The peer sent a message over the size limit.
    TooBig = 22,
    /// The peer did not read its messages fast enough.
    SlowPeer = 23,
    /// A client could not connect (refused, DNS, timeout).
    Connect = 24,
    /// A client's TLS handshake failed.
    Tls = 25,
    /// The server refused a client's upgrade request (HTTP status).
    Refused = 26,
    /// A server could not listen.
    Listen = 30,
}

impl ErrorKind {
    pub fn component(self) -> &'static str {
        match self {
            Self::Script | Self::Budget | Self::Memory => "wshost.script",
            Self::Json => "wshost.json",
            Self::Io
            | Self::Protocol
            | Self::TooBig
            | Self::SlowPeer
            | Self::Connect
            | Self::Tls
            | Self::Refused
            | Self::Listen => "wshost.net",
        }
    }
}

/// What socket tasks (and the host) tell a worker.
#[derive(Debug)]
pub enum Event {
    /// A client asks to connect to `server`; the worker answers through `reply`.
    Connect {
        server: ServerId,
        conn: ConnectionHandle,
        request: Box<Request>,
        reply: oneshot::Sender<Verdict>,
    },
    /// The handshake of an accepted connection completed.
    Open {
        conn: ConnId,
    },
    Message {
        conn: ConnId,
        payload: Payload,
    },
    /// A network failure of the connection; `Closed` follows.
    Error {
        conn: ConnId,
        kind: ErrorKind,
        message: String,
    },
    /// The connection is gone; the last event of a connection.
    Closed {
        conn: ConnId,
        code: u16,
        reason: String,
        /// The closing handshake completed (the peer's close frame came).
        clean: bool,
    },
    /// A server created by the worker is listening (queued by the worker itself).
    Listening {
        server: ServerId,
    },
    /// A server could not start (queued by the worker itself).
    ListenFailed {
        server: ServerId,
        message: String,
    },
    /// Stop gracefully: close every connection with 1001 and finish.
    Shutdown,
    /// Script files changed on disk (hot reload).
    Reload {
        files: Vec<std::path::PathBuf>,
    },
}

impl std::fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnectionHandle({}, {:?})", self.id, self.status())
    }
}
