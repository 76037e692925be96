//! The private channel between a generation and its successor: one end of a Unix
//! seqpacket socket pair made at the restart, the other passed to the new process with
//! the listening sockets (`BATON_CHANNEL_FD`). Each message is one packet, descriptors
//! travel with it (`SCM_RIGHTS`). Knows nothing of HTTP.
//!
//! The successor says which listeners it takes open connections for ([`Message::Takes`],
//! sent as its servers start, so before it reports ready); the predecessor sends it
//! connections ([`Message::Conn`], the socket attached) and, while it drains, its
//! counters ([`Message::Totals`]). A connection whose message was sent belongs to the
//! successor (if it dies before reading it, the kernel closes the socket with the
//! channel); one that could not be sent stays with the predecessor.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The environment variable naming the channel's descriptor in the successor.
pub(crate) const CHANNEL_FD: &str = "BATON_CHANNEL_FD";
/// The first byte of every message: a successor built from another version of baton
/// ignores what it cannot read, and the predecessor sends nothing it was not asked for.
const VERSION: u8 = 1;
/// The largest message: a connection's buffered bytes must fit in it.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// What the first bytes of a handed-over connection were known to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    /// Not known yet: no request had arrived (the bytes, if any, are the start of one).
    Unknown,
    /// HTTP/1, between two requests.
    Http1,
}

/// Counters a generation carries over to the next one (its own plus what it was given
/// by its predecessor), so that totals never go back at a restart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) accepted: u64,
    pub(crate) closed: u64,
    pub(crate) requests: u64,
    pub(crate) forced: u64,
    pub(crate) timed_out: u64,
    pub(crate) handed_over: u64,
    /// Connections still open in the sender (and in the generations before it).
    pub(crate) open: u64,
    pub(crate) requests_in_flight: u64,
}

impl Totals {
    const FIELDS: usize = 8;

    fn to_array(self) -> [u64; Self::FIELDS] {
        [
            self.accepted,
            self.closed,
            self.requests,
            self.forced,
            self.timed_out,
            self.handed_over,
            self.open,
            self.requests_in_flight,
        ]
    }

    fn from_array(a: [u64; Self::FIELDS]) -> Totals {
        Totals {
            accepted: a[0],
            closed: a[1],
            requests: a[2],
            forced: a[3],
            timed_out: a[4],
            handed_over: a[5],
            open: a[6],
            requests_in_flight: a[7],
        }
    }
}

/// One message of the channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Successor to predecessor: it serves these listeners and takes their open
    /// connections.
    Takes(Vec<String>),
    /// Predecessor to successor: an open connection of `listener` (its socket attached),
    /// with the bytes read from it but not yet served.
    Conn {
        listener: String,
        proto: Proto,
        buffered: Vec<u8>,
    },
    /// Predecessor to successor: its totals, sent while it drains and once at its end.
    Totals { totals: Totals, last: bool },
}

const TAKES: u8 = b'T';
const CONN: u8 = b'C';
const TOTALS: u8 = b'N';

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
                buffered,
            } => {
                out.push(CONN);
                out.push(match proto {
                    Proto::Unknown => 0,
                    Proto::Http1 => 1,
                });
                // Listener names are short (checked by `fits`).
                out.push(listener.len() as u8);
                out.extend_from_slice(listener.as_bytes());
                out.extend_from_slice(buffered);
            }
            Message::Totals { totals, last } => {
                out.push(TOTALS);
                out.push(u8::from(*last));
                for n in totals.to_array() {
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
                let (&len, rest) = rest.split_first()?;
                let len = usize::from(len);
                if rest.len() < len {
                    return None;
                }
                let (name, buffered) = rest.split_at(len);
                Some(Message::Conn {
                    listener: std::str::from_utf8(name).ok()?.to_owned(),
                    proto,
                    buffered: buffered.to_vec(),
                })
            }
            TOTALS => {
                let (&last, rest) = rest.split_first()?;
                if rest.len() != Totals::FIELDS * 8 {
                    return None;
                }
                let mut a = [0u64; Totals::FIELDS];
                for (slot, chunk) in a.iter_mut().zip(rest.chunks_exact(8)) {
                    *slot = u64::from_le_bytes(chunk.try_into().ok()?);
                }
                Some(Message::Totals {
                    totals: Totals::from_array(a),
                    last: last != 0,
                })
            }
            _ => None,
        }
    }

    /// Whether a connection of `listener` with `buffered` bytes fits in one message.
    pub(crate) fn fits(listener: &str, buffered: usize) -> bool {
        listener.len() <= usize::from(u8::MAX) && buffered + listener.len() + 4 <= MAX_MESSAGE
    }
}

/// One end of the channel, registered with the tokio runtime.
#[derive(Debug)]
pub(crate) struct Channel {
    fd: AsyncFd<OwnedFd>,
}

impl Channel {
    /// Makes a new socket pair: this generation's end, and the one to pass on.
    pub(crate) fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
        crate::sys::seqpacket_pair()
    }

    /// Registers `fd` with the current runtime.
    pub(crate) fn new(fd: OwnedFd) -> io::Result<Channel> {
        Ok(Channel {
            fd: crate::sys::register_fd(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
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

    /// The next message and the descriptors that came with it; `None` once the other
    /// end is closed. Messages this version cannot read are skipped (their descriptors
    /// closed).
    pub(crate) async fn recv(&self) -> io::Result<Option<(Message, Vec<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| crate::sys::recv_with_fds(fd.get_ref().as_fd(), &mut buf)) {
                Ok(Ok(Some((n, fds)))) => {
                    if let Some(message) = Message::decode(&buf[..n]) {
                        return Ok(Some((message, fds)));
                    }
                }
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// The messages already waiting, without waiting for more.
    pub(crate) fn drain_now(&self) -> Vec<(Message, Vec<OwnedFd>)> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut got = Vec::new();
        while let Ok(Some((n, fds))) =
            crate::sys::recv_with_fds(self.fd.get_ref().as_fd(), &mut buf)
        {
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
            Message::Conn {
                listener: "http-2".into(),
                proto: Proto::Http1,
                buffered: b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec(),
            },
            Message::Conn {
                listener: "http".into(),
                proto: Proto::Unknown,
                buffered: vec![],
            },
            Message::Totals {
                totals: Totals {
                    accepted: 1,
                    closed: 2,
                    requests: u64::MAX,
                    forced: 4,
                    timed_out: 5,
                    handed_over: 6,
                    open: 7,
                    requests_in_flight: 8,
                },
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
        assert_eq!(Message::decode(&[2, TAKES]), None, "another version");
        assert_eq!(Message::decode(&[VERSION, b'?']), None, "another kind");
        assert_eq!(Message::decode(&[VERSION, CONN, 7, 0]), None, "bad proto");
        assert_eq!(
            Message::decode(&[VERSION, CONN, 1, 9, b'a']),
            None,
            "short name"
        );
        assert_eq!(Message::decode(&[VERSION, TOTALS, 0, 1, 2]), None, "short");
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
