//! The run lock: one backup run per repository per host at a time, held by `flock`.
//!
//! The kernel drops an flock when its holder dies, so a crashed or killed run can never leave a
//! stale lock that breaks the next cron run. The lock is named by the repository's config id,
//! not by how its location was spelled (`$PWD/repo` and `./repo/` are one repository), and
//! lives in a directory the user owns, opened without following symlinks: a lock under a
//! shared `/tmp` must neither let another user plant a symlink that makes a root run create a
//! file elsewhere, nor let a directory another user made first lock everyone else out.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A held run lock; released on drop.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Takes the run lock of the repository whose config id is `repo_id`, under `root` (the
    /// cache root, whether or not caching is on) or, without one (no `$HOME`), under a per-user
    /// directory (`$XDG_RUNTIME_DIR/lifeboat` or `$TMPDIR/lifeboat-UID`).
    pub fn for_repository(root: Option<&Path>, repo_id: &str, wait: bool) -> Result<RunLock> {
        let base = match root {
            Some(r) => r.to_path_buf(),
            None => {
                let d = user_runtime_dir();
                private_dir(&d)?;
                d
            }
        };
        let dir = base.join("locks");
        private_dir(&dir)?;
        let name: String = repo_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(64)
            .collect();
        RunLock::acquire(&dir.join(format!("{name}.lock")), wait)
    }

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
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
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

/// A directory for this user's run-time files that no other user can have made or redirected.
fn user_runtime_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("lifeboat");
    }
    std::env::temp_dir().join(format!("lifeboat-{}", rustix::process::getuid().as_raw()))
}

/// Creates `dir` (mode 0700 where it is new) and refuses one that is a symlink, belongs to
/// another user or is writable by others: each would let someone else steer or block the lock.
fn private_dir(dir: &Path) -> Result<()> {
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
    }
    let m = std::fs::symlink_metadata(dir)
        .map_err(|e| Error::io(format!("inspecting {}", dir.display()), e))?;
    let me = rustix::process::getuid().as_raw();
    let why = if m.file_type().is_symlink() {
        "is a symlink".to_string()
    } else if !m.is_dir() {
        "is not a directory".to_string()
    } else if m.uid() != me {
        format!("belongs to uid {}, not to this user (uid {me})", m.uid())
    } else if m.permissions().mode() & 0o022 != 0 {
        "is writable by other users".to_string()
    } else {
        return Ok(());
    };
    Err(Error::Usage(format!(
        "lock directory {}: {why}; hint: remove it, or give --cache-dir a directory you own",
        dir.display()
    )))
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

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        let locks = dir.path().join("cache/locks");
        std::fs::create_dir_all(&locks).unwrap();
        std::fs::set_permissions(&locks, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim, locks.join("abc123.lock")).unwrap();
        let err =
            RunLock::for_repository(Some(&dir.path().join("cache")), "abc123", false).unwrap_err();
        assert!(err.to_string().contains("abc123.lock"), "{err}");
        assert!(!victim.exists(), "the lock followed a symlink");
    }

    #[test]
    fn a_locks_directory_others_can_write_or_redirect_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(cache.join("locks")).unwrap();
        std::fs::set_permissions(cache.join("locks"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        let err = RunLock::for_repository(Some(&cache), "id", false).unwrap_err();
        assert!(err.to_string().contains("writable by other users"), "{err}");
        std::fs::remove_dir(cache.join("locks")).unwrap();
        std::os::unix::fs::symlink(dir.path(), cache.join("locks")).unwrap();
        let err = RunLock::for_repository(Some(&cache), "id", false).unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
    }

    #[test]
    fn the_lock_is_named_by_the_repository_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::for_repository(Some(dir.path()), "0123abcd", false).unwrap();
        assert_eq!(first.path(), dir.path().join("locks/0123abcd.lock"));
        let mode = std::fs::metadata(dir.path().join("locks"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(matches!(
            RunLock::for_repository(Some(dir.path()), "0123abcd", false),
            Err(Error::Locked { .. })
        ));
        RunLock::for_repository(Some(dir.path()), "another", false).expect("another repository");
    }
}
