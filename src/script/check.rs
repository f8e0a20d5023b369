//! `wshost check`: compile scripts and the classes they name, without running anything.

use std::path::{Path, PathBuf};

use super::classes::{class_path, compile_file, referenced_classes};
use super::engine::{Budget, Deadline, new_engine};
use super::error::{ScriptError, Sources, display_name};

/// Compiles one file with wshost's syntax, without running it.
pub fn compile_only(path: &Path) -> Result<rhai::AST, ScriptError> {
    let engine = new_engine(&Budget::default(), &Deadline::default());
    compile_file(&engine, path, &mut Sources::default())
}

/// The outcome for one file.
pub struct Checked {
    pub file: String,
    pub result: Result<(), ScriptError>,
}

/// Compiles each file, then every class (`cs.Name`) it mentions from its folder, once each.
pub fn check(files: &[PathBuf]) -> Vec<Checked> {
    let engine = new_engine(&Budget::default(), &Deadline::default());
    let mut sources = Sources::default();
    let mut queue: Vec<PathBuf> = files.to_vec();
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    while let Some(path) = pop_front(&mut queue) {
        let key = path.canonicalize().unwrap_or_else(|_| path.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let result = compile_file(&engine, &path, &mut sources).map(|_| ());
        if result.is_ok() {
            let dir = path.parent().unwrap_or(Path::new("."));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for name in referenced_classes(&text) {
                match class_path(dir, &name) {
                    Ok(p) if p.exists() => queue.push(p),
                    Ok(p) => out.push(Checked {
                        file: display_name(&path),
                        result: Err(ScriptError::plain(
                            &display_name(&path),
                            format!("cs.{name}: no class file {}", display_name(&p)),
                        )),
                    }),
                    Err(e) => out.push(Checked {
                        file: display_name(&path),
                        result: Err(e),
                    }),
                }
            }
        }
        out.push(Checked {
            file: display_name(&path),
            result,
        });
    }
    out
}

fn pop_front(v: &mut Vec<PathBuf>) -> Option<PathBuf> {
    (!v.is_empty()).then(|| v.remove(0))
}
