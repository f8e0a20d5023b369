//! How values print (`print`, `to_string`, `to_debug`, `${…}`): arrays, maps and objects as
//! Rhai prints maps, with objects named by their class. Printing walks on the native stack,
//! so it stops at [`MAX_DEPTH`] levels with a note; an object met again inside itself (a room
//! that holds its lobby that holds the room) prints as `[circular Lobby]`, as Node's
//! `util.inspect` prints `[Circular]`.

use std::fmt::Write;

use rhai::{Array, Dynamic, Map};

use super::bounds::MAX_DEPTH;
use super::objects::{Object, in_use};

/// `value` printed; `debug` quotes a string at the top too.
pub fn print(value: &Dynamic, debug: bool) -> String {
    if in_use(value) {
        return IN_USE.into();
    }
    if !debug && let Ok(s) = value.as_immutable_string_ref() {
        return s.to_string();
    }
    // Data too deep to print prints as a note in its place, whole (objects are bounded as
    // they are walked).
    if super::bounds::too_deep(value, MAX_DEPTH) {
        return format!(
            "[{} nested deeper than {MAX_DEPTH} levels]",
            super::convert::script_type_name(value)
        );
    }
    let mut out = String::new();
    write(&mut out, value, 0, &mut Vec::new());
    out
}

/// What a field prints as while a method called through it runs (Rhai holds it).
const IN_USE: &str = "[in use]";

fn write(out: &mut String, value: &Dynamic, depth: usize, open: &mut Vec<usize>) {
    if in_use(value) {
        out.push_str(IN_USE);
        return;
    }
    if depth > MAX_DEPTH {
        out.push_str("[nested deeper than ");
        let _ = write!(out, "{MAX_DEPTH} levels]");
        return;
    }
    if let Some(object) = Object::of(value) {
        return write_object(out, &object, depth, open);
    }
    if let Some(array) = value.read_lock::<Array>() {
        out.push('[');
        for (i, item) in array.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            write(out, item, depth + 1, open);
        }
        out.push(']');
        return;
    }
    if let Some(map) = value.read_lock::<Map>() {
        return write_map(out, &map, depth, open);
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        let _ = write!(out, "{:?}", s.as_str());
        return;
    }
    if value.is_shared() {
        return write(out, &value.flatten_clone(), depth, open);
    }
    if value.is_unit() {
        out.push_str("()");
        return;
    }
    match super::convert::native_label(value) {
        Some(label) => out.push_str(&label),
        None => {
            let _ = write!(out, "{value}");
        }
    }
}

fn write_map(out: &mut String, map: &Map, depth: usize, open: &mut Vec<usize>) {
    out.push_str("#{");
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{:?}: ", k.as_str());
        write(out, v, depth + 1, open);
    }
    out.push('}');
}

fn write_object(out: &mut String, object: &Object, depth: usize, open: &mut Vec<usize>) {
    let name = object.class().map_or("object", |c| c.as_str());
    if open.contains(&object.address()) {
        let _ = write!(out, "[circular {name}]");
        return;
    }
    if let Some(class) = object.class() {
        let _ = write!(out, "{class} ");
    }
    open.push(object.address());
    // A copy of the fields: printing a field may run nothing, but the copy keeps the
    // object's cell free whatever a field's printing does.
    let fields = object.fields();
    write_map(out, &fields, depth, open);
    open.pop();
}
