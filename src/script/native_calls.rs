//! Calls that can only reach a native function, marked so in a callback's body.
//!
//! Rhai resolves `x.send(data)` by first looking for a script function `send`: a typed one
//! (`fn WebSocketConnection.send(…)`, which costs a lookup of the type's display name) and a
//! plain one, then the native function. Each failed lookup is cached, but asking costs: a
//! method call costs about 940 machine instructions more than the same call written `send(x,
//! data)` (callgrind, one echo), about 5 % of a whole echo. A name that no function of the
//! file defines can only be native, so every call of it in the body is marked native-only, as
//! Rhai's parser marks operators. Calls of names the file defines, at any parameter count and
//! for any `this` type, are left as they are.
//!
//! A callback runs with its file's functions alone (call.rs; a closure runs in the file it is
//! written in), so no other file's function could answer such a call. Only the bodies that
//! call.rs runs itself are marked (Rhai keeps a file's functions where they cannot be
//! changed): the functions a callback calls run as Rhai compiled them.

use std::collections::HashSet;

use rhai::{AST, Expr, FnCallExpr, FnCallHashes, Stmt, StmtBlock};

/// Marks the calls in `body`, a function of `ast`, of names `ast` does not define.
pub fn mark(body: &mut StmtBlock, ast: &AST) {
    let defined: HashSet<&str> = ast.iter_fn_def().map(|f| f.name.as_str()).collect();
    block(body, &defined);
}

fn block(b: &mut StmtBlock, defined: &HashSet<&str>) {
    for s in b.statements_mut().iter_mut() {
        stmt(s, defined);
    }
}

fn stmt(s: &mut Stmt, defined: &HashSet<&str>) {
    match s {
        Stmt::If(f, _) | Stmt::While(f, _) | Stmt::Do(f, ..) | Stmt::TryCatch(f, _) => {
            expr(&mut f.expr, defined);
            block(&mut f.body, defined);
            block(&mut f.branch, defined);
        }
        Stmt::For(x, _) => {
            expr(&mut x.2.expr, defined);
            block(&mut x.2.body, defined);
            block(&mut x.2.branch, defined);
        }
        Stmt::Switch(x, _) => {
            expr(&mut x.0, defined);
            for case in x.1.expressions.iter_mut() {
                expr(&mut case.lhs, defined);
                expr(&mut case.rhs, defined);
            }
        }
        Stmt::Var(x, ..) => expr(&mut x.1, defined),
        Stmt::Assignment(x) => {
            expr(&mut x.1.lhs, defined);
            expr(&mut x.1.rhs, defined);
        }
        Stmt::FnCall(call, _) => fn_call(call, defined),
        Stmt::Block(b) => block(b, defined),
        Stmt::Expr(e) => expr(e, defined),
        Stmt::BreakLoop(Some(e), ..) | Stmt::Return(Some(e), ..) => expr(e, defined),
        _ => {}
    }
}

fn expr(e: &mut Expr, defined: &HashSet<&str>) {
    match e {
        Expr::InterpolatedString(items, _) | Expr::Array(items, _) => {
            for item in items.iter_mut() {
                expr(item, defined);
            }
        }
        Expr::Map(x, _) => {
            for (_, value) in x.0.iter_mut() {
                expr(value, defined);
            }
        }
        Expr::MethodCall(call, _) | Expr::FnCall(call, _) => fn_call(call, defined),
        Expr::Stmt(b) => block(b, defined),
        Expr::Dot(x, ..) | Expr::Index(x, ..) => {
            expr(&mut x.lhs, defined);
            expr(&mut x.rhs, defined);
        }
        Expr::And(items, _) | Expr::Or(items, _) | Expr::Coalesce(items, _) => {
            for item in items.iter_mut() {
                expr(item, defined);
            }
        }
        Expr::Custom(x, _) => {
            for input in x.inputs.iter_mut() {
                expr(input, defined);
            }
        }
        _ => {}
    }
}

fn fn_call(call: &mut FnCallExpr, defined: &HashSet<&str>) {
    for arg in call.args.iter_mut() {
        expr(arg, defined);
    }
    if call.namespace.is_empty() && !defined.contains(call.name.as_str()) {
        call.hashes = FnCallHashes::from_native_only(call.hashes.native());
    }
}
