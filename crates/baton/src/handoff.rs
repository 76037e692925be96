//! Starting the next generation: the program as it is on disk now, the listening
//! sockets by the socket-activation protocol, readiness by the notify protocol, and
//! the rollback when it does not become ready. Knows nothing of HTTP.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use crate::failure::RestartFailure;
use crate::notify;
use crate::origin::{
    DRAINING, GENERATION, Generation, LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_AT, LISTEN_PID,
    NOTIFY_SOCKET, READY_SOCKET,
};

/// The program to run again: captured at start, so that a binary replaced on disk
/// (`/proc/self/exe` then reads "... (deleted)") is found by the path it was started
/// from.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    pub(crate) exe: PathBuf,
    pub(crate) args: Vec<OsString>,
}

impl Program {
    pub(crate) fn current() -> Program {
        let exe = std::env::current_exe()
            .map(|p| {
                // Replaced already before we looked: the path it had is what we want.
                use std::os::unix::ffi::OsStrExt;
                match p.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
                    Some(stripped) => PathBuf::from(OsStr::from_bytes(stripped)),
                    None => p,
                }
            })
            .unwrap_or_else(|_| PathBuf::from(std::env::args_os().next().unwrap_or_default()));
        Program {
            exe,
            args: std::env::args_os().collect(),
        }
    }

    /// Checks that the executable exists and may be executed, before anything is
    /// started or drained.
    pub(crate) fn check(&self) -> Result<(), RestartFailure> {
        use std::os::unix::fs::PermissionsExt;
        let fail = |reason: String| RestartFailure::Executable {
            path: self.exe.clone(),
            reason,
        };
        let meta = std::fs::metadata(&self.exe).map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(fail("not executable (no x permission)".into()));
        }
        Ok(())
    }
}

/// A listening socket to pass on.
#[derive(Debug)]
pub(crate) struct Passed {
    pub(crate) name: String,
    pub(crate) fd: OwnedFd,
}

/// Our environment without the variables that describe this process's own sockets and
/// manager, which must not leak to the next one.
fn inherited_env() -> Vec<(OsString, OsString)> {
    const OURS: [&str; 13] = [
        LISTEN_FDS,
        LISTEN_PID,
        LISTEN_FDNAMES,
        LISTEN_FDS_AT,
        NOTIFY_SOCKET,
        READY_SOCKET,
        GENERATION,
        DRAINING,
        crate::origin::MASTER_PID,
        crate::origin::MASTER_CONTROL,
        crate::origin::IGNORED_AT_EXEC,
        crate::origin::CHANNEL_FD,
        crate::origin::MASTER_LINK_FD,
    ];
    std::env::vars_os()
        .filter(|(k, _)| !OURS.iter().any(|o| k == o))
        .collect()
}

fn names(listeners: &[Passed]) -> OsString {
    listeners
        .iter()
        .map(|l| l.name.as_str())
        .collect::<Vec<_>>()
        .join(":")
        .into()
}

/// A started next generation (or worker), not yet ready.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) pid: u32,
    /// `None` once released or abandoned; dropping a `Spawned` that still holds it
    /// (a `run` future dropped mid-restart) kills the process: nothing would manage it.
    proc: Option<Proc>,
    /// `None` once closed ([`Spawned::close_notify`]).
    notify: Option<notify::Listener>,
    pub(crate) started: Instant,
}

/// How this process holds what it started.
#[derive(Debug)]
enum Proc {
    /// Its child (a master's worker).
    Child(tokio::process::Child),
    /// The child of a sitter, which is this process's child (a successor generation;
    /// see [`sys::ExecPlan::through_sitter`](crate::sys::ExecPlan::through_sitter)).
    Sat {
        sitter: tokio::process::Child,
        /// This end of the socket pair: the program's status if it exits while the
        /// sitter waits; closing it releases the sitter.
        channel: tokio::net::UnixStream,
        /// The status, once reported.
        status: Option<ExitStatus>,
    },
}

impl Proc {
    /// Waits until the program exits (and is reaped, for a child).
    async fn exited(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Proc::Child(child) => child.wait().await,
            Proc::Sat {
                channel, status, ..
            } => {
                if let Some(s) = status {
                    return Ok(*s);
                }
                use std::os::unix::process::ExitStatusExt;
                use tokio::io::AsyncReadExt;
                let mut raw = [0u8; 4];
                match channel.read_exact(&mut raw).await {
                    Ok(_) => {
                        let s = ExitStatus::from_raw(i32::from_ne_bytes(raw));
                        *status = Some(s);
                        Ok(s)
                    }
                    // The sitter is gone without a word (killed): the program, if it
                    // still runs, is someone else's child now.
                    Err(e) => Err(std::io::Error::new(
                        e.kind(),
                        "the process that started it is gone; its status is unknown",
                    )),
                }
            }
        }
    }

    fn running(&mut self) -> bool {
        match self {
            Proc::Child(child) => matches!(child.try_wait(), Ok(None)),
            Proc::Sat { status, .. } => status.is_none(),
        }
    }
}

/// How to start a process.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Launch {
    /// Sent to the process when this one dies (a master's worker).
    pub(crate) parent_death_signal: Option<i32>,
    /// The process leads a process group of its own (a master's worker).
    pub(crate) own_process_group: bool,
    /// Through a sitter, so that it can become the service manager's child (a
    /// successor generation, on Linux).
    pub(crate) sitter: bool,
}

/// Starts the next generation with `listeners` at descriptors 3, 4, ..., `channel`
/// (its end of the generation channel) after them, and a private notify socket.
/// `draining` are the older generations still alive, passed on for the cap.
pub(crate) fn spawn(
    program: &Program,
    listeners: &[Passed],
    channel: Option<BorrowedFd<'_>>,
    generation: u32,
    draining: &[Generation],
) -> Result<Spawned, RestartFailure> {
    program.check()?;
    let notify = notify::Listener::bind()
        .map_err(|e| RestartFailure::Spawn(format!("private notify socket: {e}")))?;
    let mut env = Vec::new();
    if let Some(upstream) = &crate::origin::origin().upstream {
        env.push((NOTIFY_SOCKET.into(), upstream.clone()));
    }
    env.extend([
        (READY_SOCKET.into(), notify.path().as_os_str().to_owned()),
        (GENERATION.into(), generation.to_string().into()),
        (
            DRAINING.into(),
            crate::origin::format_generations(draining).into(),
        ),
    ]);
    let fds: Vec<(&str, BorrowedFd<'_>)> = listeners
        .iter()
        .map(|l| (l.name.as_str(), l.fd.as_fd()))
        .collect();
    // No parent-death signal: a successor must outlive its predecessor; and it stays
    // in our process group, as a service's processes do. Through a sitter where the
    // platform lets the successor become the service manager's child.
    let how = Launch {
        sitter: cfg!(target_os = "linux"),
        ..Launch::default()
    };
    let extra: Vec<(&str, BorrowedFd<'_>)> = channel
        .map(|fd| (crate::origin::CHANNEL_FD, fd))
        .into_iter()
        .collect();
    launch(&program.exe, &program.args, &fds, &extra, env, notify, how)
}

/// Starts `exe` with `argv` (`argv[0]` included), this process's environment without
/// baton's and the socket-activation variables, plus `env`, and `listeners` at
/// descriptors 3, 4, ... (`LISTEN_FDS`, `LISTEN_FDNAMES`, and `LISTEN_PID` written by
/// the child itself), then each of `extra` at the next descriptors, named by its
/// environment variable (`BATON_CHANNEL_FD`, `BATON_MASTER_LINK_FD`).
pub(crate) fn launch(
    exe: &std::path::Path,
    argv: &[OsString],
    listeners: &[(&str, BorrowedFd<'_>)],
    extra: &[(&str, BorrowedFd<'_>)],
    env: Vec<(OsString, OsString)>,
    notify: notify::Listener,
    how: Launch,
) -> Result<Spawned, RestartFailure> {
    let spawn_err = |what: &str, e: std::io::Error| RestartFailure::Spawn(format!("{what}: {e}"));
    let mut full = inherited_env();
    full.extend(env);
    let names: OsString = listeners
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(":")
        .into();
    full.extend([
        (LISTEN_FDS.into(), listeners.len().to_string().into()),
        (LISTEN_FDNAMES.into(), names),
    ]);
    for (i, (name, _)) in extra.iter().enumerate() {
        full.push(((*name).into(), (3 + listeners.len() + i).to_string().into()));
    }
    let env_refs: Vec<(&OsStr, &OsStr)> = full.iter().map(|(k, v)| (&**k, &**v)).collect();
    let argv: Vec<&OsStr> = argv.iter().map(|a| &**a).collect();
    let fds: Vec<BorrowedFd<'_>> = listeners.iter().chain(extra).map(|(_, fd)| *fd).collect();
    let mut plan = crate::sys::ExecPlan::new(exe.as_os_str(), &argv, &env_refs, &fds)
        .map_err(|e| spawn_err("prepare", e))?;
    if let Some(signal) = how.parent_death_signal {
        plan.on_parent_death(signal);
    }
    let channel = if how.sitter {
        let (ours, sitters) =
            std::os::unix::net::UnixStream::pair().map_err(|e| spawn_err("socket pair", e))?;
        plan.through_sitter(sitters.into(), std::os::fd::AsRawFd::as_raw_fd(&ours));
        Some(ours)
    } else {
        None
    };
    let mut cmd = tokio::process::Command::new(exe);
    if how.own_process_group {
        // The child leads a group of its own (set before `pre_exec` runs), so that
        // what it starts can be found and stopped with it.
        cmd.process_group(0);
    }
    // stdin, stdout and stderr are inherited: the new process logs where we do.
    plan.install(&mut cmd);
    let started = Instant::now();
    // Keep std's error-report pipe out of 3..3+n: the child's dup2 would close it.
    let placeholders = std::fs::File::open("/dev/null")
        .map(|null| crate::sys::occupy_free(null.as_fd(), 3..3 + fds.len() as std::os::fd::RawFd))
        .unwrap_or_default();
    let spawned = cmd.spawn();
    drop(placeholders);
    // The sitter's end went with the command: only the sitter holds it now.
    drop(cmd);
    let child = spawned.map_err(|e| spawn_err(&format!("{}", exe.display()), e))?;
    let (pid, proc) = match channel {
        None => (child.id().unwrap_or_default(), Proc::Child(child)),
        Some(ours) => {
            // The sitter wrote the program's PID before `spawn` returned (which waits
            // for the exec).
            let pid = read_pid(&ours).map_err(|e| spawn_err("the sitter's report", e))?;
            ours.set_nonblocking(true)
                .map_err(|e| spawn_err("socket pair", e))?;
            let channel =
                tokio::net::UnixStream::from_std(ours).map_err(|e| spawn_err("socket pair", e))?;
            (
                pid,
                Proc::Sat {
                    sitter: child,
                    channel,
                    status: None,
                },
            )
        }
    };
    Ok(Spawned {
        pid,
        proc: Some(proc),
        notify: Some(notify),
        started,
    })
}

fn read_pid(channel: &std::os::unix::net::UnixStream) -> std::io::Result<u32> {
    use std::io::Read;
    channel.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut raw = [0u8; 4];
    (&*channel).read_exact(&mut raw)?;
    Ok(u32::from_ne_bytes(raw))
}

impl Spawned {
    /// Waits until the new generation says `READY=1`, exits, or misses `deadline`;
    /// returns the restart signal it announced, if any.
    pub(crate) async fn ready(
        &mut self,
        deadline: Duration,
    ) -> Result<Option<String>, RestartFailure> {
        let pid = self.pid;
        let Some(proc) = self.proc.as_mut() else {
            return Err(RestartFailure::Spawn("the process was released".into()));
        };
        // Readiness first, and read what waits before a deadline is called missed: when
        // this thread runs late (a paused VM, a frozen cgroup, CPU starvation), the
        // readiness and the deadline are both there when it looks, and a readiness that
        // came in time must win (issue 32: 4 of 4 good reloads failed that way).
        let notify = self.notify.as_ref();
        tokio::select! {
            biased;
            res = notify_ready(notify) => res.map_err(|e| RestartFailure::Spawn(format!("notify socket: {e}"))),
            status = proc.exited() => Err(RestartFailure::Exited {
                pid,
                status: describe(&status),
            }),
            () = tokio::time::sleep_until(self.started + deadline) => {
                match notify.and_then(notify::Listener::ready_now) {
                    Some(announced) => Ok(announced),
                    None => Err(RestartFailure::NotReady { pid, deadline }),
                }
            }
        }
    }

    /// Closes the private notify socket: messages sent after `READY=1` are not read,
    /// and a sender gets an error at once instead of blocking on a full queue.
    pub(crate) fn close_notify(&mut self) {
        self.notify = None;
    }

    /// Waits for the process to exit (and reaps it).
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self.proc.as_mut() {
            Some(proc) => proc.exited().await,
            None => std::future::pending().await,
        }
    }

    /// Sends `signal` to the process, unless it is known to have exited.
    pub(crate) fn signal(&mut self, signal: i32) -> std::io::Result<()> {
        if self.proc.as_mut().is_some_and(Proc::running) {
            crate::sys::kill(self.pid, signal)
        } else {
            Ok(())
        }
    }

    /// Stops the process of a failed or aborted restart and reaps it, in the
    /// background: `SIGTERM` first, since it may already have accepted connections from
    /// the shared socket (a baton app drains them), then `SIGKILL` after `grace`.
    pub(crate) fn abandon(mut self, grace: Duration) {
        let pid = self.pid;
        let Some(mut proc) = self.proc.take() else {
            return;
        };
        if proc.running() {
            let _ = crate::sys::kill(pid, libc::SIGTERM);
        }
        tokio::spawn(async move {
            if tokio::time::timeout(grace, proc.exited()).await.is_err() {
                tracing::warn!(
                    pid,
                    "the abandoned new generation did not exit within {grace:?} of SIGTERM: killing it"
                );
                let _ = crate::sys::kill(pid, libc::SIGKILL);
                let _ = proc.exited().await;
            }
            if let Proc::Sat { mut sitter, .. } = proc {
                let _ = sitter.wait().await;
            }
            tracing::info!(pid, "the abandoned new generation is gone (reaped)");
        });
    }

    /// The new generation is on its own now. A sitter is released and reaped first, so
    /// that when this returns the new generation is the service manager's child (call
    /// it before telling the manager `MAINPID=`). A child of this process is reaped as
    /// soon as it exits, should it exit before this process (restarted again, or
    /// stopped, while this one still drains).
    pub(crate) async fn release(mut self) {
        match self.proc.take() {
            Some(Proc::Child(mut child)) => {
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
            Some(Proc::Sat {
                mut sitter,
                channel,
                ..
            }) => {
                drop(channel);
                let _ = sitter.wait().await;
            }
            None => {}
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut proc) = self.proc.take()
            && proc.running()
        {
            tracing::warn!(
                pid = self.pid,
                "a started process was dropped while it still ran: killing it"
            );
            let _ = crate::sys::kill(self.pid, libc::SIGKILL);
        }
    }
}

async fn notify_ready(notify: Option<&notify::Listener>) -> std::io::Result<Option<String>> {
    match notify {
        Some(n) => n.ready().await,
        None => std::future::pending().await,
    }
}

/// An exit status in words, the one way baton says it: `exit status 3`, `killed by
/// signal 9`.
pub(crate) fn describe(status: &std::io::Result<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// Full restart: replaces this process with the program as it is on disk now, same
/// PID, with `listeners` kept open at the descriptors they have (named by
/// `BATON_LISTEN_FDS_AT`: moving them to 3.. would race the runtime's own descriptors,
/// which other threads still use until the exec). Returns only on failure.
pub(crate) fn exec_in_place(
    program: &Program,
    listeners: &[Passed],
    generation: u32,
    ignored_at_exec: &[crate::signal::Signal],
) -> std::io::Error {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    for l in listeners {
        if let Err(e) = crate::sys::set_cloexec(l.fd.as_fd(), false) {
            return e;
        }
    }
    let at: Vec<String> = listeners
        .iter()
        .map(|l| l.fd.as_raw_fd().to_string())
        .collect();
    let mut cmd = std::process::Command::new(&program.exe);
    cmd.args(program.args.iter().skip(1))
        .arg0(program.args.first().cloned().unwrap_or_default())
        .env_clear()
        .envs(inherited_env())
        .env(LISTEN_FDS, listeners.len().to_string())
        .env(LISTEN_FDNAMES, names(listeners))
        .env(LISTEN_PID, std::process::id().to_string())
        .env(LISTEN_FDS_AT, at.join(","))
        .env(GENERATION, generation.to_string());
    let draining: Vec<Generation> = crate::origin::origin()
        .draining
        .iter()
        .copied()
        .filter(Generation::alive)
        .collect();
    if !draining.is_empty() {
        cmd.env(DRAINING, crate::origin::format_generations(&draining));
    }
    if let Some(upstream) = &crate::origin::origin().upstream {
        cmd.env(NOTIFY_SOCKET, upstream);
    }
    for sig in ignored_at_exec {
        let _ = crate::sys::ignore_signal(sig.as_raw());
    }
    let ignored: Vec<String> = ignored_at_exec
        .iter()
        .map(|s| s.as_raw().to_string())
        .collect();
    cmd.env(crate::origin::IGNORED_AT_EXEC, ignored.join(","));
    let err = cmd.exec();
    // Still here: the sockets must not leak into anything started later.
    for l in listeners {
        let _ = crate::sys::set_cloexec(l.fd.as_fd(), true);
    }
    err
}
