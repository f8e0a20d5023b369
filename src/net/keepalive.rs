//! Keepalive: one timer per event loop pings every connection of that loop, where a timer per
//! connection would cost each idle connection some 150 bytes and the timer wheel one entry.
//!
//! A connection registers when it opens and is forgotten when its task ends (the
//! registration is a guard). Each tick queues a ping command to every registered connection;
//! its writer sends the ping frame, and closes the connection if nothing came from the peer for
//! the idle timeout. The timer runs while the loop has connections to ping.

use std::cell::RefCell;
use std::time::Duration;

use crate::event::ConnectionHandle;

#[derive(Default)]
struct Pinged {
    /// Registered connections; a slot of a connection that ended is free for the next one.
    slots: Vec<Option<ConnectionHandle>>,
    free: Vec<usize>,
    /// A timer task runs on this thread's loop.
    ticking: bool,
}

thread_local! {
    static PINGED: RefCell<Pinged> = RefCell::default();
}

/// A connection's place in its loop's keepalive; dropping it forgets the connection.
pub(super) struct Keepalive {
    slot: usize,
}

impl Keepalive {
    /// Pings `handle` every `every` from now on. Called from a task on the connection's loop.
    pub(super) fn register(handle: &ConnectionHandle, every: Duration) -> Self {
        let (slot, start) = PINGED.with(|p| {
            let mut p = p.borrow_mut();
            let slot = match p.free.pop() {
                Some(slot) => {
                    p.slots[slot] = Some(handle.clone());
                    slot
                }
                None => {
                    p.slots.push(Some(handle.clone()));
                    p.slots.len() - 1
                }
            };
            (slot, !std::mem::replace(&mut p.ticking, true))
        });
        if start {
            tokio::spawn(tick(every));
        }
        Self { slot }
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        // (At thread exit the table may be gone already: nothing to forget then.)
        let _ = PINGED.try_with(|p| {
            let mut p = p.borrow_mut();
            p.slots[self.slot] = None;
            p.free.push(self.slot);
        });
    }
}

/// Pings every registered connection each `every`, while there is one.
async fn tick(every: Duration) {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        timer.tick().await;
        let go_on = PINGED.with(|p| {
            let mut p = p.borrow_mut();
            let mut any = false;
            for handle in p.slots.iter().flatten() {
                handle.ping();
                any = true;
            }
            if !any {
                p.ticking = false;
            }
            any
        });
        if !go_on {
            return;
        }
    }
}
