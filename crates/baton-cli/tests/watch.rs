//! `baton watch` with real files, a scripted build and a real server: a change is built
//! and served with clients running throughout, a broken build changes nothing, a burst
//! of saves is one build, ignored paths cause none, nor does what the build writes.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../baton/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Log;
use support::{Load, get};

/// The build: copies `src/version.txt` to `out/version.txt` (what the server serves),
/// counting runs in `builds.log`; `BROKEN` in the source is a compile error.
const BUILD: &str = r#"echo build >> builds.log
if grep -q SLOW src/version.txt; then sleep 1.5; fi
if grep -q BROKEN src/version.txt; then echo "error: src/version.txt:1: expected a version" >&2; exit 1; fi
mkdir -p out && cp src/version.txt out/version.txt
"#;

struct Watch {
    child: Child,
    log: Log,
    addr: String,
    dir: tempfile::TempDir,
    /// Private directories, outside the watched one.
    _tmp: tempfile::TempDir,
}

impl Drop for Watch {
    fn drop(&mut self) {
        // The master's workers get their drain signal when it dies.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watch {
    fn start(extra: &[&str]) -> Watch {
        Watch::start_with(BUILD, &[], extra)
    }

    /// With `build` as build.sh and `files` (relative path, contents) in the project.
    fn start_with(build: &str, files: &[(&str, &str)], extra: &[&str]) -> Watch {
        let dir = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/version.txt"), "v1\n").unwrap();
        for (rel, text) in files {
            std::fs::write(dir.path().join(rel), text).unwrap();
        }
        std::fs::write(dir.path().join("build.sh"), build).unwrap();
        // The build's own output, as a project's .gitignore names it.
        std::fs::write(dir.path().join(".gitignore"), "out/\nbuilds.log\n").unwrap();
        let addr = format!("127.0.0.1:{}", support::free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .current_dir(dir.path())
            .args(["watch", "--build", "sh build.sh"])
            .args(extra)
            .args([
                "--listen",
                &addr,
                "--ready",
                "delay=200ms",
                "--drain-timeout",
                "10s",
                "--",
            ])
            .args([
                "python3",
                concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py"),
            ])
            .env("PYWORKER_BODY_FILE", dir.path().join("out/version.txt"))
            .env("TMPDIR", tmp.path())
            .env_remove("XDG_RUNTIME_DIR")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::capture(&mut child, "watch");
        let w = Watch {
            child,
            log,
            addr,
            dir,
            _tmp: tmp,
        };
        w.wait_log("[watch] watching", 1);
        w.wait_log(" ready in ", 1);
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn wait_log(&self, pat: &str, n: usize) -> String {
        self.log.wait(pat, n)
    }

    fn count(&self, pat: &str) -> usize {
        self.log.count(pat)
    }

    fn builds(&self) -> usize {
        std::fs::read_to_string(self.path("builds.log")).map_or(0, |s| s.lines().count())
    }

    async fn version(&self) -> String {
        get(&self.addr, "/version").await.unwrap().body
    }

    /// Waits (bounded) until /version answers `want`.
    async fn serves(&self, want: &str) {
        let deadline = Instant::now() + support::WAIT;
        loop {
            if self.version().await == want {
                return;
            }
            assert!(Instant::now() < deadline, "never served {want:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn save(path: &Path, text: &str) {
    // As editors do: a new file renamed over the old one.
    let tmp = path.with_extension("tmp-save");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Edit, save: the new answer is served, with a client running throughout (0 failed);
/// a change that breaks the build shows the error and keeps the old answer; fixing it
/// reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_change_is_built_and_served_without_a_failed_request() {
    let w = Watch::start(&["--path", "src"]);
    assert_eq!(w.version().await, "v1\n");
    let load = Load::start(&w.addr, 2, false);
    let t0 = Instant::now();
    save(&w.path("src/version.txt"), "v2\n");
    w.serves("v2\n").await;
    eprintln!("save -> v2 served in {:?} (a scripted build)", t0.elapsed());
    let line = w.wait_log("reload: new worker ready in", 1);
    assert!(
        line.contains("changed src/version.txt") && line.contains("build ok in"),
        "{line}"
    );

    save(&w.path("src/version.txt"), "BROKEN\n");
    let line = w.wait_log("build FAILED", 1);
    assert!(line.contains("the running worker serves on"), "{line}");
    w.wait_log("error: src/version.txt:1: expected a version", 1);
    assert_eq!(w.version().await, "v2\n");

    save(&w.path("src/version.txt"), "v3\n");
    w.serves("v3\n").await;
    let tally = load.stop().await;
    assert!(tally.failures.is_empty(), "{:?}", tally.failures);
    assert!(tally.ok > 20, "{}", tally.ok);
    w.wait_log("reload: new worker ready in", 2);
    assert_eq!(
        w.count("reload: new worker ready in"),
        2,
        "v2 and v3, not the broken one"
    );
}

/// 50 saves within a second are one build; changes to ignored paths (an --ignore glob,
/// the build's output named in `.gitignore`, `target/`, `.git/`, an editor's swap file,
/// baton's own files) cause none; the next real change does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_one_build_and_ignored_paths_cause_none() {
    // A debounce generous enough that a loaded machine's pauses between the saves
    // below (15 ms apart) never split the burst.
    let w = Watch::start(&[
        "--ignore",
        "notes/**",
        "--name",
        "app",
        "--run-dir",
        "run",
        "--debounce",
        "1s",
    ]);
    assert_eq!(w.builds(), 1, "the initial build");
    for i in 0..50 {
        save(&w.path("src/version.txt"), &format!("burst {i}\n"));
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    w.serves("burst 49\n").await;
    w.wait_log("reload: new worker ready in", 1);
    assert_eq!(w.builds(), 2, "one build for the burst");

    for dir in ["notes", "target/debug", ".git"] {
        std::fs::create_dir_all(w.path(dir)).unwrap();
    }
    std::fs::write(w.path("notes/todo.md"), "x").unwrap();
    std::fs::write(w.path("target/debug/app"), "x").unwrap();
    std::fs::write(w.path(".git/index"), "x").unwrap();
    std::fs::write(w.path("src/.version.txt.swp"), "x").unwrap();
    std::fs::write(w.path("src/version.txt~"), "x").unwrap();
    std::fs::write(w.path("run/notes.txt"), "x").unwrap();
    // A negative: nothing may happen. Wait well past the debounce (1 s) and a build.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(w.builds(), 2, "ignored paths caused no build");
    assert_eq!(w.count("· building ..."), 1, "one round: the burst");
    // The watcher is alive: a real change is built.
    save(&w.path("src/version.txt"), "after\n");
    w.serves("after\n").await;
    assert_eq!(w.builds(), 3);
}

/// Saves during a build queue exactly one more round after it (not one per save, not
/// none), which builds what was saved last; `--restart` does full restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_during_a_build_queue_one_more_round_and_restart_mode_works() {
    let w = Watch::start(&["--path", "src", "--restart"]);
    save(&w.path("src/version.txt"), "SLOW 1\n");
    w.wait_log("· building ...", 1);
    // While that build sleeps: three more saves.
    for v in ["v2\n", "v3\n", "v4\n"] {
        save(&w.path("src/version.txt"), v);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.serves("v4\n").await;
    let line = w.wait_log("restart: ready in", 2);
    assert!(line.contains("restart: ready in"), "{line}");
    // A negative: no third round. Wait past the debounce and a build.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(w.count("· building ..."), 2, "the slow build and one more");
    assert_eq!(
        w.builds(),
        3,
        "initial, slow, and one for the saves during it"
    );
}

/// Bad input: a path that does not exist, a build command not found, a build that hangs.
#[test]
fn bad_paths_missing_build_commands_and_hanging_builds_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .current_dir(dir.path())
            .arg("watch")
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--", "true"])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--path", "no/such/dir"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--path") && err.contains("no such file or directory"),
        "{err}"
    );
    let (code, err) = run(&["--build", "no-such-compiler --release"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("build FAILED") && err.contains("exit status: 127"),
        "{err}"
    );
    let (code, err) = run(&["--build", "sleep 60", "--build-timeout", "500ms"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("took longer than --build-timeout"), "{err}");
}

/// Regression (field): with `--subreaper` (and always as PID 1) the master reaped every
/// exited child that was not a worker, `baton watch`'s build included, whose status
/// was then lost: builds failed with "No child processes (os error 10)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_are_not_reaped_as_orphans_by_a_subreaper_master() {
    let w = Watch::start(&["--subreaper"]);
    for n in 2..=9 {
        save(&w.path("src/version.txt"), &format!("v{n}\n"));
        w.wait_log("reload: new worker ready in", n - 1);
        w.serves(&format!("v{n}\n")).await;
    }
    assert_eq!(w.count("build FAILED"), 0, "{:?}", w.log.lines());
    assert_eq!(w.count("No child processes"), 0, "{:?}", w.log.lines());
}

/// Regression (new user): `baton watch ... > watch.log` run in the watched directory
/// reloaded in an endless loop: each status line it wrote was a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_written_into_the_watched_directory_is_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/version.txt"), "v1\n").unwrap();
    std::fs::write(dir.path().join("build.sh"), BUILD).unwrap();
    std::fs::write(dir.path().join(".gitignore"), "out/\nbuilds.log\n").unwrap();
    let out = std::fs::File::create(dir.path().join("watch.log")).unwrap();
    let addr = format!("127.0.0.1:{}", support::free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .current_dir(dir.path())
        .args(["watch", "--build", "sh build.sh", "--listen", &addr])
        .args(["--ready", "delay=200ms", "--", "python3"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyworker.py"))
        .env("PYWORKER_BODY_FILE", dir.path().join("out/version.txt"))
        .env("TMPDIR", tmp.path())
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let log = || std::fs::read_to_string(dir.path().join("watch.log")).unwrap_or_default();
    let rounds = || log().matches("reload: new worker ready in").count();
    let wait_for = |what: &str, n: usize| {
        let deadline = Instant::now() + support::WAIT;
        while log().matches(what).count() < n {
            assert!(Instant::now() < deadline, "no {what:?} in:\n{}", log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    tokio::task::block_in_place(|| {
        wait_for(" ready in ", 1);
        save(&dir.path().join("src/version.txt"), "v2\n");
        wait_for("reload: new worker ready in", 1);
        // Each status line is written to watch.log, in the watched directory: were it
        // a change, rounds would follow one another.
        std::thread::sleep(Duration::from_secs(2));
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(rounds(), 1, "one round for one save:\n{}", log());
}

/// The build of the regression below: as [`BUILD`], and it writes into the watched
/// folder as many do: `python3 -m py_compile` writes `src/__pycache__/` (through a
/// temporary file of a new name each time), and it rewrites a file of its own next to
/// the sources (`src/stamp.txt`, in no ignore list), with new contents each time.
const BUILD_WRITING_SOURCES: &str = r#"echo build >> builds.log
if grep -q SLOW src/version.txt; then sleep 1.5; fi
python3 -m py_compile src/app.py
date +%s%N > src/stamp.txt
mkdir -p out && cp src/version.txt out/version.txt
"#;

/// Regression (issue 27, a new user): a build that writes into the watched folder
/// (`python3 -m py_compile src/server.py` writes `src/__pycache__/*.pyc`) reloaded in a
/// loop without an edit: 8 reloads in 10 s. Now one build and one reload per edit,
/// whatever the build writes; a file saved during a build still builds once more after
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_build_writes_into_the_watched_folder_is_no_change() {
    let w = Watch::start_with(
        BUILD_WRITING_SOURCES,
        &[("src/app.py", "VERSION = 1\n"), ("src/other.txt", "x\n")],
        &["--path", "src"],
    );
    let pycache = std::fs::read_dir(w.path("src/__pycache__"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    assert!(
        pycache
            .iter()
            .any(|f| f.starts_with("app.") && f.ends_with(".pyc")),
        "py_compile wrote into the watched folder: {pycache:?}"
    );
    assert_eq!(w.builds(), 1, "the initial build");

    for (n, v) in [(1, "v2\n"), (2, "v3\n")] {
        save(&w.path("src/version.txt"), v);
        w.serves(v).await;
        w.wait_log("reload: new worker ready in", n);
        // A negative: no round follows by itself. Past the settle time (500 ms), the
        // debounce (200 ms) and a build; a loop rebuilds within that.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(w.count("· building ..."), n, "{:?}", w.log.lines());
        assert_eq!(w.builds(), 1 + n, "one build per edit");
        assert_eq!(
            w.count("reload: new worker ready in"),
            n,
            "one reload per edit"
        );
    }

    // A file saved during a build, never saved before (it looks like the build's
    // rewrite of an existing file): one more round, not a lost save.
    save(&w.path("src/version.txt"), "SLOW 4\n");
    w.wait_log("· building ...", 3);
    save(&w.path("src/other.txt"), "y\n");
    let line = w.wait_log("· building ...", 4);
    assert!(line.contains("changed src/other.txt"), "{line}");
    w.wait_log("reload: new worker ready in", 4);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(w.count("· building ..."), 4, "{:?}", w.log.lines());
    assert_eq!(w.builds(), 5);
    assert_eq!(w.count("build FAILED"), 0);
}
