//! HTTP/2 with several streams in flight per connection (--streams N): real concurrency
//! on one connection per worker; a stream that the server refused by GOAWAY is sent again
//! on a new connection and is not a failure; a stream the server accepted and never
//! answered is one.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Default)]
struct Busy {
    connections: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// An h2c server (hyper) whose every response takes 20 ms; it counts connections and
/// the most requests in flight at once.
async fn slow_h2_server() -> (SocketAddr, Arc<Busy>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let busy = Arc::new(Busy::default());
    let b = Arc::clone(&busy);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            b.connections.fetch_add(1, Ordering::SeqCst);
            let b = Arc::clone(&b);
            let service = hyper::service::service_fn(move |_req| {
                let b = Arc::clone(&b);
                async move {
                    let now = b.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    b.max_in_flight.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    b.in_flight.fetch_sub(1, Ordering::SeqCst);
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"ok\n",
                    ))))
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, busy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_keeps_n_streams_in_flight_on_one_connection() {
    let (addr, busy) = slow_h2_server().await;
    let url = format!("http://{addr}/");
    let run = common::bench(&[
        &url,
        "--http",
        "2",
        "--streams",
        "4",
        "-c",
        "2",
        "-n",
        "200",
    ])
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(r["requests"], 200);
    assert_eq!(r["ok"], 200);
    assert_eq!(r["client"]["streams"], 4);
    assert_eq!(busy.connections.load(Ordering::SeqCst), 2);
    // One stream per worker would never have more than 2 requests in flight.
    let max = busy.max_in_flight.load(Ordering::SeqCst);
    assert!((5..=8).contains(&max), "at most {max} requests in flight");
    assert!(
        run.stdout.contains("2 workers x 4 streams"),
        "{}",
        run.stdout
    );
}

/// What a misbehaving connection of `raw_h2_server` does at its 6th stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AtSixth {
    /// GOAWAY with the 5th stream as the last one processed: the 6th and any later
    /// stream were refused, not processed.
    Refuse,
    /// GOAWAY with the 6th stream as the last one processed, then the connection is
    /// closed without an answer to it: a lost request.
    Abandon,
}

#[derive(Debug, Default)]
struct H2Seen {
    connections: AtomicU64,
    /// Set before the first GOAWAY is written: connections accepted later (the
    /// replacements) behave.
    went_away: AtomicBool,
    goaways: AtomicU64,
    answered: AtomicU64,
    /// Streams above a GOAWAY's last stream id.
    refused: AtomicU64,
    /// Streams at or below a GOAWAY's last stream id that got no answer.
    abandoned: AtomicU64,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A minimal h2c server, frames by hand, so that GOAWAY's last stream id is chosen
/// exactly. It answers every request with `:status 200` and no body, except that each
/// connection accepted before its first GOAWAY (the workers' first connections, not
/// their replacements) misbehaves at its 6th stream as `at_sixth` says.
async fn raw_h2_server(at_sixth: AtSixth) -> (SocketAddr, Arc<H2Seen>) {
    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(H2Seen::default());
    let s = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let seen = Arc::clone(&s);
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let misbehaves = !seen.went_away.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                if stream.read_exact(&mut preface).await.is_err()
                    || &preface != b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                {
                    return;
                }
                if stream.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
                    return;
                }
                let (mut streams, mut last_processed, mut goaway) = (0u32, 0u32, None::<u32>);
                // Bounded: a client that never closes is let go after 10 s.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    let mut head = [0u8; 9];
                    let read = tokio::time::timeout_at(deadline, stream.read_exact(&mut head));
                    if !matches!(read.await, Ok(Ok(_))) {
                        return; // EOF: the client closed the connection
                    }
                    let len = (usize::from(head[0]) << 16)
                        | (usize::from(head[1]) << 8)
                        | usize::from(head[2]);
                    let (kind, flags) = (head[3], head[4]);
                    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                    let mut payload = vec![0u8; len];
                    if stream.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    let reply = match kind {
                        SETTINGS if flags & 0x1 == 0 => frame(SETTINGS, 0x1, 0, &[]),
                        PING if flags & 0x1 == 0 => frame(PING, 0x1, 0, &payload),
                        HEADERS => {
                            streams += 1;
                            if let Some(last) = goaway {
                                if id > last {
                                    seen.refused.fetch_add(1, Ordering::SeqCst);
                                }
                                continue;
                            }
                            if misbehaves && streams == 6 {
                                seen.went_away.store(true, Ordering::SeqCst);
                                seen.goaways.fetch_add(1, Ordering::SeqCst);
                                let last = match at_sixth {
                                    AtSixth::Refuse => {
                                        seen.refused.fetch_add(1, Ordering::SeqCst);
                                        last_processed
                                    }
                                    AtSixth::Abandon => {
                                        seen.abandoned.fetch_add(1, Ordering::SeqCst);
                                        id
                                    }
                                };
                                goaway = Some(last);
                                let mut body = last.to_be_bytes().to_vec();
                                body.extend_from_slice(&0u32.to_be_bytes()); // NO_ERROR
                                let _ = stream.write_all(&frame(GOAWAY, 0, 0, &body)).await;
                                if at_sixth == AtSixth::Abandon {
                                    // FIN: the accepted 6th stream will never be answered.
                                    let _ = stream.shutdown().await;
                                }
                                continue;
                            }
                            last_processed = id;
                            seen.answered.fetch_add(1, Ordering::SeqCst);
                            // `:status: 200` (HPACK static index 8), END_STREAM | END_HEADERS.
                            frame(HEADERS, 0x5, id, &[0x88])
                        }
                        _ => continue,
                    };
                    if goaway.is_some() && at_sixth == AtSixth::Abandon {
                        continue; // the write side is shut
                    }
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_refused_by_goaway_are_sent_again_and_do_not_fail() {
    let (addr, seen) = raw_h2_server(AtSixth::Refuse).await;
    let url = format!("http://{addr}/");
    let run = common::bench(&[
        &url,
        "--http",
        "2",
        "--streams",
        "4",
        "-c",
        "2",
        "-n",
        "100",
        "--timeout",
        "2s",
    ])
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(r["requests"], 100);
    assert_eq!(r["ok"], 100);
    // Every request was answered exactly once by the server.
    assert_eq!(seen.answered.load(Ordering::SeqCst), 100);
    // At least one worker's first connection (one had 50 requests to make) sent
    // GOAWAY and refused at least its 6th stream; the client replaced each such
    // connection once and re-sent every refused request (and any it could no longer
    // send on it).
    let (goaways, refused) = (
        seen.goaways.load(Ordering::SeqCst),
        seen.refused.load(Ordering::SeqCst),
    );
    assert!((1..=2).contains(&goaways), "{goaways}");
    assert!(refused >= goaways, "{refused}");
    assert_eq!(r["replaced_connections"], goaways, "{}", run.stdout);
    assert!(r["resent_requests"].as_u64().unwrap() >= refused, "{r:#}");
    assert_eq!(seen.connections.load(Ordering::SeqCst), 2 + goaways);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_accepted_and_never_answered_is_a_failure() {
    let (addr, seen) = raw_h2_server(AtSixth::Abandon).await;
    let url = format!("http://{addr}/");
    let run = common::bench(&[
        &url,
        "--http",
        "2",
        "--streams",
        "4",
        "-c",
        "2",
        "-n",
        "100",
        "--timeout",
        "2s",
    ])
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert_eq!(r["requests"], 100);
    // Exactly the streams the server accepted and abandoned failed (one on each
    // misbehaving connection); those above the GOAWAY were sent again.
    let abandoned = seen.abandoned.load(Ordering::SeqCst);
    assert!((1..=2).contains(&abandoned), "{abandoned}");
    assert_eq!(r["failed"], abandoned, "{}", run.stdout);
    assert_eq!(r["ok"], 100 - abandoned);
    assert_eq!(seen.answered.load(Ordering::SeqCst), 100 - abandoned);
    for (class, _) in common::failures(r) {
        assert!(
            class == "reset" || class == "eof",
            "{class}: {}",
            run.stdout
        );
    }
}

/// The same with one stream per worker: the single-stream path handles GOAWAY alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_per_worker_after_goaway_also_loses_nothing() {
    let (addr, seen) = raw_h2_server(AtSixth::Refuse).await;
    let url = format!("http://{addr}/");
    let run = common::bench(&[
        &url,
        "--http",
        "2",
        "-c",
        "2",
        "-n",
        "40",
        "--timeout",
        "2s",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.report["ok"], 40);
    assert_eq!(seen.answered.load(Ordering::SeqCst), 40);
    let goaways = seen.goaways.load(Ordering::SeqCst);
    assert!((1..=2).contains(&goaways), "{goaways}");
    assert_eq!(run.report["replaced_connections"], goaways);
    assert_eq!(run.report["resent_requests"], goaways);
}

#[test]
fn streams_need_http2_and_keep_alive() {
    for args in [
        &["http://127.0.0.1:9/", "--streams", "4"][..],
        &[
            "http://127.0.0.1:9/",
            "--http",
            "2",
            "--streams",
            "4",
            "--mode",
            "new-conn",
        ][..],
        &["http://127.0.0.1:9/", "--http", "2", "--streams", "0"][..],
    ] {
        let (code, stderr) = common::usage_error(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("streams"), "{args:?}: {stderr}");
    }
}
