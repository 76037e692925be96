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
    _file: File,
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
        Ok(Locked {
            path: path.to_owned(),
            _file: file,
        })
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // Removed while still locked: a master that starts now creates a new file.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Who holds the pidfile at `path`.
///
/// # Errors
///
/// The OS error of opening or locking it (other than its not existing).
pub fn holder(path: &Path) -> io::Result<Holder> {
    let mut file = match File::options().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Holder::None),
        Err(e) => return Err(e),
    };
    let pid = read_pid(&mut file);
    // Taking the lock only to test it; dropping the file releases it at once.
    if crate::sys::try_lock(file.as_fd())? {
        Ok(Holder::Stale(pid))
    } else {
        pid.map(Holder::Running).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the pidfile is locked by a running master but names no PID yet",
            )
        })
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
        // flock locks belong to the open file: a second open, even in this process,
        // is refused as another master would be.
        assert_eq!(holder(&path).unwrap(), Holder::Running(me));
        match Locked::acquire(&path) {
            Err(Error::MasterRunning { pid, .. }) => assert_eq!(pid, Some(me)),
            other => panic!("{other:?}"),
        }
        drop(held);
        assert!(!path.exists());
    }
}
