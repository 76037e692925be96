//! Who asked for what, in one vocabulary for the coordinator ([`Shutdown`]) and the
//! master ([`Master`]): the commands that signals, code and the control socket give,
//! the one mapping from a signal to a command, the signal intake, and the rule that
//! folds restart requests into one follow-up.
//!
//! Knows nothing of HTTP, connections or workers: what a command *does* is up to the
//! one that receives it.
//!
//! [`Shutdown`]: crate::Shutdown
//! [`Master`]: crate::supervisor::Master

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::signal::{Action, Signal, SignalMap};

/// The drain deadline when none is configured.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a new generation may take to report ready when none is configured.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the previous generation stands by after a restart when not configured (see
/// [`ShutdownBuilder::probation`](crate::shutdown::ShutdownBuilder::probation)).
pub const DEFAULT_PROBATION: Duration = Duration::from_secs(2);

/// What a trigger asks for. `R` is where the answer goes, if someone waits for one.
#[derive(Debug)]
pub(crate) enum Command<R> {
    /// A graceful shutdown (a stop, for the master).
    Shutdown(Stop<R>),
    /// Force the close now: cut what is still open (kill the workers).
    Hammer { reason: String },
    /// A graceful restart (a reload, for the master).
    Restart { reason: String, reply: Option<R> },
    /// A full restart: drain completely, then start again.
    FullRestart { reason: String, reply: Option<R> },
    /// A signal mapped to a user hook, or left free: run the hook, or pass it on to the
    /// worker.
    Pass { signal: Signal },
    /// Report how things stand (the master's control socket).
    Status { reply: R },
}

/// A graceful shutdown as asked for.
#[derive(Debug)]
pub(crate) struct Stop<R> {
    /// What asked, for the log: a signal's name, or the caller.
    pub(crate) reason: String,
    /// A drain deadline shorter than the configured one (Faygo's `Shutdown(timeout)`).
    pub(crate) deadline: Option<Duration>,
    /// Start the drain at once, without the drain delay.
    pub(crate) skip_delay: bool,
    /// The signal it came by, if it did (see [`Escalation`]).
    pub(crate) signal: Option<Signal>,
    pub(crate) reply: Option<R>,
}

impl<R> Command<R> {
    /// What `signal` asks for under `map`: the one place a signal becomes a command.
    /// A signal that `map` does not map, or maps to [`Action::User`], is
    /// [`Command::Pass`].
    pub(crate) fn from_signal(map: &SignalMap, signal: Signal) -> Command<R> {
        let reason = signal.to_string();
        let stop = |skip_delay| {
            Command::Shutdown(Stop {
                reason: reason.clone(),
                deadline: None,
                skip_delay,
                signal: Some(signal),
                reply: None,
            })
        };
        match map.action(signal) {
            Some(Action::Shutdown) => stop(false),
            Some(Action::ShutdownNow) => stop(true),
            Some(Action::Hammer) => Command::Hammer { reason },
            Some(Action::Restart) => Command::Restart {
                reason,
                reply: None,
            },
            Some(Action::FullRestart) => Command::FullRestart {
                reason,
                reply: None,
            },
            Some(Action::User) | None => Command::Pass { signal },
        }
    }

    /// A graceful shutdown asked for by code or a control client.
    pub(crate) fn stop(reason: impl Into<String>, deadline: Option<Duration>) -> Command<R> {
        Command::Shutdown(Stop {
            reason: reason.into(),
            deadline,
            skip_delay: false,
            signal: None,
            reply: None,
        })
    }
}

/// Whether a shutdown asked for again forces the close (the "hammer"). The rule:
/// escalation belongs to whoever owns the deadline.
///
/// - `SIGTERM` is how init systems and orchestrators stop a service, and they own the
///   deadline (systemd's `SIGKILL` after `TimeoutStopSec`, Kubernetes' grace period).
///   They may send it more than once: systemd signals every process of a unit at a
///   stop (a generation still draining after a hand-over gets one too), again when the
///   main process exited first (`FINAL_SIGTERM`), and a master relays its own drain
///   signal beside systemd's. A repeated `SIGTERM` therefore never forces: the drain
///   goes on to its deadline.
/// - `SIGINT` is a person pressing Ctrl-C. Pressed again after any shutdown signal, it
///   means "now": it forces. (A generation draining after a hand-over got no signal
///   yet: its first Ctrl-C is the first press.)
/// - A worker under a master never escalates: the master owns the deadline and kills
///   what outlives it.
/// - Calls from code and control clients never escalate; a signal mapped to
///   [`Action::Hammer`] always forces, as [`Command::Hammer`] does.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Escalation {
    under_master: bool,
    /// Shutdown signals seen so far.
    signals: u32,
}

impl Escalation {
    pub(crate) fn new(under_master: bool) -> Escalation {
        Escalation {
            under_master,
            signals: 0,
        }
    }

    /// Counts `stop` and says whether it forces the close.
    pub(crate) fn hammers<R>(&mut self, stop: &Stop<R>) -> bool {
        let Some(signal) = stop.signal else {
            return false;
        };
        let earlier = self.signals;
        self.signals += 1;
        !self.under_master && signal == Signal::Int && earlier >= 1
    }
}

/// The tasks that turn signals into messages on a channel. Dropping it stops them (the
/// signals' handlers stay installed: tokio never removes one, so from then on such a
/// signal is ignored rather than fatal).
#[derive(Debug, Default)]
pub(crate) struct SignalIntake {
    tasks: Vec<JoinHandle<()>>,
}

impl SignalIntake {
    /// Installs a handler for each of `signals` and sends `message(signal)` to `tx`
    /// each time one arrives.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] naming the signal whose handler could not be installed; none is
    /// left running then.
    pub(crate) fn install<T, F>(
        signals: impl IntoIterator<Item = Signal>,
        tx: &mpsc::UnboundedSender<T>,
        message: F,
    ) -> Result<SignalIntake, Error>
    where
        T: Send + 'static,
        F: Fn(Signal) -> T + Clone + Send + 'static,
    {
        let mut intake = SignalIntake::default();
        for sig in signals {
            let mut stream = signal(SignalKind::from_raw(sig.as_raw()))
                .map_err(|e| Error::io(format!("install a handler for {sig}"), e))?;
            let (tx, message) = (tx.clone(), message.clone());
            intake.tasks.push(tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(message(sig)).is_err() {
                        break;
                    }
                }
            }));
        }
        Ok(intake)
    }
}

impl SignalIntake {
    /// Also sends `message` each time the signal numbered `raw` arrives (a signal
    /// outside [`Signal`], such as the one generations force each other with).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if its handler cannot be installed.
    pub(crate) fn add_raw<T, F>(
        &mut self,
        raw: i32,
        tx: &mpsc::UnboundedSender<T>,
        message: F,
    ) -> Result<(), Error>
    where
        T: Send + 'static,
        F: Fn() -> T + Send + 'static,
    {
        let mut stream = signal(SignalKind::from_raw(raw))
            .map_err(|e| Error::io(format!("install a handler for signal {raw}"), e))?;
        let tx = tx.clone();
        self.tasks.push(tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(message()).is_err() {
                    break;
                }
            }
        }));
        Ok(())
    }
}

impl Drop for SignalIntake {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One restart at a time. Requests that arrive while one is in progress are folded
/// into one follow-up restart after it: never lost, never a second restart beside the
/// first, never a storm. The coordinator asks its successor for the follow-up; the
/// master starts it itself.
#[derive(Debug)]
pub(crate) struct FollowUp<R> {
    asked: u32,
    replies: Vec<R>,
}

impl<R> Default for FollowUp<R> {
    fn default() -> Self {
        FollowUp {
            asked: 0,
            replies: Vec::new(),
        }
    }
}

impl<R> FollowUp<R> {
    /// Folds one more request in; returns how many there are now.
    pub(crate) fn join(&mut self, reply: Option<R>) -> u32 {
        self.asked += 1;
        self.replies.extend(reply);
        self.asked
    }

    /// Whether a follow-up restart is wanted.
    pub(crate) fn is_wanted(&self) -> bool {
        self.asked > 0
    }

    /// How many requests were folded in.
    pub(crate) fn asked(&self) -> u32 {
        self.asked
    }

    /// Takes the requests folded in so far (and their replies), leaving none.
    pub(crate) fn take(&mut self) -> (u32, Vec<R>) {
        let asked = std::mem::take(&mut self.asked);
        (asked, std::mem::take(&mut self.replies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_becomes_its_command_and_free_signals_pass() {
        let map = SignalMap::preset(crate::signal::Preset::Endless);
        let cmd = |s| Command::<()>::from_signal(&map, s);
        assert!(matches!(
            cmd(Signal::Term),
            Command::Shutdown(Stop {
                skip_delay: false,
                signal: Some(Signal::Term),
                ..
            })
        ));
        assert!(matches!(cmd(Signal::Hup), Command::Restart { .. }));
        assert!(matches!(cmd(Signal::Usr2), Command::Hammer { .. }));
        assert!(matches!(
            cmd(Signal::Usr1),
            Command::Pass {
                signal: Signal::Usr1
            }
        ));
        let now = Command::<()>::from_signal(&SignalMap::default(), Signal::Quit);
        assert!(matches!(
            now,
            Command::Shutdown(Stop {
                skip_delay: true,
                ..
            })
        ));
    }

    fn stop(signal: Option<Signal>) -> Stop<()> {
        match signal {
            Some(s) => match Command::<()>::from_signal(&SignalMap::default(), s) {
                Command::Shutdown(stop) => stop,
                _ => panic!("a stop"),
            },
            None => match Command::<()>::stop("code", None) {
                Command::Shutdown(stop) => stop,
                _ => panic!("a stop"),
            },
        }
    }

    #[test]
    fn only_ctrl_c_again_forces_and_never_under_a_master() {
        // systemd: SIGTERM to every process, then again (FINAL_SIGTERM): never forces.
        let mut e = Escalation::new(false);
        assert!(!e.hammers(&stop(Some(Signal::Term))));
        assert!(!e.hammers(&stop(Some(Signal::Term))));
        // A person: Ctrl-C after a shutdown signal means now.
        assert!(e.hammers(&stop(Some(Signal::Int))));
        // A generation draining after a hand-over: its first Ctrl-C is the first press.
        let mut e = Escalation::new(false);
        assert!(!e.hammers(&stop(Some(Signal::Int))));
        assert!(e.hammers(&stop(Some(Signal::Int))));
        // Code never escalates, and under a master nothing does.
        let mut e = Escalation::new(false);
        assert!(!e.hammers(&stop(None)));
        assert!(!e.hammers(&stop(None)));
        let mut e = Escalation::new(true);
        for s in [Signal::Int, Signal::Int, Signal::Term, Signal::Int] {
            assert!(!e.hammers(&stop(Some(s))));
        }
    }

    #[test]
    fn requests_during_a_restart_fold_into_one_follow_up() {
        let mut f = FollowUp::default();
        assert!(!f.is_wanted());
        assert_eq!(f.join(Some("a")), 1);
        assert_eq!(f.join(None), 2);
        assert!(f.is_wanted());
        assert_eq!(f.take(), (2, vec!["a"]));
        assert!(!f.is_wanted());
    }
}
