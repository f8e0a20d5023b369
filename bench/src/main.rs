//! wshost's benchmarks: real server processes, real sockets, a load generator that can push the
//! reference server to its limit, and the server's CPU time per message beside its rate.
//!
//!   cargo build --release && cargo run --release -p wshost-bench -- all
//!   cargo run --release -p wshost-bench -- all --rounds 1 --seconds 2 --only echo,json
//!   cargo run --release -p wshost-bench -- all --no-pin --workers 2
//!   cargo run --release -p wshost-bench -- reload          # hot reload latency under load
//!   cargo run --release -p wshost-bench -- fanout          # topics, one node and two (Redis)
//!
//! `all` benchmarks `target/release/wshost` (next to this binary; `--wshost PATH` for another)
//! against a reference written in plain tokio-tungstenite with no scripting (`wshost-bench
//! reference --mode echo|chat|json`, a process of its own like wshost), and for echo against
//! Node's `ws` when `node` and `bench/node/node_modules/ws` are there (`npm install` in
//! bench/node). Each server process runs pinned to one core and the load generator, one thread,
//! to another (`--no-pin`: neither; with one core pinning is impossible and says so). The
//! pinned load generator busy-polls (`--no-spin`: it sleeps when idle): an idle core can take
//! some 50 µs to wake (in a VM), and a load generator that sleeps between answers left the
//! reference half idle. Workloads (`--only echo,chat,topic,json,memory,startup`):
//!
//! - echo: `--connections` 64, `--size` 32-byte text, `--in-flight` 16 per connection;
//! - chat: `--receivers` 200 and one sender; each message goes to every receiver (a script loop
//!   in wshost; with `topic`, a publish to a topic they all subscribed to); the sender
//!   keeps at most `--chat-window` 16 messages that some receiver has not read yet;
//! - json: like echo with `{"op":"add","n":1}`; the server keeps a total per connection and
//!   answers `{"total":N}` (checked at the end: N must be the number of answers);
//! - memory: `--idle` 5,000 idle connections, the server's RSS growth per connection;
//! - startup: from spawning the server to its `listening on` line.
//!
//! Each run prints a JSON line; then a table per workload gives the median of `--rounds` runs
//! of `--seconds` each (after `--warmup`), per figure. The columns:
//!
//! - rate: messages answered per second (echo, json), or deliveries per second summed over all
//!   receivers (chat), over the measured window;
//! - ratio: rate divided by the reference's;
//! - p50, p99: latency in ms. Echo and json: from writing a message to reading its answer (each
//!   connection keeps a FIFO of send instants). Chat: from writing a message to the moment the
//!   last of the receivers has read it;
//! - µs/msg: the server process's CPU time (utime + stime of all its threads, /proc/PID/stat)
//!   over the window, divided by the messages (chat: deliveries) of the window;
//! - server %: that CPU time over the window's length, in % of one core;
//! - other %: what else kept the server's core busy over the window (/proc/stat: other
//!   processes, kernel work not charged to the server, the hypervisor's steal); above 10 % the
//!   figures are disturbed and a WARNING says so;
//! - loadgen %: how busy the load generator's core was: the share of the window in which it had
//!   work (it busy-polls, so its CPU time is always ~100 %; the JSON line has both), or with
//!   `--no-spin` / unpinned its CPU time (/proc/self/stat).
//!
//! A line under each table says whether the reference reached its limit (its core ≥ 90 % busy
//! while the load generator's stayed below it). If not, the load generator, not the reference,
//! was the bottleneck, and a WARNING says the ratios are not meaningful.

mod fanout;
mod load;
mod pinning;
mod reference;
mod reload;
mod report;
mod server;
mod usage;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "wshost benchmarks")]
struct Cli {
    /// The wshost binary to benchmark (default: `wshost` next to this binary, i.e.
    /// target/release/wshost).
    #[arg(long, global = true)]
    wshost: Option<PathBuf>,
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
    /// Every workload against the reference and wshost (and Node's ws); prints the tables.
    All(AllArgs),
    /// Topics on one node and across two nodes through a real redis-server (`--cluster`); the
    /// receivers are subscribers on node B.
    Fanout(FanoutArgs),
    /// The reference server: plain tokio-tungstenite, no scripting.
    Reference {
        #[arg(long, value_enum)]
        mode: Mode,
    },
}

/// How long and how often each workload runs (`all`, `fanout`).
#[derive(clap::Args)]
struct Rounds {
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds each measured window lasts.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds of load before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

impl Rounds {
    fn rounds(&self) -> usize {
        self.rounds.max(1)
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }
}

/// The chat's shape (`all`'s chat and topic, `fanout`).
#[derive(clap::Args)]
struct ChatShape {
    /// Chat: receiving connections (the sender is one more).
    #[arg(long, default_value_t = 200)]
    receivers: usize,
    /// Chat: messages the sender may have out that not every receiver has read yet.
    #[arg(long, default_value_t = 16)]
    chat_window: usize,
}

#[derive(clap::Args)]
struct FanoutArgs {
    #[command(flatten)]
    rounds: Rounds,
    #[command(flatten)]
    chat: ChatShape,
    #[arg(long)]
    no_pin: bool,
}

#[derive(clap::Args)]
struct AllArgs {
    #[command(flatten)]
    rounds: Rounds,
    /// `--workers` for wshost.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Run the servers and the load generator unpinned (e.g. to compare `--workers 2`).
    #[arg(long)]
    no_pin: bool,
    /// Let the pinned load generator sleep when it has nothing to do instead of busy-polling.
    #[arg(long)]
    no_spin: bool,
    /// Workloads to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "echo,chat,topic,json,memory,startup"
    )]
    only: Vec<Workload>,
    /// Echo and json: connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Echo: bytes of text per message.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Echo and json: messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    in_flight: usize,
    #[command(flatten)]
    chat: ChatShape,
    /// Memory: idle connections.
    #[arg(long, default_value_t = 5000)]
    idle: usize,
}

/// What a reference server does with a message (`wshost-bench reference --mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// Sends it back.
    Echo,
    /// Sends it to every other connection.
    Chat,
    /// As chat; wshost publishes it to a topic every connection subscribed to.
    Topic,
    /// Parses `{"op":"add","n":N}`, adds N to the connection's total, answers `{"total":T}`.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    Echo,
    Chat,
    Topic,
    Json,
    Memory,
    Startup,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("wshost-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let wshost = match cli.wshost {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("wshost"),
    };
    match cli.bench {
        Bench::Reload {
            edits,
            clients,
            every,
        } => {
            let wshost = server::existing_wshost(&wshost)?;
            multi_thread()?.block_on(reload::reload(&wshost, edits, clients, every))
        }
        Bench::All(args) => {
            let config = report::Config {
                wshost: server::existing_wshost(&wshost)?,
                rounds: args.rounds.rounds(),
                window: args.rounds.window(),
                warmup: args.rounds.warmup(),
                workers: args.workers,
                pin: !args.no_pin,
                spin: !args.no_spin,
                only: args.only,
                echo: load::EchoShape {
                    connections: args.connections,
                    size: args.size,
                    in_flight: args.in_flight.max(1),
                },
                receivers: args.chat.receivers.max(1),
                chat_window: args.chat.chat_window.max(1),
                idle: args.idle,
            };
            report::all(&config)
        }
        Bench::Fanout(args) => fanout::fanout(&fanout::Config {
            wshost: server::existing_wshost(&wshost)?,
            rounds: args.rounds.rounds(),
            window: args.rounds.window(),
            warmup: args.rounds.warmup(),
            receivers: args.chat.receivers.max(1),
            chat_window: args.chat.chat_window.max(1),
            pin: !args.no_pin,
        }),
        // Tokio's default worker count follows the process's CPU affinity: one thread when
        // the bench pins the reference to one core, as many as cores when it does not.
        Bench::Reference { mode } => multi_thread()?.block_on(reference::serve(mode)),
    }
}

fn multi_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
