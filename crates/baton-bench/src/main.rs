//! `baton-bench`: the reload verifier. HTTP load with reload triggers; every request is
//! recorded and classified; the report says how many failed, how, and when.
#![forbid(unsafe_code)]

mod echo;
mod load;
mod outcome;
mod plot;
mod report;
mod streams;
mod trigger;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{CommandFactory, Parser};
use hyper::header::HeaderName;
use tokio::time::Instant;

use crate::load::{Http, LoadConfig, Mode, PidFrom, Shared, Target};

/// The reload verifier: sends HTTP requests back to back while a reload command runs
/// every so often, records every request, and reports how many failed, how and when.
///
/// Nothing is retried: a request that was written and did not get a complete response
/// is a failure (only an HTTP/2 request that the server said it did not process, by
/// GOAWAY or REFUSED_STREAM, is sent again). Exit status: 0 when the gate passes, 1
/// when it does not: more than --max-failures failed, a mismatched response in echo
/// mode (one that is not its request's, whatever --max-failures allows), or a reload
/// that was asked for and not made (a reload command that failed or could not run,
/// none at all with --reload, fewer than --reloads); 2 for a bad command line, 3 when
/// the run could not be made.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// The URL(s) to request (http://, or https:// with --tls-ca); workers are spread
    /// over them.
    #[arg(required = true, value_name = "URL")]
    urls: Vec<String>,

    /// Concurrent workers (each with its own connection).
    #[arg(short, long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,

    /// How long to run.
    #[arg(short, long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Stop after this many requests instead of after --duration.
    #[arg(short = 'n', long)]
    requests: Option<u64>,

    /// keep-alive: reuse connections; new-conn: a new connection per request; idle: one
    /// connection per worker, idle between reload triggers, one request per worker after
    /// each trigger (see --idle-spread); echo: one raw HTTP/1.1 connection per worker
    /// with pipelined, split and idle requests to the URL's path + ID (`/` means
    /// `/echo/`: the demo's /echo/{ID}), every response checked against its request:
    /// `mismatched` when it is another's, `lost` when the connection ends under it.
    #[arg(long, value_enum, default_value = "keep-alive")]
    mode: Mode,

    /// Idle mode: each worker sends its request at a uniformly random moment in
    /// [trigger, trigger + DUR) (default 500ms, or --reload-every if shorter; at most
    /// --reload-every). Without --reload, a tick every --reload-every stands for the
    /// trigger (no command is run).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    idle_spread: Option<Duration>,

    /// Echo mode: about one batch in four follows an idle pause, uniformly random in
    /// [0, DUR) (0s: no pauses).
    #[arg(long, value_name = "DUR", value_parser = humantime::parse_duration)]
    echo_idle: Option<Duration>,

    /// HTTP version: 1 (HTTP/1.1) or 2 (h2c, prior knowledge).
    #[arg(long, default_value = "1", value_parser = ["1", "2"])]
    http: String,

    /// HTTP/2 only: requests each worker keeps in flight on its one connection
    /// (keep-alive mode). A stream the server refuses (GOAWAY, REFUSED_STREAM) is sent
    /// again; one it accepted and did not answer is a failure.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    streams: u32,

    /// Per-request timeout (connect included).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    /// Client threads (default: the number of CPUs).
    #[arg(long)]
    threads: Option<usize>,

    /// Shell command that triggers one reload; {pid} and {pidfile} are substituted.
    #[arg(long, value_name = "CMD")]
    reload: Option<String>,

    /// Time between reload triggers.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reload_every: Duration,

    /// Number of reload triggers (default: as many as fit in the run).
    #[arg(long)]
    reloads: Option<u32>,

    /// The value of {pid}.
    #[arg(long)]
    pid: Option<u32>,

    /// The value of {pidfile}; {pid} is then read from it at each trigger.
    #[arg(long)]
    pidfile: Option<PathBuf>,

    /// The server's PID is in this response header.
    #[arg(long, value_name = "NAME", conflicts_with = "pid_body")]
    pid_header: Option<String>,

    /// The response body is the server's PID (e.g. the demo's /pid).
    #[arg(long)]
    pid_body: bool,

    /// Report this process's CPU time per request (a steady server's cost).
    #[arg(long, value_name = "PID")]
    server_pid: Option<u32>,

    /// A reload window lasts from its trigger to trigger + this (in idle mode, at least
    /// --idle-spread: every request of a trigger falls in its spread).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    window: Duration,

    /// For https:// URLs: the certificate(s) to trust, PEM (a CA, or the server's own
    /// self-signed certificate). ALPN offers h2 with --http 2, http/1.1 otherwise;
    /// every new connection does a full handshake (no session resumption).
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<PathBuf>,

    /// Write the machine-readable report here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Write the timeline picture (SVG) here.
    #[arg(long, value_name = "PATH.svg")]
    plot: Option<PathBuf>,

    /// Name of the run in the report.
    #[arg(long)]
    label: Option<String>,

    /// Exit 1 when more requests than this fail.
    #[arg(long, default_value_t = 0)]
    max_failures: u64,

    /// No progress lines on stderr.
    #[arg(short, long)]
    quiet: bool,
}

/// The default of --idle-spread.
const IDLE_SPREAD: Duration = Duration::from_millis(500);

/// The default of --echo-idle.
const ECHO_IDLE: Duration = Duration::from_millis(300);

/// Combinations clap cannot check by itself; a usage error (exit 2) for each.
fn check_usage(args: &Args) {
    let usage = |msg: &str| {
        Args::command()
            .error(clap::error::ErrorKind::ArgumentConflict, msg)
            .exit()
    };
    if args.streams > 1 && args.http != "2" {
        usage(
            "--streams N (N > 1) needs --http 2: HTTP/1.1 has one request in flight per connection",
        );
    }
    if args.streams > 1 && args.mode != Mode::KeepAlive {
        usage("--streams N (N > 1) needs --mode keep-alive");
    }
    if args.idle_spread.is_some() && args.mode != Mode::Idle {
        usage("--idle-spread needs --mode idle");
    }
    if args.echo_idle.is_some() && args.mode != Mode::Echo {
        usage("--echo-idle needs --mode echo");
    }
    if args.mode == Mode::Echo {
        if args.http != "1" {
            usage("--mode echo speaks HTTP/1.1 (its requests are pipelined): no --http 2");
        }
        if args.pid_header.is_some() || args.pid_body {
            usage("--mode echo reads the PID from the echo body: no --pid-header or --pid-body");
        }
        if args.urls.iter().any(|u| !u.starts_with("http://")) {
            usage("--mode echo speaks plain HTTP/1.1 on raw connections: http:// URLs only");
        }
    }
    if args.mode == Mode::Idle {
        if args.requests.is_some() {
            usage("--mode idle runs for --duration; --requests does not apply");
        }
        if args.idle_spread.is_some_and(|d| d > args.reload_every) {
            usage("--idle-spread must not be longer than --reload-every");
        }
    }
    for url in &args.urls {
        if let Err(msg) = check_url(url, args.tls_ca.is_some()) {
            usage(&msg);
        }
    }
    if args.reload.is_none() && (args.reloads.is_some() || args.pidfile.is_some()) {
        usage("--reloads and --pidfile need --reload CMD");
    }
    if args.reload_every.is_zero() || args.window.is_zero() || args.timeout.is_zero() {
        usage("--reload-every, --window and --timeout must be greater than zero");
    }
}

/// A URL's syntax: http:// or https:// (with --tls-ca), and a host.
fn check_url(url: &str, tls_ca: bool) -> Result<(), String> {
    if !url.contains("://") {
        if url.starts_with("http:") || url.starts_with("https:") {
            return Err(format!(
                "`{url}` is not a URL; expected http://HOST:PORT/PATH"
            ));
        }
        return Err(format!(
            "`{url}` has no scheme: write `http://{url}` (or https:// with --tls-ca)"
        ));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL ({e}); expected e.g. http://127.0.0.1:8080/"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") if tls_ca => {}
        Some("https") => {
            return Err(format!(
                "`{url}` is HTTPS: give --tls-ca FILE, the PEM certificate(s) to trust for it"
            ));
        }
        _ => return Err(format!("`{url}`: expected an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "`{url}` has no host; expected e.g. http://127.0.0.1:8080/"
        ));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    check_usage(&args);
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(run(args, threads)),
        Err(e) => Err(anyhow!(e).context("cannot start the async runtime")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}

async fn parse_target(
    url: &str,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<Target> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("`{url}` is not a URL; expected e.g. http://127.0.0.1:8080/"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => bail!("`{url}`: expected an http:// or https:// URL"),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("`{url}` has no host"))?
        .clone();
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .with_context(|| format!("cannot resolve {}", authority.host()))?
        .next()
        .ok_or_else(|| anyhow!("{} resolves to no address", authority.host()))?;
    let tls = if https {
        let connector = tls.ok_or_else(|| {
            anyhow!("`{url}` is HTTPS: give --tls-ca FILE, the PEM certificate(s) to trust for it")
        })?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.to_owned())
            .with_context(|| format!("`{host}` is not a TLS server name"))?;
        Some((connector.clone(), name))
    } else {
        None
    };
    Ok(Target {
        addr,
        authority: authority.to_string(),
        path: uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        tls,
    })
}

/// A TLS client trusting the certificates in `ca` (PEM), offering the ALPN protocol of
/// the HTTP version asked for.
fn tls_connector(ca: &std::path::Path, http2: bool) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("{}: malformed PEM", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{}: not a usable certificate", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{}: no certificate in it", ca.display());
    }
    let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![if http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    // Every new connection pays for a full handshake, as a new client does.
    config.resumption = tokio_rustls::rustls::client::Resumption::disabled();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc reports in USER_HZ, which is 100 on Linux whatever the kernel's HZ.
    Some(ticks as f64 / 100.0)
}

async fn run(args: Args, threads: usize) -> anyhow::Result<ExitCode> {
    let tls = args
        .tls_ca
        .as_deref()
        .map(|ca| tls_connector(ca, args.http == "2"))
        .transpose()?;
    let mut targets = Vec::new();
    for url in &args.urls {
        targets.push(parse_target(url, tls.as_ref()).await?);
    }
    let pid_from = match (&args.pid_header, args.pid_body) {
        (Some(name), _) => PidFrom::Header(
            HeaderName::try_from(name.as_str())
                .with_context(|| format!("`{name}` is not a header name"))?,
        ),
        (None, true) => PidFrom::Body,
        (None, false) => PidFrom::None,
    };
    let http = if args.http == "2" {
        Http::Two
    } else {
        Http::One
    };
    let idle_spread = (args.mode == Mode::Idle).then(|| {
        args.idle_spread
            .unwrap_or(IDLE_SPREAD.min(args.reload_every))
    });
    // Echo mode reads the PID from each echo.
    let pid_source = !matches!(pid_from, PidFrom::None) || args.mode == Mode::Echo;
    let echo_idle = (args.mode == Mode::Echo).then(|| args.echo_idle.unwrap_or(ECHO_IDLE));
    let cfg = Arc::new(LoadConfig {
        targets,
        mode: args.mode,
        http,
        timeout: args.timeout,
        pid_from,
        max_requests: args.requests,
        streams: args.streams as usize,
        idle_spread: idle_spread.unwrap_or_default(),
        echo_idle: echo_idle.unwrap_or_default(),
    });
    let label = args.label.clone().unwrap_or_else(|| {
        format!(
            "{} {}{}{}",
            args.urls.join(" "),
            args.mode.name(),
            if args.streams > 1 {
                format!(" x {} streams", args.streams)
            } else {
                String::new()
            },
            args.reload
                .as_ref()
                .map(|r| format!(", reload `{r}`"))
                .unwrap_or_default()
        )
    });

    let client_cpu_before = cpu_seconds("self");
    let server_pid = args.server_pid.map(|p| p.to_string());
    let server_cpu_before = server_pid.as_deref().and_then(cpu_seconds);
    if let (Some(pid), None) = (&server_pid, server_cpu_before) {
        bail!("--server-pid {pid}: no such process (cannot read /proc/{pid}/stat)");
    }

    let started = Instant::now();
    let shared = Arc::new(Shared::new(started));
    let workers: Vec<_> = (0..args.concurrency as usize)
        .map(|i| {
            let (cfg, shared) = (Arc::clone(&cfg), Arc::clone(&shared));
            tokio::spawn(async move {
                if cfg.mode == Mode::Echo {
                    echo::worker(&cfg, &shared, i).await
                } else if cfg.mode != Mode::Idle && cfg.http == Http::Two && cfg.streams > 1 {
                    streams::worker(cfg, shared, i).await
                } else {
                    load::worker(cfg, shared, i).await
                }
            })
        })
        .collect();
    let triggers = args.reload.as_ref().map(|command| {
        tokio::spawn(trigger::run(
            trigger::TriggerConfig {
                command: command.clone(),
                every: args.reload_every,
                count: args.reloads,
                pid: args.pid,
                pidfile: args.pidfile.clone(),
                quiet: args.quiet,
                // No trigger whose window (or, in idle mode, whose spread of requests)
                // would reach past the end of the run.
                last_start: args.requests.is_none().then(|| {
                    started
                        + args
                            .duration
                            .saturating_sub(args.window.max(cfg.idle_spread))
                }),
            },
            Arc::clone(&shared),
        ))
    });
    // Idle mode without --reload: a tick every --reload-every wakes the workers instead,
    // while the spread of their requests still fits in the run.
    let ticker = (args.mode == Mode::Idle && args.reload.is_none()).then(|| {
        let shared = Arc::clone(&shared);
        let (every, last) = (
            args.reload_every,
            started + args.duration.saturating_sub(cfg.idle_spread),
        );
        tokio::spawn(async move {
            let mut next = started + every;
            while next <= last {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => shared.tick(next),
                    () = shared.stopped() => break,
                }
                next += every;
            }
        })
    });

    let progress = (!args.quiet).then(|| {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tick.tick().await;
                eprintln!(
                    "[{:>4.0}s] {} requests, {} failed",
                    started.elapsed().as_secs_f64(),
                    shared.done.load(Ordering::Relaxed),
                    shared.failed.load(Ordering::Relaxed),
                );
            }
        })
    });
    // With --requests the workers stop by themselves; otherwise at the end of the
    // duration (requests in flight then still complete, bounded by --timeout).
    if args.requests.is_none() {
        tokio::time::sleep_until(started + args.duration).await;
        shared.finish();
    }
    let mut records = Vec::new();
    for w in workers {
        records.extend(w.await.context("a worker panicked")?);
    }
    // With --requests, the reload task stops with the last worker.
    shared.finish();
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(t) = ticker {
        t.abort();
    }
    let triggers = match triggers {
        Some(t) => t.await.context("the reload task panicked")?,
        None => Vec::new(),
    };
    let client_cpu_cores = client_cpu_before
        .zip(cpu_seconds("self"))
        .map(|(a, b)| (b - a) / elapsed);
    let server_cpu_s = server_cpu_before
        .zip(server_pid.as_deref().and_then(cpu_seconds))
        .map(|(a, b)| b - a);
    let first_failures = std::mem::take(
        &mut *shared
            .first_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner()),
    );
    let mut report = report::build(
        &records,
        report::RunFacts {
            label,
            client: report::Client {
                tool: "baton-bench",
                mode: args.mode,
                http: if http == Http::Two { "2" } else { "1.1" },
                concurrency: args.concurrency as usize,
                threads,
                urls: args.urls.clone(),
                timeout_s: args.timeout.as_secs_f64(),
                streams: args.streams as usize,
                idle_spread_s: idle_spread.map(|d| d.as_secs_f64()),
                echo_idle_s: echo_idle.map(|d| d.as_secs_f64()),
            },
            duration_s: elapsed,
            triggers,
            // In idle mode every request falls in its trigger's spread: that is its
            // window, when longer than --window.
            window_s: args
                .window
                .max(idle_spread.unwrap_or_default())
                .as_secs_f64(),
            pid_source,
            replaced_connections: shared.replaced.load(Ordering::Relaxed),
            connections_opened: shared.opened.load(Ordering::Relaxed),
            resent_requests: shared.resent.load(Ordering::Relaxed),
            client_cpu_cores,
            server_cpu_s,
            first_failures,
            failure_lines: std::mem::take(
                &mut *shared
                    .failure_lines
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            ),
            echo: (args.mode == Mode::Echo).then(|| {
                let c = &shared.echo;
                report::Echo {
                    batches: c.batches.load(Ordering::Relaxed),
                    pipelined: c.pipelined.load(Ordering::Relaxed),
                    split: c.split.load(Ordering::Relaxed),
                    idle_pauses: c.idle.load(Ordering::Relaxed),
                    close_responses: c.close_responses.load(Ordering::Relaxed),
                }
            }),
        },
    );
    report.gate = report::gate(
        &report,
        report::GateRules {
            max_failures: args.max_failures,
            reload: args.reload.is_some(),
            reloads: args.reloads,
        },
    );
    print!("{}", report::text(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("serialize the report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::svg(&report))
            .with_context(|| format!("write {}", path.display()))?;
    }
    for why in &report.gate.failed_because {
        eprintln!("FAILED: {why}");
    }
    Ok(if report.gate.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
