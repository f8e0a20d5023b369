//! Calling a script's function as a callback: `this` bound, arguments in, as cheaply as Rhai
//! allows.
//!
//! `Engine::call_fn_with_options` costs about 5,000 instructions before a callback's first
//! statement runs, on every message:
//! - it starts with empty caches, so each function the callback calls (`ws.send`) is looked up
//!   again in every module, three times for a method (by typed hash, by plain hash, then as a
//!   native function);
//! - it resolves the callback itself by name, checks its arguments for data races, allocates
//!   a scope and converts each parameter's name into it.
//!
//! Here each [`Script`](super::classes::Script) keeps a [`CallCache`]: the resolution caches,
//! a scope whose allocations are reused, and, for each callback called so far, its body as a
//! block with its parameter names. A call pushes the arguments and evaluates the block with
//! `this` bound, through Rhai's `internals` API, as Rhai's own function call does after
//! its preliminaries. An AST never changes once compiled (a reload or a new closure builds a
//! new `Script`), so none of this goes stale.
//!
//! A function declared for a `this` type (`fn Type.name()`) takes Rhai's own path.

use std::cell::{RefCell, RefMut};
use std::ops::{Deref, DerefMut};
use std::rc::Rc;

use super::rewrite::Calls;
use rhai::{
    AST, ASTNode, Dynamic, Engine, EvalAltResult, EvalContext, Expr, Expression, Identifier,
    ImmutableString, Scope, StmtBlock,
};

/// Callbacks kept per file before the list starts over.
const MAX_BODIES: usize = 64;
/// Function resolutions kept per file before the cache starts over.
const MAX_RESOLUTIONS: usize = 512;

/// The per-AST state kept between calls.
pub struct CallCache {
    /// The file as compiled, its functions with their bodies (rewrite.rs changes copies).
    code: AST,
    /// The calls rewrite.rs makes, to copy.
    calls: Rc<Calls>,
    caches: RefCell<rhai::Caches>,
    /// Where the arguments go: kept for its allocations (empty between calls).
    scope: RefCell<Scope<'static>>,
    /// The callbacks called so far, by name and number of parameters (a name may have one
    /// function per count); None: one that takes Rhai's own path.
    bodies: RefCell<Vec<Known>>,
    /// The AST's source, made once (it names the file in errors).
    source: Option<ImmutableString>,
}

/// A callback looked up before: name, number of parameters, body (None: Rhai's own path).
type Known = (String, usize, Option<Rc<Body>>);

/// A function's body as one block, and its parameters' names.
struct Body {
    block: Expr,
    params: Vec<Identifier>,
}

impl Body {
    /// The body of `name` with `arity` parameters in `ast`: a copy of its statements, found by
    /// walking a copy of the AST that holds that function alone, rewritten (rewrite.rs).
    fn of(ast: &AST, calls: &Calls, name: &str, arity: usize) -> Option<Self> {
        let mut one = ast.clone();
        one.clear_statements();
        one.retain_functions(|_, _, n, params| n == name && params == arity);
        let def = {
            let mut defs = one.iter_fn_def();
            let def = defs.next()?.clone();
            if defs.next().is_some() || def.this_type.is_some() {
                return None;
            }
            def
        };
        let mut statements = Vec::new();
        one.walk(&mut |path| {
            if let [ASTNode::Stmt(stmt)] = path {
                statements.push((*stmt).clone());
            }
            true
        });
        let mut block = StmtBlock::new(
            statements,
            def.body.start_position(),
            def.body.end_position(),
        );
        super::rewrite::Rewrite::new(ast, calls).block(&mut block);
        Some(Self {
            block: Expr::Stmt(Box::new(block)),
            params: def
                .params
                .iter()
                .map(|p| Identifier::from(p.as_str()))
                .collect(),
        })
    }

    /// Moves the parameters' values, as the call left them, from `scope` back into `args` (the
    /// caller may reuse them: spares.rs). A value that became read-only stays.
    fn give_back(&self, scope: &mut Scope, args: &mut [Dynamic]) {
        if scope.len() != self.params.len() {
            return;
        }
        for (param, slot) in self.params.iter().zip(args.iter_mut()) {
            if let Some(value) = scope.get_mut(param) {
                *slot = std::mem::take(value);
            }
        }
    }
}

/// What a call uses of a [`CallCache`]: the kept value, or a fresh one while the kept one is
/// in use by a call further up.
enum Kept<'a, T> {
    Own(RefMut<'a, T>),
    Fresh(T),
}

impl<'a, T> Kept<'a, T> {
    fn take(cell: &'a RefCell<T>, fresh: impl FnOnce() -> T) -> Self {
        cell.try_borrow_mut()
            .map_or_else(|_| Self::Fresh(fresh()), Self::Own)
    }
}

impl<T> Deref for Kept<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Self::Own(r) => r,
            Self::Fresh(v) => v,
        }
    }
}

impl<T> DerefMut for Kept<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        match self {
            Self::Own(r) => r,
            Self::Fresh(v) => v,
        }
    }
}

impl CallCache {
    pub fn new(ast: &AST, code: AST, calls: Rc<Calls>) -> Self {
        Self {
            code,
            calls,
            caches: RefCell::new(rhai::Caches::new()),
            scope: RefCell::new(Scope::new()),
            bodies: RefCell::default(),
            source: ast.source().map(ImmutableString::from),
        }
    }

    /// The file's top level, rewritten (rewrite.rs), to run with `run`'s functions.
    pub fn top_level(&self, run: &AST) -> AST {
        let mut statements: Vec<rhai::Stmt> = self.code.statements().to_vec();
        super::rewrite::Rewrite::new(&self.code, &self.calls).statements(&mut statements);
        let mut ast = AST::new(statements, run.shared_lib().clone());
        if let Some(source) = run.source() {
            ast.set_source(source);
        }
        ast
    }

    fn body(&self, name: &str, arity: usize) -> Option<Rc<Body>> {
        if let Some((.., body)) = self
            .bodies
            .borrow()
            .iter()
            .find(|(n, a, _)| *a == arity && n == name)
        {
            return body.clone();
        }
        let body = Body::of(&self.code, &self.calls, name, arity).map(Rc::new);
        let mut bodies = self.bodies.borrow_mut();
        // A handful of callbacks per file; a script naming callbacks from data (`Fn(text)`)
        // does not grow this without end.
        if bodies.len() >= MAX_BODIES {
            bodies.clear();
        }
        bodies.push((name.to_string(), arity, body.clone()));
        body
    }

    /// Calls `name(args…)` of the file with `this` bound to `this`; `ast` is what Rhai runs
    /// the file's code with (its closures). `args` must hold as many values as the function
    /// declares; they are consumed. `level` is the call depth (1 for a callback), checked
    /// against Rhai's limit as Rhai checks its own calls.
    pub fn call_method(
        &self,
        engine: &Engine,
        ast: &AST,
        this: &mut Dynamic,
        name: &str,
        args: &mut [Dynamic],
        level: usize,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        if level > engine.max_call_levels() {
            return Err(EvalAltResult::ErrorStackOverflow(rhai::Position::NONE).into());
        }
        let mut global = engine.new_global_runtime_state();
        global.source = self.source.clone();
        global.lib.push(ast.shared_lib().clone());
        global.embedded_module_resolver = ast.resolver().cloned();
        // As inside a function: Rhai's call-depth limit counts from here.
        global.level = level;
        // A callback that calls back into the same file (a method of a class reaching an
        // instance of its own class) finds these in use: it runs with fresh ones.
        let mut caches = Kept::take(&self.caches, rhai::Caches::new);
        let caches = &mut *caches;
        let mut scope = Kept::take(&self.scope, Scope::new);
        let scope = &mut *scope;
        let result = super::engine::catch_panic(|| match self.body(name, args.len()) {
            Some(body) => {
                for (param, value) in body.params.iter().zip(args.iter_mut()) {
                    scope.push_dynamic(param.clone(), std::mem::take(value));
                }
                let mut ctx = EvalContext::new(engine, &mut global, caches, scope, Some(this));
                #[allow(deprecated)] // "volatile", not deprecated
                let result = ctx.eval_expression_tree_raw(&Expression::from(&body.block), true);
                body.give_back(scope, args);
                result
            }
            None => {
                let mut ctx = EvalContext::new(engine, &mut global, caches, scope, None);
                let mut refs: rhai::FnArgsVec<&mut Dynamic> =
                    std::iter::once(this).chain(args.iter_mut()).collect();
                ctx.call_fn_raw(name, true, true, &mut refs)
            }
        });
        scope.clear();
        // Rhai caches what each call resolved, "not found" included: a script calling
        // functions by names from data would grow the cache without end.
        if caches.fn_resolution_caches_len() > 0
            && caches.fn_resolution_cache_mut().dict.len() > MAX_RESOLUTIONS
        {
            caches.fn_resolution_cache_mut().clear();
        }
        result.or_else(|err| match *err {
            EvalAltResult::Return(out, ..) | EvalAltResult::Exit(out, ..) => Ok(out),
            EvalAltResult::ErrorInFunctionCall(f, _, inner, _) if f == name => Err(inner),
            _ => Err(err),
        })
    }
}
