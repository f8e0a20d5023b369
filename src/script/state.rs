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
use super::error::Sources;
use crate::event::{ConnId, ConnectionHandle, Event, ServerId};
use crate::net::Network;

/// Defaults for servers that do not say otherwise (`--host`, `--port`).
#[derive(Clone, Debug)]
pub struct Defaults {
    pub host: String,
    pub port: u16,
}

pub struct ServerEntry {
    pub handler: Dynamic,
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
}

pub struct ConnEntry {
    pub handle: ConnectionHandle,
    pub server: ServerId,
    pub handler: Dynamic,
    /// `onOpen` was delivered.
    pub opened: bool,
}

#[derive(Default)]
pub struct Registry {
    pub servers: HashMap<ServerId, ServerEntry>,
    pub conns: HashMap<ConnId, ConnEntry>,
}

impl Registry {
    /// True while anything the scripts created can still produce events.
    pub fn alive(&self) -> bool {
        !self.servers.is_empty() || !self.conns.is_empty()
    }
}

pub struct Ctx {
    pub net: Arc<Network>,
    /// The worker's own event queue, for events it raises itself (`Listening`…).
    pub events: flume::Sender<Event>,
    pub defaults: Defaults,
    pub registry: RefCell<Registry>,
    pub classes: RefCell<ClassStore>,
    pub sources: RefCell<Sources>,
    /// True while the entry script's top level runs: a server that cannot listen then is a
    /// start-up failure of the whole run.
    pub starting: Cell<bool>,
    pub startup_failures: RefCell<Vec<String>>,
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
            self.net.unlisten(addr, server.path.as_deref());
        }
        let conns: Vec<ConnId> = server.conns.iter().copied().collect();
        for c in conns {
            if let Some(entry) = reg.conns.get(&c) {
                entry.handle.close(1001, "server stopped".into());
            }
        }
    }
}
