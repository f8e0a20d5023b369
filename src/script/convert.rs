//! Between WebSocket payloads and script values, following `dataType` (SPEC section 6).

use std::cell::RefCell;

use rhai::{Blob, Dynamic, ImmutableString};

use super::error::api_error;
use crate::payload::{Payload, Text};

thread_local! {
    /// The last string sent, or the text of the last message in: a broadcast sends one string
    /// to many connections, and this makes that two copies instead of one per connection; an
    /// echo sends back `event.data`, and this sends the bytes that came in, with no copy.
    /// Holding the string keeps its address from being reused by another.
    static LAST_SENT: RefCell<LastSent> = const { RefCell::new(LastSent::Nothing) };
}

enum LastSent {
    Nothing,
    /// Sent once: most strings are. Not kept as bytes, which would cost a shared buffer for
    /// every message.
    Once(ImmutableString),
    /// Its bytes are at hand: the string came in as a message, or was sent before.
    Known(ImmutableString, Text),
}

/// Forgets the last string and its bytes (the end of a message callback): a large message is
/// not held until the next.
pub fn forget_last_sent() {
    LAST_SENT.with(|last| *last.borrow_mut() = LastSent::Nothing);
}

/// `event.data` for a text message: the string, with its bytes remembered for a `send`.
fn received_text(text: Text) -> Dynamic {
    let s = ImmutableString::from(text.as_str());
    LAST_SENT.with(|last| *last.borrow_mut() = LastSent::Known(s.clone(), text));
    Dynamic::from(s)
}

fn text_of(s: &ImmutableString) -> Text {
    LAST_SENT.with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            LastSent::Known(prev, text) if prev.ptr_eq(s) => text.clone(),
            LastSent::Once(prev) if prev.ptr_eq(s) => {
                let text = Text::from(s.as_str());
                *last = LastSent::Known(s.clone(), text.clone());
                text
            }
            _ => {
                *last = LastSent::Once(s.clone());
                Text::from(s.as_str())
            }
        }
    })
}

/// What `event.data` is for a handler (`dataType` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataType {
    Text,
    Blob,
    Object,
}

impl DataType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "text" => Some(Self::Text),
            "blob" => Some(Self::Blob),
            "object" => Some(Self::Object),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Blob => "blob",
            Self::Object => "object",
        }
    }
}

/// A message that a `dataType: "object"` handler could not parse.
pub struct BadJson {
    pub text: String,
    pub error: String,
}

/// `event.data` for an incoming message.
pub fn payload_to_data(payload: Payload, data_type: DataType) -> Result<Dynamic, BadJson> {
    match (payload, data_type) {
        (Payload::Binary(b), _) => Ok(Dynamic::from_blob(Blob::from(b.as_ref()))),
        (Payload::Text(t), DataType::Blob) => Ok(Dynamic::from_blob(t.as_str().as_bytes().into())),
        (Payload::Text(t), DataType::Text) => Ok(received_text(t)),
        (Payload::Text(t), DataType::Object) => serde_json::from_str::<Dynamic>(t.as_str())
            .map_err(|e| BadJson {
                text: t.as_str().to_string(),
                error: e.to_string(),
            }),
    }
}

/// A string as a text message.
pub fn text_payload(s: &ImmutableString) -> Payload {
    Payload::Text(text_of(s))
}

/// The payload `send(value)` puts on the wire: a string as text, a Blob as binary, anything
/// else that JSON can express as the text of its JSON.
pub fn data_to_payload(value: &Dynamic) -> Result<Payload, Box<rhai::EvalAltResult>> {
    if super::objects::in_use(value) {
        return Err(api_error(
            "cannot send a field while a method called through it runs",
        ));
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        return Ok(text_payload(&s));
    }
    if value.is_blob() {
        let blob = value.read_lock::<Blob>().expect("checked is_blob");
        return Ok(Payload::binary(blob.to_vec()));
    }
    if value.is_unit() {
        return Err(api_error(
            "cannot send (): give a string, a Blob, an object or an array",
        ));
    }
    if super::objects::holds_object(value, super::bounds::MAX_DEPTH) {
        let data = super::objects::to_data(value, 0, &mut Vec::new())
            .map_err(|e| api_error(format!("cannot send this value as JSON: {e}")))?;
        return data_to_payload(&data);
    }
    if super::bounds::too_deep(value, super::bounds::MAX_DEPTH) {
        return Err(api_error(format!(
            "cannot send arrays or maps nested deeper than {} levels as JSON",
            super::bounds::MAX_DEPTH
        )));
    }
    if value.is_map() || value.is_array() || value.is_int() || value.is_float() || value.is_bool() {
        return serde_json::to_string(value)
            .map(Payload::text)
            .map_err(|e| api_error(format!("cannot send this value as JSON: {e}")));
    }
    Err(api_error(format!(
        "cannot send a {}: give a string, a Blob, an object or an array",
        script_type_name(value)
    )))
}

/// How a connection, client or server prints (`WebSocketConnection#5`), as its `to_string`
/// says; None for other values.
pub fn native_label(value: &Dynamic) -> Option<String> {
    if let Some(c) = value.read_lock::<super::connection::ConnObj>() {
        return Some(format!("WebSocketConnection#{}", c.handle.id()));
    }
    if let Some(c) = value.read_lock::<super::client::ClientObj>() {
        return Some(format!("WebSocket#{}", c.handle.id()));
    }
    if let Some(s) = value.read_lock::<super::server::ServerObj>() {
        return Some(format!("WebSocketServer#{}", s.id));
    }
    None
}

/// The name scripts know `value`'s type by, for messages: `int`, `float`, `string`, `map`,
/// `array`, `Blob`, `()`, `WebSocketConnection`… (Rhai's own says `i64`, or a Rust path).
pub fn script_type_name(value: &Dynamic) -> &'static str {
    if super::objects::in_use(value) {
        return "field in use";
    }
    if value.is_unit() {
        return "()";
    }
    if value.is_int() {
        return "int";
    }
    if value.is_float() {
        return "float";
    }
    if value.is_bool() {
        return "bool";
    }
    if value.is_char() {
        return "char";
    }
    if value.is_string() {
        return "string";
    }
    if value.is_map() {
        return "map";
    }
    if value.is_array() {
        return "array";
    }
    if value.is_blob() {
        return "Blob";
    }
    if value.is_fnptr() {
        return "Fn";
    }
    if value.is::<super::objects::Object>() {
        return "object";
    }
    if value.is::<super::connection::ConnObj>() {
        return "WebSocketConnection";
    }
    if value.is::<super::client::ClientObj>() {
        return "WebSocket";
    }
    if value.is::<super::server::ServerObj>() {
        return "WebSocketServer";
    }
    "value"
}
