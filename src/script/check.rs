//! `wshost check`: compile scripts and the classes they name, without running anything.

use std::path::{Path, PathBuf};

use super::classes::{class_path, compile_file, referenced_classes};
use super::engine::{Budget, Deadline, new_engine};
use super::error::{ScriptError, Sources, display_name};
use super::lint::callback_warnings;

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
    // Files reached as `cs.Name`: their functions are methods, checked as callback names.
    let mut classes_named: Vec<PathBuf> = Vec::new();
    let mut out = Vec::new();
    while let Some(path) = pop_front(&mut queue) {
        let key = path.canonicalize().unwrap_or_else(|_| path.clone());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key.clone());
        let compiled = compile_file(&engine, &path, &mut sources);
        let classes = compiled
            .as_ref()
            .map(referenced_classes)
            .unwrap_or_default();
        if let Ok(ast) = &compiled {
            // Printed here as found: they do not fail the check (exit 0).
            let file = display_name(&path);
            // A class is a file reached as `cs.Name`, or named like one on the command line.
            let capitalised = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.chars().next())
                .is_some_and(|c| c.is_ascii_uppercase());
            let class_file = capitalised || classes_named.contains(&key);
            for w in callback_warnings(ast, &file, class_file, &sources) {
                eprintln!("warning: {w:#}");
            }
        }
        let result = compiled.map(|_| ());
        if result.is_ok() {
            let dir = path.parent().unwrap_or(Path::new("."));
            for (name, pos) in classes {
                match class_path(dir, &name) {
                    Ok(p) if p.exists() => {
                        classes_named.push(p.canonicalize().unwrap_or_else(|_| p.clone()));
                        queue.push(p)
                    }
                    Ok(p) => out.push(Checked {
                        file: display_name(&path),
                        result: Err(ScriptError::at_position(
                            &display_name(&path),
                            pos,
                            format!("cs.{name}: no class file {}", display_name(&p)),
                            &sources,
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
