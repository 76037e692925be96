//! Where a coordinator stands in its life, beside its tracker's phase (which the
//! connections read on their hot path): serving, given up by the generation before it,
//! handed over to the next one (standing by for its probation, or not), draining for a
//! cause. One value behind one lock, so that what the coordinator is doing is read,
//! not reconstructed from flags.

use std::sync::Mutex;

use super::DrainCause;
use crate::sync::lock;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Life {
    /// It serves (a restart in progress is the serve loop's business).
    #[default]
    Serving,
    /// The previous generation gave up on this one (ready too late) and serves on:
    /// this one drains and leaves the service to it.
    GivenUp,
    /// The next generation (`successor`) serves. `standing_by`: this one is a master's
    /// worker told that the successor's probation runs (it stopped accepting; its
    /// connections move when its drain signal comes).
    HandedOver { successor: u32, standing_by: bool },
    /// It drains, for `cause`; after a hand-over to `successor`. `stop_asked`: a
    /// shutdown or hammer came meanwhile (a full restart then stops instead of
    /// executing the program anew). `standing_by`: a master's word that its new worker's
    /// probation runs came after the drain began (a stop that reached this worker
    /// directly, during a reload): during the drain delay it may still resume.
    Draining {
        cause: DrainCause,
        successor: Option<u32>,
        stop_asked: bool,
        standing_by: bool,
    },
}

/// A coordinator's [`Life`], and its transitions.
#[derive(Debug, Default)]
pub(super) struct Lifecycle(Mutex<Life>);

impl Lifecycle {
    /// The next generation serves now (a restart of this one, or a master's worker told
    /// of its replacement at its drain).
    pub(super) fn hand_over(&self, successor: u32) {
        let mut life = lock(&self.0);
        match &mut *life {
            Life::Draining { successor: s, .. } => *s = Some(successor),
            other => {
                *other = Life::HandedOver {
                    successor,
                    standing_by: false,
                }
            }
        }
    }

    /// A master's new worker serves and its probation runs: this worker stands by.
    pub(super) fn stand_by(&self, successor: u32) {
        let mut life = lock(&self.0);
        match &mut *life {
            Life::Draining {
                successor: s,
                standing_by,
                ..
            } => {
                *s = Some(successor);
                *standing_by = true;
            }
            other => {
                *other = Life::HandedOver {
                    successor,
                    standing_by: true,
                }
            }
        }
    }

    /// The next generation died within its probation: this one serves on (or, told of
    /// it during its drain, has no successor any more). Returns the dead one's PID;
    /// `None` (and nothing changes) when it had not handed over. With `standing_by`,
    /// only a worker standing by resumes.
    pub(super) fn resume(&self, standing_by: bool) -> Option<u32> {
        let mut life = lock(&self.0);
        match &mut *life {
            Life::HandedOver {
                successor,
                standing_by: was,
            } if *was || !standing_by => {
                let pid = *successor;
                *life = Life::Serving;
                Some(pid)
            }
            Life::Draining {
                successor: s @ Some(_),
                standing_by: was,
                ..
            } if *was || !standing_by => {
                *was = false;
                s.take()
            }
            _ => None,
        }
    }

    /// A worker told to drain while it stands by: the drain is the hand-over to the
    /// worker it stood by for (its PID); it no longer stands by.
    pub(super) fn end_standby(&self) -> Option<u32> {
        match &mut *lock(&self.0) {
            Life::HandedOver {
                successor,
                standing_by: was @ true,
            }
            | Life::Draining {
                successor: Some(successor),
                standing_by: was @ true,
                ..
            } => {
                *was = false;
                Some(*successor)
            }
            _ => None,
        }
    }

    /// The previous generation gave up on this one.
    pub(super) fn give_up(&self) {
        *lock(&self.0) = Life::GivenUp;
    }

    pub(super) fn given_up(&self) -> bool {
        *lock(&self.0) == Life::GivenUp
    }

    /// The drain starts, for `cause` (once: a later call changes nothing). Returns the
    /// generation this one handed over to, if it did.
    pub(super) fn drain(&self, cause: DrainCause) -> Option<u32> {
        let mut life = lock(&self.0);
        let (successor, standing_by) = match *life {
            Life::Draining { successor, .. } => return successor,
            Life::HandedOver {
                successor,
                standing_by,
            } => (Some(successor), standing_by),
            Life::Serving | Life::GivenUp => (None, false),
        };
        *life = Life::Draining {
            cause,
            successor,
            stop_asked: false,
            standing_by,
        };
        successor
    }

    /// A shutdown or hammer came during the drain.
    pub(super) fn ask_stop(&self) {
        if let Life::Draining { stop_asked, .. } = &mut *lock(&self.0) {
            *stop_asked = true;
        }
    }

    pub(super) fn stop_asked(&self) -> bool {
        matches!(
            *lock(&self.0),
            Life::Draining {
                stop_asked: true,
                ..
            }
        )
    }

    /// Why this generation drains; `None` before its drain.
    pub(super) fn drain_cause(&self) -> Option<DrainCause> {
        match *lock(&self.0) {
            Life::Draining { cause, .. } => Some(cause),
            _ => None,
        }
    }

    /// The generation this one handed over to, if it did.
    pub(super) fn successor(&self) -> Option<u32> {
        match *lock(&self.0) {
            Life::HandedOver { successor, .. } => Some(successor),
            Life::Draining { successor, .. } => successor,
            Life::Serving | Life::GivenUp => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hand_over_is_carried_into_the_drain() {
        let life = Lifecycle::default();
        life.hand_over(42);
        assert_eq!(life.drain(DrainCause::Restart), Some(42));
        assert_eq!(life.successor(), Some(42));
        assert_eq!(life.drain_cause(), Some(DrainCause::Restart));
        assert_eq!(life.drain(DrainCause::Shutdown), Some(42), "once");
        assert_eq!(life.drain_cause(), Some(DrainCause::Restart));
        assert!(!life.stop_asked());
        life.ask_stop();
        assert!(life.stop_asked());
    }

    #[test]
    fn word_of_a_standby_during_the_drain_is_kept_as_before() {
        let life = Lifecycle::default();
        assert_eq!(life.drain(DrainCause::Shutdown), None);
        life.stand_by(9);
        assert_eq!(life.successor(), Some(9), "its end waits for that one");
        assert_eq!(life.resume(true), Some(9), "it died: no successor any more");
        assert_eq!(life.successor(), None);
        assert_eq!(
            life.drain_cause(),
            Some(DrainCause::Shutdown),
            "still draining"
        );
        life.stand_by(10);
        assert_eq!(life.end_standby(), Some(10));
        assert_eq!(life.resume(true), None);
    }

    #[test]
    fn a_worker_standing_by_resumes_or_hands_over_once() {
        let life = Lifecycle::default();
        life.stand_by(7);
        assert_eq!(life.successor(), Some(7));
        assert_eq!(life.resume(true), Some(7));
        assert_eq!(life.successor(), None);
        assert_eq!(life.resume(true), None, "resumed once");

        life.stand_by(8);
        assert_eq!(life.end_standby(), Some(8));
        assert_eq!(life.resume(true), None, "no longer standing by");
        assert_eq!(life.successor(), Some(8), "its drain hands over to 8");
        assert_eq!(life.end_standby(), None);
    }

    #[test]
    fn a_generation_given_up_drains_without_a_successor() {
        let life = Lifecycle::default();
        life.give_up();
        assert!(life.given_up());
        assert_eq!(life.drain(DrainCause::Restart), None);
        assert!(!life.given_up());
        assert_eq!(life.resume(false), None);
    }
}
