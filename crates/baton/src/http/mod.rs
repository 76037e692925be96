//! Serving hyper services (and so axum routers) with connection tracking and a drain
//! without races.
//!
//! A [`Server`] accepts on one or more listeners (TCP, Unix) and serves HTTP/1.1 and
//! HTTP/2 (prior knowledge, "h2c") on the same port. Every connection is registered
//! with the [`Shutdown`] coordinator, which decides when the drain starts and ends.

mod accept;
#[cfg(feature = "admin")]
mod admin;
mod conn;
mod handover;
mod lot;
mod serve;
mod service;
mod slots;
mod takeover;
#[cfg(feature = "tls")]
mod tls;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::TokioExecutor;
use tracing::{info, warn};

use crate::addr::{IntoListenAddr, ListenAddr};
use crate::error::Error;
use crate::listener::Listener;
use crate::report::Report;
use crate::shutdown::Shutdown;
use accept::{Tcp, Unix, accept_loop};

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
            let name = crate::listener::default_listener_name(n);
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
    /// descriptors. The first server raises the process's soft descriptor limit to its
    /// hard limit (as nginx's `worker_rlimit_nofile` does), so the default follows the
    /// hard limit.
    ///
    /// At a restart, the connections that move from the previous generation come
    /// first: the new generation keeps slots for them before it accepts anything new,
    /// and a connection moves only once a slot is kept for it (until then the previous
    /// generation serves it on), so a limit never drops a client.
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
        raise_descriptor_limit();
        let names: Vec<String> = self.listeners.iter().map(|l| l.name().to_owned()).collect();
        let n_listeners = names.len();
        let movable = self.hand_over && plain;
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
                movable,
                park: self.park_idle_after.filter(|_| lot.is_some()),
            },
            lot,
            names,
            slots: slots::Slots::new(
                self.max_connections.unwrap_or_else(slots::default_max),
                n_listeners,
                // Connections of the previous generation come first (see `slots.rs`).
                movable && shutdown.has_predecessor(),
            ),
            #[cfg(feature = "tls")]
            tls: self.tls,
        });
        shutdown.install_signal_handlers()?;
        shutdown.tracker().sweep();
        if ctx.lot.is_some() {
            tokio::spawn(lot::watch(Arc::clone(&ctx)));
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
            shutdown.take_connections(takeover::Link::start(&ctx, kinds));
        } else {
            // Nothing comes to it, but the previous generation's totals and keys do.
            shutdown.start_inbound();
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

/// Raises the process's soft descriptor limit to its hard one, once (see
/// `sys::raise_nofile_limit`): the default connection limit follows it.
fn raise_descriptor_limit() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| match crate::sys::raise_nofile_limit() {
        Ok(limit) => tracing::debug!(limit, "descriptor limit"),
        Err(e) => warn!(error = %e, "cannot raise the descriptor limit to the hard limit"),
    });
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
