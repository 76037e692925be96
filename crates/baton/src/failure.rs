//! The outcome of a restart that was asked for: the new generation that serves
//! ([`Restarted`]), or why there is none ([`RestartFailure`], and its kind, the one list
//! the restart counters count by).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Why a restart did not happen. The running generation serves on in every case.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RestartFailure {
    /// The executable cannot be started (missing, not executable, ...).
    Executable {
        /// The path that was tried.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Preparing or starting the process failed.
    Spawn(String),
    /// The new generation exited before it said it was ready.
    Exited {
        /// Its PID.
        pid: u32,
        /// How it ended, e.g. `exit status: 1`.
        status: String,
    },
    /// The new generation did not say it was ready in time; it was killed.
    NotReady {
        /// Its PID.
        pid: u32,
        /// The readiness deadline.
        deadline: Duration,
    },
    /// A master's worker, made ready by the notify protocol, sent no `READY=1` in time;
    /// it was killed. (Most servers do not speak the protocol: they need a readiness by
    /// delay.)
    NoReadyMessage {
        /// Its PID.
        pid: u32,
        /// The readiness deadline.
        deadline: Duration,
    },
    /// A shutdown was asked for during the restart; the new generation was killed.
    Aborted {
        /// What asked for the shutdown.
        reason: String,
    },
    /// This generation already handed over and is draining; ask the new one.
    Draining {
        /// The PID of the generation that serves now.
        successor: u32,
    },
    /// A full restart cannot run beside a graceful restart or a shutdown.
    Busy(&'static str),
    /// This process is a master's worker: the master carried out the restart, and it
    /// failed (or could not be asked).
    Master(String),
    /// The new worker said it was ready but does not hold the listening sockets it was
    /// given (it closed them): it would serve nothing; it is stopped, the old one serves
    /// on.
    ClosedListeners {
        /// Its PID.
        pid: u32,
        /// The listeners it does not hold, by name.
        listeners: String,
    },
    /// The new generation was ready, then died within its probation: the previous one
    /// resumed and serves on.
    DiedInProbation {
        /// Its PID.
        pid: u32,
        /// How long after its ready it died.
        after: Duration,
    },
}

impl RestartFailure {
    /// A short name of the failure's kind, for counters and metrics labels.
    pub fn kind(&self) -> &'static str {
        self.failure_kind().name()
    }

    pub(crate) fn failure_kind(&self) -> FailureKind {
        match self {
            RestartFailure::Executable { .. } => FailureKind::Executable,
            RestartFailure::Spawn(_) => FailureKind::Spawn,
            RestartFailure::Exited { .. } => FailureKind::Exited,
            RestartFailure::NotReady { .. } | RestartFailure::NoReadyMessage { .. } => {
                FailureKind::NotReady
            }
            RestartFailure::Aborted { .. } => FailureKind::Aborted,
            RestartFailure::Busy(_) => FailureKind::Busy,
            RestartFailure::Draining { .. } => FailureKind::Draining,
            RestartFailure::Master(_) => FailureKind::Master,
            RestartFailure::DiedInProbation { .. } => FailureKind::Died,
            RestartFailure::ClosedListeners { .. } => FailureKind::ClosedListeners,
        }
    }
}

/// Declares [`FailureKind`] from one list: each variant with its name, and `ALL` in
/// the list's order (the order of the counters in the generation channel's totals).
macro_rules! failure_kinds {
    ($($variant:ident => $name:literal),* $(,)?) => {
        /// The kind of a [`RestartFailure`]: what the restart counters count by, and what
        /// the generation channel carries them as (by position in [`FailureKind::ALL`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum FailureKind {
            $($variant),*
        }

        impl FailureKind {
            /// Every kind, in the order of the channel's totals: a kind is added at the
            /// end (an older generation reads the ones it knows).
            pub(crate) const ALL: &'static [FailureKind] = &[$(FailureKind::$variant),*];

            /// The kind's name, for counters and metrics labels.
            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(FailureKind::$variant => $name),*
                }
            }
        }
    };
}

failure_kinds! {
    Executable => "executable",
    Spawn => "spawn",
    Exited => "exited",
    NotReady => "not-ready",
    Aborted => "aborted",
    Busy => "busy",
    Draining => "draining",
    Master => "master",
    Died => "died",
    ClosedListeners => "closed-listeners",
}

impl fmt::Display for RestartFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartFailure::Executable { path, reason } => {
                write!(f, "cannot start {}: {reason}", path.display())
            }
            RestartFailure::Spawn(e) => write!(f, "cannot start the new generation: {e}"),
            RestartFailure::Exited { pid, status } => write!(
                f,
                "the new generation (pid {pid}) exited before it was ready ({status}); its own output says why"
            ),
            RestartFailure::NotReady { pid, deadline } => write!(
                f,
                "the new generation (pid {pid}) did not report ready within {deadline:?}; it is stopped"
            ),
            RestartFailure::NoReadyMessage { pid, deadline } => write!(
                f,
                "the worker (pid {pid}) did not say it was ready within {deadline:?}: no READY=1 came on NOTIFY_SOCKET; it is stopped. A server that does not speak systemd's notify protocol needs `--ready delay=DURATION` (ready once it ran that long), or must send READY=1 itself"
            ),
            RestartFailure::Aborted { reason } => {
                write!(
                    f,
                    "aborted by a shutdown ({reason}); the new generation is stopped"
                )
            }
            RestartFailure::Draining { successor } => write!(
                f,
                "this generation has handed over to pid {successor} and is draining; restart that one"
            ),
            RestartFailure::Busy(what) => write!(f, "{what}"),
            RestartFailure::Master(why) => write!(f, "the master's reload failed: {why}"),
            RestartFailure::ClosedListeners { pid, listeners } => write!(
                f,
                "the new worker (pid {pid}) said it was ready but does not hold the listening socket(s) it was given ({listeners}): it closed them and would serve nothing; it is stopped"
            ),
            RestartFailure::DiedInProbation { pid, after } => write!(
                f,
                "the new generation (pid {pid}) died {:.1} s after it was ready, within its probation; the previous generation resumed",
                after.as_secs_f64()
            ),
        }
    }
}

impl std::error::Error for RestartFailure {}

/// A restart that succeeded: the new generation is ready and serving.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restarted {
    /// The new generation's PID.
    pub pid: u32,
    /// The new generation's number (the first process is 1).
    pub generation: u32,
    /// From the trigger until the process was started.
    pub spawn: Duration,
    /// From the start of the process until it said it was ready.
    pub ready: Duration,
    /// Further restart requests received during this restart, folded into it (and
    /// into one follow-up restart of the new generation).
    pub coalesced: u32,
}
