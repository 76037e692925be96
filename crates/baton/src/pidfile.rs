//! Pidfiles, the one home of writing and reading them. A coordinator's pidfile names
//! the generation that serves: written atomically at ready, handed to the next
//! generation at a restart, removed only by the process it names. A master's pidfile is
//! locked for as long as the master lives, so that two masters of one name cannot run
//! and a pidfile left by a dead one is told apart from a live one.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::error::Error;

/// A pidfile this process holds the lock of; removed on drop.
#[derive(Debug)]
pub(crate) struct Locked {
    path: PathBuf,
    // The lock lives as long as this open file.
    file: File,
    /// The signals file beside it, once written.
    signals: Option<PathBuf>,
}

/// Where the signals that reload and stop a master are written, beside its pidfile:
/// `PATH` with the extension `.signals` (`reload=HUP` and `stop=TERM` lines), for a
/// client that must fall back to signals when the control socket is gone.
pub fn signals_path(pidfile: &Path) -> PathBuf {
    pidfile.with_extension("signals")
}

/// What a pidfile says about the master it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// No pidfile.
    None,
    /// A pidfile whose process is gone (its lock is free): the PID it names.
    Stale(Option<u32>),
    /// A running master holds it.
    Running(u32),
}

impl Locked {
    /// Creates or opens `path`, takes its lock and writes our PID into it.
    pub(crate) fn acquire(path: &Path) -> Result<Locked, Error> {
        let err = |source: io::Error| Error::Pidfile {
            path: path.to_owned(),
            source,
        };
        // A master that exits removes its pidfile while it still holds the lock: a file
        // locked here may have been unlinked meanwhile. Then the lock is on a file
        // nobody will find, so try again with the one now at the path.
        // Another user must not be able to plant the pidfile or point it elsewhere: its
        // directory is one this user trusts, and a symlink at the path is refused.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::trust::check_dir(dir, false, true).map_err(err)?;
        }
        for _ in 0..100 {
            let mut file = crate::trust::open_nofollow(path, 0o644, false).map_err(err)?;
            {
                use std::os::unix::fs::MetadataExt;
                let meta = file.metadata().map_err(err)?;
                if !meta.is_file() || (meta.uid() != crate::trust::euid() && meta.uid() != 0) {
                    return Err(err(crate::trust::check_file(path, false)
                        .err()
                        .unwrap_or_else(|| {
                            io::Error::other("not a regular file of this user")
                        })));
                }
            }
            if !crate::sys::try_lock(file.as_fd()).map_err(err)? {
                let pid = read_pid(&mut file);
                return Err(Error::MasterRunning {
                    path: path.to_owned(),
                    pid,
                });
            }
            if !same_file(&file, path) {
                continue;
            }
            if let Some(stale) = read_pid(&mut file) {
                info!(
                    pidfile = %path.display(),
                    stale,
                    "replacing a stale pidfile: process {stale} is not running"
                );
            }
            file.set_len(0).map_err(err)?;
            file.rewind().map_err(err)?;
            file.write_all(format!("{}\n", std::process::id()).as_bytes())
                .map_err(err)?;
            return Ok(Locked {
                path: path.to_owned(),
                file,
                signals: None,
            });
        }
        Err(err(io::Error::other(
            "the pidfile kept being replaced while it was locked",
        )))
    }
}

impl Locked {
    /// Writes the signals file (see [`signals_path`]); failures are logged, not
    /// fatal: only the fallback of the control commands needs it.
    pub(crate) fn write_signals(
        &mut self,
        reload: Option<crate::signal::Signal>,
        stop: Option<crate::signal::Signal>,
    ) {
        let path = signals_path(&self.path);
        let mut text = String::new();
        if let Some(sig) = reload {
            text.push_str(&format!("reload={}\n", sig.short_name()));
        }
        if let Some(sig) = stop {
            text.push_str(&format!("stop={}\n", sig.short_name()));
        }
        match crate::trust::write_atomic(&path, text.as_bytes(), 0o644) {
            Ok(()) => self.signals = Some(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the signals file")
            }
        }
    }
}

/// The signal a master wrote beside its pidfile that stops it (`stop`) or reloads it, for
/// a client whose control socket is gone. Only a signals file this user can trust is
/// read.
///
/// # Errors
///
/// `PermissionDenied` naming the path and its owner for an untrusted file; the error
/// of reading it.
pub fn fallback_signal(pidfile: &Path, stop: bool) -> io::Result<Option<crate::signal::Signal>> {
    let path = signals_path(pidfile);
    match crate::trust::check_file(&path, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    let text = std::fs::read_to_string(&path)?;
    let key = if stop { "stop" } else { "reload" };
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .and_then(|s| s.trim().parse().ok()))
}

/// Whether `file` is still the file at `path` (same device and inode).
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // Removed while still locked, and only if the path still names our file: a
        // master that starts now creates a new one.
        if same_file(&self.file, &self.path) {
            if let Some(p) = &self.signals {
                let _ = std::fs::remove_file(p);
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.lines().next()?.trim().parse().ok()
}

/// Who holds the pidfile at `path`. Only looks: takes no lock, needs only read access.
/// Only a pidfile this user can trust is read: a regular file (not a symlink) of this
/// user (or root), in a directory no other user can write to (or a sticky one).
///
/// # Errors
///
/// `PermissionDenied` naming the path and its owner for an untrusted pidfile or
/// directory; the OS error of opening it (other than its not existing) or of testing
/// its lock.
pub fn holder(path: &Path) -> io::Result<Holder> {
    match crate::trust::check_file(path, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Holder::None),
        Err(e) => return Err(e),
        Ok(()) => {}
    }
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Holder::None),
        Err(e) => return Err(e),
    };
    let pid = read_pid(&mut file);
    if crate::sys::is_locked(file.as_fd())? {
        pid.map(Holder::Running).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the pidfile is locked by a running master but names no PID yet",
            )
        })
    } else {
        Ok(Holder::Stale(pid))
    }
}

/// Writes `pid` to `path` atomically: a new file with an unpredictable name in the same
/// directory, created exclusively without following symlinks, then renamed.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    crate::trust::write_atomic(path, format!("{pid}\n").as_bytes(), 0o644)
}

/// Removes the pidfile if it still names this process (a successor may own it now).
pub(crate) fn remove_if_ours(path: &Path) {
    let ours = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        == Some(std::process::id());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_stale_and_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        assert_eq!(holder(&path).unwrap(), Holder::None);
        std::fs::write(&path, "999999999\n").unwrap();
        assert_eq!(holder(&path).unwrap(), Holder::Stale(Some(999_999_999)));
        let held = Locked::acquire(&path).unwrap();
        let me = std::process::id();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{me}\n"));
        // Open-file-description locks belong to the open file: a second open, even in
        // this process, is refused as another master would be; looking takes nothing.
        assert_eq!(holder(&path).unwrap(), Holder::Running(me));
        assert_eq!(holder(&path).unwrap(), Holder::Running(me));
        match Locked::acquire(&path) {
            Err(Error::MasterRunning { pid, .. }) => assert_eq!(pid, Some(me)),
            other => panic!("{other:?}"),
        }
        drop(held);
        assert!(!path.exists());
    }

    #[test]
    fn pidfile_is_replaced_atomically_and_removed_only_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        write(&path, 1).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        remove_if_ours(&path);
        assert!(path.exists(), "another process's pidfile stays");
        write(&path, std::process::id()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
        remove_if_ours(&path);
        assert!(!path.exists());
    }
}
