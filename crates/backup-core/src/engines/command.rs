//! `CommandSource`: the standard output of a shell command (mysqldump, etcdctl snapshot…).

use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::error::{Error, Result};
use crate::manifest::{Facts, ItemKind};
use crate::source::{ByteStream, Source};

const STDERR_TAIL: usize = 4096;

/// Runs a program (by default `sh -c COMMAND`) and backs up its stdout; a non-zero exit fails
/// the backup with the tail of its stderr.
pub struct CommandSource {
    name: String,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    kind: ItemKind,
    format: String,
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_task: Option<tokio::task::JoinHandle<()>>,
}

impl CommandSource {
    /// A command item; `format` defaults to `raw`.
    pub fn new(name: impl Into<String>, command: impl Into<String>) -> Self {
        Self::argv(name, "sh", vec!["-c".to_string(), command.into()])
    }

    /// Runs `program` with `args` directly, no shell (arguments need no quoting).
    pub fn argv(name: impl Into<String>, program: impl Into<String>, args: Vec<String>) -> Self {
        CommandSource {
            name: name.into(),
            program: program.into(),
            args,
            env: Vec::new(),
            kind: ItemKind::Command,
            format: "raw".into(),
            child: None,
            stderr: Arc::default(),
            stderr_task: None,
        }
    }

    /// Adds an environment variable for the child (e.g. `PGPASSWORD`).
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Records another item kind (a `pg_dump` run is a `postgres` item).
    pub fn with_kind(mut self, kind: ItemKind) -> Self {
        self.kind = kind;
        self
    }

    /// The last 4 KiB of stderr seen so far.
    pub fn stderr_tail(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap())
            .trim()
            .to_string()
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
        self.kind
    }
    fn format(&self) -> &str {
        &self.format
    }

    async fn open(&mut self) -> Result<ByteStream> {
        const PIPE_SIZE: usize = 1 << 20;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.fail(format!("cannot start {}: {e}", self.program)))?;
        let stdout = child.stdout.take().expect("piped");
        // A 64 KiB pipe means a wake-up of each side per 64 KiB: measured here, half of an
        // unchanged re-backup's CPU went to pipe hand-offs. 1 MiB is the unprivileged
        // maximum; failing to raise it only costs speed.
        let _ = rustix::pipe::fcntl_setpipe_size(&stdout, PIPE_SIZE);
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
