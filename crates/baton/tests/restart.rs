//! Graceful restart, binary upgrade and full restart of the real demo under real
//! signals and real clients: no request may fail.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Demo, Load, alive, exists, fd_count, get, post, signal_pid, wait_until};

/// GoFrame's scenario: a `/sleep` in flight across a restart completes from the old
/// PID; the next `/pid` answers the new PID; the old generation exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goframe_scenario_in_flight_request_finishes_on_the_old_pid() {
    let mut demo = Demo::start(&[]);
    let old = demo.pid;
    let sleeping = demo.sleep_in_flight("1.5");
    demo.signal("HUP");
    let new = demo.wait_ready(2);
    assert_ne!(new, old);
    let resp = get(&demo.addr, "/pid").await.unwrap();
    assert_eq!(
        resp.body.trim(),
        new.to_string(),
        "the next request goes to the new PID"
    );
    let slept = sleeping.await.unwrap().unwrap();
    assert_eq!(slept.status, 200);
    assert!(
        slept
            .body
            .contains(&format!("start pid {old}, end pid {old}")),
        "{}",
        slept.body
    );
    let status = demo.wait_exit();
    assert!(status.success(), "the old generation exits 0: {status}");
    demo.wait_log("server reloading");
    demo.wait_log(&format!(
        "http server reloaded listening on [{}]",
        demo.addr
    ));
    // (Its one connection closed after its response, within the probation.)
    demo.wait_log("drain after the hand-over complete: drained 0 connections");
    let resp = get(&demo.addr, "/pid").await.unwrap();
    assert_eq!(resp.body.trim(), new.to_string());
}

/// endless's scenario: the binary on disk is replaced by a build that answers
/// differently; after the restart the new answer is served, and a request in flight
/// finishes on the old code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_binary_is_served_after_the_restart() {
    let demo = Demo::start_copy(&[]);
    assert_eq!(
        get(&demo.addr, "/").await.unwrap().body,
        "hello from baton\n"
    );
    // "Rebuild": the same program with its greeting changed in the binary itself.
    let old_build = std::fs::read(demo.app()).unwrap();
    let (from, to) = (b"hello from baton", b"hello from v2.00");
    let mut new_build = old_build.clone();
    let mut patched = 0;
    for i in 0..new_build.len() - from.len() {
        if &new_build[i..i + from.len()] == from {
            new_build[i..i + from.len()].copy_from_slice(to);
            patched += 1;
        }
    }
    assert!(patched > 0, "the greeting is in the binary");
    let sleeping = demo.sleep_in_flight("1");
    demo.replace_app(&new_build);
    demo.signal("USR2");
    let new = demo.wait_ready(2);
    let resp = get(&demo.addr, "/").await.unwrap();
    assert_eq!(resp.body, "hello from v2.00\n", "the new build answers");
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        new.to_string()
    );
    let slept = sleeping.await.unwrap().unwrap();
    assert!(
        slept.body.contains(&format!("end pid {}", demo.pid)),
        "{}",
        slept.body
    );
}

/// 20 restarts in a row while clients send requests back to back, on new connections
/// and on keep-alive connections: not one fails. The serving generation's descriptors
/// stay flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_restarts_under_load_lose_nothing() {
    let demo = Demo::start(&["--idle-grace", "200ms"]);
    let idle_fds = fd_count(demo.pid);
    let new_conn = Load::start(&demo.addr, 3, false);
    let keep_alive = Load::start(&demo.addr, 3, true);
    let mut pid = demo.pid;
    for generation in 2..=21 {
        signal_pid(pid, "HUP");
        pid = demo.wait_ready(generation);
        // The new generation answers before the next restart.
        support::wait_answered_by(&demo.addr, pid).await;
    }
    let (a, b) = (new_conn.stop().await, keep_alive.stop().await);
    assert!(a.failures.is_empty(), "new connections: {:?}", a.failures);
    assert!(b.failures.is_empty(), "keep-alive: {:?}", b.failures);
    assert!(
        a.ok > 100 && b.ok > 100,
        "the clients ran: {} / {}",
        a.ok,
        b.ok
    );
    assert!(
        a.pids.len() >= 10 && b.pids.len() >= 10,
        "{:?} {:?}",
        a.pids,
        b.pids
    );
    // Once the clients are gone, the 21st generation holds what the first one held
    // when idle: nothing accumulates from one generation to the next.
    wait_until(
        "the last generation has as many descriptors as the first had",
        || fd_count(pid) == idle_fds,
    );
    let resp = get(&demo.addr, "/pid").await.unwrap();
    assert_eq!(resp.body.trim(), pid.to_string());
}

/// A new generation that crashes at start: the old one serves on, no request fails,
/// the caller learns why; the crashed process is reaped. Fixing the build makes the
/// next restart work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_that_crashes_leaves_the_old_one_serving() {
    let demo = Demo::start_copy(&[]);
    let good_build = std::fs::read(demo.app()).unwrap();
    let load = Load::start(&demo.addr, 2, false);
    demo.replace_app(b"#!/bin/sh\necho 'broken build: cannot start' >&2\nexit 3\n");
    let resp = post(&demo.addr, "/restart").await.unwrap();
    assert_eq!(resp.status, 500, "{}", resp.body);
    assert!(
        resp.body
            .contains("exited before it was ready (exit status 3)"),
        "{}",
        resp.body
    );
    demo.wait_log("restart failed, serving on");
    demo.wait_log("broken build: cannot start");
    let crashed: u32 = support::between(
        &demo.wait_log("spawned the new generation"),
        "new_pid=",
        " ",
    )
    .parse()
    .unwrap();
    wait_until("the crashed generation is reaped", || !exists(crashed));
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        demo.pid.to_string()
    );
    // A binary that is not executable, or missing, is refused before anything starts.
    {
        use std::os::unix::fs::PermissionsExt;
        demo.replace_app(&good_build);
        std::fs::set_permissions(demo.app(), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let resp = post(&demo.addr, "/restart").await.unwrap();
    assert!(
        resp.body.contains("not executable (no x permission)"),
        "{}",
        resp.body
    );
    std::fs::remove_file(demo.app()).unwrap();
    let resp = post(&demo.addr, "/restart").await.unwrap();
    assert!(
        resp.body.contains("cannot start") && resp.body.contains("app"),
        "{}",
        resp.body
    );
    demo.replace_app(&good_build);
    let resp = post(&demo.addr, "/restart").await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let new = demo.wait_ready(2);
    assert!(resp.body.contains(&format!("pid {new}")), "{}", resp.body);
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert!(tally.ok > 0);
}

/// A new generation that never reports ready is stopped at the readiness deadline;
/// the old one serves on and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_generation_that_never_gets_ready_is_killed_at_the_deadline() {
    let demo = Demo::start_copy(&["--ready-timeout", "1s"]);
    let load = Load::start(&demo.addr, 2, true);
    demo.replace_app(b"#!/bin/sh\nexec sleep 600\n");
    demo.signal("HUP");
    demo.wait_log("did not report ready within 1s");
    let hung: u32 = support::between(
        &demo.wait_log("spawned the new generation"),
        "new_pid=",
        " ",
    )
    .parse()
    .unwrap();
    demo.wait_log("the abandoned new generation is gone (reaped)");
    assert!(!exists(hung), "the hung generation was reaped");
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        demo.pid.to_string()
    );
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert!(tally.ok > 0);
}

/// GoFrame's full restart (SIGUSR2 in its preset): same PID, and no connection is
/// refused while the program starts again: they wait in the accept queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_restart_keeps_the_pid_and_refuses_no_connection() {
    let demo = Demo::start(&["--signals", "goframe"]);
    let load = Load::start(&demo.addr, 3, false);
    let sleeping = demo.sleep_in_flight("1");
    demo.signal("USR2");
    demo.wait_log("full restart: drained; executing the program anew");
    assert_eq!(demo.wait_ready(2), demo.pid, "same PID");
    let slept = sleeping.await.unwrap().unwrap();
    assert_eq!(slept.status, 200, "the request in flight finished first");
    // The program executed anew answers, with the clients still running.
    support::wait_answered_by(&demo.addr, demo.pid).await;
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(tally.pids.into_iter().collect::<Vec<_>>(), [demo.pid]);
    assert!(alive(demo.pid));
}

/// Restart requests that arrive during a restart are coalesced into it, each caller
/// gets an answer, and no more generations run at once than the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_restart_requests_is_coalesced_and_capped() {
    let demo = Demo::start_copy(&["--drain-timeout", "5s"]);
    // Keep the old generations draining for a while: a long request on each.
    let sleepers: Vec<_> = (0..3)
        .map(|_| {
            let addr = demo.addr.clone();
            tokio::spawn(async move { get(&addr, "/sleep?secs=3").await })
        })
        .collect();
    demo.wait_log_nth("sleep 3s: start", 3);
    let app = demo.app();
    // Generations alive: the demo's processes, less the sitters (a fork of a generation
    // that starts the next one and exits once that one is ready: the demo's command
    // line too, a generation's child and the next generation's parent).
    let alive_now = move || {
        let ours = |pid: u32| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).starts_with(&*app.to_string_lossy())
        };
        let parent = |pid: u32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
        };
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|p| ours(*p) && alive(*p))
            .collect();
        pids.iter()
            .filter(|p| {
                let sitter = parent(**p).is_some_and(|pp| pids.contains(&pp))
                    && pids.iter().any(|c| parent(*c) == Some(**p));
                !sitter
            })
            .count()
    };
    let requests: Vec<_> = (0..30)
        .map(|_| {
            let addr = demo.addr.clone();
            tokio::spawn(async move { post(&addr, "/restart").await })
        })
        .collect();
    let mut most = 0;
    let mut answered = Vec::new();
    for r in requests {
        while !r.is_finished() {
            most = most.max(alive_now());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        answered.push(r.await.unwrap().unwrap());
    }
    // Every request has a definite answer: restarted (itself or coalesced into a
    // restart in progress), or refused by a generation that had already handed over.
    for resp in &answered {
        assert!(
            resp.body.starts_with("restarted: pid")
                || resp.body.contains("is draining; restart that one"),
            "{}",
            resp.body
        );
    }
    assert!(
        most <= baton::DEFAULT_MAX_GENERATIONS,
        "{most} generations alive at once"
    );
    for s in sleepers {
        assert_eq!(s.await.unwrap().unwrap().status, 200);
    }
}

/// Several listeners (TCP and a Unix socket) are handed over together, matched by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_is_handed_over_together() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("hello.sock");
    let unix = format!("unix:{}", sock.display());
    let demo = Demo::start_with(
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--listen",
            &unix,
        ],
        &[],
    );
    let second =
        support::between(&demo.wait_log("listener=http-2"), "listening on [", "]").to_owned();
    demo.signal("HUP");
    let new = demo.wait_ready(2);
    // Every listener of the old generation stopped accepting: each answer is the new one.
    demo.wait_log_nth("http server stopped accepting on", 3);
    for listener in ["http", "http-2", "http-3"] {
        let line = demo.wait_log(&format!("pid={new} listener={listener}"));
        assert!(line.contains("reloaded listening on"), "{line}");
    }
    for addr in [&demo.addr, &second] {
        assert_eq!(
            get(addr, "/pid").await.unwrap().body.trim(),
            new.to_string()
        );
    }
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
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body).trim(), new.to_string());
}

/// endless's user hook on SIGUSR1 runs the user's function; serving goes on undisturbed:
/// the same keep-alive connection answers before and after, from the same PID.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_hook_on_a_signal_runs_without_disturbing_serving() {
    let demo = Demo::start(&[]);
    let mut conn = support::Http1::connect(&demo.addr).await.unwrap();
    let before = conn.get("/pid").await.unwrap();
    for n in 1..=3 {
        demo.signal("USR1");
        demo.wait_log_nth("SIGUSR1: reopening the log files", n);
        let resp = conn.get("/pid").await.unwrap();
        assert_eq!(resp.body, before.body);
        assert!(!resp.closes(), "keep-alive goes on");
    }
    demo.wait_log_nth("user hook completed", 3);
    assert_eq!(before.body.trim(), demo.pid.to_string());
}

/// The cap on generations alive at once (issue 32, restart storms): with a cap of 2,
/// a restart while an older generation still drains (a long request keeps it) waits
/// for that drain to end instead of forcing it (which cut the request in flight):
/// the request finishes on the oldest generation, then the restart goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_cap_a_restart_waits_for_the_oldest_drain() {
    let mut demo = Demo::start(&["--max-generations", "2", "--drain-timeout", "1h"]);
    let sleeper = demo.sleep_in_flight("4");
    demo.signal("HUP");
    let second = demo.wait_ready(2);
    demo.wait_log(&format!(
        "pid={} connections=1 requests_in_flight=1",
        demo.pid
    ));
    signal_pid(second, "HUP");
    demo.wait_log(
        "generations alive at the cap: this restart waits for the oldest draining one to end",
    );
    let slept = sleeper.await.unwrap().unwrap();
    assert_eq!(slept.status, 200, "the request in flight was not cut");
    assert_eq!(demo.wait_exit().code(), Some(0), "the oldest drained");
    let third = demo.wait_ready(3);
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        third.to_string()
    );
    assert!(
        !demo.log().iter().any(|l| l.contains("forcing")),
        "nothing was forced"
    );
}

/// Regression (review): a shutdown asked for while a full restart drains used to be
/// carried out as a hammer and then the program was executed anew anyway; `systemctl
/// stop` during a full restart must stop the service. Its SIGTERM does not cut the
/// request in flight either: the drain goes on, then the process stops (no exec).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_during_a_full_restart_stops_instead_of_restarting() {
    let mut demo = Demo::start(&["--signals", "goframe", "--drain-timeout", "1h"]);
    let sleeper = demo.sleep_in_flight("3");
    demo.signal("USR2");
    demo.wait_log("full restart: draining completely first");
    demo.signal("TERM");
    assert_eq!(demo.wait_exit().code(), Some(0), "drained, then stopped");
    demo.wait_log("full restart abandoned: a shutdown was asked for during its drain");
    assert_eq!(sleeper.await.unwrap().unwrap().status, 200);
    assert!(
        !demo
            .log()
            .iter()
            .any(|l| l.contains("executing the program anew")),
        "no exec"
    );
}

/// GoFrame's model: the demo is its own master (`--master`). The master keeps its PID
/// (and its locked pidfile) across reloads by SIGHUP and by its control socket, while
/// workers of the same program serve under keep-alive and new-connection clients:
/// 0 failed. SIGTERM drains the worker; the master exits 0 and removes its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_can_be_its_own_master_with_a_stable_pid() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("app.pid");
    let mut demo = Demo::start(&["--master", "--pidfile", pidfile.to_str().unwrap()]);
    let master = demo.pid;
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        master.to_string()
    );
    let keep_alive = Load::start(&demo.addr, 2, true);
    let new_conn = Load::start(&demo.addr, 2, false);
    for n in 2..=6 {
        demo.signal("HUP");
        demo.wait_log(&format!("reloaded: gen {n} serves"));
    }
    // The control socket beside the pidfile, as `baton reload --pidfile` uses it.
    let answer = tokio::task::block_in_place(|| {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(dir.path().join("app.sock")).unwrap();
        s.write_all(b"reload\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(answer.contains("progress spawned gen 7 pid"), "{answer}");
    assert!(answer.ends_with(&"serving\n".to_string()), "{answer}");
    assert!(
        answer
            .lines()
            .last()
            .unwrap()
            .starts_with("ok reloaded: gen 7"),
        "{answer}"
    );
    let (a, b) = (keep_alive.stop().await, new_conn.stop().await);
    assert!(a.failures.is_empty(), "keep-alive: {:?}", a.failures);
    assert!(b.failures.is_empty(), "new connections: {:?}", b.failures);
    assert!(!a.pids.contains(&master) && !b.pids.contains(&master));
    assert!(a.pids.len() + b.pids.len() >= 4, "{a:?} {b:?}");
    assert!(alive(master));
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        master.to_string(),
        "the workers leave the master's pidfile alone"
    );
    demo.signal("TERM");
    assert_eq!(demo.wait_exit().code(), Some(0));
    assert!(!pidfile.exists() && !dir.path().join("app.sock").exists());
}
