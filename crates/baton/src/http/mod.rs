//! Serving hyper services (and so axum routers) with connection tracking and a drain
//! without races.
//!
//! A [`Server`] accepts on one or more listeners (TCP, Unix) and serves HTTP/1.1 and
//! HTTP/2 (prior knowledge, "h2c") on the same port. Every connection is registered
//! with the [`Shutdown`] coordinator, which decides when the drain starts and ends.

#[cfg(feature = "admin")]
mod admin;
mod conn;
mod service;
mod slots;
#[cfg(feature = "tls")]
mod tls;

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};

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
    max_connections: Option<usize>,
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
            .field("max_connections", &self.max_connections)
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
            max_connections: None,
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
        // No timer in hyper: the header-read and idle timeouts are the tracker's sweep.
        let builder = auto::Builder::new(TokioExecutor::new());
        let ctx = Arc::new(Ctx {
            builder,
            service,
            shutdown: shutdown.clone(),
            idle_grace: self.idle_grace,
            limits: crate::tracker::Limits {
                header: Some(self.header_read_timeout),
                idle: Some(self.idle_timeout),
            },
            slots: slots::Slots::new(self.max_connections.unwrap_or_else(slots::default_max)),
            #[cfg(feature = "tls")]
            tls: self.tls,
        });
        shutdown.install_signal_handlers()?;
        shutdown.tracker().sweep();
        let pid = std::process::id();
        // Register every listener before starting any, so that an error leaves nothing
        // half-started.
        let mut ready = Vec::new();
        let mut dups = Vec::new();
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
        for (name, addr, accept, inherited) in ready {
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
                    Registered::Tcp(l) => accept_loop(l, &addr, &ctx).await,
                    Registered::Unix(l) => accept_loop(l, &addr, &ctx).await,
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
    builder: auto::Builder<TokioExecutor>,
    service: S,
    shutdown: Shutdown,
    idle_grace: Duration,
    /// The timeouts of each connection.
    limits: crate::tracker::Limits,
    /// The connection limit.
    slots: Arc<slots::Slots>,
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
    type Io: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static;
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

async fn accept_loop<A: Accept, S, B>(listener: A, addr: &ListenAddr, ctx: &Arc<Ctx<S>>)
where
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
            Ok(io) => spawn_connection(io, ctx),
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
                spawn_connection(io, ctx);
            }
            info!(pid, queued = n, "http server stopped listening on [{addr}]");
        }
        Err(e) => warn!(pid, error = %e, "closing listener {addr}"),
    }
}

fn spawn_connection<IO, S, B>(io: IO, ctx: &Arc<Ctx<S>>)
where
    IO: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    tokio::spawn(connection_task(io, ctx));
}

/// The task of one accepted connection: registered with the tracker, holding its slot
/// of the connection limit until it ends.
fn connection_task<IO, S, B>(
    io: IO,
    ctx: &Arc<Ctx<S>>,
) -> impl Future<Output = ()> + Send + use<IO, S, B>
where
    IO: AsyncRead + AsyncWrite + AsRawFd + Send + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let tracker = ctx.shutdown.tracker();
    let slot = ctx.slots.take();
    let io = conn::TrackedIo::new(io, |fd| tracker.register_with(fd, ctx.limits));
    let shared = Arc::clone(io.handle().shared());
    let tracker = Arc::clone(tracker.inner());
    let ctx = Arc::clone(ctx);
    async move {
        let _slot = slot;
        #[cfg(feature = "tls")]
        if let Some(tls) = &ctx.tls {
            // Boxed: the TLS stream is twice the size of the task a plain connection
            // needs, and tokio moves that task several times per connection (a larger
            // task also moved hyper's read buffer into reallocations that copy). The
            // plain path pays nothing for TLS being possible.
            Box::pin(serve_tls(io, tls, &ctx, &tracker, &shared)).await;
            return;
        }
        serve_connection(io, &ctx, &tracker, &shared).await;
    }
}

/// The TLS handshake (in the connection's task, not the accept loop: a slow handshake
/// holds up no one), then HTTP over it.
#[cfg(feature = "tls")]
async fn serve_tls<IO, S, B>(
    io: IO,
    tls: &Tls,
    ctx: &Ctx<S>,
    tracker: &Arc<crate::tracker::TrackerInner>,
    shared: &Arc<crate::tracker::ConnShared>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
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
    serve_connection(io, ctx, tracker, shared).await;
}

/// Serves HTTP on one connection (plain, or TLS once the handshake is done) until it
/// ends, drains or is forced.
async fn serve_connection<IO, S, B>(
    io: IO,
    ctx: &Ctx<S>,
    tracker: &Arc<crate::tracker::TrackerInner>,
    shared: &Arc<crate::tracker::ConnShared>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let service = service::DrainService::new(ctx.service.clone(), Arc::clone(shared));
    let draining = conn_reached(tracker, shared, Phase::Draining);
    let forced = conn_reached(tracker, shared, Phase::Forcing);
    let ended = {
        // On the heap: hyper's connection is most of what a connection's task holds,
        // and tokio copies the task, whole, several times as it spawns and first polls
        // it (a copy of 2 KiB per move). Boxed, the task is a few hundred bytes, and the
        // connection is allocated once where it stays.
        let mut conn = Box::pin(
            ctx.builder
                .serve_connection_with_upgrades(TokioIo::new(io), service),
        );
        conn::drive(
            conn.as_mut(),
            |c| c.graceful_shutdown(),
            shared,
            draining,
            forced,
            ctx.idle_grace,
        )
        .await
    };
    conn::note_upgrade(shared, &ended);
    if let conn::Ended::Done(Err(e)) = ended {
        debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task spawned per connection stays the size a plain hyper connection needs,
    /// whatever the listener could be (TLS included): tokio moves it several times per
    /// connection, and a larger task measurably costs every new connection (see
    /// docs/BENCHMARKS.md, "serving cost"). With the TLS path inline it was 4.5 KiB.
    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn a_connection_task_is_as_small_as_a_plain_one() {
        let shutdown = Shutdown::builder().build().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let ctx = Arc::new(Ctx {
            builder: auto::Builder::new(TokioExecutor::new()),
            service: app,
            shutdown,
            idle_grace: DEFAULT_IDLE_GRACE,
            limits: crate::tracker::Limits::default(),
            slots: slots::Slots::new(16),
            tls: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (io, _) = accepted.unwrap();
        let task = connection_task(io, &ctx);
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
            let fut = serve_connection(io, &ctx, &tracker, &shared);
            std::mem::size_of_val(&fut)
        };
        drop((task, client));
        println!("a connection's task: {size} bytes; serving a plain connection: {plain}");
        assert!(
            size <= plain + 256,
            "a connection's task is {size} bytes; serving a plain connection needs {plain}"
        );
    }
}
