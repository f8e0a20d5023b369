//! The `WebSocketServer` of the script API (SPEC 3): `WebSocketServer.new(handler, options)`,
//! its options, and what a server object shows scripts. A server object is an id; every read
//! goes to the worker's registry.

use super::error::api_error;
use std::rc::Rc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

use super::api::{handler_object, has_callback};
use super::connection::ConnObj;
use super::convert::DataType;
use super::reload::adopt_server;
use super::state::{Ctx, ServerEntry};
use crate::event::{Event, ServerId, next_id};
use crate::net::Route;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// The global `WebSocketServer` (its `new` creates servers).
#[derive(Clone)]
pub struct ServerClass;
/// A `WebSocketServer` as scripts hold it.
#[derive(Clone)]
pub struct ServerObj {
    pub id: ServerId,
}
pub(super) fn register(engine: &mut Engine, ctx: &Rc<Ctx>) {
    engine.register_type_with_name::<ServerClass>("WebSocketServerClass");
    engine.register_type_with_name::<ServerObj>("WebSocketServer");
    register_server_class(engine, ctx);
    register_server(engine, ctx);
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
pub(super) struct ServerOptions {
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    pub data_type: DataType,
    pub max_connections: usize,
    pub origins: Option<Vec<String>>,
    pub static_root: Option<std::path::PathBuf>,
    pub tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub static_dotfiles: bool,
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
        static_dotfiles: false,
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
                    .map_err(|t| api_error(format!("option host: expected a string, got {t}")))?;
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
            "staticDotfiles" => {
                opts.static_dotfiles = value
                    .as_bool()
                    .map_err(|_| bad_option("staticDotfiles", "true or false", &value))?;
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
                        .ok_or_else(|| api_error(format!("option tls: {what} must be a file path")))
                };
                opts.tls = Some((path(tls.0, "cert")?, path(tls.1, "key")?));
            }
            other => {
                return Err(api_error(format!(
                    "unknown option {other:?} for WebSocketServer.new \
                     (known: port, host, path, dataType, maxConnections, origins, staticDir, staticDotfiles, tls)"
                )));
            }
        }
    }
    Ok(opts)
}

pub(super) fn bad_option(name: &str, expected: &str, got: &Dynamic) -> Box<EvalAltResult> {
    api_error(format!("option {name}: expected {expected}, got {got:?}"))
}
fn new_server(
    ctx: &Rc<Ctx>,
    ncc: &NativeCallContext,
    handler: Dynamic,
    options: Map,
) -> Res<ServerObj> {
    let handler = handler_object(ctx, handler, ncc.call_source(), "WebSocketServer.new")?;
    if !has_callback(ctx, &handler, "onConnection") {
        return Err(api_error(
            "WebSocketServer.new: the handler has no onConnection callback",
        ));
    }
    let opts = server_options(ctx, ncc, options)?;
    if let Some(id) = adopt_server(ctx, ncc, &handler, &opts) {
        return Ok(ServerObj { id });
    }
    let id = next_id();
    ctx.top_level.made_server(id);
    let route = Route {
        server: id,
        events: ctx.events.clone(),
        runtime: ctx.event_loop.handle().clone(),
        origins: opts.origins.clone().map(Into::into),
    };
    let tls = match &opts.tls {
        Some((cert, key)) => Some(
            crate::net::tls_acceptor(cert, key)
                .map_err(|e| api_error(format!("option tls: {e}")))?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let listen_options = crate::net::ListenOptions {
        static_root: opts.static_root.clone(),
        tls,
        dotfiles: opts.static_dotfiles,
    };
    let (port_to_bind, plan) = ctx.top_level.port_to_bind(opts.port);
    let listened = ctx.net.listen(
        &opts.host,
        port_to_bind,
        opts.path.as_deref(),
        route,
        listen_options,
    );
    plan.bound(listened.as_ref().map(|(a, _)| a.port()).unwrap_or(0));
    let (addr, port, shared) = match &listened {
        Ok((addr, shared)) => (Some(*addr), addr.port(), Some(shared.clone())),
        Err(_) => (None, opts.port, None),
    };
    ctx.registry.borrow_mut().servers.insert(
        id,
        ServerEntry {
            handler,
            requested_port: opts.port,
            home: ncc.call_source().map(Rc::from),
            host: opts.host,
            port,
            addr,
            path: opts.path.clone(),
            data_type: opts.data_type,
            conns: Default::default(),
            terminated: listened.is_err(),
            listen_error_pending: listened.is_err(),
            max_connections: opts.max_connections,
            shared,
        },
    );
    let event = match listened {
        Ok((addr, _)) if ctx.top_level.worker() > 0 => {
            tracing::debug!(
                "worker {} serves {scheme}://{addr}{} too",
                ctx.top_level.worker(),
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
            ctx.top_level.listen_failed(&message);
            Event::ListenFailed {
                server: id,
                message,
            }
        }
    };
    ctx.events.queue(event);
    Ok(ServerObj { id })
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
