//! # baton
//!
//! Graceful shutdown, zero-downtime restart and binary upgrade for hyper and axum
//! servers, built so that no request is lost: the listening sockets are the baton,
//! passed from one generation of the process to the next, and a request in flight is
//! never dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use baton::{Shutdown, http::Server};
//!
//! #[tokio::main]
//! async fn main() -> Result<std::process::ExitCode, baton::Error> {
//!     let shutdown = Shutdown::builder()
//!         .drain_timeout(Duration::from_secs(30))
//!         .on_shutdown("flush metrics", Duration::from_secs(5), || async {
//!             Ok::<_, std::io::Error>(())
//!         })
//!         .build()?;
//!     let app = Router::new().route("/", get(|| async { "hello" }));
//!     let report = Server::bind(["127.0.0.1:8080"])?.run(app, &shutdown).await?;
//!     Ok(report.exit_code().into())
//! }
//! ```
//!
//! # Restart
//!
//! On `SIGHUP` or `SIGUSR2` (see [`SignalMap`] and its [`Preset`]s), or a call of
//! [`Shutdown::restart`], the next generation starts from the executable as it is on
//! disk now, with the same arguments and environment and this process's listening
//! sockets (systemd's socket-activation protocol; [`Listener::bind`] takes them back by
//! name). Once it says it is ready, this one stops accepting, without emptying the
//! accept queue, drains as below, and [`Shutdown::run`] returns its report
//! ([`Report::handed_over_to`]). If the new generation fails, it is stopped and reaped
//! and this one serves on. [`Shutdown::full_restart`] drains first and then executes
//! the program anew in the same process (same PID, sockets kept open). Under systemd
//! the notify protocol is spoken (`READY=1`, `RELOADING=1`, `MAINPID=`, `STOPPING=1`).
//!
//! # Shutdown
//!
//! On `SIGTERM` or `SIGINT`, a call of [`Shutdown::trigger`] from code (a handler, say),
//! or a future given to [`ShutdownBuilder::trigger`]:
//!
//! - the listeners close (what already waits in their accept queue is still served);
//! - requests in flight finish; HTTP/1 responses carry `Connection: close`, so
//!   keep-alive clients move on without a race; HTTP/2 connections get a graceful
//!   GOAWAY; connections that stay idle are closed after a grace;
//! - long-lived responses and upgraded connections (WebSocket) see
//!   [`Shutdown::draining`] resolve and end themselves; they are counted and waited for;
//! - at the drain deadline, or on a shutdown signal again ("hammer"), what is still
//!   open is cut;
//! - the shutdown hooks run in order, each bounded by its own limit;
//! - [`Shutdown::run`] returns a [`Report`]: connections drained and forced, requests,
//!   times, hooks, and an exit code.
//!
//! # Platform-specific behavior
//!
//! Unix only, and Linux for restarts (`/proc` identifies older generations, abstract
//! notify sockets are accepted): signals, `shutdown(2)` for forced closes, `fork` and
//! `execve`, and Unix sockets are used throughout.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod activation;
mod addr;
mod channel;
#[doc(hidden)]
pub mod cli;
mod command;
mod error;
mod failure;
mod handoff;
mod hook;
mod listener;
mod notify;
mod origin;
mod pidfile;
mod report;
mod shutdown;
mod signal;
pub mod supervisor;
mod sync;
mod sys;
#[cfg(feature = "tls")]
mod tickets;
mod tracker;
mod trust;

#[cfg(feature = "http")]
pub mod http;

pub use addr::{IntoListenAddr, ListenAddr};
pub use error::Error;
pub use failure::{RestartFailure, Restarted};
pub use hook::{HookOutcome, HookReport};
pub use listener::{Listener, ListenerInfo};
pub use report::{Forced, Report};
pub use shutdown::{
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HOOK_TIMEOUT, DEFAULT_MAX_GENERATIONS, DEFAULT_PROBATION,
    DEFAULT_READY_TIMEOUT, DrainCause, LastRestart, RestartRequest, RestartStats, Shutdown,
    ShutdownBuilder,
};
pub use signal::{Action, Preset, Signal, SignalError, SignalMap};
pub use tracker::{ConnectionStats, Phase};

/// The README's Rust examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
