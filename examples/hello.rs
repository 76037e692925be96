//! The demo server: GoFrame's graceful-restart demo, Faygo's programmatic shutdown,
//! reboot and finalizers, a readiness route, a stream and a WebSocket that end cleanly
//! on drain.
//!
//! ```text
//! cargo run --release --example hello -- --listen 127.0.0.1:8080
//! curl localhost:8080/            # hello
//! curl localhost:8080/pid         # the server's PID
//! curl localhost:8080/echo/a-1    # a-1 pid=<PID>: a response matched to its request
//! curl --data-binary @FILE localhost:8080/echo             # len=<bytes> pid=<PID>
//! curl 'localhost:8080/sleep?secs=5' &  kill -HUP <pid>    # finishes on the old PID
//! curl localhost:8080/pid                                  # ... the new one answers
//! curl -X POST localhost:8080/restart                      # Faygo's reboot
//! curl 'localhost:8080/sleep?secs=5' &  kill -TERM <pid>   # finishes, then exits 0
//! curl -X POST 'localhost:8080/shutdown?secs=10'           # Faygo's Shutdown(10s)
//! ```
//!
//! Exit status: 0 clean shutdown, 1 could not start, 2 bad command line,
//! 3 shut down but connections were cut or a finalizer failed.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use baton::http::Server;
use baton::{Action, DrainCause, ListenAddr, Preset, Shutdown, Signal, SignalMap};
use clap::Parser;
use clap::builder::TypedValueParser;
use tracing::info;

/// The baton demo server: zero-downtime restart and graceful shutdown.
///
/// kill -HUP (or -USR2) restarts it without dropping a request: a new process starts
/// from the binary as it is on disk now, takes over the listening sockets, and the old
/// one finishes its requests and exits. kill -TERM (or -INT, Ctrl-C) shuts it down
/// gracefully; Ctrl-C again forces it (a second SIGTERM does not: the drain runs to its
/// deadline). In a terminal, the first process exits after a restart and the new
/// generation serves on in the background (stop it with kill -TERM); --master keeps
/// one process in the foreground across restarts.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on: HOST:PORT or unix:/path (repeatable). Without it: the
    /// sockets passed to the demo (by `baton run`, its own master, or systemd), else
    /// 127.0.0.1:8080.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<ListenAddr>,

    /// How long the drain may take before what is still open is cut.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = limit)]
    drain_timeout: Duration,

    /// Keep serving this long after the shutdown signal while /ready answers 503.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = delay)]
    drain_delay: Duration,

    /// Close a keep-alive connection idle this long once the drain started.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = limit)]
    idle_grace: Duration,

    /// At a restart, close open keep-alive connections (after the idle grace) instead
    /// of passing them to the new generation.
    #[arg(long)]
    no_hand_over: bool,

    /// Park a keep-alive connection idle this long: keep its bare socket, without
    /// hyper's buffers, until its next request.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = limit)]
    park_idle_after: Duration,

    /// Never park idle connections.
    #[arg(long)]
    no_park: bool,

    /// How long a new generation may take to report ready at a restart.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = limit)]
    ready_timeout: Duration,

    /// After a restart, how long the old generation stands by (not accepting, keeping
    /// its listeners and connections) before it drains; if the new one dies within it,
    /// the old one resumes. 0s: drain at once.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = delay)]
    probation: Duration,

    /// The signal convention: baton (TERM/INT shutdown, QUIT without drain delay,
    /// HUP/USR2 restart), faygo, endless, ghelper, goframe, nginx, or none.
    #[arg(long, value_name = "PRESET", default_value = "baton")]
    signals: String,

    /// Also start a graceful shutdown on SIGNAL (repeatable; added to --signals).
    #[arg(long = "shutdown-signal", value_name = "SIGNAL")]
    shutdown_signals: Vec<Signal>,

    /// The most generations alive at once (serving, starting, draining); past it the
    /// oldest draining one is forced.
    #[arg(long, value_name = "N", default_value_t = baton::DEFAULT_MAX_GENERATIONS, value_parser = clap::value_parser!(u16).range(2..=64).map(usize::from))]
    max_generations: usize,

    /// Write the PID here once ready (each new generation rewrites it).
    #[arg(long, value_name = "PATH")]
    pidfile: Option<std::path::PathBuf>,

    /// A finalizer that takes DURATION to run, as in Faygo's SetShutdown example
    /// (repeatable, run in the order given), e.g. `--finalizer db=2s`.
    #[arg(long = "finalizer", value_name = "NAME=DURATION", value_parser = parse_finalizer)]
    finalizers: Vec<(String, Duration)>,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key. SIGUSR1 reloads
    /// the files for new handshakes without a restart; a restart reads them anew too.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,

    /// How long a TLS handshake may take.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = limit)]
    handshake_timeout: Duration,

    /// How long a client may take to start a request (from its connection, or from the
    /// first bytes of a later HTTP/1 request): silent and slow clients are cut.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = limit)]
    header_read_timeout: Duration,

    /// Close a connection idle this long between requests.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = limit)]
    idle_timeout: Duration,

    /// Serve at most N connections at once; more wait in the accept queue [default: the
    /// descriptor limit less an eighth of it, at least 32, kept in reserve].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    max_connections: Option<usize>,

    /// Serve the admin endpoints (GoFrame's /debug/admin, and /metrics) on ADDR: a
    /// Unix socket (unix:/path), or TCP with a token (--admin-token-file or the
    /// BATON_ADMIN_TOKEN variable).
    #[arg(long, value_name = "ADDR")]
    admin: Option<ListenAddr>,

    /// The file holding the admin token (16+ printable characters).
    #[arg(long, value_name = "PATH", requires = "admin")]
    admin_token_file: Option<std::path::PathBuf>,

    /// The admin token, read before anything starts (see [`admin_token`]).
    #[arg(skip)]
    admin_token: Option<String>,

    /// Be your own master (GoFrame's model): this process keeps its PID, holds the
    /// sockets and runs the program again as its worker; SIGHUP reloads the worker
    /// (a new one, then the old drains), SIGTERM stops. --pidfile then names the
    /// master (locked), and the control socket is beside it (.sock) for
    /// `baton reload --pidfile PATH`.
    #[arg(long)]
    master: bool,

    /// Time limit of each finalizer.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = limit)]
    finalizer_timeout: Duration,
}

/// The admin token, from --admin-token-file or BATON_ADMIN_TOKEN; an error names both
/// when a TCP admin address has none (on a Unix socket it is optional).
fn admin_token(args: &Args) -> Result<Option<String>, baton::Error> {
    let Some(addr) = &args.admin else {
        return Ok(None);
    };
    let token = match &args.admin_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| baton::Error::Io {
                    op: format!("read the admin token from {}", path.display()),
                    source,
                })?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("BATON_ADMIN_TOKEN").ok(),
    };
    if token.is_none() && matches!(addr, ListenAddr::Tcp(_)) {
        return Err(baton::Error::Master(format!(
            "--admin {addr} is a TCP address: the admin endpoints there need a token: \
             give --admin-token-file FILE (16+ printable characters) or set BATON_ADMIN_TOKEN \
             (on a unix:/path address the token is optional)"
        )));
    }
    Ok(token)
}

/// Prints `e` and its causes, each once: a message that already ends with its cause's
/// (`read the admin token from F: No such file or directory`) is not followed by it.
fn print_error(e: &baton::Error) {
    let mut shown = e.to_string();
    eprintln!("error: {shown}");
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !shown.contains(&text) {
            eprintln!("  caused by: {text}");
        }
        shown = text;
        source = cause.source();
    }
}

fn parse_finalizer(s: &str) -> Result<(String, Duration), String> {
    let (name, dur) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not NAME=DURATION (e.g. db=2s)"))?;
    Ok((name.to_owned(), limit(dur).map_err(|e| e.to_string())?))
}

fn limit(s: &str) -> Result<Duration, baton::Error> {
    baton::cli::parse_duration(s, Duration::from_millis(1))
}

fn delay(s: &str) -> Result<Duration, baton::Error> {
    baton::cli::parse_duration(s, Duration::ZERO)
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Before anything binds, and before the master starts a worker that would fail.
    match admin_token(&args) {
        Ok(token) => args.admin_token = token,
        Err(e) => {
            print_error(&e);
            return ExitCode::from(1);
        }
    }
    if args.master {
        if !baton::supervisor::is_worker() {
            return be_the_master(&args);
        }
        // The worker of our own master: the pidfile is the master's.
        args.pidfile = None;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => {
            // Do not wait for abandoned finalizer threads or cut connections' tasks.
            runtime.shutdown_background();
            ExitCode::from(code)
        }
        Err(e) => {
            print_error(&e);
            ExitCode::from(1)
        }
    }
}

/// GoFrame's model: the master of this same program, with the same arguments.
fn be_the_master(args: &Args) -> ExitCode {
    let build = || -> Result<baton::supervisor::Master, baton::Error> {
        let mut master = baton::supervisor::Master::this_program()?
            .ready_timeout(args.ready_timeout)
            .probation(args.probation)
            .drain_timeout(args.drain_timeout);
        if let Some(path) = &args.pidfile {
            master = master
                .pidfile(path)
                .control_socket(path.with_extension("sock"));
        }
        // Named as `Server::bind` names them in the worker: http, http-2, ...; or the
        // sockets systemd passed, under their names.
        if args.listen.is_empty() {
            let inherited = baton::Listener::inherited()?;
            if inherited.is_empty() {
                master = master.listener(baton::Listener::bind("http", &default_addr())?);
            }
            for l in inherited {
                master = master.listener(l);
            }
        }
        for (i, addr) in args.listen.iter().enumerate() {
            let name = baton::cli::default_listener_name(i + 1);
            master = master.listener(baton::Listener::bind(name, addr)?);
        }
        master.build()
    };
    // One thread: workers are forked from it, and their parent-death signal is tied
    // to it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    match (build(), runtime) {
        (Ok(master), Ok(rt)) => match rt.block_on(master.run()) {
            Ok(exit) => {
                drop(rt);
                exit.exit()
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        (Err(e), _) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
        (_, Err(e)) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<u8, baton::Error> {
    let mut signals = match args.signals.as_str() {
        "none" => SignalMap::empty(),
        // The library's message lists its presets; the demo also takes `none`.
        preset => SignalMap::preset(preset.parse::<Preset>().map_err(|_| {
            baton::Error::Master(format!(
                "unknown signal preset `{preset}`: expected one of baton, faygo, endless, ghelper, goframe, nginx, none"
            ))
        })?),
    };
    for sig in args.shutdown_signals {
        if signals.action(sig) != Some(Action::Shutdown) {
            signals = signals.on(sig, Action::Shutdown)?;
        }
    }
    // endless's SIGUSR1 hook (nginx reopens its logs on it): a user function that runs
    // without disturbing serving, where the convention leaves SIGUSR1 free.
    let usr1_free = signals.action(Signal::Usr1).is_none();
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(baton::http::Tls::with_handshake_timeout(
            cert,
            key,
            args.handshake_timeout,
        )?),
        _ => None,
    };
    let mut shutdown = Shutdown::builder()
        .drain_timeout(args.drain_timeout)
        .drain_delay(args.drain_delay)
        .ready_timeout(args.ready_timeout)
        .probation(args.probation)
        .max_generations(args.max_generations)
        .signals(signals);
    if usr1_free {
        let tls = tls.clone();
        shutdown = shutdown.on_signal(Signal::Usr1, "reopen-logs", move || {
            let tls = tls.clone();
            async move {
                info!(
                    pid = std::process::id(),
                    "SIGUSR1: reopening the log files (the demo logs to stderr: nothing to reopen)"
                );
                // A renewed certificate, for new handshakes; a broken one changes nothing.
                match tls {
                    Some(tls) => tls.reload(),
                    None => Ok(()),
                }
            }
        });
    }
    if let Some(path) = args.pidfile {
        shutdown = shutdown.pidfile(path);
    }
    for (name, takes) in args.finalizers {
        let label = name.clone();
        shutdown = shutdown.on_shutdown(name, args.finalizer_timeout, move || async move {
            info!(pid = std::process::id(), finalizer = %label, "finalizer waits {takes:?}...");
            tokio::time::sleep(takes).await;
            info!(pid = std::process::id(), finalizer = %label, "finalizer done");
            Ok::<_, std::convert::Infallible>(())
        });
    }
    let shutdown = shutdown.build()?;
    // The admin socket first: it is taken by its name, before the rest is.
    let admin_listener = args
        .admin
        .as_ref()
        .map(|addr| baton::Listener::bind("admin", addr))
        .transpose()?;
    let server = if args.listen.is_empty() {
        // What the master (or systemd) passed, whatever its address; else the default.
        let inherited = baton::Listener::inherited()?;
        if inherited.is_empty() {
            Server::bind([default_addr()])?
        } else {
            Server::new(inherited)
        }
    } else {
        Server::bind(&args.listen).map_err(|e| match e {
            baton::Error::InheritedMismatch { .. } if baton::supervisor::is_worker() => {
                baton::Error::Master(format!(
                    "{e}\n  hint: give this worker the master's address with --listen, or leave --listen out to serve what the master passes"
                ))
            }
            other => other,
        })?
    };
    let mut server = server
        .hand_over(!args.no_hand_over)
        .park_idle_after((!args.no_park).then_some(args.park_idle_after))?
        .idle_grace(args.idle_grace)?
        .header_read_timeout(args.header_read_timeout)?
        .idle_timeout(args.idle_timeout)?;
    if let Some(n) = args.max_connections {
        server = server.max_connections(n)?;
    }
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    server.serve(app(shutdown.clone()), &shutdown)?;
    if let Some(listener) = admin_listener {
        let admin = match args.admin_token {
            Some(t) => baton::http::Admin::new(&shutdown, t)?,
            None => baton::http::Admin::unix_only(&shutdown),
        };
        admin.serve(listener)?;
    }
    let report = shutdown.run().await?;
    Ok(report.exit_code())
}

fn default_addr() -> ListenAddr {
    ListenAddr::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], 8080)))
}

fn app(shutdown: Shutdown) -> Router {
    Router::new()
        .route("/", get(|| async { "hello from baton\n" }))
        .route(
            "/pid",
            get(|| async { format!("{}\n", std::process::id()) }),
        )
        .route("/echo/{id}", get(echo_id))
        .route("/echo", post(echo_upload))
        .route("/sleep", get(sleep))
        .route("/ready", get(ready))
        .route("/shutdown", any(shutdown_route))
        .route("/restart", any(restart_route))
        .route("/stats", get(stats))
        .route("/stream", get(stream))
        .route("/ws", get(ws))
        .with_state(shutdown)
}

fn secs(query: &HashMap<String, String>, default: f64) -> Result<Duration, (StatusCode, String)> {
    let Some(raw) = query.get("secs") else {
        return Ok(Duration::from_secs_f64(default));
    };
    raw.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| *d <= Duration::from_secs(86_400))
        .ok_or((
            StatusCode::BAD_REQUEST,
            format!("secs=`{raw}` must be a number of seconds from 0 to 86400\n"),
        ))
}

/// `GET /echo/{ID}`: `ID pid=PID`, the ID as it is in the request's path (not
/// percent-decoded): a client (`baton-bench --mode echo`) matches every response to its
/// request, and sees which process served it.
async fn echo_id(uri: axum::http::Uri) -> String {
    let id = uri.path().strip_prefix("/echo/").unwrap_or_default();
    format!("{id} pid={}\n", std::process::id())
}

/// `POST /echo`: reads the whole request body (any size; `Expect: 100-continue` is
/// answered when the body is first read) and answers `len=N pid=PID`.
async fn echo_upload(body: axum::body::Body) -> (StatusCode, String) {
    use futures_util::StreamExt as _;
    let mut data = body.into_data_stream();
    let mut len = 0u64;
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(bytes) => len += bytes.len() as u64,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body after {len} bytes: {e}\n"),
                );
            }
        }
    }
    (
        StatusCode::OK,
        format!("len={len} pid={}\n", std::process::id()),
    )
}

/// GoFrame's `/sleep`: answers after `secs` seconds, with the PID at start and end.
async fn sleep(Query(q): Query<HashMap<String, String>>) -> impl IntoResponse {
    let d = match secs(&q, 1.0) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let start = std::process::id();
    info!(pid = start, "sleep {d:?}: start");
    tokio::time::sleep(d).await;
    let end = std::process::id();
    info!(pid = end, "sleep {d:?}: end");
    (
        StatusCode::OK,
        format!(
            "slept {:.3}s: start pid {start}, end pid {end}\n",
            d.as_secs_f64()
        ),
    )
}

/// Readiness: 200 while serving, 503 from the shutdown signal on (during the drain
/// delay the server still serves everything else).
async fn ready(State(shutdown): State<Shutdown>) -> impl IntoResponse {
    if shutdown.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}

/// Faygo's `/shutdown?second=N`: answers, then the server drains with an N-second
/// deadline. POST only, as any state change should be.
async fn shutdown_route(
    State(shutdown): State<Shutdown>,
    method: axum::http::Method,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if method != axum::http::Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST /shutdown?secs=N\n".to_owned(),
        );
    }
    let d = match secs(&q, 30.0) {
        Ok(d) => d,
        Err(e) => return e,
    };
    match shutdown.trigger_within(d) {
        // This response is still sent: the drain waits for requests in flight.
        Ok(()) => (
            StatusCode::OK,
            format!("shutting down, deadline {:.3}s\n", d.as_secs_f64()),
        ),
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Faygo's reboot from a handler: `POST /restart` answers once the new generation is
/// ready (or with the reason it failed: this one serves on); `POST /restart?mode=full`
/// starts a full restart (same PID) and answers at once.
async fn restart_route(
    State(shutdown): State<Shutdown>,
    method: axum::http::Method,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    if method != axum::http::Method::POST {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST /restart (or POST /restart?mode=full)\n".to_owned(),
        );
    }
    match q.get("mode").map(String::as_str) {
        Some("full") => {
            shutdown.full_restart();
            return (StatusCode::ACCEPTED, "full restart started\n".to_owned());
        }
        None | Some("graceful") => {}
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("mode=`{other}`: expected graceful or full\n"),
            );
        }
    }
    match shutdown.restart().await {
        Ok(r) => (
            StatusCode::OK,
            format!(
                "restarted: pid {} (generation {}) ready in {:.1}ms\n",
                r.pid,
                r.generation,
                r.ready.as_secs_f64() * 1000.0
            ),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

async fn stats(State(shutdown): State<Shutdown>) -> String {
    let s = shutdown.connections();
    format!(
        "phase {:?}\naccepted {}\nopen {}\nnew {}\nactive {}\nidle {}\nupgraded {}\nclosed {}\nrequests {}\ntimed_out {}\nparked {}\n",
        shutdown.phase(),
        s.accepted,
        s.open,
        s.new,
        s.active,
        s.idle,
        s.upgraded,
        s.closed,
        s.requests,
        s.timed_out,
        s.parked
    )
}

/// A long-lived response: a line every 100 ms until the drain starts, then `bye`.
async fn stream(State(shutdown): State<Shutdown>) -> impl IntoResponse {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::convert::Infallible>>(4);
    tokio::spawn(async move {
        let draining = shutdown.draining();
        tokio::pin!(draining);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut n = 0u64;
        loop {
            tokio::select! {
                () = &mut draining => {
                    let _ = tx.send(Ok("bye\n".into())).await;
                    return;
                }
                _ = tick.tick() => {
                    n += 1;
                    if tx.send(Ok(format!("tick {n}\n"))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    axum::body::Body::from_stream(tokio_stream(rx))
}

fn tokio_stream<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
{
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A WebSocket echo that closes itself when the drain starts: close code 1012
/// ("service restart") at a restart, 1001 ("going away") at a shutdown.
async fn ws(State(shutdown): State<Shutdown>, upgrade: WebSocketUpgrade) -> impl IntoResponse {
    upgrade.on_upgrade(move |socket| echo(socket, shutdown))
}

async fn echo(mut socket: WebSocket, shutdown: Shutdown) {
    let draining = shutdown.draining();
    tokio::pin!(draining);
    loop {
        tokio::select! {
            () = &mut draining => {
                // 1012 "service restart" at a restart (clients reconnect at once),
                // 1001 "going away" at a shutdown.
                let (code, reason) = match shutdown.drain_cause() {
                    Some(DrainCause::Restart) => (DrainCause::Restart.websocket_close_code(), "server restarting"),
                    _ => (DrainCause::Shutdown.websocket_close_code(), "server shutting down"),
                };
                let frame = axum::extract::ws::CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                // Wait (bounded by the drain deadline) for the client's close reply.
                while let Some(Ok(msg)) = socket.recv().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if socket.send(Message::Text(t)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
