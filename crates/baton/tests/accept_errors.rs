//! Accept errors such as EMFILE (out of file descriptors) neither stop the server nor
//! make it spin: it keeps serving the connections it has, retries at a slow pace, and
//! accepts again once descriptors are free.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Demo, Http1, get};

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name may contain spaces; the fields we need follow its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_neither_kills_nor_spins() {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        // A connection limit above the descriptor limit: the default one keeps
        // descriptors in reserve and would never let the server reach EMFILE.
        .arg(r#"ulimit -n 64 && exec "$0" --listen 127.0.0.1:0 --max-connections 1000"#)
        .arg(support::hello_exe());
    let mut demo = Demo::spawn(cmd);

    // Open connections until the server runs out of descriptors (it holds one per
    // connection; the kernel completes the handshake of the rest in the backlog).
    let mut conns = Vec::new();
    for _ in 0..80 {
        conns.push(Http1::connect(&demo.addr).await.unwrap());
    }
    demo.wait_log("failed; retrying every 100ms");

    // Out of descriptors, it must idle, not spin: over a second of wall time it may
    // use a small fraction of a CPU second. A busy loop uses nearly all of it. (Load on
    // the machine can only lower the figure, never raise it.)
    let ticks_per_sec = 100; // USER_HZ on Linux
    let before = cpu_ticks(demo.pid);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(demo.pid) - before;
    let wall_ticks = started.elapsed().as_millis() as u64 * ticks_per_sec / 1000;
    assert!(
        used * 2 < wall_ticks,
        "used {used} CPU ticks in {wall_ticks} wall ticks while out of descriptors"
    );

    // The first connection was accepted before the limit: it is still served.
    let resp = conns[0]
        .get("/")
        .await
        .expect("served while out of descriptors");
    assert_eq!(resp.status, 200);

    // Free the descriptors: the server accepts again.
    drop(conns);
    let deadline = Instant::now() + support::WAIT;
    loop {
        match get(&demo.addr, "/pid").await {
            Ok(resp) if resp.status == 200 => break,
            other => assert!(
                Instant::now() < deadline,
                "never recovered from EMFILE: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    demo.signal("TERM");
    assert_eq!(demo.wait_exit().code(), Some(0));
}
