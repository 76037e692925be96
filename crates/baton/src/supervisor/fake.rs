//! A worker without a process, for the unit tests of the master's transitions: the
//! test says when it is ready, fails, exits; and sees what the master told it (signals,
//! messages on its link). Its PIDs are above Linux's largest (2^22), so that nothing
//! the master looks up in `/proc` for it can be another process.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::channel::Message;
use crate::failure::RestartFailure;
use crate::signal::Signal;
use crate::sync::lock;

/// The first fake PID: above `PID_MAX_LIMIT` (4,194,304) and within `i32`.
const FIRST_PID: u32 = 5_000_000;

/// The master's side of a fake worker.
#[derive(Debug)]
pub(crate) struct FakeWorker {
    shared: Arc<Shared>,
}

/// The test's side of one fake worker.
#[derive(Debug, Clone)]
pub(crate) struct FakeHandle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pid: u32,
    /// Whether it has a link to the master (what `hand_over` gives a worker).
    link: bool,
    ready: watch::Sender<Option<Result<(), RestartFailure>>>,
    exit: watch::Sender<Option<ExitStatus>>,
    signals: Mutex<Vec<Signal>>,
    told: Mutex<Vec<Message>>,
}

impl FakeWorker {
    pub(crate) fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// As `Worker::ready`: the test's verdict, the exit, or the deadline, whichever
    /// comes first.
    pub(crate) async fn ready(&mut self, timeout: Duration) -> Result<(), RestartFailure> {
        let pid = self.pid();
        let mut ready = self.shared.ready.subscribe();
        let mut exit = self.shared.exit.subscribe();
        tokio::select! {
            verdict = ready.wait_for(Option::is_some) => {
                verdict.expect("the sender lives in `shared`").clone().expect("some")
            }
            status = exit.wait_for(Option::is_some) => Err(RestartFailure::Exited {
                pid,
                status: crate::handoff::describe(&Ok(status.expect("lives").expect("some"))),
            }),
            () = tokio::time::sleep(timeout) => Err(RestartFailure::NoReadyMessage {
                pid,
                deadline: timeout,
            }),
        }
    }

    pub(crate) fn signal(&self, signal: Signal) {
        lock(&self.shared.signals).push(signal);
    }

    pub(crate) fn kill(&self) {
        self.shared.exit.send_if_modified(|e| {
            e.get_or_insert(ExitStatus::from_raw(libc::SIGKILL));
            true
        });
    }

    pub(crate) async fn wait(&mut self) -> ExitStatus {
        let mut exit = self.shared.exit.subscribe();
        let status = *exit.wait_for(Option::is_some).await.expect("lives");
        status.expect("some")
    }

    /// A message on its link; `false` without one (as a worker without a link).
    pub(crate) fn told(&self, message: Message) -> bool {
        if self.shared.link {
            lock(&self.shared.told).push(message);
        }
        self.shared.link
    }
}

impl FakeHandle {
    pub(crate) fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// It says it is ready.
    pub(crate) fn ready(&self) {
        self.shared.ready.send_replace(Some(Ok(())));
    }

    /// It exits with `code`.
    pub(crate) fn exit(&self, code: i32) {
        self.shared.exit.send_if_modified(|e| {
            e.get_or_insert(ExitStatus::from_raw(code << 8));
            true
        });
    }

    pub(crate) fn exited(&self) -> Option<ExitStatus> {
        *self.shared.exit.borrow()
    }

    /// The signals the master sent it, in order.
    pub(crate) fn signals(&self) -> Vec<Signal> {
        lock(&self.shared.signals).clone()
    }

    /// The messages the master sent on its link, in order.
    pub(crate) fn told(&self) -> Vec<Message> {
        lock(&self.shared.told).clone()
    }
}

/// What a master under test starts its workers with: fake ones, a handle for each kept
/// in start order.
#[derive(Debug, Default)]
pub(crate) struct Spawner {
    workers: Mutex<Vec<FakeHandle>>,
    /// The next start fails (as a missing executable would).
    fail_next: Mutex<Option<RestartFailure>>,
}

impl Spawner {
    pub(crate) fn spawn(&self, link: bool) -> Result<FakeWorker, RestartFailure> {
        if let Some(failure) = lock(&self.fail_next).take() {
            return Err(failure);
        }
        let mut workers = lock(&self.workers);
        let shared = Arc::new(Shared {
            pid: FIRST_PID + workers.len() as u32,
            link,
            ready: watch::Sender::new(None),
            exit: watch::Sender::new(None),
            signals: Mutex::new(Vec::new()),
            told: Mutex::new(Vec::new()),
        });
        workers.push(FakeHandle {
            shared: shared.clone(),
        });
        Ok(FakeWorker { shared })
    }

    /// The `n`th worker started (0 is the first).
    pub(crate) fn worker(&self, n: usize) -> FakeHandle {
        lock(&self.workers)[n].clone()
    }

    pub(crate) fn started(&self) -> usize {
        lock(&self.workers).len()
    }

    pub(crate) fn fail_next(&self, failure: RestartFailure) {
        *lock(&self.fail_next) = Some(failure);
    }
}
