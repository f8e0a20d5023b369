//! Typos found where they are written, at load and by `wshost check`, not when a message
//! arrives: an unknown variable is a compile error (Rhai's strict-variables mode, told which
//! globals the host defines), and an `on…` callback name that wshost never calls is a warning
//! naming the closest callback. It reads scripts; it never runs them.

use std::cell::RefCell;

use rhai::{AST, ASTNode, Dynamic, Engine, Expr, ParseError, ParseErrorType, Scope};

use super::error::{ScriptError, Sources};

/// The global variables every script sees (api.rs registers them). The one list `wshost
/// check` knows: a global added to the API is added here too. At run, a name the engine
/// itself resolves (a global an embedder registers with `HostConfig::with_globals`) is
/// accepted as well.
pub const KNOWN_GLOBALS: &[&str] = &[
    "WebSocketServer",
    "WebSocket",
    "cs",
    "ARGS",
    "WORKER_ID",
    "NODE_ID",
];

/// Every callback wshost calls on a handler (server, connection, client) or an instance.
pub const CALLBACKS: &[&str] = &[
    "onConnection",
    "onOpen",
    "onMessage",
    "onTerminate",
    "onError",
    "onReload",
];

thread_local! {
    static PARSER: Engine = super::engine::strict_parser();
    /// The globals known so far on this thread (one engine per worker thread): the list
    /// above, plus names the engine was found to resolve.
    static KNOWN: RefCell<Scope<'static>> = RefCell::new({
        let mut scope = Scope::new();
        for name in KNOWN_GLOBALS {
            // Not constants: a constant would be folded into the code by the optimizer.
            scope.push(*name, ());
        }
        scope
    });
}

/// Compiles `text` with `engine`; a variable that is neither defined in reach nor a global is
/// an error too.
///
/// Parsed twice: once by a strict parser told the globals' names, then by `engine` for the
/// code that runs. The strict parse's code is thrown away: given the globals as names, it
/// would capture them in closures as if they were local variables.
pub fn compile(engine: &Engine, text: &str) -> Result<AST, ParseError> {
    let ast = engine.compile(text)?;
    PARSER.with(|parser| {
        KNOWN.with(|known| {
            loop {
                let result = parser.compile_with_scope(&known.borrow(), text);
                if let Err(e) = &result
                    && let ParseErrorType::VariableUndefined(name) = e.err_type()
                    && is_engine_global(engine, name)
                {
                    known.borrow_mut().push(name.clone(), ());
                    continue;
                }
                return result.map(|_| ());
            }
        })
    })?;
    Ok(ast)
}

/// Does the engine resolve `name` as a global variable (a global module's variable)?
fn is_engine_global(engine: &Engine, name: &str) -> bool {
    let plain = !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_');
    plain && engine.eval_expression::<Dynamic>(name).is_ok()
}

/// The message for an unknown variable.
pub fn unknown_variable(name: &str) -> String {
    format!(
        "Variable not found: {name} (not defined here, and a `fn` does not see the \
         top-level `let` variables of its file)"
    )
}

/// Warnings for `on…` names that look like callbacks but are not: a function-valued map
/// property (`#{ onMesage: |ws, e| … }`) or a function of a class file (`fn onMesage(…)`).
pub fn callback_warnings(
    ast: &AST,
    file: &str,
    class_file: bool,
    sources: &Sources,
) -> Vec<ScriptError> {
    let text = sources.get(file).unwrap_or_default();
    let mut found: Vec<(String, Option<rhai::Position>)> = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(Expr::Map(map, _))) => {
                for (key, value) in map.0.iter() {
                    if is_function(value) {
                        found.push((key.name.to_string(), Some(key.pos)));
                    }
                }
            }
            // A map the optimizer folded into a constant: its keys have no position.
            Some(ASTNode::Expr(Expr::DynamicConstant(value, _))) => {
                if let Some(map) = value.read_lock::<rhai::Map>() {
                    for (key, value) in map.iter() {
                        if value.is::<rhai::FnPtr>() {
                            found.push((key.to_string(), None));
                        }
                    }
                }
            }
            _ => {}
        }
        true
    });
    if class_file {
        for f in ast.iter_functions() {
            found.push((f.name.to_string(), None));
        }
    }
    let mut warnings = Vec::new();
    let mut seen: Vec<(String, usize, usize)> = Vec::new();
    for (name, pos) in found {
        if !looks_like_callback(&name) || CALLBACKS.contains(&name.as_str()) {
            continue;
        }
        let (line, column) = match pos.and_then(|p| Some((p.line()?, p.position()?))) {
            Some(at) => at,
            None => find_name(text, &name).unwrap_or((0, 0)),
        };
        if seen.contains(&(name.clone(), line, column)) {
            continue;
        }
        seen.push((name.clone(), line, column));
        let message = format!(
            "{name} is not a callback, so wshost never calls it: did you mean {}? \
             (callbacks: {})",
            closest(&name),
            CALLBACKS.join(", ")
        );
        let mut w = ScriptError::plain(file, message);
        w.line = line;
        w.column = column;
        w.source_line = text.lines().nth(line.wrapping_sub(1)).map(str::to_string);
        warnings.push(w);
    }
    warnings
}

/// `on` followed by an upper-case letter, as every callback name is.
fn looks_like_callback(name: &str) -> bool {
    name.strip_prefix("on")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_uppercase())
}

/// A value expression that makes a function: a closure, `Fn("name")`, a function's name.
fn is_function(value: &Expr) -> bool {
    match value {
        Expr::DynamicConstant(v, _) => v.is::<rhai::FnPtr>(),
        Expr::FnCall(call, _) => call.name == "Fn" || call.name == "curry",
        Expr::Variable(..) => true,
        _ => false,
    }
}

/// The callback whose name is closest to `name` (by edit distance, ignoring case).
fn closest(name: &str) -> &'static str {
    CALLBACKS
        .iter()
        .min_by_key(|c| distance(&name.to_lowercase(), &c.to_lowercase()))
        .copied()
        .unwrap_or("onMessage")
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(row[j]).min(row[j + 1])
            };
            prev = here;
        }
    }
    row[b.len()]
}

/// Line and column (1-based) of the first `name` in `text` that stands as a whole word.
fn find_name(text: &str, name: &str) -> Option<(usize, usize)> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    for (n, line) in text.lines().enumerate() {
        let mut from = 0;
        while let Some(at) = line[from..].find(name) {
            let start = from + at;
            let end = start + name.len();
            let before = line[..start].chars().next_back();
            let after = line[end..].chars().next();
            if !before.is_some_and(is_word) && !after.is_some_and(is_word) {
                return Some((n + 1, line[..start].chars().count() + 1));
            }
            from = end;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closest_callback_is_named() {
        assert_eq!(closest("onMesage"), "onMessage");
        assert_eq!(closest("onConnect"), "onConnection");
        assert_eq!(closest("onterminate"), "onTerminate");
        assert_eq!(closest("onClose"), "onOpen");
    }

    #[test]
    fn only_on_and_a_capital_looks_like_a_callback() {
        assert!(looks_like_callback("onMesage"));
        assert!(!looks_like_callback("once"));
        assert!(!looks_like_callback("on"));
    }

    #[test]
    fn a_global_the_engine_has_is_known_and_a_typo_of_it_is_not() {
        let mut engine = super::super::engine::new_engine(&Default::default(), &Default::default());
        let mut globals = rhai::Module::new();
        globals.set_var("NODE_ID", 7_i64);
        engine.register_global_module(globals.into());
        let ok = "fn f() { NODE_ID + 1 } let g = || WORKER_ID + NODE_ID; print(cs)";
        assert!(compile(&engine, ok).is_ok());
        let typo = compile(&engine, "fn f() { NODE_IDX }").unwrap_err();
        assert!(
            matches!(typo.err_type(), ParseErrorType::VariableUndefined(n) if n == "NODE_IDX"),
            "{typo}"
        );
    }

    #[test]
    fn a_name_is_found_as_a_whole_word() {
        assert_eq!(
            find_name("fn onOpenX()\nfn onOpen()", "onOpen"),
            Some((2, 4))
        );
    }
}
