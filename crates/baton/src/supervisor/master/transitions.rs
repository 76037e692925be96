//! The transitions of the master's state: what each event does.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Config;
use super::state::{DrainEnd, Draining, Gen, Kind, Probation, Snapshot, Start, State, Stopping};
use super::supervise::{
    Cmd, FIRST_BACKOFF, HEALTHY_RUN, MAX_BACKOFF, Supervisor, idle_placeholder,
};
use crate::command::{Command, FollowUp};
use crate::handoff::describe;
use crate::notify::{self, MASTER_PID};
use crate::supervisor::Worker;
use crate::supervisor::control::{Ending, Progress, Reply};
use crate::{Error, Listener, RestartFailure};

impl Supervisor<'_> {
    /// Starts a worker of `generation` (not yet ready). On failure the replies are told.
    pub(super) fn start_worker(
        cfg: &Config,
        listeners: &[Listener],
        private: Option<&std::path::Path>,
        generation: u32,
        kind: Kind,
        replies: Vec<Reply>,
    ) -> Result<Box<Start>, RestartFailure> {
        // The worker's generation is the master's count, so that both logs agree.
        let mut env = vec![
            (
                OsString::from(MASTER_PID),
                OsString::from(std::process::id().to_string()),
            ),
            (
                OsString::from(notify::GENERATION),
                OsString::from(generation.to_string()),
            ),
        ];
        if let Some(path) = private {
            env.push((
                OsString::from(notify::MASTER_CONTROL),
                path.as_os_str().to_owned(),
            ));
        }
        let asked = Instant::now();
        // A reload's new worker gets a channel from the one it replaces (passed to
        // that one when this one is ready).
        let channel = if cfg.hand_over && kind == Kind::Reload {
            crate::channel::Channel::pair().ok()
        } else {
            None
        };
        let spawned = Worker::spawn_with(
            &cfg.command,
            listeners,
            Some(cfg.drain_signal),
            env,
            cfg.hand_over,
            channel.as_ref().map(|(_, theirs)| theirs.as_fd()),
        );
        // The new worker's end went with it.
        let channel = channel.map(|(ours, _)| ours);
        match spawned {
            Ok(worker) => {
                let pid = worker.pid();
                info!(
                    pid = std::process::id(),
                    worker = pid,
                    generation,
                    "{}: started worker gen {generation}",
                    kind.word()
                );
                for r in &replies {
                    r.progress(Progress::Spawned { generation, pid });
                }
                Ok(Box::new(Start {
                    new: Gen {
                        worker,
                        generation,
                        since: asked,
                    },
                    kind,
                    asked,
                    replies,
                    follow_up: FollowUp::default(),
                    channel,
                }))
            }
            Err(e) => {
                let failure = match e {
                    Error::Worker(f) => f,
                    other => RestartFailure::Spawn(other.to_string()),
                };
                for r in &replies {
                    r.error(format!("{} failed: {failure}", kind.word()));
                }
                Err(failure)
            }
        }
    }

    /// Starts a worker of the next generation.
    fn start(&mut self, kind: Kind, replies: Vec<Reply>) -> Result<Box<Start>, RestartFailure> {
        let start = Self::start_worker(
            self.cfg,
            &self.listeners,
            self.private,
            self.next_generation,
            kind,
            replies,
        )?;
        self.next_generation += 1;
        Ok(start)
    }

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
    fn reload(&mut self, replies: Vec<Reply>) {
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

    fn full_restart(&mut self, reply: Option<Reply>) {
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
            if sig == crate::Signal::Tstp {
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

    fn hammer(&mut self) {
        self.hammer.send_replace(true);
    }

    fn draining_step(&self, g: &Gen, queued: bool) -> Progress {
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
    fn drain(&mut self, mut g: Gen) {
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

    /// The starting worker is ready, or failed. `Err` only for the first worker: the
    /// master cannot run without one.
    pub(super) fn on_ready(
        &mut self,
        res: Result<(), RestartFailure>,
    ) -> Result<(), RestartFailure> {
        let me = std::process::id();
        let (serving, s) = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Starting(s) => (None, s),
            State::Reloading { serving, start } => (serving, start),
            other => {
                self.state = other;
                return Ok(());
            }
        };
        // Ready means it serves what it was given: a worker that closed the passed
        // sockets (issue 32: reported done while clients hung) is not ready.
        let res = res.and_then(|()| self.holds_listeners(s.new.worker.pid()));
        let Start {
            new,
            kind,
            asked,
            replies,
            mut follow_up,
            channel,
        } = *s;
        let took = asked.elapsed();
        let (generation, pid) = (new.generation, new.worker.pid());
        match res {
            Ok(()) => {
                info!(
                    pid = me,
                    worker = pid,
                    generation,
                    "worker gen {generation} ready in {} ms",
                    took.as_millis()
                );
                for r in &replies {
                    r.progress(Progress::Ready {
                        generation,
                        pid,
                        took,
                    });
                }
                notify::ready();
                notify::status(&format!("serving: worker gen {generation} (pid {pid})"));
                self.last_exit = None;
                super::supervise::watch_worker(pid, generation, self.given());
                match serving {
                    Some(old) if !self.cfg.probation.is_zero() => {
                        self.served(&old);
                        self.start_probation(new, old, replies, kind, took, channel);
                        if follow_up.is_wanted() {
                            self.reload(follow_up.take().1);
                        }
                        return Ok(());
                    }
                    Some(old) => {
                        self.served(&old);
                        let old_pid = old.worker.pid();
                        info!(
                            pid = me,
                            worker = pid,
                            "reloaded: gen {generation} serves; gen {} (pid {old_pid}) drains",
                            old.generation
                        );
                        let step = self.draining_step(&old, false);
                        for r in &replies {
                            r.progress(step.clone());
                        }
                        self.awaiting_drain.push((old_pid, replies));
                        // Before the drain signal, so that the old worker finds it when
                        // the signal comes.
                        if let Some(ours) = channel
                            && old.worker.pass_successor(ours, pid, generation)
                        {
                            info!(
                                pid = me,
                                worker = old_pid,
                                "gen {} passes its open connections to gen {generation}",
                                old.generation
                            );
                        }
                        self.drain(old);
                    }
                    None => {
                        for r in &replies {
                            r.ok(format!("gen {generation} pid {pid} serving"));
                        }
                    }
                }
                if matches!(kind, Kind::Reload | Kind::Restart) {
                    self.history
                        .record(kind, true, took, format!("gen {generation} pid {pid}"));
                }
                self.state = State::Serving(Gen {
                    since: Instant::now(),
                    ..new
                });
            }
            Err(e) => {
                let serves_on = if serving.is_some() {
                    "; the serving worker serves on"
                } else {
                    ""
                };
                warn!(
                    pid = me,
                    worker = pid,
                    "{} failed{}: worker gen {generation}: {e}",
                    kind.word(),
                    serves_on.replacen(';', ",", 1)
                );
                for r in &replies {
                    r.error(format!("{} failed: {e}{serves_on}", kind.word()));
                }
                // One that missed its deadline may have accepted connections: it
                // drains like any other (one that exited is reaped at once).
                self.drain(new);
                match kind {
                    Kind::First => {
                        for r in follow_up.take().1 {
                            r.error(format!("the first worker failed: {e}"));
                        }
                        return Err(e);
                    }
                    Kind::Reload | Kind::Restart => {
                        notify::ready();
                        self.history.record(kind, false, took, e.to_string());
                    }
                    Kind::Respawn => {}
                }
                self.state = match serving {
                    Some(g) => State::Serving(g),
                    None => self.respawn_later(),
                };
            }
        }
        if follow_up.is_wanted() {
            self.reload(follow_up.take().1);
        }
        Ok(())
    }

    /// The reload's new worker is ready: it serves; the old one stands by for the
    /// probation (a baton worker with a link stops accepting and keeps its
    /// connections; another keeps accepting beside the new one).
    fn start_probation(
        &mut self,
        new: Gen,
        old: Gen,
        replies: Vec<Reply>,
        kind: Kind,
        took: Duration,
        channel: Option<std::os::fd::OwnedFd>,
    ) {
        let me = std::process::id();
        let window = self.cfg.probation;
        let (generation, pid) = (new.generation, new.worker.pid());
        let old_pid = old.worker.pid();
        // A baton worker with a link gets the channel to the new one now: it stops
        // accepting, and the new one keeps slots for its connections.
        let stands_by = channel
            .as_ref()
            .is_some_and(|ours| old.worker.stand_by(Some((pid, generation, ours.as_fd()))));
        let channel = if stands_by { None } else { channel };
        info!(
            pid = me,
            worker = pid,
            "reloaded: gen {generation} serves; gen {} (pid {old_pid}) stands by for {window:?}{}",
            old.generation,
            if stands_by {
                ", not accepting"
            } else {
                ", accepting beside it"
            }
        );
        if stands_by {
            info!(
                pid = me,
                worker = old_pid,
                "gen {} passes its open connections to gen {generation} when the probation ends",
                old.generation
            );
        }
        let step = Progress::Standby {
            generation: old.generation,
            pid: old_pid,
            window,
        };
        for r in &replies {
            r.progress(step.clone());
        }
        let now = Instant::now();
        self.state = State::Probation(Box::new(Probation {
            serving: Gen { since: now, ..new },
            old,
            ready_at: now,
            until: now + window,
            replies,
            kind,
            took,
            channel,
        }));
    }

    /// The probation is over (its time passed, or a reload, restart or stop came): the
    /// new worker is the service's, the old one drains (its connections moving over,
    /// for a baton worker with a link). Nothing outside a probation.
    pub(super) fn end_probation(&mut self) {
        let me = std::process::id();
        let p = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Probation(p) => *p,
            other => {
                self.state = other;
                return;
            }
        };
        let Probation {
            serving,
            old,
            replies,
            kind,
            took,
            channel,
            ..
        } = p;
        let (generation, pid) = (serving.generation, serving.worker.pid());
        let old_pid = old.worker.pid();
        info!(
            pid = me,
            worker = pid,
            "probation over: gen {generation} serves; gen {} (pid {old_pid}) drains",
            old.generation
        );
        let step = self.draining_step(&old, false);
        for r in &replies {
            r.progress(step.clone());
        }
        self.awaiting_drain.push((old_pid, replies));
        // Before the drain signal, so that the old worker finds it when the signal
        // comes.
        if let Some(ours) = channel
            && old.worker.pass_successor(ours, pid, generation)
        {
            info!(
                pid = me,
                worker = old_pid,
                "gen {} passes its open connections to gen {generation}",
                old.generation
            );
        }
        self.drain(old);
        self.history
            .record(kind, true, took, format!("gen {generation} pid {pid}"));
        self.state = State::Serving(serving);
    }

    /// The new worker died within its probation: the old one serves on (told to
    /// accept again), and the reload failed.
    fn probation_failed(&mut self, p: Probation, status: &io::Result<ExitStatus>) {
        let me = std::process::id();
        let Probation {
            serving,
            old,
            ready_at,
            replies,
            kind,
            took,
            ..
        } = p;
        let after = ready_at.elapsed();
        old.worker.stand_by(None);
        let why = format!(
            "the new worker gen {} (pid {}) died {:.1} s after it was ready, within its probation ({}); gen {} (pid {}) serves on",
            serving.generation,
            serving.worker.pid(),
            after.as_secs_f64(),
            describe(status),
            old.generation,
            old.worker.pid()
        );
        warn!(pid = me, "{} failed: {why}", kind.word());
        for r in &replies {
            r.error(format!("{} failed: {why}", kind.word()));
        }
        notify::status(&format!(
            "serving: worker gen {} (pid {}); {why}",
            old.generation,
            old.worker.pid()
        ));
        self.history.record(kind, false, took, why);
        self.state = State::Serving(old);
    }

    /// The worker standing by for a probation exited by itself: the new one serves on,
    /// and the reload is done.
    pub(super) fn on_standby_exit(&mut self, status: io::Result<ExitStatus>) {
        let me = std::process::id();
        let p = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Probation(p) => *p,
            other => {
                self.state = other;
                return;
            }
        };
        let (generation, pid) = (p.serving.generation, p.serving.worker.pid());
        warn!(
            pid = me,
            worker = p.old.worker.pid(),
            status = describe(&status),
            "the worker standing by exited during the probation; gen {generation} serves"
        );
        let step = Progress::Ended {
            generation: p.old.generation,
            how: Ending::Exited {
                status: describe(&status),
                after: p.ready_at.elapsed(),
            },
        };
        for r in &p.replies {
            r.progress(step.clone());
            r.ok(format!("reloaded: gen {generation} pid {pid} serving"));
        }
        self.history
            .record(p.kind, true, p.took, format!("gen {generation} pid {pid}"));
        self.state = State::Serving(p.serving);
    }

    /// The listening sockets given to each worker: name, inode, address.
    fn given(&self) -> Vec<(String, u64, String)> {
        self.listeners
            .iter()
            .zip(&self.inodes)
            .map(|(l, ino)| (l.name().to_owned(), *ino, l.local_addr().to_string()))
            .collect()
    }

    /// Whether worker `pid` (or one of its descendants) holds every listening socket
    /// it was given.
    fn holds_listeners(&self, pid: u32) -> Result<(), RestartFailure> {
        let Some(held) = crate::sys::held_in_tree(pid, &self.inodes) else {
            return Ok(());
        };
        let missing: Vec<&str> = self
            .listeners
            .iter()
            .zip(&self.inodes)
            .filter(|(_, ino)| !held.contains(ino))
            .map(|(l, _)| l.name())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(RestartFailure::ClosedListeners {
                pid,
                listeners: missing.join(", "),
            })
        }
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
    fn served(&mut self, g: &Gen) {
        if g.since.elapsed() > HEALTHY_RUN {
            self.backoff = FIRST_BACKOFF;
        }
    }

    /// The state that starts a worker again after the backoff (which then doubles).
    fn respawn_later(&mut self) -> State {
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
        pids.extend(crate::supervisor::own_children());
        pids
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

/// A request put off until the serving worker settled.
#[derive(Debug)]
pub(super) struct Deferred {
    pub(super) kind: Kind,
    pub(super) at: Instant,
    pub(super) replies: Vec<Reply>,
}

/// Whether process `pid` would end (or stop) of `sig`: it neither catches, ignores nor
/// blocks it, and the signal's default action is not to do nothing (SIGWINCH's is).
/// `false` where that cannot be known.
fn dies_of(pid: u32, sig: crate::Signal) -> bool {
    sig != crate::Signal::Winch
        && crate::sys::signal_disposition(pid, sig.as_raw())
            == Some(crate::sys::Disposition::Default)
}
