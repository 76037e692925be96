//! The Linux side of `sys`: calls other Unix systems do not have (or have otherwise).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `PR_SET_PDEATHSIG`: this process gets `signal` when the thread that forked it
/// exits. Async-signal-safe: called in a forked child before `exec`.
pub(crate) fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integers and touches no memory; it is
    // async-signal-safe.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Closes every descriptor from `first` on (`close_range`, Linux 5.9; a loop up to the
/// descriptor limit before). Async-signal-safe: called in a forked child.
pub(crate) fn close_from(first: i32) {
    // SAFETY: close_range takes integers and touches no memory.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        return;
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one struct we own.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur.min(1 << 20) as i32
    } else {
        4096
    };
    for fd in first..max {
        // SAFETY: close on a plain number; EBADF for one that is not open is harmless.
        unsafe { libc::close(fd) };
    }
}

/// The signal with which a generation forces an older one that still drains (the cap
/// on generations alive): a real-time signal baton keeps for itself, so that no init
/// system or person sends it by accident.
pub(crate) fn generation_force_signal() -> Option<i32> {
    Some(libc::SIGRTMIN() + 3)
}

/// An open-file-description write lock on the whole file (`F_OFD_SETLK`): `Ok(true)`
/// if this open file now holds it, `Ok(false)` if another open file holds it. The lock
/// lives as long as the open file (the descriptor and its duplicates). Unlike `flock`,
/// it can be tested without being taken ([`is_locked`]), so a status query never gets
/// in the way of a master that starts.
pub(crate) fn try_lock(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut lock = whole_file_lock();
    // SAFETY: fcntl(F_OFD_SETLK) reads one flock struct we own; the descriptor is
    // borrowed, so open for the call.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &mut lock) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

/// Whether another open file holds a lock taken by [`try_lock`] on this file
/// (`F_OFD_GETLK`: nothing is taken). Works on a read-only descriptor.
pub(crate) fn is_locked(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut lock = whole_file_lock();
    // SAFETY: fcntl(F_OFD_GETLK) reads and writes one flock struct we own; the
    // descriptor is borrowed, so open for the call.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

fn whole_file_lock() -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value (l_pid must be 0 for OFD
    // locks).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock
}

/// Makes this process a child subreaper (Linux): orphans among its descendants are
/// re-parented to it instead of to init, so that it can reap them.
pub(crate) fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reaps exited children that are not in `keep` (processes someone else waits for):
/// each exited child is looked at without being reaped (`WNOWAIT`); one in `keep`
/// ends the pass, the others are reaped. Returns the PIDs reaped. Bounded: at most
/// `max` children per call.
pub(crate) fn reap_orphans(keep: &[u32], max: usize) -> Vec<u32> {
    let mut reaped = Vec::new();
    for _ in 0..max {
        // SAFETY: siginfo_t is plain data; all-zero is a valid value, and waitid
        // writes into it only for the duration of the call.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) writes one siginfo_t into memory we own; WNOWAIT leaves the
        // child waitable, WNOHANG makes the call return at once.
        let r = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid for a siginfo_t filled in for an exited child, and
        // zero (from the zeroed value) when there was none.
        let pid = unsafe { info.si_pid() };
        if r != 0 || pid <= 0 {
            break;
        }
        if keep.iter().any(|k| i64::from(*k) == i64::from(pid)) {
            break;
        }
        let mut status = 0;
        // SAFETY: waitpid(2) writes one int into memory we own; `pid` is positive and
        // names the exited child just seen, which no one else waits for.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            reaped.push(pid.unsigned_abs());
        } else {
            break;
        }
    }
    reaped
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks since boot.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// Whether process `pid` exists and has not exited (a zombie has).
pub(crate) fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The children of process `pid`, from `/proc`.
///
/// # Errors
///
/// The error of reading `/proc/PID/task/PID/children` (the process is gone).
pub(crate) fn children(pid: u32) -> io::Result<Vec<u32>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
    Ok(s.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// How many sockets process `pid` holds open, from `/proc/PID/fd`; `None` where it
/// cannot be read. Reads a directory: call it off an async runtime's thread.
pub(crate) fn open_sockets(pid: u32) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
            })
            .count(),
    )
}

/// The processes (other than this one) holding a socket with one of these inodes open:
/// who still serves a listening socket. Reads every process's descriptor table: call it
/// off an async runtime's thread, and rarely.
pub(crate) fn socket_holders(inodes: &[u64]) -> Vec<u32> {
    let me = std::process::id();
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.filter_map(Result::ok).any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|t| wanted.iter().any(|w| t.as_os_str() == w.as_str()))
                })
            })
        })
        .collect()
}

/// Which of these socket inodes process `pid` or one of its descendants holds open
/// (all its sockets with `inodes` empty); `None` when its descriptor table cannot be
/// read.
pub(crate) fn held_in_tree(pid: u32, inodes: &[u64]) -> Option<Vec<u64>> {
    let mut held = Vec::new();
    let mut todo = vec![pid];
    let mut seen = 0;
    let mut readable = false;
    while let Some(p) = todo.pop() {
        seen += 1;
        if seen > 256 {
            break;
        }
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) {
            readable = true;
            for fd in fds.filter_map(Result::ok) {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let target = target.to_string_lossy();
                if let Some(ino) = target
                    .strip_prefix("socket:[")
                    .and_then(|t| t.strip_suffix(']'))
                    .and_then(|t| t.parse::<u64>().ok())
                    && (inodes.is_empty() || inodes.contains(&ino))
                    && !held.contains(&ino)
                {
                    held.push(ino);
                }
            }
        }
        if let Ok(kids) = children(p) {
            todo.extend(kids);
        }
    }
    readable.then_some(held)
}

/// The listening TCP sockets of this host (`/proc/net/tcp`, `tcp6`): inode, local
/// address, and how many connections wait in its accept queue.
pub(crate) fn tcp_listeners() -> Vec<(u64, String, u32)> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(table) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let queued = f[4]
                .split_once(':')
                .and_then(|(_, rx)| u32::from_str_radix(rx, 16).ok())
                .unwrap_or(0);
            let (Ok(inode), Some(addr)) = (f[9].parse::<u64>(), proc_addr(f[1], v6)) else {
                continue;
            };
            out.push((inode, addr, queued));
        }
    }
    out
}

/// `0100007F:1F90` (or its IPv6 form) as `127.0.0.1:8080`.
fn proc_addr(field: &str, v6: bool) -> Option<String> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip: std::net::IpAddr = if v6 {
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_mut(4).enumerate() {
            let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        std::net::Ipv6Addr::from(bytes).into()
    } else {
        let word = u32::from_str_radix(ip, 16).ok()?;
        std::net::Ipv4Addr::from(word.to_ne_bytes()).into()
    };
    Some(std::net::SocketAddr::new(ip, port).to_string())
}

/// Whether `ancestor` is `pid`'s parent, grandparent, ...
pub(crate) fn is_descendant(pid: u32, ancestor: u32) -> bool {
    let mut at = pid;
    for _ in 0..64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{at}/stat")) else {
            return false;
        };
        // pid (comm) state ppid ...: the comm may hold spaces and parentheses.
        let Some(ppid) = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        if ppid == ancestor {
            return true;
        }
        if ppid <= 1 {
            return false;
        }
        at = ppid;
    }
    false
}

/// What process `pid` does with `signal`, from `/proc/PID/status` (`SigCgt`, `SigIgn`,
/// and `SigBlk` of its main thread); `None` where it cannot be read.
pub(crate) fn signal_disposition(pid: u32, signal: i32) -> Option<super::Disposition> {
    use super::Disposition;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let fate = disposition_in(&status, signal)?;
    if fate != Disposition::Blocked {
        return Some(fate);
    }
    // Blocked in the main thread. A program that reads the signal from a `signalfd` or
    // `sigwait` blocks it in every thread, for good; glibc blocks every signal for a
    // moment in a thread that starts another (a server starting a thread per request
    // does so all the time). Blocked counts only if it is so in every thread, three
    // times in 20 ms.
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue; // the thread ended meanwhile
            };
            if !parse_sig_mask(&status, "SigBlk:", signal)? {
                return Some(Disposition::Default);
            }
        }
    }
    Some(Disposition::Blocked)
}

fn disposition_in(status: &str, signal: i32) -> Option<super::Disposition> {
    use super::Disposition;
    Some(if parse_sig_mask(status, "SigCgt:", signal)? {
        Disposition::Caught
    } else if parse_sig_mask(status, "SigIgn:", signal)? {
        Disposition::Ignored
    } else if parse_sig_mask(status, "SigBlk:", signal)? {
        // Read by `sigwait` or a `signalfd`, as some runtimes do.
        Disposition::Blocked
    } else {
        Disposition::Default
    })
}

/// Whether the signal's bit is set in the hexadecimal mask of the `key` line.
fn parse_sig_mask(status: &str, key: &str, signal: i32) -> Option<bool> {
    let hex = status.lines().find_map(|l| l.strip_prefix(key))?.trim();
    let bit = u32::try_from(signal).ok()?.checked_sub(1)?;
    // Masks are 64 bits per line on Linux (more only with many real-time signals).
    let digit = usize::try_from(bit / 4).ok()?;
    let c = hex.as_bytes().get(hex.len().checked_sub(digit + 1)?)?;
    let nibble = (*c as char).to_digit(16)?;
    Some(nibble & (1 << (bit % 4)) != 0)
}

/// Connects a datagram socket to the abstract Unix socket `name` (the part after `@`).
pub(crate) fn connect_abstract(
    sock: &std::os::unix::net::UnixDatagram,
    name: &[u8],
) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.connect_addr(&addr)
}

/// Sends one datagram to the abstract Unix socket `name` (the part after `@`).
pub(crate) fn send_to_abstract(
    sock: &std::os::unix::net::UnixDatagram,
    name: &[u8],
    message: &[u8],
) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(message, &addr).map(|_| ())
}

/// The user ID that process `pid` runs as (the owner of `/proc/PID`).
pub(crate) fn process_uid(pid: u32) -> io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(format!("/proc/{pid}"))?.uid())
}

/// A descriptor that becomes readable when process `pid` exits (before it is reaped):
/// `pidfd_open`, Linux 5.3.
pub(crate) fn pidfd_open(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes integers and touches no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for us (close-on-exec); nobody
    // else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A connected pair of Unix `SOCK_SEQPACKET` sockets (close-on-exec): message
/// boundaries kept, descriptors passed per message (the generation channel).
pub(crate) fn seqpacket_pair() -> io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the array it is given.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by no one else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

#[cfg(feature = "http")]
/// A new epoll instance (close-on-exec): the parking lot's own readiness set.
pub(crate) fn epoll_create() -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: epoll_create1 takes flags and returns a new descriptor or -1.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

#[cfg(feature = "http")]
/// Adds `fd` to epoll instance `ep`, level-triggered, for bytes to read or the peer's
/// end (`EPOLLIN | EPOLLRDHUP`); its events carry `data`.
pub(crate) fn epoll_add(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>, data: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
        u64: data,
    };
    // SAFETY: both descriptors are open (borrowed for the call); the event is a valid,
    // initialised struct the kernel only reads.
    let rc = unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &raw mut event,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(feature = "http")]
/// Removes `fd` from epoll instance `ep`.
pub(crate) fn epoll_del(ep: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: both descriptors are open (borrowed for the call); since Linux 2.6.9 the
    // event argument of EPOLL_CTL_DEL may be null.
    let rc = unsafe {
        libc::epoll_ctl(
            ep.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd.as_raw_fd(),
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(feature = "http")]
/// How many events [`epoll_poll`] takes at most per call.
pub(crate) const EPOLL_BATCH: usize = 64;

#[cfg(feature = "http")]
/// The events pending on epoll instance `ep`, without waiting: appends the data of at
/// most [`EPOLL_BATCH`] of them to `out` and returns how many.
pub(crate) fn epoll_poll(ep: BorrowedFd<'_>, out: &mut Vec<u64>) -> io::Result<usize> {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EPOLL_BATCH];
    // SAFETY: the kernel writes at most `EPOLL_BATCH` events into the array, which
    // holds that many; a timeout of 0 returns at once.
    let n = unsafe {
        libc::epoll_wait(
            ep.as_raw_fd(),
            events.as_mut_ptr(),
            EPOLL_BATCH as libc::c_int,
            0,
        )
    };
    let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
    out.extend(events[..n].iter().map(|e| e.u64));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_signals_are_read_from_the_mask() {
        // SIGHUP (1), SIGINT (2), SIGTERM (15) caught; SIGUSR2 (12) not.
        let status = "Name:\tx\nSigIgn:\t0000000000001000\nSigCgt:\t0000000000004003\n";
        assert_eq!(parse_sig_mask(status, "SigCgt:", libc::SIGHUP), Some(true));
        assert_eq!(parse_sig_mask(status, "SigCgt:", libc::SIGINT), Some(true));
        assert_eq!(parse_sig_mask(status, "SigCgt:", libc::SIGTERM), Some(true));
        assert_eq!(
            parse_sig_mask(status, "SigCgt:", libc::SIGUSR2),
            Some(false)
        );
        assert_eq!(
            parse_sig_mask(status, "SigIgn:", libc::SIGUSR2),
            Some(false)
        );
        assert_eq!(parse_sig_mask(status, "SigIgn:", libc::SIGPIPE), Some(true));
        assert_eq!(parse_sig_mask("Name:\tx\n", "SigCgt:", 1), None);
        assert_eq!(parse_sig_mask(status, "SigCgt:", 0), None);
    }

    #[test]
    fn dispositions_are_read_in_order_caught_ignored_blocked() {
        use super::super::Disposition;
        let status =
            "SigBlk:\t0000000000000200\nSigIgn:\t0000000000001000\nSigCgt:\t0000000000004003\n";
        assert_eq!(
            disposition_in(status, libc::SIGTERM),
            Some(Disposition::Caught)
        );
        assert_eq!(
            disposition_in(status, libc::SIGPIPE),
            Some(Disposition::Ignored)
        );
        assert_eq!(
            disposition_in(status, libc::SIGUSR1),
            Some(Disposition::Blocked)
        );
        assert_eq!(
            disposition_in(status, libc::SIGUSR2),
            Some(Disposition::Default)
        );
        // This test process: nothing here handles SIGUSR2.
        assert_eq!(
            signal_disposition(std::process::id(), libc::SIGUSR2),
            Some(Disposition::Default)
        );
    }
}
