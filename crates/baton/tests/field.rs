//! Field-proofing of the self-restarting demo: what an init system, a slow new
//! generation and a worker of its own master do to a restart. Each test names the
//! defect it guards.

#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use support::{Demo, between, get, post, signal_pid, wait_until};

fn ppid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    stat.rsplit_once(") ")
        .unwrap()
        .1
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn sig_ignored(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// Regression (field, systemd): a `systemctl stop` while the old generation drains sends
/// SIGTERM to every process of the unit; the draining generation took it for a second
/// shutdown signal and cut its request in flight. It drains on to its deadline now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_draining_after_a_hand_over_keeps_draining_on_sigterm() {
    let mut demo = Demo::start(&["--drain-timeout", "1h"]);
    let sleeper = demo.sleep_in_flight("3");
    demo.signal("HUP");
    let new = demo.wait_ready(2);
    demo.wait_log("restart: the new generation is ready; this one stops accepting and drains");
    demo.signal("TERM");
    demo.wait_log("SIGTERM: already draining; the drain goes on to its deadline");
    let resp = sleeper
        .await
        .unwrap()
        .expect("answered by the old generation");
    assert_eq!(resp.status, 200);
    assert!(
        resp.body.contains(&format!("start pid {}", demo.pid)),
        "{}",
        resp.body
    );
    assert_eq!(demo.wait_exit().code(), Some(0), "a clean drain");
    assert!(!demo.log().iter().any(|l| l.contains("hammer")));
    signal_pid(new, "TERM");
}

/// Regression (field, systemd): systemd treats a main PID that is not its child as
/// "alien" and SIGKILLs it at once at a stop. The new generation used to be the old
/// one's child when systemd heard `MAINPID=`; it is started through a sitter that has
/// exited by then, so its parent is no longer the old generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_generation_is_not_the_old_ones_child_once_it_serves() {
    let mut demo = Demo::start(&[]);
    // The old generation stands by for its probation (2 s) once the new one is ready,
    // then drains; a request in flight well past that keeps it alive while we look
    // (a 2 s sleep ended with the probation and let it exit before the check).
    let sleeper = demo.sleep_in_flight("8");
    demo.signal("HUP");
    let new = demo.ready_pid(2);
    demo.wait_log("restart: the new generation is ready");
    assert!(
        support::alive(demo.pid),
        "the old generation still stands by"
    );
    assert_ne!(ppid(new), demo.pid, "re-parented before MAINPID= was sent");
    assert_eq!(sleeper.await.unwrap().unwrap().status, 200);
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        new.to_string()
    );
    assert!(demo.wait_exit().success());
    signal_pid(new, "TERM");
    wait_until("the new generation is gone", || !support::alive(new));
}

/// Regression (field): a new generation that became ready only after the old one gave
/// up on it (and served on) told systemd `MAINPID=<itself>` and `READY=1` and rewrote
/// the pidfile. It claims nothing now and leaves: the old generation still serves the
/// service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_ready_after_the_old_one_gave_up_claims_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let manager = UnixDatagram::bind(&notify_path).unwrap();
    manager.set_read_timeout(Some(support::WAIT)).unwrap();
    let good = dir.path().join("good");
    std::fs::copy(support::hello_exe(), &good).unwrap();
    let pidfile = dir.path().join("app.pid");
    let app_dir = tempfile::tempdir().unwrap();
    let app = app_dir.path().join("app");
    std::fs::copy(support::hello_exe(), &app).unwrap();
    let mut cmd = Command::new(&app);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--ready-timeout",
        "1s",
        "--pidfile",
    ])
    .arg(&pidfile)
    .env("NOTIFY_SOCKET", &notify_path);
    let demo = Demo::spawn_in(app_dir, cmd);
    let mut buf = [0u8; 4096];
    // Before READY=1: the socket for the FD store, and what it does (STATUS=).
    loop {
        let n = manager.recv(&mut buf).unwrap();
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        if m == "READY=1" {
            break;
        }
        assert!(
            m.starts_with("FDSTORE=1\n") || m.starts_with("STATUS="),
            "{m:?} before READY=1"
        );
    }
    // The next build takes 3 s to start and ignores SIGTERM meanwhile: the old
    // generation gives up after 1 s, and it becomes ready anyway.
    demo.replace_app(
        format!(
            "#!/bin/sh\ntrap '' TERM\nsleep 3\nexec {} \"$@\"\n",
            good.display()
        )
        .as_bytes(),
    );
    demo.signal("HUP");
    let late: u32 = between(
        &demo.wait_log("spawned the new generation"),
        "new_pid=",
        " ",
    )
    .parse()
    .unwrap();
    demo.wait_log("restart failed, serving on");
    demo.wait_log("not taking over: this one drains and exits");
    demo.wait_log("drain of the generation given up on complete");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        demo.pid.to_string(),
        "the pidfile still names the generation that serves"
    );
    // The manager heard the reload start and end, and nothing from the late one.
    let mut heard = Vec::new();
    manager
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = manager.recv(&mut buf) {
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        !heard.iter().any(|m| m.contains("MAINPID")),
        "no MAINPID= from the late generation: {heard:?}"
    );
    assert!(
        !heard.iter().any(|m| m.contains(&format!("pid {late}"))),
        "no STATUS= naming the late generation: {heard:?}"
    );
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        demo.pid.to_string()
    );
    wait_until("the late generation left", || !support::alive(late));
}

/// Regression (field): signals a full restart ignored across its `exec` (so that one
/// arriving early does not end the process) stayed ignored in the new image when it
/// does not handle them, and in everything it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_ignored_across_a_full_restart_get_their_default_back() {
    let demo = Demo::start_copy(&["--signals", "goframe"]);
    let good = demo.dir.path().join("good");
    std::fs::copy(support::hello_exe(), &good).unwrap();
    // The new image runs with a map that leaves SIGUSR1 and SIGUSR2 unmapped.
    demo.replace_app(
        format!(
            "#!/bin/sh\nexec {} --listen 127.0.0.1:0 --signals none\n",
            good.display()
        )
        .as_bytes(),
    );
    demo.signal("USR2");
    demo.wait_log("executing the program anew");
    demo.wait_log_nth("server ready", 2);
    let usr = (1u64 << (libc::SIGUSR1 - 1)) | (1u64 << (libc::SIGUSR2 - 1));
    assert_eq!(
        sig_ignored(demo.pid) & usr,
        0,
        "SIGUSR1/SIGUSR2 not ignored in the new image"
    );
    signal_pid(demo.pid, "TERM");
}

/// Regression (field): a worker of the app's own master (`--master`) that restarts
/// itself (`POST /restart`, the admin button, SIGHUP to the worker) started a second
/// master. It asks its master now: the master starts the new worker and drains this
/// one; the caller gets the new worker's PID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_of_its_own_master_restarting_itself_asks_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("app.pid");
    let demo = Demo::start(&["--master", "--pidfile", pidfile.to_str().unwrap()]);
    let master = demo.pid;
    let first: u32 = get(&demo.addr, "/pid")
        .await
        .unwrap()
        .body
        .trim()
        .parse()
        .unwrap();
    assert_ne!(first, master);
    let resp = post(&demo.addr, "/restart").await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    // "reloaded: gen 2 serves; gen 1 (pid N) drains pid=MASTER worker=NEW"
    let line = demo.wait_log("reloaded: gen 2 serves");
    let second: u32 = line
        .rsplit("worker=")
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(resp.body.contains(&second.to_string()), "{}", resp.body);
    support::wait_answered_by(&demo.addr, second).await;
    assert_ne!(second, first);
    assert_eq!(ppid(second), master, "the new worker is the master's");
    wait_until("the old worker is gone", || !support::alive(first));
    // One master: the only processes of the demo are the master and its one worker.
    let demo_procs: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(pidfile.to_str().unwrap()))
        })
        .filter(|p| support::alive(*p))
        .collect();
    assert_eq!(demo_procs.len(), 2, "master and one worker: {demo_procs:?}");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        master.to_string()
    );
    signal_pid(master, "TERM");
}
