//! Serving hyper services (and so axum routers) with connection tracking and a drain
//! without races.
//!
//! A [`Server`] accepts on one or more listeners (TCP, Unix) and serves HTTP/1.1 and
//! HTTP/2 (prior knowledge, "h2c") on the same port. Every connection is registered
//! with the [`Shutdown`] coordinator, which decides when the drain starts and ends.

#[cfg(feature = "admin")]
mod admin;
mod conn;
mod lot;
mod service;
mod slots;
#[cfg(feature = "tls")]
pub(crate) mod tickets;
#[cfg(feature = "tls")]
mod tls;

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::Body;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

use crate::channel::{Message, Proto};
use crate::tracker::{Phase, conn_reached};
use crate::{Error, IntoListenAddr, ListenAddr, Listener, Report, Shutdown};

#[cfg(feature = "admin")]
pub use admin::Admin;
pub use service::TrackedBody;
#[cfg(feature = "tls")]
pub use tls::{DEFAULT_HANDSHAKE_TIMEOUT, Tls};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`Server`] can serve: a tower service of `Request<Incoming>` (an axum `Router`,
/// a `hyper::service::service_fn` wrapped with `TowerToHyperService`'s inverse, ...),
/// cloned for each request. Implemented for every type that qualifies; the bounds are
/// written here once.
pub trait HttpService<B>:
    tower_service::Service<
        Request<Incoming>,
        Response = Response<B>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: tower_service::Service<
            Request<Incoming>,
            Response = Response<B>,
            Error: Into<BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A response body [`Server`] can send. Implemented for every type that qualifies.
pub trait HttpBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> HttpBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// How long a connection may stay idle after the drain started before it is closed.
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(1);
/// How long a client may take to start a request by default (see
/// [`Server::header_read_timeout`]).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay idle between requests by default (see
/// [`Server::idle_timeout`]).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a kept-alive connection stays idle before it is parked by default (see
/// [`Server::park_idle_after`]).
pub const DEFAULT_PARK_IDLE_AFTER: Duration = Duration::from_secs(5);
/// After an accept error caused by a resource limit (too many open files, no memory),
/// how long to wait before accepting again. The connection that could not be accepted
/// stays in the queue, so retrying at once would fail again at once: a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The most connections taken from the accept queue when a listener closes for good.
const SWEEP_LIMIT: usize = 65_536;

/// Serves a service on a set of listeners until the [`Shutdown`] drains it.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use baton::{Shutdown, http::Server};
///
/// # async fn example() -> Result<(), baton::Error> {
/// let shutdown = Shutdown::builder().build()?;
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let report = Server::bind(["127.0.0.1:8080"])?.run(app, &shutdown).await?;
/// std::process::exit(report.exit_code().into());
/// # }
/// ```
#[must_use = "a server does nothing until `serve` or `run` is called"]
pub struct Server {
    listeners: Vec<Listener>,
    idle_grace: Duration,
    nodelay: bool,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    park_idle_after: Option<Duration>,
    max_connections: Option<usize>,
    hand_over: bool,
    #[cfg(feature = "tls")]
    tls: Option<Tls>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("listeners", &self.listeners)
            .field("idle_grace", &self.idle_grace)
            .field("nodelay", &self.nodelay)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("park_idle_after", &self.park_idle_after)
            .field("max_connections", &self.max_connections)
            .field("hand_over", &self.hand_over)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server on listeners bound already.
    pub fn new(listeners: impl IntoIterator<Item = Listener>) -> Self {
        Server {
            listeners: listeners.into_iter().collect(),
            idle_grace: DEFAULT_IDLE_GRACE,
            nodelay: true,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            park_idle_after: Some(DEFAULT_PARK_IDLE_AFTER),
            max_connections: None,
            hand_over: true,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Parses and binds each address (see [`ListenAddr`] for the forms; text or
    /// [`ListenAddr`] values), or takes the socket passed to this process for it (see
    /// [`Listener::bind`]).
    ///
    /// The listeners are named `http`, `http-2`, `http-3`, ... in the order they are
    /// bound in the process, across every `Server::bind` call: a restarted generation
    /// binds in the same order and gets the same sockets. To name them yourself, use
    /// [`Listener::bind`] and [`Server::new`].
    ///
    /// # Errors
    ///
    /// The first address that does not parse or cannot be bound; nothing stays bound
    /// then.
    pub fn bind<A: IntoListenAddr>(addrs: impl IntoIterator<Item = A>) -> Result<Self, Error> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static BOUND: AtomicUsize = AtomicUsize::new(0);
        let mut listeners = Vec::new();
        for addr in addrs {
            let addr = addr.into_listen_addr()?;
            let n = BOUND.fetch_add(1, Ordering::Relaxed) + 1;
            let name = crate::default_listener_name(n);
            listeners.push(Listener::bind(name, &addr)?);
        }
        Ok(Server::new(listeners))
    }

    /// After the drain starts, an HTTP/1 connection that stays idle this long (or never
    /// sends its first request) is closed. Default [`DEFAULT_IDLE_GRACE`] (1 s).
    ///
    /// Closing an idle keep-alive connection at once races with its client's next
    /// request, already on the wire: the request is lost (nginx and hyper's own
    /// graceful shutdown lose one per open connection against a busy client). During
    /// the grace such a request is answered, with `Connection: close`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDuration`] outside 1 ms..=24 h.
    pub fn idle_grace(mut self, grace: Duration) -> Result<Self, Error> {
        self.idle_grace = crate::error::check_limit("idle grace", grace)?;
        Ok(self)
    }

    /// A client that has not started a request this long after its connection opened
    /// (it sent nothing, part of an HTTP/2 preface, or a preface and no stream), or
    /// whose next HTTP/1 request has not been read this long after its first bytes
    /// (slowloris), is disconnected: such clients cannot hold descriptors. Default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`] (30 s).
    ///
    /// Kept to within about a second: one task looks at every connection once a second
    /// (no timer per request; see `docs/ARCHITECTURE.md`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDuration`] outside 1 ms..=24 h.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Result<Self, Error> {
        self.header_read_timeout = crate::error::check_limit("header read timeout", timeout)?;
        Ok(self)
    }

    /// A connection with no request in flight and nothing read for this long (a
    /// kept-alive HTTP/1 connection, an HTTP/2 connection without a stream) is closed.
    /// Default [`DEFAULT_IDLE_TIMEOUT`] (2 minutes). Kept to within about a second.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDuration`] outside 1 ms..=24 h.
    pub fn idle_timeout(mut self, timeout: Duration) -> Result<Self, Error> {
        self.idle_timeout = crate::error::check_limit("idle timeout", timeout)?;
        Ok(self)
    }

    /// A plain HTTP/1 keep-alive connection idle this long is parked: taken out of
    /// hyper between two requests, and out of its task, and kept as its bare socket in
    /// the server's parking lot (no task, no read or write buffer, no hyper
    /// connection), until its next bytes arrive; then it gets a new task and hyper
    /// connection, with a small set-up cost for that one request (about 10 µs). An
    /// idle connection then costs a few hundred bytes instead of about 17 KiB
    /// (`docs/BENCHMARKS.md`). It still counts as open and idle, moves at a restart and
    /// closes at the idle timeout. Default [`DEFAULT_PARK_IDLE_AFTER`] (5 s), kept to
    /// within about a second (the tracker's sweep asks); `None` never parks. Linux
    /// only: elsewhere nothing is parked.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDuration`] outside 1 ms..=24 h.
    pub fn park_idle_after(mut self, after: Option<Duration>) -> Result<Self, Error> {
        self.park_idle_after = match after {
            Some(d) => Some(crate::error::check_limit("park idle after", d)?),
            None => None,
        };
        Ok(self)
    }

    /// Serves at most `n` connections at once (across this server's listeners);
    /// further clients wait in the kernel's accept queue, not refused, until one ends.
    /// Default: the process's descriptor limit (`RLIMIT_NOFILE`) less an eighth of it
    /// (at least 32) kept in reserve, so that accepting never runs the process out of
    /// descriptors.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidCount`] for 0.
    pub fn max_connections(mut self, n: usize) -> Result<Self, Error> {
        if n == 0 {
            return Err(Error::InvalidCount {
                what: "max_connections",
                value: n,
                min: 1,
            });
        }
        self.max_connections = Some(n);
        Ok(self)
    }

    /// Serves HTTPS on every listener of this server: TLS with ALPN `h2` and
    /// `http/1.1`, the handshake in the connection's own task within the
    /// [`Tls`]'s handshake timeout (a slow handshake never holds up accepting). A
    /// connection in its handshake counts in the drain like any other; one closed by
    /// the drain ends with TLS `close_notify`.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// At a graceful restart, passes open HTTP/1 connections to the next generation
    /// instead of closing them (default `true`): each one moves as soon as it is between
    /// two requests (at once if idle, after its response if busy), with the bytes of a
    /// next request read already, and the new generation serves it as if it had
    /// accepted it. Its client never sees the restart: no closed keep-alive connection,
    /// no reconnect.
    ///
    /// What cannot move drains as without it: HTTPS (its TLS session lives in this
    /// process), HTTP/2, upgraded connections (WebSocket), a connection whose request
    /// body the handler left unread, and every connection when the next generation does
    /// not take this listener's connections (built without it, or with it off).
    /// For the self-restarting model ([`Shutdown`]'s restart), and for a master's
    /// workers when the master relays the channel (`MasterBuilder::hand_over`, on for
    /// `Master::this_program`).
    pub fn hand_over(mut self, on: bool) -> Self {
        self.hand_over = on;
        self
    }

    /// Sets `TCP_NODELAY` on accepted TCP connections (default `true`).
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// The addresses listened on, in order.
    pub fn local_addrs(&self) -> Vec<ListenAddr> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().clone())
            .collect()
    }

    /// Starts serving `service` on every listener, in tasks of the current tokio
    /// runtime, and returns. The [`Shutdown`]'s [`run`](Shutdown::run) drives the end.
    ///
    /// `service` is any tower service of `Request<Incoming>`, such as an axum `Router`;
    /// it is cloned for each request, as hyper-util's `TowerToHyperService` does.
    ///
    /// The [`Shutdown`]'s signal handlers are installed before the first connection is
    /// accepted, so a signal sent as soon as the server answers is handled. From then
    /// on those signals no longer end the process by themselves: call
    /// [`Shutdown::run`], which acts on them.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if called outside a tokio runtime, a listener cannot be registered
    /// with it, or a signal handler cannot be installed;
    /// [`Error::DuplicateListenerName`] if a listener's name is taken by another listener
    /// of the same [`Shutdown`].
    pub fn serve<S, B>(self, service: S, shutdown: &Shutdown) -> Result<(), Error>
    where
        S: HttpService<B>,
        B: HttpBody,
    {
        tokio::runtime::Handle::try_current().map_err(|e| {
            Error::io(
                "start serving",
                io::Error::other(format!("{e}; call `serve` inside a tokio runtime")),
            )
        })?;
        #[cfg(feature = "tls")]
        let plain = self.tls.is_none();
        #[cfg(not(feature = "tls"))]
        let plain = true;
        let names: Vec<String> = self.listeners.iter().map(|l| l.name().to_owned()).collect();
        let lot = match self.park_idle_after.filter(|_| plain) {
            Some(_) => match lot::Lot::new() {
                Ok(lot) => Some(lot),
                Err(e) => {
                    warn!(error = %e, "idle connections are not parked");
                    None
                }
            },
            None => None,
        };
        // No timer in hyper: the header-read and idle timeouts are the tracker's sweep.
        let ctx = Arc::new(Ctx {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
            service,
            shutdown: shutdown.clone(),
            idle_grace: self.idle_grace,
            limits: crate::tracker::Limits {
                header: Some(self.header_read_timeout),
                idle: Some(self.idle_timeout),
                movable: self.hand_over && plain,
                park: self.park_idle_after.filter(|_| lot.is_some()),
            },
            lot,
            names,
            slots: slots::Slots::new(self.max_connections.unwrap_or_else(slots::default_max)),
            #[cfg(feature = "tls")]
            tls: self.tls,
        });
        shutdown.install_signal_handlers()?;
        shutdown.tracker().sweep();
        if ctx.lot.is_some() {
            tokio::spawn(run_lot(Arc::clone(&ctx)));
        }
        let pid = std::process::id();
        // Register every listener before starting any, so that an error leaves nothing
        // half-started.
        let mut ready = Vec::new();
        let mut dups = Vec::new();
        let mut kinds = Vec::new();
        for listener in self.listeners {
            let name = listener.name().to_owned();
            let addr = listener.local_addr().clone();
            let inherited = listener.is_inherited();
            let register = |e| Error::io(format!("register listener {addr} with tokio"), e);
            dups.push((
                name.clone(),
                listener.duplicate().map_err(register)?,
                inherited,
            ));
            let socket = listener.into_socket();
            kinds.push(matches!(addr, ListenAddr::Tcp(_)));
            let accept = match addr {
                ListenAddr::Tcp(_) => Registered::Tcp(Tcp {
                    listener: tokio::net::TcpListener::from_std(socket.into()).map_err(register)?,
                    nodelay: self.nodelay,
                }),
                ListenAddr::Unix(_) => Registered::Unix(Unix {
                    listener: tokio::net::UnixListener::from_std(socket.into())
                        .map_err(register)?,
                }),
            };
            ready.push((name, addr, accept, inherited));
        }
        shutdown.register_listeners(dups)?;
        if ctx.limits.movable {
            shutdown.take_connections(&ctx.names, taker(&ctx, kinds));
        }
        for (index, (name, addr, accept, inherited)) in ready.into_iter().enumerate() {
            if inherited && shutdown.generation() > 1 {
                info!(pid, listener = %name, "http server reloaded listening on [{addr}]");
            } else if inherited {
                info!(pid, listener = %name, "http server started listening on [{addr}] (socket passed by the service manager)");
            } else {
                info!(pid, listener = %name, "http server started listening on [{addr}]");
            }
            let guard = shutdown.tracker().accept_guard();
            let ctx = Arc::clone(&ctx);
            tokio::spawn(async move {
                match accept {
                    Registered::Tcp(l) => accept_loop(l, &addr, &ctx, index).await,
                    Registered::Unix(l) => accept_loop(l, &addr, &ctx, index).await,
                }
                drop(guard);
            });
        }
        Ok(())
    }

    /// [`serve`](Server::serve), then [`Shutdown::run`]: serves until the shutdown is
    /// complete and returns its report.
    ///
    /// # Errors
    ///
    /// As [`serve`](Server::serve) and [`Shutdown::run`].
    pub async fn run<S, B>(self, service: S, shutdown: &Shutdown) -> Result<Report, Error>
    where
        S: HttpService<B>,
        B: HttpBody,
    {
        self.serve(service, shutdown)?;
        shutdown.run().await
    }
}

struct Ctx<S> {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    service: S,
    shutdown: Shutdown,
    idle_grace: Duration,
    /// The timeouts of each connection, and whether it can move to the next generation.
    limits: crate::tracker::Limits,
    /// The listeners' names, by index.
    names: Vec<String>,
    /// The connection limit.
    slots: Arc<slots::Slots>,
    /// Where idle connections are parked (`None`: they are not).
    lot: Option<lot::Lot>,
    #[cfg(feature = "tls")]
    tls: Option<Tls>,
}

/// A listener registered with tokio, of either kind: what `serve` holds between
/// registering every listener and starting any.
enum Registered {
    Tcp(Tcp),
    Unix(Unix),
}

/// A listener kind. Accept loops are generic over it so the connection type is known
/// statically (no dispatch on every read and write).
trait Accept: Send + 'static {
    type Io: AsyncRead
        + AsyncWrite
        + AsRawFd
        + AsFd
        + conn::Parkable
        + Send
        + Sync
        + Unpin
        + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
    /// Takes what is left in the kernel's accept queue, without waiting, and closes
    /// the listener.
    fn sweep(self) -> io::Result<Vec<Self::Io>>;
}

struct Tcp {
    listener: tokio::net::TcpListener,
    /// Set `TCP_NODELAY` on accepted connections.
    nodelay: bool,
}

struct Unix {
    listener: tokio::net::UnixListener,
}

impl Accept for Tcp {
    type Io = tokio::net::TcpStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.listener.poll_accept(cx).map_ok(|(stream, _)| {
            if self.nodelay {
                // Best effort: a connection reset meanwhile fails here and is seen later.
                let _ = stream.set_nodelay(true);
            }
            stream
        })
    }

    fn sweep(self) -> io::Result<Vec<Self::Io>> {
        let std = self.listener.into_std()?;
        sweep(|| {
            let (s, _) = std.accept()?;
            s.set_nonblocking(true)?;
            if self.nodelay {
                let _ = s.set_nodelay(true);
            }
            tokio::net::TcpStream::from_std(s)
        })
    }
}

impl Accept for Unix {
    type Io = tokio::net::UnixStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.listener.poll_accept(cx).map_ok(|(stream, _)| stream)
    }

    fn sweep(self) -> io::Result<Vec<Self::Io>> {
        let std = self.listener.into_std()?;
        sweep(|| {
            let (s, _) = std.accept()?;
            s.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(s)
        })
    }
}

fn sweep<T>(mut accept: impl FnMut() -> io::Result<T>) -> io::Result<Vec<T>> {
    let mut taken = Vec::new();
    while taken.len() < SWEEP_LIMIT {
        match accept() {
            Ok(io) => taken.push(io),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => return if taken.is_empty() { Err(e) } else { Ok(taken) },
        }
    }
    Ok(taken)
}

/// Errors that concern one connection (it was reset before we took it), not the
/// listener: accept the next one at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

async fn accept_loop<A: Accept, S, B>(
    listener: A,
    addr: &ListenAddr,
    ctx: &Arc<Ctx<S>>,
    index: usize,
) where
    S: HttpService<B>,
    B: HttpBody,
{
    let pid = std::process::id();
    let draining = ctx.shutdown.tracker().reached(Phase::Draining);
    tokio::pin!(draining);
    let mut last_complaint: Option<Instant> = None;
    let tracker = ctx.shutdown.tracker();
    loop {
        // A cheap check first: under a steady stream of connections `accept` is always
        // ready and the `draining` future below would never be polled.
        if tracker.phase() >= Phase::Draining {
            break;
        }
        // At the connection limit, stop accepting: clients wait in the kernel's queue.
        tokio::select! {
            biased;
            () = ctx.slots.free() => {}
            () = &mut draining => break,
        }
        let accepted = tokio::select! {
            biased;
            res = std::future::poll_fn(|cx| listener.poll_accept(cx)) => res,
            () = &mut draining => break,
        };
        match accepted {
            Ok(io) => spawn_connection(io, ctx, index),
            Err(e) if is_connection_error(&e) => {
                debug!(pid, error = %e, "accept on {addr}: connection failed early");
            }
            Err(e) => {
                // Out of descriptors or memory, or something stranger: never exit the
                // loop (the server would stop serving for good) and never spin.
                if last_complaint.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    warn!(pid, error = %e, "accept on {addr} failed; retrying every {ACCEPT_BACKOFF:?}");
                    last_complaint = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // The drain began. At a hand-over, leave the accept queue to the next generation,
    // which accepts from the same socket: closing our descriptor does not close it.
    if !tracker.sweeps() {
        drop(listener);
        info!(
            pid,
            "http server stopped accepting on [{addr}]; the next generation serves it"
        );
        return;
    }
    // A plain shutdown: take what completed its handshake already (those clients are
    // waiting for an answer), then close the listener: new connections are refused.
    match listener.sweep() {
        Ok(taken) => {
            let n = taken.len();
            for io in taken {
                // Already accepted by the kernel: served past the limit rather than cut.
                spawn_connection(io, ctx, index);
            }
            info!(pid, queued = n, "http server stopped listening on [{addr}]");
        }
        Err(e) => warn!(pid, error = %e, "closing listener {addr}"),
    }
}

fn spawn_connection<IO, S, B>(io: IO, ctx: &Arc<Ctx<S>>, listener: usize)
where
    IO: AsyncRead + AsyncWrite + AsRawFd + AsFd + conn::Parkable + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    tokio::spawn(connection_task(io, ctx, listener, None, None));
}

/// Watches the server's parked connections (see `lot.rs`): serves again each one with
/// bytes to read, closes each one idle past the idle timeout; at the drain, serves
/// them all again (to move to the next generation, or drain) and ends.
async fn run_lot<S, B>(ctx: Arc<Ctx<S>>)
where
    S: HttpService<B>,
    B: HttpBody,
{
    let Some(lot) = &ctx.lot else { return };
    let draining = ctx.shutdown.tracker().reached(Phase::Draining);
    tokio::pin!(draining);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut woke = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = &mut draining => break,
            res = lot.woken(&mut woke) => {
                if let Err(e) = res {
                    warn!(error = %e, "watching parked connections failed; none is parked from now on");
                    break;
                }
                for entry in woke.drain(..) {
                    unpark(entry, &ctx);
                }
            }
            _ = tick.tick() => {
                let mut expired = Vec::new();
                lot.expired(&mut expired);
                if !expired.is_empty() {
                    debug!(n = expired.len(), "closing parked connections idle too long");
                }
                // Dropped: counted closed for a timeout, then closed.
                drop(expired);
            }
        }
    }
    for entry in lot.close() {
        unpark(entry, &ctx);
    }
}

/// A parked connection served again, by a new task: it reads the next request (or
/// its client's end) or, at the drain, moves to the next generation or drains.
fn unpark<S, B>(entry: lot::Entry, ctx: &Arc<Ctx<S>>)
where
    S: HttpService<B>,
    B: HttpBody,
{
    let (listener, tcp) = (entry.listener as usize, entry.tcp);
    let (fd, conn, slot) = entry.into_parts();
    let parked = (conn, slot);
    let spawned = if tcp {
        serve_again::<tokio::net::TcpStream, S, B>(fd, ctx, listener, parked)
    } else {
        serve_again::<tokio::net::UnixStream, S, B>(fd, ctx, listener, parked)
    };
    if let Err(e) = spawned {
        debug!(error = %e, "cannot serve a parked connection again: closed");
    }
}

fn serve_again<IO, S, B>(
    fd: std::os::fd::OwnedFd,
    ctx: &Arc<Ctx<S>>,
    listener: usize,
    parked: (crate::tracker::ParkedConn, slots::Slot),
) -> io::Result<()>
where
    IO: AsyncRead + AsyncWrite + AsRawFd + AsFd + conn::Parkable + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let io = IO::from_fd(fd)?;
    let handed = Some((Proto::Http1, Bytes::new()));
    tokio::spawn(connection_task(io, ctx, listener, handed, Some(parked)));
    Ok(())
}

/// What the previous generation knew of a connection it passed on.
type Handed = (Proto, Bytes);

/// Serves the connections the previous generation passes to this server's listeners
/// (`tcp`: whether each is a TCP listener).
fn taker<S, B>(ctx: &Arc<Ctx<S>>, tcp: Vec<bool>) -> crate::shutdown::Sink
where
    S: HttpService<B>,
    B: HttpBody,
{
    let ctx = Arc::clone(ctx);
    Arc::new(move |listener, fd, proto, buffered| {
        let Some(index) = ctx.names.iter().position(|n| n == listener) else {
            return;
        };
        let handed = Some((proto, Bytes::from(buffered)));
        // Socket options (`TCP_NODELAY`) travel with the socket.
        let spawned = if tcp[index] {
            let std = std::net::TcpStream::from(fd);
            std.set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(std))
                .map(|io| tokio::spawn(connection_task(io, &ctx, index, handed, None)))
        } else {
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(std))
                .map(|io| tokio::spawn(connection_task(io, &ctx, index, handed, None)))
        };
        match spawned {
            Ok(_) => ctx.shutdown.tracker().note_taken_over(),
            Err(e) => {
                warn!(listener, error = %e, "cannot serve a connection of the previous generation: closed")
            }
        }
    })
}

/// The task of one accepted connection (or one received from the previous
/// generation, `handed`, or a parked one served again, `parked`): registered with the
/// tracker, holding its slot of the connection limit until it ends or is parked.
fn connection_task<IO, S, B>(
    io: IO,
    ctx: &Arc<Ctx<S>>,
    listener: usize,
    handed: Option<Handed>,
    parked: Option<(crate::tracker::ParkedConn, slots::Slot)>,
) -> impl Future<Output = ()> + Send + use<IO, S, B>
where
    IO: AsyncRead + AsyncWrite + AsRawFd + AsFd + conn::Parkable + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let tracker = ctx.shutdown.tracker();
    let (slot, io) = match parked {
        None => (
            ctx.slots.take(),
            conn::TrackedIo::new(io, |fd| tracker.register_with(fd, ctx.limits)),
        ),
        Some((parked, slot)) => (
            slot,
            conn::TrackedIo::new(io, |fd| parked.unpark(fd, ctx.limits)),
        ),
    };
    let shared = Arc::clone(io.handle().shared());
    let tracker = Arc::clone(tracker.inner());
    let ctx = Arc::clone(ctx);
    async move {
        let mut slot = slot;
        #[cfg(feature = "tls")]
        if let Some(tls) = &ctx.tls {
            // Boxed: the TLS stream is twice the size of the task a plain connection
            // needs, and tokio moves that task several times per connection (a larger
            // task also moved hyper's read buffer into reallocations that copy). The
            // plain path pays nothing for TLS being possible.
            Box::pin(serve_tls(io, tls, &ctx, &tracker, &shared)).await;
            return;
        }
        // On the heap: serving is most of what a connection's task holds (hyper's
        // connection first), and tokio copies the task, whole, as it spawns and first
        // polls it; a task past the allocator's small-size cache also costs more to
        // allocate and free. Boxed, the task is a few hundred bytes, and this is
        // allocated once where it stays (see docs/BENCHMARKS.md, "serving cost").
        let (mut io, mut handed) = (io, handed);
        // Out of hyper to be parked (idle long enough, see `Server::park_idle_after`):
        // the task ends, the socket waits in the lot.
        while let Some((mut back, buffered)) = Box::pin(serve_connection(
            io, &ctx, &tracker, &shared, listener, handed,
        ))
        .await
        {
            if buffered.is_empty()
                && let Some(lot) = &ctx.lot
            {
                let idle_for = ctx.limits.park.unwrap_or_default();
                match lot.park(back, slot, listener, idle_for, ctx.limits.idle) {
                    Ok(()) => return,
                    Err(given_back) => (back, slot) = given_back,
                }
            }
            // Not parked (bytes of a next request came, or the drain started): a new
            // hyper connection serves on from where the last one stopped.
            (io, handed) = (back, Some((Proto::Http1, Bytes::from(buffered))));
        }
        drop(slot);
    }
}

/// The TLS handshake (in the connection's task, not the accept loop: a slow handshake
/// holds up no one), then HTTP over it.
#[cfg(feature = "tls")]
async fn serve_tls<IO, S, B>(
    io: conn::TrackedIo<IO>,
    tls: &Tls,
    ctx: &Ctx<S>,
    tracker: &Arc<crate::tracker::TrackerInner>,
    shared: &Arc<crate::tracker::ConnShared>,
) where
    IO: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let forced = conn_reached(tracker, shared, Phase::Forcing);
    let handshake = tokio::time::timeout(tls.handshake_timeout(), tls.acceptor().accept(io));
    let io = tokio::select! {
        res = handshake => match res {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!("TLS handshake timed out after {:?}", tls.handshake_timeout());
                return;
            }
        },
        () = forced => return,
    };
    // Never parked: its session state lives in rustls's buffers.
    let _ = serve_connection(io, ctx, tracker, shared, 0, None).await;
}

/// Serves HTTP on one connection (plain, or TLS once the handshake is done) until it
/// ends, drains, moves to the next generation or is forced. The first bytes tell
/// HTTP/2 (its preface) from HTTP/1, unless the previous generation knew already.
async fn serve_connection<IO, S, B>(
    mut io: IO,
    ctx: &Ctx<S>,
    tracker: &Arc<crate::tracker::TrackerInner>,
    shared: &Arc<crate::tracker::ConnShared>,
    listener: usize,
    handed: Option<Handed>,
) -> Option<(IO, Vec<u8>)>
where
    IO: AsyncRead + AsyncWrite + conn::Movable + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let pre = match handed {
        Some((Proto::Http1, pre)) => pre,
        handed => {
            let mut preface = match &handed {
                Some((_, bytes)) => conn::Preface::with(bytes),
                None => conn::Preface::default(),
            };
            match read_preface(&mut io, &mut preface, ctx, tracker, shared, listener).await {
                Some(true) => {
                    serve_h2(
                        io,
                        Bytes::copy_from_slice(preface.bytes()),
                        ctx,
                        tracker,
                        shared,
                    )
                    .await;
                    return None;
                }
                Some(false) => Bytes::copy_from_slice(preface.bytes()),
                None => return None,
            }
        }
    };
    serve_h1(conn::Rewind::new(io, pre), ctx, tracker, shared, listener).await
}

/// Reads the first bytes of a connection until they tell its protocol (`Some(true)`
/// for HTTP/2). `None`: the connection ended, was forced, moved to the next generation,
/// or stayed silent through a whole idle grace of a drain.
async fn read_preface<IO, S>(
    io: &mut IO,
    preface: &mut conn::Preface,
    ctx: &Ctx<S>,
    tracker: &Arc<crate::tracker::TrackerInner>,
    shared: &Arc<crate::tracker::ConnShared>,
    listener: usize,
) -> Option<bool>
where
    IO: AsyncRead + AsyncWrite + conn::Movable + Unpin,
{
    let draining = conn_reached(tracker, shared, Phase::Draining);
    let forced = conn_reached(tracker, shared, Phase::Forcing);
    tokio::pin!(draining, forced);
    let until_drain = std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = preface.poll_read(io, cx) {
            return Poll::Ready(Some(res));
        }
        draining.as_mut().poll(cx).map(|()| None)
    });
    match until_drain.await {
        Some(Ok(Some(h2))) => return Some(h2),
        Some(Ok(None)) => return None,
        Some(Err(e)) => {
            debug!(error = %e, "connection failed before its first request");
            return None;
        }
        None => {}
    }
    // The drain started before the first request: move to the next generation with
    // what was read of it, or wait a grace for it.
    if shared.moves()
        && hand_over(io.socket(), Proto::Unknown, preface.bytes(), ctx, listener).await
    {
        return None;
    }
    let mut seen = shared.activity().reads;
    loop {
        tokio::select! {
            biased;
            res = std::future::poll_fn(|cx| preface.poll_read(io, cx)) => return res.ok().flatten(),
            () = &mut forced => {
                shared.mark_forced();
                return None;
            }
            () = tokio::time::sleep(ctx.idle_grace) => {
                let now = shared.activity().reads;
                if now == seen {
                    return None;
                }
                seen = now;
            }
        }
    }
}

/// Sends the connection to the next generation, if it takes this listener's
/// connections; `true` once sent (it is the next generation's then: this one closes
/// its descriptor). `false` leaves it here, to drain as usual.
async fn hand_over<S>(
    socket: Option<std::os::fd::BorrowedFd<'_>>,
    proto: Proto,
    buffered: &[u8],
    ctx: &Ctx<S>,
    listener: usize,
) -> bool {
    let name = &ctx.names[listener];
    let (Some(successor), Some(socket)) = (ctx.shutdown.successor(), socket) else {
        return false;
    };
    if !successor.takes(name) || !Message::fits(name, buffered.len()) {
        return false;
    }
    let message = Message::Conn {
        listener: name.clone(),
        proto,
        buffered: buffered.to_vec(),
    };
    match successor.channel.send(&message, &[socket]).await {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, "cannot pass a connection to the next generation; it drains here");
            false
        }
    }
}

/// HTTP/2: hyper serves it until the drain, which sends GOAWAY.
async fn serve_h2<IO, S, B>(
    io: IO,
    pre: Bytes,
    ctx: &Ctx<S>,
    tracker: &Arc<crate::tracker::TrackerInner>,
    shared: &Arc<crate::tracker::ConnShared>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    // Not marked HTTP/2 before its first stream: one that opened just before the
    // drain gets a grace to send it (a GOAWAY before it would cancel it), as an idle
    // connection does.
    let service = service::DrainService::new(ctx.service.clone(), Arc::clone(shared));
    let draining = conn_reached(tracker, shared, Phase::Draining);
    let forced = conn_reached(tracker, shared, Phase::Forcing);
    let mut conn = Box::pin(
        ctx.http2
            .serve_connection(TokioIo::new(conn::Rewind::new(io, pre)), service),
    );
    let ended = conn::drive(
        conn.as_mut(),
        |c| c.graceful_shutdown(),
        shared,
        draining,
        forced,
        ctx.idle_grace,
        || false,
    )
    .await;
    if let conn::Ended::Done(Err(e)) = ended {
        debug!(error = %e, "connection ended with an error");
    }
}

/// HTTP/1 with upgrades (WebSocket); at a restart it moves to the next generation
/// between two requests, if it can (see [`Server::hand_over`]).
async fn serve_h1<IO, S, B>(
    mut io: conn::Rewind<IO>,
    ctx: &Ctx<S>,
    tracker: &Arc<crate::tracker::TrackerInner>,
    shared: &Arc<crate::tracker::ConnShared>,
    listener: usize,
) -> Option<(IO, Vec<u8>)>
where
    IO: AsyncRead + AsyncWrite + conn::Movable + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let mut may_move = true;
    loop {
        let service = service::DrainService::new(ctx.service.clone(), Arc::clone(shared));
        let draining = conn_reached(tracker, shared, Phase::Draining);
        let forced = conn_reached(tracker, shared, Phase::Forcing);
        // Inline, in the box of the connection's serving (which a parked connection
        // frees, buffers and all).
        let mut conn = ctx
            .http1
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let moves = || {
            may_move
                && shared.moves()
                && ctx
                    .shutdown
                    .successor()
                    .is_some_and(|s| s.takes(&ctx.names[listener]))
        };
        let ended = conn::drive(
            Pin::new(&mut conn),
            |c| c.graceful_shutdown(),
            shared,
            draining,
            forced,
            ctx.idle_grace,
            moves,
        )
        .await;
        if !matches!(ended, conn::Ended::Detached) {
            drop(conn);
            conn::note_upgrade(shared, &ended);
            if let conn::Ended::Done(Err(e)) = ended {
                debug!(error = %e, "connection ended with an error");
            }
            return None;
        }
        // In a block: what is left of hyper's connection (its read buffer, the service)
        // is freed here.
        let (inner, buffered) = {
            let parts = conn.into_parts()?;
            let (inner, unread) = parts.io.into_inner().into_parts();
            // What hyper read first, then what it had not read yet of what came before.
            let mut buffered = parts.read_buf.to_vec();
            buffered.extend_from_slice(unread.as_deref().unwrap_or_default());
            (inner, buffered)
        };
        if tracker.phase() < Phase::Draining {
            // Parked (idle long enough): the connection's task keeps the bare socket.
            return Some((inner, buffered));
        }
        if may_move
            && shared.moves()
            && Box::pin(hand_over(
                inner.socket(),
                Proto::Http1,
                &buffered,
                ctx,
                listener,
            ))
            .await
        {
            shared.mark_handed_over();
            return None;
        }
        // It stays: served again from where hyper stopped, to drain as usual.
        may_move = false;
        io = conn::Rewind::new(inner, Bytes::from(buffered));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task spawned per connection is small whatever the listener could be (TLS
    /// included): serving, hyper's connection first, is boxed; the task holds the
    /// socket only while it is parked. tokio copies the task as it spawns and first
    /// polls it, and a task past the allocator's small-size cache (1 KiB with tokio's
    /// header) costs more to allocate and free: both measurably cost every new
    /// connection (see docs/BENCHMARKS.md, "serving cost"). With the TLS path inline it
    /// was 4.5 KiB; with hyper's connection alone boxed, 1.2 KiB (release builds).
    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let shutdown = Shutdown::builder().build().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let ctx = Arc::new(Ctx {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
            service: app,
            shutdown,
            idle_grace: DEFAULT_IDLE_GRACE,
            limits: crate::tracker::Limits::default(),
            names: vec!["http".into()],
            slots: slots::Slots::new(16),
            tls: None,
            lot: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (io, _) = accepted.unwrap();
        let task = connection_task(io, &ctx, 0, None, None);
        let size = std::mem::size_of_val(&task);
        let plain = {
            let tracker = Arc::clone(ctx.shutdown.tracker().inner());
            let (other, _) = tokio::join!(
                tokio::net::TcpStream::connect(listener.local_addr().unwrap()),
                listener.accept()
            );
            let io = conn::TrackedIo::new(other.unwrap(), |fd| {
                ctx.shutdown.tracker().register_with(fd, ctx.limits)
            });
            let shared = Arc::clone(io.handle().shared());
            let fut = serve_connection(io, &ctx, &tracker, &shared, 0, None);
            std::mem::size_of_val(&fut)
        };
        drop((task, client));
        println!("a connection's task: {size} bytes; serving a plain connection: {plain}");
        // 320 bytes in a release build, a little more in a debug one.
        assert!(
            size <= 640,
            "a connection's task is {size} bytes; serving a plain connection needs {plain}"
        );
    }
}
