//! A local S3-compatible server (ministack, from PyPI) on a free port, for tests and benchmarks.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find_program, free_port};
use crate::error::{Error, Result};

/// Where the ministack executable is: `LIFEBOAT_MINISTACK`, the project's `.ci/venv`, or PATH.
pub fn ministack_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LIFEBOAT_MINISTACK") {
        return Some(p.into());
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/venv/bin");
    find_program("ministack", &[venv])
}

/// A running ministack (S3 only); killed on drop.
#[derive(Debug)]
pub struct ScratchS3 {
    child: Child,
    port: u16,
}

impl ScratchS3 {
    /// Starts ministack on a free port and waits until it answers.
    pub fn start() -> Result<ScratchS3> {
        let bin = ministack_bin().ok_or_else(|| {
            Error::Usage("ministack not found: python3 -m venv .ci/venv && .ci/venv/bin/pip install ministack==1.5.33".into())
        })?;
        let port = free_port()?;
        let child = Command::new(bin)
            .env("GATEWAY_PORT", port.to_string())
            .env("BIND_HOST", "127.0.0.1")
            .env("SERVICES", "s3")
            .env("LOG_LEVEL", "WARNING")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io("starting ministack", e))?;
        let mut s = ScratchS3 { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(Error::io(
                    "ministack",
                    std::io::Error::other(format!("exited with {st}")),
                ));
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                s.kill();
                return Err(Error::io(
                    "ministack",
                    std::io::Error::other("not listening after 30s"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (by PID).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ScratchS3 {
    fn drop(&mut self) {
        self.kill();
    }
}
