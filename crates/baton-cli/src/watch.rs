//! `baton watch`: `baton run`, plus a rebuild and a graceful reload whenever a watched
//! file changes. The old worker serves until the new build is ready; a failed build
//! changes nothing.

use std::collections::BTreeSet;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use baton::supervisor::MasterHandle;
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::RunArgs;

/// A burst that never goes quiet is taken after this many quiet periods anyway.
const MAX_BURST_QUIETS: u32 = 10;

#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// A file or directory to watch, recursively (repeatable; default: the current
    /// directory).
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// Changes to paths matching this glob (gitignore syntax, relative to the watched
    /// path) are ignored (repeatable). `.gitignore` files are respected, and so are
    /// always `.git/`, `target/`, editor swap and backup files, and baton's own files.
    #[arg(long = "ignore", value_name = "GLOB")]
    ignores: Vec<String>,

    /// Run this (with `sh -c`) after a change and before the reload, e.g.
    /// `cargo build`; its output is shown; if it fails, nothing is reloaded.
    #[arg(long, value_name = "CMD")]
    build: Option<String>,

    /// A build that takes longer is killed and counts as failed.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = crate::limit)]
    build_timeout: Duration,

    /// After a change, wait until no other came for this long before building: a burst
    /// of saves (a `git checkout`) is one build. A burst that never goes quiet is
    /// built after ten times this.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = crate::limit)]
    debounce: Duration,

    /// A full restart (the worker stops, then a new one starts) instead of a reload,
    /// for programs that cannot run two at once.
    #[arg(long)]
    restart: bool,

    #[command(flatten)]
    run: RunArgs,
}

/// What decides whether a changed path matters.
struct Filter {
    roots: Vec<(PathBuf, Gitignore)>,
    /// baton's own files (pidfile, control socket, log): never a reason to rebuild.
    own: Vec<PathBuf>,
    /// The files this process writes its output to (`baton watch > watch.log` in the
    /// watched directory), by device and inode: each status line would be a change.
    output: Vec<(u64, u64)>,
}

/// Device and inode of the regular files standard output and error write to.
fn output_files() -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for fd in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
        let Ok(file) = fd.try_clone_to_owned().map(std::fs::File::from) else {
            continue;
        };
        if let Ok(meta) = file.metadata()
            && meta.is_file()
        {
            out.push((meta.dev(), meta.ino()));
        }
    }
    out
}

impl Filter {
    fn new(roots: &[PathBuf], globs: &[String], own: Vec<PathBuf>) -> Result<Filter, String> {
        let mut out = Vec::new();
        for root in roots {
            let base = if root.is_dir() {
                root.clone()
            } else {
                root.parent().map(Path::to_owned).unwrap_or_default()
            };
            let mut b = GitignoreBuilder::new(&base);
            let gi = base.join(".gitignore");
            if gi.is_file()
                && let Some(e) = b.add(&gi)
            {
                eprintln!("[watch] warning: {}: {e}", gi.display());
            }
            for g in globs {
                b.add_line(None, g)
                    .map_err(|e| format!("--ignore `{g}`: {e}"))?;
            }
            let matcher = b.build().map_err(|e| format!("ignore patterns: {e}"))?;
            out.push((base, matcher));
        }
        Ok(Filter {
            roots: out,
            own,
            output: output_files(),
        })
    }

    fn matters(&self, path: &Path) -> bool {
        if self.own.iter().any(|o| path.starts_with(o)) {
            return false;
        }
        if !self.output.is_empty() {
            use std::os::unix::fs::MetadataExt;
            if let Ok(meta) = std::fs::metadata(path)
                && self.output.contains(&(meta.dev(), meta.ino()))
            {
                return false;
            }
        }
        if path
            .components()
            .any(|c| matches!(c.as_os_str().to_str(), Some(".git" | "target")))
        {
            return false;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let editor_noise = name.ends_with(".swp")
            || name.ends_with(".swx")
            || name.ends_with(".swo")
            || name.ends_with('~')
            || name.starts_with(".#")
            || (name.starts_with('#') && name.ends_with('#'))
            || name == "4913";
        if editor_noise {
            return false;
        }
        // A directory's own event (created, touched) builds nothing: the files in it
        // report their own changes. (And `notes/**` ignores what is in notes/, not
        // notes itself.)
        if path.is_dir() {
            return false;
        }
        for (base, matcher) in &self.roots {
            if path.starts_with(base)
                && matcher.matched_path_or_any_parents(path, false).is_ignore()
            {
                return false;
            }
        }
        true
    }
}

pub(crate) fn watch(args: WatchArgs) -> ExitCode {
    let cwd = std::env::current_dir().unwrap_or_default();
    let paths: Vec<PathBuf> = if args.paths.is_empty() {
        vec![cwd.clone()]
    } else {
        args.paths.iter().map(|p| cwd.join(p)).collect()
    };
    for p in &paths {
        if !p.exists() {
            eprintln!("error: --path {}: no such file or directory", p.display());
            return ExitCode::from(2);
        }
    }
    let mut own = Vec::new();
    if args.run.name.is_some()
        && let Ok(dir) = crate::client::run_dir(args.run.run_dir.as_deref(), false)
    {
        own.push(dir);
    }
    let filter = match Filter::new(&paths, &args.ignores, own) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::init_logging(false);
    let runtime = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        // Build first: there is nothing to serve until one succeeds.
        if let Some(cmd) = &args.build {
            status("initial build ...");
            match build(cmd, args.build_timeout).await {
                Ok(took) => status(&format!("build ok in {}", secs(took))),
                Err(e) => {
                    status(&format!("build FAILED: {e}; nothing to serve yet"));
                    return ExitCode::from(1);
                }
            }
        }
        let master = match crate::build_master(args.run) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = match start_watcher(&paths, tx) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        status(&format!(
            "watching {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let handle = master.handle();
        let react = react(
            rx,
            filter,
            handle,
            args.build,
            args.build_timeout,
            args.debounce,
            args.restart,
        );
        let code = tokio::select! {
            code = master.run() => match code {
                Ok(exit) => ExitCode::from(exit.code()),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            },
            () = react => ExitCode::from(1),
        };
        drop(watcher);
        code
    })
}

/// The watcher: inotify where possible; when the kernel's limit of watches is reached,
/// says which setting to raise and falls back to polling.
fn start_watcher(
    paths: &[PathBuf],
    tx: mpsc::UnboundedSender<notify::Result<notify::Event>>,
) -> Result<Box<dyn Watcher>, String> {
    let t = tx.clone();
    let mut native = notify::recommended_watcher(move |res| {
        let _ = t.send(res);
    })
    .map_err(|e| format!("cannot watch files: {e}"))?;
    let mut failed = None;
    for p in paths {
        if let Err(e) = native.watch(p, RecursiveMode::Recursive) {
            failed = Some(e);
            break;
        }
    }
    let Some(e) = failed else {
        return Ok(Box::new(native));
    };
    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
        status(
            "the kernel's limit of inotify watches is reached: raise it with \
             `sysctl fs.inotify.max_user_watches=524288`; polling every second meanwhile",
        );
    } else {
        status(&format!(
            "cannot watch with inotify ({e}); polling every second instead"
        ));
    }
    drop(native);
    let config = notify::Config::default().with_poll_interval(Duration::from_secs(1));
    let mut poll = notify::PollWatcher::new(
        move |res| {
            let _ = tx.send(res);
        },
        config,
    )
    .map_err(|e| format!("cannot poll files: {e}"))?;
    for p in paths {
        poll.watch(p, RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {}: {e}", p.display()))?;
    }
    Ok(Box::new(poll))
}

/// Changes → one build → one reload, forever. A change during a build queues exactly
/// one more round after it.
async fn react(
    mut rx: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    filter: Filter,
    handle: MasterHandle,
    build_cmd: Option<String>,
    build_timeout: Duration,
    quiet: Duration,
    restart: bool,
) {
    let max_burst = quiet * MAX_BURST_QUIETS;
    let mut changed: BTreeSet<PathBuf> = BTreeSet::new();
    loop {
        // Wait for the first change that matters, then for the burst to go quiet.
        while changed.is_empty() {
            let Some(ev) = rx.recv().await else { return };
            collect(ev, &filter, &mut changed);
        }
        let burst = Instant::now();
        loop {
            let left = max_burst.saturating_sub(burst.elapsed()).min(quiet);
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(ev)) => collect(ev, &filter, &mut changed),
                Ok(None) => return,
                Err(_) => break,
            }
            if burst.elapsed() >= max_burst {
                break;
            }
        }
        let what = describe(&changed);
        changed.clear();
        let mut line = format!("changed {what}");
        if let Some(cmd) = &build_cmd {
            status(&format!("{line} · building ..."));
            // Changes during the build are kept for one more round after it.
            let building = build(cmd, build_timeout);
            tokio::pin!(building);
            let result = loop {
                tokio::select! {
                    r = &mut building => break r,
                    Some(ev) = rx.recv() => collect(ev, &filter, &mut changed),
                }
            };
            match result {
                Ok(took) => line.push_str(&format!(" · build ok in {}", secs(took))),
                Err(e) => {
                    status(&format!(
                        "{line} · build FAILED: {e} · the running worker serves on"
                    ));
                    continue;
                }
            }
        }
        let t0 = Instant::now();
        let outcome = if restart {
            handle.restart().await
        } else {
            handle.reload().await
        };
        let ready = outcome
            .ready_in()
            .unwrap_or_else(|| t0.elapsed())
            .as_millis();
        if outcome.is_ok() {
            status(&format!(
                "{line} · {} ready in {ready} ms · {}",
                if restart {
                    "restart:"
                } else {
                    "reload: new worker"
                },
                outcome.message()
            ));
        } else {
            status(&format!(
                "{line} · reload FAILED: {} · the running worker serves on",
                outcome.message()
            ));
        }
    }
}

fn collect(ev: notify::Result<notify::Event>, filter: &Filter, changed: &mut BTreeSet<PathBuf>) {
    match ev {
        Ok(ev) => {
            if matches!(ev.kind, EventKind::Access(_) | EventKind::Other) {
                return;
            }
            for p in ev.paths {
                if filter.matters(&p) {
                    changed.insert(p);
                }
            }
        }
        Err(e) => status(&format!("watch error: {e}")),
    }
}

/// The changed paths in a few words: those that still exist (an editor's temporary
/// file, renamed over the real one, does not), relative to the current directory.
fn describe(changed: &BTreeSet<PathBuf>) -> String {
    let cwd = std::env::current_dir().unwrap_or_default();
    let existing: Vec<&PathBuf> = changed.iter().filter(|p| p.exists()).collect();
    let shown: Vec<&PathBuf> = if existing.is_empty() {
        changed.iter().collect()
    } else {
        existing
    };
    let first = shown
        .first()
        .map(|p| p.strip_prefix(&cwd).unwrap_or(p).display().to_string())
        .unwrap_or_default();
    match shown.len() {
        0 | 1 => first,
        n => format!("{first} (+{} more)", n - 1),
    }
}

/// Runs the build with its output shown, in a process group of its own (killed whole
/// at the timeout).
async fn build(cmd: &str, timeout: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", cmd])
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `sh -c {cmd}`: {e}"))?;
    let pid = child.id();
    // The master may reap orphans (--subreaper, or as PID 1): this child is ours, and
    // its status is what says whether the build worked. Registered before any yield.
    let _own = pid.map(baton::supervisor::OwnChild::register);
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => Ok(t0.elapsed()),
        Ok(Ok(s)) => Err(format!("`{cmd}` {s} after {}", secs(t0.elapsed()))),
        Ok(Err(e)) => Err(format!("`{cmd}`: {e}")),
        Err(_) => {
            if let Some(pid) = pid
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.wait().await;
            Err(format!(
                "`{cmd}` took longer than --build-timeout {timeout:?}: killed"
            ))
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// One status line a developer reads at a glance.
fn status(line: &str) {
    eprintln!("[watch] {line}");
}
