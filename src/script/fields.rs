//! `this.x = v` and `this.x op= v` in a method, as one native call each (rewrite.rs makes them
//! `__wshost_set(this, "x", v)` and `__wshost_update(this, "x", "op=", v)`).
//!
//! Rhai assigns to a field of a value of a native type by first asking for a reference into
//! it, failing (with an error message built and dropped), then calling the indexer's getter
//! and setter: about 2,500 machine instructions for `this.total += n` on an object (callgrind),
//! a tenth of a message's cost. Here it is one call. On a map (`this` of a function called on a
//! map) the same calls do what Rhai does.

use rhai::{Dynamic, Engine, EvalAltResult, INT, ImmutableString, Map, NativeCallContext};

use super::objects::Object;

type Res<T> = Result<T, Box<EvalAltResult>>;

pub fn register(engine: &mut Engine) {
    engine.register_fn(
        "__wshost_set",
        |this: &mut Dynamic, name: ImmutableString, value: Dynamic| -> Res<()> {
            write(this, &name, value)
        },
    );
    // The common ones with the operator in the name: one argument less to pass and match.
    for (name, op_assign) in QUICK {
        engine.register_fn(
            name,
            move |ctx: NativeCallContext,
                  this: &mut Dynamic,
                  field: ImmutableString,
                  rhs: Dynamic|
                  -> Res<()> { update(&ctx, this, &field, op_assign, rhs) },
        );
    }
    engine.register_fn(
        "__wshost_update",
        |ctx: NativeCallContext,
         this: &mut Dynamic,
         name: ImmutableString,
         op_assign: ImmutableString,
         rhs: Dynamic|
         -> Res<()> { update(&ctx, this, &name, &op_assign, rhs) },
    );
}

/// The op-assignments with a call of their own: `this.x += v` is `__wshost_add(this, "x", v)`.
pub const QUICK: [(&str, &str); 4] = [
    ("__wshost_add", "+="),
    ("__wshost_sub", "-="),
    ("__wshost_mul", "*="),
    ("__wshost_div", "/="),
];

/// Field `name` of `this`, `()` when it has none.
fn read(this: &Dynamic, name: &str) -> Res<Dynamic> {
    if let Some(o) = this.read_lock::<Object>() {
        return Ok(o.get(name));
    }
    if let Some(m) = this.read_lock::<Map>() {
        return Ok(m.get(name).cloned().unwrap_or(Dynamic::UNIT));
    }
    Err(no_fields(this, name))
}

fn write(this: &mut Dynamic, name: &str, value: Dynamic) -> Res<()> {
    if let Some(o) = this.read_lock::<Object>() {
        o.set(name, value);
        return Ok(());
    }
    if let Some(mut m) = this.write_lock::<Map>() {
        m.insert(name.into(), value);
        return Ok(());
    }
    Err(no_fields(this, name))
}

fn no_fields(this: &Dynamic, name: &str) -> Box<EvalAltResult> {
    super::error::api_error(format!(
        "cannot set field {name} of a value of type {}: `this` is not an object",
        super::convert::script_type_name(this)
    ))
}

/// `this.name op= rhs`: numbers and strings at once; anything else through Rhai's own `op=`
/// (in place for a container kept in a cell: `this.log += [x]` appends), else its `op`.
fn update(
    ctx: &NativeCallContext,
    this: &mut Dynamic,
    name: &str,
    op_assign: &str,
    mut rhs: Dynamic,
) -> Res<()> {
    let old = read(this, name)?;
    let op = op_assign.strip_suffix('=').unwrap_or(op_assign);
    if let Some(new) = quick(op, &old, &rhs) {
        return write(this, name, new);
    }
    if old.is_shared() {
        let mut cell = old.clone();
        if ctx
            .call_native_fn_raw(op_assign, true, &mut [&mut cell, &mut rhs.clone()])
            .is_ok()
        {
            return Ok(());
        }
    }
    let mut value = old.flatten();
    let new = match ctx.call_native_fn_raw(op_assign, true, &mut [&mut value, &mut rhs.clone()]) {
        Ok(_) => value,
        Err(_) => ctx.call_native_fn_raw(op, false, &mut [&mut value, &mut rhs])?,
    };
    write(this, name, new)
}

/// `a op b` for the common cases, with Rhai's results (None: let Rhai do it, overflow
/// included).
fn quick(op: &str, a: &Dynamic, b: &Dynamic) -> Option<Dynamic> {
    if let (Ok(x), Ok(y)) = (a.as_int(), b.as_int()) {
        let v: Option<INT> = match op {
            "+" => x.checked_add(y),
            "-" => x.checked_sub(y),
            "*" => x.checked_mul(y),
            _ => None,
        };
        return v.map(Dynamic::from);
    }
    if let (Ok(x), Ok(y)) = (a.as_float(), b.as_float()) {
        return match op {
            "+" => Some((x + y).into()),
            "-" => Some((x - y).into()),
            "*" => Some((x * y).into()),
            "/" => Some((x / y).into()),
            _ => None,
        };
    }
    if op == "+"
        && let Ok(x) = a.as_immutable_string_ref()
    {
        if let Ok(y) = b.as_immutable_string_ref() {
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(&x);
            s.push_str(&y);
            return Some(s.into());
        }
        if let Ok(c) = b.as_char() {
            let mut s = x.to_string();
            s.push(c);
            return Some(s.into());
        }
    }
    None
}
