//! An exclusive `flock` per resource on `<lock-dir>/<resource>.lock`.
//!
//! The lock is an ordinary flock, so administrators and cron jobs serialise with the dispatcher by
//! taking the same lock (`flock /var/lock/git-dispatch/db.lock pg_dump ...`). It is released when the
//! [`ResourceLock`] is dropped, and by the kernel if the dispatcher dies.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
#[error("lock `{path}`: {source}")]
pub(crate) struct LockError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct ResourceLock {
    // Held for its flock, released on drop.
    _file: File,
}

impl ResourceLock {
    /// The lock file for `resource` (a name already checked to be a safe file name).
    pub(crate) fn path(dir: &Path, resource: &str) -> PathBuf {
        dir.join(format!("{resource}.lock"))
    }

    /// Blocks until the lock on `resource` is ours.
    pub(crate) fn acquire(dir: &Path, resource: &str) -> Result<Self, LockError> {
        let path = Self::path(dir, resource);
        let err = |source| LockError {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(err)?;
        file.lock().map_err(err)?;
        Ok(Self { _file: file })
    }
}
