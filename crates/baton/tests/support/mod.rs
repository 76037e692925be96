//! Test harness: runs the real `hello` demo as a child process on a free port, reads its
//! log, sends it real signals, and talks to it with a real HTTP client.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// How long any wait for an event may take. Generous: a loaded 2-core machine is slow,
/// and a wait that ends early because the event happened costs nothing.
pub const WAIT: Duration = Duration::from_secs(60);

/// The `hello` example, built by `cargo test` next to this test's own executable.
pub fn hello_exe() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let hello = dir.join("examples").join("hello");
    assert!(
        hello.exists(),
        "{} is missing: run the tests with `cargo test` (which builds the examples) or `cargo build --examples` first",
        hello.display()
    );
    hello
}

#[derive(Default)]
struct Log {
    lines: Vec<String>,
    closed: bool,
}

/// A running demo server.
pub struct Demo {
    child: Child,
    log: Arc<(Mutex<Log>, Condvar)>,
    pub addr: String,
    pub pid: u32,
    pub dir: tempfile::TempDir,
}

impl Demo {
    /// Starts `hello --listen 127.0.0.1:0 ARGS` and waits until it listens.
    pub fn start(args: &[&str]) -> Demo {
        Demo::start_with(&["--listen", "127.0.0.1:0"], args)
    }

    pub fn start_with(listen: &[&str], args: &[&str]) -> Demo {
        let mut cmd = Command::new(hello_exe());
        cmd.args(listen).args(args);
        Demo::spawn(cmd)
    }

    /// Runs `cmd` (which must run the demo) and waits for its first listening line.
    pub fn spawn(mut cmd: Command) -> Demo {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the demo");
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[demo] {line}");
                let (m, cv) = &*sink;
                m.lock().unwrap().lines.push(line);
                cv.notify_all();
            }
            let (m, cv) = &*sink;
            m.lock().unwrap().closed = true;
            cv.notify_all();
        });
        let pid = child.id();
        let mut demo = Demo {
            child,
            log,
            addr: String::new(),
            pid,
            dir,
        };
        let line = demo.wait_log("started listening on [");
        demo.addr = between(&line, "listening on [", "]").to_owned();
        demo
    }

    /// Waits for a log line containing `pat` (searching every line so far) and returns it.
    pub fn wait_log(&self, pat: &str) -> String {
        self.wait_log_nth(pat, 1)
    }

    /// Waits until `n` log lines contain `pat`; returns the n-th.
    pub fn wait_log_nth(&self, pat: &str, n: usize) -> String {
        off_runtime(|| self.wait_log_nth_blocking(pat, n))
    }

    fn wait_log_nth_blocking(&self, pat: &str, n: usize) -> String {
        let (m, cv) = &*self.log;
        let deadline = Instant::now() + WAIT;
        let mut log = m.lock().unwrap();
        loop {
            if let Some(line) = log.lines.iter().filter(|l| l.contains(pat)).nth(n - 1) {
                return line.clone();
            }
            let now = Instant::now();
            assert!(
                !log.closed && now < deadline,
                "no log line #{n} containing {pat:?} ({}); log so far:\n{}",
                if log.closed {
                    "the log closed"
                } else {
                    "timed out"
                },
                log.lines.join("\n")
            );
            log = cv.wait_timeout(log, deadline - now).unwrap().0;
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log.0.lock().unwrap().lines.clone()
    }

    /// Sends a real signal to the demo (and only to it), e.g. `"TERM"`.
    pub fn signal(&self, sig: &str) {
        use rustix::process::{Pid, Signal, kill_process};
        let sig = match sig {
            "TERM" => Signal::TERM,
            "INT" => Signal::INT,
            "QUIT" => Signal::QUIT,
            "HUP" => Signal::HUP,
            "USR1" => Signal::USR1,
            "USR2" => Signal::USR2,
            "KILL" => Signal::KILL,
            other => panic!("the harness does not know signal {other}"),
        };
        let pid = Pid::from_raw(self.pid as i32).expect("a child's pid is positive");
        kill_process(pid, sig).expect("signal the demo");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        off_runtime(|| self.wait_exit_blocking())
    }

    fn wait_exit_blocking(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the log reader see the last lines.
                let (m, cv) = &*self.log;
                let mut log = m.lock().unwrap();
                while !log.closed {
                    log = cv.wait_timeout(log, Duration::from_secs(5)).unwrap().0;
                }
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the demo did not exit within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts `GET /sleep?secs=SECS` on a new connection and returns once the server
    /// logged its start: the request is in flight.
    pub fn sleep_in_flight(&self, secs: &str) -> tokio::task::JoinHandle<Result<Resp, BoxError>> {
        let addr = self.addr.clone();
        let path = format!("/sleep?secs={secs}");
        let request = tokio::spawn(async move { get(&addr, &path).await });
        self.wait_log(&format!("sleep {secs}s: start"));
        request
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let from = s.find(start).expect("start marker") + start.len();
    let to = s[from..].find(end).expect("end marker") + from;
    &s[from..to]
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn closes(&self) -> bool {
        self.headers
            .get(hyper::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/1.1 connection, kept alive between requests.
pub struct Http1 {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    host: String,
}

impl Http1 {
    pub async fn connect(addr: &str) -> Result<Http1, BoxError> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        Ok(Http1 {
            sender,
            conn: tokio::spawn(conn),
            host: addr.to_owned(),
        })
    }

    pub async fn request(&mut self, method: &str, path: &str) -> Result<Resp, BoxError> {
        self.sender.ready().await?;
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host)
            .body(Empty::new())?;
        let res = self.sender.send_request(req).await?;
        let (parts, body) = res.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Resp {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Resp, BoxError> {
        self.request("GET", path).await
    }

    /// Waits for the *server* to end the connection; `Ok` when it ended cleanly.
    pub async fn closed(self) -> Result<(), BoxError> {
        // Keep the sender while waiting: dropping it makes the client close the
        // connection itself, which is not what is being checked.
        let Http1 { sender, conn, .. } = self;
        let ended = tokio::time::timeout(WAIT, conn).await;
        drop(sender);
        ended??.map_err(Into::into)
    }
}

/// A request on a new connection.
pub async fn get(addr: &str, path: &str) -> Result<Resp, BoxError> {
    Http1::connect(addr).await?.get(path).await
}

pub async fn post(addr: &str, path: &str) -> Result<Resp, BoxError> {
    Http1::connect(addr).await?.request("POST", path).await
}

/// Runs a blocking wait (a log line, an exit) without stalling the async clients of a
/// multi-threaded test runtime.
fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}
