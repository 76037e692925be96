//! Which signal means what.
//!
//! A [`SignalMap`] says what the coordinator does when a signal arrives. The default
//! follows the convention of nginx, endless and GoFrame for shutdown:
//!
//! | signal | action |
//! |---|---|
//! | `SIGTERM`, `SIGINT` | [`Action::Shutdown`]: graceful shutdown; the same signal again during the drain forces it ("hammer") |
//! | `SIGQUIT` | [`Action::ShutdownNow`]: graceful shutdown without the drain delay |
//!
//! Signals that are not mapped keep their default disposition. Restart actions (`SIGHUP`,
//! `SIGUSR2`) arrive with zero-downtime restart; see the README's status table.

use std::fmt;
use std::str::FromStr;

use crate::Error;

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
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let trimmed = s.trim();
        if let Ok(n) = trimmed.parse::<i32>() {
            return Signal::ALL
                .into_iter()
                .find(|sig| sig.as_raw() == n)
                .ok_or_else(|| Error::UnknownSignal { input: s.into() });
        }
        let upper = trimmed.to_ascii_uppercase();
        let name = upper.strip_prefix("SIG").unwrap_or(&upper);
        Signal::ALL
            .into_iter()
            .find(|sig| sig.short_name() == name)
            .ok_or_else(|| Error::UnknownSignal { input: s.into() })
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
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Shutdown => "shutdown",
            Action::ShutdownNow => "shutdown-now",
            Action::Hammer => "hammer",
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
    /// [`Error::SignalMappedTwice`] if a signal is listed twice.
    pub fn shutdown_on(signals: impl IntoIterator<Item = Signal>) -> Result<Self, Error> {
        signals
            .into_iter()
            .try_fold(SignalMap::empty(), |map, sig| map.on(sig, Action::Shutdown))
    }

    /// Adds `signal → action`.
    ///
    /// # Errors
    ///
    /// [`Error::SignalMappedTwice`] if `signal` is already mapped.
    pub fn on(mut self, signal: Signal, action: Action) -> Result<Self, Error> {
        if let Some(first) = self.action(signal) {
            return Err(Error::SignalMappedTwice {
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

impl Default for SignalMap {
    /// `SIGTERM`, `SIGINT` → [`Action::Shutdown`]; `SIGQUIT` → [`Action::ShutdownNow`].
    fn default() -> Self {
        SignalMap {
            entries: vec![
                (Signal::Term, Action::Shutdown),
                (Signal::Int, Action::Shutdown),
                (Signal::Quit, Action::ShutdownNow),
            ],
        }
    }
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
        assert!("9".parse::<Signal>().is_err(), "SIGKILL cannot be caught");
        assert!("".parse::<Signal>().is_err());
    }

    #[test]
    fn default_map() {
        let map = SignalMap::default();
        assert_eq!(map.action(Signal::Term), Some(Action::Shutdown));
        assert_eq!(map.action(Signal::Int), Some(Action::Shutdown));
        assert_eq!(map.action(Signal::Quit), Some(Action::ShutdownNow));
        assert_eq!(map.action(Signal::Hup), None);
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
