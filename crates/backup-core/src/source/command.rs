//! `CommandSource`: the standard output of a shell command (mysqldump, etcdctl snapshot…).

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use super::{ByteStream, Source};
use crate::error::{Error, Result};
use crate::manifest::{Facts, ItemKind};

const STDERR_TAIL: usize = 4096;

/// Runs `sh -c COMMAND` and backs up its stdout; a non-zero exit fails the backup.
pub struct CommandSource {
    name: String,
    command: String,
    format: String,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

impl CommandSource {
    /// A command item; `format` defaults to `raw`.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        CommandSource {
            name: name.into(),
            command: command.into(),
            format: "raw".into(),
            child: None,
            stderr: Arc::default(),
            stderr_task: None,
        }
    }

    /// Records a stream format (`sql`, `tar`…).
    pub fn with_format(mut self, format: impl Into<String>) -> Self {
        self.format = format.into();
        self
    }

    fn fail(&self, detail: String) -> Error {
        Error::SourceFailed {
            item: self.name.clone(),
            detail,
        }
    }
}

#[async_trait]
impl Source for CommandSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ItemKind {
        ItemKind::Command
    }
    fn format(&self) -> &str {
        &self.format
    }

    async fn open(&mut self) -> Result<ByteStream> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.fail(format!("cannot start `sh -c {}`: {e}", self.command)))?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let tail = self.stderr.clone();
        // Keep only the tail of stderr: enough to explain a failure, bounded whatever the command prints.
        self.stderr_task = Some(tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let mut t = tail.lock().unwrap();
                t.extend_from_slice(&buf[..n]);
                if t.len() > STDERR_TAIL {
                    let cut = t.len() - STDERR_TAIL;
                    t.drain(..cut);
                }
            }
        }));
        self.child = Some(child);
        Ok(Box::new(stdout))
    }

    async fn finish(&mut self) -> Result<Facts> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| self.fail("finish before open".into()))?;
        let status = child.wait().await.map_err(|e| self.fail(e.to_string()))?;
        if let Some(t) = self.stderr_task.take() {
            let _ = t.await;
        }
        let stderr = String::from_utf8_lossy(&self.stderr.lock().unwrap())
            .trim()
            .to_string();
        if !status.success() {
            let what = match status.code() {
                Some(c) => format!("exited with status {c}"),
                None => "was killed by a signal".to_string(),
            };
            let detail = if stderr.is_empty() {
                format!("command {what}")
            } else {
                format!("command {what}: {stderr}")
            };
            return Err(self.fail(detail));
        }
        let mut facts = Facts::new();
        facts.insert("exit_status".into(), 0.into());
        if !stderr.is_empty() {
            facts.insert("stderr_tail".into(), stderr.into());
        }
        Ok(facts)
    }
}
