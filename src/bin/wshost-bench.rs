//! wshost's benchmarks: real processes, real sockets, figures printed as JSON lines.
//!
//!   cargo build --release
//!   target/release/wshost-bench all            # echo, chat, memory, startup: reference vs wshost
//!   target/release/wshost-bench reload         # hot reload latency under load
//!
//! Each workload runs against a reference server written in plain tokio-tungstenite (no
//! scripting: `wshost-bench reference`, a process of its own like wshost) and against
//! `wshost run scripts/echo.rhai` / `scripts/chat.rhai`, with the same load generator; the
//! table shows both and their ratio, the median of `--rounds` rounds.
//!
//! `reload`: save-to-new-code latency of hot reload. A running `wshost run` serves a class;
//! 50 clients send every 10 ms all along; a probe client sends one message after another.
//! Each of 20 edits renames a new version of the class over the old one and the probe
//! measures the time from the rename to the first answer of the new code. At the end every
//! background client must have had an answer to every message, on the connection it opened.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "wshost benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Hot reload: save-to-new-code latency while clients keep sending.
    Reload {
        #[arg(long, default_value_t = 20)]
        edits: usize,
        #[arg(long, default_value_t = 50)]
        clients: usize,
        /// Milliseconds between two messages of a background client.
        #[arg(long, default_value_t = 10)]
        every: u64,
    },
    /// Every workload against the reference and wshost; prints the table.
    All {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds each throughput run lasts.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// `--workers` for wshost.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
    /// The reference server: plain tokio-tungstenite, no scripting.
    Reference {
        #[arg(long, value_enum)]
        mode: Mode,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Mode {
    Echo,
    Chat,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.bench {
        Bench::Reload {
            edits,
            clients,
            every,
        } => rt.block_on(reload(edits, clients, every)),
        Bench::All {
            rounds,
            seconds,
            workers,
        } => rt.block_on(all(rounds, Duration::from_secs_f64(seconds), workers)),
        Bench::Reference { mode } => rt.block_on(reference(mode)),
    }
}

// ---------------------------------------------------------------------------------------
// The reference server.

async fn reference(mode: Mode) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    eprintln!("listening on ws://{}/", listener.local_addr()?);
    type Peers = Arc<Mutex<HashMap<u64, tokio::sync::mpsc::UnboundedSender<Message>>>>;
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
            let (mut sink, mut stream) = ws.split();
            match mode {
                Mode::Echo => {
                    while let Some(Ok(m)) = stream.next().await {
                        if (m.is_text() || m.is_binary()) && sink.send(m).await.is_err() {
                            break;
                        }
                    }
                }
                Mode::Chat => {
                    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                    peers.lock().unwrap().insert(id, tx);
                    let writer = tokio::spawn(async move {
                        while let Some(m) = rx.recv().await {
                            if sink.send(m).await.is_err() {
                                break;
                            }
                        }
                    });
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
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// Load.

/// A server process under test.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/", self.port)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Target {
    Reference,
    Wshost,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Self::Reference => "reference",
            Self::Wshost => "wshost",
        }
    }
}

/// Starts the server for `mode` and returns it with the time it took to listen.
fn start(target: Target, mode: Mode, workers: usize) -> anyhow::Result<(Server, Duration)> {
    let started = Instant::now();
    let (child, port) = match target {
        Target::Reference => {
            let me = std::env::current_exe()?;
            let mode = match mode {
                Mode::Echo => "echo",
                Mode::Chat => "chat",
            };
            spawn_listening(Command::new(me).args(["reference", "--mode", mode]))?
        }
        Target::Wshost => {
            let script = match mode {
                Mode::Echo => "scripts/echo.rhai",
                Mode::Chat => "scripts/chat.rhai",
            };
            let script = repo_file(script);
            spawn_listening(Command::new(wshost_bin()).arg("run").arg(script).args([
                "--port",
                "0",
                "--no-watch",
                "--max-connections",
                "100000",
                "--workers",
                &workers.to_string(),
            ]))?
        }
    };
    Ok((Server { child, port }, started.elapsed()))
}

/// A file of the repository (the benchmark runs from anywhere).
fn repo_file(rel: &str) -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    if here.exists() {
        here
    } else {
        PathBuf::from(rel)
    }
}

/// Echo: `conns` connections, each keeping `window` 32-byte messages in flight.
async fn echo_load(url: &str, conns: usize, window: usize, time: Duration) -> anyhow::Result<Load> {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (ws, _) = connect_async(url).await?;
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let t0 = Instant::now();
            let stamp = move || {
                let mut m = format!("{:020}", t0.elapsed().as_nanos() as u64);
                m.push_str("............");
                Message::text(m)
            };
            for _ in 0..window {
                tx.send(stamp()).await.ok()?;
            }
            let mut lat = Vec::new();
            let mut n = 0u64;
            let end = t0 + time;
            while let Some(Ok(m)) = rx.next().await {
                let Message::Text(t) = m else { continue };
                let sent: u64 = t.as_str()[..20].parse().ok()?;
                let now = t0.elapsed().as_nanos() as u64;
                lat.push(((now - sent) / 1000) as u32);
                n += 1;
                if Instant::now() >= end {
                    break;
                }
                tx.send(stamp()).await.ok()?;
            }
            let _ = tx.send(Message::Close(None)).await;
            Some((n, lat))
        }));
    }
    let mut load = Load::default();
    for t in tasks {
        if let Some((n, lat)) = t.await? {
            load.messages += n;
            load.latencies_us.extend(lat);
        }
    }
    load.elapsed = start.elapsed().min(time).max(Duration::from_millis(1));
    load.elapsed = time;
    Ok(load)
}

/// Chat: `clients` connected, one of them sends as fast as a window of `window` messages
/// (counted at one receiver) allows; every message goes to every other client.
async fn chat_load(url: &str, clients: usize, window: u64, time: Duration) -> anyhow::Result<Load> {
    let mut receivers = Vec::new();
    let delivered = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut streams = Vec::new();
    for _ in 0..clients {
        let (ws, _) = connect_async(url).await?;
        streams.push(ws);
    }
    let sender = streams.remove(0);
    // Let the join notices pass before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for (i, ws) in streams.into_iter().enumerate() {
        let (delivered, acked, stop) = (delivered.clone(), acked.clone(), stop.clone());
        receivers.push(tokio::spawn(async move {
            let (_tx, mut rx) = ws.split();
            let mut lat = Vec::new();
            while let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_millis(500), rx.next()).await
            {
                let Message::Text(t) = m else { continue };
                let Ok(sent) = t.as_str().get(..20).unwrap_or("").parse::<u64>() else {
                    continue;
                };
                let now = t0.elapsed().as_nanos() as u64;
                if i % 10 == 0 {
                    lat.push(((now - sent) / 1000) as u32);
                }
                delivered.fetch_add(1, Ordering::Relaxed);
                if i == 0 {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                if stop.load(Ordering::Relaxed) && i != 0 {
                    // keep draining until quiet
                }
            }
            lat
        }));
    }
    let (mut tx, _rx) = sender.split();
    let start = Instant::now();
    let mut sent = 0u64;
    let mut counted_at_start = None;
    while start.elapsed() < time {
        if sent >= acked.load(Ordering::Relaxed) + window {
            tokio::task::yield_now().await;
            continue;
        }
        if counted_at_start.is_none() {
            counted_at_start = Some(delivered.load(Ordering::Relaxed));
        }
        let m = format!("{:020} chat message", t0.elapsed().as_nanos() as u64);
        tx.send(Message::text(m)).await?;
        sent += 1;
    }
    let elapsed = start.elapsed();
    let during = delivered.load(Ordering::Relaxed) - counted_at_start.unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let _ = tx.send(Message::Close(None)).await;
    let mut load = Load {
        messages: during,
        elapsed,
        ..Load::default()
    };
    for r in receivers {
        load.latencies_us.extend(r.await?);
    }
    Ok(load)
}

/// RSS growth per idle connection, over `conns` connections.
async fn memory_load(server: &Server, conns: usize) -> anyhow::Result<f64> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.rss_kib();
    let mut held = Vec::with_capacity(conns);
    for _ in 0..conns {
        let (ws, _) = connect_async(server.url()).await?;
        held.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    drop(held);
    Ok((after.saturating_sub(before)) as f64 / conns as f64)
}

#[derive(Default)]
struct Load {
    messages: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
}

impl Load {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One figure of the table: the reference's, wshost's, and whether higher is better.
struct Row {
    name: &'static str,
    unit: &'static str,
    reference: f64,
    wshost: f64,
    higher_is_better: bool,
}

async fn all(rounds: usize, time: Duration, workers: usize) -> anyhow::Result<()> {
    let mut figures: std::collections::BTreeMap<(&str, &str), Vec<f64>> = Default::default();
    for round in 0..rounds {
        for target in [Target::Reference, Target::Wshost] {
            let name = target.name();
            let (server, startup) = start(target, Mode::Echo, workers)?;
            let mut echo = echo_load(&server.url(), 64, 16, time).await?;
            let (p50, p99) = (echo.percentile_ms(0.5), echo.percentile_ms(0.99));
            println!(
                "{{\"bench\":\"echo\",\"server\":\"{name}\",\"round\":{round},\"msgs_per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3},\"startup_ms\":{:.1}}}",
                echo.rate(),
                startup.as_secs_f64() * 1000.0
            );
            figures
                .entry(("echo msgs/s", name))
                .or_default()
                .push(echo.rate());
            figures.entry(("echo p50 ms", name)).or_default().push(p50);
            figures.entry(("echo p99 ms", name)).or_default().push(p99);
            figures
                .entry(("startup ms", name))
                .or_default()
                .push(startup.as_secs_f64() * 1000.0);
            let per_conn = memory_load(&server, 5000).await?;
            println!(
                "{{\"bench\":\"memory\",\"server\":\"{name}\",\"round\":{round},\"kib_per_idle_connection\":{per_conn:.2}}}"
            );
            figures
                .entry(("KiB per idle conn", name))
                .or_default()
                .push(per_conn);
            drop(server);

            let (server, _) = start(target, Mode::Chat, workers)?;
            let mut chat = chat_load(&server.url(), 200, 4, time).await?;
            let (p50, p99) = (chat.percentile_ms(0.5), chat.percentile_ms(0.99));
            println!(
                "{{\"bench\":\"chat\",\"server\":\"{name}\",\"round\":{round},\"deliveries_per_s\":{:.0},\"p50_ms\":{p50:.3},\"p99_ms\":{p99:.3}}}",
                chat.rate()
            );
            figures
                .entry(("chat deliveries/s", name))
                .or_default()
                .push(chat.rate());
            figures.entry(("chat p50 ms", name)).or_default().push(p50);
            figures.entry(("chat p99 ms", name)).or_default().push(p99);
        }
    }
    let rows = [
        ("echo msgs/s", "", true),
        ("echo p50 ms", "", false),
        ("echo p99 ms", "", false),
        ("chat deliveries/s", "", true),
        ("chat p50 ms", "", false),
        ("chat p99 ms", "", false),
        ("KiB per idle conn", "", false),
        ("startup ms", "", false),
    ]
    .map(|(name, unit, higher_is_better)| Row {
        name,
        unit,
        reference: median(figures[&(name, "reference")].clone()),
        wshost: median(figures[&(name, "wshost")].clone()),
        higher_is_better,
    });
    println!();
    println!(
        "median of {rounds} round(s), {:.0} s each, on {} cores, wshost --workers {workers}",
        time.as_secs_f64(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<20} {:>14} {:>14} {:>8}",
        "figure", "reference", "wshost", "ratio"
    );
    for r in rows {
        let ratio = r.wshost / r.reference;
        let better = if r.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        println!(
            "{:<20} {:>14.2} {:>14.2} {:>7.2}x  {}{}",
            r.name, r.reference, r.wshost, ratio, r.unit, better
        );
    }
    Ok(())
}

/// Spawns a server process and waits for its "listening on ws://…" line.
fn spawn_listening(cmd: &mut Command) -> anyhow::Result<(Child, u16)> {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(at) = line.find("listening on ws://") {
            let rest = &line[at + "listening on ws://".len()..];
            let port = rest
                .split('/')
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()?;
            // Keep draining stderr so the server never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Ok((child, port));
        }
    }
    let _ = child.kill();
    anyhow::bail!("the server did not start listening")
}

/// The `wshost` binary next to this one.
fn wshost_bin() -> PathBuf {
    let me = std::env::current_exe().expect("current exe");
    me.with_file_name("wshost")
}

/// Starts `wshost run SCRIPT --port 0 ARGS` and waits for its port.
fn start_wshost(script: &Path, args: &[&str]) -> anyhow::Result<(Child, u16)> {
    spawn_listening(
        Command::new(wshost_bin())
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

async fn reload(edits: usize, clients: usize, every: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let class = dir.path().join("Counter.rhai");
    std::fs::write(&class, class_version(0))?;
    let main = dir.path().join("main.rhai");
    std::fs::write(
        &main,
        "WebSocketServer.new(#{ onConnection: |wss, e| cs.Counter.new() });\n",
    )?;
    let (mut child, port) = start_wshost(&main, &[])?;
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
