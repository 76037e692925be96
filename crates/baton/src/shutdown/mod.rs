//! The coordinator: what starts a restart or a shutdown, and the handle that servers,
//! handlers and signal listeners share. The restart is in `restart.rs`, the drain with
//! its hooks in `drain.rs`, the settings in `builder.rs`; the vocabulary of commands
//! (shared with the master) is `crate::command`.

mod builder;
mod delegate;
mod drain;
mod generations;
mod life;
mod restart;
mod run;

use std::fmt;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, SignalIntake, Stop};
use crate::error::Error;
use crate::error::check_limit;
use crate::failure::Restarted;
use crate::handoff::{Passed, Program};
use crate::hook::{Hook, UserHooks};
use crate::listener::ListenerInfo;
use crate::notify;
use crate::signal::SignalMap;
use crate::sync::lock;
use crate::tracker::{ConnectionStats, Phase, Tracker};

use builder::check_hook;

pub use crate::command::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_PROBATION, DEFAULT_READY_TIMEOUT};
pub use builder::{DEFAULT_HOOK_TIMEOUT, DEFAULT_MAX_GENERATIONS, ShutdownBuilder};
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
/// ([`restart`](Shutdown::restart), [`Action::Restart`](crate::Action::Restart); a failed one leaves serving as
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
///    (a mapped shutdown signal again, whichever, [`Action::Hammer`](crate::Action::Hammer),
///    [`force`](Shutdown::force)): what is still open is cut.
/// 5. **Hooks** ([`Phase::Finalizing`]): in registration order, each bounded by its
///    limit. A further shutdown signal here abandons the hooks not yet run.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    tracker: Tracker,
    /// Fixed when it was built.
    settings: Settings,
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
    /// Where it stands: serving, given up, handed over, draining (and why).
    life: life::Lifecycle,
    /// Restarts attempted by this generation (a lock per restart, never per request).
    restarts: Mutex<RestartStats>,
    started: std::time::Instant,
    /// The generation channel, both ways.
    links: generations::Links,
}

/// What a coordinator was built with (see `ShutdownBuilder`), and the program it
/// restarts.
struct Settings {
    drain_timeout: Duration,
    drain_delay: Duration,
    signals: SignalMap,
    program: Program,
    ready_timeout: Duration,
    probation: Duration,
    max_generations: usize,
    pidfile: Option<PathBuf>,
}

struct Pending {
    commands: mpsc::UnboundedReceiver<Cmd>,
    triggers: Vec<Trigger>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("phase", &self.phase())
            .field("drain_timeout", &self.inner.settings.drain_timeout)
            .field("drain_delay", &self.inner.settings.drain_delay)
            .field("signals", &self.inner.settings.signals)
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
                settings: Settings {
                    drain_timeout: b.drain_timeout,
                    drain_delay: b.drain_delay,
                    signals: b.signals,
                    program: Program::current(),
                    ready_timeout: b.ready_timeout,
                    probation: b.probation,
                    max_generations: b.max_generations,
                    pidfile: b.pidfile,
                },
                commands: tx,
                pending: Mutex::new(Some(Pending {
                    commands: rx,
                    triggers: b.triggers,
                })),
                hooks: Mutex::new(b.hooks),
                signal_intake: Mutex::new(None),
                user_hooks: b.user_hooks,
                listeners: Mutex::new(Vec::new()),
                life: life::Lifecycle::default(),
                restarts: Mutex::new(RestartStats::default()),
                started: std::time::Instant::now(),
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
        crate::origin::origin().generation
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
        notify::store_fds(
            new.iter()
                .map(|(name, fd, inherited)| (name.as_str(), fd.as_fd(), *inherited)),
        );
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
    /// or panic is logged and reported in [`Report::hooks`](crate::Report::hooks) and makes the exit code
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
        self.inner.life.drain_cause()
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hook::HookOutcome;
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
