//! A coordinator's life: ready, serving (restarts carried out, serving on when one
//! fails), and its end (a shutdown, the drain of a hand-over, or a full restart).

use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::drain::{self, DrainKind, DrainPlan, Intake, Parts};
use super::{Cmd, DrainCause, End, Shutdown, delegate};
use crate::command::{Command, Escalation, SignalIntake};
use crate::error::Error;
use crate::notify;
use crate::report::Report;
use crate::signal::{Action, SignalMap};
use crate::supervisor::control::Request;
use crate::sync::lock;

impl Shutdown {
    /// Reports this generation ready, then serves until a trigger ends it: carries out
    /// graceful restarts (serving on when one fails), then the shutdown, the hand-over
    /// drain or the full restart; returns the report of the drain.
    ///
    /// Ready means: the pidfile (if any) is written, and whoever started this process
    /// is told `READY=1` (systemd by its notify protocol; at a restart, the previous
    /// generation, which drains only then). Call it once every server is serving
    /// ([`Server::run`](crate::http::Server::run) does).
    ///
    /// Installs the handlers of the mapped signals when called (from then on those
    /// signals no longer kill the process). Servers keep serving while it waits.
    ///
    /// After a graceful restart the returned [`Report::handed_over_to`] names the new
    /// generation; the process should exit with [`Report::exit_code`]. A full restart
    /// does not return: the process executes the program anew (unless that fails: the
    /// report then says why and its exit code is non-zero).
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRunning`] on a second call; [`Error::Io`] if a signal handler
    /// cannot be installed; [`Error::Pidfile`] if the pidfile cannot be written.
    pub async fn run(&self) -> Result<Report, Error> {
        let pending = lock(&self.inner.pending)
            .take()
            .ok_or(Error::AlreadyRunning)?;
        self.install_signal_handlers()?;
        let mut triggers = Vec::new();
        for trigger in pending.triggers {
            let tx = self.inner.commands.clone();
            triggers.push(tokio::spawn(async move {
                trigger.await;
                let _ = tx.send(Command::stop("shutdown trigger completed", None));
            }));
        }
        crate::activation::close_unclaimed();
        self.start_inbound();
        self.follow_master();
        let taken_over = self.announce_ready()?;
        self.wait_for_predecessor();
        let mut commands = pending.commands;
        if !taken_over {
            // The previous generation gave up on this one and serves on: leave, with
            // what was accepted meanwhile drained, the accept queue left to it.
            let _ = self.inner.commands.send(Command::stop(
                "the previous generation gave up on this one and serves on",
                None,
            ));
        }
        let end = self.serve(&mut commands).await;
        // A previous generation still standing by for this one can go: this one hands
        // over in turn, restarts in full, or stops.
        self.release_predecessor();
        let full_restart = matches!(end, End::FullRestart(_));
        let mut escalation = Escalation::new(crate::origin::is_worker());
        if let End::Shutdown(stop) = &end {
            escalation.hammers(stop);
        }
        let plan = self.plan(end);
        let cause = match plan.kind {
            DrainKind::Shutdown => DrainCause::Shutdown,
            DrainKind::HandedOver { .. } | DrainKind::FullRestart | DrainKind::GivenUp => {
                DrainCause::Restart
            }
        };
        // Known before the drain starts: code that wakes up on `draining` reads it.
        let successor = self.inner.life.drain(cause);
        let inner = &self.inner;
        let parts = Parts {
            tracker: &inner.tracker,
            listeners: &inner.listeners,
            hooks: &inner.hooks,
            pidfile: inner.settings.pidfile.as_deref(),
        };
        let mut intake = Intake {
            commands: &mut commands,
            user_hooks: &inner.user_hooks,
            successor,
            life: &inner.life,
            escalation,
        };
        let stopping = matches!(plan.kind, DrainKind::Shutdown);
        let timeout = plan.timeout;
        let mut report = drain::drain(plan, parts, &mut intake).await;
        if stopping {
            // A stop that came during a probation went to the new generation too: this
            // one (the main process still) ends after it.
            self.wait_successor_gone(timeout).await;
        }
        self.report_end().await;
        if full_restart {
            self.exec_full_restart(&mut report);
        }
        for task in triggers {
            task.abort();
        }
        lock(&self.inner.signal_intake).take();
        Ok(report)
    }

    /// What the drain is to do, from how serving ended.
    fn plan(&self, end: End) -> DrainPlan {
        let inner = &self.inner;
        let (kind, reason, timeout, skip_delay, hammered) = match end {
            End::Shutdown(stop) if inner.life.given_up() => {
                (DrainKind::GivenUp, stop.reason, stop.deadline, true, false)
            }
            End::Shutdown(stop) => (
                DrainKind::Shutdown,
                stop.reason,
                stop.deadline,
                stop.skip_delay,
                false,
            ),
            End::Hammer(reason) => (DrainKind::Shutdown, reason, None, true, true),
            End::HandedOver(r) => (
                DrainKind::HandedOver { to: r.pid },
                format!("restart: handed over to pid {}", r.pid),
                None,
                true,
                false,
            ),
            End::FullRestart(reason) => (DrainKind::FullRestart, reason, None, true, false),
        };
        DrainPlan {
            kind,
            reason,
            timeout: timeout.unwrap_or(inner.settings.drain_timeout),
            delay: if skip_delay {
                Duration::ZERO
            } else {
                inner.settings.drain_delay
            },
            hammered,
        }
    }

    /// Tells whoever started this process that it is ready; `false` when the previous
    /// generation gave up on it (ready too late) and serves on.
    fn announce_ready(&self) -> Result<bool, Error> {
        let pid = std::process::id();
        let write_pidfile = || -> Result<(), Error> {
            if let Some(path) = &self.inner.settings.pidfile {
                crate::pidfile::write(path, pid).map_err(|source| Error::Pidfile {
                    path: path.clone(),
                    source,
                })?;
            }
            Ok(())
        };
        let origin = crate::origin::origin();
        match &origin.parent {
            // A new generation: the previous one decides whether it takes over, and then
            // writes the pidfile and tells the service manager itself.
            Some(parent) => {
                let mut ready = String::from("READY=1");
                if let Some(sig) = self.inner.settings.signals.signal_for(Action::Restart) {
                    ready.push_str(&format!("\n{}={sig}", crate::origin::RESTART_SIGNAL));
                }
                if let Err(e) = notify::send(parent, &ready) {
                    match origin.draining.last().filter(|g| g.alive()) {
                        // It runs but no longer listens: it gave up on this one (ready
                        // too late) and serves on. Claiming the service now would take
                        // it from the generation that serves it.
                        Some(previous) => {
                            warn!(
                                pid,
                                previous = previous.pid,
                                error = %e,
                                "the previous generation no longer waits for this one (it gave up on it); not taking over: this one drains and exits"
                            );
                            self.inner.life.give_up();
                            return Ok(false);
                        }
                        // It is gone: nobody else will tell the manager.
                        None => {
                            warn!(pid, error = %e, "the previous generation is gone; this one takes over the service");
                            write_pidfile()?;
                            notify::ready_as(pid);
                        }
                    }
                }
            }
            None => {
                write_pidfile()?;
                notify::ready();
                notify::status(&format!(
                    "serving: generation {} (pid {pid})",
                    origin.generation
                ));
            }
        }
        let listeners: Vec<String> = lock(&self.inner.listeners)
            .iter()
            .map(|l| l.name.clone())
            .collect();
        info!(
            pid,
            generation = origin.generation,
            ?listeners,
            "server ready"
        );
        Ok(true)
    }

    /// Serves until a command ends it; carries out graceful restarts on the way.
    async fn serve(&self, commands: &mut mpsc::UnboundedReceiver<Cmd>) -> End {
        let pid = std::process::id();
        loop {
            let Some(cmd) = commands.recv().await else {
                unreachable!("`Inner` holds a sender for as long as `self` lives")
            };
            match cmd {
                Command::Shutdown(stop) => {
                    // A worker replaced at its master's reload: a hand-over.
                    return match self.successor_from_master() {
                        Some(to) => End::HandedOver(to),
                        None => End::Shutdown(stop),
                    };
                }
                Command::Hammer { reason } => return End::Hammer(reason),
                Command::Pass { signal } => self.inner.user_hooks.run(signal),
                Command::Status { .. } => {}
                Command::FullRestart { reason, .. } if let Some(m) = delegate::master_control() => {
                    delegate::delegate(m, Request::Restart, reason, None);
                }
                Command::Restart { reason, reply } if let Some(m) = delegate::master_control() => {
                    delegate::delegate(m, Request::Reload, reason, reply);
                }
                Command::FullRestart { reason, .. } => match self.inner.settings.program.check() {
                    Ok(()) => return End::FullRestart(reason),
                    Err(e) => warn!(pid, %reason, error = %e, "full restart refused; serving on"),
                },
                Command::Restart { reason, reply } => {
                    match self.restart_now(&reason, reply, commands).await {
                        Ok(restarted) => return End::HandedOver(restarted),
                        Err(Some(interrupted)) => return interrupted,
                        Err(None) => {}
                    }
                }
            }
        }
    }

    /// Installs the handlers of the mapped signals, once. Called by the first server's
    /// `serve` before it accepts anything, so that a signal sent as soon as the server
    /// answers is handled, not fatal; and by `run`.
    pub(crate) fn install_signal_handlers(&self) -> Result<(), Error> {
        let mut installed = lock(&self.inner.signal_intake);
        if installed.is_some() {
            return Ok(());
        }
        let map = self.inner.settings.signals.clone();
        let signals: Vec<_> = map.iter().map(|(s, _)| s).collect();
        let mut intake = SignalIntake::install(signals, &self.inner.commands, move |sig| {
            Command::from_signal(&map, sig)
        })?;
        // A newer generation forces this one with it when too many are alive (the cap):
        // unlike a shutdown signal, which an init system may send to every generation.
        if let Some(force) = crate::sys::generation_force_signal() {
            intake.add_raw(force, &self.inner.commands, || Command::Hammer {
                reason: "forced by a newer generation: too many generations alive".into(),
            })?;
        }
        *installed = Some(intake);
        restore_ignored_at_exec(&self.inner.settings.signals);
        Ok(())
    }
}

/// After a full restart: the signals the previous image ignored across the `exec` (so
/// that one arriving before our handlers did not end the process) get their default
/// action back unless this image handles them, or they would stay ignored here and in
/// every program this one starts.
fn restore_ignored_at_exec(map: &SignalMap) {
    if !crate::origin::passed_to_this_process() {
        return;
    }
    let Ok(list) = std::env::var(crate::origin::IGNORED_AT_EXEC) else {
        return;
    };
    for raw in list.split(',').filter_map(|n| n.trim().parse::<i32>().ok()) {
        if !map.iter().any(|(s, _)| s.as_raw() == raw) {
            crate::sys::default_signal(raw);
        }
    }
}
