//! The load: workers that send requests back to back and record every one.

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

#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) authority: String,
    pub(crate) path: String,
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
    /// HTTP/2 connections ended by the server (GOAWAY) and replaced before a request.
    pub(crate) replaced: AtomicU64,
    pub(crate) first_failure: std::sync::Mutex<Vec<(u64, Outcome, String)>>,
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
            first_failure: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stopped.notify_waiters();
    }

    fn take_ticket(&self, cfg: &LoadConfig) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match cfg.max_requests {
            None => true,
            Some(max) => self.issued.fetch_add(1, Ordering::Relaxed) < max,
        }
    }

    fn note_failure(&self, at_us: u64, outcome: Outcome, message: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut sample = self.first_failure.lock().unwrap_or_else(|e| e.into_inner());
        if sample.len() < 100 {
            sample.push((at_us, outcome, message));
        }
    }
}

enum Conn {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// Why a request did not produce a response.
enum Failure {
    /// A new HTTP/2 connection was ended again before the request could be sent.
    NotSent,
    Failed(Outcome, String),
}

fn failed(e: &(dyn std::error::Error + 'static)) -> Failure {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Failure::Failed(classify(e), msg)
}

async fn connect(cfg: &LoadConfig, target: &Target) -> Result<Conn, Failure> {
    let stream = tokio::net::TcpStream::connect(target.addr)
        .await
        .map_err(|e| failed(&e))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    Ok(match cfg.http {
        Http::One => {
            let (sender, conn) = http1::handshake(io).await.map_err(|e| failed(&e))?;
            tokio::spawn(conn);
            Conn::H1(sender)
        }
        Http::Two => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| failed(&e))?;
            tokio::spawn(conn);
            Conn::H2(sender)
        }
    })
}

fn request(cfg: &LoadConfig, target: &Target) -> Request<Empty<Bytes>> {
    let mut builder = Request::get(match cfg.http {
        Http::One => target.path.clone(),
        Http::Two => format!("http://{}{}", target.authority, target.path),
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
    for _ in 0..2 {
        if conn.is_none() {
            *conn = Some(connect(cfg, target).await?);
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
            Conn::H2(s) => {
                // Either way below, the request was not sent: the connection is gone.
                if s.ready().await.is_ok() {
                    match s.try_send_request(request(cfg, target)).await {
                        Ok(resp) => return read(cfg, resp).await,
                        Err(mut e) => {
                            if e.take_message().is_none() {
                                return Err(failed(e.error()));
                            }
                        }
                    }
                }
                shared.replaced.fetch_add(1, Ordering::Relaxed);
                *conn = None;
            }
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

/// One worker: requests back to back until told to stop; returns its records.
pub(crate) async fn worker(cfg: Arc<LoadConfig>, shared: Arc<Shared>, index: usize) -> Vec<Record> {
    let target = &cfg.targets[index % cfg.targets.len()];
    let mut records = Vec::with_capacity(1 << 14);
    let mut conn: Option<Conn> = None;
    while shared.take_ticket(&cfg) {
        let started = Instant::now();
        let start_us = (started - shared.started).as_micros() as u64;
        let result = timeout(cfg.timeout, one(&cfg, target, &mut conn, &shared)).await;
        let latency_us = started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        let (outcome, pid) = match result {
            Ok(Ok((status, pid, closes))) => {
                if closes || cfg.mode == Mode::NewConn {
                    conn = None;
                }
                if (200..300).contains(&status) {
                    (Outcome::Ok, pid)
                } else {
                    shared.note_failure(start_us, Outcome::Status, format!("status {status}"));
                    (Outcome::Status, pid)
                }
            }
            Ok(Err(failure)) => {
                conn = None;
                let (outcome, msg) = match failure {
                    Failure::Failed(o, m) => (o, m),
                    Failure::NotSent => (
                        Outcome::Eof,
                        "a new HTTP/2 connection was closed before its first stream was sent"
                            .to_owned(),
                    ),
                };
                shared.note_failure(start_us, outcome, msg);
                (outcome, 0)
            }
            Err(_) => {
                conn = None;
                shared.note_failure(
                    start_us,
                    Outcome::Timeout,
                    format!("no complete response within {:?}", cfg.timeout),
                );
                (Outcome::Timeout, 0)
            }
        };
        shared.done.fetch_add(1, Ordering::Relaxed);
        records.push(Record {
            start_us,
            latency_us,
            pid,
            outcome,
        });
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_small() {
        assert!(std::mem::size_of::<Record>() <= 24);
    }
}
