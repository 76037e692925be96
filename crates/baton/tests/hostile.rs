//! Clients that sit on a connection without sending a request: silent ones, a partial
//! HTTP/2 preface, a preface and SETTINGS and no stream, an idle kept-alive connection;
//! and many of them against a small descriptor limit, beside a well-behaved client.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Demo, get};

/// Writes `bytes` (maybe none), then waits for the server to close the connection;
/// returns how long that took after the write, or panics after `limit`.
fn closed_within(addr: &str, bytes: &[u8], limit: Duration) -> Duration {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
    let t0 = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            // An HTTP/2 server answers a preface with its SETTINGS first.
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t0.elapsed(),
            Err(e) => panic!("not closed within {limit:?} ({e}) after {:?}", bytes),
        }
    }
}

/// Regression (field, hostile clients): only HTTP/1's header-read timeout existed, in
/// hyper; a connection that sent nothing, part of the HTTP/2 preface, or the preface
/// and SETTINGS and then nothing was never closed. With `--header-read-timeout 2s`
/// each is closed within a few seconds of the timeout, and not before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_http2_connections_are_closed_at_the_header_read_timeout() {
    let demo = Demo::start(&["--header-read-timeout", "2s"]);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: length 0, type 4, flags 0, stream 0.
    let settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let mut full = preface.to_vec();
    full.extend_from_slice(&settings);
    let cases: [(&str, &[u8]); 4] = [
        ("silent", b""),
        ("partial preface", &preface[..10]),
        ("preface and SETTINGS, no stream", &full),
        ("half an HTTP/1 head", b"GET / HTTP/1.1\r\nHost: x\r\n"),
    ];
    let addr = demo.addr.clone();
    let took: Vec<(String, Duration)> = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = cases
                .iter()
                .map(|(what, bytes)| {
                    let addr = addr.clone();
                    scope.spawn(move || {
                        (
                            what.to_string(),
                            closed_within(&addr, bytes, Duration::from_secs(20)),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    });
    for (what, t) in &took {
        eprintln!("{what}: closed after {t:?}");
        assert!(
            *t >= Duration::from_millis(1900),
            "{what}: not before the timeout: {t:?}"
        );
        assert!(
            *t <= Duration::from_secs(6),
            "{what}: within a few seconds: {t:?}"
        );
    }
    // The server serves on, and said what it cut.
    assert_eq!(get(&demo.addr, "/").await.unwrap().status, 200);
    let stats = get(&demo.addr, "/stats").await.unwrap().body;
    assert!(stats.contains("timed_out 4\n"), "{stats}");
}

/// A kept-alive connection with nothing to do is closed after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let demo = Demo::start(&["--idle-timeout", "2s"]);
    let took = tokio::task::block_in_place(|| {
        closed_within(
            &demo.addr,
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            Duration::from_secs(20),
        )
    });
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took <= Duration::from_secs(6), "{took:?}");
}

/// Regression (field, hostile clients): with `ulimit -n 128`, 200 silent connections
/// exhausted the descriptors and a normal request timed out. Under `ulimit -n 256`, 400
/// silent connections do not keep a well-behaved client from being served: the default
/// connection limit keeps descriptors in reserve (clients past it wait in the accept
/// queue), and the silent ones are cut at the header-read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_silent_connections_under_256_descriptors_leave_room_for_a_client() {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n 256 && exec "$0" --listen 127.0.0.1:0 --header-read-timeout 2s"#)
        .arg(support::hello_exe());
    let mut demo = Demo::spawn(cmd);
    let silent: Vec<TcpStream> = (0..400)
        .map(|_| TcpStream::connect(&demo.addr).unwrap())
        .collect();
    let t0 = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), get(&demo.addr, "/pid"))
        .await
        .expect("served while 400 silent connections wait")
        .unwrap();
    assert_eq!(resp.status, 200);
    eprintln!(
        "served after {:?} beside 400 silent connections",
        t0.elapsed()
    );
    assert!(
        !demo.log().iter().any(|l| l.contains("Too many open files")),
        "never out of descriptors"
    );
    drop(silent);
    demo.signal("TERM");
    assert_eq!(demo.wait_exit().code(), Some(0));
}
