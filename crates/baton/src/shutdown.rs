//! The drain coordinator: what starts a shutdown, the drain with its deadline, the
//! hooks, the report.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout};
use tracing::{info, warn};

use crate::error::{check_delay, check_limit};
use crate::hook::{Hook, HookReport};
use crate::report::{Forced, Report};
use crate::tracker::{ConnectionStats, Phase, Tracker};
use crate::{Action, Error, Signal, SignalMap};

/// The drain deadline when none is configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// A hook's time limit when none is given.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// After a forced close, how long to wait for the cut connections' tasks to notice.
const FORCE_GRACE: Duration = Duration::from_secs(1);

type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

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
}

/// Coordinates a graceful shutdown: the handle that servers, handlers and signal
/// listeners share.
///
/// Cloning is cheap; every clone controls the same shutdown. Build one with
/// [`Shutdown::builder`], hand it to each server, then call [`run`](Shutdown::run),
/// which waits for the trigger and carries out the shutdown:
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
///    (the shutdown signal again, [`Action::Hammer`], [`force`](Shutdown::force)): what
///    is still open is cut.
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
    /// [`Error::InvalidDuration`] for a drain timeout outside 1 ms..=24 h, a drain delay
    /// over 24 h, or a hook limit outside 1 ms..=24 h; [`Error::EmptyHookName`].
    pub fn build(self) -> Result<Shutdown, Error> {
        if let Some(e) = self.error {
            return Err(e);
        }
        check_limit("drain timeout", self.drain_timeout)?;
        check_delay("drain delay", self.drain_delay)?;
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
            error: None,
        }
    }

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

    /// Waits for a trigger and carries out the shutdown; returns its report.
    ///
    /// Installs the handlers of the mapped signals when called (from then on those
    /// signals no longer kill the process). Servers keep serving while it waits.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] on a second call; [`Error::Io`] if a signal handler
    /// cannot be installed.
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
        let report = self.carry_out(pending.commands).await;
        for task in triggers {
            task.abort();
        }
        for task in lock(&self.inner.signal_tasks).take().unwrap_or_default() {
            task.abort();
        }
        Ok(report)
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

    async fn carry_out(&self, mut commands: mpsc::UnboundedReceiver<Command>) -> Report {
        let tracker = &self.inner.tracker;
        let pid = std::process::id();
        let Some(first) = commands.recv().await else {
            unreachable!("`Inner` holds a sender for as long as `self` lives")
        };
        let started = Instant::now();
        let (reason, mut drain_timeout, skip_delay, mut hammered) = match first {
            Command::Shutdown {
                reason,
                timeout,
                skip_delay,
                ..
            } => (
                reason,
                timeout.unwrap_or(self.inner.drain_timeout),
                skip_delay,
                false,
            ),
            Command::Force { reason } => (reason, self.inner.drain_timeout, true, true),
        };
        info!(pid, %reason, "shutting down");

        // Drain delay: serve on, readiness false.
        tracker.advance(Phase::DelayingDrain);
        let delay = self.inner.drain_delay;
        if !skip_delay && !hammered && !delay.is_zero() {
            info!(pid, delay = ?delay, "readiness now reports draining; serving on until the drain starts");
            // Any shutdown request ends the delay early; a hammer forces.
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown { timeout, .. }) => {
                        if let Some(t) = timeout {
                            drain_timeout = drain_timeout.min(t);
                        }
                        info!(pid, "shutdown asked again: the drain starts now");
                    }
                    Some(Command::Force { .. }) | None => hammered = true,
                },
            }
        }

        // Drain.
        let before = tracker.stats();
        let drain_started = tokio::time::Instant::now();
        tracker.advance(Phase::Draining);
        info!(
            pid,
            connections = before.open,
            requests_in_flight = before.requests_in_flight,
            deadline = ?drain_timeout,
            "draining: listeners closed, finishing requests in flight"
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
                    cmd = commands.recv() => match cmd {
                        Some(Command::Shutdown { timeout: Some(t), again_forces: false, .. }) => {
                            deadline = deadline.min(tokio::time::Instant::now() + t);
                        }
                        Some(Command::Shutdown { again_forces: false, .. }) => {}
                        Some(Command::Shutdown { reason, .. } | Command::Force { reason }) => {
                            warn!(pid, %reason, "hammer: forcing the close now");
                            forced_by = Some(Forced::Hammer);
                            break;
                        }
                        None => {}
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
        let hooks = self.run_hooks(hooks, &mut commands).await;
        tracker.advance(Phase::Done);

        // Forced = cut by `force_all` or, for a connection registered after its
        // snapshot (taken from the accept queue meanwhile), by its own drive loop.
        let forced_now = after.forced.saturating_sub(before.forced);
        let closed = after.closed.saturating_sub(before.closed);
        let closed_unforced = closed.saturating_sub(forced_now.saturating_sub(after.open as u64));
        let report = Report {
            reason,
            connections_at_drain: before.open as u64
                + after.accepted.saturating_sub(before.accepted),
            connections_drained: closed_unforced,
            connections_forced: forced_now.max(connections_forced as u64),
            upgraded_at_drain: before.upgraded as u64,
            requests_in_flight: before.requests_in_flight,
            requests_during_drain: after.requests.saturating_sub(before.requests),
            requests_forced,
            forced: forced_by,
            drain_time,
            total_time: started.elapsed(),
            hooks,
        };
        if report.is_clean() {
            info!(pid, "shutdown complete: {report}");
        } else {
            warn!(pid, "shutdown complete: {report}");
        }
        report
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
                    cmd = commands.recv() => match cmd {
                        Some(Command::Shutdown { again_forces: false, .. }) | None => {}
                        Some(Command::Shutdown { reason, .. } | Command::Force { reason }) => {
                            warn!(pid, %reason, hook = %name, "hammer during the hooks: abandoning the rest");
                            break None;
                        }
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
