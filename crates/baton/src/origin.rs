//! What this process learns from whoever started it: the names of every environment
//! variable baton reads or sets (systemd's and its own), whether the socket-activation
//! variables are meant for this very process, its generation and the older ones still
//! draining, and whether it is a baton master's worker.
//!
//! The one home of these names: `activation` (the sockets), `notify` (the service
//! manager), `channel` (the generation channel) and the code that starts the next
//! generation all read them from here.

use std::ffi::OsString;
use std::sync::OnceLock;

/// systemd's socket activation: how many sockets, from descriptor 3 on.
pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
/// systemd's socket activation: the PID the sockets are meant for.
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
/// systemd's socket activation: the sockets' names, `a:b:...`.
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// Set by a full restart: where the passed sockets are (`7,9`), since an `exec` in the
/// same process cannot move them to 3.. without racing the runtime's descriptors.
pub(crate) const LISTEN_FDS_AT: &str = "BATON_LISTEN_FDS_AT";
/// systemd's notify socket (or a supervisor's).
pub(crate) const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// Set by a restarting generation for its successor: its private socket, where the
/// successor says `READY=1`.
pub(crate) const READY_SOCKET: &str = "BATON_READY_SOCKET";
/// Set by a restarting generation for its successor: the successor's generation number.
pub(crate) const GENERATION: &str = "BATON_GENERATION";
/// Sent with `READY=1` to the previous generation: the signal that restarts the new one
/// (so that a follow-up restart is asked with the new generation's own map).
pub(crate) const RESTART_SIGNAL: &str = "BATON_RESTART_SIGNAL";
/// Older generations still draining, `pid:starttime,...`: the cap on generations alive.
pub(crate) const DRAINING: &str = "BATON_DRAINING";
/// Set by a master (`baton run`, or an app that is its own master) for its workers: the
/// master's PID.
pub(crate) const MASTER_PID: &str = "BATON_MASTER_PID";
/// Set by a master for its workers: its private control socket, where a worker asked
/// to restart itself asks the master instead.
pub(crate) const MASTER_CONTROL: &str = "BATON_MASTER_CONTROL";
/// Set by a full restart for the image it executes: the signals it ignored across the
/// `exec` (numbers, comma-separated), which the new image gives back their default
/// action unless it handles them itself.
pub(crate) const IGNORED_AT_EXEC: &str = "BATON_IGNORED_AT_EXEC";

/// What this process learned from its environment at start.
#[derive(Debug)]
pub(crate) struct Origin {
    /// The previous generation's private socket (a graceful restart started us).
    pub(crate) parent: Option<OsString>,
    /// systemd's (or a supervisor's) socket.
    pub(crate) upstream: Option<OsString>,
    /// 1 for a process started from outside; +1 per restart.
    pub(crate) generation: u32,
    /// Older generations that were still draining when this one started.
    pub(crate) draining: Vec<Generation>,
}

/// A process of an older generation, identified by PID and start time (so that a PID
/// reused by an unrelated process is never signalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation {
    pub(crate) pid: u32,
    pub(crate) start_time: u64,
}

impl Generation {
    pub(crate) fn this_process() -> Option<Generation> {
        let pid = std::process::id();
        start_time(pid).map(|start_time| Generation { pid, start_time })
    }

    /// `true` while this very process still runs (not a reused PID).
    pub(crate) fn alive(&self) -> bool {
        // An exited process not yet reaped (a zombie: its new parent, the service
        // manager or PID 1, reaps it) is not alive: it holds nothing and drains nothing.
        start_time(self.pid) == Some(self.start_time) && crate::sys::is_alive(self.pid)
    }
}

fn start_time(pid: u32) -> Option<u64> {
    crate::sys::start_time(pid)
}

pub(crate) fn format_generations(gens: &[Generation]) -> String {
    gens.iter()
        .map(|g| format!("{}:{}", g.pid, g.start_time))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_generations(s: &str) -> Vec<Generation> {
    s.split(',')
        .filter_map(|g| {
            let (pid, start) = g.split_once(':')?;
            Some(Generation {
                pid: pid.parse().ok()?,
                start_time: start.parse().ok()?,
            })
        })
        .collect()
}

pub(crate) fn origin() -> &'static Origin {
    static ORIGIN: OnceLock<Origin> = OnceLock::new();
    ORIGIN.get_or_init(|| {
        // baton's own variables are meant for the process its parent started, which is
        // also the one `LISTEN_PID` names; a program that the app runs inherits them
        // and must not take itself for a new generation.
        if !passed_to_this_process() {
            return Origin {
                parent: None,
                upstream: std::env::var_os(NOTIFY_SOCKET).filter(|v| !v.is_empty()),
                generation: 1,
                draining: Vec::new(),
            };
        }
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let generation = std::env::var(GENERATION)
            .ok()
            .and_then(|g| g.parse().ok())
            .unwrap_or(1);
        let draining = std::env::var(DRAINING)
            .map(|s| parse_generations(&s))
            .unwrap_or_default();
        Origin {
            parent: var(READY_SOCKET),
            upstream: var(NOTIFY_SOCKET),
            generation,
            draining,
        }
    })
}
/// The environment variable naming the channel's descriptor in the successor.
pub(crate) const CHANNEL_FD: &str = "BATON_CHANNEL_FD";
/// The environment variable naming, in a worker of a master that passes connections
/// between its workers, the descriptor on which the master sends it the channel to its
/// successor ([`Message::Successor`]).
pub(crate) const MASTER_LINK_FD: &str = "BATON_MASTER_LINK_FD";

/// Whether the socket-activation variables are meant for this process: `LISTEN_PID`
/// names it (a program that inherits them from its parent must ignore them, and so
/// must it ignore baton's own variables beside them).
pub(crate) fn passed_to_this_process() -> bool {
    std::env::var(LISTEN_PID)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id())
}

/// Whether this process is a worker started by a baton master (`baton run`, or an app
/// that is its own master, see [`Master::this_program`](crate::supervisor::Master::this_program)):
/// it should serve with the sockets it was given rather than become a master itself.
pub fn is_worker() -> bool {
    passed_to_this_process() && std::env::var_os(MASTER_PID).is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_round_trip_and_this_process_is_alive() {
        let me = Generation::this_process().unwrap();
        assert!(me.alive());
        let other = Generation {
            pid: me.pid,
            start_time: me.start_time + 1,
        };
        assert!(
            !other.alive(),
            "same PID, another start time: not the same process"
        );
        let s = format_generations(&[me, other]);
        assert_eq!(parse_generations(&s), [me, other]);
        assert!(parse_generations("x,1:").is_empty());
    }
}
