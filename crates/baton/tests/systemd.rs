//! systemd's protocols, spoken with real processes: socket activation (by
//! `systemd-socket-activate`, and by hand with hostile values) and the notify messages
//! a `Type=notify` / `Type=notify-reload` unit relies on.

#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Demo, get, hello_exe, signal_pid};

/// Reads one notify message, waiting at most `support::WAIT`.
fn recv(sock: &UnixDatagram) -> String {
    sock.set_read_timeout(Some(support::WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notify message in time");
    String::from_utf8(buf[..n].to_vec()).unwrap()
}

/// One notify message and the descriptors sent with it (`SCM_RIGHTS`), waiting at most
/// `support::WAIT`.
fn recv_with_fds(sock: &UnixDatagram) -> (String, Vec<std::os::fd::OwnedFd>) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
    sock.set_read_timeout(Some(support::WAIT)).unwrap();
    let mut buf = [0u8; 4096];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = recvmsg(
        sock,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("a notify message in time");
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    (String::from_utf8(buf[..got.bytes].to_vec()).unwrap(), fds)
}

/// The next message that is not a `STATUS=` line; those go to `statuses`.
fn recv_skipping_status(sock: &UnixDatagram, statuses: &mut Vec<String>) -> String {
    loop {
        let m = recv(sock);
        match m.strip_prefix("STATUS=") {
            Some(status) => statuses.push(status.to_string()),
            None => return m,
        }
    }
}

/// A `Type=notify-reload` unit with an FD store: at start the listening socket goes to
/// the store once (`FDSTORE=1`, `FDNAME=http`, the socket attached), then `READY=1`; at a
/// restart `RELOADING=1` with `MONOTONIC_USEC`, `READY=1` once the new generation is
/// ready (the reload is done; the old generation, still the main process, stands by
/// for the probation), then at the probation's end `MAINPID=` of the new generation
/// with `READY=1` (the new generation stores nothing: the store has the socket); at the
/// shutdown `STOPPING=1`. Nothing else, in this order, but `STATUS=` lines that say what
/// the process does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_messages_are_those_systemd_expects_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    let mut cmd = Command::new(hello_exe());
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &path);
    let mut demo = Demo::spawn(cmd);
    let first = demo.pid;
    let (stored, fds) = recv_with_fds(&sock);
    assert_eq!(stored, "FDSTORE=1\nFDNAME=http");
    assert_eq!(fds.len(), 1, "one socket attached");
    let kept = std::net::TcpListener::from(fds.into_iter().next().unwrap());
    let mut statuses = Vec::new();
    assert_eq!(recv_skipping_status(&sock, &mut statuses), "READY=1");
    // The socket kept is the one the demo serves on.
    let port = kept.local_addr().unwrap().port();
    let served = get(&format!("127.0.0.1:{port}"), "/pid").await.unwrap();
    assert_eq!(served.body.trim(), first.to_string());
    demo.signal("HUP");
    let reloading = recv_skipping_status(&sock, &mut statuses);
    let usec = reloading
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading:?}"));
    assert!(usec.parse::<u64>().unwrap() > 0, "{reloading:?}");
    let new = demo.wait_ready(2);
    assert_eq!(recv_skipping_status(&sock, &mut statuses), "READY=1");
    assert_eq!(
        recv_skipping_status(&sock, &mut statuses),
        format!("MAINPID={new}\nREADY=1")
    );
    // The new generation's NOTIFY_SOCKET still names the manager's socket, so that the
    // app's own messages (WATCHDOG=1, STATUS=) reach it after a restart too.
    let environ = std::fs::read(format!("/proc/{new}/environ")).unwrap();
    let expected = format!("NOTIFY_SOCKET={}", path.display());
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|kv| kv == expected.as_bytes()),
        "{}",
        String::from_utf8_lossy(&environ)
    );
    assert!(demo.wait_exit().success());
    // The new generation talks to systemd itself from now on.
    signal_pid(new, "TERM");
    assert_eq!(recv_skipping_status(&sock, &mut statuses), "STOPPING=1");
    demo.wait_log("shutdown complete: drained 0 connections");
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    while let Ok(n) = sock.recv(&mut buf) {
        let m = String::from_utf8_lossy(&buf[..n]).into_owned();
        let status = m.strip_prefix("STATUS=");
        assert!(status.is_some(), "no further message but STATUS=: {m:?}");
        statuses.extend(status.map(str::to_string));
    }
    for expected in [
        format!("serving: generation 1 (pid {first})"),
        "reloading: starting generation 2".to_string(),
        format!("serving: generation 2 (pid {new}); generation 1 (pid {first}) drains"),
    ] {
        assert!(
            statuses.contains(&expected),
            "{expected:?} among the STATUS lines {statuses:?}"
        );
    }
}

/// Under `systemd-socket-activate` the demo takes its socket from it (no bind), serves
/// the connection that activated it, and restarts with that socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activate_hands_the_demo_its_socket() {
    let tool = "systemd-socket-activate";
    assert!(
        Command::new(tool).arg("--help").output().is_ok(),
        "{tool} is missing: install Debian's `systemd` package (.ci/run does)"
    );
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    // The tool passes its children only the environment it is told to: the demo's
    // private directories go in the test's own directory.
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    let mut cmd = Command::new(tool);
    cmd.args(["-l", &addr, "--fdname=http"])
        .arg(format!("--setenv=TMPDIR={}", tmp.display()))
        .arg("--setenv=RUST_LOG=info")
        .arg(hello_exe())
        .args(["--listen", &addr]);
    // The tool starts the demo on the first connection: connect while it starts.
    let starting = std::thread::spawn(move || Demo::spawn_in(dir, cmd));
    let deadline = Instant::now() + support::WAIT;
    let first = loop {
        match get(&addr, "/pid").await {
            Ok(resp) => break resp,
            Err(e) => {
                assert!(Instant::now() < deadline, "never answered: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let demo = starting.join().unwrap();
    assert_eq!(
        first.body.trim(),
        demo.pid.to_string(),
        "the demo itself answered"
    );
    let line = demo.wait_log("started listening on [");
    assert!(
        line.contains("(socket passed by the service manager)"),
        "{line}"
    );
    demo.signal("HUP");
    let new = demo.wait_ready(2);
    assert_eq!(
        get(&addr, "/pid").await.unwrap().body.trim(),
        new.to_string()
    );
}

/// Runs the demo under `sh`, which sets `LISTEN_PID` to its own PID (kept by `exec`)
/// and the other variables as given, with `redirect` applied to descriptor 3.
fn run_with(env: &str, redirect: &str) -> (Option<i32>, String) {
    let script = format!("LISTEN_PID=$$ {env} exec \"$0\" --listen 127.0.0.1:0 {redirect}");
    let out = Command::new("sh")
        .args(["-c", &script])
        .arg(hello_exe())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hostile_listen_variables_are_clear_errors() {
    let (code, err) = run_with("LISTEN_FDS=abc", "");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("inherited sockets: LISTEN_FDS=`abc` is not a number of sockets"),
        "{err}"
    );
    let (code, err) = run_with("LISTEN_FDS=999999999", "");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("more sockets than baton accepts"), "{err}");
    let (code, err) = run_with("LISTEN_FDS=1", "3<&-");
    assert_eq!(code, Some(1), "{err}");
    // Not passed: whatever this process opened at 3 itself is left alone.
    assert!(
        err.contains("descriptor 3 was passed but is not inherited: it is closed, or this process opened it itself"),
        "{err}"
    );
    let (code, err) = run_with("LISTEN_FDS=1", "3</dev/null");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("descriptor 3 is not a socket"), "{err}");
    let (code, err) = run_with("LISTEN_FDS=2 LISTEN_FDNAMES=http", "3</dev/null");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("LISTEN_FDNAMES has 1 names but LISTEN_FDS=2"),
        "{err}"
    );
}

/// Sockets meant for another process (`LISTEN_PID` not ours) are ignored, with a
/// warning, and the demo binds its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_for_another_process_are_ignored() {
    let mut cmd = Command::new(hello_exe());
    cmd.args(["--listen", "127.0.0.1:0"])
        .env("LISTEN_FDS", "1")
        .env("LISTEN_PID", "1");
    let demo = Demo::spawn(cmd);
    demo.wait_log("LISTEN_PID names another process");
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        demo.pid.to_string()
    );
}

/// A real listening socket passed under another name, or on another address, is a
/// clear error, never a silent second bind.
#[test]
fn an_inherited_socket_that_does_not_match_is_refused() {
    let python = r#"
import os, socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
port = s.getsockname()[1]
os.dup2(s.fileno(), 3); os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES=sys.argv[2])
listen = "127.0.0.1:%d" % (port if sys.argv[3] == "same" else 1)
os.execv(sys.argv[1], [sys.argv[1], "--listen", listen])
"#;
    let run = |name: &str, addr: &str| {
        let out = Command::new("python3")
            .args(["-c", python])
            .arg(hello_exe())
            .args([name, addr])
            .output()
            .expect("python3 runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run("admin", "same");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("inherited socket mismatch for listener `http`"),
        "{err}"
    );
    assert!(err.contains("was passed under the name `admin`"), "{err}");
    let (code, err) = run("http", "other");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("the socket passed under this name listens on 127.0.0.1:"),
        "{err}"
    );
}
