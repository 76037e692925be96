//! Time to a new generation: from each reload trigger to the first successful response
//! from a server PID not seen before it. The test server reports a PID that changes a
//! fixed time after `/reload` was requested, while the reload command (a request to
//! `/reload`) returns at once, like `kill -HUP {pid}` does.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;

/// The delay between `/reload` and the new "PID".
const SWITCH: Duration = Duration::from_millis(150);

/// `GET /` answers with `x-pid: <generation>` (from 1000 up); `GET /reload` makes the
/// generation go up by one `SWITCH` later; `GET /noop` changes nothing.
async fn generations_server() -> SocketAddr {
    let generation = Arc::new(AtomicU32::new(1000));
    let (g1, g2) = (Arc::clone(&generation), Arc::clone(&generation));
    let app = Router::new()
        .route(
            "/",
            get(
                move || async move { ([("x-pid", g1.load(Ordering::SeqCst).to_string())], "ok\n") },
            ),
        )
        .route(
            "/reload",
            get(move || async move {
                let g = Arc::clone(&g2);
                tokio::spawn(async move {
                    tokio::time::sleep(SWITCH).await;
                    g.fetch_add(1, Ordering::SeqCst);
                });
                "reloading\n"
            }),
        )
        .route("/noop", get(|| async { "nothing\n" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A reload command that requests `path` from the test server with baton-bench itself
/// (no curl needed) and returns as soon as it is answered.
fn reload_command(addr: SocketAddr, path: &str) -> String {
    format!(
        "{} http://{addr}{path} -n 1 -c 1 --quiet >/dev/null",
        env!("CARGO_BIN_EXE_baton-bench")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_from_each_trigger_to_a_new_pid_is_measured() {
    let addr = generations_server().await;
    let url = format!("http://{addr}/");
    let reload = reload_command(addr, "/reload");
    let run = common::bench(&[
        &url,
        "-c",
        "2",
        "-d",
        "3s",
        "--pid-header",
        "x-pid",
        "--reload",
        &reload,
        "--reload-every",
        "600ms",
        "--window",
        "100ms",
    ])
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    let reloads = &r["reloads"];
    // Triggers at 0.6, 1.2, 1.8 and 2.4 s (none later than 3 s - 100 ms).
    assert_eq!(reloads["count"], 4, "{reloads:#}");
    assert_eq!(reloads["failed_commands"], 0, "{reloads:#}");
    // Every trigger brought one new PID, and nothing else did.
    assert_eq!(reloads["triggers_without_new_pid"], 0, "{reloads:#}");
    assert_eq!(reloads["new_pids_after_trigger"], 4, "{reloads:#}");
    assert_eq!(r["pids_seen"], 5);
    let lat = &reloads["new_pid_latency_ms"];
    assert_eq!(lat["count"], 4, "{lat:#}");
    let (p50, p90, max) = (
        lat["p50"].as_f64().unwrap(),
        lat["p90"].as_f64().unwrap(),
        lat["max"].as_f64().unwrap(),
    );
    assert!(p50 <= p90 && p90 <= max, "{lat:#}");
    // Measured from the trigger: never less than the server's switch delay, even
    // though the command itself returned before the switch.
    for t in reloads["triggers"].as_array().unwrap() {
        let ms = t["new_pid_ms"].as_f64().unwrap();
        assert!(
            ms >= SWITCH.as_secs_f64() * 1000.0 && ms < 600.0,
            "{t:#} in {reloads:#}"
        );
    }
    assert!(
        run.stdout.contains("new PID") && run.stdout.contains("4 new PIDs first seen"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_without_a_new_pid_are_counted_and_no_pid_source_means_no_figures() {
    let addr = generations_server().await;
    let url = format!("http://{addr}/");
    // A reload command that changes nothing: every trigger is one without a new PID.
    let noop = reload_command(addr, "/noop");
    let run = common::bench(&[
        &url,
        "-c",
        "2",
        "-d",
        "1s",
        "--pid-header",
        "x-pid",
        "--reload",
        &noop,
        "--reload-every",
        "300ms",
        "--window",
        "100ms",
    ])
    .await;
    let reloads = &run.report["reloads"];
    assert_eq!(run.code, Some(0), "{}{}", run.stdout, run.stderr);
    assert_eq!(reloads["count"], 3, "{reloads:#}");
    assert_eq!(reloads["triggers_without_new_pid"], 3, "{reloads:#}");
    assert_eq!(reloads["new_pids_after_trigger"], 0, "{reloads:#}");
    assert_eq!(reloads["new_pid_latency_ms"]["count"], 0, "{reloads:#}");
    assert!(reloads["new_pid_latency_ms"]["p50"].is_null());
    for t in reloads["triggers"].as_array().unwrap() {
        assert!(t["new_pid_ms"].is_null(), "{t:#}");
        assert!(t.as_object().unwrap().contains_key("new_pid_ms"), "{t:#}");
    }

    // Without --pid-header or --pid-body the figures are left out.
    let reload = reload_command(addr, "/reload");
    let run = common::bench(&[
        &url,
        "-c",
        "1",
        "-d",
        "1s",
        "--reload",
        &reload,
        "--reload-every",
        "300ms",
        "--window",
        "100ms",
    ])
    .await;
    let reloads = run.report["reloads"].as_object().unwrap();
    assert_eq!(reloads["count"], 3);
    for key in [
        "new_pid_latency_ms",
        "triggers_without_new_pid",
        "new_pids_after_trigger",
    ] {
        assert!(!reloads.contains_key(key), "{key}: {reloads:#?}");
    }
    for t in reloads["triggers"].as_array().unwrap() {
        assert!(!t.as_object().unwrap().contains_key("new_pid_ms"), "{t:#}");
    }
    assert!(!run.stdout.contains("new PID"), "{}", run.stdout);
}
