//! Graceful shutdown of the real demo server: real processes, sockets, signals and an
//! HTTP client. Each test starts its own server on a free port.
#![allow(clippy::unwrap_used)]

mod support;

use futures_util::{SinkExt, StreamExt};
use support::{Demo, Http1, get, post};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_completes_new_connections_are_refused_exit_0() {
    let mut demo = Demo::start(&["--idle-grace", "200ms"]);
    let sleeper = demo.sleep_in_flight("2");
    demo.signal("TERM");
    demo.wait_log("stopped listening on");
    let refused = get(&demo.addr, "/")
        .await
        .expect_err("the listener is closed");
    let io = refused
        .downcast_ref::<std::io::Error>()
        .expect("an io error");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused, "{io}");

    let resp = sleeper
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(resp.status, 200);
    let pid = demo.pid;
    assert_eq!(
        resp.body,
        format!("slept 2.000s: start pid {pid}, end pid {pid}\n")
    );
    assert!(
        resp.closes(),
        "a response sent while draining closes its connection"
    );
    let status = demo.wait_exit();
    assert_eq!(status.code(), Some(0));
    demo.wait_log("drained 1 connection (1 request in flight, 0 more during the drain)");
    demo.wait_log("forced 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_longer_than_the_deadline_is_cut_and_reported() {
    let mut demo = Demo::start(&["--drain-timeout", "500ms"]);
    let sleeper = demo.sleep_in_flight("60");
    demo.signal("TERM");
    let cut = sleeper.await.unwrap();
    assert!(cut.is_err(), "cut before its response: {cut:?}");
    let status = demo.wait_exit();
    assert_eq!(status.code(), Some(3), "a forced shutdown is not clean");
    demo.wait_log("drain deadline reached");
    demo.wait_log("forced 1 connection with 1 request in flight (deadline)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_run_in_order_and_a_hanging_one_is_abandoned() {
    let mut demo = Demo::start(&[
        "--finalizer",
        "first=10ms",
        "--finalizer",
        "hangs=1h",
        "--finalizer",
        "last=10ms",
        "--finalizer-timeout",
        "300ms",
    ]);
    demo.signal("TERM");
    let status = demo.wait_exit();
    assert_eq!(
        status.code(),
        Some(3),
        "a hook that timed out makes the exit non-zero"
    );
    let log = demo.log();
    let pos = |pat: &str| {
        log.iter()
            .position(|l| l.contains(pat))
            .unwrap_or_else(|| panic!("no {pat:?} in the log"))
    };
    let first = pos("finalizer done pid=");
    let hang_started = pos("finalizer=hangs");
    let hang_abandoned = pos("shutdown hook timed out");
    let last = log
        .iter()
        .rposition(|l| l.contains("finalizer done") && l.contains("finalizer=last"))
        .expect("the last finalizer ran");
    assert!(log[first].contains("finalizer=first"));
    assert!(first < hang_started && hang_started < hang_abandoned && hang_abandoned < last);
    assert!(log[hang_abandoned].contains("hook=hangs"));
    demo.wait_log("hooks: 3 ran, 1 did not complete");
}

/// A second SIGTERM during the drain does not cut anything: init systems send it more
/// than once (systemd signals every process of the unit, and again when the main
/// process exited first) and own the deadline themselves. The request in flight is
/// answered and the exit is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_drain_keeps_draining() {
    let mut demo = Demo::start(&["--drain-timeout", "1h"]);
    let sleeper = demo.sleep_in_flight("3");
    demo.signal("TERM");
    demo.wait_log("draining: listeners closed");
    demo.signal("TERM");
    demo.wait_log("SIGTERM: already draining; the drain goes on to its deadline");
    let status = demo.wait_exit();
    assert_eq!(status.code(), Some(0), "nothing was cut");
    let resp = sleeper
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(resp.status, 200);
    assert!(
        !demo.log().iter().any(|l| l.contains("hammer")),
        "no hammer"
    );
}

/// Ctrl-C during a drain started by SIGTERM forces the close: an operator who sent
/// SIGTERM and then presses Ctrl-C means "now".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_shutdown_signal_during_the_drain_hammers_too() {
    let mut demo = Demo::start(&["--drain-timeout", "1h"]);
    let sleeper = demo.sleep_in_flight("3600");
    demo.signal("TERM");
    demo.wait_log("draining: listeners closed");
    demo.signal("INT");
    assert_eq!(demo.wait_exit().code(), Some(3));
    demo.wait_log("hammer: forcing the close now");
    assert!(sleeper.await.unwrap().is_err());
}

/// Keep-alive clients that send their next request the moment a response arrives (as
/// wrk does) must see no reset: nginx and hyper's own graceful shutdown lose one request
/// per such connection (docs/BENCHMARKS.md, section 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_clients_back_to_back_across_the_shutdown_see_no_error() {
    let mut demo = Demo::start(&[]);
    let mut clients = Vec::new();
    let mut busy = Vec::new();
    for _ in 0..8 {
        let mut conn = Http1::connect(&demo.addr).await.unwrap();
        let (is_busy, busy_rx) = tokio::sync::oneshot::channel::<()>();
        busy.push(busy_rx);
        clients.push(tokio::spawn(async move {
            let mut is_busy = Some(is_busy);
            let mut served = 0u32;
            loop {
                let resp = conn
                    .get("/")
                    .await
                    .map_err(|e| format!("after {served}: {e}"))?;
                if resp.status != 200 || resp.body != "hello from baton\n" {
                    return Err(format!("bad response after {served}: {resp:?}"));
                }
                served += 1;
                if served == 20 {
                    let _ = is_busy.take().map(|tx| tx.send(()));
                }
                if resp.closes() {
                    // The server said it closes: it must close cleanly, no reset.
                    conn.closed().await.map_err(|e| format!("close: {e}"))?;
                    return Ok(served);
                }
                if served > 10_000_000 {
                    return Err("never got Connection: close".into());
                }
            }
        }));
    }
    // Shut down under their feet once every client is in full swing.
    for rx in busy {
        tokio::time::timeout(support::WAIT, rx)
            .await
            .unwrap()
            .unwrap();
    }
    demo.signal("TERM");
    for client in clients {
        let served = client.await.unwrap().expect("no request fails");
        assert!(served > 20, "each client was busy across the signal");
    }
    assert_eq!(demo.wait_exit().code(), Some(0));
    demo.wait_log("drained 8 connections");
}

/// A keep-alive connection that is idle when the drain starts is not closed at once:
/// a request sent within the grace is answered (with `Connection: close`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_answered_during_the_grace_then_closed() {
    let mut demo = Demo::start(&["--idle-grace", "5s"]);
    let mut idle = Http1::connect(&demo.addr).await.unwrap();
    assert_eq!(idle.get("/").await.unwrap().status, 200);
    let mut never_asked = Http1::connect(&demo.addr).await.unwrap();
    demo.signal("TERM");
    demo.wait_log("draining: listeners closed");
    let resp = idle.get("/pid").await.expect("answered during the grace");
    assert_eq!(resp.status, 200);
    assert!(resp.closes());
    idle.closed().await.expect("closed cleanly");
    // A connection that never sent its first request gets the same grace.
    let resp = never_asked
        .get("/")
        .await
        .expect("answered during the grace");
    assert!(resp.closes());
    assert_eq!(demo.wait_exit().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_grace() {
    let mut demo = Demo::start(&["--idle-grace", "200ms"]);
    let mut idle = Http1::connect(&demo.addr).await.unwrap();
    assert_eq!(idle.get("/").await.unwrap().status, 200);
    demo.signal("TERM");
    idle.closed()
        .await
        .expect("the server closes the idle connection cleanly");
    assert_eq!(demo.wait_exit().code(), Some(0));
    demo.wait_log("drained 1 connection (0 requests in flight, 0 more during the drain)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_in_flight_complete_then_goaway() {
    let mut demo = Demo::start(&[]);
    let stream = tokio::net::TcpStream::connect(&demo.addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut sender = sender.clone();
        let uri = format!("http://{}/sleep?secs=1.5", demo.addr);
        streams.push(tokio::spawn(async move {
            let req = hyper::Request::get(uri)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await?;
            assert_eq!(resp.version(), hyper::Version::HTTP_2);
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body()).await?;
            Ok::<_, hyper::Error>((status, body.to_bytes()))
        }));
    }
    demo.wait_log_nth("sleep 1.5s: start", 5);
    demo.signal("TERM");
    for s in streams {
        let (status, body) = s.await.unwrap().expect("the stream completes");
        assert_eq!(status, 200);
        assert!(body.starts_with(b"slept 1.500s"));
    }
    // The server sent GOAWAY and closed: the client connection ends without error.
    let ended = tokio::time::timeout(support::WAIT, conn)
        .await
        .unwrap()
        .unwrap();
    assert!(ended.is_ok(), "{ended:?}");
    let mut sender = sender;
    assert!(sender.ready().await.is_err(), "no new stream after GOAWAY");
    assert_eq!(demo.wait_exit().code(), Some(0));
    demo.wait_log("drained 1 connection (5 requests in flight");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_observes_the_shutdown_and_closes_itself() {
    let mut demo = Demo::start(&[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", demo.addr))
        .await
        .unwrap();
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    let stats = get(&demo.addr, "/stats").await.unwrap().body;
    assert!(stats.contains("upgraded 1"), "{stats}");
    demo.signal("TERM");
    let close = ws.next().await.unwrap().unwrap();
    let Message::Close(Some(frame)) = close else {
        panic!("expected a close frame, got {close:?}")
    };
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "server shutting down");
    // Finish the closing handshake as a browser would.
    while let Some(msg) = ws.next().await {
        if msg.is_err() {
            break;
        }
    }
    assert_eq!(demo.wait_exit().code(), Some(0));
    // The WebSocket closed itself: nothing was cut. (The count of drained connections
    // may include the `/stats` connection, if its close is still under way.)
    demo.wait_log("forced 0;");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_response_observes_the_drain_and_ends_cleanly() {
    use http_body_util::BodyExt;
    let mut demo = Demo::start(&[]);
    let stream = tokio::net::TcpStream::connect(&demo.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/stream")
        .header("host", &demo.addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut text = String::new();
    // The first tick arrived: the stream is in flight. Now shut down.
    while !text.contains("tick 1\n") {
        let frame = body.frame().await.expect("a frame").expect("no error");
        text.push_str(std::str::from_utf8(frame.data_ref().unwrap()).unwrap());
    }
    demo.signal("TERM");
    let rest = body
        .collect()
        .await
        .expect("the stream ends cleanly")
        .to_bytes();
    text.push_str(std::str::from_utf8(&rest).unwrap());
    assert!(text.starts_with("tick 1\n"), "{text}");
    assert!(text.ends_with("bye\n"), "{text}");
    assert_eq!(demo.wait_exit().code(), Some(0));
    demo.wait_log("drained 1 connection (1 request in flight");
}

/// Faygo's `/shutdown?second=10`: the handler answers, then the server drains with the
/// deadline it was given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_a_handler_with_a_deadline() {
    let mut demo = Demo::start(&[]);
    let sleeper = demo.sleep_in_flight("3600");

    let resp = get(&demo.addr, "/shutdown?secs=1").await.unwrap();
    assert_eq!(resp.status, 405, "state changes by POST only");
    let resp = post(&demo.addr, "/shutdown?secs=abc").await.unwrap();
    assert_eq!(resp.status, 400);
    assert!(resp.body.contains("secs=`abc`"), "{}", resp.body);

    let resp = post(&demo.addr, "/shutdown?secs=1").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, "shutting down, deadline 1.000s\n");
    // The one-hour request is cut by the 1 s deadline from the handler, not the 30 s
    // default.
    assert!(sleeper.await.unwrap().is_err());
    assert_eq!(demo.wait_exit().code(), Some(3));
    demo.wait_log("deadline=1s");
    demo.wait_log("forced 1 connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_delay_keeps_serving_while_readiness_answers_503() {
    let mut demo = Demo::start(&["--drain-delay", "3s"]);
    assert_eq!(get(&demo.addr, "/ready").await.unwrap().status, 200);
    demo.signal("TERM");
    demo.wait_log("readiness now reports draining");
    let ready = get(&demo.addr, "/ready").await.expect("still accepting");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.body, "draining\n");
    let hello = get(&demo.addr, "/").await.expect("still serving");
    assert_eq!(hello.status, 200);
    assert!(!hello.closes(), "not draining yet: keep-alive as usual");
    // The accept loop's own line: the coordinator's "draining" line comes first, and
    // under load the loop may still take a connection from its queue in between (a
    // flake seen with both cores busy).
    demo.wait_log("http server stopped listening on");
    assert!(
        get(&demo.addr, "/").await.is_err(),
        "closed after the delay"
    );
    assert_eq!(demo.wait_exit().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_skips_the_drain_delay() {
    let mut demo = Demo::start(&["--drain-delay", "1h"]);
    demo.signal("QUIT");
    assert_eq!(demo.wait_exit().code(), Some(0));
    assert!(
        !demo
            .log()
            .iter()
            .any(|l| l.contains("readiness now reports"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_shutdown_signals_and_unix_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hello.sock");
    let unix = format!("unix:{}", sock.display());
    let mut demo = Demo::start_with(
        &["--listen", "127.0.0.1:0", "--listen", &unix],
        &["--shutdown-signal", "USR1"],
    );
    demo.wait_log(&format!("started listening on [{unix}]"));
    let stream = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/pid")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    // SIGUSR1 now shuts down too.
    demo.signal("USR1");
    assert_eq!(demo.wait_exit().code(), Some(0));
    demo.wait_log("reason=SIGUSR1");
}

/// Regression: `--shutdown-signal USR1` replaced the default set, so SIGTERM (what
/// Kubernetes sends) then killed the demo with no drain (exit 143). Adding a signal
/// keeps the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_shutdown_signal_keeps_sigterm() {
    let mut demo = Demo::start(&["--shutdown-signal", "USR1"]);
    let sleeping = demo.sleep_in_flight("1");
    demo.signal("TERM");
    let resp = sleeping.await.unwrap().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(demo.wait_exit().code(), Some(0), "drained, not killed");
    demo.wait_log("reason=SIGTERM");
}

/// Regression: the signal handlers were installed by `Shutdown::run`, after the server
/// had logged that it listens; a SIGTERM sent in between killed the process outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_sent_as_soon_as_the_server_listens_is_handled_gracefully() {
    for _ in 0..5 {
        let mut demo = Demo::start(&[]);
        demo.signal("TERM");
        assert_eq!(demo.wait_exit().code(), Some(0), "killed, not shut down");
        demo.wait_log("shutdown complete");
    }
}
