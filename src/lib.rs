//! # wshost
//!
//! Runs WebSocket servers whose behaviour is written in [Rhai](https://rhai.rs) scripts, with
//! the API of 4D's WebSocket classes (`WebSocketServer.new(handler, options)`, handler objects
//! with `onConnection`, `onOpen`, `onMessage`, `onTerminate`, `onError`).
//!
//! The `wshost` binary is a thin layer over this library. To embed a host in a program:
//!
//! ```no_run
//! use wshost::{Host, HostConfig};
//!
//! let host = Host::start("scripts/echo.rhai", HostConfig { port: 9001, ..Default::default() })?;
//! let exit = host.wait(true); // until the script is done, or Ctrl-C
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! How it is built: socket tasks (tokio, hyper for the upgrade, tokio-tungstenite for frames)
//! send events to a script worker thread that owns the Rhai engine; scripts answer through
//! connection handles (an id plus a command sender). The network never waits on a script.
//! The README is the manual for the script API.

mod alloc;
pub mod cli;
mod event;
mod event_loop;
mod host;
pub(crate) mod net;
mod payload;
pub mod runner;
mod script;
mod watch;

pub use alloc::CountingAllocator;
pub use host::{Host, HostConfig, StopHandle};
pub use net::NetConfig;
pub use script::{Budget, Exit, ScriptError};
