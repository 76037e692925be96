//! Helpers shared by the verifier's tests: running `baton-bench`, and small HTTP/1.1
//! servers on 127.0.0.1 whose behaviour each test chooses by the request path.
#![allow(dead_code, clippy::unwrap_used, unreachable_pub)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One run of `baton-bench`: exit status, JSON report, stdout (the text report), stderr.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub report: Value,
    pub stdout: String,
    pub stderr: String,
    /// The SVG, when `plot` was asked for.
    pub svg: Option<String>,
}

/// Runs `baton-bench ARGS --json FILE --quiet` (and `--plot FILE` if `plot`).
pub fn run(args: &[&str], plot: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let svg = dir.path().join("r.svg");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton-bench"));
    cmd.args(args).arg("--json").arg(&json).arg("--quiet");
    if plot {
        cmd.arg("--plot").arg(&svg);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no report ({e}); stderr: {stderr}"));
    Run {
        code: out.status.code(),
        report: serde_json::from_str(&report).unwrap(),
        stdout,
        stderr,
        svg: plot.then(|| std::fs::read_to_string(&svg).unwrap()),
    }
}

/// Runs `baton-bench ARGS` in a blocking task (the test's servers run on its runtime).
pub async fn bench(args: &[&str]) -> Run {
    bench_with(args, false).await
}

pub async fn bench_with(args: &[&str], plot: bool) -> Run {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, plot)
    })
    .await
    .unwrap()
}

/// Runs `baton-bench ARGS` expecting it to refuse them: returns (exit status, stderr).
pub fn usage_error(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .args(args)
        .arg("--quiet")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The failure classes with a count above zero.
pub fn failures(report: &Value) -> Vec<(String, u64)> {
    report["failures"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap() > 0)
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

/// What an HTTP/1.1 test server saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub connections: AtomicU64,
    /// Every request: when it arrived, on which connection (numbered from 1).
    pub requests: Mutex<Vec<(Instant, u64)>>,
}

impl Seen {
    pub fn requests(&self) -> Vec<(Instant, u64)> {
        self.requests.lock().unwrap().clone()
    }
}

/// An HTTP/1.1 server whose behaviour is chosen by the request path:
///
/// - `/ok`: 200, keep-alive.
/// - `/500`: 500, keep-alive.
/// - `/idle-close`: 200, keep-alive; then, if no next request comes within 50 ms, the
///   server closes the connection without having said `Connection: close` (an idle
///   timeout, or nginx's old workers at a reload).
/// - `/close-each`: 200 with `Connection: close`, then closes.
pub async fn http1_server() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let seen = Arc::clone(&seen2);
            let conn = seen.connections.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut idle_limit: Option<Duration> = None;
                loop {
                    // Read one whole request head (GET, no body).
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let read = stream.read(&mut buf);
                        let n = match idle_limit.filter(|_| head.is_empty()) {
                            Some(limit) => match tokio::time::timeout(limit, read).await {
                                Ok(r) => r,
                                Err(_) => return, // idle too long: close, FIN
                            },
                            None => read.await,
                        };
                        match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.requests.lock().unwrap().push((Instant::now(), conn));
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let response: &[u8] = match path.as_str() {
                        "/500" => {
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
                        }
                        "/close-each" => {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
                        }
                        _ => b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n",
                    };
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                    match path.as_str() {
                        "/close-each" => return,
                        "/idle-close" => idle_limit = Some(Duration::from_millis(50)),
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen)
}
