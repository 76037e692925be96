//! `baton start`, `status`, `reload`, `restart` and `stop` as a user types them: a real
//! detached master, its control socket, real workers and real clients.
#![allow(clippy::unwrap_used)]

#[path = "../../baton/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Load, alive, get, wait_until};

/// Runs `baton ARGS` to its end (off the async runtime's threads).
fn baton(args: &[&str]) -> Output {
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(args)
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    };
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(run),
        Err(_) => run(),
    }
}

fn text(out: &Output) -> (Option<i32>, String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    eprintln!("[baton] status {:?}\n{o}{e}", out.status.code());
    (out.status.code(), o, e)
}

/// Stops the master of a test however the test ended: by its pidfile, which only this
/// test's masters write (a temporary run directory).
struct Cleanup {
    pidfile: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile)
            && let Ok(pid) = pid.trim().parse::<u32>()
            && alive(pid)
        {
            // A stop first, so that it removes what it created; a kill if it
            // does not end in time (its workers get their drain signal when
            // it dies).
            support::signal_pid(pid, "TERM");
            let deadline = std::time::Instant::now() + support::WAIT;
            while alive(pid) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if alive(pid) {
                support::signal_pid(pid, "KILL");
            }
        }
    }
}

fn status_json(run_dir: &Path, name: &str) -> serde_json::Value {
    let out = baton(&[
        "status",
        "--name",
        name,
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--json",
    ]);
    let (code, o, _) = text(&out);
    assert_eq!(code, Some(0));
    serde_json::from_str(&o).unwrap()
}

fn serving_pid(v: &serde_json::Value) -> u32 {
    let w = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["role"] == "serving")
        .unwrap();
    u32::try_from(w["pid"].as_u64().unwrap()).unwrap()
}

/// The round trip, with a stale pidfile left by a dead master, a double start, a
/// control client that sends garbage, a reload and a full restart under keep-alive and
/// new-connection clients (0 failed), and `stop` twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_status_reload_restart_stop_as_a_user_types_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rd = run_dir.to_str().unwrap();
    std::fs::create_dir(&run_dir).unwrap();
    // A pidfile naming a process that is gone, as a killed master leaves it.
    let dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let _ = { dead }.wait();
    std::fs::write(run_dir.join("web.pid"), format!("{dead_pid}\n")).unwrap();

    let addr = format!("127.0.0.1:{}", support::free_port());
    let hello = support::hello_exe();
    let start = [
        "start",
        "--name",
        "web",
        "--run-dir",
        rd,
        "--listen",
        &addr,
        "--",
        hello.to_str().unwrap(),
        "--listen",
        &addr,
    ];
    let (code, out, _) = text(&baton(&start));
    let _cleanup = Cleanup {
        pidfile: run_dir.join("web.pid"),
    };
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&format!(
            "replacing a stale pidfile {}/web.pid (process {dead_pid} is gone)",
            rd
        )),
        "{out}"
    );
    assert!(out.contains("started web: master pid "), "{out}");
    let v = status_json(&run_dir, "web");
    let master = u32::try_from(v["master_pid"].as_u64().unwrap()).unwrap();
    assert_eq!(v["state"], "serving");
    assert_eq!(v["generation"], 1);
    assert_eq!(v["listeners"][0]["addr"], addr.as_str());
    let gen1 = serving_pid(&v);
    assert_eq!(
        get(&addr, "/pid").await.unwrap().body.trim(),
        gen1.to_string()
    );
    let mode = std::fs::metadata(run_dir.join("web.sock")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );

    // A second start of the name is refused and disturbs nothing.
    let (code, _, err) = text(&baton(&start));
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("web already runs (master pid {master})")),
        "{err}"
    );

    // Garbage on the control socket: an error line, and the master serves on.
    {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(run_dir.join("web.sock")).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("error unknown command"), "{answer}");
    }

    let keep_alive = Load::start(&addr, 2, true);
    let new_conn = Load::start(&addr, 2, false);
    let (code, out, _) = text(&baton(&["reload", "--name", "web", "--run-dir", rd]));
    assert_eq!(code, Some(0));
    for step in [
        "spawned gen 2 pid",
        "ready in",
        "draining gen 1 pid",
        "gen 1 exited",
    ] {
        assert!(out.contains(step), "{step:?} in {out}");
    }
    let v = status_json(&run_dir, "web");
    let gen2 = serving_pid(&v);
    assert_ne!(gen1, gen2);
    assert_eq!(v["generation"], 2);
    assert_eq!(v["last_reload"]["outcome"], "ok");
    // `reload` returned once the new worker served and the old one was gone.
    assert!(!alive(gen1), "the old worker is gone when reload returns");

    let (code, out, _) = text(&baton(&["restart", "--name", "web", "--run-dir", rd]));
    assert_eq!(code, Some(0));
    assert!(out.contains("clients wait in the accept queue"), "{out}");
    let gen3 = serving_pid(&status_json(&run_dir, "web"));
    assert!(!alive(gen2));
    let (a, b) = (keep_alive.stop().await, new_conn.stop().await);
    assert!(a.failures.is_empty(), "keep-alive: {:?}", a.failures);
    assert!(b.failures.is_empty(), "new connections: {:?}", b.failures);
    assert!(a.ok > 0 && b.ok > 0);
    assert!(
        a.pids.contains(&gen1) && b.pids.contains(&gen3),
        "{a:?} {b:?}"
    );

    let (code, out, _) = text(&baton(&["stop", "--name", "web", "--run-dir", rd]));
    assert_eq!(code, Some(0));
    assert!(
        out.contains(&format!("master pid {master} exited")),
        "{out}"
    );
    assert!(!alive(master) && !alive(gen3));
    assert!(!run_dir.join("web.pid").exists());
    assert!(!run_dir.join("web.sock").exists());
    assert!(!run_dir.join("web.signals").exists());
    assert!(
        get(&addr, "/pid").await.is_err(),
        "nothing listens any more"
    );

    // Nothing runs: stop and status say so, with exit status 3.
    for cmd in ["stop", "status", "reload"] {
        let (code, _, err) = text(&baton(&[cmd, "--name", "web", "--run-dir", rd]));
        assert_eq!(code, Some(3), "{cmd}");
        assert!(err.contains("nothing named web runs"), "{err}");
    }
}

/// `baton reload` exits non-zero with the reason when the new worker crashes, and when
/// it misses its ready deadline; the old worker serves throughout (0 failed). With the
/// control socket gone, reload and stop fall back to signals and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_exits_non_zero_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rd = run_dir.to_str().unwrap();
    let (crash, hang) = (tmp.path().join("crash"), tmp.path().join("hang"));
    let script = format!(
        "if [ -e {crash} ]; then echo 'broken deploy' >&2; exit 3; fi; \
         if [ -e {hang} ]; then exec sleep 600; fi; exec python3 {py}",
        crash = crash.display(),
        hang = hang.display(),
        py = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py"),
    );
    let addr = format!("127.0.0.1:{}", support::free_port());
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args([
                "start",
                "--name",
                "py",
                "--run-dir",
                rd,
                "--listen",
                &addr,
                "--ready-timeout",
                "2s",
                "--",
                "sh",
                "-c",
                &script,
            ])
            // The Python worker says READY=1 itself.
            .env("PYWORKER_NOTIFY", "1")
            .output()
            .unwrap()
    });
    let _cleanup = Cleanup {
        pidfile: run_dir.join("py.pid"),
    };
    assert_eq!(text(&out).0, Some(0));
    let first = serving_pid(&status_json(&run_dir, "py"));
    let load = Load::start(&addr, 2, false);

    std::fs::write(&crash, b"").unwrap();
    let (code, _, err) = text(&baton(&["reload", "--name", "py", "--run-dir", rd]));
    assert_eq!(code, Some(1));
    assert!(err.contains("reload failed"), "{err}");
    assert!(
        err.contains("exited before it was ready (exit status 3)"),
        "{err}"
    );
    assert!(err.contains("the serving worker serves on"), "{err}");

    std::fs::remove_file(&crash).unwrap();
    std::fs::write(&hang, b"").unwrap();
    let (code, _, err) = text(&baton(&["reload", "--name", "py", "--run-dir", rd]));
    assert_eq!(code, Some(1));
    assert!(err.contains("did not say it was ready within 2s"), "{err}");

    let v = status_json(&run_dir, "py");
    assert_eq!(serving_pid(&v), first, "the first worker serves on");
    assert_eq!(v["reloads"]["failed"], 2);
    assert_eq!(v["last_reload"]["outcome"], "failed");
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert_eq!(
        tally.pids.iter().copied().collect::<Vec<_>>(),
        vec![first],
        "only the first worker ever answered"
    );

    // The control socket gone (deleted by a careless cleanup, say): reload falls back
    // to SIGHUP, and says that the outcome is unknown; stop to SIGTERM, and waits.
    assert_eq!(
        std::fs::read_to_string(run_dir.join("py.signals")).unwrap(),
        "reload=HUP\nstop=TERM\n",
        "the master wrote which signals reload and stop it"
    );
    std::fs::remove_file(&hang).unwrap();
    std::fs::remove_file(run_dir.join("py.sock")).unwrap();
    let (code, out, err) = text(&baton(&["reload", "--name", "py", "--run-dir", rd]));
    assert_eq!(code, Some(0));
    assert!(
        out.contains("reload done (seen from the process table"),
        "{out}"
    );
    assert!(err.contains("cannot be used"), "{err}");
    assert!(err.contains("sent HUP to master pid"), "{err}");
    let start = std::time::Instant::now();
    loop {
        let resp = get(&addr, "/pid").await.unwrap();
        if resp.body.trim() != first.to_string() {
            break;
        }
        assert!(
            start.elapsed() < support::WAIT,
            "the signal reload never happened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (code, out, err) = text(&baton(&["stop", "--name", "py", "--run-dir", rd]));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("sent TERM to master pid"), "{err}");
    assert!(out.contains("exited"), "{out}");
    wait_until("the workers are gone", || !alive(first));
}

/// Bad input for the control commands and the run directory.
#[test]
fn bad_names_and_run_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (code, _, err) = text(&baton(&["stop", "--name", "../etc"]));
    assert_eq!(code, Some(2));
    assert!(err.contains("a name is 1 to 64 letters"), "{err}");
    let (code, _, err) = text(&baton(&["reload"]));
    assert_eq!(code, Some(2), "{err}");
    // A run directory that cannot be written.
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o500)).unwrap();
    let writable_anyway = std::fs::write(ro.join("x"), b"").is_ok(); // root ignores modes
    let file = tmp.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let bad_dir = if writable_anyway {
        file.join("sub")
    } else {
        ro
    };
    let (code, _, err) = text(&baton(&[
        "start",
        "--name",
        "x",
        "--run-dir",
        bad_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--",
        "true",
    ]));
    assert_eq!(code, Some(1));
    assert!(err.contains("run directory"), "{err}");
}

/// A worker that does not handle its drain signal (SIGTERM keeps its default action)
/// would die of it with its requests in flight: `baton reload` refuses, names the
/// signal, exits non-zero, and the worker serves on (0 failed under load); a passed-on
/// signal it would die of is not passed. The stop then ends it as it expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_would_die_of_its_drain_signal_is_reported_not_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rd = run_dir.to_str().unwrap();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["start", "--name", "py", "--run-dir", rd, "--listen", &addr])
            .args(["--", "python3"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py"))
            .env("PYWORKER_NOTIFY", "1")
            .env("PYWORKER_NO_TERM_HANDLER", "1")
            .env("RUST_LOG", "info")
            .output()
            .unwrap()
    });
    let _cleanup = Cleanup {
        pidfile: run_dir.join("py.pid"),
    };
    assert_eq!(text(&out).0, Some(0));
    let first = serving_pid(&status_json(&run_dir, "py"));
    let load = Load::start(&addr, 2, false);
    let keep_alive = Load::start(&addr, 1, true);

    let (code, out, err) = text(&baton(&["reload", "--name", "py", "--run-dir", rd]));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("reload refused"), "{err}");
    assert!(
        err.contains(&format!(
            "worker gen 1 (pid {first}) does not handle SIGTERM, its drain signal"
        )),
        "{err}"
    );
    let (code, _, err) = text(&baton(&["restart", "--name", "py", "--run-dir", rd]));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("does not handle SIGTERM"), "{err}");

    let v = status_json(&run_dir, "py");
    assert_eq!(serving_pid(&v), first, "the worker serves on");
    assert!(alive(first));
    assert_eq!(v["state"], "serving");
    for l in [load, keep_alive] {
        let tally = l.stop().await;
        assert!(tally.failures.is_empty(), "{:?}", tally.failures);
        assert!(tally.ok > 0);
        assert_eq!(tally.pids.iter().copied().collect::<Vec<_>>(), vec![first]);
    }
    let (code, _, _) = text(&baton(&["stop", "--name", "py", "--run-dir", rd]));
    assert_eq!(code, Some(0));
    wait_until("the worker has ended", || !alive(first));
}

/// Probation under `baton run` (issue 26): the new worker killed after it was ready,
/// within its probation. The old worker serves on (it never stopped: a worker that is
/// not a baton server keeps accepting beside the new one), no client is refused, the
/// status names it, and `baton reload` exits 1 saying the new worker died.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_worker_that_dies_in_its_probation_leaves_the_old_one_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rd = run_dir.to_str().unwrap().to_owned();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let hello = support::hello_exe();
    let start = [
        "start",
        "--name",
        "web",
        "--run-dir",
        &rd,
        "--listen",
        &addr,
        "--probation",
        "1h",
        "--",
        hello.to_str().unwrap(),
    ];
    let (code, _, _) = text(&baton(&start));
    let _cleanup = Cleanup {
        pidfile: run_dir.join("web.pid"),
    };
    assert_eq!(code, Some(0));
    let gen1 = serving_pid(&status_json(&run_dir, "web"));
    let load = Load::start(&addr, 2, false);
    let reload = {
        let rd = rd.clone();
        std::thread::spawn(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_baton"))
                .args(["reload", "--name", "web", "--run-dir", &rd])
                .output()
                .unwrap();
            text(&out)
        })
    };
    let deadline = std::time::Instant::now() + support::WAIT;
    let gen2 = loop {
        let v = status_json(&run_dir, "web");
        if v["state"] == "probation" {
            let standby = v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["role"] == "standby" && w["pid"] == gen1);
            assert!(standby, "{v}");
            break serving_pid(&v);
        }
        assert!(std::time::Instant::now() < deadline, "no probation: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_ne!(gen1, gen2);
    support::signal_pid(gen2, "KILL");
    let (code, out, err) = tokio::task::block_in_place(|| reload.join().unwrap());
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("standing by: gen 1"), "{out}");
    assert!(
        err.contains(&format!("the new worker gen 2 (pid {gen2}) died"))
            && err.contains("within its probation"),
        "{err}"
    );
    let v = status_json(&run_dir, "web");
    assert_eq!(serving_pid(&v), gen1, "{v}");
    assert_eq!(v["last_reload"]["outcome"], "failed", "{v}");
    support::wait_answered_by(&addr, gen1).await;
    let tally = load.stop().await;
    assert!(
        !tally.failures.iter().any(|f| f.contains("refused")),
        "{:?}",
        tally.failures
    );
    assert!(alive(gen1));
}

/// Regression (issue 32, defect 4): past 64 control clients, each new one got a task of
/// its own with no limit: 70 silent clients made `baton reload` fail with "busy", 4,000
/// held clients took the master to 4,018 descriptors. Now a client past the bound is
/// answered at once and closed, the master's descriptors stay bounded, and `baton
/// reload` falls back to the master's signal when it is crowded out, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_control_clients_does_not_crowd_out_a_reload() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Room for 4,000 clients in this test process.
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum.map_or(8192, |max| max.min(8192));
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        },
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run_dir = tmp.path().join("run");
    let rd = run_dir.to_str().unwrap().to_owned();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let hello = support::hello_exe();
    let (code, _, _) = text(&baton(&[
        "start",
        "--name",
        "web",
        "--run-dir",
        &rd,
        "--listen",
        &addr,
        "--probation",
        "0s",
        "--",
        hello.to_str().unwrap(),
    ]));
    let _cleanup = Cleanup {
        pidfile: run_dir.join("web.pid"),
    };
    assert_eq!(code, Some(0));
    let v = status_json(&run_dir, "web");
    let master = u32::try_from(v["master_pid"].as_u64().unwrap()).unwrap();
    let gen1 = serving_pid(&v);
    let socket = run_dir.join("web.sock");
    let clients = u64::min(4_000, want.saturating_sub(200));
    let mut held = Vec::new();
    for _ in 0..clients {
        // Silent clients that never read and never leave.
        match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(s) => held.push(s),
            // The master's accept queue is full for a moment: the flood is there.
            Err(_) => break,
        }
    }
    let fds = support::fd_count(master);
    println!(
        "{} silent control clients held; the master holds {fds} descriptors",
        held.len()
    );
    assert!(held.len() >= 1_000, "only {} clients connected", held.len());
    assert!(
        fds < 200,
        "the master holds {fds} descriptors under the flood"
    );
    let (code, out, err) = text(&baton(&["reload", "--name", "web", "--run-dir", &rd]));
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("busy") && err.contains("instead") || out.contains("reload done"),
        "says how it reloaded: {out}{err}"
    );
    support::wait_until("the old worker is gone", || !alive(gen1));
    assert_ne!(serving_pid(&status_json(&run_dir, "web")), gen1);
    drop(held);
}
