//! What a script worker knows about the objects its scripts created: servers, connections,
//! classes and source texts. Shared (single-threaded) between the worker loop and the native
//! functions scripts call.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use rhai::Dynamic;

use super::classes::ClassStore;
use super::convert::DataType;
use super::engine::{Budget, Deadline};
use super::error::Sources;
use super::timers::Timers;
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
    pub home: Option<String>,
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

/// Objects made by a run of the entry script's top level; a re-run after an edit replaces them.
#[derive(Default)]
pub struct TopLevel {
    pub servers: Vec<ServerId>,
    pub clients: Vec<ConnId>,
    pub timers: Vec<i64>,
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
    pub home: Option<String>,
    pub data_type: DataType,
    /// `onOpen` was delivered.
    pub opened: bool,
}

#[derive(Default)]
pub struct Registry {
    pub servers: HashMap<ServerId, ServerEntry>,
    pub conns: HashMap<ConnId, ConnEntry>,
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
    /// True while the entry script's top level runs: a server that cannot listen then is a
    /// start-up failure of the whole run.
    pub starting: Cell<bool>,
    /// True while the entry script's top level runs again after an edit.
    pub reloading: Cell<bool>,
    /// What the last run of the entry script's top level created.
    pub top_level: RefCell<TopLevel>,
    /// During a top-level re-run: servers of the previous run not adopted yet.
    pub adoptable: RefCell<Vec<ServerId>>,
    pub startup_failures: RefCell<Vec<String>>,
    /// The worker's queue: socket tasks and the worker itself send here.
    pub rx: flume::Receiver<Event>,
    /// The entry script as named in messages.
    pub entry_name: String,
    pub budget: Budget,
    pub deadline: Deadline,
    /// A stop was asked: everything is closing and no new connection is accepted.
    pub shutting_down: Cell<bool>,
    /// Which worker of the host this is (0: the first, which runs the top level first).
    pub worker_index: usize,
    /// The ports the first worker's top-level servers got, in creation order.
    pub port_plan: Arc<std::sync::Mutex<Vec<u16>>>,
    /// Servers created by this run of the top level so far.
    pub top_servers_made: Cell<usize>,
    /// Bytes callbacks allocated and kept since the script state was last measured.
    pub growth: Cell<i64>,
    /// Callbacks run since then, and when that was.
    pub callbacks_since: Cell<u64>,
    pub measured_at: Cell<std::time::Instant>,
}

impl Ctx {
    /// True while a top level runs (first run or re-run): what it makes is recorded.
    pub fn in_top_level(&self) -> bool {
        self.starting.get() || self.reloading.get()
    }

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
