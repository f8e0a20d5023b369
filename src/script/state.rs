//! What a script worker knows about the objects its scripts created: servers, connections,
//! classes and source texts. Shared (single-threaded) between the worker loop and the native
//! functions scripts call.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use rhai::Dynamic;

use super::classes::ClassStore;
use super::convert::DataType;
use super::engine::{Budget, Deadline};
use super::error::Sources;
use super::memory::MemoryWatch;
use super::objects::{Table, ThisStack};
use super::timers::Timers;
use super::top_level::TopLevel;
use crate::event::{ConnId, ConnectionHandle, Event, ServerId};
use crate::event_loop::{EventLoop, Events};
use crate::net::Network;

/// Defaults for servers that do not say otherwise (`--host`, `--port`).
#[derive(Clone, Debug)]
pub struct Defaults {
    pub host: String,
    pub port: u16,
    /// `maxConnections` of servers that do not set it.
    pub max_connections: usize,
    /// `static` of servers that do not set it (`--static`).
    pub static_root: Option<std::path::PathBuf>,
    /// `tls` of servers that do not set it (`--tls-cert`, `--tls-key`).
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

pub struct ServerEntry {
    pub handler: Dynamic,
    /// The `port` asked for (0 for any): with host and path, what a re-run matches on.
    pub requested_port: u16,
    /// The file whose functions `Fn("name")` in the handler refers to.
    pub home: Option<Rc<str>>,
    pub host: String,
    /// The bound port once listening; the requested one before or on failure.
    pub port: u16,
    pub addr: Option<SocketAddr>,
    pub path: Option<String>,
    pub data_type: DataType,
    /// Accepted connections not yet terminated, in id (= arrival) order.
    pub conns: BTreeSet<ConnId>,
    /// `terminate()` was called, or it could not listen.
    pub terminated: bool,
    /// It could not listen and its `onError` (errCode 30) has not run yet: `onTerminate` waits.
    pub listen_error_pending: bool,
    /// More connections than this are refused with 503.
    pub max_connections: usize,
    /// The open connections of this server on every worker (None if it never listened).
    pub shared: Option<Arc<crate::net::ConnTable>>,
}

/// Which end of the connection this worker holds.
#[derive(Clone, Debug)]
pub enum Side {
    /// Accepted by one of the worker's servers.
    Server(ServerId),
    /// Opened by `WebSocket.new(url, …)`.
    Client { url: String },
}

impl ServerEntry {
    /// Connections of this server: open on any worker, or accepted here and opening.
    pub fn open_count(&self) -> usize {
        let shared = self.shared.as_ref().map_or(0, |t| t.read().unwrap().len());
        shared.max(self.conns.len())
    }
}

pub struct ConnEntry {
    pub handle: ConnectionHandle,
    pub side: Side,
    pub handler: Dynamic,
    /// The file whose functions `Fn("name")` in the handler refers to.
    pub home: Option<Rc<str>>,
    pub data_type: DataType,
    /// `onOpen` was delivered.
    pub opened: bool,
    /// The `ws` object of its last message callback, for the next one (spares.rs).
    pub spare_ws: Option<Dynamic>,
    /// A client whose processing an error stopped (4D: at most one `onError`, then the
    /// connection closes and `onTerminate` runs): nothing more reaches its callbacks but
    /// `onTerminate`.
    pub stopped: bool,
}

#[derive(Default)]
pub struct Registry {
    // Looked up on every message: a hasher for integers, not SipHash.
    pub servers: FxHashMap<ServerId, ServerEntry>,
    pub conns: FxHashMap<ConnId, ConnEntry>,
    pub timers: Timers,
}

impl Registry {
    /// True while anything the scripts created can still produce events.
    pub fn alive(&self) -> bool {
        !self.servers.is_empty() || !self.conns.is_empty() || !self.timers.is_empty()
    }
}

pub struct Ctx {
    pub net: Arc<Network>,
    /// The worker's loop: its sockets run on it, on this thread.
    pub event_loop: EventLoop,
    /// Where events for this worker go (its sockets' events are dispatched at once; others,
    /// and those it raises itself, such as `Listening`, are queued).
    pub events: Events,
    /// Changed for the duration of a `run_script(path, #{port})` in tests.
    pub defaults: RefCell<Defaults>,
    pub registry: RefCell<Registry>,
    pub classes: RefCell<ClassStore>,
    pub sources: RefCell<Sources>,
    /// The runs of the entry script's top level, and what they made.
    pub top_level: TopLevel,
    /// The worker's queue: socket tasks and the worker itself send here.
    pub rx: flume::Receiver<Event>,
    /// The entry script as named in messages.
    pub entry_name: String,
    pub budget: Budget,
    pub deadline: Deadline,
    /// A stop was asked: everything is closing and no new connection is accepted.
    pub shutting_down: Cell<bool>,
    /// When to measure what the scripts' objects hold.
    pub memory: MemoryWatch,
    /// The object whose method or callback runs now (what closures made there see as `this`).
    pub this: ThisStack,
    /// Every object the scripts made (the collector's list).
    pub objects: Rc<Table>,
    /// `wshost test`: this worker runs a test.
    pub testing: bool,
    /// The first callback failure that fails the running test (dispatch.rs).
    pub test_failure: RefCell<Option<super::error::ScriptError>>,
    /// The message event of the last callback, for the next one.
    pub spares: super::spares::Spares,
}

impl Ctx {
    /// Stops a server: no new connections, and every open one is closed with 1001.
    /// Its `onTerminate` runs once its last connection is gone.
    pub fn terminate_server(&self, id: ServerId) {
        let mut reg = self.registry.borrow_mut();
        let Some(server) = reg.servers.get_mut(&id) else {
            return;
        };
        if server.terminated {
            return;
        }
        server.terminated = true;
        if let Some(addr) = server.addr {
            self.net.unlisten(addr, server.path.as_deref(), id);
        }
        let conns: Vec<ConnId> = server.conns.iter().copied().collect();
        for c in conns {
            if let Some(entry) = reg.conns.get(&c) {
                entry.handle.close(1001, "server stopped".into());
            }
        }
    }
}
