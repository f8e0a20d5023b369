//! Script errors people can act on: `file:line:col: message`, then the source line and a caret.
//!
//! Rhai nests an error raised inside a function in `ErrorInFunctionCall` layers, each naming
//! the source of the function it entered; the innermost layer holds the real position.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rhai::{EvalAltResult, ParseError, Position};

thread_local! {
    /// Why the last call that no function answered was not answered (methods.rs): a class
    /// without that method, a wrong number of arguments. Rhai raises its own "function not
    /// found" error for it, with the position the hook that knows why is not given; the error
    /// takes this explanation when it is shown. One per worker thread, as Rhai's error is.
    static NOT_FOUND: std::cell::RefCell<Option<(String, String)>> =
        const { std::cell::RefCell::new(None) };
}

/// Explains the "function not found" error Rhai is about to raise for function `name`.
pub fn explain_not_found(name: &str, message: String) {
    NOT_FOUND.with(|n| *n.borrow_mut() = Some((name.to_string(), message)));
}

/// The explanation of a "function not found" error whose signature is `signature` (`name
/// (types…)`), if the last one explained was about that function.
fn not_found_message(signature: &str) -> Option<String> {
    NOT_FOUND.with(|n| {
        let n = n.borrow();
        let (name, message) = n.as_ref()?;
        let rest = signature.strip_prefix(name.as_str())?;
        (rest.is_empty() || rest.starts_with(' ')).then(|| message.clone())
    })
}

/// Source texts by the name given to `AST::set_source`, kept to quote the failing line.
#[derive(Default)]
pub struct Sources {
    texts: HashMap<String, String>,
}

impl Sources {
    pub fn insert(&mut self, name: &str, text: String) {
        self.texts.insert(name.to_string(), text);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.texts.get(name).map(String::as_str)
    }

    fn line(&self, name: &str, line: usize) -> Option<&str> {
        self.texts.get(name)?.lines().nth(line.checked_sub(1)?)
    }
}

/// What went wrong in a script, located in its file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// The source line, when known.
    pub source_line: Option<String>,
    /// True when the error is a budget (operations, time) rather than a script fault.
    pub budget: bool,
    /// True when it is a failed `assert…` of `wshost test` (testing.rs).
    pub assertion: bool,
}

impl ScriptError {
    /// An error raised while evaluating code from `file` (the outermost source).
    pub fn from_eval(err: &EvalAltResult, file: &str, sources: &Sources) -> Self {
        let mut src = file.to_string();
        let mut pos = err.position();
        let mut inner = err;
        while let EvalAltResult::ErrorInFunctionCall(_, fn_src, e, p) = inner {
            if !p.is_none() {
                pos = *p;
            }
            if !fn_src.is_empty() {
                src = fn_src.clone();
            }
            inner = e;
            if !inner.position().is_none() {
                pos = inner.position();
            }
        }
        let budget = matches!(
            inner,
            EvalAltResult::ErrorTooManyOperations(..)
                | EvalAltResult::ErrorTerminated(..)
                | EvalAltResult::ErrorStackOverflow(..)
        );
        let message = match inner {
            EvalAltResult::ErrorTooManyOperations(..) => {
                "stopped: the callback ran past its operation budget (an endless loop?)".into()
            }
            EvalAltResult::ErrorTerminated(token, _) if token.to_string().contains("memory") => {
                "stopped: the callback allocated past its memory budget".into()
            }
            EvalAltResult::ErrorTerminated(token, _) if token.to_string().contains("stopping") => {
                "stopped: the host is stopping".into()
            }
            EvalAltResult::ErrorTerminated(..) => {
                "stopped: the callback ran past its time budget (an endless loop?)".into()
            }
            EvalAltResult::ErrorStackOverflow(..) => {
                "stopped: too many nested calls (endless recursion?)".into()
            }
            // An object's array or map field is a shared cell (objects.rs):
            // `a.items.x.method()` holds `a.items` while the method runs, and the method
            // reached it again.
            EvalAltResult::ErrorDataRace(..) => "an object's field was used while a method \
                called through it runs (`a.items.x.method()` holds `a.items` until it returns): \
                take the object in a variable first (`let x = a.items.x; x.method()`)"
                .into(),
            EvalAltResult::ErrorFunctionNotFound(signature, _)
                if not_found_message(signature).is_some() =>
            {
                not_found_message(signature).unwrap_or_default()
            }
            EvalAltResult::ErrorRuntime(v, _) => match v.clone().into_string() {
                Ok(s) => s,
                Err(_) if api_message(v).is_some() => api_message(v).unwrap_or_default(),
                Err(t) => format!("thrown: {t}"),
            },
            other => without_position(&first_line(&other.to_string())).to_string(),
        };
        let mut error = Self::at(src, pos, message, sources, budget);
        error.assertion = matches!(inner, EvalAltResult::ErrorRuntime(v, _) if is_assertion(v));
        error
    }

    /// A syntax error in `file`.
    pub fn from_parse(err: &ParseError, file: &str, sources: &Sources) -> Self {
        let message = match err.err_type() {
            rhai::ParseErrorType::VariableUndefined(name) => super::lint::unknown_variable(name),
            other => format!("syntax error: {other}"),
        };
        let mut error = Self::at(file.to_string(), err.position(), message, sources, false);
        if let Some(hint) = error.source_line.as_deref().and_then(habit_hint) {
            error.message = format!("{} (hint: {hint})", error.message);
        }
        error
    }

    /// An error at `pos` in `file` found without running it (`wshost check`).
    pub fn at_position(file: &str, pos: Position, message: String, sources: &Sources) -> Self {
        Self::at(file.to_string(), pos, message, sources, false)
    }

    /// An error that is not at a script position (a missing file, a bad class name).
    pub fn plain(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_string(),
            line: 0,
            column: 0,
            message: message.into(),
            source_line: None,
            budget: false,
            assertion: false,
        }
    }

    fn at(file: String, pos: Position, message: String, sources: &Sources, budget: bool) -> Self {
        let line = pos.line().unwrap_or(0);
        let column = pos.position().unwrap_or(0);
        let source_line = sources.line(&file, line).map(str::to_string);
        Self {
            file,
            line,
            column,
            message,
            source_line,
            budget,
            assertion: false,
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

impl ScriptError {
    /// `file:line:col`, or `file` when the position is not known (a budget stop in a timer's
    /// callback, which Rhai's own call runs), for a structured log field.
    pub fn location(&self) -> String {
        if self.line == 0 {
            return self.file.clone();
        }
        format!("{}:{}:{}", self.file, self.line, self.column)
    }

    /// The `errCode` kind this error has when handed to `onError`.
    pub fn kind(&self) -> crate::event::ErrorKind {
        if self.budget {
            crate::event::ErrorKind::Budget
        } else {
            crate::event::ErrorKind::Script
        }
    }

    /// The source line and a caret under the column, on lines of their own ("" if unknown).
    pub fn snippet(&self) -> String {
        let Some(src) = &self.source_line else {
            return String::new();
        };
        let gutter = format!("{:>4} | ", self.line);
        let pad = " ".repeat(gutter.len() - 2);
        let col = self.column.max(1) - 1;
        let lead: String = src
            .chars()
            .take(col)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        format!("\n{gutter}{src}\n{pad}| {lead}^")
    }
}

impl fmt::Display for ScriptError {
    /// `file:line:col: message`; with `{:#}` also the source line and a caret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )?;
        } else {
            write!(f, "{}: {}", self.file, self.message)?;
        }
        if f.alternate() {
            f.write_str(&self.snippet())?;
        }
        Ok(())
    }
}

impl std::error::Error for ScriptError {}

/// The name a script file goes by in messages: as given on the command line, or relative to
/// the current directory when that is shorter.
pub fn display_name(path: &Path) -> String {
    let rel = std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(PathBuf::from));
    let shown = rel.unwrap_or_else(|| path.to_path_buf());
    let shown = shown.strip_prefix(".").unwrap_or(&shown);
    shown.to_string_lossy().into_owned()
}

/// Rhai's message without the " (line L, position C)" it ends with: the location is printed
/// once, in front, as file:line:col.
fn without_position(message: &str) -> &str {
    let Some(at) = message.rfind(" (line ") else {
        return message;
    };
    let tail = &message[at + " (line ".len()..];
    let is_position = tail
        .strip_suffix(')')
        .and_then(|t| t.split_once(", position "))
        .is_some_and(|(line, col)| {
            [line, col]
                .iter()
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    if is_position { &message[..at] } else { message }
}

/// A hint for a habit from 4D or JavaScript seen on the line of a syntax error.
fn habit_hint(line: &str) -> Option<&'static str> {
    let words = || line.split(|c: char| !(c.is_alphanumeric() || c == '_'));
    if line.contains("4D.") {
        Some("drop 4D's `4D.` prefix: `WebSocketServer.new(…)`, `WebSocket.new(…)`, `cs.Name`")
    } else if words().any(|w| matches!(w, "null" | "Null" | "undefined")) {
        Some("Rhai has no null: the empty value is `()` (`return ();`, `x == ()`)")
    } else if line.contains(":=") {
        Some("assign with `=` (4D's `:=`)")
    } else {
        None
    }
}

/// An error of wshost's API (a bad argument, an assertion in a test), raised to the script.
/// Caught, it is a map with `message`, as Rhai's own errors are (theirs also have `line` and
/// `position`), so `e.message` works whichever raised it.
pub fn api_error(message: impl Into<String>) -> Box<EvalAltResult> {
    let mut map = rhai::Map::new();
    map.insert("message".into(), message.into().into());
    EvalAltResult::ErrorRuntime(map.into(), Position::NONE).into()
}

/// The message of an [`api_error`] value.
/// A failed assertion of `wshost test`: an error map marked so.
pub fn assertion_error(message: impl Into<String>) -> Box<EvalAltResult> {
    let mut map = rhai::Map::new();
    map.insert("message".into(), message.into().into());
    map.insert("assertion".into(), true.into());
    EvalAltResult::ErrorRuntime(map.into(), Position::NONE).into()
}

fn is_assertion(value: &rhai::Dynamic) -> bool {
    value
        .read_lock::<rhai::Map>()
        .and_then(|m| m.get("assertion").and_then(|a| a.as_bool().ok()))
        .unwrap_or(false)
}

fn api_message(value: &rhai::Dynamic) -> Option<String> {
    let map = value.read_lock::<rhai::Map>()?;
    map.get("message")?.clone().into_string().ok()
}
