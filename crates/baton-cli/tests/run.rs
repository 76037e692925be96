//! `baton run` with real processes: a Python server that is not a baton app, and the
//! baton demo, reloaded under real clients.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../baton/tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Log, Master, private_dirs, remove_private_dirs};
use support::{Load, alive, get, signal_pid, wait_until};

/// A Python server from the standard library, not a baton app (it takes its socket
/// from LISTEN_FDS and checks LISTEN_PID), reloaded 20 times under clients opening a
/// new connection per request and keep-alive clients: 0 failed, the master's PID never
/// changes, and every old worker is gone after its drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_server_reloads_twenty_times_without_a_failed_request() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py");
    let master = Master::start("delay=300ms", &["python3", script]);
    let load = Load::start(&master.addr, 3, false);
    // The Python server answers `Connection: close`: a keep-alive client reconnects
    // after each response, to whichever worker accepts.
    let keep_alive = Load::start(&master.addr, 2, true);
    for n in 1..=20 {
        signal_pid(master.pid, "HUP");
        master.wait_log_off_runtime("reloaded: gen", n);
    }
    master.wait_log_off_runtime(") after ", 20);
    let tally = load.stop().await;
    let ka = keep_alive.stop().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert!(ka.failures.is_empty(), "keep-alive: {:?}", ka.failures);
    assert!(ka.ok > 50, "{}", ka.ok);
    assert!(tally.ok > 100, "{}", tally.ok);
    assert!(
        tally.pids.len() >= 5,
        "the clients saw the workers change: {:?}",
        tally.pids
    );
    assert!(
        !tally.pids.contains(&master.pid),
        "workers answer, not the master"
    );
    let workers = master.worker_pids();
    assert_eq!(workers.len(), 21);
    for old in &workers[..20] {
        wait_until("an old worker is gone after its drain", || !alive(*old));
    }
    assert!(alive(master.pid), "the master keeps its PID");
    let resp = get(&master.addr, "/").await.unwrap();
    assert_eq!(resp.body.trim(), workers[20].to_string());
}

/// The baton demo as a worker (it says READY=1 itself), reloaded under keep-alive and
/// new-connection clients: 0 failed; SIGTERM to the master drains the worker and the
/// master exits with the worker's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_under_baton_run_reloads_with_keep_alive_clients() {
    let hello = support::hello_exe();
    let mut master = Master::start(
        "notify",
        &[hello.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    let keep_alive = Load::start(&master.addr, 3, true);
    let new_conn = Load::start(&master.addr, 2, false);
    for n in 1..=10 {
        signal_pid(master.pid, "HUP");
        master.wait_log_off_runtime("reloaded: gen", n);
    }
    let (a, b) = (keep_alive.stop().await, new_conn.stop().await);
    assert!(a.failures.is_empty(), "keep-alive: {:?}", a.failures);
    assert!(b.failures.is_empty(), "new connections: {:?}", b.failures);
    assert!(a.ok > 0 && b.ok > 0);
    signal_pid(master.pid, "TERM");
    let status = tokio::task::block_in_place(|| master.child.wait()).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the worker's clean exit passes through"
    );
    master.wait_log_off_runtime("stopped", 1);
}

/// With `--hand-over`, the demo's idle keep-alive connections move to each new worker
/// at a reload (the master relays the generation channel): every one is answered by
/// the new worker on the same connection, without `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hand_over_idle_connections_move_to_each_new_worker() {
    let hello = support::hello_exe();
    let master = Master::start_with(
        &["--drain-timeout", "10s", "--hand-over"],
        &[],
        "notify",
        &[hello.to_str().unwrap()],
    );
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut c = support::Http1::connect(&master.addr).await.unwrap();
        assert_eq!(c.get("/pid").await.unwrap().status, 200);
        conns.push(c);
    }
    for n in 1..=3 {
        signal_pid(master.pid, "HUP");
        master.wait_log_off_runtime("reloaded: gen", n);
        let workers = master.worker_pids();
        let (old, new) = (workers[n - 1], workers[n]);
        wait_until("the old worker exited", || !alive(old));
        support::all_answered_by(&mut conns, new, &format!("reload {n}")).await;
    }
    master.wait_log_off_runtime("passes its open connections to gen 4", 1);
}

/// A reload whose new worker fails (here: a broken deploy that exits at start) leaves
/// the old one serving, with 0 failed requests; the master says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_leaves_the_old_worker_serving() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("broken");
    let script = format!(
        "if [ -e {flag} ]; then echo 'broken deploy' >&2; exit 3; fi; exec python3 {py}",
        flag = flag.display(),
        py = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py"),
    );
    let master = Master::start("delay=300ms", &["sh", "-c", &script]);
    let first = get(&master.addr, "/").await.unwrap().body;
    std::fs::write(&flag, b"").unwrap();
    let load = Load::start(&master.addr, 2, false);
    signal_pid(master.pid, "HUP");
    let line = master.wait_log_off_runtime("reload failed, the serving worker serves on", 1);
    assert!(line.contains("exited before it was ready"), "{line}");
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert!(tally.ok > 0);
    assert_eq!(get(&master.addr, "/").await.unwrap().body, first);
}

/// SIGKILL of the master: its worker is told to drain (the parent-death signal) and
/// does not outlive its drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_leaves_no_worker_behind() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py");
    let master = Master::start("delay=300ms", &["python3", script]);
    let worker = master.worker_pids()[0];
    assert!(alive(worker));
    let private = private_dirs(&[worker]);
    assert_eq!(
        private.len(),
        1,
        "the worker knows its master's private socket"
    );
    signal_pid(master.pid, "KILL");
    tokio::task::block_in_place(|| {
        wait_until("the worker of the killed master exits", || !alive(worker));
    });
    remove_private_dirs(private);
}

/// SIGKILL of the serving worker under load: the master starts a new one at once (the
/// sockets stay open, so no connection is refused); only requests in flight on the
/// killed worker may fail, at most one per client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_no_connection_is_refused() {
    let hello = support::hello_exe();
    let master = Master::start(
        "notify",
        &[hello.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    let first = master.worker_pids()[0];
    let keep_alive = Load::start(&master.addr, 2, true);
    let new_conn = Load::start(&master.addr, 2, false);
    support::wait_answered_by(&master.addr, first).await;
    signal_pid(first, "KILL");
    master.wait_log_off_runtime("the worker exited unexpectedly", 1);
    master.wait_log_off_runtime(" ready in ", 2);
    let second = master.worker_pids()[1];
    support::wait_answered_by(&master.addr, second).await;
    let (a, b) = (keep_alive.stop().await, new_conn.stop().await);
    let failures: Vec<&String> = a.failures.iter().chain(&b.failures).collect();
    eprintln!(
        "SIGKILL of the worker under 4 clients: {} ok, {} failed: {failures:?}",
        a.ok + b.ok,
        failures.len()
    );
    assert!(
        failures.iter().all(|f| !f.contains("refused")),
        "no connection is refused: {failures:?}"
    );
    assert!(failures.len() <= 4, "at most one per client: {failures:?}");
    assert!(a.pids.contains(&second) && b.pids.contains(&second));
    assert!(alive(master.pid));
}

/// A worker that writes garbage to its notify socket is still taken as ready on its
/// READY=1 (the garbage is logged once); one that ignores its drain signal is killed
/// at the drain timeout and the reload completes (the requests it held then are lost:
/// nothing a master can do about a worker that will not stop accepting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_garbage_and_a_worker_that_ignores_its_drain_signal() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py");
    let master = Master::start_with(
        &["--drain-timeout", "1s"],
        &[("PYWORKER_NOTIFY", "1"), ("PYWORKER_IGNORE_TERM", "1")],
        "notify",
        &["python3", script],
    );
    master.wait_log("malformed notify message", 1);
    let first = master.worker_pids()[0];
    let load = Load::start(&master.addr, 2, false);
    signal_pid(master.pid, "HUP");
    master.wait_log_off_runtime("reloaded: gen 2", 1);
    let line = master.wait_log_off_runtime("did not exit within 1s of SIGTERM: killing it", 1);
    assert!(line.contains(&first.to_string()), "{line}");
    master.wait_log_off_runtime("gen 1 killed after", 1);
    tokio::task::block_in_place(|| wait_until("the stubborn worker is gone", || !alive(first)));
    let tally = load.stop().await;
    // It ignored SIGTERM, so it kept accepting from the shared socket until the kill:
    // what it held then is lost (at most the one request in flight per client); the
    // accept queue is the socket's, not the process's, so nothing queued is.
    eprintln!(
        "a worker ignoring its drain signal, killed at the drain timeout: {} ok, {} failed {:?}",
        tally.ok,
        tally.failures.len(),
        tally.failures
    );
    assert!(tally.failures.len() <= 2, "{:?}", tally.failures);
    assert!(tally.pids.len() == 2, "{:?}", tally.pids);
}

/// A worker that runs the server as its own child (`sh -c 'server & wait'`, `npm
/// start`) and exits on the drain signal: what it started is killed with it (the
/// worker leads a process group of its own), instead of serving on with the sockets.
/// (The shell handles SIGTERM, by exiting: one that does not would die of it, and the
/// master refuses to reload it, see `control.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_worker_started_does_not_outlive_it() {
    let script = format!(
        "trap 'exit 0' TERM; PYWORKER_CHILD=1 python3 {} & wait",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py")
    );
    let master = Master::start("delay=300ms", &["sh", "-c", &script]);
    let server: u32 = get(&master.addr, "/")
        .await
        .unwrap()
        .body
        .trim()
        .parse()
        .unwrap();
    assert!(
        !master.worker_pids().contains(&server),
        "the server is the worker's child"
    );
    signal_pid(master.pid, "HUP");
    master.wait_log_off_runtime("reloaded: gen 2", 1);
    master.wait_log_off_runtime("gen 1 exited", 1);
    tokio::task::block_in_place(|| {
        wait_until("the old worker's child is gone", || !alive(server));
    });
    let now: u32 = get(&master.addr, "/")
        .await
        .unwrap()
        .body
        .trim()
        .parse()
        .unwrap();
    assert_ne!(now, server);
}

/// With --subreaper, a process the worker leaves behind (a daemonizing helper) is
/// re-parented to the master, which reaps it when it exits: no zombie piles up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_left_by_a_worker_are_reaped() {
    let script = format!(
        "(sleep 0.3 &); exec python3 {}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py")
    );
    let master = Master::start_with(&["--subreaper"], &[], "delay=200ms", &["sh", "-c", &script]);
    let line = master.wait_log("reaped an orphaned process", 1);
    let orphan: u32 = line
        .split("orphan=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    assert!(!support::exists(orphan), "reaped, not a zombie");
    // The worker itself is not taken for an orphan.
    assert!(alive(master.worker_pids()[0]));
    assert_eq!(get(&master.addr, "/").await.unwrap().status, 200);
}

/// As PID 1 (a container's init: here in a new PID namespace made by `unshare`), the
/// master reaps orphans without being asked to. (Not through the `Master` harness: the
/// PIDs in its log are the namespace's, not ours, and must not be signalled.)
#[test]
fn as_pid_1_the_master_reaps_orphans() {
    let script = format!(
        "(sleep 0.3 &); exec python3 {}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py")
    );
    let addr = format!("127.0.0.1:{}", support::free_port());
    // The master is killed: its private directory goes in one of the test's own.
    let tmp = tempfile::tempdir().unwrap();
    // --kill-child: when `unshare` is killed, so is the namespace's init, and with it
    // every process in the namespace.
    let mut child = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--map-root-user",
            "--mount-proc",
        ])
        .arg(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "--listen", &addr, "--ready", "delay=200ms"])
        .args(["--", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .env("TMPDIR", tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs");
    let log = Log::capture(&mut child, "pid 1");
    let line = log.wait("master listening on [", 1);
    assert!(line.contains("pid=1 "), "the master is PID 1: {line}");
    log.wait("reaped an orphaned process", 1);
    let _ = child.kill();
    let _ = child.wait();
}

/// Under systemd (NOTIFY_SOCKET set), the master speaks for itself: READY=1 once the
/// first worker is ready, RELOADING=1 and READY=1 around a reload (no MAINPID: its PID
/// stays the main one), STOPPING=1 at the stop. The worker's own messages go to the
/// master's private socket, never to systemd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_speaks_the_notify_protocol_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(support::WAIT)).unwrap();
    // The next message that is not a STATUS= line; those are kept.
    let statuses = std::cell::RefCell::new(Vec::new());
    let recv = || loop {
        let mut buf = [0u8; 512];
        let n = tokio::task::block_in_place(|| sock.recv(&mut buf)).unwrap();
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        match m.strip_prefix("STATUS=") {
            Some(s) => statuses.borrow_mut().push(s.to_string()),
            None => return m,
        }
    };
    let hello = support::hello_exe();
    let mut master = Master::start_with(
        &[],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
        "notify",
        &[hello.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    // The master, which bound the socket, keeps it in the FD store, once.
    assert_eq!(recv(), "FDSTORE=1\nFDNAME=http");
    assert_eq!(recv(), "READY=1");
    signal_pid(master.pid, "HUP");
    let reloading = recv();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(recv(), "READY=1");
    master.wait_log_off_runtime("gen 1 exited", 1);
    signal_pid(master.pid, "TERM");
    assert_eq!(recv(), "STOPPING=1");
    let status = tokio::task::block_in_place(|| master.child.wait()).unwrap();
    assert_eq!(status.code(), Some(0));
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    while let Ok(n) = sock.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        // While the stop drains: what it does, and more time while it progresses.
        if m.starts_with("EXTEND_TIMEOUT_USEC=") {
            continue;
        }
        let status = m.strip_prefix("STATUS=");
        assert!(status.is_some(), "nothing else was sent but STATUS=: {m:?}");
        statuses.borrow_mut().extend(status.map(str::to_string));
    }
    let statuses = statuses.into_inner();
    for expected in ["serving: worker gen 1 (pid ", "serving: worker gen 2 (pid "] {
        assert!(
            statuses.iter().any(|s| s.starts_with(expected)),
            "{expected:?} among the STATUS lines {statuses:?}"
        );
    }
}

/// Under systemd's socket activation (`systemd-socket-activate`, which executes the
/// master on the first connection, in its own process) the master takes the socket it
/// was given instead of binding, and passes it on to its workers across reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_takes_its_sockets_from_systemd() {
    let tool = "systemd-socket-activate";
    assert!(
        Command::new(tool).arg("--help").output().is_ok(),
        "{tool} is missing: install Debian's `systemd` package (.ci/run does)"
    );
    let addr = format!("127.0.0.1:{}", support::free_port());
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(tool);
    cmd.args(["-l", &addr, "--fdname=http"])
        .args(tool_env(tmp.path()))
        .arg(env!("CARGO_BIN_EXE_baton"))
        .args([
            "run",
            "--listen",
            &format!("http={addr}"),
            "--ready",
            "delay=200ms",
        ])
        .args([
            "--",
            "python3",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py"),
        ]);
    let master = Master::spawn_in(tmp, cmd, addr.clone());
    // The tool starts the master on the first connection, which then waits in the
    // socket's queue until the worker takes it.
    let deadline = Instant::now() + support::WAIT;
    let first = loop {
        match get(&addr, "/").await {
            Ok(resp) => break resp,
            // Until the tool listens.
            Err(e) => {
                assert!(Instant::now() < deadline, "never answered: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    let line = master.wait_log_off_runtime("master listening on [", 1);
    assert!(line.contains("(inherited)"), "{line}");
    master.wait_log_off_runtime(" ready in ", 1);
    let worker = master.worker_pids()[0];
    assert_eq!(first.body.trim(), worker.to_string());
    signal_pid(master.pid, "HUP");
    master.wait_log_off_runtime("reloaded: gen 2", 1);
    let second = master.worker_pids()[1];
    support::wait_answered_by(&addr, second).await;
    tokio::task::block_in_place(|| wait_until("the first worker is gone", || !alive(worker)));
}

/// Bad input: a command that does not exist is named (exit 1, nothing keeps running); a
/// bad duration or readiness gets the shared message shape (exit 2).
#[test]
fn bad_input_is_named_with_the_right_exit_status() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--",
        "/nonexistent/server",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot start /nonexistent/server: No such file or directory"),
        "{err}"
    );
    let (code, err) = run(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--",
        "no-such-command-here",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not found in PATH"), "{err}");
    let (code, err) = run(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "5",
        "--",
        "x",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`5` has no unit"), "{err}");
    let (code, err) = run(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--ready",
        "soon",
        "--",
        "x",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("expected `notify` or `delay=DURATION`"),
        "{err}"
    );
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(&["run", "--listen", &taken_addr, "--", "sleep", "600"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("address already in use"), "{err}");
    let (code, err) = run(&[
        "run",
        "--listen",
        "127.0.0.1:0",
        "--ready-timeout",
        "500ms",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("did not say it was ready within 500ms"),
        "{err}"
    );
    // Issue 27: what to do about it is said.
    assert!(err.contains("needs `--ready delay=DURATION`"), "{err}");
    let (code, err) = run(&["run", "--listen", "nowhere", "--", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("invalid listen address `nowhere`"), "{err}");
}

/// Regression (field, systemd): with systemd's default `KillMode=control-group`, a stop
/// sends SIGTERM to the master and to the worker at once, and the master then sends its
/// own drain signal: the worker (a baton app) took the second SIGTERM for a hammer and
/// cut its request in flight. A worker under a master never escalates now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_signalled_by_both_systemd_and_its_master_drains_in_full() {
    let hello = support::hello_exe();
    let mut master = Master::start_with(
        &["--drain-timeout", "60s"],
        &[],
        "notify",
        &[hello.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    let worker = master.worker_pids()[0];
    let addr = master.addr.clone();
    let sleeper = tokio::spawn(async move { get(&addr, "/sleep?secs=2").await });
    master.wait_log_off_runtime("sleep 2s: start", 1);
    // As systemd does: SIGTERM to every process of the unit (the worker's first, as it
    // happens when systemd's reaches the worker before the master relays its own).
    signal_pid(worker, "TERM");
    master.wait_log_off_runtime(&format!("shutting down pid={worker}"), 1);
    signal_pid(master.pid, "TERM");
    let resp = sleeper
        .await
        .unwrap()
        .expect("the request in flight is answered");
    assert_eq!(resp.status, 200, "{}", resp.body);
    let status = tokio::task::block_in_place(|| master.child.wait()).unwrap();
    assert_eq!(status.code(), Some(0), "a clean stop");
    assert_eq!(master.log.count("hammer"), 0, "{:?}", master.log.lines());
}

/// Regression (field, systemd): a worker that ends by the stop signal itself after
/// draining (many runtimes re-raise it) made the master exit 143, which systemd counts
/// as a failed unit. The master now ends by the same signal, as a shell reports a
/// program it ran, and systemd counts a main process ended by SIGTERM as a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_ends_by_the_stop_signal_its_worker_ended_by() {
    use std::os::unix::process::ExitStatusExt;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py");
    let mut master = Master::start_with(
        &["--drain-timeout", "10s"],
        &[("PYWORKER_RERAISE", "1")],
        "delay=300ms",
        &["python3", script],
    );
    signal_pid(master.pid, "TERM");
    let status = tokio::task::block_in_place(|| master.child.wait()).unwrap();
    assert_eq!(status.signal(), Some(15), "ended by SIGTERM: {status:?}");
    master.wait_log_off_runtime("stopped", 1);
}

/// Regression (new user): the worker logged `generation=1` while the master said gen
/// 2, and every drain under a master logged a warning that the service manager could
/// not be told `STOPPING=1` (the master reads its worker's notify socket only until
/// `READY=1`, by design).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demo_worker_agrees_with_its_master_and_drains_without_warnings() {
    let hello = support::hello_exe();
    let mut master = Master::start(
        "notify",
        &[hello.to_str().unwrap(), "--listen", "127.0.0.1:0"],
    );
    signal_pid(master.pid, "HUP");
    master.wait_log_off_runtime("reloaded: gen 2", 1);
    master.wait_log_off_runtime("gen 1 exited", 1);
    signal_pid(master.pid, "TERM");
    tokio::task::block_in_place(|| master.child.wait()).unwrap();
    let lines = master.log.lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("cannot notify the service manager")),
        "{lines:?}"
    );
    let second = master.worker_pids()[1];
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("server ready pid={second} generation=2"))),
        "{lines:?}"
    );
}

/// Regression (new user): `baton run --listen ADDR -- hello`, the demo without a
/// `--listen` of its own, exited with a message about restarts; a worker serves what
/// its master passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_as_a_worker_serves_what_its_master_passes() {
    let hello = support::hello_exe();
    let master = Master::start("notify", &[hello.to_str().unwrap()]);
    let worker = master.worker_pids()[0];
    assert_eq!(
        get(&master.addr, "/pid").await.unwrap().body.trim(),
        worker.to_string()
    );
}

/// Regression (new user): `baton run` refused to start without `--listen` even when
/// systemd passes the sockets (socket activation); it passes those on, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baton_run_without_listen_passes_on_the_sockets_it_was_given() {
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let hello = support::hello_exe();
    let tmp = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &addr, "--fdname=web"])
        .args(tool_env(tmp.path()))
        .arg(env!("CARGO_BIN_EXE_baton"))
        .args(["run", "--"])
        .arg(&hello);
    let master = Master::spawn_in(tmp, cmd, addr.clone());
    master.wait_log_off_runtime("Listening on", 1);
    // The tool starts it on the first connection.
    let resp = get(&addr, "/").await.unwrap();
    assert_eq!(resp.status, 200);
    master.wait_log_off_runtime("listener=web", 1);
    master.wait_log_off_runtime("(inherited)", 1);
    let none = baton_output(&["run", "--", "true"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("nothing to listen on: give --listen ADDR"),
        "{none:?}"
    );
}

fn baton_output(args: &[&str]) -> std::process::Output {
    tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .env_remove("LISTEN_FDS")
            .output()
            .unwrap()
    })
}

/// `systemd-socket-activate` passes its child only the environment it is told to:
/// the log level, and private directories in the test's own `tmp`.
fn tool_env(tmp: &std::path::Path) -> [String; 2] {
    [
        format!("--setenv=TMPDIR={}", tmp.display()),
        "--setenv=RUST_LOG=info".to_owned(),
    ]
}
