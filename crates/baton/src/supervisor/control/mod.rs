//! The master's control socket: a Unix stream socket (mode 0600) that `baton stop`,
//! `reload`, `restart` and `status` talk to.
//!
//! The protocol is lines of text. The client sends one command line within
//! [`COMMAND_TIMEOUT`]: `status`, `reload`, `restart` or `stop` ([`Request`]). The
//! master answers with any number of `progress TEXT` lines ([`Progress`]; for `status`,
//! `status KEY VALUE...` lines, [`StatusItem`]) and ends with exactly one `ok TEXT` or
//! `error TEXT` line, then closes the connection ([`Line`] encodes and decodes each).
//! A client that sends anything else, or nothing, gets an `error` line and is closed;
//! the master and its workers are not disturbed.

mod client;
mod protocol;

pub use client::{Answer, Conversation, ask, ask_blocking};
pub use protocol::{
    Ending, LastReload, Line, MasterState, Progress, Request, Role, Status, StatusItem,
    WorkerStatus,
};

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

/// How long a client has to send its command line.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest command line accepted.
const MAX_LINE: usize = 128;
/// Clients served at once (their request read); more are told the master is busy.
const MAX_CLIENTS: usize = 64;
/// Clients whose command line is awaited at once; a new one past it closes the one
/// that waited longest (a silent client cannot hold a place a prompt one needs).
const MAX_PENDING: usize = 64;
/// The answer to a client past the master's bound of clients served at once (64); the
/// CLI recognises it and falls back to the master's signal.
pub const BUSY: &str = "busy: too many control clients at once";

/// Where the answer to one request goes. Cloned for every party that reports on it; the
/// connection closes when the last clone is dropped, so a final line must be sent
/// first.
#[derive(Debug, Clone)]
pub(crate) struct Reply(Option<mpsc::UnboundedSender<Line>>);

impl Reply {
    /// A reply and the receiving end of its lines.
    pub(crate) fn channel() -> (Reply, mpsc::UnboundedReceiver<Line>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reply(Some(tx)), rx)
    }

    /// A reply that goes nowhere (a request that came by signal).
    pub(crate) fn none() -> Reply {
        Reply(None)
    }

    fn send(&self, line: Line) {
        // A client that went away is no reason to do anything differently.
        if let Some(tx) = &self.0 {
            let _ = tx.send(line);
        }
    }

    pub(crate) fn progress(&self, step: Progress) {
        self.send(Line::Progress(step));
    }

    pub(crate) fn status(&self, status: &Status) {
        for item in status.items() {
            self.send(Line::Status(item));
        }
    }

    pub(crate) fn ok(&self, text: impl std::fmt::Display) {
        self.send(Line::Ok(text.to_string()));
    }

    pub(crate) fn error(&self, text: impl std::fmt::Display) {
        self.send(Line::Error(text.to_string()));
    }
}

/// A request for the master.
#[derive(Debug)]
pub(crate) struct Asked {
    pub(crate) request: Request,
    pub(crate) reply: Reply,
}

/// The control socket, bound but not yet served (no async runtime needed); the file
/// is removed on drop.
#[derive(Debug)]
pub(crate) struct Bound {
    listener: std::os::unix::net::UnixListener,
    path: Option<PathBuf>,
}

impl Bound {
    /// Binds `path` with mode 0600 from the start: the socket is made in a fresh
    /// private directory beside `path`, given its mode, and renamed into place, so that
    /// no other user can ever connect to it. A socket file of this user that no one
    /// answers on (left by a master that was killed) is replaced; one that answers is an
    /// error (another master uses it), and so is anything else at `path` (a file, a
    /// symlink, another user's socket): it is never removed.
    pub(crate) fn bind(path: &Path) -> io::Result<Bound> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => {
                crate::trust::check_file(path, true)?;
                match std::os::unix::net::UnixStream::connect(path) {
                    Ok(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            "another master answers on this control socket",
                        ));
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        debug!(path = %path.display(), "replacing a stale control socket");
                        std::fs::remove_file(path)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
        let mut hidden = std::ffi::OsString::from(".");
        hidden.push(name);
        hidden.push(format!(".{}", crate::trust::random_name()));
        let staging = match dir {
            Some(d) => d.join(hidden),
            None => PathBuf::from(hidden),
        };
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
        }
        let made = staging.join("s");
        let bound = (|| -> io::Result<std::os::unix::net::UnixListener> {
            let listener = std::os::unix::net::UnixListener::bind(&made)?;
            std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&made, path)?;
            Ok(listener)
        })();
        let _ = std::fs::remove_file(&made);
        let _ = std::fs::remove_dir(&staging);
        let listener = bound?;
        let bound = Bound {
            listener,
            path: Some(path.to_owned()),
        };
        bound.listener.set_nonblocking(true)?;
        Ok(bound)
    }

    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Starts serving; call within the async runtime.
    pub(crate) fn serve(mut self) -> io::Result<Server> {
        let listener = UnixListener::from_std(self.listener.try_clone()?)?;
        let path = self.path.take().unwrap_or_default();
        Ok(Server {
            listener,
            path,
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
            pending: Arc::default(),
        })
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The control socket being served; the file is removed on drop.
#[derive(Debug)]
pub(crate) struct Server {
    listener: UnixListener,
    path: PathBuf,
    clients: Arc<Semaphore>,
    /// The clients whose command line is awaited, oldest first.
    pending: Arc<std::sync::Mutex<Pending>>,
}

/// Connections whose command line is awaited, oldest first (by number).
#[derive(Debug, Default)]
struct Pending {
    next: u64,
    waiting: std::collections::VecDeque<(u64, tokio::task::AbortHandle)>,
}

impl Server {
    /// Binds and serves `path` (see [`Bound::bind`]).
    #[cfg(test)]
    pub(crate) fn bind(path: &Path) -> io::Result<Server> {
        Bound::bind(path)?.serve()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `limit` for the clients being served to get their last lines.
    pub(crate) async fn flush(&self, limit: Duration) {
        let all = u32::try_from(MAX_CLIENTS).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(limit, self.clients.acquire_many(all)).await;
    }

    /// Accepts the next client and serves it in a task of its own, which sends its
    /// request to `requests`.
    pub(crate) async fn accept(&self, requests: &mpsc::UnboundedSender<Asked>) {
        // At the bound of clients awaited, the one that waited longest goes before the
        // next is accepted (and its task is dropped, its descriptor closed, before).
        let evicted = {
            let mut pending = crate::sync::lock(&self.pending);
            let mut evicted = false;
            while pending.waiting.len() >= MAX_PENDING {
                let Some((_, oldest)) = pending.waiting.pop_front() else {
                    break;
                };
                oldest.abort();
                evicted = true;
            }
            evicted
        };
        if evicted {
            tokio::task::yield_now().await;
        }
        let stream = match self.listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!(error = %e, "control socket: accept failed");
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        // Only this user (and root) may control the master, whatever the socket's
        // mode and directory turn out to be. A refused client gets its answer from a
        // task among the bounded ones below (its request read first, so that the
        // answer is not lost to a reset).
        let refused = match stream.peer_cred() {
            Ok(cred) if cred.uid() == crate::trust::euid() || cred.uid() == 0 => None,
            Ok(cred) => {
                warn!(
                    peer_uid = cred.uid(),
                    "control socket: a client of another user was refused"
                );
                Some(Line::Error(format!(
                    "permission denied: uid {} may not control this master",
                    cred.uid()
                )))
            }
            Err(e) => {
                warn!(error = %e, "control socket: cannot tell who the client is; refused");
                return;
            }
        };
        // A bounded number of connections in every state (issue 32: 4,000 silent
        // clients took the master to 4,018 descriptors): at most MAX_PENDING wait for
        // their command line (a new one closes the one that waited longest), at most
        // MAX_CLIENTS are served; past that, "busy" is answered at once and the
        // connection closed, without a task (the CLI then falls back to the signal).
        let (requests, clients) = (requests.clone(), Arc::clone(&self.clients));
        let pending = Arc::clone(&self.pending);
        let mut waiting = crate::sync::lock(&self.pending);
        let id = waiting.next;
        waiting.next += 1;
        let task = tokio::spawn(async move {
            if let Some(refusal) = refused {
                refuse(stream, &format!("{}\n", refusal.encode())).await;
                crate::sync::lock(&pending)
                    .waiting
                    .retain(|(i, _)| *i != id);
                return;
            }
            let request = read_request(stream).await;
            crate::sync::lock(&pending)
                .waiting
                .retain(|(i, _)| *i != id);
            let Some((mut stream, request)) = request else {
                return;
            };
            let Ok(permit) = clients.try_acquire_owned() else {
                refuse_now(&stream, &Line::Error(BUSY.into()));
                return;
            };
            serve(&mut stream, request, requests).await;
            drop(permit);
        });
        waiting.waiting.push_back((id, task.abort_handle()));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads the client's command line (within [`COMMAND_TIMEOUT`]); a bad or missing one
/// is answered with an error and the connection closed (`None`).
async fn read_request(mut stream: UnixStream) -> Option<(UnixStream, Request)> {
    let line = tokio::time::timeout(COMMAND_TIMEOUT, read_line(&mut stream)).await;
    let error = match line {
        Ok(Ok(line)) => match line.parse::<Request>() {
            Ok(r) => return Some((stream, r)),
            Err(e) => e,
        },
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no command within {COMMAND_TIMEOUT:?}"),
    };
    refuse(stream, &format!("{}\n", Line::Error(error).encode())).await;
    None
}

async fn serve(stream: &mut UnixStream, request: Request, requests: mpsc::UnboundedSender<Asked>) {
    let (reply, mut rx) = Reply::channel();
    if requests.send(Asked { request, reply }).is_err() {
        let e = Line::Error("the master is exiting".into());
        let _ = write(stream, format!("{}\n", e.encode()).as_bytes()).await;
        return;
    }
    while let Some(line) = rx.recv().await {
        let mut text = line.encode();
        text.push('\n');
        if write(stream, text.as_bytes()).await.is_err() {
            // The client left; the request carries on regardless.
            return;
        }
    }
}

/// Answers `line` without waiting (into the socket's buffer, which a fresh connection
/// has room for) and closes the connection.
fn refuse_now(stream: &UnixStream, line: &Line) {
    let _ = stream.try_write(format!("{}\n", line.encode()).as_bytes());
}

async fn refuse(mut stream: UnixStream, msg: &str) {
    if write(&mut stream, msg.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        for _ in 0..16 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Writes with a bound, so that a client that never reads cannot hold a task forever.
async fn write(stream: &mut UnixStream, bytes: &[u8]) -> io::Result<()> {
    tokio::time::timeout(COMMAND_TIMEOUT, stream.write_all(bytes))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client does not read"))?
}

/// Reads one line of at most [`MAX_LINE`] bytes.
async fn read_line(stream: &mut UnixStream) -> io::Result<String> {
    let mut buf = Vec::with_capacity(MAX_LINE);
    let mut byte = [0u8; 64];
    loop {
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("command line longer than {MAX_LINE} bytes"),
            ));
        }
    }
    String::from_utf8(buf)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "command is not UTF-8 text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn garbage_silence_and_long_lines_get_an_error_and_no_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let server = Server::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ask = |bytes: &'static [u8]| {
            let path = path.clone();
            async move {
                let mut s = UnixStream::connect(&path).await.unwrap();
                s.write_all(bytes).await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        for (input, expect) in [
            (&b"hello\n"[..], "error unknown command `hello`"),
            (&[0xff, 0xfe, b'\n'][..], "error command is not UTF-8"),
            (&[b'x'; 300][..], "error command line longer than 128 bytes"),
        ] {
            let client = tokio::spawn(ask(input));
            server.accept(&tx).await;
            let out = client.await.unwrap();
            assert!(out.starts_with(expect), "{input:?}: {out:?}");
        }
        assert!(rx.try_recv().is_err(), "no request reached the master");

        // A real one reaches it, and the client sees what the master answers.
        let client = tokio::spawn(ask(b"reload\n"));
        server.accept(&tx).await;
        let req = rx.recv().await.unwrap();
        assert_eq!(req.request, Request::Reload);
        req.reply.progress(Progress::Spawned {
            generation: 2,
            pid: 7,
        });
        req.reply.ok("done");
        drop(req);
        assert_eq!(
            client.await.unwrap(),
            "progress spawned gen 2 pid 7\nok done\n"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_closed_after_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        let server = Server::bind(&path).unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut s = UnixStream::connect(&path).await.unwrap();
        server.accept(&tx).await;
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "error no command within 5s\n");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let first = Bound::bind(&path).unwrap();
        let err = Bound::bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        rt.block_on(async {
            let first = first.serve().unwrap();
            let err = Server::bind(&path).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
            drop(first);
            assert!(!path.exists());
        });
    }
}
