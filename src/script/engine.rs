//! Builds the Rhai engine a script worker uses: the 4D-style syntax, the budgets, the sandbox.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rhai::{Engine, Token};

/// How much one callback may run before it is stopped.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Rhai operations per callback.
    pub max_operations: u64,
    /// Wall-clock time per callback.
    pub max_time: Duration,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Bytes a callback may allocate and keep (enforced when the counting allocator is
    /// installed, as in the `wshost` binary).
    pub max_memory: usize,
    /// Bytes the objects of a worker's scripts may hold between callbacks (memory.rs).
    pub max_state: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_operations: 10_000_000,
            max_time: Duration::from_secs(2),
            max_call_levels: 64,
            max_memory: 256 << 20,
            max_state: 1 << 30,
        }
    }
}

/// A host's request that the callbacks running now stop: a stop (SIGTERM) must not wait for
/// a callback stuck in a loop. Callbacks that start after it run as usual (the `onTerminate`s
/// of the stop itself).
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Arc<AtomicU64>);

impl Interrupt {
    /// Stops every callback running now (at its next check, within 1,024 operations).
    pub fn raise(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn epoch(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The deadline of the callback running now, checked by the engine as it goes.
///
/// A stack: a callback dispatched while another script waits (`wait_until` in a test) has a
/// deadline of its own, and the outer one still holds. Each entry also holds the thread's
/// allocation count when the callback started, for the memory budget, and the host's
/// interrupt count then.
///
/// The clock is first read at the first time check, 1,024 operations in: most callbacks
/// end before that and never read it (a read costs about 1 % of an echoed message). What a
/// callback runs before its first check is not counted against its time.
#[derive(Clone, Default)]
pub struct Deadline {
    stack: Rc<RefCell<Vec<Frame>>>,
    /// The innermost frame's allocation count at its start (read on every operation).
    memory_start: Rc<Cell<Option<i64>>>,
    interrupt: Interrupt,
}

struct Frame {
    time: Duration,
    /// Set at the first check.
    deadline: Option<Instant>,
    memory_start: i64,
    epoch: u64,
}

impl Deadline {
    /// Callbacks under this deadline also stop when `interrupt` is raised.
    pub fn new(interrupt: Interrupt) -> Self {
        Self {
            interrupt,
            ..Self::default()
        }
    }

    pub fn start(&self, budget: &Budget) {
        self.start_for(budget.max_time);
    }

    pub fn start_for(&self, time: Duration) {
        let memory_start = crate::alloc::thread_net();
        self.memory_start.set(Some(memory_start));
        self.stack.borrow_mut().push(Frame {
            time,
            deadline: None,
            memory_start,
            epoch: self.interrupt.epoch(),
        });
    }

    /// True when no script code runs (no callback, top level or test).
    pub fn idle(&self) -> bool {
        self.stack.borrow().is_empty()
    }

    /// True if the host asked the innermost running callback to stop.
    fn interrupted(&self) -> bool {
        let epoch = self.interrupt.epoch();
        self.stack.borrow().last().is_some_and(|f| f.epoch != epoch)
    }

    /// Bytes the innermost running callback has allocated and kept.
    fn memory_used(&self) -> i64 {
        self.memory_start
            .get()
            .map_or(0, |start| crate::alloc::thread_net() - start)
    }

    /// Ends the innermost callback; returns the bytes it allocated and kept.
    pub fn clear(&self) -> i64 {
        let mut stack = self.stack.borrow_mut();
        let popped = stack.pop();
        self.memory_start.set(stack.last().map(|f| f.memory_start));
        popped.map_or(0, |f| crate::alloc::thread_net() - f.memory_start)
    }

    /// True once a running callback is past its time. The first call for a callback starts
    /// its clock.
    pub fn passed(&self) -> bool {
        let now = Instant::now();
        let mut stack = self.stack.borrow_mut();
        let mut passed = false;
        for f in stack.iter_mut() {
            let deadline = *f.deadline.get_or_insert(now + f.time);
            passed |= now > deadline;
        }
        passed
    }
}

/// Runs script code (`f`), turning a panic inside it (a bug of a native function, ours or an
/// embedding program's) into a script error: it costs the callback that called it, not the
/// worker's thread and every connection on it. (Rust's panic hook has printed it already.)
pub fn catch_panic<T>(
    f: impl FnOnce() -> Result<T, Box<rhai::EvalAltResult>>,
) -> Result<T, Box<rhai::EvalAltResult>> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(super::error::api_error(format!(
                "a native function panicked: {what}"
            )))
        }
    }
}

/// An engine with wshost's syntax and limits, and no API registered yet.
pub fn new_engine(budget: &Budget, deadline: &Deadline) -> Engine {
    let mut engine = Engine::new();
    set_syntax(&mut engine);
    engine.set_max_operations(budget.max_operations);
    engine.set_max_call_levels(budget.max_call_levels);
    let deadline = deadline.clone();
    let max_memory = budget.max_memory as i64;
    engine.on_progress(move |ops| {
        // Memory on every operation (a doubling string outgrows anything in a few hundred);
        // the clock, dearer to read, every 1024.
        if deadline.memory_used() > max_memory {
            Some("memory budget exceeded".into())
        } else if ops & 0x3ff == 0 && deadline.passed() {
            Some("time budget exceeded".into())
        } else if ops & 0x3ff == 0 && deadline.interrupted() {
            Some("the host is stopping".into())
        } else {
            None
        }
    });
    // Sandbox: no `import` from disk.
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    super::bounds::register(&mut engine, budget.max_memory);
    engine.on_print(|s| println!("{s}"));
    engine.on_debug(|s, src, pos| {
        tracing::debug!("{}:{}: {s}", src.unwrap_or("script"), pos);
    });
    engine
}

/// An engine that only parses, as wshost's engines do, with unknown variables an error: for
/// lint.rs. (Not the worker's own engine: strict mode there changes the code it makes.)
pub fn strict_parser() -> Engine {
    let mut engine = Engine::new_raw();
    set_syntax(&mut engine);
    engine.set_strict_variables(true);
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    engine
}

/// wshost's syntax: 4D's `new`, no `eval`, room for ordinary handler code.
fn set_syntax(engine: &mut Engine) {
    // `new` is reserved in Rhai; 4D's `WebSocketServer.new(…)` needs it as a method name.
    #[allow(deprecated)] // "volatile", not deprecated: the documented way to remap a token
    engine.on_parse_token(|token, _pos, _state| match token {
        Token::Reserved(s) if s.as_str() == "new" => Token::Identifier(s),
        other => other,
    });
    // Rhai's debug-build defaults (64/32) reject ordinary handler code; the parser recurses
    // on the native stack, which the worker thread sizes for this.
    engine.set_max_expr_depths(256, 128);
    // Sandbox: no `eval` of strings.
    engine.disable_symbol("eval");
}
