//! Supervision for servers in any language: a master process with a stable PID that
//! holds the listening sockets and runs the server as its worker.
//!
//! - [`Worker`]: one worker process, started with the sockets by systemd's
//!   socket-activation protocol and a private notify socket for its readiness.
//! - [`Master`]: the loop of `baton run` (and of an app that is its own master,
//!   GoFrame's model): reload without a gap, full restart, restart after a crash, stop
//!   with the worker's status, signals passed on, a control socket, a locked pidfile.
//! - [`control`]: the control socket's protocol, which `baton stop`, `reload`,
//!   `restart` and `status` speak.
//!
//! Knows nothing of HTTP: the worker can be any program that takes its sockets from
//! `LISTEN_FDS`.

pub mod control;
mod master;
mod pidfile;
mod worker;

pub use master::{Master, MasterBuilder, MasterHandle, Outcome, is_worker};
pub use pidfile::{Holder, holder as pidfile_holder, signals_path};
pub use worker::{Readiness, Worker};

/// Whether process `pid` runs: it exists and has not exited (a zombie has).
///
/// # Platform-specific behavior
///
/// Linux reads `/proc/PID/stat`; elsewhere a zombie counts as running.
pub fn is_running(pid: u32) -> bool {
    crate::sys::is_alive(pid)
}

/// The PIDs of process `pid`'s children (a master's workers).
///
/// # Errors
///
/// The error of reading them (the process is gone).
///
/// # Platform-specific behavior
///
/// Linux reads `/proc/PID/task/PID/children`; elsewhere `ErrorKind::Unsupported`.
pub fn children_of(pid: u32) -> std::io::Result<Vec<u32>> {
    crate::sys::children(pid)
}
