//! Builds the Rhai engine a script worker uses: the 4D-style syntax, the budgets, the sandbox.

use std::cell::RefCell;
use std::rc::Rc;
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
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            max_operations: 10_000_000,
            max_time: Duration::from_secs(2),
            max_call_levels: 64,
        }
    }
}

/// The deadline of the callback running now, checked by the engine as it goes.
///
/// A stack: a callback dispatched while another script waits (`wait_until` in a test) has a
/// deadline of its own, and the outer one still holds.
#[derive(Clone, Default)]
pub struct Deadline(Rc<RefCell<Vec<Instant>>>);

impl Deadline {
    pub fn start(&self, budget: &Budget) {
        self.start_for(budget.max_time);
    }

    pub fn start_for(&self, time: Duration) {
        self.0.borrow_mut().push(Instant::now() + time);
    }

    pub fn clear(&self) {
        self.0.borrow_mut().pop();
    }

    pub fn passed(&self) -> bool {
        let now = Instant::now();
        self.0.borrow().iter().any(|d| now > *d)
    }
}

/// An engine with wshost's syntax and limits, and no API registered yet.
pub fn new_engine(budget: &Budget, deadline: &Deadline) -> Engine {
    let mut engine = Engine::new();
    // `new` is reserved in Rhai; 4D's `WebSocketServer.new(…)` needs it as a method name.
    #[allow(deprecated)] // "volatile", not deprecated: the documented way to remap a token
    engine.on_parse_token(|token, _pos, _state| match token {
        Token::Reserved(s) if s.as_str() == "new" => Token::Identifier(s),
        other => other,
    });
    engine.set_max_operations(budget.max_operations);
    engine.set_max_call_levels(budget.max_call_levels);
    // Rhai's debug-build defaults (64/32) reject ordinary handler code; the parser recurses
    // on the native stack, which the worker thread sizes for this.
    engine.set_max_expr_depths(256, 128);
    let deadline = deadline.clone();
    engine.on_progress(move |ops| {
        // Reading the clock on every operation would cost more than the script.
        if ops & 0x3ff == 0 && deadline.passed() {
            Some("time budget exceeded".into())
        } else {
            None
        }
    });
    // Sandbox: no `import` from disk, no `eval` of strings.
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.disable_symbol("eval");
    engine.on_print(|s| println!("{s}"));
    engine.on_debug(|s, src, pos| {
        tracing::debug!("{}:{}: {s}", src.unwrap_or("script"), pos);
    });
    engine
}
