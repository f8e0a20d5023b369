//! The reference server: what plain tokio-tungstenite does for each workload, with no scripting
//! and nothing wshost adds (limits, queues, workers). It runs as a process of its own, started
//! by the bench like wshost, and says `listening on ws://…` on stderr like wshost.
//!
//! Every connection writes with `forward`, as tokio-tungstenite's own echo-server example does:
//! it flushes when nothing more is ready to send, so answers to messages read together leave in
//! one write, as wshost's writers do. (Flushing every message, `sink.send(m)`, costs the
//! reference some 4 µs of CPU per echoed message instead of about 1 on this machine.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt, future};
use tokio_tungstenite::tungstenite::Message;

use crate::Mode;

type Peers = Arc<Mutex<HashMap<u64, tokio::sync::mpsc::UnboundedSender<Message>>>>;

pub async fn serve(mode: Mode) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("listening on ws://{}/", listener.local_addr()?);
    let peers: Peers = Arc::default();
    let mut next = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        next += 1;
        let id = next;
        let peers = peers.clone();
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            match mode {
                Mode::Echo => echo(ws).await,
                Mode::Chat | Mode::Topic => chat(ws, id, peers).await,
                Mode::Json => json(ws).await,
            }
        });
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn echo(ws: Ws) {
    let (sink, stream) = ws.split();
    let _ = stream
        .try_filter(|m| future::ready(m.is_text() || m.is_binary()))
        .forward(sink)
        .await;
}

/// Every text goes to every other connection, through each one's own writer task.
async fn chat(ws: Ws, id: u64, peers: Peers) {
    let (sink, mut stream) = ws.split();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    peers.lock().unwrap().insert(id, tx);
    let queued = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok);
    let writer = tokio::spawn(queued.forward(sink));
    while let Some(Ok(m)) = stream.next().await {
        if m.is_text() {
            for (other, tx) in peers.lock().unwrap().iter() {
                if *other != id {
                    let _ = tx.send(m.clone());
                }
            }
        }
    }
    peers.lock().unwrap().remove(&id);
    writer.abort();
}

/// `{"op":"add","n":N}` adds N to this connection's total; every message is answered with
/// `{"total":T}`, as bench/scripts/json.rhai does.
async fn json(ws: Ws) {
    let (sink, stream) = ws.split();
    let mut total = 0i64;
    let answers = stream.try_filter_map(move |m| {
        let answer = match m {
            Message::Text(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(op) => {
                    if op["op"] == "add" {
                        total += op["n"].as_i64().unwrap_or(0);
                    }
                    let answer = serde_json::json!({ "total": total }).to_string();
                    Some(Message::text(answer))
                }
                Err(_) => None,
            },
            _ => None,
        };
        future::ready(Ok(answer))
    });
    let _ = answers.forward(sink).await;
}
