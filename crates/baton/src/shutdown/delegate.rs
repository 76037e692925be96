//! A master's worker asked to restart itself (by its signal or by code) asks its master
//! instead, over the master's private control socket (`BATON_MASTER_CONTROL`).

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::RestartReply;
use crate::error::Error;
use crate::failure::{RestartFailure, Restarted};

/// The private control socket of the master this process is a worker of, if it is one
/// (`BATON_MASTER_CONTROL`).
pub(super) fn master_control() -> Option<std::path::PathBuf> {
    if !crate::origin::is_worker() {
        return None;
    }
    std::env::var_os(crate::origin::MASTER_CONTROL)
        .filter(|v| !v.is_empty())
        .map(Into::into)
}

/// A worker asked to restart itself asks its master instead: a generation started by
/// the worker would be nobody's worker (a second master, in GoFrame's model). The
/// master starts the new worker, and once it is ready tells this one to drain; the
/// caller learns the outcome when the new worker is ready (or why it failed).
pub(super) fn delegate(
    master: std::path::PathBuf,
    request: crate::supervisor::control::Request,
    reason: String,
    reply: Option<RestartReply>,
) {
    use crate::supervisor::control::{Conversation, Line, Progress};
    let pid = std::process::id();
    info!(pid, %reason, "{request}: this process is a master's worker: asking the master");
    tokio::spawn(async move {
        let t0 = Instant::now();
        // Until the new worker is ready, not until the final line: the master sends
        // that once this worker drained.
        let asked = async {
            let mut c = Conversation::open(&master, request)
                .await
                .map_err(|e| format!("cannot reach the master ({}): {e}", master.display()))?;
            let mut spawn = Duration::ZERO;
            loop {
                let line = match c.next_line().await {
                    Ok(line) => line,
                    // A line of a later protocol: not one this waits for.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => continue,
                    Err(e) => return Err(format!("the master's answer: {e}")),
                };
                match line {
                    Line::Progress(Progress::Spawned { .. }) => spawn = t0.elapsed(),
                    Line::Progress(Progress::Ready {
                        generation,
                        pid,
                        took,
                    }) => {
                        return Ok(Restarted {
                            pid,
                            generation,
                            spawn,
                            ready: took,
                            coalesced: 0,
                        });
                    }
                    Line::Error(e) => return Err(e),
                    Line::Ok(m) => return Err(format!("no new worker was started ({m})")),
                    _ => {}
                }
            }
        };
        let outcome = match tokio::time::timeout(Duration::from_secs(600), asked).await {
            Ok(Ok(r)) => {
                info!(
                    pid,
                    new_pid = r.pid,
                    generation = r.generation,
                    "the master's new worker is ready; the master drains this one"
                );
                Ok(r)
            }
            Ok(Err(e)) => {
                warn!(pid, "the master's {request} failed: {e}");
                Err(Error::Restart(RestartFailure::Master(e)))
            }
            Err(_) => Err(Error::Restart(RestartFailure::Master(
                "no outcome within 10 minutes".into(),
            ))),
        };
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    });
}
