//! `wshost test`: finds the tests in `.rhai` files and runs each on a fresh script worker.
//!
//! A file's tests are its `fn test_…()` functions (no parameters), each run alone after the
//! file's top level; a file without any is one test, its top level. Tests share one async
//! runtime and run `jobs` at a time. Output: one line per test, the failure with its
//! location, and a last line `N passed, N failed`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::net::{NetConfig, Network};
use crate::script::{self, Budget, Defaults, Exit, ScriptError, TestCase, WorkerOptions};

/// What `wshost test` was asked to do.
#[derive(Clone, Debug)]
pub struct TestConfig {
    /// Files, or folders searched for `*.rhai` (recursively).
    pub paths: Vec<PathBuf>,
    /// Run only tests whose name contains this.
    pub filter: Option<String>,
    pub jobs: usize,
    pub timeout: Duration,
}

/// How many tests passed and failed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

struct Test {
    name: String,
    file: PathBuf,
    function: Option<String>,
}

/// Runs the tests, printing as they end; the summary line comes last.
pub fn run(config: &TestConfig) -> anyhow::Result<Summary> {
    let mut files = Vec::new();
    for path in &config.paths {
        collect(path, &mut files).with_context(|| format!("cannot read {}", path.display()))?;
    }
    let mut summary = Summary::default();
    let mut tests = Vec::new();
    for file in files {
        let display = script::display_name(&file);
        match discover(&file) {
            Ok(found) => tests.extend(found),
            Err(_)
                if config
                    .filter
                    .as_ref()
                    .is_some_and(|f| !display.contains(f.as_str())) => {}
            Err(err) => {
                // A file that does not compile is a failed test of its own.
                print_result(&display, Duration::ZERO, Err(&err));
                summary.failed += 1;
            }
        }
    }
    if let Some(f) = &config.filter {
        tests.retain(|t| t.name.contains(f.as_str()));
    }

    let runtime = crate::host::net_runtime()?;
    let net = Network::new(runtime.handle().clone(), NetConfig::default())?;
    let queue = Arc::new(Mutex::new(VecDeque::from(tests)));
    let (tx, rx) = std::sync::mpsc::channel();
    let mut pool = Vec::new();
    for _ in 0..config.jobs.max(1) {
        let queue = queue.clone();
        let tx = tx.clone();
        let net = net.clone();
        let timeout = config.timeout;
        pool.push(std::thread::spawn(move || {
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some(test) = next else { break };
                let started = Instant::now();
                let result = run_one(&net, &test, timeout);
                let _ = tx.send((test.name, started.elapsed(), result));
            }
        }));
    }
    drop(tx);
    for (name, elapsed, result) in rx {
        print_result(&name, elapsed, result.as_ref().map(|_| ()));
        match result {
            Ok(()) => summary.passed += 1,
            Err(_) => summary.failed += 1,
        }
    }
    for t in pool {
        let _ = t.join();
    }
    runtime.shutdown_timeout(Duration::from_millis(500));
    println!("{} passed, {} failed", summary.passed, summary.failed);
    Ok(summary)
}

fn print_result(name: &str, elapsed: Duration, result: Result<(), &ScriptError>) {
    let ms = elapsed.as_millis();
    match result {
        Ok(()) => println!("test {name} ... ok ({ms} ms)"),
        Err(err) => {
            println!("test {name} ... FAILED ({ms} ms)");
            for line in format!("{err:#}").lines() {
                println!("    {line}");
            }
        }
    }
}

fn run_one(net: &Arc<Network>, test: &Test, timeout: Duration) -> Result<(), ScriptError> {
    let options = WorkerOptions {
        entry: test.file.clone(),
        args: Vec::new(),
        defaults: Defaults {
            host: "127.0.0.1".into(),
            port: 0,
            max_connections: crate::host::DEFAULT_MAX_CONNECTIONS,
            static_root: None,
            tls: None,
        },
        budget: Budget::default(),
        test: Some(TestCase {
            function: test.function.clone(),
            timeout,
        }),
        watch: None,
        index: 0,
        port_plan: Default::default(),
        started: None,
        extend_engine: None,
    };
    let worker = script::spawn(net.clone(), options)
        .map_err(|e| ScriptError::plain(&test.name, format!("cannot start a worker: {e}")))?;
    match worker.thread.join() {
        Ok(Exit::Test(result)) => result,
        Ok(other) => Err(ScriptError::plain(
            &test.name,
            format!("unexpected end: {other:?}"),
        )),
        Err(_) => Err(ScriptError::plain(&test.name, "the test's worker panicked")),
    }
}

/// `*.rhai` files under `path` (or `path` itself), sorted.
fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out)?;
        } else if p.extension().is_some_and(|e| e == "rhai") {
            out.push(p);
        }
    }
    Ok(())
}

/// The tests of one file: its `test_…` functions without parameters, by name; or the file.
fn discover(file: &Path) -> Result<Vec<Test>, ScriptError> {
    let ast = script::compile_only(file)?;
    let display = script::display_name(file);
    let mut functions: Vec<String> = ast
        .iter_functions()
        .filter(|f| f.name.starts_with("test_") && f.params.is_empty())
        .map(|f| f.name.to_string())
        .collect();
    functions.sort();
    functions.dedup();
    if functions.is_empty() {
        return Ok(vec![Test {
            name: display,
            file: file.to_path_buf(),
            function: None,
        }]);
    }
    Ok(functions
        .into_iter()
        .map(|f| Test {
            name: format!("{display}::{f}"),
            file: file.to_path_buf(),
            function: Some(f),
        })
        .collect())
}
