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

use tokio::time::Instant;

use super::{ConnShared, TrackerInner};
use crate::sync::lock;
use crate::sys;

/// How often the sweep looks.
const TICK: Duration = Duration::from_secs(1);

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
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(t) = tracker.upgrade() else { return };
        // Connections parked since the last tick freed hyper's buffers; give the memory
        // back to the system (the allocator keeps freed memory otherwise).
        if t.parked_since_trim.swap(0, Ordering::Relaxed) > 0 {
            sys::release_free_memory();
        }
        // Nothing parks once the drain started: idle connections move or close then.
        let parks = t.phase() < super::Phase::Draining;
        let now = Instant::now();
        let conns = lock(&t.conns);
        for (_, conn) in conns.iter() {
            match look(conn, now) {
                Verdict::Keep => {}
                Verdict::Park => {
                    if parks {
                        conn.ask_park();
                    }
                }
                verdict => cut(conn, verdict),
            }
        }
    }
}

/// Looks at one connection, updating its clock (see `conn::Clock`): what changed since
/// the last look (or since it was registered, with what it carried then).
fn look(conn: &ConnShared, now: Instant) -> Verdict {
    let (requests, in_flight) = conn.counts();
    let reads = conn.reads.load(Ordering::Relaxed);
    let busy = in_flight > 0 || conn.upgraded.load(Ordering::Relaxed);
    let mut clock = lock(&conn.clock);
    let quiet_reads = reads == clock.reads;
    if busy || requests != clock.requests || clock.active.is_none() {
        // Working, or a request came and went since the last look (or accepted since).
        clock.active = Some(now);
        clock.head = None;
    } else if !quiet_reads && requests > 0 && !conn.is_h2() && clock.head.is_none() {
        // Between HTTP/1 requests, bytes of the next one: its head is being read.
        clock.head = Some(now);
    }
    clock.requests = requests;
    clock.reads = reads;
    let (active, head) = (clock.active.unwrap_or(now), clock.head);
    drop(clock);
    if busy {
        return Verdict::Keep;
    }
    let limits = conn.limits;
    let passed = |since: Instant, limit: Duration| now.saturating_duration_since(since) > limit;
    if let Some(header) = limits.header {
        let head_started = if requests == 0 { Some(active) } else { head };
        if head_started.is_some_and(|since| passed(since, header)) {
            return Verdict::HeaderTimeout;
        }
    }
    if let Some(idle) = limits.idle
        && requests > 0
        && passed(active, idle)
    {
        return Verdict::IdleTimeout;
    }
    if let Some(park) = limits.park
        && requests > 0
        && !conn.is_h2()
        && head.is_none()
        && quiet_reads
        && passed(active, park)
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
    use crate::tracker::{History, Limits, Tracker};

    fn limits() -> Limits {
        Limits {
            header: Some(Duration::from_secs(2)),
            idle: Some(Duration::from_secs(5)),
            movable: false,
            park: None,
        }
    }

    /// Looks at `conn` at `t0` + `from..=to` seconds; returns the first second with a
    /// verdict.
    fn until_verdict(
        conn: &Arc<ConnShared>,
        t0: Instant,
        from: u64,
        to: u64,
    ) -> Option<(u64, Verdict)> {
        (from..=to).find_map(|t| match look(conn, t0 + Duration::from_secs(t)) {
            Verdict::Keep => None,
            v => Some((t, v)),
        })
    }

    #[test]
    fn a_silent_connection_is_cut_at_the_header_timeout() {
        let tracker = Tracker::new();
        let t0 = Instant::now();
        let h = tracker.register_with(-1, limits());
        // First seen at 1 s (accepted then, as far as the looks tell): 2 s later it is
        // past, at the look at 4 s.
        assert_eq!(
            until_verdict(h.shared(), t0, 1, 10),
            Some((4, Verdict::HeaderTimeout))
        );
        // Bytes that never make a request (a partial HTTP/2 preface) change nothing.
        let t0 = Instant::now();
        let h = tracker.register_with(-1, limits());
        look(h.shared(), t0 + Duration::from_secs(1));
        h.shared().note_read();
        assert_eq!(
            until_verdict(h.shared(), t0, 2, 10),
            Some((4, Verdict::HeaderTimeout))
        );
    }

    #[test]
    fn requests_in_flight_are_never_cut_and_idle_keep_alive_is_after_the_idle_timeout() {
        let tracker = Tracker::new();
        let t0 = Instant::now();
        let h = tracker.register_with(-1, limits());
        let c = h.shared();
        look(c, t0 + Duration::from_secs(1));
        c.request_started(false);
        assert_eq!(until_verdict(c, t0, 2, 100), None, "in flight");
        c.request_finished();
        // Last busy at 100 s: cut once more than 5 s idle, at 106 s (the idle
        // timeout, not the header timeout).
        assert_eq!(
            until_verdict(c, t0, 101, 200),
            Some((106, Verdict::IdleTimeout))
        );
    }

    #[test]
    fn a_slow_head_on_a_kept_alive_http1_connection_is_cut_at_the_header_timeout() {
        let tracker = Tracker::new();
        let t0 = Instant::now();
        let h = tracker.register_with(-1, limits());
        let c = h.shared();
        look(c, t0 + Duration::from_secs(1));
        c.request_started(false);
        c.request_finished();
        look(c, t0 + Duration::from_secs(2));
        // A byte each second, never a complete head.
        let mut cut_at = None;
        for t in 3..=20 {
            c.note_read();
            if look(c, t0 + Duration::from_secs(t)) != Verdict::Keep {
                cut_at = Some(t);
                break;
            }
        }
        assert_eq!(cut_at, Some(6), "first byte seen at 3 s, 2 s later");
        // HTTP/2 frames between streams (PING, WINDOW_UPDATE) are not a head.
        let t0 = Instant::now();
        let h = tracker.register_with(-1, limits());
        let c = h.shared();
        look(c, t0 + Duration::from_secs(1));
        c.request_started(true);
        c.request_finished();
        for t in 2..=5 {
            c.note_read();
            assert_eq!(look(c, t0 + Duration::from_secs(t)), Verdict::Keep);
        }
    }

    /// Issue 26, defect 2: a connection that moved was registered as new: cut by the
    /// header-read timeout although it was idle between requests, never parked again,
    /// and a half request that moved started its header-read clock anew.
    #[test]
    fn a_moved_connection_keeps_its_requests_and_its_clocks() {
        let tracker = Tracker::new();
        let park = Limits {
            park: Some(Duration::from_secs(1)),
            ..limits()
        };
        // Idle for 3 s when it moved: the idle timeout (5 s) comes 2 s later, and no
        // header-read timeout (2 s) before it.
        let t0 = Instant::now();
        let moved = History {
            requests: 7,
            idle_for: Duration::from_secs(3),
            head_for: None,
        };
        let h = tracker.register_taken_over(-1, limits(), moved);
        assert_eq!(
            until_verdict(h.shared(), t0, 1, 10),
            Some((3, Verdict::IdleTimeout))
        );
        // It parks again once idle long enough.
        let t0 = Instant::now();
        let h = tracker.register_taken_over(
            -1,
            park,
            History {
                idle_for: Duration::ZERO,
                ..moved
            },
        );
        assert_eq!(
            until_verdict(h.shared(), t0, 1, 10),
            Some((2, Verdict::Park))
        );
        // A half request head that had waited 1.5 s when it moved: cut 0.5 s later,
        // at the first look after that.
        let t0 = Instant::now();
        let h = tracker.register_taken_over(
            -1,
            limits(),
            History {
                requests: 1,
                idle_for: Duration::from_secs(2),
                head_for: Some(Duration::from_millis(1500)),
            },
        );
        assert_eq!(
            until_verdict(h.shared(), t0, 1, 10),
            Some((1, Verdict::HeaderTimeout))
        );
        // Its requests are the previous generation's: not counted here again.
        assert_eq!(tracker.stats().requests, 0);
        assert_eq!(tracker.stats().idle, 3);
    }

    /// The clocks a connection hands on are those the sweep kept.
    #[test]
    fn a_connection_hands_on_the_clocks_the_sweep_kept() {
        let tracker = Tracker::new();
        let t0 = Instant::now();
        let h = tracker.register_with(-1, limits());
        let c = h.shared();
        c.request_started(false);
        c.request_finished();
        look(c, t0 + Duration::from_secs(1));
        look(c, t0 + Duration::from_secs(2));
        let at = t0 + Duration::from_secs(4);
        let history = c.history(at, false);
        assert_eq!(
            (history.requests, history.idle_for, history.head_for),
            (1, Duration::from_secs(3), None)
        );
        // Bytes of the next request read since the last look: idle from now on, its
        // head started now.
        c.note_read();
        let history = c.history(at, true);
        assert_eq!(
            (history.idle_for, history.head_for),
            (Duration::ZERO, Some(Duration::ZERO))
        );
        // Seen by the sweep: the head's age travels.
        look(c, t0 + Duration::from_secs(5));
        let history = c.history(t0 + Duration::from_secs(6), true);
        assert_eq!(history.head_for, Some(Duration::from_secs(1)));
    }
}
