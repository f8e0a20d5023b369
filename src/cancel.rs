//! [`Cancel`]: a cancellation flag for one task, whose check is one atomic load.
//!
//! tokio-util's `CancellationToken` takes a mutex to look (`is_cancelled`, and each poll of
//! its `cancelled()` future); a connection's reader and writer look on every message, which
//! showed in profiles of a topic's fan-out. A connection's flags are only waited on by its own
//! task (its reader and writer run together in it), so one waker slot is enough: cancelling is
//! an atomic store and a wake, looking an atomic load.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures_util::task::AtomicWaker;

#[derive(Default)]
pub struct Cancel {
    cancelled: AtomicBool,
    /// The task waiting (one task: see the module's comment).
    waiter: AtomicWaker,
}

impl Cancel {
    /// Cancels, from any thread, and wakes the waiting task.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.waiter.wake();
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Completes once cancelled. Only one task may wait (any number of futures in it).
    pub fn cancelled(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_cancelled() {
                return Poll::Ready(());
            }
            self.waiter.register(cx.waker());
            // Looked at again after registering: a cancel in between is not missed.
            if self.is_cancelled() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cancel_from_another_thread_wakes_the_waiter() {
        let cancel = std::sync::Arc::new(Cancel::default());
        let other = cancel.clone();
        let waiter = tokio::spawn(async move { other.cancelled().await });
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            cancel.cancel();
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
