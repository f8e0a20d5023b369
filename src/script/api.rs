//! The script API of SPEC sections 2, 3 and 5: `WebSocketServer`, `cs`, and the objects they
//! give scripts. Scripts only ever hold ids and handles; every read goes to the worker's
//! [`Ctx`], every write becomes a command to a socket task.

use std::rc::Rc;
use std::time::Duration;

use rhai::{
    Array, CallFnOptions, Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map, Module,
    NativeCallContext, Scope,
};

use super::classes::{CLASS_KEY, Script, class_name};
use super::convert::{DataType, data_to_payload};
use super::state::{ConnEntry, Ctx, ServerEntry, Side, Timer};
use crate::event::{ConnectionHandle, Event, SendError, ServerId, Status, next_id};
use crate::net::{ClientRequest, Route};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// The global `WebSocketServer` (its `new` creates servers).
#[derive(Clone)]
pub struct ServerClass;

/// The global `cs`: `cs.Name` is a class.
#[derive(Clone)]
pub struct ClassStoreRef;

/// `cs.Name`: `cs.Name.new(…)` makes an instance.
#[derive(Clone)]
pub struct ClassRef {
    class: Rc<Script>,
}

/// The global `WebSocket` (its `new` opens client connections).
#[derive(Clone)]
pub struct ClientClass;

/// A client `WebSocket` as scripts hold it.
#[derive(Clone)]
pub struct ClientObj {
    pub handle: ConnectionHandle,
}

/// A `WebSocketServer` as scripts hold it.
#[derive(Clone)]
pub struct ServerObj {
    pub id: ServerId,
}

/// A `WebSocketConnection` as scripts hold it: the handle (id + sender) and its server.
#[derive(Clone)]
pub struct ConnObj {
    pub handle: ConnectionHandle,
    pub server: ServerId,
}

/// Registers the whole API on `engine`; natives reach the worker through `ctx`.
/// `args` is the script's `ARGS` (the command line after the script).
pub fn register(engine: &mut Engine, ctx: &Rc<Ctx>, args: &[String]) {
    let mut globals = Module::new();
    globals.set_var("WebSocketServer", ServerClass);
    globals.set_var("WebSocket", ClientClass);
    globals.set_var("cs", ClassStoreRef);
    let args: Array = args.iter().map(|a| Dynamic::from(a.clone())).collect();
    globals.set_var("ARGS", args);
    // Which worker runs this copy of the script (0 unless `--workers N`).
    globals.set_var("WORKER_ID", ctx.worker_index as i64);
    engine.register_global_module(globals.into());
    engine.register_type_with_name::<ClientClass>("WebSocketClass");
    engine.register_type_with_name::<ClientObj>("WebSocket");
    register_client(engine, ctx);
    register_timers(engine, ctx);

    engine.register_type_with_name::<ServerClass>("WebSocketServerClass");
    engine.register_type_with_name::<ClassStoreRef>("ClassStore");
    engine.register_type_with_name::<ClassRef>("Class");
    engine.register_type_with_name::<ServerObj>("WebSocketServer");
    engine.register_type_with_name::<ConnObj>("WebSocketConnection");

    register_server_class(engine, ctx);
    register_classes(engine, ctx);
    register_server(engine, ctx);
    register_connection(engine, ctx);
}

fn register_server_class(engine: &mut Engine, ctx: &Rc<Ctx>) {
    let c = ctx.clone();
    engine.register_fn(
        "new",
        move |ncc: NativeCallContext, _: &mut ServerClass, handler: Dynamic| {
            new_server(&c, &ncc, handler, Map::new())
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "new",
        move |ncc: NativeCallContext, _: &mut ServerClass, handler: Dynamic, options: Map| {
            new_server(&c, &ncc, handler, options)
        },
    );
    engine.register_fn("to_string", |_: &mut ServerClass| {
        "WebSocketServer".to_string()
    });
}

struct ServerOptions {
    host: String,
    port: u16,
    path: Option<String>,
    data_type: DataType,
    max_connections: usize,
    origins: Option<Vec<String>>,
    static_root: Option<std::path::PathBuf>,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

fn server_options(ctx: &Ctx, ncc: &NativeCallContext, options: Map) -> Res<ServerOptions> {
    let defaults = ctx.defaults.borrow().clone();
    let mut opts = ServerOptions {
        host: defaults.host,
        port: defaults.port,
        path: None,
        data_type: DataType::Text,
        max_connections: defaults.max_connections,
        origins: None,
        static_root: defaults.static_root,
        tls: defaults.tls,
    };
    // Relative paths in options are relative to the folder of the script that says them.
    let here = ctx.classes.borrow().dir_of(ncc.call_source());
    for (key, value) in options {
        match key.as_str() {
            "port" => {
                let port = value
                    .as_int()
                    .ok()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| bad_option("port", "an integer from 0 to 65535", &value))?;
                opts.port = port;
            }
            "host" => {
                opts.host = value
                    .into_string()
                    .map_err(|t| format!("option host: expected a string, got {t}"))?;
            }
            "path" => {
                if value.is_unit() {
                    continue;
                }
                let path = value
                    .clone()
                    .into_string()
                    .ok()
                    .filter(|p| p.starts_with('/'))
                    .ok_or_else(|| bad_option("path", "a string starting with \"/\"", &value))?;
                opts.path = Some(path);
            }
            "dataType" => {
                opts.data_type = value
                    .clone()
                    .into_string()
                    .ok()
                    .and_then(|s| DataType::parse(&s))
                    .ok_or_else(|| {
                        bad_option("dataType", "\"text\", \"blob\" or \"object\"", &value)
                    })?;
            }
            "maxConnections" => {
                opts.max_connections = value
                    .as_int()
                    .ok()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| bad_option("maxConnections", "an integer >= 0", &value))?;
            }
            "origins" => {
                let list = value
                    .read_lock::<Array>()
                    .map(|a| {
                        a.iter()
                            .map(|o| o.clone().into_string().ok())
                            .collect::<Option<Vec<String>>>()
                    })
                    .ok_or_else(|| bad_option("origins", "an array of strings", &value))?
                    .ok_or_else(|| bad_option("origins", "an array of strings", &value))?;
                opts.origins = Some(list);
            }
            "staticDir" | "static" => {
                if value.is_unit() {
                    opts.static_root = None;
                    continue;
                }
                let dir = value
                    .clone()
                    .into_string()
                    .map_err(|_| bad_option("staticDir", "a folder path", &value))?;
                let root = here.join(&dir).canonicalize().ok().filter(|p| p.is_dir());
                opts.static_root = Some(root.ok_or_else(|| {
                    format!(
                        "option staticDir: {dir:?} is not a folder (relative to {})",
                        here.display()
                    )
                })?);
            }
            "tls" => {
                if value.is_unit() {
                    opts.tls = None;
                    continue;
                }
                let tls = value
                    .read_lock::<Map>()
                    .map(|m| (m.get("cert").cloned(), m.get("key").cloned()))
                    .ok_or_else(|| bad_option("tls", "#{cert: PATH, key: PATH}", &value))?;
                let path = |v: Option<Dynamic>, what: &str| -> Res<std::path::PathBuf> {
                    v.and_then(|v| v.into_string().ok())
                        .map(|p| here.join(p))
                        .ok_or_else(|| format!("option tls: {what} must be a file path").into())
                };
                opts.tls = Some((path(tls.0, "cert")?, path(tls.1, "key")?));
            }
            other => {
                return Err(format!(
                    "unknown option {other:?} for WebSocketServer.new \
                     (known: port, host, path, dataType, maxConnections, origins, staticDir, tls)"
                )
                .into());
            }
        }
    }
    Ok(opts)
}

fn bad_option(name: &str, expected: &str, got: &Dynamic) -> Box<EvalAltResult> {
    format!("option {name}: expected {expected}, got {got:?}").into()
}

/// Makes `handler` a shared object map, so `this.x = …` and `ws.handler.x = …` persist.
pub fn share_handler(handler: Dynamic, what: &str) -> Res<Dynamic> {
    if handler.read_lock::<Map>().is_none() {
        return Err(format!(
            "{what}: the handler must be an object (a map or a class instance), got {}",
            handler.type_name()
        )
        .into());
    }
    Ok(if handler.is_shared() {
        handler
    } else {
        handler.into_shared()
    })
}

/// Does `handler` define callback `name` (as a function property or a class method)?
pub fn has_callback(ctx: &Ctx, handler: &Dynamic, name: &str) -> bool {
    let Some(map) = handler.read_lock::<Map>() else {
        return false;
    };
    if map.get(name).is_some_and(|v| v.is::<FnPtr>()) {
        return true;
    }
    class_name(&map)
        .and_then(|c| ctx.classes.borrow().class(&c))
        .is_some_and(|class| class.params(name).is_some())
}

fn new_server(
    ctx: &Rc<Ctx>,
    ncc: &NativeCallContext,
    handler: Dynamic,
    options: Map,
) -> Res<ServerObj> {
    let handler = share_handler(handler, "WebSocketServer.new")?;
    if !has_callback(ctx, &handler, "onConnection") {
        return Err("WebSocketServer.new: the handler has no onConnection callback".into());
    }
    let opts = server_options(ctx, ncc, options)?;
    if let Some(id) = adopt_server(ctx, ncc, &handler, &opts) {
        return Ok(ServerObj { id });
    }
    let id = next_id();
    if ctx.in_top_level() {
        ctx.top_level.borrow_mut().servers.push(id);
    }
    let route = Route {
        server: id,
        events: ctx.events.clone(),
        runtime: ctx.event_loop.handle().clone(),
        origins: opts.origins.clone().map(Into::into),
    };
    let tls = match &opts.tls {
        Some((cert, key)) => {
            Some(crate::net::tls_acceptor(cert, key).map_err(|e| format!("option tls: {e}"))?)
        }
        None => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let listen_options = crate::net::ListenOptions {
        static_root: opts.static_root.clone(),
        tls,
    };
    // With several workers, each runs the top level: the k-th server of a follower listens on
    // the port the first worker's k-th server got (which matters for `port: 0`).
    let nth = ctx.starting.get().then(|| {
        let k = ctx.top_servers_made.get();
        ctx.top_servers_made.set(k + 1);
        k
    });
    let port_to_bind = match nth {
        Some(k) if ctx.worker_index > 0 && opts.port == 0 => {
            ctx.port_plan.lock().unwrap().get(k).copied().unwrap_or(0)
        }
        _ => opts.port,
    };
    let listened = ctx.net.listen(
        &opts.host,
        port_to_bind,
        opts.path.as_deref(),
        route,
        listen_options,
    );
    if let (Some(k), 0) = (nth, ctx.worker_index) {
        let bound = listened.as_ref().map(|(a, _)| a.port()).unwrap_or(0);
        let mut plan = ctx.port_plan.lock().unwrap();
        if plan.len() == k {
            plan.push(bound);
        }
    }
    let (addr, port, shared) = match &listened {
        Ok((addr, shared)) => (Some(*addr), addr.port(), Some(shared.clone())),
        Err(_) => (None, opts.port, None),
    };
    ctx.registry.borrow_mut().servers.insert(
        id,
        ServerEntry {
            handler,
            requested_port: opts.port,
            home: ncc.call_source().map(str::to_string),
            host: opts.host,
            port,
            addr,
            path: opts.path.clone(),
            data_type: opts.data_type,
            conns: Default::default(),
            terminated: listened.is_err(),
            max_connections: opts.max_connections,
            shared,
        },
    );
    let event = match listened {
        Ok((addr, _)) if ctx.worker_index > 0 => {
            tracing::debug!(
                "worker {} serves {scheme}://{addr}{} too",
                ctx.worker_index,
                opts.path.as_deref().unwrap_or("/")
            );
            Event::Listening { server: id }
        }
        Ok((addr, _)) => {
            tracing::info!(
                "listening on {scheme}://{addr}{}",
                opts.path.as_deref().unwrap_or("/")
            );
            if let Some(root) = &opts.static_root {
                tracing::info!(
                    "serving files from {} on http{}://{addr}/",
                    root.display(),
                    &scheme[2..]
                );
            }
            Event::Listening { server: id }
        }
        Err(e) => {
            let message = e.to_string();
            if ctx.starting.get() {
                ctx.startup_failures.borrow_mut().push(message.clone());
            }
            Event::ListenFailed {
                server: id,
                message,
            }
        }
    };
    ctx.events.queue(event);
    Ok(ServerObj { id })
}

/// During a re-run of the entry script's top level: the running server with the same host,
/// port and path takes the new handler (keeping its listener, connections and state).
fn adopt_server(
    ctx: &Ctx,
    ncc: &NativeCallContext,
    handler: &Dynamic,
    opts: &ServerOptions,
) -> Option<ServerId> {
    if !ctx.reloading.get() {
        return None;
    }
    let mut reg = ctx.registry.borrow_mut();
    let mut adoptable = ctx.adoptable.borrow_mut();
    let pos = adoptable.iter().position(|id| {
        reg.servers.get(id).is_some_and(|s| {
            !s.terminated
                && s.host == opts.host
                && s.requested_port == opts.port
                && s.path == opts.path
        })
    })?;
    let id = adoptable.remove(pos);
    let server = reg.servers.get_mut(&id)?;
    keep_state(&server.handler, handler);
    server.home = ncc.call_source().map(str::to_string);
    server.data_type = opts.data_type;
    server.max_connections = opts.max_connections;
    let conns = server.conns.len();
    ctx.top_level.borrow_mut().servers.push(id);
    tracing::info!(
        "reload: kept the server on {}:{}{} with its {conns} connection(s)",
        server.host,
        server.port,
        server.path.as_deref().unwrap_or("/")
    );
    Some(id)
}

/// Gives a running handler the callbacks of its new version and keeps its state: an instance
/// of the same class stays as is (its class file brings the new code); an object map takes
/// the new map's properties, but data it already had (non-function properties) is kept.
fn keep_state(old: &Dynamic, new: &Dynamic) {
    let class_of = |d: &Dynamic| d.read_lock::<Map>().and_then(|m| class_name(&m));
    let (old_class, new_class) = (class_of(old), class_of(new));
    if old_class.is_some() && old_class == new_class {
        return;
    }
    let Some(mut merged) = new.read_lock::<Map>().map(|m| m.clone()) else {
        return;
    };
    if let Some(old_map) = old.read_lock::<Map>() {
        for (k, v) in old_map.iter() {
            if !v.is::<FnPtr>() && k.as_str() != CLASS_KEY {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    // `old` is shared: writing through a clone changes the one object everybody holds.
    let mut shared = old.clone();
    if let Some(mut target) = shared.write_lock::<Map>() {
        *target = merged;
    }
}

fn register_classes(engine: &mut Engine, ctx: &Rc<Ctx>) {
    let c = ctx.clone();
    engine.register_indexer_get(
        move |ncc: NativeCallContext, _: &mut ClassStoreRef, name: &str| -> Res<ClassRef> {
            let class = c
                .classes
                .borrow_mut()
                .load(
                    ncc.engine(),
                    name,
                    ncc.call_source(),
                    &mut c.sources.borrow_mut(),
                )
                .map_err(|e| format!("cs.{name}: {e}"))?;
            Ok(ClassRef { class })
        },
    );
    engine.register_get("name", |c: &mut ClassRef| ref_name(c));
    engine.register_fn("to_string", |c: &mut ClassRef| {
        format!("cs.{}", ref_name(c))
    });
    // `cs.Name.new(…)` with up to five constructor arguments.
    engine.register_fn("new", |ncc: NativeCallContext, c: &mut ClassRef| {
        instantiate(&ncc, c, vec![])
    });
    engine.register_fn(
        "new",
        |ncc: NativeCallContext, c: &mut ClassRef, a: Dynamic| instantiate(&ncc, c, vec![a]),
    );
    engine.register_fn(
        "new",
        |ncc: NativeCallContext, c: &mut ClassRef, a: Dynamic, b: Dynamic| {
            instantiate(&ncc, c, vec![a, b])
        },
    );
    engine.register_fn(
        "new",
        |ncc: NativeCallContext, c: &mut ClassRef, a: Dynamic, b: Dynamic, d: Dynamic| {
            instantiate(&ncc, c, vec![a, b, d])
        },
    );
    engine.register_fn(
        "new",
        |ncc: NativeCallContext,
         c: &mut ClassRef,
         a: Dynamic,
         b: Dynamic,
         d: Dynamic,
         e: Dynamic| { instantiate(&ncc, c, vec![a, b, d, e]) },
    );
    engine.register_fn(
        "new",
        |ncc: NativeCallContext,
         c: &mut ClassRef,
         a: Dynamic,
         b: Dynamic,
         d: Dynamic,
         e: Dynamic,
         f: Dynamic| { instantiate(&ncc, c, vec![a, b, d, e, f]) },
    );
}

fn ref_name(c: &ClassRef) -> String {
    c.class.class.clone().unwrap_or_default()
}

/// A new instance of a class: an object map naming its class, built by `constructor`.
fn instantiate(ncc: &NativeCallContext, c: &ClassRef, mut args: Vec<Dynamic>) -> Res<Dynamic> {
    let class = &c.class;
    let name = ref_name(c);
    let mut map = Map::new();
    map.insert(CLASS_KEY.into(), name.clone().into());
    let mut this = Dynamic::from_map(map).into_shared();
    if let Some(n) = class.params("constructor") {
        if args.len() > n {
            return Err(format!(
                "cs.{name}.new: the constructor takes {n} argument(s), got {}",
                args.len()
            )
            .into());
        }
        args.resize(n, Dynamic::UNIT);
        let options = CallFnOptions::new()
            .eval_ast(false)
            .bind_this_ptr(&mut this);
        let _ = ncc.engine().call_fn_with_options::<Dynamic>(
            options,
            &mut Scope::new(),
            &class.ast,
            "constructor",
            args,
        )?;
    }
    Ok(this)
}

fn register_server(engine: &mut Engine, ctx: &Rc<Ctx>) {
    let c = ctx.clone();
    engine.register_get("connections", move |s: &mut ServerObj| -> Array {
        // Every open connection of the server, on whichever worker it lives.
        let reg = c.registry.borrow();
        let Some(shared) = reg.servers.get(&s.id).and_then(|e| e.shared.clone()) else {
            return Array::new();
        };
        let table = shared.read().unwrap();
        table
            .values()
            .map(|handle| {
                Dynamic::from(ConnObj {
                    handle: handle.clone(),
                    server: s.id,
                })
            })
            .collect()
    });
    let c = ctx.clone();
    engine.register_get("dataType", move |s: &mut ServerObj| {
        c.registry
            .borrow()
            .servers
            .get(&s.id)
            .map(|e| e.data_type.as_str())
            .unwrap_or("text")
            .to_string()
    });
    let c = ctx.clone();
    engine.register_get("handler", move |s: &mut ServerObj| {
        c.registry
            .borrow()
            .servers
            .get(&s.id)
            .map(|e| e.handler.clone())
            .unwrap_or(Dynamic::UNIT)
    });
    let c = ctx.clone();
    engine.register_get("path", move |s: &mut ServerObj| -> Dynamic {
        c.registry
            .borrow()
            .servers
            .get(&s.id)
            .and_then(|e| e.path.clone())
            .map(Dynamic::from)
            .unwrap_or(Dynamic::UNIT)
    });
    let c = ctx.clone();
    engine.register_get("port", move |s: &mut ServerObj| -> i64 {
        c.registry
            .borrow()
            .servers
            .get(&s.id)
            .map(|e| i64::from(e.port))
            .unwrap_or(0)
    });
    let c = ctx.clone();
    engine.register_get("host", move |s: &mut ServerObj| -> String {
        c.registry
            .borrow()
            .servers
            .get(&s.id)
            .map(|e| e.host.clone())
            .unwrap_or_default()
    });
    let c = ctx.clone();
    engine.register_get("terminated", move |s: &mut ServerObj| -> bool {
        c.registry
            .borrow()
            .servers
            .get(&s.id)
            .is_none_or(|e| e.terminated)
    });
    let c = ctx.clone();
    engine.register_fn("terminate", move |s: &mut ServerObj| {
        c.terminate_server(s.id)
    });
    engine.register_get("id", |s: &mut ServerObj| s.id as i64);
    engine.register_fn("==", |a: ServerObj, b: ServerObj| a.id == b.id);
    engine.register_fn("!=", |a: ServerObj, b: ServerObj| a.id != b.id);
    engine.register_fn("to_string", |s: &mut ServerObj| {
        format!("WebSocketServer#{}", s.id)
    });
    engine.register_fn("to_debug", |s: &mut ServerObj| {
        format!("WebSocketServer#{}", s.id)
    });
}

pub fn conn_obj(e: &ConnEntry, server: ServerId) -> ConnObj {
    ConnObj {
        handle: e.handle.clone(),
        server,
    }
}

/// The object a callback gets as `ws`: a server-side connection or a client.
pub fn conn_value(e: &ConnEntry) -> Dynamic {
    match &e.side {
        Side::Server(server) => Dynamic::from(conn_obj(e, *server)),
        Side::Client { .. } => Dynamic::from(ClientObj {
            handle: e.handle.clone(),
        }),
    }
}

fn register_connection(engine: &mut Engine, ctx: &Rc<Ctx>) {
    engine.register_get("wss", |c: &mut ConnObj| ServerObj { id: c.server });
    register_socket::<ConnObj>(engine, ctx, "WebSocketConnection");
}

/// A script object that is a connection: a server-side `WebSocketConnection` or a client
/// `WebSocket`. Both are a handle (id + sender) underneath.
trait Socket: Clone + 'static {
    fn handle(&self) -> &ConnectionHandle;
}

impl Socket for ConnObj {
    fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }
}

impl Socket for ClientObj {
    fn handle(&self) -> &ConnectionHandle {
        &self.handle
    }
}

/// What both kinds of connection have: `id`, `status`, `handler`, `send`, `terminate`,
/// equality and printing.
fn register_socket<T: Socket>(engine: &mut Engine, ctx: &Rc<Ctx>, type_name: &'static str) {
    engine.register_get("id", |c: &mut T| c.handle().id() as i64);
    engine.register_get("status", |c: &mut T| {
        c.handle().status().as_str().to_string()
    });
    let cx = ctx.clone();
    engine.register_get("handler", move |c: &mut T| {
        cx.registry
            .borrow()
            .conns
            .get(&c.handle().id())
            .map(|e| e.handler.clone())
            .unwrap_or(Dynamic::UNIT)
    });
    engine.register_fn("send", |c: &mut T, message: Dynamic| -> Res<()> {
        send(c.handle(), data_to_payload(&message)?);
        Ok(())
    });
    engine.register_fn("terminate", |c: &mut T| {
        c.handle().close(1000, String::new());
    });
    engine.register_fn("terminate", |c: &mut T, code: i64| -> Res<()> {
        terminate(c.handle(), code, ImmutableString::new())
    });
    engine.register_fn(
        "terminate",
        |c: &mut T, code: i64, reason: ImmutableString| -> Res<()> {
            terminate(c.handle(), code, reason)
        },
    );
    engine.register_fn("==", |a: T, b: T| a.handle().id() == b.handle().id());
    engine.register_fn("!=", |a: T, b: T| a.handle().id() != b.handle().id());
    engine.register_fn("to_string", move |c: &mut T| {
        format!("{type_name}#{}", c.handle().id())
    });
    engine.register_fn("to_debug", move |c: &mut T| {
        let h = c.handle();
        format!("{type_name}#{} ({})", h.id(), h.status().as_str())
    });
}

pub fn send(handle: &ConnectionHandle, payload: crate::payload::Payload) {
    match handle.send(payload) {
        Ok(()) => {}
        Err(SendError::NotOpen) => {
            tracing::debug!("connection {}: send after close, dropped", handle.id());
        }
        Err(SendError::QueueFull) => {
            tracing::warn!(
                "connection {}: the peer does not read; closing it with 1008",
                handle.id()
            );
        }
    }
}

/// `terminate(code, reason)`: code 1000 or 3000–4999, reason at most 123 bytes (SPEC 6).
fn terminate(handle: &ConnectionHandle, code: i64, reason: ImmutableString) -> Res<()> {
    if code != 1000 && !(3000..=4999).contains(&code) {
        return Err(format!("terminate: code must be 1000 or 3000-4999, got {code}").into());
    }
    if reason.len() > 123 {
        return Err(format!(
            "terminate: reason must be at most 123 bytes of UTF-8, got {}",
            reason.len()
        )
        .into());
    }
    handle.close(code as u16, reason.to_string());
    Ok(())
}

fn register_client(engine: &mut Engine, ctx: &Rc<Ctx>) {
    let c = ctx.clone();
    engine.register_fn(
        "new",
        move |ncc: NativeCallContext, _: &mut ClientClass, url: ImmutableString| {
            new_client(&c, &ncc, &url, None)
        },
    );
    let c = ctx.clone();
    engine.register_fn(
        "new",
        move |ncc: NativeCallContext,
              _: &mut ClientClass,
              url: ImmutableString,
              handler: Dynamic| { new_client(&c, &ncc, &url, Some(handler)) },
    );
    engine.register_fn("to_string", |_: &mut ClientClass| "WebSocket".to_string());
    let cx = ctx.clone();
    engine.register_get("url", move |c: &mut ClientObj| {
        match cx
            .registry
            .borrow()
            .conns
            .get(&c.handle.id())
            .map(|e| &e.side)
        {
            Some(Side::Client { url }) => url.clone(),
            _ => String::new(),
        }
    });
    let cx = ctx.clone();
    engine.register_get("dataType", move |c: &mut ClientObj| {
        cx.registry
            .borrow()
            .conns
            .get(&c.handle.id())
            .map(|e| e.data_type.as_str())
            .unwrap_or("text")
            .to_string()
    });
    register_socket::<ClientObj>(engine, ctx, "WebSocket");
}

/// Checks a client URL: `ws://` or `wss://`, with a host.
fn check_url(url: &str) -> Res<()> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url
        .parse()
        .map_err(|e| format!("WebSocket.new: cannot parse URL {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("ws") | Some("wss") => {}
        Some(other) => {
            return Err(format!(
                "WebSocket.new: URL {url:?} has scheme {other:?}; expected ws:// or wss://"
            )
            .into());
        }
        None => {
            return Err(format!(
                "WebSocket.new: URL {url:?} has no scheme; expected ws:// or wss://"
            )
            .into());
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("WebSocket.new: URL {url:?} has no host").into());
    }
    Ok(())
}

/// `handler.headers`: name → string, or array of strings (the header repeats).
fn client_headers(handler: &Map) -> Res<Vec<(String, String)>> {
    let mut out = Vec::new();
    let Some(headers) = handler.get("headers") else {
        return Ok(out);
    };
    if headers.is_unit() {
        return Ok(out);
    }
    let Some(map) = headers.read_lock::<Map>() else {
        return Err(format!(
            "WebSocket.new: handler.headers must be an object, got {}",
            headers.type_name()
        )
        .into());
    };
    for (name, value) in map.iter() {
        if let Some(list) = value.read_lock::<Array>() {
            for v in list.iter() {
                out.push((name.to_string(), header_value(name, v)?));
            }
        } else {
            out.push((name.to_string(), header_value(name, value)?));
        }
    }
    Ok(out)
}

fn header_value(name: &str, v: &Dynamic) -> Res<String> {
    if let Ok(s) = v.as_immutable_string_ref() {
        return Ok(s.to_string());
    }
    if v.is_int() || v.is_float() || v.is_bool() {
        return Ok(v.to_string());
    }
    Err(format!(
        "WebSocket.new: header {name} must be a string, got {}",
        v.type_name()
    )
    .into())
}

fn new_client(
    ctx: &Rc<Ctx>,
    ncc: &NativeCallContext,
    url: &str,
    handler: Option<Dynamic>,
) -> Res<ClientObj> {
    check_url(url)?;
    let handler = match handler {
        None => Dynamic::from_map(Map::new()).into_shared(),
        Some(h) if h.is_unit() => Dynamic::from_map(Map::new()).into_shared(),
        Some(h) => share_handler(h, "WebSocket.new")?,
    };
    let (headers, data_type) = {
        let map = handler
            .read_lock::<Map>()
            .expect("share_handler checked a map");
        let data_type = match map.get("dataType") {
            None => DataType::Text,
            Some(v) if v.is_unit() => DataType::Text,
            Some(v) => v
                .clone()
                .into_string()
                .ok()
                .and_then(|s| DataType::parse(&s))
                .ok_or_else(|| bad_option("dataType", "\"text\", \"blob\" or \"object\"", v))?,
        };
        (client_headers(&map)?, data_type)
    };
    let config = ctx.net.config();
    let port = ConnectionHandle::channel(Status::Connecting, config);
    let handle = port.handle.clone();
    if ctx.in_top_level() {
        ctx.top_level.borrow_mut().clients.push(handle.id());
    }
    ctx.registry.borrow_mut().conns.insert(
        handle.id(),
        super::state::ConnEntry {
            handle: handle.clone(),
            side: Side::Client {
                url: url.to_string(),
            },
            handler,
            home: ncc.call_source().map(str::to_string),
            data_type,
            opened: false,
        },
    );
    tracing::debug!("client {} connecting to {url}", handle.id());
    ctx.net.connect(
        ClientRequest {
            url: url.to_string(),
            headers,
        },
        port,
        ctx.events.clone(),
        ctx.event_loop.handle(),
    );
    Ok(ClientObj { handle })
}

fn register_timers(engine: &mut Engine, ctx: &Rc<Ctx>) {
    // Wall-clock time, as JavaScript's Date.now(): milliseconds since the Unix epoch.
    engine.register_fn("now", || -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    });
    for (name, repeat) in [("setTimeout", false), ("setInterval", true)] {
        let c = ctx.clone();
        engine.register_fn(
            name,
            move |ncc: NativeCallContext, callback: FnPtr, ms: i64| -> Res<i64> {
                if ms < 0 {
                    return Err(
                        format!("{}: delay must be >= 0 ms, got {ms}", ncc.fn_name()).into(),
                    );
                }
                let delay = Duration::from_millis(ms as u64);
                let timer = Timer {
                    callback,
                    // An interval of 0 would spin: at least 1 ms between runs.
                    every: repeat.then(|| delay.max(Duration::from_millis(1))),
                    home: ncc.call_source().map(str::to_string),
                };
                let id = c.registry.borrow_mut().timers.add(delay, timer);
                // The loop may be waiting for a later timer (or for nothing).
                c.event_loop.wake();
                if c.in_top_level() {
                    c.top_level.borrow_mut().timers.push(id);
                }
                Ok(id)
            },
        );
    }
    for name in ["clearTimeout", "clearInterval"] {
        let c = ctx.clone();
        engine.register_fn(name, move |id: i64| {
            c.registry.borrow_mut().timers.cancel(id)
        });
    }
}
