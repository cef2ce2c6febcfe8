//! The `Sink` contract every restore target implements, and the engine-neutral sinks: a file,
//! stdout, a command's stdin (engines add theirs: a directory, pg_restore, a Redis server).
//!
//! A sink writes somewhere invisible first where it can (a temporary sibling of the target) and
//! makes the result visible only in [`Sink::commit`], called after the whole stream verified.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::error::{Error, Result};

/// A destination for one item's stream.
#[async_trait]
pub trait Sink: Send {
    /// Where the data goes, for messages.
    fn describe(&self) -> String;
    /// Where to write the stream.
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin);
    /// The stream verified: make the result visible.
    async fn commit(self: Box<Self>) -> Result<SinkReport>;
    /// The restore failed: remove partial output where possible. Returns the sink's own error
    /// (an unsafe archive, a failing command), which explains the failure better than a pipe error.
    async fn abort(self: Box<Self>) -> Option<Error>;
}

/// What a committed sink reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SinkReport {
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untar: Option<UntarStats>,
    /// Tables whose restored row count was checked against the backup's facts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_tables: Option<usize>,
    /// What the operator should do or know next (persistence steps, a running server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub(crate) fn sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(
        ".{name}.lifeboat-{tag}-{:08x}",
        rand::random::<u32>()
    ))
}

pub(crate) fn sink_err(item: &str, target: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Sink {
        item: item.to_string(),
        target: target.display().to_string(),
        detail: detail.to_string(),
    }
}

/// What an extraction of a tar stream wrote (a directory target's part of [`SinkReport`]).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct UntarStats {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub bytes: u64,
    pub skipped: u64,
}

/// State of a target before the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetState {
    Missing,
    Empty,
    /// Something is there: restoring replaces it, and needs `force`.
    Occupied,
    /// A command or stdout: nothing to inspect.
    NotApplicable,
}

/// Whether `p` is missing, or an empty directory.
pub fn is_missing_or_empty(p: &Path) -> bool {
    match std::fs::symlink_metadata(p) {
        Err(_) => true,
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|mut r| r.next().is_none())
            .unwrap_or(false),
        Ok(_) => false,
    }
}

/// Writes a file next to the target, fsyncs and renames it into place on commit.
pub struct FileSink {
    item: String,
    target: PathBuf,
    tmp: PathBuf,
    file: tokio::fs::File,
}

impl FileSink {
    /// Refuses an existing target unless `force`.
    pub async fn create(item: &str, target: &Path, force: bool) -> Result<Self> {
        if !force && std::fs::symlink_metadata(target).is_ok() {
            return Err(Error::TargetExists {
                path: target.to_path_buf(),
            });
        }
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| sink_err(item, target, e))?;
        }
        let tmp = sibling(target, "restore");
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(|e| sink_err(item, target, e))?;
        Ok(FileSink {
            item: item.to_string(),
            target: target.to_path_buf(),
            tmp,
            file,
        })
    }
}

#[async_trait]
impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file {}", self.target.display())
    }
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        &mut self.file
    }
    async fn commit(mut self: Box<Self>) -> Result<SinkReport> {
        let r = async {
            self.file.flush().await?;
            self.file.sync_all().await?;
            tokio::fs::rename(&self.tmp, &self.target).await
        }
        .await;
        if let Err(e) = r {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(sink_err(&self.item, &self.target, e));
        }
        Ok(SinkReport {
            target: self.target.display().to_string(),
            untar: None,
            verified_tables: None,
            note: None,
        })
    }
    async fn abort(self: Box<Self>) -> Option<Error> {
        let _ = tokio::fs::remove_file(&self.tmp).await;
        None
    }
}

/// Standard output (`export -o -`): data is visible as it flows, so a failure is only reported.
pub struct StdoutSink {
    out: tokio::io::Stdout,
}

impl StdoutSink {
    /// Writes to this process's stdout.
    pub fn new() -> Self {
        StdoutSink {
            out: tokio::io::stdout(),
        }
    }
}

impl Default for StdoutSink {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Sink for StdoutSink {
    fn describe(&self) -> String {
        "standard output".into()
    }
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        &mut self.out
    }
    async fn commit(mut self: Box<Self>) -> Result<SinkReport> {
        self.out
            .flush()
            .await
            .map_err(|e| Error::io("flushing stdout", e))?;
        Ok(SinkReport {
            target: "-".into(),
            untar: None,
            verified_tables: None,
            note: None,
        })
    }
    async fn abort(self: Box<Self>) -> Option<Error> {
        None
    }
}

/// Pipes the stream into `sh -c COMMAND` (`mysql`, `etcdctl snapshot restore /dev/stdin`…).
pub struct CommandSink {
    item: String,
    command: String,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
}

impl CommandSink {
    /// Starts the command.
    pub fn spawn(item: &str, command: &str) -> Result<Self> {
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .stdin(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| sink_err(item, Path::new(command), e))?;
        let stdin = child.stdin.take();
        Ok(CommandSink {
            item: item.to_string(),
            command: command.to_string(),
            child,
            stdin,
        })
    }

    async fn wait(&mut self) -> Result<()> {
        drop(self.stdin.take());
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| sink_err(&self.item, Path::new(&self.command), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(sink_err(
                &self.item,
                Path::new(&self.command),
                format!("restore command exited with {status}"),
            ))
        }
    }
}

#[async_trait]
impl Sink for CommandSink {
    fn describe(&self) -> String {
        format!("command `{}`", self.command)
    }
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        self.stdin
            .as_mut()
            .expect("stdin present until commit/abort")
    }
    async fn commit(mut self: Box<Self>) -> Result<SinkReport> {
        self.wait().await?;
        Ok(SinkReport {
            target: format!("command `{}`", self.command),
            untar: None,
            verified_tables: None,
            note: None,
        })
    }
    async fn abort(mut self: Box<Self>) -> Option<Error> {
        drop(self.stdin.take());
        match self.child.try_wait() {
            // It failed on its own (and broke our pipe): its exit is the real error.
            Ok(Some(status)) if !status.success() => Some(sink_err(
                &self.item,
                Path::new(&self.command),
                format!("restore command exited with {status}"),
            )),
            Ok(Some(_)) => None,
            // Still running on partial input: stop it before it acts on a truncated stream.
            _ => {
                let _ = self.child.kill().await;
                None
            }
        }
    }
}
