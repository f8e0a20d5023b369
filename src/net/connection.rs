//! One accepted WebSocket connection: a reader and a writer running side by side.
//!
//! The reader turns frames into events (pausing when the worker is behind, which pushes back
//! on the peer through TCP); the writer carries out commands. Neither waits on a script. The
//! pair reports `Open` first and `Closed` last, exactly once.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use crate::event::{Command, ConnectionHandle, ErrorKind, Event};
use crate::payload::{Payload, Text};

/// How the reader ended.
enum ReadEnd {
    /// The stream ended; `peer_close` is the peer's close frame if one came.
    Closed { peer_close: Option<(u16, String)> },
    /// The peer broke the protocol or the socket failed.
    Failed {
        kind: ErrorKind,
        code: u16,
        message: String,
    },
    /// The writer ended the connection (overflow or close timeout).
    Stopped { peer_close: Option<(u16, String)> },
}

/// Runs the connection until it is closed, then sends `Closed`.
pub(crate) async fn run<S>(
    ws: WebSocketStream<S>,
    handle: ConnectionHandle,
    commands: mpsc::Receiver<Command>,
    events: flume::Sender<Event>,
    close_timeout: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = handle.id();
    handle.connected();
    if events.send_async(Event::Open { conn: id }).await.is_err() {
        return;
    }
    let (sink, stream) = ws.split();
    let done = CancellationToken::new();
    let reader = async {
        let end = read_loop(stream, &handle, &events, &done).await;
        done.cancel();
        end
    };
    let writer = write_loop(sink, commands, &handle, &done, close_timeout);
    let (read_end, write_end) = tokio::join!(reader, writer);

    // `Closed` is the worker's to set, when it delivers onTerminate.
    handle.begin_closing();
    let clean = matches!(
        read_end,
        ReadEnd::Closed {
            peer_close: Some(_)
        } | ReadEnd::Stopped {
            peer_close: Some(_)
        }
    );
    let (code, reason) = match read_end {
        ReadEnd::Failed {
            kind,
            code,
            message,
        } => {
            let _ = events
                .send_async(Event::Error {
                    conn: id,
                    kind,
                    message,
                })
                .await;
            (code, String::new())
        }
        ReadEnd::Closed { peer_close } | ReadEnd::Stopped { peer_close } => {
            match (write_end, peer_close) {
                (WriteEnd::Overflow, _) => {
                    let _ = events
                        .send_async(Event::Error {
                            conn: id,
                            kind: ErrorKind::SlowPeer,
                            message:
                                "the peer does not read: outgoing queue full, closed with 1008"
                                    .into(),
                        })
                        .await;
                    (1008, "outgoing queue full".to_string())
                }
                (_, Some(peer)) => peer,
                (WriteEnd::SentClose(code, reason), None) => (code, reason),
                (_, None) => (1006, String::new()),
            }
        }
    };
    let _ = events
        .send_async(Event::Closed {
            conn: id,
            code,
            reason,
            clean,
        })
        .await;
}

async fn read_loop<S>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    handle: &ConnectionHandle,
    events: &flume::Sender<Event>,
    done: &CancellationToken,
) -> ReadEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let id = handle.id();
    let mut peer_close = None;
    loop {
        let next = tokio::select! {
            _ = done.cancelled() => return ReadEnd::Stopped { peer_close },
            next = stream.next() => next,
        };
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
            Some(Ok(_)) => continue, // ping/pong: answered by tungstenite
            Some(Err(e)) => return read_failure(e, peer_close),
            None => return ReadEnd::Closed { peer_close },
        };
        tokio::select! {
            _ = done.cancelled() => return ReadEnd::Stopped { peer_close },
            _ = handle.acquire_inflight() => {}
        }
        if events
            .send_async(Event::Message { conn: id, payload })
            .await
            .is_err()
        {
            return ReadEnd::Stopped { peer_close };
        }
    }
}

fn text_from(text: Utf8Bytes) -> Text {
    // Utf8Bytes is validated by tungstenite; re-wrapping it costs a check but no copy.
    Text::from_utf8(text.into()).expect("tungstenite text is UTF-8")
}

fn read_failure(e: WsError, peer_close: Option<(u16, String)>) -> ReadEnd {
    if peer_close.is_some() {
        // The closing handshake is done; how the socket ends after it (a reset, a TLS peer
        // without close_notify) does not matter.
        return ReadEnd::Closed { peer_close };
    }
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => ReadEnd::Closed { peer_close },
        WsError::Capacity(e) => ReadEnd::Failed {
            kind: ErrorKind::TooBig,
            code: 1009,
            message: format!("message too big: {e}"),
        },
        WsError::Utf8(e) => ReadEnd::Failed {
            kind: ErrorKind::Protocol,
            code: 1007,
            message: format!("invalid UTF-8 in a text message: {e}"),
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

enum WriteEnd {
    /// The reader finished first (peer closed or failed).
    ReaderDone,
    /// The script closed the connection with this code.
    SentClose(u16, String),
    /// The outgoing queue overflowed.
    Overflow,
}

async fn write_loop<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut commands: mpsc::Receiver<Command>,
    handle: &ConnectionHandle,
    done: &CancellationToken,
    close_timeout: Duration,
) -> WriteEnd
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let overflow = handle.overflow().clone();
    let end = loop {
        let cmd = tokio::select! {
            biased;
            _ = done.cancelled() => break WriteEnd::ReaderDone,
            _ = overflow.cancelled() => break WriteEnd::Overflow,
            cmd = commands.recv() => cmd,
        };
        match cmd {
            Some(Command::Send(payload)) => {
                // Feed what is queued, then flush once: pipelined sends share a syscall.
                let mut batch = vec![payload];
                let mut then_close = None;
                while batch.len() < 64 {
                    match commands.try_recv() {
                        Ok(Command::Send(p)) => batch.push(p),
                        Ok(close) => {
                            then_close = Some(close);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if !send_batch(&mut sink, batch, done, &overflow).await {
                    if overflow.is_cancelled() {
                        break WriteEnd::Overflow;
                    }
                    break WriteEnd::ReaderDone;
                }
                if let Some(close) = then_close
                    && let Some(end) = close_with(&mut sink, close, done, close_timeout).await
                {
                    return end;
                }
            }
            Some(close @ Command::Close { .. }) => {
                if let Some(end) = close_with(&mut sink, close, done, close_timeout).await {
                    return end;
                }
            }
            None => break WriteEnd::ReaderDone,
        }
    };
    if let WriteEnd::Overflow = end {
        handle.begin_closing();
        let frame = CloseFrame {
            code: CloseCode::Policy,
            reason: "outgoing queue full".into(),
        };
        // The peer is not reading, so this may never get through: bounded.
        let _ = tokio::time::timeout(close_timeout, sink.send(Message::Close(Some(frame)))).await;
        done.cancel();
    }
    end
}

/// Sends the messages and flushes; false if the connection ended meanwhile.
async fn send_batch<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    batch: Vec<Payload>,
    done: &CancellationToken,
    overflow: &CancellationToken,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let work = async {
        for p in batch {
            sink.feed(to_message(p)).await?;
        }
        sink.flush().await
    };
    tokio::select! {
        r = work => r.is_ok(),
        _ = done.cancelled() => false,
        _ = overflow.cancelled() => false,
    }
}

/// Sends a close frame and waits (bounded) for the reader to see the peer's answer.
/// Returns the end of the writer, or None if the command was not a close.
async fn close_with<S>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    close: Command,
    done: &CancellationToken,
    close_timeout: Duration,
) -> Option<WriteEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Command::Close { code, reason } = close else {
        return None;
    };
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.clone().into(),
    };
    let _ = tokio::time::timeout(close_timeout, sink.send(Message::Close(Some(frame)))).await;
    if tokio::time::timeout(close_timeout, done.cancelled())
        .await
        .is_err()
    {
        done.cancel();
    }
    Some(WriteEnd::SentClose(code, reason))
}

fn to_message(p: Payload) -> Message {
    match p {
        Payload::Text(t) => {
            Message::Text(Utf8Bytes::try_from(t.into_bytes()).expect("Payload text is UTF-8"))
        }
        Payload::Binary(b) => Message::Binary(b),
    }
}
