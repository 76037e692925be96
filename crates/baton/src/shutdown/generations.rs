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
use crate::tracker::History;

/// Serves a connection received from the previous generation: its listener, its socket,
/// what was known of it, what it carries on, and the bytes read from it but not served
/// yet.
pub(crate) type Sink = Arc<dyn Fn(&str, OwnedFd, Proto, History, Vec<u8>) + Send + Sync>;

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
    adopt(
        &TAKEN,
        channel::CHANNEL_FD,
        "no connection will be taken over",
    )
}

/// A worker's link to its master (see `MasterBuilder::hand_over`), if it has one: taken
/// once, like the channel.
pub(super) fn master_link() -> Option<OwnedFd> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    adopt(
        &TAKEN,
        channel::MASTER_LINK_FD,
        "connections will drain at a reload",
    )
}

fn adopt(taken: &std::sync::atomic::AtomicBool, var: &str, without: &str) -> Option<OwnedFd> {
    if taken.swap(true, std::sync::atomic::Ordering::SeqCst)
        || !crate::activation::passed_to_this_process()
    {
        return None;
    }
    let fd = std::env::var(var).ok()?.parse().ok()?;
    match crate::sys::adopt_inherited_fd(fd) {
        Ok(fd) => {
            use std::os::fd::AsFd;
            let _ = crate::sys::set_cloexec(fd.as_fd(), true);
            Some(fd)
        }
        Err(e) => {
            warn!(fd, error = %e, "the descriptor named by {var} is not open; {without}");
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
    /// Starts reading the channel from the previous generation, if there is one (once;
    /// by the first server that starts, or by `run`). Call within the runtime.
    pub(super) fn start_inbound(&self) {
        let mut inbound = lock(&self.inner.inbound);
        self.start_inbound_locked(&mut inbound);
    }

    fn start_inbound_locked(&self, inbound: &mut Inbound) {
        if inbound.started {
            return;
        }
        inbound.started = true;
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
        // What the previous generation sent before this one started (the TLS keys),
        // taken before anything is served.
        for (message, _) in channel.drain_now() {
            self.take_early(message);
        }
        *lock(&self.inner.inbound_channel) = Some(Arc::clone(&channel));
        tokio::spawn(receive(self.clone(), channel));
    }

    fn take_early(&self, message: Message) {
        match message {
            #[cfg(feature = "tls")]
            Message::Keys(keys) if !crate::http::tickets::import(&keys) => {
                warn!(
                    "the previous generation's TLS session-ticket keys are unreadable; new ones are made"
                );
            }
            Message::Totals { totals, .. } => {
                lock(&self.inner.inherited_totals).update(totals);
                self.inner.totals_seen.send_modify(|n| *n += 1);
            }
            _ => {}
        }
    }

    /// Called by a server of this generation as it starts: its `listeners` take the open
    /// connections of the previous generation, served by `sink`. Tells the previous
    /// generation (before this one reports ready); does nothing for a first generation.
    pub(crate) fn take_connections(&self, listeners: &[String], sink: Sink) {
        let mut inbound = lock(&self.inner.inbound);
        self.start_inbound_locked(&mut inbound);
        for name in listeners {
            inbound.sinks.insert(name.clone(), Arc::clone(&sink));
        }
        let Some(channel) = lock(&self.inner.inbound_channel).clone() else {
            return;
        };
        // Sent now, not from a task: it must be in the channel before this generation
        // reports ready, when the previous one reads it (the channel is empty at this
        // point, nothing else goes this way, so it fits at once).
        if let Err(e) = channel.try_send(&Message::Takes(listeners.to_vec())) {
            warn!(error = %e, "cannot tell the previous generation which listeners take connections; they drain there");
        }
    }

    /// The channel to the next generation and the listeners it takes connections of,
    /// once this generation handed over (`None` before).
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
        *lock(&self.inner.outbound) = Some(Arc::new(Outbound { channel, takes }));
        n
    }

    /// A worker told to drain: whether its master passed it, just before, the channel to
    /// the worker that replaces it (a reload); if so, it is connected as after a
    /// restart of its own, and the drain is a hand-over to that worker.
    pub(super) fn successor_from_master(&self) -> Option<crate::Restarted> {
        let link = lock(&self.inner.master_link).take()?;
        let link = match Channel::new(link) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the link to the master; connections drain here");
                return None;
            }
        };
        for (message, mut fds) in link.drain_now() {
            let (Message::Successor { pid, generation }, Some(ours)) = (message, fds.pop()) else {
                continue;
            };
            let takes = self.connect_successor(ours);
            self.inner.tracker.set_hand_over(takes > 0);
            self.inner
                .successor
                .store(pid, std::sync::atomic::Ordering::Relaxed);
            self.start_reporting();
            info!(
                pid = std::process::id(),
                new_pid = pid,
                generation,
                listeners = takes,
                "the master's new worker takes this one's open connections"
            );
            return Some(crate::Restarted {
                pid,
                generation,
                spawn: std::time::Duration::ZERO,
                ready: std::time::Duration::ZERO,
                coalesced: 0,
            });
        }
        None
    }

    /// Once the restart is counted: sends the totals to the next generation now, and
    /// whenever it asks (its admin endpoints ask before they answer, while this one
    /// drains); the last ones when this one is done (`report_end`).
    pub(super) fn start_reporting(&self) {
        let Some(to) = self.successor() else {
            return;
        };
        let shutdown = self.clone();
        let reporter = tokio::spawn(async move {
            shutdown.send_totals(&to, false).await;
            while let Ok(Some((message, _))) = to.channel.recv().await {
                if message == Message::TotalsPlease {
                    shutdown.send_totals(&to, false).await;
                }
            }
        });
        *lock(&self.inner.totals_reporter) = Some(reporter);
    }

    /// Sends this generation's totals (with those of the ones before it) to the next.
    pub(crate) async fn send_totals(&self, to: &Outbound, last: bool) {
        let mut totals = Totals::from_stats(&self.connections_all_generations());
        totals.set_restarts(&self.restart_stats_all_generations());
        if let Err(e) = to
            .channel
            .send(&Message::Totals { totals, last }, &[])
            .await
        {
            debug!(error = %e, "cannot send the totals to the next generation");
        }
    }

    /// After the drain of a hand-over: the last totals to the next generation.
    pub(super) async fn report_end(&self) {
        if let Some(reporter) = lock(&self.inner.totals_reporter).take() {
            reporter.abort();
        }
        if let Some(to) = self.successor() {
            let _ = tokio::time::timeout(TOTALS_WAIT, self.send_totals(&to, true)).await;
        }
    }

    /// The connections of the whole service: this generation's and those of the ones
    /// before it, as they last reported them (they report while they drain, a few
    /// times a second, and once at their end).
    ///
    /// The totals (`accepted`, `closed`, `requests`, `forced`, `timed_out`) count from the
    /// start of the first generation and never go back at a restart; a connection that
    /// moved to the next generation counts once (accepted where it was accepted, closed
    /// where it closed). The state now (`open` and its parts, `requests_in_flight`)
    /// includes older generations still draining. [`connections`](Shutdown::connections)
    /// is this generation's alone.
    pub fn connections_all_generations(&self) -> crate::ConnectionStats {
        let own = self.inner.tracker.stats();
        let mut own_t = Totals::from_stats(&own);
        // Moved connections: counted as accepted where they were accepted, as closed
        // where they closed.
        own_t.0[0] = own.accepted.saturating_sub(own.taken_over);
        own_t.0[6] = own.closed.saturating_sub(own.handed_over);
        let base = *lock(&self.inner.inherited_totals);
        let mut sum = Totals::default();
        for (i, slot) in sum.0.iter_mut().enumerate() {
            *slot = base.0[i].saturating_add(own_t.0[i]);
        }
        let mut all = sum.to_stats();
        all.parked = own.parked;
        all
    }

    /// The graceful restarts of the whole service: this generation's and those of the
    /// ones before it (counters only: `last` is this generation's).
    /// [`restart_stats`](Shutdown::restart_stats) is this generation's alone.
    pub fn restart_stats_all_generations(&self) -> crate::RestartStats {
        let mut r = self.restart_stats();
        lock(&self.inner.inherited_totals).add_restarts(&mut r);
        r
    }

    /// While the previous generation still drains: asks it for its totals now and
    /// waits (a second at most) until they came, so that
    /// [`connections_all_generations`](Shutdown::connections_all_generations) counts
    /// everything it counted until now. At once for a first generation, or once the
    /// previous one is gone (its last totals came with its end).
    pub async fn totals_settled(&self) {
        let Some(channel) = lock(&self.inner.inbound_channel).clone() else {
            return;
        };
        let mut rx = self.inner.totals_seen.subscribe();
        let seen = *rx.borrow_and_update();
        if channel.send(&Message::TotalsPlease, &[]).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(TOTALS_WAIT, rx.wait_for(|n| *n > seen)).await;
    }
}

/// How long the next generation waits for the totals at most.
const TOTALS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Receives what the previous generation sends until it closes its end (it exited).
///
/// While it runs, this generation's drain is not over: the previous generation may
/// still send it connections (those busy when it handed over, as their responses
/// end), and they must not arrive at a process that has exited.
async fn receive(shutdown: Shutdown, channel: Arc<Channel>) {
    let _not_done = shutdown.inner.tracker.accept_guard();
    // Unless this generation's drain is forced: then nothing waits for more.
    let forced = shutdown
        .inner
        .tracker
        .reached(crate::tracker::Phase::Forcing);
    tokio::pin!(forced);
    let mut taken = 0u64;
    loop {
        let received = tokio::select! {
            r = channel.recv() => r,
            () = &mut forced => break,
        };
        match received {
            Ok(Some((
                Message::Conn {
                    listener,
                    proto,
                    history,
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
                        sink(&listener, fd, proto, history, buffered);
                    }
                    None => {
                        warn!(%listener, "a connection of a listener this generation does not serve: closed");
                    }
                }
            }
            Ok(Some((Message::Totals { totals, last }, _))) => {
                lock(&shutdown.inner.inherited_totals).update(totals);
                shutdown.inner.totals_seen.send_modify(|n| *n += 1);
                if last {
                    debug!("the previous generation sent its last totals");
                }
            }
            Ok(Some((
                Message::Takes(_) | Message::TotalsPlease | Message::Successor { .. },
                _,
            ))) => {}
            Ok(Some((message @ Message::Keys(_), _))) => shutdown.take_early(message),
            Ok(None) => break,
            // The previous generation ended with a message of ours unread (it was
            // forced, say): reported once, before what it sent is read.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                debug!("the previous generation ended without reading everything it was sent");
            }
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
    lock(&shutdown.inner.inherited_totals).gone();
    shutdown.inner.totals_seen.send_modify(|n| *n += 1);
    if taken > 0 {
        info!(
            pid = std::process::id(),
            connections = taken,
            "the previous generation is gone; its open connections are served here"
        );
    }
}
