//! The connection limit: a count of open connections and a wait for a free slot.
//!
//! What it costs: one atomic increment when a connection is accepted, one decrement
//! when it ends, and a load before each accept; a wake-up only for an accept loop that
//! waits at the limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The open connections of one server, against its limit.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    open: AtomicUsize,
    freed: Notify,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Slots {
    pub(crate) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            open: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Waits until fewer than the limit are open.
    pub(crate) async fn free(&self) {
        loop {
            if self.open.load(Ordering::Acquire) < self.max {
                return;
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so that a slot freed in between is seen.
            freed.as_mut().enable();
            if self.open.load(Ordering::Acquire) < self.max {
                return;
            }
            freed.await;
        }
    }

    /// Takes a slot for an accepted connection (past the limit, too: a connection the
    /// kernel already accepted is served rather than cut).
    pub(crate) fn take(self: &Arc<Self>) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot(Arc::clone(self))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let before = self.0.open.fetch_sub(1, Ordering::AcqRel);
        if before >= self.0.max {
            // At the limit: an accept loop may be waiting for this slot.
            self.0.freed.notify_waiters();
        }
    }
}

/// The default limit: the descriptor limit of the process (`RLIMIT_NOFILE`) less an
/// eighth of it, at least 32, kept in reserve for everything else the process opens
/// (files, the runtime, the next generation's sockets), so that accepting never runs
/// the process out of descriptors.
pub(crate) fn default_max() -> usize {
    let limit = crate::sys::nofile_limit().unwrap_or(1024);
    let reserve = (limit / 8).max(32);
    usize::try_from(limit.saturating_sub(reserve).max(1)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_accept_waits_at_the_limit_until_a_slot_is_freed() {
        let slots = Slots::new(2);
        let (a, _b) = (slots.take(), slots.take());
        let waiting = tokio::spawn({
            let s = Arc::clone(&slots);
            async move { s.free().await }
        });
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        drop(a);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("a freed slot wakes the accept loop")
            .unwrap();
    }
}
