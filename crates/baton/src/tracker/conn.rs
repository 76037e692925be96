//! One connection's part of the tracker: the state its task, its socket wrapper and the
//! sweep share, its registration (and its token while parked), and the clocks it carries
//! through a move to the next generation, a park and an unpark.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;
use std::time::Duration;

use atomic_waker::AtomicWaker;
use tokio::time::Instant;

use super::{CLOSE, HAND_OVER, Phase, Tracker, TrackerInner};
use crate::sync::lock;

/// What one connection shares with the tracker and its request wrappers.
#[derive(Debug)]
pub(crate) struct ConnShared {
    /// The socket while it is open; `None` once its owner started closing it.
    pub(super) fd: Mutex<Option<RawFd>>,
    /// Requests received (high 40 bits) and in flight (low 24 bits), in one word so
    /// that starting a request is one atomic operation.
    pub(super) counts: AtomicU64,
    /// Reads that returned data. Written only by the connection's own socket wrapper
    /// (one writer, so a load and a store, no read-modify-write), read by its drive loop.
    pub(super) reads: AtomicU64,
    pub(super) h2: AtomicBool,
    pub(super) upgraded: AtomicBool,
    pub(super) closed: AtomicBool,
    pub(super) forced: AtomicBool,
    /// The connection task's waker, woken when the phase changes. Per connection, so
    /// that waiting for the drain costs a busy connection nothing shared.
    pub(super) waker: AtomicWaker,
    /// What `waker` holds: the task's waker wrapped so that a wake also marks the
    /// registration spent (see `conn_reached`); made on the first poll.
    pub(super) spent_waker: std::sync::OnceLock<Arc<Spent>>,
    /// No waker of the task is registered (at first, and after any wake took it).
    pub(super) unregistered: AtomicBool,
    /// The tracker's flags, shared once per connection so that a request reads them
    /// without cloning anything.
    pub(super) flags: Arc<AtomicU8>,
    /// How long it may wait for a request, and stay idle between requests.
    pub(super) limits: Limits,
    /// Closed by the sweep for a timeout.
    pub(super) timed_out: AtomicBool,
    /// Written to since the socket was last flushed: bytes may wait in hyper's buffer.
    /// Written only by the connection's own socket wrapper.
    pub(super) unflushed: AtomicBool,
    /// Being taken out of hyper to move to the next generation: the socket wrapper
    /// makes hyper's closing `shutdown` a no-op.
    pub(super) detaching: AtomicBool,
    /// Passed to the next generation (counted when it closes here).
    pub(super) handed_over: AtomicBool,
    /// The sweep asks the connection's task to park it (idle long enough).
    pub(super) park: AtomicBool,
    /// Leaving the registry to be parked (see [`ConnHandle::park`]): its handle's drop
    /// does not count it closed.
    pub(super) parking: AtomicBool,
    /// The sweep's view of its activity, and the clocks it carries through a move, a
    /// park and an unpark (see [`History`]).
    pub(super) clock: Mutex<Clock>,
}

/// What a connection carries when it moves to the next generation, parks or is served
/// again after a park: it is not a new connection (issue 26). Durations, not instants,
/// so that they travel between processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct History {
    /// Requests it received before (here before a park, or in earlier generations).
    pub(crate) requests: u64,
    /// How long ago it last did something: the start of its idle clock (for one that
    /// never sent a request, how long ago it was accepted: its header-read clock).
    pub(crate) idle_for: Duration,
    /// How long ago the first bytes of a request head that is not complete yet came:
    /// the header-read clock of a head in progress.
    pub(crate) head_for: Option<Duration>,
}

/// What the sweep last saw of a connection, and since when it has been idle. Written
/// by the sweep once a second, read at a park and a hand-over; never on the request
/// path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// Requests and reads at the last look (at registration: what it came with).
    pub(super) requests: u64,
    pub(super) reads: u64,
    /// When it last did something, as far as the looks tell; `None` for a connection
    /// just accepted and not looked at yet (the first look sets it: no clock is read
    /// on the accept path).
    pub(super) active: Option<Instant>,
    /// When the first bytes of a request not started yet came (HTTP/1 between
    /// requests).
    pub(super) head: Option<Instant>,
}

impl Clock {
    /// A connection that carries `history` (moved, or served again after a park).
    pub(super) fn new(history: &History, now: Instant) -> Clock {
        let ago = |d: Duration| now.checked_sub(d).unwrap_or(now);
        Clock {
            requests: history.requests,
            reads: 0,
            active: Some(ago(history.idle_for)),
            head: history.head_for.map(ago),
        }
    }

    /// A connection just accepted.
    pub(super) fn fresh() -> Clock {
        Clock {
            requests: 0,
            reads: 0,
            active: None,
            head: None,
        }
    }
}

/// A connection's timeouts, enforced by the tracker's sweep (see `sweep.rs`): coarse
/// (a second), and costing the request path nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Limits {
    /// From the accept to the first request, and from the first byte of a later
    /// HTTP/1 request to its start: a client that sends nothing, a partial HTTP/2
    /// preface, a preface and no stream, slowloris. `None`: no limit.
    pub(crate) header: Option<std::time::Duration>,
    /// Between requests (keep-alive, an HTTP/2 connection without a stream).
    pub(crate) idle: Option<std::time::Duration>,
    /// Not a timeout: whether the connection may move to the next generation at a
    /// restart (plain HTTP/1, with the hand-over on).
    pub(crate) movable: bool,
    /// Not a timeout either: a plain HTTP/1 connection idle this long is parked.
    pub(crate) park: Option<std::time::Duration>,
}

/// In-flight requests of one connection fit in 24 bits (HTTP/2 allows at most 2^31
/// streams, but hyper's default limit is 200 concurrent ones); 40 bits count requests.
pub(super) const INFLIGHT_BITS: u32 = 24;
const ONE_REQUEST: u64 = 1 << INFLIGHT_BITS;

impl ConnShared {
    // `#[inline]` on the per-request methods: they are called from generic code that is
    // compiled in the user's crate, where a non-inline function of this crate would be
    // a call.
    #[inline]
    pub(crate) fn request_started(&self, h2: bool) {
        if h2 && !self.h2.load(Ordering::Relaxed) {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.counts.fetch_add(ONE_REQUEST | 1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn request_finished(&self) {
        self.counts.fetch_sub(1, Ordering::Release);
    }

    /// Requests received so far, and in flight now.
    pub(super) fn counts(&self) -> (u64, u64) {
        let c = self.counts.load(Ordering::Acquire);
        (c >> INFLIGHT_BITS, c & (ONE_REQUEST - 1))
    }

    /// `true` once the drain has started, or while a restart starts the next
    /// generation: HTTP/1 responses must close their connection.
    ///
    /// Not on a connection that can move to the next generation while a hand-over is
    /// expected: it moves after its response instead of closing.
    #[inline]
    pub(crate) fn closes_responses(&self) -> bool {
        let flags = self.flags.load(Ordering::Relaxed);
        flags & CLOSE != 0 && !(self.limits.movable && flags & HAND_OVER != 0)
    }

    /// Whether this connection moves to the next generation when the drain starts.
    pub(crate) fn moves(&self) -> bool {
        self.limits.movable && self.flags.load(Ordering::SeqCst) & HAND_OVER != 0
    }

    /// Called by the socket wrapper on every write (`true`) and every completed flush
    /// (`false`). hyper flushes its buffer into the socket before it flushes the
    /// socket, so `false` means nothing of a response waits in hyper.
    #[inline]
    pub(crate) fn note_unflushed(&self, unflushed: bool) {
        self.unflushed.store(unflushed, Ordering::Relaxed);
    }

    /// No request in flight and nothing of a response waiting to be written.
    pub(crate) fn at_boundary(&self) -> bool {
        self.counts().1 == 0 && !self.unflushed.load(Ordering::Relaxed)
    }

    pub(crate) fn set_detaching(&self, on: bool) {
        self.detaching.store(on, Ordering::Relaxed);
    }

    pub(crate) fn is_detaching(&self) -> bool {
        self.detaching.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_handed_over(&self) {
        self.handed_over.store(true, Ordering::Relaxed);
    }

    /// Asked by the sweep: park this connection (it has been idle long enough). Wakes
    /// its task, which registers its waker again on that poll (see `conn_reached`).
    pub(crate) fn ask_park(&self) {
        self.park.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the sweep asked to park it; clears the request. One relaxed load on
    /// every wake-up of a connection task, a store only when asked.
    #[inline]
    pub(crate) fn take_park_request(&self) -> bool {
        self.park.load(Ordering::Relaxed) && self.park.swap(false, Ordering::Acquire)
    }

    pub(crate) fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Called by the connection's socket wrapper when a read returned data.
    #[inline]
    pub(crate) fn note_read(&self) {
        let n = self.reads.load(Ordering::Relaxed);
        self.reads.store(n.wrapping_add(1), Ordering::Relaxed);
    }

    /// What the drive loop compares between two idle checks: requests received, reads
    /// that returned data, and whether a request is in flight now.
    pub(crate) fn activity(&self) -> Activity {
        let (requests, inflight) = self.counts();
        Activity {
            requests,
            reads: self.reads.load(Ordering::Relaxed),
            in_flight: inflight > 0,
        }
    }

    /// What the connection carries on if it moves or parks now (see [`History`]).
    /// `head_started`: bytes of a next request were read already (hyper's buffer or
    /// the bytes a hand-over sends along), whether or not the sweep saw them arrive.
    pub(crate) fn history(&self, now: Instant, head_started: bool) -> History {
        let (requests, in_flight) = self.counts();
        let reads = self.reads.load(Ordering::Relaxed);
        let clock = *lock(&self.clock);
        // Active since the sweep last looked: its idle clock starts now (a second at
        // most too late, never too early). Its head, if any, started in that time too.
        let quiet = in_flight == 0 && requests == clock.requests && reads == clock.reads;
        let idle_for = match clock.active {
            Some(active) if quiet => now.saturating_duration_since(active),
            _ => Duration::ZERO,
        };
        let head_for = match clock.head {
            Some(head) if quiet => Some(now.saturating_duration_since(head)),
            _ if head_started => Some(Duration::ZERO),
            _ => None,
        };
        History {
            requests,
            idle_for,
            head_for,
        }
    }

    pub(crate) fn mark_forced(&self) {
        self.forced.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_upgraded(&self) {
        self.upgraded.store(true, Ordering::Relaxed);
    }
}

/// A connection's activity at one instant, see [`ConnShared::activity`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Activity {
    pub(crate) requests: u64,
    pub(crate) reads: u64,
    pub(crate) in_flight: bool,
}

/// Owned by the connection's I/O object: registered while the socket is open.
///
/// It must be dropped *before* the socket it describes is closed (declare it before the
/// socket in the owning struct): its drop clears the descriptor under the lock that
/// [`Tracker::force_all`] holds while it calls `shutdown(2)`, so a forced close can never
/// hit a descriptor number that was closed and reused.
#[derive(Debug)]
pub(crate) struct ConnHandle {
    pub(super) tracker: Arc<TrackerInner>,
    pub(super) shared: Arc<ConnShared>,
    pub(super) key: usize,
}

impl ConnHandle {
    pub(crate) fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// Takes an idle connection out of the registry to be parked: it stays open (and
    /// counted open, idle and parked) as the returned token, which its socket's new
    /// owner keeps, without the per-connection state. Like dropping the handle, this
    /// must happen before the socket changes hands (see above).
    pub(crate) fn park(self) -> ParkedConn {
        self.shared.parking.store(true, Ordering::Relaxed);
        let requests = self.shared.counts().0;
        let tracker = Arc::clone(&self.tracker);
        drop(self);
        tracker.parked_since_trim.fetch_add(1, Ordering::Relaxed);
        ParkedConn {
            tracker,
            requests,
            end: End::Closed,
        }
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        *lock(&self.shared.fd) = None;
        let t = &self.tracker;
        if self.shared.parking.load(Ordering::Relaxed) {
            // Parked: open still, counted with the parked ones; no release.
            let mut conns = lock(&t.conns);
            conns.try_remove(self.key);
            t.parked.fetch_add(1, Ordering::Relaxed);
            t.parked_requests
                .fetch_add(self.shared.counts().0, Ordering::Relaxed);
            drop(conns);
            self.shared.closed.store(true, Ordering::Release);
            return;
        }
        {
            // The totals change together with the registry, under its lock, so that a
            // snapshot (`stats`) never sees a connection both gone and not yet counted.
            let mut conns = lock(&t.conns);
            conns.try_remove(self.key);
            t.closed_requests
                .fetch_add(self.shared.counts().0, Ordering::Relaxed);
            if self.shared.forced.load(Ordering::Relaxed) {
                t.closed_forced.fetch_add(1, Ordering::Relaxed);
            }
            if self.shared.timed_out.load(Ordering::Relaxed) {
                t.closed_timed_out.fetch_add(1, Ordering::Relaxed);
            }
            if self.shared.handed_over.load(Ordering::Relaxed) {
                t.closed_handed_over.fetch_add(1, Ordering::Relaxed);
            }
            t.closed.fetch_add(1, Ordering::Relaxed);
        }
        self.shared.closed.store(true, Ordering::Release);
        t.release();
    }
}

/// A parked connection's place in the totals: open (idle and parked) until it is
/// either served again ([`ParkedConn::unpark`]) or dropped, which counts it closed.
/// All a parked connection costs the tracker: no registry entry, no shared state.
#[derive(Debug)]
pub(crate) struct ParkedConn {
    tracker: Arc<TrackerInner>,
    requests: u64,
    end: End,
}

/// How a parked connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Closed (its client left, say).
    Closed,
    /// Closed for staying idle too long.
    TimedOut,
    /// Served again: back in the registry.
    Unparked,
}

impl ParkedConn {
    /// Registers the connection again, with what it had received, to be served again:
    /// not counted as a new connection.
    /// `history` says how long it has been idle, and whether the first bytes of its
    /// next request are what woke it (its header-read clock starts then).
    pub(crate) fn unpark(mut self, fd: RawFd, limits: Limits, history: History) -> ConnHandle {
        self.end = End::Unparked;
        let t = Tracker {
            inner: Arc::clone(&self.tracker),
        };
        let history = History {
            requests: self.requests,
            ..history
        };
        t.register_inner(fd, limits, history, super::Origin::Unparked)
    }

    /// Requests it received.
    pub(crate) fn requests(&self) -> u64 {
        self.requests
    }

    /// Counts it, when dropped, as closed for staying idle too long.
    pub(crate) fn mark_timed_out(&mut self) {
        self.end = End::TimedOut;
    }
}

impl Drop for ParkedConn {
    fn drop(&mut self) {
        if self.end == End::Unparked {
            // Its registration took it out of the parked counts.
            return;
        }
        let t = &self.tracker;
        let conns = lock(&t.conns);
        t.parked.fetch_sub(1, Ordering::Relaxed);
        t.parked_requests
            .fetch_sub(self.requests, Ordering::Relaxed);
        t.closed_requests
            .fetch_add(self.requests, Ordering::Relaxed);
        if self.end == End::TimedOut {
            t.closed_timed_out.fetch_add(1, Ordering::Relaxed);
        }
        t.closed.fetch_add(1, Ordering::Relaxed);
        drop(conns);
        t.release();
    }
}

/// Resolves once the phase is `phase` or later, for the task of connection `conn`.
///
/// Unlike [`Tracker::reached`], polling it touches only the connection's own state, never
/// anything shared with other connections: a connection task is polled on every
/// request, and so is this future. While its registration stands, a poll is two loads
/// and a pointer comparison.
///
/// The registration is known to stand, not assumed: what sits in the connection's
/// `AtomicWaker` is the task's waker wrapped in a [`Spent`], whose wake marks the
/// connection `unregistered` before it wakes the task. Every way the cell loses a
/// waker wakes it: a wake (`advance`, `ask_park`) takes it and wakes it, and a wake
/// that races with a registration makes the registration wake the new waker instead of
/// storing it. So a poll registers again exactly when a wake took the registration
/// (issue 26: skipping that on "the phase did not change" lost the drain's wake-up
/// when a park request raced with the registration; a restart storm lost requests).
pub(crate) fn conn_reached<'a>(
    tracker: &'a TrackerInner,
    conn: &'a Arc<ConnShared>,
    phase: Phase,
) -> impl Future<Output = ()> + Send + 'a {
    std::future::poll_fn(move |cx| {
        if tracker.phase.load(Ordering::Relaxed) >= phase as u8 {
            return std::task::Poll::Ready(());
        }
        let spent = conn.spent_waker.get_or_init(|| {
            Arc::new(Spent {
                task: cx.waker().clone(),
                conn: Arc::downgrade(conn),
            })
        });
        let ours = spent.task.will_wake(cx.waker());
        if ours && !conn.unregistered.load(Ordering::Acquire) {
            return std::task::Poll::Pending;
        }
        // Cleared before registering: a wake that takes what is registered from here on
        // marks it again.
        conn.unregistered.store(false, Ordering::SeqCst);
        if ours {
            conn.waker.register(&Waker::from(Arc::clone(spent)));
        } else {
            // Another task polls (never in baton; a test's own wakers): its own wrapper,
            // and the connection's own task registers again on its next poll.
            conn.waker.register(&Waker::from(Arc::new(Spent {
                task: cx.waker().clone(),
                conn: Arc::downgrade(conn),
            })));
            conn.unregistered.store(true, Ordering::SeqCst);
        }
        // Check again after registering: `advance` stores the phase before it wakes,
        // so either this load sees it or the wake reaches the waker just registered.
        if tracker.phase.load(Ordering::SeqCst) >= phase as u8 {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
}

/// A connection task's waker as registered for phase changes: waking it marks the
/// registration spent, then wakes the task.
#[derive(Debug)]
pub(crate) struct Spent {
    task: Waker,
    /// Weak: the connection owns the cell that holds this.
    conn: Weak<ConnShared>,
}

impl std::task::Wake for Spent {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(conn) = self.conn.upgrade() {
            conn.unregistered.store(true, Ordering::SeqCst);
        }
        self.task.wake_by_ref();
    }
}
