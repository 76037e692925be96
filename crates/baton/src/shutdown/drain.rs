//! The end of serving: the drain delay, the drain with its deadline, the force, the
//! shutdown hooks, the report. Takes what it needs (the tracker, the listeners, the
//! hooks) and the commands that still arrive, not the coordinator itself.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tracing::{info, warn};

use super::Cmd;
use crate::command::{Command, Escalation, Stop};
use crate::error::Error;
use crate::failure::RestartFailure;
use crate::handoff::Passed;
use crate::hook::{Hook, HookOutcome, HookReport, UserHooks};
use crate::notify;
use crate::origin::Generation;
use crate::report::{DrainFacts, Forced, Report};
use crate::sync::lock;
use crate::tracker::{Phase, Tracker};

/// After a forced close, how long to wait for the cut connections' tasks to notice.
const FORCE_GRACE: Duration = Duration::from_secs(1);

/// Why serving ended, and so how the drain goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DrainKind {
    /// A shutdown: the listeners take what waits in their queue, then close.
    Shutdown,
    /// After a graceful restart: the queue belongs to the new generation (`pid`).
    HandedOver { to: u32 },
    /// Before a full restart: the listeners stay open across the `exec`.
    FullRestart,
    /// A new generation the previous one gave up on: the queue belongs to that one, and
    /// the service is not stopping.
    GivenUp,
}

/// What the drain is to do.
#[derive(Debug)]
pub(super) struct DrainPlan {
    pub(super) kind: DrainKind,
    pub(super) reason: String,
    /// The drain deadline.
    pub(super) timeout: Duration,
    /// Serve on this long first, readiness false (zero: none).
    pub(super) delay: Duration,
    /// Forced before it began (a hammer ended serving).
    pub(super) hammered: bool,
}

/// The parts of the coordinator the drain works on.
pub(super) struct Parts<'a> {
    pub(super) tracker: &'a Tracker,
    pub(super) listeners: &'a Mutex<Vec<Passed>>,
    pub(super) hooks: &'a Mutex<Vec<Hook>>,
    pub(super) pidfile: Option<&'a Path>,
}

/// The commands that arrive once serving has ended.
pub(super) struct Intake<'a> {
    pub(super) commands: &'a mut mpsc::UnboundedReceiver<Cmd>,
    pub(super) user_hooks: &'a UserHooks,
    /// The generation this one handed over to, if it did: restarts are for that one.
    pub(super) successor: Option<u32>,
    /// Told once a shutdown or force arrives (a full restart then stops instead).
    pub(super) life: &'a super::life::Lifecycle,
    /// Whether a shutdown signal again forces the close.
    pub(super) escalation: Escalation,
}

/// A command that matters once serving has ended.
enum Late {
    Stop(Stop<super::RestartReply>),
    Hammer(String),
}

/// How a wait with a hammer in reach ended.
pub(super) enum Waited<T> {
    /// The work finished.
    Done(T),
    /// The deadline passed first.
    Deadline,
    /// A shutdown was asked for again and ends this wait (its deadline, if it has one).
    Again(Option<Duration>),
    /// A hammer came: what asked for it.
    Hammer(String),
}

impl Intake<'_> {
    /// The next shutdown or force. Restarts are refused meanwhile (the caller is told
    /// why) and user hooks run.
    async fn next(&mut self) -> Late {
        loop {
            let Some(cmd) = self.commands.recv().await else {
                // `Inner` holds a sender for as long as the coordinator lives.
                return std::future::pending().await;
            };
            let refused = || match self.successor {
                Some(successor) => RestartFailure::Draining { successor },
                None => RestartFailure::Busy("this generation is shutting down"),
            };
            match cmd {
                Command::Restart { reason, reply } => {
                    warn!(pid = std::process::id(), %reason, "restart refused: {}", refused());
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(Error::Restart(refused())));
                    }
                }
                Command::FullRestart { reason, .. } => {
                    warn!(pid = std::process::id(), %reason, "full restart refused: {}", refused());
                }
                Command::Pass { signal } => self.user_hooks.run(signal),
                Command::Status { .. } => {}
                Command::Shutdown(stop) => {
                    self.life.ask_stop();
                    return Late::Stop(stop);
                }
                Command::Hammer { reason } => {
                    self.life.ask_stop();
                    return Late::Hammer(reason);
                }
            }
        }
    }

    /// The one wait with a hammer in reach: runs `work` until it finishes, `deadline`
    /// passes, or a hammer comes (a force, or a shutdown that escalates). With
    /// `again_ends`, any shutdown asked for again ends the wait; otherwise one that does
    /// not escalate can only bring the deadline closer.
    pub(super) async fn wait<T>(
        &mut self,
        work: impl Future<Output = T>,
        mut deadline: Option<Instant>,
        again_ends: bool,
    ) -> Waited<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Waited::Done(out),
                () = sleep_until(deadline) => return Waited::Deadline,
                late = self.next() => match late {
                    Late::Hammer(reason) => return Waited::Hammer(reason),
                    Late::Stop(stop) => {
                        let hammers = self.escalation.hammers(&stop);
                        if again_ends {
                            return Waited::Again(stop.deadline);
                        }
                        if hammers {
                            return Waited::Hammer(stop.reason);
                        }
                        if let Some(signal) = stop.signal {
                            info!(
                                pid = std::process::id(),
                                "{signal}: already draining; the drain goes on to its deadline (Ctrl-C again forces it)"
                            );
                        }
                        if let (Some(t), Some(d)) = (stop.deadline, deadline.as_mut()) {
                            *d = (*d).min(Instant::now() + t);
                        }
                    }
                },
            }
        }
    }
}

/// Tells the service manager how the drain progresses, once a second, forever, from
/// the first second on: a drain that ends sooner says nothing (its first look used to
/// come at once, racing the drain's end: a stop of an idle server sometimes asked for
/// more time it did not need, and a test that expects no such message failed under
/// load).
async fn keep_extending(tracker: &Tracker) {
    let mut keeper = notify::TimeoutKeeper::new();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + notify::PROGRESS_CHECK,
        notify::PROGRESS_CHECK,
    );
    loop {
        tick.tick().await;
        let s = tracker.stats();
        keeper.observe(
            (s.open, s.requests_in_flight, s.requests, s.closed),
            |(open, in_flight, _, _)| {
                format!("draining: {open} connections open, {in_flight} requests in flight")
            },
        );
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The drain (with its delay, for a shutdown), the force if needed, the hooks.
pub(super) async fn drain(plan: DrainPlan, parts: Parts<'_>, intake: &mut Intake<'_>) -> Report {
    let Parts {
        tracker,
        listeners,
        hooks,
        pidfile,
    } = parts;
    let pid = std::process::id();
    let started = Instant::now();
    match plan.kind {
        DrainKind::Shutdown => {
            info!(pid, reason = %plan.reason, "shutting down");
            // A generation whose predecessor still runs may be one that the predecessor
            // gave up on (ready too late): it must not tell systemd that the service
            // stops. (A confirmed one stopped while its predecessor drains skips this
            // informational message too.)
            let origin = crate::origin::origin();
            let predecessor_runs =
                origin.parent.is_some() && origin.draining.last().is_some_and(Generation::alive);
            if !predecessor_runs {
                notify::stopping();
            }
        }
        DrainKind::HandedOver { .. } | DrainKind::GivenUp => {}
        DrainKind::FullRestart => {
            info!(pid, reason = %plan.reason, "full restart: draining completely first");
            notify::reloading();
        }
    }
    let mut drain_timeout = plan.timeout;
    let mut hammered = plan.hammered;

    // Drain delay: serve on, readiness false. Any shutdown asked again ends it early; a
    // hammer forces.
    tracker.advance(Phase::DelayingDrain);
    if !hammered && !plan.delay.is_zero() {
        info!(pid, delay = ?plan.delay, "readiness now reports draining; serving on until the drain starts");
        match intake
            .wait(tokio::time::sleep(plan.delay), None, true)
            .await
        {
            Waited::Done(()) | Waited::Deadline => {}
            Waited::Again(deadline) => {
                if let Some(t) = deadline {
                    drain_timeout = drain_timeout.min(t);
                }
                info!(pid, "shutdown asked again: the drain starts now");
            }
            Waited::Hammer(_) => hammered = true,
        }
    }

    // Drain. At a plain shutdown the listeners take what waits in their accept queue,
    // then close (our duplicates first, so that the socket really closes). At a
    // hand-over or a full restart they leave the queue alone: it belongs to the
    // generation that takes over the same socket.
    let sweep = plan.kind == DrainKind::Shutdown;
    tracker.set_sweep(sweep);
    if plan.kind != DrainKind::FullRestart {
        lock(listeners).clear();
    }
    let before = tracker.stats();
    let drain_started = Instant::now();
    tracker.advance(Phase::Draining);
    info!(
        pid,
        connections = before.open,
        requests_in_flight = before.requests_in_flight,
        deadline = ?drain_timeout,
        "draining: {}, finishing requests in flight",
        if sweep { "listeners closed" } else { "not accepting any more" }
    );
    let mut forced_by = hammered.then_some(Forced::Hammer);
    if forced_by.is_none() {
        let deadline = drain_started + drain_timeout;
        // While the service manager waits for this process to stop (or to come back,
        // at a full restart), its timeout is extended for as long as the drain makes
        // progress (see `TimeoutKeeper`).
        let extend = matches!(plan.kind, DrainKind::Shutdown | DrainKind::FullRestart);
        let work = async {
            tokio::select! {
                () = tracker.idle() => {}
                () = keep_extending(tracker), if extend => {}
            }
        };
        match intake.wait(work, Some(deadline), false).await {
            Waited::Done(()) | Waited::Again(_) => {}
            Waited::Deadline => forced_by = Some(Forced::Deadline),
            Waited::Hammer(reason) => {
                warn!(pid, %reason, "hammer: forcing the close now");
                forced_by = Some(Forced::Hammer);
            }
        }
    }
    let (mut connections_forced, mut requests_forced) = (0, 0);
    if let Some(why) = forced_by {
        // Mark and cut first, publish the phase second: connection tasks drop their
        // connection when they see `Forcing`, and one dropped before `force_all`
        // reached it would be counted as drained.
        (connections_forced, requests_forced) = tracker.force_all();
        tracker.advance(Phase::Forcing);
        if why == Forced::Deadline {
            warn!(
                pid,
                connections = connections_forced,
                requests = requests_forced,
                deadline = ?drain_timeout,
                "drain deadline reached: cutting what is still open"
            );
        }
        // The cut connections' tasks see EOF and end; wait a moment for them so that
        // the counts below are final.
        if timeout(FORCE_GRACE, tracker.idle()).await.is_err() {
            warn!(
                pid,
                "some forced connections are still open after {FORCE_GRACE:?}"
            );
        }
    }
    let drain_time = drain_started.elapsed();
    let after = tracker.stats();

    tracker.advance(Phase::Finalizing);
    let hooks = std::mem::take(&mut *lock(hooks));
    let hooks = run_hooks(hooks, intake).await;
    tracker.advance(Phase::Done);
    if plan.kind == DrainKind::Shutdown
        && let Some(path) = pidfile
    {
        crate::pidfile::remove_if_ours(path);
    }

    let handed_over_to = match plan.kind {
        DrainKind::HandedOver { to } => Some(to),
        _ => None,
    };
    let report = Report::from_drain(DrainFacts {
        reason: plan.reason,
        before,
        after,
        connections_forced,
        requests_forced,
        forced: forced_by,
        drain_time,
        total_time: started.elapsed(),
        hooks,
        handed_over_to,
    });
    let what = match plan.kind {
        DrainKind::HandedOver { .. } => "drain after the hand-over complete",
        DrainKind::GivenUp => "drain of the generation given up on complete",
        DrainKind::FullRestart => "drain before the full restart complete",
        DrainKind::Shutdown => "shutdown complete",
    };
    if report.is_clean() {
        info!(pid, "{what}: {report}");
    } else {
        warn!(pid, "{what}: {report}");
    }
    report
}

/// Runs the shutdown hooks in order, each to its end or limit; a hammer abandons the
/// one running and the rest.
async fn run_hooks(hooks: Vec<Hook>, intake: &mut Intake<'_>) -> Vec<HookReport> {
    let pid = std::process::id();
    let mut reports = Vec::with_capacity(hooks.len());
    let mut hooks = hooks.into_iter();
    while let Some(hook) = hooks.next() {
        let (name, limit) = (hook.name.clone(), hook.limit);
        info!(pid, hook = %name, limit = ?limit, "running shutdown hook");
        let started = Instant::now();
        let reason = match intake.wait(hook.run(), None, false).await {
            Waited::Done(report) => {
                match &report.outcome {
                    HookOutcome::Completed => {
                        info!(pid, hook = %name, elapsed = ?report.elapsed, "shutdown hook completed");
                    }
                    outcome => {
                        warn!(pid, hook = %name, elapsed = ?report.elapsed, "shutdown hook {outcome}");
                    }
                }
                reports.push(report);
                continue;
            }
            Waited::Hammer(reason) => reason,
            // Neither happens without a deadline and with `again_ends` off; were one to,
            // stopping the hooks is the safe side.
            Waited::Deadline | Waited::Again(_) => "the wait for the hooks ended".to_owned(),
        };
        warn!(pid, %reason, hook = %name, "hammer during the hooks: abandoning the rest");
        // The running hook's task was aborted with its future; say how long it had.
        reports.push(HookReport {
            name,
            limit,
            outcome: HookOutcome::Abandoned,
            elapsed: started.elapsed(),
        });
        reports.extend(hooks.map(Hook::abandoned));
        break;
    }
    reports
}
