//! The parking lot: idle keep-alive connections kept as bare sockets.
//!
//! A plain HTTP/1 connection idle for `Server::park_idle_after` leaves hyper between
//! two requests (see `conn::drive`), and then its task, too: its socket leaves the
//! runtime and waits here, in the lot's own epoll set, as one small entry (the
//! descriptor, its listener, its connection-limit slot, its place in the tracker's
//! totals). Nothing else of it stays in memory: no task, no hyper connection or buffers,
//! no runtime registration, no per-connection tracker state. What an idle connection
//! costs is then the entry and the kernel's socket (see docs/BENCHMARKS.md, "idle
//! connections").
//!
//! One task per server watches the set: a socket with bytes to read (or its client's
//! end) gets a new task and a fresh hyper connection, as if it had just been accepted
//! (it is not counted as a new connection); a socket idle for the idle timeout is
//! closed. At the drain, every parked connection is served again at once, to move to
//! the next generation or to drain as an idle connection does; nothing parks after.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::conn::{ConnIo, Parkable, TrackedIo};
use super::serve::{self, Start};
use super::slots::Slot;
use super::{Ctx, HttpBody, HttpService};
use crate::sync::lock;
use crate::sys;
use crate::tracker::{History, ParkedConn, Phase};

/// The parked connections of one server.
#[derive(Debug)]
pub(crate) struct Lot {
    epoll: AsyncFd<OwnedFd>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Slab<Entry>,
    /// Told apart entries that reuse a slab key: the high half of an event's data.
    next_tag: u32,
    /// The drain started: nothing parks any more.
    closed: bool,
}

/// One parked connection.
#[derive(Debug)]
pub(crate) struct Entry {
    // Declared first so that it is dropped (counted closed) before the socket closes.
    conn: ParkedConn,
    fd: OwnedFd,
    tag: u32,
    /// Its listener, by index.
    pub(crate) listener: u32,
    /// TCP (else Unix).
    pub(crate) tcp: bool,
    slot: Slot,
    /// When it last did something: its idle clock, which goes on when it is served
    /// again or moves.
    since: Instant,
}

impl Lot {
    /// A lot with its own epoll set, registered with the current runtime.
    pub(crate) fn new() -> io::Result<Lot> {
        let epoll = sys::epoll_create()?;
        Ok(Lot {
            epoll: sys::register_fd(epoll, tokio::io::Interest::READABLE)?,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Parks a connection taken out of hyper between two requests, with nothing read
    /// of a next one: its task can end. `Err` gives it back (the drain started, or it
    /// could not be parked): it is served on.
    pub(crate) fn park<IO: Parkable>(
        &self,
        io: TrackedIo<IO>,
        slot: Slot,
        listener: usize,
    ) -> Result<(), (TrackedIo<IO>, Slot)> {
        if lock(&self.inner).closed {
            return Err((io, slot));
        }
        let now = Instant::now();
        let idle_for = io.handle().shared().history(now, false).idle_for;
        let (handle, io) = io.into_parts();
        let fd = match io.into_fd() {
            Ok(fd) => fd,
            Err(e) => {
                // Closed by the failed deregistration; the handle counts it closed.
                debug!(error = %e, "cannot take an idle connection out of the runtime");
                return Ok(());
            }
        };
        let mut inner = lock(&self.inner);
        let tag = inner.next_tag;
        let key = inner.entries.vacant_key();
        let added = if inner.closed {
            Err(None)
        } else {
            sys::epoll_add(self.epoll.as_fd(), fd.as_fd(), event_data(key, tag)).map_err(Some)
        };
        if let Err(e) = added {
            drop(inner);
            if let Some(e) = e {
                debug!(error = %e, "cannot park an idle connection; it stays served");
            }
            return match IO::from_fd(fd) {
                Ok(io) => Err((TrackedIo::from_parts(handle, io), slot)),
                Err(e) => {
                    debug!(error = %e, "cannot register a connection again: closed");
                    Ok(())
                }
            };
        }
        inner.next_tag = tag.wrapping_add(1);
        inner.entries.insert(Entry {
            conn: handle.park(),
            fd,
            tag,
            listener: u32::try_from(listener).unwrap_or(u32::MAX),
            tcp: IO::TCP,
            slot,
            since: now.checked_sub(idle_for).unwrap_or(now),
        });
        Ok(())
    }

    /// Waits until some parked connection has bytes to read (or its client's end), and
    /// returns those connections, out of the lot.
    pub(crate) async fn woken(&self, out: &mut Vec<Entry>) -> io::Result<()> {
        let mut events = Vec::with_capacity(sys::EPOLL_BATCH);
        loop {
            let mut ready = self.epoll.readable().await?;
            events.clear();
            let n = sys::epoll_poll(self.epoll.as_fd(), &mut events)?;
            if n < sys::EPOLL_BATCH {
                // All taken: wait for the next edge.
                ready.clear_ready();
            }
            let mut inner = lock(&self.inner);
            for data in &events {
                let (key, tag) = (*data as u32 as usize, (*data >> 32) as u32);
                if inner.entries.get(key).is_some_and(|e| e.tag == tag) {
                    let entry = inner.entries.remove(key);
                    self.forget(&entry);
                    out.push(entry);
                }
            }
            if !out.is_empty() {
                return Ok(());
            }
        }
    }

    /// Takes out the connections idle longer than `idle`, now: the caller closes them.
    pub(crate) fn expired(&self, idle: Duration, out: &mut Vec<Entry>) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let keys: Vec<usize> = inner
            .entries
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.since) >= idle)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let mut entry = inner.entries.remove(key);
            self.forget(&entry);
            entry.conn.mark_timed_out();
            out.push(entry);
        }
    }

    /// Closes the lot (the drain started) and returns every parked connection.
    pub(crate) fn close(&self) -> Vec<Entry> {
        let mut inner = lock(&self.inner);
        inner.closed = true;
        let all: Vec<Entry> = inner.entries.drain().collect();
        drop(inner);
        for entry in &all {
            self.forget(entry);
        }
        all
    }

    fn forget(&self, entry: &Entry) {
        if let Err(e) = sys::epoll_del(self.epoll.as_fd(), entry.fd.as_fd()) {
            debug!(error = %e, "removing a parked connection from the lot's set");
        }
    }
}

/// An event's data: the entry's slab key (low half) and tag (high half).
fn event_data(key: usize, tag: u32) -> u64 {
    (u64::from(tag) << 32) | (key as u64 & 0xffff_ffff)
}

/// Watches the server's parked connections: serves again each one with bytes to read
/// (or its client's end), closes each one idle past the idle timeout; at the drain,
/// serves them all again (to move to the next generation, or drain) and ends.
pub(super) async fn watch<S, B>(ctx: Arc<Ctx<S>>)
where
    S: HttpService<B>,
    B: HttpBody,
{
    let Some(lot) = &ctx.lot else { return };
    let draining = ctx.shutdown.tracker().reached(Phase::Draining);
    tokio::pin!(draining);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut woke = Vec::new();
    loop {
        tokio::select! {
            biased;
            () = &mut draining => break,
            res = lot.woken(&mut woke) => {
                if let Err(e) = res {
                    warn!(error = %e, "watching parked connections failed; none is parked from now on");
                    break;
                }
                for entry in woke.drain(..) {
                    // Its next request's first bytes (or its client's end) woke it:
                    // its header-read clock starts now.
                    unpark(entry, &ctx, Some(Duration::ZERO));
                }
            }
            _ = tick.tick() => {
                let Some(idle) = ctx.limits.idle else { continue };
                let mut expired = Vec::new();
                lot.expired(idle, &mut expired);
                if !expired.is_empty() {
                    debug!(n = expired.len(), "closing parked connections idle too long");
                }
                // Dropped: counted closed for a timeout, then closed.
                drop(expired);
            }
        }
    }
    for entry in lot.close() {
        unpark(entry, &ctx, None);
    }
}

/// A parked connection served again, by a new task, with its clocks: it reads the next
/// request (or its client's end) or, at the drain, moves to the next generation or
/// drains.
fn unpark<S, B>(entry: Entry, ctx: &Arc<Ctx<S>>, head_for: Option<Duration>)
where
    S: HttpService<B>,
    B: HttpBody,
{
    let (listener, tcp) = (entry.listener as usize, entry.tcp);
    let Entry {
        conn,
        fd,
        slot,
        since,
        ..
    } = entry;
    let start = Start::Unparked {
        history: History {
            requests: conn.requests(),
            idle_for: Instant::now().saturating_duration_since(since),
            head_for,
        },
        conn,
        slot,
    };
    let spawned = if tcp {
        serve_again::<tokio::net::TcpStream, S, B>(fd, ctx, listener, start)
    } else {
        serve_again::<tokio::net::UnixStream, S, B>(fd, ctx, listener, start)
    };
    if let Err(e) = spawned {
        debug!(error = %e, "cannot serve a parked connection again: closed");
    }
}

fn serve_again<IO, S, B>(
    fd: OwnedFd,
    ctx: &Arc<Ctx<S>>,
    listener: usize,
    start: Start,
) -> io::Result<()>
where
    IO: ConnIo,
    S: HttpService<B>,
    B: HttpBody,
{
    let io = IO::from_fd(fd)?;
    tokio::spawn(serve::connection_task(io, ctx, listener, start));
    Ok(())
}
