//! # wshost
//!
//! Runs WebSocket servers whose behaviour is written in [Rhai](https://rhai.rs) scripts, with
//! the API of 4D's WebSocket classes (`WebSocketServer.new(handler, options)`, handler objects
//! with `onConnection`, `onOpen`, `onMessage`, `onTerminate`, `onError`):
//!
//! ```rhai
//! // scripts/echo.rhai
//! WebSocketServer.new(#{
//!     onConnection: |wss, event| #{ onMessage: |ws, event| ws.send(event.data) },
//! });
//! ```
//!
//! The `wshost` binary (`wshost run scripts/echo.rhai`) is a thin layer over this library;
//! its README is the manual of the script API. This page is about running scripts from your
//! own Rust program.
//!
//! ## Running a script
//!
//! [`Host::start`] starts the network and the script workers, runs the entry script's top
//! level and returns once its servers listen. [`Host::ports`] says which ports they got (with
//! `port: 0` or [`HostConfig::port`] `0`, any free port). [`Host::wait`] returns when the
//! scripts are done, or when a [`StopHandle`] has stopped the host, with an [`Exit`]:
//!
//! ```
//! use wshost::{Exit, Host, HostConfig};
//!
//! let mut config = HostConfig::default();
//! config.port = 0; // any free port
//! let host = Host::start("scripts/echo.rhai", config)?;
//! let port = host.ports()[0];
//! println!("echo server on ws://127.0.0.1:{port}/");
//!
//! // … talk to it with any WebSocket client …
//!
//! host.stop_handle().stop(); // or from another thread: the handle is Send and Clone
//! assert!(matches!(host.wait(), Exit::Finished));
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! A stop is graceful: servers stop accepting, every connection gets a close frame `1001`,
//! every `onTerminate` runs. [`Host::wait_with_signals`] also stops on Ctrl-C and SIGTERM, as
//! `wshost run` does. A script that does not compile or fails at its top level is an
//! [`Exit::ScriptFailed`] with a [`ScriptError`] that prints as `file:line:col: message`,
//! followed by the source line with `{:#}`.
//!
//! ## Adding your own functions
//!
//! [`HostConfig::with_globals`] gives each script worker's Rhai [`Engine`](rhai::Engine) to a
//! function of yours after wshost's own globals are registered: register functions there and
//! scripts can call them. [`rhai`] is re-exported so that you use the same version:
//!
//! ```
//! use std::collections::HashMap;
//! use std::sync::Arc;
//!
//! let users = Arc::new(HashMap::from([("t0k3n".to_string(), "ada".to_string())]));
//! let config = wshost::HostConfig::default().with_globals(move |engine| {
//!     let users = users.clone();
//!     engine.register_fn("lookup_user", move |token: &str| -> wshost::rhai::Dynamic {
//!         users.get(token).cloned().map(Into::into).unwrap_or_default()
//!     });
//! });
//! ```
//!
//! Each worker is one thread with its own engine, and a callback runs to its end before the
//! next one starts: a registered function that blocks holds up that worker's connections. A
//! function of yours that panics fails the callback that called it, as a script error would;
//! the connection and the worker go on.
//!
//! ## Limits
//!
//! [`HostConfig`] carries every setting of `wshost run`: [`NetConfig`] (message sizes,
//! queues, timeouts) and [`Budget`] (what one callback may use). The memory part of the budget
//! is enforced only when the program installs [`CountingAllocator`] as its global allocator,
//! as the `wshost` binary does.
//!
//! ## Examples
//!
//! - `examples/embed.rs`: start a host on port 0, read the port, talk to it, stop it
//!   (`cargo run --example embed`).
//! - `examples/custom_global.rs`: a `lookup_user(token)` backed by a Rust `HashMap`, used by
//!   a script to let connections in (`cargo run --example custom_global`).
//!
//! ## How it is built
//!
//! Socket tasks (tokio, hyper for the upgrade, tokio-tungstenite for frames) turn what
//! arrives into events for the script worker that owns the connection, a thread with its
//! Rhai engine; scripts answer through connection handles (an id plus a way to reach the
//! socket). The network never waits on a script.

mod alloc;
mod cancel;
pub mod cli;
mod cluster;
mod connect;
mod event;
mod event_loop;
mod host;
mod metrics;
pub(crate) mod net;
mod payload;
mod runner;
mod script;
mod topics;
mod watch;

pub use alloc::CountingAllocator;
pub use host::{Exit, Host, HostConfig, StopHandle};
pub use net::NetConfig;
/// The Rhai crate wshost runs scripts with, for [`HostConfig::with_globals`].
pub use rhai;
pub use script::{Budget, ScriptError};
