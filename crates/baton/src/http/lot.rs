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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slab::Slab;
use tokio::io::unix::AsyncFd;
use tracing::debug;

use super::conn::{Parkable, TrackedIo};
use super::slots::Slot;
use crate::sync::lock;
use crate::sys;
use crate::tracker::ParkedConn;

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
    /// Closed if still parked then (the idle timeout); `None`: never.
    expires: Option<Instant>,
}

impl Entry {
    /// What the connection's new task needs.
    pub(crate) fn into_parts(self) -> (OwnedFd, ParkedConn, Slot) {
        (self.fd, self.conn, self.slot)
    }
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
    /// of a next one: its task can end. `idle_for`: how long it has been idle, `idle`:
    /// the idle timeout. `Err` gives it back (the drain started, or it could not be
    /// parked): it is served on.
    pub(crate) fn park<IO: Parkable>(
        &self,
        io: TrackedIo<IO>,
        slot: Slot,
        listener: usize,
        idle_for: Duration,
        idle: Option<Duration>,
    ) -> Result<(), (TrackedIo<IO>, Slot)> {
        if lock(&self.inner).closed {
            return Err((io, slot));
        }
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
        let now = Instant::now();
        inner.entries.insert(Entry {
            conn: handle.park(),
            fd,
            tag,
            listener: u32::try_from(listener).unwrap_or(u32::MAX),
            tcp: IO::TCP,
            slot,
            expires: idle.map(|idle| now + idle.saturating_sub(idle_for)),
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

    /// Takes out the connections past their idle timeout, now: the caller closes them.
    pub(crate) fn expired(&self, out: &mut Vec<Entry>) {
        let now = Instant::now();
        let mut inner = lock(&self.inner);
        let keys: Vec<usize> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.expires.is_some_and(|t| t <= now))
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
