//! Turns events into callbacks: one event (a connection asked for, opened, a message, an
//! error, a close) becomes one call of the handler's callback, with `this` bound to the
//! handler. A failing callback is logged with file:line:col and handed to `onError`; the
//! worker goes on. Also the wait for the next event, which runs the worker's sockets.
//!
//! It owns the order of a connection's events (SPEC 7), not what the objects are: the
//! registry holds those, and the API files say what scripts can do with them.

use std::rc::Rc;
use std::time::Instant;

use rhai::{Dynamic, Engine, Map};

use super::api::{handler_object, has_callback};
use super::connection::conn_value;
use super::convert::{DataType, forget_last_sent, payload_to_data};
use super::error::ScriptError;
use super::objects::Object;
use super::server::ServerObj;
use super::spares;
use super::state::{ConnEntry, Ctx, Side};
use crate::event::{ConnId, ConnectionHandle, ErrorKind, Event, Request, ServerId, Verdict};
use crate::payload::Payload;

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
        super::collect::collect_if_due(self.ctx);
        true
    }

    /// Handles an event of one of the worker's own sockets, on the loop, as it arises.
    pub(super) fn dispatch_now(&self, event: Event) {
        self.handle(event);
        self.finish_stopped_servers();
        self.check_state_memory();
        super::collect::collect_if_due(self.ctx);
        if !self.ctx.registry.borrow().alive() {
            // Nothing left: the loop's wait ends, and with it the worker.
            self.ctx.event_loop.wake();
        }
    }

    pub fn handle(&self, event: Event) {
        match event {
            Event::Connect {
                server,
                conn,
                request,
                reply,
            } => self.on_connect(server, conn, *request, reply),
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
                tracing::info!(conn, "connection {conn}: {message}");
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
                    self.report_error(conn, error_event(kind, &message, None));
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
                // Now its onTerminate may run.
                if let Some(s) = self.ctx.registry.borrow_mut().servers.get_mut(&server) {
                    s.listen_error_pending = false;
                }
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
        event.insert("request".into(), Dynamic::from_map(request_map(request)));
        let answer = self.invoke(
            &handler,
            home.as_deref(),
            "onConnection",
            vec![wss, Dynamic::from_map(event)],
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
        home: Option<Rc<str>>,
    ) -> Result<(), ScriptError> {
        let handler = handler_object(self.ctx, handler, home.as_deref(), "onConnection")
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
                spare_ws: None,
                stopped: false,
            },
        );
        if let Some(s) = reg.servers.get_mut(&server) {
            s.conns.insert(conn.id());
        }
        Ok(())
    }

    pub fn on_message(&self, conn: ConnId, payload: Payload) {
        let (handle, data_type, target) = {
            let mut reg = self.ctx.registry.borrow_mut();
            let Some(entry) = reg.conns.get_mut(&conn) else {
                return;
            };
            if entry.stopped {
                entry.handle.message_done();
                return;
            }
            let ws = spares::take_ws(entry);
            (
                entry.handle.clone(),
                entry.data_type,
                Target::with_ws(entry, ws),
            )
        };
        match payload_to_data(payload, data_type) {
            Ok(data) => {
                let event = self.ctx.spares.message_event(data);
                let [ws, event] = self.call_target(conn, target, "onMessage", event);
                self.ctx.spares.give_back_event(event);
                forget_last_sent();
                if let Some(entry) = self.ctx.registry.borrow_mut().conns.get_mut(&conn) {
                    spares::give_back_ws(entry, conn, ws);
                }
            }
            Err(bad) => {
                let message = format!("invalid JSON: {}", bad.error);
                tracing::info!(conn, "connection {conn}: {message}");
                let event = error_event(ErrorKind::Json, &message, Some(bad.text.into()));
                self.report_error(conn, event);
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
            // It leaves its topics too (after its status says closed: see Topics::subscribe).
            self.ctx.net.topics().leave_all(conn);
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
            .filter(|(_, s)| s.terminated && s.conns.is_empty() && !s.listen_error_pending)
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            self.call_server(id, "onTerminate", event_map("terminate"));
            self.ctx.registry.borrow_mut().servers.remove(&id);
        }
    }

    /// Calls connection callback `name`; a failure is logged and goes to `onError`.
    pub fn call_conn(&self, conn: ConnId, name: &str, event: Map) {
        let target = self.ctx.registry.borrow().conns.get(&conn).map(Target::of);
        if let Some(target) = target {
            let _ = self.call_target(conn, target, name, Dynamic::from_map(event));
        }
    }

    /// Calls callback `name` of a connection's handler, found in the registry before. Gives
    /// back `ws` and `event` as the callback left them (or `()`).
    fn call_target(
        &self,
        conn: ConnId,
        target: Target,
        name: &str,
        event: Dynamic,
    ) -> [Dynamic; 2] {
        let Target {
            ws,
            mut handler,
            home,
        } = target;
        let home = home.as_deref();
        let mut args = [ws, event];
        let Some(Err(err)) = self.invoke_with(&mut handler, home, name, &mut args) else {
            return args;
        };
        self.note_test_failure(&err, &handler, name, || {
            format!("{name} of connection {conn}")
        });
        tracing::error!(
            conn,
            callback = name,
            location = %err.location(),
            path = self.conn_path(conn).as_deref(),
            "{err} (connection {conn}, {name}){}",
            err.snippet()
        );
        if name == "onError" {
            self.stop_client(conn);
        } else {
            self.report_error(conn, error_event(err.kind(), &err.to_string(), None));
        }
        args
    }

    /// Hands an error to the connection's `onError`. A client's processing stops there, as
    /// 4D's does: one `onError` at most, then the connection closes (1011) and `onTerminate`
    /// runs; a server-side connection stays open.
    fn report_error(&self, conn: ConnId, event: Map) {
        let (client, Target { ws, handler, home }) = {
            let mut reg = self.ctx.registry.borrow_mut();
            let Some(e) = reg.conns.get_mut(&conn) else {
                return;
            };
            if e.stopped {
                return;
            }
            // Marked before its onError runs: an error there reports nothing more.
            let client = matches!(e.side, Side::Client { .. });
            e.stopped = client;
            (client, Target::of(e))
        };
        if let Some(Err(e2)) = self.invoke(
            &handler,
            home.as_deref(),
            "onError",
            vec![ws, Dynamic::from_map(event)],
        ) {
            tracing::error!(
                conn,
                callback = "onError",
                location = %e2.location(),
                path = self.conn_path(conn).as_deref(),
                "{e2} (connection {conn}, onError){}",
                e2.snippet()
            );
            self.note_test_failure(&e2, &Dynamic::UNIT, "onError", || {
                format!("onError of connection {conn}")
            });
        }
        if client {
            self.stop_client(conn);
        }
    }

    /// Ends a client's processing after an error: nothing more reaches its callbacks but
    /// `onTerminate`.
    fn stop_client(&self, conn: ConnId) {
        let mut reg = self.ctx.registry.borrow_mut();
        if let Some(e) = reg.conns.get_mut(&conn)
            && matches!(e.side, Side::Client { .. })
        {
            e.stopped = true;
            e.handle.close(1011, "script error".into());
        }
    }

    /// Calls server callback `name`; a failure is logged and goes to the server's `onError`.
    pub fn call_server(&self, server: ServerId, name: &str, event: Map) {
        let Some((handler, home)) = self.server_handler(server) else {
            return;
        };
        let wss = Dynamic::from(ServerObj { id: server });
        if let Some(Err(err)) = self.invoke(
            &handler,
            home.as_deref(),
            name,
            vec![wss, Dynamic::from_map(event)],
        ) {
            tracing::error!(
                server = %server,
                callback = name,
                location = %err.location(),
                path = self.server_path(server).as_deref(),
                "{err} (server {server}, {name}){}",
                err.snippet()
            );
            self.note_test_failure(&err, &handler, name, || {
                format!("{name} of server {server}")
            });
            if name != "onError" {
                self.report_to_server(server, &err);
            }
        }
    }

    /// The `path` option of a server (`*`: none), for log fields.
    fn server_path(&self, server: ServerId) -> Option<String> {
        let reg = self.ctx.registry.borrow();
        let s = reg.servers.get(&server)?;
        Some(s.path.clone().unwrap_or_else(|| "*".into()))
    }

    /// The `path` of the server a connection came to (None for a client).
    fn conn_path(&self, conn: ConnId) -> Option<String> {
        let server = match self.ctx.registry.borrow().conns.get(&conn)?.side {
            Side::Server(s) => s,
            Side::Client { .. } => return None,
        };
        self.server_path(server)
    }

    pub fn server_handler(&self, server: ServerId) -> Option<(Dynamic, Option<Rc<str>>)> {
        self.ctx
            .registry
            .borrow()
            .servers
            .get(&server)
            .map(|s| (s.handler.clone(), s.home.clone()))
    }

    /// Logs a failure of the server's `onConnection` and hands it to its `onError`.
    pub fn server_error(&self, server: ServerId, err: ScriptError) {
        tracing::error!(
            server = %server,
            callback = "onConnection",
            location = %err.location(),
            path = self.server_path(server).as_deref(),
            "{err} (server {server}, onConnection){}",
            err.snippet()
        );
        if let Some((handler, _)) = self.server_handler(server) {
            self.note_test_failure(&err, &handler, "onConnection", || {
                format!("onConnection of server {server}")
            });
        }
        self.report_to_server(server, &err);
    }

    /// In `wshost test`: a failed assertion in any callback, or an error in a callback whose
    /// handler has no `onError` to take it, fails the test (the first such one is its
    /// failure). A handler with an `onError` expects errors.
    pub(super) fn note_test_failure(
        &self,
        err: &ScriptError,
        handler: &Dynamic,
        callback: &str,
        who: impl FnOnce() -> String,
    ) {
        if !self.ctx.testing || err.budget && !err.assertion {
            return;
        }
        let uncaught = callback == "onError" || !has_callback(self.ctx, handler, "onError");
        if !(err.assertion || uncaught) {
            return;
        }
        let mut slot = self.ctx.test_failure.borrow_mut();
        if slot.is_none() {
            let mut failure = err.clone();
            // Said on the first line: an assertion's message goes on with its values.
            let (first, rest) = match failure.message.split_once('\n') {
                Some((first, rest)) => (first.to_string(), format!("\n{rest}")),
                None => (failure.message.clone(), String::new()),
            };
            failure.message = format!("{first} (in {}){rest}", who());
            *slot = Some(failure);
        }
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
            vec![wss, Dynamic::from_map(event)],
        ) {
            tracing::error!(
                server = %server,
                callback = "onError",
                location = %e2.location(),
                path = self.server_path(server).as_deref(),
                "{e2} (server {server}, onError){}",
                e2.snippet()
            );
            self.note_test_failure(&e2, &handler, "onError", || {
                format!("onError of server {server}")
            });
        }
    }

    /// The class file of a class instance.
    pub fn class_file(&self, handler: &Dynamic) -> Option<Rc<str>> {
        let object = Object::of(handler)?;
        self.ctx
            .classes
            .borrow()
            .class(object.class()?)
            .map(|c| Rc::from(c.file.as_str()))
    }

    /// Calls callback `name` of `handler` with `this` bound to it. None if it has no such
    /// callback: a function property (inline handler) or a method of its class. Functions
    /// named in an inline handler are looked up in `home` (the file that made the handler).
    pub fn invoke(
        &self,
        handler: &Dynamic,
        home: Option<&str>,
        name: &str,
        args: impl IntoIterator<Item = Dynamic>,
    ) -> Option<Result<Dynamic, ScriptError>> {
        // (Inline room for five: no allocation.)
        let mut args: rhai::FnArgsVec<Dynamic> = args.into_iter().collect();
        self.invoke_with(&mut handler.clone(), home, name, &mut args)
    }

    /// As [`Dispatch::invoke`], giving the arguments back in `args` as the callback left them
    /// (`()` where it did not: a closure that declares fewer, Rhai's own path). `handler` is
    /// bound as `this` itself (a copy of a value of a native type costs two allocations).
    pub fn invoke_with(
        &self,
        handler: &mut Dynamic,
        home: Option<&str>,
        name: &str,
        args: &mut [Dynamic],
    ) -> Option<Result<Dynamic, ScriptError>> {
        let object = Object::of(handler)?;
        let (fn_ptr, class) = {
            let fn_ptr = object.function(name);
            let class = object
                .class()
                .and_then(|c| self.ctx.classes.borrow().class(c));
            (fn_ptr, class)
        };
        let script = match (&fn_ptr, class) {
            (_, Some(class)) => class,
            // A closure runs in the file it was written in (a class's closure may end up
            // in a handler the entry script made).
            (Some(f), None) if f.is_anonymous() => {
                let classes = self.ctx.classes.borrow();
                classes
                    .closure_file(f.fn_name())
                    .or_else(|| classes.file_or_entry(home))?
            }
            (Some(_), None) => self
                .ctx
                .classes
                .borrow()
                .file_or_entry(object.home().or(home))?,
            (None, None) => return None,
        };
        // A function with a name (a class method, or `Fn("name")` of the handler's file) is
        // called by name, given as many arguments as it declares; a closure through its
        // pointer, which carries what it captured.
        let named = match &fn_ptr {
            None => Some((name, script.params(name)?)),
            Some(f) if !f.is_curried() && !f.is_anonymous() => {
                script.params(f.fn_name()).map(|n| (f.fn_name(), n))
            }
            Some(_) => None,
        };
        if named.is_none() && fn_ptr.is_none() {
            return None;
        }
        // What closures made now see as `this` (objects.rs).
        self.ctx.this.push_object(object);
        // Timed only when counted: two clock reads per callback.
        let started = crate::metrics::get().map(|_| std::time::Instant::now());
        // The function, its arguments (taken from `args`), and where `args` start among them.
        let (fn_name, mut call, first) = match (named, &fn_ptr) {
            (Some((fn_name, params)), _) => {
                let mut call: rhai::FnArgsVec<Dynamic> =
                    args.iter_mut().map(std::mem::take).collect();
                call.resize(params, Dynamic::UNIT);
                (fn_name, call, 0)
            }
            (None, Some(f)) => {
                // A closure: what it captured comes first, as Rhai's call of it would pass.
                let curried = f.curry().len();
                let mut call: rhai::FnArgsVec<Dynamic> = f
                    .iter_curry()
                    .cloned()
                    .chain(args.iter_mut().map(std::mem::take))
                    .collect();
                // One that declares fewer parameters (`|ws| …`) gets as many, like a
                // named callback (a closure's name is unique: one count).
                if f.is_anonymous()
                    && let Some(n) = script.params(f.fn_name())
                    && n >= curried
                {
                    call.resize(n, Dynamic::UNIT);
                }
                (f.fn_name(), call, curried)
            }
            (None, None) => unreachable!("a callback is named or a function pointer"),
        };
        self.ctx.deadline.start(&self.ctx.budget);
        let result = script.call(self.engine, handler, fn_name, &mut call, 1);
        // What the call left of `args`, back to the caller.
        for (slot, value) in args.iter_mut().zip(call.into_iter().skip(first)) {
            *slot = value;
        }
        self.ctx.this.pop();
        let elapsed = started.map(|started| started.elapsed());
        let kept = self.ctx.deadline.clear();
        self.ctx.memory.callback_kept(kept);
        let sources = self.ctx.sources.borrow();
        let result = result.map_err(|e| ScriptError::from_eval(&e, &script.file, &sources));
        if let (Some(m), Some(elapsed)) = (crate::metrics::get(), elapsed) {
            m.callback(name).observe(elapsed);
            match result.as_ref().map_err(|e| e.kind()) {
                Ok(_) => {}
                Err(ErrorKind::Script) => m.callback_errors.increment(1),
                Err(_) => m.budget_stops.increment(1),
            }
        }
        Some(result)
    }
}

/// What a connection callback is called on: `ws` and the connection's handler.
struct Target {
    ws: Dynamic,
    handler: Dynamic,
    home: Option<Rc<str>>,
}

impl Target {
    fn of(entry: &ConnEntry) -> Self {
        Self::with_ws(entry, conn_value(entry))
    }

    fn with_ws(entry: &ConnEntry, ws: Dynamic) -> Self {
        Self {
            ws,
            handler: entry.handler.clone(),
            home: entry.home.clone(),
        }
    }
}

pub(super) fn event_map(kind: &'static str) -> Map {
    thread_local! {
        /// The `type` strings, made once: a message event is built for every message.
        static KINDS: std::cell::RefCell<Vec<(&'static str, rhai::ImmutableString)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    let kind = KINDS.with(|kinds| {
        let mut kinds = kinds.borrow_mut();
        if let Some((_, s)) = kinds.iter().find(|(k, _)| *k == kind) {
            return s.clone();
        }
        let s = rhai::ImmutableString::from(kind);
        kinds.push((kind, s.clone()));
        s
    });
    let mut m = Map::new();
    m.insert("type".into(), Dynamic::from(kind));
    m
}

/// `#{type: "error", errors: [#{errCode, message, componentSignature}]}`; `data` carries the
/// offending message when there is one (invalid JSON).
pub(super) fn error_event(kind: ErrorKind, message: &str, data: Option<Dynamic>) -> Map {
    let mut err = Map::new();
    err.insert("errCode".into(), (kind as i64).into());
    err.insert("message".into(), message.into());
    err.insert("componentSignature".into(), kind.component().into());
    if let Some(d) = data {
        err.insert("data".into(), d);
    }
    let mut m = event_map("error");
    m.insert(
        "errors".into(),
        Dynamic::from_array(vec![Dynamic::from_map(err)]),
    );
    m
}

/// `request` of a connection event: url, headers by lower-case name (an array when a name
/// repeats), decoded query (likewise), remoteAddress.
fn request_map(request: Request) -> Map {
    let mut m = Map::new();
    m.insert("url".into(), request.url.into());
    m.insert(
        "headers".into(),
        Dynamic::from_map(multi_map(request.headers)),
    );
    m.insert("query".into(), Dynamic::from_map(multi_map(request.query)));
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
