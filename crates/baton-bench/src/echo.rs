//! Echo mode: the hardest hand-over case, checked request by request.
//!
//! Each worker keeps one raw HTTP/1.1 keep-alive connection and writes on it, in a
//! random mix: pipelined batches (1 to 4 requests in one write, then their responses),
//! batches whose last request head is written in two parts with a pause between them,
//! and idle pauses between batches. Request `GET <base><worker>-<seq>` must be answered
//! `200` with the body `<worker>-<seq> pid=<pid>\n` (the demo's `/echo/{ID}`), in
//! request order: a response that is not its request's is *mismatched*; requests
//! outstanding when the connection closes or is reset without `Connection: close` are
//! *lost*. A response with `Connection: close` is fine: the worker reads it, opens a new
//! connection and sends there again the requests it had pipelined after it (the server
//! did not process them: RFC 9112 §9.6).

use std::time::Duration;

use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

use crate::load::{LoadConfig, Record, Rng, Shared};
use crate::outcome::{Outcome, classify};

/// The most requests written in one batch.
const MAX_BATCH: usize = 4;
/// The share of batches after an idle pause.
const IDLE_SHARE: f64 = 0.25;
/// The share of batches whose last request head is written in two parts.
const SPLIT_SHARE: f64 = 0.3;
/// The pause between the two parts of a split batch: uniform in [MIN, MAX).
const SPLIT_PAUSE: (Duration, Duration) = (Duration::from_millis(2), Duration::from_millis(30));
/// A response larger than this is malformed here (an echo is one short line).
const MAX_RESPONSE: usize = 1 << 20;
/// After a connection could not be made, the worker waits this long before its next
/// batch: a server that is not there is not hammered in a tight loop.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// A complete response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    /// The server closes the connection after it (`Connection: close`, an HTTP/1.0
    /// response without keep-alive, or a body delimited by the end of the connection).
    pub(crate) close: bool,
    pub(crate) body: Vec<u8>,
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A whole response, and the bytes it took (with the informational responses
    /// before it).
    Complete(Response, usize),
    /// Not a whole response yet.
    Partial,
    /// A whole head whose body runs to the end of the connection (no length, not
    /// chunked): the status, and where the body starts.
    UntilEof(u16, usize),
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Parses the response at the start of `buf`: status line and headers (httparse), then
/// a `Content-Length` or chunked body. Informational responses (`1xx` but `101`) are
/// skipped.
pub(crate) fn parse(buf: &[u8]) -> Result<Parsed, String> {
    let mut at = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(&buf[at..]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
            Err(e) => return Err(format!("malformed response head: {e}")),
        };
        let status = resp.code.unwrap_or(0);
        let http10 = resp.version == Some(0);
        let body_at = at + head;
        if status == 101 {
            return Err("101 Switching Protocols to a GET request".to_owned());
        }
        if (100..200).contains(&status) {
            at = body_at;
            continue;
        }
        let mut close = http10;
        let mut length: Option<usize> = None;
        // Some(true): chunked last; Some(false): another coding last (the body then runs
        // to the end of the connection, RFC 9112 §6.3).
        let mut chunked: Option<bool> = None;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|b| *b == b',').map(trim) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                        close = false;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("content-length") {
                let value = trim(h.value);
                let n = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| {
                        format!(
                            "content-length `{}` is not a length",
                            String::from_utf8_lossy(h.value)
                        )
                    })?;
                if length.is_some_and(|l| l != n) {
                    return Err("two different content-length headers".to_owned());
                }
                length = Some(n);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.split(|b| *b == b',').map(trim).next_back();
                chunked = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
            }
        }
        if status == 204 || status == 304 {
            let resp = Response {
                status,
                close,
                body: Vec::new(),
            };
            return Ok(Parsed::Complete(resp, body_at));
        }
        let (body, end) = match (chunked, length) {
            (Some(true), _) => match dechunk(&buf[body_at..])? {
                Some((body, n)) => (body, body_at + n),
                None => return Ok(Parsed::Partial),
            },
            (Some(false), _) | (None, None) => return Ok(Parsed::UntilEof(status, body_at)),
            (None, Some(n)) => {
                if n > MAX_RESPONSE {
                    return Err(format!("a body of {n} bytes"));
                }
                if buf.len() - body_at < n {
                    return Ok(Parsed::Partial);
                }
                (buf[body_at..body_at + n].to_vec(), body_at + n)
            }
        };
        return Ok(Parsed::Complete(
            Response {
                status,
                close,
                body,
            },
            end,
        ));
    }
}

/// A chunked body at the start of `buf`: the body and the bytes it took, or `None`
/// while incomplete.
fn dechunk(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let line_end = |from: usize| buf[from..].windows(2).position(|w| w == b"\r\n");
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let Some(eol) = line_end(at) else {
            if buf.len() - at > 1024 {
                return Err("a chunk size line longer than 1 KiB".to_owned());
            }
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let digits = trim(line.split(|b| *b == b';').next().unwrap_or_default());
        let size = std::str::from_utf8(digits)
            .ok()
            .filter(|d| !d.is_empty() && d.len() <= 15 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|d| usize::from_str_radix(d, 16).ok())
            .ok_or_else(|| format!("chunk size `{}`", String::from_utf8_lossy(line)))?;
        at += eol + 2;
        if size == 0 {
            // Trailer fields, up to an empty line.
            loop {
                let Some(eol) = line_end(at) else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some((body, at)));
                }
            }
        }
        if body.len() + size > MAX_RESPONSE {
            return Err(format!("a chunked body of more than {MAX_RESPONSE} bytes"));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("a chunk not followed by CRLF".to_owned());
        }
        at += size + 2;
    }
}

/// Checks a 200 response's body against request `<worker>-<seq>`: the server's PID, or
/// why it is not this request's (the report's message) and the PID it names (0 if
/// none).
pub(crate) fn check(body: &[u8], worker: usize, seq: u64) -> Result<u32, (&'static str, u32)> {
    const NOT_AN_ECHO: &str = "a body that is not `<id> pid=<pid>\\n`";
    let parsed = std::str::from_utf8(body)
        .ok()
        .and_then(|t| t.strip_suffix('\n'))
        .and_then(|line| line.rsplit_once(" pid="))
        .and_then(|(id, pid)| {
            pid.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| pid.parse::<u32>().ok())
                .flatten()
                .map(|pid| (id, pid))
        });
    let Some((id, pid)) = parsed else {
        return Err((NOT_AN_ECHO, 0));
    };
    let theirs = id
        .split_once('-')
        .and_then(|(w, s)| Some((w.parse::<usize>().ok()?, s.parse::<u64>().ok()?)));
    match theirs {
        Some((w, s)) if w == worker && s == seq => Ok(pid),
        Some((w, _)) if w != worker => Err((
            "another worker's id (a response meant for another connection)",
            pid,
        )),
        Some((_, s)) if s < seq => Err((
            "an earlier request's id (a response repeated, or out of order)",
            pid,
        )),
        Some(_) => Err((
            "a later request's id (out of order, or this request's response missing)",
            pid,
        )),
        None => Err(("an id this client never sent", pid)),
    }
}

/// The path prefix of the echo requests: the URL's path, `/echo/` for `/`.
pub(crate) fn echo_base(path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == "/" {
        "/echo/".to_owned()
    } else if path.ends_with('/') {
        path.to_owned()
    } else {
        format!("{path}/")
    }
}

/// Why no response was read.
#[derive(Debug)]
enum ReadError {
    Timeout,
    /// FIN; `partial` when part of a response had come.
    Closed {
        partial: bool,
    },
    Io(std::io::Error),
    Malformed(String),
}

/// A worker's connection and the bytes read from it and not yet parsed.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Reads the next response, by `deadline`.
    async fn response(&mut self, deadline: Instant) -> Result<Response, ReadError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match parse(&self.buf) {
                Ok(Parsed::Complete(resp, used)) => {
                    self.buf.drain(..used);
                    return Ok(resp);
                }
                Ok(Parsed::Partial | Parsed::UntilEof(..)) => {}
                Err(e) => return Err(ReadError::Malformed(e)),
            }
            if self.buf.len() > MAX_RESPONSE + 64 * 1024 {
                return Err(ReadError::Malformed(format!(
                    "more than {MAX_RESPONSE} bytes without a whole response"
                )));
            }
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(ReadError::Timeout),
                Ok(Ok(0)) => {
                    if let Ok(Parsed::UntilEof(status, body_at)) = parse(&self.buf) {
                        let body = self.buf.split_off(body_at);
                        self.buf.clear();
                        return Ok(Response {
                            status,
                            close: true,
                            body,
                        });
                    }
                    return Err(ReadError::Closed {
                        partial: !self.buf.is_empty(),
                    });
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(ReadError::Io(e)),
            }
        }
    }

    /// Before a batch on a kept connection: whether the server ended it while it was
    /// idle (a FIN or RST already there). Bytes that came unasked are kept: they are
    /// then read as the batch's first responses, and do not match.
    fn ended_while_idle(&mut self) -> Option<&'static str> {
        let mut chunk = [0u8; 4096];
        for _ in 0..16 {
            match self.stream.try_read(&mut chunk) {
                Ok(0) => {
                    return Some(
                        "the server closed the idle keep-alive connection (FIN) without Connection: close; the batch was due on it",
                    );
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(_) => {
                    return Some(
                        "the server reset the idle keep-alive connection (RST); the batch was due on it",
                    );
                }
            }
        }
        None
    }
}

struct Worker<'a> {
    cfg: &'a LoadConfig,
    shared: &'a Shared,
    index: usize,
    base: String,
    authority: &'a str,
    addr: std::net::SocketAddr,
    rng: Rng,
    conn: Option<Conn>,
    records: Vec<Record>,
}

/// One echo worker: batches until the run stops (or the requests of `-n` are taken);
/// returns its records.
pub(crate) async fn worker(cfg: &LoadConfig, shared: &Shared, index: usize) -> Vec<Record> {
    let target = &cfg.targets[index % cfg.targets.len()];
    let mut w = Worker {
        cfg,
        shared,
        index,
        base: echo_base(&target.path),
        authority: &target.authority,
        addr: target.addr,
        rng: Rng::new(index),
        conn: None,
        records: Vec::with_capacity(1 << 14),
    };
    let mut next_seq = 1u64;
    let mut resend: Vec<u64> = Vec::new();
    // Bounded: each turn takes a request ticket, or sends again requests that a
    // `Connection: close` response left unprocessed (at most MAX_BATCH - 1 of them,
    // fewer each time, as each close answers one).
    loop {
        let seqs = if resend.is_empty() {
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if !cfg.echo_idle.is_zero() && w.rng.unit() < IDLE_SHARE {
                shared.echo.idle.fetch_add(1, Ordering::Relaxed);
                let pause = cfg.echo_idle.mul_f64(w.rng.unit());
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shared.stopped() => break,
                }
            }
            let k = 1 + w.rng.below(MAX_BATCH);
            let mut seqs = Vec::with_capacity(k);
            while seqs.len() < k && shared.take_ticket(cfg) {
                seqs.push(next_seq);
                next_seq += 1;
            }
            if seqs.is_empty() {
                break;
            }
            seqs
        } else {
            std::mem::take(&mut resend)
        };
        resend = w.batch(&seqs).await;
    }
    w.records
}

impl Worker<'_> {
    fn record(
        &mut self,
        started: Instant,
        seq: u64,
        outcome: Outcome,
        pid: u32,
        failure: Option<(String, String)>,
    ) {
        let start_us = (started - self.shared.started).as_micros() as u64;
        if let Some((message, detail)) = failure {
            self.shared.note_failure_with(
                start_us,
                outcome,
                message,
                Some(format!("{detail} (request {}-{seq})", self.index)),
            );
        }
        self.shared.done.fetch_add(1, Ordering::Relaxed);
        self.records.push(Record {
            start_us,
            latency_us: started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
            pid,
            outcome,
        });
    }

    /// Each of `seqs` failed the same way.
    fn fail_all(&mut self, started: Instant, seqs: &[u64], outcome: Outcome, message: &str) {
        for &seq in seqs {
            self.record(
                started,
                seq,
                outcome,
                0,
                Some((message.to_owned(), message.to_owned())),
            );
        }
    }

    /// Writes the requests `seqs` in one batch (maybe split) and reads their responses;
    /// returns the requests to send again (pipelined after a `Connection: close`).
    async fn batch(&mut self, seqs: &[u64]) -> Vec<u64> {
        let started = Instant::now();
        let cfg = self.cfg;
        let mut conn = match self.conn.take() {
            Some(mut conn) => {
                if let Some(why) = conn.ended_while_idle() {
                    self.fail_all(started, seqs, Outcome::Lost, why);
                    return Vec::new();
                }
                conn
            }
            None => match timeout(cfg.timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    self.shared.opened.fetch_add(1, Ordering::Relaxed);
                    Conn {
                        stream,
                        buf: Vec::new(),
                    }
                }
                Ok(Err(e)) => {
                    let msg = format!("connect: {e}");
                    self.fail_all(started, seqs, classify(&e), &msg);
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    return Vec::new();
                }
                Err(_) => {
                    let msg = format!("connect: no connection within {:?}", cfg.timeout);
                    self.fail_all(started, seqs, Outcome::Timeout, &msg);
                    return Vec::new();
                }
            },
        };
        let deadline = Instant::now() + cfg.timeout;
        let mut bytes = Vec::with_capacity(seqs.len() * 64);
        let mut last_start = 0;
        for &seq in seqs {
            last_start = bytes.len();
            bytes.extend_from_slice(
                format!(
                    "GET {}{}-{seq} HTTP/1.1\r\nHost: {}\r\n\r\n",
                    self.base, self.index, self.authority
                )
                .as_bytes(),
            );
        }
        let shared = self.shared;
        let echo = &shared.echo;
        echo.batches.fetch_add(1, Ordering::Relaxed);
        if seqs.len() > 1 {
            echo.pipelined.fetch_add(1, Ordering::Relaxed);
        }
        // A split falls inside the last request's head: the ones before it are whole.
        let split = (self.rng.unit() < SPLIT_SHARE).then(|| {
            echo.split.fetch_add(1, Ordering::Relaxed);
            let at = last_start + 1 + self.rng.below(bytes.len() - last_start - 1);
            let pause = SPLIT_PAUSE.0 + (SPLIT_PAUSE.1 - SPLIT_PAUSE.0).mul_f64(self.rng.unit());
            (at, pause)
        });
        let written = timeout_at(deadline, async {
            match split {
                None => conn.stream.write_all(&bytes).await,
                Some((at, pause)) => {
                    conn.stream.write_all(&bytes[..at]).await?;
                    tokio::time::sleep(pause).await;
                    conn.stream.write_all(&bytes[at..]).await
                }
            }
        })
        .await;
        // A failed write still reads what came: responses to the requests written
        // before it, then the end that made it fail.
        let write_error = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => {
                let msg = format!("the batch could not be written within {:?}", cfg.timeout);
                self.fail_all(started, seqs, Outcome::Timeout, &msg);
                return Vec::new();
            }
        };
        let mut resend = Vec::new();
        let mut keep = true;
        for (i, &seq) in seqs.iter().enumerate() {
            match conn.response(deadline).await {
                Ok(resp) => {
                    if resp.status != 200 {
                        let msg = format!("status {}", resp.status);
                        self.record(started, seq, Outcome::Status, 0, Some((msg.clone(), msg)));
                        // The responses after an unexpected one are not trusted either.
                        keep = false;
                    } else {
                        match check(&resp.body, self.index, seq) {
                            Ok(pid) => self.record(started, seq, Outcome::Ok, pid, None),
                            Err((why, pid)) => {
                                let detail = format!(
                                    "{why}: `{}`",
                                    String::from_utf8_lossy(&resp.body).escape_debug()
                                );
                                self.record(
                                    started,
                                    seq,
                                    Outcome::Mismatched,
                                    pid,
                                    Some((why.to_owned(), detail)),
                                );
                                // Which response is whose is not known any more.
                                keep = false;
                            }
                        }
                    }
                    if resp.close {
                        self.shared
                            .echo
                            .close_responses
                            .fetch_add(1, Ordering::Relaxed);
                        keep = false;
                        let rest = &seqs[i + 1..];
                        self.shared
                            .resent
                            .fetch_add(rest.len() as u64, Ordering::Relaxed);
                        resend.extend_from_slice(rest);
                        break;
                    }
                }
                Err(e) => {
                    let (outcome, mut msg) = match e {
                        ReadError::Timeout => (
                            Outcome::Timeout,
                            format!("no complete response within {:?}", cfg.timeout),
                        ),
                        ReadError::Closed { partial: false } => (
                            Outcome::Lost,
                            "the server closed the connection (FIN) with requests outstanding, without Connection: close".to_owned(),
                        ),
                        ReadError::Closed { partial: true } => (
                            Outcome::Lost,
                            "the server closed the connection (FIN) in the middle of a response".to_owned(),
                        ),
                        ReadError::Io(e) => (
                            Outcome::Lost,
                            match e.kind() {
                                std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionAborted => {
                                    "the connection was reset (RST) with requests outstanding"
                                        .to_owned()
                                }
                                _ => format!("reading the responses failed: {e}"),
                            },
                        ),
                        ReadError::Malformed(m) => (
                            Outcome::Other,
                            format!("a malformed response ({m}); the rest of the batch is not read"),
                        ),
                    };
                    if let (Some(w), Outcome::Lost) = (&write_error, outcome) {
                        msg = format!("{msg}; writing the batch failed: {w}");
                    }
                    self.fail_all(started, &seqs[i..], outcome, &msg);
                    keep = false;
                    break;
                }
            }
        }
        if keep {
            self.conn = Some(conn);
        }
        resend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(status: u16, close: bool, body: &[u8], used: usize) -> Parsed {
        Parsed::Complete(
            Response {
                status,
                close,
                body: body.to_vec(),
            },
            used,
        )
    }

    #[test]
    fn content_length_keep_alive_and_close() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n1-7 pid=42\n\nHTTP/1.1";
        assert_eq!(
            parse(r),
            Ok(complete(200, false, b"1-7 pid=42\n\n", r.len() - 8))
        );
        // Every prefix of a response is partial.
        let whole =
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: Keep-Alive, CLOSE\r\n\r\nabc";
        for n in 0..whole.len() {
            assert_eq!(parse(&whole[..n]), Ok(Parsed::Partial), "{n}");
        }
        assert_eq!(parse(whole), Ok(complete(200, true, b"abc", whole.len())));
        // HTTP/1.0 closes unless it says keep-alive.
        let r = b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse(r), Ok(complete(200, true, b"", r.len())));
        let r = b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse(r), Ok(complete(200, false, b"", r.len())));
    }

    #[test]
    fn chunked_bodies_informational_responses_and_eof_bodies() {
        let r = b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nrest";
        assert_eq!(
            parse(r),
            Ok(complete(200, false, b"abc0123456789", r.len() - 4))
        );
        for n in 0..r.len() - 4 {
            assert_eq!(parse(&r[..n]), Ok(Parsed::Partial), "{n}");
        }
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse(r), Ok(complete(204, false, b"", r.len())));
        assert_eq!(parse(b"HTTP/1.1 100 Continue\r\n\r\n"), Ok(Parsed::Partial));
        let r = b"HTTP/1.1 200 OK\r\n\r\nbody";
        assert_eq!(parse(r), Ok(Parsed::UntilEof(200, 19)));
    }

    #[test]
    fn malformed_responses_are_errors() {
        for r in [
            &b"HTTTP/1.1 200 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcXY",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(parse(r).is_err(), "{}", String::from_utf8_lossy(r));
        }
    }

    #[test]
    fn echo_bodies_are_checked_against_their_request() {
        assert_eq!(check(b"3-17 pid=4242\n", 3, 17), Ok(4242));
        let why = |body: &[u8]| check(body, 3, 17).unwrap_err();
        assert!(why(b"3-16 pid=4242\n").0.starts_with("an earlier"));
        assert!(why(b"3-18 pid=4242\n").0.starts_with("a later"));
        assert!(why(b"4-17 pid=4242\n").0.starts_with("another worker"));
        assert!(why(b"x pid=4242\n").0.starts_with("an id this client"));
        assert_eq!(why(b"3-16 pid=4242\n").1, 4242);
        for body in [
            &b"3-17 pid=4242"[..],
            b"3-17 pid=42x\n",
            b"3-17\n",
            b"",
            b"3-17 pid=\n",
        ] {
            assert_eq!(why(body).1, 0, "{body:?}");
            assert!(why(body).0.contains("not `<id>"));
        }
    }

    #[test]
    fn the_echo_base_comes_from_the_url_path() {
        assert_eq!(echo_base("/"), "/echo/");
        assert_eq!(echo_base(""), "/echo/");
        assert_eq!(echo_base("/?x=1"), "/echo/");
        assert_eq!(echo_base("/echo"), "/echo/");
        assert_eq!(echo_base("/api/echo/"), "/api/echo/");
    }
}
