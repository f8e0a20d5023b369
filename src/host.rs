//! A host: the async runtime for the network, the script workers, and a graceful stop.
//!
//! This is what `wshost run` and an embedding program use. It owns the order of shutdown:
//! tell the workers, which close every connection with 1001 and run every `onTerminate`,
//! then wait for them a bounded time.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use crate::net::{NetConfig, Network};
use crate::script::{self, Budget, Defaults, ScriptError, WorkerOptions};

/// `maxConnections` of a server unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Everything a host can be told; `Default` gives the documented defaults (those of
/// `wshost run` without flags, but no hot reload).
///
/// Fields may be added in later versions, so a config is made from `HostConfig::default()`
/// and then changed:
///
/// ```
/// let mut config = wshost::HostConfig::default();
/// config.port = 0; // any free port; read it back with `Host::ports`
/// config.args = vec!["--verbose".into()];
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HostConfig {
    /// Address servers bind when their options have no `host`.
    pub host: String,
    /// Port servers listen on when their options have no `port` (0: any free port).
    pub port: u16,
    /// `maxConnections` of servers whose options do not set it.
    pub max_connections: usize,
    /// `staticDir` of servers whose options do not set it.
    pub static_root: Option<PathBuf>,
    /// `tls` (certificate chain, private key; PEM files) of servers whose options do not set it.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Limits of the network side (message sizes, queues, timeouts).
    pub net: NetConfig,
    /// Limits of each callback (operations, time, memory).
    pub budget: Budget,
    /// How long a graceful stop (a drain) may take before the host gives up waiting
    /// (`--drain-timeout`).
    pub shutdown_timeout: Duration,
    /// Serve `/metrics` (Prometheus) and `/healthz` on this address (`--metrics`; None: off).
    pub metrics: Option<String>,
    /// Join a cluster through this Redis server (`--cluster redis://HOST:PORT[/DB]`; None:
    /// this host alone).
    pub cluster: Option<String>,
    /// The script's `ARGS` array.
    pub args: Vec<String>,
    /// Hot reload: watch the scripts, with this debounce (None: no watching).
    pub watch: Option<Duration>,
    /// Script workers (threads, each with its own engine running the script).
    pub workers: usize,
    /// The program's own additions to the script API (see [`HostConfig::with_globals`]).
    globals: Option<Globals>,
    /// Catch SIGINT/SIGTERM from the start, before the servers listen (`wshost run`, which
    /// then waits with [`Host::wait_with_signals`]): a signal that came in between would
    /// otherwise kill the process without a drain.
    pub(crate) catch_signals: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            static_root: None,
            tls: None,
            net: NetConfig::default(),
            budget: Budget::default(),
            shutdown_timeout: Duration::from_secs(5),
            metrics: None,
            cluster: None,
            args: Vec::new(),
            watch: None,
            workers: 1,
            globals: None,
            catch_signals: false,
        }
    }
}

impl HostConfig {
    /// Adds the program's own functions (or types) to the script API: `register` runs on the
    /// engines of each script worker (two: one for callbacks, one for top-level code and
    /// tests), on its thread, after wshost's own globals are registered, so a name given here
    /// wins over a global of the same name.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::sync::Arc;
    ///
    /// let users = Arc::new(HashMap::from([("t0k3n".to_string(), "ada".to_string())]));
    /// let config = wshost::HostConfig::default().with_globals(move |engine| {
    ///     let users = users.clone();
    ///     // In scripts: `lookup_user(token)` is the user's name, or `()`.
    ///     engine.register_fn("lookup_user", move |token: &str| -> wshost::rhai::Dynamic {
    ///         users.get(token).cloned().map(Into::into).unwrap_or_default()
    ///     });
    /// });
    /// ```
    pub fn with_globals(
        mut self,
        register: impl Fn(&mut rhai::Engine) + Send + Sync + 'static,
    ) -> Self {
        self.globals = Some(Globals(Arc::new(register)));
        self
    }
}

/// The function [`HostConfig::with_globals`] was given.
#[derive(Clone)]
struct Globals(Arc<dyn Fn(&mut rhai::Engine) + Send + Sync>);

impl fmt::Debug for Globals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Globals(..)")
    }
}

/// How a host ended (what [`Host::wait`] returns). More kinds may come: match with a
/// catch-all arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Exit {
    /// Everything the scripts created has ended, or a stop closed it.
    Finished,
    /// The entry script did not compile or its top level failed.
    ScriptFailed(ScriptError),
    /// A server of the entry script's top level could not listen (one message each).
    ListenFailed(Vec<String>),
    /// A stop did not finish within the shutdown timeout (a callback stuck in a native call):
    /// the host gave up waiting, and peers not closed by then get no close frame.
    StopForced,
}

impl From<script::Exit> for Exit {
    fn from(exit: script::Exit) -> Self {
        match exit {
            script::Exit::Finished | script::Exit::Test(Ok(())) => Exit::Finished,
            script::Exit::ScriptFailed(e) | script::Exit::Test(Err(e)) => Exit::ScriptFailed(e),
            script::Exit::ListenFailed(messages) => Exit::ListenFailed(messages),
        }
    }
}

/// A host running one entry script: its servers, clients and timers, on script workers.
///
/// ```no_run
/// let mut config = wshost::HostConfig::default();
/// config.port = 0;
/// let host = wshost::Host::start("scripts/echo.rhai", config)?;
/// println!("echo on ws://127.0.0.1:{}/", host.ports()[0]);
/// let stop = host.stop_handle(); // stop.stop() from any thread ends it gracefully
/// let exit = host.wait_with_signals(); // until the script is done, or Ctrl-C / SIGTERM
/// # Ok::<(), anyhow::Error>(())
/// ```
pub struct Host {
    runtime: tokio::runtime::Runtime,
    workers: Vec<script::WorkerHandle>,
    shutdown_timeout: Duration,
    /// The ports the first worker's top-level servers got, in creation order.
    ports: Arc<Mutex<Vec<u16>>>,
    net: Arc<Network>,
    /// The signals listened to since the start (see `HostConfig::catch_signals`).
    caught: Option<CaughtSignals>,
}

/// Asks a running host to stop gracefully; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct StopHandle {
    workers: Vec<flume::Sender<crate::event::Event>>,
    net: Arc<Network>,
}

impl StopHandle {
    /// Drains: new upgrades get `503` (as does `/healthz`), every connection gets a close frame
    /// `1001` (going away), every `onTerminate` runs, clients are closed and timers dropped;
    /// then [`Host::wait`] returns.
    pub fn stop(&self) {
        self.net.drain();
        for worker in &self.workers {
            let _ = worker.send(crate::event::Event::Shutdown);
        }
    }
}

/// The async runtime the network side runs on: two threads, as the machines have two cores.
pub(crate) fn net_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("wshost-net")
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

impl Host {
    /// Starts the network and `config.workers` script workers running `entry`, and returns
    /// once the entry script's top level has run: its servers listen by then.
    ///
    /// An error here is the host failing to start (threads, runtime, a bad `--ca-file`). A
    /// script that does not compile, fails at its top level or cannot listen is reported by
    /// [`Host::wait`], which then returns at once.
    pub fn start(entry: impl Into<PathBuf>, config: HostConfig) -> anyhow::Result<Self> {
        let runtime = net_runtime()?;
        let caught = if config.catch_signals {
            let _in_runtime = runtime.enter();
            Some(CaughtSignals::new()?)
        } else {
            None
        };
        let net = Network::new(runtime.handle().clone(), config.net)?;
        if let Some(addr) = &config.metrics {
            crate::metrics::start(
                addr,
                runtime.handle(),
                net.draining_flag(),
                net.topics().clone(),
            )?;
        }
        if let Some(url) = &config.cluster {
            crate::event::start_ids_at(net.node().number());
            crate::cluster::start(
                url,
                net.node().as_str(),
                net.topics().clone(),
                runtime.handle(),
            )?;
        }
        let entry = entry.into();
        // The first worker records its top-level servers' ports here; the others join them.
        let port_plan: Arc<Mutex<Vec<u16>>> = Default::default();
        let mut workers = Vec::new();
        for index in 0..config.workers.max(1) {
            let (started_tx, started_rx) = std::sync::mpsc::channel();
            let worker = script::spawn(
                net.clone(),
                WorkerOptions {
                    entry: entry.clone(),
                    args: config.args.clone(),
                    defaults: Defaults {
                        host: config.host.clone(),
                        port: config.port,
                        max_connections: config.max_connections,
                        static_root: config.static_root.clone(),
                        tls: config.tls.clone(),
                    },
                    budget: config.budget.clone(),
                    test: None,
                    watch: config.watch,
                    index,
                    port_plan: port_plan.clone(),
                    started: Some(started_tx),
                    extend_engine: config.globals.as_ref().map(|g| g.0.clone()),
                },
            )
            .context("cannot start a script worker")?;
            workers.push(worker);
            // Wait for its top level (an error there ends the worker, and the run).
            if started_rx.recv().is_err() {
                break;
            }
        }
        if workers.len() > 1 {
            tracing::info!("{} script workers running", workers.len());
        }
        Ok(Self {
            runtime,
            workers,
            shutdown_timeout: config.shutdown_timeout,
            ports: port_plan,
            net,
            caught,
        })
    }

    /// The ports the servers of the entry script's top level listen on, in the order it
    /// created them (with `port: 0`, the port the system gave). Servers made later, in
    /// callbacks, are not listed; a server that could not listen is `0`.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.lock().unwrap().clone()
    }

    /// A handle that stops the host gracefully from anywhere, e.g. another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            workers: self.workers.iter().map(|w| w.events.clone()).collect(),
            net: self.net.clone(),
        }
    }

    /// Waits until the scripts are done: nothing they created is left, or a
    /// [`StopHandle::stop`] has closed everything. Signals are left to the program.
    pub fn wait(self) -> Exit {
        self.wait_until_done(Signals::Ignore)
    }

    /// As [`Host::wait`], and SIGINT (Ctrl-C) or SIGTERM stops the host gracefully, within
    /// [`HostConfig::shutdown_timeout`]: what `wshost run` does.
    pub fn wait_with_signals(self) -> Exit {
        self.wait_until_done(Signals::Stop)
    }

    /// The first worker's exit is the host's, unless another one failed.
    fn wait_until_done(self, signals: Signals) -> Exit {
        let stop = self.stop_handle();
        let Host {
            runtime,
            workers,
            shutdown_timeout,
            ports: _,
            net,
            caught,
        } = self;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut exit = None;
            for worker in workers {
                let e = worker.thread.join().map(Exit::from).unwrap_or_else(|_| {
                    Exit::ScriptFailed(ScriptError::plain("wshost", "a script worker panicked"))
                });
                exit = match (exit, e) {
                    (None, e) => Some(e),
                    (Some(Exit::Finished), e) => Some(e),
                    (Some(first), _) => Some(first),
                };
            }
            let _ = done_tx.send(exit.unwrap_or(Exit::Finished));
        });
        let on_signals = signals == Signals::Stop;
        let exit = runtime.block_on(async move {
            let mut done_rx = done_rx;
            let mut caught = match (on_signals, caught) {
                (false, _) => None,
                (true, Some(caught)) => Some(caught),
                (true, None) => CaughtSignals::new()
                    .map_err(|e| tracing::warn!("{e:#}"))
                    .ok(),
            };
            tokio::select! {
                exit = &mut done_rx => return exit.ok(),
                _ = next_signal(&mut caught) => {}
            }
            tracing::info!("stopping: closing every connection (1001)");
            stop.stop();
            // A worker busy in a callback cannot close its connections: after a moment the
            // callbacks running then are interrupted (those of the stop itself still run).
            // A second signal ends the process at once.
            let patience = (shutdown_timeout / 5).min(Duration::from_secs(1));
            tokio::select! {
                exit = tokio::time::timeout(patience, &mut done_rx) => {
                    if let Ok(exit) = exit {
                        return exit.ok();
                    }
                }
                _ = next_signal(&mut caught) => return Some(second_signal()),
            }
            tracing::warn!("stopping: interrupting the callbacks still running");
            net.interrupt().raise();
            tokio::select! {
                exit = tokio::time::timeout(shutdown_timeout - patience, &mut done_rx) => {
                    match exit {
                        Ok(exit) => exit.ok(),
                        Err(_) => {
                            tracing::error!(
                                "stop did not finish within {shutdown_timeout:?} (a callback stuck \
                                 in a native call?): exiting anyway; connections still open get \
                                 no close frame"
                            );
                            Some(Exit::StopForced)
                        }
                    }
                }
                _ = next_signal(&mut caught) => Some(second_signal()),
            }
        });
        // The acceptor only accepts: nothing to wait for.
        runtime.shutdown_background();
        exit.unwrap_or(Exit::Finished)
    }
}

/// Whether SIGINT/SIGTERM stop the host while it is waited for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Signals {
    Ignore,
    Stop,
}

/// SIGTERM and SIGINT, listened to from when this is made: one that comes before the host
/// waits for it is not lost (nor does it kill the process without a drain).
struct CaughtSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl CaughtSignals {
    /// Inside the runtime.
    fn new() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
                int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The next SIGINT or SIGTERM (never, without signals to listen to).
async fn next_signal(caught: &mut Option<CaughtSignals>) {
    match caught {
        Some(caught) => caught.recv().await,
        None => std::future::pending().await,
    }
}

/// A second signal during a stop: the process ends now (exit 3).
fn second_signal() -> Exit {
    tracing::warn!(
        "stopping: a second signal: exiting now; connections still open get no close frame"
    );
    Exit::StopForced
}
