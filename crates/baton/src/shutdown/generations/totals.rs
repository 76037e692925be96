//! The totals of the whole service across generations: what a generation inherits
//! from the ones before it, and reports to the next.

use tracing::debug;

use super::{Outbound, TOTALS_WAIT};
use crate::channel::{Message, Totals};
use crate::shutdown::Shutdown;
use crate::sync::lock;

impl Shutdown {
    /// What the next generation takes before it serves: the TLS session-ticket keys (so
    /// that clients resume their sessions there) and the totals so far (so that its
    /// counters start where this one's are, whatever happens to this one later).
    pub(in crate::shutdown) fn early_messages(&self) -> Vec<Message> {
        let mut early = Vec::new();
        #[cfg(feature = "tls")]
        if let Some(keys) = crate::http::tickets::export() {
            early.push(Message::Keys(keys));
        }
        let mut totals = Totals::from_stats(&self.connections_all_generations());
        totals.set_restarts(&self.restart_stats_all_generations());
        early.push(Message::Totals {
            totals,
            last: false,
        });
        early
    }

    /// Once the restart is counted: sends the totals to the next generation now (it
    /// asks again whenever it answers for them, and gets the last ones at this one's
    /// end, `report_end`).
    pub(in crate::shutdown) fn start_reporting(&self) {
        let Some(to) = self.successor() else {
            return;
        };
        let shutdown = self.clone();
        tokio::spawn(async move { shutdown.send_totals(&to, false).await });
    }

    /// Sends this generation's totals (with those of the ones before it) to the next.
    pub(crate) async fn send_totals(&self, to: &Outbound, last: bool) {
        let mut totals = Totals::from_stats(&self.connections_all_generations());
        totals.set_restarts(&self.restart_stats_all_generations());
        if let Err(e) = to
            .channel
            .send(&Message::Totals { totals, last }, &[])
            .await
        {
            debug!(error = %e, "cannot send the totals to the next generation");
        }
    }

    /// After the drain of a hand-over: the last totals to the next generation.
    pub(in crate::shutdown) async fn report_end(&self) {
        if let Some(task) = lock(&self.links().outbound_task).take() {
            task.abort();
        }
        if let Some(to) = self.successor() {
            let _ = tokio::time::timeout(TOTALS_WAIT, self.send_totals(&to, true)).await;
        }
    }

    /// The connections of the whole service: this generation's and those of the ones
    /// before it, as they last reported them (they report while they drain, a few
    /// times a second, and once at their end).
    ///
    /// The totals (`accepted`, `closed`, `requests`, `forced`, `timed_out`) count from the
    /// start of the first generation and never go back at a restart; a connection that
    /// moved to the next generation counts once (accepted where it was accepted, closed
    /// where it closed). The state now (`open` and its parts, `requests_in_flight`)
    /// includes older generations still draining. [`connections`](Shutdown::connections)
    /// is this generation's alone.
    pub fn connections_all_generations(&self) -> crate::ConnectionStats {
        let own = self.inner.tracker.stats();
        let mut own_t = Totals::from_stats(&own);
        // Moved connections: counted as accepted where they were accepted, as closed
        // where they closed.
        own_t.0[0] = own.accepted.saturating_sub(own.taken_over);
        own_t.0[6] = own.closed.saturating_sub(own.handed_over);
        let base = *lock(&self.links().inherited_totals);
        let mut sum = Totals::default();
        for (i, slot) in sum.0.iter_mut().enumerate() {
            *slot = base.0[i].saturating_add(own_t.0[i]);
        }
        let mut all = sum.to_stats();
        all.parked = own.parked;
        all
    }

    /// The graceful restarts of the whole service: this generation's and those of the
    /// ones before it (counters only: `last` is this generation's).
    /// [`restart_stats`](Shutdown::restart_stats) is this generation's alone.
    pub fn restart_stats_all_generations(&self) -> crate::RestartStats {
        let mut r = self.restart_stats();
        lock(&self.links().inherited_totals).add_restarts(&mut r);
        r
    }

    /// While the previous generation still drains: asks it for its totals now and
    /// waits (a second at most) until they came, so that
    /// [`connections_all_generations`](Shutdown::connections_all_generations) counts
    /// everything it counted until now. At once for a first generation, or once the
    /// previous one is gone (its last totals came with its end).
    pub async fn totals_settled(&self) {
        let Some(channel) = lock(&self.links().inbound_channel).clone() else {
            return;
        };
        let mut rx = self.links().totals_seen.subscribe();
        let seen = *rx.borrow_and_update();
        if channel.send(&Message::TotalsPlease, &[]).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(TOTALS_WAIT, rx.wait_for(|n| *n > seen)).await;
    }
}
