//! The script worker: one OS thread that owns a Rhai engine and the objects its scripts made.
//!
//! It runs the entry script's top level, then turns each [`Event`] (and each due timer) into
//! one callback, one at a time. A callback that fails is logged with file:line:col and handed
//! to the handler's `onError`; the worker goes on with the next event. It ends when nothing
//! the scripts created is left (or after a shutdown has closed everything).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rhai::{AST, Dynamic, Engine, Scope};

use super::api;
use super::classes::ClassStore;
use super::dispatch::Dispatch;
use super::engine::{Budget, Deadline, new_engine};
use super::error::{ScriptError, Sources, display_name};
use super::memory::MemoryWatch;
use super::state::{Ctx, Defaults};
use super::top_level::TopLevel;
use crate::event::Event;
use crate::net::Network;

/// What a worker needs to start.
#[derive(Clone)]
pub struct WorkerOptions {
    pub entry: PathBuf,
    /// The script's `ARGS`.
    pub args: Vec<String>,
    pub defaults: Defaults,
    pub budget: Budget,
    /// Run as one test of `wshost test` instead of serving.
    pub test: Option<TestCase>,
    /// Watch the scripts and reload them when they change, with this debounce.
    pub watch: Option<std::time::Duration>,
    /// Which worker of the host this is, and the ports of the first one's servers.
    pub index: usize,
    pub port_plan: Arc<std::sync::Mutex<Vec<u16>>>,
    /// Told once the entry script's top level has run (or failed).
    pub started: Option<std::sync::mpsc::Sender<()>>,
    /// The embedding program's own functions: run on the engine after the script API.
    pub extend_engine: Option<ExtendEngine>,
}

/// Adds an embedding program's own functions to a worker's engine.
pub type ExtendEngine = Arc<dyn Fn(&mut Engine) + Send + Sync>;

/// One test: a `test_…` function of the entry script (or its top level when None).
#[derive(Clone, Debug)]
pub struct TestCase {
    pub function: Option<String>,
    pub timeout: std::time::Duration,
}

/// How a worker ended.
#[derive(Debug)]
pub enum Exit {
    /// Everything the scripts created has ended.
    Finished,
    /// The entry script did not compile or its top level failed.
    ScriptFailed(ScriptError),
    /// A server of the entry script's top level could not listen.
    ListenFailed(Vec<String>),
    /// A test ended: passed, or failed with this error.
    Test(Result<(), ScriptError>),
}

/// A running worker: send it events; join it for its [`Exit`].
pub struct WorkerHandle {
    pub events: flume::Sender<Event>,
    pub thread: std::thread::JoinHandle<Exit>,
}

/// Starts a worker thread running `options.entry`.
pub fn spawn(net: Arc<Network>, options: WorkerOptions) -> std::io::Result<WorkerHandle> {
    let (tx, rx) = flume::unbounded();
    let own = tx.clone();
    let thread = std::thread::Builder::new()
        .name("wshost-script".into())
        // Rhai recursion runs on the native stack; its call-level limit keeps within this.
        // Dropping or cloning data nested deep (state grown one level per message) recurses
        // too, with no limit to check: a large stack is the bound. It is reserved, not used:
        // only the pages touched count.
        .stack_size(256 << 20)
        .spawn(move || match Worker::new(net, options, own, rx) {
            Ok(worker) => worker.run(),
            Err(e) => Exit::ScriptFailed(ScriptError::plain("wshost", format!("{e:#}"))),
        })?;
    Ok(WorkerHandle { events: tx, thread })
}

struct Worker {
    /// Runs the top level and callbacks.
    engine: Rc<Engine>,
    ctx: Rc<Ctx>,
    entry_path: PathBuf,
    test: Option<TestCase>,
    /// Told once the top level ran well; dropped (the host stops waiting) when it did not.
    started: std::cell::Cell<Option<std::sync::mpsc::Sender<()>>>,
}

impl Worker {
    fn new(
        net: Arc<Network>,
        options: WorkerOptions,
        own: flume::Sender<Event>,
        rx: flume::Receiver<Event>,
    ) -> anyhow::Result<Self> {
        let event_loop = crate::event_loop::EventLoop::new()?;
        let events = crate::event_loop::Events::new(event_loop.id(), own.clone());
        let deadline = Deadline::new(net.interrupt().clone());
        let dir = match options.entry.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let watcher = options.watch.and_then(|debounce| {
            crate::watch::Watcher::start(own.clone(), debounce)
                .map_err(|e| tracing::warn!("hot reload is off: cannot watch files: {e}"))
                .ok()
        });
        let ctx = Rc::new(Ctx {
            net,
            event_loop,
            events,
            defaults: std::cell::RefCell::new(options.defaults),
            registry: Default::default(),
            classes: std::cell::RefCell::new(ClassStore::new(dir, watcher)),
            top_level: TopLevel::new(options.index, options.port_plan.clone()),
            sources: std::cell::RefCell::new(Sources::default()),
            rx,
            entry_name: display_name(&options.entry),
            budget: options.budget,
            deadline: deadline.clone(),
            shutting_down: std::cell::Cell::new(false),
            memory: MemoryWatch::default(),
            this: Default::default(),
            objects: Default::default(),
            testing: options.test.is_some(),
            test_failure: Default::default(),
            spares: Default::default(),
        });
        let engine = {
            let mut engine = new_engine(&ctx.budget, &deadline);
            api::register(&mut engine, &ctx, &options.args);
            if let Some(extend) = &options.extend_engine {
                extend(&mut engine);
            }
            if options.test.is_some() {
                super::testing::register(&mut engine, &ctx);
            }
            Rc::new(engine)
        };
        // The events of this worker's own sockets are dispatched where they arise.
        let (e, c) = (engine.clone(), ctx.clone());
        ctx.event_loop.install(Rc::new(move |event| {
            Dispatch {
                engine: &e,
                ctx: &c,
            }
            .dispatch_now(event)
        }));
        Ok(Self {
            engine,
            ctx,
            entry_path: options.entry,
            test: options.test,
            started: std::cell::Cell::new(options.started),
        })
    }

    /// Runs the file's top level, then the test function; then closes whatever the test left
    /// open (bounded) and reports.
    fn run_test(&self, test: TestCase) -> Exit {
        let entry = match self.compile_entry() {
            Ok(ast) => ast,
            Err(e) => return Exit::Test(Err(e)),
        };
        self.ctx.deadline.start_for(test.timeout);
        let mut result = super::engine::catch_panic(|| {
            self.engine.run_ast_with_scope(&mut Scope::new(), &entry)
        })
        .map(|_| ());
        if let (Ok(_), Some(function)) = (&result, &test.function) {
            let script = self.ctx.classes.borrow().file_or_entry(None);
            if let Some(script) = script {
                result = script
                    .call(
                        &self.engine,
                        &mut Dynamic::UNIT.clone(),
                        function,
                        &mut [],
                        1,
                    )
                    .map(|_| ());
            }
        }
        self.ctx.deadline.clear();
        let result = result.map_err(|e| {
            let mut err =
                ScriptError::from_eval(&e, &self.ctx.entry_name, &self.ctx.sources.borrow());
            if err.message.contains("time budget") || err.message.contains("past its time limit") {
                err.message = format!("the test timed out after {:?}", test.timeout);
            }
            err
        });
        // Close what the test left open; give the peers a bounded time to answer.
        let dispatch = self.dispatch();
        dispatch.shutdown();
        let until = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            dispatch.finish_stopped_servers();
            if !self.ctx.registry.borrow().alive() || Instant::now() >= until {
                break;
            }
            dispatch.step(Some(until));
        }
        // A callback's failure is the test's (a `wait_until` that gave up because of it says
        // less).
        match self.ctx.test_failure.borrow_mut().take() {
            Some(failure) => Exit::Test(Err(failure)),
            None => Exit::Test(result),
        }
    }

    fn compile_entry(&self) -> Result<AST, ScriptError> {
        self.ctx.classes.borrow_mut().load_entry(
            &self.engine,
            &self.entry_path,
            &mut self.ctx.sources.borrow_mut(),
        )
    }

    fn dispatch(&self) -> Dispatch<'_> {
        Dispatch {
            engine: &self.engine,
            ctx: &self.ctx,
        }
    }

    fn run(self) -> Exit {
        let exit = self.run_to_end();
        // Drops the dispatch (it holds the engine and the context), then the loop's sockets.
        self.ctx.event_loop.uninstall();
        exit
    }

    fn run_to_end(&self) -> Exit {
        if let Some(test) = self.test.clone() {
            return self.run_test(test);
        }
        let entry = match self.compile_entry() {
            Ok(ast) => ast,
            Err(e) => return Exit::ScriptFailed(e),
        };

        let (top, failures) = self.ctx.top_level.first_run(|| {
            self.ctx.deadline.start(&self.ctx.budget);
            let top = super::engine::catch_panic(|| {
                self.engine.run_ast_with_scope(&mut Scope::new(), &entry)
            });
            self.ctx.deadline.clear();
            top
        });
        drop(entry);

        let exit = if let Err(e) = top {
            let err = ScriptError::from_eval(&e, &self.ctx.entry_name, &self.ctx.sources.borrow());
            Some(Exit::ScriptFailed(err))
        } else {
            (!failures.is_empty()).then_some(Exit::ListenFailed(failures))
        };
        // Only a good start lets the host start the other workers; a failed one lets the host
        // go on at once to wait for this worker's end (signals included), as it stops.
        let started = self.started.take();
        match (&exit, started) {
            (None, Some(started)) => {
                let _ = started.send(());
            }
            (Some(_), _) => self.dispatch().shutdown(),
            _ => {}
        }
        self.dispatch().event_loop();
        exit.unwrap_or(Exit::Finished)
    }
}
