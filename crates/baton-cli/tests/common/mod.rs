//! The log of a process a test started: its stderr, read line by line in a thread,
//! echoed with a prefix, and waited on with a bound; and a running `baton run` master.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

#[derive(Clone)]
pub struct Log(Arc<(Mutex<Vec<String>>, Condvar)>);

impl Log {
    /// Takes `child`'s piped stderr and collects it.
    pub fn capture(child: &mut Child, prefix: &'static str) -> Log {
        let log = Log(Arc::new((Mutex::new(Vec::new()), Condvar::new())));
        let sink = log.clone();
        let stderr = child.stderr.take().expect("stderr is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{prefix}] {line}");
                sink.0
                    .0
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line);
                sink.0.1.notify_all();
            }
        });
        log
    }

    /// Waits (bounded by `WAIT`) until `n` lines contain `pat`; returns the n-th. Off
    /// the async runtime's worker threads when called from one.
    pub fn wait(&self, pat: &str, n: usize) -> String {
        let run = || {
            let (m, cv) = &*self.0;
            let deadline = Instant::now() + crate::support::WAIT;
            let mut log = m.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(l) = log.iter().filter(|l| l.contains(pat)).nth(n - 1) {
                    return l.clone();
                }
                let now = Instant::now();
                assert!(
                    now < deadline,
                    "no line #{n} with {pat:?}:\n{}",
                    log.join("\n")
                );
                log = cv
                    .wait_timeout(log, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(run),
            Err(_) => run(),
        }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many lines so far contain `pat`.
    pub fn count(&self, pat: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(pat)).count()
    }
}

/// A running `baton run` master with its log.
pub struct Master {
    pub child: Child,
    pub log: Log,
    pub pid: u32,
    pub addr: String,
    _tmp: tempfile::TempDir,
}

impl Master {
    pub fn start(ready: &str, command: &[&str]) -> Master {
        Master::start_with(&["--drain-timeout", "10s"], &[], ready, command)
    }

    pub fn start_with(
        extra: &[&str],
        env: &[(&str, &str)],
        ready: &str,
        command: &[&str],
    ) -> Master {
        let port = crate::support::free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_baton"));
        cmd.args(["run", "--listen", &addr, "--ready", ready])
            .args(extra)
            .arg("--")
            .args(command)
            .envs(env.iter().copied());
        let master = Master::spawn(cmd, addr);
        master.wait_log(" ready in ", 1);
        master
    }

    /// Runs `cmd` (which runs `baton run` on `addr`) and collects its log.
    pub fn spawn(cmd: Command, addr: String) -> Master {
        Master::spawn_in(tempfile::tempdir().unwrap(), cmd, addr)
    }

    /// [`Master::spawn`] with private directories in `tmp`.
    pub fn spawn_in(tmp: tempfile::TempDir, mut cmd: Command, addr: String) -> Master {
        // Private directories (notify and control sockets) in the test's own
        // directory: one left by a process the test kills goes with it.
        cmd.env("TMPDIR", tmp.path()).env_remove("XDG_RUNTIME_DIR");
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::capture(&mut child, "baton");
        let pid = child.id();
        Master {
            child,
            log,
            pid,
            addr,
            _tmp: tmp,
        }
    }

    /// Waits (bounded) until `n` lines contain `pat`; returns the n-th.
    pub fn wait_log(&self, pat: &str, n: usize) -> String {
        self.log.wait(pat, n)
    }

    pub fn wait_log_off_runtime(&self, pat: &str, n: usize) -> String {
        self.log.wait(pat, n)
    }

    pub fn worker_pids(&self) -> Vec<u32> {
        self.log
            .lines()
            .iter()
            .filter(|l| l.contains(" ready in "))
            .filter_map(|l| {
                let digits: String = l
                    .split("worker=")
                    .nth(1)?
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
            .collect()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let workers = self.worker_pids();
        let private = private_dirs(&workers);
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Each worker leads a process group of its own: what it started goes with it.
        for w in workers {
            crate::support::kill_group(w);
        }
        remove_private_dirs(private);
    }
}

/// The master's private directory (its workers' control socket), which a killed master
/// cannot remove: named in its workers' environment.
pub fn private_dirs(workers: &[u32]) -> Vec<std::path::PathBuf> {
    workers
        .iter()
        .filter_map(|w| std::fs::read(format!("/proc/{w}/environ")).ok())
        .flat_map(|env| {
            env.split(|b| *b == 0)
                .filter_map(|kv| kv.strip_prefix(b"BATON_MASTER_CONTROL="))
                .map(|v| std::path::PathBuf::from(String::from_utf8_lossy(v).into_owned()))
                .collect::<Vec<_>>()
        })
        .filter_map(|socket| socket.parent().map(std::path::Path::to_path_buf))
        .collect()
}

pub fn remove_private_dirs(dirs: Vec<std::path::PathBuf>) {
    for dir in dirs {
        if dir.starts_with(std::env::temp_dir()) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
