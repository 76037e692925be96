//! The verifier finds failures where they exist and classifies them: a deliberately
//! faulty server resets, closes before responding, never answers, answers 500, or is
//! not there at all; a steady one gives zero.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server that misbehaves according to the request path.
async fn faulty_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                loop {
                    // Read one whole request head (GET, no body). Reading it all matters:
                    // closing a socket with unread data sends RST, not FIN.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    match path.as_str() {
                        "/ok" => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-pid: 4242\r\n\r\nok\n")
                                .await;
                        }
                        "/500" => {
                            let _ = stream
                                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n")
                                .await;
                        }
                        "/reset" => {
                            // SO_LINGER 0: close sends RST.
                            let _ =
                                socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                            return;
                        }
                        "/close" => return, // FIN before any response
                        "/answer-then-close" => {
                            // A complete keep-alive response, then FIN without having said
                            // `Connection: close`: nginx's idle close at a reload.
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                                .await;
                            return;
                        }
                        "/half" => {
                            // Headers promise 100 bytes; 3 come, then FIN.
                            let _ = stream
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                                .await;
                            return;
                        }
                        _ => {
                            // "/hang": never answer.
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn bench(args: &[&str]) -> (Option<i32>, Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("r.json");
    let out = Command::new(env!("CARGO_BIN_EXE_baton-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--quiet")
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no report ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), serde_json::from_str(&report).unwrap())
}

fn failures(report: &Value) -> Vec<(String, u64)> {
    report["failures"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap() > 0)
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_kind_of_failure_is_classified() {
    let addr = faulty_server().await;
    for (path, class) in [
        ("/reset", "reset"),
        ("/close", "eof"),
        ("/half", "eof"),
        ("/500", "status"),
        ("/hang", "timeout"),
    ] {
        for mode in ["keep-alive", "new-conn"] {
            let url = format!("http://{addr}{path}");
            let (code, report) = tokio::task::spawn_blocking(move || {
                bench(&[
                    &url,
                    "-n",
                    "6",
                    "-c",
                    "2",
                    "--timeout",
                    "300ms",
                    "--mode",
                    mode,
                ])
            })
            .await
            .unwrap();
            assert_eq!(
                code,
                Some(1),
                "{path} {mode}: failures exceed --max-failures 0"
            );
            assert_eq!(report["requests"], 6, "{path} {mode}");
            assert_eq!(
                failures(&report),
                [(class.to_owned(), 6)],
                "{path} {mode}: {:#}",
                report["first_failures"]
            );
        }
    }
}

/// The race of lesson 3: a server that closes a keep-alive connection under a client
/// with no think time loses the client's next request. Every other request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_closed_under_a_busy_client_counts() {
    let addr = faulty_server().await;
    let url = format!("http://{addr}/answer-then-close");
    let (code, report) = tokio::task::spawn_blocking(move || bench(&[&url, "-n", "10", "-c", "1"]))
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    assert_eq!(report["ok"], 5);
    assert_eq!(report["failed"], 5);
    // The client either finds the connection closed (eof) or writes into it just
    // after the server's close, and the closed socket answers with RST (reset): both
    // are this race, which of the two is timing.
    for (class, _) in failures(&report) {
        assert!(class == "eof" || class == "reset", "{class}: {report:#}");
    }
    // Each answered request had a connection of its own: the first, then one reopened
    // after each failure on the closed one.
    assert_eq!(report["connections_opened"], 5, "{report:#}");
    assert_eq!(report["connections_reopened"], 4);
    // With a new connection per request nothing is lost.
    let url = format!("http://{addr}/answer-then-close");
    let (code, report) = tokio::task::spawn_blocking(move || {
        bench(&[&url, "-n", "10", "-c", "1", "--mode", "new-conn"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["connections_opened"], 10);
    assert!(
        report["connections_reopened"].is_null(),
        "not counted in new-conn mode"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_refused() {
    // Bind, note the port, close: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/");
    let (code, report) = tokio::task::spawn_blocking(move || bench(&[&url, "-n", "5", "-c", "1"]))
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    assert_eq!(failures(&report), [("refused".to_owned(), 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_server_gives_zero_failures_and_its_pid() {
    let addr = faulty_server().await;
    let url = format!("http://{addr}/ok");
    let (code, report) = tokio::task::spawn_blocking(move || {
        bench(&[&url, "-n", "500", "-c", "4", "--pid-header", "x-pid"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0));
    assert_eq!(report["requests"], 500);
    assert_eq!(report["ok"], 500);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["pids_seen"], 1);
    assert!(failures(&report).is_empty());
    // One connection per client, kept for all 500 requests.
    assert_eq!(report["connections_opened"], 4);
    assert_eq!(report["connections_reopened"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_failures_gates_the_exit_status_and_reload_commands_are_recorded() {
    let addr = faulty_server().await;
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("marks");
    let url = format!("http://{addr}/500");
    let reload = format!("echo {{pid}} >> {}", marks.display());
    let (code, report) = tokio::task::spawn_blocking(move || {
        bench(&[
            &url,
            "-d",
            "1s",
            "-c",
            "1",
            "--max-failures",
            "1000000000",
            "--reload",
            &reload,
            "--reload-every",
            "200ms",
            "--reloads",
            "3",
            "--pid",
            "77",
            "--window",
            "100ms",
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "failures within --max-failures");
    assert_eq!(report["reloads"]["count"], 3);
    assert_eq!(report["reloads"]["failed_commands"], 0);
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "77\n77\n77\n");
    let triggers = report["reloads"]["triggers"].as_array().unwrap();
    assert!(triggers[0]["start_s"].as_f64().unwrap() >= 0.2);
    let in_windows = report["reloads"]["failed_requests_in_windows"]
        .as_u64()
        .unwrap();
    assert!(in_windows > 0);
    // Every request fails here and the windows do not overlap: each trigger has its
    // own, and they add up to the total.
    let per_trigger: Vec<u64> = triggers
        .iter()
        .map(|t| t["failed_requests"].as_u64().unwrap())
        .collect();
    assert!(per_trigger.iter().all(|n| *n > 0), "{per_trigger:?}");
    assert_eq!(per_trigger.iter().sum::<u64>(), in_windows);
}

/// HTTP/2 (h2c) against a real baton server: zero failures and one PID; the server then
/// shuts down cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_against_a_baton_server() {
    use axum::{Router, routing::get};
    let shutdown = baton::Shutdown::builder()
        .signals(baton::SignalMap::empty())
        .build()
        .unwrap();
    let server = baton::http::Server::bind(["127.0.0.1:0"]).unwrap();
    let baton::ListenAddr::Tcp(addr) = server.local_addrs()[0].clone() else {
        panic!("tcp")
    };
    let app = Router::new().route(
        "/pid",
        get(|| async { format!("{}\n", std::process::id()) }),
    );
    server.serve(app, &shutdown).unwrap();
    let url = format!("http://{addr}/pid");
    let (code, report) = tokio::task::spawn_blocking(move || {
        bench(&[&url, "-n", "2000", "-c", "8", "--http", "2", "--pid-body"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["client"]["http"], "2");
    assert_eq!(report["ok"], 2000);
    assert_eq!(report["pids_seen"], 1);
    shutdown.trigger();
    let report = tokio::time::timeout(Duration::from_secs(60), shutdown.run())
        .await
        .unwrap()
        .unwrap();
    assert!(report.is_clean(), "{report}");
}
