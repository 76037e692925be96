//! The throughput baseline: the same axum handler served by plain hyper-util (as
//! `axum::serve` does it) or by baton, so that the cost of baton's serving path can be
//! measured against it in the same run.
//!
//! ```text
//! bench-server plain --listen 127.0.0.1:8080
//! bench-server plain-timeout --listen 127.0.0.1:8080
//! bench-server baton --listen 127.0.0.1:8080
//! ```
#![forbid(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use axum::Router;
use axum::routing::get;
use clap::{Parser, ValueEnum};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Serving {
    /// hyper-util's auto builder with TowerToHyperService, TCP_NODELAY: axum::serve's way.
    Plain,
    /// Plain, with hyper's own protection against slow clients switched on: a timer
    /// and a 30 s header-read timeout (baton's default), the fair baseline for a
    /// server that times out silent clients.
    PlainTimeout,
    /// baton::http::Server with its default settings.
    Baton,
}

/// The throughput baseline: serves `GET /` → `ok` through plain hyper-util (as
/// `axum::serve` does) or through baton, to measure baton's serving cost against it.
///
/// Drive it with `baton-bench http://127.0.0.1:8080/ ...`; stop it with Ctrl-C.
// The name and about are its own: the package's are baton-bench's.
#[derive(Debug, Parser)]
#[command(name = "bench-server", version)]
struct Args {
    /// Which serving path.
    #[arg(value_enum)]
    serving: Serving,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok\n" }))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::from(1)
        }
    }
}

/// `e` and its causes on one line, each once: baton's errors already end with their
/// cause (`bind unix:/x.sock: No such file or directory`), which `{:#}` repeated.
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(args: Args) -> anyhow::Result<()> {
    match args.serving {
        Serving::Plain | Serving::PlainTimeout => {
            let listener = tokio::net::TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("listen on {}", args.listen))?;
            eprintln!(
                "plain hyper-util listening on {} pid={}",
                listener.local_addr()?,
                std::process::id()
            );
            let mut builder = auto::Builder::new(TokioExecutor::new());
            if matches!(args.serving, Serving::PlainTimeout) {
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(30));
            }
            let app = app();
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = TowerToHyperService::new(app.clone());
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _ = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
        Serving::Baton => {
            let shutdown = baton::Shutdown::builder().build()?;
            let server = baton::http::Server::bind([args.listen.as_str()])?;
            eprintln!(
                "baton listening on {} pid={}",
                server
                    .local_addrs()
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                std::process::id()
            );
            server.run(app(), &shutdown).await?;
            Ok(())
        }
    }
}
