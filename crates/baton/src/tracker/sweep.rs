//! The timeouts of connections that hold a descriptor without sending a request: one
//! task per tracker looks at every open connection once a second and closes those past
//! their limit.
//!
//! Why a sweep and not a timer per request: slowloris and silent clients need seconds
//! of precision, not a timer boxed, registered in the runtime's wheel and removed again
//! on every request (what hyper's header-read timeout costs, about 1,700 instructions a
//! request). The sweep reads the counters the request path keeps anyway (requests
//! received and in flight, reads that returned data); the request path pays nothing.
//!
//! The rules, for a connection with no request in flight (one with a request in flight
//! is the handler's business, and an upgraded one the upgrade's):
//! - no request yet: closed `header` after it was accepted (a client that sends
//!   nothing, a partial HTTP/2 preface, a preface and SETTINGS and no stream, the first
//!   request of a slowloris);
//! - between HTTP/1 requests, bytes read but no request started: closed `header` after
//!   the first such bytes (a slowloris on a kept-alive connection);
//! - no activity at all for `idle` (a kept-alive HTTP/1 connection, an HTTP/2
//!   connection without a stream): closed.
//!
//! Closing is `shutdown(2)` of the socket, as a forced drain does: the connection's
//! task sees the end and finishes. Times are counted in ticks of the sweep, so a limit
//! is kept to within about a second.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{ConnShared, TrackerInner};
use crate::sync::lock;
use crate::sys;

/// How often the sweep looks.
const TICK: Duration = Duration::from_secs(1);

/// What the sweep last saw of one connection.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Which connection (its shared state's address): a slab slot is reused.
    conn: usize,
    requests: u64,
    reads: u64,
    /// When it last did something (the tick).
    active: u64,
    /// When the first bytes of a request not started yet arrived (HTTP/1, idle).
    head: Option<u64>,
}

/// What to do with a connection now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// No request within the header-read timeout.
    HeaderTimeout,
    /// Idle too long.
    IdleTimeout,
    /// Idle long enough to be parked (see `Server::park_idle_after`).
    Park,
}

impl super::Tracker {
    /// Starts the sweep of connection timeouts, once per tracker (within a tokio
    /// runtime). It ends when the tracker is gone.
    pub(crate) fn sweep(&self) {
        if self.inner.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let tracker = Arc::downgrade(&self.inner);
        tokio::spawn(run(tracker));
    }
}

async fn run(tracker: Weak<TrackerInner>) {
    let mut seen: Vec<Option<Seen>> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut now = 0u64;
    loop {
        tick.tick().await;
        now += 1;
        let Some(t) = tracker.upgrade() else { return };
        // Connections parked since the last tick freed hyper's buffers; give the memory
        // back to the system (the allocator keeps freed memory otherwise).
        if t.parked_since_trim.swap(0, Ordering::Relaxed) > 0 {
            sys::release_free_memory();
        }
        // Nothing parks once the drain started: idle connections move or close then.
        let parks = t.phase() < super::Phase::Draining;
        let conns = lock(&t.conns);
        if seen.len() < conns.capacity() {
            seen.resize(conns.capacity(), None);
        }
        for (key, conn) in conns.iter() {
            let slot = &mut seen[key];
            match look(slot, conn, now) {
                Verdict::Keep => {}
                Verdict::Park => {
                    if parks {
                        conn.ask_park();
                    }
                }
                verdict => {
                    cut(conn, verdict);
                    *slot = None;
                }
            }
        }
    }
}

/// Looks at one connection, updating what was seen of it.
fn look(slot: &mut Option<Seen>, conn: &Arc<ConnShared>, now: u64) -> Verdict {
    let id = Arc::as_ptr(conn) as usize;
    let (requests, in_flight) = conn.counts();
    let reads = conn.reads.load(Ordering::Relaxed);
    let prev = match slot {
        Some(s) if s.conn == id => *s,
        _ => {
            // New since the last look: accepted within the last tick.
            *slot = Some(Seen {
                conn: id,
                requests,
                reads,
                active: now,
                head: None,
            });
            return Verdict::Keep;
        }
    };
    let busy = in_flight > 0 || conn.upgraded.load(Ordering::Relaxed);
    let mut next = Seen {
        conn: id,
        requests,
        reads,
        active: prev.active,
        head: prev.head,
    };
    if busy || requests != prev.requests {
        // Working, or a request came and went since the last look.
        next.active = now;
        next.head = None;
    } else if reads != prev.reads && requests > 0 && !conn.is_h2() && next.head.is_none() {
        // Between HTTP/1 requests, bytes of the next one: its head is being read.
        next.head = Some(now);
    }
    *slot = Some(next);
    if busy {
        return Verdict::Keep;
    }
    let limits = conn.limits;
    // A tick is a second.
    let passed =
        |since: u64, limit: Duration| Duration::from_secs(now.saturating_sub(since)) > limit;
    if let Some(header) = limits.header {
        let head_started = if requests == 0 {
            Some(next.active)
        } else {
            next.head
        };
        if head_started.is_some_and(|since| passed(since, header)) {
            return Verdict::HeaderTimeout;
        }
    }
    if let Some(idle) = limits.idle
        && requests > 0
        && passed(next.active, idle)
    {
        return Verdict::IdleTimeout;
    }
    if let Some(park) = limits.park
        && requests > 0
        && !conn.is_h2()
        && next.head.is_none()
        && reads == prev.reads
        && passed(next.active, park)
    {
        return Verdict::Park;
    }
    Verdict::Keep
}

fn cut(conn: &ConnShared, why: Verdict) {
    let fd = lock(&conn.fd);
    let Some(fd) = *fd else { return };
    conn.timed_out.store(true, Ordering::Relaxed);
    tracing::debug!(
        ?why,
        "closing a connection that sent no request in time or stayed idle too long"
    );
    if let Err(e) = sys::shutdown_socket(fd) {
        tracing::debug!(error = %e, "shutdown of a timed-out connection");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{Limits, Tracker};

    fn limits() -> Limits {
        Limits {
            header: Some(Duration::from_secs(2)),
            idle: Some(Duration::from_secs(5)),
            movable: false,
            park: None,
        }
    }

    /// Looks at `conn` at ticks `from..=to`; returns the first tick with a verdict.
    fn until_verdict(
        slot: &mut Option<Seen>,
        conn: &Arc<ConnShared>,
        from: u64,
        to: u64,
    ) -> Option<(u64, Verdict)> {
        (from..=to).find_map(|t| match look(slot, conn, t) {
            Verdict::Keep => None,
            v => Some((t, v)),
        })
    }

    #[test]
    fn a_silent_connection_is_cut_at_the_header_timeout() {
        let tracker = Tracker::new();
        let h = tracker.register_with(-1, limits());
        let mut slot = None;
        // Seen first at tick 1 (accepted then); 2 s later it is past, at tick 4.
        assert_eq!(
            until_verdict(&mut slot, h.shared(), 1, 10),
            Some((4, Verdict::HeaderTimeout))
        );
        // Bytes that never make a request (a partial HTTP/2 preface) change nothing.
        let h = tracker.register_with(-1, limits());
        let mut slot = None;
        look(&mut slot, h.shared(), 1);
        h.shared().note_read();
        assert_eq!(
            until_verdict(&mut slot, h.shared(), 2, 10),
            Some((4, Verdict::HeaderTimeout))
        );
    }

    #[test]
    fn requests_in_flight_are_never_cut_and_idle_keep_alive_is_after_the_idle_timeout() {
        let tracker = Tracker::new();
        let h = tracker.register_with(-1, limits());
        let c = h.shared();
        let mut slot = None;
        look(&mut slot, c, 1);
        c.request_started(false);
        assert_eq!(until_verdict(&mut slot, c, 2, 100), None, "in flight");
        c.request_finished();
        // Last busy at tick 100: cut once more than 5 s idle, at tick 106 (the idle
        // timeout, not the header timeout).
        assert_eq!(
            until_verdict(&mut slot, c, 101, 200),
            Some((106, Verdict::IdleTimeout))
        );
    }

    #[test]
    fn a_slow_head_on_a_kept_alive_http1_connection_is_cut_at_the_header_timeout() {
        let tracker = Tracker::new();
        let h = tracker.register_with(-1, limits());
        let c = h.shared();
        let mut slot = None;
        look(&mut slot, c, 1);
        c.request_started(false);
        c.request_finished();
        look(&mut slot, c, 2);
        // A byte each tick, never a complete head.
        let mut cut_at = None;
        for t in 3..=20 {
            c.note_read();
            if look(&mut slot, c, t) != Verdict::Keep {
                cut_at = Some(t);
                break;
            }
        }
        assert_eq!(cut_at, Some(6), "first byte at tick 3, 2 s later");
        // HTTP/2 frames between streams (PING, WINDOW_UPDATE) are not a head.
        let h = tracker.register_with(-1, limits());
        let c = h.shared();
        let mut slot = None;
        look(&mut slot, c, 1);
        c.request_started(true);
        c.request_finished();
        for t in 2..=5 {
            c.note_read();
            assert_eq!(look(&mut slot, c, t), Verdict::Keep);
        }
    }
}
