//! What wshost changes in a file's compiled code before running it. Rhai keeps a script
//! function's body where it cannot be changed, so wshost runs each function from a copy of
//! its body (call.rs) and rewrites that copy, and the top level, here:
//!
//! - **Calls that can only be native** are marked so. Rhai resolves `x.send(data)` by first
//!   looking for a script function `send`: a typed one (`fn WebSocketConnection.send(…)`, which
//!   costs a lookup of the type's display name) and a plain one, then the native function.
//!   A method call costs about 940 machine instructions more than the same call written
//!   `send(x, data)` (callgrind, one echo). A name that no function of the file defines can
//!   only be native, or a function of another file (methods.rs answers those after the native
//!   lookup fails), so every call of it is marked native-only, as Rhai's parser marks
//!   operators.
//! - **A `#{…}` literal with a function in it is an object** (objects.rs): it becomes
//!   `object(#{…})`, so `let h = #{ n: 0, onMessage: … }` is one object however it is held.
//! - **`this.name` is read through the indexer**: `this["name"]`. On an object, Rhai would
//!   first look for a getter named `get$name`, fail, build an error message and only then try
//!   the indexer; on a map both mean the same. **`this.name = v` and `this.name op= v`** are
//!   one native call each (fields.rs).
//! - **A function stored into a map variable makes it an object**: `h.onMessage = |ws, e| …`
//!   becomes `__wshost_set_function(h, "onMessage", |ws, e| …)`, which turns the map `h` holds
//!   into an object first (the JavaScript habit of building a handler field by field).
//!
//! Closures are not rewritten (Rhai runs them from its own copy): a literal with a function
//! made inside a closure becomes an object where it becomes a handler.

use std::collections::HashSet;

use rhai::{AST, ASTFlags, BinaryExpr, Expr, FnCallExpr, FnCallHashes, Stmt, StmtBlock};

/// The rewrites of one file.
pub struct Rewrite<'a> {
    /// Names the file defines functions for.
    defined: HashSet<&'a str>,
    calls: &'a Calls,
}

/// The calls the rewrites make, as Rhai compiles them, to copy (Rhai does not export how it
/// hashes a call).
pub struct Calls {
    /// `object(x)`, for the literals.
    object: FnCallExpr,
    /// `__wshost_set(this, name, value)`.
    set: FnCallExpr,
    /// `__wshost_update(this, name, op, value)`.
    update: FnCallExpr,
    /// `__wshost_set_function(variable, name, function)`.
    set_function: FnCallExpr,
    /// `__wshost_add(this, name, value)` and its kind, by operator (fields.rs).
    quick: Vec<(&'static str, FnCallExpr)>,
}

impl Calls {
    pub fn new() -> Self {
        let call = |text: &str| {
            let ast = rhai::Engine::new_raw().compile(text).expect("compiles");
            let mut found = None;
            ast.walk(&mut |path| {
                match path.last() {
                    Some(rhai::ASTNode::Expr(Expr::FnCall(f, _)))
                    | Some(rhai::ASTNode::Stmt(Stmt::FnCall(f, _))) => found = Some((**f).clone()),
                    _ => {}
                }
                true
            });
            let mut f: FnCallExpr = found.expect("a call");
            f.hashes = FnCallHashes::from_native_only(f.hashes.native());
            f
        };
        Self {
            object: call("object(x)"),
            set: call("__wshost_set(a, b, c)"),
            update: call("__wshost_update(a, b, c, d)"),
            set_function: call("__wshost_set_function(a, b, c)"),
            quick: super::fields::QUICK
                .iter()
                .map(|(name, op)| (*op, call(&format!("{name}(a, b, c)"))))
                .collect(),
        }
    }
}

impl<'a> Rewrite<'a> {
    /// The rewrites of the file whose functions are in `ast`.
    pub fn new(ast: &'a AST, calls: &'a Calls) -> Self {
        Self {
            defined: ast.iter_fn_def().map(|f| f.name.as_str()).collect(),
            calls,
        }
    }

    /// Rewrites `body`, a copy of a function of the file.
    pub fn block(&self, b: &mut StmtBlock) {
        for s in b.statements_mut().iter_mut() {
            self.stmt(s);
        }
    }

    /// Rewrites the file's top-level statements.
    pub fn statements(&self, statements: &mut [Stmt]) {
        for s in statements.iter_mut() {
            self.stmt(s);
        }
    }

    fn stmt(&self, s: &mut Stmt) {
        match s {
            Stmt::If(f, _) | Stmt::While(f, _) | Stmt::Do(f, ..) | Stmt::TryCatch(f, _) => {
                self.expr(&mut f.expr);
                self.block(&mut f.body);
                self.block(&mut f.branch);
            }
            Stmt::For(x, _) => {
                self.expr(&mut x.2.expr);
                self.block(&mut x.2.body);
                self.block(&mut x.2.branch);
            }
            Stmt::Switch(x, _) => {
                self.expr(&mut x.0);
                for case in x.1.expressions.iter_mut() {
                    self.expr(&mut case.lhs);
                    self.expr(&mut case.rhs);
                }
            }
            Stmt::Var(x, ..) => self.expr(&mut x.1),
            Stmt::Assignment(x) => {
                self.expr(&mut x.1.rhs);
                if let Some(call) = self.field_assignment(x) {
                    *s = call;
                } else {
                    self.expr(&mut x.1.lhs);
                }
            }
            Stmt::FnCall(call, _) => self.fn_call(call),
            Stmt::Block(b) => self.block(b),
            Stmt::Expr(e) => self.expr(e),
            Stmt::BreakLoop(Some(e), ..) | Stmt::Return(Some(e), ..) => self.expr(e),
            _ => {}
        }
    }

    fn expr(&self, e: &mut Expr) {
        match e {
            Expr::InterpolatedString(items, _) | Expr::Array(items, _) => {
                for item in items.iter_mut() {
                    self.expr(item);
                }
            }
            Expr::Map(x, _) => {
                for (_, value) in x.0.iter_mut() {
                    self.expr(value);
                }
            }
            Expr::MethodCall(call, _) | Expr::FnCall(call, _) => self.fn_call(call),
            Expr::Stmt(b) => self.block(b),
            Expr::Dot(x, ..) | Expr::Index(x, ..) => {
                self.expr(&mut x.lhs);
                self.expr(&mut x.rhs);
            }
            Expr::And(items, _) | Expr::Or(items, _) | Expr::Coalesce(items, _) => {
                for item in items.iter_mut() {
                    self.expr(item);
                }
            }
            Expr::Custom(x, _) => {
                for input in x.inputs.iter_mut() {
                    self.expr(input);
                }
            }
            _ => {}
        }
        self.object_literal(e);
        this_property(e);
    }

    fn fn_call(&self, call: &mut FnCallExpr) {
        for arg in call.args.iter_mut() {
            self.expr(arg);
        }
        if call.namespace.is_empty() && !self.defined.contains(call.name.as_str()) {
            call.hashes = FnCallHashes::from_native_only(call.hashes.native());
        }
    }

    /// `#{…, f: |…| …}` → `object(#{…})`.
    fn object_literal(&self, e: &mut Expr) {
        let has_function = match e {
            Expr::Map(x, _) => x.0.iter().any(|(_, v)| is_function(v)),
            Expr::DynamicConstant(v, _) => v
                .read_lock::<rhai::Map>()
                .is_some_and(|m| m.values().any(rhai::Dynamic::is_fnptr)),
            _ => false,
        };
        if !has_function {
            return;
        }
        let pos = e.position();
        let mut call = self.calls.object.clone();
        call.args = std::iter::once(std::mem::take(e)).collect();
        *e = Expr::FnCall(Box::new(call), pos);
    }

    /// `this.name = v` → `__wshost_set(this, "name", v)`, `this.name op= v` →
    /// `__wshost_update(this, "name", "op=", v)`.
    fn field_assignment(&self, x: &mut (rhai::OpAssignment, BinaryExpr)) -> Option<Stmt> {
        let (op, binary) = x;
        let Expr::Dot(dot, flags, _) = &mut binary.lhs else {
            return None;
        };
        // `h.name = <function>` on a variable.
        if let (Expr::Variable(..), Expr::Property(prop, name_pos)) = (&dot.lhs, &dot.rhs)
            && flags.is_empty()
            && !op.is_op_assignment()
            && is_function(&binary.rhs)
        {
            let name = Expr::StringConstant(prop.2.clone(), *name_pos);
            let variable = std::mem::take(&mut dot.lhs);
            let value = std::mem::take(&mut binary.rhs);
            let mut call = self.calls.set_function.clone();
            call.args = [variable, name, value].into_iter().collect();
            return Some(Stmt::FnCall(Box::new(call), op.position()));
        }
        let (Expr::ThisPtr(this_pos), Expr::Property(prop, name_pos)) = (&dot.lhs, &dot.rhs) else {
            return None;
        };
        if !flags.is_empty() {
            return None;
        }
        let name = Expr::StringConstant(prop.2.clone(), *name_pos);
        let this = Expr::ThisPtr(*this_pos);
        let value = std::mem::take(&mut binary.rhs);
        let pos = op.position();
        let call = match op.get_op_assignment_info() {
            None => {
                let mut call = self.calls.set.clone();
                call.args = [this, name, value].into_iter().collect();
                call
            }
            Some((.., op_assign, _, _))
                if let Some((_, quick)) =
                    self.calls.quick.iter().find(|(op, _)| *op == op_assign) =>
            {
                let mut call = quick.clone();
                call.args = [this, name, value].into_iter().collect();
                call
            }
            Some((.., op_assign, _, _)) => {
                let mut call = self.calls.update.clone();
                let op = Expr::StringConstant(op_assign.into(), pos);
                call.args = [this, name, op, value].into_iter().collect();
                call
            }
        };
        Some(Stmt::FnCall(Box::new(call), pos))
    }
}

/// True for an expression that makes a function: `|…| …`, `Fn("name")`, a closure with
/// captured variables (`curry`).
fn is_function(e: &Expr) -> bool {
    let is_maker = |f: &FnCallExpr| matches!(f.name.as_str(), "Fn" | "curry");
    match e {
        Expr::DynamicConstant(v, _) => v.is_fnptr(),
        Expr::FnCall(f, _) => is_maker(f),
        Expr::Stmt(b) => match b.statements().last() {
            Some(Stmt::FnCall(f, _)) => is_maker(f),
            Some(Stmt::Expr(e)) => is_function(e),
            _ => false,
        },
        _ => false,
    }
}

/// `this.name…` → `this["name"]…`, as Rhai's parser builds an index chain: `this.a` is
/// `Index(this, "a")` ending the chain, `this.a.b` and `this.a[i]` are `Index(this, Dot("a",
/// b))` and `Index(this, Index("a", i))`.
fn this_property(e: &mut Expr) {
    let Expr::Dot(x, flags, pos) = e else {
        return;
    };
    if !matches!(x.lhs, Expr::ThisPtr(_)) || !flags.is_empty() {
        return;
    }
    let as_name = |p: &mut Expr| {
        if let Expr::Property(prop, pos) = p {
            *p = Expr::StringConstant(prop.2.clone(), *pos);
            true
        } else {
            false
        }
    };
    let flags = match &mut x.rhs {
        rhs @ Expr::Property(..) => {
            as_name(rhs);
            ASTFlags::BREAK
        }
        Expr::Dot(inner, ..) | Expr::Index(inner, ..) => {
            if !as_name(&mut inner.lhs) {
                return;
            }
            ASTFlags::empty()
        }
        _ => return,
    };
    let (pos, x) = (*pos, std::mem::take(x));
    *e = Expr::Index(x, flags, pos);
}
