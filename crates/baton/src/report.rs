//! The outcome of a shutdown.

use std::fmt;
use std::time::Duration;

use crate::HookReport;
use crate::hook::HookOutcome;

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
}

impl Report {
    /// `true` when every connection finished by itself and every hook completed.
    pub fn is_clean(&self) -> bool {
        self.forced.is_none()
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
