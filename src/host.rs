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
        }
    }
}

/// A host running one entry script.
pub struct Host {
    runtime: tokio::runtime::Runtime,
    worker: script::WorkerHandle,
    shutdown_timeout: Duration,
}

/// Asks a running host to stop gracefully; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct StopHandle(flume::Sender<crate::event::Event>);

impl StopHandle {
    pub fn stop(&self) {
        let _ = self.0.send(crate::event::Event::Shutdown);
    }
}

impl Host {
    /// Starts the runtime and a worker running `entry`; returns at once.
    pub fn start(entry: impl Into<PathBuf>, config: HostConfig) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("wshost-net")
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let net = Network::new(runtime.handle().clone(), config.net)?;
        let worker = script::spawn(
            net,
            WorkerOptions {
                entry: entry.into(),
                args: config.args,
                defaults: Defaults {
                    host: config.host,
                    port: config.port,
                    max_connections: config.max_connections,
                    static_root: config.static_root,
                    tls: config.tls,
                },
                budget: config.budget,
                test: None,
                watch: config.watch,
            },
        )
        .context("cannot start the script worker")?;
        Ok(Self {
            runtime,
            worker,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.worker.events.clone())
    }

    /// Waits until the script is done, stopping gracefully on SIGINT/SIGTERM when `signals`.
    pub fn wait(self, signals: bool) -> Exit {
        let Host {
            runtime,
            worker,
            shutdown_timeout,
        } = self;
        let events = worker.events.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let thread = worker.thread;
        std::thread::spawn(move || {
            let exit = thread.join().unwrap_or_else(|_| {
                Exit::ScriptFailed(crate::script::ScriptError::plain(
                    "wshost",
                    "the script worker panicked",
                ))
            });
            let _ = done_tx.send(exit);
        });
        let exit = runtime.block_on(async move {
            let mut done_rx = done_rx;
            tokio::select! {
                exit = &mut done_rx => return exit.ok(),
                _ = stop_signal(), if signals => {}
            }
            tracing::info!("stopping: closing every connection (1001)");
            let _ = events.send(crate::event::Event::Shutdown);
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
