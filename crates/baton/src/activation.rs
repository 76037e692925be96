//! Sockets passed to this process by systemd's socket-activation protocol: by systemd,
//! `systemd-socket-activate`, a previous generation of this program, or a supervisor.
//!
//! The protocol: `LISTEN_FDS=N` sockets at descriptors 3 .. 3+N, `LISTEN_PID` the PID
//! they are meant for (a grandchild that inherits the environment must ignore them),
//! `LISTEN_FDNAMES=a:b:...` optional names. baton adds one variable for a full restart
//! (an `exec` in the same process, where the sockets cannot be moved to 3.. without
//! racing the runtime's own descriptors): `BATON_LISTEN_FDS_AT=7,9` says where they are.
//!
//! The set is read once per process, on the first listener asked for. Each socket is
//! validated (open, a socket, a stream socket, listening, an address family baton
//! serves), made non-blocking (a blocking inherited socket would hang tokio) and
//! close-on-exec (so that programs the app runs do not hold it open).
//!
//! The variables stay in the process environment: removing them would be
//! `std::env::remove_var`, unsound once other threads run (Rust 2024 makes it
//! `unsafe`), and `LISTEN_PID` already tells any process that inherits them that they
//! are not its own. baton's own children get an environment built without them.

use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock};

use socket2::{Domain, Socket, Type};

use crate::addr::ListenAddr;
use crate::error::Error;
use crate::origin::{LISTEN_FDNAMES, LISTEN_FDS, LISTEN_FDS_AT, LISTEN_PID};
use crate::sync::lock;

/// More inherited sockets than this is a corrupt variable, not a configuration.
const MAX_INHERITED: usize = 4096;
/// The first descriptor of the protocol (`SD_LISTEN_FDS_START`).
const FIRST_FD: RawFd = 3;

#[derive(Debug)]
struct Inherited {
    /// `None` when no names were passed (plain `systemd-socket-activate`); such sockets
    /// are matched by address.
    name: Option<String>,
    socket: Socket,
    local: ListenAddr,
}

type Set = Result<Mutex<Vec<Inherited>>, String>;

static INHERITED: OnceLock<Set> = OnceLock::new();

fn set() -> &'static Set {
    INHERITED.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok();
        parse(
            env(LISTEN_FDS).as_deref(),
            env(LISTEN_PID).as_deref(),
            env(LISTEN_FDNAMES).as_deref(),
            env(LISTEN_FDS_AT).as_deref(),
            std::process::id(),
        )
        .map(Mutex::new)
    })
}

/// Takes the inherited socket for listener `name` asked to listen on `asked`, if one
/// was passed. `Ok(None)`: nothing was passed for it, bind a fresh socket.
///
/// # Errors
///
/// [`Error::Inherited`] if the passed sockets are unusable, [`Error::InheritedMismatch`]
/// if the socket passed under this name listens elsewhere, or the address asked for was
/// passed under another name.
pub(crate) fn take(name: &str, asked: &ListenAddr) -> Result<Option<(Socket, ListenAddr)>, Error> {
    let set = match set() {
        Ok(set) => set,
        Err(reason) => {
            return Err(Error::Inherited {
                reason: reason.clone(),
            });
        }
    };
    let mut set = lock(set);
    let mismatch = |reason: String| Error::InheritedMismatch {
        name: name.into(),
        asked: asked.to_string(),
        reason,
    };
    if let Some(i) = set.iter().position(|s| s.name.as_deref() == Some(name)) {
        if !matches(asked, &set[i].local) && from_fd_store() {
            // Kept in systemd's FD store by an earlier start whose listener of this
            // name listened elsewhere: the configuration changed. Give it back and
            // bind the address asked for.
            let old = set.swap_remove(i);
            crate::notify::remove_stored_fd(name);
            tracing::warn!(
                pid = std::process::id(),
                listener = name,
                "the socket the service manager passed for this listener (kept in its FD store by an earlier start, or from a .socket unit) listens on [{}]; removed from the store, binding [{asked}] as configured now",
                old.local
            );
            return Ok(None);
        }
        if !matches(asked, &set[i].local) {
            let fix = if crate::origin::is_worker() {
                "this program runs as a master's worker: start it with the address its master listens on, or without an address where it serves what it is passed"
            } else {
                "start the new generation with the same address, or give the new address a new listener name"
            };
            return Err(mismatch(format!(
                "the socket passed under this name listens on {}; {fix}",
                set[i].local
            )));
        }
        let s = set.swap_remove(i);
        return Ok(Some((s.socket, s.local)));
    }
    if let Some(i) = set
        .iter()
        .position(|s| s.name.is_none() && matches(asked, &s.local))
    {
        let s = set.swap_remove(i);
        return Ok(Some((s.socket, s.local)));
    }
    if let Some(other) = set.iter().find(|s| matches(asked, &s.local)) {
        return Err(mismatch(format!(
            "a socket on this address was passed under the name `{}`; listener names must stay the same across restarts",
            other.name.as_deref().unwrap_or("")
        )));
    }
    Ok(None)
}

/// Whether named sockets passed to this process may come from systemd's FD store: the
/// service manager started it (it has one, and this is not a previous generation's
/// successor, a full restart or a master's worker) and its unit may have a store
/// (systemd 254 and later say so in `FDSTORE=`; 252 does not say, so it may).
fn from_fd_store() -> bool {
    crate::notify::keeps_fd_store()
        && crate::origin::origin().parent.is_none()
        && std::env::var_os(LISTEN_FDS_AT).is_none()
}

/// Takes every socket passed to this process that no listener took yet, in the order
/// passed, with its name (if one was passed) and address.
///
/// # Errors
///
/// [`Error::Inherited`] if the passed sockets are unusable.
pub(crate) fn take_all() -> Result<Vec<(Option<String>, Socket, ListenAddr)>, Error> {
    let set = match set() {
        Ok(set) => set,
        Err(reason) => {
            return Err(Error::Inherited {
                reason: reason.clone(),
            });
        }
    };
    Ok(lock(set)
        .drain(..)
        .map(|s| (s.name, s.socket, s.local))
        .collect())
}

/// Closes inherited sockets that no listener claimed, and says so: a listener that the
/// new generation no longer has.
pub(crate) fn close_unclaimed() {
    if let Ok(set) = set() {
        for s in lock(set).drain(..) {
            // Kept for a listener in systemd's FD store: not any more.
            if let Some(name) = &s.name {
                crate::notify::remove_stored_fd(name);
            }
            tracing::warn!(
                pid = std::process::id(),
                listener = s.name.as_deref().unwrap_or("(unnamed)"),
                "inherited socket on [{}] was not asked for by any listener: closing it",
                s.local
            );
        }
    }
}

/// Does the socket bound to `got` serve a listener asked to listen on `asked`? Port 0
/// asks for any port (the inherited socket keeps the one the first generation got).
fn matches(asked: &ListenAddr, got: &ListenAddr) -> bool {
    match (asked, got) {
        (ListenAddr::Tcp(a), ListenAddr::Tcp(g)) => {
            a.ip() == g.ip() && (a.port() == 0 || a.port() == g.port())
        }
        (ListenAddr::Unix(a), ListenAddr::Unix(g)) => a == g,
        _ => false,
    }
}

fn parse(
    fds: Option<&str>,
    pid: Option<&str>,
    names: Option<&str>,
    at: Option<&str>,
    our_pid: u32,
) -> Result<Vec<Inherited>, String> {
    let Some(fds) = fds else {
        return Ok(Vec::new());
    };
    let Some(pid) = pid else {
        tracing::warn!(
            "LISTEN_FDS is set without LISTEN_PID: the sockets are not for this process; ignoring them"
        );
        return Ok(Vec::new());
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_PID=`{pid}` is not a process ID"))?;
    if pid != our_pid {
        tracing::warn!(
            listen_pid = pid,
            pid = our_pid,
            "LISTEN_PID names another process: the sockets are not for this one; ignoring them"
        );
        return Ok(Vec::new());
    }
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS=`{fds}` is not a number of sockets"))?;
    if n > MAX_INHERITED {
        return Err(format!(
            "LISTEN_FDS={n} is more sockets than baton accepts ({MAX_INHERITED})"
        ));
    }
    let positions: Vec<RawFd> = match at {
        None => (0..n).map(|i| FIRST_FD + i as RawFd).collect(),
        Some(at) if at.trim().is_empty() => Vec::new(),
        Some(at) => {
            let list = at
                .split(',')
                .map(|s| s.trim().parse::<RawFd>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("{LISTEN_FDS_AT}=`{at}` is not a list of descriptors"))?;
            if list.len() != n {
                return Err(format!(
                    "{LISTEN_FDS_AT} lists {} descriptors but LISTEN_FDS={n}",
                    list.len()
                ));
            }
            list
        }
    };
    let names: Vec<Option<String>> = match names {
        None => vec![None; n],
        Some(names) => {
            let list: Vec<&str> = if names.is_empty() && n == 0 {
                Vec::new()
            } else {
                names.split(':').collect()
            };
            if list.len() != n {
                return Err(format!(
                    "LISTEN_FDNAMES has {} names but LISTEN_FDS={n}",
                    list.len()
                ));
            }
            // Names that do not name one listener are treated as no name, and such
            // sockets are matched by address: "unknown" (what systemd-socket-activate
            // and older systemd pass without a name), a unit's name ("app.socket":
            // systemd's default without FileDescriptorName=), and a name given to
            // several sockets (a unit with two ListenStream= lines).
            let named = |s: &str| {
                !s.is_empty()
                    && s != "unknown"
                    && !s.ends_with(".socket")
                    && list.iter().filter(|o| **o == s).count() == 1
            };
            list.iter()
                .map(|s| named(s).then(|| (*s).to_owned()))
                .collect()
        }
    };
    let mut out = Vec::with_capacity(n);
    for (fd, name) in positions.into_iter().zip(names) {
        let label = match &name {
            Some(name) => format!("descriptor {fd} (`{name}`)"),
            None => format!("descriptor {fd}"),
        };
        let owned = crate::sys::adopt_inherited_fd(fd)
            .map_err(|e| format!("{label} was passed but is {e}"))?;
        let socket = Socket::from(owned);
        let (socket, local) = validate(socket).map_err(|e| format!("{label} {e}"))?;
        out.push(Inherited {
            name,
            socket,
            local,
        });
    }
    Ok(out)
}

fn validate(socket: Socket) -> Result<(Socket, ListenAddr), String> {
    let ty = socket.r#type().map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTSOCK) {
            "is not a socket".to_owned()
        } else {
            format!("cannot be inspected: {e}")
        }
    })?;
    if ty != Type::STREAM {
        return Err("is not a stream socket (TCP or Unix stream)".into());
    }
    if !socket
        .is_listener()
        .map_err(|e| format!("cannot be inspected: {e}"))?
    {
        return Err("is not listening (listen(2) was not called on it)".into());
    }
    let domain = socket
        .domain()
        .map_err(|e| format!("cannot be inspected: {e}"))?;
    let addr = socket
        .local_addr()
        .map_err(|e| format!("has no local address: {e}"))?;
    let local = if domain == Domain::IPV4 || domain == Domain::IPV6 {
        ListenAddr::Tcp(
            addr.as_socket()
                .ok_or("is an IP socket without an IP address")?,
        )
    } else if domain == Domain::UNIX {
        let path = addr
            .as_pathname()
            .ok_or("is a Unix socket without a path (unnamed or abstract)")?;
        ListenAddr::Unix(path.to_owned())
    } else {
        return Err("is of an address family baton does not serve".into());
    };
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("cannot be made non-blocking: {e}"))?;
    socket
        .set_cloexec(true)
        .map_err(|e| format!("cannot be made close-on-exec: {e}"))?;
    Ok((socket, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(fds: &str, names: Option<&str>) -> String {
        parse(Some(fds), Some("42"), names, None, 42).unwrap_err()
    }

    #[test]
    fn hostile_values_are_clear_errors() {
        assert!(err("abc", None).contains("LISTEN_FDS=`abc` is not a number"));
        assert!(err("99999999", None).contains("more sockets than baton accepts"));
        assert!(err("2", Some("a")).contains("has 1 names but LISTEN_FDS=2"));
        let e = parse(Some("1"), Some("x"), None, None, 42).unwrap_err();
        assert!(e.contains("LISTEN_PID=`x`"), "{e}");
        let e = parse(Some("1"), Some("42"), None, Some("1,2"), 42).unwrap_err();
        assert!(e.contains("lists 2 descriptors"), "{e}");
    }

    #[test]
    fn systemd_default_and_repeated_names_match_by_address() {
        use std::net::TcpListener;
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let at = format!("{},{}", pass(a), pass(b));
        let set = parse(
            Some("2"),
            Some("42"),
            Some("app.socket:app.socket"),
            Some(&at),
            42,
        )
        .unwrap();
        assert!(set.iter().all(|s| s.name.is_none()), "{set:?}");
        let empty = parse(Some("0"), Some("42"), Some(""), Some(""), 42).unwrap();
        assert!(
            empty.is_empty(),
            "an empty list after a full restart without listeners"
        );
    }

    #[test]
    fn standard_streams_are_never_taken() {
        let e = parse(Some("1"), Some("42"), None, Some("1"), 42).unwrap_err();
        assert!(e.contains("is not inherited"), "{e}");
    }

    #[test]
    fn another_process_s_sockets_are_ignored() {
        assert!(
            parse(Some("3"), Some("1"), None, None, 42)
                .unwrap()
                .is_empty()
        );
        assert!(parse(Some("3"), None, None, None, 42).unwrap().is_empty());
        assert!(parse(None, None, None, None, 42).unwrap().is_empty());
    }

    /// Hands `fd` over as an exec would: close-on-exec cleared, ownership given up.
    fn pass(fd: impl Into<std::os::fd::OwnedFd>) -> String {
        use std::os::fd::{AsFd, IntoRawFd};
        let fd = fd.into();
        crate::sys::set_cloexec(fd.as_fd(), false).unwrap();
        fd.into_raw_fd().to_string()
    }

    #[test]
    fn descriptors_that_are_not_listening_sockets_are_refused() {
        // A regular file, a stream socket that does not listen and a datagram socket,
        // each at its own descriptor (passed by position with BATON_LISTEN_FDS_AT).
        let file = pass(tempfile::tempfile().unwrap());
        let e = parse(Some("1"), Some("42"), None, Some(&file), 42).unwrap_err();
        assert!(e.contains("is not a socket"), "{e}");
        let stream = pass(Socket::new(Domain::IPV4, Type::STREAM, None).unwrap());
        let e = parse(Some("1"), Some("42"), None, Some(&stream), 42).unwrap_err();
        assert!(e.contains("is not listening"), "{e}");
        let dgram = pass(Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap());
        let e = parse(Some("1"), Some("42"), None, Some(&dgram), 42).unwrap_err();
        assert!(e.contains("not a stream socket"), "{e}");
    }

    /// Regression: when descriptor 3 was named but not passed, the runtime's own epoll
    /// descriptor sat there; it was taken, found not to be a socket, and closed under
    /// tokio's feet (an IO-safety abort).
    #[test]
    fn a_descriptor_this_process_opened_itself_is_never_taken() {
        use std::os::fd::AsRawFd;
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = own.as_raw_fd().to_string();
        let e = parse(Some("1"), Some("42"), None, Some(&fd), 42).unwrap_err();
        assert!(e.contains("is not inherited"), "{e}");
        own.local_addr().expect("still open and still ours");
    }

    #[test]
    fn a_listening_socket_is_taken_with_its_name_and_address() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let fd = pass(l);
        let set = parse(Some("1"), Some("42"), Some("web"), Some(&fd), 42).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].name.as_deref(), Some("web"));
        assert_eq!(set[0].local, ListenAddr::Tcp(addr));
        assert!(matches(&"127.0.0.1:0".parse().unwrap(), &set[0].local));
        assert!(!matches(&"127.0.0.2:0".parse().unwrap(), &set[0].local));
        assert!(!matches(&"unix:/x".parse().unwrap(), &set[0].local));
    }
}
