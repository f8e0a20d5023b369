//! One WebSocket connection (accepted or opened): a reader and a writer side by side.
//!
//! The reader turns frames into events (pausing when the worker is behind, which pushes back
//! on the peer through TCP); the writer carries out commands and keeps the connection alive
//! with pings. Neither waits on a script. The pair reports `Open` first and `Closed` last,
//! exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cancel::Cancel;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

use super::NetConfig;
use crate::event::{Command, ConnectionHandle, ErrorKind, Event};
use crate::event_loop::Events;
use crate::payload::{Payload, Text};

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

/// What the reader and the writer of a connection tell each other (flags, no clock reads).
struct Activity {
    /// Something came from the peer since the writer last looked (at each keepalive tick).
    heard: AtomicBool,
    /// The writer is waiting for the socket to take what it writes: the peer is not reading.
    writing: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Self {
            heard: AtomicBool::new(false),
            writing: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        self.heard.store(true, Ordering::Relaxed);
    }

    /// True if something came since the last call.
    fn take(&self) -> bool {
        self.heard.swap(false, Ordering::Relaxed)
    }
}

/// Pings a peer may send while the writer waits for it to read, before it is closed as too
/// slow (1008): tungstenite queues a pong for each, and a peer that pings without reading
/// would otherwise be kept forever (its unsent pongs are bounded by `max_write_buffer_size`).
const PINGS_WHILE_STALLED: u32 = 1024;

/// How the reader ended.
enum ReadEnd {
    /// The stream ended; `peer_close` is the peer's close frame if one came.
    Closed { peer_close: Option<(u16, String)> },
    /// The peer broke the protocol or the socket failed; `code` is what we close with.
    Failed {
        kind: ErrorKind,
        code: u16,
        message: String,
    },
    /// The writer ended the connection (overflow, idle, close timeout).
    Stopped { peer_close: Option<(u16, String)> },
}

/// How the writer ended.
enum WriteEnd {
    /// The reader finished first (peer closed or failed).
    ReaderDone,
    /// The script closed the connection with this code.
    SentClose(u16, String),
    /// The outgoing queue overflowed: the peer does not read.
    Overflow,
    /// Nothing came from the peer for the idle timeout.
    Idle(Duration),
}

/// Runs the connection until it is closed, then sends `Closed`.
pub(crate) async fn run<S>(
    ws: WebSocketStream<S>,
    handle: ConnectionHandle,
    commands: flume::Receiver<Command>,
    events: Events,
    config: &NetConfig,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = handle.id();
    handle.connected();
    if !events.deliver(Event::Open { conn: id }).await {
        return;
    }
    let (sink, stream) = ws.split();
    let _keepalive = config
        .ping_interval
        .map(|every| super::keepalive::Keepalive::register(&handle, every));
    let done = Cancel::default();
    let activity = Activity::new();
    let reader = async {
        let end = read_loop(stream, &handle, &events, &done, &activity).await;
        done.cancel();
        end
    };
    let writer = write_loop(sink, commands, &handle, &done, &activity, config);
    let (read_end, (write_end, mut sink, mut commands)) = tokio::join!(reader, writer);

    let clean = matches!(
        read_end,
        ReadEnd::Closed {
            peer_close: Some(_)
        } | ReadEnd::Stopped {
            peer_close: Some(_)
        }
    );
    let (failure, code, reason) = match (read_end, write_end) {
        (
            ReadEnd::Failed {
                kind,
                code,
                message,
            },
            _,
        ) => {
            if code != 1006 {
                // The messages that came before the fault are the worker's still: let their
                // answers go out first, then tell the peer why (1002, 1007, 1009).
                // (Boxed, as every path taken only at the end: the future each connection
                // keeps while it lives stays small.)
                Box::pin(finish_sends(
                    &mut sink,
                    &mut commands,
                    &handle,
                    config.close_timeout,
                ))
                .await;
                Box::pin(send_close(&mut sink, code, "", config.close_timeout)).await;
            }
            (Some((kind, message)), code, String::new())
        }
        (_, WriteEnd::Overflow) => (
            Some((
                ErrorKind::SlowPeer,
                "the peer does not read: outgoing queue full, closed with 1008".to_string(),
            )),
            1008,
            "outgoing queue full".to_string(),
        ),
        (_, WriteEnd::Idle(after)) => (
            Some((
                ErrorKind::Io,
                format!("nothing from the peer for {after:?}: connection dropped"),
            )),
            1006,
            String::new(),
        ),
        (ReadEnd::Closed { peer_close } | ReadEnd::Stopped { peer_close }, end) => {
            match (end, peer_close) {
                (_, Some(peer)) => (invalid_close(&peer), peer.0, peer.1),
                (WriteEnd::SentClose(code, reason), None) => (None, code, reason),
                (_, None) => (None, 1006, String::new()),
            }
        }
    };
    if let (Some(m), Some((ErrorKind::SlowPeer, _))) = (crate::metrics::get(), &failure) {
        m.slow_peer_closes.increment(1);
    }
    drop(sink);
    // Closing from now on (not before: the answers of `finish_sends` had to get through).
    Box::pin(report_end(&handle, &events, failure, code, reason, clean)).await;
}

/// The last events of a connection: `Error` if it failed, then `Closed`. `Closed` status is
/// the worker's to set, when it delivers onTerminate; here it is only closing.
pub(crate) async fn report_end(
    handle: &ConnectionHandle,
    events: &Events,
    failure: Option<(ErrorKind, String)>,
    code: u16,
    reason: String,
    clean: bool,
) {
    let conn = handle.id();
    handle.begin_closing();
    if let Some((kind, message)) = failure {
        events
            .deliver(Event::Error {
                conn,
                kind,
                message,
            })
            .await;
    }
    events
        .deliver(Event::Closed {
            conn,
            code,
            reason,
            clean,
        })
        .await;
}

/// Sends what the worker queues for this connection until it has handled every message it
/// was given (bounded by `timeout`).
async fn finish_sends<S>(
    sink: &mut Sink<S>,
    commands: &mut flume::Receiver<Command>,
    handle: &ConnectionHandle,
    timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let work = async {
        loop {
            let idle = handle.worker_idle();
            while let Ok(cmd) = commands.try_recv() {
                if let Command::Send(p) = cmd {
                    let len = p.len();
                    if sink.feed(to_message(p)).await.is_err() {
                        return;
                    }
                    handle.sent(len);
                    count_sent(1, len);
                }
            }
            let _ = sink.flush().await;
            if idle {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let _ = tokio::time::timeout(timeout, work).await;
}

async fn read_loop<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    handle: &ConnectionHandle,
    events: &Events,
    done: &Cancel,
    activity: &Activity,
) -> ReadEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = handle.id();
    let mut peer_close = None;
    let mut stalled_pings = 0u32;
    // Made once: a future made anew on every message would register and unregister itself
    // with the token each time.
    let stopped = done.cancelled();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            biased;
            next = stream.next() => next,
            _ = &mut stopped => return ReadEnd::Stopped { peer_close },
        };
        activity.touch();
        let payload = match next {
            Some(Ok(Message::Text(text))) => Payload::Text(text_from(text)),
            Some(Ok(Message::Binary(bytes))) => Payload::Binary(bytes),
            Some(Ok(Message::Close(frame))) => {
                handle.begin_closing();
                peer_close = Some(match frame {
                    Some(f) => (u16::from(f.code), f.reason.as_str().to_owned()),
                    None => (1005, String::new()),
                });
                continue;
            }
            Some(Ok(Message::Ping(_))) => {
                // tungstenite answers pings itself, queueing the pongs; the writer flushes
                // them now and then, and a peer that keeps pinging while it does not read
                // them is flooding, not keeping alive.
                if activity.writing.load(Ordering::Relaxed) {
                    stalled_pings += 1;
                    if stalled_pings >= PINGS_WHILE_STALLED {
                        return ReadEnd::Failed {
                            kind: ErrorKind::SlowPeer,
                            code: 1008,
                            message: "the peer does not read but keeps sending pings: closed \
                                      with 1008"
                                .into(),
                        };
                    }
                } else {
                    handle.flush();
                    stalled_pings = 0;
                }
                continue;
            }
            Some(Ok(_)) => continue, // pong
            Some(Err(e)) => return read_failure(e, peer_close),
            None => return ReadEnd::Closed { peer_close },
        };
        if let Some(m) = crate::metrics::get() {
            m.traffic.received(payload.len());
        }
        if !handle.try_acquire_inflight() {
            tokio::select! {
                _ = &mut stopped => return ReadEnd::Stopped { peer_close },
                _ = Box::pin(handle.acquire_inflight()) => {}
            }
        }
        if !events.deliver(Event::Message { conn: id, payload }).await {
            return ReadEnd::Stopped { peer_close };
        }
    }
}

/// tungstenite answers a close frame with a code a peer may not send (999, 1004, 1015…) with
/// 1002 and hands it on as this close; it is the peer's protocol error, reported as one.
fn invalid_close(peer: &(u16, String)) -> Option<(ErrorKind, String)> {
    (peer.0 == 1002 && peer.1 == "Protocol violation").then(|| {
        (
            ErrorKind::Protocol,
            "protocol error: the peer's close frame had an invalid close code".to_string(),
        )
    })
}

fn text_from(text: Utf8Bytes) -> Text {
    Text::from_checked(text)
}

fn read_failure(e: WsError, peer_close: Option<(u16, String)>) -> ReadEnd {
    if peer_close.is_some() {
        // The closing handshake is done; how the socket ends after it (a reset, a TLS peer
        // without close_notify) does not matter.
        return ReadEnd::Closed { peer_close };
    }
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => ReadEnd::Closed { peer_close },
        WsError::WriteBufferFull(_) => ReadEnd::Failed {
            kind: ErrorKind::SlowPeer,
            code: 1008,
            message: "the peer does not read: outgoing buffer full, closed with 1008".into(),
        },
        WsError::Capacity(e) => ReadEnd::Failed {
            kind: ErrorKind::TooBig,
            code: 1009,
            message: format!("message too big: {e}"),
        },
        WsError::Utf8(e) => ReadEnd::Failed {
            kind: ErrorKind::Protocol,
            code: 1007,
            message: format!("invalid UTF-8 in a text message or a close reason: {e}"),
        },
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadEnd::Failed {
            kind: ErrorKind::Io,
            code: 1006,
            message: "connection lost without a close frame".into(),
        },
        WsError::Protocol(e) => ReadEnd::Failed {
            kind: ErrorKind::Protocol,
            code: 1002,
            message: format!("protocol error: {e}"),
        },
        other => ReadEnd::Failed {
            kind: ErrorKind::Io,
            code: 1006,
            message: format!("connection lost: {other}"),
        },
    }
}

async fn write_loop<S>(
    mut sink: Sink<S>,
    commands: flume::Receiver<Command>,
    handle: &ConnectionHandle,
    done: &Cancel,
    activity: &Activity,
    config: &NetConfig,
) -> (WriteEnd, Sink<S>, flume::Receiver<Command>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let overflow = handle.overflow();
    // The loop's keepalive queues a ping every `ping_interval`: a live peer answers with a
    // pong; `idle_timeout` without anything from the peer means it is gone.
    let mut heard_at = Instant::now();
    let (ended, overflowed) = (done.cancelled(), overflow.cancelled());
    tokio::pin!(ended, overflowed);
    // The messages written together; kept from one batch to the next (an allocation less
    // per batch).
    let mut batch: Vec<Payload> = Vec::new();
    let end = loop {
        // What is queued already is taken without waiting (nor registering to wait).
        // (Once ended, commands stay queued: `finish_sends` may still want them.)
        let stopping = done.is_cancelled() || overflow.is_cancelled();
        let queued = if stopping {
            None
        } else {
            match commands.try_recv() {
                Ok(cmd) => Some(Some(cmd)),
                Err(flume::TryRecvError::Disconnected) => Some(None),
                Err(flume::TryRecvError::Empty) => None,
            }
        };
        let cmd = match queued {
            Some(cmd) => cmd,
            // A command first: woken by one, the writer does not poll the two tokens (each
            // poll takes their lock); a stop is seen at the top of the next turn.
            None => tokio::select! {
                biased;
                cmd = commands.recv_async(), if !stopping => cmd.ok(),
                _ = &mut ended => break WriteEnd::ReaderDone,
                _ = &mut overflowed => break WriteEnd::Overflow,
            },
        };
        // What to write now: a batch of messages (feeding what is queued, then flushing
        // once: pipelined sends share a syscall), or a ping; and a close to send after it.
        let (extra, then_close) = match cmd {
            Some(Command::Flush) => (None, None),
            Some(Command::Send(payload)) => {
                batch.push(payload);
                let mut then_close = None;
                while batch.len() < 64 {
                    match commands.try_recv() {
                        Ok(Command::Send(p)) => batch.push(p),
                        Ok(Command::Close { code, reason }) => {
                            then_close = Some((code, reason));
                            break;
                        }
                        Ok(Command::Ping | Command::Flush) | Err(_) => break,
                    }
                }
                (None, then_close)
            }
            Some(Command::Ping) => {
                if activity.take() {
                    heard_at = Instant::now();
                }
                if let Some(idle) = config.idle_timeout
                    && heard_at.elapsed() > idle
                {
                    break WriteEnd::Idle(idle);
                }
                (Some(Message::Ping(Bytes::new())), None)
            }
            Some(Command::Close { code, reason }) => (None, Some((code, reason))),
            None => break WriteEnd::ReaderDone,
        };
        {
            let written = tokio::select! {
                // The write first: when it is done at once, nothing else is polled.
                biased;
                r = async {
                    activity.writing.store(true, Ordering::Relaxed);
                    let r = write_batch(&mut sink, &mut batch, extra, handle).await;
                    activity.writing.store(false, Ordering::Relaxed);
                    r
                } => r,
                _ = &mut ended => Err(WsError::ConnectionClosed),
                _ = &mut overflowed => Err(WsError::ConnectionClosed),
            };
            match written {
                Ok(()) => {}
                // tungstenite's own buffer is full (unanswered pings piled up).
                Err(WsError::WriteBufferFull(_)) => break WriteEnd::Overflow,
                Err(_) if overflow.is_cancelled() => break WriteEnd::Overflow,
                Err(_) => break WriteEnd::ReaderDone,
            }
        }
        if let Some((code, reason)) = then_close {
            break Box::pin(close_and_wait(&mut sink, code, reason, done, config)).await;
        }
    };
    if matches!(end, WriteEnd::Overflow | WriteEnd::Idle(_)) {
        handle.begin_closing();
        if let WriteEnd::Overflow = end {
            // The peer is not reading, so this may never get through: bounded.
            Box::pin(send_close(
                &mut sink,
                1008,
                "outgoing queue full",
                config.close_timeout,
            ))
            .await;
        }
        done.cancel();
    }
    (end, sink, commands)
}

/// Writes the messages (and `extra`), then flushes.
async fn write_batch<S>(
    sink: &mut Sink<S>,
    batch: &mut Vec<Payload>,
    extra: Option<Message>,
    handle: &ConnectionHandle,
) -> Result<(), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Counted once per batch: under load a batch is many messages.
    let (mut count, mut bytes) = (0, 0);
    for p in batch.drain(..) {
        let len = p.len();
        if let Err(e) = sink.feed(to_message(p)).await {
            count_sent(count, bytes);
            return Err(e);
        }
        handle.sent(len);
        (count, bytes) = (count + 1, bytes + len);
    }
    count_sent(count, bytes);
    if let Some(m) = extra {
        sink.feed(m).await?;
    }
    sink.flush().await
}

/// Sends a close frame, bounded by `timeout` (the peer may not be reading).
async fn send_close<S>(sink: &mut Sink<S>, code: u16, reason: &str, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(timeout, sink.send(Message::Close(Some(frame)))).await;
}

/// Sends a close frame and waits (bounded) for the reader to see the peer's answer.
async fn close_and_wait<S>(
    sink: &mut Sink<S>,
    code: u16,
    reason: String,
    done: &Cancel,
    config: &NetConfig,
) -> WriteEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    send_close(sink, code, &reason, config.close_timeout).await;
    if tokio::time::timeout(config.close_timeout, done.cancelled())
        .await
        .is_err()
    {
        done.cancel();
    }
    WriteEnd::SentClose(code, reason)
}

fn to_message(p: Payload) -> Message {
    match p {
        Payload::Text(t) => Message::Text(t.into_utf8_bytes()),
        Payload::Binary(b) => Message::Binary(b),
    }
}

#[inline]
fn count_sent(messages: u64, bytes: usize) {
    if let Some(m) = crate::metrics::get()
        && messages > 0
    {
        m.traffic.sent(messages, bytes);
    }
}
