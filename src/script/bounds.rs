//! Bounds on what one native call can do, where Rhai's own functions have none.
//!
//! - Nested data: Rhai compares (`==`, `!=`) and prints (`to_string`, `to_debug`, `${…}`)
//!   arrays and maps by recursing on the native stack, so an array nested 10,000 deep would
//!   overflow the worker's stack and abort the process. Here comparing data nested deeper than
//!   [`MAX_DEPTH`] is a script error, and so is `send`ing it as JSON; printing it prints a note
//!   in its place.
//! - Sizes asked for at once: `pad` and `blob(n)` allocate what they are asked in one call,
//!   before the per-callback memory budget can look (it is checked between operations). Here
//!   they refuse more than that budget. (Rhai's own string-size limit would do it, but setting
//!   any of its data limits makes it measure whole containers after every change.)

use super::error::api_error;
use super::objects::Object;
use super::printing::print;
use rhai::{
    Array, Blob, Dynamic, Engine, EvalAltResult, INT, ImmutableString, Map, NativeCallContext,
};

type Res<T> = Result<T, Box<EvalAltResult>>;

/// How deep arrays and maps may be nested for comparing, printing and JSON.
pub const MAX_DEPTH: usize = 256;

/// True if `value` holds arrays or maps nested deeper than `max`. The recursion stops at
/// `max`, so it is safe on the native stack, and nothing is copied (a `send` of a large map
/// walks it once).
pub fn too_deep(value: &Dynamic, max: usize) -> bool {
    deeper_than(value, 0, max)
}

fn deeper_than(value: &Dynamic, depth: usize, max: usize) -> bool {
    if let Some(array) = value.read_lock::<Array>() {
        return depth >= max || array.iter().any(|e| deeper_than(e, depth + 1, max));
    }
    if let Some(map) = value.read_lock::<Map>() {
        return depth >= max || map.values().any(|e| deeper_than(e, depth + 1, max));
    }
    false
}

fn nesting_error(what: &str) -> Box<EvalAltResult> {
    api_error(format!(
        "{what}: arrays or maps nested deeper than {MAX_DEPTH} levels"
    ))
}

/// `a == b` for arrays and maps, to a bounded depth; other values are compared by Rhai.
fn equals(ctx: &NativeCallContext, a: &Dynamic, b: &Dynamic, depth: usize) -> Res<bool> {
    if depth > MAX_DEPTH {
        return Err(nesting_error("=="));
    }
    if let (Some(x), Some(y)) = (a.read_lock::<Array>(), b.read_lock::<Array>()) {
        return arrays_equal(ctx, &x, &y, depth);
    }
    if let (Some(x), Some(y)) = (a.read_lock::<Map>(), b.read_lock::<Map>()) {
        return maps_equal(ctx, &x, &y, depth);
    }
    if let (Some(x), Some(y)) = (Object::of(a), Object::of(b)) {
        return Ok(x.ptr_eq(&y));
    }
    let container = |v: &Dynamic| v.is_array() || v.is_map() || v.is::<Object>();
    if container(a) || container(b) {
        return Ok(false);
    }
    ctx.call_native_fn::<bool>("==", (a.clone(), b.clone()))
}

fn arrays_equal(ctx: &NativeCallContext, x: &Array, y: &Array, depth: usize) -> Res<bool> {
    if x.len() != y.len() {
        return Ok(false);
    }
    for (p, q) in x.iter().zip(y.iter()) {
        if !equals(ctx, p, q, depth + 1)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn maps_equal(ctx: &NativeCallContext, x: &Map, y: &Map, depth: usize) -> Res<bool> {
    if x.len() != y.len() {
        return Ok(false);
    }
    for (k, p) in x.iter() {
        match y.get(k) {
            Some(q) if equals(ctx, p, q, depth + 1)? => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// At most the callback memory budget, for one call asking for `count` items of `item` bytes.
fn check_size(ctx: &NativeCallContext, count: INT, item: usize, max: usize) -> Res<usize> {
    let n = usize::try_from(count).unwrap_or(0);
    if n.saturating_mul(item.max(1)) > max {
        return Err(api_error(format!(
            "{}: {count} is more than one call may allocate (the callback memory limit, {} MiB)",
            ctx.fn_name(),
            max >> 20
        )));
    }
    Ok(n)
}

/// Registers the bounded versions over Rhai's own; `max_alloc` is the callback memory budget.
pub fn register(engine: &mut Engine, max_alloc: usize) {
    engine.register_fn("==", |ctx: NativeCallContext, a: &mut Array, b: Array| {
        arrays_equal(&ctx, a, &b, 0)
    });
    engine.register_fn("!=", |ctx: NativeCallContext, a: &mut Array, b: Array| {
        arrays_equal(&ctx, a, &b, 0).map(|eq| !eq)
    });
    engine.register_fn("==", |ctx: NativeCallContext, a: &mut Map, b: Map| {
        maps_equal(&ctx, a, &b, 0)
    });
    engine.register_fn("!=", |ctx: NativeCallContext, a: &mut Map, b: Map| {
        maps_equal(&ctx, a, &b, 0).map(|eq| !eq)
    });
    // Printing never fails in Rhai (a failed `to_string` falls back to printing the value
    // whole, recursively): printing.rs bounds depth and cycles.
    for name in ["to_string", "to_debug", "print", "debug"] {
        let debug = matches!(name, "to_debug" | "debug");
        engine.register_fn(name, move |a: &mut Array| {
            print(&Dynamic::from_array(a.clone()), debug)
        });
        engine.register_fn(name, move |m: &mut Map| {
            print(&Dynamic::from_map(m.clone()), debug)
        });
        engine.register_fn(name, move |o: &mut Object| {
            print(&o.clone().into_dynamic(), debug)
        });
    }
    engine.register_fn(
        "pad",
        move |ctx: NativeCallContext, s: &mut ImmutableString, len: INT, c: char| -> Res<()> {
            let len = check_size(&ctx, len, c.len_utf8(), max_alloc)?;
            let have = s.chars().count();
            if len > have {
                let mut out = s.to_string();
                out.extend(std::iter::repeat_n(c, len - have));
                *s = out.into();
            }
            Ok(())
        },
    );
    engine.register_fn(
        "pad",
        move |ctx: NativeCallContext, s: &mut ImmutableString, len: INT, p: &str| -> Res<()> {
            let len = check_size(&ctx, len, 1, max_alloc)?;
            let have = s.chars().count();
            if len > have && !p.is_empty() {
                let mut out = s.to_string();
                out.extend(p.chars().cycle().take(len - have));
                *s = out.into();
            }
            Ok(())
        },
    );
    engine.register_fn(
        "pad",
        move |ctx: NativeCallContext, a: &mut Array, len: INT, item: Dynamic| -> Res<()> {
            let len = check_size(&ctx, len, 16, max_alloc)?;
            if len > a.len() {
                a.resize(len, item);
            }
            Ok(())
        },
    );
    engine.register_fn(
        "pad",
        move |ctx: NativeCallContext, b: &mut Blob, len: INT, value: INT| -> Res<()> {
            let len = check_size(&ctx, len, 1, max_alloc)?;
            if len > b.len() {
                b.resize(len, value as u8);
            }
            Ok(())
        },
    );
    engine.register_fn(
        "blob",
        move |ctx: NativeCallContext, len: INT| -> Res<Blob> {
            Ok(vec![0; check_size(&ctx, len, 1, max_alloc)?])
        },
    );
    engine.register_fn(
        "blob",
        move |ctx: NativeCallContext, len: INT, value: INT| -> Res<Blob> {
            Ok(vec![value as u8; check_size(&ctx, len, 1, max_alloc)?])
        },
    );
}
