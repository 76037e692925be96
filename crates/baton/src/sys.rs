//! The only module with `unsafe` code: thin wrappers over libc calls that std does not
//! offer. Each block states why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

/// `shutdown(fd, SHUT_RDWR)`: ends both directions of a connected socket. Any task
/// blocked reading it sees end-of-file and any write fails, which wakes code that holds
/// the socket (an upgraded WebSocket, say) without our owning it. The descriptor stays
/// open; its owner closes it.
///
/// The caller must guarantee that `fd` is an open descriptor for the whole call (baton
/// holds the lock that the descriptor's owner takes before closing it).
pub(crate) fn shutdown_socket(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) takes a plain integer and touches no memory of ours; the
    // caller guarantees the descriptor is open and belongs to the connection we mean
    // (it cannot have been closed and reused meanwhile, see `tracker::ConnHandle`).
    let rc = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
