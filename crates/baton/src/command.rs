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

use crate::{Action, Error, Signal, SignalMap};

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
    /// Came by a signal: the same signal again, from a person at a terminal, may force
    /// the close ("pressed twice"); see [`escalates`].
    pub(crate) by_signal: bool,
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
                by_signal: true,
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
            by_signal: false,
            reply: None,
        })
    }
}

/// Whether a shutdown request that arrives while a shutdown already runs forces the
/// close (the "hammer"): only a shutdown signal again, as a person presses Ctrl-C a
/// second time. A call from code or a control client never escalates.
pub(crate) fn escalates<R>(again: &Stop<R>) -> bool {
    again.by_signal
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
        let map = SignalMap::preset(crate::Preset::Endless);
        let cmd = |s| Command::<()>::from_signal(&map, s);
        assert!(matches!(
            cmd(Signal::Term),
            Command::Shutdown(Stop {
                skip_delay: false,
                by_signal: true,
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
        let Command::Shutdown(by_code) = Command::<()>::stop("code", None) else {
            panic!("a stop")
        };
        assert!(!escalates(&by_code));
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
