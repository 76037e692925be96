//! The outcome of a shutdown.

use std::fmt;
use std::time::Duration;

use crate::hook::HookOutcome;
use crate::hook::HookReport;
use crate::tracker::ConnectionStats;

/// Why the drain was cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Forced {
    /// The drain deadline passed.
    Deadline,
    /// A hammer: the shutdown signal again, a [`Action::Hammer`](crate::Action) signal or
    /// [`Shutdown::force`](crate::Shutdown::force).
    Hammer,
}

/// What a shutdown did: returned by [`Shutdown::run`](crate::Shutdown::run) and logged.
///
/// [`exit_code`](Report::exit_code) turns it into the process's exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// What started the shutdown, e.g. `"SIGTERM"` or `"shutdown requested by the application"`.
    pub reason: String,
    /// Connections open when the drain began (plus those taken from the accept queue
    /// while the listeners closed).
    pub connections_at_drain: u64,
    /// Connections that finished by themselves before the deadline.
    pub connections_drained: u64,
    /// Connections cut at the deadline or by a hammer.
    pub connections_forced: u64,
    /// Upgraded connections (WebSocket and the like) open when the drain began.
    pub upgraded_at_drain: u64,
    /// Requests in flight when the drain began.
    pub requests_in_flight: u64,
    /// Requests received during the drain (keep-alive clients answered with
    /// `Connection: close`, HTTP/2 streams opened before the GOAWAY arrived).
    pub requests_during_drain: u64,
    /// Requests in flight on connections that were cut.
    pub requests_forced: u64,
    /// Set when the drain was cut short.
    pub forced: Option<Forced>,
    /// From the start of the drain (after any drain delay) to the last connection closed.
    pub drain_time: Duration,
    /// From the shutdown request to the end of the last hook.
    pub total_time: Duration,
    /// Each shutdown hook, in the order they ran.
    pub hooks: Vec<HookReport>,
    /// Set when this generation drained because it handed over to a new one (a
    /// graceful restart): the new generation's PID.
    pub handed_over_to: Option<u32>,
    /// Set when a full restart drained this process but could not execute the program
    /// anew: why.
    pub restart_failed: Option<String>,
}

/// What the coordinator observed around a drain, turned into a [`Report`].
#[derive(Debug)]
pub(crate) struct DrainFacts {
    pub(crate) reason: String,
    /// Connection counters just before the drain started, and after it ended.
    pub(crate) before: ConnectionStats,
    pub(crate) after: ConnectionStats,
    /// What `force_all` cut, if it ran.
    pub(crate) connections_forced: usize,
    pub(crate) requests_forced: u64,
    pub(crate) forced: Option<Forced>,
    pub(crate) drain_time: Duration,
    pub(crate) total_time: Duration,
    pub(crate) hooks: Vec<HookReport>,
    pub(crate) handed_over_to: Option<u32>,
}

impl Report {
    pub(crate) fn from_drain(f: DrainFacts) -> Report {
        let (before, after) = (f.before, f.after);
        // Forced = cut by `force_all` or, for a connection registered after its
        // snapshot (taken from the accept queue meanwhile), by its own drive loop.
        // Connections cut but still open at `after` are not among `closed`.
        let forced_now = after.forced.saturating_sub(before.forced);
        let closed = after.closed.saturating_sub(before.closed);
        let closed_unforced = closed.saturating_sub(forced_now.saturating_sub(after.open as u64));
        Report {
            reason: f.reason,
            connections_at_drain: before.open as u64
                + after.accepted.saturating_sub(before.accepted),
            connections_drained: closed_unforced,
            connections_forced: forced_now.max(f.connections_forced as u64),
            upgraded_at_drain: before.upgraded as u64,
            requests_in_flight: before.requests_in_flight,
            requests_during_drain: after.requests.saturating_sub(before.requests),
            requests_forced: f.requests_forced,
            forced: f.forced,
            drain_time: f.drain_time,
            total_time: f.total_time,
            hooks: f.hooks,
            handed_over_to: f.handed_over_to,
            restart_failed: None,
        }
    }
}

impl Report {
    /// `true` when every connection finished by itself, every hook completed, and a
    /// full restart (if asked for) did not fail.
    pub fn is_clean(&self) -> bool {
        self.restart_failed.is_none()
            && self.forced.is_none()
            && self.connections_forced == 0
            && self
                .hooks
                .iter()
                .all(|h| h.outcome == HookOutcome::Completed)
    }

    /// The exit status a process should end with: `0` when the shutdown was clean,
    /// `3` when connections were cut or a hook did not complete (so a supervisor or a
    /// deploy script can tell a lossy shutdown from a clean one).
    pub fn exit_code(&self) -> u8 {
        if self.is_clean() { 0 } else { 3 }
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "drained {} ({} in flight, {} more during the drain) in {:.3}s",
            plural(self.connections_drained, "connection", "connections"),
            plural(self.requests_in_flight, "request", "requests"),
            self.requests_during_drain,
            self.drain_time.as_secs_f64(),
        )?;
        match self.forced {
            Some(why) => write!(
                f,
                "; forced {} with {} in flight ({})",
                plural(self.connections_forced, "connection", "connections"),
                plural(self.requests_forced, "request", "requests"),
                match why {
                    Forced::Deadline => "deadline",
                    Forced::Hammer => "hammer",
                }
            )?,
            None => write!(f, "; forced 0")?,
        }
        let failed = self
            .hooks
            .iter()
            .filter(|h| h.outcome != HookOutcome::Completed)
            .count();
        write!(
            f,
            "; hooks: {} ran, {} did not complete",
            self.hooks.len(),
            failed
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(
        open: usize,
        accepted: u64,
        closed: u64,
        forced: u64,
        requests: u64,
    ) -> ConnectionStats {
        ConnectionStats {
            open,
            accepted,
            closed,
            forced,
            requests,
            ..ConnectionStats::default()
        }
    }

    fn facts(before: ConnectionStats, after: ConnectionStats, cut: usize) -> DrainFacts {
        DrainFacts {
            reason: "test".into(),
            before,
            after,
            connections_forced: cut,
            requests_forced: 0,
            forced: (cut > 0).then_some(Forced::Deadline),
            drain_time: Duration::ZERO,
            total_time: Duration::ZERO,
            hooks: Vec::new(),
            handed_over_to: None,
        }
    }

    #[test]
    fn a_clean_drain_counts_every_closed_connection_as_drained() {
        // 3 open at the start, 2 more taken from the accept queue, all closed by
        // themselves, 4 requests served meanwhile.
        let r = Report::from_drain(facts(stats(3, 10, 7, 0, 20), stats(0, 12, 12, 0, 24), 0));
        assert_eq!(r.connections_at_drain, 5);
        assert_eq!(r.connections_drained, 5);
        assert_eq!(r.connections_forced, 0);
        assert_eq!(r.requests_during_drain, 4);
        assert!(r.is_clean());
        assert_eq!(r.exit_code(), 0);
    }

    #[test]
    fn forced_connections_are_not_counted_as_drained_even_if_still_open() {
        // 4 open: 2 drained, 2 cut, of which 1 has not finished closing yet.
        let r = Report::from_drain(facts(stats(4, 4, 0, 0, 4), stats(1, 4, 3, 2, 4), 2));
        assert_eq!(r.connections_drained, 2);
        assert_eq!(r.connections_forced, 2);
        assert_eq!(r.exit_code(), 3);
    }

    #[test]
    fn a_failed_full_restart_is_not_clean() {
        let mut r = Report::from_drain(facts(stats(0, 0, 0, 0, 0), stats(0, 0, 0, 0, 0), 0));
        r.restart_failed = Some("No such file or directory".into());
        assert_eq!(r.exit_code(), 3);
    }
}
