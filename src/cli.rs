//! The `wshost` command line: flags parsed by clap, checked into a [`HostConfig`], then run.
//!
//! Exit codes: 0 done, 1 a script error, 2 bad input on the command line (unknown option,
//! missing file, a port that cannot be listened on).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::host::{Exit, Host, HostConfig};

#[derive(Parser, Debug)]
#[command(
    name = "wshost",
    version,
    about = "Run WebSocket servers written in Rhai scripts"
)]
struct Cli {
    /// More log output (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log lines as text, or as one JSON object per line (for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a script: its servers serve until stopped (Ctrl-C) or until the script ends them.
    Run(Box<RunArgs>),
    /// Run scripted tests: every `fn test_…()` of the files (or of `*.rhai` in the folders).
    Test(TestArgs),
    /// Compile scripts and the classes they use; report errors as file:line:col.
    Check {
        /// Script files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Connect to a WebSocket server by hand: lines typed (or piped in) are sent as text
    /// messages, messages received are printed; Ctrl-D closes with 1000.
    Connect {
        /// ws:// or wss:// URL.
        url: String,
        /// An extra upgrade-request header, NAME:VALUE (repeatable).
        #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
        headers: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct TestArgs {
    /// Test files or folders.
    #[arg(default_value = "tests/scripts")]
    paths: Vec<PathBuf>,
    /// Run only the tests whose name (`file::test_name`) contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Tests run at once.
    #[arg(long, short = 'j', default_value_t = 2)]
    jobs: usize,
    /// Time limit of each test, in seconds.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

/// Limits; the defaults are those of `HostConfig::default()` (see the README).
#[derive(clap::Args, Debug)]
struct LimitArgs {
    /// Largest incoming message and frame, in bytes (over it: close 1009).
    #[arg(long, value_name = "BYTES")]
    max_message_size: Option<usize>,
    /// Read buffer allocated per connection, in bytes.
    #[arg(long, value_name = "BYTES")]
    read_buffer: Option<usize>,
    /// Outgoing messages queued per connection before the peer is closed as too slow (1008).
    #[arg(long, value_name = "MESSAGES")]
    send_queue: Option<usize>,
    /// Outgoing bytes queued per connection before the peer is closed as too slow (1008).
    #[arg(long, value_name = "BYTES")]
    send_queue_bytes: Option<usize>,
    /// `maxConnections` of servers that do not set it.
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Time for the HTTP upgrade request and onConnection's answer, in seconds.
    #[arg(long, value_name = "SECS")]
    handshake_timeout: Option<f64>,
    /// Seconds between pings to each connection (0: no pings).
    #[arg(long, value_name = "SECS")]
    ping_interval: Option<f64>,
    /// Seconds without anything from a peer before its connection is dropped (0: never).
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<f64>,
    /// Rhai operations a callback may run before it is stopped.
    #[arg(long, value_name = "N")]
    max_operations: Option<u64>,
    /// Milliseconds a callback may run before it is stopped.
    #[arg(long, value_name = "MS")]
    callback_timeout: Option<u64>,
    /// Megabytes a callback may allocate (and keep) before it is stopped.
    #[arg(long, value_name = "MB")]
    callback_memory: Option<usize>,
    /// Megabytes the scripts' objects of a worker may hold between callbacks.
    #[arg(long, value_name = "MB")]
    script_memory: Option<usize>,
}

/// The longest duration a flag takes: a year. Longer would overflow a clock's deadline (a
/// panic, exit 101, instead of a clear error).
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// `--name v` as a duration of `v` seconds: a number from 0 (`0` refused unless
/// `zero_ok`) to a year; else the error says so.
fn seconds(name: &str, v: f64, zero_ok: bool) -> Result<std::time::Duration, String> {
    let low_ok = if zero_ok { v >= 0.0 } else { v > 0.0 };
    if v.is_finite() && low_ok && v <= MAX_SECONDS {
        Ok(std::time::Duration::from_secs_f64(v))
    } else {
        let low = if zero_ok { ">= 0" } else { "> 0" };
        Err(format!(
            "--{name} must be a number of seconds {low} and at most {MAX_SECONDS} (a year), got {v:?}"
        ))
    }
}

impl LimitArgs {
    /// Applies the flags given to `config`; an error names a bad value.
    fn apply(&self, config: &mut HostConfig) -> Result<(), String> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                seconds(name, v, true)
            } else {
                Err(format!(
                    "--{name} must be a number of seconds >= 0, got {v}"
                ))
            }
        };
        let net = &mut config.net;
        if let Some(n) = self.max_message_size {
            if n == 0 {
                return Err("--max-message-size must be > 0".into());
            }
            net.max_message_size = n;
            net.max_frame_size = n;
        }
        if let Some(n) = self.read_buffer {
            net.read_buffer_size = n.max(1024);
        }
        if let Some(n) = self.send_queue {
            net.send_queue = n.max(1);
        }
        if let Some(n) = self.send_queue_bytes {
            net.send_queue_bytes = n;
        }
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        if let Some(v) = self.handshake_timeout {
            net.handshake_timeout = secs("handshake-timeout", v)?;
        }
        if let Some(v) = self.ping_interval {
            let d = secs("ping-interval", v)?;
            net.ping_interval = (!d.is_zero()).then_some(d);
        }
        if let Some(v) = self.idle_timeout {
            let d = secs("idle-timeout", v)?;
            net.idle_timeout = (!d.is_zero()).then_some(d);
        }
        if let Some(n) = self.max_operations {
            config.budget.max_operations = n;
        }
        if let Some(mb) = self.script_memory {
            config.budget.max_state = mb.max(1) << 20;
        }
        if let Some(mb) = self.callback_memory {
            config.budget.max_memory = mb.max(1) << 20;
        }
        if let Some(ms) = self.callback_timeout {
            let most = (MAX_SECONDS * 1000.0) as u64;
            if ms > most {
                return Err(format!(
                    "--callback-timeout must be at most {most} ms (a year), got {ms}"
                ));
            }
            config.budget.max_time = std::time::Duration::from_millis(ms.max(1));
        }
        Ok(())
    }
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The entry script.
    script: PathBuf,
    /// Port for servers whose options have no `port` (0: any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address for servers whose options have no `host`.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[command(flatten)]
    limits: LimitArgs,
    /// Serve the files of this folder over HTTP on the servers' port (servers whose options
    /// have no `staticDir`).
    #[arg(long = "static", value_name = "DIR")]
    static_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM) for servers whose options have no `tls`; needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) going with --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Script workers: threads each running the script with its own engine; connections are
    /// spread over them (see the README for what they share).
    #[arg(long, default_value_t = 1, value_name = "N")]
    workers: usize,
    /// Do not watch the scripts for changes (no hot reload).
    #[arg(long)]
    no_watch: bool,
    /// Serve /metrics (Prometheus) and /healthz on this address, e.g. 127.0.0.1:9090.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Join a cluster of wshost processes through this Redis server (redis://HOST:PORT[/DB]):
    /// topics published on one node reach subscribers on all of them.
    #[arg(long, value_name = "URL", env = "WSHOST_CLUSTER")]
    cluster: Option<String>,
    /// Seconds a stop (SIGTERM, Ctrl-C) may take to close every connection before the host
    /// gives up waiting and exits 3.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    drain_timeout: f64,
    /// A PEM file of extra certificate authorities for wss:// clients to trust.
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Arguments for the script, in its `ARGS` array (after `--` if they start with `-`).
    #[arg(trailing_var_arg = true)]
    args: Vec<String>,
}

/// Saves of the same files closer together than this make one reload.
const RELOAD_DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(2);

/// Runs the command line `args` (including the program name); returns the exit code.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // One line, not clap's usage block: the first line of its message.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("error: bad arguments");
            eprintln!("{first} (see wshost --help)");
            return ExitCode::from(2);
        }
    };
    // Test output is the test lines; the host's own info lines would bury them.
    let quiet = matches!(cli.command, Command::Test(_));
    init_logging(cli.verbose, quiet, cli.log_format);
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Check { files } => check(&files),
        Command::Test(args) => test(args),
        Command::Connect { url, headers } => crate::connect::run(&url, &headers),
    }
}

fn test(args: TestArgs) -> ExitCode {
    for p in &args.paths {
        if !p.exists() {
            eprintln!("error: no such test file or folder: {}", p.display());
            return ExitCode::from(2);
        }
    }
    let timeout = match seconds("timeout", args.timeout, false) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let config = crate::runner::TestConfig {
        paths: args.paths,
        filter: args.filter,
        jobs: args.jobs,
        timeout,
    };
    match crate::runner::run(&config) {
        Ok(summary) if summary.failed == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    let default = match verbose {
        0 if quiet => "wshost=warn",
        0 => "wshost=info",
        1 => "wshost=debug",
        _ => "wshost=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if format == LogFormat::Json {
        // One object per line: timestamp, level, message, and the event's fields (conn,
        // callback, location…) beside them.
        let _ = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_target(false)
            .with_writer(std::io::stderr)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(args: RunArgs) -> ExitCode {
    if !args.script.is_file() {
        eprintln!("error: no such script: {}", args.script.display());
        return ExitCode::from(2);
    }
    if let Some(ca) = &args.ca_file
        && !ca.is_file()
    {
        eprintln!("error: no such CA file: {}", ca.display());
        return ExitCode::from(2);
    }
    let mut config = HostConfig::default();
    config.host = args.host;
    config.port = args.port;
    config.args = args.args;
    config.watch = (!args.no_watch).then_some(RELOAD_DEBOUNCE);
    config.workers = args.workers.clamp(1, 64);
    config.net.extra_ca = args.ca_file;
    config.metrics = args.metrics;
    config.cluster = args.cluster.filter(|url| !url.is_empty());
    config.catch_signals = true;
    config.shutdown_timeout = match seconds("drain-timeout", args.drain_timeout, false) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &args.static_dir {
        match dir.canonicalize() {
            Ok(root) if root.is_dir() => config.static_root = Some(root),
            _ => {
                eprintln!("error: --static: no such folder: {}", dir.display());
                return ExitCode::from(2);
            }
        }
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        if let Err(e) = crate::net::tls_acceptor(cert, key) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        config.tls = Some((cert.clone(), key.clone()));
    }
    if let Err(e) = args.limits.apply(&mut config) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let host = match Host::start(&args.script, config) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    match host.wait_with_signals() {
        Exit::Finished => ExitCode::SUCCESS,
        Exit::ScriptFailed(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
        Exit::ListenFailed(messages) => {
            for m in messages {
                eprintln!("error: {m}");
            }
            ExitCode::from(2)
        }
        // Logged already; a stop that was not clean is not a success.
        Exit::StopForced => ExitCode::from(3),
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    // A missing file is bad input, as for `run`: exit 2 before anything is compiled.
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        eprintln!("error: no such script: {}", missing.display());
        return ExitCode::from(2);
    }
    let mut failed = 0;
    for checked in crate::script::check::check(files) {
        match checked.result {
            Ok(()) => println!("ok    {}", checked.file),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
