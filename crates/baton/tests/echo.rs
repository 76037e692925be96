//! The demo's echo routes, with real clients: `GET /echo/{ID}` answers `ID pid=PID`
//! (the ID as sent), `POST /echo` reads the whole body and answers `len=N pid=PID`, an
//! upload with `Expect: 100-continue` gets its `100 Continue` first.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

use support::{Demo, Http1, WAIT};

/// Reads one response with a `content-length` from a raw socket: (status line and
/// headers, body). Bounded by the socket's read timeout and the size read.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        assert!(buf.len() < 64 * 1024, "no end of the response head");
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before a whole response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed before the whole body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).into_owned();
    buf.drain(..head_end + len);
    (head, body)
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_routes_match_each_response_to_its_request() {
    let demo = Demo::start(&[]);
    let pid = demo.pid;

    // GET /echo/{ID}: the ID as it was sent (percent-encoding kept), and the PID.
    let r = support::get(&demo.addr, "/echo/w3-17").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, format!("w3-17 pid={pid}\n"));
    let r = support::get(&demo.addr, "/echo/a%20b").await.unwrap();
    assert_eq!(r.body, format!("a%20b pid={pid}\n"));
    // Several on one keep-alive connection, each with its own ID.
    let mut conn = Http1::connect(&demo.addr).await.unwrap();
    for id in ["k-1", "k-2", "k-3"] {
        let r = conn.get(&format!("/echo/{id}")).await.unwrap();
        assert_eq!(r.body, format!("{id} pid={pid}\n"));
    }
    // POST /echo without a body.
    let r = support::post(&demo.addr, "/echo").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, format!("len=0 pid={pid}\n"));

    let addr = demo.addr.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = connect(&addr);
        let mut buf = Vec::new();
        // Pipelined: two requests in one write, two responses in their order.
        s.write_all(
            format!(
                "GET /echo/p-1 HTTP/1.1\r\nHost: {addr}\r\n\r\nGET /echo/p-2 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        for id in ["p-1", "p-2"] {
            let (head, body) = read_response(&mut s, &mut buf);
            assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
            assert_eq!(body, format!("{id} pid={pid}\n"));
        }

        // An upload with `Expect: 100-continue`: the head alone gets `100 Continue`,
        // then the body (larger than axum's 2 MB default limit for buffered bodies) is
        // read whole, on the same connection.
        let len = 3 * 1024 * 1024 + 7;
        s.write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {len}\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let (head, body) = read_response(&mut s, &mut buf);
        assert!(head.starts_with("HTTP/1.1 100 Continue\r\n"), "{head}");
        assert_eq!(body, "");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).unwrap();
        let (head, body) = read_response(&mut s, &mut buf);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(body, format!("len={len} pid={pid}\n"));

        // A chunked upload on the same connection.
        s.write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\n, w\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let (head, body) = read_response(&mut s, &mut buf);
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(body, format!("len=8 pid={pid}\n"));
        assert!(buf.is_empty(), "nothing more was sent");
    })
    .await
    .unwrap();
}
