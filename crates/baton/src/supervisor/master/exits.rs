//! Workers that leave: drains (with their deadline and the hammer), the serving
//! worker's exit, the crash backoff and respawn.

use std::io;
use std::process::ExitStatus;

use tokio::time::Instant;
use tracing::{info, warn};

use super::state::{DrainEnd, Draining, Gen, Kind, State};
use super::supervise::{FIRST_BACKOFF, HEALTHY_RUN, MAX_BACKOFF, Supervisor, idle_placeholder};
use crate::handoff::describe;
use crate::notify;
use crate::supervisor::control::{Ending, Progress};

impl Supervisor<'_> {
    /// Once a second while stopping: what the workers that drain still hold, for the
    /// service manager's stop timeout (see `TimeoutKeeper`).
    pub(super) fn observe_stop(&self, keeper: &mut notify::TimeoutKeeper<(usize, usize)>) {
        let pids: Vec<u32> = self.draining.iter().map(|d| d.pid).collect();
        let sockets: usize = pids
            .iter()
            .filter_map(|pid| crate::sys::open_sockets(*pid))
            .map(|n| n.saturating_sub(self.passed))
            .sum();
        keeper.observe((pids.len(), sockets), |(workers, sockets)| {
            format!("stopping: {workers} worker(s) draining, {sockets} connections open")
        });
    }

    pub(super) fn hammer(&mut self) {
        self.hammer.send_replace(true);
    }

    pub(super) fn draining_step(&self, g: &Gen, queued: bool) -> Progress {
        let pid = g.worker.pid();
        Progress::Draining {
            generation: g.generation,
            pid,
            open_sockets: crate::sys::open_sockets(pid).map(|n| n.saturating_sub(self.passed)),
            queued,
        }
    }

    /// Sends the drain signal to `g` and waits for it in a task: `SIGKILL` after the
    /// drain timeout, or at once on a hammer.
    pub(super) fn drain(&mut self, mut g: Gen) {
        let (sig, limit) = (self.cfg.drain_signal, self.cfg.drain_timeout);
        let pid = g.worker.pid();
        if let Err(e) = g.worker.signal(sig) {
            warn!(worker = pid, error = %e, "cannot send {sig}");
        }
        self.draining.push(Draining {
            pid,
            generation: g.generation,
            since: Instant::now(),
        });
        let mut hammer = self.hammer.subscribe();
        self.drains.spawn(async move {
            let t0 = Instant::now();
            let mut killed = false;
            let status = tokio::select! {
                status = g.worker.wait() => status,
                () = tokio::time::sleep(limit) => {
                    warn!(worker = pid, "the worker did not exit within {limit:?} of {sig}: killing it");
                    killed = true;
                    let _ = g.worker.kill();
                    g.worker.wait().await
                }
                () = async { let _ = hammer.wait_for(|h| *h).await; } => {
                    killed = true;
                    let _ = g.worker.kill();
                    g.worker.wait().await
                }
            };
            DrainEnd {
                pid,
                generation: g.generation,
                status,
                killed,
                took: t0.elapsed(),
            }
        });
    }

    /// The serving worker exited by itself.
    pub(super) fn on_exit(&mut self, status: io::Result<ExitStatus>) {
        let me = std::process::id();
        let (gone, starting) = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Probation(p) => {
                self.probation_failed(*p, &status);
                self.last_exit = Some(status);
                return;
            }
            State::Serving(g) => (g, None),
            State::Reloading {
                serving: Some(g),
                start,
            } => (g, Some(start)),
            other => {
                self.state = other;
                return;
            }
        };
        self.served(&gone);
        let described = describe(&status);
        self.last_exit = Some(status);
        self.state = match starting {
            // A reload under way: its worker takes over once ready (or a respawn
            // follows its failure).
            Some(start) => {
                warn!(
                    pid = me,
                    worker = gone.worker.pid(),
                    status = described,
                    "the worker exited unexpectedly; gen {} (starting) takes over",
                    start.new.generation
                );
                State::Reloading {
                    serving: None,
                    start,
                }
            }
            None => {
                warn!(
                    pid = me,
                    worker = gone.worker.pid(),
                    status = described,
                    "the worker exited unexpectedly; starting a new one in {:?}",
                    self.backoff
                );
                self.respawn_later()
            }
        };
    }

    /// Worker `g` leaves the serving role: if it served for a while, the crash backoff
    /// starts over (issue 32: it was reset only when the worker that died had run
    /// long; crashes days apart, each of a new worker just after its ready, took it to
    /// 10 s although healthy workers served in between).
    pub(super) fn served(&mut self, g: &Gen) {
        if g.since.elapsed() > HEALTHY_RUN {
            self.backoff = FIRST_BACKOFF;
        }
    }

    /// The state that starts a worker again after the backoff (which then doubles).
    pub(super) fn respawn_later(&mut self) -> State {
        let respawn_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        State::Idle { respawn_at }
    }

    /// The respawn time came.
    pub(super) fn respawn(&mut self) {
        if !matches!(self.state, State::Idle { .. }) {
            return;
        }
        self.state = match self.start(Kind::Respawn, Vec::new()) {
            Ok(start) => State::Starting(start),
            Err(e) => {
                warn!(
                    pid = std::process::id(),
                    "the new worker failed to start: {e}"
                );
                self.respawn_later()
            }
        };
    }

    pub(super) fn on_drained(&mut self, end: DrainEnd) {
        let me = std::process::id();
        self.draining.retain(|d| d.pid != end.pid);
        let how = if end.killed {
            Ending::Killed { after: end.took }
        } else {
            Ending::Exited {
                status: describe(&end.status),
                after: end.took,
            }
        };
        let step = Progress::Ended {
            generation: end.generation,
            how,
        };
        info!(pid = me, worker = end.pid, "{step}");
        if let Some(i) = self.awaiting_drain.iter().position(|(p, _)| *p == end.pid) {
            let (_, replies) = self.awaiting_drain.swap_remove(i);
            let serving = self.state.serving().map_or_else(
                || "no worker serves now (the master is stopping, or the new one died)".to_owned(),
                |g| format!("gen {} pid {} serving", g.generation, g.worker.pid()),
            );
            for r in replies {
                r.progress(step.clone());
                r.ok(format!("reloaded: {serving}"));
            }
        }
        match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Stopping(mut s) if s.pid == Some(end.pid) => {
                for r in &s.replies {
                    r.progress(step.clone());
                }
                s.status = Some(end.status);
                self.state = State::Stopping(s);
            }
            State::Restarting {
                pid,
                since,
                replies,
            } if pid == end.pid => {
                for r in &replies {
                    r.progress(step.clone());
                }
                self.state = match self.start(Kind::Restart, replies) {
                    Ok(mut start) => {
                        start.asked = since;
                        State::Starting(start)
                    }
                    Err(e) => {
                        warn!(pid = me, "restart: the new worker failed to start: {e}");
                        self.history
                            .record(Kind::Restart, false, since.elapsed(), e.to_string());
                        notify::ready();
                        self.respawn_later()
                    }
                };
            }
            other => self.state = other,
        }
    }

    /// The PIDs tokio waits for (the master's own workers, and children of this program
    /// registered as its own): never reaped as orphans.
    pub(super) fn known_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.draining.iter().map(|d| d.pid).collect();
        pids.extend(self.state.serving().map(|g| g.worker.pid()));
        pids.extend(self.state.standby().map(|g| g.worker.pid()));
        pids.extend(self.state.starting().map(|s| s.new.worker.pid()));
        pids.extend(crate::cli::own_children());
        pids
    }
}
