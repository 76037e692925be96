//! Beside another local user: what a second user (`nobody`) plants or redirects must
//! never make root's `baton` signal, overwrite or delete anything, and only the master's
//! own user controls it. These tests act as that second user (`setpriv`), so they run as
//! root, as the README's test command does.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../baton/tests/support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::Log;
use support::{alive, signal_pid, wait_until};

const NOBODY: &str = "65534";

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests act as a second local user (`setpriv --reuid {NOBODY}`): run them as root, as the README's test command does"
    );
}

/// A directory both users can reach: `shared/` (mode 1777, like /tmp) inside a
/// temporary directory of the test.
struct Place {
    _top: tempfile::TempDir,
    shared: PathBuf,
}

fn place() -> Place {
    require_root();
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = top.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    Place { _top: top, shared }
}

/// Runs `sh -c SCRIPT` as the second user, to its end.
fn as_nobody(script: &str) -> Output {
    let out = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .args([
            "env",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as nobody: {script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `baton ARGS` as root with `env`, to its end.
fn baton(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
    cmd.args(args).env_remove("XDG_RUNTIME_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    eprintln!(
        "[baton {args:?}] {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A process the attack aims at: it dies of SIGHUP or SIGTERM.
struct Victim(Child);

impl Victim {
    fn start() -> Victim {
        Victim(Command::new("sleep").arg("600").spawn().unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Regression (field): without `XDG_RUNTIME_DIR` (sudo, cron), `baton reload --name X`
/// trusted `/tmp/baton-UID/` whatever its owner: another user who planted a locked
/// `X.pid` naming any process and `X.signals` made root's `baton reload` send SIGHUP to
/// that process. The planted directory is refused now, naming its owner.
#[test]
fn a_run_directory_planted_by_another_user_is_refused() {
    let p = place();
    let victim = Victim::start();
    let uid = rustix::process::geteuid().as_raw();
    let planted = p.shared.join(format!("baton-{uid}"));
    // The other user's directory, pidfile (locked by a process of theirs, so that it
    // looks alive) and signals file.
    let mut locker = Command::new("setpriv")
        .args(["--reuid", NOBODY, "--regid", NOBODY, "--clear-groups", "--"])
        .args([
            "env",
            "PATH=/usr/local/bin:/usr/bin:/bin",
            "python3",
            "-c",
            "import fcntl, os, sys, time\n\
             d = sys.argv[1]; os.mkdir(d, 0o700)\n\
             f = open(d + '/web.pid', 'w'); f.write(sys.argv[2] + '\\n'); f.flush()\n\
             fcntl.lockf(f, fcntl.LOCK_EX)\n\
             open(d + '/web.signals', 'w').write('reload=HUP\\nstop=TERM\\n')\n\
             print('planted', flush=True); time.sleep(120)",
        ])
        .arg(&planted)
        .arg(victim.pid().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::capture(&mut locker, "nobody");
    let mut stdout = std::io::BufReader::new(locker.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "planted", "{:?}", log.lines());
    for cmd in ["reload", "stop", "status"] {
        let out = baton(&[cmd, "--name", "web"], &[("TMPDIR", &p.shared)]);
        assert_eq!(out.status.code(), Some(1), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "refusing the run directory: {}",
                planted.display()
            )) && err.contains("owner uid 65534"),
            "{cmd}: {err}"
        );
    }
    assert!(alive(victim.pid()), "the victim was not signalled");
    // A symlink in its place is refused too.
    let _ = locker.kill();
    let _ = locker.wait();
    std::fs::remove_dir_all(&planted).unwrap();
    as_nobody(&format!(
        "mkdir {s}/theirs && ln -s {s}/theirs {d}",
        s = p.shared.display(),
        d = planted.display()
    ));
    let out = baton(&["reload", "--name", "web"], &[("TMPDIR", &p.shared)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a symbolic link"),
        "{out:?}"
    );
    // And a master will not start in it.
    let out = baton(
        &[
            "run",
            "--name",
            "web",
            "--listen",
            "127.0.0.1:0",
            "--",
            "true",
        ],
        &[("TMPDIR", &p.shared)],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing the run directory"));
    // --run-dir is checked as well: one that other users can write to is refused.
    let open = p.shared.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = baton(
        &[
            "reload",
            "--name",
            "web",
            "--run-dir",
            open.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("can be written by other users"),
        "{out:?}"
    );
}

/// A running demo (its own master or not) with a pidfile in the shared directory.
fn demo(args: &[&str], tmp: &Path) -> (Child, Log) {
    let mut child = Command::new(support::hello_exe())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("TMPDIR", tmp)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Log::capture(&mut child, "demo");
    (child, log)
}

/// Regression (field): pidfile writes followed symlinks: a temporary file of a
/// predictable name, written with `fs::write`, let another user redirect the write to
/// any file. Across a full restart (same PID, so the old temporary name was known) the
/// planted symlink's target is untouched now.
#[test]
fn a_pidfile_write_never_follows_a_planted_symlink() {
    let p = place();
    let precious = p._top.path().join("precious");
    std::fs::write(&precious, "precious\n").unwrap();
    let pidfile = p.shared.join("app.pid");
    let (mut child, log) = demo(
        &[
            "--signals",
            "goframe",
            "--pidfile",
            pidfile.to_str().unwrap(),
        ],
        &p.shared,
    );
    log.wait("server ready", 1);
    let pid = child.id();
    // The names the old code wrote through, for this PID; and the pidfile itself.
    as_nobody(&format!(
        "ln -s {t} {s}/.app.pid.{pid}.tmp",
        t = precious.display(),
        s = p.shared.display()
    ));
    signal_pid(pid, "USR2");
    log.wait("server ready", 2);
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious\n");
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap().trim(),
        pid.to_string()
    );
    signal_pid(pid, "TERM");
    let _ = child.wait();
}

/// Regression (field): the master locked and wrote a pidfile through a symlink, and
/// binding its control socket deleted any file at the socket's path. Another user's
/// symlink or file is refused now, and left alone.
#[test]
fn a_master_refuses_a_planted_pidfile_or_socket_path() {
    let p = place();
    let precious = p._top.path().join("precious");
    std::fs::write(&precious, "precious\n").unwrap();
    let pidfile = p.shared.join("app.pid");
    as_nobody(&format!(
        "ln -s {} {}",
        precious.display(),
        pidfile.display()
    ));
    let (mut child, log) = demo(
        &["--master", "--pidfile", pidfile.to_str().unwrap()],
        &p.shared,
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{:?}", log.lines());
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious\n");
    std::fs::remove_file(&pidfile).unwrap();
    // A file of the other user where the control socket goes.
    let socket = p.shared.join("app.sock");
    as_nobody(&format!("echo theirs > {}", socket.display()));
    let (mut child, log) = demo(
        &["--master", "--pidfile", pidfile.to_str().unwrap()],
        &p.shared,
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{:?}", log.lines());
    // Its error names the path (waited for: the log is read by another thread, which
    // may not have its last line yet when the process has exited).
    log.wait("app.sock", 1);
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "theirs\n");
}

/// Regression (field): the control socket accepted whoever could connect (its mode was
/// set only after it listened, and no peer was checked). A client of another user is
/// refused by its credentials (`SO_PEERCRED`), even where the file lets it connect.
#[test]
fn a_control_client_of_another_user_is_refused() {
    let p = place();
    let pidfile = p.shared.join("app.pid");
    let (mut child, log) = demo(
        &["--master", "--pidfile", pidfile.to_str().unwrap()],
        &p.shared,
    );
    log.wait(" ready in ", 1);
    let socket = p.shared.join("app.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "bound with mode 0600");
    // As a lax umask or a copy might leave it: the file lets anyone connect.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&format!(
        "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{}'); s.sendall(b'reload\\n'); print(s.makefile().read())\"",
        socket.display()
    ));
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.starts_with("error permission denied: uid 65534 may not control this master"),
        "{answer}"
    );
    assert_eq!(
        log.count("reload: started worker"),
        0,
        "nothing was reloaded"
    );
    signal_pid(child.id(), "TERM");
    let _ = child.wait();
}

/// Regression (field): without `XDG_RUNTIME_DIR`, the private notify directories had
/// predictable names in the temporary directory (`baton-PID-N`): another user who made
/// them first made every restart fail. Their names are unpredictable now.
#[test]
fn predictable_private_directories_planted_by_another_user_change_nothing() {
    let p = place();
    let (mut child, log) = demo(&[], &p.shared);
    log.wait("server ready", 1);
    let pid = child.id();
    as_nobody(&format!(
        "for n in $(seq 0 99); do mkdir {}/baton-{pid}-$n; done",
        p.shared.display()
    ));
    signal_pid(pid, "HUP");
    log.wait("restart: the new generation is ready", 1);
    let new: u32 = support::between(&log.wait("server ready", 2), "pid=", " ")
        .parse()
        .unwrap();
    assert!(child.wait().unwrap().success());
    signal_pid(new, "TERM");
    wait_until("the new generation is gone", || !alive(new));
}
