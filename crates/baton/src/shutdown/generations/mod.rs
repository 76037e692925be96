//! The coordinator's two ends of the generation channel (see `crate::channel`): the one
//! from the previous generation (connections and totals come in) and the one to the
//! next (connections and totals go out). A worker's link to its master is in
//! `link.rs`, the totals across generations in `totals.rs`.
// The connection part serves the HTTP servers only; a build without them (the `baton`
// CLI) keeps the totals, the keys and the master's messages.
#![cfg_attr(not(feature = "http"), allow(dead_code))]

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use super::Shutdown;
use crate::channel::{Channel, Message, Proto};
use crate::sync::lock;
use crate::tracker::History;

mod link;
mod totals;

use totals::Totals;

/// A server's part in the hand-over of open connections, both ways: implemented by the
/// HTTP servers, called by the channel's readers.
pub(crate) trait Mover: Send + Sync {
    /// The listeners whose connections it takes (and passes on).
    fn listeners(&self) -> &[String];
    /// Serves a connection received from the previous generation: its listener, its
    /// socket, what was known of it, what it carries on, and the bytes read from it but
    /// not served yet.
    fn take(&self, listener: &str, fd: OwnedFd, proto: Proto, history: History, buffered: Vec<u8>);
    /// The previous generation still holds `count` connections of `listener` that may
    /// come: keep slots for them (and send credit, see [`Shutdown::send_room`]).
    fn coming(&self, listener: &str, count: u32);
    /// The previous generation sends nothing more (it is gone, or it never said what it
    /// holds): no slot is kept for it, accepting goes on.
    fn nothing_more_coming(&self);
    /// This generation's open connections of `listener` that may move on.
    fn open(&self, listener: &str) -> u32;
}

/// The generation channel's state in the coordinator: both ends, what came through
/// them, and the servers that take and pass on connections.
pub(super) struct Links {
    inbound: Mutex<Inbound>,
    inbound_channel: Mutex<Option<Arc<Channel>>>,
    /// The previous generation said what it holds (a `Moving` came): its connections
    /// have slots kept; without that, accepting is held for a while only.
    predecessor_spoke: AtomicBool,
    /// The totals the previous generations last reported.
    inherited_totals: Mutex<Totals>,
    /// How many reports of them came (and one more when the channel closed).
    totals_seen: watch::Sender<u64>,
    /// Reads the channel to the next generation (its credit, its requests for the
    /// totals, the end of its probation) and keeps it told what may still move.
    outbound_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    outbound: Mutex<Option<Arc<Outbound>>>,
    /// A worker's link to its master, on which the master passes the channel to the
    /// worker replacing it (see `MasterBuilder::hand_over`): the descriptor until
    /// `run` starts reading it, then the registered channel.
    master_link: Mutex<Option<OwnedFd>>,
    link: Mutex<Option<Arc<Channel>>>,
    /// Held while the link's waiting messages are read and acted on, by its reader
    /// task or by the drain's check: a message is never half taken.
    link_lock: Mutex<()>,
    /// A `Successor` read from the link (the worker replacing this one, to hand over to
    /// at the drain that follows).
    pending_successor: Mutex<Option<(u32, u32, OwnedFd)>>,
    /// This process's servers that take and pass on connections.
    movers: Mutex<Vec<Arc<dyn Mover>>>,
}

impl Links {
    pub(super) fn new() -> Links {
        Links {
            inbound: Mutex::new(Inbound {
                fd: inherited(),
                ..Inbound::default()
            }),
            inbound_channel: Mutex::new(None),
            predecessor_spoke: AtomicBool::new(false),
            inherited_totals: Mutex::new(Totals::default()),
            totals_seen: watch::Sender::new(0),
            outbound_task: Mutex::new(None),
            outbound: Mutex::new(None),
            master_link: Mutex::new(master_link()),
            link: Mutex::new(None),
            link_lock: Mutex::new(()),
            pending_successor: Mutex::new(None),
            movers: Mutex::new(Vec::new()),
        }
    }
}

/// The channel from the previous generation.
#[derive(Default)]
struct Inbound {
    /// Until the first server takes connections: the inherited descriptor.
    fd: Option<OwnedFd>,
    started: bool,
    by_listener: HashMap<String, Arc<dyn Mover>>,
}

/// Where the next generation stands, as its predecessor sees it through the channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Successor {
    /// It serves; this generation's probation runs.
    Serving,
    /// It handed over in turn, or shuts down: the probation is over.
    MovedOn,
    /// Its end of the channel closed: it exited (or closed it, which it does only as
    /// it ends).
    Gone,
}

/// Whether the next generation, `pid`, whose end of the channel just closed, died. A
/// killed process closes its descriptors as its last threads exit, which can be before
/// its main thread shows as exited: it is looked at again for up to a second before it
/// is taken to live on (one that closed the channel and lives on is not waited for).
/// Under two CPU hogs, a generation killed in its probation was once taken to live on,
/// and its predecessor drained: nothing served.
pub(crate) async fn successor_died(pid: u32) -> bool {
    let deadline = tokio::time::Instant::now() + SUCCESSOR_EXIT_WAIT;
    loop {
        if !crate::sys::is_alive(pid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// How long [`successor_died`] looks again.
const SUCCESSOR_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The channel to the generation this one handed over to.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) channel: Channel,
    /// The listeners whose connections it takes, with the credit it gave for them: a
    /// connection is sent only on a permit (see `Message::Room`).
    credit: HashMap<String, Arc<Semaphore>>,
    pub(crate) state: watch::Sender<Successor>,
}

impl Outbound {
    pub(crate) fn takes(&self, listener: &str) -> bool {
        self.credit.contains_key(listener)
    }

    /// The credit for `listener`'s connections, if it takes them.
    pub(crate) fn credit(&self, listener: &str) -> Option<Arc<Semaphore>> {
        self.credit.get(listener).cloned()
    }
}

/// The channel passed to this process by the previous generation, if any: taken once,
/// as early as possible (close-on-exec from then on, so nothing this process starts
/// inherits it).
fn inherited() -> Option<OwnedFd> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    adopt(
        &TAKEN,
        crate::origin::CHANNEL_FD,
        "no connection will be taken over",
    )
}

/// A worker's link to its master (see `MasterBuilder::hand_over`), if it has one: taken
/// once, like the channel.
fn master_link() -> Option<OwnedFd> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    adopt(
        &TAKEN,
        crate::origin::MASTER_LINK_FD,
        "connections will drain at a reload",
    )
}

fn adopt(taken: &std::sync::atomic::AtomicBool, var: &str, without: &str) -> Option<OwnedFd> {
    if taken.swap(true, std::sync::atomic::Ordering::SeqCst)
        || !crate::origin::passed_to_this_process()
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

impl Shutdown {
    fn links(&self) -> &Links {
        &self.inner.links
    }

    /// Whether this process was started with a channel from a previous generation.
    pub(crate) fn has_predecessor(&self) -> bool {
        let inbound = lock(&self.links().inbound);
        inbound.fd.is_some() || lock(&self.links().inbound_channel).is_some()
    }

    /// Starts reading the channel from the previous generation, if there is one (once;
    /// by the first server that starts, or by `run`). Call within the runtime.
    pub(crate) fn start_inbound(&self) {
        let mut inbound = lock(&self.links().inbound);
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
        // What the previous generation sent before this one started (the TLS keys, its
        // totals), taken before anything is served.
        for (message, _) in channel.drain_now() {
            self.take_early(message);
        }
        *lock(&self.links().inbound_channel) = Some(Arc::clone(&channel));
        tokio::spawn(receive(self.clone(), channel));
    }

    fn take_early(&self, message: Message) {
        match message {
            #[cfg(feature = "tls")]
            Message::Keys(keys) if !crate::tickets::import(&keys) => {
                warn!(
                    "the previous generation's TLS session-ticket keys are unreadable; new ones are made"
                );
            }
            Message::Totals { totals, .. } => self.inherit(&totals),
            _ => {}
        }
    }

    /// Called by a server of this generation as it starts: it takes the open
    /// connections of the previous generation for its listeners, and passes its own on
    /// at a hand-over. Tells the previous generation (before this one reports ready).
    /// Without a previous generation, the server accepts at once.
    pub(crate) fn take_connections(&self, mover: Arc<dyn Mover>) {
        lock(&self.links().movers).push(Arc::clone(&mover));
        let mut inbound = lock(&self.links().inbound);
        self.start_inbound_locked(&mut inbound);
        for name in mover.listeners() {
            inbound.by_listener.insert(name.clone(), Arc::clone(&mover));
        }
        drop(inbound);
        let Some(channel) = lock(&self.links().inbound_channel).clone() else {
            mover.nothing_more_coming();
            return;
        };
        // Sent now, not from a task: it must be in the channel before this generation
        // reports ready, when the previous one reads it (the channel is empty at this
        // point, nothing else goes this way, so it fits at once).
        if let Err(e) = channel.try_send(&Message::Takes(mover.listeners().to_vec())) {
            warn!(error = %e, "cannot tell the previous generation which listeners take connections; they drain there");
            mover.nothing_more_coming();
        }
    }

    /// Sends the previous generation credit for `n` more connections of `listener`
    /// (see `Message::Room`).
    pub(crate) async fn send_room(&self, listener: &str, n: u32) {
        let Some(channel) = lock(&self.links().inbound_channel).clone() else {
            return;
        };
        let room = Message::Room {
            listener: listener.to_owned(),
            n,
        };
        if let Err(e) = channel.send(&room, &[]).await {
            debug!(error = %e, "cannot send credit to the previous generation");
        }
    }

    /// After this generation reported ready: if the previous generation has not said
    /// what it holds within a while (one of another version says nothing), this one's
    /// servers stop keeping room for it and accept.
    pub(super) fn wait_for_predecessor(&self) {
        if lock(&self.links().inbound_channel).is_none() {
            return;
        }
        let shutdown = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PREDECESSOR_WAIT).await;
            if !shutdown.links().predecessor_spoke.load(Ordering::Acquire) {
                debug!("the previous generation said nothing of its connections: accepting");
                for mover in lock(&shutdown.links().movers).iter() {
                    mover.nothing_more_coming();
                }
            }
        });
    }

    /// Tells the previous generation, if it still waits on this one (its probation),
    /// that it can go: this one hands over in turn, or shuts down.
    pub(crate) fn release_predecessor(&self) {
        if let Some(channel) = lock(&self.links().inbound_channel).clone() {
            let _ = channel.try_send(&Message::ProbationOver);
        }
    }

    /// The channel to the next generation and the listeners it takes connections of,
    /// once this generation handed over (`None` before).
    pub(crate) fn successor(&self) -> Option<Arc<Outbound>> {
        lock(&self.links().outbound).clone()
    }

    /// This generation's part in its predecessor's probation is over (see
    /// `release_predecessor`); its successor's state (`None` without one).
    pub(crate) fn successor_state(&self) -> Option<watch::Receiver<Successor>> {
        self.successor().map(|o| o.state.subscribe())
    }

    /// After the next generation said it is ready: reads which listeners it takes
    /// connections of (it said so before it was ready), keeps the channel for the
    /// hand-over, tells it how many connections may come, and from then on reads what it
    /// sends (credit, requests for the totals, the end of the probation). Returns how
    /// many listeners it takes.
    pub(super) fn connect_successor(&self, ours: OwnedFd) -> usize {
        let channel = match Channel::new(ours) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot register the generation channel; connections drain here");
                return 0;
            }
        };
        let mut credit = HashMap::new();
        for (message, _) in channel.drain_now() {
            if let Message::Takes(names) = message {
                for name in names {
                    credit.insert(name, Arc::new(Semaphore::new(0)));
                }
            }
        }
        let n = credit.len();
        // A master's new worker started before this one knew of it: its keys and totals
        // come now, before anything moves (the channel is empty: they fit at once).
        // After a restart of its own they came before the start already; again is
        // harmless.
        for message in self.early_messages() {
            if let Err(e) = channel.try_send(&message) {
                warn!(error = %e, "cannot pass {} to the new generation", message.what());
            }
        }
        let outbound = Arc::new(Outbound {
            channel,
            credit,
            state: watch::Sender::new(Successor::Serving),
        });
        *lock(&self.links().outbound) = Some(Arc::clone(&outbound));
        let task = tokio::spawn(follow_successor(self.clone(), outbound));
        if let Some(old) = lock(&self.links().outbound_task).replace(task) {
            old.abort();
        }
        n
    }

    /// After a stop that came during a probation (and went to the next generation
    /// too): closes this generation's end of the channel (the next one's drain waits for
    /// it: nothing more comes) and waits, at most `limit`, until that generation is gone.
    pub(super) async fn wait_successor_gone(&self, limit: Duration) {
        let Some(successor) = self.successor() else {
            return;
        };
        let pid = std::process::id();
        let new_pid = self.inner.life.successor().unwrap_or(0);
        drop(successor);
        self.forget_successor();
        if new_pid == 0 {
            return;
        }
        info!(
            pid,
            new_pid, "waiting for the new generation to finish its own drain"
        );
        let gone = async {
            while crate::sys::is_alive(new_pid) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(limit, gone).await.is_err() {
            warn!(
                pid,
                new_pid, "the new generation still runs after {limit:?}; leaving it"
            );
        }
    }

    /// The next generation died in its probation: nothing goes to it any more.
    pub(super) fn forget_successor(&self) {
        if let Some(task) = lock(&self.links().outbound_task).take() {
            task.abort();
        }
        if let Some(outbound) = lock(&self.links().outbound).take() {
            for credit in outbound.credit.values() {
                credit.close();
            }
        }
    }
    /// How many connections of `listener` this process holds that may move on.
    fn movable(&self, listener: &str) -> u32 {
        lock(&self.links().movers)
            .iter()
            .filter(|m| m.listeners().iter().any(|l| l == listener))
            .map(|m| m.open(listener))
            .sum()
    }
}

/// How long the next generation waits for the totals at most.
const TOTALS_WAIT: Duration = Duration::from_secs(1);
/// How long after its ready a new generation keeps room for the previous generation's
/// connections without a word from it.
const PREDECESSOR_WAIT: Duration = Duration::from_secs(2);
/// How often a generation that handed over tells the next how many connections may
/// still come.
const MOVING_EVERY: Duration = Duration::from_millis(200);

/// Reads what the next generation sends (credit, requests for the totals, the end of
/// this one's probation, its end), and tells it how many connections may still come:
/// at once, then whenever that changes.
async fn follow_successor(shutdown: Shutdown, to: Arc<Outbound>) {
    let mut told: HashMap<String, u32> = HashMap::new();
    let mut tick = tokio::time::interval(MOVING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = to.channel.recv() => match received {
                Ok(Some((Message::Room { listener, n }, _))) => {
                    if let Some(credit) = to.credit.get(&listener) {
                        credit.add_permits(n as usize);
                    }
                }
                Ok(Some((Message::TotalsPlease, _))) => shutdown.send_totals(&to, false).await,
                Ok(Some((Message::ProbationOver, _))) => {
                    to.state.send_if_modified(|s| {
                        let moved_on = *s == Successor::Serving;
                        if moved_on {
                            *s = Successor::MovedOn;
                        }
                        moved_on
                    });
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    to.state.send_replace(Successor::Gone);
                    // Nothing more can move: wake every connection waiting for credit.
                    for credit in to.credit.values() {
                        credit.close();
                    }
                    return;
                }
            },
            _ = tick.tick() => {
                for listener in to.credit.keys() {
                    let count = shutdown.movable(listener);
                    if told.get(listener) == Some(&count) {
                        continue;
                    }
                    let moving = Message::Moving {
                        listener: listener.clone(),
                        count,
                    };
                    if to.channel.send(&moving, &[]).await.is_ok() {
                        told.insert(listener.clone(), count);
                    }
                }
            }
        }
    }
}

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
                let mover = lock(&shutdown.links().inbound)
                    .by_listener
                    .get(&listener)
                    .cloned();
                match mover {
                    Some(mover) => {
                        taken += 1;
                        mover.take(&listener, fd, proto, history, buffered);
                    }
                    None => {
                        warn!(%listener, "a connection of a listener this generation does not serve: closed");
                    }
                }
            }
            Ok(Some((Message::Moving { listener, count }, _))) => {
                shutdown
                    .links()
                    .predecessor_spoke
                    .store(true, Ordering::Release);
                let mover = lock(&shutdown.links().inbound)
                    .by_listener
                    .get(&listener)
                    .cloned();
                if let Some(mover) = mover {
                    mover.coming(&listener, count);
                }
            }
            Ok(Some((Message::Totals { totals, last }, _))) => {
                shutdown.inherit(&totals);
                if last {
                    debug!("the previous generation sent its last totals");
                }
            }
            Ok(Some((
                Message::Takes(_)
                | Message::TotalsPlease
                | Message::Successor { .. }
                | Message::Room { .. }
                | Message::ProbationOver
                | Message::Standby { .. }
                | Message::Resume,
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
    *lock(&shutdown.links().inbound_channel) = None;
    drop(channel);
    for mover in lock(&shutdown.links().movers).iter() {
        mover.nothing_more_coming();
    }
    lock(&shutdown.links().inherited_totals).gone();
    shutdown.links().totals_seen.send_modify(|n| *n += 1);
    if taken > 0 {
        info!(
            pid = std::process::id(),
            connections = taken,
            "the previous generation is gone; its open connections are served here"
        );
    }
}
