//! The script worker: one OS thread that owns a Rhai engine and the objects its scripts made.
//!
//! It runs the entry script's top level, then turns each [`Event`] (and each due timer) into
//! one callback, one at a time. A callback that fails is logged with file:line:col and handed
//! to the handler's `onError`; the worker goes on with the next event. It ends when nothing
//! the scripts created is left (or after a shutdown has closed everything).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rhai::{AST, CallFnOptions, Dynamic, Engine, FnPtr, Map, Scope};

use super::api::{self, ServerObj, has_callback, share_handler};
use super::classes::{ClassStore, Reloaded, class_name};
use super::convert::{DataType, payload_to_data};
use super::engine::{Budget, Deadline, new_engine};
use super::error::{ScriptError, Sources, display_name};
use super::state::{ConnEntry, Ctx, Defaults, Side};
use crate::event::{ConnId, ConnectionHandle, ErrorKind, Event, Request, ServerId, Verdict};
use crate::net::Network;
use crate::payload::Payload;

/// What a worker needs to start.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    pub entry: PathBuf,
    /// The script's `ARGS`.
    pub args: Vec<String>,
    pub defaults: Defaults,
    pub budget: Budget,
    /// Run as one test of `wshost test` instead of serving.
    pub test: Option<TestCase>,
    /// Watch the scripts and reload them when they change, with this debounce.
    pub watch: Option<std::time::Duration>,
    /// Which worker of the host this is, and the ports of the first one's servers.
    pub index: usize,
    pub port_plan: Arc<std::sync::Mutex<Vec<u16>>>,
    /// Told once the entry script's top level has run (or failed).
    pub started: Option<std::sync::mpsc::Sender<()>>,
}

/// One test: a `test_…` function of the entry script (or its top level when None).
#[derive(Clone, Debug)]
pub struct TestCase {
    pub function: Option<String>,
    pub timeout: std::time::Duration,
}

/// How a worker ended.
#[derive(Debug)]
pub enum Exit {
    /// Everything the scripts created has ended.
    Finished,
    /// The entry script did not compile or its top level failed.
    ScriptFailed(ScriptError),
    /// A server of the entry script's top level could not listen.
    ListenFailed(Vec<String>),
    /// A test ended: passed, or failed with this error.
    Test(Result<(), ScriptError>),
}

/// A running worker: send it events; join it for its [`Exit`].
pub struct WorkerHandle {
    pub events: flume::Sender<Event>,
    pub thread: std::thread::JoinHandle<Exit>,
}

/// Starts a worker thread running `options.entry`.
pub fn spawn(net: Arc<Network>, options: WorkerOptions) -> std::io::Result<WorkerHandle> {
    let (tx, rx) = flume::unbounded();
    let own = tx.clone();
    let thread = std::thread::Builder::new()
        .name("wshost-script".into())
        // Rhai recursion runs on the native stack; its call-level limit keeps within this.
        .stack_size(16 << 20)
        .spawn(move || match Worker::new(net, options, own, rx) {
            Ok(worker) => worker.run(),
            Err(e) => Exit::ScriptFailed(ScriptError::plain("wshost", format!("{e:#}"))),
        })?;
    Ok(WorkerHandle { events: tx, thread })
}

struct Worker {
    engine: Rc<Engine>,
    ctx: Rc<Ctx>,
    entry_path: PathBuf,
    test: Option<TestCase>,
    started: Option<std::sync::mpsc::Sender<()>>,
}

impl Worker {
    fn new(
        net: Arc<Network>,
        options: WorkerOptions,
        own: flume::Sender<Event>,
        rx: flume::Receiver<Event>,
    ) -> anyhow::Result<Self> {
        let event_loop = crate::event_loop::EventLoop::new()?;
        let events = crate::event_loop::Events::new(event_loop.id(), own.clone());
        let deadline = Deadline::default();
        let mut engine = new_engine(&options.budget, &deadline);
        let dir = match options.entry.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watcher = options.watch.and_then(|debounce| {
            crate::watch::Watcher::start(own.clone(), debounce)
                .map_err(|e| tracing::warn!("hot reload is off: cannot watch files: {e}"))
                .ok()
        });
        let ctx = Rc::new(Ctx {
            net,
            event_loop,
            events,
            defaults: std::cell::RefCell::new(options.defaults),
            registry: Default::default(),
            classes: std::cell::RefCell::new(ClassStore::new(dir, watcher)),
            reloading: std::cell::Cell::new(false),
            top_level: Default::default(),
            adoptable: Default::default(),
            sources: std::cell::RefCell::new(Sources::default()),
            starting: std::cell::Cell::new(false),
            startup_failures: Default::default(),
            rx,
            entry_name: display_name(&options.entry),
            budget: options.budget,
            deadline: deadline.clone(),
            shutting_down: std::cell::Cell::new(false),
            worker_index: options.index,
            port_plan: options.port_plan.clone(),
            top_servers_made: std::cell::Cell::new(0),
            growth: std::cell::Cell::new(0),
            callbacks_since: std::cell::Cell::new(0),
            measured_at: std::cell::Cell::new(Instant::now()),
        });
        api::register(&mut engine, &ctx, &options.args);
        if options.test.is_some() {
            super::testing::register(&mut engine, &ctx);
        }
        let engine = Rc::new(engine);
        // The events of this worker's own sockets are dispatched where they arise.
        let (e, c) = (engine.clone(), ctx.clone());
        ctx.event_loop.install(Rc::new(move |event| {
            Dispatch {
                engine: &e,
                ctx: &c,
            }
            .dispatch_now(event)
        }));
        Ok(Self {
            engine,
            ctx,
            entry_path: options.entry,
            test: options.test,
            started: options.started,
        })
    }

    /// Runs the file's top level, then the test function; then closes whatever the test left
    /// open (bounded) and reports.
    fn run_test(&self, test: TestCase) -> Exit {
        let entry = match self.compile_entry() {
            Ok(ast) => ast,
            Err(e) => return Exit::Test(Err(e)),
        };
        self.ctx.deadline.start_for(test.timeout);
        let mut result = self.engine.run_ast_with_scope(&mut Scope::new(), &entry);
        if let (Ok(_), Some(function)) = (&result, &test.function) {
            let script = self.ctx.classes.borrow().file_or_entry(None);
            if let Some(script) = script {
                let options = CallFnOptions::new().eval_ast(false);
                result = self
                    .engine
                    .call_fn_with_options::<Dynamic>(
                        options,
                        &mut Scope::new(),
                        &script.ast,
                        function,
                        (),
                    )
                    .map(|_| ());
            }
        }
        self.ctx.deadline.clear();
        let result = result.map_err(|e| {
            let mut err =
                ScriptError::from_eval(&e, &self.ctx.entry_name, &self.ctx.sources.borrow());
            if err.message.contains("time budget") || err.message.contains("past its time limit") {
                err.message = format!("the test timed out after {:?}", test.timeout);
            }
            err
        });
        // Close what the test left open; give the peers a bounded time to answer.
        let dispatch = self.dispatch();
        dispatch.shutdown();
        let until = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            dispatch.finish_stopped_servers();
            if !self.ctx.registry.borrow().alive() || Instant::now() >= until {
                break;
            }
            dispatch.step(Some(until));
        }
        Exit::Test(result)
    }

    fn compile_entry(&self) -> Result<AST, ScriptError> {
        self.ctx.classes.borrow_mut().load_entry(
            &self.engine,
            &self.entry_path,
            &mut self.ctx.sources.borrow_mut(),
        )
    }

    fn dispatch(&self) -> Dispatch<'_> {
        Dispatch {
            engine: &self.engine,
            ctx: &self.ctx,
        }
    }

    fn run(self) -> Exit {
        let exit = self.run_to_end();
        // Drops the dispatch (it holds the engine and the context), then the loop's sockets.
        self.ctx.event_loop.uninstall();
        exit
    }

    fn run_to_end(&self) -> Exit {
        if let Some(test) = self.test.clone() {
            return self.run_test(test);
        }
        let entry = match self.compile_entry() {
            Ok(ast) => ast,
            Err(e) => return Exit::ScriptFailed(e),
        };

        self.ctx.starting.set(true);
        self.ctx.deadline.start(&self.ctx.budget);
        let top = self.engine.run_ast_with_scope(&mut Scope::new(), &entry);
        self.ctx.deadline.clear();
        self.ctx.starting.set(false);
        drop(entry);

        let exit = if let Err(e) = top {
            let err = ScriptError::from_eval(&e, &self.ctx.entry_name, &self.ctx.sources.borrow());
            Some(Exit::ScriptFailed(err))
        } else {
            let failures = std::mem::take(&mut *self.ctx.startup_failures.borrow_mut());
            (!failures.is_empty()).then_some(Exit::ListenFailed(failures))
        };
        match (&exit, &self.started) {
            // Only a good start lets the host start the other workers.
            (None, Some(started)) => {
                let _ = started.send(());
            }
            (Some(_), _) => self.dispatch().shutdown(),
            _ => {}
        }
        self.dispatch().event_loop();
        exit.unwrap_or(Exit::Finished)
    }
}

/// Turns events into callbacks. Borrowed from the worker, or built inside a native function
/// (`wait_until` in tests) to keep dispatching while a script waits.
pub struct Dispatch<'a> {
    pub engine: &'a Engine,
    pub ctx: &'a Ctx,
}

impl Dispatch<'_> {
    pub fn event_loop(&self) {
        while self.ctx.registry.borrow().alive() && self.step(None) {}
    }

    /// Waits for one event (or a due timer), at most until `until`, and handles it.
    /// False if the queue is closed.
    pub fn step(&self, until: Option<Instant>) -> bool {
        // A server stopped since the last step may be done already: no need to wait.
        self.finish_stopped_servers();
        if !self.ctx.registry.borrow().alive() && until.is_none() {
            return true;
        }
        let next_timer = self.ctx.registry.borrow().timers.next_due();
        let wake = match (next_timer, until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // The worker's sockets run (and dispatch their events) while it waits.
        match self.ctx.event_loop.next_event(&self.ctx.rx, wake) {
            Ok(Some(event)) => self.handle(event),
            Ok(None) => {}
            Err(_) => return false,
        }
        self.run_due_timers();
        self.finish_stopped_servers();
        self.check_state_memory();
        true
    }

    /// Handles an event of one of the worker's own sockets, on the loop, as it arises.
    fn dispatch_now(&self, event: Event) {
        self.handle(event);
        self.finish_stopped_servers();
        self.check_state_memory();
        if !self.ctx.registry.borrow().alive() {
            // Nothing left: the loop's wait ends, and with it the worker.
            self.ctx.event_loop.wake();
        }
    }

    /// Measures what the scripts' objects hold once callbacks have kept a quarter of the
    /// limit since the last time; over the limit, lets go of the biggest holder.
    fn check_state_memory(&self) {
        let limit = self.ctx.budget.max_state as i64;
        // Allocation counts drift (buffers change threads), so time is a trigger too: at most
        // once a second while callbacks run, the cost of a measurement is amortized.
        let grew = self.ctx.growth.get() >= (limit / 4).clamp(1 << 20, 64 << 20);
        let due = self.ctx.callbacks_since.get() > 0
            && self.ctx.measured_at.get().elapsed() >= std::time::Duration::from_secs(1);
        if !grew && !due {
            return;
        }
        self.ctx.growth.set(0);
        self.ctx.callbacks_since.set(0);
        self.ctx.measured_at.set(Instant::now());
        let (total, biggest) = {
            let reg = self.ctx.registry.borrow();
            let servers = reg
                .servers
                .iter()
                .map(|(id, s)| (super::memory::estimate(&s.handler), Holder::Server(*id)));
            let conns = reg
                .conns
                .iter()
                .map(|(id, c)| (super::memory::estimate(&c.handler), Holder::Conn(*id)));
            let all: Vec<(usize, Holder)> = servers.chain(conns).collect();
            let total: usize = all.iter().map(|(n, _)| n).sum();
            (total, all.into_iter().max_by_key(|(n, _)| *n))
        };
        tracing::debug!("script state: about {} KiB", total >> 10);
        if total as i64 <= limit {
            return;
        }
        let Some((held, holder)) = biggest else {
            return;
        };
        let message = format!(
            "the script's objects hold about {} MiB, over the limit of {} MiB: the biggest \
             holder ({} MiB) is let go",
            total >> 20,
            limit >> 20,
            held >> 20
        );
        tracing::error!("{message}");
        let event = || error_event(ErrorKind::Memory, &message, None);
        match holder {
            Holder::Conn(id) => {
                self.call_conn(id, "onError", event());
                let handle = self
                    .ctx
                    .registry
                    .borrow()
                    .conns
                    .get(&id)
                    .map(|c| c.handle.clone());
                if let Some(h) = handle {
                    h.close(1008, "script state over the memory limit".into());
                }
            }
            Holder::Server(id) => {
                self.call_server(id, "onError", event());
                self.ctx.terminate_server(id);
            }
        }
    }

    /// Runs the timers that are due, each once; an interval is put back for its next run.
    pub fn run_due_timers(&self) {
        let now = Instant::now();
        loop {
            let Some((id, timer)) = self.ctx.registry.borrow_mut().timers.pop_due(now) else {
                break;
            };
            self.ctx.registry.borrow_mut().timers.set_running(Some(id));
            let script = self
                .ctx
                .classes
                .borrow()
                .file_or_entry(timer.home.as_deref());
            if let Some(script) = script {
                self.ctx.deadline.start(&self.ctx.budget);
                let result = timer.callback.call::<Dynamic>(self.engine, &script.ast, ());
                self.ctx.deadline.clear();
                if let Err(e) = result {
                    let err = ScriptError::from_eval(&e, &script.file, &self.ctx.sources.borrow());
                    tracing::error!("{err} (timer {id}){}", err.snippet());
                }
            }
            let mut reg = self.ctx.registry.borrow_mut();
            let cleared = reg.timers.running_cleared();
            reg.timers.set_running(None);
            if let Some(every) = timer.every
                && !cleared
                && !self.ctx.shutting_down.get()
            {
                reg.timers.insert(id, Instant::now() + every, timer);
            }
        }
    }

    pub fn handle(&self, event: Event) {
        match event {
            Event::Connect {
                server,
                conn,
                request,
                reply,
            } => self.on_connect(server, conn, request, reply),
            Event::Open { conn } => {
                let found = {
                    let mut reg = self.ctx.registry.borrow_mut();
                    let reg = &mut *reg;
                    match reg.conns.get_mut(&conn) {
                        Some(e) => {
                            e.opened = true;
                            // Listed in `wss.connections` on every worker from now on.
                            if let Side::Server(s) = e.side
                                && let Some(shared) =
                                    reg.servers.get(&s).and_then(|s| s.shared.as_ref())
                            {
                                shared.write().unwrap().insert(conn, e.handle.clone());
                            }
                            true
                        }
                        None => false,
                    }
                };
                if found {
                    self.call_conn(conn, "onOpen", event_map("open"));
                }
            }
            Event::Message { conn, payload } => self.on_message(conn, payload),
            Event::Error {
                conn,
                kind,
                message,
            } => {
                tracing::info!("connection {conn}: {message}");
                // A client's handler hears of a failed connect too; a server's only of
                // connections it saw open.
                let reported = self
                    .ctx
                    .registry
                    .borrow()
                    .conns
                    .get(&conn)
                    .is_some_and(|e| e.opened || matches!(e.side, Side::Client { .. }));
                if reported {
                    self.call_conn(conn, "onError", error_event(kind, &message, None));
                }
            }
            Event::Closed {
                conn,
                code,
                reason,
                clean,
            } => self.on_closed(conn, code, reason, clean),
            Event::Listening { server } => self.call_server(server, "onOpen", event_map("open")),
            Event::ListenFailed { server, message } => {
                tracing::error!("{message}");
                self.call_server(
                    server,
                    "onError",
                    error_event(ErrorKind::Listen, &message, None),
                );
            }
            Event::Shutdown => self.shutdown(),
            Event::Reload { files } => {
                if !self.ctx.shutting_down.get() {
                    for file in files {
                        self.reload(&file);
                    }
                }
            }
        }
    }

    /// Hot reload of one changed file (SPEC section 7; the rules are in the README).
    fn reload(&self, path: &std::path::Path) {
        let started = Instant::now();
        let result = self.ctx.classes.borrow_mut().reload(
            self.engine,
            path,
            &mut self.ctx.sources.borrow_mut(),
        );
        let file = display_name(path);
        let ms = || started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(Reloaded::Unchanged) => tracing::debug!("{file}: saved without changes"),
            Ok(Reloaded::Empty) => {
                tracing::warn!("{file} is empty: the old code keeps running until it has content")
            }
            Ok(Reloaded::Class { name, removed }) => {
                tracing::info!("reloaded {file} (class {name}) in {:.2} ms", ms());
                self.report_removed(&file, &removed);
                self.call_on_reload(&file);
            }
            Ok(Reloaded::Script) => {
                tracing::info!(
                    "reloaded {file} in {:.2} ms (its top level is not run again)",
                    ms()
                );
                self.call_on_reload(&file);
            }
            Ok(Reloaded::Entry(ast)) => {
                self.rerun_top_level(&file, &ast);
                tracing::info!("reloaded {file} (top level run again) in {:.2} ms", ms());
                self.call_on_reload(&file);
            }
            Err(e) => tracing::error!(
                "{e} (reload failed: the old code keeps running){}",
                e.snippet()
            ),
        }
    }

    fn report_removed(&self, file: &str, removed: &[String]) {
        for f in removed {
            if f.starts_with("on") {
                tracing::warn!(
                    "{file}: {f} was removed: handlers from this file skip it from now on"
                );
            } else {
                tracing::info!("{file}: {f} was removed");
            }
        }
    }

    /// Calls `onReload(event)` on every handler whose code is in `file` (its class file, or
    /// the file that made an inline handler).
    fn call_on_reload(&self, file: &str) {
        let targets: Vec<(Dynamic, Option<String>)> = {
            let reg = self.ctx.registry.borrow();
            let servers = reg
                .servers
                .values()
                .map(|s| (s.handler.clone(), s.home.clone()));
            let conns = reg
                .conns
                .values()
                .map(|c| (c.handler.clone(), c.home.clone()));
            servers
                .chain(conns)
                .filter(|(h, home)| {
                    self.class_file(h).or_else(|| home.clone()).as_deref() == Some(file)
                })
                .collect()
        };
        let mut event = event_map("reload");
        event.insert("file".into(), file.into());
        for (handler, home) in targets {
            if let Some(Err(e)) = self.invoke(
                &handler,
                home.as_deref(),
                "onReload",
                vec![event.clone().into()],
            ) {
                tracing::error!("{e} (onReload){}", e.snippet());
            }
        }
    }

    /// Runs the entry script's top level again. Servers it creates with the host, port and
    /// path of a running one adopt that server; what the previous run made and this one does
    /// not make again is stopped, each named in the log.
    fn rerun_top_level(&self, file: &str, ast: &AST) {
        let previous = std::mem::take(&mut *self.ctx.top_level.borrow_mut());
        *self.ctx.adoptable.borrow_mut() = previous.servers.clone();
        {
            let mut reg = self.ctx.registry.borrow_mut();
            for id in &previous.timers {
                reg.timers.cancel(*id);
            }
            for id in &previous.clients {
                if let Some(c) = reg.conns.get(id) {
                    tracing::info!("reload: closing client {id} made by the old top level");
                    c.handle.close(1001, "script reloaded".into());
                }
            }
        }
        self.ctx.reloading.set(true);
        self.ctx.deadline.start(&self.ctx.budget);
        let result = self.engine.run_ast_with_scope(&mut Scope::new(), ast);
        self.ctx.deadline.clear();
        self.ctx.reloading.set(false);
        let left = std::mem::take(&mut *self.ctx.adoptable.borrow_mut());
        match result {
            Ok(_) => {
                for id in left {
                    tracing::warn!("reload: {file} no longer creates server {id}: stopping it");
                    self.ctx.terminate_server(id);
                }
            }
            Err(e) => {
                let err = ScriptError::from_eval(e.as_ref(), file, &self.ctx.sources.borrow());
                tracing::error!(
                    "{err} (top level after reload; servers it did not reach keep running){}",
                    err.snippet()
                );
                self.ctx.top_level.borrow_mut().servers.extend(left);
            }
        }
    }

    /// Stops every server and client (each open connection gets 1001) and drops the timers;
    /// the loop ends when all are gone.
    pub fn shutdown(&self) {
        if self.ctx.shutting_down.replace(true) {
            return;
        }
        let (servers, clients): (Vec<ServerId>, Vec<ConnectionHandle>) = {
            let mut reg = self.ctx.registry.borrow_mut();
            reg.timers.clear();
            let clients = reg
                .conns
                .values()
                .filter(|c| matches!(c.side, Side::Client { .. }))
                .map(|c| c.handle.clone())
                .collect();
            (reg.servers.keys().copied().collect(), clients)
        };
        for id in servers {
            self.ctx.terminate_server(id);
        }
        for client in clients {
            client.close(1001, "going away".into());
        }
    }

    pub fn on_connect(
        &self,
        server: ServerId,
        conn: ConnectionHandle,
        request: Request,
        reply: tokio::sync::oneshot::Sender<Verdict>,
    ) {
        let found = match self.ctx.registry.borrow().servers.get(&server) {
            Some(s) if s.open_count() >= s.max_connections => {
                tracing::warn!(
                    "server {server}: refused a connection: maxConnections ({}) reached",
                    s.max_connections
                );
                None
            }
            Some(s) if !s.terminated && !self.ctx.shutting_down.get() => {
                Some((s.handler.clone(), s.home.clone()))
            }
            _ => None,
        };
        let Some((handler, home)) = found else {
            let _ = reply.send(Verdict::Refuse(503));
            return;
        };
        // Functions named in the connection handler belong to the code that made it: the
        // server handler's class file, else the file that created the server.
        let conn_home = self.class_file(&handler).or(home.clone());
        let wss = Dynamic::from(ServerObj { id: server });
        let mut event = event_map("connection");
        event.insert("request".into(), request_map(request).into());
        let answer = self.invoke(
            &handler,
            home.as_deref(),
            "onConnection",
            vec![wss, event.into()],
        );
        let verdict = match answer {
            None => {
                let err = ScriptError::plain(
                    &self.ctx.entry_name,
                    "the server handler has no onConnection",
                );
                self.server_error(server, err);
                Verdict::Refuse(500)
            }
            Some(Ok(h)) if h.is_unit() => Verdict::Refuse(403),
            Some(Ok(h)) => match self.accept(server, &conn, h, conn_home) {
                Ok(()) => Verdict::Accept,
                Err(e) => {
                    self.server_error(server, e);
                    Verdict::Refuse(500)
                }
            },
            Some(Err(e)) => {
                self.server_error(server, e);
                Verdict::Refuse(500)
            }
        };
        let accepted = matches!(verdict, Verdict::Accept);
        if reply.send(verdict).is_err() && accepted {
            // The handshake timed out meanwhile: the connection will never open.
            let mut reg = self.ctx.registry.borrow_mut();
            reg.conns.remove(&conn.id());
            if let Some(s) = reg.servers.get_mut(&server) {
                s.conns.remove(&conn.id());
            }
        }
    }

    /// Records an accepted connection with the handler `onConnection` returned.
    pub fn accept(
        &self,
        server: ServerId,
        conn: &ConnectionHandle,
        handler: Dynamic,
        home: Option<String>,
    ) -> Result<(), ScriptError> {
        let handler = share_handler(handler, "onConnection")
            .map_err(|e| ScriptError::plain(&self.ctx.entry_name, e.to_string()))?;
        if !has_callback(self.ctx, &handler, "onMessage") {
            return Err(ScriptError::plain(
                &self.ctx.entry_name,
                "the connection handler returned by onConnection has no onMessage",
            ));
        }
        let mut reg = self.ctx.registry.borrow_mut();
        let data_type = reg
            .servers
            .get(&server)
            .map(|s| s.data_type)
            .unwrap_or(DataType::Text);
        reg.conns.insert(
            conn.id(),
            ConnEntry {
                handle: conn.clone(),
                side: Side::Server(server),
                handler,
                home,
                data_type,
                opened: false,
            },
        );
        if let Some(s) = reg.servers.get_mut(&server) {
            s.conns.insert(conn.id());
        }
        Ok(())
    }

    pub fn on_message(&self, conn: ConnId, payload: Payload) {
        let (handle, data_type) = {
            let reg = self.ctx.registry.borrow();
            let Some(entry) = reg.conns.get(&conn) else {
                return;
            };
            (entry.handle.clone(), entry.data_type)
        };
        match payload_to_data(payload, data_type) {
            Ok(data) => {
                let mut event = event_map("message");
                event.insert("data".into(), data);
                self.call_conn(conn, "onMessage", event);
            }
            Err(bad) => {
                let message = format!("invalid JSON: {}", bad.error);
                tracing::info!("connection {conn}: {message}");
                let event = error_event(ErrorKind::Json, &message, Some(bad.text.into()));
                self.call_conn(conn, "onError", event);
            }
        }
        handle.message_done();
    }

    pub fn on_closed(&self, conn: ConnId, code: u16, reason: String, clean: bool) {
        let (report, client) = {
            let mut reg = self.ctx.registry.borrow_mut();
            let Some(entry) = reg.conns.get(&conn) else {
                return;
            };
            let client = matches!(entry.side, Side::Client { .. });
            let report = entry.opened || client;
            // Scripts see `Closed` from onTerminate on, not before: the socket may be gone
            // earlier, but events queued before this one still see the connection closing.
            entry.handle.set_status(crate::event::Status::Closed);
            // Leave `wss.connections` before onTerminate, so a goodbye broadcast skips it.
            if let Side::Server(server) = entry.side
                && let Some(s) = reg.servers.get_mut(&server)
            {
                s.conns.remove(&conn);
                if let Some(shared) = &s.shared {
                    shared.write().unwrap().remove(&conn);
                }
            }
            if !report {
                reg.conns.remove(&conn);
            }
            (report, client)
        };
        if report {
            let mut event = event_map("terminate");
            event.insert("code".into(), (code as i64).into());
            event.insert("reason".into(), reason.into());
            if client {
                event.insert("wasClean".into(), clean.into());
            }
            self.call_conn(conn, "onTerminate", event);
            self.ctx.registry.borrow_mut().conns.remove(&conn);
        }
    }

    /// Runs `onTerminate` of servers that were stopped and have no connection left.
    pub fn finish_stopped_servers(&self) {
        let done: Vec<ServerId> = self
            .ctx
            .registry
            .borrow()
            .servers
            .iter()
            .filter(|(_, s)| s.terminated && s.conns.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.call_server(id, "onTerminate", event_map("terminate"));
            self.ctx.registry.borrow_mut().servers.remove(&id);
        }
    }

    /// Calls connection callback `name`; a failure is logged and goes to `onError`.
    pub fn call_conn(&self, conn: ConnId, name: &str, event: Map) {
        let (handler, home, ws) = {
            let reg = self.ctx.registry.borrow();
            let Some(entry) = reg.conns.get(&conn) else {
                return;
            };
            (
                entry.handler.clone(),
                entry.home.clone(),
                api::conn_value(entry),
            )
        };
        let home = home.as_deref();
        let args = vec![ws.clone(), event.into()];
        let Some(Err(err)) = self.invoke(&handler, home, name, args) else {
            return;
        };
        tracing::error!("{err} (connection {conn}, {name}){}", err.snippet());
        if name != "onError" {
            let event = error_event(err.kind(), &err.to_string(), None);
            if let Some(Err(e2)) = self.invoke(&handler, home, "onError", vec![ws, event.into()]) {
                tracing::error!("{e2} (connection {conn}, onError){}", e2.snippet());
            }
        }
    }

    /// Calls server callback `name`; a failure is logged and goes to the server's `onError`.
    pub fn call_server(&self, server: ServerId, name: &str, event: Map) {
        let Some((handler, home)) = self.server_handler(server) else {
            return;
        };
        let wss = Dynamic::from(ServerObj { id: server });
        if let Some(Err(err)) =
            self.invoke(&handler, home.as_deref(), name, vec![wss, event.into()])
        {
            tracing::error!("{err} (server {server}, {name}){}", err.snippet());
            if name != "onError" {
                self.report_to_server(server, &err);
            }
        }
    }

    pub fn server_handler(&self, server: ServerId) -> Option<(Dynamic, Option<String>)> {
        self.ctx
            .registry
            .borrow()
            .servers
            .get(&server)
            .map(|s| (s.handler.clone(), s.home.clone()))
    }

    /// Logs a failure of the server's `onConnection` and hands it to its `onError`.
    pub fn server_error(&self, server: ServerId, err: ScriptError) {
        tracing::error!("{err} (server {server}, onConnection){}", err.snippet());
        self.report_to_server(server, &err);
    }

    pub fn report_to_server(&self, server: ServerId, err: &ScriptError) {
        let Some((handler, home)) = self.server_handler(server) else {
            return;
        };
        let event = error_event(err.kind(), &err.to_string(), None);
        let wss = Dynamic::from(ServerObj { id: server });
        if let Some(Err(e2)) = self.invoke(
            &handler,
            home.as_deref(),
            "onError",
            vec![wss, event.into()],
        ) {
            tracing::error!("{e2} (server {server}, onError){}", e2.snippet());
        }
    }

    /// The class file of a class instance.
    pub fn class_file(&self, handler: &Dynamic) -> Option<String> {
        let class = class_name(&*handler.read_lock::<Map>()?)?;
        self.ctx
            .classes
            .borrow()
            .class(&class)
            .map(|c| c.file.clone())
    }

    /// Calls callback `name` of `handler` with `this` bound to it. None if it has no such
    /// callback: a function property (inline handler) or a method of its class. Functions
    /// named in an inline handler are looked up in `home` (the file that made the handler).
    pub fn invoke(
        &self,
        handler: &Dynamic,
        home: Option<&str>,
        name: &str,
        mut args: Vec<Dynamic>,
    ) -> Option<Result<Dynamic, ScriptError>> {
        let (fn_ptr, class) = {
            let map = handler.read_lock::<Map>()?;
            let fn_ptr = map
                .get(name)
                .and_then(|v| v.read_lock::<FnPtr>().map(|f| f.clone()));
            let class = class_name(&map).and_then(|c| self.ctx.classes.borrow().class(&c));
            (fn_ptr, class)
        };
        let script = match (&fn_ptr, class) {
            (_, Some(class)) => class,
            (Some(_), None) => self.ctx.classes.borrow().file_or_entry(home)?,
            (None, None) => return None,
        };
        let mut this = handler.clone();
        let result = match fn_ptr {
            Some(f) => {
                self.ctx.deadline.start(&self.ctx.budget);
                f.call_as_method::<Dynamic>(self.engine, &script.ast, &mut this, args)
            }
            None => {
                let params = script.params(name)?;
                args.resize(params, Dynamic::UNIT);
                let options = CallFnOptions::new()
                    .eval_ast(false)
                    .bind_this_ptr(&mut this);
                self.ctx.deadline.start(&self.ctx.budget);
                self.engine.call_fn_with_options::<Dynamic>(
                    options,
                    &mut Scope::new(),
                    &script.ast,
                    name,
                    args,
                )
            }
        };
        let kept = self.ctx.deadline.clear();
        self.ctx.growth.set(self.ctx.growth.get() + kept);
        self.ctx
            .callbacks_since
            .set(self.ctx.callbacks_since.get() + 1);
        let sources = self.ctx.sources.borrow();
        Some(result.map_err(|e| ScriptError::from_eval(&e, &script.file, &sources)))
    }
}

/// What holds script memory: a server handler or a connection handler.
enum Holder {
    Server(ServerId),
    Conn(ConnId),
}

fn event_map(kind: &str) -> Map {
    let mut m = Map::new();
    m.insert("type".into(), kind.into());
    m
}

/// `#{type: "error", errors: [#{errCode, message, componentSignature}]}`; `data` carries the
/// offending message when there is one (invalid JSON).
fn error_event(kind: ErrorKind, message: &str, data: Option<Dynamic>) -> Map {
    let mut err = Map::new();
    err.insert("errCode".into(), (kind as i64).into());
    err.insert("message".into(), message.into());
    err.insert("componentSignature".into(), kind.component().into());
    if let Some(d) = data {
        err.insert("data".into(), d);
    }
    let mut m = event_map("error");
    m.insert("errors".into(), Dynamic::from_array(vec![err.into()]));
    m
}

/// `request` of a connection event: url, headers by lower-case name (an array when a name
/// repeats), decoded query (likewise), remoteAddress.
fn request_map(request: Request) -> Map {
    let mut m = Map::new();
    m.insert("url".into(), request.url.into());
    m.insert("headers".into(), multi_map(request.headers).into());
    m.insert("query".into(), multi_map(request.query).into());
    m.insert("remoteAddress".into(), request.remote_address.into());
    m
}

fn multi_map(pairs: Vec<(String, String)>) -> Map {
    let mut m = Map::new();
    for (k, v) in pairs {
        match m.get_mut(k.as_str()) {
            None => {
                m.insert(k.into(), v.into());
            }
            Some(existing) => {
                if let Some(mut arr) = existing.write_lock::<rhai::Array>() {
                    arr.push(v.into());
                    continue;
                }
                let first = std::mem::take(existing);
                *existing = Dynamic::from_array(vec![first, v.into()]);
            }
        }
    }
    m
}
