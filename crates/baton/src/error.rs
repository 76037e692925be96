//! The library's error type.

use std::io;
use std::time::Duration;

/// Everything that can go wrong in baton.
///
/// Each variant carries the value that was wrong and, where it helps, what would be
/// right, so that the message printed by a binary is enough to fix the input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What baton was doing, e.g. `"accept on 127.0.0.1:8080"`.
        op: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// A listen address could not be parsed.
    #[error(
        "invalid listen address `{input}`: {reason}; expected HOST:PORT (e.g. 127.0.0.1:8080, [::1]:8080, :8080) or unix:/path/to.sock"
    )]
    InvalidAddress {
        /// The text as given.
        input: String,
        /// What was wrong with it.
        reason: String,
    },

    /// A listen address is already taken by another socket.
    #[error(
        "cannot listen on {addr}: address already in use (another process listens there; stop it or choose another address)"
    )]
    AddressInUse {
        /// The address as given.
        addr: String,
    },

    /// A duration setting is out of range.
    #[error("{what} must be between {min:?} and {max:?}, got {value:?}")]
    InvalidDuration {
        /// Which setting, e.g. `"drain timeout"`.
        what: &'static str,
        /// The value given.
        value: Duration,
        /// The smallest accepted value.
        min: Duration,
        /// The largest accepted value.
        max: Duration,
    },

    /// A duration given as text (a command-line value) is malformed or out of range.
    #[error(
        "`{input}` {why}; expected a duration from {min} to 24h with a unit, e.g. 500ms, 30s, 2m"
    )]
    BadDuration {
        /// The text as given.
        input: String,
        /// What is wrong: "is not a duration", "has no unit", "is out of range".
        why: &'static str,
        /// The smallest accepted value, as text ("0s" or "1ms").
        min: &'static str,
    },

    /// A signal name, preset or signal map that cannot be used (see [`SignalError`](crate::SignalError)).
    #[error(transparent)]
    Signal(#[from] crate::signal::SignalError),

    /// A signal is mapped to [`Action::User`](crate::Action::User) but no hook was
    /// registered for it.
    #[error(
        "signal {signal} is mapped to a user hook but none was registered; use `ShutdownBuilder::on_signal`"
    )]
    NoHookForSignal {
        /// The signal.
        signal: crate::signal::Signal,
    },

    /// A listener name that cannot be passed on by the socket-activation protocol.
    #[error(
        "invalid listener name `{name}`: use 1 to 255 printable ASCII characters without `:` or spaces (e.g. `http`, `admin`)"
    )]
    InvalidListenerName {
        /// The name as given.
        name: String,
    },

    /// Two listeners served by one coordinator have the same name; names identify
    /// listeners when they are handed to the next generation.
    #[error(
        "two listeners are named `{name}`: names identify listeners across restarts; give each its own (`Listener::bind(name, addr)`)"
    )]
    DuplicateListenerName {
        /// The name.
        name: String,
    },

    /// The sockets passed to this process (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`)
    /// are malformed or not usable listening sockets.
    #[error("inherited sockets: {reason}")]
    Inherited {
        /// What was wrong.
        reason: String,
    },

    /// An inherited socket does not match the listener asked for (a different address,
    /// or the address asked for was passed under another name). baton never binds a
    /// fresh socket in its place: that would fail or, worse, split the traffic.
    #[error("inherited socket mismatch for listener `{name}` ({asked}): {reason}")]
    InheritedMismatch {
        /// The listener name asked for.
        name: String,
        /// The address asked for.
        asked: String,
        /// What the inherited socket is instead.
        reason: String,
    },

    /// A restart did not happen; the running generation serves on.
    #[error("restart failed: {0}")]
    Restart(#[from] crate::failure::RestartFailure),

    /// A supervised worker could not be started or did not become ready.
    #[error("worker: {0}")]
    Worker(crate::failure::RestartFailure),

    /// A TLS certificate or key file is unusable.
    #[error("TLS: {}: {reason}", path.display())]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A pidfile could not be written.
    #[error("pidfile {path}: {source}")]
    Pidfile {
        /// The pidfile's path.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },

    /// Another master holds the pidfile (two masters of one name cannot run).
    #[error("{} is locked by a running master{}; stop it first, or choose another name or pidfile", path.display(), pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    MasterRunning {
        /// The pidfile's path.
        path: std::path::PathBuf,
        /// The PID it names.
        pid: Option<u32>,
    },

    /// A master setting is unusable (an empty command, a signal both mapped and
    /// forwarded, ...).
    #[error("{0}")]
    Master(String),

    /// A count setting is out of range (`max_connections(0)`, say).
    #[error("{what} must be at least {min}, got {value}")]
    InvalidCount {
        /// Which setting, e.g. `"max_connections"`.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The smallest accepted value.
        min: usize,
    },

    /// A shutdown hook was registered with an empty name.
    #[error("a shutdown hook needs a non-empty name (it appears in logs and in the report)")]
    EmptyHookName,

    /// [`Shutdown::run`](crate::Shutdown::run) was called twice on the same coordinator.
    #[error("this shutdown coordinator is already running; call `run` once per process")]
    AlreadyRunning,
}

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}

/// The shortest deadline or time limit baton accepts.
pub(crate) const MIN_LIMIT: Duration = Duration::from_millis(1);
/// The longest deadline or time limit baton accepts: one day. Longer values are almost
/// certainly a unit mistake (milliseconds given as seconds).
pub(crate) const MAX_LIMIT: Duration = Duration::from_secs(24 * 60 * 60);

/// Checks that `value` is a sensible deadline or time limit.
pub(crate) fn check_limit(what: &'static str, value: Duration) -> Result<Duration, Error> {
    if (MIN_LIMIT..=MAX_LIMIT).contains(&value) {
        Ok(value)
    } else {
        Err(Error::InvalidDuration {
            what,
            value,
            min: MIN_LIMIT,
            max: MAX_LIMIT,
        })
    }
}

/// Parses a duration given on a command line (`500ms`, `30s`, `2m`, `1h 30m`): at
/// least `min` (pass [`Duration::ZERO`] for a delay that may be none, or 1 ms for a
/// deadline), at most 24 h, and always with a unit. Every bad value gets one message
/// shape: the value, what is wrong, what would be right, an example. The demo and
/// `baton run` use it for all their duration options.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(baton::cli::parse_duration("1m 30s", Duration::ZERO)?, Duration::from_secs(90));
/// let err = baton::cli::parse_duration("5", Duration::ZERO).unwrap_err().to_string();
/// assert_eq!(err, "`5` has no unit; expected a duration from 0s to 24h with a unit, e.g. 500ms, 30s, 2m");
/// # Ok::<(), baton::Error>(())
/// ```
///
/// # Errors
///
/// [`Error::BadDuration`].
pub fn parse_duration(s: &str, min: Duration) -> Result<Duration, Error> {
    let t = s.trim();
    let bad = |why| Error::BadDuration {
        input: s.to_owned(),
        why,
        min: if min.is_zero() { "0s" } else { "1ms" },
    };
    let d = humantime::parse_duration(t).map_err(|_| {
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            bad("has no unit")
        } else {
            bad("is not a duration")
        }
    })?;
    if d < min || d > MAX_LIMIT {
        return Err(bad("is out of range"));
    }
    Ok(d)
}

/// Checks a delay, which may be zero (meaning "none").
pub(crate) fn check_delay(what: &'static str, value: Duration) -> Result<Duration, Error> {
    if value <= MAX_LIMIT {
        Ok(value)
    } else {
        Err(Error::InvalidDuration {
            what,
            value,
            min: Duration::ZERO,
            max: MAX_LIMIT,
        })
    }
}
