//! Which function answers a call. Rhai is given no script function of any file (classes.rs),
//! so it asks here, after looking for a native function, for every call of a function a
//! script wrote:
//!
//! - `x.name(…)` on an object: the function its field `name` holds, else its class's method
//!   `name`, whatever file the call is written in (`this.agent.tell("hi")` in `Customer.rhai`
//!   runs `Agent.rhai`'s `tell`). A class without that method, or a method given the wrong
//!   number of arguments, is an error naming the class.
//! - `x.name(…)` on another value, or on an object written as a literal: the calling file's
//!   function `name` with `this` bound to `x`, else the entry script's.
//! - `name(…)`: the calling file's function, else the entry script's (4D's project methods,
//!   shared by every class).
//!
//! The call runs one level deeper than its caller, so Rhai's limit on nested calls holds.

use std::rc::Rc;

use rhai::{Dynamic, Engine, EvalAltResult, EvalContext, FnPtr, Position};

use super::classes::Script;
use super::error::api_error;
use super::objects::Object;
use super::state::Ctx;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// A call no function answers as written: Rhai is told so (None), and raises its "function
/// not found" error where the call is written (Rhai gives this hook no position); the
/// explanation goes with it (error.rs).
fn unanswered(name: &str, message: String) -> Res<Option<Dynamic>> {
    super::error::explain_not_found(name, message);
    Ok(None)
}

pub fn register(engine: &mut Engine, ctx: &Rc<Ctx>) {
    let c = ctx.clone();
    #[allow(deprecated)] // "volatile", not deprecated: the documented hook for this
    engine.on_missing_function(move |name, args, is_method, ectx| {
        answer(&c, name, args, is_method, &ectx)
    });
}

/// An error raised inside function `name` of `script`, as Rhai wraps one raised inside a
/// script function (error.rs reads the file and position of the innermost). Rhai gives this
/// hook no position of the call, so the wrapper takes the error's own: a `catch` sees the
/// `line` where it was raised, in the file its `source` names.
pub fn in_function(err: Box<EvalAltResult>, name: &str, script: &Script) -> Box<EvalAltResult> {
    match *err {
        // Not an error of the callee: a budget stop or the host stopping says so itself.
        EvalAltResult::ErrorTerminated(..) | EvalAltResult::ErrorTooManyOperations(..) => err,
        _ => {
            let pos = innermost_position(&err);
            EvalAltResult::ErrorInFunctionCall(name.into(), script.file.clone(), err, pos).into()
        }
    }
}

fn innermost_position(err: &EvalAltResult) -> Position {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, pos) => {
            let inner = innermost_position(inner);
            if inner.is_none() { *pos } else { inner }
        }
        other => other.position(),
    }
}

fn answer(
    ctx: &Ctx,
    name: &str,
    args: &mut [&mut Dynamic],
    is_method: bool,
    ectx: &EvalContext,
) -> Res<Option<Dynamic>> {
    let call = Call {
        ctx,
        engine: ectx.engine(),
        // (Rhai counted the call already.)
        level: ectx.global_runtime_state().level,
        caller: ectx.source(),
    };
    if !is_method {
        // The first argument may be the caller's variable itself (Rhai passes it by
        // reference): copied, as Rhai copies it for a script function; the rest are the
        // call's own values.
        let mut values: Vec<Dynamic> = args
            .iter_mut()
            .enumerate()
            .map(|(i, a)| {
                if i == 0 {
                    a.clone()
                } else {
                    std::mem::take(*a)
                }
            })
            .collect();
        let answer = call.function(name, &mut Dynamic::UNIT.clone(), &mut values)?;
        // `name in o` is `contains(o, name)`: the map functions objects have, as functions.
        if answer.is_none()
            && let Some((first, rest)) = values.split_first()
            && let Some(object) = Object::of(first)
            && let Some(result) = super::objects::builtin(&object, name, rest)
        {
            return result.map(Some);
        }
        return Ok(answer);
    }
    let Some((this, rest)) = args.split_first_mut() else {
        return Ok(None);
    };
    let mut values: Vec<Dynamic> = rest.iter_mut().map(|a| std::mem::take(*a)).collect();
    // `this.agnet.tell(…)`: a field never set is `()`, and no function of a file is meant
    // for it.
    if this.is_unit() {
        return unanswered(
            name,
            format!("cannot call {name}(…) on (): the value it is called on was never set"),
        );
    }
    if let Some(object) = Object::of(this) {
        if let Some(f) = object.function(name) {
            return call.function_value(name, &f, &object, this, values);
        }
        if let Some(class) = object.class() {
            return call.method(&object, class, name, this, &mut values);
        }
        if let Some(result) = super::objects::builtin(&object, name, &values) {
            return result.map(Some);
        }
    }
    call.function(name, this, &mut values)
}

/// One call being answered.
struct Call<'a> {
    ctx: &'a Ctx,
    engine: &'a Engine,
    /// The callee's call depth.
    level: usize,
    /// The file whose code makes the call.
    caller: Option<&'a str>,
}

impl Call<'_> {
    /// Runs `name` of `script` with `this` bound, as the current object for closures made
    /// there.
    /// `class` names the method's class in an error (`Agent.tell`).
    fn run(
        &self,
        script: &Script,
        class: Option<&str>,
        name: &str,
        this: &mut Dynamic,
        args: &mut [Dynamic],
    ) -> Res<Dynamic> {
        let bound = !this.is_unit();
        if bound {
            match Object::of(this) {
                Some(o) => self.ctx.this.push_object(o),
                None => self.ctx.this.push(this.clone()),
            }
        }
        let result = script.call(self.engine, this, name, args, self.level);
        if bound {
            self.ctx.this.pop();
        }
        result.map_err(|e| match class {
            Some(class) => in_function(e, &format!("{class}.{name}"), script),
            None => in_function(e, name, script),
        })
    }

    /// Method `name` of class `class`, else a map function objects have.
    fn method(
        &self,
        object: &Object,
        class: &str,
        name: &str,
        this: &mut Dynamic,
        args: &mut [Dynamic],
    ) -> Res<Option<Dynamic>> {
        let script =
            self.ctx.classes.borrow().class(class).ok_or_else(|| {
                api_error(format!("{class}.{name}: the class {class} is not loaded"))
            })?;
        match script.params(name) {
            Some(n) if n == args.len() => {
                self.run(&script, Some(class), name, this, args).map(Some)
            }
            Some(n) => unanswered(
                name,
                format!("{class}.{name} takes {n} argument(s), got {}", args.len()),
            ),
            None if let Some(result) = super::objects::builtin(object, name, args) => {
                result.map(Some)
            }
            None => unanswered(
                name,
                format!(
                    "{class} has no method {name} ({} defines no fn {name})",
                    script.file
                ),
            ),
        }
    }

    /// Function `name` of the calling file, else of the entry script; None if neither has
    /// one.
    fn function(
        &self,
        name: &str,
        this: &mut Dynamic,
        args: &mut [Dynamic],
    ) -> Res<Option<Dynamic>> {
        let (own, entry) = {
            let classes = self.ctx.classes.borrow();
            (
                self.caller.and_then(|f| classes.file(f)),
                classes.file_or_entry(None),
            )
        };
        let mut declared = None;
        for script in own.iter().chain(entry.iter()) {
            match script.params(name) {
                Some(n) if n == args.len() => {
                    return self.run(script, None, name, this, args).map(Some);
                }
                Some(n) => declared = declared.or(Some((n, script.file.clone()))),
                None => {}
            }
        }
        match declared {
            Some((n, file)) => unanswered(
                name,
                format!(
                    "{name} takes {n} argument(s), got {} (fn {name} of {file})",
                    args.len()
                ),
            ),
            None => Ok(None),
        }
    }

    /// The function field `field` of `object` holds, called as its method
    /// (`h.onMessage(ws, e)`). A function named with `Fn("name")` is one of the object's
    /// file: its class's, or the file that made it.
    fn function_value(
        &self,
        field: &str,
        f: &FnPtr,
        object: &Object,
        this: &mut Dynamic,
        args: Vec<Dynamic>,
    ) -> Res<Option<Dynamic>> {
        let script = {
            let classes = self.ctx.classes.borrow();
            if f.is_anonymous() {
                classes.closure_file(f.fn_name())
            } else {
                object
                    .class()
                    .and_then(|c| classes.class(c))
                    .or_else(|| object.home().and_then(|h| classes.file(h)))
                    .or_else(|| self.caller.and_then(|c| classes.file(c)))
                    .or_else(|| classes.file_or_entry(None))
            }
        }
        .ok_or_else(|| api_error(format!("{}: no such function", f.fn_name())))?;
        // What a closure captured comes first, as Rhai's call of it would pass.
        let curried = f.curry().len();
        let mut values: Vec<Dynamic> = f.iter_curry().cloned().chain(args).collect();
        let Some(declared) = script.params(f.fn_name()) else {
            return unanswered(
                field,
                format!(
                    "{field}: its function {} is not in {}",
                    f.fn_name(),
                    script.file
                ),
            );
        };
        if declared > values.len() {
            return unanswered(
                field,
                format!(
                    "{field} takes {} argument(s), got {}",
                    declared.saturating_sub(curried),
                    values.len() - curried
                ),
            );
        }
        // A function may declare fewer parameters than it is given, as a callback may.
        values.truncate(declared);
        self.run(&script, None, f.fn_name(), this, &mut values)
            .map(Some)
    }
}
