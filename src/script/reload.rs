//! Every hot-reload rule (SPEC 7; the README states them): a class file that compiles anew
//! gives every instance its new methods on the next callback and keeps their state; the entry
//! script's top level runs again, and a server it makes with the host, port and path of a
//! running one adopts it; what the old top level made and the new one does not is stopped and
//! named in the log; a file that does not compile changes nothing.

use std::time::Instant;

use std::collections::HashMap;

use rhai::{AST, ASTNode, Dynamic, Expr, FnPtr, Map, NativeCallContext, Scope};

use super::classes::Reloaded;
use super::dispatch::{Dispatch, event_map};
use super::error::{ScriptError, display_name};
use super::objects::Object;
use super::server::ServerOptions;
use super::state::Ctx;
use crate::event::ServerId;

impl Dispatch<'_> {
    /// Hot reload of one changed file (SPEC section 7; the rules are in the README).
    pub(super) fn reload(&self, path: &std::path::Path) {
        let started = Instant::now();
        let previous = self.ctx.classes.borrow().own_ast(path);
        let result = self.ctx.classes.borrow_mut().reload(
            self.engine,
            path,
            &mut self.ctx.sources.borrow_mut(),
        );
        if let Some(m) = crate::metrics::get() {
            match &result {
                Ok(Reloaded::Unchanged | Reloaded::Empty) => {}
                Ok(_) => m.reloads.increment(1),
                Err(_) => m.reloads_failed.increment(1),
            }
        }
        let file = display_name(path);
        let ms = || started.elapsed().as_secs_f64() * 1000.0;
        match result {
            Ok(Reloaded::Unchanged) => tracing::debug!("{file}: saved without changes"),
            Ok(Reloaded::Empty) => {
                tracing::warn!("{file} is empty: the old code keeps running until it has content")
            }
            Ok(Reloaded::Class { name, removed }) => {
                self.renew_closures(&file, previous.as_ref(), path);
                tracing::info!("reloaded {file} (class {name}) in {:.2} ms", ms());
                self.report_removed(&file, &removed);
                self.call_on_reload(&file);
            }
            Ok(Reloaded::Script) => {
                self.renew_closures(&file, previous.as_ref(), path);
                tracing::info!(
                    "reloaded {file} in {:.2} ms (its top level is not run again)",
                    ms()
                );
                self.call_on_reload(&file);
            }
            Ok(Reloaded::Entry(ast)) => {
                let now = self.ctx.classes.borrow().own_ast(path);
                let same_top_level = previous
                    .as_ref()
                    .zip(now.as_ref())
                    .is_some_and(|(old, new)| top_level_shape(old) == top_level_shape(new));
                if same_top_level {
                    self.renew_closures(&file, previous.as_ref(), path);
                    tracing::info!(
                        "reloaded {file} in {:.2} ms: only functions or comments changed, so its \
                         top level is not run again (its objects, timers, clients and servers go on)",
                        ms()
                    );
                } else {
                    self.rerun_top_level(&file, &ast);
                    self.renew_closures(&file, previous.as_ref(), path);
                    tracing::info!("reloaded {file} (top level run again) in {:.2} ms", ms());
                }
                self.call_on_reload(&file);
            }
            Err(e) => tracing::error!(
                location = %e.location(),
                "{e} (reload failed: the old code keeps running){}",
                e.snippet()
            ),
        }
    }

    /// Gives the closures that live handlers and timers hold the new code of `file`: the
    /// file's closures are matched in source order, old to new; a pair with the same
    /// parameters and captured variables is the same closure edited. One that cannot be
    /// matched keeps its old code (it never fails), and the log names who holds it.
    fn renew_closures(&self, file: &str, previous: Option<&AST>, path: &std::path::Path) {
        let (Some(old), Some(new)) = (previous, self.ctx.classes.borrow().own_ast(path)) else {
            return;
        };
        let successors = closure_successors(old, &new);
        let mut renewed = 0;
        let mut kept: Vec<String> = Vec::new();
        let mut renew =
            |f: &mut FnPtr, holder: &dyn Fn() -> String| match successors.get(f.fn_name()) {
                Some(Some(next)) => {
                    let mut next = next.clone();
                    next.set_curry(f.curry().to_vec());
                    *f = next;
                    renewed += 1;
                }
                Some(None) => kept.push(holder()),
                None => {}
            };
        // The handlers first (the log names them by server or connection), then every other
        // object's fields (a model object's callback, say).
        let mut handlers = std::collections::HashSet::new();
        {
            let mut reg = self.ctx.registry.borrow_mut();
            let reg = &mut *reg;
            for (id, s) in reg.servers.iter() {
                handlers.extend(Object::of(&s.handler).map(|o| o.address()));
                if !s.terminated {
                    renew_handler(&s.handler, &mut |f, key| {
                        renew(f, &|| format!("{key} of server {id}"))
                    });
                }
            }
            for (id, c) in reg.conns.iter() {
                handlers.extend(Object::of(&c.handler).map(|o| o.address()));
                renew_handler(&c.handler, &mut |f, key| {
                    renew(f, &|| format!("{key} of connection {id}"))
                });
            }
            for f in reg.timers.callbacks_mut() {
                renew(f, &|| "a timer".to_string());
            }
        }
        for o in self.ctx.objects.live() {
            if handlers.contains(&o.address()) {
                continue;
            }
            let what = o
                .class()
                .map_or("an object".to_string(), |c| format!("a {c}"));
            renew_handler(&o.into_dynamic(), &mut |f, key| {
                renew(f, &|| format!("{key} of {what}"))
            });
        }
        if renewed > 0 {
            tracing::info!(
                "reload: {renewed} closure(s) of {file} held by open connections, servers or timers run the new code"
            );
        }
        if !kept.is_empty() {
            tracing::warn!(
                "reload: {file}: these closures keep their old code (edited too much to match the \
                 new ones: their number, parameters or captured variables changed; new \
                 connections get the new code): {}",
                kept.join(", ")
            );
        }
    }

    fn report_removed(&self, file: &str, removed: &[String]) {
        for f in removed {
            if f.starts_with("on") {
                tracing::warn!(
                    "{file}: {f} was removed: handlers from this file skip it from now on"
                );
            } else {
                tracing::info!("{file}: {f} was removed");
            }
        }
    }

    /// Calls `onReload(event)` on every object whose code is in `file`: each live instance
    /// of the class in it (handler or not: a model object migrates its state too), and each
    /// handler written as a literal there (or in a server's file). Once each.
    fn call_on_reload(&self, file: &str) {
        let mut targets: Vec<(Dynamic, Option<std::rc::Rc<str>>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let class = self
            .ctx
            .classes
            .borrow()
            .file(file)
            .and_then(|s| s.class.clone());
        if let Some(class) = class {
            for o in self.ctx.objects.live() {
                if o.class().is_some_and(|c| c.as_str() == class) && seen.insert(o.address()) {
                    targets.push((o.into_dynamic(), None));
                }
            }
        }
        {
            let reg = self.ctx.registry.borrow();
            let servers = reg
                .servers
                .values()
                .map(|s| (s.handler.clone(), s.home.clone()));
            let conns = reg
                .conns
                .values()
                .map(|c| (c.handler.clone(), c.home.clone()));
            for (h, home) in servers.chain(conns) {
                let Some(o) = Object::of(&h) else { continue };
                let code = o.home().map(std::rc::Rc::from).or(home.clone());
                if o.class().is_none() && code.as_deref() == Some(file) && seen.insert(o.address())
                {
                    targets.push((h, home));
                }
            }
        }
        let mut event = event_map("reload");
        event.insert("file".into(), file.into());
        for (handler, home) in targets {
            if let Some(Err(e)) = self.invoke(
                &handler,
                home.as_deref(),
                "onReload",
                vec![Dynamic::from_map(event.clone())],
            ) {
                tracing::error!("{e} (onReload){}", e.snippet());
            }
        }
    }

    /// Runs the entry script's top level again. Servers it creates with the host, port and
    /// path of a running one adopt that server; what the previous run made and this one does
    /// not make again is stopped, each named in the log.
    fn rerun_top_level(&self, file: &str, ast: &AST) {
        let (result, left) = self.ctx.top_level.rerun(|previous| {
            {
                let mut reg = self.ctx.registry.borrow_mut();
                for id in &previous.timers {
                    if reg.timers.cancel(*id) {
                        tracing::info!("reload: cancelled timer {id} made by the old top level");
                    }
                }
                for id in &previous.clients {
                    if let Some(c) = reg.conns.get(id) {
                        tracing::info!("reload: closing client {id} made by the old top level");
                        c.handle.close(1001, "script reloaded".into());
                    }
                }
            }
            self.ctx.deadline.start(&self.ctx.budget);
            let result = super::engine::catch_panic(|| {
                self.engine.run_ast_with_scope(&mut Scope::new(), ast)
            });
            self.ctx.deadline.clear();
            result
        });
        match result {
            Ok(_) => {
                for id in left {
                    tracing::warn!("reload: {file} no longer creates server {id}: stopping it");
                    self.ctx.terminate_server(id);
                }
            }
            Err(e) => {
                let err = ScriptError::from_eval(e.as_ref(), file, &self.ctx.sources.borrow());
                tracing::error!(
                    "{err} (top level after reload; servers it did not reach keep running){}",
                    err.snippet()
                );
                self.ctx.top_level.keep_servers(left);
            }
        }
    }
}

/// During a re-run of the entry script's top level: the running server with the same host,
/// port and path takes the new handler (keeping its listener, connections and state).
pub(super) fn adopt_server(
    ctx: &Ctx,
    ncc: &NativeCallContext,
    handler: &Dynamic,
    opts: &ServerOptions,
) -> Option<ServerId> {
    let mut reg = ctx.registry.borrow_mut();
    let id = ctx.top_level.adopt(|id| {
        reg.servers.get(&id).is_some_and(|s| {
            !s.terminated
                && s.host == opts.host
                && s.requested_port == opts.port
                && s.path == opts.path
        })
    })?;
    let server = reg.servers.get_mut(&id)?;
    keep_state(&server.handler, handler);
    server.home = ncc.call_source().map(std::rc::Rc::from);
    server.data_type = opts.data_type;
    server.max_connections = opts.max_connections;
    let conns = server.conns.len();
    tracing::info!(
        "reload: kept the server on {}:{}{} with its {conns} connection(s)",
        server.host,
        server.port,
        server.path.as_deref().unwrap_or("/")
    );
    Some(id)
}

/// Gives a running handler the callbacks of its new version and keeps its state: an instance
/// of the same class stays as is (its class file brings the new code); an object written as a
/// literal takes the new one's fields, but data it already had (fields that are not
/// functions) is kept.
fn keep_state(old: &Dynamic, new: &Dynamic) {
    let (Some(old), Some(new)) = (Object::of(old), Object::of(new)) else {
        return;
    };
    if old.ptr_eq(&new) || old.class().is_some() && old.class() == new.class() {
        return;
    }
    let mut merged = new.fields();
    for (k, v) in old.fields() {
        if !v.is_fnptr() {
            merged.insert(k, v);
        }
    }
    // Everybody holds `old`: it is the one to change.
    old.replace_fields(merged);
}

/// The top-level statements of `ast` without their positions and the names of the closures
/// they make (both change when a comment or a function above them does): equal for two
/// versions whose top level does the same. A closure's body is a function's, renewed apart.
fn top_level_shape(ast: &AST) -> String {
    let text = format!("{:?}", ast.statements());
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Inside a string literal (Debug escapes its quotes and backslashes), digits are text,
    // not a position.
    let mut in_string = false;
    let escaped = |i: usize| bytes[..i].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1;
    while i < bytes.len() {
        // A char literal (`'"'`, `'\''`) is copied whole: its quote is no string's.
        if !in_string && bytes[i] == b'\'' {
            let end = (i + 1..bytes.len()).find(|&j| bytes[j] == b'\'' && !escaped(j));
            if let Some(end) = end.filter(|e| e - i <= 12) {
                out.push_str(&text[i..=end]);
                i = end + 1;
                continue;
            }
        }
        if bytes[i] == b'"' && !escaped(i) {
            in_string = !in_string;
        }
        // `anon$` and 16 hex digits: a closure's name, a hash of its code and position.
        if text[i..].starts_with("anon$") {
            out.push_str("anon$");
            i += 5;
            while i < bytes.len() && bytes[i].is_ascii_hexdigit() {
                i += 1;
            }
            continue;
        }
        // `LINE:COL`: a position.
        if !in_string
            && bytes[i].is_ascii_digit()
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
        {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i + 1 < bytes.len() && bytes[i] == b':' && bytes[i + 1].is_ascii_digit() {
                i += 1;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                out.push('_');
            } else {
                out.push_str(&text[start..i]);
            }
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// For each edited closure of `old` (by its generated name): its new version in `new`, or None
/// if it has none. An unchanged closure keeps its name (a hash of its code) and is left out;
/// the edited ones are paired in source order when both versions have as many, and a pair is
/// the same closure edited when it has the same parameters, captured variables included
/// (Rhai passes those first).
fn closure_successors(old: &AST, new: &AST) -> HashMap<String, Option<FnPtr>> {
    let (mut old_list, mut new_list) = (closures_in_order(old), closures_in_order(new));
    let in_list = |list: &[FnPtr], f: &FnPtr| list.iter().any(|g| g.fn_name() == f.fn_name());
    let unchanged: Vec<FnPtr> = old_list
        .iter()
        .filter(|f| in_list(&new_list, f))
        .cloned()
        .collect();
    old_list.retain(|f| !in_list(&unchanged, f));
    new_list.retain(|f| !in_list(&unchanged, f));
    let params = |ast: &AST, name: &str| {
        ast.iter_functions()
            .find(|f| f.name == name)
            .map(|f| f.params.iter().map(|p| p.to_string()).collect::<Vec<_>>())
    };
    let same_count = old_list.len() == new_list.len();
    let mut out = HashMap::new();
    for (i, f) in old_list.iter().enumerate() {
        let next = new_list
            .get(i)
            .filter(|n| same_count && params(old, f.fn_name()) == params(new, n.fn_name()));
        out.insert(f.fn_name().to_string(), next.cloned());
    }
    out
}

/// The closures of a file, in source order.
fn closures_in_order(ast: &AST) -> Vec<FnPtr> {
    let mut found: Vec<((usize, usize), FnPtr)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(Expr::DynamicConstant(value, pos))) = path.last() {
            let at = (pos.line().unwrap_or(0), pos.position().unwrap_or(0));
            // A map of constants (closures included) the optimizer folded into one value:
            // its closures in key order.
            let folded: Vec<FnPtr> = match value.read_lock::<Map>() {
                Some(map) => map
                    .values()
                    .filter_map(|v| v.read_lock::<FnPtr>().map(|f| f.clone()))
                    .collect(),
                None => value
                    .read_lock::<FnPtr>()
                    .map(|f| f.clone())
                    .into_iter()
                    .collect(),
            };
            for f in folded {
                if f.is_anonymous() && !found.iter().any(|(_, g)| g.fn_name() == f.fn_name()) {
                    found.push((at, f));
                }
            }
        }
        true
    });
    found.sort_by_key(|(at, _)| *at);
    found.into_iter().map(|(_, f)| f).collect()
}

/// Calls `renew` on each closure property of a handler, with the property's name.
fn renew_handler(handler: &Dynamic, renew: &mut dyn FnMut(&mut FnPtr, &str)) {
    let Some(object) = Object::of(handler) else {
        return;
    };
    for (key, value) in object.fields() {
        if let Some(mut f) = value.read_lock::<FnPtr>().map(|f| f.clone())
            && f.is_anonymous()
        {
            let before = f.fn_name().to_string();
            renew(&mut f, key.as_str());
            if f.fn_name() != before {
                object.set(key.as_str(), Dynamic::from(f));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::top_level_shape;

    fn shape(text: &str) -> String {
        let engine = rhai::Engine::new();
        top_level_shape(&engine.compile(text).expect("compiles"))
    }

    #[test]
    fn a_comment_or_a_function_changes_no_shape_a_top_level_statement_does() {
        let base = "let q = '\"'; let b = \"x\\\\\"; let s = \"10:20\"; \
                    setInterval(|| print(\"tick \" + s), 200);\nfn f() { 1 }";
        let commented = format!("// one more line\n{base}");
        assert_eq!(shape(base), shape(&commented));
        assert_eq!(shape(base), shape(&base.replace("{ 1 }", "{ 2 }")));
        assert_eq!(
            shape(base),
            shape(&base.replace("print(\"tick \"", "print(\"tock \""))
        );
        assert_ne!(shape(base), shape(&base.replace("10:20", "11:21")));
        assert_ne!(shape(base), shape(&base.replace("200", "300")));
        assert_ne!(shape(base), shape(&base.replace("'\"'", "'x'")));
    }
}
