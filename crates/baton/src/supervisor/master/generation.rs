//! A new generation: its start, its readiness (or failure), and the probation in which
//! the worker it replaces stands by.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Config;
use super::state::{Gen, Kind, Probation, Start, State};
use super::supervise::{Supervisor, idle_placeholder};
use crate::command::FollowUp;
use crate::error::Error;
use crate::failure::RestartFailure;
use crate::handoff::describe;
use crate::listener::Listener;
use crate::notify;
use crate::origin::MASTER_PID;
use crate::supervisor::Worker;
use crate::supervisor::control::{Ending, Progress, Reply};

impl Supervisor<'_> {
    /// Starts a worker of `generation` (not yet ready). On failure the replies are told.
    pub(super) fn start_worker(
        cfg: &Config,
        listeners: &[Listener],
        private: Option<&std::path::Path>,
        generation: u32,
        kind: Kind,
        replies: Vec<Reply>,
    ) -> Result<Box<Start>, RestartFailure> {
        // The worker's generation is the master's count, so that both logs agree.
        let mut env = vec![
            (
                OsString::from(MASTER_PID),
                OsString::from(std::process::id().to_string()),
            ),
            (
                OsString::from(crate::origin::GENERATION),
                OsString::from(generation.to_string()),
            ),
        ];
        if let Some(path) = private {
            env.push((
                OsString::from(crate::origin::MASTER_CONTROL),
                path.as_os_str().to_owned(),
            ));
        }
        let asked = Instant::now();
        // A reload's new worker gets a channel from the one it replaces (passed to
        // that one when this one is ready).
        let channel = if cfg.hand_over && kind == Kind::Reload {
            crate::channel::Channel::pair().ok()
        } else {
            None
        };
        let spawned = match () {
            #[cfg(test)]
            () if let Some(fake) = &cfg.fake => fake
                .spawn(cfg.hand_over)
                .map(Worker::fake)
                .map_err(Error::Worker),
            () => Worker::spawn_with(
                &cfg.command,
                listeners,
                Some(cfg.drain_signal),
                env,
                cfg.hand_over,
                channel.as_ref().map(|(_, theirs)| theirs.as_fd()),
            ),
        };
        // The new worker's end went with it.
        let channel = channel.map(|(ours, _)| ours);
        match spawned {
            Ok(worker) => {
                let pid = worker.pid();
                info!(
                    pid = std::process::id(),
                    worker = pid,
                    generation,
                    "{}: started worker gen {generation}",
                    kind.word()
                );
                for r in &replies {
                    r.progress(Progress::Spawned { generation, pid });
                }
                Ok(Box::new(Start {
                    new: Gen {
                        worker,
                        generation,
                        since: asked,
                    },
                    kind,
                    asked,
                    replies,
                    follow_up: FollowUp::default(),
                    channel,
                }))
            }
            Err(e) => {
                let failure = match e {
                    Error::Worker(f) => f,
                    other => RestartFailure::Spawn(other.to_string()),
                };
                for r in &replies {
                    r.error(format!("{} failed: {failure}", kind.word()));
                }
                Err(failure)
            }
        }
    }

    /// Starts a worker of the next generation.
    pub(super) fn start(
        &mut self,
        kind: Kind,
        replies: Vec<Reply>,
    ) -> Result<Box<Start>, RestartFailure> {
        let start = Self::start_worker(
            self.cfg,
            &self.listeners,
            self.private,
            self.next_generation,
            kind,
            replies,
        )?;
        self.next_generation += 1;
        Ok(start)
    }
    /// The starting worker is ready, or failed. `Err` only for the first worker: the
    /// master cannot run without one.
    pub(super) fn on_ready(
        &mut self,
        res: Result<(), RestartFailure>,
    ) -> Result<(), RestartFailure> {
        let me = std::process::id();
        let (serving, s) = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Starting(s) => (None, s),
            State::Reloading { serving, start } => (serving, start),
            other => {
                self.state = other;
                return Ok(());
            }
        };
        // Ready means it serves what it was given: a worker that closed the passed
        // sockets (issue 32: reported done while clients hung) is not ready.
        let res = res.and_then(|()| self.holds_listeners(s.new.worker.pid()));
        let Start {
            new,
            kind,
            asked,
            replies,
            mut follow_up,
            channel,
        } = *s;
        let took = asked.elapsed();
        let (generation, pid) = (new.generation, new.worker.pid());
        match res {
            Ok(()) => {
                info!(
                    pid = me,
                    worker = pid,
                    generation,
                    "worker gen {generation} ready in {} ms",
                    took.as_millis()
                );
                for r in &replies {
                    r.progress(Progress::Ready {
                        generation,
                        pid,
                        took,
                    });
                }
                notify::ready();
                notify::status(&format!("serving: worker gen {generation} (pid {pid})"));
                self.last_exit = None;
                super::supervise::watch_worker(pid, generation, self.given());
                match serving {
                    Some(old) if !self.cfg.probation.is_zero() => {
                        self.served(&old);
                        self.start_probation(new, old, replies, kind, took, channel);
                        if follow_up.is_wanted() {
                            self.reload(follow_up.take().1);
                        }
                        return Ok(());
                    }
                    Some(old) => {
                        self.served(&old);
                        self.hand_over(old, replies, channel, pid, generation, "reloaded");
                    }
                    None => {
                        for r in &replies {
                            r.ok(format!("gen {generation} pid {pid} serving"));
                        }
                    }
                }
                if matches!(kind, Kind::Reload | Kind::Restart) {
                    self.history
                        .record(kind, true, took, format!("gen {generation} pid {pid}"));
                }
                self.state = State::Serving(Gen {
                    since: Instant::now(),
                    ..new
                });
            }
            Err(e) => {
                let serves_on = if serving.is_some() {
                    "; the serving worker serves on"
                } else {
                    ""
                };
                warn!(
                    pid = me,
                    worker = pid,
                    "{} failed{}: worker gen {generation}: {e}",
                    kind.word(),
                    serves_on.replacen(';', ",", 1)
                );
                for r in &replies {
                    r.error(format!("{} failed: {e}{serves_on}", kind.word()));
                }
                // One that missed its deadline may have accepted connections: it
                // drains like any other (one that exited is reaped at once).
                self.drain(new);
                match kind {
                    Kind::First => {
                        for r in follow_up.take().1 {
                            r.error(format!("the first worker failed: {e}"));
                        }
                        return Err(e);
                    }
                    Kind::Reload | Kind::Restart => {
                        notify::ready();
                        self.history.record(kind, false, took, e.to_string());
                    }
                    Kind::Respawn => {}
                }
                self.state = match serving {
                    Some(g) => State::Serving(g),
                    None => self.respawn_later(),
                };
            }
        }
        if follow_up.is_wanted() {
            self.reload(follow_up.take().1);
        }
        Ok(())
    }

    /// The reload's new worker is ready: it serves; the old one stands by for the
    /// probation (a baton worker with a link stops accepting and keeps its
    /// connections; another keeps accepting beside the new one).
    fn start_probation(
        &mut self,
        new: Gen,
        old: Gen,
        replies: Vec<Reply>,
        kind: Kind,
        took: Duration,
        channel: Option<std::os::fd::OwnedFd>,
    ) {
        let me = std::process::id();
        let window = self.cfg.probation;
        let (generation, pid) = (new.generation, new.worker.pid());
        let old_pid = old.worker.pid();
        // A baton worker with a link gets the channel to the new one now: it stops
        // accepting, and the new one keeps slots for its connections.
        let stands_by = channel
            .as_ref()
            .is_some_and(|ours| old.worker.stand_by(Some((pid, generation, ours.as_fd()))));
        let channel = if stands_by { None } else { channel };
        info!(
            pid = me,
            worker = pid,
            "reloaded: gen {generation} serves; gen {} (pid {old_pid}) stands by for {window:?}{}",
            old.generation,
            if stands_by {
                ", not accepting"
            } else {
                ", accepting beside it"
            }
        );
        if stands_by {
            info!(
                pid = me,
                worker = old_pid,
                "gen {} passes its open connections to gen {generation} when the probation ends",
                old.generation
            );
        }
        let step = Progress::Standby {
            generation: old.generation,
            pid: old_pid,
            window,
        };
        for r in &replies {
            r.progress(step.clone());
        }
        let now = Instant::now();
        self.state = State::Probation(Box::new(Probation {
            serving: Gen { since: now, ..new },
            old,
            ready_at: now,
            until: now + window,
            replies,
            kind,
            took,
            channel,
        }));
    }

    /// The probation is over (its time passed, or a reload, restart or stop came): the
    /// new worker is the service's, the old one drains (its connections moving over,
    /// for a baton worker with a link). Nothing outside a probation.
    pub(super) fn end_probation(&mut self) {
        let p = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Probation(p) => *p,
            other => {
                self.state = other;
                return;
            }
        };
        let Probation {
            serving,
            old,
            replies,
            kind,
            took,
            channel,
            ..
        } = p;
        let (generation, pid) = (serving.generation, serving.worker.pid());
        self.hand_over(old, replies, channel, pid, generation, "probation over");
        self.history
            .record(kind, true, took, format!("gen {generation} pid {pid}"));
        self.state = State::Serving(serving);
    }

    /// The new worker died within its probation: the old one serves on (told to
    /// accept again), and the reload failed.
    /// The old generation's part once the new one (`pid`, `generation`) serves (logged
    /// as `what`): the waiting replies hear of the drain, the old worker is passed the
    /// channel to its successor (before the drain signal, so that it finds it when the
    /// signal comes), and it drains.
    fn hand_over(
        &mut self,
        old: Gen,
        replies: Vec<crate::supervisor::control::Reply>,
        channel: Option<std::os::fd::OwnedFd>,
        pid: u32,
        generation: u32,
        what: &str,
    ) {
        let old_pid = old.worker.pid();
        info!(
            pid = std::process::id(),
            worker = pid,
            "{what}: gen {generation} serves; gen {} (pid {old_pid}) drains",
            old.generation
        );
        let step = self.draining_step(&old, false);
        for r in &replies {
            r.progress(step.clone());
        }
        self.awaiting_drain.push((old_pid, replies));
        if let Some(ours) = channel
            && old.worker.pass_successor(ours, pid, generation)
        {
            info!(
                pid = std::process::id(),
                worker = old_pid,
                "gen {} passes its open connections to gen {generation}",
                old.generation
            );
        }
        self.drain(old);
    }

    pub(super) fn probation_failed(&mut self, p: Probation, status: &io::Result<ExitStatus>) {
        let me = std::process::id();
        let Probation {
            serving,
            old,
            ready_at,
            replies,
            kind,
            took,
            ..
        } = p;
        let after = ready_at.elapsed();
        old.worker.stand_by(None);
        let why = format!(
            "the new worker gen {} (pid {}) died {:.1} s after it was ready, within its probation ({}); gen {} (pid {}) serves on",
            serving.generation,
            serving.worker.pid(),
            after.as_secs_f64(),
            describe(status),
            old.generation,
            old.worker.pid()
        );
        warn!(pid = me, "{} failed: {why}", kind.word());
        for r in &replies {
            r.error(format!("{} failed: {why}", kind.word()));
        }
        notify::status(&format!(
            "serving: worker gen {} (pid {}); {why}",
            old.generation,
            old.worker.pid()
        ));
        self.history.record(kind, false, took, why);
        self.state = State::Serving(old);
    }

    /// The worker standing by for a probation exited by itself: the new one serves on,
    /// and the reload is done.
    pub(super) fn on_standby_exit(&mut self, status: io::Result<ExitStatus>) {
        let me = std::process::id();
        let p = match std::mem::replace(&mut self.state, idle_placeholder()) {
            State::Probation(p) => *p,
            other => {
                self.state = other;
                return;
            }
        };
        let (generation, pid) = (p.serving.generation, p.serving.worker.pid());
        warn!(
            pid = me,
            worker = p.old.worker.pid(),
            status = describe(&status),
            "the worker standing by exited during the probation; gen {generation} serves"
        );
        let step = Progress::Ended {
            generation: p.old.generation,
            how: Ending::Exited {
                status: describe(&status),
                after: p.ready_at.elapsed(),
            },
        };
        for r in &p.replies {
            r.progress(step.clone());
            r.ok(format!("reloaded: gen {generation} pid {pid} serving"));
        }
        self.history
            .record(p.kind, true, p.took, format!("gen {generation} pid {pid}"));
        self.state = State::Serving(p.serving);
    }

    /// The listening sockets given to each worker: name, inode, address.
    fn given(&self) -> Vec<(String, u64, String)> {
        self.listeners
            .iter()
            .zip(&self.inodes)
            .map(|(l, ino)| (l.name().to_owned(), *ino, l.local_addr().to_string()))
            .collect()
    }

    /// Whether worker `pid` (or one of its descendants) holds every listening socket
    /// it was given.
    fn holds_listeners(&self, pid: u32) -> Result<(), RestartFailure> {
        let Some(held) = crate::sys::held_in_tree(pid, &self.inodes) else {
            return Ok(());
        };
        let missing: Vec<&str> = self
            .listeners
            .iter()
            .zip(&self.inodes)
            .filter(|(_, ino)| !held.contains(ino))
            .map(|(l, _)| l.name())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(RestartFailure::ClosedListeners {
                pid,
                listeners: missing.join(", "),
            })
        }
    }
}
