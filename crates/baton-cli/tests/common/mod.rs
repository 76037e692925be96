//! The log of a process a test started: its stderr, read line by line in a thread,
//! echoed with a prefix, and waited on with a bound.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::Child;
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
