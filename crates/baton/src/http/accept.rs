//! The accept loops: one per listener, generic over its kind so the connection type is
//! known statically (no dispatch on every read and write).

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::conn::ConnIo;
use super::{Ctx, HttpBody, HttpService, serve};
use crate::addr::ListenAddr;
use crate::tracker::Phase;

/// After an accept error caused by a resource limit (too many open files, no memory),
/// how long to wait before accepting again. The connection that could not be accepted
/// stays in the queue, so retrying at once would fail again at once: a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// The most connections taken from the accept queue when a listener closes for good.
const SWEEP_LIMIT: usize = 65_536;

/// A listener kind. Accept loops are generic over it so the connection type is known
/// statically (no dispatch on every read and write).
pub(super) trait Accept: Send + 'static {
    type Io: ConnIo;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>>;
    /// Takes what is left in the kernel's accept queue, without waiting, and closes
    /// the listener.
    fn sweep(self) -> io::Result<Vec<Self::Io>>;
}

pub(super) struct Tcp {
    pub(super) listener: tokio::net::TcpListener,
    /// Set `TCP_NODELAY` on accepted connections.
    pub(super) nodelay: bool,
}

pub(super) struct Unix {
    pub(super) listener: tokio::net::UnixListener,
}

impl Accept for Tcp {
    type Io = tokio::net::TcpStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.listener.poll_accept(cx).map_ok(|(stream, _)| {
            if self.nodelay {
                // Best effort: a connection reset meanwhile fails here and is seen later.
                let _ = stream.set_nodelay(true);
            }
            stream
        })
    }

    fn sweep(self) -> io::Result<Vec<Self::Io>> {
        let std = self.listener.into_std()?;
        sweep(|| {
            let (s, _) = std.accept()?;
            s.set_nonblocking(true)?;
            if self.nodelay {
                let _ = s.set_nodelay(true);
            }
            tokio::net::TcpStream::from_std(s)
        })
    }
}

impl Accept for Unix {
    type Io = tokio::net::UnixStream;

    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Io>> {
        self.listener.poll_accept(cx).map_ok(|(stream, _)| stream)
    }

    fn sweep(self) -> io::Result<Vec<Self::Io>> {
        let std = self.listener.into_std()?;
        sweep(|| {
            let (s, _) = std.accept()?;
            s.set_nonblocking(true)?;
            tokio::net::UnixStream::from_std(s)
        })
    }
}

fn sweep<T>(mut accept: impl FnMut() -> io::Result<T>) -> io::Result<Vec<T>> {
    let mut taken = Vec::new();
    while taken.len() < SWEEP_LIMIT {
        match accept() {
            Ok(io) => taken.push(io),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => return if taken.is_empty() { Err(e) } else { Ok(taken) },
        }
    }
    Ok(taken)
}

/// Errors that concern one connection (it was reset before we took it), not the
/// listener: accept the next one at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    ) || matches!(e.raw_os_error(), Some(libc::EPROTO | libc::EPERM))
}

pub(super) async fn accept_loop<A: Accept, S, B>(
    listener: A,
    addr: &ListenAddr,
    ctx: &Arc<Ctx<S>>,
    index: usize,
) where
    S: HttpService<B>,
    B: HttpBody,
{
    let pid = std::process::id();
    let draining = ctx.shutdown.tracker().reached(Phase::Draining);
    tokio::pin!(draining);
    let mut last_complaint: Option<Instant> = None;
    let tracker = ctx.shutdown.tracker();
    let mut paused = tracker.paused();
    loop {
        // A cheap check first: under a steady stream of connections `accept` is always
        // ready and the `draining` future below would never be polled.
        if tracker.phase() >= Phase::Draining {
            break;
        }
        // Paused (the probation after a restart: the new generation accepts, this one
        // stands by with its listener): wait to resume, or for the drain.
        if tracker.is_paused() {
            tokio::select! {
                biased;
                () = &mut draining => break,
                _ = paused.wait_for(|p| !*p) => continue,
            }
        }
        // At the connection limit, stop accepting: clients wait in the kernel's queue.
        tokio::select! {
            biased;
            () = ctx.slots.free() => {}
            () = &mut draining => break,
        }
        // A slot freed by a connection that moved to the next generation must not let
        // this one accept from the queue it leaves to that generation (seen at the
        // limit: one accepted after the drain started found no slot there and waited
        // for the deadline).
        if tracker.phase() >= Phase::Draining {
            break;
        }
        let accepted = tokio::select! {
            biased;
            // A connection that arrives while paused stays in the queue for the new
            // generation (one atomic load per poll).
            res = std::future::poll_fn(|cx| {
                if tracker.is_paused() {
                    return Poll::Ready(None);
                }
                listener.poll_accept(cx).map(Some)
            }) => match res {
                Some(res) => res,
                None => continue,
            },
            () = &mut draining => break,
        };
        match accepted {
            Ok(io) => spawn_connection(io, ctx, index),
            Err(e) if is_connection_error(&e) => {
                debug!(pid, error = %e, "accept on {addr}: connection failed early");
            }
            Err(e) => {
                // Out of descriptors or memory, or something stranger: never exit the
                // loop (the server would stop serving for good) and never spin.
                if last_complaint.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    warn!(pid, error = %e, "accept on {addr} failed; retrying every {ACCEPT_BACKOFF:?}");
                    last_complaint = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    // The drain began. At a hand-over, leave the accept queue to the next generation,
    // which accepts from the same socket: closing our descriptor does not close it.
    if !tracker.sweeps() {
        drop(listener);
        info!(
            pid,
            "http server stopped accepting on [{addr}]; the next generation serves it"
        );
        return;
    }
    // A plain shutdown: take what completed its handshake already (those clients are
    // waiting for an answer), then close the listener: new connections are refused.
    match listener.sweep() {
        Ok(taken) => {
            let n = taken.len();
            for io in taken {
                // Already accepted by the kernel: served past the limit rather than cut.
                spawn_connection(io, ctx, index);
            }
            info!(pid, queued = n, "http server stopped listening on [{addr}]");
        }
        Err(e) => warn!(pid, error = %e, "closing listener {addr}"),
    }
}

fn spawn_connection<IO, S, B>(io: IO, ctx: &Arc<Ctx<S>>, listener: usize)
where
    IO: ConnIo,
    S: HttpService<B>,
    B: HttpBody,
{
    tokio::spawn(serve::connection_task(
        io,
        ctx,
        listener,
        serve::Start::Accepted,
    ));
}
