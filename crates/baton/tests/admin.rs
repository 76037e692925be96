//! The admin endpoints with a real HTTP client: the token rules, every refusal changing
//! nothing, a restart from the admin listener, and `/metrics` parsed by a Prometheus
//! text-format parser with values matching what the test did.
#![allow(clippy::unwrap_used)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

use support::{Demo, between, get};

const TOKEN: &str = "s3cret-admin-token-0123456789";

struct Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: String,
}

/// One request on a new connection.
async fn call(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::copy_from_slice(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

const BEARER: (&str, &str) = ("authorization", "Bearer s3cret-admin-token-0123456789");

/// Requests without the token, with a wrong one, with it in a query string or a
/// cookie, a GET for an action, unknown actions, bad parameters and a huge body: each
/// gets its status, and none changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_get_their_status_and_change_nothing() {
    let (demo, admin) = Demo::start_admin(TOKEN);
    let query_token = format!("/debug/admin/restart?token={TOKEN}");
    let cookie = format!("token={TOKEN}");
    // (method, path, headers, body, expected status)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16);
    let cases: Vec<Case<'_>> = vec![
        ("POST", "/debug/admin/restart", vec![], vec![], 401),
        (
            "POST",
            "/debug/admin/restart",
            vec![("authorization", "Bearer wrong-token-wrong-token")],
            vec![],
            403,
        ),
        (
            "POST",
            "/debug/admin/restart",
            vec![("authorization", "Basic czNjcmV0")],
            vec![],
            401,
        ),
        ("POST", &query_token, vec![], vec![], 401),
        (
            "POST",
            "/debug/admin/shutdown",
            vec![("cookie", &cookie)],
            vec![],
            401,
        ),
        ("GET", "/debug/admin/status", vec![], vec![], 401),
        ("GET", "/metrics", vec![], vec![], 401),
        ("GET", "/debug/admin/restart", vec![BEARER], vec![], 405),
        ("GET", "/debug/admin/shutdown", vec![BEARER], vec![], 405),
        ("POST", "/debug/admin/status", vec![BEARER], vec![], 405),
        ("POST", "/debug/admin/reboot", vec![BEARER], vec![], 404),
        (
            "POST",
            "/debug/admin/shutdown?timeout=abc",
            vec![BEARER],
            vec![],
            400,
        ),
        (
            "POST",
            "/debug/admin/shutdown?timeout=-5s",
            vec![BEARER],
            vec![],
            400,
        ),
        (
            "POST",
            "/debug/admin/shutdown?timeout=99999h",
            vec![BEARER],
            vec![],
            400,
        ),
        (
            "POST",
            "/debug/admin/shutdown?when=now",
            vec![BEARER],
            vec![],
            400,
        ),
        (
            "POST",
            "/debug/admin/restart?timeout=1s",
            vec![BEARER],
            vec![],
            400,
        ),
        (
            "POST",
            "/debug/admin/restart",
            vec![BEARER, ("content-length", "2147483648")],
            vec![],
            413,
        ),
        (
            "POST",
            "/debug/admin/restart",
            vec![BEARER],
            vec![b'x'; 64 * 1024],
            413,
        ),
    ];
    for (method, path, headers, body, expect) in cases {
        // A declared length the body does not have: send the headers only.
        let declared_only = headers.iter().any(|(k, _)| *k == "content-length");
        let a = if declared_only {
            raw_status(&admin, method, path, &headers).await
        } else {
            call(&admin, method, path, &headers, &body).await.status
        };
        assert_eq!(a, expect, "{method} {path} {headers:?}");
    }
    let a = call(&admin, "POST", "/debug/admin/restart", &[], &[]).await;
    assert_eq!(a.headers.get("www-authenticate").unwrap(), "Bearer");
    let a = call(&admin, "GET", "/debug/admin/restart", &[BEARER], &[]).await;
    assert_eq!(a.headers.get("allow").unwrap(), "POST");
    // Nothing changed: the same process serves, generation 1, no restart attempted.
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        demo.pid.to_string()
    );
    let s = call(&admin, "GET", "/debug/admin/status", &[BEARER], &[]).await;
    assert_eq!(s.status, 200);
    assert!(s.body.contains(r#""generation":1"#), "{}", s.body);
    assert!(
        s.body
            .contains(r#""restarts":{"ok":0,"failed":{},"coalesced":0,"last":null}"#),
        "{}",
        s.body
    );
    assert!(s.body.contains(r#""phase":"Running""#), "{}", s.body);
}

/// Sends only a request head (for a declared body length the test does not send).
async fn raw_status(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

/// The page loads without the token (it holds no data); a restart by POST with the
/// token answers with the new generation, which then serves (and its admin listener
/// too: it was handed over with the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_from_the_admin_endpoint_reports_its_outcome() {
    let (demo, admin) = Demo::start_admin(TOKEN);
    let page = call(&admin, "GET", "/debug/admin", &[], &[]).await;
    assert_eq!(page.status, 200);
    assert!(
        page.headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.body.contains("Graceful restart") && !page.body.contains(TOKEN));

    let a = call(&admin, "POST", "/debug/admin/restart", &[BEARER], &[]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.contains(r#""outcome":"ok""#) && a.body.contains(r#""generation":2"#),
        "{}",
        a.body
    );
    let new_pid: u32 = between(&a.body, r#""new_pid":"#, ",").parse().unwrap();
    assert_ne!(new_pid, demo.pid);
    support::wait_answered_by(&demo.addr, new_pid).await;
    let s = call(&admin, "GET", "/debug/admin/status", &[BEARER], &[]).await;
    assert!(
        s.body.contains(&format!(r#""pid":{new_pid}"#)),
        "{}",
        s.body
    );
    assert!(s.body.contains(r#""generation":2"#), "{}", s.body);
    assert!(s.body.contains(r#"{"name":"admin""#), "{}", s.body);
}

/// `/metrics`, parsed as Prometheus text, counts what the test did: N requests on N new
/// connections to the app, plus the admin's own connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_done() {
    let (_demo, admin) = Demo::start_admin(TOKEN);
    let n = 7u64;
    for _ in 0..n {
        assert_eq!(get(&_demo.addr, "/").await.unwrap().status, 200);
    }
    let m = call(&admin, "GET", "/metrics", &[BEARER], &[]).await;
    assert_eq!(m.status, 200);
    let lines = m.body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {label:?} in\n{}", m.body));
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    // The scrape itself is the admin's one connection and request so far.
    assert_eq!(
        value("baton_connections_accepted_total", None),
        (n + 1) as f64
    );
    assert_eq!(value("baton_requests_total", None), (n + 1) as f64);
    assert_eq!(
        value("baton_requests_in_flight", None),
        1.0,
        "the scrape itself"
    );
    assert_eq!(
        value("baton_connections_open", Some(("state", "active"))),
        1.0
    );
    assert_eq!(value("baton_restarts_total", Some(("outcome", "ok"))), 0.0);
    assert_eq!(value("baton_generation", None), 1.0);
    assert_eq!(value("baton_phase", None), 0.0);
    assert_eq!(value("baton_connections_timed_out_total", None), 0.0);
    // Regression (new user): the total of restart seconds was a gauge; it only grows.
    assert!(
        m.body.contains("# TYPE baton_restart_seconds counter"),
        "{}",
        m.body
    );
    assert_eq!(value("baton_restart_seconds_total", None), 0.0);
    // OpenMetrics, which Prometheus scrapes (and the README now says so).
    assert!(
        m.headers.get("content-type").is_some_and(|v| v
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")),
        "{:?}",
        m.headers
    );
}

/// Bad input for the demo: an admin TCP listener without a token, a short token.
#[test]
fn admin_without_a_usable_token_is_refused() {
    let out = std::process::Command::new(support::hello_exe())
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env_remove("BATON_ADMIN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("need a token"), "{err}");
    let out = std::process::Command::new(support::hello_exe())
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .env("BATON_ADMIN_TOKEN", "short")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("at least 16 printable"), "{err}");
}

/// The counters of `/metrics` (`*_total`) as name (with labels) → value.
fn counters(body: &str) -> std::collections::BTreeMap<String, f64> {
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    scrape
        .samples
        .into_iter()
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v)
                if s.metric.ends_with("_total") =>
            {
                Some((format!("{}{:?}", s.metric, s.labels), v))
            }
            _ => None,
        })
        .collect()
}

/// Totals carried over the generation channel: across 20 restarts under load, no
/// counter of `/metrics` ever goes back, whichever generation answers the scrape, and
/// the last one counts the 20 restarts of the generations before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_totals_never_go_back_across_twenty_restarts_under_load() {
    let (demo, admin) = Demo::start_admin(TOKEN);
    let load = support::Load::start(&demo.addr, 2, true);
    let fresh = support::Load::start(&demo.addr, 1, false);
    let mut last = std::collections::BTreeMap::new();
    let mut scrapes = 0;
    let mut check = |body: &str, when: &str| {
        let now = counters(body);
        assert!(now.len() >= 5, "{body}");
        for (name, v) in &now {
            if let Some(before) = last.get(name) {
                assert!(v >= before, "{name} went back from {before} to {v} {when}");
            }
        }
        last = now;
        scrapes += 1;
    };
    let mut pid = demo.pid;
    for generation in 2..=21u32 {
        let m = call(&admin, "GET", "/metrics", &[BEARER], &[]).await;
        check(&m.body, &format!("before restart {generation}"));
        support::signal_pid(pid, "HUP");
        pid = demo.wait_ready(generation);
        let m = call(&admin, "GET", "/metrics", &[BEARER], &[]).await;
        check(&m.body, &format!("right after restart {generation}"));
    }
    let (a, b) = (load.stop().await, fresh.stop().await);
    assert!(
        a.failures.is_empty() && b.failures.is_empty(),
        "{:?} {:?}",
        a.failures,
        b.failures
    );
    let m = call(&admin, "GET", "/metrics", &[BEARER], &[]).await;
    check(&m.body, "at the end");
    let end = counters(&m.body);
    let restarts = end
        .iter()
        .find(|(k, _)| k.starts_with("baton_restarts_total") && k.contains("\"ok\""))
        .map(|(_, v)| *v);
    assert_eq!(restarts, Some(20.0), "{}", m.body);
    let requests = end
        .iter()
        .find(|(k, _)| k.starts_with("baton_requests_total"))
        .map(|(_, v)| *v)
        .unwrap();
    assert!(
        requests >= (a.ok + b.ok) as f64,
        "requests_total {requests} counts the clients' {} requests",
        a.ok + b.ok
    );
    assert_eq!(scrapes, 41);
}
