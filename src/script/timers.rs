//! Timers of the script API: `setTimeout`, `setInterval`, `clearTimeout`, `clearInterval`
//! (and `now()`), the queue of pending timers, and running the due ones on the worker.

use super::error::api_error;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, FnPtr, NativeCallContext};

use super::dispatch::Dispatch;
use super::error::ScriptError;
use super::state::Ctx;

type Res<T> = Result<T, Box<EvalAltResult>>;

/// A `setTimeout` / `setInterval` callback.
pub struct Timer {
    pub callback: FnPtr,
    pub every: Option<Duration>,
    pub home: Option<Rc<str>>,
    /// `this` where `setTimeout` was called (objects.rs), for the callback.
    pub this: Option<Dynamic>,
}

/// Pending timers, by due time (ties in creation order).
#[derive(Default)]
pub struct Timers {
    next_id: i64,
    queue: BTreeMap<(Instant, i64), Timer>,
    due: HashMap<i64, Instant>,
    /// The timer whose callback runs now, and whether that callback cleared it.
    running: Option<(i64, bool)>,
}

impl Timers {
    pub fn add(&mut self, after: Duration, timer: Timer) -> i64 {
        let id = self.new_id();
        self.insert(id, Instant::now() + after, timer);
        id
    }

    /// An id no timer has had.
    pub fn new_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Every pending timer's callback, to give it new code (reload.rs).
    pub fn callbacks_mut(&mut self) -> impl Iterator<Item = &mut FnPtr> {
        self.queue.values_mut().map(|t| &mut t.callback)
    }

    /// What every pending timer holds: its callback (and what it captured), its `this`.
    pub fn each_value(&self, f: &mut dyn FnMut(&Dynamic)) {
        for t in self.queue.values() {
            for v in t.callback.iter_curry() {
                f(v);
            }
            if let Some(this) = &t.this {
                f(this);
            }
        }
    }

    pub fn insert(&mut self, id: i64, at: Instant, timer: Timer) {
        self.queue.insert((at, id), timer);
        self.due.insert(id, at);
    }

    /// Cancels timer `id`; true if it was pending (or running now).
    pub fn cancel(&mut self, id: i64) -> bool {
        let mut found = false;
        if let Some((running, cleared)) = &mut self.running
            && *running == id
        {
            *cleared = true;
            found = true;
        }
        if let Some(at) = self.due.remove(&id) {
            self.queue.remove(&(at, id));
            found = true;
        }
        found
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(at, _)| *at)
    }

    /// Takes the earliest timer if it is due.
    pub fn pop_due(&mut self, now: Instant) -> Option<(i64, Timer)> {
        let (&(at, id), _) = self.queue.iter().next()?;
        if at > now {
            return None;
        }
        self.due.remove(&id);
        self.queue.remove(&(at, id)).map(|t| (id, t))
    }

    /// Marks timer `id` as running its callback (None when it is done).
    pub fn set_running(&mut self, id: Option<i64>) {
        self.running = id.map(|id| (id, false));
    }

    /// True if the running timer's callback cleared it.
    pub fn running_cleared(&self) -> bool {
        self.running.is_some_and(|(_, cleared)| cleared)
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.due.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

pub(super) fn register(engine: &mut Engine, ctx: &Rc<Ctx>) {
    // Wall-clock time, as JavaScript's Date.now(): milliseconds since the Unix epoch.
    engine.register_fn("now", || -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    });
    for (name, repeat) in [("setTimeout", false), ("setInterval", true)] {
        let c = ctx.clone();
        engine.register_fn(
            name,
            move |ncc: NativeCallContext, callback: FnPtr, ms: i64| -> Res<i64> {
                if ms < 0 {
                    return Err(api_error(format!(
                        "{}: delay must be >= 0 ms, got {ms}",
                        ncc.fn_name()
                    )));
                }
                // Once the host is stopping no timer fires: a retry scheduled from
                // `onTerminate` must not hold the stop up.
                if c.shutting_down.get() {
                    return Ok(c.registry.borrow_mut().timers.new_id());
                }
                let delay = Duration::from_millis(ms as u64);
                let timer = Timer {
                    callback,
                    // An interval of 0 would spin: at least 1 ms between runs.
                    every: repeat.then(|| delay.max(Duration::from_millis(1))),
                    home: ncc.call_source().map(Rc::from),
                    this: c.this.current(),
                };
                let id = c.registry.borrow_mut().timers.add(delay, timer);
                // The loop may be waiting for a later timer (or for nothing).
                c.event_loop.wake();
                c.top_level.made_timer(id);
                Ok(id)
            },
        );
    }
    for name in ["clearTimeout", "clearInterval"] {
        let c = ctx.clone();
        engine.register_fn(name, move |id: i64| {
            c.registry.borrow_mut().timers.cancel(id);
        });
    }
}

impl Dispatch<'_> {
    /// Runs the timers that are due, each once; an interval is put back for its next run.
    pub fn run_due_timers(&self) {
        let now = Instant::now();
        loop {
            let Some((id, timer)) = self.ctx.registry.borrow_mut().timers.pop_due(now) else {
                break;
            };
            self.ctx.registry.borrow_mut().timers.set_running(Some(id));
            let script = self
                .ctx
                .classes
                .borrow()
                .file_or_entry(timer.home.as_deref());
            if let Some(script) = script {
                self.ctx.deadline.start(&self.ctx.budget);
                // A closure made in a method or callback sees its object as `this`.
                let result = super::engine::catch_panic(|| match &timer.this {
                    Some(this) => self.ctx.this.with(this, || {
                        let mut this = this.clone();
                        timer.callback.call_as_method::<Dynamic>(
                            self.engine,
                            &script.ast,
                            &mut this,
                            (),
                        )
                    }),
                    None => timer.callback.call::<Dynamic>(self.engine, &script.ast, ()),
                });
                self.ctx.deadline.clear();
                if let Err(e) = result {
                    let err = ScriptError::from_eval(&e, &script.file, &self.ctx.sources.borrow());
                    // Nothing takes a timer's error: uncaught.
                    self.note_test_failure(&err, &Dynamic::UNIT, "timer", || format!("timer {id}"));
                    tracing::error!(
                        timer = id,
                        location = %err.location(),
                        "{err} (timer {id}){}",
                        err.snippet()
                    );
                }
            }
            let mut reg = self.ctx.registry.borrow_mut();
            let cleared = reg.timers.running_cleared();
            reg.timers.set_running(None);
            if let Some(every) = timer.every
                && !cleared
                && !self.ctx.shutting_down.get()
            {
                reg.timers.insert(id, Instant::now() + every, timer);
            }
        }
    }
}
