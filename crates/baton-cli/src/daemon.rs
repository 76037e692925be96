//! `baton start`: the master of `baton run`, detached, under a name.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use baton::cli::{Holder, pidfile_holder};
use baton::supervisor::control::MasterState;

use crate::StartArgs;
use crate::client::{self, Paths};

/// Starts `baton run --detached` with the same options in a new session, its output
/// appended to the log file, and waits until its first worker serves.
pub(crate) fn start(args: StartArgs) -> ExitCode {
    let run = &args.run;
    let name = match &run.name {
        Some(n) => n.clone(),
        None => match default_name(&run.command) {
            Ok(n) => n,
            Err(e) => return fail(e),
        },
    };
    let dir = match client::run_dir(run.run_dir.as_deref(), true) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let paths = Paths::named(&dir, &name);
    match pidfile_holder(&paths.pidfile) {
        Ok(Holder::Running(pid)) => {
            return fail(format!(
                "{name} already runs (master pid {pid}); use `baton reload --name {name}` or `baton stop --name {name}` first"
            ));
        }
        Ok(Holder::Stale(pid)) => println!(
            "{name}: replacing a stale pidfile {}{}",
            paths.pidfile.display(),
            pid.map(|p| format!(" (process {p} is gone)"))
                .unwrap_or_default()
        ),
        Ok(Holder::None) => {}
        Err(e) => return fail(format!("{}: {e}", paths.pidfile.display())),
    }
    let log_path = args.log_file.clone().unwrap_or(paths.log.clone());
    let log = match std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
    {
        Ok(f) => f,
        Err(e) => {
            return fail(format!(
                "cannot open the log file {}: {e}",
                log_path.display()
            ));
        }
    };
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let (Ok(out), Ok(err)) = (log.try_clone(), log.try_clone()) else {
        return fail("cannot duplicate the log file's descriptor");
    };
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return fail(format!("cannot locate the baton binary: {e}")),
    };
    let mut child = match std::process::Command::new(exe)
        .args(child_args(&name, &dir))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start the master: {e}")),
    };
    // Wait for the first worker: the master says so on its control socket.
    let deadline = Instant::now() + run.ready_timeout + Duration::from_secs(10);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("baton: {name} did not start (the master exited: {status}); its log says:");
            eprint!("{}", tail(&log_path, log_start, 20));
            return ExitCode::from(1);
        }
        match client::query(&paths, Duration::from_secs(5)) {
            // Another master of the name (a `start` racing this one) answers on the
            // socket: ours will fail on the pidfile lock and exit, seen above.
            Ok(s) if s.master_pid != child.id() => {
                last_error = format!("master pid {} answers, not ours", s.master_pid);
            }
            Ok(s) if s.state == MasterState::Serving => {
                println!("started {name}: {}", client::summary(&s));
                println!(
                    "  log: {}   control: {}",
                    log_path.display(),
                    paths.socket.display()
                );
                return ExitCode::from(0);
            }
            Ok(s) => last_error = format!("{}, state {}", client::summary(&s), s.state),
            Err(e) => last_error = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "baton: {name} is not serving after {:?} ({last_error}); it was left running, see {}",
        run.ready_timeout + Duration::from_secs(10),
        log_path.display()
    );
    ExitCode::from(1)
}

/// `run --detached`, then the arguments `start` got, minus `--log-file`, with the name
/// and run directory fixed so that the master and later commands agree.
fn child_args(name: &str, dir: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        "run".into(),
        "--detached".into(),
        "--name".into(),
        name.into(),
        "--run-dir".into(),
        dir.into(),
    ];
    let mut given = std::env::args_os().skip(2);
    while let Some(a) = given.next() {
        if a == "--" {
            out.push(a);
            out.extend(given.by_ref());
            break;
        }
        let s = a.to_string_lossy();
        match s.as_ref() {
            "--log-file" | "--name" | "--run-dir" => {
                given.next();
            }
            _ if s.starts_with("--log-file=")
                || s.starts_with("--name=")
                || s.starts_with("--run-dir=") => {}
            _ => out.push(a),
        }
    }
    out
}

/// The command's file name, as a master name.
fn default_name(command: &[OsString]) -> Result<String, String> {
    let base = command
        .first()
        .and_then(|c| Path::new(c).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    client::parse_name(&base)
        .map_err(|e| format!("cannot name the master after the command ({e}); give --name"))
}

/// The last `n` lines written to the log since `from`.
fn tail(path: &Path, from: u64, n: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = usize::try_from(from).unwrap_or(0).min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for l in &lines[lines.len().saturating_sub(n)..] {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("baton: {msg}");
    ExitCode::from(1)
}
