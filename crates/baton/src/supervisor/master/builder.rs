//! Configuring a master.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Master;
use crate::error::Error;
use crate::error::check_limit;
use crate::failure::RestartFailure;
use crate::listener::Listener;
use crate::pidfile;
use crate::signal::{Action, Signal, SignalMap};
use crate::supervisor::{Readiness, control};

/// Signals passed on to the serving worker unless the signal map uses them.
const FORWARDED: [Signal; 4] = [Signal::Usr1, Signal::Winch, Signal::Tstp, Signal::Alrm];

/// Configures a [`Master`].
#[derive(Debug)]
#[must_use = "call .build() to get a Master"]
pub struct MasterBuilder {
    pub(super) command: Vec<OsString>,
    pub(super) listeners: Vec<Listener>,
    pub(super) readiness: Readiness,
    pub(super) ready_timeout: Duration,
    pub(super) drain_signal: Signal,
    pub(super) drain_timeout: Duration,
    pub(super) signals: SignalMap,
    pub(super) control: Option<PathBuf>,
    pub(super) pidfile: Option<PathBuf>,
    pub(super) reap_orphans: bool,
    pub(super) hand_over: bool,
    pub(super) probation: Duration,
}

#[derive(Debug)]
pub(super) struct Config {
    pub(super) command: Vec<OsString>,
    pub(super) readiness: Readiness,
    pub(super) ready_timeout: Duration,
    pub(super) drain_signal: Signal,
    pub(super) drain_timeout: Duration,
    pub(super) signals: SignalMap,
    pub(super) forward: Vec<Signal>,
    pub(super) reap_orphans: bool,
    /// Workers get a link, and each new worker of a reload a generation channel from
    /// the one it replaces (see `MasterBuilder::hand_over`).
    pub(super) hand_over: bool,
    /// See `MasterBuilder::probation`.
    pub(super) probation: Duration,
    /// Fake workers instead of processes (the transitions' unit tests).
    #[cfg(test)]
    pub(super) fake: Option<std::sync::Arc<crate::supervisor::fake::Spawner>>,
}

impl MasterBuilder {
    /// Adds a listening socket to pass to every worker (in the order added, from
    /// descriptor 3, under its name).
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// At a reload, let the draining worker pass its open HTTP/1 connections to the
    /// new one, as a self-restarting baton server does (see `http::Server::hand_over`):
    /// each worker gets a private link to the master (`BATON_MASTER_LINK_FD`) and each
    /// new worker of a reload the generation channel (`BATON_CHANNEL_FD`), whose other
    /// end the master passes to the old worker on its link just before telling it to
    /// drain. Only for workers that are baton servers: on by default for
    /// [`Master::this_program`], off otherwise (another program would inherit two
    /// descriptors it never uses).
    pub fn hand_over(mut self, on: bool) -> Self {
        self.hand_over = on;
        self
    }

    /// After a reload, how long the old worker stands by before it is told to drain:
    /// the new worker's probation. If the new worker dies within it, the old one serves
    /// on and the reload is reported failed (`baton reload` exits non-zero), instead of
    /// an outage until a respawn. A baton worker with a link (see
    /// [`hand_over`](MasterBuilder::hand_over)) stops accepting meanwhile and keeps its
    /// open connections, which move once the probation ends; any other worker keeps
    /// accepting beside the new one until then (the master cannot ask it to stop).
    /// Default 2 s ([`crate::DEFAULT_PROBATION`]); zero turns it off.
    pub fn probation(mut self, window: Duration) -> Self {
        self.probation = window;
        self
    }

    /// How a worker says it is ready (default: [`Readiness::Notify`]).
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// How long a new worker may take to be ready (default 30 s); past it, it is killed.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The signal that tells a worker to drain and exit (default `SIGTERM`); also the
    /// one a worker gets should the master die.
    pub fn drain_signal(mut self, signal: Signal) -> Self {
        self.drain_signal = signal;
        self
    }

    /// How long a draining worker may take before it is killed (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Which signals reload ([`Action::Restart`]), fully restart
    /// ([`Action::FullRestart`]), stop ([`Action::Shutdown`], [`Action::ShutdownNow`])
    /// or kill ([`Action::Hammer`]); signals mapped to [`Action::User`] are passed on
    /// to the worker. Default: [`SignalMap::default`].
    pub fn signals(mut self, map: SignalMap) -> Self {
        self.signals = map;
        self
    }

    /// Serves the control protocol on a Unix socket at `path` (mode 0600); see
    /// [`control`](super::control) for the protocol.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control = Some(path.into());
        self
    }

    /// Writes the master's PID to `path`, locked while it runs: a second master with
    /// the same pidfile is refused ([`Error::MasterRunning`]); a pidfile left by a
    /// dead master is replaced. Removed at exit.
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pidfile = Some(path.into());
        self
    }

    /// Reaps every orphaned process that is re-parented to the master (it becomes a
    /// child subreaper). On by default when the master is PID 1 (in a container), where
    /// orphans are re-parented to it anyway. It reaps every exited child that is not one
    /// of its workers: a program that is its own master and starts other children
    /// itself should leave this off (or wait for them before they can exit unseen).
    pub fn reap_orphans(mut self, on: bool) -> Self {
        self.reap_orphans = on;
        self
    }

    /// Checks the settings, takes the pidfile and binds the control socket.
    ///
    /// # Errors
    ///
    /// [`Error::Worker`] if the command is empty or not an executable,
    /// [`Error::InvalidDuration`] for a timeout out of range, [`Error::Master`] for no
    /// listeners, [`Error::MasterRunning`] if another master holds the pidfile,
    /// [`Error::Pidfile`] or [`Error::Io`] if the pidfile or control socket cannot be
    /// created.
    pub fn build(self) -> Result<Master, Error> {
        let Some(program) = self.command.first() else {
            return Err(Error::Worker(RestartFailure::Spawn(
                "no command given".into(),
            )));
        };
        crate::supervisor::worker::resolve(program).map_err(Error::Worker)?;
        check_limit("ready timeout", self.ready_timeout)?;
        crate::error::check_delay("probation", self.probation)?;
        check_limit("drain timeout", self.drain_timeout)?;
        if self.listeners.is_empty() {
            return Err(Error::Master(
                "a master needs at least one listener to pass to its workers".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for l in &self.listeners {
            if !names.insert(l.name()) {
                return Err(Error::DuplicateListenerName {
                    name: l.name().to_owned(),
                });
            }
        }
        let forward: Vec<Signal> = FORWARDED
            .into_iter()
            .filter(|s| self.signals.action(*s).is_none())
            .chain(
                self.signals
                    .iter()
                    .filter(|(_, a)| *a == Action::User)
                    .map(|(s, _)| s),
            )
            .collect();
        let mut pidfile = self
            .pidfile
            .as_deref()
            .map(pidfile::Locked::acquire)
            .transpose()?;
        if let Some(p) = pidfile.as_mut() {
            let stop = [Action::Shutdown, Action::ShutdownNow]
                .into_iter()
                .find_map(|a| self.signals.signal_for(a));
            p.write_signals(self.signals.signal_for(Action::Restart), stop);
        }
        let control = self
            .control
            .as_deref()
            .map(|p| {
                control::Bound::bind(p)
                    .map_err(|e| Error::io(format!("control socket {}", p.display()), e))
            })
            .transpose()?;
        // The workers' way to ask for a reload themselves (an app that is its own
        // master, restarted from a handler): a control socket only this user reaches.
        let private = match crate::trust::PrivateDir::create("baton-master") {
            Ok(dir) => match control::Bound::bind(&dir.path().join("control")) {
                Ok(bound) => Some(super::Private { bound, dir }),
                Err(e) => {
                    tracing::warn!(error = %e, "no private control socket for the workers: a worker cannot ask for a reload itself");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "no private control socket for the workers: a worker cannot ask for a reload itself");
                None
            }
        };
        if self.reap_orphans {
            crate::sys::become_subreaper().map_err(|e| Error::io("become a child subreaper", e))?;
        }
        Ok(Master {
            cfg: Config {
                command: self.command,
                readiness: self.readiness,
                ready_timeout: self.ready_timeout,
                drain_signal: self.drain_signal,
                drain_timeout: self.drain_timeout,
                signals: self.signals,
                forward,
                reap_orphans: self.reap_orphans,
                hand_over: self.hand_over,
                probation: self.probation,
                #[cfg(test)]
                fake: None,
            },
            listeners: self.listeners,
            control,
            private,
            _pidfile: pidfile,
            requests: mpsc::unbounded_channel(),
        })
    }
}
