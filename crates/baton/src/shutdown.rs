//! The coordinator: what starts a restart or a shutdown, the restart (spawn, wait for
//! ready, roll back), the drain with its deadline, the hooks, the report.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout};
use tracing::{info, warn};

use crate::error::{check_delay, check_limit};
use crate::handoff::{self, Passed, Program, RestartFailure, Restarted};
use crate::hook::{Hook, HookReport};
use crate::notify::{self, Generation};
use crate::report::{DrainFacts, Forced, Report};
use crate::tracker::{ConnectionStats, Phase, Tracker};
use crate::{Action, Error, Signal, SignalMap};

/// The drain deadline when none is configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A hook's time limit when none is given.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new generation may take to report ready when none is configured.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How many generations may be alive at once when not configured: the serving one, the
/// one being started, and two still draining.
pub const DEFAULT_MAX_GENERATIONS: usize = 4;
/// A new generation that failed or was aborted gets this long after `SIGTERM` to drain
/// what it may have accepted before it is killed.
const ABANDON_GRACE: Duration = Duration::from_secs(10);
/// After a forced close, how long to wait for the cut connections' tasks to notice.
const FORCE_GRACE: Duration = Duration::from_secs(1);

type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;
type UserFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;
type RestartReply = oneshot::Sender<Result<Restarted, Error>>;

/// What a trigger asks of the coordinator.
#[derive(Debug)]
enum Command {
    /// Graceful shutdown (or, once one runs, a hammer when `again_forces`).
    Shutdown {
        reason: String,
        timeout: Option<Duration>,
        skip_delay: bool,
        again_forces: bool,
    },
    Force {
        reason: String,
    },
    /// Graceful restart; the outcome goes to `reply` if someone waits for it.
    Restart {
        reason: String,
        reply: Option<RestartReply>,
    },
    FullRestart {
        reason: String,
    },
    /// Run the user's function for this signal.
    User {
        signal: Signal,
    },
}

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
    commands: mpsc::UnboundedSender<Command>,
    /// Taken by `run`.
    pending: Mutex<Option<Pending>>,
    hooks: Mutex<Vec<Hook>>,
    /// The signal listener tasks, once installed (by the first `serve` or by `run`).
    signal_tasks: Mutex<Option<Vec<JoinHandle<()>>>>,
    user_hooks: Vec<(Signal, String, UserFn)>,
    /// The listening sockets of every server, by name: duplicates kept to hand them to
    /// the next generation. Closed when the drain starts, unless a full restart needs
    /// them, so that a plain shutdown refuses new connections.
    listeners: Mutex<Vec<Passed>>,
    program: Program,
    ready_timeout: Duration,
    max_generations: usize,
    pidfile: Option<PathBuf>,
    /// The PID of the generation this one handed over to (0 before).
    successor: AtomicU32,
    /// A shutdown or hammer came while a full restart drained: stop instead of
    /// executing the program anew.
    stop_asked: std::sync::atomic::AtomicBool,
    /// Restarts attempted by this generation (a lock per restart, never per request).
    restarts: Mutex<RestartStats>,
    started: std::time::Instant,
}

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
    pub failed: std::collections::BTreeMap<&'static str, u64>,
    /// Restart requests folded into one in progress.
    pub coalesced: u64,
    /// Seconds from trigger to ready (or to failure), summed over the attempts.
    pub seconds_total: f64,
    /// The last attempt: succeeded, how long it took, and its outcome in words.
    pub last: Option<(bool, Duration, String)>,
}

struct Pending {
    commands: mpsc::UnboundedReceiver<Command>,
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

/// Configures a [`Shutdown`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ShutdownBuilder {
    drain_timeout: Duration,
    drain_delay: Duration,
    signals: SignalMap,
    triggers: Vec<Trigger>,
    hooks: Vec<Hook>,
    user_hooks: Vec<(Signal, String, UserFn)>,
    ready_timeout: Duration,
    max_generations: usize,
    pidfile: Option<PathBuf>,
    error: Option<Error>,
}

impl fmt::Debug for ShutdownBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownBuilder")
            .field("drain_timeout", &self.drain_timeout)
            .field("drain_delay", &self.drain_delay)
            .field("signals", &self.signals)
            .field("triggers", &self.triggers.len())
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

impl ShutdownBuilder {
    /// How long the drain may take before what is still open is cut. Default
    /// [`DEFAULT_DRAIN_TIMEOUT`] (30 s); from 1 ms to 24 h.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// After the trigger, keep serving normally for `delay` while
    /// [`Shutdown::is_ready`] reports `false`, before the drain starts. For Kubernetes,
    /// which removes an endpoint only some time after it sent SIGTERM. Default: none.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Which signals do what. Default: [`SignalMap::default`]; [`SignalMap::empty`]
    /// listens to no signal.
    pub fn signals(mut self, map: SignalMap) -> Self {
        self.signals = map;
        self
    }

    /// A future whose completion starts a graceful shutdown, like axum's
    /// `with_graceful_shutdown`. May be given several times; the first to finish wins.
    pub fn trigger(mut self, trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        self.triggers.push(Box::pin(trigger));
        self
    }

    /// How long a new generation may take, from its start, to report ready at a
    /// graceful restart; past it, it is killed and this generation serves on. Default
    /// [`DEFAULT_READY_TIMEOUT`] (30 s); from 1 ms to 24 h.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The most generations alive at once (the serving one, the one being started, and
    /// older ones still draining); when a restart would exceed it, the oldest draining
    /// generation is forced (told to hammer). Default [`DEFAULT_MAX_GENERATIONS`] (4);
    /// at least 2.
    pub fn max_generations(mut self, n: usize) -> Self {
        self.max_generations = n;
        self
    }

    /// Writes this process's PID to `path` once it is ready (atomically: a temporary
    /// file renamed), rewritten by each new generation, removed at a final shutdown.
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pidfile = Some(path.into());
        self
    }

    /// Runs `f` whenever `signal` arrives, without disturbing serving: endless's
    /// `SIGUSR1`/`SIGTSTP` hooks, nginx's `SIGUSR1` (reopen the log files). Its error is
    /// logged. The signal is mapped to [`Action::User`]; mapping it otherwise too is an
    /// error at [`build`](ShutdownBuilder::build).
    pub fn on_signal<F, Fut, E>(mut self, signal: Signal, name: impl Into<String>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let f: UserFn = Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.user_hooks.push((signal, name.into(), f));
        self
    }

    /// Adds an async shutdown hook; see [`Shutdown::on_shutdown`].
    pub fn on_shutdown<F, Fut, E>(mut self, name: impl Into<String>, limit: Duration, f: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        match check_hook(name.into(), limit) {
            Ok(name) => self.hooks.push(Hook::new_async(name, limit, f)),
            Err(e) => self.error = self.error.or(Some(e)),
        }
        self
    }

    /// Adds a blocking shutdown hook; see [`Shutdown::on_shutdown_blocking`].
    pub fn on_shutdown_blocking<F, E>(
        mut self,
        name: impl Into<String>,
        limit: Duration,
        f: F,
    ) -> Self
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: fmt::Display,
    {
        match check_hook(name.into(), limit) {
            Ok(name) => self.hooks.push(Hook::new_blocking(name, limit, f)),
            Err(e) => self.error = self.error.or(Some(e)),
        }
        self
    }

    /// Checks the settings and creates the coordinator.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDuration`] for a drain timeout or ready timeout outside
    /// 1 ms..=24 h, a drain delay over 24 h, or a hook limit outside 1 ms..=24 h;
    /// [`Error::EmptyHookName`]; [`Error::SignalMappedTwice`] for an
    /// [`on_signal`](ShutdownBuilder::on_signal) signal that the map already maps;
    /// [`Error::NoHookForSignal`] for a signal mapped to [`Action::User`] without a hook.
    pub fn build(mut self) -> Result<Shutdown, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        check_limit("drain timeout", self.drain_timeout)?;
        check_delay("drain delay", self.drain_delay)?;
        check_limit("ready timeout", self.ready_timeout)?;
        for (signal, _, _) in &self.user_hooks {
            self.signals = self.signals.on(*signal, Action::User)?;
        }
        for (signal, action) in self.signals.iter() {
            if action == Action::User && !self.user_hooks.iter().any(|(s, _, _)| *s == signal) {
                return Err(Error::NoHookForSignal { signal });
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Shutdown {
            inner: Arc::new(Inner {
                tracker: Tracker::new(),
                drain_timeout: self.drain_timeout,
                drain_delay: self.drain_delay,
                signals: self.signals,
                commands: tx,
                pending: Mutex::new(Some(Pending {
                    commands: rx,
                    triggers: self.triggers,
                })),
                hooks: Mutex::new(self.hooks),
                signal_tasks: Mutex::new(None),
                user_hooks: self.user_hooks,
                listeners: Mutex::new(Vec::new()),
                program: Program::current(),
                ready_timeout: self.ready_timeout,
                max_generations: self.max_generations.max(2),
                pidfile: self.pidfile,
                successor: AtomicU32::new(0),
                restarts: Mutex::new(RestartStats::default()),
                started: std::time::Instant::now(),
                stop_asked: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }
}

fn check_hook(name: String, limit: Duration) -> Result<String, Error> {
    if name.trim().is_empty() {
        return Err(Error::EmptyHookName);
    }
    check_limit("hook time limit", limit)?;
    Ok(name)
}

impl Shutdown {
    /// Starts configuring a coordinator.
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_delay: Duration::ZERO,
            signals: SignalMap::default(),
            triggers: Vec::new(),
            hooks: Vec::new(),
            user_hooks: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            max_generations: DEFAULT_MAX_GENERATIONS,
            pidfile: None,
            error: None,
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
        self.send(Command::Shutdown {
            reason: "shutdown requested by the application".into(),
            timeout: None,
            skip_delay: false,
            again_forces: false,
        });
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
        self.send(Command::Shutdown {
            reason: format!(
                "shutdown requested by the application (deadline {:?})",
                deadline
            ),
            timeout: Some(deadline),
            skip_delay: false,
            again_forces: false,
        });
        Ok(())
    }

    /// Forces the close: what is still open is cut now and the hooks run. Starts a
    /// shutdown if none runs.
    pub fn force(&self) {
        self.send(Command::Force {
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
        });
    }

    /// This process's generation: 1 for a process started from outside, one more for
    /// each graceful restart (a full restart keeps the number and adds one too).
    pub fn generation(&self) -> u32 {
        notify::origin().generation
    }

    #[cfg(feature = "http")]
    /// Registers a server's listeners to be handed over at a restart, all or none.
    /// Called by servers.
    pub(crate) fn register_listeners(
        &self,
        new: Vec<(String, std::os::fd::OwnedFd)>,
    ) -> Result<(), Error> {
        let mut listeners = lock(&self.inner.listeners);
        if self.phase() >= Phase::Draining {
            return Err(Error::io(
                "start serving",
                std::io::Error::other("the coordinator is draining already"),
            ));
        }
        for (i, (name, _)) in new.iter().enumerate() {
            let taken = listeners.iter().any(|l| &l.name == name)
                || new[..i].iter().any(|(other, _)| other == name);
            if taken {
                return Err(Error::DuplicateListenerName { name: name.clone() });
            }
        }
        listeners.extend(new.into_iter().map(|(name, fd)| Passed { name, fd }));
        Ok(())
    }

    fn send(&self, command: Command) {
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
    pub fn listeners(&self) -> Vec<(String, String)> {
        lock(&self.inner.listeners)
            .iter()
            .map(|p| {
                let addr = socket2::SockRef::from(&p.fd)
                    .local_addr()
                    .ok()
                    .map(|a| match (a.as_socket(), a.as_pathname()) {
                        (Some(sa), _) => sa.to_string(),
                        (None, Some(path)) => format!("unix:{}", path.display()),
                        _ => "?".to_owned(),
                    })
                    .unwrap_or_else(|| "?".to_owned());
                (p.name.clone(), addr)
            })
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
                let _ = tx.send(Command::Shutdown {
                    reason: "shutdown trigger completed".into(),
                    timeout: None,
                    skip_delay: false,
                    again_forces: false,
                });
            }));
        }
        crate::activation::close_unclaimed();
        self.announce_ready()?;
        let mut commands = pending.commands;
        let end = self.serve(&mut commands).await;
        let full_restart = matches!(end, End::FullRestart { .. });
        let mut report = self.stop(end, &mut commands).await;
        if full_restart && self.inner.stop_asked.load(Ordering::SeqCst) {
            info!(
                pid = std::process::id(),
                "full restart abandoned: a shutdown was asked for during its drain"
            );
            notify::upstream("STOPPING=1");
            lock(&self.inner.listeners).clear();
            if let Some(path) = &self.inner.pidfile {
                notify::remove_pidfile(path);
            }
        } else if full_restart {
            let listeners = std::mem::take(&mut *lock(&self.inner.listeners));
            info!(
                pid = std::process::id(),
                exe = %self.inner.program.exe.display(),
                "full restart: drained; executing the program anew with {} listening sockets",
                listeners.len()
            );
            // Restart and user-hook signals would end the process (their default action)
            // between the exec and the new image's handlers: ignore them across it.
            let ignored: Vec<Signal> = self
                .inner
                .signals
                .iter()
                .filter(|(_, a)| matches!(a, Action::Restart | Action::FullRestart | Action::User))
                .map(|(s, _)| s)
                .collect();
            let e = handoff::exec_in_place(
                &self.inner.program,
                &listeners,
                self.generation() + 1,
                &ignored,
            );
            warn!(pid = std::process::id(), error = %e, "full restart: cannot execute the program; exiting");
            report.restart_failed = Some(e.to_string());
        }
        for task in triggers {
            task.abort();
        }
        for task in lock(&self.inner.signal_tasks).take().unwrap_or_default() {
            task.abort();
        }
        Ok(report)
    }

    fn announce_ready(&self) -> Result<(), Error> {
        let pid = std::process::id();
        if let Some(path) = &self.inner.pidfile {
            notify::write_pidfile(path, pid).map_err(|source| Error::Pidfile {
                path: path.clone(),
                source,
            })?;
        }
        let origin = notify::origin();
        match &origin.parent {
            Some(parent) => {
                let mut ready = String::from("READY=1");
                if let Some(sig) = self.inner.signals.signal_for(Action::Restart) {
                    ready.push_str(&format!("\n{}={sig}", notify::RESTART_SIGNAL));
                }
                if let Err(e) = notify::send(parent, &ready) {
                    // The previous generation is gone: nobody will tell the manager.
                    warn!(pid, error = %e, "cannot tell the previous generation that this one is ready");
                    notify::upstream(&format!("MAINPID={pid}\nREADY=1"));
                }
            }
            None => notify::upstream("READY=1"),
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
        Ok(())
    }

    /// Serves until a command ends it; carries out graceful restarts on the way.
    async fn serve(&self, commands: &mut mpsc::UnboundedReceiver<Command>) -> End {
        let pid = std::process::id();
        loop {
            let Some(cmd) = commands.recv().await else {
                unreachable!("`Inner` holds a sender for as long as `self` lives")
            };
            match cmd {
                Command::Shutdown {
                    reason,
                    timeout,
                    skip_delay,
                    ..
                } => {
                    return End::Shutdown {
                        reason,
                        timeout,
                        skip_delay,
                        hammered: false,
                    };
                }
                Command::Force { reason } => {
                    return End::Shutdown {
                        reason,
                        timeout: None,
                        skip_delay: true,
                        hammered: true,
                    };
                }
                Command::User { signal } => self.run_user_hook(signal),
                Command::FullRestart { reason } => match self.inner.program.check() {
                    Ok(()) => return End::FullRestart { reason },
                    Err(e) => warn!(pid, %reason, error = %e, "full restart refused; serving on"),
                },
                Command::Restart { reason, reply } => {
                    let mut replies: Vec<RestartReply> = reply.into_iter().collect();
                    let t0 = Instant::now();
                    let outcome = self
                        .carry_out_restart(&reason, &mut replies, commands)
                        .await;
                    {
                        let took = t0.elapsed();
                        let mut stats = lock(&self.inner.restarts);
                        stats.seconds_total += took.as_secs_f64();
                        match &outcome {
                            Ok(r) => {
                                stats.ok += 1;
                                stats.coalesced += u64::from(r.coalesced);
                                stats.last = Some((
                                    true,
                                    took,
                                    format!("generation {} pid {}", r.generation, r.pid),
                                ));
                            }
                            Err((f, _)) => {
                                *stats.failed.entry(f.kind()).or_default() += 1;
                                stats.last = Some((false, took, f.to_string()));
                            }
                        }
                    }
                    match outcome {
                        Ok(restarted) => {
                            for reply in replies {
                                let _ = reply.send(Ok(restarted.clone()));
                            }
                            return End::HandedOver { restarted };
                        }
                        Err((failure, interrupted)) => {
                            warn!(pid, %reason, "restart failed, serving on: {failure}");
                            for reply in replies {
                                let _ = reply.send(Err(Error::Restart(failure.clone())));
                            }
                            if let Some(end) = interrupted {
                                return end;
                            }
                        }
                    }
                }
            }
        }
    }

    /// One graceful restart: start the next generation, wait until it is ready (or
    /// fails); coalesce restart requests meanwhile. On failure the new process is killed
    /// and reaped, and a shutdown that interrupted it is returned to be carried out.
    async fn carry_out_restart(
        &self,
        reason: &str,
        replies: &mut Vec<RestartReply>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Result<Restarted, (RestartFailure, Option<End>)> {
        let pid = std::process::id();
        let triggered = Instant::now();
        let generation = self.generation() + 1;
        info!(pid, %reason, generation = self.generation(), "server reloading");
        notify::upstream(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        // Keep-alive clients answered from now on reconnect: the new connection goes to
        // whichever generation accepts it, never to one idle on a generation that drains.
        self.inner.tracker.set_closing(true);
        let back_to_ready = || {
            self.inner.tracker.set_closing(false);
            // The failed generation may have written its PID already.
            if let Some(path) = &self.inner.pidfile
                && let Err(e) = notify::write_pidfile(path, pid)
            {
                warn!(pid, error = %e, "cannot rewrite the pidfile after the failed restart");
            }
            notify::upstream("READY=1");
        };
        // Nothing is forced for a restart that cannot even start.
        if let Err(e) = self.inner.program.check() {
            back_to_ready();
            return Err((e, None));
        }
        let draining = self.enforce_generation_cap();
        let spawned = {
            let listeners = lock(&self.inner.listeners);
            handoff::spawn(&self.inner.program, &listeners, generation, &draining)
        };
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
        let mut coalesced = 0u32;
        let ready = loop {
            tokio::select! {
                res = spawned.ready(self.inner.ready_timeout) => break res,
                cmd = commands.recv() => match cmd {
                    Some(Command::Restart { reason, reply }) => {
                        coalesced += 1;
                        replies.extend(reply);
                        info!(pid, %reason, "restart requested during a restart: coalesced into it ({coalesced} so far)");
                    }
                    Some(Command::FullRestart { reason }) => {
                        warn!(pid, %reason, "full restart refused: a graceful restart is in progress");
                    }
                    Some(Command::User { signal }) => self.run_user_hook(signal),
                    Some(Command::Shutdown { reason, timeout, skip_delay, .. }) => {
                        spawned.abandon(ABANDON_GRACE);
                        let end = End::Shutdown { reason: reason.clone(), timeout, skip_delay, hammered: false };
                        return Err((RestartFailure::Aborted { reason }, Some(end)));
                    }
                    Some(Command::Force { reason }) => {
                        spawned.abandon(ABANDON_GRACE);
                        let end = End::Shutdown { reason: reason.clone(), timeout: None, skip_delay: true, hammered: true };
                        return Err((RestartFailure::Aborted { reason }, Some(end)));
                    }
                    None => unreachable!("`Inner` holds a sender for as long as `self` lives"),
                },
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
            coalesced,
        };
        spawned.release();
        self.inner.successor.store(restarted.pid, Ordering::Relaxed);
        notify::upstream(&format!("MAINPID={}\nREADY=1", restarted.pid));
        info!(
            pid,
            new_pid = restarted.pid,
            generation,
            spawn = ?restarted.spawn,
            ready = ?restarted.ready,
            coalesced,
            "restart: the new generation is ready; this one stops accepting and drains"
        );
        if coalesced > 0 {
            self.ask_follow_up(restarted.pid, coalesced, announced.as_deref());
        }
        Ok(restarted)
    }

    /// Requests that came in during a restart wanted a restart after it: ask the new
    /// generation for one, by the restart signal it announced with its `READY=1` (its
    /// map may differ from ours after an upgrade; without one, no signal is sent).
    fn ask_follow_up(&self, successor: u32, coalesced: u32, announced: Option<&str>) {
        let pid = std::process::id();
        match announced.and_then(|s| s.parse::<Signal>().ok()) {
            Some(sig) => match crate::sys::kill(successor, sig.as_raw()) {
                Ok(()) => info!(
                    pid,
                    successor,
                    coalesced,
                    "asked the new generation for one follow-up restart ({sig})"
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

    /// The older generations still draining, this one added; forces the oldest ones
    /// when starting another would exceed the cap.
    fn enforce_generation_cap(&self) -> Vec<Generation> {
        let mut draining: Vec<Generation> = notify::origin()
            .draining
            .iter()
            .copied()
            .filter(Generation::alive)
            .collect();
        // Alive during the restart: the draining ones, this one and the new one.
        while !draining.is_empty() && draining.len() + 2 > self.inner.max_generations {
            let oldest = draining.remove(0);
            let sig = [Action::Hammer, Action::Shutdown, Action::ShutdownNow]
                .into_iter()
                .find_map(|a| self.inner.signals.signal_for(a))
                .map_or(libc::SIGKILL, Signal::as_raw);
            warn!(
                pid = std::process::id(),
                oldest = oldest.pid,
                max = self.inner.max_generations,
                "too many generations alive: forcing the oldest draining one (signal {sig})"
            );
            let _ = crate::sys::kill(oldest.pid, sig);
        }
        draining.extend(Generation::this_process());
        draining
    }

    fn run_user_hook(&self, signal: Signal) {
        let pid = std::process::id();
        let Some((_, name, f)) = self.inner.user_hooks.iter().find(|(s, _, _)| *s == signal) else {
            return;
        };
        let (name, fut) = (name.clone(), f());
        info!(pid, hook = %name, %signal, "running user hook");
        tokio::spawn(async move {
            match fut.await {
                Ok(()) => info!(pid, hook = %name, "user hook completed"),
                Err(e) => warn!(pid, hook = %name, error = %e, "user hook failed"),
            }
        });
    }

    /// A command that arrives once serving has ended: restarts are refused, user hooks
    /// run; a shutdown or force is returned for the caller to act on.
    fn after_serving(&self, cmd: Command) -> Option<Command> {
        let successor = self.inner.successor.load(Ordering::Relaxed);
        let failure = || {
            if successor != 0 {
                RestartFailure::Draining { successor }
            } else {
                RestartFailure::Busy("this generation is shutting down")
            }
        };
        match cmd {
            Command::Restart { reason, reply } => {
                warn!(pid = std::process::id(), %reason, "restart refused: {}", failure());
                if let Some(reply) = reply {
                    let _ = reply.send(Err(Error::Restart(failure())));
                }
                None
            }
            Command::FullRestart { reason } => {
                warn!(pid = std::process::id(), %reason, "full restart refused: {}", failure());
                None
            }
            Command::User { signal } => {
                self.run_user_hook(signal);
                None
            }
            other => {
                self.inner.stop_asked.store(true, Ordering::SeqCst);
                Some(other)
            }
        }
    }

    /// The end of serving: the drain (with its delay for a shutdown), the force if
    /// needed, the hooks.
    async fn stop(&self, end: End, commands: &mut mpsc::UnboundedReceiver<Command>) -> Report {
        let tracker = &self.inner.tracker;
        let pid = std::process::id();
        let started = Instant::now();
        let (reason, timeout_asked, skip_delay, mut hammered, keep_listeners, handed_over_to) =
            match end {
                End::Shutdown {
                    reason,
                    timeout,
                    skip_delay,
                    hammered,
                } => {
                    info!(pid, %reason, "shutting down");
                    // A generation whose predecessor still runs may be one that the
                    // predecessor gave up on (ready too late): it must not tell systemd
                    // that the service stops. (A confirmed one stopped while its
                    // predecessor drains skips this informational message too.)
                    let origin = notify::origin();
                    let predecessor_runs = origin.parent.is_some()
                        && origin.draining.last().is_some_and(Generation::alive);
                    if !predecessor_runs {
                        notify::upstream("STOPPING=1");
                    }
                    (reason, timeout, skip_delay, hammered, false, None)
                }
                End::HandedOver { restarted } => (
                    format!("restart: handed over to pid {}", restarted.pid),
                    None,
                    true,
                    false,
                    false,
                    Some(restarted.pid),
                ),
                End::FullRestart { reason } => {
                    info!(pid, %reason, "full restart: draining completely first");
                    notify::upstream(&format!(
                        "RELOADING=1\nMONOTONIC_USEC={}",
                        notify::monotonic_usec()
                    ));
                    (reason, None, true, false, true, None)
                }
            };
        let mut drain_timeout = timeout_asked.unwrap_or(self.inner.drain_timeout);

        // Drain delay: serve on, readiness false.
        tracker.advance(Phase::DelayingDrain);
        let delay = self.inner.drain_delay;
        if !skip_delay && !hammered && !delay.is_zero() {
            info!(pid, delay = ?delay, "readiness now reports draining; serving on until the drain starts");
            let until = Instant::now() + delay;
            // Any shutdown request ends the delay early; a hammer forces.
            loop {
                tokio::select! {
                    () = sleep_until(until) => break,
                    cmd = commands.recv() => match cmd.and_then(|c| self.after_serving(c)) {
                        Some(Command::Shutdown { timeout, .. }) => {
                            if let Some(t) = timeout {
                                drain_timeout = drain_timeout.min(t);
                            }
                            info!(pid, "shutdown asked again: the drain starts now");
                            break;
                        }
                        Some(_) => {
                            hammered = true;
                            break;
                        }
                        None => {}
                    },
                }
            }
        }

        // Drain. At a plain shutdown the listeners take what waits in their accept
        // queue, then close (our duplicates first, so that the socket really closes).
        // At a hand-over or a full restart they leave the queue alone: it belongs to
        // the generation that takes over the same socket.
        let sweep = handed_over_to.is_none() && !keep_listeners;
        tracker.set_sweep(sweep);
        if !keep_listeners {
            lock(&self.inner.listeners).clear();
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
        let mut deadline = drain_started + drain_timeout;
        let mut forced_by = hammered.then_some(Forced::Hammer);
        if forced_by.is_none() {
            loop {
                tokio::select! {
                    () = tracker.idle() => break,
                    () = sleep_until(deadline) => {
                        forced_by = Some(Forced::Deadline);
                        break;
                    }
                    cmd = commands.recv() => match cmd.and_then(|c| self.after_serving(c)) {
                        Some(Command::Shutdown { timeout: Some(t), again_forces: false, .. }) => {
                            deadline = deadline.min(Instant::now() + t);
                        }
                        Some(Command::Shutdown { again_forces: false, .. }) | None => {}
                        Some(Command::Shutdown { reason, .. } | Command::Force { reason }) => {
                            warn!(pid, %reason, "hammer: forcing the close now");
                            forced_by = Some(Forced::Hammer);
                            break;
                        }
                        Some(_) => {}
                    },
                }
            }
        }
        let mut connections_forced = 0;
        let mut requests_forced = 0;
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
            // The cut connections' tasks see EOF and end; wait a moment for them so
            // that the counts below are final.
            if timeout(FORCE_GRACE, tracker.idle()).await.is_err() {
                warn!(
                    pid,
                    "some forced connections are still open after {FORCE_GRACE:?}"
                );
            }
        }
        let drain_time = drain_started.elapsed();
        let after = tracker.stats();

        // Hooks.
        tracker.advance(Phase::Finalizing);
        let hooks = std::mem::take(&mut *lock(&self.inner.hooks));
        let hooks = self.run_hooks(hooks, commands).await;
        tracker.advance(Phase::Done);
        if handed_over_to.is_none()
            && !keep_listeners
            && let Some(path) = &self.inner.pidfile
        {
            notify::remove_pidfile(path);
        }

        let report = Report::from_drain(DrainFacts {
            reason,
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
        let what = if handed_over_to.is_some() {
            "drain after the hand-over complete"
        } else if keep_listeners {
            "drain before the full restart complete"
        } else {
            "shutdown complete"
        };
        if report.is_clean() {
            info!(pid, "{what}: {report}");
        } else {
            warn!(pid, "{what}: {report}");
        }
        report
    }

    /// Installs the handlers of the mapped signals, once. Called by the first server's
    /// `serve` before it accepts anything, so that a signal sent as soon as the server
    /// answers is handled, not fatal; and by `run`.
    pub(crate) fn install_signal_handlers(&self) -> Result<(), Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut installed = lock(&self.inner.signal_tasks);
        if installed.is_some() {
            return Ok(());
        }
        let mut tasks = Vec::new();
        for (sig, action) in self.inner.signals.iter() {
            let stream = signal(SignalKind::from_raw(sig.as_raw()));
            let mut stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    tasks.iter().for_each(JoinHandle::abort);
                    return Err(Error::io(format!("install a handler for {sig}"), e));
                }
            };
            let tx = self.inner.commands.clone();
            tasks.push(tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(signal_command(sig, action)).is_err() {
                        break;
                    }
                }
            }));
        }
        *installed = Some(tasks);
        Ok(())
    }

    async fn run_hooks(
        &self,
        hooks: Vec<Hook>,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Vec<HookReport> {
        let pid = std::process::id();
        let mut reports = Vec::with_capacity(hooks.len());
        let mut hooks = hooks.into_iter();
        while let Some(hook) = hooks.next() {
            let (name, limit) = (hook.name.clone(), hook.limit);
            info!(pid, hook = %name, limit = ?limit, "running shutdown hook");
            let started = Instant::now();
            let run = hook.run();
            tokio::pin!(run);
            let report = loop {
                tokio::select! {
                    report = &mut run => break Some(report),
                    cmd = commands.recv() => match cmd.and_then(|c| self.after_serving(c)) {
                        Some(Command::Shutdown { again_forces: false, .. }) | None => {}
                        Some(Command::Shutdown { reason, .. } | Command::Force { reason }) => {
                            warn!(pid, %reason, hook = %name, "hammer during the hooks: abandoning the rest");
                            break None;
                        }
                        Some(_) => {}
                    },
                }
            };
            match report {
                Some(report) => {
                    match &report.outcome {
                        crate::HookOutcome::Completed => {
                            info!(pid, hook = %name, elapsed = ?report.elapsed, "shutdown hook completed");
                        }
                        outcome => {
                            warn!(pid, hook = %name, elapsed = ?report.elapsed, "shutdown hook {outcome}");
                        }
                    }
                    reports.push(report);
                }
                None => {
                    // The running hook's task is aborted with `run`; say how long it had.
                    reports.push(HookReport {
                        name,
                        limit,
                        outcome: crate::HookOutcome::Abandoned,
                        elapsed: started.elapsed(),
                    });
                    reports.extend(hooks.map(Hook::abandoned));
                    break;
                }
            }
        }
        reports
    }
}

fn signal_command(sig: Signal, action: Action) -> Command {
    let reason = sig.to_string();
    match action {
        Action::Shutdown => Command::Shutdown {
            reason,
            timeout: None,
            skip_delay: false,
            again_forces: true,
        },
        Action::ShutdownNow => Command::Shutdown {
            reason,
            timeout: None,
            skip_delay: true,
            again_forces: true,
        },
        Action::Hammer => Command::Force { reason },
        Action::Restart => Command::Restart {
            reason,
            reply: None,
        },
        Action::FullRestart => Command::FullRestart { reason },
        Action::User => Command::User { signal: sig },
    }
}

/// How serving ended.
#[derive(Debug)]
enum End {
    Shutdown {
        reason: String,
        timeout: Option<Duration>,
        skip_delay: bool,
        hammered: bool,
    },
    HandedOver {
        restarted: Restarted,
    },
    FullRestart {
        reason: String,
    },
}

/// The outcome of [`Shutdown::restart`]: resolves once the new generation is ready, or
/// the restart failed.
#[must_use = "the restart proceeds anyway; await this to learn its outcome"]
#[derive(Debug)]
pub struct RestartRequest {
    rx: oneshot::Receiver<Result<Restarted, Error>>,
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
