//! Listening sockets: parse addresses, bind them with the right options.
//!
//! A [`Listener`] holds a standard-library socket, so it can be created before the
//! async runtime starts, and handed to a child process later without conversion. The
//! socket is non-blocking and close-on-exec from the moment it exists.

use std::fmt;
use std::io;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;

use socket2::{Domain, Socket, Type};

use crate::addr::ListenAddr;
use crate::error::Error;

/// The accept-queue length asked of the kernel (capped by `net.core.somaxconn`).
const BACKLOG: i32 = 1024;

/// The name of the listener at `position` (from 1) when none is given: `http`,
/// `http-2`, `http-3`, ... [`Server::bind`] names its listeners so, in the order the
/// process binds them, and so does a master (`baton run --listen ADDR`) for its
/// workers: a worker that binds the same addresses in the same order takes the
/// sockets passed to it.
///
/// [`Server::bind`]: crate::http::Server::bind
pub fn default_listener_name(position: usize) -> String {
    if position <= 1 {
        "http".to_owned()
    } else {
        format!("http-{position}")
    }
}

/// A listening socket as the coordinator holds it for the next generation
/// ([`Shutdown::listeners`](crate::Shutdown::listeners)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    name: String,
    addr: Option<ListenAddr>,
}

impl ListenerInfo {
    pub(crate) fn of(name: &str, socket: std::os::fd::BorrowedFd<'_>) -> ListenerInfo {
        let addr = socket2::SockRef::from(&socket)
            .local_addr()
            .ok()
            .and_then(|a| match (a.as_socket(), a.as_pathname()) {
                (Some(sa), _) => Some(ListenAddr::Tcp(sa)),
                (None, Some(path)) => Some(ListenAddr::Unix(path.to_owned())),
                _ => None,
            });
        ListenerInfo {
            name: name.to_owned(),
            addr,
        }
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address it listens on; `None` if the socket cannot say (an unnamed Unix
    /// socket).
    pub fn addr(&self) -> Option<&ListenAddr> {
        self.addr.as_ref()
    }
}

impl fmt::Display for ListenerInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.addr {
            Some(a) => write!(f, "{} {a}", self.name),
            None => write!(f, "{} ?", self.name),
        }
    }
}

/// A bound, listening socket with a name.
///
/// The name identifies the listener in logs and when sockets are handed to the next
/// generation (two listeners may both ask for port 0, so an address does not identify
/// a listener): the next generation asks for the same name and gets the same socket.
#[derive(Debug)]
pub struct Listener {
    name: String,
    socket: Socket,
    /// The address actually bound (the real port when `:0` was asked for).
    local: ListenAddr,
    /// Passed to this process rather than bound by it.
    inherited: bool,
}

impl Listener {
    /// Takes the socket passed to this process for listener `name`, or binds `addr` and
    /// starts listening.
    ///
    /// When the process was given sockets by systemd's socket-activation protocol (by a
    /// previous generation at a restart, by systemd, by `systemd-socket-activate`), the
    /// socket passed under `name` is returned, after checking that it listens on `addr`
    /// (any port if `addr` asks for port 0). Sockets passed without names are matched by
    /// address. Otherwise a fresh socket is bound:
    ///
    /// TCP sockets get `SO_REUSEADDR` (never `SO_REUSEPORT`: a second socket on the same
    /// port loses what sits in the first one's accept queue when it closes), IPv6 sockets
    /// are IPv6-only. A Unix socket path left behind by a process that is gone is
    /// replaced; one that a live process still accepts on is an error.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidListenerName`]; [`Error::Inherited`] or
    /// [`Error::InheritedMismatch`] when passed sockets are unusable or do not match
    /// (never papered over by binding a fresh socket); [`Error::AddressInUse`] when
    /// another socket holds the address; [`Error::Io`] for other failures (permission
    /// denied, no such interface, a path that exists and is not a socket).
    pub fn bind(name: impl Into<String>, addr: &ListenAddr) -> Result<Self, Error> {
        let name = name.into();
        check_name(&name)?;
        if let Some((socket, local)) = crate::activation::take(&name, addr)? {
            return Ok(Listener {
                name,
                socket,
                local,
                inherited: true,
            });
        }
        let context = |source: io::Error| {
            if source.kind() == io::ErrorKind::AddrInUse {
                Error::AddressInUse {
                    addr: addr.to_string(),
                }
            } else {
                Error::io(format!("listen on {addr}"), source)
            }
        };
        let socket = match addr {
            ListenAddr::Tcp(sa) => {
                let socket =
                    Socket::new(Domain::for_address(*sa), Type::STREAM, None).map_err(context)?;
                if sa.is_ipv6() {
                    socket.set_only_v6(true).map_err(context)?;
                }
                socket.set_reuse_address(true).map_err(context)?;
                socket.bind(&(*sa).into()).map_err(context)?;
                socket
            }
            ListenAddr::Unix(path) => {
                remove_stale_unix_socket(path).map_err(context)?;
                let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(context)?;
                let sockaddr = socket2::SockAddr::unix(path).map_err(context)?;
                socket.bind(&sockaddr).map_err(context)?;
                socket
            }
        };
        socket.listen(BACKLOG).map_err(context)?;
        socket.set_nonblocking(true).map_err(context)?;
        let local = local_addr(&socket, addr).map_err(context)?;
        Ok(Listener {
            name,
            socket,
            local,
            inherited: false,
        })
    }

    /// Every socket passed to this process (by a master, a previous generation, systemd
    /// or `systemd-socket-activate`) that no listener took yet, in the order passed:
    /// for a program that serves whatever it is given. Each is named as it was passed,
    /// or, when no name was passed, by its position ([`default_listener_name`]). Empty
    /// when nothing was passed.
    ///
    /// # Errors
    ///
    /// [`Error::Inherited`] if the passed sockets are unusable;
    /// [`Error::InvalidListenerName`] for a passed name baton cannot use.
    pub fn inherited() -> Result<Vec<Listener>, Error> {
        crate::activation::take_all()?
            .into_iter()
            .enumerate()
            .map(|(i, (name, socket, local))| {
                let name = name.unwrap_or_else(|| default_listener_name(i + 1));
                check_name(&name)?;
                Ok(Listener {
                    name,
                    socket,
                    local,
                    inherited: true,
                })
            })
            .collect()
    }

    /// `true` when the socket was passed to this process (a restart, socket
    /// activation) rather than bound by it.
    pub fn is_inherited(&self) -> bool {
        self.inherited
    }

    #[cfg(feature = "http")]
    /// A close-on-exec duplicate of the socket, kept by the coordinator to hand the
    /// listener to the next generation.
    pub(crate) fn duplicate(&self) -> io::Result<std::os::fd::OwnedFd> {
        Ok(self.socket.try_clone()?.into())
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The address the socket is bound to (with the real port if port 0 was asked for).
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local
    }

    #[cfg(feature = "http")]
    /// The socket, for a server to register with its runtime (its kind follows from
    /// [`local_addr`](Listener::local_addr)).
    pub(crate) fn into_socket(self) -> Socket {
        self.socket
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

/// Names travel in `LISTEN_FDNAMES`, separated by `:`.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidListenerName { name: name.into() })
    }
}

fn local_addr(socket: &Socket, asked: &ListenAddr) -> io::Result<ListenAddr> {
    match asked {
        ListenAddr::Tcp(_) => socket
            .local_addr()?
            .as_socket()
            .map(ListenAddr::Tcp)
            .ok_or_else(|| io::Error::other("bound TCP socket has no IP address")),
        ListenAddr::Unix(path) => Ok(ListenAddr::Unix(path.clone())),
    }
}

/// Removes a Unix socket file that no process accepts on any more.
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        ));
    }
    match StdUnixStream::connect(path) {
        // Someone accepts there: the address is in use.
        Ok(_) => Err(io::ErrorKind::AddrInUse.into()),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_reports_the_real_port_and_a_taken_port_is_in_use() {
        let first = Listener::bind("a", &"127.0.0.1:0".parse().unwrap()).unwrap();
        let ListenAddr::Tcp(bound) = first.local_addr().clone() else {
            panic!("tcp listener has a tcp address")
        };
        assert_ne!(bound.port(), 0);
        let err = Listener::bind("b", &ListenAddr::Tcp(bound)).unwrap_err();
        assert!(matches!(err, Error::AddressInUse { .. }), "{err}");
        assert!(err.to_string().contains(&bound.to_string()));
    }

    #[test]
    fn names_must_travel_in_listen_fdnames() {
        let addr = "127.0.0.1:0".parse().unwrap();
        for bad in ["", "a:b", "with space", &"x".repeat(256)] {
            assert!(
                matches!(
                    Listener::bind(bad, &addr),
                    Err(Error::InvalidListenerName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn stale_unix_socket_is_replaced_live_one_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let addr = ListenAddr::Unix(path.clone());
        let live = Listener::bind("a", &addr).unwrap();
        assert!(matches!(
            Listener::bind("b", &addr),
            Err(Error::AddressInUse { .. })
        ));
        drop(live); // the file stays behind, nobody accepts
        assert!(path.exists());
        Listener::bind("c", &addr).expect("stale socket file is replaced");
    }
}
