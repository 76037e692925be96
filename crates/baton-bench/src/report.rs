//! Summaries of the records: totals, classes, percentiles overall and in reload
//! windows, the time from each trigger to a new server PID, the timeline; as JSON and
//! as text.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;

use serde::Serialize;

use crate::load::{FailureLines, Record};
use crate::outcome::Outcome;
use crate::trigger::Trigger;

/// Width of a timeline bucket.
pub(crate) const BUCKET_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(crate) count: u64,
    pub(crate) p50: Option<f64>,
    pub(crate) p90: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) p999: Option<f64>,
    pub(crate) max: Option<f64>,
}

/// Percentiles (in ms) of latencies given in µs; sorts its input.
pub(crate) fn percentiles(lat_us: &mut [u32]) -> Percentiles {
    if lat_us.is_empty() {
        return Percentiles::default();
    }
    lat_us.sort_unstable();
    let at = |q: f64| {
        // Nearest rank: the smallest value with at least q of the values at or below it.
        let rank = ((q * lat_us.len() as f64).ceil() as usize).clamp(1, lat_us.len());
        Some(f64::from(lat_us[rank - 1]) / 1000.0)
    };
    Percentiles {
        count: lat_us.len() as u64,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: Some(f64::from(lat_us[lat_us.len() - 1]) / 1000.0),
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) all: Percentiles,
    pub(crate) reload_windows: Percentiles,
    pub(crate) steady: Percentiles,
}

/// Time from a trigger to the first successful response from a new server PID, over
/// the triggers after which one came (before the next trigger or the end), in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct NewPidLatency {
    pub(crate) count: u64,
    pub(crate) p50: Option<f64>,
    pub(crate) p90: Option<f64>,
    pub(crate) max: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Reloads {
    pub(crate) count: usize,
    pub(crate) failed_commands: usize,
    pub(crate) failed_requests_in_windows: u64,
    pub(crate) failed_per_reload: Option<f64>,
    /// The fields below are there only with a PID source (`--pid-header`, `--pid-body`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) new_pid_latency_ms: Option<NewPidLatency>,
    /// Triggers after which no new PID answered before the next trigger or the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) triggers_without_new_pid: Option<usize>,
    /// Distinct PIDs first seen after the first trigger: to compare with `count`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) new_pids_after_trigger: Option<usize>,
    pub(crate) triggers: Vec<Trigger>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Bucket {
    pub(crate) t_s: f64,
    pub(crate) requests: u64,
    pub(crate) failed: u64,
    pub(crate) p50_ms: Option<f64>,
    pub(crate) p90_ms: Option<f64>,
    pub(crate) p99_ms: Option<f64>,
    pub(crate) max_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Client {
    pub(crate) tool: &'static str,
    pub(crate) mode: crate::load::Mode,
    pub(crate) http: &'static str,
    pub(crate) concurrency: usize,
    pub(crate) threads: usize,
    pub(crate) urls: Vec<String>,
    pub(crate) timeout_s: f64,
    /// HTTP/2 requests in flight per worker (1 for HTTP/1).
    pub(crate) streams: usize,
    /// Idle mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) idle_spread_s: Option<f64>,
    /// Echo mode only: the longest idle pause (`--echo-idle`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) echo_idle_s: Option<f64>,
}

/// Echo mode: what the workers wrote, and how often the server said it closes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Echo {
    /// Batches written (1 to 4 requests each).
    pub(crate) batches: u64,
    /// Batches of 2 to 4 requests in one write.
    pub(crate) pipelined: u64,
    /// Batches whose last request head was written in two parts, with a pause between.
    pub(crate) split: u64,
    /// Idle pauses before a batch.
    pub(crate) idle_pauses: u64,
    /// Responses with `Connection: close` (each: a new connection for what follows).
    pub(crate) close_responses: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct FailureSample {
    pub(crate) t_s: f64,
    pub(crate) class: &'static str,
    pub(crate) message: String,
}

/// Failures with the same class and message, once, with their number.
#[derive(Debug, Serialize)]
pub(crate) struct FailureMessage {
    pub(crate) class: &'static str,
    pub(crate) message: String,
    pub(crate) count: u64,
    pub(crate) first_t_s: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) label: String,
    pub(crate) client: Client,
    pub(crate) duration_s: f64,
    pub(crate) requests: u64,
    pub(crate) ok: u64,
    pub(crate) failed: u64,
    pub(crate) failures: BTreeMap<&'static str, u64>,
    pub(crate) rps: f64,
    pub(crate) latency_ms: Latency,
    pub(crate) reloads: Reloads,
    pub(crate) pids_seen: usize,
    pub(crate) replaced_connections: u64,
    /// HTTP/2: requests sent again after GOAWAY or `REFUSED_STREAM`; echo mode: requests
    /// pipelined after a `Connection: close` response, sent again on a new connection.
    pub(crate) resent_requests: u64,
    /// Echo mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) echo: Option<Echo>,
    /// Connections the clients opened, first ones included.
    pub(crate) connections_opened: u64,
    /// Keep-alive and idle modes: connections opened beyond one per client (`null` in
    /// new-connection mode), each one after the server closed the previous one or a
    /// failure dropped it: what a restart costs the clients in new connections.
    pub(crate) connections_reopened: Option<u64>,
    pub(crate) client_cpu_cores: Option<f64>,
    pub(crate) server_cpu_us_per_request: Option<f64>,
    pub(crate) first_failures: Vec<FailureSample>,
    /// Every distinct (class, message) of the failures, most frequent first.
    pub(crate) failure_messages: Vec<FailureMessage>,
    /// Failures not in `failure_messages` (more distinct messages than it keeps).
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) failure_messages_uncounted: u64,
    pub(crate) timeline: Vec<Bucket>,
    /// The verdict the exit status gives (see [`gate`]).
    pub(crate) gate: Gate,
}

/// Whether the run passes as a gate: exit 0, or 1 with the reasons.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Gate {
    pub(crate) passed: bool,
    /// Why it did not, one sentence each.
    pub(crate) failed_because: Vec<String>,
}

/// What the gate asks of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GateRules {
    /// `--max-failures`.
    pub(crate) max_failures: u64,
    /// `--reload` was given.
    pub(crate) reload: bool,
    /// `--reloads N`.
    pub(crate) reloads: Option<u32>,
}

/// The verdict: more failures than allowed, any mismatched response, and (the gate
/// never passes without the reloads it was asked for) a reload command that failed or
/// could not run, fewer reloads than `--reloads`, or none at all with `--reload`.
pub(crate) fn gate(r: &Report, rules: GateRules) -> Gate {
    let mut why = Vec::new();
    let mismatched = r.failures.get("mismatched").copied().unwrap_or(0);
    if mismatched > 0 {
        why.push(format!(
            "{mismatched} responses were not their request's (a mismatch is never allowed)"
        ));
    }
    if r.failed > rules.max_failures {
        why.push(format!(
            "{} requests failed (allowed: {})",
            r.failed, rules.max_failures
        ));
    }
    let ran = r.reloads.count;
    let failed: Vec<(usize, &Trigger)> = r
        .reloads
        .triggers
        .iter()
        .enumerate()
        .filter(|(_, t)| t.exit_code != Some(0))
        .collect();
    if let Some((i, first)) = failed.first() {
        why.push(format!(
            "{} of {ran} reload commands failed{} (first: #{} at {:.3}s: {})",
            failed.len(),
            if failed.len() == ran {
                ": no reload was verified"
            } else {
                ""
            },
            i + 1,
            first.start_s,
            first
                .error
                .as_deref()
                .unwrap_or("the reload command failed")
        ));
    }
    if rules.reload && ran == 0 {
        why.push(
            "no reload command ran: the run ended before the first trigger (it comes \
             after --reload-every, and only while its --window fits in the run)"
                .to_owned(),
        );
    } else if let Some(n) = rules.reloads.filter(|n| (ran as u64) < u64::from(*n)) {
        why.push(format!(
            "only {ran} of the {n} reloads asked for (--reloads) ran before the run ended"
        ));
    }
    Gate {
        passed: why.is_empty(),
        failed_because: why,
    }
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What the report is made of, besides the records.
#[derive(Debug)]
pub(crate) struct RunFacts {
    pub(crate) label: String,
    pub(crate) client: Client,
    pub(crate) duration_s: f64,
    pub(crate) triggers: Vec<Trigger>,
    pub(crate) window_s: f64,
    /// Whether responses carry the server's PID (`--pid-header`, `--pid-body`).
    pub(crate) pid_source: bool,
    pub(crate) replaced_connections: u64,
    pub(crate) resent_requests: u64,
    pub(crate) connections_opened: u64,
    pub(crate) client_cpu_cores: Option<f64>,
    pub(crate) server_cpu_s: Option<f64>,
    pub(crate) first_failures: Vec<(u64, Outcome, String)>,
    pub(crate) failure_lines: FailureLines,
    pub(crate) echo: Option<Echo>,
}

/// What the responses' PIDs say about the triggers.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct NewGeneration {
    /// Per trigger: µs from its start to the first successful response (its end) from a
    /// PID that no response completed before the trigger carried; `None` when none came
    /// before the next trigger's start (or at all, for the last trigger).
    pub(crate) per_trigger_us: Vec<Option<u64>>,
    /// Distinct PIDs whose first response completed after the first trigger started.
    pub(crate) new_pids: usize,
}

/// Per trigger, the time to the first successful response from a PID not seen before
/// it. `trigger_us` must be sorted. A PID is "seen" when any complete response carried
/// it (a non-2xx one too); the time counted is the end of the response.
pub(crate) fn new_generation(records: &[Record], trigger_us: &[u64]) -> NewGeneration {
    // (end of the response, pid, 2xx)
    let mut responses: Vec<(u64, u32, bool)> = records
        .iter()
        .filter(|r| r.pid != 0)
        .map(|r| {
            (
                r.start_us + u64::from(r.latency_us),
                r.pid,
                !r.outcome.is_failure(),
            )
        })
        .collect();
    responses.sort_unstable_by_key(|r| r.0);
    let mut seen = HashSet::new();
    let mut before_first = None;
    let mut i = 0;
    let mut per_trigger_us = Vec::with_capacity(trigger_us.len());
    for (k, &t) in trigger_us.iter().enumerate() {
        while i < responses.len() && responses[i].0 < t {
            seen.insert(responses[i].1);
            i += 1;
        }
        if k == 0 {
            before_first = Some(seen.len());
        }
        let next = trigger_us.get(k + 1).copied().unwrap_or(u64::MAX);
        per_trigger_us.push(
            responses[i..]
                .iter()
                .take_while(|r| r.0 < next)
                .find(|r| r.2 && !seen.contains(&r.1))
                .map(|r| r.0 - t),
        );
    }
    let all: HashSet<u32> = responses.iter().map(|r| r.1).collect();
    NewGeneration {
        per_trigger_us,
        new_pids: before_first.map_or(0, |before| all.len() - before),
    }
}

pub(crate) fn build(records: &[Record], facts: RunFacts) -> Report {
    let windows: Vec<(u64, u64)> = facts
        .triggers
        .iter()
        .map(|t| {
            let start = (t.start_s * 1e6) as u64;
            (start, start + (facts.window_s * 1e6) as u64)
        })
        .collect();
    let in_window = |us: u64| windows.iter().any(|(a, b)| (*a..*b).contains(&us));
    let mut failed_per_trigger = vec![0u64; windows.len()];

    let mut classes: BTreeMap<&'static str, u64> =
        Outcome::FAILURES.iter().map(|o| (o.name(), 0)).collect();
    let (mut all, mut win, mut steady) = (Vec::new(), Vec::new(), Vec::new());
    let mut pids = HashSet::new();
    let mut failed_in_windows = 0;
    let mut ok = 0;
    let n_buckets = ((facts.duration_s * 1e6) as u64 / BUCKET_US + 1) as usize;
    let mut buckets: Vec<(Vec<u32>, u64)> = (0..n_buckets).map(|_| (Vec::new(), 0)).collect();
    for r in records {
        let windowed = in_window(r.start_us);
        if r.outcome.is_failure() {
            *classes.entry(r.outcome.name()).or_default() += 1;
            if windowed {
                failed_in_windows += 1;
            }
            for (n, (a, b)) in failed_per_trigger.iter_mut().zip(&windows) {
                if (*a..*b).contains(&r.start_us) {
                    *n += 1;
                }
            }
        } else {
            ok += 1;
        }
        if r.pid != 0 {
            pids.insert(r.pid);
        }
        all.push(r.latency_us);
        if windowed {
            win.push(r.latency_us);
        } else {
            steady.push(r.latency_us);
        }
        let b = ((r.start_us / BUCKET_US) as usize).min(n_buckets - 1);
        buckets[b].0.push(r.latency_us);
        if r.outcome.is_failure() {
            buckets[b].1 += 1;
        }
    }
    let timeline = buckets
        .into_iter()
        .enumerate()
        .map(|(i, (mut lat, failed))| {
            let p = percentiles(&mut lat);
            Bucket {
                t_s: i as f64 * BUCKET_US as f64 / 1e6,
                requests: p.count,
                failed,
                p50_ms: p.p50,
                p90_ms: p.p90,
                p99_ms: p.p99,
                max_ms: p.max,
            }
        })
        .collect();
    let requests = records.len() as u64;
    let failed = requests - ok;
    let count = facts.triggers.len();
    let mut triggers = facts.triggers;
    for (t, n) in triggers.iter_mut().zip(failed_per_trigger) {
        t.failed_requests = n;
    }
    let (mut new_pid_latency_ms, mut triggers_without_new_pid, mut new_pids_after_trigger) =
        (None, None, None);
    if facts.pid_source {
        let starts: Vec<u64> = triggers
            .iter()
            .map(|t| (t.start_s * 1e6).round() as u64)
            .collect();
        let generation = new_generation(records, &starts);
        let mut found: Vec<u32> = Vec::new();
        for (t, us) in triggers.iter_mut().zip(&generation.per_trigger_us) {
            t.new_pid_ms = Some(us.map(|us| us as f64 / 1000.0));
            if let Some(us) = us {
                found.push((*us).min(u64::from(u32::MAX)) as u32);
            }
        }
        let p = percentiles(&mut found);
        new_pid_latency_ms = Some(NewPidLatency {
            count: p.count,
            p50: p.p50,
            p90: p.p90,
            max: p.max,
        });
        triggers_without_new_pid = Some(count - found.len());
        new_pids_after_trigger = Some(generation.new_pids);
    }
    let mut failure_messages: Vec<FailureMessage> = facts
        .failure_lines
        .lines
        .into_iter()
        .map(|((o, message), (n, first))| FailureMessage {
            class: o.name(),
            message,
            count: n,
            first_t_s: first as f64 / 1e6,
        })
        .collect();
    failure_messages.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.first_t_s.total_cmp(&b.first_t_s))
    });
    let connections_reopened = (facts.client.mode != crate::load::Mode::NewConn).then(|| {
        facts
            .connections_opened
            .saturating_sub(facts.client.concurrency as u64)
    });
    Report {
        label: facts.label,
        client: facts.client,
        duration_s: facts.duration_s,
        requests,
        ok,
        failed,
        failures: classes,
        rps: requests as f64 / facts.duration_s.max(1e-9),
        latency_ms: Latency {
            all: percentiles(&mut all),
            reload_windows: percentiles(&mut win),
            steady: percentiles(&mut steady),
        },
        reloads: Reloads {
            count,
            failed_commands: triggers.iter().filter(|t| t.exit_code != Some(0)).count(),
            failed_requests_in_windows: failed_in_windows,
            failed_per_reload: (count > 0).then(|| failed_in_windows as f64 / count as f64),
            new_pid_latency_ms,
            triggers_without_new_pid,
            new_pids_after_trigger,
            triggers,
        },
        pids_seen: pids.len(),
        replaced_connections: facts.replaced_connections,
        resent_requests: facts.resent_requests,
        echo: facts.echo,
        connections_opened: facts.connections_opened,
        connections_reopened,
        client_cpu_cores: facts.client_cpu_cores,
        server_cpu_us_per_request: facts
            .server_cpu_s
            .filter(|_| requests > 0)
            .map(|s| s * 1e6 / requests as f64),
        first_failures: facts
            .first_failures
            .into_iter()
            .map(|(t, o, m)| FailureSample {
                t_s: t as f64 / 1e6,
                class: o.name(),
                message: m,
            })
            .collect(),
        failure_messages,
        failure_messages_uncounted: facts.failure_lines.uncounted,
        timeline,
        gate: Gate::default(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// The human summary printed at the end of a run.
pub(crate) fn text(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", r.label);
    let _ = writeln!(
        s,
        "  client      {} {}, HTTP/{}, {} workers{} on {} threads; {}",
        r.client.tool,
        match r.client.mode {
            crate::load::Mode::KeepAlive => "keep-alive".to_owned(),
            crate::load::Mode::NewConn => "new connection per request".to_owned(),
            crate::load::Mode::Idle => format!(
                "idle (one request per worker within {} ms after each trigger)",
                r.client.idle_spread_s.map_or(0.0, |v| v * 1000.0)
            ),
            crate::load::Mode::Echo => format!(
                "echo (one raw connection per worker: pipelined batches of 1-4, split heads, idle pauses up to {} ms; every response checked against its request)",
                r.client.echo_idle_s.map_or(0.0, |v| v * 1000.0)
            ),
        },
        r.client.http,
        r.client.concurrency,
        if r.client.streams > 1 {
            format!(" x {} streams", r.client.streams)
        } else {
            String::new()
        },
        r.client.threads,
        r.client.urls.join(" ")
    );
    let _ = writeln!(
        s,
        "  requests    {} in {:.2}s = {:.0} req/s; ok {}, failed {}",
        r.requests, r.duration_s, r.rps, r.ok, r.failed
    );
    let classes: Vec<String> = r
        .failures
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(
        s,
        "  failures    {}",
        if classes.is_empty() {
            "none".to_owned()
        } else {
            classes.join(", ")
        }
    );
    if r.reloads.count > 0 {
        let _ = writeln!(
            s,
            "  reloads     {} triggered ({} commands failed); {} requests failed in reload windows = {} per reload",
            r.reloads.count,
            r.reloads.failed_commands,
            r.reloads.failed_requests_in_windows,
            r.reloads
                .failed_per_reload
                .map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
        );
        if let (Some(p), Some(without), Some(new_pids)) = (
            &r.reloads.new_pid_latency_ms,
            r.reloads.triggers_without_new_pid,
            r.reloads.new_pids_after_trigger,
        ) {
            let _ = writeln!(
                s,
                "  new PID     trigger to first ok response from a new PID: p50 {} p90 {} max {} ms \
                 ({} of {} triggers); {} without a new PID before the next trigger or the end; \
                 {} new PIDs first seen after a trigger",
                ms(p.p50),
                ms(p.p90),
                ms(p.max),
                p.count,
                r.reloads.count,
                without,
                new_pids
            );
        }
    }
    for (name, p) in [
        ("all", &r.latency_ms.all),
        ("reloads", &r.latency_ms.reload_windows),
        ("steady", &r.latency_ms.steady),
    ] {
        if p.count == 0 {
            continue;
        }
        let _ = writeln!(
            s,
            "  latency ms  {name:<8} p50 {} p90 {} p99 {} p99.9 {} max {}  ({} requests)",
            ms(p.p50),
            ms(p.p90),
            ms(p.p99),
            ms(p.p999),
            ms(p.max),
            p.count
        );
    }
    if r.pids_seen > 0 {
        let _ = writeln!(s, "  server PIDs {} seen", r.pids_seen);
    }
    if r.replaced_connections > 0 {
        let _ = writeln!(
            s,
            "  replaced    {} HTTP/2 connections ended by GOAWAY were replaced",
            r.replaced_connections
        );
    }
    if let Some(n) = r.connections_reopened {
        let _ = writeln!(
            s,
            "  connections {} opened by {} clients: {n} reopened (the server closed the previous one, or a failure dropped it)",
            r.connections_opened, r.client.concurrency
        );
    }
    if let Some(e) = &r.echo {
        let _ = writeln!(
            s,
            "  echo        {} batches: {} pipelined (2-4 requests in one write), {} split (a head in two writes), {} after an idle pause; {} responses with Connection: close",
            e.batches, e.pipelined, e.split, e.idle_pauses, e.close_responses
        );
    }
    if r.resent_requests > 0 {
        let _ = writeln!(
            s,
            "  re-sent     {}",
            if r.echo.is_some() {
                format!(
                    "{} requests pipelined after a Connection: close response (not processed), on a new connection",
                    r.resent_requests
                )
            } else {
                format!(
                    "{} HTTP/2 requests the server had not processed (GOAWAY, REFUSED_STREAM)",
                    r.resent_requests
                )
            }
        );
    }
    if let Some(c) = r.client_cpu_cores {
        let _ = writeln!(s, "  client CPU  {c:.2} cores");
    }
    if let Some(c) = r.server_cpu_us_per_request {
        let _ = writeln!(s, "  server CPU  {c:.2} µs per request");
    }
    // Each distinct failure once, with its number, most frequent first.
    const SHOWN: usize = 5;
    for f in r.failure_messages.iter().take(SHOWN) {
        let _ = writeln!(
            s,
            "  failure     {}: {} (x{}; first at {:.3}s)",
            f.class, f.message, f.count, f.first_t_s
        );
    }
    let more = r.failure_messages.len().saturating_sub(SHOWN);
    if more > 0 || r.failure_messages_uncounted > 0 {
        let _ = writeln!(
            s,
            "  failure     ... {more} more distinct failure messages{} (see --json)",
            if r.failure_messages_uncounted > 0 {
                format!(
                    ", and {} failures not counted by message",
                    r.failure_messages_uncounted
                )
            } else {
                String::new()
            }
        );
    }
    if r.echo.is_some() {
        let class = |c: &str| r.failures.get(c).copied().unwrap_or(0);
        let (lost, mismatched) = (class("lost"), class("mismatched"));
        let _ = writeln!(
            s,
            "  verdict     {}",
            if r.failed == 0 {
                format!(
                    "every one of the {} responses matched its request, in order, exactly once; 0 lost",
                    r.ok
                )
            } else {
                format!(
                    "FAILED: {lost} lost, {mismatched} mismatched, {} other failures",
                    r.failed - lost - mismatched
                )
            }
        );
    }
    if r.gate.passed {
        let _ = writeln!(s, "  gate        passed");
    } else {
        for why in &r.gate.failed_because {
            let _ = writeln!(s, "  gate        FAILED: {why}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u32> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles(&mut v);
        assert_eq!(p.p50, Some(500.0));
        assert_eq!(p.p99, Some(990.0));
        assert_eq!(p.p999, Some(999.0));
        assert_eq!(p.max, Some(1000.0));
        assert_eq!(percentiles(&mut []).p50, None);
    }

    fn rec(start_ms: u64, latency_ms: u32, pid: u32, outcome: Outcome) -> Record {
        Record {
            start_us: start_ms * 1000,
            latency_us: latency_ms * 1000,
            pid,
            outcome,
        }
    }

    #[test]
    fn time_to_a_new_pid_per_trigger() {
        use Outcome::{Ok, Reset, Status};
        let records = [
            rec(0, 1, 10, Ok),
            rec(50, 1, 11, Ok), // two PIDs before the first trigger (two workers)
            // Trigger at 100 ms: an old PID, a failure, a new PID's 500 (not ok), then
            // its first ok response, which ends at 180 ms.
            rec(110, 1, 10, Ok),
            rec(120, 5, 0, Reset),
            rec(130, 1, 20, Status),
            rec(170, 10, 20, Ok),
            rec(185, 1, 21, Ok),
            // Trigger at 300 ms: only PIDs seen before it.
            rec(310, 1, 20, Ok),
            rec(350, 1, 11, Ok),
            // Trigger at 500 ms: a request that started before it and ended after it,
            // from a new PID, counts (from 500 to its end at 520 ms).
            rec(490, 30, 30, Ok),
        ];
        let g = new_generation(&records, &[100_000, 300_000, 500_000]);
        assert_eq!(g.per_trigger_us, [Some(80_000), None, Some(20_000)]);
        // 20, 21 and 30 were first seen after the first trigger.
        assert_eq!(g.new_pids, 3);
        // A new PID seen only after the next trigger is that trigger's; one seen before
        // it (20, in a 500 response) is not new to it.
        let g = new_generation(&records, &[100_000, 175_000]);
        assert_eq!(g.per_trigger_us, [None, Some(11_000)]);
        assert_eq!(new_generation(&records, &[]), NewGeneration::default());
    }

    fn report_with(failed: u64, triggers: Vec<Trigger>) -> Report {
        let records: Vec<Record> = (0..failed)
            .map(|i| rec(i, 1, 0, Outcome::Reset))
            .chain([rec(1000, 1, 10, Outcome::Ok)])
            .collect();
        build(
            &records,
            RunFacts {
                label: "t".into(),
                client: Client {
                    tool: "baton-bench",
                    mode: crate::load::Mode::KeepAlive,
                    http: "1.1",
                    concurrency: 1,
                    threads: 1,
                    urls: vec![],
                    timeout_s: 5.0,
                    streams: 1,
                    idle_spread_s: None,
                    echo_idle_s: None,
                },
                duration_s: 2.0,
                triggers,
                window_s: 1.0,
                pid_source: false,
                replaced_connections: 0,
                resent_requests: 0,
                connections_opened: 1,
                client_cpu_cores: None,
                server_cpu_s: None,
                first_failures: vec![],
                failure_lines: crate::load::FailureLines::default(),
                echo: None,
            },
        )
    }

    fn trigger(at_s: f64, exit_code: Option<i32>, error: Option<&str>) -> Trigger {
        Trigger {
            start_s: at_s,
            end_s: at_s,
            exit_code,
            error: error.map(str::to_owned),
            new_pid_ms: None,
            failed_requests: 0,
        }
    }

    #[test]
    fn the_gate_never_passes_without_the_reloads_it_was_asked_for() {
        let rules = |max_failures, reload, reloads| GateRules {
            max_failures,
            reload,
            reloads,
        };
        let ok = || trigger(1.0, Some(0), None);
        // No reloads asked for: only the failures count.
        assert!(gate(&report_with(0, vec![]), rules(0, false, None)).passed);
        let g = gate(&report_with(3, vec![]), rules(2, false, None));
        assert_eq!(g.failed_because, ["3 requests failed (allowed: 2)"]);
        // Every reload command failed (a wrong --pidfile): FAILED, whatever the
        // failures.
        let bad = |at| trigger(at, None, Some("cannot read pidfile /x.pid: No such file"));
        let g = gate(
            &report_with(0, vec![bad(1.0), bad(2.0)]),
            rules(0, true, None),
        );
        assert!(!g.passed);
        assert_eq!(
            g.failed_because,
            [
                "2 of 2 reload commands failed: no reload was verified (first: #1 at 1.000s: cannot read pidfile /x.pid: No such file)"
            ]
        );
        // One of three exited 1.
        let g = gate(
            &report_with(
                0,
                vec![
                    ok(),
                    trigger(2.0, Some(1), Some("the reload command exited with 1")),
                    ok(),
                ],
            ),
            rules(0, true, None),
        );
        assert_eq!(
            g.failed_because,
            [
                "1 of 3 reload commands failed (first: #2 at 2.000s: the reload command exited with 1)"
            ]
        );
        // --reload, and none ran.
        let g = gate(&report_with(0, vec![]), rules(0, true, None));
        assert!(
            g.failed_because[0].starts_with("no reload command ran"),
            "{g:?}"
        );
        // Fewer than --reloads.
        let g = gate(&report_with(0, vec![ok(), ok()]), rules(0, true, Some(3)));
        assert_eq!(
            g.failed_because,
            ["only 2 of the 3 reloads asked for (--reloads) ran before the run ended"]
        );
        assert!(gate(&report_with(0, vec![ok(), ok()]), rules(0, true, Some(2))).passed);
    }
}
