//! The admin page in a real headless browser (Debian's chromium, driven over the
//! DevTools protocol): the status renders with the token, no action works without it,
//! and the restart button restarts (the generation goes up, the page shows the outcome).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use support::{Demo, between, get};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "browser-admin-token-0123456789";

/// A headless chromium, killed on drop.
struct Browser {
    child: Child,
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium is installed (Debian's package chromium; .ci/run installs it)");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(ws) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(ws.to_owned());
                }
            }
        });
        let ws = rx
            .recv_timeout(support::WAIT)
            .expect("chromium's DevTools endpoint");
        // ws://127.0.0.1:PORT/devtools/browser/ID -> 127.0.0.1:PORT
        let devtools = between(&ws, "ws://", "/devtools").to_owned();
        Browser {
            child,
            devtools,
            _profile: profile,
        }
    }

    /// The DevTools websocket of the tab showing `url` (waits until it exists).
    async fn page(&self, url: &str) -> Page {
        let deadline = Instant::now() + support::WAIT;
        loop {
            if let Ok(resp) = get(&self.devtools, "/json/list").await {
                let list: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
                if let Some(ws) = list
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|t| {
                        t["type"] == "page" && t["url"].as_str().is_some_and(|u| u.starts_with(url))
                    })
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                {
                    let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
                    return Page { socket, id: 0 };
                }
            }
            assert!(Instant::now() < deadline, "chromium never showed {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Page {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    id: u64,
}

impl Page {
    /// Evaluates `js` (an expression, awaited if it is a promise) in the page; returns
    /// its value as a string.
    async fn eval(&mut self, js: &str) -> String {
        let deadline = Instant::now() + support::WAIT;
        loop {
            match self.eval_once(js, deadline).await {
                Ok(v) => return v,
                // The page was (re)loading: its context went away under the call.
                Err(e) => {
                    assert!(Instant::now() < deadline, "chromium: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn eval_once(&mut self, js: &str, deadline: Instant) -> Result<String, String> {
        self.id += 1;
        let msg = serde_json::json!({
            "id": self.id,
            "method": "Runtime.evaluate",
            "params": {"expression": js, "awaitPromise": true, "returnByValue": true},
        });
        self.socket
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, self.socket.next())
                .await
                .expect("an answer from chromium")
                .unwrap()
                .unwrap();
            let Message::Text(text) = msg else { continue };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["id"] == self.id {
                if !v["error"].is_null() {
                    return Err(v["error"].to_string());
                }
                let r = &v["result"]["result"];
                return Ok(r["value"]
                    .as_str()
                    .map_or_else(|| format!("no value: {v}"), str::to_owned));
            }
        }
    }
}

/// JS that waits (bounded) until `cond` is truthy, then gives `value`.
fn wait_for(cond: &str, value: &str) -> String {
    format!(
        "(async () => {{ for (let i = 0; i < 400; i++) {{ if ({cond}) return String({value}); \
         await new Promise(r => setTimeout(r, 50)); }} return 'timed out: ' + document.body.innerText; }})()"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_works_in_a_real_browser() {
    let (demo, admin) = Demo::start_admin(TOKEN);
    let url = format!("http://{admin}/debug/admin");
    let browser = tokio::task::block_in_place(|| Browser::open(&url));
    let mut page = browser.page(&url).await;
    let loaded = page
        .eval(&wait_for(
            "document.getElementById('auth')",
            "document.title",
        ))
        .await;
    assert_eq!(loaded, "baton admin");

    // No token: the status is refused and so is the restart button.
    let shown = page
        .eval(&format!(
            "document.querySelector('#auth button').click(); {}",
            wait_for(
                "document.getElementById('outcome').textContent",
                "document.getElementById('outcome').textContent"
            )
        ))
        .await;
    assert!(shown.starts_with("status: 401"), "{shown}");
    let shown = page
        .eval(&format!(
            "document.getElementById('restart').click(); {}",
            wait_for(
                "document.getElementById('outcome').textContent.startsWith('restart: ')",
                "document.getElementById('outcome').textContent"
            )
        ))
        .await;
    assert!(shown.starts_with("restart: 401"), "{shown}");
    assert_eq!(
        get(&demo.addr, "/pid").await.unwrap().body.trim(),
        demo.pid.to_string()
    );

    // With the token: the status renders.
    let table = page
        .eval(&format!(
            "document.getElementById('token').value = '{TOKEN}'; document.querySelector('#auth button').click(); {}",
            wait_for("document.getElementById('status-table')", "document.getElementById('status-table').innerText")
        ))
        .await;
    assert!(table.contains(&format!("PID\t{}", demo.pid)), "{table}");
    assert!(table.contains("Generation\t1"), "{table}");

    // The restart button restarts; the page shows the outcome, then generation 2.
    let shown = page
        .eval(&format!(
            "document.getElementById('restart').click(); {}",
            wait_for(
                "document.getElementById('outcome').textContent.startsWith('restart: 200')",
                "document.getElementById('outcome').textContent"
            )
        ))
        .await;
    assert!(shown.contains(r#""outcome":"ok""#), "{shown}");
    let new_pid: u32 = between(&shown, r#""new_pid":"#, ",").parse().unwrap();
    let table = page
        .eval(&wait_for(
            "document.getElementById('status-table') && document.getElementById('status-table').innerText.includes('Generation\\t2')",
            "document.getElementById('status-table').innerText",
        ))
        .await;
    assert!(table.contains(&format!("PID\t{new_pid}")), "{table}");
    support::wait_answered_by(&demo.addr, new_pid).await;
}
