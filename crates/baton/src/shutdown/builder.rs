//! Configuring a coordinator.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use super::{Shutdown, Trigger};
use crate::command::{DEFAULT_DRAIN_TIMEOUT, DEFAULT_PROBATION, DEFAULT_READY_TIMEOUT};
use crate::error::Error;
use crate::error::{check_delay, check_limit};
use crate::hook::{Hook, UserHooks};
use crate::signal::{Action, Signal, SignalMap};

/// A hook's time limit when none is given.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How many generations may be alive at once when not configured: the serving one, the
/// one being started, and two still draining.
pub const DEFAULT_MAX_GENERATIONS: usize = 4;

/// Configures a [`Shutdown`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct ShutdownBuilder {
    pub(super) drain_timeout: Duration,
    pub(super) drain_delay: Duration,
    pub(super) signals: SignalMap,
    pub(super) triggers: Vec<Trigger>,
    pub(super) hooks: Vec<Hook>,
    pub(super) user_hooks: UserHooks,
    pub(super) ready_timeout: Duration,
    pub(super) probation: Duration,
    pub(super) max_generations: usize,
    pub(super) pidfile: Option<PathBuf>,
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

impl Default for ShutdownBuilder {
    fn default() -> Self {
        ShutdownBuilder {
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            drain_delay: Duration::ZERO,
            signals: SignalMap::default(),
            triggers: Vec::new(),
            hooks: Vec::new(),
            user_hooks: UserHooks::default(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            probation: DEFAULT_PROBATION,
            max_generations: DEFAULT_MAX_GENERATIONS,
            pidfile: None,
            error: None,
        }
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

    /// After a graceful restart, how long this generation stands by before it drains:
    /// the probation of the new one. The new generation serves new connections from its
    /// ready on; this one stops accepting but keeps its listening sockets and its open
    /// connections (and serves them). If the new generation dies within the window (a
    /// panic on its first real requests, an OOM kill), this one resumes accepting at
    /// once and serves on, says so (log, service manager status, restart statistics,
    /// and the error of [`Shutdown::restart`]), and only the connections the dead one
    /// held are lost. At the end of the window (or sooner, when the new generation
    /// restarts in turn or shuts down, or another restart is asked for), the new
    /// generation becomes the main process (pidfile, `MAINPID=`) and this one drains,
    /// its connections moving over. Default [`DEFAULT_PROBATION`] (2 s); up to 24 h;
    /// zero turns it off (the drain starts at the new generation's ready, as nginx's
    /// and HAProxy's reloads do, and a crash of the new generation after that is an
    /// outage).
    pub fn probation(mut self, window: Duration) -> Self {
        self.probation = window;
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
        self.user_hooks.add(signal, name.into(), f);
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
    /// [`Error::EmptyHookName`]; [`Error::Signal`] for an
    /// [`on_signal`](ShutdownBuilder::on_signal) signal that the map already maps;
    /// [`Error::NoHookForSignal`] for a signal mapped to [`Action::User`] without a hook.
    pub fn build(mut self) -> Result<Shutdown, Error> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        check_limit("drain timeout", self.drain_timeout)?;
        check_delay("drain delay", self.drain_delay)?;
        check_limit("ready timeout", self.ready_timeout)?;
        check_delay("probation", self.probation)?;
        for signal in self.user_hooks.signals() {
            self.signals = self.signals.on(signal, Action::User)?;
        }
        for (signal, action) in self.signals.iter() {
            if action == Action::User && !self.user_hooks.signals().any(|s| s == signal) {
                return Err(Error::NoHookForSignal { signal });
            }
        }
        self.max_generations = self.max_generations.max(2);
        Ok(Shutdown::new(self))
    }
}

pub(super) fn check_hook(name: String, limit: Duration) -> Result<String, Error> {
    if name.trim().is_empty() {
        return Err(Error::EmptyHookName);
    }
    check_limit("hook time limit", limit)?;
    Ok(name)
}
