//! HTTPS with real TLS clients (rustls, certificates verified against a test CA): restarts
//! under load, certificate renewal with and without a restart, bad certificate files,
//! handshake timeouts, close_notify at the drain; and the slow-client limits.
#![allow(clippy::unwrap_used)]

mod support;
#[path = "support/tls.rs"]
mod tls_support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Demo, get};
use tls_support::{Ca, TlsLoad, connect, install, tls_get};

fn demo_tls(dir: &Path, extra: &[&str]) -> Demo {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    let mut args = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Demo::start(&args)
}

/// Waits (bounded) until `GET /pid` over a new TLS connection is answered by `pid`.
async fn answered_by(tls: &tokio_rustls::TlsConnector, addr: &str, pid: u32) {
    let deadline = Instant::now() + support::WAIT;
    while tls_get(tls, addr, "/pid")
        .await
        .map_or(true, |(_, body, _, _)| body.trim() != pid.to_string())
    {
        assert!(Instant::now() < deadline, "{pid} never answered over TLS");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// HTTPS across 8 restarts under keep-alive and new-connection HTTP/1.1 clients and
/// HTTP/2 clients (ALPN): 0 failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_restarts_under_load_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    install(dir.path(), &ca.leaf(dir.path(), "one", false));
    let demo = demo_tls(dir.path(), &[]);
    let h1 = ca.client(&[b"http/1.1"]);
    let h2 = ca.client(&[b"h2", b"http/1.1"]);
    let (_, _, used_h2, _) = tls_get(&h2, &demo.addr, "/").await.unwrap();
    assert!(used_h2, "ALPN chose h2");
    let (_, _, used_h2, _) = tls_get(&h1, &demo.addr, "/").await.unwrap();
    assert!(!used_h2, "ALPN chose http/1.1");
    let keep_alive = TlsLoad::start(&h1, &demo.addr, 2, true);
    let new_conn = TlsLoad::start(&h1, &demo.addr, 2, false);
    let h2_load = TlsLoad::start(&h2, &demo.addr, 2, false);
    let mut serving = demo.pid;
    for n in 2..=9 {
        support::signal_pid(serving, "HUP");
        serving = demo.wait_ready(n);
        // Each generation serves HTTPS before the next restart.
        answered_by(&h1, &demo.addr, serving).await;
    }
    let (a, b, c) = (
        keep_alive.stop().await,
        new_conn.stop().await,
        h2_load.stop().await,
    );
    eprintln!("keep-alive {} ok, new-conn {} ok, h2 {} ok", a.0, b.0, c.0);
    assert!(a.1.is_empty(), "keep-alive: {:?}", a.1);
    assert!(b.1.is_empty(), "new connections: {:?}", b.1);
    assert!(c.1.is_empty(), "h2: {:?}", c.1);
    assert!(a.0 > 0 && b.0 > 0 && c.0 > 0);
}

/// A renewed certificate: swapped in for new handshakes by SIGUSR1 without a restart
/// (an established connection keeps working); a broken one changes nothing (logged);
/// after a restart the new generation reads the files anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_with_and_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let one = ca.leaf(dir.path(), "one", false);
    install(dir.path(), &one);
    let demo = demo_tls(dir.path(), &[]);
    let tls = ca.client(&[b"http/1.1"]);
    let (_, _, _, served) = tls_get(&tls, &demo.addr, "/").await.unwrap();
    assert_eq!(served, one.2);
    // An open keep-alive connection, from before the swap.
    let (stream, _, _) = connect(&tls, &demo.addr).await.unwrap();
    let (mut open, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(c);

    let two = ca.leaf(dir.path(), "two", false);
    install(dir.path(), &two);
    demo.signal("USR1");
    demo.wait_log("TLS certificate reloaded");
    // A new client each time: a client that resumes its session (session tickets)
    // keeps the certificate of that session, as it would with any server.
    let fresh = || ca.client(&[b"http/1.1"]);
    let (_, _, _, served) = tls_get(&fresh(), &demo.addr, "/").await.unwrap();
    assert_eq!(served, two.2, "new handshakes get the renewed certificate");
    let req = Request::get("/")
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    assert_eq!(open.send_request(req).await.unwrap().status(), 200);

    std::fs::write(
        dir.path().join("server.crt"),
        b"-----BEGIN CERTIFICATE-----\nnot base64\n",
    )
    .unwrap();
    demo.signal("USR1");
    let line = demo.wait_log("TLS certificate reload failed");
    assert!(line.contains("server.crt"), "{line}");
    let (_, _, _, served) = tls_get(&fresh(), &demo.addr, "/").await.unwrap();
    assert_eq!(
        served, two.2,
        "a broken renewal leaves the working certificate"
    );

    let three = ca.leaf(dir.path(), "three", false);
    install(dir.path(), &three);
    demo.signal("HUP");
    demo.wait_ready(2);
    let (_, _, _, served) = tls_get(&fresh(), &demo.addr, "/").await.unwrap();
    assert_eq!(served, three.2, "the new generation read the files anew");
}

/// Bad certificate files: each is named with what is wrong (exit 1, nothing serves);
/// an expired certificate is served, with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_are_named_and_an_expired_one_is_served_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf(dir.path(), "good", false);
    let (_, other_key, _) = ca.leaf(dir.path(), "other", false);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, b"hello").unwrap();
    let missing = dir.path().join("missing.pem");
    let run = |cert: &Path, key: &Path| {
        let out = std::process::Command::new(support::hello_exe())
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: [(&Path, &Path, &str); 4] = [
        (&missing, &key, "missing.pem: cannot read it"),
        (&garbage, &key, "garbage.pem: no certificate in it"),
        (&cert, &garbage, "garbage.pem: no usable private key in it"),
        (&cert, &other_key, "does not match this certificate"),
    ];
    for (c, k, expect) in cases {
        let (code, err) = tokio::task::block_in_place(|| run(c, k));
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains(expect), "{expect:?} in {err}");
    }

    install(dir.path(), &ca.leaf(dir.path(), "expired", true));
    let demo = demo_tls(dir.path(), &[]);
    let line = demo.wait_log("EXPIRED");
    assert!(line.contains("served anyway"), "{line}");
    // A verifying client refuses it, as it should; the server did serve it.
    let err = tls_get(&ca.client(&[b"http/1.1"]), &demo.addr, "/")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
}

/// A client that connects and never completes its handshake is disconnected at the
/// handshake timeout, and holds up no one meanwhile (the handshake is not in the
/// accept loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_times_out_and_blocks_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    install(dir.path(), &ca.leaf(dir.path(), "one", false));
    let demo = demo_tls(dir.path(), &["--handshake-timeout", "1s"]);
    let mut stalled: Vec<TcpStream> = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(&demo.addr).await.unwrap());
    }
    let tls = ca.client(&[b"http/1.1"]);
    let t0 = Instant::now();
    let (status, _, _, _) = tls_get(&tls, &demo.addr, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "served at once: {:?}",
        t0.elapsed()
    );
    let mut buf = [0u8; 16];
    for s in &mut stalled {
        let n = tokio::time::timeout(support::WAIT, s.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "closed by the server: {n:?}");
    }
}

/// An idle HTTPS keep-alive connection closed by the drain ends with TLS close_notify
/// (the client reads a clean end, not a truncation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_tls_connections_with_close_notify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    install(dir.path(), &ca.leaf(dir.path(), "one", false));
    let mut demo = demo_tls(dir.path(), &["--idle-grace", "200ms"]);
    let (mut stream, _, _) = connect(&ca.client(&[b"http/1.1"]), &demo.addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("hello from baton") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    demo.signal("TERM");
    // rustls reports a peer that closed without close_notify as UnexpectedEof.
    let end = tokio::time::timeout(support::WAIT, stream.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(end, Ok(0)), "a clean TLS end: {end:?}");
    assert_eq!(demo.wait_exit().code(), Some(0));
}

/// `n` slowloris clients: a header byte every 500 ms (30 s for all of them), then a
/// read until the server closes; each returns how long it lasted.
fn slowloris(
    addr: &str,
    n: usize,
    started: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Duration>> {
    (0..n)
        .map(|_| {
            let (addr, started) = (addr.to_owned(), Arc::clone(started));
            tokio::spawn(async move {
                let t0 = Instant::now();
                let Ok(mut s) = TcpStream::connect(&addr).await else {
                    return t0.elapsed();
                };
                for b in b"GET / HTTP/1.1\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                {
                    if s.write_all(&[*b]).await.is_err() {
                        break;
                    }
                    if *b == b'G' {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                // Cut by the server: the read ends (a 408, or a plain close).
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(support::WAIT, s.read(&mut buf)).await;
                t0.elapsed()
            })
        })
        .collect()
}

/// Slow clients ("slowloris") are disconnected at the header-read timeout, not after
/// the 30 s they would take, and do not stop others from being served; a restart during
/// an attack loses nothing for the well-behaved clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_at_the_header_timeout_and_block_no_one() {
    let demo = Demo::start(&["--header-read-timeout", "2s"]);
    let load = support::Load::start(&demo.addr, 2, false);
    let mut lasted = Vec::new();
    for t in slowloris(&demo.addr, 200, &Arc::new(AtomicUsize::new(0))) {
        lasted.push(t.await.unwrap());
    }
    let (shortest, longest) = (lasted.iter().min().unwrap(), lasted.iter().max().unwrap());
    assert!(
        *shortest >= Duration::from_millis(1500) && *longest < Duration::from_secs(10),
        "cut near the 2 s timeout: {shortest:?}..{longest:?}"
    );
    // Again, with a restart in the middle of the attack.
    let started = Arc::new(AtomicUsize::new(0));
    let attack = slowloris(&demo.addr, 100, &started);
    // The restart comes once every slow client has begun its request.
    let deadline = Instant::now() + support::WAIT;
    while started.load(Ordering::Relaxed) < 100 {
        assert!(Instant::now() < deadline, "the slow clients never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    demo.signal("HUP");
    demo.wait_ready(2);
    for t in attack {
        t.await.unwrap();
    }
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert!(tally.ok > 50, "others were served: {}", tally.ok);
}

/// With --max-connections 2, a third client waits in the accept queue (not refused)
/// and is served once a connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_clients_wait_instead_of_being_refused() {
    let demo = Demo::start(&["--max-connections", "2"]);
    let mut a = support::Http1::connect(&demo.addr).await.unwrap();
    let mut b = support::Http1::connect(&demo.addr).await.unwrap();
    assert_eq!(a.get("/").await.unwrap().status, 200);
    assert_eq!(b.get("/").await.unwrap().status, 200);
    let addr = demo.addr.clone();
    let third = tokio::spawn(async move { get(&addr, "/pid").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "the third client waits while two are open"
    );
    drop(a);
    let resp = tokio::time::timeout(support::WAIT, third)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.status, 200);
    drop(b);
}

/// TLS session tickets outlive a restart: the keys go to the new generation over the
/// generation channel, so a client resumes its session (no full handshake) with the
/// new generation. A control: another service with the same certificate but its own
/// keys (a separate first generation) cannot open the ticket; the handshake is full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_resumes_across_a_restart_and_not_with_another_service() {
    use tokio_rustls::rustls::HandshakeKind;
    async fn kind_and_pid(tls: &tokio_rustls::TlsConnector, addr: &str) -> (HandshakeKind, String) {
        let (stream, _, _) = connect(tls, addr).await.unwrap();
        let kind = stream.get_ref().1.handshake_kind().unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/pid")
            .header("host", "127.0.0.1")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        // Reading the response also read the session tickets sent after the handshake.
        (kind, String::from_utf8_lossy(&body).trim().to_owned())
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    install(dir.path(), &ca.leaf(dir.path(), "site", false));
    let demo = demo_tls(dir.path(), &[]);
    let tls = ca.client(&[b"http/1.1"]);
    let (kind, pid) = kind_and_pid(&tls, &demo.addr).await;
    assert_eq!((kind, pid), (HandshakeKind::Full, demo.pid.to_string()));
    let (kind, _) = kind_and_pid(&tls, &demo.addr).await;
    assert_eq!(kind, HandshakeKind::Resumed, "resumption works at all");
    demo.signal("HUP");
    let new = demo.wait_ready(2);
    support::wait_until("the old generation exited", || !support::alive(demo.pid));
    let (kind, pid) = kind_and_pid(&tls, &demo.addr).await;
    assert_eq!(
        (kind, pid),
        (HandshakeKind::Resumed, new.to_string()),
        "the session resumed with the new generation"
    );
    // The control: a separate service, same certificate and name, its own keys.
    let other = demo_tls(dir.path(), &[]);
    let (kind, pid) = kind_and_pid(&tls, &other.addr).await;
    assert_eq!((kind, pid), (HandshakeKind::Full, other.pid.to_string()));
}

/// Issue 26: the session-ticket keys also go from a master's old worker to its new one
/// (before anything moves to it), so a TLS client resumes its session across a
/// `--master` reload too. Before, the old worker learnt of the reload only after the
/// new one served with keys of its own: the handshake was full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_resumes_across_a_masters_reload() {
    use tokio_rustls::rustls::HandshakeKind;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new();
    install(dir.path(), &ca.leaf(dir.path(), "site", false));
    let demo = demo_tls(dir.path(), &["--master"]);
    let tls = ca.client(&[b"http/1.1"]);
    let kind_of = |pid: &str| {
        let pid = pid.to_owned();
        let tls = tls.clone();
        let addr = demo.addr.clone();
        async move {
            let (stream, _, _) = connect(&tls, &addr).await.unwrap();
            let kind = stream.get_ref().1.handshake_kind().unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::get("/pid")
                .header("host", "127.0.0.1")
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            use http_body_util::BodyExt;
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let got = String::from_utf8_lossy(&body).trim().to_owned();
            assert!(pid.is_empty() || got == pid, "answered by {got}, not {pid}");
            (kind, got)
        }
    };
    let (kind, first) = kind_of("").await;
    assert_eq!(kind, HandshakeKind::Full);
    assert_ne!(first, demo.pid.to_string(), "a worker answers");
    let (kind, _) = kind_of(&first).await;
    assert_eq!(kind, HandshakeKind::Resumed, "resumption works at all");
    demo.signal("HUP");
    let line = demo.wait_log("reloaded: gen 2 serves");
    let new = line.rsplit("worker=").next().unwrap().trim().to_owned();
    let old: u32 = first.parse().unwrap();
    support::wait_until("the old worker exited", || !support::alive(old));
    let (kind, pid) = kind_of(&new).await;
    assert_eq!(
        (kind, pid),
        (HandshakeKind::Resumed, new.clone()),
        "the session resumed with the master's new worker"
    );
}
