//! The runs of the entry script's top level: the first one, at start-up, and one after each
//! edit of the entry script (hot reload). What a run makes (servers, clients, timers) is
//! recorded, so that the next run can adopt the servers and stop what it no longer makes.
//!
//! With several workers each runs the top level; the first one's servers decide the ports
//! (`port: 0`), and the others' servers join them in the same order.

use std::cell::{Cell, RefCell};
use std::sync::{Arc, Mutex};

use crate::event::{ConnId, ServerId};

/// What one run of the top level made.
#[derive(Default)]
pub struct Made {
    pub servers: Vec<ServerId>,
    pub clients: Vec<ConnId>,
    pub timers: Vec<i64>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No top level runs: what is made now belongs to a callback.
    Idle,
    /// The first run: a server that cannot listen fails the whole start.
    Starting,
    /// A run after an edit: a server like a running one adopts it.
    Rerunning,
}

/// The top-level runs of one worker.
pub struct TopLevel {
    phase: Cell<Phase>,
    /// What the last run made (the one running now included).
    made: RefCell<Made>,
    /// During a re-run: servers of the previous run not adopted yet.
    adoptable: RefCell<Vec<ServerId>>,
    /// Servers that could not listen during the first run.
    startup_failures: RefCell<Vec<String>>,
    /// Servers the first run has made so far.
    servers_made: Cell<usize>,
    /// Which worker of the host this is (0: the first, which runs its top level first).
    worker: usize,
    /// The ports the first worker's top-level servers got, in creation order.
    port_plan: Arc<Mutex<Vec<u16>>>,
}

impl TopLevel {
    pub fn new(worker: usize, port_plan: Arc<Mutex<Vec<u16>>>) -> Self {
        Self {
            phase: Cell::new(Phase::Idle),
            made: Default::default(),
            adoptable: Default::default(),
            startup_failures: Default::default(),
            servers_made: Cell::new(0),
            worker,
            port_plan,
        }
    }

    /// Which worker of the host this is.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// True while a top level runs (first run or re-run): what it makes is recorded.
    pub fn running(&self) -> bool {
        self.phase.get() != Phase::Idle
    }

    /// True during the first run.
    pub fn starting(&self) -> bool {
        self.phase.get() == Phase::Starting
    }

    /// Runs `run` as the first run; returns its result and the servers that could not listen.
    pub fn first_run<T>(&self, run: impl FnOnce() -> T) -> (T, Vec<String>) {
        self.phase.set(Phase::Starting);
        let result = run();
        self.phase.set(Phase::Idle);
        (result, self.startup_failures.take())
    }

    /// Runs `run` as a re-run. Returns its result, what the previous run made, and the servers
    /// of the previous run that this one did not adopt.
    pub fn rerun<T>(&self, run: impl FnOnce(&Made) -> T) -> (T, Vec<ServerId>) {
        let previous = self.made.take();
        *self.adoptable.borrow_mut() = previous.servers.clone();
        self.phase.set(Phase::Rerunning);
        let result = run(&previous);
        self.phase.set(Phase::Idle);
        (result, self.adoptable.take())
    }

    /// A failed re-run keeps the servers it did not reach.
    pub fn keep_servers(&self, servers: Vec<ServerId>) {
        self.made.borrow_mut().servers.extend(servers);
    }

    /// During a re-run: takes the first server of the previous run that `matches`.
    pub fn adopt(&self, matches: impl Fn(ServerId) -> bool) -> Option<ServerId> {
        if self.phase.get() != Phase::Rerunning {
            return None;
        }
        let mut adoptable = self.adoptable.borrow_mut();
        let pos = adoptable.iter().position(|id| matches(*id))?;
        let id = adoptable.remove(pos);
        self.made.borrow_mut().servers.push(id);
        Some(id)
    }

    pub fn made_server(&self, id: ServerId) {
        if self.running() {
            self.made.borrow_mut().servers.push(id);
        }
    }

    pub fn made_client(&self, id: ConnId) {
        if self.running() {
            self.made.borrow_mut().clients.push(id);
        }
    }

    pub fn made_timer(&self, id: i64) {
        if self.running() {
            self.made.borrow_mut().timers.push(id);
        }
    }

    /// The port a new server binds. During the first run, the k-th server of a worker other
    /// than the first takes the port the first worker's k-th server got (for `port: 0`).
    /// `bound` is then told what came of it.
    pub fn port_to_bind(&self, requested: u16) -> (u16, PortPlanEntry<'_>) {
        let nth = self.starting().then(|| {
            let k = self.servers_made.get();
            self.servers_made.set(k + 1);
            k
        });
        let port = match nth {
            Some(k) if self.worker > 0 && requested == 0 => {
                self.port_plan.lock().unwrap().get(k).copied().unwrap_or(0)
            }
            _ => requested,
        };
        (port, PortPlanEntry { top: self, nth })
    }

    /// A server of the first run could not listen.
    pub fn listen_failed(&self, message: &str) {
        if self.starting() {
            self.startup_failures.borrow_mut().push(message.to_string());
        }
    }
}

/// The place of a new server in the first worker's port plan.
pub struct PortPlanEntry<'a> {
    top: &'a TopLevel,
    nth: Option<usize>,
}

impl PortPlanEntry<'_> {
    /// Records the port the server got (0 if it could not listen).
    pub fn bound(self, port: u16) {
        if let (Some(k), 0) = (self.nth, self.top.worker) {
            let mut plan = self.top.port_plan.lock().unwrap();
            if plan.len() == k {
                plan.push(port);
            }
        }
    }
}
