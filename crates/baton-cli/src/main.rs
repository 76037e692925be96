//! `baton`: zero-downtime reloads for a server written in any language, behind a PID
//! that never changes.
//!
//! `baton run` is a small master: it holds the listening sockets, starts the server as
//! its worker with them (systemd's socket-activation protocol) and a private notify
//! socket, and on a reload starts a new worker, waits until it is ready, and only then
//! tells the old one to drain.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use baton::supervisor::{Readiness, Worker};
use baton::{ListenAddr, Listener, Signal};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

const EXAMPLES: &str = "\
Examples:
  # A Python server that takes its socket from LISTEN_FDS, ready 500 ms after start:
  baton run --listen 127.0.0.1:8080 --ready delay=500ms -- python3 server.py
  # A baton app (it says READY=1 itself), two named listeners:
  baton run --listen http=0.0.0.0:8080 --listen admin=unix:/run/app.sock -- ./app
  # Then: kill -HUP <master pid> reloads with zero downtime; kill -TERM stops.

Signals to the master: HUP and USR2 reload (a new worker, then the old one drains);
TERM, INT and QUIT stop (the worker drains); USR1, WINCH, TSTP and ALRM are passed on
to the current worker.

Exit status: the worker's own status when it stops (128 + signal if a signal ended
it); 1 when the master cannot start (bad address, command not found, worker never
ready); 2 for a bad command line.";

/// Zero-downtime reloads for servers in any language.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run CMD as a supervised worker with the listening sockets; reload it on SIGHUP.
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// A socket to listen on and pass to the worker: [NAME=]ADDR, ADDR being HOST:PORT,
    /// [::1]:PORT or unix:/path (repeatable; names default to http, http-2, ...).
    #[arg(long = "listen", value_name = "[NAME=]ADDR", required = true, value_parser = parse_listen)]
    listen: Vec<(Option<String>, ListenAddr)>,

    /// How the worker says it is ready: `notify` (it sends READY=1 to NOTIFY_SOCKET) or
    /// `delay=DURATION` (ready once it ran that long).
    #[arg(long, value_name = "notify|delay=DURATION", default_value = "notify", value_parser = parse_ready)]
    ready: Readiness,

    /// How long a new worker may take to be ready; past it, it is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = limit)]
    ready_timeout: Duration,

    /// The signal that tells a worker to drain and exit.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM")]
    drain_signal: Signal,

    /// How long a draining worker may take before it is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = limit)]
    drain_timeout: Duration,

    /// The server to run, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

fn parse_listen(s: &str) -> Result<(Option<String>, ListenAddr), String> {
    // A name has no ':' and comes before '='; "unix:/a=b" is an address.
    let (name, addr) = match s.split_once('=') {
        Some((n, a)) if !n.contains(':') && !n.is_empty() => (Some(n.to_owned()), a),
        _ => (None, s),
    };
    let addr = addr.parse::<ListenAddr>().map_err(|e| e.to_string())?;
    Ok((name, addr))
}

fn parse_ready(s: &str) -> Result<Readiness, String> {
    match s {
        "notify" => Ok(Readiness::Notify),
        _ => match s.strip_prefix("delay=") {
            Some(d) => baton::parse_duration(d, Duration::ZERO)
                .map(Readiness::Delay)
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "`{s}`: expected `notify` or `delay=DURATION`, e.g. delay=500ms"
            )),
        },
    }
}

fn limit(s: &str) -> Result<Duration, baton::Error> {
    baton::parse_duration(s, Duration::from_millis(1))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // One thread: the master does little, and a worker is forked from this thread
    // (a forked child inherits only the forking thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let Command::Run(args) = cli.command;
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: RunArgs) -> Result<u8, String> {
    let pid = std::process::id();
    let mut listeners = Vec::new();
    for (i, (name, addr)) in args.listen.iter().enumerate() {
        let name = name.clone().unwrap_or_else(|| {
            if i == 0 {
                "http".to_owned()
            } else {
                format!("http-{}", i + 1)
            }
        });
        let l = Listener::bind(name, addr).map_err(|e| e.to_string())?;
        info!(
            pid,
            listener = l.name(),
            "master listening on [{}]",
            l.local_addr()
        );
        listeners.push(l);
    }
    let stream = |sig: Signal| {
        signal(SignalKind::from_raw(sig.as_raw()))
            .map_err(|e| format!("cannot install a handler for {sig}: {e}"))
    };
    let (mut hup, mut usr2) = (stream(Signal::Hup)?, stream(Signal::Usr2)?);
    let (mut term, mut int, mut quit) = (
        stream(Signal::Term)?,
        stream(Signal::Int)?,
        stream(Signal::Quit)?,
    );
    let (mut usr1, mut winch, mut tstp, mut alrm) = (
        stream(Signal::Usr1)?,
        stream(Signal::Winch)?,
        stream(Signal::Tstp)?,
        stream(Signal::Alrm)?,
    );

    let mut current = start(&args, &listeners)
        .await
        .map_err(|e| format!("the worker did not start: {e}"))?;
    let mut generation = 1u32;
    let mut draining = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut started = Instant::now();
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&args, &listeners, &mut current, &mut draining, &mut generation).await,
            _ = usr2.recv() => reload(&args, &listeners, &mut current, &mut draining, &mut generation).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = quit.recv() => break,
            _ = usr1.recv() => forward(&mut current, Signal::Usr1),
            _ = winch.recv() => forward(&mut current, Signal::Winch),
            _ = tstp.recv() => forward(&mut current, Signal::Tstp),
            _ = alrm.recv() => forward(&mut current, Signal::Alrm),
            status = current.wait() => {
                // Died by itself: start another, with a growing pause (no tight loop
                // for a worker that crashes at once), the sockets open meanwhile.
                warn!(pid, worker = current.pid(), status = %describe(&status), "the worker exited unexpectedly; starting a new one in {backoff:?}");
                if started.elapsed() > Duration::from_secs(10) {
                    backoff = Duration::from_millis(100);
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = term.recv() => return Ok(exit_code(&status)),
                    _ = int.recv() => return Ok(exit_code(&status)),
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                match start(&args, &listeners).await {
                    Ok(w) => {
                        current = w;
                        generation += 1;
                        started = Instant::now();
                    }
                    Err(e) => warn!(pid, "the new worker failed too: {e}"),
                }
            }
        }
    }
    info!(pid, worker = current.pid(), "stopping: the worker drains");
    let status = drain(current, args.drain_signal, args.drain_timeout).await;
    while draining.join_next().await.is_some() {}
    info!(pid, status = %describe(&status), "stopped");
    Ok(exit_code(&status))
}

/// Starts a worker and waits until it is ready; on failure it is killed and reaped.
async fn start(args: &RunArgs, listeners: &[Listener]) -> Result<Worker, String> {
    // Should the master die (even by SIGKILL), the worker drains instead of running on
    // unsupervised.
    let mut worker = Worker::spawn(&args.command, listeners, Some(args.drain_signal))
        .map_err(|e| e.to_string())?;
    let pid = worker.pid();
    match worker.ready(args.ready, args.ready_timeout).await {
        Ok(()) => {
            info!(master = std::process::id(), worker = pid, "worker ready");
            Ok(worker)
        }
        Err(e) => {
            let _ = worker.kill();
            let _ = worker.wait().await;
            Err(e.to_string())
        }
    }
}

async fn reload(
    args: &RunArgs,
    listeners: &[Listener],
    current: &mut Worker,
    draining: &mut JoinSet<()>,
    generation: &mut u32,
) {
    let pid = std::process::id();
    let t0 = Instant::now();
    info!(pid, "reloading: starting a new worker");
    match start(args, listeners).await {
        Ok(new) => {
            *generation += 1;
            let old = std::mem::replace(current, new);
            info!(
                pid,
                worker = current.pid(),
                generation = *generation,
                ready = ?t0.elapsed(),
                "reloaded: the new worker serves; the old one ({}) drains",
                old.pid()
            );
            let (sig, limit) = (args.drain_signal, args.drain_timeout);
            draining.spawn(async move {
                let _ = drain(old, sig, limit).await;
            });
        }
        Err(e) => warn!(pid, "reload failed, the old worker serves on: {e}"),
    }
}

/// Tells `worker` to drain, waits up to `limit`, then kills it; returns how it ended.
async fn drain(
    mut worker: Worker,
    sig: Signal,
    limit: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    let wpid = worker.pid();
    if let Err(e) = worker.signal(sig) {
        warn!(worker = wpid, error = %e, "cannot send {sig}");
    }
    match tokio::time::timeout(limit, worker.wait()).await {
        Ok(status) => {
            info!(worker = wpid, status = %describe(&status), "drained worker exited");
            status
        }
        Err(_) => {
            warn!(
                worker = wpid,
                "the worker did not exit within {limit:?} of {sig}: killing it"
            );
            let _ = worker.kill();
            worker.wait().await
        }
    }
}

fn forward(worker: &mut Worker, sig: Signal) {
    if let Err(e) = worker.signal(sig) {
        warn!(worker = worker.pid(), error = %e, "cannot pass {sig} on");
    }
}

fn describe(status: &std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

fn exit_code(status: &std::io::Result<std::process::ExitStatus>) -> u8 {
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
