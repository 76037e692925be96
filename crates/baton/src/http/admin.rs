//! The admin endpoints (GoFrame's `/debug/admin`): a status page and JSON, the
//! actions restart, full restart and shutdown, and Prometheus metrics, on a listener of
//! their own, authorised by a bearer token.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::body::Incoming;
use tracing::info;

use super::Server;
use crate::addr::ListenAddr;
use crate::error::Error;
use crate::listener::Listener;
use crate::shutdown::Shutdown;

/// The largest request body the admin endpoints read; larger ones get 413.
const MAX_BODY: usize = 1024;
/// The shortest token accepted.
const MIN_TOKEN: usize = 16;

/// The admin endpoints of one [`Shutdown`] (GoFrame's `/debug/admin`), off unless
/// served. On a listener of their own:
///
/// | method and path | what |
/// |---|---|
/// | `GET /debug/admin` | the status page (HTML; it asks for the token and sends it itself) |
/// | `GET /debug/admin/status` | status as JSON: PID, generation, uptime, listeners, connections, restarts |
/// | `GET /metrics` | the counters in Prometheus' text format |
/// | `POST /debug/admin/restart` | a graceful restart; answers with the outcome |
/// | `POST /debug/admin/full-restart` | a full restart (drain, then the program anew) |
/// | `POST /debug/admin/shutdown[?timeout=30s]` | a graceful shutdown |
///
/// Everything but the page itself needs `Authorization: Bearer TOKEN`, never a cookie
/// or a query string: 401 without it, 403 with a wrong one. A GET for an action or a
/// POST for a page is 405; an unknown path 404; a bad parameter 400 (an unknown one
/// too, on every endpoint but the page); a body over 1 KiB 413. A refused request
/// changes nothing.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    token: Option<String>,
    shutdown: Shutdown,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("token", &self.inner.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl Admin {
    /// Admin endpoints for `shutdown`, authorised by `token` (at least 16 characters,
    /// printable ASCII: read it from a file or the environment, not a command line
    /// that `ps` shows).
    ///
    /// # Errors
    ///
    /// [`Error::Master`]-style message for a short or non-printable token.
    pub fn new(shutdown: &Shutdown, token: impl Into<String>) -> Result<Admin, Error> {
        let token = token.into();
        if token.len() < MIN_TOKEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Master(format!(
                "an admin token must be at least {MIN_TOKEN} printable ASCII characters without spaces"
            )));
        }
        Ok(Admin {
            inner: Arc::new(Inner {
                token: Some(token),
                shutdown: shutdown.clone(),
            }),
        })
    }

    /// Admin endpoints without a token: only for a Unix socket, whose file mode decides
    /// who may connect ([`Admin::serve`] refuses a TCP listener for it).
    pub fn unix_only(shutdown: &Shutdown) -> Admin {
        Admin {
            inner: Arc::new(Inner {
                token: None,
                shutdown: shutdown.clone(),
            }),
        }
    }

    /// Serves the endpoints on `listener` (registered with the coordinator like any
    /// server's: handed over at a restart, drained at the end).
    ///
    /// # Errors
    ///
    /// [`Error::Master`]-style message for a TCP listener without a token; as
    /// [`Server::serve`].
    pub fn serve(self, listener: Listener) -> Result<(), Error> {
        if self.inner.token.is_none() && matches!(listener.local_addr(), ListenAddr::Tcp(_)) {
            return Err(Error::Master(
                "the admin endpoints on a TCP listener need a token (Admin::new)".into(),
            ));
        }
        let shutdown = self.inner.shutdown.clone();
        info!(
            pid = std::process::id(),
            "admin endpoints on [{}]/debug/admin",
            listener.local_addr()
        );
        Server::new([listener]).serve(self, &shutdown)
    }

    async fn handle(self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let (get, post) = (req.method() == Method::GET, req.method() == Method::POST);
        let action = match path.as_str() {
            "/debug/admin" | "/debug/admin/" => {
                return if get { page() } else { not_allowed("GET") };
            }
            "/debug/admin/status" | "/metrics" => {
                if !get {
                    return not_allowed("GET");
                }
                None
            }
            "/debug/admin/restart" | "/debug/admin/full-restart" | "/debug/admin/shutdown" => {
                if !post {
                    return not_allowed("POST");
                }
                Some(path.trim_start_matches("/debug/admin/").to_owned())
            }
            _ => return text(StatusCode::NOT_FOUND, "no such admin endpoint\n"),
        };
        if let Some(refused) = self.authorise(&req) {
            return refused;
        }
        // Bounded body: the actions take none; a huge one is refused unread.
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the admin endpoints take at most 1 KiB of body\n",
            );
        }
        let query = req.uri().query().unwrap_or("").to_owned();
        if Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
            .is_err()
        {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                "the admin endpoints take at most 1 KiB of body\n",
            );
        }
        // The GET endpoints take no parameter: one given is refused with 400, as the
        // actions refuse one they do not know.
        if action.is_none()
            && let Some(refused) = unknown_parameter(&query, path.rsplit('/').next().unwrap_or(""))
        {
            return text(StatusCode::BAD_REQUEST, &refused);
        }
        match action.as_deref() {
            None if path == "/metrics" => {
                self.inner.shutdown.totals_settled().await;
                metrics(&self.inner.shutdown)
            }
            None => {
                self.inner.shutdown.totals_settled().await;
                json(StatusCode::OK, &status_json(&self.inner.shutdown))
            }
            Some(action) => self.act(action, &query).await,
        }
    }

    /// `None` if the request carries the token (compared in constant time).
    fn authorise(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let token = self.inner.token.as_ref()?;
        let given = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                let mut resp = text(
                    StatusCode::UNAUTHORIZED,
                    "send the admin token as `Authorization: Bearer TOKEN`\n",
                );
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                Some(resp)
            }
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => None,
            Some(_) => Some(text(StatusCode::FORBIDDEN, "wrong admin token\n")),
        }
    }

    async fn act(&self, action: &str, query: &str) -> Response<Full<Bytes>> {
        let shutdown = &self.inner.shutdown;
        let pid = std::process::id();
        let mut timeout = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("timeout", v)) if action == "shutdown" => {
                    match crate::error::parse_duration(v, Duration::from_millis(1)) {
                        Ok(d) => timeout = Some(d),
                        Err(e) => return text(StatusCode::BAD_REQUEST, &format!("timeout: {e}\n")),
                    }
                }
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown parameter `{pair}` for {action}\n"),
                    );
                }
            }
        }
        info!(pid, action, "admin: {action} requested");
        match action {
            "restart" => match shutdown.restart().await {
                Ok(r) => json(
                    StatusCode::OK,
                    &format!(
                        r#"{{"outcome":"ok","new_pid":{},"generation":{},"spawn_ms":{},"ready_ms":{},"coalesced":{}}}"#,
                        r.pid,
                        r.generation,
                        r.spawn.as_millis(),
                        r.ready.as_millis(),
                        r.coalesced
                    ),
                ),
                Err(e) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        r#"{{"outcome":"failed","reason":{}}}"#,
                        json_str(&e.to_string())
                    ),
                ),
            },
            "full-restart" => {
                shutdown.full_restart();
                json(
                    StatusCode::ACCEPTED,
                    r#"{"outcome":"started","what":"full restart: drain, then the program anew in this process"}"#,
                )
            }
            _ => {
                match timeout {
                    Some(t) => {
                        if let Err(e) = shutdown.trigger_within(t) {
                            return text(StatusCode::BAD_REQUEST, &format!("timeout: {e}\n"));
                        }
                    }
                    None => shutdown.trigger(),
                }
                json(
                    StatusCode::ACCEPTED,
                    r#"{"outcome":"started","what":"graceful shutdown"}"#,
                )
            }
        }
    }
}

impl tower_service::Service<Request<Incoming>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// For an endpoint without parameters: the 400 message naming the first one in
/// `query`, if any.
fn unknown_parameter(query: &str, endpoint: &str) -> Option<String> {
    query
        .split('&')
        .find(|p| !p.is_empty())
        .map(|pair| format!("unknown parameter `{pair}` for {endpoint}\n"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length is not secret (the minimum is documented); the bytes are.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, http::HeaderValue::from_static("no-store"));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.to_owned())
}

fn json(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, "application/json", format!("{body}\n"))
}

fn not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut resp = text(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("use {allow} for this endpoint\n"),
    );
    resp.headers_mut()
        .insert(ALLOW, http::HeaderValue::from_static(allow));
    resp
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn status_json(shutdown: &Shutdown) -> String {
    let c = shutdown.connections_all_generations();
    let r = shutdown.restart_stats_all_generations();
    let listeners: Vec<String> = shutdown
        .listeners()
        .iter()
        .map(|l| {
            let addr = l.addr().map_or_else(|| "?".to_owned(), ToString::to_string);
            format!(
                r#"{{"name":{},"addr":{}}}"#,
                json_str(l.name()),
                json_str(&addr)
            )
        })
        .collect();
    let failed: Vec<String> = r
        .failed
        .iter()
        .map(|(k, v)| format!("{}:{v}", json_str(k)))
        .collect();
    let last = r.last.as_ref().map_or_else(
        || "null".to_owned(),
        |last| {
            format!(
                r#"{{"outcome":"{}","duration_ms":{},"detail":{}}}"#,
                if last.ok { "ok" } else { "failed" },
                last.took.as_millis(),
                json_str(&last.outcome)
            )
        },
    );
    format!(
        concat!(
            r#"{{"pid":{},"generation":{},"uptime_s":{:.3},"phase":"{:?}","listeners":[{}],"#,
            r#""connections":{{"accepted":{},"open":{},"new":{},"active":{},"idle":{},"upgraded":{},"closed":{},"forced":{}}},"#,
            r#""requests":{{"total":{},"in_flight":{}}},"#,
            r#""restarts":{{"ok":{},"failed":{{{}}},"coalesced":{},"last":{}}}}}"#
        ),
        std::process::id(),
        shutdown.generation(),
        shutdown.uptime().as_secs_f64(),
        shutdown.phase(),
        listeners.join(","),
        c.accepted,
        c.open,
        c.new,
        c.active,
        c.idle,
        c.upgraded,
        c.closed,
        c.forced,
        c.requests,
        c.requests_in_flight,
        r.ok,
        failed.join(","),
        r.coalesced,
        last
    )
}

fn metrics(shutdown: &Shutdown) -> Response<Full<Bytes>> {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    let c = shutdown.connections_all_generations();
    let r = shutdown.restart_stats_all_generations();
    let mut reg = Registry::with_prefix("baton");
    let counter = |v: u64| {
        let m = Counter::<u64>::default();
        m.inc_by(v);
        m
    };
    let gauge = |v: i64| {
        let m = Gauge::<i64>::default();
        m.set(v);
        m
    };
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    reg.register(
        "connections_accepted",
        "Connections accepted",
        counter(c.accepted),
    );
    reg.register(
        "connections_closed",
        "Connections closed",
        counter(c.closed),
    );
    reg.register(
        "connections_forced",
        "Connections cut by a forced close (drain deadline or hammer)",
        counter(c.forced),
    );
    reg.register(
        "connections_timed_out",
        "Connections closed for sending no request in time or staying idle too long",
        counter(c.timed_out),
    );
    let open: Family<Vec<(String, String)>, Gauge> = Family::default();
    for (state, n) in [
        ("new", c.new),
        ("active", c.active),
        ("idle", c.idle),
        ("upgraded", c.upgraded),
    ] {
        open.get_or_create(&vec![("state".to_owned(), state.to_owned())])
            .set(as_i64(n));
    }
    reg.register("connections_open", "Open connections by state", open);
    reg.register("requests", "Requests received", counter(c.requests));
    reg.register(
        "requests_in_flight",
        "Requests whose response has not finished",
        gauge(i64::try_from(c.requests_in_flight).unwrap_or(i64::MAX)),
    );
    let restarts: Family<Vec<(String, String)>, Counter> = Family::default();
    restarts
        .get_or_create(&vec![("outcome".to_owned(), "ok".to_owned())])
        .inc_by(r.ok);
    for (reason, n) in &r.failed {
        restarts
            .get_or_create(&vec![
                ("outcome".to_owned(), "failed".to_owned()),
                ("reason".to_owned(), (*reason).to_owned()),
            ])
            .inc_by(*n);
    }
    reg.register(
        "restarts",
        "Graceful restarts attempted, by this generation and the ones before it",
        restarts,
    );
    reg.register(
        "restarts_coalesced",
        "Restart requests folded into one in progress",
        counter(r.coalesced),
    );
    // A counter (it only grows), named `baton_restart_seconds_total` by the encoder.
    let seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
    seconds.inc_by(r.seconds_total);
    reg.register(
        "restart_seconds",
        "Seconds spent in restarts (trigger to ready or failure), summed",
        seconds,
    );
    reg.register(
        "generation",
        "This process's generation (1 for the first)",
        gauge(i64::from(shutdown.generation())),
    );
    let phase = gauge(match shutdown.phase() {
        crate::tracker::Phase::Running => 0,
        crate::tracker::Phase::DelayingDrain => 1,
        crate::tracker::Phase::Draining => 2,
        crate::tracker::Phase::Forcing => 3,
        _ => 4,
    });
    reg.register(
        "phase",
        "0 running, 1 drain delay, 2 draining, 3 forcing, 4 finalizing or done",
        phase,
    );
    let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    uptime.set(shutdown.uptime().as_secs_f64());
    reg.register(
        "uptime_seconds",
        "Seconds since this generation started",
        uptime,
    );
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot encode the metrics\n",
        );
    }
    response(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        out,
    )
}

fn page() -> Response<Full<Bytes>> {
    response(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_owned())
}

/// The status page: no data in it; its script asks for the token (kept in this tab's
/// sessionStorage, never a cookie) and sends it as a bearer token.
const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>baton admin</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
button{margin-right:.5em}#outcome{margin-top:1em;font-weight:bold}.err{color:#b00}
</style></head><body>
<h1>baton admin</h1>
<form id="auth"><label>Token <input id="token" type="password" autocomplete="off"></label>
<button type="submit">Show status</button></form>
<div id="status"></div>
<p><button id="restart" data-action="restart">Graceful restart</button>
<button id="full-restart" data-action="full-restart">Full restart</button>
<button id="shutdown" data-action="shutdown">Shutdown</button></p>
<div id="outcome"></div>
<script>
const $ = (id) => document.getElementById(id);
$("token").value = sessionStorage.getItem("baton-token") || "";
function headers() { return { "Authorization": "Bearer " + $("token").value }; }
function show(msg, ok) { $("outcome").textContent = msg; $("outcome").className = ok ? "" : "err"; }
let last = null;
async function refresh() {
  sessionStorage.setItem("baton-token", $("token").value);
  const r = await fetch("/debug/admin/status", { headers: headers() });
  if (!r.ok) { show("status: " + r.status + " " + (await r.text()), false); return; }
  const s = await r.json();
  last = s;
  const rows = [["PID", s.pid], ["Generation", s.generation], ["Uptime (s)", s.uptime_s], ["Phase", s.phase],
    ["Listeners", s.listeners.map(l => l.name + " " + l.addr).join(", ")],
    ["Connections", Object.entries(s.connections).map(([k, v]) => k + " " + v).join(", ")],
    ["Requests", s.requests.total + " (" + s.requests.in_flight + " in flight)"],
    ["Restarts", "ok " + s.restarts.ok + ", failed " + JSON.stringify(s.restarts.failed) +
      (s.restarts.last ? "; last: " + s.restarts.last.outcome + " in " + s.restarts.last.duration_ms + " ms" : "")]];
  $("status").innerHTML = "<table id='status-table'>" + rows.map(([k, v]) =>
    "<tr><th>" + k + "</th><td>" + String(v).replace(/[<&]/g, c => c == "<" ? "&lt;" : "&amp;") + "</td></tr>").join("") + "</table>";
}
$("auth").addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
for (const b of document.querySelectorAll("button[data-action]")) {
  b.addEventListener("click", async () => {
    show(b.dataset.action + " ...", true);
    try {
      const r = await fetch("/debug/admin/" + b.dataset.action, { method: "POST", headers: headers() });
      const body = await r.text();
      show(b.dataset.action + ": " + r.status + " " + body, r.ok);
      if (r.ok && b.dataset.action == "restart") {
        // Until the new generation answers (a kept-alive connection may still reach
        // the old one while it drains).
        const want = JSON.parse(body).new_pid;
        for (let i = 0; i < 40; i++) {
          await refresh();
          if (last && last.pid == want) break;
          await new Promise(res => setTimeout(res, 250));
        }
      }
    } catch (e) { show(b.dataset.action + ": " + e, false); }
  });
}
if ($("token").value) refresh();
</script></body></html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    /// `/metrics?x=1` answered 200 where the actions answer an unknown parameter with
    /// 400 (issue 27): the GET endpoints refuse any, named.
    #[test]
    fn endpoints_without_parameters_name_the_one_given() {
        assert_eq!(unknown_parameter("", "metrics"), None);
        assert_eq!(unknown_parameter("&&", "metrics"), None);
        assert_eq!(
            unknown_parameter("x=1", "metrics").as_deref(),
            Some("unknown parameter `x=1` for metrics\n")
        );
        assert_eq!(
            unknown_parameter("&verbose&x=1", "status").as_deref(),
            Some("unknown parameter `verbose` for status\n")
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd"), r#""a\"b\\c\u000ad""#);
    }
}
