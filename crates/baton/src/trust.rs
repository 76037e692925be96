//! Directories and files that baton trusts only when they are its own.
//!
//! Another local user must not be able to plant or redirect what baton reads, writes
//! or signals: a run directory is trusted when it is a real directory (not a symlink)
//! owned by this user (or root) that nobody else may write to; a file in it when it is
//! a regular file (not a symlink) owned by this user (or root). Private directories
//! (for notify and control sockets) get unpredictable names and mode 0700.

use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a path is not trusted: what is wrong, with the path and its owner.
#[derive(Debug)]
pub(crate) struct Untrusted {
    pub(crate) path: PathBuf,
    pub(crate) owner: Option<u32>,
    pub(crate) why: &'static str,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.path.display(), self.why)?;
        if let Some(uid) = self.owner {
            write!(f, " (owner uid {uid}, this user is uid {})", euid())?;
        }
        Ok(())
    }
}

impl std::error::Error for Untrusted {}

impl From<Untrusted> for io::Error {
    fn from(u: Untrusted) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, u.to_string())
    }
}

pub(crate) fn euid() -> u32 {
    crate::sys::euid()
}

/// Whether `uid` may own what this user trusts: this user, or root.
fn trusted_owner(uid: u32) -> bool {
    uid == euid() || uid == 0
}

/// Checks that `dir` is a directory this user can trust: not a symlink, owned by this
/// user (or root), and not writable by group or others (unless `sticky_ok` and the
/// sticky bit is set, as on `/tmp`: others can create files there but not replace
/// ours). With `private`, it must also be closed to group and others (mode 0700).
///
/// # Errors
///
/// [`Untrusted`] naming the path, what is wrong and the owner; the I/O error of
/// looking at it.
pub(crate) fn check_dir(dir: &Path, private: bool, sticky_ok: bool) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let untrusted = |why| Untrusted {
        path: dir.to_owned(),
        owner: Some(meta.uid()),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(untrusted("is a symbolic link; give the real directory").into());
    }
    if !meta.is_dir() {
        return Err(untrusted("is not a directory").into());
    }
    let mode = meta.permissions().mode();
    let sticky = mode & 0o1000 != 0;
    if !trusted_owner(meta.uid()) {
        return Err(untrusted("belongs to another user").into());
    }
    if private && (mode & 0o077 != 0 || meta.uid() != euid()) {
        return Err(untrusted("is not private (mode 0700, owned by this user)").into());
    }
    if mode & 0o022 != 0 && !(sticky_ok && sticky) {
        return Err(untrusted("can be written by other users").into());
    }
    Ok(())
}

/// Checks that `file` is one this user can trust: a regular file (or, with `socket`,
/// a socket), not a symlink, owned by this user (or root), in a directory checked by
/// [`check_dir`] (a sticky world-writable one allowed).
///
/// # Errors
///
/// As [`check_dir`]; `NotFound` if it does not exist.
pub(crate) fn check_file(file: &Path, socket: bool) -> io::Result<()> {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_dir(dir, false, true)?;
    }
    let meta = std::fs::symlink_metadata(file)?;
    let untrusted = |why| Untrusted {
        path: file.to_owned(),
        owner: Some(meta.uid()),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(untrusted("is a symbolic link").into());
    }
    let kind_ok = if socket {
        std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type())
    } else {
        meta.is_file()
    };
    if !kind_ok {
        return Err(untrusted(if socket {
            "is not a socket"
        } else {
            "is not a regular file"
        })
        .into());
    }
    if !trusted_owner(meta.uid()) {
        return Err(untrusted("belongs to another user").into());
    }
    Ok(())
}

/// Creates `dir` (and its parents) with mode 0700 if it is missing, then checks it as
/// a private directory ([`check_dir`]).
///
/// # Errors
///
/// The error of creating it, or why it is not trusted.
pub(crate) fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Err(e) => return Err(e),
    }
    check_dir(dir, true, false)
}

/// An unpredictable name part: 16 hex digits from the standard library's randomly
/// seeded hasher.
pub(crate) fn random_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = std::collections::hash_map::RandomState::new().hash_one((
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        nanos,
    ));
    format!("{n:016x}")
}

/// A fresh directory of mode 0700 with an unpredictable name, in `$XDG_RUNTIME_DIR`
/// (when it is a directory) or the temporary directory; removed (with what is left in
/// it) on drop. Another user can neither guess its name in advance nor enter it.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates one named `PREFIX-<random>`.
    ///
    /// # Errors
    ///
    /// The error of creating it (after a few names were found taken).
    pub(crate) fn create(prefix: &str) -> io::Result<PrivateDir> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let mut last = None;
        for _ in 0..16 {
            let path = base.join(format!("{prefix}-{}", random_name()));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                // mkdir(2) made it, with this mode, for this user: nothing to check.
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free private directory name")))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Opens `path` for writing without following a symlink at its end, creating it with
/// mode `mode` if missing (`O_NOFOLLOW`; with `exclusive`, `O_EXCL`: it must not
/// exist).
///
/// # Errors
///
/// The error of opening it (`ELOOP` for a symlink, `EEXIST` with `exclusive`).
pub(crate) fn open_nofollow(path: &Path, mode: u32, exclusive: bool) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::File::options();
    o.read(true)
        .write(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    if exclusive {
        o.create_new(true);
    } else {
        o.create(true);
    }
    o.open(path)
}

/// Writes `contents` to `path` atomically and without following symlinks: a new file
/// with an unpredictable name, created exclusively in the same directory, then renamed
/// over `path` (a rename replaces a symlink at `path` itself, never what it points to).
///
/// # Errors
///
/// The error of writing or renaming.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", random_name()));
    let tmp = match dir {
        Some(d) => d.join(tmp_name),
        None => PathBuf::from(tmp_name),
    };
    let mut f = open_nofollow(&tmp, mode, true)?;
    let written = f.write_all(contents).and_then(|()| f.flush());
    drop(f);
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}
