//! `baton watch`: `baton run`, plus a rebuild and a graceful reload whenever a watched
//! file changes. The old worker serves until the new build is ready; a failed build
//! changes nothing.

use std::collections::{BTreeSet, HashSet, VecDeque};
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

/// The polling interval, when inotify cannot be used.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// When polling, how long after a build ends its writes may still be reported (a
/// write is seen at the next scan, up to a poll interval later).
const SETTLE_POLLING: Duration = Duration::from_millis(2500);
/// With inotify, the same when the fence (see [`Fence`]) cannot be used, or as a bound
/// if its event never comes (an overflowed queue).
const SETTLE: Duration = Duration::from_millis(500);
const FENCE_BOUND: Duration = Duration::from_secs(10);

/// Defines [`ALWAYS_IGNORED`], what version control, toolchains and editors write, and
/// the `--ignore` help that lists it: the one place the list is kept.
macro_rules! always_ignored {
    ($($what:literal: $first:literal $($pattern:literal)*;)+) => {
        /// Never a change, in gitignore syntax (`NAME/`: a directory of that name at
        /// any depth under a watched path, with everything in it; `*.EXT`: files by
        /// name). Matched before `.gitignore` and `--ignore`, whose `!` lines may
        /// re-include from it.
        const ALWAYS_IGNORED: &[&str] = &[$($first, $($pattern,)*)+];
        /// The long help of `--ignore`.
        const IGNORE_HELP: &str = concat!(
            "Changes to paths matching this glob (gitignore syntax, relative to the \
             watched path) are ignored (repeatable). `.gitignore` files are respected too.\n\n\
             Always ignored (what version control, builds and editors write; a `!` glob \
             re-includes, e.g. --ignore '!build/'):\n",
            $("  ", $what, ": ", $first, $(" ", $pattern,)* "\n",)+
            "\nAlso ignored: baton's own files (--name's run directory), the files baton \
             watch's own output goes to, a directory's own event, and any file the build \
             writes while it runs (see --build)."
        );
    };
}

always_ignored! {
    "version control": ".git/" ".hg/" ".svn/" ".jj/";
    "Rust": "target/";
    "Python": "__pycache__/" "*.pyc" "*.pyo" ".venv/" "venv/" ".mypy_cache/" ".pytest_cache/" ".ruff_cache/" ".tox/" "*.egg-info/";
    "JavaScript": "node_modules/" ".next/" ".parcel-cache/";
    "C, C++": "*.o" "*.a" "*.so";
    "Java, Kotlin": "*.class" ".gradle/";
    "Zig": "zig-cache/" ".zig-cache/" "zig-out/";
    "Elixir": "_build/";
    "Haskell": "dist-newstyle/" ".stack-work/";
    "any build": "build/" "dist/" ".cache/";
    "editors": "*.swp" "*.swo" "*.swx" "*~" ".#*" "#*#" "4913" "*.kate-swp" ".goutputstream-*" "*___jb_tmp___" "*___jb_old___" ".idea/" ".DS_Store";
}

#[derive(Debug, clap::Args)]
pub(crate) struct WatchArgs {
    /// A file or directory to watch, recursively (repeatable; default: the current
    /// directory).
    #[arg(long = "path", value_name = "PATH")]
    paths: Vec<PathBuf>,

    /// Changes to paths matching this glob (gitignore syntax, relative to the watched
    /// path) are ignored (repeatable). `.gitignore` files are respected, and so is a
    /// list of what builds and editors write (`__pycache__/`, `node_modules/`,
    /// `target/`, `*.o`, `*.swp`, ...: see --help).
    #[arg(long = "ignore", value_name = "GLOB", long_help = IGNORE_HELP)]
    ignores: Vec<String>,

    /// Run this (with `sh -c`) after a change and before the reload, e.g.
    /// `cargo build`; its output is shown; if it fails, nothing is reloaded. The files
    /// it writes under the watched paths while it runs are its output, not changes; a
    /// source saved during a build queues one more round after it.
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
            // First, so that `.gitignore` and --ignore may re-include with `!`.
            for pattern in ALWAYS_IGNORED {
                // A leading `#` would make the line a comment.
                let line = match pattern.strip_prefix('#') {
                    Some(rest) => format!("\\#{rest}"),
                    None => (*pattern).to_owned(),
                };
                b.add_line(None, &line)
                    .map_err(|e| format!("built-in ignore `{pattern}`: {e}"))?;
            }
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
        // A directory's own event (created, touched) builds nothing: the files in it
        // report their own changes. (And `notes/**` ignores what is in notes/, not
        // notes itself.)
        if path.is_dir() {
            return false;
        }
        // A path that is gone may have been a directory (`rm -rf build`): `build/`
        // matches it then.
        let gone = !path.exists();
        for (base, matcher) in &self.roots {
            if path.starts_with(base) && matcher.matched_path_or_any_parents(path, gone).is_ignore()
            {
                return false;
            }
        }
        true
    }
}

/// One change as the watcher reported it, with when (a change waits in the channel
/// while a reload runs: its time says whether a build was running when it happened).
type Change = (Instant, notify::Result<notify::Event>);

/// Tells the build's own writes from the changes that call for a build.
///
/// A build may write under the watched paths (`python3 -m py_compile` writes
/// `__pycache__/`, a code generator its files, a bundler its output): were those
/// changes, each build would call for the next, forever. Nothing tells who wrote a
/// file (inotify does not say which process), and ignoring everything that happens
/// while a build runs would lose the save a person makes meanwhile, which must build
/// once more. So the paths are told apart by their history:
///
/// - a path that changed while no build ran (since the watch started) is a *source*:
///   its change always counts, during a build too (the save during a build queues one
///   more round);
/// - a path first seen changing while a build ran is the build's *output*, and its
///   changes during builds are no change from then on; outside a build it counts
///   (and becomes a source);
/// - the first time a path is seen, during a build: if its first event is its
///   creation (it did not exist when the build started: an output, or a build's
///   temporary file with a new name each time), it is the build's; if it existed (the
///   build rewrote it, or a person saved a file not saved before since the watch
///   started: they look the same), it counts once (one more round at worst, never a
///   lost save) and is the build's from then on;
/// - the first build (before anything serves) only teaches: what it writes is its
///   output, and nothing it writes calls for another round.
///
/// "While a build ran": from its start until the watcher has reported everything the
/// build wrote, which the [`Fence`] says exactly (polling: [`SETTLE_POLLING`] after
/// its end).
#[derive(Debug)]
struct Attribution {
    sources: HashSet<PathBuf>,
    outputs: HashSet<PathBuf>,
    /// The builds whose writes may still be reported. More than one: a change may be
    /// read after the next build started.
    builds: VecDeque<Build>,
    fence: Option<Fence>,
    /// Without a fence: how long after its end a build's writes may be reported.
    settle: Duration,
}

#[derive(Debug)]
struct Build {
    start: Instant,
    /// The first build: its writes only teach.
    teach_only: bool,
    /// Once it ended: its writes are reported by then at the latest, and (with a
    /// fence) the fence file whose event says they all were.
    end: Option<(Instant, Option<PathBuf>)>,
}

impl Attribution {
    fn new(fence: Option<Fence>, settle: Duration) -> Attribution {
        Attribution {
            sources: HashSet::new(),
            outputs: HashSet::new(),
            builds: VecDeque::new(),
            fence,
            settle,
        }
    }

    fn build_started(&mut self, at: Instant, teach_only: bool) {
        // Kept past their end: a change is judged by when it was reported, and may be
        // read later (while a reload runs, the changes wait in the channel).
        if self.builds.len() >= 4 {
            self.builds.pop_front();
        }
        self.builds.push_back(Build {
            start: at,
            teach_only,
            end: None,
        });
    }

    /// The last build ended (its process exited: everything it wrote is in the
    /// watcher's queue).
    fn build_ended(&mut self, at: Instant) {
        let fence = self.fence.as_mut().and_then(Fence::post);
        let until = at
            + if fence.is_some() {
                FENCE_BOUND
            } else {
                self.settle
            };
        if let Some(last) = self.builds.back_mut() {
            last.end = Some((until, fence));
        }
    }

    /// Whether `path` is baton watch's own fence file; its event ends the build that
    /// posted it.
    fn fence_event(&mut self, path: &Path) -> bool {
        if !self
            .fence
            .as_ref()
            .is_some_and(|f| path.starts_with(&f.dir))
        {
            return false;
        }
        self.builds
            .retain(|b| !matches!(&b.end, Some((_, Some(fence))) if fence == path));
        true
    }

    /// Whether a change to `path` at `at` calls for a round; `created`: the event is
    /// the path's creation.
    fn counts(&mut self, at: Instant, path: &Path, created: bool) -> bool {
        let during = self
            .builds
            .iter()
            .find(|b| at >= b.start && b.end.as_ref().is_none_or(|(until, _)| at <= *until));
        let Some(build) = during else {
            self.outputs.remove(path);
            self.sources.insert(path.to_owned());
            return true;
        };
        let teach_only = build.teach_only;
        if self.sources.contains(path) {
            return true;
        }
        // Seen during a build before: the build's.
        if !self.outputs.insert(path.to_owned()) {
            return false;
        }
        !created && !teach_only
    }
}

/// A directory of baton watch's own, watched by the same inotify instance as the
/// project: a file written there once a build has exited is queued by the kernel
/// after everything the build wrote, so its event, when it comes, says the watcher has
/// reported all of those (however late its thread reads them).
#[derive(Debug)]
struct Fence {
    dir: PathBuf,
    posted: u64,
}

impl Fence {
    /// A new private directory under the temporary directory.
    fn create() -> std::io::Result<Fence> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for attempt in 0..16u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = base.join(format!(
                "baton-watch-{}-{nanos:x}{attempt}",
                std::process::id()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Fence { dir, posted: 0 }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no name left")))
    }

    /// Writes the next fence file (and removes the one before); its path, or `None` if
    /// it cannot be written.
    fn post(&mut self) -> Option<PathBuf> {
        let _ = std::fs::remove_file(self.dir.join(format!("fence-{}", self.posted)));
        self.posted += 1;
        let path = self.dir.join(format!("fence-{}", self.posted));
        std::fs::write(&path, b"").ok().map(|()| path)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
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
        // Watching before the first build: what it writes is learned as its output.
        let (tx, rx) = mpsc::unbounded_channel();
        let (mut watcher, polling) = match start_watcher(&paths, tx) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        };
        let fence = match (polling, Fence::create()) {
            (false, Ok(fence)) => match watcher.watch(&fence.dir, RecursiveMode::NonRecursive) {
                Ok(()) => Some(fence),
                Err(_) => None,
            },
            _ => None,
        };
        status(&format!(
            "watching {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let settle = if polling { SETTLE_POLLING } else { SETTLE };
        let mut attribution = Attribution::new(fence, settle);
        // Build first: there is nothing to serve until one succeeds.
        if let Some(cmd) = &args.build {
            status("initial build ...");
            attribution.build_started(Instant::now(), true);
            let result = build(cmd, args.build_timeout).await;
            attribution.build_ended(Instant::now());
            match result {
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
        let handle = master.handle();
        let react = react(
            rx,
            Seen {
                filter,
                attribution,
            },
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
/// says which setting to raise and falls back to polling (then `true`).
fn start_watcher(
    paths: &[PathBuf],
    tx: mpsc::UnboundedSender<Change>,
) -> Result<(Box<dyn Watcher>, bool), String> {
    let t = tx.clone();
    let mut native = notify::recommended_watcher(move |res| {
        let _ = t.send((Instant::now(), res));
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
        return Ok((Box::new(native), false));
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
    let config = notify::Config::default().with_poll_interval(POLL_INTERVAL);
    let mut poll = notify::PollWatcher::new(
        move |res| {
            let _ = tx.send((Instant::now(), res));
        },
        config,
    )
    .map_err(|e| format!("cannot poll files: {e}"))?;
    for p in paths {
        poll.watch(p, RecursiveMode::Recursive)
            .map_err(|e| format!("cannot watch {}: {e}", p.display()))?;
    }
    Ok((Box::new(poll), true))
}

/// What decides whether a change calls for a round: the paths, and who wrote them.
struct Seen {
    filter: Filter,
    attribution: Attribution,
}

/// Changes → one build → one reload, forever. A change during a build queues exactly
/// one more round after it.
async fn react(
    mut rx: mpsc::UnboundedReceiver<Change>,
    mut seen: Seen,
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
            let Some(change) = rx.recv().await else {
                return;
            };
            collect(change, &mut seen, &mut changed);
        }
        let burst = Instant::now();
        loop {
            let left = max_burst.saturating_sub(burst.elapsed()).min(quiet);
            match tokio::time::timeout(left, rx.recv()).await {
                Ok(Some(change)) => collect(change, &mut seen, &mut changed),
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
            // Changes during the build are kept for one more round after it, unless
            // they are the build's own writes (see `Attribution`).
            seen.attribution.build_started(Instant::now(), false);
            let building = build(cmd, build_timeout);
            tokio::pin!(building);
            let result = loop {
                tokio::select! {
                    r = &mut building => break r,
                    Some(change) = rx.recv() => collect(change, &mut seen, &mut changed),
                }
            };
            seen.attribution.build_ended(Instant::now());
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

fn collect((at, ev): Change, seen: &mut Seen, changed: &mut BTreeSet<PathBuf>) {
    match ev {
        Ok(ev) => {
            if matches!(ev.kind, EventKind::Access(_) | EventKind::Other) {
                return;
            }
            let created = matches!(ev.kind, EventKind::Create(_));
            for p in ev.paths {
                if seen.attribution.fence_event(&p) {
                    continue;
                }
                if seen.filter.matters(&p) && seen.attribution.counts(at, &p, created) {
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
    let _own = pid.map(baton::cli::OwnChild::register);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn what_builds_and_editors_write_is_ignored_and_a_bang_glob_re_includes() {
        // The project lives under directories named like ignored ones: only what is
        // under the watched path counts.
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("build/target/app");
        std::fs::create_dir_all(root.join("src/__pycache__")).unwrap();
        std::fs::create_dir_all(root.join("web/node_modules/x")).unwrap();
        std::fs::create_dir_all(root.join("lib/build")).unwrap();
        let filter = Filter::new(std::slice::from_ref(&root), &[], Vec::new()).unwrap();
        let matters = |rel: &str| filter.matters(&root.join(rel));
        for source in ["src/server.py", "src/main.rs", "lib/build.rs", "4913.txt"] {
            assert!(matters(source), "{source}");
        }
        for noise in [
            "src/__pycache__/server.cpython-311.pyc",
            "src/__pycache__/server.cpython-311.pyc.140211",
            "src/server.pyc",
            "web/node_modules/x/index.js",
            "lib/build/out.txt",
            // Gone: it may have been a directory (`rm -rf build`).
            "lib/build",
            "lib/x.o",
            "lib/libx.so",
            "target/debug/app",
            ".git/index",
            "src/.server.py.swp",
            "src/server.py~",
            "src/.#server.py",
            "src/#server.py#",
            "src/4913",
        ] {
            assert!(!matters(noise), "{noise}");
        }
        // `!` re-includes a built-in one.
        let filter = Filter::new(
            std::slice::from_ref(&root),
            &["!build/".to_owned()],
            Vec::new(),
        )
        .unwrap();
        assert!(filter.matters(&root.join("lib/build/out.txt")));
        assert!(!filter.matters(&root.join("src/server.pyc")));
    }

    #[test]
    fn the_builds_writes_are_its_output_and_a_save_during_a_build_counts() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (src, out, tmp, other) = (
            Path::new("/p/src/a.py"),
            Path::new("/p/gen/a.txt"),
            Path::new("/p/gen/a.txt.12345"),
            Path::new("/p/src/b.py"),
        );
        // Without a fence: a settle time.
        let mut a = Attribution::new(None, Duration::from_millis(100));
        // The first build only teaches.
        a.build_started(at(0), true);
        assert!(!a.counts(at(10), out, false));
        a.build_ended(at(50));
        // A save: a source.
        assert!(a.counts(at(1000), src, false));
        a.build_started(at(1200), false);
        // The build rewrites its output, writes a temporary file of a new name.
        assert!(!a.counts(at(1210), out, false));
        assert!(!a.counts(at(1220), tmp, true));
        // A source saved during the build counts, again and again.
        assert!(a.counts(at(1230), src, false));
        assert!(a.counts(at(1240), src, false));
        // A file never seen that existed: counts once, then it is the build's.
        assert!(a.counts(at(1250), other, false));
        assert!(!a.counts(at(1260), other, false));
        a.build_ended(at(1300));
        // Within the settle time: still the build's; after it, a change.
        assert!(!a.counts(at(1390), out, false));
        assert!(a.counts(at(1500), out, false));
        // ... and from then on a source.
        a.build_started(at(2000), false);
        assert!(a.counts(at(2010), out, false));
        // A change read late (after the next build started) is judged by its time.
        a.build_ended(at(2100));
        a.build_started(at(3000), false);
        assert!(!a.counts(at(2150), tmp, false));
        assert!(a.counts(at(2500), tmp, false));
    }

    #[test]
    fn a_builds_writes_end_exactly_at_its_fence() {
        let fence = Fence::create().unwrap();
        let dir = fence.dir.clone();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let out = Path::new("/p/gen/a.txt");
        let mut a = Attribution::new(Some(fence), Duration::from_millis(100));
        a.build_started(at(0), true);
        a.build_ended(at(50));
        let posted = dir.join("fence-1");
        assert!(posted.exists());
        // Reported long after the build's end, but before its fence: the build's.
        assert!(!a.counts(at(5000), out, false));
        assert!(!a.fence_event(Path::new("/p/src/a.py")));
        assert!(a.fence_event(&posted));
        // After the fence: a change, even a moment after the build's end.
        assert!(a.counts(at(60), out, false));
        drop(a);
        assert!(!dir.exists(), "the fence directory goes with it");
    }
}
