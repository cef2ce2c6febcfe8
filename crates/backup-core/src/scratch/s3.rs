//! A local S3-compatible server (ministack, from PyPI) on a free port, for tests and benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find_program, free_port};
use crate::error::{Error, Result};
use crate::lock::RunLock;

/// The ministack release the tests and benchmarks are written against (its S3 subset is
/// checked by the S3 tests, so a newer one is taken only on purpose).
pub const MINISTACK_VERSION: &str = "1.5.33";

/// Where the ministack executable is: `LIFEBOAT_MINISTACK`, PATH, or the project's ignored
/// `.ci/venv`, which is created on first use so that `cargo test` on a fresh machine runs the
/// S3 tests instead of skipping them. Fails, saying what to install, when that is impossible.
pub fn ministack_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("LIFEBOAT_MINISTACK") {
        return Ok(p.into());
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.ci/venv");
    if let Some(p) = find_program("ministack", &[venv.join("bin")]) {
        return Ok(p);
    }
    // Test binaries start servers in parallel: one installs, the others wait for it.
    let _lock = RunLock::acquire(&venv.with_extension("lock"), true)?;
    let bin = venv.join("bin/ministack");
    if !bin.exists() {
        install_ministack(&venv)?;
    }
    Ok(bin)
}

fn install_ministack(venv: &Path) -> Result<()> {
    let hint = format!(
        "hint: install python3-venv (apt-get install python3-venv), or put ministack=={MINISTACK_VERSION} on PATH, or set LIFEBOAT_MINISTACK"
    );
    let run = |what: &str, cmd: &mut Command| -> Result<()> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Usage(format!("{what}: {e}\n{hint}")))?;
        if out.status.success() {
            return Ok(());
        }
        Err(Error::Usage(format!(
            "{what} failed ({}): {}\n{hint}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    };
    let _ = std::fs::remove_dir_all(venv);
    run(
        &format!("creating {}", venv.display()),
        Command::new("python3").arg("-m").arg("venv").arg(venv),
    )?;
    let installed = run(
        &format!(
            "installing ministack=={MINISTACK_VERSION} into {}",
            venv.display()
        ),
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            &format!("ministack=={MINISTACK_VERSION}"),
        ]),
    );
    if installed.is_err() {
        // A half-made venv would be taken for a working one next time.
        let _ = std::fs::remove_dir_all(venv);
    }
    installed
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
        let bin = ministack_bin()?;
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
