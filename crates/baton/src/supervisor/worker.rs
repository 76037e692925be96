//! One worker process.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::error::Error;
use crate::failure::RestartFailure;
use crate::handoff::{self, Spawned};
use crate::listener::Listener;
use crate::notify;
use crate::origin::NOTIFY_SOCKET;
use crate::signal::Signal;

/// How a worker tells that it is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// It sends `READY=1` to `NOTIFY_SOCKET` (systemd's notify protocol; baton apps do).
    Notify,
    /// It knows no protocol: ready once it ran this long without exiting.
    Delay(Duration),
}

/// A running worker, the leader of a process group of its own: started with the
/// listeners at descriptors 3, 4, ...
/// (`LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` set by the worker's process itself
/// before it executes the program) and a private `NOTIFY_SOCKET`; stdin, stdout and
/// stderr inherited. Dropping a `Worker` that was not [`wait`](Worker::wait)ed to its
/// end kills it: nothing would supervise it any more.
#[derive(Debug)]
pub struct Worker(Proc);

/// A worker is a process; in the master's unit tests, a fake one.
#[derive(Debug)]
// The fake exists in test builds only, where the size difference does not matter.
#[allow(clippy::large_enum_variant)]
enum Proc {
    Process(Process),
    #[cfg(test)]
    Fake(super::fake::FakeWorker),
}

#[derive(Debug)]
struct Process {
    spawned: Spawned,
    /// Readable once the worker has exited, before it is reaped (Linux): its process
    /// group is killed while the group's ID cannot have been reused.
    exit: Option<crate::sys::ExitWatch>,
    /// Waited for and reaped: its group is never signalled any more.
    reaped: bool,
    /// This process's end of the worker's link (see `Worker::pass_successor`), when it
    /// has one.
    link: Option<OwnedFd>,
}

impl Worker {
    /// Starts `command[0]` (a path, or a name looked up in `PATH`) with the rest as its
    /// arguments. With `on_master_death`, the worker gets that signal should this
    /// process die (a SIGKILLed master): it drains instead of running unsupervised.
    ///
    /// # Platform-specific behavior
    ///
    /// `on_master_death` uses Linux's parent-death signal, which the kernel sends when
    /// the *thread* that started the worker exits: call `spawn` from a thread that lives
    /// as long as the process (a current-thread runtime on the main thread).
    ///
    /// # Errors
    ///
    /// [`Error::Worker`] when the command is empty, not found, not executable, or
    /// cannot be started.
    pub fn spawn(
        command: &[OsString],
        listeners: &[Listener],
        on_master_death: Option<Signal>,
    ) -> Result<Worker, Error> {
        Worker::spawn_with(command, listeners, on_master_death, Vec::new(), false, None)
    }

    /// [`spawn`](Worker::spawn) with `env` added to the worker's environment. With
    /// `link`, the worker gets a link to this process (see
    /// [`pass_successor`](Worker::pass_successor)); with `channel`, the end of the
    /// generation channel from its predecessor (`BATON_CHANNEL_FD`).
    pub(crate) fn spawn_with(
        command: &[OsString],
        listeners: &[Listener],
        on_master_death: Option<Signal>,
        extra_env: Vec<(OsString, OsString)>,
        link: bool,
        channel: Option<BorrowedFd<'_>>,
    ) -> Result<Worker, Error> {
        let Some(program) = command.first() else {
            return Err(Error::Worker(RestartFailure::Spawn(
                "no command given".into(),
            )));
        };
        let exe = resolve(program).map_err(Error::Worker)?;
        let notify = notify::Listener::bind().map_err(|e| {
            Error::Worker(RestartFailure::Spawn(format!("private notify socket: {e}")))
        })?;
        let mut env = vec![(
            OsString::from(NOTIFY_SOCKET),
            notify.path().as_os_str().to_owned(),
        )];
        env.extend(extra_env);
        let fds: Vec<(&str, BorrowedFd<'_>)> =
            listeners.iter().map(|l| (l.name(), l.as_fd())).collect();
        let how = handoff::Launch {
            parent_death_signal: on_master_death.map(Signal::as_raw),
            own_process_group: true,
            sitter: false,
        };
        // The link: the master's end stays here, the worker's is passed.
        let link = if link {
            crate::channel::Channel::pair()
                .map_err(|e| tracing::debug!(error = %e, "no link to the worker: its connections will drain at its reload"))
                .ok()
        } else {
            None
        };
        let mut extra: Vec<(&str, BorrowedFd<'_>)> = Vec::new();
        if let Some(channel) = channel {
            extra.push((crate::origin::CHANNEL_FD, channel));
        }
        if let Some((_, theirs)) = &link {
            extra.push((crate::origin::MASTER_LINK_FD, theirs.as_fd()));
        }
        let spawned = handoff::launch(&exe, command, &fds, &extra, env, notify, how)
            .map_err(Error::Worker)?;
        let exit = crate::sys::ExitWatch::new(spawned.pid).ok();
        Ok(Worker(Proc::Process(Process {
            spawned,
            exit,
            reaped: false,
            link: link.map(|(ours, _)| ours),
        })))
    }

    #[cfg(test)]
    pub(crate) fn fake(fake: super::fake::FakeWorker) -> Worker {
        Worker(Proc::Fake(fake))
    }

    /// Before the worker is told to drain at a reload: sends it, on its link, the
    /// channel to the worker that replaces it (`ours`, the other end of the one that
    /// worker got), so that it passes its open connections there. `false` when it has
    /// no link or the message cannot be sent: it drains as without.
    pub(crate) fn pass_successor(&self, ours: OwnedFd, pid: u32, generation: u32) -> bool {
        let link = match &self.0 {
            Proc::Process(p) => &p.link,
            #[cfg(test)]
            Proc::Fake(f) => return f.told(crate::channel::Message::Successor { pid, generation }),
        };
        let Some(link) = link else {
            return false;
        };
        let message = crate::channel::Message::Successor { pid, generation };
        match crate::sys::send_nonblocking_with_fds(
            link.as_fd(),
            &message.encode(),
            &[ours.as_fd()],
        ) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(worker = self.pid(), error = %e, "cannot pass the channel to the next worker: connections drain");
                false
            }
        }
    }

    /// Tells the worker, on its link, that the new worker of generation `generation`
    /// (PID `pid`) serves and its probation runs (`Some`, with `ours`, the channel to
    /// that worker): it stops accepting and stands by with its connections; or that the
    /// new one died in it (`None`): it accepts again. `false` without a link (the
    /// worker keeps accepting meanwhile).
    pub(crate) fn stand_by(&self, successor: Option<(u32, u32, BorrowedFd<'_>)>) -> bool {
        let (message, fds) = match successor {
            Some((pid, generation, ours)) => (
                crate::channel::Message::Standby { pid, generation },
                vec![ours],
            ),
            None => (crate::channel::Message::Resume, Vec::new()),
        };
        let link = match &self.0 {
            Proc::Process(p) => &p.link,
            #[cfg(test)]
            Proc::Fake(f) => return f.told(message),
        };
        let Some(link) = link else {
            return false;
        };
        match crate::sys::send_nonblocking_with_fds(link.as_fd(), &message.encode(), &fds) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(worker = self.pid(), error = %e, "cannot tell the worker of the probation");
                false
            }
        }
    }

    /// The worker's PID.
    pub fn pid(&self) -> u32 {
        match &self.0 {
            Proc::Process(p) => p.spawned.pid,
            #[cfg(test)]
            Proc::Fake(f) => f.pid(),
        }
    }

    /// Waits until the worker is ready: `READY=1` or the delay passed, within
    /// `timeout` of its start. Both are counted from the start, so the future can be
    /// dropped and called again (in a `select!` loop) without moving the deadline.
    ///
    /// # Errors
    ///
    /// [`RestartFailure::Exited`] if it exited first, [`RestartFailure::NotReady`] past
    /// the timeout (the worker is left running: stop it).
    pub async fn ready(
        &mut self,
        readiness: Readiness,
        timeout: Duration,
    ) -> Result<(), RestartFailure> {
        match &mut self.0 {
            Proc::Process(p) => p.ready(readiness, timeout).await,
            #[cfg(test)]
            Proc::Fake(f) => f.ready(timeout).await,
        }
    }

    /// Sends `signal` to the worker (nothing if it was reaped already).
    ///
    /// # Errors
    ///
    /// The OS error of `kill(2)`.
    pub fn signal(&mut self, signal: Signal) -> std::io::Result<()> {
        match &mut self.0 {
            Proc::Process(p) => p.spawned.signal(signal.as_raw()),
            #[cfg(test)]
            Proc::Fake(f) => {
                f.signal(signal);
                Ok(())
            }
        }
    }

    /// Sends `SIGKILL` to the worker and to every process of its group: what it
    /// started (a shell's or `npm start`'s child that serves, say) would otherwise go
    /// on holding the listening sockets and accepting.
    ///
    /// # Errors
    ///
    /// The OS error of `kill(2)`.
    pub fn kill(&mut self) -> std::io::Result<()> {
        match &mut self.0 {
            Proc::Process(p) => {
                p.spawned.signal(libc::SIGKILL)?;
                p.kill_leftovers();
                Ok(())
            }
            #[cfg(test)]
            Proc::Fake(f) => {
                f.kill();
                Ok(())
            }
        }
    }

    /// `SIGKILL` to what is left of the worker's process group. [`wait`](Worker::wait)
    /// does it already; processes that left the group (`setsid`) are not touched.
    pub fn kill_leftovers(&self) {
        match &self.0 {
            Proc::Process(p) => p.kill_leftovers(),
            #[cfg(test)]
            Proc::Fake(_) => {}
        }
    }

    /// Waits for the worker to exit, kills what is left of its process group (what it
    /// started would go on holding the listening sockets), and reaps it.
    ///
    /// # Errors
    ///
    /// The OS error of waiting.
    ///
    /// # Platform-specific behavior
    ///
    /// On Linux the group is killed before the worker is reaped, while its PID (the
    /// group's ID) cannot be reused by another process; elsewhere right after.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match &mut self.0 {
            Proc::Process(p) => p.wait().await,
            #[cfg(test)]
            Proc::Fake(f) => Ok(f.wait().await),
        }
    }
}

impl Process {
    fn pid(&self) -> u32 {
        self.spawned.pid
    }

    async fn ready(
        &mut self,
        readiness: Readiness,
        timeout: Duration,
    ) -> Result<(), RestartFailure> {
        match readiness {
            Readiness::Notify => {
                self.spawned.ready(timeout).await.map_err(|e| match e {
                    RestartFailure::NotReady { pid, deadline } => {
                        RestartFailure::NoReadyMessage { pid, deadline }
                    }
                    other => other,
                })?;
                // Nothing reads what it sends later: make such sends fail at once rather
                // than block on a full queue.
                self.spawned.close_notify();
                Ok(())
            }
            Readiness::Delay(delay) => {
                let pid = self.pid();
                let until = self.spawned.started + delay.min(timeout);
                tokio::select! {
                    status = self.spawned.wait() => Err(RestartFailure::Exited {
                        pid,
                        status: handoff::describe(&status),
                    }),
                    () = tokio::time::sleep_until(until) => {
                        if delay > timeout {
                            Err(RestartFailure::NotReady { pid, deadline: timeout })
                        } else {
                            self.spawned.close_notify();
                            Ok(())
                        }
                    }
                }
            }
        }
    }

    fn kill_leftovers(&self) {
        if !self.reaped {
            self.kill_group();
        }
    }

    fn kill_group(&self) {
        match crate::sys::kill_group(self.pid(), libc::SIGKILL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                tracing::debug!(worker = self.pid(), error = %e, "cannot kill the worker's group")
            }
        }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let before_reap = match &self.exit {
            Some(exit) => {
                exit.exited().await;
                self.kill_leftovers();
                true
            }
            None => false,
        };
        let status = self.spawned.wait().await;
        if !before_reap && !self.reaped {
            self.kill_group();
        }
        // Reaped: its PID may name another group from now on; never signalled again.
        self.exit = None;
        self.reaped = true;
        status
    }
}

/// `program` as a path to an executable: as given if it contains a `/`, else the first
/// match in `PATH`.
pub(crate) fn resolve(program: &OsString) -> Result<PathBuf, RestartFailure> {
    let given = Path::new(program);
    let candidates: Vec<PathBuf> = if program.as_encoded_bytes().contains(&b'/') {
        vec![given.to_owned()]
    } else {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).map(|d| d.join(given)).collect())
            .unwrap_or_default()
    };
    let searched = !program.as_encoded_bytes().contains(&b'/');
    let mut found_unusable = None;
    for path in candidates {
        let exists = path.exists();
        let program = handoff::Program {
            exe: path,
            args: Vec::new(),
        };
        match program.check() {
            Ok(()) => return Ok(program.exe),
            // A file that exists but cannot run says more than "not found".
            Err(e) if exists || !searched => found_unusable = found_unusable.or(Some(e)),
            Err(_) => {}
        }
    }
    Err(
        found_unusable.unwrap_or_else(|| RestartFailure::Executable {
            path: given.to_owned(),
            reason: "not found in PATH".into(),
        }),
    )
}
