//! One connection: its tracked socket and the loop that drives hyper through the drain.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::tracker::{ConnHandle, ConnShared};

pin_project_lite::pin_project! {
    /// A socket registered with the tracker for as long as it is open, also after it
    /// was handed to an upgrade (WebSocket).
    #[derive(Debug)]
    pub(crate) struct TrackedIo<T> {
        // Declared first so that it is dropped first: it must deregister the descriptor
        // before `io` closes it (see `ConnHandle`).
        handle: ConnHandle,
        #[pin]
        io: T,
    }
}

impl<T: AsRawFd> TrackedIo<T> {
    pub(crate) fn new(io: T, register: impl FnOnce(RawFd) -> ConnHandle) -> Self {
        TrackedIo {
            handle: register(io.as_raw_fd()),
            io,
        }
    }

    pub(crate) fn handle(&self) -> &ConnHandle {
        &self.handle
    }
}

impl<T: AsyncRead> AsyncRead for TrackedIo<T> {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<T: AsyncWrite> AsyncWrite for TrackedIo<T> {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// How a connection's drive loop ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// hyper finished the connection (closed, or handed it to an upgrade).
    Done(Result<(), Box<dyn std::error::Error + Send + Sync>>),
    /// The drain was forced; the connection is dropped unfinished.
    Forced,
}

/// Serves one connection through the phases of a shutdown.
///
/// While running, hyper serves it. When the drain starts, an HTTP/2 connection gets
/// GOAWAY at once (hyper sends the two-step GOAWAY: announce, then the last stream id)
/// and its streams finish. An HTTP/1 connection is *not* closed at once: its client may
/// have the next request on the wire already. Its responses now carry
/// `Connection: close` (see `DrainFuture`), so a busy connection closes after its next
/// response; one that stays idle (or never sent a first request) for a whole
/// `idle_grace` is closed then.
pub(crate) async fn drive<C>(
    mut conn: Pin<&mut C>,
    graceful_shutdown: impl Fn(Pin<&mut C>),
    shared: &ConnShared,
    draining: impl Future<Output = ()>,
    forced: impl Future<Output = ()>,
    idle_grace: Duration,
) -> Ended
where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    tokio::pin!(draining, forced);
    tokio::select! {
        res = conn.as_mut() => return Ended::Done(res),
        () = &mut draining => {}
    }
    let mut closing = false;
    if shared.is_h2() {
        graceful_shutdown(conn.as_mut());
        closing = true;
    }
    let mut seen = shared.activity().0;
    loop {
        tokio::select! {
            res = conn.as_mut() => return Ended::Done(res),
            () = &mut forced => return Ended::Forced,
            () = tokio::time::sleep(idle_grace), if !closing => {
                let (requests, in_flight) = shared.activity();
                if !in_flight && requests == seen {
                    // Idle for a whole grace: no request is on its way. Close it.
                    graceful_shutdown(conn.as_mut());
                    closing = true;
                }
                seen = requests;
            }
        }
    }
}

/// After hyper finished and the connection future was dropped: if the socket is still
/// open, an upgrade holds it now (WebSocket); count it as upgraded.
pub(crate) fn note_upgrade(shared: &ConnShared, ended: &Ended) {
    if matches!(ended, Ended::Done(Ok(()))) && !shared.is_closed() {
        shared.mark_upgraded();
    }
}
