//! The load generator: one thread (a current-thread tokio runtime) that can push a server to
//! its limit. Each connection does its WebSocket handshake with tungstenite, then the raw TCP
//! stream is driven with pre-encoded frames: one masked client frame is built once with
//! tungstenite's frame API and written in batches, and answers are read in big buffers and
//! walked with tungstenite's `FrameHeader::parse`, so that per message the load generator does
//! little more than a header parse. It measures (counts, latencies, CPU over the window) and
//! checks answers; it does not start servers or print tables.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{Cursor, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Response, generate_request};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::machine::{
    HandshakeMachine, RoundResult, StageResult,
};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use crate::usage::{Used, Window};

/// Echo and json: how many connections, how big a message, how many in flight on each.
#[derive(Clone, Copy, Debug)]
pub struct EchoShape {
    pub connections: usize,
    pub size: usize,
    pub in_flight: usize,
}

/// Load before measuring, then the measured window.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
    /// Busy-poll instead of sleeping (see `Run::wait`).
    pub spin: bool,
}

/// The server under load: where it listens, its process, the core it is pinned to.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub pid: u32,
    pub core: Option<usize>,
}

/// What one run measured.
pub struct Measured {
    /// Answers (echo, json) or deliveries (chat) within the window.
    pub messages: u64,
    pub used: Used,
    /// Sorted, in µs.
    pub latencies_us: Vec<u32>,
    /// What went wrong on connections (a run with failures is reported, not trusted).
    pub failures: Vec<String>,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.used.elapsed.as_secs_f64()
    }

    /// The server's CPU time (utime + stime) per message over the window, in µs.
    pub fn server_us_per_msg(&self) -> f64 {
        self.used.server.as_secs_f64() * 1e6 / self.messages.max(1) as f64
    }

    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_us.len() - 1) as f64 * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

// ---------------------------------------------------------------------------------------
// Handshake and frames, all through tungstenite.

/// A connection after its handshake: the raw stream and what the server sent after its 101
/// answer (tungstenite's handshake reads in chunks, so frames may have come with it; they are
/// not lost: the frame reader starts with them).
pub struct Connected {
    stream: TcpStream,
    tail: Vec<u8>,
}

/// Opens a WebSocket connection to `ws://ADDR/` with tungstenite's client handshake, driven
/// step by step so that the bytes after the answer's head stay ours.
pub fn connect(addr: SocketAddr) -> anyhow::Result<Connected> {
    let mut stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (request, key) = generate_request(format!("ws://{addr}/").into_client_request()?)?;
    stream.write_all(&request)?;
    let mut machine = HandshakeMachine::start_read(stream);
    loop {
        machine = match machine.single_round::<Response>()? {
            RoundResult::WouldBlock(m) | RoundResult::Incomplete(m) => m,
            RoundResult::StageFinished(StageResult::DoneReading {
                result,
                stream,
                tail,
            }) => {
                ensure!(
                    result.status() == StatusCode::SWITCHING_PROTOCOLS,
                    "the server answered the upgrade with {}",
                    result.status()
                );
                let accept = result.headers().get("Sec-WebSocket-Accept");
                ensure!(
                    accept.is_some_and(|a| a == derive_accept_key(key.as_bytes()).as_str()),
                    "wrong Sec-WebSocket-Accept in the server's answer"
                );
                return Ok(Connected { stream, tail });
            }
            RoundResult::StageFinished(StageResult::DoneWriting(_)) => {
                bail!("the handshake machine was reading, not writing")
            }
        };
    }
}

impl Connected {
    fn into_tokio(self) -> anyhow::Result<(tokio::net::TcpStream, FrameReader)> {
        self.stream.set_nonblocking(true)?;
        let stream = tokio::net::TcpStream::from_std(self.stream)?;
        Ok((stream, FrameReader::new(READ_BUFFER, self.tail)))
    }
}

/// Bytes read from a connection per read call (at most).
const READ_BUFFER: usize = 64 * 1024;

/// `copies` times the masked client text frame of `payload`, as written on the wire.
fn client_frames(payload: &[u8], copies: usize) -> anyhow::Result<Vec<u8>> {
    let mut frame = Frame::message(payload.to_vec(), OpCode::Data(Data::Text), true);
    // Clients must mask; one fixed mask is enough for a benchmark (servers cannot tell).
    frame.header_mut().mask = Some([0x5a, 0x17, 0xc3, 0x8e]);
    let mut one = Vec::new();
    frame.format(&mut one)?;
    Ok(one.repeat(copies))
}

/// Frames arriving on one connection, read in big buffers and split with tungstenite's
/// header parser.
struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// What the load generator needs of a server frame.
enum Incoming<'a> {
    Text(&'a [u8]),
    /// Pings and pongs: not answered (runs are far shorter than any idle timeout).
    Control,
}

impl FrameReader {
    fn new(capacity: usize, tail: Vec<u8>) -> FrameReader {
        let mut buf = tail;
        let end = buf.len();
        buf.resize(capacity.max(end), 0);
        FrameReader { buf, start: 0, end }
    }

    /// Reads what the socket has (at least one byte); a closed socket is an error.
    async fn fill(&mut self, stream: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            // A frame bigger than the buffer.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = stream.read(&mut self.buf[self.end..]).await?;
        ensure!(n > 0, "the server closed the TCP connection");
        self.end += n;
        Ok(())
    }

    /// The next complete frame in the buffer, if any.
    fn next(&mut self) -> anyhow::Result<Option<Incoming<'_>>> {
        let mut cursor = Cursor::new(&self.buf[self.start..self.end]);
        let Some((header, len)) = FrameHeader::parse(&mut cursor)? else {
            return Ok(None);
        };
        let head = cursor.position() as usize;
        let len = usize::try_from(len)?;
        if self.end - self.start - head < len {
            return Ok(None);
        }
        let payload = self.start + head..self.start + head + len;
        self.start = payload.end;
        ensure!(header.mask.is_none(), "the server sent a masked frame");
        ensure!(header.is_final, "the server fragmented a message");
        match header.opcode {
            OpCode::Data(Data::Text) => Ok(Some(Incoming::Text(&self.buf[payload]))),
            OpCode::Control(Control::Close) => {
                let code = self.buf[payload.clone()]
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(
                    self.buf.get(payload.start + 2..payload.end).unwrap_or(&[]),
                );
                bail!("the server closed the connection: {code:?} {reason}")
            }
            OpCode::Control(_) => Ok(Some(Incoming::Control)),
            other => bail!("the server sent an unexpected {other} frame"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// What every run shares: the phase, counts, latencies, failures.

struct Run {
    timing: Timing,
    measuring: Cell<bool>,
    stopping: Cell<bool>,
    /// Answers or deliveries since the start.
    count: Cell<u64>,
    /// Socket reads that brought data, since the start.
    reads: Cell<u64>,
    /// In µs, of messages answered or delivered within the window.
    latencies_us: RefCell<Vec<u32>>,
    failures: RefCell<Vec<String>>,
}

impl Run {
    fn new(timing: Timing) -> Run {
        Run {
            timing,
            measuring: Cell::default(),
            stopping: Cell::default(),
            count: Cell::default(),
            reads: Cell::default(),
            latencies_us: RefCell::default(),
            failures: RefCell::default(),
        }
    }

    fn latency(&self, since: Instant, now: Instant) {
        if self.measuring.get() {
            let us = now.saturating_duration_since(since).as_micros();
            self.latencies_us
                .borrow_mut()
                .push(u32::try_from(us).unwrap_or(u32::MAX));
        }
    }

    fn spawn(
        self: &Rc<Self>,
        what: String,
        task: impl Future<Output = anyhow::Result<()>> + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let run = self.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = task.await
                && !run.stopping.get()
            {
                run.failures.borrow_mut().push(format!("{what}: {e:#}"));
            }
        })
    }

    /// Lets the load run for the warm-up, then measures the window; returns the count and CPU
    /// use of exactly the window.
    async fn measure(&self, target: Target) -> anyhow::Result<(u64, Used)> {
        self.wait(self.timing.warmup).await;
        // Nothing else runs on this thread between these lines: counts and CPU times are of
        // the same instants.
        let mut window = Window::open(target.pid, target.core)?;
        let before = self.count.get();
        self.measuring.set(true);
        let idle = self.wait(self.timing.window).await;
        self.measuring.set(false);
        let messages = self.count.get() - before;
        window.load_idle(idle);
        Ok((messages, window.close()?))
    }

    /// Lets the connections work for `time`; returns how long this thread had nothing to do,
    /// if it busy-polls.
    async fn wait(&self, time: Duration) -> Option<Duration> {
        if !self.timing.spin {
            tokio::time::sleep(time).await;
            return None;
        }
        // Busy-polling: an idle core takes long to wake (some 50 µs in a VM), and a load
        // generator that sleeps between answers leaves the server waiting for work. Each turn
        // lets every ready connection run and polls the sockets; a turn in which no connection
        // read anything was idle time.
        let end = Instant::now() + time;
        let mut idle = Duration::ZERO;
        loop {
            let turn = Instant::now();
            if turn >= end {
                return Some(idle);
            }
            let reads = self.reads.get();
            tokio::task::yield_now().await;
            if self.reads.get() == reads {
                idle += turn.elapsed();
            }
        }
    }

    fn finish(&self, messages: u64, used: Used) -> Measured {
        let mut latencies_us = self.latencies_us.take();
        latencies_us.sort_unstable();
        Measured {
            messages,
            used,
            latencies_us,
            failures: self.failures.take(),
        }
    }
}

/// Runs `body` on a current-thread runtime with a LocalSet, on this (pinned) thread.
fn on_this_thread<T>(body: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    rt.block_on(local.run_until(body))
}

// ---------------------------------------------------------------------------------------
// Echo and json: request, answer.

/// What an answer must be.
#[derive(Clone, Copy)]
pub enum Answer {
    /// The message itself.
    Echo,
    /// `{"total":N}`, N growing by one per message (checked on the last answer).
    Total,
}

/// The json workload's message.
pub const JSON_MESSAGE: &[u8] = br#"{"op":"add","n":1}"#;

/// `shape.connections` connections each keeping `shape.in_flight` copies of `payload` in
/// flight: every answer read is replaced by a new message.
pub fn request_answer(
    target: Target,
    shape: EchoShape,
    payload: &[u8],
    answer: Answer,
    timing: Timing,
) -> anyhow::Result<Measured> {
    let connections = (0..shape.connections)
        .map(|_| connect(target.addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let batch = Rc::new(client_frames(payload, shape.in_flight)?);
    let payload: Rc<[u8]> = payload.into();
    on_this_thread(async move {
        let run = Rc::new(Run::new(timing));
        let mut tasks = Vec::new();
        for (i, conn) in connections.into_iter().enumerate() {
            let task = exchange(
                conn,
                batch.clone(),
                shape.in_flight,
                payload.clone(),
                answer,
                run.clone(),
            );
            tasks.push(run.spawn(format!("connection {i}"), task));
        }
        let (messages, used) = run.measure(target).await?;
        run.stopping.set(true);
        // Each connection stops at its next answer; one that does not within 2 s is reported.
        let stopped = tokio::time::timeout(
            Duration::from_secs(2),
            futures_util::future::join_all(tasks),
        )
        .await;
        if stopped.is_err() {
            run.failures
                .borrow_mut()
                .push("some connections got no answer for 2 s after the window".into());
        }
        Ok(run.finish(messages, used))
    })
}

async fn exchange(
    conn: Connected,
    batch: Rc<Vec<u8>>,
    in_flight: usize,
    payload: Rc<[u8]>,
    answer: Answer,
    run: Rc<Run>,
) -> anyhow::Result<()> {
    let frame_len = batch.len() / in_flight;
    let (mut stream, mut reader) = conn.into_tokio()?;
    let mut sent_at = VecDeque::with_capacity(in_flight);
    sent_at.extend(std::iter::repeat_n(Instant::now(), in_flight));
    stream.write_all(&batch).await?;
    let mut answers = 0u64;
    let mut last = Vec::new();
    while !run.stopping.get() {
        reader.fill(&mut stream).await?;
        run.reads.set(run.reads.get() + 1);
        let now = Instant::now();
        let mut read = 0;
        while let Some(incoming) = reader.next()? {
            let Incoming::Text(text) = incoming else {
                continue;
            };
            match answer {
                Answer::Echo => ensure!(*text == *payload, "an echo differs from the message"),
                Answer::Total => {
                    last.clear();
                    last.extend_from_slice(text);
                }
            }
            let sent = sent_at
                .pop_front()
                .context("an answer to a message never sent")?;
            run.latency(sent, now);
            read += 1;
        }
        if read > 0 {
            answers += read as u64;
            run.count.set(run.count.get() + read as u64);
            sent_at.extend(std::iter::repeat_n(Instant::now(), read));
            stream.write_all(&batch[..read * frame_len]).await?;
        }
    }
    if let Answer::Total = answer {
        let total: serde_json::Value = serde_json::from_slice(&last).with_context(|| {
            format!("an answer is not JSON: {}", String::from_utf8_lossy(&last))
        })?;
        ensure!(
            total["total"].as_u64() == Some(answers),
            "the last answer is {total} after {answers} messages"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Chat: one sender, every message to every receiver.

/// Messages the sender has written that not every receiver has read yet, oldest first.
struct Broadcast {
    receivers: u32,
    /// Per message: when it was written, how many receivers have read it.
    pending: RefCell<VecDeque<(Instant, u32)>>,
    /// Index (in the sender's order) of the oldest pending message.
    oldest: Cell<u64>,
    window_opened: Notify,
}

impl Broadcast {
    /// A receiver read the messages `first..first + n` at `now`.
    fn read(&self, run: &Run, first: u64, n: u64, now: Instant) -> anyhow::Result<()> {
        let mut pending = self.pending.borrow_mut();
        let oldest = self.oldest.get();
        for i in first..first + n {
            let slot = pending
                .get_mut((i - oldest) as usize)
                .context("a receiver got more messages than the sender wrote")?;
            slot.1 += 1;
        }
        // Each receiver reads in order, so the oldest messages are the first everyone has read.
        let mut done = 0;
        while let Some(&(sent, read_by)) = pending.front()
            && read_by == self.receivers
        {
            run.latency(sent, now);
            pending.pop_front();
            done += 1;
        }
        if done > 0 {
            self.oldest.set(oldest + done);
            self.window_opened.notify_one();
        }
        run.count.set(run.count.get() + n);
        Ok(())
    }
}

/// `receivers` connections, then one sender writing as fast as a window of `window` messages
/// (not yet read by every receiver) allows. Counts deliveries.
pub fn chat(
    target: Target,
    receivers: usize,
    window: usize,
    timing: Timing,
) -> anyhow::Result<Measured> {
    chat_from(
        target.addr,
        target,
        receivers,
        window,
        timing,
        Duration::ZERO,
    )
}

/// As [`chat`], with the sender connected to `sender` (another node of a cluster) and the
/// receivers to `target`; the sender starts `settle` after the receivers connected (a node
/// subscribes to a topic's Redis channel a moment after its first subscriber came).
pub fn chat_from(
    sender: SocketAddr,
    target: Target,
    receivers: usize,
    window: usize,
    timing: Timing,
    settle: Duration,
) -> anyhow::Result<Measured> {
    let listening = (0..receivers)
        .map(|_| connect(target.addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::sleep(settle);
    let sender = connect(sender)?;
    let payload = b"chat message from the one sender";
    let batch = client_frames(payload, window)?;
    on_this_thread(async move {
        let run = Rc::new(Run::new(timing));
        let broadcast = Rc::new(Broadcast {
            receivers: u32::try_from(receivers)?,
            pending: RefCell::new(VecDeque::with_capacity(window)),
            oldest: Cell::new(0),
            window_opened: Notify::new(),
        });
        for (i, conn) in listening.into_iter().enumerate() {
            let task = receive(conn, broadcast.clone(), run.clone());
            run.spawn(format!("receiver {i}"), task);
        }
        let task = send(sender, batch, window, broadcast.clone(), run.clone());
        run.spawn("the sender".into(), task);
        let (messages, used) = run.measure(target).await?;
        // Receivers wait for messages that will not come: they end with the runtime.
        run.stopping.set(true);
        Ok(run.finish(messages, used))
    })
}

async fn send(
    conn: Connected,
    batch: Vec<u8>,
    window: usize,
    broadcast: Rc<Broadcast>,
    run: Rc<Run>,
) -> anyhow::Result<()> {
    let frame_len = batch.len() / window;
    let (mut stream, _) = conn.into_tokio()?;
    while !run.stopping.get() {
        let free = window - broadcast.pending.borrow().len();
        if free == 0 {
            broadcast.window_opened.notified().await;
            continue;
        }
        // Pending before written: receivers may read them while the write is in progress.
        let now = Instant::now();
        broadcast
            .pending
            .borrow_mut()
            .extend(std::iter::repeat_n((now, 0), free));
        stream.write_all(&batch[..free * frame_len]).await?;
    }
    Ok(())
}

async fn receive(conn: Connected, broadcast: Rc<Broadcast>, run: Rc<Run>) -> anyhow::Result<()> {
    let (mut stream, mut reader) = conn.into_tokio()?;
    let mut next = 0u64;
    loop {
        reader.fill(&mut stream).await?;
        run.reads.set(run.reads.get() + 1);
        let now = Instant::now();
        let mut read = 0;
        while let Some(incoming) = reader.next()? {
            if let Incoming::Text(_) = incoming {
                read += 1;
            }
        }
        if read > 0 {
            broadcast.read(&run, next, read, now)?;
            next += read;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Idle memory.

/// The server's RSS growth per connection over `n` idle connections, in KiB.
pub fn idle_memory(target: Target, n: usize) -> anyhow::Result<f64> {
    std::thread::sleep(Duration::from_millis(200));
    let before = crate::usage::rss_kib(target.pid);
    let held = (0..n)
        .map(|_| connect(target.addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::sleep(Duration::from_millis(500));
    let after = crate::usage::rss_kib(target.pid);
    drop(held);
    Ok(after.saturating_sub(before) as f64 / n.max(1) as f64)
}
