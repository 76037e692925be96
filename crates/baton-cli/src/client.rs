//! `baton stop`, `reload`, `restart` and `status`: clients of a master's control
//! socket, with a fallback to signals when the socket is gone.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use baton::cli::{Holder, pidfile_holder};
use baton::supervisor::control::{Answer, Line, Request, Status, ask_blocking};

/// Exit status: done.
const OK: u8 = 0;
/// Exit status: the command failed (the reason is printed).
const FAILED: u8 = 1;
/// Exit status: nothing of that name runs.
const NOT_RUNNING: u8 = 3;

/// Which master a command is for: by name (its files in the run directory), or by its
/// pidfile (any master with a control socket beside it: `baton run --name`, or an app
/// that is its own master); one of the two, which the usage line says.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("master").args(["name", "pidfile"]).required(true))]
pub(crate) struct Target {
    /// The master's name (as given to `baton start --name` or `baton run --name`); its
    /// pidfile and control socket are NAME.pid and NAME.sock in the run directory.
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,

    /// The master's pidfile instead of a name (its control socket is beside it, with
    /// the extension .sock), e.g. an app that is its own master (`hello --master
    /// --pidfile PATH`).
    #[arg(long, value_name = "PATH")]
    pidfile: Option<PathBuf>,

    /// The run directory the master was started with.
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,

    /// How long to wait for the outcome.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::limit)]
    timeout: Duration,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    target: Target,

    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
}

/// A master's files.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub(crate) pidfile: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) label: String,
}

impl Paths {
    pub(crate) fn named(dir: &Path, name: &str) -> Paths {
        Paths {
            pidfile: dir.join(format!("{name}.pid")),
            socket: dir.join(format!("{name}.sock")),
            log: dir.join(format!("{name}.log")),
            label: name.to_owned(),
        }
    }

    fn of(t: &Target) -> Result<Paths, String> {
        match (&t.name, &t.pidfile) {
            (Some(name), _) => Ok(Paths::named(&run_dir(t.run_dir.as_deref(), false)?, name)),
            (None, Some(p)) => Ok(Paths {
                pidfile: p.clone(),
                socket: p.with_extension("sock"),
                log: p.with_extension("log"),
                label: p.display().to_string(),
            }),
            (None, None) => {
                Err("name the master: --name NAME (started with that name) or --pidfile PATH (its pidfile)".into())
            }
        }
    }
}

/// A master name: used in file names, so letters, digits, `.`, `_`, `-`.
pub(crate) fn parse_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}`: a name is 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`"
        ))
    }
}

/// The run directory: as given, else `$XDG_RUNTIME_DIR/baton`, else `/tmp/baton-UID`.
/// With `create`, it is made (mode 0700) if missing and must be writable. Either way
/// it is trusted only when it is a real directory of this user (or root) that other
/// users cannot write to (the default ones: this user's, mode 0700), so that another
/// user cannot plant a pidfile or socket in it; checked before anything in it is read.
pub(crate) fn run_dir(given: Option<&Path>, create: bool) -> Result<PathBuf, String> {
    let uid = rustix::process::geteuid().as_raw();
    let dir = match given {
        Some(d) => d.to_owned(),
        None => match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(x) if x.is_dir() => x.join("baton"),
            _ => std::env::temp_dir().join(format!("baton-{uid}")),
        },
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let private = given.is_none();
    let shown = dir.display();
    let hint = if private { "; give --run-dir" } else { "" };
    if !create {
        return match baton::cli::check_run_dir(&dir, private) {
            // Nothing ran here yet: the callers say "nothing of that name runs".
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir),
            Err(e) => Err(format!("refusing the run directory: {e}{hint}")),
            Ok(()) => Ok(dir),
        };
    }
    baton::cli::prepare_run_dir(&dir, private).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!("refusing the run directory: {e}{hint}"),
        _ => format!("cannot create the run directory {shown}: {e}"),
    })?;
    // Writable? Try, rather than guess from the mode bits.
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| format!("the run directory {shown} is not writable: {e}"))?;
    let _ = std::fs::remove_file(&probe);
    Ok(dir)
}

/// What runs under `paths`: `Ok(pid)`, or the exit code and message for "nothing".
fn running(paths: &Paths) -> Result<u32, (u8, String)> {
    match pidfile_holder(&paths.pidfile) {
        Ok(Holder::Running(pid)) => Ok(pid),
        Ok(Holder::None) => Err((
            NOT_RUNNING,
            format!(
                "nothing named {} runs (no pidfile at {})",
                paths.label,
                paths.pidfile.display()
            ),
        )),
        Ok(Holder::Stale(pid)) => Err((
            NOT_RUNNING,
            format!(
                "nothing named {} runs: {} is stale{}",
                paths.label,
                paths.pidfile.display(),
                pid.map(|p| format!(" (process {p} is gone)"))
                    .unwrap_or_default()
            ),
        )),
        Err(e) => Err((FAILED, format!("{}: {e}", paths.pidfile.display()))),
    }
}

fn socket_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("baton: {msg}");
    ExitCode::from(code)
}

/// Signals the master `pid` named by the pidfile in `paths`, once it is sure to be the
/// master that wrote it: a process running as the pidfile's owner (the pidfile itself
/// was checked when it was read: a regular file of this user or root, in a directory
/// no other user can write to).
fn send(paths: &Paths, pid: u32, sig: baton::Signal) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::symlink_metadata(&paths.pidfile)
        .map_err(|e| format!("{}: {e}", paths.pidfile.display()))?
        .uid();
    match baton::cli::process_uid(pid) {
        Ok(uid) if uid == owner => {}
        Ok(uid) => {
            return Err(format!(
                "not signalling pid {pid}: it runs as uid {uid}, but the pidfile {} belongs to uid {owner}",
                paths.pidfile.display()
            ));
        }
        Err(e) => return Err(format!("cannot look at master pid {pid}: {e}")),
    }
    let p = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0))
        .ok_or_else(|| format!("bad pid {pid}"))?;
    let s = rustix::process::Signal::from_named_raw(sig.as_raw())
        .ok_or_else(|| format!("{sig} has no number here"))?;
    rustix::process::kill_process(p, s).map_err(|e| format!("cannot signal master pid {pid}: {e}"))
}

/// The master's children (its workers).
fn children(pid: u32) -> Vec<u32> {
    baton::cli::children_of(pid).unwrap_or_default()
}

/// A command with progress: the lines are shown as they come.
fn act(t: &Target, request: Request) -> ExitCode {
    let command = request.as_str();
    let paths = match Paths::of(t) {
        Ok(p) => p,
        Err(e) => return fail(FAILED, e),
    };
    let pid = match running(&paths) {
        Ok(pid) => pid,
        Err((code, msg)) => return fail(code, msg),
    };
    let t0 = Instant::now();
    let mut ready = None;
    let shown = |line: Line| {
        if let Line::Progress(step) = line {
            if let baton::supervisor::control::Progress::Ready { took, .. } = &step {
                ready = Some(*took);
            }
            println!("{} ... {step}", paths.label);
        }
    };
    let ended = ask_blocking(&paths.socket, request, t.timeout, shown);
    match ended {
        Ok(Answer::Ok(msg)) => {
            // Two times, named: the new worker's readiness (what `status` shows as the
            // reload's time) and the whole command, which waits for the old worker.
            let ready = ready.map_or_else(String::new, |d| {
                format!(" (new worker ready in {} ms)", d.as_millis())
            });
            println!(
                "{}: {command} done in {:.2} s{ready}: {msg}",
                paths.label,
                t0.elapsed().as_secs_f64()
            );
            if command == "stop" {
                return wait_gone(&paths, pid, t.timeout);
            }
            ExitCode::from(OK)
        }
        // A flood of control clients (or a stuck one per slot): the master's signal does
        // the same, and cannot be crowded out.
        Ok(Answer::Error(msg))
            if msg == baton::supervisor::control::BUSY && matches!(command, "reload" | "stop") =>
        {
            let busy = std::io::Error::other(format!("the master answered: {msg}"));
            fallback(&paths, pid, command, &busy, t.timeout)
        }
        Ok(Answer::Error(msg)) => fail(FAILED, format!("{}: {msg}", paths.label)),
        Err(e) if socket_gone(&e) => fallback(&paths, pid, command, &e, t.timeout),
        Err(e) => fail(FAILED, format!("{}: {command}: {e}", paths.label)),
    }
}

/// The control socket is gone or busy: the signal the master said does `command`, and the
/// outcome as far as the process table shows it.
fn fallback(
    paths: &Paths,
    pid: u32,
    command: &str,
    e: &std::io::Error,
    timeout: Duration,
) -> ExitCode {
    let socket = paths.socket.display();
    let known = match baton::cli::fallback_signal(&paths.pidfile, command == "stop") {
        Ok(sig) => sig,
        Err(e) => return fail(FAILED, format!("refusing the signals file: {e}")),
    };
    let sig = match (command, known) {
        ("stop" | "reload", Some(sig)) => sig,
        _ => {
            return fail(
                FAILED,
                format!(
                    "the control socket {socket} cannot be used ({e}) and no signal is known to do a {command}; master pid {pid} was left alone"
                ),
            );
        }
    };
    let before = children(pid);
    if let Err(msg) = send(paths, pid, sig) {
        return fail(FAILED, msg);
    }
    eprintln!(
        "baton: the control socket {socket} cannot be used ({e}); sent {} to master pid {pid} instead",
        sig.short_name()
    );
    if command == "stop" {
        return wait_gone(paths, pid, timeout);
    }
    // A reload, seen from the process table: done once a new worker runs and the ones
    // that ran before are gone; failed if the new one is gone while the old serve on.
    let deadline = Instant::now() + timeout;
    let mut seen_new = Vec::new();
    while Instant::now() < deadline {
        let now = children(pid);
        let new: Vec<u32> = now
            .iter()
            .copied()
            .filter(|c| !before.contains(c))
            .collect();
        for n in &new {
            if !seen_new.contains(n) {
                println!("{} ... new worker pid {n}", paths.label);
                seen_new.push(*n);
            }
        }
        let old_left = before.iter().any(|b| now.contains(b));
        if !new.is_empty() && !old_left {
            println!(
                "{}: reload done (seen from the process table: worker pid {} runs, the old ones are gone; see the master's log for more)",
                paths.label,
                new.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return ExitCode::from(OK);
        }
        if !seen_new.is_empty() && new.is_empty() && old_left {
            return fail(
                FAILED,
                format!(
                    "{}: reload failed: the new worker (pid {}) is gone and the old one serves on; see the master's log",
                    paths.label,
                    seen_new
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if !alive(pid) {
            return fail(FAILED, format!("master pid {pid} is gone"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fail(
        FAILED,
        format!("no outcome of the reload within {timeout:?}"),
    )
}

fn alive(pid: u32) -> bool {
    baton::cli::is_running(pid)
}

/// Waits until the master is gone (its pidfile lock released).
fn wait_gone(paths: &Paths, pid: u32, timeout: Duration) -> ExitCode {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        // The lock goes first, then the process: wait for both (a zombie has exited).
        let released =
            !matches!(pidfile_holder(&paths.pidfile), Ok(Holder::Running(p)) if p == pid);
        if released && !alive(pid) {
            println!("{}: master pid {pid} exited", paths.label);
            return ExitCode::from(OK);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fail(
        FAILED,
        format!("master pid {pid} still runs after {timeout:?}"),
    )
}

pub(crate) fn stop(t: &Target) -> ExitCode {
    act(t, Request::Stop)
}

pub(crate) fn reload(t: &Target) -> ExitCode {
    act(t, Request::Reload)
}

pub(crate) fn restart(t: &Target) -> ExitCode {
    act(t, Request::Restart)
}

/// A master's status as JSON, for scripts.
fn json(s: &Status, name: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "master_pid": s.master_pid,
        "uptime_ms": millis(s.uptime),
        "state": s.state.to_string(),
        "generation": s.generation,
        "workers": s.workers.iter().map(|w| serde_json::json!({
            "generation": w.generation, "pid": w.pid, "role": w.role.to_string(),
            "age_ms": millis(w.age),
            // Sockets the worker holds besides the listeners (its connections,
            // roughly), from /proc; null where unreadable.
            "open_sockets": w.open_sockets,
        })).collect::<Vec<_>>(),
        "listeners": s.listeners.iter().map(|(n, a)| serde_json::json!({"name": n, "addr": a})).collect::<Vec<_>>(),
        "reloads": {"ok": s.reloads_ok, "failed": s.reloads_failed},
        "last_reload": s.last.as_ref().map(|l| serde_json::json!({
            "kind": l.kind, "outcome": if l.ok { "ok" } else { "failed" },
            "duration_ms": millis(l.took), "ago_ms": millis(l.ago), "detail": l.detail,
        })),
    })
}

/// A master's status as a table, for people.
fn table(s: &Status, name: &str) -> String {
    let mut out = format!(
        "{name}: master pid {}, up {}, {}\n",
        s.master_pid,
        human(millis(s.uptime)),
        s.state
    );
    for w in &s.workers {
        out.push_str(&format!(
            "  gen {:<4} pid {:<8} {:<9} up {:<10} {}\n",
            w.generation,
            w.pid,
            w.role.to_string(),
            human(millis(w.age)),
            w.open_sockets
                .map_or_else(|| "sockets: ?".to_owned(), |n| format!("{n} open sockets"))
        ));
    }
    for (n, a) in &s.listeners {
        out.push_str(&format!("  listen {n:<10} {a}\n"));
    }
    out.push_str(&format!(
        "  reloads {} ok, {} failed",
        s.reloads_ok, s.reloads_failed
    ));
    if let Some(l) = &s.last {
        out.push_str(&format!(
            "; last: {} {} ({} in {} ms), {} ago ({})",
            l.kind,
            if l.ok { "ok" } else { "failed" },
            if l.ok { "new worker ready" } else { "failed" },
            millis(l.took),
            human(millis(l.ago)),
            l.detail
        ));
    }
    out
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Asks for the status.
pub(crate) fn query(paths: &Paths, timeout: Duration) -> Result<Status, String> {
    let mut items = Vec::new();
    match ask_blocking(&paths.socket, Request::Status, timeout, |l| {
        if let Line::Status(item) = l {
            items.push(item);
        }
    }) {
        Ok(Answer::Ok(_)) => Ok(Status::from_items(items)),
        Ok(Answer::Error(e)) => Err(e),
        Err(e) => Err(e.to_string()),
    }
}

/// One line: the master, the serving worker, the listeners.
pub(crate) fn summary(s: &Status) -> String {
    let worker = s
        .serving()
        .map(|w| format!("worker gen {} pid {}", w.generation, w.pid))
        .unwrap_or_else(|| "no worker".into());
    let listen: Vec<String> = s
        .listeners
        .iter()
        .map(|(n, a)| format!("{n} {a}"))
        .collect();
    format!(
        "master pid {}, {worker}, listening on {}",
        s.master_pid,
        listen.join(", ")
    )
}

pub(crate) fn status(a: &StatusArgs) -> ExitCode {
    let paths = match Paths::of(&a.target) {
        Ok(p) => p,
        Err(e) => return fail(FAILED, e),
    };
    let pid = match running(&paths) {
        Ok(pid) => pid,
        Err((code, msg)) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"name": paths.label, "running": false, "reason": msg})
                );
                return ExitCode::from(code);
            }
            return fail(code, msg);
        }
    };
    match query(&paths, a.target.timeout) {
        Ok(s) => {
            if a.json {
                let mut v = json(&s, &paths.label);
                v["running"] = serde_json::Value::Bool(true);
                println!("{v}");
            } else {
                println!("{}", table(&s, &paths.label));
            }
            ExitCode::from(OK)
        }
        Err(e) => fail(
            FAILED,
            format!(
                "master pid {pid} runs, but its control socket {} does not answer: {e}",
                paths.socket.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_name_safe() {
        assert!(parse_name("web-1.api_v2").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_lines_parse_into_json() {
        let lines: Vec<String> = [
            "status master_pid 10",
            "status uptime_ms 61000",
            "status state serving",
            "status generation 3",
            "status worker 3 12 serving 500 4",
            "status worker 2 11 draining 900 -",
            "status listener http 127.0.0.1:8080",
            "status listener admin unix:/run/a b.sock",
            "status reloads 2 1",
            "status last reload ok 42 500 gen 3 pid 12",
        ]
        .map(String::from)
        .to_vec();
        let items = lines.iter().filter_map(|l| match Line::decode(l) {
            Some(Line::Status(item)) => Some(item),
            _ => None,
        });
        let s = Status::from_items(items);
        let v = json(&s, "web");
        assert_eq!(v["master_pid"], 10);
        assert_eq!(v["workers"][0]["open_sockets"], 4);
        assert!(v["workers"][1]["open_sockets"].is_null());
        assert_eq!(v["listeners"][1]["addr"], "unix:/run/a b.sock");
        assert_eq!(v["last_reload"]["duration_ms"], 42);
        assert_eq!(v["last_reload"]["detail"], "gen 3 pid 12");
        assert!(table(&s, "web").contains("last: reload ok (new worker ready in 42 ms)"));
    }
}
