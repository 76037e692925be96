//! Helpers for baton's own command-line programs (`baton` and the demo server):
//! processes and pidfiles looked up, run directories checked, the duration syntax and
//! listener names of their flags. Not part of the library's API: hidden from its
//! documentation, and may change in any release.

pub use crate::error::parse_duration;
pub use crate::listener::default_listener_name;
pub use crate::pidfile::{Holder, fallback_signal, holder as pidfile_holder, signals_path};

/// Whether process `pid` runs: it exists and has not exited (a zombie has).
///
/// # Platform-specific behavior
///
/// Linux reads `/proc/PID/stat`; elsewhere a zombie counts as running.
pub fn is_running(pid: u32) -> bool {
    crate::sys::is_alive(pid)
}

/// The PIDs of process `pid`'s children (a master's workers).
///
/// # Errors
///
/// The error of reading them (the process is gone).
///
/// # Platform-specific behavior
///
/// Linux reads `/proc/PID/task/PID/children`; elsewhere `ErrorKind::Unsupported`.
pub fn children_of(pid: u32) -> std::io::Result<Vec<u32>> {
    crate::sys::children(pid)
}

/// Makes `dir` a run directory for masters' pidfiles, control sockets and logs: created
/// with mode 0700 if missing, then checked as [`check_run_dir`] does. With `private`
/// (the default directories, `$XDG_RUNTIME_DIR/baton` and `/tmp/baton-UID`), it must be
/// this user's own with mode 0700.
///
/// # Errors
///
/// The error of creating it; `PermissionDenied` naming the path, what is wrong and its
/// owner when it is not to be trusted.
pub fn prepare_run_dir(dir: &std::path::Path, private: bool) -> std::io::Result<()> {
    if private {
        crate::trust::ensure_private_dir(dir)
    } else {
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::trust::ensure_private_dir(dir)
            }
            _ => crate::trust::check_dir(dir, false, false),
        }
    }
}

/// Checks that `dir` is a run directory this user can trust before anything in it is
/// read or signalled: a real directory (not a symlink), owned by this user (or root),
/// not writable by other users; with `private`, this user's own with mode 0700.
///
/// # Errors
///
/// `NotFound` if it does not exist; `PermissionDenied` naming the path, what is wrong
/// and its owner.
pub fn check_run_dir(dir: &std::path::Path, private: bool) -> std::io::Result<()> {
    crate::trust::check_dir(dir, private, false)
}

/// The user ID that process `pid` runs as.
///
/// # Errors
///
/// The error of looking it up (the process is gone).
///
/// # Platform-specific behavior
///
/// Linux reads `/proc/PID`; elsewhere `ErrorKind::Unsupported`.
pub fn process_uid(pid: u32) -> std::io::Result<u32> {
    crate::sys::process_uid(pid)
}

/// A child process of this program that a master's orphan reaping must leave alone
/// while this guard lives: one its owner waits for itself (`baton watch`'s build, in
/// the process that also runs the master). Register it right after spawning it, before
/// the task yields.
#[derive(Debug)]
pub struct OwnChild(u32);

impl OwnChild {
    /// Registers `pid` as this program's own child.
    pub fn register(pid: u32) -> OwnChild {
        crate::sync::lock(&OWN_CHILDREN).push(pid);
        OwnChild(pid)
    }
}

impl Drop for OwnChild {
    fn drop(&mut self) {
        let mut own = crate::sync::lock(&OWN_CHILDREN);
        if let Some(i) = own.iter().position(|p| *p == self.0) {
            own.swap_remove(i);
        }
    }
}

static OWN_CHILDREN: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// The children registered by [`OwnChild`].
pub(crate) fn own_children() -> Vec<u32> {
    crate::sync::lock(&OWN_CHILDREN).clone()
}
