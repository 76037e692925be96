//! The side of `sys` for Unix systems other than Linux: the Linux-only calls answer
//! `ErrorKind::Unsupported` (or "not known"), never a silent success.

use std::io;
use std::os::fd::BorrowedFd;

fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is only available on Linux"),
    )
}

pub(crate) fn set_parent_death_signal(_signal: i32) -> io::Result<()> {
    // Async-signal-safe: no allocation (the error carries no message).
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

pub(crate) fn close_from(first: i32) {
    for fd in first..4096 {
        // SAFETY: close on a plain number; EBADF for one that is not open is harmless.
        #[allow(unsafe_code)]
        unsafe {
            libc::close(fd)
        };
    }
}

pub(crate) fn generation_force_signal() -> Option<i32> {
    None
}

pub(crate) fn try_lock(_fd: BorrowedFd<'_>) -> io::Result<bool> {
    Err(unsupported("an open-file-description lock"))
}

pub(crate) fn is_locked(_fd: BorrowedFd<'_>) -> io::Result<bool> {
    Err(unsupported("an open-file-description lock"))
}

pub(crate) fn become_subreaper() -> io::Result<()> {
    Err(unsupported("a child subreaper"))
}

pub(crate) fn reap_orphans(_keep: &[u32], _max: usize) -> Vec<u32> {
    Vec::new()
}

pub(crate) fn start_time(_pid: u32) -> Option<u64> {
    None
}

pub(crate) fn is_alive(pid: u32) -> bool {
    // Signal 0 checks existence (a zombie still counts: not knowable here).
    super::kill(pid, 0).is_ok()
}

pub(crate) fn children(_pid: u32) -> io::Result<Vec<u32>> {
    Err(unsupported("listing a process's children"))
}

pub(crate) fn open_sockets(_pid: u32) -> Option<usize> {
    None
}

pub(crate) fn send_to_abstract(
    _sock: &std::os::unix::net::UnixDatagram,
    _name: &[u8],
    _message: &[u8],
) -> io::Result<()> {
    Err(unsupported("an abstract Unix socket"))
}

pub(crate) fn signal_disposition(_pid: u32, _signal: i32) -> Option<super::Disposition> {
    None
}

pub(crate) fn connect_abstract(
    _sock: &std::os::unix::net::UnixDatagram,
    _name: &[u8],
) -> io::Result<()> {
    Err(unsupported("an abstract Unix socket"))
}

pub(crate) fn process_uid(_pid: u32) -> io::Result<u32> {
    Err(unsupported("looking up a process's user"))
}

pub(crate) fn pidfd_open(_pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    Err(unsupported("a process descriptor"))
}

pub(crate) fn seqpacket_pair() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    Err(unsupported(
        "the generation channel (a Unix seqpacket socket pair)",
    ))
}

#[cfg(feature = "http")]
pub(crate) fn epoll_create() -> io::Result<std::os::fd::OwnedFd> {
    Err(unsupported("parking idle connections (epoll)"))
}

#[cfg(feature = "http")]
pub(crate) fn epoll_add(_ep: BorrowedFd<'_>, _fd: BorrowedFd<'_>, _data: u64) -> io::Result<()> {
    Err(unsupported("parking idle connections (epoll)"))
}

#[cfg(feature = "http")]
pub(crate) fn epoll_del(_ep: BorrowedFd<'_>, _fd: BorrowedFd<'_>) -> io::Result<()> {
    Err(unsupported("parking idle connections (epoll)"))
}

#[cfg(feature = "http")]
pub(crate) const EPOLL_BATCH: usize = 64;

#[cfg(feature = "http")]
pub(crate) fn epoll_poll(_ep: BorrowedFd<'_>, _out: &mut Vec<u64>) -> io::Result<usize> {
    Err(unsupported("parking idle connections (epoll)"))
}

/// Who holds a socket cannot be read without `/proc`: nobody known.
pub(crate) fn socket_holders(_inodes: &[u64]) -> Vec<u32> {
    Vec::new()
}

/// Without `/proc`, no ancestry is known.
pub(crate) fn is_descendant(_pid: u32, _ancestor: u32) -> bool {
    false
}

/// Without `/proc`, what a process holds is not known.
pub(crate) fn held_in_tree(_pid: u32, _inodes: &[u64]) -> Option<Vec<u64>> {
    None
}

/// Without `/proc`, no table of listening sockets.
pub(crate) fn tcp_listeners() -> Vec<(u64, String, u32)> {
    Vec::new()
}
