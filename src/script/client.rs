//! The client `WebSocket` of the script API (SPEC 4): `WebSocket.new(url, handler)`, its
//! handler's `headers` and `dataType`, and its `url`. Connecting goes on in the background;
//! failures arrive as events, never as script errors.

use super::error::api_error;
use std::rc::Rc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, NativeCallContext};

use super::api::handler_object;
use super::connection::register_socket;
use super::convert::DataType;
use super::objects::Object;
use super::server::bad_option;
use super::state::{Ctx, Side};
use crate::event::{ConnectionHandle, Status};
use crate::net::ClientRequest;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// The global `WebSocket` (its `new` opens client connections).
#[derive(Clone)]
pub struct ClientClass;

/// A client `WebSocket` as scripts hold it: the handle, and what 4D says it keeps for its
/// whole life, after it closes too: the URL given to `new` and the handler.
#[derive(Clone)]
pub struct ClientObj {
    pub handle: ConnectionHandle,
    pub url: ImmutableString,
    pub handler: Dynamic,
}
pub(super) fn register(engine: &mut Engine, ctx: &Rc<Ctx>) {
    engine.register_type_with_name::<ClientClass>("WebSocketClass");
    engine.register_type_with_name::<ClientObj>("WebSocket");
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
    engine.register_get("url", |c: &mut ClientObj| c.url.clone());
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
        .map_err(|e| api_error(format!("WebSocket.new: cannot parse URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("ws") | Some("wss") => {}
        Some(other) => {
            return Err(api_error(format!(
                "WebSocket.new: URL {url:?} has scheme {other:?}; expected ws:// or wss://"
            )));
        }
        None => {
            return Err(api_error(format!(
                "WebSocket.new: URL {url:?} has no scheme; expected ws:// or wss://"
            )));
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(api_error(format!("WebSocket.new: URL {url:?} has no host")));
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
        return Err(api_error(format!(
            "WebSocket.new: handler.headers must be an object, got {}",
            super::convert::script_type_name(headers)
        )));
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
    Err(api_error(format!(
        "WebSocket.new: header {name} must be a string, got {}",
        super::convert::script_type_name(v)
    )))
}

fn new_client(
    ctx: &Rc<Ctx>,
    ncc: &NativeCallContext,
    url: &str,
    handler: Option<Dynamic>,
) -> Res<ClientObj> {
    check_url(url)?;
    let handler = match handler {
        Some(h) if !h.is_unit() => handler_object(ctx, h, ncc.call_source(), "WebSocket.new")?,
        _ => ctx
            .objects
            .make(None, ncc.call_source(), Map::new())
            .into_dynamic(),
    };
    let (headers, data_type) = {
        let map = Object::of(&handler)
            .expect("handler_object made an object")
            .fields();
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
    let handler_value = handler.clone();
    let config = ctx.net.config();
    let port = ConnectionHandle::channel(Status::Connecting, config);
    if ctx.shutting_down.get() {
        // The host is stopping: no connection is made, and the client never runs a callback
        // (a reconnect from `onTerminate` would otherwise start again without end).
        tracing::info!("not connecting to {url}: the host is stopping");
        port.handle.set_status(Status::Closed);
        return Ok(ClientObj {
            handle: port.handle.clone(),
            url: url.into(),
            handler: handler_value,
        });
    }
    let handle = port.handle.clone();
    ctx.top_level.made_client(handle.id());
    ctx.registry.borrow_mut().conns.insert(
        handle.id(),
        super::state::ConnEntry {
            handle: handle.clone(),
            side: Side::Client {
                url: url.to_string(),
            },
            handler: handler.clone(),
            home: ncc.call_source().map(Rc::from),
            data_type,
            opened: false,
            spare_ws: None,
            stopped: false,
        },
    );
    tracing::debug!("client {} connecting to {url}", handle.id());
    let client = ClientObj {
        handle: handle.clone(),
        url: url.into(),
        handler: handler_value,
    };
    ctx.net.connect(
        ClientRequest {
            url: url.to_string(),
            headers,
        },
        port,
        ctx.events.clone(),
        ctx.event_loop.handle(),
    );
    Ok(client)
}
