//! Serving what the previous generation sends at its drain: each connection it passes
//! is served here as if accepted, with what it carried (its first bytes, its requests
//! and clocks); slots are kept for what may still come, and credit sent for them.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use hyper::body::Bytes;
use tracing::warn;

use super::conn::ConnIo;
use super::serve::{self, Start};
use super::{Ctx, HttpBody, HttpService};
use crate::channel::Proto;
use crate::tracker::History;

/// A server's part in the hand-over (see `shutdown::Mover`): serves what the previous
/// generation sends to its listeners (`tcp`: whether each is a TCP listener), keeps
/// slots for what may still come, and says how many of its own may move on.
pub(super) struct Link<S, B> {
    ctx: Arc<Ctx<S>>,
    tcp: Vec<bool>,
    body: std::marker::PhantomData<fn() -> B>,
}

impl<S, B> Link<S, B>
where
    S: HttpService<B>,
    B: HttpBody,
{
    /// Starts the server's part: `Link` for the coordinator, and a task that sends the
    /// credit the server's slots promise to the previous generation.
    pub(super) fn start(ctx: &Arc<Ctx<S>>, tcp: Vec<bool>) -> Arc<Link<S, B>> {
        let (slots, shutdown, names) = (
            Arc::clone(&ctx.slots),
            ctx.shutdown.clone(),
            ctx.names.clone(),
        );
        tokio::spawn(async move {
            loop {
                slots.to_grant.notified().await;
                for (listener, n) in slots.grant() {
                    let n = u32::try_from(n).unwrap_or(u32::MAX);
                    shutdown.send_room(&names[listener], n).await;
                }
            }
        });
        Arc::new(Link {
            ctx: Arc::clone(ctx),
            tcp,
            body: std::marker::PhantomData,
        })
    }

    fn index(&self, listener: &str) -> Option<usize> {
        self.ctx.names.iter().position(|n| n == listener)
    }
}

impl<S, B> crate::shutdown::Mover for Link<S, B>
where
    S: HttpService<B>,
    B: HttpBody,
{
    fn listeners(&self) -> &[String] {
        &self.ctx.names
    }

    fn take(&self, listener: &str, fd: OwnedFd, proto: Proto, history: History, buffered: Vec<u8>) {
        let Some(index) = self.index(listener) else {
            return;
        };
        let start = Start::TakenOver {
            proto,
            bytes: Bytes::from(buffered),
            history,
        };
        // Socket options (`TCP_NODELAY`) travel with the socket.
        let spawned = if self.tcp[index] {
            spawn_taken::<tokio::net::TcpStream, S, B>(fd, &self.ctx, index, start)
        } else {
            spawn_taken::<tokio::net::UnixStream, S, B>(fd, &self.ctx, index, start)
        };
        if let Err(e) = spawned {
            warn!(listener, error = %e, "cannot serve a connection of the previous generation: closed");
        }
    }

    fn coming(&self, listener: &str, count: u32) {
        if let Some(index) = self.index(listener) {
            self.ctx.slots.coming(index, count as usize);
        }
    }

    fn nothing_more_coming(&self) {
        self.ctx.slots.nothing_more_coming();
    }

    fn open(&self, listener: &str) -> u32 {
        self.index(listener).map_or(0, |i| {
            u32::try_from(self.ctx.slots.open_of(i)).unwrap_or(u32::MAX)
        })
    }
}

fn spawn_taken<IO, S, B>(
    fd: OwnedFd,
    ctx: &Arc<Ctx<S>>,
    listener: usize,
    start: Start,
) -> std::io::Result<()>
where
    IO: ConnIo,
    S: HttpService<B>,
    B: HttpBody,
{
    // Its status flags are the previous generation's (the same open file): make sure.
    crate::sys::set_nonblocking(std::os::fd::AsFd::as_fd(&fd))?;
    let io = IO::from_fd(fd)?;
    tokio::spawn(serve::connection_task(io, ctx, listener, start));
    Ok(())
}
