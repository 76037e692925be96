//! The hand-over of open connections between generations: what this generation sends
//! to the next one at its drain, and how it serves what the previous one sent.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use hyper::body::Bytes;
use tracing::{debug, warn};

use super::conn::ConnIo;
use super::serve::{self, Start};
use super::{Ctx, HttpBody, HttpService};
use crate::channel::{Message, Proto};
use crate::tracker::{ConnShared, History};

/// Serves the connections the previous generation passes to this server's listeners
/// (`tcp`: whether each is a TCP listener).
pub(super) fn taker<S, B>(ctx: &Arc<Ctx<S>>, tcp: Vec<bool>) -> crate::shutdown::Sink
where
    S: HttpService<B>,
    B: HttpBody,
{
    let ctx = Arc::clone(ctx);
    Arc::new(move |listener, fd, proto, history, buffered| {
        let Some(index) = ctx.names.iter().position(|n| n == listener) else {
            return;
        };
        let start = Start::TakenOver {
            proto,
            bytes: Bytes::from(buffered),
            history,
        };
        // Socket options (`TCP_NODELAY`) travel with the socket.
        let spawned = if tcp[index] {
            spawn_taken::<tokio::net::TcpStream, S, B>(fd, &ctx, index, start)
        } else {
            spawn_taken::<tokio::net::UnixStream, S, B>(fd, &ctx, index, start)
        };
        if let Err(e) = spawned {
            warn!(listener, error = %e, "cannot serve a connection of the previous generation: closed");
        }
    })
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

/// Sends the connection to the next generation, if it takes this listener's
/// connections, with what it carries on (`shared`'s requests and clocks); `true` once
/// sent (it is the next generation's then: this one closes its descriptor). `false`
/// leaves it here, to drain as usual.
pub(super) async fn hand_over<S>(
    socket: Option<BorrowedFd<'_>>,
    shared: &ConnShared,
    proto: Proto,
    buffered: &[u8],
    ctx: &Ctx<S>,
    listener: usize,
) -> bool {
    let name = &ctx.names[listener];
    let (Some(successor), Some(socket)) = (ctx.shutdown.successor(), socket) else {
        return false;
    };
    if !successor.takes(name) || !Message::fits(name, buffered.len()) {
        return false;
    }
    let history: History = shared.history(tokio::time::Instant::now(), !buffered.is_empty());
    let message = Message::Conn {
        listener: name.clone(),
        proto,
        history,
        buffered: buffered.to_vec(),
    };
    match successor.channel.send(&message, &[socket]).await {
        Ok(()) => true,
        Err(e) => {
            debug!(error = %e, "cannot pass a connection to the next generation; it drains here");
            false
        }
    }
}
