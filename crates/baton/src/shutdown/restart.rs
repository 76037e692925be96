//! The graceful restart (spawn the next generation, wait until it is ready, roll back)
//! with its statistics, and the full restart's `exec`.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Cmd, End, RestartReply, Shutdown, Successor};
use crate::command::{Command, FollowUp};
use crate::error::Error;
use crate::failure::{RestartFailure, Restarted};
use crate::handoff;
use crate::notify;
use crate::origin::Generation;
use crate::report::Report;
use crate::signal::{Action, Signal};
use crate::sync::lock;

/// A new generation that failed or was aborted gets this long after `SIGTERM` to drain
/// what it may have accepted before it is killed.
const ABANDON_GRACE: Duration = Duration::from_secs(10);
/// A restart at the cap of live generations looks this often whether the oldest
/// draining one ended.
const CAP_LOOK: Duration = Duration::from_millis(20);
/// How long past its drain deadline a draining generation may outlive it before a
/// restart at the cap forces it.
const CAP_GRACE: Duration = Duration::from_secs(5);

/// The graceful restarts this generation attempted ([`Shutdown::restart_stats`]). A
/// generation that succeeds hands over and ends, so `ok` is 0 or 1; the new generation
/// starts its own.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RestartStats {
    /// Restarts that handed over to a ready new generation.
    pub ok: u64,
    /// Failed restarts, by reason (`exited`, `not-ready`, `spawn`, `executable`,
    /// `aborted`, `busy`, `draining`).
    pub failed: BTreeMap<&'static str, u64>,
    /// Restart requests folded into one in progress.
    pub coalesced: u64,
    /// Seconds from trigger to ready (or to failure), summed over the attempts.
    pub seconds_total: f64,
    /// The last attempt.
    pub last: Option<LastRestart>,
}

/// The last restart a generation attempted ([`RestartStats::last`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastRestart {
    /// Whether it handed over to a ready new generation.
    pub ok: bool,
    /// From the trigger to ready, or to the failure.
    pub took: Duration,
    /// What came of it, in words: `generation 3 pid 4242`, or why it failed.
    pub outcome: String,
}

/// The outcome of [`Shutdown::restart`]: resolves once the new generation is ready, or
/// the restart failed.
#[must_use = "the restart proceeds anyway; await this to learn its outcome"]
#[derive(Debug)]
pub struct RestartRequest {
    pub(super) rx: oneshot::Receiver<Result<Restarted, Error>>,
}

impl Future for RestartRequest {
    type Output = Result<Restarted, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|res| {
            res.unwrap_or(Err(Error::Restart(RestartFailure::Busy(
                "the coordinator is not running (`Shutdown::run` has not been called or has returned)",
            ))))
        })
    }
}

/// A restart that failed, and the shutdown that interrupted it (to be carried out).
pub(super) type Failed = (RestartFailure, Option<End>);

impl Shutdown {
    /// One graceful restart from the serve loop, its outcome sent to whoever asked (and
    /// to those whose requests were folded into it) and counted. `Ok` ends serving;
    /// `Err` with an `End` too (a shutdown interrupted it), without one serving goes
    /// on.
    pub(super) async fn restart_now(
        &self,
        reason: &str,
        reply: Option<RestartReply>,
        commands: &mut mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<Restarted, Option<End>> {
        let mut follow_up = FollowUp::default();
        let t0 = Instant::now();
        let outcome = match self.carry_out(reason, &mut follow_up, commands).await {
            Ok((restarted, announced)) => {
                self.probation(restarted, announced, &mut follow_up, commands)
                    .await
            }
            Err(failed) => Err(failed),
        };
        self.record(&outcome, t0.elapsed());
        if outcome.is_ok() {
            self.start_reporting();
        }
        let (_, coalesced) = follow_up.take();
        let replies = reply.into_iter().chain(coalesced);
        match outcome {
            Ok(restarted) => {
                for reply in replies {
                    let _ = reply.send(Ok(restarted.clone()));
                }
                Ok(restarted)
            }
            Err((failure, interrupted)) => {
                warn!(pid = std::process::id(), %reason, "restart failed, serving on: {failure}");
                for reply in replies {
                    let _ = reply.send(Err(Error::Restart(failure.clone())));
                }
                Err(interrupted)
            }
        }
    }

    fn record(&self, outcome: &Result<Restarted, Failed>, took: Duration) {
        let mut stats = lock(&self.inner.restarts);
        stats.seconds_total += took.as_secs_f64();
        let last = match outcome {
            Ok(r) => {
                stats.ok += 1;
                stats.coalesced += u64::from(r.coalesced);
                LastRestart {
                    ok: true,
                    took,
                    outcome: format!("generation {} pid {}", r.generation, r.pid),
                }
            }
            Err((f, _)) => {
                *stats.failed.entry(f.kind()).or_default() += 1;
                LastRestart {
                    ok: false,
                    took,
                    outcome: f.to_string(),
                }
            }
        };
        stats.last = Some(last);
    }

    /// Starts the next generation and waits until it is ready (or fails); folds the
    /// restart requests that come meanwhile into `follow_up`. On failure the new
    /// process is stopped and reaped.
    async fn carry_out(
        &self,
        reason: &str,
        follow_up: &mut FollowUp<RestartReply>,
        commands: &mut mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<(Restarted, Option<String>), Failed> {
        let inner = &self.inner;
        let pid = std::process::id();
        let triggered = Instant::now();
        let generation = self.generation() + 1;
        info!(pid, %reason, generation = self.generation(), "server reloading");
        // A previous generation standing by for this one can go: its probation covered
        // this one's first steps; this one now restarts in turn.
        self.release_predecessor();
        notify::reloading();
        notify::status(&format!("reloading: starting generation {generation}"));
        // The generation channel: open connections and totals go to the new generation
        // on it. Without one (not on this platform) they drain here, as before.
        let channel = match crate::channel::Channel::pair() {
            Ok(pair) => Some(pair),
            Err(e) => {
                debug!(error = %e, "no generation channel: open connections drain here");
                None
            }
        };
        // Until the new generation says which listeners it takes, expect it to take
        // them: a keep-alive response now keeps its connection, which moves at the
        // drain (if it takes none after all, such a connection closes after the idle
        // grace, as before the channel).
        inner.tracker.set_hand_over(channel.is_some());
        // The TLS session-ticket keys and the totals so far, in the channel before the
        // new generation starts (it reads them before it serves).
        if let Some((ours, _)) = &channel {
            for message in self.early_messages() {
                if let Err(e) =
                    crate::sys::send_nonblocking_with_fds(ours.as_fd(), &message.encode(), &[])
                {
                    warn!(error = %e, "cannot pass {} to the new generation", message.what());
                }
            }
        }
        // Keep-alive clients answered from now on reconnect (unless their connection
        // moves, above: set first, or a response in between would close it): the new
        // connection goes to whichever generation accepts it, never to one idle on a
        // generation that drains.
        inner.tracker.set_closing(true);
        let back_to_ready = || {
            inner.tracker.set_closing(false);
            inner.tracker.set_hand_over(false);
            // The failed generation may have written its PID already.
            if let Some(path) = &inner.settings.pidfile
                && let Err(e) = crate::pidfile::write(path, pid)
            {
                warn!(pid, error = %e, "cannot rewrite the pidfile after the failed restart");
            }
            notify::ready();
            notify::status(&format!(
                "serving: generation {} (pid {pid}); the restart failed",
                generation - 1
            ));
        };
        // Nothing is forced for a restart that cannot even start.
        if let Err(e) = inner.settings.program.check() {
            back_to_ready();
            return Err((e, None));
        }
        let draining = match self.room_for_one_more(follow_up, commands).await {
            Ok(draining) => draining,
            Err(failed) => {
                back_to_ready();
                return Err(failed);
            }
        };

        let spawned = handoff::spawn(
            &inner.settings.program,
            &lock(&inner.listeners),
            channel.as_ref().map(|(_, theirs)| theirs.as_fd()),
            generation,
            &draining,
        );
        let ours = channel.map(|(ours, _)| ours);
        let mut spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                back_to_ready();
                return Err((e, None));
            }
        };
        let spawn_time = triggered.elapsed();
        info!(
            pid,
            new_pid = spawned.pid,
            generation,
            "spawned the new generation; waiting until it is ready"
        );
        let ready = loop {
            tokio::select! {
                res = spawned.ready(inner.settings.ready_timeout) => break res,
                cmd = commands.recv() => {
                    if let Err(failed) = self.meanwhile(cmd, follow_up) {
                        spawned.abandon(ABANDON_GRACE);
                        return Err(failed);
                    }
                }
            }
        };
        let announced = match ready {
            Ok(announced) => announced,
            Err(failure) => {
                spawned.abandon(ABANDON_GRACE);
                back_to_ready();
                return Err((failure, None));
            }
        };
        let restarted = Restarted {
            pid: spawned.pid,
            generation,
            spawn: spawn_time,
            ready: spawned.started.elapsed(),
            coalesced: follow_up.asked(),
        };
        let takes = ours.map_or(0, |ours| self.connect_successor(ours));
        inner.tracker.set_hand_over(takes > 0);
        // Released first: the new generation is then the service manager's child when
        // the manager hears `MAINPID=` (one that is not is killed at once at a stop).
        spawned.release().await;
        inner.life.hand_over(restarted.pid);
        Ok((restarted, announced))
    }

    /// The new generation is ready: it serves new connections. For the probation
    /// window this one stops accepting but keeps its listeners and its connections; if
    /// the new one dies meanwhile, this one resumes. `Ok` once the new one is the
    /// service's (then this one drains); `Err` when it died (this one serves on) or a
    /// shutdown came (it is passed on to the new one, and this one stops too).
    async fn probation(
        &self,
        restarted: Restarted,
        announced: Option<String>,
        follow_up: &mut FollowUp<RestartReply>,
        commands: &mut mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<Restarted, Failed> {
        let inner = &self.inner;
        let pid = std::process::id();
        let window = inner.settings.probation;
        let mut state = self.successor_state();
        if !window.is_zero()
            && let Some(state) = &mut state
        {
            inner.tracker.pause_accepting(true);
            notify::ready();
            notify::status(&format!(
                "reloaded: generation {} (pid {}) serves new connections; generation {} (pid {pid}) stands by for {window:?}",
                restarted.generation,
                restarted.pid,
                restarted.generation - 1
            ));
            info!(
                pid,
                new_pid = restarted.pid,
                generation = restarted.generation,
                spawn = ?restarted.spawn,
                ready = ?restarted.ready,
                probation = ?window,
                "restart: the new generation is ready and serves new connections; this one stops accepting and stands by with its connections until the probation ends"
            );
            let ready_at = Instant::now();
            let deadline = tokio::time::sleep(window);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    gone = async {
                        let changed = state.wait_for(|s| *s != Successor::Serving).await;
                        matches!(changed.map(|s| *s), Ok(Successor::Gone))
                    } => {
                        if gone && super::generations::successor_died(restarted.pid).await {
                            let after = ready_at.elapsed();
                            return Err((self.resume(&restarted, after), None));
                        }
                        // It restarted in turn or shuts down (or closed the channel and
                        // lives on): the service is its.
                        break;
                    }
                    cmd = commands.recv() => match cmd {
                        Some(Command::Restart { reason, reply }) => {
                            let n = follow_up.join(reply);
                            info!(pid, %reason, "restart requested during the probation: the new generation takes over now and restarts ({n} asked)");
                            break;
                        }
                        Some(Command::FullRestart { reason, .. }) => {
                            warn!(pid, %reason, "full restart refused: a graceful restart is in progress");
                        }
                        Some(Command::Pass { signal }) => inner.user_hooks.run(signal),
                        Some(Command::Status { .. }) => {}
                        Some(Command::Shutdown(stop)) => {
                            // The service stops: the new generation too. This one stays
                            // the main process until both are done.
                            inner.tracker.pause_accepting(false);
                            pass_on(restarted.pid, libc::SIGTERM, "shutdown");
                            let reason = stop.reason.clone();
                            return Err((RestartFailure::Aborted { reason }, Some(End::Shutdown(stop))));
                        }
                        Some(Command::Hammer { reason }) => {
                            inner.tracker.pause_accepting(false);
                            if let Some(force) = crate::sys::generation_force_signal() {
                                pass_on(restarted.pid, force, "hammer");
                            }
                            return Err((RestartFailure::Aborted { reason: reason.clone() }, Some(End::Hammer(reason))));
                        }
                        None => break,
                    },
                }
            }
        }
        self.commit_hand_over(&restarted, follow_up, announced.as_deref());
        Ok(restarted)
    }

    /// The new generation is the service's now: the pidfile and the service manager
    /// say so, and a restart asked for meanwhile goes to it.
    fn commit_hand_over(
        &self,
        restarted: &Restarted,
        follow_up: &FollowUp<RestartReply>,
        announced: Option<&str>,
    ) {
        let inner = &self.inner;
        let pid = std::process::id();
        let generation = restarted.generation;
        if let Some(path) = &inner.settings.pidfile
            && let Err(e) = crate::pidfile::write(path, restarted.pid)
        {
            warn!(pid, error = %e, "cannot write the new generation's PID to the pidfile");
        }
        notify::ready_as(restarted.pid);
        notify::status(&format!(
            "serving: generation {generation} (pid {}); generation {} (pid {pid}) drains",
            restarted.pid,
            generation - 1
        ));
        info!(
            pid,
            new_pid = restarted.pid,
            generation,
            spawn = ?restarted.spawn,
            ready = ?restarted.ready,
            coalesced = restarted.coalesced,
            "restart: the new generation is ready; this one stops accepting and drains"
        );
        if follow_up.is_wanted() {
            ask_follow_up(restarted.pid, follow_up.asked(), announced);
        }
    }

    /// The new generation died during its probation: this one accepts again and serves
    /// on, as if the restart had not happened (the connections the dead one held are
    /// lost; nothing else is).
    fn resume(&self, restarted: &Restarted, after: Duration) -> RestartFailure {
        let inner = &self.inner;
        let pid = std::process::id();
        inner.tracker.set_hand_over(false);
        inner.tracker.set_closing(false);
        inner.tracker.pause_accepting(false);
        inner.life.resume(false);
        self.forget_successor();
        let failure = RestartFailure::DiedInProbation {
            pid: restarted.pid,
            after,
        };
        notify::ready();
        notify::status(&format!(
            "serving: generation {} (pid {pid}) resumed: generation {} (pid {}) died {:.1} s after it was ready",
            restarted.generation - 1,
            restarted.generation,
            restarted.pid,
            after.as_secs_f64()
        ));
        failure
    }

    /// A command that came during a restart: restarts are folded into it, a full
    /// restart is refused, a shutdown or hammer aborts it (`Err`, to be carried out).
    fn meanwhile(
        &self,
        cmd: Option<Cmd>,
        follow_up: &mut FollowUp<RestartReply>,
    ) -> Result<(), Failed> {
        let pid = std::process::id();
        match cmd {
            Some(Command::Restart { reason, reply }) => {
                let n = follow_up.join(reply);
                info!(pid, %reason, "restart requested during a restart: coalesced into it ({n} so far)");
                Ok(())
            }
            Some(Command::FullRestart { reason, .. }) => {
                warn!(pid, %reason, "full restart refused: a graceful restart is in progress");
                Ok(())
            }
            Some(Command::Pass { signal }) => {
                self.inner.user_hooks.run(signal);
                Ok(())
            }
            Some(Command::Status { .. }) => Ok(()),
            Some(Command::Shutdown(stop)) => {
                let reason = stop.reason.clone();
                Err((
                    RestartFailure::Aborted { reason },
                    Some(End::Shutdown(stop)),
                ))
            }
            Some(Command::Hammer { reason }) => Err((
                RestartFailure::Aborted {
                    reason: reason.clone(),
                },
                Some(End::Hammer(reason)),
            )),
            None => Err((RestartFailure::Busy("the coordinator is gone"), None)),
        }
    }

    /// The older generations still draining, this one added, once one more fits under
    /// the cap. A restart storm must not cut connections: rather than forcing the
    /// oldest draining generation, this restart waits for it to end (restart requests
    /// that come meanwhile fold into this one); only one that outlives its own drain
    /// deadline (which should have ended it) is forced.
    async fn room_for_one_more(
        &self,
        follow_up: &mut FollowUp<RestartReply>,
        commands: &mut mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<Vec<Generation>, Failed> {
        let max = self.inner.settings.max_generations;
        let pid = std::process::id();
        let give_up = Instant::now() + self.inner.settings.drain_timeout + CAP_GRACE;
        let mut told = false;
        loop {
            let mut draining: Vec<Generation> = crate::origin::origin()
                .draining
                .iter()
                .copied()
                .filter(Generation::alive)
                .collect();
            // Alive during the restart: the draining ones, this one and the new one.
            if draining.len() + 2 <= max {
                draining.extend(Generation::this_process());
                return Ok(draining);
            }
            if Instant::now() >= give_up {
                let oldest = draining[0];
                let sig = crate::sys::generation_force_signal()
                    .or_else(|| {
                        self.inner
                            .settings
                            .signals
                            .signal_for(Action::Hammer)
                            .map(Signal::as_raw)
                    })
                    .unwrap_or(libc::SIGKILL);
                warn!(
                    pid,
                    oldest = oldest.pid,
                    max,
                    "too many generations alive, and the oldest outlived its drain deadline: forcing it (signal {sig})"
                );
                let _ = crate::sys::kill(oldest.pid, sig);
            } else if !told {
                told = true;
                info!(
                    pid,
                    draining = draining.len(),
                    max,
                    "generations alive at the cap: this restart waits for the oldest draining one to end"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(CAP_LOOK) => {}
                cmd = commands.recv() => self.meanwhile(cmd, follow_up)?,
            }
        }
    }

    /// The full restart, once drained: executes the program anew in this process with
    /// the listening sockets; returns only if that failed (noted in `report`), or if a
    /// shutdown came during the drain (then it does not execute anything).
    pub(super) fn exec_full_restart(&self, report: &mut Report) {
        let inner = &self.inner;
        let pid = std::process::id();
        if inner.life.stop_asked() {
            info!(
                pid,
                "full restart abandoned: a shutdown was asked for during its drain"
            );
            notify::stopping();
            lock(&inner.listeners).clear();
            if let Some(path) = &inner.settings.pidfile {
                crate::pidfile::remove_if_ours(path);
            }
            return;
        }
        let listeners = std::mem::take(&mut *lock(&inner.listeners));
        info!(
            pid,
            exe = %inner.settings.program.exe.display(),
            "full restart: drained; executing the program anew with {} listening sockets",
            listeners.len()
        );
        // Restart and user-hook signals would end the process (their default action)
        // between the exec and the new image's handlers: ignore them across it.
        let ignored: Vec<Signal> = inner
            .settings
            .signals
            .iter()
            .filter(|(_, a)| matches!(a, Action::Restart | Action::FullRestart | Action::User))
            .map(|(s, _)| s)
            .collect();
        let e = handoff::exec_in_place(
            &inner.settings.program,
            &listeners,
            self.generation() + 1,
            &ignored,
        );
        warn!(pid, error = %e, "full restart: cannot execute the program; exiting");
        report.restart_failed = Some(e.to_string());
    }
}

/// Passes a shutdown (or hammer) that came during the probation on to the new
/// generation: the service stops, in both.
fn pass_on(successor: u32, signal: i32, what: &str) {
    if let Err(e) = crate::sys::kill(successor, signal) {
        warn!(successor, error = %e, "cannot pass the {what} on to the new generation");
    }
}

/// Requests that came in during a restart wanted a restart after it: ask the new
/// generation for one, by the restart signal it announced with its `READY=1` (its map
/// may differ from ours after an upgrade; without one, no signal is sent).
fn ask_follow_up(successor: u32, coalesced: u32, announced: Option<&str>) {
    let pid = std::process::id();
    match announced.and_then(|s| s.parse::<Signal>().ok()) {
        Some(sig) => match crate::sys::kill(successor, sig.as_raw()) {
            Ok(()) => info!(
                pid,
                successor, coalesced, "asked the new generation for one follow-up restart ({sig})"
            ),
            Err(e) => {
                warn!(pid, successor, error = %e, "cannot ask the new generation for a follow-up restart")
            }
        },
        None => warn!(
            pid,
            successor,
            coalesced,
            "the new generation announced no restart signal: the coalesced requests were served by this restart, no follow-up"
        ),
    }
}
