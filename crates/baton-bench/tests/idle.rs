//! Idle mode: one keep-alive connection per worker, a warm-up request, then exactly one
//! request per worker after each trigger, within --idle-spread of it; the strict
//! classification applies to the idle connections.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

/// Groups request arrival times into bursts separated by more than `gap`.
fn bursts(mut at: Vec<Instant>, gap: Duration) -> Vec<Vec<Instant>> {
    at.sort();
    let mut out: Vec<Vec<Instant>> = Vec::new();
    for t in at {
        match out.last_mut() {
            Some(b) if t - *b.last().unwrap() <= gap => b.push(t),
            _ => out.push(vec![t]),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_per_worker_after_each_trigger_on_the_idle_connection() {
    let (addr, seen) = common::http1_server().await;
    let url = format!("http://{addr}/ok");
    let run = common::bench(&[
        &url,
        "--mode",
        "idle",
        "-c",
        "8",
        "-d",
        "1.8s",
        "--reload",
        "true",
        "--reload-every",
        "500ms",
        "--idle-spread",
        "200ms",
        "--window",
        "100ms",
    ])
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    // Triggers at 0.5, 1.0 and 1.5 s: none later than 1.8 s - 200 ms.
    assert_eq!(r["reloads"]["count"], 3);
    assert_eq!(r["client"]["mode"], "idle");
    assert_eq!(r["client"]["idle_spread_s"], 0.2);
    // 8 warm-ups, then 8 after each of the 3 triggers.
    assert_eq!(r["requests"], 32, "{}", run.stdout);
    assert_eq!(r["ok"], 32);
    let requests = seen.requests();
    assert_eq!(requests.len(), 32);
    // Each worker stayed on its one connection.
    assert_eq!(
        seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        8
    );

    // In the client's timeline, requests start only at the beginning (warm-up) or
    // within the spread after a trigger.
    let triggers: Vec<f64> = r["reloads"]["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["start_s"].as_f64().unwrap())
        .collect();
    for b in r["timeline"].as_array().unwrap() {
        let (t, n) = (b["t_s"].as_f64().unwrap(), b["requests"].as_u64().unwrap());
        if n == 0 || t < 0.3 {
            continue;
        }
        // A bucket [t, t + 0.1) holds a request that started in [T, T + 0.2 + slack).
        assert!(
            triggers.iter().any(|&tr| t > tr - 0.1 && t < tr + 0.25),
            "{n} requests in the bucket at {t}s, triggers at {triggers:?}"
        );
    }
    // On the server: four bursts of 8 (at least 300 ms apart), the last three spread
    // over part of 200 ms (8 uniform draws all within 10 ms: a fluke of ~1e-8).
    let bursts = bursts(
        requests.iter().map(|(t, _)| *t).collect(),
        Duration::from_millis(220),
    );
    assert_eq!(
        bursts.iter().map(Vec::len).collect::<Vec<_>>(),
        [8, 8, 8, 8]
    );
    for b in &bursts[1..] {
        let span = *b.last().unwrap() - b[0];
        assert!(
            span > Duration::from_millis(10) && span < Duration::from_millis(300),
            "{span:?}"
        );
    }
}

/// A server that closes idle keep-alive connections without `Connection: close` loses
/// the request of every idle worker; the worker then opens a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_closed_by_the_server_is_a_failure() {
    let (addr, seen) = common::http1_server().await;
    // The server closes a connection idle for 50 ms; the triggers are 400 ms apart.
    let url = format!("http://{addr}/idle-close");
    let run = common::bench(&[
        &url,
        "--mode",
        "idle",
        "-c",
        "4",
        "-d",
        "1.5s",
        "--reload",
        "true",
        "--reload-every",
        "400ms",
        "--idle-spread",
        "200ms",
        "--window",
        "100ms",
    ])
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert_eq!(r["reloads"]["count"], 3);
    assert_eq!(r["requests"], 16);
    // Warm-ups ok; after trigger 1 every idle connection is found closed; the failed
    // workers' next requests (trigger 2) go on new connections and succeed; after
    // trigger 3 those are closed again.
    assert_eq!(r["ok"], 8, "{}", run.stdout);
    assert_eq!(r["failed"], 8, "{}", run.stdout);
    for (class, _) in common::failures(r) {
        assert!(
            class == "eof" || class == "reset",
            "{class}: {}",
            run.stdout
        );
    }
    // Failed requests were not sent: the server saw the 8 that succeeded.
    assert_eq!(seen.requests().len(), 8);

    // The same server saying `Connection: close` loses nothing: each next request
    // opens a new connection.
    let (addr, seen) = common::http1_server().await;
    let url = format!("http://{addr}/close-each");
    let run = common::bench(&[
        &url,
        "--mode",
        "idle",
        "-c",
        "4",
        "-d",
        "1.5s",
        "--reload",
        "true",
        "--reload-every",
        "400ms",
        "--idle-spread",
        "200ms",
        "--window",
        "100ms",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(run.report["requests"], 16);
    assert_eq!(run.report["ok"], 16);
    assert_eq!(
        seen.connections.load(std::sync::atomic::Ordering::SeqCst),
        16
    );
}

/// Without --reload, a tick every --reload-every stands for the trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reload_idle_mode_sends_once_per_period() {
    let (addr, _seen) = common::http1_server().await;
    let url = format!("http://{addr}/ok");
    let run = common::bench(&[
        &url,
        "--mode",
        "idle",
        "-c",
        "2",
        "-d",
        "1.1s",
        "--reload-every",
        "300ms",
        "--idle-spread",
        "100ms",
    ])
    .await;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    // Ticks at 0.3, 0.6 and 0.9 s (the last whose spread ends by 1.1 s), no reloads.
    assert_eq!(run.report["reloads"]["count"], 0);
    assert_eq!(run.report["requests"], 2 * (1 + 3), "{}", run.stdout);
}

#[test]
fn idle_mode_rejects_what_does_not_apply() {
    for args in [
        &["http://127.0.0.1:9/", "--mode", "idle", "-n", "5"][..],
        &["http://127.0.0.1:9/", "--idle-spread", "100ms"][..],
        &[
            "http://127.0.0.1:9/",
            "--mode",
            "idle",
            "--idle-spread",
            "2s",
            "--reload-every",
            "1s",
        ][..],
    ] {
        let (code, stderr) = common::usage_error(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("idle"), "{args:?}: {stderr}");
    }
}
