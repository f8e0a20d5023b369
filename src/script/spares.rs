//! The message event, and what a message callback was given, taken back for the next message
//! when the callback left it as it was: the connection's `ws` object and the event map.
//!
//! Rhai holds a value of one of our types in two boxes, and a map in a box and a tree node:
//! making and freeing these for every message cost about 7 % of an echo (callgrind). A value
//! is kept only if no script can see that it is the same one: not shared (a closure that
//! captured it shares it), not read-only, no `tag` set, and for the event still exactly
//! `#{type: "message", data}` with its `type` untouched too. Its `data` is dropped at once, so
//! a large message is not held until the next one.

use std::cell::RefCell;

use rhai::{Dynamic, ImmutableString, Map};

use super::connection::is_conn_value;
use super::state::ConnEntry;
use crate::event::ConnId;

/// The worker's spare message event.
#[derive(Default)]
pub struct Spares {
    event: RefCell<Option<Dynamic>>,
}

impl Spares {
    /// `#{type: "message", data}`: the spare, or a copy of a map made once (a copy costs a
    /// third of building the map key by key), with `data` put in.
    pub fn message_event(&self, data: Dynamic) -> Dynamic {
        thread_local! {
            static TEMPLATE: Map = {
                let mut m = super::dispatch::event_map("message");
                m.insert("data".into(), Dynamic::UNIT);
                m
            };
        }
        let spare = self.event.borrow_mut().take();
        let mut event = spare.unwrap_or_else(|| Dynamic::from_map(TEMPLATE.with(Map::clone)));
        if let Some(mut map) = event.write_lock::<Map>()
            && let Some(slot) = map.get_mut("data")
        {
            *slot = data;
        }
        event
    }

    /// Keeps `event`, as a message callback left it, for the next message if it can be.
    pub fn give_back_event(&self, mut event: Dynamic) {
        if !untouched(&event) {
            return;
        }
        let reusable = match event.write_lock::<Map>() {
            Some(mut map) => {
                // `type` as it was made: "message", and untouched itself (a `tag` on it).
                let is_message = map.get("type").is_some_and(|t| {
                    untouched(t)
                        && t.read_lock::<ImmutableString>()
                            .is_some_and(|t| t.as_str() == "message")
                });
                let two = map.len() == 2;
                match map.get_mut("data") {
                    Some(data) if two && is_message => {
                        *data = Dynamic::UNIT;
                        true
                    }
                    _ => false,
                }
            }
            None => false,
        };
        if reusable {
            *self.event.borrow_mut() = Some(event);
        }
    }
}

/// The connection's `ws` object for a callback: its spare, or a new one.
pub fn take_ws(entry: &mut ConnEntry) -> Dynamic {
    entry
        .spare_ws
        .take()
        .unwrap_or_else(|| super::connection::conn_value(entry))
}

/// Keeps `ws`, as a callback left it, as the connection's spare if it can be.
pub fn give_back_ws(entry: &mut ConnEntry, conn: ConnId, ws: Dynamic) {
    if untouched(&ws) && is_conn_value(&ws, conn) {
        entry.spare_ws = Some(ws);
    }
}

/// True if nothing a script did to `value` would show in a copy made anew.
fn untouched(value: &Dynamic) -> bool {
    !value.is_shared() && !value.is_read_only() && value.tag() == 0
}
