//! A master's pidfile, locked for as long as the master lives, so that two masters of
//! one name cannot run and a pidfile left by a dead one is told apart from a live one.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tracing::info;

use crate::Error;

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
        for _ in 0..100 {
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(path)
                .map_err(err)?;
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
        reload: Option<crate::Signal>,
        stop: Option<crate::Signal>,
    ) {
        let path = signals_path(&self.path);
        let mut text = String::new();
        if let Some(sig) = reload {
            text.push_str(&format!("reload={}\n", sig.short_name()));
        }
        if let Some(sig) = stop {
            text.push_str(&format!("stop={}\n", sig.short_name()));
        }
        match std::fs::write(&path, text) {
            Ok(()) => self.signals = Some(path),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the signals file")
            }
        }
    }
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
///
/// # Errors
///
/// The OS error of opening it (other than its not existing) or of testing its lock.
pub fn holder(path: &Path) -> io::Result<Holder> {
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
}
