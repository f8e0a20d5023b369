//! The hot reload benchmark: save-to-new-code latency of `wshost run` while clients keep
//! sending. A running wshost serves a class; 50 clients send every 10 ms all along; a probe
//! client sends one message after another. Each of 20 edits renames a new version of the class
//! over the old one and the probe measures the time from the rename to the first answer of the
//! new code. At the end every background client must have had an answer to every message, on
//! the connection it opened.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

use crate::server::spawn_listening;

/// Starts `wshost run SCRIPT --port 0 ARGS` and waits for its port.
fn start_wshost(wshost: &Path, script: &Path, args: &[&str]) -> anyhow::Result<(Child, u16)> {
    spawn_listening(
        Command::new(wshost)
            .arg("run")
            .arg(script)
            .args(["--port", "0"])
            .args(args),
    )
}

fn class_version(v: usize) -> String {
    format!(
        "fn constructor() {{ this.n = 0; }}\n\
         fn onMessage(ws, event) {{ this.n += 1; ws.send(`v{v} ${{this.n}}`); }}\n"
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub async fn reload(wshost: &Path, edits: usize, clients: usize, every: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let class = dir.path().join("Counter.rhai");
    std::fs::write(&class, class_version(0))?;
    let main = dir.path().join("main.rhai");
    std::fs::write(
        &main,
        "WebSocketServer.new(#{ onConnection: |wss, e| cs.Counter.new() });\n",
    )?;
    let (mut child, port) = start_wshost(wshost, &main, &[])?;
    let url = format!("ws://127.0.0.1:{port}/");

    let sent = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut background = Vec::new();
    for _ in 0..clients {
        let (ws, _) = connect_async(&url).await?;
        let (mut tx, mut rx) = ws.split();
        let (sent, received, stop) = (sent.clone(), received.clone(), stop.clone());
        background.push(tokio::spawn(async move {
            let reader = tokio::spawn(async move {
                let mut n = 0u64;
                while let Some(Ok(m)) = rx.next().await {
                    if m.is_text() {
                        n += 1;
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n
            });
            let mut tick = tokio::time::interval(Duration::from_millis(every));
            let mut mine = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if tx.send(Message::text("x")).await.is_err() {
                    break;
                }
                mine += 1;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // Let the answers in flight arrive, then close.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = tx.send(Message::Close(None)).await;
            let got = reader.await.unwrap_or(0);
            (mine, got)
        }));
    }

    let (probe, _) = connect_async(&url).await?;
    let (mut ptx, mut prx) = probe.split();
    let mut latencies = Vec::new();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for v in 1..=edits {
        let text = class_version(v);
        let tmp = dir.path().join("Counter.rhai.tmp~");
        std::fs::write(&tmp, &text)?;
        let prefix = format!("v{v} ");
        let saved = Instant::now();
        std::fs::rename(&tmp, &class)?;
        loop {
            ptx.send(Message::text("p")).await?;
            let answer = tokio::time::timeout(Duration::from_secs(5), prx.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("probe closed"))??;
            if answer.to_text()?.starts_with(&prefix) {
                latencies.push(saved.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut dropped = 0;
    let mut lost = 0;
    for b in background {
        let (mine, got) = b.await?;
        if got < mine {
            lost += mine - got;
            dropped += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();

    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = percentile(&latencies, 0.5);
    let max = *latencies.last().unwrap();
    println!(
        "{{\"bench\":\"reload\",\"edits\":{edits},\"clients\":{clients},\"every_ms\":{every},\
         \"median_ms\":{median:.2},\"p90_ms\":{:.2},\"max_ms\":{max:.2},\"messages\":{},\
         \"answered\":{},\"lost\":{lost},\"clients_short\":{dropped}}}",
        percentile(&latencies, 0.9),
        sent.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed),
    );
    println!(
        "reload: save-to-new-code median {median:.2} ms, max {max:.2} ms over {edits} edits; \
         {} messages from {clients} clients, {lost} lost",
        sent.load(Ordering::Relaxed)
    );
    Ok(())
}
