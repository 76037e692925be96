//! The connection limit: a count of open connections, a wait for a free slot, and the
//! slots promised to the previous generation's connections at a hand-over.
//!
//! What it costs on the serving path: one atomic increment when a connection is
//! accepted, one decrement when it ends (and one per listener for the count of what
//! may move), and two loads before each accept; a wake-up only for an accept loop that
//! waits at the limit.
//!
//! At a hand-over the previous generation says how many of its connections may still
//! come, per listener ([`Slots::coming`]); this generation promises them slots
//! ([`Slots::grant`]: credit, sent back over the channel) before it accepts anything
//! new, and when one of its own connections ends while the previous generation still
//! waits, the freed slot goes to that one first. So a connection that moves always
//! finds a slot and a descriptor, and clients in the accept queue wait, as they would
//! have at the limit without a restart (issue 26: at the limit, 207 of 224 moved
//! connections were lost to `EMFILE`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::sync::lock;

/// The open connections of one server, against its limit.
#[derive(Debug)]
pub(crate) struct Slots {
    max: usize,
    open: AtomicUsize,
    /// Slots promised to connections of the previous generation that have not come yet.
    reserved: AtomicUsize,
    /// Accepting waits until the previous generation said what it holds (or is gone):
    /// its connections come first.
    held: AtomicBool,
    freed: Notify,
    /// Per listener of the server: open connections (of this generation, that may move
    /// on), and what the previous generation asked for.
    listeners: Vec<AtomicUsize>,
    credit: Mutex<Vec<Credit>>,
    /// Some listener's previous generation wants more than it was promised: a freed
    /// slot goes to it (one load when a connection ends).
    wants: AtomicBool,
    /// Wakes whoever sends the credit to the previous generation.
    pub(crate) to_grant: Notify,
}

/// One listener's credit with the previous generation.
#[derive(Debug, Clone, Copy, Default)]
struct Credit {
    /// Connections it still holds that may come (its last word).
    wanted: usize,
    /// Slots promised (sent or to send) and not used yet.
    granted: usize,
    /// Of those, not sent yet.
    unsent: usize,
}

/// A connection's slot, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    slots: Arc<Slots>,
    listener: usize,
}

impl Slots {
    /// A limit of `max` for a server with `listeners` listeners; `held` until the
    /// previous generation says what it holds (there is one).
    pub(crate) fn new(max: usize, listeners: usize, held: bool) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            open: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
            held: AtomicBool::new(held),
            freed: Notify::new(),
            listeners: (0..listeners).map(|_| AtomicUsize::new(0)).collect(),
            credit: Mutex::new(vec![Credit::default(); listeners]),
            wants: AtomicBool::new(false),
            to_grant: Notify::new(),
        })
    }

    fn full(&self) -> bool {
        self.held.load(Ordering::Acquire)
            || self.open.load(Ordering::Acquire) + self.reserved.load(Ordering::Acquire) >= self.max
    }

    /// Waits until fewer than the limit are open (counting promised slots), and not
    /// held.
    pub(crate) async fn free(&self) {
        loop {
            if !self.full() {
                return;
            }
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so that a slot freed in between is seen.
            freed.as_mut().enable();
            if !self.full() {
                return;
            }
            freed.await;
        }
    }

    /// Takes a slot for a connection of listener `listener` accepted here (past the
    /// limit, too: a connection the kernel already accepted is served rather than cut).
    pub(crate) fn take(self: &Arc<Self>, listener: usize) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.listeners[listener].fetch_add(1, Ordering::Relaxed);
        Slot {
            slots: Arc::clone(self),
            listener,
        }
    }

    /// Takes a slot for a connection that came from the previous generation, with the
    /// credit it was sent on (one without credit, from an older version, is served past
    /// the limit, as one the kernel accepted).
    pub(crate) fn take_promised(self: &Arc<Self>, listener: usize) -> Slot {
        let mut credit = lock(&self.credit);
        let c = &mut credit[listener];
        c.granted = c.granted.saturating_sub(1);
        c.wanted = c.wanted.saturating_sub(1);
        self.set_reserved(&credit);
        drop(credit);
        self.take(listener)
    }

    /// Open connections of listener `listener` (that may move to the next generation).
    pub(crate) fn open_of(&self, listener: usize) -> usize {
        self.listeners[listener].load(Ordering::Relaxed)
    }

    /// The previous generation still holds `count` connections of `listener` that may
    /// come: promises slots for as many as fit now (the rest as slots are freed), and
    /// accepting goes on for what is left.
    pub(crate) fn coming(&self, listener: usize, count: usize) {
        let mut credit = lock(&self.credit);
        credit[listener].wanted = count;
        self.promise(&mut credit);
        drop(credit);
        self.release_hold();
    }

    /// The previous generation is gone, or will send nothing more: no slot is kept for
    /// it, and nothing holds accepting.
    pub(crate) fn nothing_more_coming(&self) {
        let mut credit = lock(&self.credit);
        for c in credit.iter_mut() {
            *c = Credit::default();
        }
        self.set_reserved(&credit);
        drop(credit);
        self.release_hold();
    }

    fn release_hold(&self) {
        self.held.store(false, Ordering::Release);
        self.freed.notify_waiters();
    }

    /// Promises free slots to what the previous generation still wants, before anyone
    /// else gets them.
    fn promise(&self, credit: &mut [Credit]) {
        let used = self.open.load(Ordering::Acquire) + self.reserved.load(Ordering::Acquire);
        let mut room = self.max.saturating_sub(used);
        let mut promised = false;
        for c in credit.iter_mut() {
            let more = c.wanted.saturating_sub(c.granted).min(room);
            if more > 0 {
                c.granted += more;
                c.unsent += more;
                room -= more;
                promised = true;
            }
        }
        self.set_reserved(credit);
        if promised {
            self.to_grant.notify_one();
        }
    }

    /// Reserved: the promised slots that can still be used (no more than wanted).
    fn set_reserved(&self, credit: &[Credit]) {
        let reserved = credit.iter().map(|c| c.granted.min(c.wanted)).sum();
        self.reserved.store(reserved, Ordering::Release);
        let wants = credit.iter().any(|c| c.wanted > c.granted);
        self.wants.store(wants, Ordering::Release);
        self.freed.notify_waiters();
    }

    /// The credit to send now, by listener index: taken (marked sent).
    pub(crate) fn grant(&self) -> Vec<(usize, usize)> {
        let mut credit = lock(&self.credit);
        credit
            .iter_mut()
            .enumerate()
            .filter(|(_, c)| c.unsent > 0)
            .map(|(i, c)| (i, std::mem::take(&mut c.unsent)))
            .collect()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let slots = &self.slots;
        slots.listeners[self.listener].fetch_sub(1, Ordering::Relaxed);
        let before = slots.open.fetch_sub(1, Ordering::AcqRel);
        // A connection of the previous generation waiting for a slot gets this one
        // first. Only at a hand-over: a lock, no more.
        if slots.wants.load(Ordering::Acquire) {
            slots.promise(&mut lock(&slots.credit));
        }
        if before + slots.reserved.load(Ordering::Acquire) >= slots.max {
            // At the limit: an accept loop may be waiting for this slot.
            slots.freed.notify_waiters();
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
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn an_accept_waits_at_the_limit_until_a_slot_is_freed() {
        let slots = Slots::new(2, 1, false);
        let (a, _b) = (slots.take(0), slots.take(0));
        let waiting = tokio::spawn({
            let s = Arc::clone(&slots);
            async move { s.free().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished());
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("a freed slot wakes the accept loop")
            .unwrap();
    }

    /// Issue 26, defect 3: the connections of the previous generation come first. A
    /// new generation at a limit of 4 with 1 connection of its own, told that 5 may
    /// come: it promises 3 at once and accepts nothing; as its own connections end,
    /// the freed slots are promised too, until all 5 came; only then does it accept.
    #[tokio::test(start_paused = true)]
    async fn the_previous_generations_connections_get_slots_first() {
        let slots = Slots::new(4, 2, true);
        assert!(slots.full(), "held until the previous generation spoke");
        let own = slots.take(0);
        slots.coming(1, 5);
        assert_eq!(slots.grant(), [(1, 3)]);
        assert!(slots.full(), "1 open + 3 promised");
        let arrived: Vec<Slot> = (0..3).map(|_| slots.take_promised(1)).collect();
        assert!(slots.full());
        drop(own);
        assert_eq!(slots.grant(), [(1, 1)], "the freed slot went to what comes");
        assert!(slots.full());
        drop(arrived);
        assert_eq!(slots.grant(), [(1, 1)], "one more wanted, the rest free");
        assert!(!slots.full());
        let _last = slots.take_promised(1);
        assert_eq!(slots.open_of(1), 1);
        // Nothing more wanted: the rest is for accepting.
        assert!(!slots.full());
        assert!(slots.grant().is_empty());
    }

    /// What the previous generation said it holds shrinks (its connections closed
    /// there): the slots kept for them are freed for accepting.
    #[test]
    fn fewer_coming_frees_the_promised_slots() {
        let slots = Slots::new(4, 1, true);
        slots.coming(0, 4);
        assert!(slots.full());
        slots.coming(0, 1);
        assert!(!slots.full(), "1 promised of 4");
        slots.nothing_more_coming();
        assert_eq!(slots.reserved.load(Ordering::Relaxed), 0);
    }
}
