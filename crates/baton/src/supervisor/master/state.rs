//! What the master's loop knows: one state, each variant carrying what it needs, so
//! that an impossible combination (a full restart beside a reload, two workers
//! starting) cannot be represented; and what it reports as its status.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use super::super::control::{LastReload, MasterState, Reply, Role, Status, WorkerStatus};
use crate::command::FollowUp;
use crate::listener::Listener;
use crate::supervisor::Worker;

/// One worker generation.
#[derive(Debug)]
pub(super) struct Gen {
    pub(super) worker: Worker,
    pub(super) generation: u32,
    /// When it started, or since when it serves.
    pub(super) since: Instant,
}

/// Why a worker is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    First,
    Reload,
    Restart,
    Respawn,
}

impl Kind {
    pub(super) fn word(self) -> &'static str {
        match self {
            Kind::First => "start",
            Kind::Reload => "reload",
            Kind::Restart => "restart",
            Kind::Respawn => "respawn",
        }
    }
}

/// A worker started and not yet ready.
#[derive(Debug)]
pub(super) struct Start {
    pub(super) new: Gen,
    pub(super) kind: Kind,
    /// When it was asked for (the readiness time counts from here).
    pub(super) asked: Instant,
    pub(super) replies: Vec<Reply>,
    /// Reloads asked for meanwhile: the worker starting may run what was on disk
    /// before them, so one more reload follows it.
    pub(super) follow_up: FollowUp<Reply>,
    /// A reload's generation channel: the end for the worker it replaces, passed to
    /// it once the new one is ready (dropped otherwise, which the new one sees).
    pub(super) channel: Option<std::os::fd::OwnedFd>,
}

/// A reload in its probation.
#[derive(Debug)]
pub(super) struct Probation {
    /// The new worker: it serves.
    pub(super) serving: Gen,
    /// The worker it replaced, standing by.
    pub(super) old: Gen,
    /// When the new one was ready, and when the probation ends.
    pub(super) ready_at: Instant,
    pub(super) until: Instant,
    /// The reload's requesters, told once the old worker is gone (or the new one died).
    pub(super) replies: Vec<Reply>,
    /// The reload's kind and time to ready, recorded once it is decided.
    pub(super) kind: Kind,
    pub(super) took: Duration,
    /// The generation channel's end for the old worker, passed to it when it drains.
    pub(super) channel: Option<std::os::fd::OwnedFd>,
}

/// A request put off until the serving worker settled.
#[derive(Debug)]
pub(super) struct Deferred {
    pub(super) kind: Kind,
    pub(super) at: Instant,
    pub(super) replies: Vec<Reply>,
}

/// The master stops: its workers drain.
#[derive(Debug)]
pub(super) struct Stopping {
    /// The worker that served when the stop came: its status is the master's.
    pub(super) pid: Option<u32>,
    pub(super) status: Option<io::Result<ExitStatus>>,
    pub(super) replies: Vec<Reply>,
}

/// Where the master stands.
#[derive(Debug)]
pub(super) enum State {
    /// No worker serves or starts: one starts again at `respawn_at`.
    Idle { respawn_at: Instant },
    /// A worker starts while none serves (the first, a respawn, or the second half of
    /// a full restart).
    Starting(Box<Start>),
    /// A worker serves.
    Serving(Gen),
    /// A new worker starts beside the serving one (`None` if that one died meanwhile:
    /// the new one takes over once ready).
    Reloading {
        serving: Option<Gen>,
        start: Box<Start>,
    },
    /// A reload's new worker serves; the old one stands by until `until` (its
    /// probation), then drains; if the new one dies first, the old one serves on.
    Probation(Box<Probation>),
    /// A full restart: the worker (`pid`) drains; a new one starts once it is gone.
    Restarting {
        pid: u32,
        since: Instant,
        replies: Vec<Reply>,
    },
    /// The master stops.
    Stopping(Stopping),
}

impl State {
    /// The state's name in the status: the variant (with what starts, for `Starting`).
    pub(super) fn name(&self) -> MasterState {
        match self {
            State::Idle { .. } => MasterState::Respawning,
            State::Starting(s) => MasterState::Starting(s.kind.word().to_owned()),
            State::Serving(_) => MasterState::Serving,
            State::Reloading { .. } => MasterState::Reloading,
            State::Restarting { .. } => MasterState::Restarting,
            State::Probation(_) => MasterState::Probation,
            State::Stopping(_) => MasterState::Stopping,
        }
    }

    /// The worker that serves, if one does.
    pub(super) fn serving(&self) -> Option<&Gen> {
        match self {
            State::Serving(g)
            | State::Reloading {
                serving: Some(g), ..
            } => Some(g),
            State::Probation(p) => Some(&p.serving),
            _ => None,
        }
    }

    pub(super) fn serving_mut(&mut self) -> Option<&mut Gen> {
        match self {
            State::Serving(g)
            | State::Reloading {
                serving: Some(g), ..
            } => Some(g),
            State::Probation(p) => Some(&mut p.serving),
            _ => None,
        }
    }

    /// The worker standing by for a probation, if one does.
    pub(super) fn standby(&self) -> Option<&Gen> {
        match self {
            State::Probation(p) => Some(&p.old),
            _ => None,
        }
    }

    /// The worker that starts, if one does.
    pub(super) fn starting(&self) -> Option<&Start> {
        match self {
            State::Starting(s) | State::Reloading { start: s, .. } => Some(s),
            _ => None,
        }
    }

    pub(super) fn starting_mut(&mut self) -> Option<&mut Start> {
        match self {
            State::Starting(s) | State::Reloading { start: s, .. } => Some(s),
            _ => None,
        }
    }

    pub(super) fn is_stopping(&self) -> bool {
        matches!(self, State::Stopping(_))
    }
}

/// A worker told to drain.
#[derive(Debug, Clone, Copy)]
pub(super) struct Draining {
    pub(super) pid: u32,
    pub(super) generation: u32,
    pub(super) since: Instant,
}

/// A drain that ended.
#[derive(Debug)]
pub(super) struct DrainEnd {
    pub(super) pid: u32,
    pub(super) generation: u32,
    pub(super) status: io::Result<ExitStatus>,
    pub(super) killed: bool,
    pub(super) took: Duration,
}

/// Reloads and restarts so far.
#[derive(Debug, Default)]
pub(super) struct History {
    pub(super) ok: u64,
    pub(super) failed: u64,
    pub(super) last: Option<Attempt>,
}

#[derive(Debug)]
pub(super) struct Attempt {
    pub(super) kind: Kind,
    pub(super) ok: bool,
    pub(super) took: Duration,
    pub(super) at: Instant,
    pub(super) detail: String,
}

impl History {
    pub(super) fn record(&mut self, kind: Kind, ok: bool, took: Duration, detail: String) {
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        self.last = Some(Attempt {
            kind,
            ok,
            took,
            at: Instant::now(),
            detail,
        });
    }
}

/// Everything `status` reports.
pub(super) struct Snapshot<'a> {
    pub(super) started: Instant,
    pub(super) state: &'a State,
    pub(super) draining: &'a [Draining],
    pub(super) listeners: &'a [Listener],
    pub(super) history: &'a History,
}

impl Snapshot<'_> {
    /// The status (open sockets not counted yet).
    pub(super) fn status(&self) -> Status {
        let now = Instant::now();
        let worker = |role, generation, pid, since: Instant| WorkerStatus {
            generation,
            pid,
            role,
            age: now.duration_since(since),
            open_sockets: None,
        };
        let mut workers = Vec::new();
        if let Some(g) = self.state.serving() {
            workers.push(worker(Role::Serving, g.generation, g.worker.pid(), g.since));
        }
        if let Some(s) = self.state.starting() {
            workers.push(worker(
                Role::Starting,
                s.new.generation,
                s.new.worker.pid(),
                s.new.since,
            ));
        }
        if let State::Probation(p) = self.state {
            workers.push(worker(
                Role::Standby,
                p.old.generation,
                p.old.worker.pid(),
                p.ready_at,
            ));
        }
        for d in self.draining {
            workers.push(worker(Role::Draining, d.generation, d.pid, d.since));
        }
        Status {
            master_pid: std::process::id(),
            uptime: now.duration_since(self.started),
            state: self.state.name(),
            generation: self.state.serving().map_or(0, |g| g.generation),
            workers,
            listeners: self
                .listeners
                .iter()
                .map(|l| (l.name().to_owned(), l.local_addr().to_string()))
                .collect(),
            reloads_ok: self.history.ok,
            reloads_failed: self.history.failed,
            last: self.history.last.as_ref().map(|a| LastReload {
                kind: a.kind.word().to_owned(),
                ok: a.ok,
                took: a.took,
                ago: now.duration_since(a.at),
                detail: a.detail.clone(),
            }),
        }
    }
}
