//! Shutdown hooks ("finalizers"): user code that runs after the connections are done.
//!
//! Each hook runs in a task of its own (or a thread, for blocking hooks), bounded by its
//! own time limit. A hook that fails, panics or hangs is reported and the next one runs:
//! no hook can keep the process from exiting. User hooks on signals run beside serving.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::signal::Signal;

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

type UserFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// User functions on signals ([`ShutdownBuilder::on_signal`]): endless's
/// `SIGUSR1`/`SIGTSTP` hooks, nginx's log reopening. Each runs in a task of its own,
/// beside serving.
///
/// [`ShutdownBuilder::on_signal`]: crate::ShutdownBuilder::on_signal
#[derive(Default, Clone)]
pub(crate) struct UserHooks(Vec<(Signal, String, UserFn)>);

impl fmt::Debug for UserHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(s, name, _)| (s, name)))
            .finish()
    }
}

impl UserHooks {
    pub(crate) fn add<F, Fut, E>(&mut self, signal: Signal, name: String, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let f: UserFn = Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        self.0.push((signal, name, f));
    }

    /// The signals that have a function.
    pub(crate) fn signals(&self) -> impl Iterator<Item = Signal> + '_ {
        self.0.iter().map(|(s, _, _)| *s)
    }

    /// Starts the function for `signal`, if there is one, in a task of its own; its
    /// outcome is logged.
    pub(crate) fn run(&self, signal: Signal) {
        let pid = std::process::id();
        let Some((_, name, f)) = self.0.iter().find(|(s, _, _)| *s == signal) else {
            return;
        };
        let (name, fut) = (name.clone(), f());
        tracing::info!(pid, hook = %name, %signal, "running user hook");
        tokio::spawn(async move {
            match fut.await {
                Ok(()) => tracing::info!(pid, hook = %name, "user hook completed"),
                Err(e) => tracing::warn!(pid, hook = %name, error = %e, "user hook failed"),
            }
        });
    }
}

pub(crate) enum HookFn {
    Async(Box<dyn FnOnce() -> BoxFuture + Send>),
    Blocking(Box<dyn FnOnce() -> Result<(), String> + Send>),
}

pub(crate) struct Hook {
    pub(crate) name: String,
    pub(crate) limit: Duration,
    pub(crate) run: HookFn,
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl Hook {
    pub(crate) fn new_async<F, Fut, E>(name: String, limit: Duration, f: F) -> Hook
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        Hook {
            name,
            limit,
            run: HookFn::Async(Box::new(move || {
                let fut = f();
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            })),
        }
    }

    pub(crate) fn new_blocking<F, E>(name: String, limit: Duration, f: F) -> Hook
    where
        F: FnOnce() -> Result<(), E> + Send + 'static,
        E: fmt::Display,
    {
        Hook {
            name,
            limit,
            run: HookFn::Blocking(Box::new(move || f().map_err(|e| e.to_string()))),
        }
    }

    /// Runs the hook to its end or its limit.
    pub(crate) async fn run(self) -> HookReport {
        let started = Instant::now();
        let outcome = match self.run {
            HookFn::Async(f) => {
                // Aborted when this future is dropped too (a hammer abandons the hook).
                let mut task = AbortOnDrop(tokio::spawn(f()));
                match tokio::time::timeout(self.limit, &mut task.0).await {
                    Ok(Ok(Ok(()))) => HookOutcome::Completed,
                    Ok(Ok(Err(e))) => HookOutcome::Failed(e),
                    Ok(Err(join)) => HookOutcome::Panicked(match join.try_into_panic() {
                        Ok(payload) => panic_message(payload.as_ref()),
                        Err(e) => e.to_string(),
                    }),
                    Err(_) => HookOutcome::TimedOut,
                }
            }
            HookFn::Blocking(f) => {
                // A plain thread rather than `spawn_blocking`: a runtime waits for its
                // blocking tasks when it shuts down, so a hung hook there would hang the
                // exit we promise. A thread we stop waiting for dies with the process.
                let (tx, rx) = tokio::sync::oneshot::channel();
                let spawned = std::thread::Builder::new()
                    .name(format!("baton-hook-{}", self.name))
                    .spawn(move || {
                        let result = catch_unwind(AssertUnwindSafe(f));
                        let _ = tx.send(result);
                    });
                match spawned {
                    Err(e) => HookOutcome::Failed(format!("cannot start its thread: {e}")),
                    Ok(_) => match tokio::time::timeout(self.limit, rx).await {
                        Ok(Ok(Ok(Ok(())))) => HookOutcome::Completed,
                        Ok(Ok(Ok(Err(e)))) => HookOutcome::Failed(e),
                        Ok(Ok(Err(payload))) => {
                            HookOutcome::Panicked(panic_message(payload.as_ref()))
                        }
                        Ok(Err(_)) => HookOutcome::Panicked("its thread ended early".into()),
                        Err(_) => HookOutcome::TimedOut,
                    },
                }
            }
        };
        HookReport {
            name: self.name,
            limit: self.limit,
            outcome,
            elapsed: started.elapsed(),
        }
    }

    pub(crate) fn abandoned(self) -> HookReport {
        HookReport {
            name: self.name,
            limit: self.limit,
            outcome: HookOutcome::Abandoned,
            elapsed: Duration::ZERO,
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".into()
    }
}

/// How one shutdown hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookOutcome {
    /// It returned `Ok`.
    Completed,
    /// It returned an error, shown here.
    Failed(String),
    /// It panicked with this message.
    Panicked(String),
    /// It did not finish within its time limit and was abandoned.
    TimedOut,
    /// A hammer (another shutdown signal) during the hooks stopped it while it ran, or
    /// skipped it before it ran.
    Abandoned,
}

impl fmt::Display for HookOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookOutcome::Completed => f.write_str("completed"),
            HookOutcome::Failed(e) => write!(f, "failed: {e}"),
            HookOutcome::Panicked(m) => write!(f, "panicked: {m}"),
            HookOutcome::TimedOut => f.write_str("timed out"),
            HookOutcome::Abandoned => f.write_str("abandoned (forced exit)"),
        }
    }
}

/// The record of one shutdown hook.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HookReport {
    /// The name it was registered with.
    pub name: String,
    /// Its time limit.
    pub limit: Duration,
    /// How it ended.
    pub outcome: HookOutcome,
    /// How long it ran.
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn outcomes_of_async_hooks() {
        let ok = Hook::new_async("ok".into(), Duration::from_secs(5), || async {
            Ok::<_, String>(())
        });
        assert_eq!(ok.run().await.outcome, HookOutcome::Completed);
        let failed = Hook::new_async("f".into(), Duration::from_secs(5), || async {
            Err::<(), _>("disk full")
        });
        assert_eq!(
            failed.run().await.outcome,
            HookOutcome::Failed("disk full".into())
        );
        let panicked = Hook::new_async("p".into(), Duration::from_secs(5), || async {
            panic!("boom");
            #[allow(unreachable_code)]
            Ok::<(), String>(())
        });
        assert_eq!(
            panicked.run().await.outcome,
            HookOutcome::Panicked("boom".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_async_hook_times_out_at_its_limit() {
        let hang = Hook::new_async("hang".into(), Duration::from_secs(2), || async {
            std::future::pending::<()>().await;
            Ok::<(), String>(())
        });
        let report = hang.run().await;
        assert_eq!(report.outcome, HookOutcome::TimedOut);
        assert_eq!(report.elapsed, Duration::from_secs(2));
    }

    #[tokio::test]
    async fn blocking_hooks_report_errors_and_panics_and_are_abandoned_when_hung() {
        let failed = Hook::new_blocking("f".into(), Duration::from_secs(5), || Err("no"));
        assert_eq!(failed.run().await.outcome, HookOutcome::Failed("no".into()));
        let panicked = Hook::new_blocking("p".into(), Duration::from_secs(5), || {
            if true {
                panic!("sync boom");
            }
            Ok::<(), String>(())
        });
        assert_eq!(
            panicked.run().await.outcome,
            HookOutcome::Panicked("sync boom".into())
        );
        // A hook that blocks its thread for an hour is left behind after its limit.
        let hung = Hook::new_blocking("h".into(), Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(3600));
            Ok::<(), String>(())
        });
        assert_eq!(hung.run().await.outcome, HookOutcome::TimedOut);
    }
}
