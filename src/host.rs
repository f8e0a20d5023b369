//! A host: the async runtime for the network, one script worker, and a graceful stop.
//!
//! This is what `wshost run` and an embedding program use. It owns the order of shutdown:
//! tell the worker, which closes every connection with 1001 and runs every `onTerminate`,
//! then wait for it a bounded time.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::net::{NetConfig, Network};
use crate::script::{self, Budget, Defaults, Exit, WorkerOptions};

/// `maxConnections` of a server unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Everything a host can be told; `Default` gives the documented defaults.
#[derive(Clone, Debug)]
pub struct HostConfig {
    /// Address servers bind when their options have no `host`.
    pub host: String,
    /// Port servers listen on when their options have no `port`.
    pub port: u16,
    /// `maxConnections` of servers whose options do not set it.
    pub max_connections: usize,
    /// `static` folder of servers whose options do not set it.
    pub static_root: Option<PathBuf>,
    /// `tls` (certificate chain, private key; PEM files) of servers whose options do not set it.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub net: NetConfig,
    pub budget: Budget,
    /// How long a graceful stop may take before the host gives up waiting.
    pub shutdown_timeout: Duration,
    /// The script's `ARGS` array.
    pub args: Vec<String>,
    /// Hot reload: watch the scripts, with this debounce (None: no watching).
    pub watch: Option<Duration>,
    /// Script workers (threads, each with its own engine running the script).
    pub workers: usize,
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
            args: Vec::new(),
            watch: None,
            workers: 1,
        }
    }
}

/// A host running one entry script.
pub struct Host {
    runtime: tokio::runtime::Runtime,
    workers: Vec<script::WorkerHandle>,
    shutdown_timeout: Duration,
}

/// Asks a running host to stop gracefully; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct StopHandle(Vec<flume::Sender<crate::event::Event>>);

impl StopHandle {
    pub fn stop(&self) {
        for worker in &self.0 {
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
    /// Starts the runtime and `config.workers` workers running `entry`. The first worker runs
    /// the top level alone, so the others' servers join its ports; returns then.
    pub fn start(entry: impl Into<PathBuf>, config: HostConfig) -> anyhow::Result<Self> {
        let runtime = net_runtime()?;
        let net = Network::new(runtime.handle().clone(), config.net)?;
        let entry = entry.into();
        let port_plan: std::sync::Arc<std::sync::Mutex<Vec<u16>>> = Default::default();
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
                    extend_engine: None,
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
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.workers.iter().map(|w| w.events.clone()).collect())
    }

    /// Waits until the scripts are done, stopping gracefully on SIGINT/SIGTERM when
    /// `signals`. The first worker's exit is the host's, unless another one failed.
    pub fn wait(self, signals: bool) -> Exit {
        let stop = self.stop_handle();
        let Host {
            runtime,
            workers,
            shutdown_timeout,
        } = self;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut exit = None;
            for worker in workers {
                let e = worker.thread.join().unwrap_or_else(|_| {
                    Exit::ScriptFailed(crate::script::ScriptError::plain(
                        "wshost",
                        "a script worker panicked",
                    ))
                });
                exit = match (exit, e) {
                    (None, e) => Some(e),
                    (Some(Exit::Finished), e) => Some(e),
                    (Some(first), _) => Some(first),
                };
            }
            let _ = done_tx.send(exit.unwrap_or(Exit::Finished));
        });
        let exit = runtime.block_on(async move {
            let mut done_rx = done_rx;
            tokio::select! {
                exit = &mut done_rx => return exit.ok(),
                _ = stop_signal(), if signals => {}
            }
            tracing::info!("stopping: closing every connection (1001)");
            stop.stop();
            match tokio::time::timeout(shutdown_timeout, &mut done_rx).await {
                Ok(exit) => exit.ok(),
                Err(_) => {
                    tracing::warn!(
                        "stop did not finish within {shutdown_timeout:?}; exiting anyway"
                    );
                    Some(Exit::Finished)
                }
            }
        });
        runtime.shutdown_timeout(Duration::from_millis(500));
        exit.unwrap_or(Exit::Finished)
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
