//! Reload triggers: a shell command run every so often, each run recorded.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::load::Shared;

#[derive(Debug, Clone)]
pub(crate) struct TriggerConfig {
    pub(crate) command: String,
    pub(crate) every: Duration,
    pub(crate) count: Option<u32>,
    pub(crate) pid: Option<u32>,
    pub(crate) pidfile: Option<PathBuf>,
    pub(crate) quiet: bool,
    /// No trigger starts after this instant.
    pub(crate) last_start: Option<Instant>,
}

/// One run of the reload command.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Trigger {
    pub(crate) start_s: f64,
    pub(crate) end_s: f64,
    /// The command's exit code; `null` if it could not run or was killed by a signal.
    pub(crate) exit_code: Option<i32>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    /// With a PID source: ms from this trigger to the first successful response from a
    /// PID not seen before it (`null`: none before the next trigger or the end). Left out
    /// without a PID source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) new_pid_ms: Option<Option<f64>>,
    /// Failed requests that started in this trigger's window (`--window`; windows of
    /// triggers closer than that overlap, and a request in both counts in both).
    pub(crate) failed_requests: u64,
}

/// Replaces `{pid}` and `{pidfile}` in `template`.
pub(crate) fn substitute(template: &str, pid: Option<u32>, pidfile: Option<&str>) -> String {
    let mut out = template.to_owned();
    if let Some(pid) = pid {
        out = out.replace("{pid}", &pid.to_string());
    }
    if let Some(pidfile) = pidfile {
        out = out.replace("{pidfile}", pidfile);
    }
    out
}

fn current_pid(cfg: &TriggerConfig) -> Result<Option<u32>, String> {
    match &cfg.pidfile {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read pidfile {}: {e}", path.display()))?
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("pidfile {} does not hold a PID: {e}", path.display())),
        None => Ok(cfg.pid),
    }
}

/// Runs the command every `cfg.every` (the first after one interval) until the run
/// stops or `cfg.count` triggers have run. Runs are sequential: a command that takes
/// longer than the interval delays the next one.
pub(crate) async fn run(cfg: TriggerConfig, shared: Arc<Shared>) -> Vec<Trigger> {
    let mut done = Vec::new();
    let mut next = shared.started + cfg.every;
    loop {
        if cfg.count.is_some_and(|n| done.len() as u32 >= n)
            || cfg.last_start.is_some_and(|last| next > last)
        {
            break;
        }
        {
            let stopped = shared.stopped.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if shared.stop.load(Ordering::Relaxed) {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = stopped => break,
            }
        }
        let start = Instant::now();
        // Idle workers send their requests after this instant.
        shared.tick(start);
        let since = |t: Instant| (t - shared.started).as_secs_f64();
        let outcome = match current_pid(&cfg) {
            Err(e) => Err(e),
            Ok(pid) => {
                let pidfile = cfg.pidfile.as_ref().map(|p| p.display().to_string());
                let command = substitute(&cfg.command, pid, pidfile.as_deref());
                tokio::process::Command::new("sh")
                    .arg("-c")
                    .arg(&command)
                    .stdin(std::process::Stdio::null())
                    .status()
                    .await
                    .map_err(|e| format!("cannot run `{command}`: {e}"))
                    .map(|s| s.code())
            }
        };
        let end = Instant::now();
        let trigger = match outcome {
            Ok(code) => Trigger {
                start_s: since(start),
                end_s: since(end),
                exit_code: code,
                error: (code != Some(0)).then(|| match code {
                    Some(c) => format!("the reload command exited with {c}"),
                    None => "the reload command was killed by a signal".to_owned(),
                }),
                new_pid_ms: None,
                failed_requests: 0,
            },
            Err(e) => Trigger {
                start_s: since(start),
                end_s: since(end),
                exit_code: None,
                error: Some(e),
                new_pid_ms: None,
                failed_requests: 0,
            },
        };
        if let (Some(e), false) = (&trigger.error, cfg.quiet) {
            eprintln!("reload #{} at {:.3}s: {e}", done.len() + 1, trigger.start_s);
        }
        done.push(trigger);
        next = (next + cfg.every).max(end);
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        assert_eq!(
            substitute(
                "kill -HUP {pid}; cat {pidfile}",
                Some(42),
                Some("/run/x.pid")
            ),
            "kill -HUP 42; cat /run/x.pid"
        );
        assert_eq!(substitute("nginx -s reload", None, None), "nginx -s reload");
    }
}
