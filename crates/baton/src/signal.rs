//! Which signal means what.
//!
//! A [`SignalMap`] says what the coordinator does when a signal arrives. The default:
//!
//! | signal | action |
//! |---|---|
//! | `SIGTERM`, `SIGINT` | [`Action::Shutdown`]: graceful shutdown; a shutdown signal again during the drain (any mapped one) forces it ("hammer") |
//! | `SIGQUIT` | [`Action::ShutdownNow`]: graceful shutdown without the drain delay |
//! | `SIGHUP`, `SIGUSR2` | [`Action::Restart`]: graceful restart, from the executable as it is on disk now (so also the binary upgrade) |
//!
//! Signals that are not mapped keep their default disposition. [`Preset`]s reproduce the
//! conventions of Faygo, endless, ghelper, GoFrame and nginx.

use std::fmt;
use std::str::FromStr;

/// A Unix signal that baton can act on.
///
/// Parses from `HUP`, `SIGHUP`, `hup` or `1`; displays as `SIGHUP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// `SIGHUP` (1).
    Hup,
    /// `SIGINT` (2), Ctrl-C.
    Int,
    /// `SIGQUIT` (3).
    Quit,
    /// `SIGUSR1` (10).
    Usr1,
    /// `SIGUSR2` (12).
    Usr2,
    /// `SIGALRM` (14).
    Alrm,
    /// `SIGTERM` (15), what `kill` sends by default.
    Term,
    /// `SIGTSTP` (20), Ctrl-Z.
    Tstp,
    /// `SIGWINCH` (28).
    Winch,
}

impl Signal {
    /// Every signal baton knows, in number order.
    pub const ALL: [Signal; 9] = [
        Signal::Hup,
        Signal::Int,
        Signal::Quit,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Alrm,
        Signal::Term,
        Signal::Tstp,
        Signal::Winch,
    ];

    /// The signal's number on this platform.
    pub fn as_raw(self) -> i32 {
        match self {
            Signal::Hup => libc::SIGHUP,
            Signal::Int => libc::SIGINT,
            Signal::Quit => libc::SIGQUIT,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
            Signal::Alrm => libc::SIGALRM,
            Signal::Term => libc::SIGTERM,
            Signal::Tstp => libc::SIGTSTP,
            Signal::Winch => libc::SIGWINCH,
        }
    }

    /// The name without the `SIG` prefix, e.g. `"HUP"`.
    pub fn short_name(self) -> &'static str {
        match self {
            Signal::Hup => "HUP",
            Signal::Int => "INT",
            Signal::Quit => "QUIT",
            Signal::Usr1 => "USR1",
            Signal::Usr2 => "USR2",
            Signal::Alrm => "ALRM",
            Signal::Term => "TERM",
            Signal::Tstp => "TSTP",
            Signal::Winch => "WINCH",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIG{}", self.short_name())
    }
}

impl FromStr for Signal {
    type Err = SignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        let uncatchable = || SignalError::Uncatchable { input: s.into() };
        if let Ok(n) = trimmed.parse::<i32>() {
            if n == libc::SIGKILL || n == libc::SIGSTOP {
                return Err(uncatchable());
            }
            return Signal::ALL
                .into_iter()
                .find(|sig| sig.as_raw() == n)
                .ok_or_else(|| SignalError::Unknown { input: s.into() });
        }
        let upper = trimmed.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        if name == "KILL" || name == "STOP" {
            return Err(uncatchable());
        }
        Signal::ALL
            .into_iter()
            .find(|sig| sig.short_name() == name)
            .ok_or_else(|| SignalError::Unknown { input: s.into() })
    }
}

/// What the coordinator does when a mapped signal arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Graceful shutdown: the drain delay (if any), then the drain, then the hooks. The
    /// same action again while shutting down forces the close ("hammer").
    Shutdown,
    /// Graceful shutdown that skips the drain delay (the default for `SIGQUIT`). While a
    /// drain delay is running, it ends the delay at once.
    ShutdownNow,
    /// Force the close at once: cut every connection still open and go on to the hooks.
    /// Before a shutdown has started, it starts one and forces it.
    Hammer,
    /// Graceful restart: start the next generation from the executable as it is on
    /// disk now, hand it the listening sockets, wait until it is ready, then drain this
    /// one. See [`Shutdown::restart`](crate::Shutdown::restart).
    Restart,
    /// Full restart: drain completely, run the shutdown hooks, then execute the program
    /// again in this process (same PID) with the listening sockets kept open. See
    /// [`Shutdown::full_restart`](crate::Shutdown::full_restart).
    FullRestart,
    /// Run the user's function registered for this signal
    /// ([`ShutdownBuilder::on_signal`](crate::ShutdownBuilder::on_signal)), e.g. reopen
    /// log files; serving is not disturbed.
    User,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Shutdown => "shutdown",
            Action::ShutdownNow => "shutdown-now",
            Action::Hammer => "hammer",
            Action::Restart => "restart",
            Action::FullRestart => "full-restart",
            Action::User => "user hook",
        })
    }
}

/// Which signal triggers which [`Action`].
///
/// ```
/// use baton::{Action, Signal, SignalMap};
///
/// // Shut down on SIGTERM only, and force the close on SIGUSR2 (endless's "hammer").
/// let map = SignalMap::empty()
///     .on(Signal::Term, Action::Shutdown)?
///     .on(Signal::Usr2, Action::Hammer)?;
/// assert_eq!(map.action(Signal::Usr2), Some(Action::Hammer));
/// assert_eq!(map.action(Signal::Int), None);
///
/// // Mapping a signal twice is an error that names both actions.
/// assert!(SignalMap::default().on(Signal::Term, Action::Hammer).is_err());
/// # Ok::<(), baton::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalMap {
    entries: Vec<(Signal, Action)>,
}

impl SignalMap {
    /// A map that reacts to no signal at all (shutdown only from code or a trigger future).
    pub fn empty() -> Self {
        SignalMap {
            entries: Vec::new(),
        }
    }

    /// Graceful shutdown on each of `signals`, nothing else.
    ///
    /// # Errors
    ///
    /// [`SignalError::MappedTwice`] if a signal is listed twice.
    pub fn shutdown_on(signals: impl IntoIterator<Item = Signal>) -> Result<Self, SignalError> {
        signals
            .into_iter()
            .try_fold(SignalMap::empty(), |map, sig| map.on(sig, Action::Shutdown))
    }

    /// Adds `signal → action`.
    ///
    /// # Errors
    ///
    /// [`SignalError::MappedTwice`] if `signal` is already mapped.
    pub fn on(mut self, signal: Signal, action: Action) -> Result<Self, SignalError> {
        if let Some(first) = self.action(signal) {
            return Err(SignalError::MappedTwice {
                signal,
                first,
                second: action,
            });
        }
        self.entries.push((signal, action));
        Ok(self)
    }

    /// The action mapped to `signal`, if any.
    pub fn action(&self, signal: Signal) -> Option<Action> {
        self.entries
            .iter()
            .find(|(sig, _)| *sig == signal)
            .map(|(_, action)| *action)
    }

    /// The mapped signals with their actions, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (Signal, Action)> + '_ {
        self.entries.iter().copied()
    }
}

impl SignalMap {
    /// The signal map of a [`Preset`].
    pub fn preset(preset: Preset) -> Self {
        use Action::*;
        use Signal::*;
        let entries = match preset {
            Preset::Baton => vec![
                (Term, Shutdown),
                (Int, Shutdown),
                (Quit, ShutdownNow),
                (Hup, Restart),
                (Usr2, Restart),
            ],
            Preset::Faygo => vec![(Term, Shutdown), (Int, Shutdown), (Usr2, Restart)],
            Preset::Endless => vec![
                (Term, Shutdown),
                (Int, Shutdown),
                (Hup, Restart),
                (Usr2, Hammer),
            ],
            Preset::Ghelper => vec![
                (Term, Shutdown),
                (Int, Shutdown),
                (Usr1, Restart),
                (Usr2, Restart),
            ],
            Preset::GoFrame => vec![
                (Term, Shutdown),
                (Int, Shutdown),
                (Quit, Shutdown),
                (Hup, Shutdown),
                (Usr1, Restart),
                (Usr2, FullRestart),
            ],
            Preset::Nginx => vec![
                (Term, Hammer),
                (Int, Hammer),
                (Quit, ShutdownNow),
                (Hup, Restart),
                (Usr2, Restart),
            ],
        };
        SignalMap { entries }
    }

    /// The first signal mapped to `action`, if any.
    pub fn signal_for(&self, action: Action) -> Option<Signal> {
        self.entries
            .iter()
            .find(|(_, a)| *a == action)
            .map(|(sig, _)| *sig)
    }
}

impl Default for SignalMap {
    /// [`Preset::Baton`]: `SIGTERM`, `SIGINT` → [`Action::Shutdown`]; `SIGQUIT` →
    /// [`Action::ShutdownNow`]; `SIGHUP`, `SIGUSR2` → [`Action::Restart`].
    fn default() -> Self {
        SignalMap::preset(Preset::Baton)
    }
}

/// The signal conventions of the frameworks baton's users come from.
///
/// | preset | shutdown | restart | other |
/// |---|---|---|---|
/// | `baton` (the default) | TERM, INT; QUIT without drain delay | HUP, USR2 | |
/// | `faygo` | TERM, INT | USR2 | |
/// | `endless` | TERM, INT | HUP | USR2 hammer; USR1 and TSTP are free for [`ShutdownBuilder::on_signal`](crate::ShutdownBuilder::on_signal) hooks |
/// | `ghelper` | TERM, INT | USR1, USR2 | |
/// | `goframe` | TERM, INT, QUIT, HUP | USR1 | USR2 full restart |
/// | `nginx` | QUIT (graceful); TERM, INT hammer (fast) | HUP, USR2 | USR1 is free for a log-reopening hook |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Preset {
    /// baton's default.
    Baton,
    /// Faygo.
    Faygo,
    /// endless (Go `http.Server.Shutdown` with `fvbock/endless`).
    Endless,
    /// ghelper/graceful.
    Ghelper,
    /// GoFrame.
    GoFrame,
    /// nginx.
    Nginx,
}

impl FromStr for Preset {
    type Err = SignalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "baton" | "default" => Preset::Baton,
            "faygo" => Preset::Faygo,
            "endless" => Preset::Endless,
            "ghelper" => Preset::Ghelper,
            "goframe" | "gf" => Preset::GoFrame,
            "nginx" => Preset::Nginx,
            _ => return Err(SignalError::UnknownPreset { input: s.into() }),
        })
    }
}

/// A signal name, preset or signal map that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// A signal name or number was not recognised.
    #[error(
        "unknown signal `{input}`: expected one of HUP, INT, QUIT, TERM, USR1, USR2, TSTP, WINCH, ALRM (the SIG prefix and lower case are accepted) or its number"
    )]
    Unknown {
        /// The text as given.
        input: String,
    },

    /// A signal that exists but cannot be acted on (`SIGKILL`, `SIGSTOP`: no process can
    /// catch them).
    #[error(
        "signal `{input}` cannot be caught by any process (the kernel acts on it directly); choose one of HUP, INT, QUIT, TERM, USR1, USR2, TSTP, WINCH, ALRM"
    )]
    Uncatchable {
        /// The text as given.
        input: String,
    },

    /// A signal preset name was not recognised.
    #[error(
        "unknown signal preset `{input}`: expected one of baton, faygo, endless, ghelper, goframe, nginx"
    )]
    UnknownPreset {
        /// The text as given.
        input: String,
    },

    /// A signal was mapped to two actions.
    #[error(
        "signal {signal} is mapped twice: to `{first}` and to `{second}`; map each signal once"
    )]
    MappedTwice {
        /// The signal.
        signal: Signal,
        /// The action it had.
        first: Action,
        /// The action it was given again.
        second: Action,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_prefixes_case_and_numbers() {
        assert_eq!("HUP".parse::<Signal>().unwrap(), Signal::Hup);
        assert_eq!("sigterm".parse::<Signal>().unwrap(), Signal::Term);
        assert_eq!(" SIGUSR2 ".parse::<Signal>().unwrap(), Signal::Usr2);
        assert_eq!("15".parse::<Signal>().unwrap(), Signal::Term);
        for sig in Signal::ALL {
            assert_eq!(sig.to_string().parse::<Signal>().unwrap(), sig);
        }
    }

    #[test]
    fn unknown_signal_names_the_input_and_the_choices() {
        let err = "SIGFOO".parse::<Signal>().unwrap_err().to_string();
        assert!(err.contains("`SIGFOO`"), "{err}");
        assert!(err.contains("HUP, INT"), "{err}");
        let err = "9".parse::<Signal>().unwrap_err();
        assert!(matches!(err, SignalError::Uncatchable { .. }), "{err}");
        let err = "KILL".parse::<Signal>().unwrap_err().to_string();
        assert!(err.contains("cannot be caught"), "{err}");
        assert!("".parse::<Signal>().is_err());
    }

    #[test]
    fn default_map() {
        let map = SignalMap::default();
        assert_eq!(map.action(Signal::Term), Some(Action::Shutdown));
        assert_eq!(map.action(Signal::Int), Some(Action::Shutdown));
        assert_eq!(map.action(Signal::Quit), Some(Action::ShutdownNow));
        assert_eq!(map.action(Signal::Hup), Some(Action::Restart));
        assert_eq!(map.action(Signal::Usr2), Some(Action::Restart));
        assert_eq!(map.action(Signal::Usr1), None);
    }

    #[test]
    fn presets_follow_each_convention() {
        let gf = SignalMap::preset("goframe".parse().unwrap());
        assert_eq!(gf.action(Signal::Usr1), Some(Action::Restart));
        assert_eq!(gf.action(Signal::Usr2), Some(Action::FullRestart));
        assert_eq!(gf.action(Signal::Hup), Some(Action::Shutdown));
        let endless = SignalMap::preset(Preset::Endless);
        assert_eq!(endless.action(Signal::Usr2), Some(Action::Hammer));
        assert_eq!(endless.signal_for(Action::Restart), Some(Signal::Hup));
        let nginx = SignalMap::preset(Preset::Nginx);
        assert_eq!(nginx.action(Signal::Quit), Some(Action::ShutdownNow));
        assert_eq!(nginx.action(Signal::Term), Some(Action::Hammer));
        assert_eq!(
            SignalMap::preset(Preset::Faygo).action(Signal::Usr2),
            Some(Action::Restart)
        );
        assert!("apache".parse::<Preset>().is_err());
    }

    #[test]
    fn mapping_twice_is_an_error_naming_both_actions() {
        let err = SignalMap::shutdown_on([Signal::Term, Signal::Term]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "signal SIGTERM is mapped twice: to `shutdown` and to `shutdown`; map each signal once"
        );
    }
}
