//! The compiled scripts of a worker: the entry script and the class store behind `cs`.
//!
//! `Name.rhai` in the entry script's folder is the class `cs.Name`, compiled on first use.
//! Each file is kept with the number of parameters of each of its functions, so a callback
//! declared with fewer parameters (`fn onOpen(ws)`) still gets called. Instances are objects
//! (objects.rs) naming their class.
//!
//! A file's functions are not given to Rhai: call.rs runs them from rewritten copies of their
//! bodies, and methods.rs decides which function answers a call (a method by the object's
//! class, whatever file the call is in). What Rhai runs a file's code with holds closures
//! only: a closure is compiled into the file that creates it, but may end up stored in a
//! handler that another file's code calls, so every file's code sees every closure loaded so
//! far (closure names are unique hashes of their code).

use super::error::api_error;
use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use crate::watch::Watcher;

use rhai::{AST, Dynamic, Engine, Map, NativeCallContext};

use super::state::Ctx;

use super::error::{ScriptError, Sources, display_name};

/// One compiled file, ready to call into.
pub struct Script {
    /// The file as named in messages (`scripts/Chat.rhai`).
    pub file: String,
    /// The class name for a class file.
    pub class: Option<String>,
    /// What Rhai runs the file's code with: every closure loaded so far, and the file's
    /// functions declared for a `this` type (`fn T.name()`, left to Rhai).
    pub ast: AST,
    /// (Looked up by name on every callback: FxHash, not SipHash, as `files`.)
    params: FxHashMap<String, usize>,
    /// What calls into `ast` have resolved so far (call.rs).
    pub calls: super::call::CallCache,
}

impl Script {
    /// `code` is the file as compiled, `closures` every closure loaded so far.
    fn new(
        file: String,
        class: Option<String>,
        code: AST,
        closures: &AST,
        calls: Rc<super::rewrite::Calls>,
    ) -> Self {
        let typed: Vec<(String, usize)> = code
            .iter_fn_def()
            .filter(|f| f.this_type.is_some())
            .map(|f| (f.name.to_string(), f.params.len()))
            .collect();
        let mut own_typed = code.clone_functions_only();
        own_typed.retain_functions(|_, _, name, n| typed.iter().any(|(t, k)| t == name && *k == n));
        let mut ast = closures.merge(&own_typed);
        ast.set_source(file.as_str());
        Self {
            params: param_counts(&code),
            calls: super::call::CallCache::new(&ast, code, calls),
            file,
            class,
            ast,
        }
    }

    /// Calls function `name` of the file with `this` bound (`()` for none); `args` must hold
    /// as many values as it declares. `level` is the call depth (1 for a callback).
    pub fn call(
        &self,
        engine: &Engine,
        this: &mut Dynamic,
        name: &str,
        args: &mut [Dynamic],
        level: usize,
    ) -> Result<Dynamic, Box<rhai::EvalAltResult>> {
        self.calls
            .call_method(engine, &self.ast, this, name, args, level)
    }

    /// The file's top level, rewritten (rewrite.rs), ready to run with the file's closures.
    pub fn top_level(&self) -> AST {
        self.calls.top_level(&self.ast)
    }

    /// The number of parameters of function `name`, if the file has it.
    pub fn params(&self, name: &str) -> Option<usize> {
        self.params.get(name).copied()
    }
}

fn is_closure(name: &str) -> bool {
    name.starts_with("anon$")
}

/// Parameter counts of the functions of `ast`. A name defined with several counts is known by
/// its largest, whatever order Rhai lists them in (it varies from run to run).
fn param_counts(ast: &AST) -> FxHashMap<String, usize> {
    let mut params: FxHashMap<String, usize> = FxHashMap::default();
    for f in ast.iter_functions() {
        let n = f.params.len();
        params
            .entry(f.name.to_string())
            .and_modify(|most| *most = (*most).max(n))
            .or_insert(n);
    }
    params
}

struct Compiled {
    class: Option<String>,
    ast: AST,
    script: Rc<Script>,
}

pub struct ClassStore {
    dir: PathBuf,
    /// By file name as in messages.
    files: FxHashMap<String, Compiled>,
    classes: FxHashMap<String, String>,
    /// The folder of each file, where its `cs.Name` classes are found.
    dirs: HashMap<String, PathBuf>,
    entry: Option<String>,
    /// Every closure of every file loaded so far, old versions included: a closure made by
    /// old code keeps running the code it was made with.
    closures: AST,
    /// The file each closure was written in, by its name: what its `Fn("name")`s and its
    /// errors refer to.
    closure_files: FxHashMap<String, String>,
    /// Loaded files by canonical path, for reloads.
    paths: HashMap<PathBuf, String>,
    watcher: Option<Arc<Watcher>>,
    /// The calls rewrite.rs makes, to copy.
    calls: Rc<super::rewrite::Calls>,
}

/// What a reload of one file did.
pub enum Reloaded {
    /// Same text as loaded: nothing to do.
    Unchanged,
    /// The file is empty now (an editor between truncating and writing): ignored.
    Empty,
    /// The entry script compiled anew: its top level is to be run again.
    Entry(AST),
    /// A class compiled anew; `removed` are the functions the new version no longer has.
    Class { name: String, removed: Vec<String> },
    /// Another script (`run_script`) compiled anew; its functions are live, its top level is
    /// not run again.
    Script,
}

impl ClassStore {
    pub fn new(dir: PathBuf, watcher: Option<Arc<Watcher>>) -> Self {
        Self {
            paths: HashMap::new(),
            watcher,
            dir,
            files: FxHashMap::default(),
            classes: FxHashMap::default(),
            dirs: HashMap::new(),
            entry: None,
            closures: AST::empty(),
            closure_files: FxHashMap::default(),
            calls: Rc::new(super::rewrite::Calls::new()),
        }
    }

    /// Compiles the entry script; returns its top level to run.
    pub fn load_entry(
        &mut self,
        engine: &Engine,
        path: &Path,
        sources: &mut Sources,
    ) -> Result<AST, ScriptError> {
        let ast = self.load_script(engine, path, sources)?;
        self.entry = Some(display_name(path));
        Ok(ast)
    }

    /// Compiles another script (`run_script` in tests); its classes come from its folder.
    /// Returns its top level to run.
    pub fn load_script(
        &mut self,
        engine: &Engine,
        path: &Path,
        sources: &mut Sources,
    ) -> Result<AST, ScriptError> {
        let ast = compile_file(engine, path, sources)?;
        let file = display_name(path);
        log_callback_warnings(&ast, &file, false, sources);
        self.track(path, &file);
        self.dirs.insert(file.clone(), parent_dir(path));
        Ok(self.add(file, None, ast).top_level())
    }

    /// The class `name`, compiled on first use from `name.rhai` in the folder of `from` (the
    /// file whose code asks), else of the entry script. A class name is one class per worker:
    /// the first file loaded under a name serves every later `cs.Name`.
    pub fn load(
        &mut self,
        engine: &Engine,
        name: &str,
        from: Option<&str>,
        sources: &mut Sources,
    ) -> Result<Rc<Script>, ScriptError> {
        if let Some(s) = self.class(name) {
            return Ok(s);
        }
        let dir = from.and_then(|f| self.dirs.get(f)).unwrap_or(&self.dir);
        let path = class_path(dir, name)?;
        let ast = compile_file(engine, &path, sources)?;
        let file = display_name(&path);
        log_callback_warnings(&ast, &file, true, sources);
        self.track(&path, &file);
        self.dirs.insert(file.clone(), parent_dir(&path));
        self.classes.insert(name.to_string(), file.clone());
        Ok(self.add(file, Some(name.to_string()), ast))
    }

    /// The folder of `file` (where its relative paths point), else of the entry script.
    pub fn dir_of(&self, file: Option<&str>) -> PathBuf {
        file.and_then(|f| self.dirs.get(f))
            .unwrap_or(&self.dir)
            .clone()
    }

    pub fn class(&self, name: &str) -> Option<Rc<Script>> {
        let file = self.classes.get(name)?;
        self.files.get(file).map(|c| c.script.clone())
    }

    /// The script of `file`, if loaded.
    pub fn file(&self, file: &str) -> Option<Rc<Script>> {
        self.files.get(file).map(|c| c.script.clone())
    }

    /// The file closure `name` was written in.
    pub fn closure_file(&self, name: &str) -> Option<Rc<Script>> {
        let file = self.closure_files.get(name)?;
        self.files.get(file).map(|c| c.script.clone())
    }

    /// The script of `file`, or the entry script when unknown.
    pub fn file_or_entry(&self, file: Option<&str>) -> Option<Rc<Script>> {
        file.and_then(|f| self.files.get(f))
            .or_else(|| self.entry.as_ref().and_then(|e| self.files.get(e)))
            .map(|c| c.script.clone())
    }

    fn track(&mut self, path: &Path, file: &str) {
        if let Ok(canonical) = path.canonicalize() {
            self.paths.insert(canonical, file.to_string());
        }
        if let Some(w) = &self.watcher {
            w.watch(path);
        }
    }

    /// The file's own compiled code (without other files' closures), by canonical path.
    pub fn own_ast(&self, path: &Path) -> Option<AST> {
        let file = self.paths.get(path)?;
        self.files.get(file).map(|c| c.ast.clone())
    }

    /// Compiles a changed file again. On an error the old code stays, its source text too.
    pub fn reload(
        &mut self,
        engine: &Engine,
        path: &Path,
        sources: &mut Sources,
    ) -> Result<Reloaded, ScriptError> {
        let Some(file) = self.paths.get(path).cloned() else {
            return Ok(Reloaded::Unchanged);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScriptError::plain(&file, format!("cannot read: {e}")))?;
        if text.trim().is_empty() {
            return Ok(Reloaded::Empty);
        }
        if sources.get(&file) == Some(text.as_str()) {
            return Ok(Reloaded::Unchanged);
        }
        let old_text = sources.get(&file).map(str::to_string);
        let mut ast = match compile_text(engine, &file, text, sources) {
            Ok(ast) => ast,
            Err(e) => {
                if let Some(old) = old_text {
                    sources.insert(&file, old);
                }
                return Err(e);
            }
        };
        ast.set_source(file.as_str());
        let compiled = &self.files[&file];
        let class = compiled.class.clone();
        log_callback_warnings(&ast, &file, class.is_some(), sources);
        let old_params = param_counts(&compiled.ast);
        let new_params = param_counts(&ast);
        let mut removed: Vec<String> = old_params
            .keys()
            .filter(|f| !is_closure(f) && !new_params.contains_key(*f))
            .cloned()
            .collect();
        removed.sort();
        let script = self.add(file.clone(), class.clone(), ast);
        Ok(match class {
            Some(name) => Reloaded::Class { name, removed },
            None if self.entry.as_deref() == Some(file.as_str()) => {
                Reloaded::Entry(script.top_level())
            }
            None => Reloaded::Script,
        })
    }

    fn add(&mut self, file: String, class: Option<String>, ast: AST) -> Rc<Script> {
        // (`clone_functions_only_filtered` would keep every function: Rhai 1.27 skips the
        // filter when the target module is empty.)
        let mut new_closures = ast.clone();
        new_closures.clear_statements();
        new_closures.retain_functions(|_, _, name, _| is_closure(name));
        for f in new_closures.iter_functions() {
            self.closure_files
                .entry(f.name.to_string())
                .or_insert_with(|| file.clone());
        }
        self.closures = self.closures.merge(&new_closures);
        let placeholder = Rc::new(Script::new(
            String::new(),
            None,
            AST::empty(),
            &AST::empty(),
            self.calls.clone(),
        ));
        self.files.insert(
            file.clone(),
            Compiled {
                class,
                ast,
                script: placeholder,
            },
        );
        // Every file now sees the new closures too.
        for (name, compiled) in self.files.iter_mut() {
            compiled.script = Rc::new(Script::new(
                name.clone(),
                compiled.class.clone(),
                compiled.ast.clone(),
                &self.closures,
                self.calls.clone(),
            ));
        }
        self.files[&file].script.clone()
    }
}

/// Logs the `on…` names of a freshly compiled file that wshost will never call (lint.rs).
fn log_callback_warnings(ast: &AST, file: &str, class_file: bool, sources: &Sources) {
    for w in super::lint::callback_warnings(ast, file, class_file, sources) {
        tracing::warn!(location = %w.location(), "{w}{}", w.snippet());
    }
}

/// The folder of a script file ("." for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The file of class `name` in `dir`; the name must be a plain identifier.
pub fn class_path(dir: &Path, name: &str) -> Result<PathBuf, ScriptError> {
    let valid = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !valid {
        return Err(ScriptError::plain(
            &display_name(dir),
            format!("{name:?} is not a class name"),
        ));
    }
    Ok(dir.join(format!("{name}.rhai")))
}

/// Reads and compiles a script file, naming it in errors as `display_name` does.
pub fn compile_file(
    engine: &Engine,
    path: &Path,
    sources: &mut Sources,
) -> Result<AST, ScriptError> {
    let name = display_name(path);
    let text = std::fs::read_to_string(path)
        .map_err(|e| ScriptError::plain(&name, format!("cannot read: {e}")))?;
    let mut ast = compile_text(engine, &name, text, sources)?;
    ast.set_source(name);
    Ok(ast)
}

fn compile_text(
    engine: &Engine,
    name: &str,
    text: String,
    sources: &mut Sources,
) -> Result<AST, ScriptError> {
    let result = super::lint::compile(engine, &text);
    sources.insert(name, text);
    result.map_err(|e| ScriptError::from_parse(&e, name, sources))
}

/// Class names a compiled script uses as `cs.Name`, in order of first use, each with where:
/// read from its code, so a `cs.Name` in a comment or a string is not one.
pub fn referenced_classes(ast: &AST) -> Vec<(String, rhai::Position)> {
    let mut names: Vec<(String, rhai::Position)> = Vec::new();
    ast.walk(&mut |path| {
        if let Some(rhai::ASTNode::Expr(rhai::Expr::Dot(x, _, _))) = path.last()
            && let rhai::Expr::Variable(v, _, _) = &x.lhs
            && v.1.as_str() == "cs"
        {
            let property = match &x.rhs {
                rhai::Expr::Dot(inner, ..) | rhai::Expr::Index(inner, ..) => &inner.lhs,
                other => other,
            };
            if let rhai::Expr::Property(p, pos) = property {
                let name = p.2.to_string();
                if !names.iter().any(|(n, _)| *n == name) {
                    names.push((name, *pos));
                }
            }
        }
        true
    });
    names
}

// ---------------------------------------------------------------------------------------
// `cs` in scripts: `cs.Name` is the class in `Name.rhai`, `cs.Name.new(…)` an instance.

type Res<T> = Result<T, Box<rhai::EvalAltResult>>;

/// The global `cs`: `cs.Name` is a class.
#[derive(Clone)]
pub struct ClassStoreRef;

/// `cs.Name`: `cs.Name.new(…)` makes an instance.
#[derive(Clone)]
pub struct ClassRef {
    class: Rc<Script>,
}
pub(super) fn register(engine: &mut Engine, ctx: &Rc<Ctx>) {
    engine.register_type_with_name::<ClassStoreRef>("ClassStore");
    engine.register_type_with_name::<ClassRef>("Class");
    let c = ctx.clone();
    engine.register_indexer_get(
        move |ncc: NativeCallContext, _: &mut ClassStoreRef, name: &str| -> Res<ClassRef> {
            let class = c
                .classes
                .borrow_mut()
                .load(
                    ncc.engine(),
                    name,
                    ncc.call_source(),
                    &mut c.sources.borrow_mut(),
                )
                .map_err(|e| api_error(format!("cs.{name}: {e}")))?;
            Ok(ClassRef { class })
        },
    );
    engine.register_get("name", |c: &mut ClassRef| ref_name(c));
    engine.register_fn("to_string", |c: &mut ClassRef| {
        format!("cs.{}", ref_name(c))
    });
    // `cs.Name.new(…)` with any number of constructor arguments (up to a bound Rhai's
    // registration needs: one signature per count).
    for count in 0..=MAX_CONSTRUCTOR_ARGS {
        let mut types = vec![std::any::TypeId::of::<ClassRef>()];
        types.extend(std::iter::repeat_n(
            std::any::TypeId::of::<Dynamic>(),
            count,
        ));
        let c = ctx.clone();
        engine.register_raw_fn("new", types, move |ncc, args| {
            let class = args[0].clone().cast::<ClassRef>();
            let rest = args[1..].iter_mut().map(|a| std::mem::take(*a)).collect();
            instantiate(&ncc, &c, &class, rest)
        });
    }
}

fn ref_name(c: &ClassRef) -> String {
    c.class.class.clone().unwrap_or_default()
}

/// The most arguments `cs.Name.new(…)` takes.
const MAX_CONSTRUCTOR_ARGS: usize = 16;

/// A new instance of a class: an object naming its class, built by `constructor`, which takes
/// exactly the arguments it declares.
fn instantiate(
    ncc: &NativeCallContext,
    ctx: &Ctx,
    c: &ClassRef,
    mut args: Vec<Dynamic>,
) -> Res<Dynamic> {
    let class = &c.class;
    let name = ref_name(c);
    let object = ctx
        .objects
        .make(Some(name.as_str().into()), Some(&class.file), Map::new());
    let mut this = object.into_dynamic();
    match class.params("constructor") {
        Some(n) if n != args.len() => {
            return Err(api_error(format!(
                "cs.{name}.new: the constructor takes {n} argument(s), got {}",
                args.len()
            )));
        }
        Some(_) => {
            let level = ncc.call_level() + 1;
            let current = this.clone();
            let _ = ctx
                .this
                .with(&current, || {
                    class.call(ncc.engine(), &mut this, "constructor", &mut args, level)
                })
                .map_err(|e| {
                    super::methods::in_function(e, &format!("{name}.constructor"), class)
                })?;
        }
        None if !args.is_empty() => {
            return Err(api_error(format!(
                "cs.{name}.new: {name} has no constructor, so it takes no arguments, got {}",
                args.len()
            )));
        }
        None => {}
    }
    Ok(this)
}
