//! The script side: Rhai engines on worker threads, the 4D-style API, classes and errors.
//!
//! Nothing here touches a socket: scripts reach the network only through
//! [`ConnectionHandle`](crate::event::ConnectionHandle)s and the listener table.

mod api;
mod bounds;
mod call;
pub mod check;
mod classes;
mod client;
mod collect;
mod connection;
mod convert;
mod dispatch;
mod engine;
mod error;
mod fields;
mod lint;
mod memory;
mod methods;
mod objects;
mod printing;
mod reload;
mod rewrite;
mod server;
mod spares;
mod state;
mod testing;
mod timers;
mod top_level;
mod topics;
mod worker;

pub use check::compile_only;
pub use engine::{Budget, Interrupt};
pub use error::{ScriptError, display_name};
pub use state::Defaults;
pub use worker::{Exit, TestCase, WorkerHandle, WorkerOptions, spawn};
