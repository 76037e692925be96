//! Echo mode: raw HTTP/1.1 connections with pipelined, split and idle requests, every
//! response checked against its request. Against the real demo under restarts nothing
//! is lost or mismatched; against a server that answers one request with another's id,
//! cuts a connection under outstanding requests and closes one with `Connection: close`,
//! the report counts exactly what that server did.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../baton/tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_under_restarts_answers_every_request_in_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("hello.pid");
    let mut cmd = std::process::Command::new(support::hello_exe());
    cmd.args(["--listen", "127.0.0.1:0", "--pidfile"])
        .arg(&pidfile);
    let demo = support::Demo::spawn_in(dir, cmd);
    let first = demo.pid.to_string();
    tokio::task::block_in_place(|| {
        support::wait_until("the demo wrote its pidfile", || {
            std::fs::read_to_string(&pidfile).is_ok_and(|p| p.trim() == first)
        });
    });
    let url = demo.url("/");
    let pidfile_arg = pidfile.display().to_string();
    let run = common::bench(&[
        &url,
        "--mode",
        "echo",
        "-c",
        "8",
        "-d",
        "3s",
        "--reload",
        "kill -HUP {pid}",
        "--pidfile",
        &pidfile_arg,
        "--reload-every",
        "400ms",
        "--window",
        "200ms",
        "--echo-idle",
        "100ms",
    ])
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(r["client"]["mode"], "echo");
    assert_eq!(r["failures"]["lost"], 0, "{}", run.stdout);
    assert_eq!(r["failures"]["mismatched"], 0, "{}", run.stdout);
    assert_eq!(r["failed"], 0, "{}", run.stdout);
    assert!(r["requests"].as_u64().unwrap() > 100, "{}", run.stdout);
    // Triggers every 400 ms up to 2.8 s; each command ran (a restart still under way
    // when the next signal comes takes it in, so not every one is a new process).
    let reloads = r["reloads"]["count"].as_u64().unwrap();
    assert!(reloads >= 3, "{}", run.stdout);
    assert_eq!(r["reloads"]["failed_commands"], 0, "{}", run.stdout);
    assert!(r["pids_seen"].as_u64().unwrap() >= 2, "{}", run.stdout);
    // Every kind of step was taken.
    let echo = &r["echo"];
    for step in ["batches", "pipelined", "split", "idle_pauses"] {
        assert!(echo[step].as_u64().unwrap() > 0, "{step}: {echo:#}");
    }
    assert!(
        run.stdout.contains("verdict     every one of the")
            && run.stdout.contains("exactly once; 0 lost"),
        "{}",
        run.stdout
    );

    // The demo's harness ends every generation (the last trigger's restart may still
    // be under way: a SIGTERM now would abort it and wait for its drain).
    drop(demo);
}

/// What the faulty echo server did.
#[derive(Debug, Default)]
struct Did {
    connections: AtomicU64,
    /// Responses with the right id.
    right: AtomicU64,
    /// Responses with another request's id.
    wrong: AtomicU64,
    /// Requests received on a connection the server then closed without answering them.
    unanswered: AtomicU64,
    /// Requests received after a `Connection: close` response (not processed).
    after_close: AtomicU64,
}

/// Request heads complete in `buf`, taken out: their paths.
fn take_heads(buf: &mut Vec<u8>) -> Vec<String> {
    let mut paths = Vec::new();
    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        assert!(head.starts_with("GET /echo/"), "{head}");
        assert!(head.contains("\r\nHost: 127.0.0.1:"), "{head}");
        paths.push(head.split(' ').nth(1).unwrap().to_owned());
    }
    paths
}

/// Reads until the client closes (bounded), counting the request heads that come.
async fn drain(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> u64 {
    let mut n = take_heads(buf).len() as u64;
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return n,
            Ok(Ok(k)) => {
                buf.extend_from_slice(&chunk[..k]);
                n += take_heads(buf).len() as u64;
            }
        }
    }
}

/// An echo server (`GET /echo/ID` answers `ID pid=4242`) that, on its first connection,
/// answers the 3rd request with the 2nd one's id; on its second, ends the connection
/// (FIN) when the 4th request comes, answering neither it nor any request after it; on
/// its third, answers the 2nd request with `Connection: close` and closes; on later ones,
/// answers every request right (every third one chunked).
async fn faulty_echo_server() -> (SocketAddr, Arc<Did>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let did = Arc::new(Did::default());
    let did2 = Arc::clone(&did);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let did = Arc::clone(&did2);
            let conn = did.connections.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let mut n = 0u64;
                let mut previous = String::new();
                loop {
                    let k = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => k,
                    };
                    buf.extend_from_slice(&chunk[..k]);
                    let mut paths = take_heads(&mut buf).into_iter();
                    while let Some(path) = paths.next() {
                        n += 1;
                        let id = path.strip_prefix("/echo/").unwrap().to_owned();
                        let rest = paths.len() as u64;
                        let answer = |id: &str, extra: &str| {
                            let body = format!("{id} pid=4242\n");
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{extra}\r\n{body}",
                                body.len()
                            )
                        };
                        let response = match (conn, n) {
                            (1, 3) => {
                                did.wrong.fetch_add(1, Ordering::SeqCst);
                                answer(&previous, "")
                            }
                            (2, 4) => {
                                // FIN without answering: this request and the ones after
                                // it are outstanding; read what still comes (no RST).
                                let _ = stream.shutdown().await;
                                let more = drain(&mut stream, &mut buf).await;
                                did.unanswered.fetch_add(1 + rest + more, Ordering::SeqCst);
                                return;
                            }
                            (3, 2) => {
                                did.right.fetch_add(1, Ordering::SeqCst);
                                let _ = stream
                                    .write_all(answer(&id, "connection: close\r\n").as_bytes())
                                    .await;
                                let _ = stream.shutdown().await;
                                let more = drain(&mut stream, &mut buf).await;
                                did.after_close.fetch_add(rest + more, Ordering::SeqCst);
                                return;
                            }
                            (c, n) if c >= 4 && n % 3 == 0 => {
                                did.right.fetch_add(1, Ordering::SeqCst);
                                let body = format!("{id} pid=4242\n");
                                let (a, b) = body.split_at(2);
                                format!(
                                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                                    a.len(),
                                    b.len()
                                )
                            }
                            _ => {
                                did.right.fetch_add(1, Ordering::SeqCst);
                                answer(&id, "")
                            }
                        };
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                        previous = id;
                    }
                }
            });
        }
    });
    (addr, did)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_counts_what_a_faulty_server_does() {
    let (addr, did) = faulty_echo_server().await;
    let url = format!("http://{addr}/");
    let run = common::bench(&[
        &url,
        "--mode",
        "echo",
        "-c",
        "1",
        "-n",
        "40",
        "--echo-idle",
        "20ms",
    ])
    .await;
    let r = &run.report;
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, Some(1), "{all}");
    // The client's counts are the server's.
    let (right, wrong, unanswered, after_close) = (
        did.right.load(Ordering::SeqCst),
        did.wrong.load(Ordering::SeqCst),
        did.unanswered.load(Ordering::SeqCst),
        did.after_close.load(Ordering::SeqCst),
    );
    assert_eq!(wrong, 1);
    assert!((1..=4).contains(&unanswered), "{unanswered}: {all}");
    assert_eq!(r["requests"], 40, "{all}");
    assert_eq!(r["ok"], right, "{all}");
    assert_eq!(r["failures"]["mismatched"], 1, "{all}");
    assert_eq!(r["failures"]["lost"], unanswered, "{all}");
    assert_eq!(
        common::failures(r).len(),
        2,
        "only those two classes: {all}"
    );
    // The requests pipelined after the `Connection: close` response were sent again on
    // a new connection, and answered there: not lost.
    assert_eq!(r["resent_requests"], after_close, "{all}");
    assert_eq!(r["echo"]["close_responses"], 1, "{all}");
    // A new connection after the mismatch, the cut and the close.
    assert_eq!(did.connections.load(Ordering::SeqCst), 4);
    assert_eq!(r["connections_opened"], 4, "{all}");
    assert_eq!(r["connections_reopened"], 3, "{all}");
    // What the mismatch was, in the sample: request 0-3 got 0-2's response.
    let samples = r["first_failures"].to_string();
    assert!(
        samples.contains("an earlier request's id") && samples.contains("0-2 pid=4242"),
        "{samples}"
    );
    assert!(
        run.stdout.contains(&format!(
            "verdict     FAILED: {unanswered} lost, 1 mismatched, 0 other failures"
        )),
        "{all}"
    );

    // A mismatch fails the run whatever --max-failures allows.
    let (addr, _did) = faulty_echo_server().await;
    let url = format!("http://{addr}/");
    let run = common::bench(&[
        &url,
        "--mode",
        "echo",
        "-c",
        "1",
        "-n",
        "40",
        "--echo-idle",
        "0s",
        "--max-failures",
        "1000",
    ])
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.report["failures"]["mismatched"], 1);
    assert_eq!(run.report["echo"]["idle_pauses"], 0);
    assert!(run.stderr.contains("never allowed"), "{}", run.stderr);
}

#[test]
fn echo_mode_rejects_what_does_not_apply() {
    for (args, what) in [
        (
            &["http://127.0.0.1:9/", "--mode", "echo", "--http", "2"][..],
            "HTTP/1.1",
        ),
        (&["https://127.0.0.1:9/", "--mode", "echo"][..], "http://"),
        (
            &["http://127.0.0.1:9/", "--mode", "echo", "--pid-body"][..],
            "PID",
        ),
        (
            &["http://127.0.0.1:9/", "--echo-idle", "10ms"][..],
            "--mode echo",
        ),
    ] {
        let (code, stderr) = common::usage_error(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(what), "{args:?}: {stderr}");
    }
}
