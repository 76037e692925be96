//! systemd's notify protocol, both sides: telling whoever started this process how it
//! stands (`READY=1`, `RELOADING=1`, `MAINPID=`, `STOPPING=1`), and listening on a
//! private socket for the next generation's `READY=1`.
//!
//! Who is told what. `NOTIFY_SOCKET` always names the service manager (systemd), as it
//! would for any program, so the app's own messages (`WATCHDOG=1`, `STATUS=`) keep
//! working after a restart. A generation started by a previous one also gets the
//! previous one's private socket in `BATON_READY_SOCKET`: it says `READY=1` there, and
//! the previous generation tells systemd `MAINPID=<new>` and `READY=1`; from then on the
//! new generation talks to systemd itself.

use std::ffi::OsString;
use std::io;
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};

use crate::origin::{RESTART_SIGNAL, origin};

/// Sends one notify message to `socket` (a path, or `@name` for an abstract socket).
pub(crate) fn send(socket: &OsString, message: &str) -> io::Result<()> {
    let sock = StdDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(socket.as_os_str());
    if let Some(name) = bytes.strip_prefix(b"@") {
        crate::sys::send_to_abstract(&sock, name, message.as_bytes())?;
    } else {
        sock.send_to(message.as_bytes(), Path::new(socket.as_os_str()))?;
    }
    Ok(())
}

/// Tells systemd (or a supervisor), if this process has one; failures are logged, never
/// fatal: the service serves on whether or not its manager listens.
pub(crate) fn upstream(message: &str) {
    if let Some(socket) = &origin().upstream {
        match send(socket, message) {
            Ok(()) => debug!(message, "notified the service manager"),
            // A master reads its worker's notify socket only until `READY=1`: what the
            // worker says later has no reader, by design.
            Err(e) if crate::origin::is_worker() => {
                debug!(error = %e, message, "not sent: the master no longer listens");
            }
            Err(e) => warn!(error = %e, message, "cannot notify the service manager"),
        }
    }
}

/// Tells the service manager that a reload starts: `RELOADING=1` always with
/// `MONOTONIC_USEC=` (CLOCK_MONOTONIC now, in microseconds), without which systemd 257
/// and later never see the reload end. The one place this message is made.
pub(crate) fn reloading() {
    // std's Instant reads CLOCK_MONOTONIC but exposes no absolute value.
    upstream(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::sys::monotonic_usec()
    ));
}

/// Tells the service manager that the service is ready (again).
pub(crate) fn ready() {
    upstream("READY=1");
}

/// Tells the service manager that `pid` is the main process now, and ready.
pub(crate) fn ready_as(pid: u32) {
    upstream(&format!("MAINPID={pid}\nREADY=1"));
}

/// Tells the service manager that the service is stopping.
pub(crate) fn stopping() {
    upstream("STOPPING=1");
}

/// `FDSTORE=` in the environment (systemd 254 and later set it to the unit's
/// `FileDescriptorStoreMax=` when that is not 0): `Some(0)` when set to nothing usable.
/// `None` when absent: an older systemd (which does not say), or a unit without a store.
pub(crate) fn fd_store_max() -> Option<u32> {
    std::env::var("FDSTORE")
        .ok()
        .map(|v| v.trim().parse().unwrap_or(0))
}

/// Whether this process keeps its own listening sockets in the service manager's FD
/// store: it has a service manager (not a master: a master's worker never does, its
/// master does) whose unit has a store, or an older systemd that does not say.
pub(crate) fn keeps_fd_store() -> bool {
    has_own_manager() && fd_store_max() != Some(0)
}

/// Whether this process speaks to a service manager of its own: it has one, and it is
/// not a master's worker (whose master speaks for it).
fn has_own_manager() -> bool {
    origin().upstream.is_some() && !crate::origin::is_worker()
}

/// Keeps listening sockets in systemd's FD store (`FDSTORE=1`, `FDNAME=` its listener's
/// name), so that they outlive this process: across `systemctl restart`, a crash or a
/// SIGKILL, clients wait in the socket's accept queue instead of being refused, and the
/// next start takes them back by name (`LISTEN_FDNAMES`). Given `(name, socket,
/// inherited)` for every listener; only those this process bound are kept (an inherited
/// one is in the store already, or is systemd's own). A store that is full or absent is
/// logged, never fatal.
pub(crate) fn store_fds<'a>(
    listeners: impl IntoIterator<Item = (&'a str, std::os::fd::BorrowedFd<'a>, bool)>,
) {
    let sockets: Vec<_> = listeners
        .into_iter()
        .filter(|(_, _, inherited)| !inherited)
        .map(|(name, fd, _)| (name, fd))
        .collect();
    if sockets.is_empty() || !keeps_fd_store() {
        return;
    }
    let Some(socket) = &origin().upstream else {
        return;
    };
    let pid = std::process::id();
    if let Some(max) = fd_store_max().filter(|max| (*max as usize) < sockets.len()) {
        warn!(
            pid,
            max,
            listeners = sockets.len(),
            "the unit's FD store holds {max} descriptors, fewer than this process's listeners: raise FileDescriptorStoreMax="
        );
    }
    let mut kept = Vec::new();
    for (name, fd) in sockets {
        match send_fds(socket, &format!("FDSTORE=1\nFDNAME={name}"), &[fd]) {
            Ok(()) => kept.push(name),
            Err(e) => warn!(
                pid,
                listener = name,
                error = %e,
                "cannot keep the listening socket in the service manager's FD store; it closes with this process"
            ),
        }
    }
    if !kept.is_empty() {
        info!(
            pid,
            listeners = ?kept,
            "listening sockets kept in the service manager's FD store: clients wait in their queues across a restart or a crash (needs FileDescriptorStoreMax= in the unit)"
        );
    }
}

/// Removes the socket kept under `name` from systemd's FD store: its listener is gone
/// from the configuration, or listens elsewhere now.
pub(crate) fn remove_stored_fd(name: &str) {
    if keeps_fd_store() {
        upstream(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
    }
}

/// Asks the service manager for `usec` more microseconds before its start or stop
/// timeout fires (`EXTEND_TIMEOUT_USEC=`): sent while a drain or a start makes progress.
pub(crate) fn extend_timeout(usec: u64) {
    upstream(&format!("EXTEND_TIMEOUT_USEC={usec}"));
}

/// What the service is doing, in a line for `systemctl status` (`STATUS=`).
pub(crate) fn status(text: &str) {
    upstream(&format!("STATUS={}", text.replace('\n', " ")));
}

/// How often a drain's progress is looked at.
pub(crate) const PROGRESS_CHECK: std::time::Duration = std::time::Duration::from_secs(1);
/// How long after its last progress a drain still has its stop timeout extended.
pub(crate) const PROGRESS_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
/// How much each extension asks for (`EXTEND_TIMEOUT_USEC=`): the service manager's own
/// timeout fires at most this long after the last one.
pub(crate) const EXTENSION: std::time::Duration = std::time::Duration::from_secs(5);

/// Keeps systemd's start or stop timeout (`TimeoutStopSec=`) from cutting work that
/// makes progress: told the state of the work about once a second, it asks for
/// [`EXTENSION`] more (`EXTEND_TIMEOUT_USEC=`) for as long as the state changed within
/// [`PROGRESS_WINDOW`], and says what the state is (`STATUS=`) when it changes. Work
/// that stops progressing is no longer extended: the service manager's timeout cuts it
/// [`PROGRESS_WINDOW`] + [`EXTENSION`] after its last progress at the latest (or at its
/// own timeout, if that comes later).
#[derive(Debug)]
pub(crate) struct TimeoutKeeper<S> {
    last: Option<S>,
    last_progress: std::time::Instant,
    extending: bool,
}

impl<S: PartialEq> TimeoutKeeper<S> {
    /// A keeper that tells the service manager, if this process has one of its own.
    pub(crate) fn new() -> Self {
        TimeoutKeeper {
            last: None,
            last_progress: std::time::Instant::now(),
            extending: false,
        }
    }

    /// The work's state now; `describe` makes its `STATUS=` line.
    pub(crate) fn observe(&mut self, now: S, describe: impl FnOnce(&S) -> String) {
        if !has_own_manager() {
            return;
        }
        if self.last.as_ref() != Some(&now) {
            self.last_progress = std::time::Instant::now();
            status(&describe(&now));
            self.last = Some(now);
        }
        let progressing = self.last_progress.elapsed() < PROGRESS_WINDOW;
        if progressing {
            extend_timeout(EXTENSION.as_micros() as u64);
        } else if self.extending {
            warn!(
                pid = std::process::id(),
                "no progress for {PROGRESS_WINDOW:?}: no longer asking the service manager to wait (its stop timeout applies)"
            );
        }
        self.extending = progressing;
    }
}

/// Sends one notify message with descriptors attached (`SCM_RIGHTS`) to `socket`.
fn send_fds(
    socket: &OsString,
    message: &str,
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<()> {
    let sock = StdDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(socket.as_os_str());
    if let Some(name) = bytes.strip_prefix(b"@") {
        crate::sys::connect_abstract(&sock, name)?;
    } else {
        sock.connect(Path::new(socket.as_os_str()))?;
    }
    crate::sys::send_with_fds(&sock, message.as_bytes(), fds)
}

/// A private notify socket for one successor: a datagram socket in a fresh directory
/// with an unpredictable name that only this user can enter, removed on drop.
#[derive(Debug)]
pub(crate) struct Listener {
    path: PathBuf,
    socket: tokio::net::UnixDatagram,
    // Dropped last: removes the directory and the socket in it.
    #[cfg_attr(not(test), allow(dead_code))]
    dir: crate::trust::PrivateDir,
}

impl Listener {
    pub(crate) fn bind() -> io::Result<Listener> {
        let dir = crate::trust::PrivateDir::create("baton-notify")?;
        let path = dir.path().join("notify");
        let socket = tokio::net::UnixDatagram::bind(&path)?;
        Ok(Listener { path, socket, dir })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for a message that says `READY=1`; returns the restart signal the new
    /// generation announced with it (`BATON_RESTART_SIGNAL=`), if any. Other valid
    /// messages (`STATUS=`, ...) are logged at debug level; garbage is logged once and
    /// ignored.
    pub(crate) async fn ready(&self) -> io::Result<Option<String>> {
        let mut buf = vec![0u8; 4096];
        let mut complained = false;
        loop {
            let n = self.socket.recv(&mut buf).await?;
            if let Some(ready) = self.read_one(&buf[..n], &mut complained) {
                return Ok(ready);
            }
        }
    }

    /// What already waits in the socket, without waiting: `Some` once a `READY=1` is
    /// among it (with the restart signal announced). Asked before a readiness deadline
    /// is declared missed: a master or generation whose thread ran late (a paused VM,
    /// CPU starvation) must not take a readiness that came in time for a timeout.
    pub(crate) fn ready_now(&self) -> Option<Option<String>> {
        let mut buf = vec![0u8; 4096];
        let mut complained = false;
        // Straight from the socket (non-blocking, a status flag of the socket that a
        // duplicate shares): tokio's `try_recv` answers from its own view of the
        // socket's readiness, which is just what may lag here.
        use std::os::fd::AsFd;
        let socket = self.socket.as_fd().try_clone_to_owned().ok()?;
        let socket = std::os::unix::net::UnixDatagram::from(socket);
        loop {
            let n = socket.recv(&mut buf).ok()?;
            if let Some(ready) = self.read_one(&buf[..n], &mut complained) {
                return Some(ready);
            }
        }
    }

    /// One message: `Some` for `READY=1`.
    fn read_one(&self, msg: &[u8], complained: &mut bool) -> Option<Option<String>> {
        match parse(msg) {
            Some(fields) => {
                if fields.iter().any(|(k, v)| *k == "READY" && *v == "1") {
                    let sig = fields
                        .iter()
                        .find(|(k, _)| *k == RESTART_SIGNAL)
                        .map(|(_, v)| (*v).to_owned());
                    return Some(sig);
                }
                debug!(?fields, "notify message from the new generation");
            }
            None if !*complained => {
                *complained = true;
                warn!(
                    bytes = msg.len(),
                    "the new generation sent a malformed notify message (expected KEY=VALUE lines); ignoring it"
                );
            }
            None => {}
        }
        None
    }
}

/// `KEY=VALUE` lines; `None` for anything else.
fn parse(msg: &[u8]) -> Option<Vec<(&str, &str)>> {
    let text = std::str::from_utf8(msg).ok()?;
    let fields: Option<Vec<_>> = text
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=')?;
            let valid = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            valid.then_some((k, v))
        })
        .collect();
    fields.filter(|f| !f.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_messages_parse_strictly() {
        assert_eq!(parse(b"READY=1"), Some(vec![("READY", "1")]));
        assert_eq!(
            parse(b"READY=1\nSTATUS=serving\n"),
            Some(vec![("READY", "1"), ("STATUS", "serving")])
        );
        assert_eq!(parse(b"garbage"), None);
        assert_eq!(parse(b"\xff\xfe"), None);
        assert_eq!(parse(b"ready=1"), None);
        assert_eq!(parse(b""), None);
    }

    #[tokio::test]
    async fn ready_is_heard_after_garbage() {
        let l = Listener::bind().unwrap();
        let path = l.path().as_os_str().to_owned();
        send(&path, "not a notify message").unwrap();
        send(&path, "STATUS=warming up").unwrap();
        send(&path, "READY=1\nBATON_RESTART_SIGNAL=SIGHUP").unwrap();
        let sig = tokio::time::timeout(std::time::Duration::from_secs(10), l.ready())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(sig.as_deref(), Some("SIGHUP"));
        let dir = l.dir.path().to_owned();
        drop(l);
        assert!(!dir.exists(), "the private directory is removed");
    }
}
