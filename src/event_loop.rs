//! One event loop per script worker: the thread that runs the worker's Rhai engine also runs
//! the I/O of its connections, as Node, Bun and uWS run one loop per thread.
//!
//! A worker owns a tokio current-thread runtime. The acceptor hands each new TCP connection to
//! a worker's loop; its socket task then runs on the worker's own thread, and an event it
//! raises (a message in, a close) is dispatched to the worker's callbacks right there, with no
//! queue and no thread hop: message in → callback → `send` → the socket's writer, on one
//! thread. Events that come from elsewhere (another worker's socket, the file watcher, a stop)
//! go through the worker's queue.
//!
//! Nothing here knows about Rhai: the worker installs its dispatch as a plain `Fn(Event)`.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::Notify;

use crate::event::Event;

/// Identifies an event loop (a worker) across the process.
pub type LoopId = u64;

/// A worker's handling of one event.
type Dispatch = Rc<dyn Fn(Event)>;

thread_local! {
    /// The loop running on this thread and its worker's dispatch, while the worker runs.
    static LOCAL: RefCell<Option<(LoopId, Dispatch)>> = const { RefCell::new(None) };
}

/// Where the events of a connection go: its worker, reached directly when the socket runs on
/// the worker's own thread, else through the worker's queue.
#[derive(Clone, Debug)]
pub struct Events {
    worker: LoopId,
    queue: flume::Sender<Event>,
}

impl Events {
    pub fn new(worker: LoopId, queue: flume::Sender<Event>) -> Self {
        Self { worker, queue }
    }

    /// The worker the events go to.
    pub fn worker(&self) -> LoopId {
        self.worker
    }

    /// Hands `event` to the worker: at once on its own thread, else queued. False when the
    /// worker is gone.
    pub async fn deliver(&self, event: Event) -> bool {
        match self.dispatch_here(event) {
            None => true,
            // Boxed: the future of every socket task stays small for the common case.
            Some(event) => Box::pin(self.queue.send_async(event)).await.is_ok(),
        }
    }

    /// Queues `event` for the worker's loop, whichever thread this is.
    pub fn queue(&self, event: Event) -> bool {
        self.queue.send(event).is_ok()
    }

    /// Dispatches `event` if this is the worker's thread; else gives it back.
    fn dispatch_here(&self, event: Event) -> Option<Event> {
        let dispatch = LOCAL.with(|local| match &*local.borrow() {
            Some((id, dispatch)) if *id == self.worker => Some(dispatch.clone()),
            _ => None,
        });
        match dispatch {
            // Called outside the borrow: a callback may reach this thread-local again.
            Some(dispatch) => {
                dispatch(event);
                None
            }
            None => Some(event),
        }
    }
}

/// The id of the loop running on this thread, if any.
pub fn current() -> Option<LoopId> {
    LOCAL.with(|local| local.borrow().as_ref().map(|(id, _)| *id))
}

/// A worker's loop: its runtime, and a way to wake its wait for the next queued event.
pub struct EventLoop {
    id: LoopId,
    runtime: tokio::runtime::Runtime,
    wake: Arc<Notify>,
}

impl EventLoop {
    pub fn new() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start a worker's event loop")?;
        Ok(Self {
            id: crate::event::next_id(),
            runtime,
            wake: Arc::new(Notify::new()),
        })
    }

    pub fn id(&self) -> LoopId {
        self.id
    }

    /// Where tasks of this loop are spawned (from any thread).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.runtime.handle()
    }

    /// Makes this thread dispatch the events of this loop's connections with `dispatch`.
    pub fn install(&self, dispatch: Dispatch) {
        LOCAL.with(|local| *local.borrow_mut() = Some((self.id, dispatch)));
    }

    /// Stops dispatching on this thread (the worker is ending).
    pub fn uninstall(&self) {
        LOCAL.with(|local| local.borrow_mut().take());
    }

    /// Runs the sockets of this loop (dispatching their events as they come) until a queued
    /// event arrives, `until` passes, or [`EventLoop::wake`] is called. None: no event came.
    ///
    /// Not callable from a callback that runs inside the loop; [`EventLoop::inside`] tells.
    pub fn next_event(
        &self,
        queue: &flume::Receiver<Event>,
        until: Option<Instant>,
    ) -> Result<Option<Event>, flume::RecvError> {
        // Something queued already needs no trip through the runtime.
        match queue.try_recv() {
            Ok(event) => return Ok(Some(event)),
            Err(flume::TryRecvError::Disconnected) => return Err(flume::RecvError::Disconnected),
            Err(flume::TryRecvError::Empty) => {}
        }
        self.runtime.block_on(async {
            let sleep = async {
                match until {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = queue.recv_async() => event.map(Some),
                _ = self.wake.notified() => Ok(None),
                _ = sleep => Ok(None),
            }
        })
    }

    /// Makes the current (or next) [`EventLoop::next_event`] return, so the worker looks at
    /// its timers and what is left alive again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// True on this loop's thread while it runs its sockets (callbacks dispatched from a
    /// socket run there).
    pub fn inside(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok()
    }
}
