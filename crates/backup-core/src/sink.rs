//! The `Sink` contract every restore target implements, and the engine-neutral sinks: a file,
//! stdout, a command's stdin (engines add theirs: a directory, pg_restore, a Redis server).
//!
//! A sink writes somewhere invisible first where it can (a temporary sibling of the target) and
//! makes the result visible only in [`Sink::commit`], called after the whole stream verified.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

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
    /// Leftovers of killed restores found next to the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leftovers: Option<Leftovers>,
}

/// `.NAME.lifeboat-TAG-PID-RANDOM` next to `target`: hidden, and naming the process that
/// writes it, so a later restore can tell a dead run's leftover from a running one's.
pub(crate) fn sibling(target: &Path, tag: &str) -> PathBuf {
    target.with_file_name(format!(
        "{}{tag}-{}-{:08x}",
        sibling_prefix(target),
        std::process::id(),
        rand::random::<u32>()
    ))
}

fn sibling_prefix(target: &Path) -> String {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.lifeboat-")
}

/// A temporary sibling being written: removed when dropped unless placed, so a restore whose
/// future is dropped (Ctrl-C, SIGTERM) leaves nothing behind. Removal first waits for the
/// thread writing into it, which stops once its input is closed.
pub(crate) struct Partial {
    path: PathBuf,
    writer: Option<Arc<Finished>>,
    placed: bool,
}

/// Set when the thread writing a [`Partial`] has returned.
#[derive(Default)]
pub(crate) struct Finished {
    done: Mutex<bool>,
    cv: Condvar,
}

/// Held by the writing thread; marks the [`Partial`] free to remove when dropped.
pub(crate) struct WriterToken(Arc<Finished>);

impl Drop for WriterToken {
    fn drop(&mut self) {
        *self.0.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.0.cv.notify_all();
    }
}

impl Partial {
    pub(crate) fn new(path: PathBuf) -> Partial {
        Partial {
            path,
            writer: None,
            placed: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A token for the thread that writes into the partial.
    pub(crate) fn writer_token(&mut self) -> WriterToken {
        let f = Arc::new(Finished::default());
        self.writer = Some(f.clone());
        WriterToken(f)
    }

    /// The partial was renamed into place (or removed): nothing to clean up.
    pub(crate) fn placed(&mut self) {
        self.placed = true;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if self.placed {
            return;
        }
        if let Some(f) = &self.writer {
            let done = f.done.lock().unwrap_or_else(|p| p.into_inner());
            let _ =
                f.cv.wait_timeout_while(done, Duration::from_secs(30), |d| !*d);
        }
        remove_any(&self.path);
    }
}

fn remove_any(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => drop(std::fs::remove_dir_all(p)),
        Ok(_) => drop(std::fs::remove_file(p)),
        Err(_) => {}
    }
}

/// Temporary siblings of `target` left by this process (none once an interrupted restore
/// has cleaned up: what the binary checks before saying so).
pub fn partials_of(target: &Path) -> Vec<PathBuf> {
    let mine = format!("-{}-", std::process::id());
    siblings_of(target)
        .into_iter()
        .filter(|(_, rest)| rest.contains(&mine))
        .map(|(p, _)| p)
        .collect()
}

/// Temporary siblings of `target` as (path, the name after the prefix).
fn siblings_of(target: &Path) -> Vec<(PathBuf, String)> {
    let prefix = sibling_prefix(target);
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Ok(rd) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix(&prefix)?.to_string();
            Some((e.path(), rest))
        })
        .collect()
}

/// What [`sweep_leftovers`] found next to a target.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Leftovers {
    /// Partial copies of dead restores, removed.
    pub removed: Vec<String>,
    /// Bytes they held.
    pub removed_bytes: u64,
    /// A previous target a killed `--force` restore had moved aside before the new one was in
    /// place: the operator's data, kept and named.
    pub kept: Vec<String>,
}

impl Leftovers {
    /// `Some` when anything was found.
    pub fn found(self) -> Option<Leftovers> {
        (!self.removed.is_empty() || !self.kept.is_empty()).then_some(self)
    }

    /// One line for the operator, if anything was found.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.removed.is_empty() {
            parts.push(format!(
                "removed {} left by an interrupted restore ({})",
                self.removed.join(", "),
                crate::progress::human_bytes(self.removed_bytes)
            ));
        }
        if !self.kept.is_empty() {
            parts.push(format!(
                "kept {}: the previous contents a killed --force restore had moved aside (remove it once the restore is checked)",
                self.kept.join(", ")
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Removes the partial copies that killed restores (SIGKILL, a crash) left next to `target`;
/// one whose writer is still running is left alone. A moved-aside old target is removed only
/// when the new one made it into place, else kept and named: it may be the only copy.
pub(crate) fn sweep_leftovers(target: &Path) -> Leftovers {
    let mut found = Leftovers::default();
    for (path, rest) in siblings_of(target) {
        let Some((tag, tail)) = rest.split_once('-') else {
            continue;
        };
        if !matches!(tag, "restore" | "old") || writer_alive(tail) {
            continue;
        }
        if tag == "old" && std::fs::symlink_metadata(target).is_err() {
            found.kept.push(path.display().to_string());
            continue;
        }
        found.removed_bytes += disk_usage(&path);
        remove_any(&path);
        found.removed.push(path.display().to_string());
    }
    found
}

/// Whether the process named in `PID-RANDOM` still runs (names without a PID, from earlier
/// versions, are taken as dead: those versions never left one behind on purpose).
fn writer_alive(tail: &str) -> bool {
    match tail.split_once('-').map(|(pid, _)| pid.parse::<u32>()) {
        Some(Ok(pid)) => pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

fn disk_usage(p: &Path) -> u64 {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
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
    /// FIFOs and device nodes made.
    pub specials: u64,
    /// What could not be restored as it was (attributes refused, device nodes without root):
    /// the first ones, and how many in all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    pub warnings_total: u64,
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
    file: WritebackFile,
    tmp: Partial,
    leftovers: Leftovers,
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
        let leftovers = sweep_leftovers(target);
        let tmp = Partial::new(sibling(target, "restore"));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp.path())
            .await
            .map_err(|e| sink_err(item, target, e))?;
        let file = WritebackFile::new(file, tmp.path()).map_err(|e| sink_err(item, target, e))?;
        Ok(FileSink {
            item: item.to_string(),
            target: target.to_path_buf(),
            file,
            tmp,
            leftovers,
        })
    }
}

/// Bytes written between two early writebacks of a file being restored.
const WRITEBACK_EVERY: u64 = 32 << 20;

/// A file being restored whose dirty pages are written back while the restore goes on: an
/// `fdatasync` every [`WRITEBACK_EVERY`] bytes on a blocking thread, one at a time, so the fsync
/// before the rename has little left (without it a restore took its own time plus a whole
/// flush; `cat > FILE && sync` overlaps neither either, but has no pipeline to wait for).
/// The early syncs go through a file description of their own: a writeback error they meet is
/// still reported to the final fsync on the writer's.
struct WritebackFile {
    file: tokio::fs::File,
    syncer: Arc<std::fs::File>,
    since: u64,
    busy: Arc<std::sync::atomic::AtomicBool>,
}

impl WritebackFile {
    fn new(file: tokio::fs::File, path: &Path) -> std::io::Result<WritebackFile> {
        Ok(WritebackFile {
            file,
            syncer: Arc::new(std::fs::File::open(path)?),
            since: 0,
            busy: Arc::default(),
        })
    }

    fn wrote(&mut self, n: usize) {
        use std::sync::atomic::Ordering;
        self.since += n as u64;
        if self.since < WRITEBACK_EVERY || self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        self.since = 0;
        let (f, busy) = (self.syncer.clone(), self.busy.clone());
        tokio::task::spawn_blocking(move || {
            // Its result is the final fsync's to report (see above).
            let _ = f.sync_data();
            busy.store(false, Ordering::Release);
        });
    }

    async fn sync_all(&mut self) -> std::io::Result<()> {
        self.file.sync_all().await
    }
}

impl AsyncWrite for WritebackFile {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.file).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.wrote(n);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.file).poll_shutdown(cx)
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
            tokio::fs::rename(self.tmp.path(), &self.target).await
        }
        .await;
        if let Err(e) = r {
            return Err(sink_err(&self.item, &self.target, e));
        }
        self.tmp.placed();
        // The rename is durable once the directory holding it is.
        let parent = self
            .target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let synced = tokio::task::spawn_blocking(move || {
            std::fs::File::open(&parent).and_then(|d| d.sync_all())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if let Err(e) = synced {
            return Err(sink_err(&self.item, &self.target, e));
        }
        Ok(SinkReport {
            target: self.target.display().to_string(),
            leftovers: self.leftovers.clone().found(),
            ..SinkReport::default()
        })
    }
    async fn abort(self: Box<Self>) -> Option<Error> {
        None // dropping self removes the partial file
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
            leftovers: None,
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
            leftovers: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_of_dead_restores_go_a_running_one_and_an_only_copy_stay() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("site");
        let at = |n: &str| dir.path().join(n);
        // Dead writer (no such PID), a name from before PIDs were recorded, a live writer
        // (PID 1 always runs), and an old target moved aside with the new one not in place.
        std::fs::create_dir_all(at(".site.lifeboat-restore-4294967295-0000abcd/d")).unwrap();
        std::fs::create_dir(at(".site.lifeboat-restore-0000abcd")).unwrap();
        std::fs::write(at(".site.lifeboat-restore-0000abcd/f"), b"12345").unwrap();
        std::fs::create_dir(at(".site.lifeboat-restore-1-0000abcd")).unwrap();
        std::fs::create_dir(at(".site.lifeboat-old-4294967295-0000abcd")).unwrap();
        std::fs::create_dir(at(".other.lifeboat-restore-4294967295-0000abcd")).unwrap();
        let l = sweep_leftovers(&target);
        assert_eq!(l.removed.len(), 2, "{l:?}");
        assert_eq!(l.removed_bytes, 5);
        assert!(!at(".site.lifeboat-restore-4294967295-0000abcd").exists());
        assert!(!at(".site.lifeboat-restore-0000abcd").exists());
        assert!(
            at(".site.lifeboat-restore-1-0000abcd").exists(),
            "a running restore's"
        );
        assert!(
            at(".other.lifeboat-restore-4294967295-0000abcd").exists(),
            "another target's"
        );
        assert_eq!(l.kept.len(), 1, "the only copy of the old target: {l:?}");
        assert!(l.describe().unwrap().contains("moved aside"));
        // Once the target is in place, the moved-aside old one is what --force meant to drop.
        std::fs::create_dir(&target).unwrap();
        let l = sweep_leftovers(&target);
        assert_eq!(l.removed.len(), 1, "{l:?}");
        assert!(!at(".site.lifeboat-old-4294967295-0000abcd").exists());
    }

    #[test]
    fn a_dropped_partial_waits_for_its_writer_then_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Partial::new(dir.path().join(".x.lifeboat-restore-1-1"));
        std::fs::create_dir(p.path()).unwrap();
        let token = p.writer_token();
        let path = p.path().to_path_buf();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(path.join("late"), b"x").unwrap();
            drop(token);
        });
        let kept = dir.path().join(".x.lifeboat-restore-1-2");
        std::fs::create_dir(&kept).unwrap();
        let mut placed = Partial::new(kept.clone());
        placed.placed();
        drop(placed);
        drop(p);
        writer.join().unwrap();
        assert!(!dir.path().join(".x.lifeboat-restore-1-1").exists());
        assert!(kept.exists(), "a placed partial is not removed");
    }
}
