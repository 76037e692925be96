//! The coordinator: what starts a restart or a shutdown, and the handle that servers,
//! handlers and signal listeners share. The restart is in `restart.rs`, the drain with
//! its hooks in `drain.rs`, the settings in `builder.rs`; the vocabulary of commands
//! (shared with the master) is `crate::command`.

mod builder;
mod drain;
mod generations;
mod restart;

use std::fmt;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::command::{Command, Escalation, SignalIntake, Stop};
use crate::error::check_limit;
use crate::handoff::{Passed, Program, Restarted};
use crate::hook::{Hook, UserHooks};
use crate::listener::ListenerInfo;
use crate::notify;
use crate::report::Report;
use crate::supervisor::control::Request;
use crate::sync::lock;
use crate::tracker::{ConnectionStats, Phase, Tracker};
use crate::{Action, Error, SignalMap};

use builder::check_hook;
use drain::{DrainKind, DrainPlan, Intake, Parts};

pub use builder::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HOOK_TIMEOUT, DEFAULT_MAX_GENERATIONS, DEFAULT_PROBATION,
    DEFAULT_READY_TIMEOUT, ShutdownBuilder,
};
#[cfg(feature = "http")]
pub(crate) use generations::Mover;
pub(crate) use generations::Successor;
pub use restart::{LastRestart, RestartRequest, RestartStats};

type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;
/// Where the outcome of a restart asked for from code goes.
type RestartReply = oneshot::Sender<Result<Restarted, Error>>;
/// A command to the coordinator.
type Cmd = Command<RestartReply>;

/// Coordinates graceful restarts and the graceful shutdown: the handle that servers,
/// handlers and signal listeners share.
///
/// Cloning is cheap; every clone controls the same process. Build one with
/// [`Shutdown::builder`], hand it to each server, then call [`run`](Shutdown::run),
/// which reports the process ready, carries out restarts as they are asked for
/// ([`restart`](Shutdown::restart), [`Action::Restart`]; a failed one leaves serving as
/// it was), and ends with the drain after a hand-over, before a full restart, or of the
/// shutdown:
///
/// 1. **Trigger**: a mapped signal ([`SignalMap`], default `SIGTERM`/`SIGINT`), a
///    trigger future ([`ShutdownBuilder::trigger`]) or a call from code
///    ([`trigger`](Shutdown::trigger), [`trigger_within`](Shutdown::trigger_within)).
/// 2. **Drain delay** (optional, [`Phase::DelayingDrain`]): serve on as usual while
///    readiness ([`is_ready`](Shutdown::is_ready)) reports `false`.
/// 3. **Drain** ([`Phase::Draining`]): listeners close; requests in flight finish; HTTP/1
///    responses carry `Connection: close`; idle keep-alive connections close after a
///    grace; HTTP/2 connections get GOAWAY; long-lived responses and upgraded
///    connections observe [`draining`](Shutdown::draining) and end themselves.
/// 4. **Force** ([`Phase::Forcing`]), only if the drain deadline passes or a hammer comes
///    (a mapped shutdown signal again, whichever, [`Action::Hammer`],
///    [`force`](Shutdown::force)): what is still open is cut.
/// 5. **Hooks** ([`Phase::Finalizing`]): in registration order, each bounded by its
///    limit. A further shutdown signal here abandons the hooks not yet run.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    tracker: Tracker,
    drain_timeout: Duration,
    drain_delay: Duration,
    signals: SignalMap,
    commands: mpsc::UnboundedSender<Cmd>,
    /// Taken by `run`.
    pending: Mutex<Option<Pending>>,
    hooks: Mutex<Vec<Hook>>,
    /// The signal listeners, once installed (by the first `serve` or by `run`).
    signal_intake: Mutex<Option<SignalIntake>>,
    user_hooks: UserHooks,
    /// The listening sockets of every server, by name: duplicates kept to hand them to
    /// the next generation. Closed when the drain starts, unless a full restart needs
    /// them, so that a plain shutdown refuses new connections.
    listeners: Mutex<Vec<Passed>>,
    program: Program,
    ready_timeout: Duration,
    /// See `ShutdownBuilder::probation`.
    probation: Duration,
    max_generations: usize,
    pidfile: Option<PathBuf>,
    /// The PID of the generation this one handed over to (0 before).
    successor: AtomicU32,
    /// The previous generation gave up on this one (ready too late): it drains and
    /// leaves the service to that one.
    given_up: AtomicBool,
    /// A shutdown or hammer came while a full restart drained: stop instead of
    /// executing the program anew.
    stop_asked: AtomicBool,
    /// Restarts attempted by this generation (a lock per restart, never per request).
    restarts: Mutex<RestartStats>,
    started: std::time::Instant,
    /// Why this generation drains, set before the drain starts.
    drain_cause: std::sync::OnceLock<DrainCause>,
    /// The generation channel, both ways.
    links: generations::Links,
}

struct Pending {
    commands: mpsc::UnboundedReceiver<Cmd>,
    triggers: Vec<Trigger>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("phase", &self.phase())
            .field("drain_timeout", &self.inner.drain_timeout)
            .field("drain_delay", &self.inner.drain_delay)
            .field("signals", &self.inner.signals)
            .finish_non_exhaustive()
    }
}

/// Why a generation drains ([`Shutdown::drain_cause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainCause {
    /// A graceful or full restart: the service goes on, in a new generation or in this
    /// process anew.
    Restart,
    /// A shutdown: the service stops.
    Shutdown,
}

impl DrainCause {
    /// The WebSocket close code for it (RFC 6455 and IANA's registry): `1012 Service
    /// Restart` for a restart, so that clients reconnect at once, `1001 Going Away` for
    /// a shutdown.
    pub fn websocket_close_code(self) -> u16 {
        match self {
            DrainCause::Restart => 1012,
            DrainCause::Shutdown => 1001,
        }
    }
}

/// How serving ended.
#[derive(Debug)]
enum End {
    /// A shutdown was asked for.
    Shutdown(Stop<RestartReply>),
    /// A hammer came before any shutdown: one forced from the start.
    Hammer(String),
    /// A graceful restart handed over to a ready new generation.
    HandedOver(Restarted),
    /// A full restart was asked for (the reason).
    FullRestart(String),
}

impl Shutdown {
    /// Starts configuring a coordinator.
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder::default()
    }

    pub(super) fn new(b: ShutdownBuilder) -> Shutdown {
        let (tx, rx) = mpsc::unbounded_channel();
        Shutdown {
            inner: Arc::new(Inner {
                tracker: Tracker::new(),
                drain_timeout: b.drain_timeout,
                drain_delay: b.drain_delay,
                signals: b.signals,
                commands: tx,
                pending: Mutex::new(Some(Pending {
                    commands: rx,
                    triggers: b.triggers,
                })),
                hooks: Mutex::new(b.hooks),
                signal_intake: Mutex::new(None),
                user_hooks: b.user_hooks,
                listeners: Mutex::new(Vec::new()),
                program: Program::current(),
                ready_timeout: b.ready_timeout,
                probation: b.probation,
                max_generations: b.max_generations,
                pidfile: b.pidfile,
                successor: AtomicU32::new(0),
                given_up: AtomicBool::new(false),
                stop_asked: AtomicBool::new(false),
                restarts: Mutex::new(RestartStats::default()),
                started: std::time::Instant::now(),
                drain_cause: std::sync::OnceLock::new(),
                links: generations::Links::new(),
            }),
        }
    }

    #[cfg(feature = "http")]
    pub(crate) fn tracker(&self) -> &Tracker {
        &self.inner.tracker
    }

    /// Starts a graceful shutdown with the configured drain deadline, as a signal would.
    /// Returns at once; the shutdown proceeds in [`run`](Shutdown::run). Calling it while
    /// a shutdown runs changes nothing.
    pub fn trigger(&self) {
        self.send(Command::stop("shutdown requested by the application", None));
    }

    /// Starts a graceful shutdown whose drain may take at most `deadline` (Faygo's
    /// `Shutdown(timeout)`). While a shutdown already runs, it can only bring the
    /// deadline closer.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDuration`] if `deadline` is outside 1 ms..=24 h; nothing is
    /// started then.
    pub fn trigger_within(&self, deadline: Duration) -> Result<(), Error> {
        check_limit("shutdown deadline", deadline)?;
        self.send(Command::stop(
            format!("shutdown requested by the application (deadline {deadline:?})"),
            Some(deadline),
        ));
        Ok(())
    }

    /// Forces the close: what is still open is cut now and the hooks run. Starts a
    /// shutdown if none runs.
    pub fn force(&self) {
        self.send(Command::Hammer {
            reason: "forced by the application".into(),
        });
    }

    /// Starts a graceful restart, as a restart signal would: the next generation is
    /// started from the executable as it is on disk now (a replaced binary makes it an
    /// upgrade), with the same arguments and environment and this process's listening
    /// sockets; once it reports ready, this generation stops accepting and drains, and
    /// [`run`](Shutdown::run) returns its report (the process should then exit).
    ///
    /// Returns at once; await the returned future to learn the outcome (Faygo's reboot
    /// from a handler). Dropping it does not cancel the restart. A restart asked for
    /// while one runs is coalesced into it (and into one follow-up restart of the new
    /// generation).
    ///
    /// # Errors (of the future)
    ///
    /// [`Error::Restart`] when the new generation could not be started, exited, or did
    /// not report ready in time (it is killed; this generation serves on), when a
    /// shutdown aborted the restart, or when this generation already handed over.
    pub fn restart(&self) -> RestartRequest {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Restart {
            reason: "restart requested by the application".into(),
            reply: Some(tx),
        });
        RestartRequest { rx }
    }

    /// Starts a full restart (GoFrame's): drain completely, run the shutdown hooks,
    /// then execute the program as it is on disk now in this same process (same PID),
    /// with the listening sockets kept open, so that clients arriving meanwhile wait in
    /// the kernel's accept queue instead of being refused. For programs that cannot run
    /// two generations at once. Refused (and logged) while a restart or shutdown runs,
    /// or when the executable is missing.
    pub fn full_restart(&self) {
        self.send(Command::FullRestart {
            reason: "full restart requested by the application".into(),
            reply: None,
        });
    }

    /// This process's generation: 1 for a process started from outside, one more for
    /// each graceful restart (a full restart keeps the number and adds one too).
    pub fn generation(&self) -> u32 {
        notify::origin().generation
    }

    #[cfg(feature = "http")]
    /// Registers a server's listeners to be handed over at a restart, all or none, and
    /// keeps those this process bound itself (`false`: not inherited) in systemd's FD
    /// store. Called by servers.
    pub(crate) fn register_listeners(
        &self,
        new: Vec<(String, std::os::fd::OwnedFd, bool)>,
    ) -> Result<(), Error> {
        let mut listeners = lock(&self.inner.listeners);
        if self.phase() >= Phase::Draining {
            return Err(Error::io(
                "start serving",
                std::io::Error::other("the coordinator is draining already"),
            ));
        }
        for (i, (name, _, _)) in new.iter().enumerate() {
            let taken = listeners.iter().any(|l| &l.name == name)
                || new[..i].iter().any(|(other, _, _)| other == name);
            if taken {
                return Err(Error::DuplicateListenerName { name: name.clone() });
            }
        }
        {
            use std::os::fd::AsFd;
            let bound: Vec<_> = new
                .iter()
                .filter(|(_, _, inherited)| !inherited)
                .map(|(name, fd, _)| (name.as_str(), fd.as_fd()))
                .collect();
            notify::store_fds(&bound);
        }
        listeners.extend(new.into_iter().map(|(name, fd, _)| Passed { name, fd }));
        Ok(())
    }

    fn send(&self, command: Cmd) {
        // The receiver lives as long as `run` does, or until `run` finished; after
        // that there is nothing left to shut down.
        let _ = self.inner.commands.send(command);
    }

    /// Adds an async shutdown hook (a finalizer: close a database pool, flush a queue).
    ///
    /// Hooks run after the drain, one after the other in registration order; each gets
    /// its own time `limit`, after which it is abandoned and the next one runs. Its error
    /// or panic is logged and reported in [`Report::hooks`] and makes the exit code
    /// non-zero; it never stops the shutdown. Code that blocks its thread belongs in
    /// [`on_shutdown_blocking`](Shutdown::on_shutdown_blocking).
    ///
    /// # Errors
    ///
    /// [`Error::EmptyHookName`], or [`Error::InvalidDuration`] for a limit outside
    /// 1 ms..=24 h.
    pub fn on_shutdown<F, Fut, E>(
        &self,
        name: impl Into<String>,
        limit: Duration,
        f: F,
    ) -> Result<(), Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let name = check_hook(name.into(), limit)?;
        lock(&self.inner.hooks).push(Hook::new_async(name, limit, f));
        Ok(())
    }

    /// Adds a shutdown hook that blocks its thread (synchronous I/O, `thread::sleep`).
    /// It runs on a thread of its own; one that outlives its limit is left behind and
    /// ends with the process. Otherwise as [`on_shutdown`](Shutdown::on_shutdown).
    ///
    /// # Errors
    ///
    /// As [`on_shutdown`](Shutdown::on_shutdown).
    pub fn on_shutdown_blocking<F, E>(
        &self,
        name: impl Into<String>,
        limit: Duration,
        f: F,
    ) -> Result<(), Error>
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: fmt::Display,
    {
        let name = check_hook(name.into(), limit)?;
        lock(&self.inner.hooks).push(Hook::new_blocking(name, limit, f));
        Ok(())
    }

    /// Where the shutdown stands.
    pub fn phase(&self) -> Phase {
        self.inner.tracker.phase()
    }

    /// `true` while no shutdown was asked for: what a readiness endpoint reports (it
    /// turns `false` as soon as the drain delay starts).
    pub fn is_ready(&self) -> bool {
        self.phase() == Phase::Running
    }

    /// Resolves when the drain starts (after the drain delay). A handler with a
    /// long-lived response (server-sent events, a stream) or an upgraded connection
    /// (WebSocket) awaits it to end cleanly; the drain waits for them until its
    /// deadline.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.tracker.reached(Phase::Draining)
    }

    /// Why this generation drains, once it does (`None` before the drain starts): a
    /// restart (the service goes on in a new generation, or in this process anew) or a
    /// shutdown. A WebSocket closes with [`DrainCause::websocket_close_code`], so that
    /// its client reconnects at once after a restart.
    pub fn drain_cause(&self) -> Option<DrainCause> {
        self.inner.drain_cause.get().copied()
    }

    /// Resolves when a shutdown has been asked for (the drain delay, if any, starts).
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.tracker.reached(Phase::DelayingDrain)
    }

    /// Resolves when the drain is cut short (deadline or hammer).
    pub fn forced(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.tracker.reached(Phase::Forcing)
    }

    /// Counts of the connections of every server using this coordinator.
    pub fn connections(&self) -> ConnectionStats {
        self.inner.tracker.stats()
    }

    /// The graceful restarts this generation attempted.
    pub fn restart_stats(&self) -> RestartStats {
        lock(&self.inner.restarts).clone()
    }

    /// How long this generation has been running.
    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// The listening sockets handed to the next generation: name and local address.
    pub fn listeners(&self) -> Vec<ListenerInfo> {
        lock(&self.inner.listeners)
            .iter()
            .map(|p| ListenerInfo::of(&p.name, p.fd.as_fd()))
            .collect()
    }

    /// Reports this generation ready, then serves until a trigger ends it: carries out
    /// graceful restarts (serving on when one fails), then the shutdown, the hand-over
    /// drain or the full restart; returns the report of the drain.
    ///
    /// Ready means: the pidfile (if any) is written, and whoever started this process
    /// is told `READY=1` (systemd by its notify protocol; at a restart, the previous
    /// generation, which drains only then). Call it once every server is serving
    /// ([`Server::run`](crate::http::Server::run) does).
    ///
    /// Installs the handlers of the mapped signals when called (from then on those
    /// signals no longer kill the process). Servers keep serving while it waits.
    ///
    /// After a graceful restart the returned [`Report::handed_over_to`] names the new
    /// generation; the process should exit with [`Report::exit_code`]. A full restart
    /// does not return: the process executes the program anew (unless that fails: the
    /// report then says why and its exit code is non-zero).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] on a second call; [`Error::Io`] if a signal handler
    /// cannot be installed; [`Error::Pidfile`] if the pidfile cannot be written.
    pub async fn run(&self) -> Result<Report, Error> {
        let pending = lock(&self.inner.pending)
            .take()
            .ok_or(Error::AlreadyRunning)?;
        self.install_signal_handlers()?;
        let mut triggers = Vec::new();
        for trigger in pending.triggers {
            let tx = self.inner.commands.clone();
            triggers.push(tokio::spawn(async move {
                trigger.await;
                let _ = tx.send(Command::stop("shutdown trigger completed", None));
            }));
        }
        crate::activation::close_unclaimed();
        self.start_inbound();
        self.follow_master();
        let taken_over = self.announce_ready()?;
        self.wait_for_predecessor();
        let mut commands = pending.commands;
        if !taken_over {
            // The previous generation gave up on this one and serves on: leave, with
            // what was accepted meanwhile drained, the accept queue left to it.
            let _ = self.inner.commands.send(Command::stop(
                "the previous generation gave up on this one and serves on",
                None,
            ));
        }
        let end = self.serve(&mut commands).await;
        // A previous generation still standing by for this one can go: this one hands
        // over in turn, restarts in full, or stops.
        self.release_predecessor();
        let full_restart = matches!(end, End::FullRestart(_));
        let mut escalation = Escalation::new(crate::supervisor::is_worker());
        if let End::Shutdown(stop) = &end {
            escalation.hammers(stop);
        }
        let plan = self.plan(end);
        let cause = match plan.kind {
            DrainKind::Shutdown => DrainCause::Shutdown,
            DrainKind::HandedOver { .. } | DrainKind::FullRestart | DrainKind::GivenUp => {
                DrainCause::Restart
            }
        };
        // Known before the drain starts: code that wakes up on `draining` reads it.
        let _ = self.inner.drain_cause.set(cause);
        let inner = &self.inner;
        let parts = Parts {
            tracker: &inner.tracker,
            listeners: &inner.listeners,
            hooks: &inner.hooks,
            pidfile: inner.pidfile.as_deref(),
        };
        let mut intake = Intake {
            commands: &mut commands,
            user_hooks: &inner.user_hooks,
            successor: inner.successor.load(Ordering::Relaxed),
            stop_asked: &inner.stop_asked,
            escalation,
        };
        let stopping = matches!(plan.kind, DrainKind::Shutdown);
        let timeout = plan.timeout;
        let mut report = drain::drain(plan, parts, &mut intake).await;
        if stopping {
            // A stop that came during a probation went to the new generation too: this
            // one (the main process still) ends after it.
            self.wait_successor_gone(timeout).await;
        }
        self.report_end().await;
        if full_restart {
            self.exec_full_restart(&mut report);
        }
        for task in triggers {
            task.abort();
        }
        lock(&self.inner.signal_intake).take();
        Ok(report)
    }

    /// What the drain is to do, from how serving ended.
    fn plan(&self, end: End) -> DrainPlan {
        let inner = &self.inner;
        let (kind, reason, timeout, skip_delay, hammered) = match end {
            End::Shutdown(stop) if inner.given_up.load(Ordering::Relaxed) => {
                (DrainKind::GivenUp, stop.reason, stop.deadline, true, false)
            }
            End::Shutdown(stop) => (
                DrainKind::Shutdown,
                stop.reason,
                stop.deadline,
                stop.skip_delay,
                false,
            ),
            End::Hammer(reason) => (DrainKind::Shutdown, reason, None, true, true),
            End::HandedOver(r) => (
                DrainKind::HandedOver { to: r.pid },
                format!("restart: handed over to pid {}", r.pid),
                None,
                true,
                false,
            ),
            End::FullRestart(reason) => (DrainKind::FullRestart, reason, None, true, false),
        };
        DrainPlan {
            kind,
            reason,
            timeout: timeout.unwrap_or(inner.drain_timeout),
            delay: if skip_delay {
                Duration::ZERO
            } else {
                inner.drain_delay
            },
            hammered,
        }
    }

    /// Tells whoever started this process that it is ready; `false` when the previous
    /// generation gave up on it (ready too late) and serves on.
    fn announce_ready(&self) -> Result<bool, Error> {
        let pid = std::process::id();
        let write_pidfile = || -> Result<(), Error> {
            if let Some(path) = &self.inner.pidfile {
                notify::write_pidfile(path, pid).map_err(|source| Error::Pidfile {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(())
        };
        let origin = notify::origin();
        match &origin.parent {
            // A new generation: the previous one decides whether it takes over, and then
            // writes the pidfile and tells the service manager itself.
            Some(parent) => {
                let mut ready = String::from("READY=1");
                if let Some(sig) = self.inner.signals.signal_for(Action::Restart) {
                    ready.push_str(&format!("\n{}={sig}", notify::RESTART_SIGNAL));
                }
                if let Err(e) = notify::send(parent, &ready) {
                    match origin.draining.last().filter(|g| g.alive()) {
                        // It runs but no longer listens: it gave up on this one (ready
                        // too late) and serves on. Claiming the service now would take
                        // it from the generation that serves it.
                        Some(previous) => {
                            warn!(
                                pid,
                                previous = previous.pid,
                                error = %e,
                                "the previous generation no longer waits for this one (it gave up on it); not taking over: this one drains and exits"
                            );
                            self.inner.given_up.store(true, Ordering::Relaxed);
                            return Ok(false);
                        }
                        // It is gone: nobody else will tell the manager.
                        None => {
                            warn!(pid, error = %e, "the previous generation is gone; this one takes over the service");
                            write_pidfile()?;
                            notify::ready_as(pid);
                        }
                    }
                }
            }
            None => {
                write_pidfile()?;
                notify::ready();
                notify::status(&format!(
                    "serving: generation {} (pid {pid})",
                    origin.generation
                ));
            }
        }
        let listeners: Vec<String> = lock(&self.inner.listeners)
            .iter()
            .map(|l| l.name.clone())
            .collect();
        info!(
            pid,
            generation = origin.generation,
            ?listeners,
            "server ready"
        );
        Ok(true)
    }

    /// Serves until a command ends it; carries out graceful restarts on the way.
    async fn serve(&self, commands: &mut mpsc::UnboundedReceiver<Cmd>) -> End {
        let pid = std::process::id();
        loop {
            let Some(cmd) = commands.recv().await else {
                unreachable!("`Inner` holds a sender for as long as `self` lives")
            };
            match cmd {
                Command::Shutdown(stop) => {
                    // A worker replaced at its master's reload: a hand-over.
                    return match self.successor_from_master() {
                        Some(to) => End::HandedOver(to),
                        None => End::Shutdown(stop),
                    };
                }
                Command::Hammer { reason } => return End::Hammer(reason),
                Command::Pass { signal } => self.inner.user_hooks.run(signal),
                Command::Status { .. } => {}
                Command::FullRestart { reason, .. } if let Some(m) = restart::master_control() => {
                    restart::delegate(m, Request::Restart, reason, None);
                }
                Command::Restart { reason, reply } if let Some(m) = restart::master_control() => {
                    restart::delegate(m, Request::Reload, reason, reply);
                }
                Command::FullRestart { reason, .. } => match self.inner.program.check() {
                    Ok(()) => return End::FullRestart(reason),
                    Err(e) => warn!(pid, %reason, error = %e, "full restart refused; serving on"),
                },
                Command::Restart { reason, reply } => {
                    match self.restart_now(&reason, reply, commands).await {
                        Ok(restarted) => return End::HandedOver(restarted),
                        Err(Some(interrupted)) => return interrupted,
                        Err(None) => {}
                    }
                }
            }
        }
    }

    /// Installs the handlers of the mapped signals, once. Called by the first server's
    /// `serve` before it accepts anything, so that a signal sent as soon as the server
    /// answers is handled, not fatal; and by `run`.
    pub(crate) fn install_signal_handlers(&self) -> Result<(), Error> {
        let mut installed = lock(&self.inner.signal_intake);
        if installed.is_some() {
            return Ok(());
        }
        let map = self.inner.signals.clone();
        let signals: Vec<_> = map.iter().map(|(s, _)| s).collect();
        let mut intake = SignalIntake::install(signals, &self.inner.commands, move |sig| {
            Command::from_signal(&map, sig)
        })?;
        // A newer generation forces this one with it when too many are alive (the cap):
        // unlike a shutdown signal, which an init system may send to every generation.
        if let Some(force) = crate::sys::generation_force_signal() {
            intake.add_raw(force, &self.inner.commands, || Command::Hammer {
                reason: "forced by a newer generation: too many generations alive".into(),
            })?;
        }
        *installed = Some(intake);
        restore_ignored_at_exec(&self.inner.signals);
        Ok(())
    }
}

/// After a full restart: the signals the previous image ignored across the `exec` (so
/// that one arriving before our handlers did not end the process) get their default
/// action back unless this image handles them, or they would stay ignored here and in
/// every program this one starts.
fn restore_ignored_at_exec(map: &SignalMap) {
    if !crate::activation::passed_to_this_process() {
        return;
    }
    let Ok(list) = std::env::var(notify::IGNORED_AT_EXEC) else {
        return;
    };
    for raw in list.split(',').filter_map(|n| n.trim().parse::<i32>().ok()) {
        if !map.iter().any(|(s, _)| s.as_raw() == raw) {
            crate::sys::default_signal(raw);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HookOutcome;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn quiet() -> ShutdownBuilder {
        Shutdown::builder().signals(SignalMap::empty())
    }

    #[test]
    fn bad_settings_are_errors_naming_the_value() {
        let err = quiet()
            .drain_timeout(Duration::ZERO)
            .build()
            .unwrap_err()
            .to_string();
        assert_eq!(err, "drain timeout must be between 1ms and 86400s, got 0ns");
        let err = quiet()
            .drain_timeout(Duration::from_secs(10 * 86400))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("864000s"), "{err}");
        assert!(matches!(
            quiet()
                .on_shutdown(" ", Duration::from_secs(1), || async {
                    Ok::<_, String>(())
                })
                .build(),
            Err(Error::EmptyHookName)
        ));
        let s = quiet().build().unwrap();
        assert!(s.trigger_within(Duration::ZERO).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn trigger_future_starts_the_shutdown_and_hooks_run_in_order() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut builder = quiet().trigger(async move {
            let _ = rx.await;
        });
        for name in ["first", "second", "third"] {
            let order = Arc::clone(&order);
            builder = builder.on_shutdown(name, Duration::from_secs(1), move || async move {
                order.lock().unwrap().push(name);
                Ok::<_, String>(())
            });
        }
        let shutdown = builder.build().unwrap();
        let run = tokio::spawn({
            let s = shutdown.clone();
            async move { s.run().await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!run.is_finished(), "waits for its trigger");
        assert!(shutdown.is_ready());
        tx.send(()).unwrap();
        let report = run.await.unwrap().unwrap();
        assert_eq!(*order.lock().unwrap(), ["first", "second", "third"]);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.exit_code(), 0);
        assert_eq!(shutdown.phase(), Phase::Done);
        assert!(matches!(shutdown.run().await, Err(Error::AlreadyRunning)));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_delay_keeps_ready_false_then_drains() {
        let shutdown = quiet().drain_delay(Duration::from_secs(5)).build().unwrap();
        let run = tokio::spawn({
            let s = shutdown.clone();
            async move { s.run().await }
        });
        shutdown.trigger();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(shutdown.phase(), Phase::DelayingDrain);
        assert!(!shutdown.is_ready());
        let report = run.await.unwrap().unwrap();
        assert!(report.total_time >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_hook_makes_the_exit_code_non_zero_and_the_rest_still_run() {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&ran);
        let shutdown = quiet()
            .on_shutdown("broken", Duration::from_secs(1), || async {
                Err("db gone")
            })
            .on_shutdown("hang", Duration::from_secs(2), || async {
                std::future::pending::<()>().await;
                Ok::<_, String>(())
            })
            .on_shutdown("last", Duration::from_secs(1), move || async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            })
            .build()
            .unwrap();
        shutdown.trigger();
        let report = shutdown.run().await.unwrap();
        let outcomes: Vec<_> = report.hooks.iter().map(|h| h.outcome.clone()).collect();
        assert_eq!(
            outcomes,
            [
                HookOutcome::Failed("db gone".into()),
                HookOutcome::TimedOut,
                HookOutcome::Completed
            ]
        );
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(report.exit_code(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn force_during_the_hooks_abandons_the_rest() {
        let shutdown = quiet()
            .on_shutdown("slow", Duration::from_secs(100), || async {
                tokio::time::sleep(Duration::from_secs(50)).await;
                Ok::<_, String>(())
            })
            .on_shutdown("never", Duration::from_secs(1), || async {
                Ok::<_, String>(())
            })
            .build()
            .unwrap();
        let s = shutdown.clone();
        tokio::spawn(async move {
            s.requested().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.force();
        });
        shutdown.trigger();
        let report = shutdown.run().await.unwrap();
        assert!(report.total_time < Duration::from_secs(50));
        let outcomes: Vec<_> = report.hooks.iter().map(|h| h.outcome.clone()).collect();
        assert_eq!(outcomes, [HookOutcome::Abandoned, HookOutcome::Abandoned]);
    }
}
