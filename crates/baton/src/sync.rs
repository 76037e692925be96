//! Locks that survive a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`. A poisoned lock only means another thread panicked while holding it; the
/// data baton keeps behind its locks (a descriptor, a registry, a list) stays
/// consistent at every step, so carry on.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
