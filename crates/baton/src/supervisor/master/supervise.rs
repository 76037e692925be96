//! The master's loop: one `select!` over events (commands from signals and control
//! clients, the starting worker's readiness, the serving worker's exit, the end of each
//! drain, the respawn timer, orphans to reap) and the transitions of its state. Nothing
//! waits inline: a reload in progress is state, not an `await`. The transitions are
//! in `transitions.rs`, `generation.rs` and `exits.rs`.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::state::{DrainEnd, Draining, History, Kind, State, Stopping};
use super::{Config, Master, MasterExit};
use crate::command::{Command, Escalation, SignalIntake, Stop};
use crate::error::Error;
use crate::failure::RestartFailure;
use crate::handoff::describe;
use crate::listener::Listener;
use crate::supervisor::control::{self, Asked, Reply, Request};

/// The longest pause before a crashed worker is started again.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The first pause before a crashed worker is started again.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// A worker that served this long before it died resets the backoff: the backoff is
/// for workers that die at start, not for one killed after it served.
pub(super) const HEALTHY_RUN: Duration = Duration::from_secs(1);

pub(super) type Cmd = Command<Reply>;

pub(super) enum Event {
    Command(Cmd),
    Ready(Result<(), RestartFailure>),
    Exited(io::Result<ExitStatus>),
    /// The worker standing by for a probation exited.
    StandbyExited(io::Result<ExitStatus>),
    ProbationOver,
    /// The time came for a request put off until the worker settled.
    Settled,
    Drained(DrainEnd),
    Respawn,
    Reap,
}

/// The loop's state and what it keeps beside it.
pub(super) struct Supervisor<'a> {
    pub(super) cfg: &'a Config,
    /// The listening sockets passed to every worker; closed here when a stop begins
    /// (see `Supervisor::stop`).
    pub(super) listeners: Vec<Listener>,
    /// How many there are (a worker's open sockets count them too).
    pub(super) passed: usize,
    /// Their sockets' inodes: who holds them (a new worker must; nothing else may once
    /// the master is done).
    pub(super) inodes: Vec<u64>,
    /// The private control socket's path, given to every worker.
    pub(super) private: Option<&'a std::path::Path>,
    pub(super) state: State,
    pub(super) started: Instant,
    pub(super) next_generation: u32,
    /// Workers told to drain, and the tasks that wait for each.
    pub(super) draining: Vec<Draining>,
    pub(super) drains: JoinSet<DrainEnd>,
    /// Reload replies waiting for the old worker (by PID) to be gone.
    pub(super) awaiting_drain: Vec<(u32, Vec<Reply>)>,
    pub(super) backoff: Duration,
    pub(super) history: History,
    /// The status of the last worker that ended while it served (the exit code when
    /// the master stops with none serving).
    pub(super) last_exit: Option<io::Result<ExitStatus>>,
    pub(super) hammer: watch::Sender<bool>,
    /// Whether a stop signal again kills the workers (see `Escalation`).
    pub(super) escalation: Escalation,
    /// A reload or full restart put off until the serving worker settled.
    pub(super) deferred: Option<super::state::Deferred>,
}

impl<'a> Supervisor<'a> {
    /// The supervisor of `listeners`, whose first worker starts.
    pub(super) fn new(
        cfg: &'a Config,
        listeners: Vec<Listener>,
        private: Option<&'a std::path::Path>,
        first: Box<super::state::Start>,
    ) -> Supervisor<'a> {
        Supervisor {
            cfg,
            passed: listeners.len(),
            inodes: {
                use std::os::fd::AsFd;
                listeners
                    .iter()
                    .filter_map(|l| crate::sys::socket_inode(l.as_fd()))
                    .collect()
            },
            listeners,
            private,
            state: State::Starting(first),
            started: Instant::now(),
            next_generation: 2,
            draining: Vec::new(),
            drains: JoinSet::new(),
            awaiting_drain: Vec::new(),
            backoff: FIRST_BACKOFF,
            history: History::default(),
            last_exit: None,
            hammer: watch::channel(false).0,
            escalation: Escalation::new(false),
            deferred: None,
        }
    }
}

impl Supervisor<'_> {
    /// The transition for `event`. `Err` only when the first worker failed: the master
    /// cannot run without one.
    pub(super) fn handle(&mut self, event: Event) -> Result<(), RestartFailure> {
        match event {
            Event::Command(cmd) => self.on_command(cmd),
            Event::Ready(res) => self.on_ready(res)?,
            Event::Exited(status) => self.on_exit(status),
            Event::StandbyExited(status) => self.on_standby_exit(status),
            Event::ProbationOver => self.end_probation(),
            Event::Settled => self.on_settled(),
            Event::Drained(end) => self.on_drained(end),
            Event::Respawn => self.respawn(),
            Event::Reap => {
                let keep = self.known_pids();
                for pid in crate::sys::reap_orphans(&keep, 64) {
                    info!(
                        pid = std::process::id(),
                        orphan = pid,
                        "reaped an orphaned process"
                    );
                }
            }
        }
        Ok(())
    }
}

impl Asked {
    /// What a control client's request asks of the master.
    fn into_command(self) -> Cmd {
        let reply = self.reply;
        match self.request {
            Request::Status => Command::Status { reply },
            Request::Reload => Command::Restart {
                reason: "control request".into(),
                reply: Some(reply),
            },
            Request::Restart => Command::FullRestart {
                reason: "control request".into(),
                reply: Some(reply),
            },
            Request::Stop => Command::Shutdown(Stop {
                reason: "control request".into(),
                deadline: None,
                skip_delay: false,
                signal: None,
                reply: Some(reply),
            }),
        }
    }
}

impl Master {
    /// Starts the first worker, waits until it is ready, then supervises until a stop;
    /// returns how the master should end: as its last serving worker ended (see
    /// [`MasterExit`]).
    ///
    /// # Errors
    ///
    /// [`Error::Worker`] if the first worker cannot start or does not become ready;
    /// [`Error::Io`] if the signal handlers cannot be installed.
    pub async fn run(self) -> Result<MasterExit, Error> {
        let Master {
            requests: (req_tx, mut req_rx),
            cfg,
            listeners,
            control,
            private,
            _pidfile,
        } = self;
        let me = std::process::id();
        // A flood of control clients, or a worker's many sockets, must not run the
        // master out of descriptors at 1,024 (its workers get the limit back).
        match crate::sys::raise_nofile_limit() {
            Ok(limit) => tracing::debug!(pid = me, limit, "descriptor limit"),
            Err(e) => warn!(pid = me, error = %e, "cannot raise the descriptor limit"),
        }
        let control = control
            .map(|c| {
                let path = c.path().display().to_string();
                c.serve()
                    .map_err(|e| Error::io(format!("control socket {path}"), e))
            })
            .transpose()?;
        let (private_dir, private) = match private {
            Some(p) => match p.bound.serve() {
                Ok(server) => (Some(p.dir), Some(server)),
                Err(e) => {
                    warn!(pid = me, error = %e, "cannot serve the private control socket");
                    (None, None)
                }
            },
            None => (None, None),
        };
        let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel();
        let mut watched: Vec<_> = cfg.signals.iter().map(|(s, _)| s).collect();
        watched.extend(cfg.forward.iter().copied());
        watched.sort_by_key(|s| s.as_raw());
        watched.dedup();
        let map = cfg.signals.clone();
        let _intake =
            SignalIntake::install(watched, &cmd_tx, move |sig| Command::from_signal(&map, sig))?;
        let mut sigchld = if cfg.reap_orphans {
            Some(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
                    .map_err(|e| Error::io("install a handler for SIGCHLD", e))?,
            )
        } else {
            None
        };
        for l in &listeners {
            info!(
                pid = me,
                listener = l.name(),
                "master listening on [{}]{}",
                l.local_addr(),
                if l.is_inherited() { " (inherited)" } else { "" }
            );
        }
        crate::notify::store_fds(listeners.iter().map(|l| {
            use std::os::fd::AsFd;
            (l.name(), l.as_fd(), l.is_inherited())
        }));
        if let Some(c) = &control {
            info!(pid = me, "control socket at {}", c.path().display());
        }

        let private_path = private.as_ref().map(|p| p.path().to_owned());
        let first = Supervisor::start_worker(
            &cfg,
            &listeners,
            private_path.as_deref(),
            1,
            Kind::First,
            Vec::new(),
        )
        .map_err(Error::Worker)?;
        let mut sv = Supervisor::new(&cfg, listeners, private_path.as_deref(), first);
        let mut reap_tick = tokio::time::interval(Duration::from_secs(1));
        let mut progress_tick = tokio::time::interval(crate::notify::PROGRESS_CHECK);
        let mut stop_keeper = crate::notify::TimeoutKeeper::new();
        loop {
            if sv.state.is_stopping() && sv.drains.is_empty() {
                break;
            }
            let respawn_at = match &sv.state {
                State::Idle { respawn_at } => Some(*respawn_at),
                _ => None,
            };
            let settled_at = sv.deferred.as_ref().map(|d| d.at);
            let probation_until = match &sv.state {
                State::Probation(p) => Some(p.until),
                _ => None,
            };
            let event = tokio::select! {
                Some(cmd) = cmd_rx.recv() => Event::Command(cmd),
                Some(asked) = req_rx.recv() => Event::Command(asked.into_command()),
                () = accept(control.as_ref(), &req_tx) => continue,
                () = accept(private.as_ref(), &req_tx) => continue,
                event = worker_event(&mut sv.state, &cfg) => event,
                Some(end) = sv.drains.join_next(), if !sv.drains.is_empty() => match end {
                    Ok(end) => Event::Drained(end),
                    Err(e) => { warn!(pid = me, error = %e, "a drain task failed"); continue }
                },
                () = sleep_until(respawn_at) => Event::Respawn,
                () = sleep_until(probation_until) => Event::ProbationOver,
                () = sleep_until(settled_at) => Event::Settled,
                _ = recv_sigchld(&mut sigchld) => Event::Reap,
                _ = reap_tick.tick(), if cfg.reap_orphans => Event::Reap,
                _ = progress_tick.tick(), if sv.state.is_stopping() => {
                    sv.observe_stop(&mut stop_keeper);
                    continue;
                }
            };
            if let Err(e) = sv.handle(event) {
                stop_strays(sv.inodes.clone()).await;
                return Err(Error::Worker(e));
            }
        }
        stop_strays(sv.inodes.clone()).await;
        // Requests that came too late: the master is gone once they could be served.
        req_rx.close();
        while let Ok(asked) = req_rx.try_recv() {
            match asked.request {
                Request::Stop => asked.reply.ok("stopped (by an earlier request)"),
                _ => asked.reply.error("the master stopped"),
            }
        }
        let stopping = match std::mem::replace(&mut sv.state, idle_placeholder()) {
            State::Stopping(s) => s,
            _ => Stopping {
                pid: None,
                status: None,
                replies: Vec::new(),
            },
        };
        let status = stopping.status.or(sv.last_exit.take());
        let exit = MasterExit::of(status.as_ref());
        info!(
            pid = me,
            status = %status.as_ref().map_or_else(|| "none".to_owned(), describe),
            "stopped"
        );
        for r in &stopping.replies {
            r.ok(format!(
                "stopped; the worker {}",
                status.as_ref().map_or_else(
                    || "was not running".to_owned(),
                    |s| format!("ended with {}", describe(s))
                )
            ));
        }
        drop(stopping.replies);
        if let Some(c) = &control {
            c.flush(Duration::from_secs(1)).await;
        }
        drop(private);
        drop(private_dir);
        Ok(exit)
    }
}

/// A value to leave in `state` while a transition computes the next one; every
/// transition replaces it before it returns.
pub(super) fn idle_placeholder() -> State {
    State::Idle {
        respawn_at: Instant::now(),
    }
}

async fn accept(control: Option<&control::Server>, requests: &mpsc::UnboundedSender<Asked>) {
    match control {
        Some(c) => c.accept(requests).await,
        None => std::future::pending().await,
    }
}

/// The starting worker's readiness, the serving worker's exit, or the exit of the one
/// standing by for a probation.
pub(super) async fn worker_event(state: &mut State, cfg: &Config) -> Event {
    let (starting, serving, standby) = match state {
        State::Starting(s) => (Some(s), None, None),
        State::Serving(g) => (None, Some(g), None),
        State::Reloading { serving, start } => (Some(start), serving.as_mut(), None),
        State::Probation(p) => (None, Some(&mut p.serving), Some(&mut p.old)),
        State::Idle { .. } | State::Restarting { .. } | State::Stopping(_) => (None, None, None),
    };
    let ready = async {
        match starting {
            Some(s) => s.new.worker.ready(cfg.readiness, cfg.ready_timeout).await,
            None => std::future::pending().await,
        }
    };
    let exited = async {
        match serving {
            Some(g) => g.worker.wait().await,
            None => std::future::pending().await,
        }
    };
    let standby_exited = async {
        match standby {
            Some(g) => g.worker.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        res = ready => Event::Ready(res),
        status = exited => Event::Exited(status),
        status = standby_exited => Event::StandbyExited(status),
    }
}

/// Once the master's workers are gone: processes that still hold its listening sockets.
/// Those of its own tree (a worker that daemonized itself, a child a worker left: with
/// the master a subreaper, they are its children now) would serve on unsupervised with
/// the service's port: they are stopped (`SIGTERM`, then `SIGKILL` after a grace).
/// Others are named and left alone.
async fn stop_strays(inodes: Vec<u64>) {
    let me = std::process::id();
    let holders = tokio::task::spawn_blocking(move || crate::sys::socket_holders(&inodes))
        .await
        .unwrap_or_default();
    let (ours, others): (Vec<u32>, Vec<u32>) = holders
        .into_iter()
        .partition(|p| crate::sys::is_descendant(*p, me));
    for p in others {
        warn!(
            pid = me,
            holder = p,
            "process {p}, not of the master's tree, holds the master's listening socket; left alone"
        );
    }
    if ours.is_empty() {
        return;
    }
    warn!(
        pid = me,
        holders = ?ours,
        "processes left by the workers still hold the listening socket (a server that daemonized itself?): stopping them"
    );
    for p in &ours {
        let _ = crate::sys::kill(*p, libc::SIGTERM);
    }
    let deadline = Instant::now() + STRAY_GRACE;
    while ours.iter().any(|p| crate::sys::is_alive(*p)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for p in ours.iter().filter(|p| crate::sys::is_alive(**p)) {
        warn!(
            pid = me,
            holder = p,
            "still running after {STRAY_GRACE:?}: killed"
        );
        let _ = crate::sys::kill(*p, libc::SIGKILL);
    }
}

/// Watches a worker that became ready, for a while: one that does not accept from the
/// sockets it was given while connections wait there, or that listens on sockets of its
/// own (it bound its own port, say `python3 -m http.server 9000` under `baton run`),
/// gets a warning naming both addresses (issue 27: requests hung, nothing said why).
/// Reads `/proc` off the master's thread.
pub(super) fn watch_worker(pid: u32, generation: u32, ours: Vec<(String, u64, String)>) {
    tokio::spawn(async move {
        let me = std::process::id();
        let mut waited: Vec<u64> = Vec::new();
        let mut told_foreign = false;
        for _ in 0..WATCH_LOOKS {
            tokio::time::sleep(WATCH_EVERY).await;
            if !crate::sys::is_alive(pid) {
                return;
            }
            let looked = tokio::task::spawn_blocking(move || {
                (
                    crate::sys::tcp_listeners(),
                    crate::sys::held_in_tree(pid, &[]).unwrap_or_default(),
                )
            })
            .await;
            let Ok((table, held)) = looked else { return };
            let foreign: Vec<&str> = table
                .iter()
                .filter(|(ino, _, _)| held.contains(ino) && !ours.iter().any(|(_, o, _)| o == ino))
                .map(|(_, addr, _)| addr.as_str())
                .collect();
            let waiting: Vec<u64> = table
                .iter()
                .filter(|(ino, _, queued)| *queued > 0 && ours.iter().any(|(_, o, _)| o == ino))
                .map(|(ino, _, _)| *ino)
                .collect();
            let stuck: Vec<String> = ours
                .iter()
                .filter(|(_, ino, _)| waiting.contains(ino) && waited.contains(ino))
                .map(|(name, ino, addr)| {
                    let queued = table.iter().find(|(i, _, _)| i == ino).map_or(0, |t| t.2);
                    format!("{name} {addr} ({queued} connections wait)")
                })
                .collect();
            let elsewhere = if foreign.is_empty() {
                String::new()
            } else {
                format!(
                    "; it listens on {}, which baton did not pass: it must serve the socket it was given (LISTEN_FDS, descriptor 3 on) instead of binding its own",
                    foreign.join(", ")
                )
            };
            if !stuck.is_empty() {
                warn!(
                    pid = me,
                    worker = pid,
                    "worker gen {generation} (pid {pid}) does not accept from {}{elsewhere}",
                    stuck.join(", ")
                );
                return;
            }
            if !foreign.is_empty() && !told_foreign {
                told_foreign = true;
                let given: Vec<String> = ours
                    .iter()
                    .map(|(name, _, addr)| format!("{name} {addr}"))
                    .collect();
                warn!(
                    pid = me,
                    worker = pid,
                    "worker gen {generation} (pid {pid}) listens on {}, which baton did not pass (it was given {}): a socket of its own is neither kept across reloads nor counted",
                    foreign.join(", "),
                    given.join(", ")
                );
            }
            waited = waiting;
        }
    });
}

/// How often, and how many times, a new worker is looked at (see `watch_worker`).
const WATCH_EVERY: Duration = Duration::from_secs(1);
const WATCH_LOOKS: usize = 30;

/// How long a stray holder of the listening sockets has to exit after `SIGTERM`.
const STRAY_GRACE: Duration = Duration::from_secs(5);

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_sigchld(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
