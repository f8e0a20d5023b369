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

use std::cell::{Cell, RefCell};

use rhai::{Dynamic, Engine, Map};

use super::classes::CLASS_KEY;

/// After a callback of `handler` (a shared value, as handlers are): the fields it added are
/// shared too. Only read when there are none (every message).
pub fn share_new_fields(handler: &Dynamic) {
    let pending = handler
        .read_lock::<Map>()
        .is_some_and(|map| needs_sharing(&map));
    if pending {
        share_fields(&mut handler.clone());
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

thread_local! {
    /// An `onMessage` runs now (see [`register`]).
    static IN_MESSAGE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, an `onMessage` callback.
pub fn in_message<T>(f: impl FnOnce() -> T) -> T {
    let outer = IN_MESSAGE.replace(true);
    let out = f();
    IN_MESSAGE.set(outer);
    out
}

/// Reading a variable that holds an object shares its fields first, so that where it goes
/// next (`WebSocketServer.new(h)`, `let alias = h`, `this.rooms[n] = room`) is the same
/// object as the variable.
///
/// Not inside `onMessage`: there it would cost about 170 instructions per variable read
/// (callgrind, echo script: +340 per message, 3% of the script side), for objects made and
/// kept in a local variable of that one callback. Instances, handlers and copies of them
/// (`let me = this`, `let room = this.rooms[n]`) share their fields already. Having the hook
/// at all costs about 95 instructions per variable read (Rhai builds a context for it).
pub fn register(engine: &mut Engine) {
    #[allow(deprecated)] // "volatile", not deprecated: the documented hook for this
    engine.on_var(|name, _index, mut ctx| {
        if !IN_MESSAGE.get()
            && let Some(value) = ctx.scope_mut().get_mut(name)
        {
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
