//! GoFrame's multi-server example: two servers, three ports, one [`Shutdown`].
//!
//! ```text
//! cargo run --release --example multi -- \
//!     --https 127.0.0.1:8443 --tls-cert cert.pem --tls-key key.pem \
//!     --http 127.0.0.1:8080 --unix /tmp/multi.sock
//! curl -k https://127.0.0.1:8443/        # server "site", over TLS (HTTP/2 or 1.1)
//! curl http://127.0.0.1:8080/            # server "site", plain
//! curl --unix-socket /tmp/multi.sock http://x/   # server "api"
//! kill -HUP <pid>     # every listener is handed to the next generation together
//! kill -TERM <pid>    # both servers drain together; one report
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use axum::Router;
use axum::routing::get;
use baton::http::{Server, Tls};
use baton::{ListenAddr, Listener, Shutdown};
use clap::Parser;

/// Two servers ("site" on HTTPS and HTTP, "api" on a Unix socket) under one
/// coordinator: restarted and drained together.
#[derive(Debug, Parser)]
struct Args {
    /// The HTTPS address of server "site".
    #[arg(long, value_name = "HOST:PORT")]
    https: ListenAddr,
    /// The certificate chain for --https (PEM).
    #[arg(long, value_name = "PATH")]
    tls_cert: PathBuf,
    /// Its private key (PEM).
    #[arg(long, value_name = "PATH")]
    tls_key: PathBuf,
    /// The plain HTTP address of server "site".
    #[arg(long, value_name = "HOST:PORT")]
    http: ListenAddr,
    /// The Unix socket of server "api".
    #[arg(long, value_name = "PATH")]
    unix: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn app(name: &'static str) -> Router {
    Router::new()
        .route(
            "/",
            get(move || async move { format!("hello from {name}\n") }),
        )
        .route(
            "/pid",
            get(|| async { format!("{}\n", std::process::id()) }),
        )
}

async fn run(args: Args) -> Result<u8, baton::Error> {
    let shutdown = Shutdown::builder().build()?;
    // Named listeners, all bound before any serves: each generation takes each socket
    // back by its name.
    let https = Listener::bind("site-tls", &args.https)?;
    let http = Listener::bind("site-plain", &args.http)?;
    let unix = Listener::bind("api-unix", &ListenAddr::Unix(args.unix.clone()))?;
    let tls = Tls::from_pem_files(&args.tls_cert, &args.tls_key)?;
    // Server "site": its HTTPS port and its plain port (a `Server` per kind).
    Server::new([https])
        .tls(tls)
        .serve(app("site"), &shutdown)?;
    Server::new([http]).serve(app("site"), &shutdown)?;
    // Server "api".
    Server::new([unix]).serve(app("api"), &shutdown)?;
    let report = shutdown.run().await?;
    Ok(report.exit_code())
}
