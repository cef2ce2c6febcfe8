//! The run lock: one backup run per repository per host at a time, held by `flock`.
//!
//! The kernel drops an flock when its holder dies, so a crashed or killed run can never leave a
//! stale lock that breaks the next cron run.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held run lock; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the lock at `path`; if another process holds it, fails with [`Error::Locked`] or,
    /// with `wait`, blocks until it is free.
    pub fn acquire(path: &Path, wait: bool) -> Result<RunLock> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("opening lock {}", path.display()), e))?;
        if wait {
            file.lock()
                .map_err(|e| Error::io(format!("locking {}", path.display()), e))?;
        } else {
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(Error::Locked {
                        path: path.to_path_buf(),
                    });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io(format!("locking {}", path.display()), e));
                }
            }
        }
        Ok(RunLock {
            _file: file,
            path: path.to_path_buf(),
        })
    }

    /// Lock file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_release() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("locks/run.lock");
        let first = RunLock::acquire(&p, false).unwrap();
        assert!(matches!(
            RunLock::acquire(&p, false),
            Err(Error::Locked { .. })
        ));
        drop(first);
        RunLock::acquire(&p, false).expect("free after release");
    }
}
