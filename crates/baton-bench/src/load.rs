//! The load: workers that send requests back to back (or, in idle mode, one after each
//! reload trigger) and record every one.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper::header::{CONNECTION, HOST, HeaderName};
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::time::{Instant, timeout};

use crate::outcome::{Outcome, classify};

/// One request's record: 16 bytes, so that millions fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Record {
    /// Start, in microseconds since the run began.
    pub(crate) start_us: u64,
    /// Latency in microseconds (connect included in new-connection mode).
    pub(crate) latency_us: u32,
    /// The server's PID if it reported one, else 0.
    pub(crate) pid: u32,
    pub(crate) outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Mode {
    /// Reuse each connection for request after request.
    KeepAlive,
    /// A new connection for every request (`Connection: close`).
    NewConn,
    /// One keep-alive connection per worker, idle between reload triggers; after each
    /// trigger every worker sends one request on it at a random moment within
    /// `--idle-spread`.
    Idle,
    /// One raw HTTP/1.1 keep-alive connection per worker: pipelined batches of 1 to 4
    /// `GET <base><worker>-<seq>`, heads written in two parts, idle pauses; every
    /// response checked against its request (the demo's `/echo/{ID}`).
    Echo,
}

impl Mode {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::NewConn => "new-conn",
            Mode::Idle => "idle",
            Mode::Echo => "echo",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Http {
    One,
    Two,
}

/// Where the server's PID is found in a response.
#[derive(Debug, Clone)]
pub(crate) enum PidFrom {
    None,
    Header(HeaderName),
    Body,
}

pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) authority: String,
    pub(crate) path: String,
    /// HTTPS: the connector (roots from `--tls-ca`, ALPN for the HTTP version) and the
    /// name the certificate must carry.
    pub(crate) tls: Option<(
        tokio_rustls::TlsConnector,
        tokio_rustls::rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A client connection's byte stream: plain TCP, or TLS over it. An enum (one branch
/// per call) rather than a boxed trait object, so the plain path costs what it did.
enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Debug)]
pub(crate) struct LoadConfig {
    pub(crate) targets: Vec<Target>,
    pub(crate) mode: Mode,
    pub(crate) http: Http,
    pub(crate) timeout: Duration,
    pub(crate) pid_from: PidFrom,
    /// Stop after this many requests (all workers together), if set.
    pub(crate) max_requests: Option<u64>,
    /// HTTP/2 requests each worker keeps in flight on its connection (1 for HTTP/1).
    pub(crate) streams: usize,
    /// Idle mode: each worker's request follows a trigger by a uniformly random delay in
    /// [0, this).
    pub(crate) idle_spread: Duration,
    /// Echo mode: an idle pause is uniformly random in [0, this).
    pub(crate) echo_idle: Duration,
}

/// At most this many distinct failure messages are counted one by one.
const MAX_FAILURE_LINES: usize = 1000;

/// Failures with the same class and message, counted.
#[derive(Debug, Default)]
pub(crate) struct FailureLines {
    /// (class, message) -> (count, first start in µs since the run began).
    pub(crate) lines: HashMap<(Outcome, String), (u64, u64)>,
    /// Failures whose message did not fit in `lines` any more.
    pub(crate) uncounted: u64,
}

/// What the echo workers did, for the report.
#[derive(Debug, Default)]
pub(crate) struct EchoCounters {
    pub(crate) batches: AtomicU64,
    /// Batches of 2 to 4 requests in one write.
    pub(crate) pipelined: AtomicU64,
    /// Batches whose last request head was written in two parts.
    pub(crate) split: AtomicU64,
    /// Idle pauses before a batch.
    pub(crate) idle: AtomicU64,
    /// Responses with `Connection: close`.
    pub(crate) close_responses: AtomicU64,
}

/// What the workers share while running.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) started: Instant,
    pub(crate) stop: AtomicBool,
    /// Woken when `stop` is set, so that the reload task does not wait for its next tick.
    pub(crate) stopped: tokio::sync::Notify,
    pub(crate) issued: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// HTTP/2 connections ended by the server (GOAWAY, or closed) and replaced.
    pub(crate) replaced: AtomicU64,
    /// Connections the clients opened (successfully), first ones included: beyond one
    /// per client in keep-alive and idle modes, each is one the server had closed (or
    /// one a failure made the client drop).
    pub(crate) opened: AtomicU64,
    /// HTTP/2 requests that the server did not process (refused by GOAWAY or
    /// `REFUSED_STREAM`, or not sent on a connection already ended) and that were sent
    /// again.
    pub(crate) resent: AtomicU64,
    pub(crate) first_failure: std::sync::Mutex<Vec<(u64, Outcome, String)>>,
    pub(crate) failure_lines: std::sync::Mutex<FailureLines>,
    /// The reload triggers (or, in idle mode without `--reload`, the ticks): how many so
    /// far and when the last one started. Idle workers wait on it.
    pub(crate) ticks: tokio::sync::watch::Sender<(u64, Instant)>,
    /// Echo mode's counts of what it did.
    pub(crate) echo: EchoCounters,
}

impl Shared {
    pub(crate) fn new(started: Instant) -> Self {
        Shared {
            started,
            stop: AtomicBool::new(false),
            stopped: tokio::sync::Notify::new(),
            issued: AtomicU64::new(0),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            replaced: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            first_failure: std::sync::Mutex::new(Vec::new()),
            failure_lines: std::sync::Mutex::new(FailureLines::default()),
            ticks: tokio::sync::watch::Sender::new((0, started)),
            echo: EchoCounters::default(),
        }
    }

    /// Tells idle workers that a trigger (or tick) started at `at`.
    pub(crate) fn tick(&self, at: Instant) {
        self.ticks.send_modify(|(n, t)| {
            *n += 1;
            *t = at;
        });
    }

    /// Returns once the run is told to stop.
    pub(crate) async fn stopped(&self) {
        let stopped = self.stopped.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        stopped.await;
    }

    pub(crate) fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stopped.notify_waiters();
    }

    pub(crate) fn take_ticket(&self, cfg: &LoadConfig) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match cfg.max_requests {
            None => true,
            Some(max) => self.issued.fetch_add(1, Ordering::Relaxed) < max,
        }
    }

    pub(crate) fn note_failure(&self, at_us: u64, outcome: Outcome, message: String) {
        self.note_failure_with(at_us, outcome, message, None);
    }

    /// A failure counted under `message`, with `detail` (when given) in its place in the
    /// sample of first failures: identical failures count together, and the first ones
    /// still say exactly what came.
    pub(crate) fn note_failure_with(
        &self,
        at_us: u64,
        outcome: Outcome,
        message: String,
        detail: Option<String>,
    ) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        {
            let mut counted = self.failure_lines.lock().unwrap_or_else(|e| e.into_inner());
            let full = counted.lines.len() >= MAX_FAILURE_LINES;
            match counted.lines.get_mut(&(outcome, message.clone())) {
                Some((n, first)) => {
                    *n += 1;
                    *first = (*first).min(at_us);
                }
                None if full => counted.uncounted += 1,
                None => {
                    counted.lines.insert((outcome, message.clone()), (1, at_us));
                }
            }
        }
        let mut sample = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
        if sample.len() < 100 {
            sample.push((at_us, outcome, detail.unwrap_or(message)));
        }
    }
}

enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// Why a request did not produce a response.
pub(crate) enum Failure {
    /// The server did not process the request on two HTTP/2 connections in a row.
    NotSent,
    Failed(Outcome, String),
}

/// The error and its sources, as one line.
fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn failed(e: &(dyn std::error::Error + 'static)) -> Failure {
    Failure::Failed(classify(e), message(e))
}

/// How the server declined an HTTP/2 request without processing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotProcessed {
    /// The connection is ended: the request was not sent, or its stream was above the
    /// last stream id of the server's GOAWAY. The connection is replaced.
    Connection,
    /// `RST_STREAM` with `REFUSED_STREAM`: this stream only, the connection goes on.
    Stream,
}

/// Whether an HTTP/2 request's error says that the server did not process it.
///
/// h2 gives a GOAWAY from the server ("connection error received: ...") only to the
/// streams above the GOAWAY's last stream id and to streams opened after it, never to a
/// stream that the server accepted (that one ends with the connection, as a broken pipe):
/// both mean "not processed" (RFC 9113 §6.8), as does `REFUSED_STREAM` (§8.7). h2 is not
/// a direct dependency, so its error is recognised by its text; the tests in
/// `tests/streams.rs` hold this against the h2 of `Cargo.lock`.
fn not_processed(e: &(dyn std::error::Error + 'static)) -> Option<NotProcessed> {
    let mut src = Some(e);
    while let Some(e) = src {
        let text = e.to_string();
        if text.starts_with("connection error received: ") {
            return Some(NotProcessed::Connection);
        }
        if text.starts_with("stream error received: refused stream") {
            return Some(NotProcessed::Stream);
        }
        src = e.source();
    }
    None
}

/// A new connection to the target: TCP, and the TLS handshake for HTTPS (a failed
/// handshake is a failed request, classified by its I/O error).
async fn tcp(target: &Target) -> Result<TokioIo<Stream>, Failure> {
    let stream = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|e| failed(&e))?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(match &target.tls {
        None => Stream::Plain(stream),
        Some((connector, name)) => Stream::Tls(Box::new(
            connector
                .connect(name.clone(), stream)
                .await
                .map_err(|e| failed(&e))?,
        )),
    }))
}

pub(crate) async fn connect_h2(
    target: &Target,
) -> Result<http2::SendRequest<Empty<Bytes>>, Failure> {
    let (sender, conn) = http2::handshake(TokioExecutor::new(), tcp(target).await?)
        .await
        .map_err(|e| failed(&e))?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn connect(cfg: &LoadConfig, target: &Target) -> Result<Conn, Failure> {
    Ok(match cfg.http {
        Http::One => {
            let (sender, conn) = http1::handshake(tcp(target).await?)
                .await
                .map_err(|e| failed(&e))?;
            tokio::spawn(conn);
            Conn::H1(sender)
        }
        Http::Two => Conn::H2(connect_h2(target).await?),
    })
}

fn request(cfg: &LoadConfig, target: &Target) -> Request<Empty<Bytes>> {
    let mut builder = Request::get(match cfg.http {
        Http::One => target.path.clone(),
        Http::Two => format!(
            "{}://{}{}",
            if target.tls.is_some() {
                "https"
            } else {
                "http"
            },
            target.authority,
            target.path
        ),
    });
    if cfg.http == Http::One {
        builder = builder.header(HOST, &target.authority);
        if cfg.mode == Mode::NewConn {
            builder = builder.header(CONNECTION, "close");
        }
    }
    builder
        .body(Empty::new())
        .expect("a GET with a valid URI and headers builds")
}

/// What became of one request on an HTTP/2 connection.
pub(crate) enum H2 {
    Done(Result<(u16, u32, bool), Failure>),
    NotProcessed(NotProcessed),
}

/// Sends one request on an HTTP/2 connection and reads the whole response.
pub(crate) async fn h2_request(
    cfg: &LoadConfig,
    target: &Target,
    s: &mut http2::SendRequest<Empty<Bytes>>,
) -> H2 {
    if s.ready().await.is_err() {
        // The connection is gone: the request was not sent.
        return H2::NotProcessed(NotProcessed::Connection);
    }
    match s.try_send_request(request(cfg, target)).await {
        Ok(resp) => H2::Done(read(cfg, resp).await),
        Err(mut e) => {
            if e.take_message().is_some() {
                return H2::NotProcessed(NotProcessed::Connection);
            }
            match not_processed(e.error()) {
                Some(how) => H2::NotProcessed(how),
                None => H2::Done(Err(failed(e.error()))),
            }
        }
    }
}

/// Sends one request on `conn` (connecting first if needed) and reads the whole
/// response. Returns the status, the server PID if found, and whether the server said
/// it closes the connection.
///
/// HTTP/1: a keep-alive connection that the server closed without a
/// `Connection: close` is a failure even when the client notices before writing: a
/// client with no time between requests (wrk) would have written into it. That is the
/// race that loses requests at nginx's reloads, and exactly what a verifier must count.
/// HTTP/2: a connection ended by GOAWAY is replaced and the request sent on a new one;
/// GOAWAY tells the client which streams were not processed, so nothing was lost.
async fn one(
    cfg: &LoadConfig,
    target: &Target,
    conn: &mut Option<Conn>,
    shared: &Shared,
) -> Result<(u16, u32, bool), Failure> {
    const CLOSED: &str =
        "the server closed the keep-alive connection before the next request could be sent";
    // At most one replacement of a GOAWAY'd HTTP/2 connection.
    for attempt in 0..2 {
        if conn.is_none() {
            *conn = Some(connect(cfg, target).await?);
            shared.opened.fetch_add(1, Ordering::Relaxed);
        }
        match conn.as_mut().expect("just connected") {
            Conn::H1(s) => {
                if s.ready().await.is_err() {
                    return Err(Failure::Failed(Outcome::Eof, CLOSED.to_owned()));
                }
                return match s.try_send_request(request(cfg, target)).await {
                    Ok(resp) => read(cfg, resp).await,
                    Err(mut e) => match e.take_message() {
                        Some(_unsent) => Err(Failure::Failed(Outcome::Eof, CLOSED.to_owned())),
                        None => Err(failed(e.error())),
                    },
                };
            }
            Conn::H2(s) => match h2_request(cfg, target, s).await {
                H2::Done(result) => return result,
                H2::NotProcessed(how) => {
                    if attempt == 0 {
                        shared.resent.fetch_add(1, Ordering::Relaxed);
                    }
                    if how == NotProcessed::Connection {
                        shared.replaced.fetch_add(1, Ordering::Relaxed);
                        *conn = None;
                    }
                }
            },
        }
    }
    Err(Failure::NotSent)
}

async fn read(cfg: &LoadConfig, resp: Response<Incoming>) -> Result<(u16, u32, bool), Failure> {
    let status = resp.status().as_u16();
    let closes = resp
        .headers()
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut pid = match &cfg.pid_from {
        PidFrom::Header(name) => resp
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(&e))?
        .to_bytes();
    if let PidFrom::Body = cfg.pid_from {
        pid = std::str::from_utf8(&body)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
    }
    Ok((status, pid, closes))
}

type Attempt = Result<Result<(u16, u32, bool), Failure>, tokio::time::error::Elapsed>;

/// Records one request's result and counts it; also says whether its connection is to
/// be dropped (the server said it closes it, the mode wants a new one, or it failed).
pub(crate) fn settle(
    cfg: &LoadConfig,
    shared: &Shared,
    started: Instant,
    result: Attempt,
) -> (Record, bool) {
    let start_us = (started - shared.started).as_micros() as u64;
    let latency_us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
    let (outcome, pid, drop_conn) = match result {
        Ok(Ok((status, pid, closes))) => {
            let drop_conn = closes || cfg.mode == Mode::NewConn;
            if (200..300).contains(&status) {
                (Outcome::Ok, pid, drop_conn)
            } else {
                shared.note_failure(start_us, Outcome::Status, format!("status {status}"));
                (Outcome::Status, pid, drop_conn)
            }
        }
        Ok(Err(failure)) => {
            let (outcome, msg) = match failure {
                Failure::Failed(o, m) => (o, m),
                Failure::NotSent => (
                    Outcome::Eof,
                    "the server did not process the request on two HTTP/2 connections in a row \
                     (GOAWAY, or a connection closed before the request was sent)"
                        .to_owned(),
                ),
            };
            shared.note_failure(start_us, outcome, msg);
            (outcome, 0, true)
        }
        Err(_) => {
            shared.note_failure(
                start_us,
                Outcome::Timeout,
                format!("no complete response within {:?}", cfg.timeout),
            );
            (Outcome::Timeout, 0, true)
        }
    };
    shared.done.fetch_add(1, Ordering::Relaxed);
    let record = Record {
        start_us,
        latency_us,
        pid,
        outcome,
    };
    (record, drop_conn)
}

/// One request on the worker's connection, timed and recorded.
async fn timed(
    cfg: &LoadConfig,
    shared: &Shared,
    target: &Target,
    conn: &mut Option<Conn>,
) -> Record {
    let started = Instant::now();
    let result = timeout(cfg.timeout, one(cfg, target, conn, shared)).await;
    let (record, drop_conn) = settle(cfg, shared, started, result);
    if drop_conn {
        *conn = None;
    }
    record
}

/// One worker: requests back to back until told to stop (or, in idle mode, one after
/// each trigger); returns its records. (The echo mode's workers are `echo::worker`, HTTP/2
/// with several streams `streams::worker`.)
pub(crate) async fn worker(cfg: Arc<LoadConfig>, shared: Arc<Shared>, index: usize) -> Vec<Record> {
    if cfg.mode == Mode::Idle {
        return idle_worker(&cfg, &shared, index).await;
    }
    let target = &cfg.targets[index % cfg.targets.len()];
    let mut records = Vec::with_capacity(1 << 14);
    let mut conn: Option<Conn> = None;
    while shared.take_ticket(&cfg) {
        records.push(timed(&cfg, &shared, target, &mut conn).await);
    }
    records
}

/// Idle mode: a warm-up request opens the connection; then one request after each
/// trigger, at a uniformly random moment in [trigger, trigger + `idle_spread`). A
/// worker still busy with its request when the next trigger comes answers only the
/// latest trigger.
async fn idle_worker(cfg: &LoadConfig, shared: &Shared, index: usize) -> Vec<Record> {
    let target = &cfg.targets[index % cfg.targets.len()];
    let mut rng = Rng::new(index);
    let mut ticks = shared.ticks.subscribe();
    let mut records = Vec::new();
    let mut conn: Option<Conn> = None;
    if !shared.take_ticket(cfg) {
        return records;
    }
    records.push(timed(cfg, shared, target, &mut conn).await);
    loop {
        tokio::select! {
            changed = ticks.changed() => if changed.is_err() { break },
            () = shared.stopped() => break,
        }
        let at = ticks.borrow_and_update().1;
        let when = at + cfg.idle_spread.mul_f64(rng.unit());
        tokio::select! {
            () = tokio::time::sleep_until(when) => {}
            () = shared.stopped() => break,
        }
        if !shared.take_ticket(cfg) {
            break;
        }
        records.push(timed(cfg, shared, target, &mut conn).await);
    }
    records
}

/// A small random number generator (splitmix64) seeded from the standard library's
/// random hash keys: enough to spread idle requests, and no dependency.
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(stream: usize) -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(stream);
        Rng(h.finish())
    }

    /// Uniform in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n) (0 when n is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f64) as usize).min(n.saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_small() {
        assert!(std::mem::size_of::<Record>() <= 24);
    }

    #[test]
    fn the_random_delays_are_uniform_in_the_unit_interval() {
        let mut rng = Rng::new(7);
        let mut tenths = [0u32; 10];
        for _ in 0..100_000 {
            let u = rng.unit();
            assert!((0.0..1.0).contains(&u), "{u}");
            tenths[(u * 10.0) as usize] += 1;
        }
        // 10,000 expected in each tenth; 5 standard deviations are about 475.
        for n in tenths {
            assert!((9_500..10_500).contains(&n), "{tenths:?}");
        }
        // Two workers do not draw the same sequence.
        assert_ne!(Rng::new(1).unit(), Rng::new(2).unit());
    }

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn goaway_and_refused_stream_are_not_processed() {
        let goaway = Chain(
            "http2 error",
            Some(Box::new(Chain(
                "connection error received: not a result of an error",
                None,
            ))),
        );
        assert_eq!(not_processed(&goaway), Some(NotProcessed::Connection));
        let refused = Chain(
            "http2 error",
            Some(Box::new(Chain(
                "stream error received: refused stream before processing any application logic",
                None,
            ))),
        );
        assert_eq!(not_processed(&refused), Some(NotProcessed::Stream));
        let pipe = Chain("stream closed because of a broken pipe", None);
        assert_eq!(not_processed(&pipe), None);
    }
}
