//! The private channel between a generation and its successor: one end of a Unix
//! seqpacket socket pair made at the restart, the other passed to the new process with
//! the listening sockets (`BATON_CHANNEL_FD`). Each message is one packet, descriptors
//! travel with it (`SCM_RIGHTS`). Knows nothing of HTTP.
//!
//! The successor says which listeners it takes open connections for ([`Message::Takes`],
//! sent as its servers start, so before it reports ready); the predecessor sends it
//! connections ([`Message::Conn`], the socket attached) and its counters
//! ([`Message::Totals`]: at the hand-over, whenever the successor asks with
//! [`Message::TotalsPlease`] while it drains, and at its end). A connection whose message was sent belongs to the
//! successor (if it dies before reading it, the kernel closes the socket with the
//! channel); one that could not be sent stays with the predecessor.
// The connection part serves the HTTP servers only; a build without them (the `baton`
// CLI) keeps the totals, the keys and the master's messages.
#![cfg_attr(not(feature = "http"), allow(dead_code))]

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::tracker::History;

/// The first byte of every message: a successor built from another version of baton
/// ignores what it cannot read, and the predecessor sends nothing it was not asked for.
///
/// 2: a connection carries its requests and clocks (issue 26); connection credit.
const VERSION: u8 = 2;
/// The largest message: a connection's buffered bytes must fit in it.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;
/// More numbers than this in a `Totals` message is a corrupt message, not a newer
/// generation's counters.
const MAX_TOTALS: usize = 1024;

/// What the first bytes of a handed-over connection were known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    /// Not known yet: no request had arrived (the bytes, if any, are the start of one).
    Unknown,
    /// HTTP/1, between two requests.
    Http1,
}

/// One message of the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Successor to predecessor: it serves these listeners and takes their open
    /// connections.
    Takes(Vec<String>),
    /// Predecessor to successor: an open connection of `listener` (its socket attached),
    /// with the bytes read from it but not yet served, and what it carries on (its
    /// requests and clocks).
    Conn {
        listener: String,
        proto: Proto,
        history: History,
        buffered: Vec<u8>,
    },
    /// Predecessor to successor: its totals, sent at the hand-over, when asked, and
    /// once at its end.
    /// The numbers as the sender lays them out (`shutdown`'s `Totals`: counters it
    /// does not know are dropped, ones it misses are 0).
    Totals { totals: Vec<u64>, last: bool },
    /// Successor to predecessor: send the totals now.
    TotalsPlease,
    /// Predecessor to successor, before it starts: secrets the service keeps across
    /// restarts in memory only (the TLS session-ticket keys), opaque here.
    Keys(Vec<u8>),
    /// Master to the worker it is about to drain (on the worker's link): the worker of
    /// generation `generation`, PID `pid`, serves now; the channel to it is attached.
    Successor { pid: u32, generation: u32 },
    /// Predecessor to successor, at the hand-over and whenever it changes: it still holds
    /// `count` open connections of `listener` that may move (its last word counts).
    Moving { listener: String, count: u32 },
    /// Successor to predecessor: room for `n` more connections of `listener` (credit;
    /// a connection is sent only on credit, so it always finds a slot and a
    /// descriptor).
    Room { listener: String, n: u32 },
    /// Successor to predecessor: it hands over in turn, or shuts down: the
    /// predecessor's probation is over (see `ShutdownBuilder::probation`).
    ProbationOver,
    /// Master to a worker (on its link): the worker of generation `generation`, PID
    /// `pid`, serves now and its probation runs: stop accepting, keep the connections.
    Standby { pid: u32, generation: u32 },
    /// Master to the worker standing by: the new one died in its probation: accept
    /// again, serve on.
    Resume,
}

impl Message {
    /// What it carries, in words (for a log line).
    pub(crate) fn what(&self) -> &'static str {
        match self {
            Message::Takes(_) => "the listeners taken",
            Message::Conn { .. } => "a connection",
            Message::Totals { .. } => "the totals",
            Message::TotalsPlease => "a request for the totals",
            Message::Keys(_) => "the TLS session-ticket keys (sessions will not resume)",
            Message::Successor { .. } => "the successor",
            Message::Moving { .. } => "what may move",
            Message::Room { .. } => "credit",
            Message::ProbationOver => "the end of the probation",
            Message::Standby { .. } => "a standby",
            Message::Resume => "a resume",
        }
    }
}

const TAKES: u8 = b'T';
const CONN: u8 = b'C';
const TOTALS: u8 = b'N';
const TOTALS_PLEASE: u8 = b'Q';
const KEYS: u8 = b'K';
const SUCCESSOR: u8 = b'S';
const MOVING: u8 = b'M';
const ROOM: u8 = b'R';
const PROBATION_OVER: u8 = b'P';
const STANDBY: u8 = b'B';
const RESUME: u8 = b'U';

impl Message {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match self {
            Message::Takes(names) => {
                out.push(TAKES);
                out.extend_from_slice(names.join("\n").as_bytes());
            }
            Message::Conn {
                listener,
                proto,
                history,
                buffered,
            } => {
                out.push(CONN);
                out.push(match proto {
                    Proto::Unknown => 0,
                    Proto::Http1 => 1,
                });
                out.extend_from_slice(&history.requests.to_le_bytes());
                out.extend_from_slice(&millis(history.idle_for).to_le_bytes());
                let head = history.head_for.map_or(u64::MAX, millis);
                out.extend_from_slice(&head.to_le_bytes());
                // Listener names are short (checked by `fits`).
                out.push(listener.len() as u8);
                out.extend_from_slice(listener.as_bytes());
                out.extend_from_slice(buffered);
            }
            Message::TotalsPlease => out.push(TOTALS_PLEASE),
            Message::Successor { pid, generation } => {
                out.push(SUCCESSOR);
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(&generation.to_le_bytes());
            }
            Message::Keys(bytes) => {
                out.push(KEYS);
                out.extend_from_slice(bytes);
            }
            Message::Moving { listener, count } => {
                out.push(MOVING);
                out.extend_from_slice(&count.to_le_bytes());
                out.extend_from_slice(listener.as_bytes());
            }
            Message::Room { listener, n } => {
                out.push(ROOM);
                out.extend_from_slice(&n.to_le_bytes());
                out.extend_from_slice(listener.as_bytes());
            }
            Message::ProbationOver => out.push(PROBATION_OVER),
            Message::Standby { pid, generation } => {
                out.push(STANDBY);
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(&generation.to_le_bytes());
            }
            Message::Resume => out.push(RESUME),
            Message::Totals { totals, last } => {
                out.push(TOTALS);
                out.push(u8::from(*last));
                for n in totals {
                    out.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        out
    }

    /// `None` for anything this version does not know (ignored by the receiver).
    pub(crate) fn decode(bytes: &[u8]) -> Option<Message> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION {
            return None;
        }
        let (&kind, rest) = rest.split_first()?;
        match kind {
            TAKES => {
                let text = std::str::from_utf8(rest).ok()?;
                Some(Message::Takes(
                    text.split('\n')
                        .filter(|n| !n.is_empty())
                        .map(str::to_owned)
                        .collect(),
                ))
            }
            CONN => {
                let (&proto, rest) = rest.split_first()?;
                let proto = match proto {
                    0 => Proto::Unknown,
                    1 => Proto::Http1,
                    _ => return None,
                };
                let (requests, rest) = take_u64(rest)?;
                let (idle, rest) = take_u64(rest)?;
                let (head, rest) = take_u64(rest)?;
                let history = History {
                    requests,
                    idle_for: Duration::from_millis(idle),
                    head_for: (head != u64::MAX).then(|| Duration::from_millis(head)),
                };
                let (&len, rest) = rest.split_first()?;
                let len = usize::from(len);
                if rest.len() < len {
                    return None;
                }
                let (name, buffered) = rest.split_at(len);
                Some(Message::Conn {
                    listener: std::str::from_utf8(name).ok()?.to_owned(),
                    proto,
                    history,
                    buffered: buffered.to_vec(),
                })
            }
            TOTALS => {
                let (&last, rest) = rest.split_first()?;
                if rest.len() % 8 != 0 || rest.len() > MAX_TOTALS * 8 {
                    return None;
                }
                let totals = rest
                    .chunks_exact(8)
                    .map(|chunk| u64::from_le_bytes(chunk.try_into().expect("8 bytes")))
                    .collect();
                Some(Message::Totals {
                    totals,
                    last: last != 0,
                })
            }
            TOTALS_PLEASE if rest.is_empty() => Some(Message::TotalsPlease),
            KEYS => Some(Message::Keys(rest.to_vec())),
            MOVING | ROOM => {
                let (n, name) = rest.split_first_chunk::<4>()?;
                let n = u32::from_le_bytes(*n);
                let listener = std::str::from_utf8(name).ok()?.to_owned();
                Some(if kind == MOVING {
                    Message::Moving { listener, count: n }
                } else {
                    Message::Room { listener, n }
                })
            }
            PROBATION_OVER if rest.is_empty() => Some(Message::ProbationOver),
            RESUME if rest.is_empty() => Some(Message::Resume),
            STANDBY if rest.len() == 8 => Some(Message::Standby {
                pid: u32::from_le_bytes(rest[..4].try_into().ok()?),
                generation: u32::from_le_bytes(rest[4..].try_into().ok()?),
            }),
            SUCCESSOR if rest.len() == 8 => Some(Message::Successor {
                pid: u32::from_le_bytes(rest[..4].try_into().ok()?),
                generation: u32::from_le_bytes(rest[4..].try_into().ok()?),
            }),
            _ => None,
        }
    }

    /// Whether a connection of `listener` with `buffered` bytes fits in one message.
    pub(crate) fn fits(listener: &str, buffered: usize) -> bool {
        listener.len() <= usize::from(u8::MAX) && buffered + listener.len() + 28 <= MAX_MESSAGE
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1)
}

fn take_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (n, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*n), rest))
}

/// One end of the channel, registered with the tokio runtime.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: AsyncFd<OwnedFd>,
    /// A descriptor kept open so that one is always free when a message with a socket
    /// is received: closed just before each receive, opened again after. A socket that
    /// arrives when the process has no descriptor left is closed by the kernel and its
    /// connection lost (issue 26, defect 3); with the spare that cannot happen, and
    /// when the spare cannot be opened again the next message waits in the channel
    /// (nothing is lost) until a descriptor is free.
    spare: std::sync::Mutex<Option<OwnedFd>>,
}

/// How long a receive waits for a free descriptor before it looks again.
const NO_DESCRIPTOR_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

impl Channel {
    /// Makes a new socket pair: this generation's end, and the one to pass on.
    pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
        crate::sys::seqpacket_pair()
    }

    /// Registers `fd` with the current runtime.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Channel> {
        Ok(Channel {
            fd: crate::sys::register_fd(fd, Interest::READABLE | Interest::WRITABLE)?,
            spare: std::sync::Mutex::new(crate::sys::spare_fd().ok()),
        })
    }

    /// One message now, if one waits (`WouldBlock` if not, or if no descriptor is free
    /// for a socket that may come with it).
    fn recv_now(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Vec<OwnedFd>)>> {
        let mut spare = crate::sync::lock(&self.spare);
        if spare.is_none() {
            // At the descriptor limit: wait, the message stays in the channel.
            *spare = Some(crate::sys::spare_fd().map_err(|e| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!("no descriptor free: {e}"),
                )
            })?);
        }
        drop(spare.take());
        let received = crate::sys::recv_with_fds(self.fd.get_ref().as_fd(), buf);
        *spare = crate::sys::spare_fd().ok();
        let received = received?;
        if let Some((_, _, true)) = &received {
            // Cannot happen with the spare, unless something else took the descriptor
            // in between: say so, loudly.
            tracing::error!(
                "a message of the generation channel lost its descriptors (no descriptor free): a connection was lost"
            );
        }
        Ok(received.map(|(n, fds, _)| (n, fds)))
    }

    /// Sends one message with `fds` attached; waits while the channel is full.
    pub(crate) async fn send(&self, message: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let bytes = message.encode();
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| {
                crate::sys::send_nonblocking_with_fds(fd.get_ref().as_fd(), &bytes, fds)
            }) {
                Ok(res) => return res,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one message now, without waiting (`WouldBlock` when the channel is full).
    pub(crate) fn try_send(&self, message: &Message) -> io::Result<()> {
        crate::sys::send_nonblocking_with_fds(self.fd.get_ref().as_fd(), &message.encode(), &[])
    }

    /// The next message and the descriptors that came with it; `None` once the other
    /// end is closed. Messages this version cannot read are skipped (their descriptors
    /// closed).
    pub(crate) async fn recv(&self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut guard = self.fd.readable().await?;
            match self.recv_now(&mut buf) {
                Ok(Some((n, fds))) => {
                    if let Some(message) = Message::decode(&buf[..n]) {
                        return Ok(Some((message, fds)));
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if crate::sync::lock(&self.spare).is_none() {
                        // No descriptor free: look again in a moment (the socket stays
                        // readable, so waiting for it would spin).
                        drop(guard);
                        tokio::time::sleep(NO_DESCRIPTOR_WAIT).await;
                    } else {
                        guard.clear_ready();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until something can be read (a message, or the other end's close).
    pub(crate) async fn when_readable(&self) -> io::Result<()> {
        let mut guard = self.fd.readable().await?;
        // Cleared before the caller reads: what comes after is a new edge.
        guard.clear_ready();
        Ok(())
    }

    /// The messages already waiting, without waiting for more, and whether the other
    /// end is closed.
    pub(crate) fn drain_now_or_closed(&self) -> (Vec<(Message, Vec<OwnedFd>)>, bool) {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut got = Vec::new();
        loop {
            match self.recv_now(&mut buf) {
                Ok(Some((n, fds))) => {
                    if let Some(message) = Message::decode(&buf[..n]) {
                        got.push((message, fds));
                    }
                }
                Ok(None) => return (got, true),
                Err(_) => return (got, false),
            }
        }
    }

    /// The messages already waiting, without waiting for more.
    pub(crate) fn drain_now(&self) -> Vec<(Message, Vec<OwnedFd>)> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut got = Vec::new();
        while let Ok(Some((n, fds))) = self.recv_now(&mut buf) {
            if let Some(message) = Message::decode(&buf[..n]) {
                got.push((message, fds));
            }
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_written() {
        let messages = [
            Message::Takes(vec!["http".into(), "admin".into()]),
            Message::Takes(vec![]),
            Message::TotalsPlease,
            Message::Keys(vec![1, 2, 3]),
            Message::Successor {
                pid: 4_000_000,
                generation: 7,
            },
            Message::Moving {
                listener: "http".into(),
                count: 224,
            },
            Message::Room {
                listener: "admin".into(),
                n: 3,
            },
            Message::ProbationOver,
            Message::Standby {
                pid: 77,
                generation: 3,
            },
            Message::Resume,
            Message::Conn {
                listener: "http-2".into(),
                proto: Proto::Http1,
                history: History {
                    requests: 12,
                    idle_for: Duration::from_millis(0),
                    head_for: Some(Duration::from_millis(2_500)),
                },
                buffered: b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(),
            },
            Message::Conn {
                listener: "http".into(),
                proto: Proto::Unknown,
                history: History {
                    requests: 0,
                    idle_for: Duration::from_millis(31_000),
                    head_for: None,
                },
                buffered: vec![],
            },
            Message::Totals {
                totals: (0..26).map(|i| if i == 7 { u64::MAX } else { i }).collect(),
                last: true,
            },
        ];
        for m in messages {
            assert_eq!(Message::decode(&m.encode()), Some(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn what_this_version_cannot_read_is_none() {
        assert_eq!(Message::decode(b""), None);
        assert_eq!(
            Message::decode(&[VERSION + 1, TAKES]),
            None,
            "another version"
        );
        assert_eq!(Message::decode(&[1, TAKES]), None, "an older version");
        assert_eq!(Message::decode(&[VERSION, b'?']), None, "another kind");
        assert_eq!(Message::decode(&[VERSION, CONN, 7, 0]), None, "bad proto");
        let mut short = vec![VERSION, CONN, 1];
        short.extend_from_slice(&[0; 24]);
        short.extend_from_slice(&[9, b'a']);
        assert_eq!(Message::decode(&short), None, "short name");
        assert_eq!(
            Message::decode(&[VERSION, CONN, 1, 0, 0]),
            None,
            "no history"
        );
        assert_eq!(Message::decode(&[VERSION, TOTALS, 0, 1, 2]), None, "short");
        let mut long = vec![VERSION, TOTALS, 0];
        long.extend_from_slice(&[0; (MAX_TOTALS + 1) * 8]);
        assert_eq!(Message::decode(&long), None, "too many numbers");
    }

    #[test]
    fn a_long_listener_name_or_buffer_does_not_fit() {
        assert!(Message::fits("http", 1000));
        assert!(!Message::fits(&"x".repeat(256), 0));
        assert!(!Message::fits("http", MAX_MESSAGE));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_socket_travels_with_its_message_and_the_end_is_seen() {
        use std::io::{Read, Write};
        let (a, b) = Channel::pair().unwrap();
        let (a, b) = (Channel::new(a).unwrap(), Channel::new(b).unwrap());
        let (mut mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let m = Message::Conn {
            listener: "http".into(),
            proto: Proto::Http1,
            history: History::default(),
            buffered: b"GET".to_vec(),
        };
        a.send(&m, &[theirs.as_fd()]).await.unwrap();
        drop(theirs);
        let (got, mut fds) = b.recv().await.unwrap().unwrap();
        assert_eq!(got, m);
        assert_eq!(fds.len(), 1);
        let mut received = std::os::unix::net::UnixStream::from(fds.remove(0));
        mine.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        received.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        drop(a);
        assert!(b.recv().await.unwrap().is_none(), "the other end closed");
    }
}
