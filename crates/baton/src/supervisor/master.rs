//! The master: holds the listening sockets, runs one serving worker, replaces it on a
//! reload without a gap, and keeps a PID that never changes.

use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::control::{self, Command, Reply, Request};
use super::pidfile;
use super::{Readiness, Worker};
use crate::error::check_limit;
use crate::notify::{self, MASTER_PID};
use crate::{Action, Error, Listener, RestartFailure, Signal, SignalMap};

/// Signals passed on to the serving worker unless the signal map uses them.
const FORWARDED: [Signal; 4] = [Signal::Usr1, Signal::Winch, Signal::Tstp, Signal::Alrm];
/// The longest pause before a crashed worker is started again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A worker that served this long before it died resets the backoff: the backoff is
/// for workers that die at start, not for one killed after it served.
const HEALTHY_RUN: Duration = Duration::from_secs(1);

/// Configures a [`Master`].
#[derive(Debug)]
#[must_use = "call .build() to get a Master"]
pub struct MasterBuilder {
    command: Vec<OsString>,
    listeners: Vec<Listener>,
    readiness: Readiness,
    ready_timeout: Duration,
    drain_signal: Signal,
    drain_timeout: Duration,
    signals: SignalMap,
    control: Option<PathBuf>,
    pidfile: Option<PathBuf>,
    reap_orphans: bool,
}

/// A master process: the stable PID in front of a server's workers.
///
/// It holds the listening sockets and starts the command as its worker with them
/// (systemd's socket-activation protocol: `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`)
/// and a private `NOTIFY_SOCKET`, plus `BATON_MASTER_PID` (see [`is_worker`]).
///
/// - **Reload** (`SIGHUP`/`SIGUSR2` by default, or `reload` on the control socket): a
///   new worker starts; once it is ready, the old one gets the drain signal, and
///   `SIGKILL` after the drain timeout. A new worker that exits or misses its ready
///   deadline is killed and the old one serves on.
/// - **Full restart** (an [`Action::FullRestart`] signal, or `restart`): the worker
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
    _pidfile: Option<pidfile::Locked>,
    requests: (
        mpsc::UnboundedSender<Request>,
        mpsc::UnboundedReceiver<Request>,
    ),
}

/// Asks a running [`Master`] for a reload, a full restart or a stop from code (what the
/// control socket does for `baton reload`), and gets the outcome. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    requests: mpsc::UnboundedSender<Request>,
}

/// What a [`MasterHandle`] request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether it succeeded.
    pub ok: bool,
    /// The final line: what happened, or why it failed.
    pub message: String,
    /// The progress lines before it (`spawned gen 3 pid 1234`, `gen 3 pid 1234 ready in
    /// 42 ms`, ...).
    pub progress: Vec<String>,
}

impl MasterHandle {
    /// A graceful reload; resolves once the new worker serves and the old one is gone
    /// (or the reload failed and the old one serves on).
    pub async fn reload(&self) -> Outcome {
        self.ask(Command::Reload).await
    }

    /// A full restart: the worker drains, then a new one starts.
    pub async fn restart(&self) -> Outcome {
        self.ask(Command::Restart).await
    }

    /// Stops the master (its worker drains).
    pub async fn stop(&self) -> Outcome {
        self.ask(Command::Stop).await
    }

    async fn ask(&self, command: Command) -> Outcome {
        let (reply, mut lines) = Reply::channel();
        if self.requests.send(Request { command, reply }).is_err() {
            return Outcome {
                ok: false,
                message: "the master is not running".into(),
                progress: Vec::new(),
            };
        }
        let mut progress = Vec::new();
        while let Some(line) = lines.recv().await {
            if let Some(p) = line.strip_prefix("progress ") {
                progress.push(p.to_owned());
            } else if let Some(m) = line.strip_prefix("ok ") {
                return Outcome {
                    ok: true,
                    message: m.to_owned(),
                    progress,
                };
            } else if let Some(m) = line.strip_prefix("error ") {
                return Outcome {
                    ok: false,
                    message: m.to_owned(),
                    progress,
                };
            }
        }
        Outcome {
            ok: false,
            message: "the master ended without an outcome".into(),
            progress,
        }
    }
}

#[derive(Debug)]
struct Config {
    command: Vec<OsString>,
    readiness: Readiness,
    ready_timeout: Duration,
    drain_signal: Signal,
    drain_timeout: Duration,
    signals: SignalMap,
    forward: Vec<Signal>,
    reap_orphans: bool,
}

/// Whether this process is a worker started by a baton master (`baton run`, or an app
/// that is its own master, see [`Master::this_program`]): it should serve with the
/// sockets it was given rather than become a master itself.
pub fn is_worker() -> bool {
    let ours = std::env::var(crate::activation::LISTEN_PID)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id());
    ours && std::env::var_os(MASTER_PID).is_some_and(|v| !v.is_empty())
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
            ready_timeout: crate::DEFAULT_READY_TIMEOUT,
            drain_signal: Signal::Term,
            drain_timeout: crate::DEFAULT_DRAIN_TIMEOUT,
            signals: SignalMap::default(),
            control: None,
            pidfile: None,
            reap_orphans: std::process::id() == 1,
        }
    }

    /// GoFrame's model: a master whose worker is this very program, started again with
    /// the same arguments. In `main`, check [`is_worker`] first:
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
    ///     std::process::exit(rt.block_on(master.run())?.into());
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
        Ok(Master::builder(command))
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

impl MasterBuilder {
    /// Adds a listening socket to pass to every worker (in the order added, from
    /// descriptor 3, under its name).
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// How a worker says it is ready (default: [`Readiness::Notify`]).
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// How long a new worker may take to be ready (default 30 s); past it, it is killed.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The signal that tells a worker to drain and exit (default `SIGTERM`); also the
    /// one a worker gets should the master die.
    pub fn drain_signal(mut self, signal: Signal) -> Self {
        self.drain_signal = signal;
        self
    }

    /// How long a draining worker may take before it is killed (default 30 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Which signals reload ([`Action::Restart`]), fully restart
    /// ([`Action::FullRestart`]), stop ([`Action::Shutdown`], [`Action::ShutdownNow`])
    /// or kill ([`Action::Hammer`]); signals mapped to [`Action::User`] are passed on
    /// to the worker. Default: [`SignalMap::default`].
    pub fn signals(mut self, map: SignalMap) -> Self {
        self.signals = map;
        self
    }

    /// Serves the control protocol on a Unix socket at `path` (mode 0600); see
    /// [`control`](super::control) for the protocol.
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.control = Some(path.into());
        self
    }

    /// Writes the master's PID to `path`, locked while it runs: a second master with
    /// the same pidfile is refused ([`Error::MasterRunning`]); a pidfile left by a
    /// dead master is replaced. Removed at exit.
    pub fn pidfile(mut self, path: impl Into<PathBuf>) -> Self {
        self.pidfile = Some(path.into());
        self
    }

    /// Reaps every orphaned process that is re-parented to the master (it becomes a
    /// child subreaper). On by default when the master is PID 1 (in a container), where
    /// orphans are re-parented to it anyway. It reaps every exited child that is not one
    /// of its workers: a program that is its own master and starts other children
    /// itself should leave this off (or wait for them before they can exit unseen).
    pub fn reap_orphans(mut self, on: bool) -> Self {
        self.reap_orphans = on;
        self
    }

    /// Checks the settings, takes the pidfile and binds the control socket.
    ///
    /// # Errors
    ///
    /// [`Error::Worker`] if the command is empty or not an executable,
    /// [`Error::InvalidDuration`] for a timeout out of range, [`Error::Master`] for no
    /// listeners, [`Error::MasterRunning`] if another master holds the pidfile,
    /// [`Error::Pidfile`] or [`Error::Io`] if the pidfile or control socket cannot be
    /// created.
    pub fn build(self) -> Result<Master, Error> {
        let Some(program) = self.command.first() else {
            return Err(Error::Worker(RestartFailure::Spawn(
                "no command given".into(),
            )));
        };
        super::worker::resolve(program).map_err(Error::Worker)?;
        check_limit("ready timeout", self.ready_timeout)?;
        check_limit("drain timeout", self.drain_timeout)?;
        if self.listeners.is_empty() {
            return Err(Error::Master(
                "a master needs at least one listener to pass to its workers".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for l in &self.listeners {
            if !names.insert(l.name()) {
                return Err(Error::DuplicateListenerName {
                    name: l.name().to_owned(),
                });
            }
        }
        let forward: Vec<Signal> = FORWARDED
            .into_iter()
            .filter(|s| self.signals.action(*s).is_none())
            .chain(
                self.signals
                    .iter()
                    .filter(|(_, a)| *a == Action::User)
                    .map(|(s, _)| s),
            )
            .collect();
        let mut pidfile = self
            .pidfile
            .as_deref()
            .map(pidfile::Locked::acquire)
            .transpose()?;
        if let Some(p) = pidfile.as_mut() {
            let stop = [Action::Shutdown, Action::ShutdownNow]
                .into_iter()
                .find_map(|a| self.signals.signal_for(a));
            p.write_signals(self.signals.signal_for(Action::Restart), stop);
        }
        let control = self
            .control
            .as_deref()
            .map(|p| {
                control::Bound::bind(p)
                    .map_err(|e| Error::io(format!("control socket {}", p.display()), e))
            })
            .transpose()?;
        if self.reap_orphans {
            crate::sys::become_subreaper().map_err(|e| Error::io("become a child subreaper", e))?;
        }
        Ok(Master {
            cfg: Config {
                command: self.command,
                readiness: self.readiness,
                ready_timeout: self.ready_timeout,
                drain_signal: self.drain_signal,
                drain_timeout: self.drain_timeout,
                signals: self.signals,
                forward,
                reap_orphans: self.reap_orphans,
            },
            listeners: self.listeners,
            control,
            _pidfile: pidfile,
            requests: mpsc::unbounded_channel(),
        })
    }
}

/// One worker generation.
#[derive(Debug)]
struct Gen {
    worker: Worker,
    generation: u32,
    since: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    First,
    Reload,
    Restart,
    Respawn,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::First => "start",
            Kind::Reload => "reload",
            Kind::Restart => "restart",
            Kind::Respawn => "respawn",
        }
    }
}

/// A worker started and not yet ready.
#[derive(Debug)]
struct Starting {
    new: Gen,
    kind: Kind,
    asked: Instant,
    replies: Vec<Reply>,
}

/// A worker told to drain.
#[derive(Debug, Clone, Copy)]
struct Draining {
    pid: u32,
    generation: u32,
    since: Instant,
}

#[derive(Debug)]
struct DrainEnd {
    pid: u32,
    generation: u32,
    status: io::Result<ExitStatus>,
    killed: bool,
    took: Duration,
}

#[derive(Debug)]
struct LastAttempt {
    kind: Kind,
    ok: bool,
    took: Duration,
    at: Instant,
    detail: String,
}

/// Everything the loop knows.
#[derive(Debug)]
struct State {
    started: Instant,
    next_generation: u32,
    current: Option<Gen>,
    starting: Option<Starting>,
    draining: Vec<Draining>,
    drains: JoinSet<DrainEnd>,
    /// Replies waiting for the drain of each PID to end.
    drain_replies: Vec<(u32, Vec<Reply>)>,
    /// Reloads asked for while a worker was starting: one more reload follows.
    follow_up: Vec<Reply>,
    /// A full restart waits for this PID to exit, then starts a worker.
    restart_after: Option<(u32, Instant, Vec<Reply>)>,
    respawn_at: Option<Instant>,
    backoff: Duration,
    stopping: Option<Stopping>,
    last: Option<LastAttempt>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// The status of the last worker that ended while it served (the exit code when
    /// the master stops with none serving).
    last_exit: Option<io::Result<ExitStatus>>,
    hammer: watch::Sender<bool>,
}

#[derive(Debug)]
struct Stopping {
    /// The worker that served when the stop came: its status is the master's.
    pid: Option<u32>,
    status: Option<io::Result<ExitStatus>>,
    replies: Vec<Reply>,
}

enum Event {
    Signal(Signal),
    Request(Request),
    Ready(Result<(), RestartFailure>),
    Exited(io::Result<ExitStatus>),
    Drained(DrainEnd),
    Respawn,
    Reap,
}

impl Master {
    /// Starts the first worker, waits until it is ready, then supervises until a stop;
    /// returns the exit code for the master: the last serving worker's status (128 +
    /// the signal if one ended it), as a shell reports it.
    ///
    /// # Errors
    ///
    /// [`Error::Worker`] if the first worker cannot start or does not become ready;
    /// [`Error::Io`] if the signal handlers cannot be installed.
    pub async fn run(self) -> Result<u8, Error> {
        let Master {
            requests: (req_tx, mut req_rx),
            cfg,
            listeners,
            control,
            _pidfile,
        } = self;
        let me = std::process::id();
        let control = control
            .map(|c| {
                let path = c.path().display().to_string();
                c.serve()
                    .map_err(|e| Error::io(format!("control socket {path}"), e))
            })
            .transpose()?;
        let (sig_tx, mut sig_rx) = mpsc::unbounded_channel();
        let mut handlers = JoinSet::new();
        let mut watched: Vec<Signal> = cfg.signals.iter().map(|(s, _)| s).collect();
        watched.extend(cfg.forward.iter().copied());
        watched.sort_by_key(|s| s.as_raw());
        watched.dedup();
        for sig in watched {
            let mut stream = signal(SignalKind::from_raw(sig.as_raw()))
                .map_err(|e| Error::io(format!("install a handler for {sig}"), e))?;
            let tx = sig_tx.clone();
            handlers.spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).is_err() {
                        break;
                    }
                }
            });
        }
        let mut sigchld = if cfg.reap_orphans {
            Some(
                signal(SignalKind::child())
                    .map_err(|e| Error::io("install a handler for SIGCHLD", e))?,
            )
        } else {
            None
        };
        for l in &listeners {
            info!(
                pid = me,
                listener = l.name(),
                "master listening on [{}]{}",
                l.local_addr(),
                if l.is_inherited() { " (inherited)" } else { "" }
            );
        }
        if let Some(c) = &control {
            info!(pid = me, "control socket at {}", c.path().display());
        }

        let mut st = State {
            started: Instant::now(),
            next_generation: 1,
            current: None,
            starting: None,
            draining: Vec::new(),
            drains: JoinSet::new(),
            drain_replies: Vec::new(),
            follow_up: Vec::new(),
            restart_after: None,
            respawn_at: None,
            backoff: Duration::from_millis(100),
            stopping: None,
            last: None,
            reloads_ok: 0,
            reloads_failed: 0,
            last_exit: None,
            hammer: watch::channel(false).0,
        };
        let ctx = Ctx {
            cfg: &cfg,
            listeners: &listeners,
        };
        ctx.start(&mut st, Kind::First, Vec::new())
            .map_err(Error::Worker)?;
        let mut reap_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            if st.stopping.is_some() && st.drains.is_empty() && st.starting.is_none() {
                break;
            }
            let event = tokio::select! {
                Some(sig) = sig_rx.recv() => Event::Signal(sig),
                Some(req) = req_rx.recv() => Event::Request(req),
                () = accept(control.as_ref(), &req_tx) => continue,
                res = ready(&mut st.starting, &cfg) => Event::Ready(res),
                status = exited(&mut st.current) => Event::Exited(status),
                Some(end) = st.drains.join_next(), if !st.drains.is_empty() => match end {
                    Ok(end) => Event::Drained(end),
                    Err(e) => { warn!(pid = me, error = %e, "a drain task failed"); continue }
                },
                () = sleep_until(st.respawn_at) => Event::Respawn,
                _ = recv_sigchld(&mut sigchld) => Event::Reap,
                _ = reap_tick.tick(), if cfg.reap_orphans => Event::Reap,
            };
            match event {
                Event::Signal(sig) => ctx.on_signal(&mut st, sig),
                Event::Request(req) => ctx.on_request(&mut st, req),
                Event::Ready(res) => {
                    if let Err(e) = ctx.on_ready(&mut st, res) {
                        for r in st.follow_up.drain(..) {
                            r.error(format!("the first worker failed: {e}"));
                        }
                        return Err(Error::Worker(e));
                    }
                    if !st.follow_up.is_empty() && st.starting.is_none() {
                        let replies = std::mem::take(&mut st.follow_up);
                        ctx.reload_for(&mut st, replies);
                    }
                }
                Event::Exited(status) => ctx.on_exit(&mut st, status),
                Event::Drained(end) => ctx.on_drained(&mut st, end),
                Event::Respawn => {
                    st.respawn_at = None;
                    // A reload or restart got there first.
                    if st.current.is_some() || st.starting.is_some() {
                        continue;
                    }
                    if let Err(e) = ctx.start(&mut st, Kind::Respawn, Vec::new()) {
                        warn!(pid = me, "the new worker failed to start: {e}");
                        ctx.schedule_respawn(&mut st);
                    }
                }
                Event::Reap => {
                    let keep = st.known_pids();
                    for pid in crate::sys::reap_orphans(&keep, 64) {
                        info!(pid = me, orphan = pid, "reaped an orphaned process");
                    }
                }
            }
        }
        // Requests that came too late: the master is gone once they could be served.
        req_rx.close();
        while let Ok(req) = req_rx.try_recv() {
            match req.command {
                Command::Stop => req.reply.ok("stopped (by an earlier request)"),
                _ => req.reply.error("the master stopped"),
            }
        }
        let stopping = st.stopping.take().unwrap_or(Stopping {
            pid: None,
            status: None,
            replies: Vec::new(),
        });
        let status = stopping.status.or(st.last_exit.take());
        let code = status.as_ref().map_or(0, exit_code);
        info!(
            pid = me,
            status = %status.as_ref().map_or_else(|| "none".to_owned(), describe),
            "stopped"
        );
        for r in &stopping.replies {
            r.ok(format!(
                "stopped; the worker {}",
                status.as_ref().map_or_else(
                    || "was not running".to_owned(),
                    |s| format!("ended with {}", describe(s))
                )
            ));
        }
        drop(stopping.replies);
        if let Some(c) = &control {
            c.flush(Duration::from_secs(1)).await;
        }
        handlers.abort_all();
        Ok(code)
    }
}

/// The parts of the master the handlers read.
struct Ctx<'a> {
    cfg: &'a Config,
    listeners: &'a [Listener],
}

impl Ctx<'_> {
    /// Starts a worker of the next generation (not yet ready).
    fn start(&self, st: &mut State, kind: Kind, replies: Vec<Reply>) -> Result<(), RestartFailure> {
        let generation = st.next_generation;
        let env = vec![(
            OsString::from(MASTER_PID),
            OsString::from(std::process::id().to_string()),
        )];
        let asked = Instant::now();
        match Worker::spawn_with(
            &self.cfg.command,
            self.listeners,
            Some(self.cfg.drain_signal),
            env,
        ) {
            Ok(worker) => {
                st.next_generation += 1;
                let pid = worker.pid();
                info!(
                    pid = std::process::id(),
                    worker = pid,
                    generation,
                    "{}: started worker gen {generation}",
                    kind.word()
                );
                for r in &replies {
                    r.progress(format!("spawned gen {generation} pid {pid}"));
                }
                st.starting = Some(Starting {
                    new: Gen {
                        worker,
                        generation,
                        since: asked,
                    },
                    kind,
                    asked,
                    replies,
                });
                Ok(())
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

    fn on_signal(&self, st: &mut State, sig: Signal) {
        let me = std::process::id();
        match self.cfg.signals.action(sig) {
            Some(Action::Restart) => {
                info!(pid = me, "{sig}: reload");
                self.reload(st, Reply::none());
            }
            Some(Action::FullRestart) => {
                info!(pid = me, "{sig}: full restart");
                self.full_restart(st, Reply::none());
            }
            Some(Action::Shutdown | Action::ShutdownNow) => {
                if st.stopping.is_some() {
                    warn!(
                        pid = me,
                        "{sig} again while stopping: killing the workers that still run"
                    );
                    self.hammer(st);
                } else {
                    info!(pid = me, "{sig}: stopping; the worker drains");
                    self.stop(st, Reply::none());
                }
            }
            Some(Action::Hammer) => {
                warn!(pid = me, "{sig}: killing the workers");
                if st.stopping.is_none() {
                    self.stop(st, Reply::none());
                }
                self.hammer(st);
            }
            Some(Action::User) | None => {
                if let Some(cur) = st.current.as_mut() {
                    if let Err(e) = cur.worker.signal(sig) {
                        warn!(pid = me, worker = cur.worker.pid(), error = %e, "cannot pass {sig} on");
                    }
                }
            }
        }
    }

    fn on_request(&self, st: &mut State, req: Request) {
        match req.command {
            Command::Status => {
                status_lines(st, self.listeners, &req.reply);
                req.reply.ok("status");
            }
            Command::Reload => self.reload(st, req.reply),
            Command::Restart => self.full_restart(st, req.reply),
            Command::Stop => {
                if let Some(s) = st.stopping.as_mut() {
                    req.reply.progress("already stopping");
                    s.replies.push(req.reply);
                } else {
                    self.stop(st, req.reply);
                }
            }
        }
    }

    fn reload(&self, st: &mut State, reply: Reply) {
        self.reload_for(st, vec![reply]);
    }

    fn reload_for(&self, st: &mut State, mut replies: Vec<Reply>) {
        let me = std::process::id();
        if st.stopping.is_some() {
            for r in &replies {
                r.error("the master is stopping");
            }
            return;
        }
        if let Some(s) = &st.starting {
            // The worker starting now may run what was on disk before this request:
            // one more reload follows it, for every request that came meanwhile.
            info!(
                pid = me,
                "reload asked during a {}: one more follows it",
                s.kind.word()
            );
            for r in &replies {
                r.progress(format!(
                    "a reload follows the {} in progress (gen {} pid {})",
                    s.kind.word(),
                    s.new.generation,
                    s.new.worker.pid()
                ));
            }
            st.follow_up.append(&mut replies);
            return;
        }
        if let Some((_, _, waiting)) = st.restart_after.as_mut() {
            for r in replies {
                r.progress("joined the full restart in progress");
                waiting.push(r);
            }
            return;
        }
        let kind = if st.current.is_some() {
            Kind::Reload
        } else {
            st.respawn_at = None;
            Kind::Respawn
        };
        notify::upstream(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        if let Err(e) = self.start(st, kind, replies) {
            st.record(kind, false, Duration::ZERO, e.to_string());
            notify::upstream("READY=1");
            if st.current.is_some() {
                warn!(pid = me, "reload failed, the serving worker serves on: {e}");
            } else {
                warn!(pid = me, "reload failed, and no worker serves: {e}");
                self.schedule_respawn(st);
            }
        }
    }

    fn full_restart(&self, st: &mut State, reply: Reply) {
        if st.stopping.is_some() {
            reply.error("the master is stopping");
            return;
        }
        if st.starting.is_some() || st.restart_after.is_some() {
            warn!(
                pid = std::process::id(),
                "full restart refused: a reload or restart is in progress"
            );
            reply.error("a reload or restart is in progress; try again when it ended");
            return;
        }
        notify::upstream(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        match st.current.take() {
            Some(cur) => {
                let pid = cur.worker.pid();
                reply.progress(format!(
                    "draining gen {} pid {pid}{}; clients wait in the accept queue",
                    cur.generation,
                    sockets_note(pid, self.listeners.len())
                ));
                st.restart_after = Some((pid, Instant::now(), vec![reply]));
                self.drain(st, cur);
            }
            None => {
                st.respawn_at = None;
                if let Err(e) = self.start(st, Kind::Restart, vec![reply]) {
                    st.record(Kind::Restart, false, Duration::ZERO, e.to_string());
                    notify::upstream("READY=1");
                    self.schedule_respawn(st);
                }
            }
        }
    }

    fn stop(&self, st: &mut State, reply: Reply) {
        notify::upstream("STOPPING=1");
        st.respawn_at = None;
        // The worker of a full restart in progress is draining: its status is ours.
        let pid = st
            .current
            .as_ref()
            .map(|c| c.worker.pid())
            .or(st.restart_after.as_ref().map(|(p, _, _)| *p));
        if let Some(s) = st.starting.take() {
            for r in &s.replies {
                r.error(format!(
                    "{} abandoned: the master is stopping",
                    s.kind.word()
                ));
            }
            // It may have accepted connections already (a delay readiness): it drains
            // like any other.
            self.drain(st, s.new);
        }
        if let Some((_, _, replies)) = st.restart_after.take() {
            for r in replies {
                r.error("restart abandoned: the master is stopping");
            }
        }
        for r in st.follow_up.drain(..) {
            r.error("reload abandoned: the master is stopping");
        }
        if let Some(cur) = st.current.take() {
            reply.progress(format!(
                "draining gen {} pid {}{}",
                cur.generation,
                cur.worker.pid(),
                sockets_note(cur.worker.pid(), self.listeners.len())
            ));
            self.drain(st, cur);
        }
        st.stopping = Some(Stopping {
            pid,
            status: None,
            replies: vec![reply],
        });
    }

    fn hammer(&self, st: &mut State) {
        st.hammer.send_replace(true);
    }

    /// Sends the drain signal to `g` and waits for it in a task: `SIGKILL` after the
    /// drain timeout, or at once on a hammer.
    fn drain(&self, st: &mut State, mut g: Gen) {
        let (sig, limit) = (self.cfg.drain_signal, self.cfg.drain_timeout);
        let pid = g.worker.pid();
        if let Err(e) = g.worker.signal(sig) {
            warn!(worker = pid, error = %e, "cannot send {sig}");
        }
        st.draining.push(Draining {
            pid,
            generation: g.generation,
            since: Instant::now(),
        });
        let mut hammer = st.hammer.subscribe();
        st.drains.spawn(async move {
            let t0 = Instant::now();
            let mut killed = false;
            let status = tokio::select! {
                status = g.worker.wait() => status,
                () = tokio::time::sleep(limit) => {
                    warn!(worker = pid, "the worker did not exit within {limit:?} of {sig}: killing it");
                    killed = true;
                    let _ = g.worker.kill();
                    g.worker.wait().await
                }
                () = async { let _ = hammer.wait_for(|h| *h).await; } => {
                    killed = true;
                    let _ = g.worker.kill();
                    g.worker.wait().await
                }
            };
            // What it started and left behind would go on holding the sockets.
            g.worker.kill_leftovers();
            DrainEnd {
                pid,
                generation: g.generation,
                status,
                killed,
                took: t0.elapsed(),
            }
        });
    }

    fn on_ready(
        &self,
        st: &mut State,
        res: Result<(), RestartFailure>,
    ) -> Result<(), RestartFailure> {
        let me = std::process::id();
        let Some(s) = st.starting.take() else {
            return Ok(());
        };
        let took = s.asked.elapsed();
        let (generation, pid) = (s.new.generation, s.new.worker.pid());
        match res {
            Ok(()) => {
                info!(
                    pid = me,
                    worker = pid,
                    generation,
                    "worker gen {generation} ready in {}",
                    ms(took)
                );
                for r in &s.replies {
                    r.progress(format!("gen {generation} pid {pid} ready in {}", ms(took)));
                }
                notify::upstream("READY=1");
                st.respawn_at = None;
                st.last_exit = None;
                let old = st.current.replace(Gen {
                    since: Instant::now(),
                    ..s.new
                });
                match old {
                    Some(old) => {
                        let old_pid = old.worker.pid();
                        info!(
                            pid = me,
                            worker = pid,
                            "reloaded: gen {generation} serves; gen {} (pid {old_pid}) drains",
                            old.generation
                        );
                        for r in &s.replies {
                            r.progress(format!(
                                "draining gen {} pid {old_pid}{}",
                                old.generation,
                                sockets_note(old_pid, self.listeners.len())
                            ));
                        }
                        st.drain_replies.push((old_pid, s.replies));
                        self.drain(st, old);
                    }
                    None => {
                        for r in &s.replies {
                            r.ok(format!("gen {generation} pid {pid} serving"));
                        }
                    }
                }
                if s.kind != Kind::First && s.kind != Kind::Respawn {
                    st.record(s.kind, true, took, format!("gen {generation} pid {pid}"));
                }
                Ok(())
            }
            Err(e) => {
                warn!(
                    pid = me,
                    worker = pid,
                    "{} failed{}: worker gen {generation}: {e}",
                    s.kind.word(),
                    if st.current.is_some() {
                        ", the serving worker serves on"
                    } else {
                        ""
                    }
                );
                for r in &s.replies {
                    r.error(format!(
                        "{} failed: {e}{}",
                        s.kind.word(),
                        if st.current.is_some() {
                            "; the serving worker serves on"
                        } else {
                            ""
                        }
                    ));
                }
                // One that missed its deadline may have accepted connections: it
                // drains like any other (one that exited is reaped at once).
                self.drain(st, s.new);
                match s.kind {
                    Kind::First => return Err(e),
                    Kind::Reload | Kind::Restart => notify::upstream("READY=1"),
                    Kind::Respawn => {}
                }
                if st.current.is_none() {
                    self.schedule_respawn(st);
                }
                if s.kind != Kind::Respawn {
                    st.record(s.kind, false, took, e.to_string());
                }
                Ok(())
            }
        }
    }

    fn on_exit(&self, st: &mut State, status: io::Result<ExitStatus>) {
        let Some(cur) = st.current.take() else {
            return;
        };
        cur.worker.kill_leftovers();
        let ran = cur.since.elapsed();
        if ran > HEALTHY_RUN {
            st.backoff = Duration::from_millis(100);
        }
        st.last_exit = Some(status);
        let status = st.last_exit.as_ref().map_or_else(String::new, describe);
        if let Some(s) = &st.starting {
            // A reload under way: its worker takes over once ready (or a respawn
            // follows its failure).
            warn!(
                pid = std::process::id(),
                worker = cur.worker.pid(),
                status,
                "the worker exited unexpectedly; gen {} (starting) takes over",
                s.new.generation
            );
            return;
        }
        warn!(
            pid = std::process::id(),
            worker = cur.worker.pid(),
            status,
            "the worker exited unexpectedly; starting a new one in {:?}",
            st.backoff
        );
        self.schedule_respawn(st);
    }

    fn schedule_respawn(&self, st: &mut State) {
        if st.stopping.is_some() {
            return;
        }
        st.respawn_at = Some(Instant::now() + st.backoff);
        st.backoff = (st.backoff * 2).min(MAX_BACKOFF);
    }

    fn on_drained(&self, st: &mut State, end: DrainEnd) {
        let me = std::process::id();
        st.draining.retain(|d| d.pid != end.pid);
        let how = if end.killed {
            format!("killed after {}", secs(end.took))
        } else {
            format!(
                "exited ({}) after {}",
                describe(&end.status),
                secs(end.took)
            )
        };
        info!(pid = me, worker = end.pid, "gen {} {how}", end.generation);
        if let Some(i) = st.drain_replies.iter().position(|(p, _)| *p == end.pid) {
            let (_, replies) = st.drain_replies.swap_remove(i);
            let serving = st.current.as_ref().map_or_else(
                || "no worker serves now (the master is stopping, or the new one died)".to_owned(),
                |c| format!("gen {} pid {} serving", c.generation, c.worker.pid()),
            );
            for r in replies {
                r.progress(format!("gen {} {how}", end.generation));
                r.ok(format!("reloaded: {serving}"));
            }
        }
        if let Some(s) = st.stopping.as_mut() {
            if s.pid == Some(end.pid) {
                for r in &s.replies {
                    r.progress(format!("gen {} {how}", end.generation));
                }
                s.status = Some(end.status);
                return;
            }
        }
        if st
            .restart_after
            .as_ref()
            .is_some_and(|(p, _, _)| *p == end.pid)
        {
            let (_, t0, replies) =
                st.restart_after
                    .take()
                    .unwrap_or((0, Instant::now(), Vec::new()));
            for r in &replies {
                r.progress(format!("gen {} {how}", end.generation));
            }
            if let Err(e) = self.start(st, Kind::Restart, replies) {
                warn!(pid = me, "restart: the new worker failed to start: {e}");
                st.record(Kind::Restart, false, t0.elapsed(), e.to_string());
                notify::upstream("READY=1");
                self.schedule_respawn(st);
            } else if let Some(s) = st.starting.as_mut() {
                s.asked = t0;
            }
        }
    }
}

impl State {
    fn record(&mut self, kind: Kind, ok: bool, took: Duration, detail: String) {
        if ok {
            self.reloads_ok += 1;
        } else {
            self.reloads_failed += 1;
        }
        self.last = Some(LastAttempt {
            kind,
            ok,
            took,
            at: Instant::now(),
            detail,
        });
    }

    /// The PIDs tokio waits for (the master's own workers): never reaped as orphans.
    fn known_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.draining.iter().map(|d| d.pid).collect();
        pids.extend(self.current.as_ref().map(|c| c.worker.pid()));
        pids.extend(self.starting.as_ref().map(|s| s.new.worker.pid()));
        pids
    }
}

fn status_lines(st: &State, listeners: &[Listener], reply: &Reply) {
    let now = Instant::now();
    let state = if st.stopping.is_some() {
        "stopping"
    } else if st.restart_after.is_some() {
        "restarting"
    } else if let Some(s) = &st.starting {
        s.kind.word()
    } else if st.current.is_some() {
        "serving"
    } else {
        "respawning"
    };
    reply.line(format!("status master_pid {}", std::process::id()));
    reply.line(format!(
        "status uptime_ms {}",
        now.duration_since(st.started).as_millis()
    ));
    reply.line(format!("status state {state}"));
    reply.line(format!(
        "status generation {}",
        st.current.as_ref().map_or(0, |c| c.generation)
    ));
    let worker = |role: &str, generation: u32, pid: u32, since: Instant| {
        reply.line(format!(
            "status worker {generation} {pid} {role} {} {}",
            now.duration_since(since).as_millis(),
            open_sockets(pid).map_or_else(
                || "-".to_owned(),
                |n| n.saturating_sub(listeners.len()).to_string()
            )
        ));
    };
    if let Some(c) = &st.current {
        worker("serving", c.generation, c.worker.pid(), c.since);
    }
    if let Some(s) = &st.starting {
        worker(
            "starting",
            s.new.generation,
            s.new.worker.pid(),
            s.new.since,
        );
    }
    for d in &st.draining {
        worker("draining", d.generation, d.pid, d.since);
    }
    for l in listeners {
        reply.line(format!("status listener {} {}", l.name(), l.local_addr()));
    }
    reply.line(format!(
        "status reloads {} {}",
        st.reloads_ok, st.reloads_failed
    ));
    if let Some(o) = &st.last {
        reply.line(format!(
            "status last {} {} {} {} {}",
            o.kind.word(),
            if o.ok { "ok" } else { "failed" },
            o.took.as_millis(),
            now.duration_since(o.at).as_millis(),
            o.detail.replace('\n', " ")
        ));
    }
}

/// Sockets a process holds open (listeners included), from `/proc`; `None` where it
/// cannot be read.
fn open_sockets(pid: u32) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
            })
            .count(),
    )
}

/// ": N open sockets" besides the listeners, where known.
fn sockets_note(pid: u32, listeners: usize) -> String {
    open_sockets(pid).map_or_else(String::new, |n| {
        format!(": {} open sockets", n.saturating_sub(listeners))
    })
}

async fn accept(control: Option<&control::Server>, requests: &mpsc::UnboundedSender<Request>) {
    match control {
        Some(c) => c.accept(requests).await,
        None => std::future::pending().await,
    }
}

async fn ready(starting: &mut Option<Starting>, cfg: &Config) -> Result<(), RestartFailure> {
    match starting {
        Some(s) => s.new.worker.ready(cfg.readiness, cfg.ready_timeout).await,
        None => std::future::pending().await,
    }
}

async fn exited(current: &mut Option<Gen>) -> io::Result<ExitStatus> {
    match current {
        Some(c) => c.worker.wait().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn recv_sigchld(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn describe(status: &io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// A shell's view of an exit status: the code, or 128 + the signal.
fn exit_code(status: &io::Result<ExitStatus>) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => u8::try_from(code).unwrap_or(1),
            (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(1),
            _ => 1,
        },
        Err(_) => 1,
    }
}
