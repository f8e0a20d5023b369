//! The class store behind `cs`: `Name.rhai` in the entry script's folder is the class `cs.Name`.
//!
//! A class is compiled once, on first use, and kept with the number of parameters of each of
//! its methods, so a callback declared with fewer parameters (`fn onOpen(ws)`) still gets
//! called. Instances are object maps carrying their class name under [`CLASS_KEY`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rhai::{AST, Engine};

use super::error::{ScriptError, Sources, display_name};

/// The property of an instance that names its class.
pub const CLASS_KEY: &str = "__class";

/// One compiled class file.
pub struct Class {
    pub name: String,
    pub file: String,
    pub ast: AST,
    params: HashMap<String, usize>,
}

impl Class {
    /// The number of parameters of method `name`, if the class has it.
    pub fn params(&self, name: &str) -> Option<usize> {
        self.params.get(name).copied()
    }
}

/// Parameter counts of the functions of `ast` (the first definition of each name wins).
pub fn param_counts(ast: &AST) -> HashMap<String, usize> {
    let mut params = HashMap::new();
    for f in ast.iter_functions() {
        params.entry(f.name.to_string()).or_insert(f.params.len());
    }
    params
}

pub struct ClassStore {
    dir: PathBuf,
    classes: HashMap<String, Rc<Class>>,
}

impl ClassStore {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            classes: HashMap::new(),
        }
    }

    /// The class `name`, compiled from `dir/name.rhai` on first use.
    pub fn load(
        &mut self,
        engine: &Engine,
        name: &str,
        sources: &mut Sources,
    ) -> Result<Rc<Class>, ScriptError> {
        if let Some(c) = self.classes.get(name) {
            return Ok(c.clone());
        }
        let path = class_path(&self.dir, name)?;
        let ast = compile_file(engine, &path, sources)?;
        let class = Rc::new(Class {
            name: name.to_string(),
            file: display_name(&path),
            params: param_counts(&ast),
            ast,
        });
        self.classes.insert(name.to_string(), class.clone());
        Ok(class)
    }

    pub fn get(&self, name: &str) -> Option<Rc<Class>> {
        self.classes.get(name).cloned()
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
    sources.insert(&name, text.clone());
    let mut ast = engine
        .compile(&text)
        .map_err(|e| ScriptError::from_parse(&e, &name, sources))?;
    ast.set_source(name);
    Ok(ast)
}

/// Class names a script mentions as `cs.Name`, in order of first mention.
pub fn referenced_classes(text: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("cs.") {
        let start = i + at;
        i = start + 3;
        let standalone = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        };
        if !standalone {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}
