//! What the master's commands do: a reload, a full restart, a stop, a signal passed on,
//! a status; and a reload put off until the serving worker settled. A new generation's
//! start, readiness and probation are in `generation.rs`; drains and exits in
//! `exits.rs`.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::state::{Deferred, Gen, Kind, Snapshot, State, Stopping};
use super::supervise::{Cmd, Supervisor, idle_placeholder};
use crate::command::Command;
use crate::listener::Listener;
use crate::notify;
use crate::supervisor::control::{Progress, Reply};

impl Supervisor<'_> {
    pub(super) fn on_command(&mut self, cmd: Cmd) {
        let me = std::process::id();
        match cmd {
            Command::Restart { reason, reply } => {
                info!(pid = me, "{reason}: reload");
                self.reload(vec![reply.unwrap_or_else(Reply::none)]);
            }
            Command::FullRestart { reason, reply } => {
                info!(pid = me, "{reason}: full restart");
                self.full_restart(reply);
            }
            Command::Shutdown(stop) => match &mut self.state {
                State::Stopping(s) => {
                    if self.escalation.hammers(&stop) {
                        warn!(
                            pid = me,
                            "{} again while stopping: killing the workers that still run",
                            stop.reason
                        );
                        self.hammer();
                    } else if let Some(r) = stop.reply {
                        r.progress(Progress::AlreadyStopping);
                        s.replies.push(r);
                    }
                }
                _ => {
                    self.escalation.hammers(&stop);
                    info!(pid = me, "{}: stopping; the worker drains", stop.reason);
                    self.stop(stop.reply.unwrap_or_else(Reply::none));
                }
            },
            Command::Hammer { reason } => {
                warn!(pid = me, "{reason}: killing the workers");
                if !self.state.is_stopping() {
                    self.stop(Reply::none());
                }
                self.hammer();
            }
            Command::Pass { signal } => {
                if let Some(g) = self.state.serving_mut() {
                    let pid = g.worker.pid();
                    // A signal passed on for the worker to act on (reload its
                    // configuration, reopen its logs) must not be the one that kills it.
                    if dies_of(pid, signal) {
                        warn!(
                            pid = me,
                            worker = pid,
                            "{signal} not passed on: worker gen {} (pid {pid}) does not handle it and would die of it",
                            g.generation
                        );
                    } else if let Err(e) = g.worker.signal(signal) {
                        warn!(pid = me, worker = pid, error = %e, "cannot pass {signal} on");
                    }
                }
            }
            Command::Status { reply } => {
                let mut status = Snapshot {
                    started: self.started,
                    state: &self.state,
                    draining: &self.draining,
                    listeners: &self.listeners,
                    history: &self.history,
                }
                .status();
                // Counting a worker's sockets reads a directory with an entry per
                // connection: not on the master's one thread, which must stay free for
                // signals and readiness.
                let listeners = self.passed;
                tokio::task::spawn_blocking(move || {
                    for w in &mut status.workers {
                        w.open_sockets =
                            crate::sys::open_sockets(w.pid).map(|n| n.saturating_sub(listeners));
                    }
                    reply.status(&status);
                    reply.ok("status");
                });
            }
        }
    }

    /// A reload for each of `replies` (one per request; `Reply::none()` for a signal).
    pub(super) fn reload(&mut self, replies: Vec<Reply>) {
        let me = std::process::id();
        // A reload during a probation: the new worker is the service's now.
        self.end_probation();
        self.state = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Stopping(s) => {
                for r in &replies {
                    r.error("the master is stopping");
                }
                State::Stopping(s)
            }
            // Ended just above.
            p @ State::Probation(_) => {
                for r in &replies {
                    r.error("a probation is in progress");
                }
                p
            }
            mut starting @ (State::Starting(_) | State::Reloading { .. }) => {
                if let Some(s) = starting.starting_mut() {
                    // The worker starting now may run what was on disk before this
                    // request: one more reload follows it, for every request that came
                    // meanwhile.
                    info!(
                        pid = me,
                        "reload asked during a {}: one more follows it",
                        s.kind.word()
                    );
                    let step = Progress::FollowsStart {
                        kind: s.kind.word().to_owned(),
                        generation: s.new.generation,
                        pid: s.new.worker.pid(),
                    };
                    for r in replies {
                        r.progress(step.clone());
                        s.follow_up.join(Some(r));
                    }
                }
                starting
            }
            State::Restarting {
                pid,
                since,
                replies: mut waiting,
            } => {
                for r in replies {
                    r.progress(Progress::JoinedRestart);
                    waiting.push(r);
                }
                State::Restarting {
                    pid,
                    since,
                    replies: waiting,
                }
            }
            State::Serving(current) => match self.drain_would_end(&current) {
                Err(Refusal::Later(at)) => {
                    info!(
                        pid = me,
                        "reload: the worker serves since less than {SETTLING:?}; asked again once it settled"
                    );
                    self.defer(Kind::Reload, at, replies);
                    State::Serving(current)
                }
                Err(Refusal::Now(why)) => {
                    warn!(pid = me, "reload refused: {why}");
                    // A reload asked by systemd (Type=notify-reload) waits for these.
                    notify::reloading();
                    notify::ready();
                    notify::status(&format!("reload refused: {why}"));
                    for r in &replies {
                        r.error(format!("reload refused: {why}"));
                    }
                    self.history.record(
                        Kind::Reload,
                        false,
                        Duration::ZERO,
                        format!("refused: {why}"),
                    );
                    State::Serving(current)
                }
                Ok(()) => {
                    notify::reloading();
                    match self.start(Kind::Reload, replies) {
                        Ok(start) => State::Reloading {
                            serving: Some(current),
                            start,
                        },
                        Err(e) => {
                            self.history
                                .record(Kind::Reload, false, Duration::ZERO, e.to_string());
                            notify::ready();
                            warn!(pid = me, "reload failed, the serving worker serves on: {e}");
                            State::Serving(current)
                        }
                    }
                }
            },
            State::Idle { .. } => {
                notify::reloading();
                match self.start(Kind::Respawn, replies) {
                    Ok(start) => State::Starting(start),
                    Err(e) => {
                        self.history
                            .record(Kind::Respawn, false, Duration::ZERO, e.to_string());
                        notify::ready();
                        warn!(pid = me, "reload failed, and no worker serves: {e}");
                        self.respawn_later()
                    }
                }
            }
        };
    }

    pub(super) fn full_restart(&mut self, reply: Option<Reply>) {
        let reply = reply.unwrap_or_else(Reply::none);
        self.end_probation();
        self.state = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Stopping(s) => {
                reply.error("the master is stopping");
                State::Stopping(s)
            }
            // Ended just above.
            p @ State::Probation(_) => {
                reply.error("a probation is in progress");
                p
            }
            busy @ (State::Starting(_) | State::Reloading { .. } | State::Restarting { .. }) => {
                warn!(
                    pid = std::process::id(),
                    "full restart refused: a reload or restart is in progress"
                );
                reply.error("a reload or restart is in progress; try again when it ended");
                busy
            }
            State::Serving(current) => {
                let refused = self.drain_would_end(&current);
                if let Err(Refusal::Later(at)) = refused {
                    self.defer(Kind::Restart, at, vec![reply]);
                    State::Serving(current)
                } else if let Err(Refusal::Now(why)) = refused {
                    warn!(pid = std::process::id(), "full restart refused: {why}");
                    reply.error(format!("full restart refused: {why}"));
                    State::Serving(current)
                } else {
                    notify::reloading();
                    let pid = current.worker.pid();
                    reply.progress(self.draining_step(&current, true));
                    self.drain(current);
                    State::Restarting {
                        pid,
                        since: Instant::now(),
                        replies: vec![reply],
                    }
                }
            }
            State::Idle { .. } => {
                notify::reloading();
                match self.start(Kind::Restart, vec![reply]) {
                    Ok(start) => State::Starting(start),
                    Err(e) => {
                        self.history
                            .record(Kind::Restart, false, Duration::ZERO, e.to_string());
                        notify::ready();
                        self.respawn_later()
                    }
                }
            }
        };
    }

    fn stop(&mut self, reply: Reply) {
        notify::stopping();
        if let Some(d) = self.deferred.take() {
            for r in d.replies {
                r.error(format!(
                    "{} abandoned: the master is stopping",
                    d.kind.word()
                ));
            }
        }
        // Both drain: the new worker's status is the master's.
        self.end_probation();
        let (serving, start, restart_replies, pid) =
            match std::mem::replace(&mut self.state, idle_placeholder()) {
                State::Serving(g) => {
                    let pid = g.worker.pid();
                    (Some(g), None, Vec::new(), Some(pid))
                }
                State::Reloading { serving, start } => {
                    let pid = serving.as_ref().map(|g| g.worker.pid());
                    (serving, Some(start), Vec::new(), pid)
                }
                State::Starting(start) => (None, Some(start), Vec::new(), None),
                // The worker of a full restart in progress is draining: its status is
                // ours.
                State::Restarting { pid, replies, .. } => (None, None, replies, Some(pid)),
                State::Idle { .. } => (None, None, Vec::new(), None),
                // Ended just above.
                other @ (State::Stopping(_) | State::Probation(_)) => {
                    self.state = other;
                    return;
                }
            };
        if let Some(mut s) = start {
            for r in &s.replies {
                r.error(format!(
                    "{} abandoned: the master is stopping",
                    s.kind.word()
                ));
            }
            for r in s.follow_up.take().1 {
                r.error("reload abandoned: the master is stopping");
            }
            // It may have accepted connections already (a delay readiness): it drains
            // like any other.
            self.drain(s.new);
        }
        for r in restart_replies {
            r.error("restart abandoned: the master is stopping");
        }
        if let Some(current) = serving {
            reply.progress(self.draining_step(&current, false));
            self.drain(current);
        }
        self.state = State::Stopping(Stopping {
            pid,
            status: None,
            replies: vec![reply],
        });
        // Stop listening now: a client that connects during the drain would wait in the
        // queue for the whole drain, then be reset (issue 32: 20 of 20 reset after 3.5
        // s). The workers hold their copies until they stop accepting (a baton worker
        // takes what is queued first); once the last one closes, new clients are
        // refused at once. Sockets the service manager passed (or keeps in its store)
        // stay open there: the queue waits for the next start.
        let closed = self.listeners.len();
        self.listeners.retain(Listener::is_inherited);
        if closed > self.listeners.len() {
            info!(
                pid = std::process::id(),
                "stopping: the master closed its listening sockets"
            );
        }
    }

    /// Why the drain signal would end worker `g` rather than drain it: it neither
    /// catches, ignores nor blocks the signal (`/proc/PID/status`), and the signal's
    /// default action ends (or stops) the process. `Ok` when it handles the signal, or
    /// where that cannot be known. systemd checks the same before it sends a reload
    /// signal: a missing handler must not turn a reload into a crash.
    ///
    /// A worker that serves since less than [`SETTLING`] may still be installing its
    /// handlers (readiness by a delay says nothing about them): `Err(Later(at))` then,
    /// and the request is carried out at `at` (the master's thread never sleeps: issue
    /// 32, `baton status` took 2 s behind such a wait).
    fn drain_would_end(&self, g: &Gen) -> Result<(), Refusal> {
        let sig = self.cfg.drain_signal;
        let pid = g.worker.pid();
        if !dies_of(pid, sig) {
            return Ok(());
        }
        if g.since.elapsed() < SETTLING {
            return Err(Refusal::Later(g.since + SETTLING));
        }
        Err(Refusal::Now(format!(
            "worker gen {} (pid {pid}) does not handle {sig}, its drain signal: it would {} with its requests in flight. It serves on; give it a {sig} handler that drains, or choose a signal it handles (--drain-signal)",
            g.generation,
            if sig == crate::signal::Signal::Tstp {
                "stop"
            } else {
                "die"
            },
        )))
    }

    /// A reload or full restart put off until the serving worker settled (see
    /// `drain_would_end`): carried out now.
    pub(super) fn on_settled(&mut self) {
        let Some(deferred) = self.deferred.take() else {
            return;
        };
        match deferred.kind {
            Kind::Restart => {
                for reply in deferred.replies {
                    self.full_restart(Some(reply));
                }
            }
            _ => self.reload(deferred.replies),
        }
    }
}

/// How long after its ready a worker may still be installing its signal handlers.
const SETTLING: Duration = Duration::from_secs(2);

/// Why a drain signal is not sent now.
enum Refusal {
    /// The worker would die of it.
    Now(String),
    /// The worker may still be installing its handlers: look again then.
    Later(Instant),
}

impl Supervisor<'_> {
    /// Puts a request off until `at` (see `on_settled`); requests put off meanwhile join
    /// it.
    fn defer(&mut self, kind: Kind, at: Instant, replies: Vec<Reply>) {
        match &mut self.deferred {
            Some(d) => d.replies.extend(replies),
            None => {
                self.deferred = Some(Deferred { kind, at, replies });
            }
        }
    }
}

/// Whether process `pid` would end (or stop) of `sig`: it neither catches, ignores nor
/// blocks it, and the signal's default action is not to do nothing (SIGWINCH's is).
/// `false` where that cannot be known.
fn dies_of(pid: u32, sig: crate::signal::Signal) -> bool {
    sig != crate::signal::Signal::Winch
        && crate::sys::signal_disposition(pid, sig.as_raw())
            == Some(crate::sys::Disposition::Default)
}
