//! Scratch servers Lifeboat starts itself on free loopback ports: for restore checks, drills
//! and the integration tests. Each is stopped and its directory removed on drop.

pub mod promtool;
pub mod pushgateway;
pub mod s3;

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A free loopback port (bound, then released; the caller must confirm it got the server it
/// started, since another process may take the port in between).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("finding a free port", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

/// Whether this process runs as root (servers such as PostgreSQL refuse to).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(prefix: &str) -> Result<PathBuf> {
    let p = std::env::temp_dir().join(format!("{prefix}-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    Ok(p)
}

/// Finds `name` on PATH or in the first of `extra` directories that has it.
pub fn find_program(name: &str, extra: &[PathBuf]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
