//! Where repository secrets come from: a file, an environment variable or a command, never argv.

use std::path::PathBuf;
use std::process::{Command, Stdio};

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
                let out = Command::new("sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit())
                    .output()
                    .map_err(|e| err(e.to_string()))?;
                let stdout = Zeroizing::new(out.stdout);
                if !out.status.success() {
                    return Err(err(format!("command exited with {}", out.status)));
                }
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
}
