//! Where repository secrets come from: a file, an environment variable or a command, never argv.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// A resolved secret, zeroized on drop.
pub enum Secret {
    /// A passphrase, stretched with Argon2id.
    Passphrase(Zeroizing<Vec<u8>>),
    /// Raw key-file bytes (at least 32).
    KeyFile(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind())
    }
}

impl Secret {
    /// "passphrase" or "key file".
    pub fn kind(&self) -> &'static str {
        match self {
            Secret::Passphrase(_) => "passphrase",
            Secret::KeyFile(_) => "key file",
        }
    }
}

/// Where to read a secret from. Deliberately no variant for a literal on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Passphrase in a file (one trailing newline is dropped).
    PasswordFile(PathBuf),
    /// Passphrase in an environment variable.
    PasswordEnv(String),
    /// Passphrase printed by a shell command (`pass show backup`, a vault client…).
    PasswordCommand(String),
    /// Key material: the whole file.
    KeyFile(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::PasswordFile(p) => write!(f, "password file {}", p.display()),
            SecretSource::PasswordEnv(v) => write!(f, "environment variable {v}"),
            SecretSource::PasswordCommand(c) => write!(f, "password command `{c}`"),
            SecretSource::KeyFile(p) => write!(f, "key file {}", p.display()),
        }
    }
}

impl SecretSource {
    /// Reads the secret.
    pub fn resolve(&self) -> Result<Secret> {
        let err = |detail: String| Error::Secret {
            from: self.to_string(),
            detail,
        };
        match self {
            SecretSource::PasswordFile(p) => {
                let raw = Zeroizing::new(std::fs::read(p).map_err(|e| err(e.to_string()))?);
                passphrase(&raw).ok_or_else(|| err("file is empty".into()))
            }
            SecretSource::PasswordEnv(var) => {
                let v = Zeroizing::new(std::env::var(var).map_err(|e| err(e.to_string()))?);
                passphrase(v.as_bytes()).ok_or_else(|| err("variable is empty".into()))
            }
            SecretSource::PasswordCommand(cmd) => {
                let stdout = run_password_command(cmd, password_command_timeout()).map_err(err)?;
                passphrase(&stdout).ok_or_else(|| err("command printed nothing".into()))
            }
            SecretSource::KeyFile(p) => {
                let raw = Zeroizing::new(std::fs::read(p).map_err(|e| err(e.to_string()))?);
                if raw.len() < 32 {
                    return Err(err(format!(
                        "{} bytes; a key file needs at least 32 (make one with `head -c 64 /dev/urandom > FILE`)",
                        raw.len()
                    )));
                }
                Ok(Secret::KeyFile(raw))
            }
        }
    }
}

/// How long a password command may take (a vault login, a hardware token): 60 s, or
/// `LIFEBOAT_PASSWORD_COMMAND_TIMEOUT` (`30s`, `2m`). A command that hangs must not hang a
/// nightly run for ever.
fn password_command_timeout() -> Duration {
    std::env::var("LIFEBOAT_PASSWORD_COMMAND_TIMEOUT")
        .ok()
        .and_then(|v| crate::retention::parse_duration(&v).ok())
        .and_then(|d| d.to_std().ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(60))
}

/// Runs `cmd` with `sh -c` in its own process group and returns its stdout; past `timeout`
/// the whole group is killed (a shell's children too) and the run fails.
fn run_password_command(
    cmd: &str,
    timeout: Duration,
) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut out = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut buf = Zeroizing::new(Vec::new());
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(st) => break st,
            None if Instant::now() >= deadline => {
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer after {}s: killed (set LIFEBOAT_PASSWORD_COMMAND_TIMEOUT for a slower command)",
                    timeout.as_secs()
                ));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let stdout = reader
        .join()
        .map_err(|_| "reading its output failed".to_string())?;
    if !status.success() {
        return Err(format!("command exited with {status}"));
    }
    Ok(stdout)
}

fn passphrase(raw: &[u8]) -> Option<Secret> {
    let mut end = raw.len();
    if end > 0 && raw[end - 1] == b'\n' {
        end -= 1;
        if end > 0 && raw[end - 1] == b'\r' {
            end -= 1;
        }
    }
    (end > 0).then(|| Secret::Passphrase(Zeroizing::new(raw[..end].to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(s: Secret) -> Vec<u8> {
        match s {
            Secret::Passphrase(p) | Secret::KeyFile(p) => p.to_vec(),
        }
    }

    #[test]
    fn file_and_command_drop_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret \n").unwrap();
        assert_eq!(
            bytes(SecretSource::PasswordFile(p).resolve().unwrap()),
            b"s3cret "
        );
        let s = SecretSource::PasswordCommand("printf 'abc\\n'".into())
            .resolve()
            .unwrap();
        assert_eq!(bytes(s), b"abc");
        let failing = SecretSource::PasswordCommand("exit 3".into()).resolve();
        assert!(matches!(failing, Err(Error::Secret { .. })));
    }

    #[test]
    fn short_key_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, [1u8; 16]).unwrap();
        let e = SecretSource::KeyFile(p).resolve().unwrap_err();
        assert!(e.to_string().contains("at least 32"), "{e}");
    }

    #[test]
    fn a_hanging_password_command_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("child-alive");
        // The shell's child sleeps; killing only the shell would leave it holding stdout.
        let cmd = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let t0 = Instant::now();
        let e = run_password_command(&cmd, Duration::from_millis(300)).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert!(e.contains("no answer after"), "{e}");
        let pid = std::fs::read_to_string(&marker).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let state =
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z"),
            "the child was killed: {state}"
        );
        assert_eq!(
            bytes(
                SecretSource::PasswordCommand("printf pw".into())
                    .resolve()
                    .unwrap()
            ),
            b"pw"
        );
    }
}
