//! `baton`: zero-downtime reloads for a server written in any language, behind a PID
//! that never changes.
//!
//! `baton run` is a small master: it holds the listening sockets, starts the server as
//! its worker with them (systemd's socket-activation protocol) and a private notify
//! socket, and on a reload starts a new worker, waits until it is ready, and only then
//! tells the old one to drain. `baton start` runs the same master detached;
//! `stop`, `reload`, `restart` and `status` talk to it over its control socket.

mod client;
mod daemon;
#[cfg(feature = "watch")]
mod watch;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use baton::supervisor::{Master, Readiness};
use baton::{ListenAddr, Listener, Preset, Signal, SignalMap};
use clap::{Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  # A Python server that takes its socket from LISTEN_FDS and says READY=1
  # (examples/server.py in baton's repository):
  baton run --listen 127.0.0.1:8080 -- python3 examples/server.py
  # One that does not say READY=1: ready 500 ms after start
  baton run --listen 127.0.0.1:8080 --ready delay=500ms -- ./server
  # A baton app (it says READY=1 itself), two named listeners:
  baton run --listen http=0.0.0.0:8080 --listen admin=unix:/run/app.sock -- ./app
  # Detached, under a name; then control it by that name:
  baton start --name web --listen 127.0.0.1:8080 -- ./app
  baton reload --name web      # exits 0 once the new worker serves
  baton status --name web      # or --json
  baton restart --name web     # full restart: drain, then start anew
  baton stop --name web

Signals to the master (--signals baton, the default): HUP and USR2 reload (a new
worker, then the old one drains); TERM, INT and QUIT stop (the worker drains; a stop
signal again kills it); USR1, WINCH, TSTP and ALRM are passed on to the worker.

Exit status: run: the worker's own status when it stops (128 + signal if a signal
ended it); 1 when the master cannot start (bad address, command not found, worker
never ready, run directory not writable). start, stop, reload, restart, status: 0 done,
1 failed (the reason is printed), 3 nothing of that name runs. 2 for a bad command
line.";

/// Zero-downtime reloads for servers in any language.
// Named: the package is baton-cli, the binary (and `baton -V`) baton.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, long_about = None, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run CMD as a supervised worker with the listening sockets; reload it on SIGHUP.
    Run(RunArgs),
    /// Like run, detached (a new session, output to a log file), under a name.
    Start(StartArgs),
    /// Stop a master started by `start` (or `run --name`): its worker drains first.
    Stop(client::Target),
    /// Reload: a new worker, then the old one drains. Exits 0 once the new one serves
    /// and the old one has exited; 1 with the reason if the new one failed.
    Reload(client::Target),
    /// Full restart: the worker drains and exits, then a new one starts.
    Restart(client::Target),
    /// Show the master, its workers, listeners and the last reload.
    Status(client::StatusArgs),
    /// Like run, and on a change to the watched files: build, then reload (or, if the
    /// build fails, show why and keep the running worker).
    #[cfg(feature = "watch")]
    Watch(watch::WatchArgs),
    /// Not in this build (without the `watch` feature): says so, and how to get it.
    #[cfg(not(feature = "watch"))]
    #[command(hide = true, disable_help_flag = true)]
    Watch {
        #[arg(num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
        _args: Vec<OsString>,
    },
}

/// `baton watch` in a binary built without it.
#[cfg(not(feature = "watch"))]
fn no_watch() -> ExitCode {
    eprintln!(
        "error: this baton was built without the `watch` feature, so it has no `baton watch`.\n\
         \n  It is on by default: `cargo build --profile dist -p baton-cli` (or `cargo install \
         --path crates/baton-cli`) builds it;\n  with --no-default-features, add `--features \
         watch`, e.g. `cargo install --path crates/baton-cli --no-default-features --features watch`."
    );
    ExitCode::from(2)
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// A socket to listen on and pass to the worker: [NAME=]ADDR, ADDR being HOST:PORT,
    /// [::1]:PORT or unix:/path (repeatable; names default to http, http-2, ...). Without
    /// it, the sockets systemd passes (socket activation) are passed on, under their
    /// names.
    #[arg(long = "listen", value_name = "[NAME=]ADDR", value_parser = parse_listen)]
    listen: Vec<(Option<String>, ListenAddr)>,

    /// How the worker says it is ready: `notify` (it sends READY=1 to NOTIFY_SOCKET) or
    /// `delay=DURATION` (ready once it ran that long).
    #[arg(long, value_name = "notify|delay=DURATION", default_value = "notify", value_parser = parse_ready)]
    ready: Readiness,

    /// How long a new worker may take to be ready; past it, it is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = limit)]
    ready_timeout: Duration,

    /// After a reload, how long the old worker stands by before it is told to drain;
    /// if the new worker dies within it, the old one serves on and the reload fails.
    /// 0s: drain at once. (A worker run with --hand-over stops accepting meanwhile;
    /// another keeps accepting beside the new one.)
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = delay)]
    probation: Duration,

    /// The signal that tells a worker to drain and exit.
    #[arg(long, value_name = "SIGNAL", default_value = "TERM")]
    drain_signal: Signal,

    /// How long a draining worker may take before it is killed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = limit)]
    drain_timeout: Duration,

    /// The master's signal convention: baton, faygo, endless, ghelper, goframe, nginx
    /// (goframe's USR2 is a full restart).
    #[arg(long, value_name = "PRESET", default_value = "baton")]
    signals: Preset,

    /// A name: the master writes NAME.pid (locked) and serves a control socket
    /// NAME.sock in the run directory, for stop, reload, restart and status.
    #[arg(long, value_name = "NAME", value_parser = client::parse_name)]
    name: Option<String>,

    /// Where named masters keep their pidfile, control socket and log
    /// [default: $XDG_RUNTIME_DIR/baton, else /tmp/baton-UID].
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,

    /// Do not make the master a child subreaper (on Linux it is one by default:
    /// processes a worker leaves behind, such as a server that daemonizes itself, are
    /// re-parented to the master, reaped when they exit, and stopped with the master
    /// if they still hold its listening sockets). Always a subreaper as PID 1.
    #[arg(long)]
    no_subreaper: bool,

    /// On by default now (kept for scripts that pass it).
    #[arg(long, hide = true, conflicts_with = "no_subreaper")]
    subreaper: bool,

    /// The worker is a baton server: at a reload, the old worker passes its open
    /// HTTP/1 connections to the new one instead of closing them. Each worker then
    /// gets two more descriptors (BATON_MASTER_LINK_FD, and BATON_CHANNEL_FD at a
    /// reload), which another program would keep open unused.
    #[arg(long)]
    hand_over: bool,

    /// Internal: set by `baton start` for the detached master.
    #[arg(long, hide = true)]
    detached: bool,

    /// The server to run, and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// The log file for the master's and the worker's output (appended to)
    /// [default: NAME.log in the run directory].
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,

    #[command(flatten)]
    run: RunArgs,
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
            Some(d) => baton::cli::parse_duration(d, Duration::ZERO)
                .map(Readiness::Delay)
                .map_err(|e| e.to_string()),
            None => Err(format!(
                "`{s}`: expected `notify` or `delay=DURATION`, e.g. delay=500ms"
            )),
        },
    }
}

fn limit(s: &str) -> Result<Duration, baton::Error> {
    baton::cli::parse_duration(s, Duration::from_millis(1))
}

fn delay(s: &str) -> Result<Duration, baton::Error> {
    baton::cli::parse_duration(s, Duration::ZERO)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Start(args) => daemon::start(args),
        Command::Stop(t) => client::stop(&t),
        Command::Reload(t) => client::reload(&t),
        Command::Restart(t) => client::restart(&t),
        Command::Status(a) => client::status(&a),
        #[cfg(feature = "watch")]
        Command::Watch(a) => watch::watch(a),
        #[cfg(not(feature = "watch"))]
        Command::Watch { .. } => no_watch(),
    }
}

fn run(args: RunArgs) -> ExitCode {
    if args.detached {
        // `baton start` made us: leave its session and terminal behind.
        if let Err(e) = rustix::process::setsid() {
            eprintln!("error: cannot start a new session: {e}");
            return ExitCode::from(1);
        }
    }
    init_logging(args.detached);
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let master = match build_master(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(master.run()) {
        Ok(exit) => {
            // The master ends as its worker did: a worker ended by the stop signal
            // (after draining) ends the master by that signal too, which systemd counts
            // as a clean stop (an exit code of 143 would be a failed unit).
            drop(runtime);
            exit.exit()
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The master's runtime. One thread: the master does little, and a worker is forked
/// from this thread (a forked child inherits only the forking thread; the parent-death
/// signal is tied to it).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        })
}

/// Logs to stderr; `RUST_LOG` as `LEVEL` or `TARGET=LEVEL,...`.
fn init_logging(detached: bool) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // RUST_LOG as `LEVEL` or `TARGET=LEVEL,...` (no regular expressions: the master
    // stays small).
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing::level_filters::LevelFilter::INFO)
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(!detached && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    tracing_subscriber::registry().with(fmt).with(filter).init();
}

fn build_master(args: RunArgs) -> Result<Master, String> {
    let mut builder = Master::builder(args.command)
        .readiness(args.ready)
        .ready_timeout(args.ready_timeout)
        .probation(args.probation)
        .drain_signal(args.drain_signal)
        .drain_timeout(args.drain_timeout)
        .signals(SignalMap::preset(args.signals))
        .hand_over(args.hand_over);
    if cfg!(target_os = "linux") && !args.no_subreaper {
        builder = builder.reap_orphans(true);
    }
    if let Some(name) = &args.name {
        let dir = client::run_dir(args.run_dir.as_deref(), true)?;
        let paths = client::Paths::named(&dir, name);
        // Before binding: a second master of the name is refused as such, not as an
        // address in use.
        if let Ok(baton::cli::Holder::Running(pid)) = baton::cli::pidfile_holder(&paths.pidfile) {
            return Err(format!(
                "{name} already runs (master pid {pid}, pidfile {})",
                paths.pidfile.display()
            ));
        }
        builder = builder.pidfile(paths.pidfile).control_socket(paths.socket);
    }
    if args.listen.is_empty() {
        let inherited = Listener::inherited().map_err(|e| e.to_string())?;
        if inherited.is_empty() {
            return Err(
                "nothing to listen on: give --listen ADDR, or run under socket activation (a systemd .socket unit passes the sockets)"
                    .into(),
            );
        }
        for l in inherited {
            builder = builder.listener(l);
        }
    }
    for (i, (name, addr)) in args.listen.iter().enumerate() {
        let name = name
            .clone()
            .unwrap_or_else(|| baton::cli::default_listener_name(i + 1));
        builder = builder.listener(Listener::bind(name, addr).map_err(|e| e.to_string())?);
    }
    builder.build().map_err(|e| e.to_string())
}
