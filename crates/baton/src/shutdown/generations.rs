//! The coordinator's two ends of the generation channel (see `crate::channel`): the one
//! from the previous generation (connections and totals come in) and the one to the
//! next (connections and totals go out).

use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};

use tracing::{debug, info, warn};

use super::Shutdown;
use crate::channel::{self, Channel, Message, Proto, Totals};
use crate::sync::lock;

/// Serves a connection received from the previous generation: its listener, its socket, what was
/// known of it, and the bytes read from it but not served yet.
pub(crate) type Sink = Arc<dyn Fn(&str, OwnedFd, Proto, Vec<u8>) + Send + Sync>;

/// The channel from the previous generation.
#[derive(Default)]
pub(super) struct Inbound {
    /// Until the first server takes connections: the inherited descriptor.
    fd: Option<OwnedFd>,
    started: bool,
    sinks: HashMap<String, Sink>,
}

/// The channel to the generation this one handed over to.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) channel: Channel,
    /// The listeners whose connections it takes.
    takes: HashSet<String>,
}

impl Outbound {
    pub(crate) fn takes(&self, listener: &str) -> bool {
        self.takes.contains(listener)
    }
}

/// The channel passed to this process by the previous generation, if any: taken once,
/// as early as possible (close-on-exec from then on, so nothing this process starts
/// inherits it).
pub(super) fn inherited() -> Option<OwnedFd> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst)
        || !crate::activation::passed_to_this_process()
    {
        return None;
    }
    let fd = std::env::var(channel::CHANNEL_FD).ok()?.parse().ok()?;
    match crate::sys::adopt_inherited_fd(fd) {
        Ok(fd) => {
            use std::os::fd::AsFd;
            let _ = crate::sys::set_cloexec(fd.as_fd(), true);
            Some(fd)
        }
        Err(e) => {
            warn!(fd, error = %e, "the generation channel named by {} is not open; no connection will be taken over", channel::CHANNEL_FD);
            None
        }
    }
}

impl Inbound {
    pub(super) fn new(fd: Option<OwnedFd>) -> Mutex<Inbound> {
        Mutex::new(Inbound {
            fd,
            ..Inbound::default()
        })
    }
}

impl Shutdown {
    /// Called by a server of this generation as it starts: its `listeners` take the open
    /// connections of the previous generation, served by `sink`. Tells the previous
    /// generation (before this one reports ready); does nothing for a first generation.
    pub(crate) fn take_connections(&self, listeners: &[String], sink: Sink) {
        let mut inbound = lock(&self.inner.inbound);
        if !inbound.started {
            let Some(fd) = inbound.fd.take() else {
                return;
            };
            let channel = match Channel::new(fd) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    warn!(error = %e, "cannot register the generation channel; no connection will be taken over");
                    return;
                }
            };
            inbound.started = true;
            *lock(&self.inner.inbound_channel) = Some(Arc::clone(&channel));
            tokio::spawn(receive(self.clone(), channel));
        }
        for name in listeners {
            inbound.sinks.insert(name.clone(), Arc::clone(&sink));
        }
        let Some(channel) = lock(&self.inner.inbound_channel).clone() else {
            return;
        };
        let message = Message::Takes(listeners.to_vec());
        // The channel is empty at this point (nothing else goes this way): a message
        // fits at once, before this generation reports ready.
        tokio::spawn(async move {
            if let Err(e) = channel.send(&message, &[]).await {
                debug!(error = %e, "cannot tell the previous generation which listeners take connections");
            }
        });
    }

    /// The channel to the next generation and the listeners it takes connections of,
    /// once this generation handed over (`None` before, and when it takes none).
    pub(crate) fn successor(&self) -> Option<Arc<Outbound>> {
        lock(&self.inner.outbound).clone()
    }

    /// After the next generation said it is ready: reads which listeners it takes
    /// connections of (it said so before it was ready) and keeps the channel for the
    /// hand-over. Returns how many listeners it takes.
    pub(super) fn connect_successor(&self, ours: OwnedFd) -> usize {
        let channel = match Channel::new(ours) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot register the generation channel; connections drain here");
                return 0;
            }
        };
        let mut takes = HashSet::new();
        for (message, _) in channel.drain_now() {
            if let Message::Takes(names) = message {
                takes.extend(names);
            }
        }
        let n = takes.len();
        if n > 0 {
            *lock(&self.inner.outbound) = Some(Arc::new(Outbound { channel, takes }));
        }
        n
    }

    /// The totals of the generations before this one, as they last reported them.
    pub(crate) fn inherited_totals(&self) -> Totals {
        *lock(&self.inner.inherited_totals)
    }
}

/// Receives what the previous generation sends until it closes its end (it exited).
async fn receive(shutdown: Shutdown, channel: Arc<Channel>) {
    let mut taken = 0u64;
    loop {
        match channel.recv().await {
            Ok(Some((
                Message::Conn {
                    listener,
                    proto,
                    buffered,
                },
                mut fds,
            ))) => {
                let Some(fd) = fds.pop() else {
                    warn!(%listener, "a connection message from the previous generation without its socket");
                    continue;
                };
                let sink = lock(&shutdown.inner.inbound).sinks.get(&listener).cloned();
                match sink {
                    Some(sink) => {
                        taken += 1;
                        sink(&listener, fd, proto, buffered);
                    }
                    None => {
                        warn!(%listener, "a connection of a listener this generation does not serve: closed");
                    }
                }
            }
            Ok(Some((Message::Totals { totals, last }, _))) => {
                *lock(&shutdown.inner.inherited_totals) = totals;
                if last {
                    debug!("the previous generation sent its last totals");
                }
            }
            Ok(Some((Message::Takes(_), _))) => {}
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "reading the generation channel");
                break;
            }
        }
    }
    // Gone: nothing of it is open any more, whatever it last said; the channel is
    // closed here too.
    *lock(&shutdown.inner.inbound_channel) = None;
    drop(channel);
    {
        let mut totals = lock(&shutdown.inner.inherited_totals);
        totals.open = 0;
        totals.requests_in_flight = 0;
    }
    if taken > 0 {
        info!(
            pid = std::process::id(),
            connections = taken,
            "the previous generation is gone; its open connections are served here"
        );
    }
}
