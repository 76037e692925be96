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
#[cfg(test)]
mod fake;
mod master;
mod worker;

pub use crate::origin::is_worker;
pub use master::{Master, MasterBuilder, MasterExit, MasterHandle, Outcome};
pub use worker::{Readiness, Worker};
