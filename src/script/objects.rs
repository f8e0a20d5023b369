//! Objects by reference, as in 4D and JavaScript (SPEC 5): a handler or a class instance is one
//! object however many names it has.
//!
//! Rhai copies an object map whenever it is bound with `let`, passed as an argument or stored
//! in another map; a shared value is copied too (`let` flattens it). What survives a copy is a
//! shared value *inside* the map: the copy holds the same cell. So an object's fields are
//! made shared cells, and every copy of the object reads and writes the same fields. This
//! module says when that happens, and which object a closure made in a method sees as `this`.
//! It must not touch maps that are plain data (an event, a message): only maps that look like
//! objects, those with a function property or a class.

use std::cell::RefCell;

use rhai::{Dynamic, Engine, Map};

use super::classes::CLASS_KEY;

/// After a callback of `handler` (a shared value, as handlers are): the fields it added are
/// shared too.
///
/// On every message, so the map's tag (Rhai's free per-value number) keeps its field count
/// as of the last look: a callback that added no field costs a count, not a walk. (A callback
/// that removed one field and added another is caught at the next change of the count.)
pub fn share_new_fields(handler: &Dynamic) {
    let Some(inner) = handler.read_lock::<Dynamic>() else {
        return;
    };
    let Ok(len) = inner
        .as_map_ref()
        .map(|m| i32::try_from(m.len()).unwrap_or(i32::MAX))
    else {
        return;
    };
    if inner.tag() == len {
        return;
    }
    drop(inner);
    let mut handler = handler.clone();
    share_fields(&mut handler);
    if let Some(mut inner) = handler.write_lock::<Dynamic>() {
        inner.set_tag(len);
    }
}

/// The handler's map was replaced (reload.rs): its fields are to be looked at again.
pub fn forget_fields_seen(handler: &Dynamic) {
    if let Some(mut inner) = handler.clone().write_lock::<Dynamic>() {
        inner.set_tag(-1);
    }
}

/// Makes the fields of object `value` shared cells, so that copies of it share them. Plain
/// data maps and non-maps are left alone; functions and the class name are never changed.
///
/// On the path of every message (each variable read, each callback): the checks come
/// cheapest first, and a map whose fields are all shared already is only read.
pub fn share_fields(value: &mut Dynamic) {
    // (Discriminant checks: most values read are not maps.)
    if !(value.is_map() || value.is_shared() && !value.is_locked()) {
        return;
    }
    let Some(mut map) = value.write_lock::<Map>() else {
        return;
    };
    if needs_sharing(&map) {
        for (key, field) in map.iter_mut() {
            if !field.is_shared() && !field.is_fnptr() && key.as_str() != CLASS_KEY {
                *field = std::mem::take(field).into_shared();
            }
        }
    }
}

/// An object (a class instance or a handler: it has a class or a function property, unlike
/// data) with a field that is not shared yet.
fn needs_sharing(map: &Map) -> bool {
    let (mut object, mut pending) = (false, false);
    for (key, field) in map.iter() {
        if field.is_fnptr() || key.as_str() == CLASS_KEY {
            object = true;
        } else if !field.is_shared() {
            pending = true;
        }
    }
    object && pending
}

/// Reading a variable that holds an object shares its fields first, so that where it goes
/// next (`WebSocketServer.new(h)`, `let alias = h`, `this.rooms[n] = room`) is the same
/// object as the variable.
///
/// Only on the engine that runs top-level code (the entry script's top level and tests,
/// worker.rs), where handlers are made and kept in variables. Rhai calls this hook on every
/// variable read, at about 95 instructions each even when it does nothing (callgrind), which
/// callbacks do without: instances, handlers and copies of them (`let me = this`, `let room =
/// this.rooms[n]`) share their fields anyway.
pub fn register(engine: &mut Engine) {
    #[allow(deprecated)] // "volatile", not deprecated: the documented hook for this
    engine.on_var(|name, _index, mut ctx| {
        if let Some(value) = ctx.scope_mut().get_mut(name) {
            share_fields(value);
        }
        Ok(None)
    });
}

/// The object whose method or callback runs now: what a closure made there sees as `this`
/// when it runs later (`setTimeout(|| this.tick(), 10)`), as JavaScript's arrow functions do.
#[derive(Default)]
pub struct ThisStack(RefCell<Vec<Dynamic>>);

impl ThisStack {
    /// `this` of the code running now, if it has one.
    pub fn current(&self) -> Option<Dynamic> {
        self.0.borrow().last().cloned()
    }

    /// Runs `f` with `this` as the current object.
    pub fn with<T>(&self, this: &Dynamic, f: impl FnOnce() -> T) -> T {
        self.push(this.clone());
        let out = f();
        self.pop();
        out
    }

    /// `this` is the current object until the matching [`pop`](Self::pop).
    pub fn push(&self, this: Dynamic) {
        self.0.borrow_mut().push(this);
    }

    pub fn pop(&self) {
        self.0.borrow_mut().pop();
    }
}
