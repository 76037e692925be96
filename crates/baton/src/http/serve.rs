//! Serving one connection: its task (registered with the tracker, holding its slot),
//! the TLS handshake, telling HTTP/2 from HTTP/1, and hyper through the drain, with the
//! moves to the next generation and to the parking lot on the way.

use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

#[cfg(feature = "tls")]
use super::Tls;
use super::conn::{self, ConnIo, TrackedIo};
use super::handover;
use super::slots::Slot;
use super::{Ctx, HttpBody, HttpService, service};
use crate::channel::Proto;
use crate::tracker::{ConnShared, History, ParkedConn, Phase, TrackerInner, conn_reached};

/// How a connection's task starts.
pub(super) enum Start {
    /// Accepted by this generation.
    Accepted,
    /// Received from the previous generation: what it knew of its first bytes, the
    /// bytes read and not served, and what the connection carries on.
    TakenOver {
        proto: Proto,
        bytes: Bytes,
        history: History,
    },
    /// Parked here, and served again: its place in the totals, its slot of the
    /// connection limit, and its clocks.
    Unparked {
        conn: ParkedConn,
        slot: Slot,
        history: History,
    },
}

/// What the previous generation knew of a connection it passed on.
type Handed = (Proto, Bytes);

/// The task of one connection: registered with the tracker, holding its slot of the
/// connection limit until it ends or is parked.
pub(super) fn connection_task<IO, S, B>(
    io: IO,
    ctx: &Arc<Ctx<S>>,
    listener: usize,
    start: Start,
) -> impl Future<Output = ()> + Send + use<IO, S, B>
where
    IO: ConnIo,
    S: HttpService<B>,
    B: HttpBody,
{
    let tracker = ctx.shutdown.tracker();
    let limits = ctx.limits;
    let (slot, io, handed) = match start {
        Start::Accepted => (
            ctx.slots.take(listener),
            TrackedIo::new(io, |fd| tracker.register_with(fd, limits)),
            None,
        ),
        Start::TakenOver {
            proto,
            bytes,
            history,
        } => (
            ctx.slots.take_promised(listener),
            TrackedIo::new(io, |fd| tracker.register_taken_over(fd, limits, history)),
            Some((proto, bytes)),
        ),
        Start::Unparked {
            conn,
            slot,
            history,
        } => (
            slot,
            TrackedIo::new(io, |fd| conn.unpark(fd, limits, history)),
            Some((Proto::Http1, Bytes::new())),
        ),
    };
    let shared = Arc::clone(io.handle().shared());
    let tracker = Arc::clone(tracker.inner());
    let ctx = Arc::clone(ctx);
    async move {
        let mut slot = slot;
        #[cfg(feature = "tls")]
        if let Some(tls) = &ctx.tls {
            // Boxed: the TLS stream is twice the size of the task a plain connection
            // needs, and tokio moves that task several times per connection (a larger
            // task also moved hyper's read buffer into reallocations that copy). The
            // plain path pays nothing for TLS being possible.
            Box::pin(serve_tls(io, tls, &ctx, &tracker, &shared)).await;
            return;
        }
        // On the heap: serving is most of what a connection's task holds (hyper's
        // connection first), and tokio copies the task, whole, as it spawns and first
        // polls it; a task past the allocator's small-size cache also costs more to
        // allocate and free. Boxed, the task is a few hundred bytes, and this is
        // allocated once where it stays (see docs/BENCHMARKS.md, "serving cost").
        let (mut io, mut handed) = (io, handed);
        // Out of hyper to be parked (idle long enough, see `Server::park_idle_after`):
        // the task ends, the socket waits in the lot.
        while let Some((mut back, buffered)) = Box::pin(serve_connection(
            io, &ctx, &tracker, &shared, listener, handed,
        ))
        .await
        {
            if buffered.is_empty()
                && let Some(lot) = &ctx.lot
            {
                match lot.park(back, slot, listener) {
                    Ok(()) => return,
                    Err(given_back) => (back, slot) = given_back,
                }
            }
            // Not parked (bytes of a next request came, or the drain started): a new
            // hyper connection serves on from where the last one stopped.
            (io, handed) = (back, Some((Proto::Http1, Bytes::from(buffered))));
        }
        drop(slot);
    }
}

/// The TLS handshake (in the connection's task, not the accept loop: a slow handshake
/// holds up no one), then HTTP over it.
#[cfg(feature = "tls")]
async fn serve_tls<IO, S, B>(
    io: TrackedIo<IO>,
    tls: &Tls,
    ctx: &Ctx<S>,
    tracker: &Arc<TrackerInner>,
    shared: &Arc<ConnShared>,
) where
    IO: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let forced = conn_reached(tracker, shared, Phase::Forcing);
    let handshake = tokio::time::timeout(tls.handshake_timeout(), tls.acceptor().accept(io));
    let io = tokio::select! {
        res = handshake => match res {
            Ok(Ok(io)) => io,
            Ok(Err(e)) => {
                debug!(error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!("TLS handshake timed out after {:?}", tls.handshake_timeout());
                return;
            }
        },
        () = forced => return,
    };
    // Never parked: its session state lives in rustls's buffers.
    let _ = serve_connection(io, ctx, tracker, shared, 0, None).await;
}

/// Serves HTTP on one connection (plain, or TLS once the handshake is done) until it
/// ends, drains, moves to the next generation or is forced. The first bytes tell
/// HTTP/2 (its preface) from HTTP/1, unless the previous generation knew already.
pub(super) async fn serve_connection<IO, S, B>(
    mut io: IO,
    ctx: &Ctx<S>,
    tracker: &Arc<TrackerInner>,
    shared: &Arc<ConnShared>,
    listener: usize,
    handed: Option<Handed>,
) -> Option<(IO, Vec<u8>)>
where
    IO: AsyncRead + AsyncWrite + conn::Movable + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let pre = match handed {
        Some((Proto::Http1, pre)) => pre,
        handed => {
            let mut preface = match &handed {
                Some((_, bytes)) => conn::Preface::with(bytes),
                None => conn::Preface::default(),
            };
            match read_preface(&mut io, &mut preface, ctx, tracker, shared, listener).await {
                Some(true) => {
                    serve_h2(
                        io,
                        Bytes::copy_from_slice(preface.bytes()),
                        ctx,
                        tracker,
                        shared,
                    )
                    .await;
                    return None;
                }
                Some(false) => Bytes::copy_from_slice(preface.bytes()),
                None => return None,
            }
        }
    };
    serve_h1(conn::Rewind::new(io, pre), ctx, tracker, shared, listener).await
}

/// Reads the first bytes of a connection until they tell its protocol (`Some(true)`
/// for HTTP/2). `None`: the connection ended, was forced, moved to the next generation,
/// or stayed silent through a whole idle grace of a drain.
async fn read_preface<IO, S>(
    io: &mut IO,
    preface: &mut conn::Preface,
    ctx: &Ctx<S>,
    tracker: &Arc<TrackerInner>,
    shared: &Arc<ConnShared>,
    listener: usize,
) -> Option<bool>
where
    IO: AsyncRead + AsyncWrite + conn::Movable + Unpin,
{
    let draining = conn_reached(tracker, shared, Phase::Draining);
    let forced = conn_reached(tracker, shared, Phase::Forcing);
    tokio::pin!(draining, forced);
    let until_drain = std::future::poll_fn(|cx| {
        if let Poll::Ready(res) = preface.poll_read(io, cx) {
            return Poll::Ready(Some(res));
        }
        draining.as_mut().poll(cx).map(|()| None)
    });
    match until_drain.await {
        Some(Ok(Some(h2))) => return Some(h2),
        Some(Ok(None)) => return None,
        Some(Err(e)) => {
            debug!(error = %e, "connection failed before its first request");
            return None;
        }
        None => {}
    }
    // The drain started before the first request: move to the next generation with
    // what was read of it, once a slot is kept for it there; if the request comes
    // first, serve it here (it moves after its response). Else wait a grace for it.
    if let Some(credit) = handover::credit(ctx, shared, listener) {
        let permit = tokio::select! {
            biased;
            res = std::future::poll_fn(|cx| preface.poll_read(io, cx)) => return res.ok().flatten(),
            () = &mut forced => {
                shared.mark_forced();
                return None;
            }
            permit = credit.acquire_owned() => permit,
        };
        // Without a permit, the next generation is gone: drain here.
        if let Ok(permit) = permit
            && handover::hand_over(
                io.socket(),
                shared,
                Proto::Unknown,
                preface.bytes(),
                ctx,
                listener,
                permit,
            )
            .await
        {
            return None;
        }
    }
    let mut seen = shared.activity().reads;
    loop {
        tokio::select! {
            biased;
            res = std::future::poll_fn(|cx| preface.poll_read(io, cx)) => return res.ok().flatten(),
            () = &mut forced => {
                shared.mark_forced();
                return None;
            }
            () = tokio::time::sleep(ctx.idle_grace) => {
                let now = shared.activity().reads;
                if now == seen {
                    return None;
                }
                seen = now;
            }
        }
    }
}

/// HTTP/2: hyper serves it until the drain, which sends GOAWAY.
async fn serve_h2<IO, S, B>(
    io: IO,
    pre: Bytes,
    ctx: &Ctx<S>,
    tracker: &Arc<TrackerInner>,
    shared: &Arc<ConnShared>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    // Not marked HTTP/2 before its first stream: one that opened just before the
    // drain gets a grace to send it (a GOAWAY before it would cancel it), as an idle
    // connection does.
    let service = service::DrainService::new(ctx.service.clone(), Arc::clone(shared));
    let draining = conn_reached(tracker, shared, Phase::Draining);
    let forced = conn_reached(tracker, shared, Phase::Forcing);
    let mut conn = Box::pin(
        ctx.http2
            .serve_connection(TokioIo::new(conn::Rewind::new(io, pre)), service),
    );
    let ended = conn::drive(
        conn.as_mut(),
        |c| c.graceful_shutdown(),
        shared,
        draining,
        forced,
        ctx.idle_grace,
        || None,
    )
    .await;
    if let conn::Ended::Done(Err(e)) = ended {
        debug!(error = %e, "connection ended with an error");
    }
}

/// HTTP/1 with upgrades (WebSocket); at a restart it moves to the next generation
/// between two requests, if it can (see [`Server::hand_over`]).
async fn serve_h1<IO, S, B>(
    mut io: conn::Rewind<IO>,
    ctx: &Ctx<S>,
    tracker: &Arc<TrackerInner>,
    shared: &Arc<ConnShared>,
    listener: usize,
) -> Option<(IO, Vec<u8>)>
where
    IO: AsyncRead + AsyncWrite + conn::Movable + Send + Sync + Unpin + 'static,
    S: HttpService<B>,
    B: HttpBody,
{
    let mut may_move = true;
    loop {
        let service = service::DrainService::new(ctx.service.clone(), Arc::clone(shared));
        let draining = conn_reached(tracker, shared, Phase::Draining);
        let forced = conn_reached(tracker, shared, Phase::Forcing);
        // Inline, in the box of the connection's serving (which a parked connection
        // frees, buffers and all).
        let mut conn = ctx
            .http1
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let moves = || {
            if may_move {
                handover::credit(ctx, shared, listener)
            } else {
                None
            }
        };
        let ended = conn::drive(
            Pin::new(&mut conn),
            |c| c.graceful_shutdown(),
            shared,
            draining,
            forced,
            ctx.idle_grace,
            moves,
        )
        .await;
        let permit = match ended {
            conn::Ended::Detached(permit) => permit,
            ended => {
                drop(conn);
                conn::note_upgrade(shared, &ended);
                if let conn::Ended::Done(Err(e)) = ended {
                    debug!(error = %e, "connection ended with an error");
                }
                return None;
            }
        };
        // In a block: what is left of hyper's connection (its read buffer, the service)
        // is freed here.
        let (inner, buffered) = {
            let parts = conn.into_parts()?;
            let (inner, unread) = parts.io.into_inner().into_parts();
            // What hyper read first, then what it had not read yet of what came before.
            let mut buffered = parts.read_buf.to_vec();
            buffered.extend_from_slice(unread.as_deref().unwrap_or_default());
            (inner, buffered)
        };
        if tracker.phase() < Phase::Draining {
            // Parked (idle long enough): the connection's task keeps the bare socket.
            return Some((inner, buffered));
        }
        // Parked just as the drain started: no permit yet; served again, it waits for
        // one (or serves on here) like any connection.
        let Some(permit) = permit else {
            io = conn::Rewind::new(inner, Bytes::from(buffered));
            continue;
        };
        if Box::pin(handover::hand_over(
            inner.socket(),
            shared,
            Proto::Http1,
            &buffered,
            ctx,
            listener,
            permit,
        ))
        .await
        {
            shared.mark_handed_over();
            return None;
        }
        // It stays: served again from where hyper stopped, to drain as usual.
        may_move = false;
        io = conn::Rewind::new(inner, Bytes::from(buffered));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{DEFAULT_IDLE_GRACE, slots};
    use crate::shutdown::Shutdown;
    use hyper::server::conn::{http1, http2};
    use hyper_util::rt::TokioExecutor;

    /// The task spawned per connection is small whatever the listener could be (TLS
    /// included): serving, hyper's connection first, is boxed; the task holds the
    /// socket only while it is parked. tokio copies the task as it spawns and first
    /// polls it, and a task past the allocator's small-size cache (1 KiB with tokio's
    /// header) costs more to allocate and free: both measurably cost every new
    /// connection (see docs/BENCHMARKS.md, "serving cost"). With the TLS path inline it
    /// was 4.5 KiB; with hyper's connection alone boxed, 1.2 KiB (release builds).
    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn a_connection_task_is_small() {
        let shutdown = Shutdown::builder().build().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let ctx = Arc::new(Ctx {
            http1: http1::Builder::new(),
            http2: http2::Builder::new(TokioExecutor::new()),
            service: app,
            shutdown,
            idle_grace: DEFAULT_IDLE_GRACE,
            limits: crate::tracker::Limits::default(),
            names: vec!["http".into()],
            slots: slots::Slots::new(16, 1, false),
            tls: None,
            lot: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (io, _) = accepted.unwrap();
        let task = connection_task(io, &ctx, 0, Start::Accepted);
        let size = std::mem::size_of_val(&task);
        let plain = {
            let tracker = Arc::clone(ctx.shutdown.tracker().inner());
            let (other, _) = tokio::join!(
                tokio::net::TcpStream::connect(listener.local_addr().unwrap()),
                listener.accept()
            );
            let io = TrackedIo::new(other.unwrap(), |fd| {
                ctx.shutdown.tracker().register_with(fd, ctx.limits)
            });
            let shared = Arc::clone(io.handle().shared());
            let fut = serve_connection(io, &ctx, &tracker, &shared, 0, None);
            std::mem::size_of_val(&fut)
        };
        drop((task, client));
        println!("a connection's task: {size} bytes; serving a plain connection: {plain}");
        // 320 bytes in a release build, a little more in a debug one.
        assert!(
            size <= 640,
            "a connection's task is {size} bytes; serving a plain connection needs {plain}"
        );
    }
}
