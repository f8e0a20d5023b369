//! [`Cancel`]: a cancellation token whose check is one atomic load.
//!
//! tokio-util's `CancellationToken::is_cancelled` takes a mutex; a connection's writer asks
//! on every batch it writes (two tokens), which showed in profiles of a topic's fan-out.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

#[derive(Default)]
pub struct Cancel {
    token: CancellationToken,
    cancelled: AtomicBool,
}

impl Cancel {
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.token.cancel();
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Completes once cancelled.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}
