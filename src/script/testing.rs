//! The helpers `wshost test` gives test scripts: assertions, waiting without blocking the
//! event loop, a free port, and running another script.
//!
//! `wait_until` and `sleep` keep dispatching events and timers while the test waits, so the
//! servers and clients a test made go on working; they run on the test's own worker.

use super::error::{api_error, assertion_error};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, FnPtr, ImmutableString, Map, NativeCallContext, Scope};

use super::dispatch::Dispatch;
use super::state::Ctx;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// How long `wait_until(cond)` waits without a timeout argument.
pub const DEFAULT_WAIT_MS: i64 = 5000;

pub fn register(engine: &mut Engine, ctx: &Rc<Ctx>) {
    engine.register_fn("assert", |cond: bool| -> Res<()> {
        if cond {
            Ok(())
        } else {
            Err(assertion_error("assertion failed"))
        }
    });
    engine.register_fn("assert", |cond: bool, message: Dynamic| -> Res<()> {
        if cond {
            Ok(())
        } else {
            Err(assertion_error(format!("assertion failed: {message}")))
        }
    });
    engine.register_fn(
        "assert_eq",
        |ncc: NativeCallContext, a: Dynamic, b: Dynamic| check_eq(&ncc, a, b, true, None),
    );
    engine.register_fn(
        "assert_eq",
        |ncc: NativeCallContext, a: Dynamic, b: Dynamic, m: ImmutableString| {
            check_eq(&ncc, a, b, true, Some(m))
        },
    );
    engine.register_fn(
        "assert_ne",
        |ncc: NativeCallContext, a: Dynamic, b: Dynamic| check_eq(&ncc, a, b, false, None),
    );
    engine.register_fn(
        "assert_ne",
        |ncc: NativeCallContext, a: Dynamic, b: Dynamic, m: ImmutableString| {
            check_eq(&ncc, a, b, false, Some(m))
        },
    );

    let c = ctx.clone();
    engine.register_fn("wait_until", move |ncc: NativeCallContext, cond: FnPtr| {
        wait_until(&c, &ncc, cond, DEFAULT_WAIT_MS)
    });
    let c = ctx.clone();
    engine.register_fn(
        "wait_until",
        move |ncc: NativeCallContext, cond: FnPtr, ms: i64| wait_until(&c, &ncc, cond, ms),
    );
    let c = ctx.clone();
    engine.register_fn("sleep", move |ncc: NativeCallContext, ms: i64| -> Res<()> {
        let until = Instant::now() + Duration::from_millis(ms.max(0) as u64);
        let dispatch = Dispatch {
            engine: ncc.engine(),
            ctx: &c,
        };
        check_test_deadline(&c)?;
        while Instant::now() < until {
            check_test_deadline(&c)?;
            dispatch.step(Some(until.min(Instant::now() + Duration::from_millis(50))));
        }
        Ok(())
    });
    engine.register_fn("free_port", || -> Res<i64> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| api_error(format!("free_port: {e}")))?;
        Ok(i64::from(l.local_addr().map_err(|e| e.to_string())?.port()))
    });
    let c = ctx.clone();
    engine.register_fn("run_script", move |ncc: NativeCallContext, path: &str| {
        run_script(&c, &ncc, path, Map::new())
    });
    let c = ctx.clone();
    engine.register_fn(
        "run_script",
        move |ncc: NativeCallContext, path: &str, options: Map| run_script(&c, &ncc, path, options),
    );
}

fn check_eq(
    ncc: &NativeCallContext,
    a: Dynamic,
    b: Dynamic,
    want_equal: bool,
    message: Option<ImmutableString>,
) -> Res<()> {
    let equal = ncc
        .call_fn::<bool>("==", (a.clone(), b.clone()))
        .unwrap_or_else(|_| format!("{a:?}") == format!("{b:?}"));
    if equal == want_equal {
        return Ok(());
    }
    let what = if want_equal { "assert_eq" } else { "assert_ne" };
    let extra = message.map(|m| format!(": {m}")).unwrap_or_default();
    // As scripts print them (an object with its class and fields), not as Rust names them.
    let shown = |v: Dynamic| {
        ncc.call_fn::<String>("to_debug", (v.clone(),))
            .unwrap_or_else(|_| format!("{v:?}"))
    };
    let (a, b) = (shown(a), shown(b));
    Err(assertion_error(format!(
        "{what} failed{extra}\n  left: {a}\n right: {b}"
    )))
}

fn check_test_deadline(ctx: &Ctx) -> Res<()> {
    // A callback of the test failed: the test has failed, no use waiting (the worker reports
    // that failure, not this error).
    if ctx.test_failure.borrow().is_some() {
        return Err(api_error("a callback of the test failed"));
    }
    if ctx.event_loop.inside() {
        // The loop runs this callback: it cannot also wait inside it.
        return Err(api_error(
            "wait_until and sleep belong in test functions, not in callbacks",
        ));
    }
    if ctx.deadline.passed() {
        Err(api_error("the test ran past its time limit"))
    } else {
        Ok(())
    }
}

/// Dispatches events until `cond()` is true; an error if it is still false after `ms`.
fn wait_until(ctx: &Rc<Ctx>, ncc: &NativeCallContext, cond: FnPtr, ms: i64) -> Res<()> {
    let until = Instant::now() + Duration::from_millis(ms.max(0) as u64);
    let dispatch = Dispatch {
        engine: ncc.engine(),
        ctx,
    };
    loop {
        let value: Dynamic = cond.call_within_context(ncc, ())?;
        match value.as_bool() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(t) => {
                return Err(api_error(format!(
                    "wait_until: the condition must return a bool, got {t}"
                )));
            }
        }
        check_test_deadline(ctx)?;
        let now = Instant::now();
        if now >= until {
            return Err(api_error(format!(
                "wait_until: the condition was still false after {ms} ms"
            )));
        }
        // Wake at least every 50 ms: a condition may depend on time alone.
        dispatch.step(Some(until.min(now + Duration::from_millis(50))));
    }
}

/// Runs another script's top level here, e.g. `run_script("scripts/chat.rhai", #{port: p})`:
/// its servers use `port`/`host` from `options` unless their own options say otherwise.
fn run_script(ctx: &Rc<Ctx>, ncc: &NativeCallContext, path: &str, options: Map) -> Res<()> {
    let saved = ctx.defaults.borrow().clone();
    let mut defaults = saved.clone();
    for (k, v) in options {
        match k.as_str() {
            "port" => {
                defaults.port = v
                    .as_int()
                    .ok()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| {
                        api_error(format!("run_script: port must be 0-65535, got {v}"))
                    })?;
            }
            "host" => {
                defaults.host = v.into_string().map_err(|t| {
                    api_error(format!("run_script: host must be a string, got {t}"))
                })?;
            }
            other => {
                return Err(api_error(format!(
                    "run_script: unknown option {other:?} (known: port, host)"
                )));
            }
        }
    }
    let file = script_path(ctx, ncc, path);
    let ast = ctx
        .classes
        .borrow_mut()
        .load_script(ncc.engine(), &file, &mut ctx.sources.borrow_mut())
        .map_err(|e| api_error(format!("run_script: {e}")))?;
    *ctx.defaults.borrow_mut() = defaults;
    let result = ncc.engine().run_ast_with_scope(&mut Scope::new(), &ast);
    *ctx.defaults.borrow_mut() = saved;
    result.map_err(|e| {
        let err = super::error::ScriptError::from_eval(&e, path, &ctx.sources.borrow());
        api_error(format!("run_script: {err}"))
    })
}

/// A `run_script` path names a file relative to the folder of the file that calls it; when
/// no such file is there, relative to the working directory (how paths were read before, and
/// how `scripts/chat.rhai` from the repository root reads).
fn script_path(ctx: &Ctx, ncc: &NativeCallContext, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    let beside = ctx.classes.borrow().dir_of(ncc.call_source()).join(path);
    if beside.is_file() {
        without_dot_dots(&beside)
    } else {
        path.to_path_buf()
    }
}

/// `tests/scripts/../../scripts/chat.rhai` as `scripts/chat.rhai`, so that one file has one
/// name in messages (and is loaded once).
fn without_dot_dots(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
