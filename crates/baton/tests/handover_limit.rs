//! The connection limit at a hand-over (issue 26, defect 3): the connections that move
//! come first, each one only once a slot (and so a descriptor) is kept for it in the new
//! generation; clients waiting in the accept queue wait on, as they would at the limit
//! without a restart. A limit never drops a client.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{Demo, Http1, alive, signal_pid, wait_until};

/// Reads one response with a `Content-Length` body; its body.
async fn response(s: &mut TcpStream) -> Result<String, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .ok_or("no content-length")?
                .trim()
                .parse()
                .map_err(|e| format!("{e}"))?;
            if buf.len() >= end + 4 + len {
                return Ok(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
            }
        }
        let n = tokio::time::timeout(support::WAIT, s.read(&mut chunk))
            .await
            .map_err(|_| "no response in time".to_owned())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed after {} bytes", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The issue's reproduction: the demo under `ulimit -n 256` holds its default limit
/// of 224 idle connections, 224 more clients wait in the accept queue, then a restart.
/// Before the fix the new generation took the 224 queued clients and the moved
/// connections on top, ran out of descriptors, and the kernel dropped 207 moved
/// connections. Now: every moved connection is answered on the same connection by the
/// new generation, then every queued client is answered once slots are free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_every_moved_connection_and_every_queued_client_is_answered() {
    const LIMIT: usize = 224; // 256 less the reserve of 32
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n 256 && exec "$0" --listen 127.0.0.1:0"#)
        .arg(support::hello_exe());
    let demo = Demo::spawn(cmd);
    let mut idle = Vec::new();
    for _ in 0..LIMIT {
        let mut c = Http1::connect(&demo.addr).await.unwrap();
        assert_eq!(
            c.get("/pid").await.unwrap().body.trim(),
            demo.pid.to_string()
        );
        idle.push(c);
    }
    // At the limit: these wait in the accept queue, their requests sent.
    let mut queued = Vec::new();
    for i in 0..LIMIT {
        let mut s = TcpStream::connect(&demo.addr).await.unwrap();
        s.write_all(format!("GET /pid?q={i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        queued.push(s);
    }
    signal_pid(demo.pid, "HUP");
    let new = demo.wait_ready(2);
    wait_until("the old generation exited", || !alive(demo.pid));
    let log = demo.log().join("\n");
    assert!(
        !log.contains("without its socket") && !log.contains("lost its descriptors"),
        "{log}"
    );
    support::all_answered_by(&mut idle, new, "moved at the limit").await;
    // The moved connections leave: their slots go to the queued clients.
    drop(idle);
    let mut failed = Vec::new();
    for (i, s) in queued.iter_mut().enumerate() {
        match response(s).await {
            Ok(body) if body.trim() == new.to_string() => {}
            other => failed.push((i, other)),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {LIMIT} queued clients not answered by {new}: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
