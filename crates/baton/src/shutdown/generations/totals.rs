//! The totals of the whole service across generations: what a generation inherits
//! from the ones before it, and reports to the next.

use tracing::debug;

use super::{Outbound, TOTALS_WAIT};
use crate::channel::Message;
use crate::failure::FailureKind;
use crate::shutdown::RestartStats;
use crate::shutdown::Shutdown;
use crate::sync::lock;
use crate::tracker::ConnectionStats;

impl Shutdown {
    /// This generation's totals with those of the ones before it.
    fn totals(&self) -> Totals {
        let mut totals = Totals::from_stats(&self.connections_all_generations());
        totals.set_restarts(&self.restart_stats_all_generations());
        totals
    }

    /// What the next generation takes before it serves: the TLS session-ticket keys (so
    /// that clients resume their sessions there) and the totals so far (so that its
    /// counters start where this one's are, whatever happens to this one later).
    pub(in crate::shutdown) fn early_messages(&self) -> Vec<Message> {
        let mut early = Vec::new();
        #[cfg(feature = "tls")]
        if let Some(keys) = crate::tickets::export() {
            early.push(Message::Keys(keys));
        }
        early.push(Message::Totals {
            totals: self.totals().to_wire(),
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

    /// Takes the totals the previous generation reported (`numbers` as on the wire).
    pub(in crate::shutdown) fn inherit(&self, numbers: &[u64]) {
        lock(&self.links().inherited_totals).update(Totals::from_wire(numbers));
        self.links().totals_seen.send_modify(|n| *n += 1);
    }

    /// Sends this generation's totals (with those of the ones before it) to the next.
    pub(crate) async fn send_totals(&self, to: &Outbound, last: bool) {
        let totals = self.totals().to_wire();
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
    pub fn connections_all_generations(&self) -> ConnectionStats {
        let own = self.inner.tracker.stats();
        let mut own_t = Totals::from_stats(&own);
        // Moved connections: counted as accepted where they were accepted, as closed
        // where they closed.
        own_t.accepted = own.accepted.saturating_sub(own.taken_over);
        own_t.closed = own.closed.saturating_sub(own.handed_over);
        let mut all = lock(&self.links().inherited_totals).plus(own_t).to_stats();
        all.parked = own.parked;
        all
    }

    /// The graceful restarts of the whole service: this generation's and those of the
    /// ones before it (counters only: `last` is this generation's).
    /// [`restart_stats`](Shutdown::restart_stats) is this generation's alone.
    pub fn restart_stats_all_generations(&self) -> RestartStats {
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

/// Counters a generation carries over to the next one: its own plus what it was given
/// by its predecessor (see [`Shutdown::connections_all_generations`]). On the
/// generation channel they are numbers in the order of [`Totals::slots`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub(crate) accepted: u64,
    pub(crate) open: u64,
    pub(crate) new: u64,
    pub(crate) active: u64,
    pub(crate) idle: u64,
    pub(crate) upgraded: u64,
    pub(crate) closed: u64,
    pub(crate) requests: u64,
    pub(crate) requests_in_flight: u64,
    pub(crate) forced: u64,
    pub(crate) timed_out: u64,
    pub(crate) handed_over: u64,
    pub(crate) taken_over: u64,
    pub(crate) restarts_ok: u64,
    pub(crate) restarts_coalesced: u64,
    /// Rounded up: the next generation never shows less than this one did.
    pub(crate) restart_micros: u64,
    /// Failed restarts, by kind in the order of [`FailureKind::ALL`].
    pub(crate) restarts_failed: [u64; FailureKind::ALL.len()],
}

/// Whether a number is the state now (follows the last report, 0 once its generation
/// is gone) or a count (never goes back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Gauge,
    Counter,
}

impl Totals {
    /// Every number with what it is, in the order of the wire: a number is added at the
    /// end (an older generation drops what it does not know; a newer one reads 0 for
    /// what an older one did not send).
    fn slots(&mut self) -> impl Iterator<Item = (&mut u64, Slot)> {
        use Slot::{Counter, Gauge};
        let Totals {
            accepted,
            open,
            new,
            active,
            idle,
            upgraded,
            closed,
            requests,
            requests_in_flight,
            forced,
            timed_out,
            handed_over,
            taken_over,
            restarts_ok,
            restarts_coalesced,
            restart_micros,
            restarts_failed,
        } = self;
        [
            (accepted, Counter),
            (open, Gauge),
            (new, Gauge),
            (active, Gauge),
            (idle, Gauge),
            (upgraded, Gauge),
            (closed, Counter),
            (requests, Counter),
            (requests_in_flight, Gauge),
            (forced, Counter),
            (timed_out, Counter),
            (handed_over, Counter),
            (taken_over, Counter),
            (restarts_ok, Counter),
            (restarts_coalesced, Counter),
            (restart_micros, Counter),
        ]
        .into_iter()
        .chain(restarts_failed.iter_mut().map(|n| (n, Counter)))
    }

    pub(crate) fn to_wire(mut self) -> Vec<u64> {
        self.slots().map(|(n, _)| *n).collect()
    }

    pub(crate) fn from_wire(numbers: &[u64]) -> Totals {
        let mut t = Totals::default();
        for ((slot, _), n) in t.slots().zip(numbers) {
            *slot = *n;
        }
        t
    }

    pub(crate) fn from_stats(s: &ConnectionStats) -> Totals {
        let n = |v: usize| v as u64;
        Totals {
            accepted: s.accepted,
            open: n(s.open),
            new: n(s.new),
            active: n(s.active),
            idle: n(s.idle),
            upgraded: n(s.upgraded),
            closed: s.closed,
            requests: s.requests,
            requests_in_flight: s.requests_in_flight,
            forced: s.forced,
            timed_out: s.timed_out,
            handed_over: s.handed_over,
            taken_over: s.taken_over,
            ..Totals::default()
        }
    }

    pub(crate) fn to_stats(self) -> ConnectionStats {
        let n = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        ConnectionStats {
            accepted: self.accepted,
            open: n(self.open),
            new: n(self.new),
            active: n(self.active),
            idle: n(self.idle),
            upgraded: n(self.upgraded),
            closed: self.closed,
            requests: self.requests,
            requests_in_flight: self.requests_in_flight,
            forced: self.forced,
            timed_out: self.timed_out,
            handed_over: self.handed_over,
            taken_over: self.taken_over,
            // Not carried over: parking is this process's business.
            parked: 0,
        }
    }

    /// Takes a later report: the gauges as reported, each counter at least where it
    /// was (reports sent by two tasks may arrive out of order).
    pub(crate) fn update(&mut self, mut later: Totals) {
        for ((mine, slot), (new, _)) in self.slots().zip(later.slots()) {
            *mine = match slot {
                Slot::Gauge => *new,
                Slot::Counter => (*mine).max(*new),
            };
        }
    }

    /// These totals and `other`'s, number by number.
    pub(crate) fn plus(mut self, mut other: Totals) -> Totals {
        for ((mine, _), (theirs, _)) in self.slots().zip(other.slots()) {
            *mine = mine.saturating_add(*theirs);
        }
        self
    }

    /// The generation is gone: nothing of it is open any more.
    pub(crate) fn gone(&mut self) {
        for (n, slot) in self.slots() {
            if slot == Slot::Gauge {
                *n = 0;
            }
        }
    }

    pub(crate) fn set_restarts(&mut self, r: &RestartStats) {
        self.restarts_ok = r.ok;
        self.restarts_coalesced = r.coalesced;
        self.restart_micros = (r.seconds_total * 1e6).ceil() as u64;
        for (n, kind) in self.restarts_failed.iter_mut().zip(FailureKind::ALL) {
            *n = r.failed.get(kind.name()).copied().unwrap_or(0);
        }
    }

    /// Adds the restart counters to `r`.
    pub(crate) fn add_restarts(&self, r: &mut RestartStats) {
        r.ok += self.restarts_ok;
        r.coalesced += self.restarts_coalesced;
        r.seconds_total += self.restart_micros as f64 / 1e6;
        for (n, kind) in self.restarts_failed.iter().zip(FailureKind::ALL) {
            if *n > 0 {
                *r.failed.entry(kind.name()).or_default() += n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_never_go_back_and_gauges_follow_the_last_report() {
        let mut t = Totals::default();
        let s = ConnectionStats {
            accepted: 10,
            open: 4,
            requests: 100,
            ..Default::default()
        };
        t.update(Totals::from_stats(&s));
        let mut older = s;
        older.accepted = 8;
        older.open = 6;
        older.requests = 90;
        t.update(Totals::from_stats(&older)); // a report that overtook it
        let got = t.to_stats();
        assert_eq!((got.accepted, got.requests, got.open), (10, 100, 6));
        t.gone();
        assert_eq!((t.to_stats().open, t.to_stats().accepted), (0, 10));
        assert_eq!(Totals::from_stats(&s).to_stats(), s);
    }

    #[test]
    fn restart_counters_add_up() {
        let mut r = RestartStats {
            ok: 1,
            coalesced: 2,
            seconds_total: 0.5,
            ..Default::default()
        };
        r.failed.insert("exited", 3);
        let mut t = Totals::default();
        t.set_restarts(&r);
        let mut sum = r.clone();
        t.add_restarts(&mut sum);
        assert_eq!((sum.ok, sum.coalesced, sum.failed["exited"]), (2, 4, 6));
        assert!((sum.seconds_total - 1.0).abs() < 1e-6);
    }

    #[test]
    fn the_wire_keeps_every_number_and_tolerates_other_versions() {
        let mut t = Totals::default();
        for (i, (n, _)) in t.slots().enumerate() {
            *n = i as u64 + 1;
        }
        let wire = t.to_wire();
        assert_eq!(wire.len(), 16 + FailureKind::ALL.len());
        assert_eq!(Totals::from_wire(&wire), t);
        // An older generation that sent fewer numbers: the rest are 0.
        let older = Totals::from_wire(&wire[..13]);
        assert_eq!((older.taken_over, older.restarts_ok), (13, 0));
        // A newer one that sent more: the extra ones are dropped.
        let mut newer = wire.clone();
        newer.push(99);
        assert_eq!(Totals::from_wire(&newer), t);
    }
}
