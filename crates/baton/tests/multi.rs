//! GoFrame's multi-server example (`examples/multi.rs`): two servers, three ports (HTTPS,
//! HTTP, a Unix socket), one coordinator, under load on every port across 20 restarts.
#![allow(clippy::unwrap_used)]

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use support::{Demo, Load, between, get};
use tls_support::{Ca, TlsLoad, install, tls_get};

/// `GET /pid` over the Unix socket, a new connection each time, until stopped.
fn unix_load(
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut ok, mut failures) = (0u64, Vec::new());
        let started = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) && started.elapsed() < 4 * support::WAIT {
            let res: Result<u16, Box<dyn std::error::Error + Send + Sync>> = async {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                let req = hyper::Request::get("/pid")
                    .header("host", "localhost")
                    .body(Empty::<Bytes>::new())?;
                let resp = send.send_request(req).await?;
                let status = resp.status().as_u16();
                resp.into_body().collect().await?;
                Ok(status)
            }
            .await;
            match res {
                Ok(200) => ok += 1,
                Ok(s) => failures.push(format!("status {s}")),
                Err(e) => failures.push(e.to_string()),
            }
        }
        (ok, failures)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_ports_two_servers_twenty_restarts_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    install(dir.path(), &ca.leaf(dir.path(), "site", false));
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(support::hello_exe().with_file_name("multi"));
    cmd.args(["--https", "127.0.0.1:0", "--http", "127.0.0.1:0", "--unix"])
        .arg(&sock)
        .arg("--tls-cert")
        .arg(dir.path().join("server.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("server.key"));
    let demo = Demo::spawn(cmd);
    let https = between(&demo.wait_log("listener=site-tls"), "listening on [", "]").to_owned();
    let http = between(&demo.wait_log("listener=site-plain"), "listening on [", "]").to_owned();
    demo.wait_log("listener=api-unix");
    let tls = ca.client(&[b"h2", b"http/1.1"]);
    assert_eq!(
        tls_get(&tls, &https, "/").await.unwrap().1,
        "hello from site\n"
    );
    assert_eq!(get(&http, "/").await.unwrap().body, "hello from site\n");

    let https_load = TlsLoad::start(&ca.client(&[b"http/1.1"]), &https, 2, true);
    let h2_load = TlsLoad::start(&tls, &https, 1, false);
    let http_load = Load::start(&http, 2, true);
    let stop = Arc::new(AtomicBool::new(false));
    let unix = unix_load(sock.clone(), Arc::clone(&stop));
    let mut serving = demo.pid;
    for n in 2..=21 {
        support::signal_pid(serving, "HUP");
        serving = demo.wait_ready(n);
        // Each generation serves before the next restart.
        support::wait_answered_by(&http, serving).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (a, b) = (https_load.stop().await, h2_load.stop().await);
    let c = http_load.stop().await;
    let d = unix.await.unwrap();
    eprintln!(
        "20 restarts: https keep-alive {} ok, h2 {} ok, http keep-alive {} ok, unix {} ok",
        a.0, b.0, c.ok, d.0
    );
    assert!(a.1.is_empty(), "https: {:?}", a.1);
    assert!(b.1.is_empty(), "h2: {:?}", b.1);
    assert!(c.failures.is_empty(), "http: {:?}", c.failures);
    assert!(d.1.is_empty(), "unix: {:?}", d.1);
    assert!(a.0 > 0 && b.0 > 0 && c.ok > 0 && d.0 > 0);
    // All three handed over together to the last generation.
    for listener in ["site-tls", "site-plain", "api-unix"] {
        demo.wait_log(&format!("pid={serving} listener={listener}"));
    }
}
