//! The only module with `unsafe` code: thin wrappers over libc calls that std does not
//! offer. Each block states why it is sound.
//!
//! Linux-only calls (the parent-death signal, child subreapers, open-file-description
//! locks, `waitid` with `WNOWAIT`, `/proc`, abstract Unix sockets) live in `linux.rs`;
//! elsewhere `other.rs` answers them with `ErrorKind::Unsupported`.
#![allow(unsafe_code)]

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod platform;
#[cfg(not(target_os = "linux"))]
#[path = "other.rs"]
mod platform;

mod exec;

pub(crate) use exec::ExecPlan;
#[cfg(feature = "http")]
pub(crate) use platform::{EPOLL_BATCH, epoll_add, epoll_create, epoll_del, epoll_poll};
pub(crate) use platform::{
    become_subreaper, children, connect_abstract, generation_force_signal, held_in_tree, is_alive,
    is_descendant, is_locked, open_sockets, pidfd_open, process_uid, reap_orphans,
    send_to_abstract, seqpacket_pair, signal_disposition, socket_holders, start_time,
    tcp_listeners, try_lock,
};

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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

/// Takes ownership of descriptor `fd`, passed to this process by the socket-activation
/// protocol, after checking that it is open and was inherited.
///
/// "Inherited" is checked by close-on-exec being clear: a descriptor that crossed an
/// `exec` cannot have it set, and everything Rust's std, tokio and baton open has it
/// set. So a number the protocol names but that this process reused for something of
/// its own (the runtime's epoll, say, when descriptor 3 was not actually passed) is
/// refused instead of being taken, and later closed, under its owner's feet.
///
/// The caller must take each descriptor at most once (the inherited set is parsed once
/// per process, see `activation`); it sets close-on-exec on the socket once taken.
pub(crate) fn adopt_inherited_fd(fd: RawFd) -> io::Result<OwnedFd> {
    let not_inherited = || {
        io::Error::new(
            io::ErrorKind::NotFound,
            "not inherited: it is closed, or this process opened it itself",
        )
    };
    // 0, 1 and 2 are standard input, output and error: never a passed socket, and
    // always in use by std.
    if fd < 3 {
        return Err(not_inherited());
    }
    // SAFETY: F_GETFD reads the descriptor flags of an integer descriptor; it touches no
    // memory. It fails with EBADF if `fd` is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || flags & libc::FD_CLOEXEC != 0 {
        return Err(not_inherited());
    }
    // SAFETY: `fd` is open and was inherited across exec (checked above), so no code of
    // this process opened it; by the protocol it is passed to us, and the caller takes
    // it once: the `OwnedFd` is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec duplicate of `fd` numbered `min` or above.
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC only reads an open descriptor (borrowed for the call) and
    // creates a new one, which we own at once below.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `rc` is a descriptor that fcntl just created for us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(rc) })
}

/// Sets or clears close-on-exec on `fd`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let flags = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD changes the flags of a descriptor borrowed for the call; no memory
    // is touched.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, flags) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The inode of the socket `fd` (what `/proc/PID/fd` links name, `socket:[INODE]`).
pub(crate) fn socket_inode(fd: BorrowedFd<'_>) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .ok()
        .map(|m| m.ino())
}

/// Makes `fd` non-blocking (a status flag of the open file, shared with every process
/// that holds it).
#[cfg(feature = "http")]
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    socket2::SockRef::from(&fd).set_nonblocking(true)
}

/// Ignores `signal` (`SIG_IGN`). Used just before a full restart's `exec`: an ignored
/// signal stays ignored across it, so a restart signal that arrives before the new image
/// installs its handlers is dropped instead of ending the only process (its default
/// action).
pub(crate) fn ignore_signal(signal: i32) -> io::Result<()> {
    // SAFETY: setting a disposition to SIG_IGN installs no code of ours and touches no
    // memory; tokio's handler for this signal simply stops being called, which is what
    // we want right before the exec.
    if unsafe { libc::signal(signal, libc::SIG_IGN) } == libc::SIG_ERR {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Ends this process by `signal` with its default action (a stop signal: termination),
/// as a shell does when the program it ran was ended by that signal. Returns only if
/// the signal did not end the process.
pub(crate) fn raise_default(signal: i32) {
    // SAFETY: restoring the default disposition installs no code; unblocking the
    // signal and sending it to ourselves touch only a sigset on our stack.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
}

/// Learns that a process exited before it is reaped (its PID cannot be reused until
/// then): a process descriptor registered with the async runtime.
#[derive(Debug)]
pub(crate) struct ExitWatch(tokio::io::unix::AsyncFd<OwnedFd>);

impl ExitWatch {
    /// Watches `pid`, a child of this process not yet reaped. Call within a tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// `Unsupported` off Linux (or before Linux 5.3); the error of registering it.
    pub(crate) fn new(pid: u32) -> io::Result<ExitWatch> {
        let fd = pidfd_open(pid)?;
        // SAFETY: `fd` is an open descriptor owned by the `AsyncFd` for its whole
        // lifetime, and `as_raw_fd` of an `OwnedFd` always returns that descriptor.
        let watch = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)?;
        Ok(ExitWatch(watch))
    }

    /// Resolves once the process has exited.
    pub(crate) async fn exited(&self) {
        if let Ok(mut ready) = self.0.readable().await {
            ready.retain_ready();
        }
    }
}

/// Gives the allocator's free memory back to the system (glibc's `malloc_trim`): after
/// many connections freed their buffers at once, which glibc would otherwise keep.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only works on the allocator's own state.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Registers an owned descriptor with the current tokio runtime for `interest`.
pub(crate) fn register_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: `fd` is an open descriptor owned by the `AsyncFd` for its whole lifetime,
    // and `as_raw_fd` of an `OwnedFd` always returns that descriptor.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(io::Error::from)
}

/// Gives `signal` its default disposition back (`SIG_DFL`).
pub(crate) fn default_signal(signal: i32) {
    // SAFETY: restoring the default disposition installs no code of ours.
    unsafe { libc::signal(signal, libc::SIG_DFL) };
}

/// Occupies every free descriptor number in `range` with a close-on-exec duplicate of
/// `fd`, until the returned descriptors are dropped. While a child is forked, this keeps
/// std's own error-report pipe (which takes the lowest free numbers) out of the range
/// the child moves the sockets to. Numbers taken meanwhile by other threads are left
/// alone: `F_DUPFD` never replaces an open descriptor.
pub(crate) fn occupy_free(fd: BorrowedFd<'_>, range: std::ops::Range<RawFd>) -> Vec<OwnedFd> {
    range
        .filter_map(|target| {
            let d = dup_at_least(fd, target).ok()?;
            (d.as_raw_fd() == target).then_some(d)
        })
        .collect()
}

/// Sends `signal` to process `pid`.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) takes two integers and touches no memory; `pid` is positive, so it
    // names one process, never a group.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// This process's effective user ID.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The soft limit of open descriptors of this process (`RLIMIT_NOFILE`); `None` when
/// unlimited or unknown.
#[cfg(feature = "http")]
pub(crate) fn nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur)
}

/// What a process does with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// A handler runs.
    Caught,
    /// `SIG_IGN`.
    Ignored,
    /// Blocked: taken by `sigwait` or a `signalfd`, or waiting.
    Blocked,
    /// The default action (for most signals, the end of the process).
    Default,
}

/// Sends one datagram with descriptors attached (`SCM_RIGHTS`) on a connected Unix
/// datagram socket: systemd's `FDSTORE=1`.
pub(crate) fn send_with_fds(
    sock: &std::os::unix::net::UnixDatagram,
    message: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    send_message(sock.as_fd(), message, fds, 0)
}

/// Sends one message with descriptors attached (`SCM_RIGHTS`) on a connected Unix
/// socket, without blocking (`WouldBlock` when its buffer is full) and without
/// `SIGPIPE` (`BrokenPipe` when the peer is gone): the generation channel.
pub(crate) fn send_nonblocking_with_fds(
    sock: BorrowedFd<'_>,
    message: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    send_message(sock, message, fds, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Receives one message of a Unix seqpacket or datagram socket into `buf`, without
/// blocking, with the descriptors attached to it (close-on-exec); at most `MAX_FDS`
/// are kept, more are closed. `Ok(None)` when the peer closed its end.
///
/// The `bool` says the kernel had to drop descriptors (`MSG_CTRUNC`: none was free).
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<Option<(usize, Vec<OwnedFd>, bool)>> {
    const MAX_FDS: usize = 4;
    let payload = (MAX_FDS * std::mem::size_of::<RawFd>()) as u32;
    // SAFETY: CMSG_SPACE computes a size from an integer.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `iov` (over `buf`) and `control`, both alive and writable
    // for the call.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to `msg_controllen`; the CMSG macros walk
    // the headers inside it, and each SCM_RIGHTS header's data holds descriptors that
    // are now ours (received, close-on-exec).
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if n == 0 && fds.is_empty() {
        return Ok(None);
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a message longer than the buffer (cut)",
        ));
    }
    Ok(Some((
        n as usize,
        fds,
        msg.msg_flags & libc::MSG_CTRUNC != 0,
    )))
}

/// A descriptor held in reserve (`/dev/null`, close-on-exec): closed just before a
/// receive that may bring a socket, so that one descriptor is always free for it.
pub(crate) fn spare_fd() -> io::Result<OwnedFd> {
    std::fs::File::open("/dev/null").map(OwnedFd::from)
}

/// Raises this process's soft limit of open descriptors to its hard limit (as nginx's
/// `worker_rlimit_nofile` and systemd do for services): the default soft limit (1,024)
/// is a compatibility setting for `select(2)`, which nothing here uses. The programs
/// this process starts get the soft limit it had (they may use `select`). Returns the
/// limit now in force.
pub(crate) fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = CHILD_NOFILE.set((limit.rlim_cur, limit.rlim_max));
        return Ok(limit.rlim_max);
    }
    Ok(limit.rlim_cur)
}

/// The descriptor limit (soft, hard) this process had before it raised its own: what
/// the programs it starts get back.
static CHILD_NOFILE: std::sync::OnceLock<(libc::rlim_t, libc::rlim_t)> = std::sync::OnceLock::new();

fn send_message(
    sock: BorrowedFd<'_>,
    message: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: libc::c_int,
) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let payload = std::mem::size_of_val(raw.as_slice());
    let payload_len =
        u32::try_from(payload).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: CMSG_SPACE computes a size from an integer.
    let space = unsafe { libc::CMSG_SPACE(payload_len) } as usize;
    // u64 elements: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds CMSG_SPACE(payload) aligned bytes, so the
        // first header and its data (CMSG_LEN(payload) bytes) fit in it; we write
        // exactly `payload` bytes of descriptors.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload_len) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                payload,
            );
        }
    }
    // SAFETY: `msg` points at `iov`, `message` and `control`, all alive for the call;
    // the descriptors are borrowed, open for the call.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `CLOCK_MONOTONIC` now, in microseconds (systemd's `MONOTONIC_USEC=`).
pub(crate) fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into memory we own for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// Sends `signal` to the process group `pgid` (a worker started as the leader of a
/// group of its own, and what it started).
pub(crate) fn kill_group(pgid: u32, signal: i32) -> io::Result<()> {
    let pgid = libc::pid_t::try_from(pgid)
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill(2) takes two integers and touches no memory; `-pgid` is below -1,
    // so it names exactly one process group.
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
