//! The script API as a whole: the globals (`WebSocketServer`, `WebSocket`, `cs`, `ARGS`,
//! `WORKER_ID`, `NODE_ID`) and what every part shares about handlers. Each part has its own file:
//! `server.rs`, `connection.rs`, `client.rs`, `classes.rs` (`cs`), `timers.rs`, `topics.rs`.
//!
//! Scripts only ever hold ids and handles; every read goes to the worker's [`Ctx`], every
//! write becomes a command to a socket task.

use super::error::api_error;
use std::rc::Rc;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Module};

use super::classes::ClassStoreRef;
use super::client::ClientClass;
use super::objects::Object;
use super::server::ServerClass;
use super::state::Ctx;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// Registers the whole API on `engine`; natives reach the worker through `ctx`.
/// `args` is the script's `ARGS` (the command line after the script).
pub fn register(engine: &mut Engine, ctx: &Rc<Ctx>, args: &[String]) {
    let mut globals = Module::new();
    globals.set_var("WebSocketServer", ServerClass);
    globals.set_var("WebSocket", ClientClass);
    globals.set_var("cs", ClassStoreRef);
    let args: Array = args.iter().map(|a| Dynamic::from(a.clone())).collect();
    globals.set_var("ARGS", args);
    // Which worker runs this copy of the script (0 unless `--workers N`).
    globals.set_var("WORKER_ID", ctx.top_level.worker() as i64);
    // This host's name in a cluster (`--cluster`); alone, a name all the same.
    globals.set_var("NODE_ID", ctx.net.node().as_str().to_string());
    engine.register_global_module(globals.into());
    // `stopping()`: true once the host is stopping (SIGTERM, Ctrl-C), so that a script stops
    // reconnecting or scheduling work.
    let c = ctx.clone();
    engine.register_fn("stopping", move || c.shutting_down.get());

    super::server::register(engine, ctx);
    super::connection::register(engine, ctx);
    super::client::register(engine, ctx);
    super::classes::register(engine, ctx);
    super::methods::register(engine, ctx);
    super::objects::register(engine, &ctx.objects);
    super::fields::register(engine);
    super::timers::register(engine, ctx);
    super::topics::register(engine, ctx);
}

/// `handler` as an object (objects.rs): an object or class instance is itself, a map becomes
/// one. So `this.x = …` and `ws.handler.x = …` change the one handler.
/// `home` is the file whose code gives it (where its `Fn("name")`s are).
pub fn handler_object(ctx: &Ctx, handler: Dynamic, home: Option<&str>, what: &str) -> Res<Dynamic> {
    let type_name = super::convert::script_type_name(&handler);
    super::objects::to_object(&ctx.objects, home, handler)
        .map(Object::into_dynamic)
        .ok_or_else(|| {
            api_error(format!(
                "{what}: the handler must be an object (a map or a class instance), got {type_name}"
            ))
        })
}

/// Does `handler` define callback `name` (as a function property or a class method)?
pub fn has_callback(ctx: &Ctx, handler: &Dynamic, name: &str) -> bool {
    let Some(object) = Object::of(handler) else {
        return false;
    };
    if object.has_function(name) {
        return true;
    }
    object
        .class()
        .and_then(|c| ctx.classes.borrow().class(c))
        .is_some_and(|class| class.params(name).is_some())
}
