//! Starting the next generation: a plan made before the fork, carried out by the child
//! with async-signal-safe calls only (and, through a sitter, re-parented before it
//! serves).
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use super::{CHILD_NOFILE, dup_at_least, platform};

/// Everything a forked child needs to become the next generation, prepared before the
/// fork so that the child does nothing but async-signal-safe calls: move the listening
/// sockets to descriptors 3, 4, ..., write its own PID into `LISTEN_PID`, and `execve`.
///
/// `LISTEN_PID` must be the PID of the process that reads it (systemd's rule, so that a
/// grandchild that inherits the environment ignores the sockets), and only the child
/// knows its PID: that is why the child calls `execve` itself from `pre_exec`, with an
/// environment whose `LISTEN_PID=` slot it fills in first.
pub(crate) struct ExecPlan {
    path: CString,
    // Owned storage; the pointer arrays below point into it.
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
    /// The `LISTEN_PID=` entry: prefix, then room for the digits and a NUL.
    pid_slot: Box<[u8]>,
    /// Sources (numbered at or above `3 + fds.len()`, so that no target clobbers a
    /// source) moved to 3, 4, ... in the child.
    fds: Vec<OwnedFd>,
    /// Sent to the child when this process dies (`PR_SET_PDEATHSIG`), with this
    /// process's PID to detect a death before the setting took effect.
    death_signal: Option<(i32, libc::pid_t)>,
    /// Start the program through a sitter (see [`ExecPlan::through_sitter`]): the
    /// sitter's end of a socket pair, and the number of the parent's end (which the
    /// sitter must close, or the pair would never see its end).
    sitter: Option<(OwnedFd, RawFd)>,
}

// SAFETY: the raw pointers point into heap storage owned by the same struct (`_argv`,
// `_envp`, `pid_slot`), which moves with it and is never shared; the plan is used by
// one thread at a time (moved into the `pre_exec` closure).
unsafe impl Send for ExecPlan {}
// SAFETY: as above; `&ExecPlan` gives no access that could race (only the forked child,
// which is single-threaded, writes through `pid_slot`).
unsafe impl Sync for ExecPlan {}

const PID_PREFIX: &[u8] = b"LISTEN_PID=";

impl ExecPlan {
    /// `env` must not contain `LISTEN_PID`; the plan adds it. `fds` are placed at 3, 4,
    /// ... in order.
    pub(crate) fn new(
        path: &OsStr,
        argv: &[&OsStr],
        env: &[(&OsStr, &OsStr)],
        fds: &[BorrowedFd<'_>],
    ) -> io::Result<ExecPlan> {
        let cstr = |bytes: &[u8]| {
            CString::new(bytes).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an argument or environment variable contains a NUL byte",
                )
            })
        };
        let path = cstr(path.as_bytes())?;
        let argv = argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstr(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        // Room for any pid_t in decimal and the NUL terminator; zero-filled.
        let mut pid_slot = vec![0u8; PID_PREFIX.len() + 24].into_boxed_slice();
        pid_slot[..PID_PREFIX.len()].copy_from_slice(PID_PREFIX);
        let first_free = 3 + fds.len() as RawFd;
        let fds = fds
            .iter()
            .map(|fd| dup_at_least(*fd, first_free))
            .collect::<io::Result<Vec<_>>>()?;
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut envp_ptrs: Vec<_> = envp.iter().map(|e| e.as_ptr()).collect();
        envp_ptrs.push(pid_slot.as_ptr().cast());
        envp_ptrs.push(std::ptr::null());
        Ok(ExecPlan {
            path,
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
            pid_slot,
            fds,
            death_signal: None,
            sitter: None,
        })
    }

    /// The child gets `signal` when this process dies (Linux's parent-death signal):
    /// a worker of a master that was killed drains instead of running unsupervised.
    ///
    /// The kernel sends it when the *thread* that forked exits, so only a process that
    /// forks from a thread living as long as itself may ask for it (`baton run`'s
    /// master runs a single-threaded runtime).
    pub(crate) fn on_parent_death(&mut self, signal: i32) {
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        self.death_signal = Some((signal, me));
    }

    /// Starts the program through a sitter: the forked child forks once more and stays
    /// as the program's parent only until it is released. On `channel` (its end of a
    /// socket pair) it first writes the program's PID (4 bytes, native order); if the
    /// program exits while the sitter waits, its raw wait status (4 bytes) follows and
    /// the sitter exits. When the other end is closed or written to (released, or the
    /// process that started it is gone), the sitter exits at once and the program is
    /// re-parented to the nearest subreaper: the service manager.
    ///
    /// Why: systemd treats a main PID that is not its own child as "alien" and, at a
    /// stop, kills it with SIGKILL without waiting for it (`unit_kill_context`). A
    /// successor that is still its predecessor's child when the predecessor sends
    /// `MAINPID=` is such a process; one whose sitter has exited is systemd's child.
    pub(crate) fn through_sitter(&mut self, channel: OwnedFd, parents_end: RawFd) {
        self.sitter = Some((channel, parents_end));
    }

    /// Runs in the forked child (from `pre_exec`): only async-signal-safe calls, no
    /// allocation. Returns only if something failed.
    fn exec_in_child(&mut self) -> io::Error {
        if let Some((channel, parents_end)) = &self.sitter
            && let Err(e) = sit(channel.as_raw_fd(), *parents_end)
        {
            return e;
        }
        // Dispositions and the mask as a freshly started program expects them: a signal
        // this process ignores (or blocks) would stay ignored across the exec.
        reset_signals();
        // The descriptor limit this process had before it raised its own.
        if let Some((soft, hard)) = CHILD_NOFILE.get() {
            let limit = libc::rlimit {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            // SAFETY: setrlimit (a plain system call) reads one struct on our stack.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
        }
        for (i, fd) in self.fds.iter().enumerate() {
            // SAFETY: dup2 on two integers; the source is open (owned by the plan), the
            // target is a plain number. dup2 clears close-on-exec on the target, so the
            // socket survives the exec; the source (close-on-exec) does not.
            if unsafe { libc::dup2(fd.as_raw_fd(), 3 + i as RawFd) } < 0 {
                return io::Error::last_os_error();
            }
        }
        if let Some((signal, parent)) = self.death_signal {
            if let Err(e) = platform::set_parent_death_signal(signal) {
                return e;
            }
            // SAFETY: getppid has no preconditions and is async-signal-safe.
            // The parent died before the setting took effect: do not start.
            if unsafe { libc::getppid() } != parent {
                return io::Error::from_raw_os_error(libc::ESRCH);
            }
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        write_decimal(&mut self.pid_slot[PID_PREFIX.len()..], pid as u32);
        // Point the environment at the slot only now, after the write through `&mut`
        // (a pointer taken earlier would be invalidated by it); no allocation.
        let slot = self.envp_ptrs.len() - 2;
        self.envp_ptrs[slot] = self.pid_slot.as_ptr().cast();
        // SAFETY: `path` is a NUL-terminated string, both pointer arrays are
        // NUL-terminated and point at NUL-terminated strings owned by `self`, which lives
        // until execve replaces the process image or returns.
        unsafe {
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.envp_ptrs.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }

    /// Installs the plan on `cmd`: after the fork, the child moves the descriptors and
    /// execs the plan's program itself (`cmd`'s own program and environment are not
    /// used; its stdio settings are).
    pub(crate) fn install(mut self, cmd: &mut tokio::process::Command) {
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe functions may be called: `exec_in_child` calls fork, write,
        // waitpid, poll and _exit (the sitter), sigaction, sigprocmask, setrlimit, dup2,
        // getpid and execve, and writes digits into memory it owns; it allocates
        // nothing and takes no lock (a `OnceLock` set before the fork is read without
        // one).
        unsafe {
            cmd.pre_exec(move || Err(self.exec_in_child()));
        }
    }
}

/// The sitter's part, in the forked child: forks the program's process, which returns
/// `Ok` and goes on to the exec; this one stays, reports, and exits (never returns).
/// Only async-signal-safe calls.
fn sit(channel: RawFd, parents_end: RawFd) -> io::Result<()> {
    // SAFETY: fork in a single-threaded child (the process forked by `spawn`); both
    // sides go on with async-signal-safe calls only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        return Ok(());
    }
    // The sitter keeps nothing but its end of the pair, as descriptor 0. Every other
    // descriptor goes: the parent's end (or the parent's close would never reach the
    // sitter), and `spawn`'s error-report pipe (or the parent's `spawn` would wait for
    // the sitter's exec, which never comes).
    let _ = parents_end;
    // SAFETY: dup2 on two integers; `channel` is open.
    if unsafe { libc::dup2(channel, 0) } < 0 {
        // SAFETY: as below.
        unsafe { libc::_exit(1) }
    }
    platform::close_from(1);
    let channel = 0;
    // Signals stay pending: a handler inherited from the parent (tokio's)
    // would wake the parent's runtime through their shared pipe, and a stop signal
    // meant for the service must not end the sitter before it reports.
    // SAFETY: sigfillset and sigprocmask write and read one sigset_t on our stack.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
    }
    write_all(channel, &(pid as u32).to_ne_bytes());
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes one int we own; `pid` is our child.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            write_all(channel, &status.to_ne_bytes());
            break;
        }
        let mut fds = libc::pollfd {
            fd: channel,
            events: libc::POLLIN,
            revents: 0,
        };
        // Woken at once when released; every 20 ms otherwise, to look at the program.
        // SAFETY: poll reads and writes one pollfd we own.
        if unsafe { libc::poll(&mut fds, 1, 20) } > 0 {
            break;
        }
    }
    // SAFETY: _exit ends this process without running anything of the parent's (no
    // atexit handlers, no destructors); it is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// Writes all of `bytes` to `fd`, ignoring errors (a reader that is gone). Async-signal-
/// safe.
fn write_all(fd: RawFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write reads `bytes.len()` bytes from a slice we own.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

/// Every catchable signal back to its default disposition, and none blocked: what a
/// program expects at its start. Async-signal-safe (sigaction, sigprocmask).
fn reset_signals() {
    // SAFETY: sigaction and sigprocmask read structures we own on the stack; a signal
    // number that cannot be changed (SIGKILL, SIGSTOP, reserved ones) fails harmlessly.
    unsafe {
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
}

/// Writes `n` in decimal followed by a NUL into `out` (which is zero-filled and long
/// enough), without allocating.
fn write_decimal(out: &mut [u8], mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        out[i] = digits[len - 1 - i];
    }
    out[len] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_without_allocation() {
        for n in [0u32, 7, 10, 4_194_304, u32::MAX] {
            let mut buf = [0u8; 12];
            write_decimal(&mut buf, n);
            let end = buf.iter().position(|b| *b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), n.to_string());
        }
    }
}
