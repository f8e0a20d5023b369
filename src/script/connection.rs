//! The `WebSocketConnection` of the script API (SPEC 3), and what it shares with a client
//! `WebSocket`: `id`, `status`, `handler`, `send`, `terminate`. A connection object is a
//! handle (an id plus a way to reach its socket), so it works from any worker.

use super::error::api_error;
use std::rc::Rc;

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString};

use super::client::ClientObj;
use super::convert::{data_to_payload, text_payload};
use super::server::ServerObj;
use super::state::{ConnEntry, Ctx, Side};
use crate::event::{ConnectionHandle, SendError, ServerId};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// A `WebSocketConnection` as scripts hold it: the handle (id + sender) and its server.
#[derive(Clone)]
pub struct ConnObj {
    pub handle: ConnectionHandle,
    pub server: ServerId,
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
        Side::Client { url } => Dynamic::from(ClientObj {
            handle: e.handle.clone(),
            url: url.as_str().into(),
            handler: e.handler.clone(),
        }),
    }
}

/// True if `value` is the object [`conn_value`] makes for connection `conn`.
pub fn is_conn_value(value: &Dynamic, conn: crate::event::ConnId) -> bool {
    value
        .read_lock::<ConnObj>()
        .map(|c| c.handle.id() == conn)
        .or_else(|| {
            value
                .read_lock::<ClientObj>()
                .map(|c| c.handle.id() == conn)
        })
        .unwrap_or(false)
}

pub(super) fn register(engine: &mut Engine, ctx: &Rc<Ctx>) {
    engine.register_type_with_name::<ConnObj>("WebSocketConnection");
    engine.register_get("wss", |c: &mut ConnObj| ServerObj { id: c.server });
    register_socket::<ConnObj>(engine, ctx, "WebSocketConnection");
}

/// A script object that is a connection: a server-side `WebSocketConnection` or a client
/// `WebSocket`. Both are a handle (id + sender) underneath.
pub(super) trait Socket: Clone + 'static {
    fn handle(&self) -> &ConnectionHandle;
    /// The handler it keeps itself (a client keeps it after it closes).
    fn own_handler(&self) -> Option<&Dynamic> {
        None
    }
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
    fn own_handler(&self) -> Option<&Dynamic> {
        Some(&self.handler)
    }
}

/// What both kinds of connection have: `id`, `status`, `handler`, `send`, `terminate`,
/// equality and printing.
pub(super) fn register_socket<T: Socket>(
    engine: &mut Engine,
    ctx: &Rc<Ctx>,
    type_name: &'static str,
) {
    engine.register_get("id", |c: &mut T| c.handle().id() as i64);
    engine.register_get("status", |c: &mut T| {
        c.handle().status().as_str().to_string()
    });
    let cx = ctx.clone();
    engine.register_get("handler", move |c: &mut T| {
        if let Some(h) = c.own_handler() {
            return h.clone();
        }
        cx.registry
            .borrow()
            .conns
            .get(&c.handle().id())
            .map(|e| e.handler.clone())
            .unwrap_or(Dynamic::UNIT)
    });
    // Typed overloads first: Rhai finds an exact signature at once, where a `Dynamic`
    // parameter makes it try every combination of argument types on each call.
    engine.register_fn("send", |c: &mut T, text: ImmutableString| {
        send(c.handle(), text_payload(&text));
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
        return Err(api_error(format!(
            "terminate: code must be 1000 or 3000-4999, got {code}"
        )));
    }
    if reason.len() > 123 {
        return Err(api_error(format!(
            "terminate: reason must be at most 123 bytes of UTF-8, got {}",
            reason.len()
        )));
    }
    handle.close(code as u16, reason.to_string());
    Ok(())
}
