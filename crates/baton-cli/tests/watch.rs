//! `baton watch` with real files, a scripted build and a real server: a change is built
//! and served with clients running throughout, a broken build changes nothing, a burst
//! of saves is one build, ignored paths cause none.
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
        let dir = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("src/version.txt"), "v1\n").unwrap();
        std::fs::write(dir.path().join("build.sh"), BUILD).unwrap();
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
