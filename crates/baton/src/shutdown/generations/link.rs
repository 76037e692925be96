//! A worker's link to its master (see `MasterBuilder::hand_over`): the master tells it
//! to stand by for its replacement's probation, to resume when that one died, or passes
//! it the channel to its replacement just before the drain.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use tracing::{info, warn};

use super::Successor;
use crate::channel::{Channel, Message};
use crate::shutdown::Shutdown;
use crate::sync::lock;

impl Shutdown {
    /// A worker with a link to its master reads it from `run` on: the master tells it
    /// to stand by for its replacement's probation (and passes the channel to that one),
    /// to resume when that one died, or passes the channel just before the drain.
    pub(in crate::shutdown) fn follow_master(&self) {
        let Some(fd) = lock(&self.links().master_link).take() else {
            return;
        };
        let link = match Channel::new(fd) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                warn!(error = %e, "cannot read the link to the master; connections drain at a reload");
                return;
            }
        };
        *lock(&self.links().link) = Some(Arc::clone(&link));
        let shutdown = self.clone();
        tokio::spawn(async move {
            while link.when_readable().await.is_ok() {
                if shutdown.take_link_messages() {
                    return;
                }
            }
        });
    }

    /// Acts on the link's waiting messages; `true` once it is closed (the master is
    /// gone).
    fn take_link_messages(&self) -> bool {
        let Some(link) = lock(&self.links().link).clone() else {
            return true;
        };
        let _taking = lock(&self.links().link_lock);
        let (messages, closed) = link.drain_now_or_closed();
        for (message, mut fds) in messages {
            match (message, fds.pop()) {
                (Message::Standby { pid, generation }, Some(ours)) => {
                    self.stand_by(pid, generation, ours);
                }
                (Message::Resume, _) => self.resume_from_standby("the master said so"),
                (Message::Successor { pid, generation }, Some(ours)) => {
                    *lock(&self.links().pending_successor) = Some((pid, generation, ours));
                }
                _ => {}
            }
        }
        closed
    }

    /// The master's new worker serves and its probation runs: this one stops accepting
    /// and keeps its connections, connected to the new one already (which keeps slots
    /// for them); they move at the drain that ends the probation.
    fn stand_by(&self, pid: u32, generation: u32, ours: OwnedFd) {
        let takes = self.connect_successor(ours);
        self.inner.tracker.set_hand_over(takes > 0);
        self.inner.tracker.pause_accepting(true);
        self.inner.life.stand_by(pid);
        self.release_predecessor();
        info!(
            pid = std::process::id(),
            new_pid = pid,
            generation,
            listeners = takes,
            "the master's new worker serves; this one stops accepting and stands by with its connections until its probation ends"
        );
        // It dies within its probation: this one resumes (the master says so too).
        if let Some(mut state) = self.successor_state() {
            let shutdown = self.clone();
            tokio::spawn(async move {
                if state.wait_for(|s| *s == Successor::Gone).await.is_ok()
                    && super::successor_died(pid).await
                {
                    shutdown.resume_from_standby("its end of the channel closed");
                }
            });
        }
    }

    /// The replacement died within its probation: this worker accepts again and serves
    /// on, unless it drains already.
    fn resume_from_standby(&self, why: &str) {
        if self.phase() >= crate::tracker::Phase::Draining {
            self.inner.life.end_standby();
            return;
        }
        let Some(new_pid) = self.inner.life.resume(true) else {
            return;
        };
        self.forget_successor();
        self.inner.tracker.set_hand_over(false);
        self.inner.tracker.pause_accepting(false);
        warn!(
            pid = std::process::id(),
            new_pid,
            "the master's new worker died within its probation ({why}): this worker accepts again and serves on"
        );
    }

    /// A worker told to drain: whether its master passed it the channel to the worker
    /// that replaces it (a reload, just before the drain signal, or at the start of the
    /// probation that the drain ends); if so, the drain is a hand-over to that worker.
    pub(in crate::shutdown) fn successor_from_master(&self) -> Option<crate::failure::Restarted> {
        // What the master sent before its drain signal may not be read yet.
        self.take_link_messages();
        let restarted = |pid, generation| crate::failure::Restarted {
            pid,
            generation,
            spawn: std::time::Duration::ZERO,
            ready: std::time::Duration::ZERO,
            coalesced: 0,
        };
        if let Some(pid) = self.inner.life.end_standby() {
            self.start_reporting();
            return Some(restarted(pid, 0));
        }
        let (pid, generation, ours) = lock(&self.links().pending_successor).take()?;
        let takes = self.connect_successor(ours);
        self.inner.tracker.set_hand_over(takes > 0);
        self.inner.life.hand_over(pid);
        self.start_reporting();
        info!(
            pid = std::process::id(),
            new_pid = pid,
            generation,
            listeners = takes,
            "the master's new worker takes this one's open connections"
        );
        Some(restarted(pid, generation))
    }
}
