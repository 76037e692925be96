//! `examples/server.py`, the README's first `baton run` example, as it is: a Python
//! server (standard library) that takes its socket from `baton run`, says READY=1
//! itself (no `--ready`), reloads under load without a failed request, and drains.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../baton/tests/support/mod.rs"]
mod support;

use std::process::Command;

use common::Master;
use support::{Load, get, signal_pid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_serves_reloads_twice_under_load_and_stops() {
    let addr = format!("127.0.0.1:{}", support::free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    // From the repository's root, as the README runs it.
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .args(["run", "--listen", &addr, "--drain-timeout", "10s", "--"])
        .args(["python3", "examples/server.py"]);
    let mut master = Master::spawn(cmd, addr);
    // Ready by its own READY=1: without it, `--ready notify` (the default) never is.
    master.wait_log(" ready in ", 1);
    let first = master.worker_pids()[0];
    let hello = get(&master.addr, "/").await.unwrap();
    assert_eq!(
        (hello.status.as_u16(), hello.body.as_str()),
        (200, "hello from python\n")
    );
    assert_eq!(
        get(&master.addr, "/pid").await.unwrap().body,
        format!("{first}\n")
    );
    assert_eq!(get(&master.addr, "/nope").await.unwrap().status, 404);

    let new_conn = Load::start(&master.addr, 3, false);
    let keep_alive = Load::start(&master.addr, 2, true);
    for n in 1..=2 {
        signal_pid(master.pid, "HUP");
        master.wait_log_off_runtime("reloaded: gen", n);
    }
    // Both old workers drained (finished what they had, then exited 0).
    master.wait_log_off_runtime("exited (exit status 0) after", 2);
    let (a, b) = (new_conn.stop().await, keep_alive.stop().await);
    assert!(a.failures.is_empty(), "new connections: {:?}", a.failures);
    assert!(b.failures.is_empty(), "keep-alive: {:?}", b.failures);
    assert!(a.ok > 20 && b.ok > 20, "{} {}", a.ok, b.ok);
    let workers = master.worker_pids();
    assert_eq!(workers.len(), 3);
    for old in &workers[..2] {
        master.wait_log_off_runtime(&format!("server.py {old} drained"), 1);
    }
    assert!(
        a.pids.len() >= 2,
        "the clients saw the workers change: {:?}",
        a.pids
    );
    let last = workers[2];
    assert_eq!(
        get(&master.addr, "/pid").await.unwrap().body,
        format!("{last}\n")
    );

    // Stop: the worker drains, the master exits with its status.
    signal_pid(master.pid, "TERM");
    let status = tokio::task::block_in_place(|| master.child.wait()).unwrap();
    assert_eq!(status.code(), Some(0));
    master.wait_log_off_runtime(&format!("server.py {last} drained"), 1);
}
