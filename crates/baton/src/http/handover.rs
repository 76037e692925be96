//! The hand-over of open connections to the next generation: the credit a connection
//! needs there, and the message that sends it (`serve.rs` calls both at a request
//! boundary). What the previous generation sends is served by `takeover.rs`.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::Ctx;
use crate::channel::{Message, Proto};
use crate::tracker::{ConnShared, History};

/// The credit with the next generation for this connection, if it moves there (plain
/// HTTP/1 on a listener the next generation takes, with the hand-over on): a permit
/// from it is a slot kept there.
pub(super) fn credit<S>(
    ctx: &Ctx<S>,
    shared: &ConnShared,
    listener: usize,
) -> Option<Arc<Semaphore>> {
    if !shared.moves() {
        return None;
    }
    ctx.shutdown.successor()?.credit(&ctx.names[listener])
}

/// Sends the connection to the next generation on `permit` (its credit there), with
/// what it carries on (`shared`'s requests and clocks); `true` once sent (it is the next
/// generation's then: this one closes its descriptor). `false` leaves it here, to drain
/// as usual, and gives the permit back.
pub(super) async fn hand_over<S>(
    socket: Option<BorrowedFd<'_>>,
    shared: &ConnShared,
    proto: Proto,
    buffered: &[u8],
    ctx: &Ctx<S>,
    listener: usize,
    permit: OwnedSemaphorePermit,
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
        Ok(()) => {
            // The slot it was promised is its own now.
            permit.forget();
            true
        }
        Err(e) => {
            debug!(error = %e, "cannot pass a connection to the next generation; it drains here");
            false
        }
    }
}
