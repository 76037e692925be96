//! The master: holds the listening sockets, runs one serving worker, replaces it on a
//! reload without a gap, and keeps a PID that never changes. The loop is in
//! `supervise.rs`, its state in `state.rs`, the settings in `builder.rs`; the
//! transitions of its state are in `transitions.rs` (commands), `generation.rs` (a new
//! worker's start, readiness and probation) and `exits.rs` (drains, exits, respawns).

mod builder;
mod exits;
mod generation;
mod state;
mod supervise;
#[cfg(test)]
mod tests;
mod transitions;

use std::ffi::OsString;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Readiness;
use super::control::{self, Asked, Line, Progress, Reply, Request};
use crate::error::Error;
use crate::listener::Listener;
use crate::pidfile;
use crate::signal::{Signal, SignalMap};

use builder::Config;
pub use builder::MasterBuilder;

/// A master process: the stable PID in front of a server's workers.
///
/// It holds the listening sockets and starts the command as its worker with them
/// (systemd's socket-activation protocol: `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`)
/// and a private `NOTIFY_SOCKET`, plus `BATON_MASTER_PID` (see [`is_worker`](crate::supervisor::is_worker)).
///
/// - **Reload** (`SIGHUP`/`SIGUSR2` by default, or `reload` on the control socket): a
///   new worker starts; once it is ready, the old one gets the drain signal, and
///   `SIGKILL` after the drain timeout. A new worker that exits or misses its ready
///   deadline is killed and the old one serves on.
/// - **Full restart** (an [`Action::FullRestart`](crate::Action::FullRestart) signal, or `restart`): the worker
///   drains and exits first, then a new one starts; the sockets stay open, so clients
///   wait in the accept queue.
/// - **Stop** (`SIGTERM`, `SIGINT`, `SIGQUIT`, or `stop`): the worker drains; the
///   master exits with its status. A stop signal again kills what still runs.
/// - A worker that exits by itself is started again after a pause that doubles from
///   100 ms to 10 s (reset once one served for 1 s).
/// - `SIGUSR1`, `SIGWINCH`, `SIGTSTP`, `SIGALRM` (those the signal map leaves free) are
///   passed on to the serving worker.
/// - Should the master die, even by `SIGKILL`, its workers get their drain signal.
/// - Under systemd it speaks the notify protocol (`READY=1`; `RELOADING=1` and
///   `READY=1` around a reload; `STOPPING=1`); its PID stays the main PID, so a
///   `Type=notify-reload` unit needs no `ExecReload`.
///
/// Drive [`run`](Master::run) as the main future of a runtime (`block_on`), not in a
/// spawned task: the parent-death signal is tied to the thread that starts a worker.
#[derive(Debug)]
pub struct Master {
    cfg: Config,
    listeners: Vec<Listener>,
    control: Option<control::Bound>,
    /// The private control socket the workers are given (`BATON_MASTER_CONTROL`).
    private: Option<Private>,
    _pidfile: Option<pidfile::Locked>,
    requests: (mpsc::UnboundedSender<Asked>, mpsc::UnboundedReceiver<Asked>),
}

/// A control socket in a private directory, for the master's own workers.
#[derive(Debug)]
struct Private {
    // Dropped first: removes the socket, then the directory.
    bound: control::Bound,
    dir: crate::trust::PrivateDir,
}

/// How a master ends: the way its last serving worker ended, as a shell reports a
/// program it ran ([`Master::run`]).
///
/// A worker that ended by a stop signal (`SIGTERM`, `SIGINT`, `SIGHUP`, `SIGPIPE`), as
/// many runtimes do after draining (they re-raise the signal), is a clean stop: the
/// master should end by the same signal ([`MasterExit::exit`] re-raises it), which is
/// what systemd counts as a clean stop of a main process and what a shell shows as
/// `128 + N`. Exiting with `143` instead would make systemd mark every such stop failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MasterExit {
    code: u8,
    signal: Option<i32>,
}

impl MasterExit {
    pub(super) fn of(status: Option<&std::io::Result<std::process::ExitStatus>>) -> MasterExit {
        use std::os::unix::process::ExitStatusExt;
        let (code, signal) = match status {
            None => (0, None),
            Some(Err(_)) => (1, None),
            Some(Ok(s)) => match (s.code(), s.signal()) {
                (Some(code), _) => (u8::try_from(code).unwrap_or(1), None),
                (None, Some(sig)) => (u8::try_from(128 + sig).unwrap_or(1), Some(sig)),
                _ => (1, None),
            },
        };
        MasterExit { code, signal }
    }

    /// The exit code a shell would show: the worker's code, or 128 + the signal that
    /// ended it.
    pub fn code(&self) -> u8 {
        self.code
    }

    /// The signal that ended the worker, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.signal
    }

    /// Whether the worker ended by a stop signal, after which the master ends by it
    /// too ([`exit`](MasterExit::exit)).
    pub fn is_stop_signal(&self) -> bool {
        matches!(
            self.signal,
            Some(libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGPIPE)
        )
    }

    /// Ends this process the way the worker ended: by the same stop signal (its
    /// handlers reset first), or with [`code`](MasterExit::code). Call it last, once
    /// everything else is done (the runtime dropped): nothing runs after it.
    pub fn exit(self) -> ! {
        if self.is_stop_signal()
            && let Some(sig) = self.signal
        {
            crate::sys::raise_default(sig);
        }
        std::process::exit(i32::from(self.code))
    }
}

impl From<MasterExit> for i32 {
    fn from(e: MasterExit) -> i32 {
        i32::from(e.code)
    }
}

impl From<MasterExit> for u8 {
    fn from(e: MasterExit) -> u8 {
        e.code
    }
}

/// Asks a running [`Master`] for a reload, a full restart or a stop from code (what the
/// control socket does for `baton reload`), and gets the outcome. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    requests: mpsc::UnboundedSender<Asked>,
}

/// What a [`MasterHandle`] request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    ok: bool,
    message: String,
    progress: Vec<Progress>,
}

impl Outcome {
    /// Whether it succeeded.
    pub fn is_ok(&self) -> bool {
        self.ok
    }

    /// The final word: what happened, or why it failed.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The steps before it (spawned, ready, draining, ended).
    pub fn progress(&self) -> &[Progress] {
        &self.progress
    }

    /// How long the new worker took to be ready, if one became ready.
    pub fn ready_in(&self) -> Option<Duration> {
        self.progress.iter().find_map(|p| match p {
            Progress::Ready { took, .. } => Some(*took),
            _ => None,
        })
    }
}

impl MasterHandle {
    /// A graceful reload; resolves once the new worker serves and the old one is gone
    /// (or the reload failed and the old one serves on).
    pub async fn reload(&self) -> Outcome {
        self.ask(Request::Reload).await
    }

    /// A full restart: the worker drains, then a new one starts.
    pub async fn restart(&self) -> Outcome {
        self.ask(Request::Restart).await
    }

    /// Stops the master (its worker drains).
    pub async fn stop(&self) -> Outcome {
        self.ask(Request::Stop).await
    }

    async fn ask(&self, request: Request) -> Outcome {
        let (reply, mut lines) = Reply::channel();
        let mut outcome = Outcome {
            ok: false,
            message: String::new(),
            progress: Vec::new(),
        };
        if self.requests.send(Asked { request, reply }).is_err() {
            outcome.message = "the master is not running".into();
            return outcome;
        }
        while let Some(line) = lines.recv().await {
            match line {
                Line::Progress(p) => outcome.progress.push(p),
                Line::Status(_) => {}
                Line::Ok(m) => {
                    outcome.ok = true;
                    outcome.message = m;
                    return outcome;
                }
                Line::Error(m) => {
                    outcome.message = m;
                    return outcome;
                }
            }
        }
        outcome.message = "the master ended without an outcome".into();
        outcome
    }
}

impl Master {
    /// A master that runs `command` (a path, or a name looked up in `PATH`, then its
    /// arguments) as its worker.
    pub fn builder<I, S>(command: I) -> MasterBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        MasterBuilder {
            command: command.into_iter().map(Into::into).collect(),
            listeners: Vec::new(),
            readiness: Readiness::Notify,
            ready_timeout: crate::command::DEFAULT_READY_TIMEOUT,
            drain_signal: Signal::Term,
            drain_timeout: crate::command::DEFAULT_DRAIN_TIMEOUT,
            signals: SignalMap::default(),
            control: None,
            pidfile: None,
            reap_orphans: std::process::id() == 1,
            hand_over: false,
            probation: crate::command::DEFAULT_PROBATION,
        }
    }

    /// GoFrame's model: a master whose worker is this very program, started again with
    /// the same arguments. In `main`, check [`is_worker`](crate::supervisor::is_worker) first:
    ///
    /// ```no_run
    /// # async fn serve() {}
    /// # fn main() -> Result<(), baton::Error> {
    /// use baton::supervisor::{Master, is_worker};
    /// use baton::{ListenAddr, Listener};
    ///
    /// if !is_worker() {
    ///     let addr: ListenAddr = "127.0.0.1:8080".parse()?;
    ///     let master = Master::this_program()?
    ///         .listener(Listener::bind("http", &addr)?)
    ///         .build()?;
    ///     let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    ///     rt.block_on(master.run())?.exit();
    /// }
    /// // The worker: `Listener::bind("http", ...)` (or `Server::bind`) takes the socket
    /// // the master passed.
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if this program's path cannot be found.
    pub fn this_program() -> Result<MasterBuilder, Error> {
        let exe = std::env::current_exe().map_err(|e| Error::io("locate this program", e))?;
        let mut command = vec![exe.into_os_string()];
        command.extend(std::env::args_os().skip(1));
        Ok(Master::builder(command).hand_over(true))
    }

    /// A handle to ask the master, once running, for reloads, restarts and a stop.
    pub fn handle(&self) -> MasterHandle {
        MasterHandle {
            requests: self.requests.0.clone(),
        }
    }

    /// The control socket's path, if one was configured.
    pub fn control_path(&self) -> Option<&std::path::Path> {
        self.control.as_ref().map(control::Bound::path)
    }
}
