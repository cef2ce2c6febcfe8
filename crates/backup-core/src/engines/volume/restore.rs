//! The volume's restore target: a tar stream unpacked into a temporary sibling directory,
//! renamed over the target on commit.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncWrite;
use tokio_util::io::SyncIoBridge;

use super::untar::{UntarStats, untar};
use crate::error::{Error, Result};
use crate::sink::{
    Leftovers, Partial, Sink, SinkReport, is_missing_or_empty, sibling, sink_err, sweep_leftovers,
};

/// Unpacks a tar stream into a temporary sibling directory, renamed over the target on commit.
pub struct DirectorySink {
    item: String,
    target: PathBuf,
    force: bool,
    // Dropped before `tmp`: closing the writer ends the extraction that `tmp` waits for.
    writer: Option<tokio::io::DuplexStream>,
    task: Option<tokio::task::JoinHandle<Result<UntarStats>>>,
    /// The temporary directory, opened before anything is written into it: the `syncfs`
    /// through it reports every writeback error since (one opened at the end would miss those
    /// of the early writebacks).
    sync_dir: Option<std::fs::File>,
    tmp: Partial,
    leftovers: Leftovers,
}

impl DirectorySink {
    /// Prepares the temporary directory. Refuses a non-empty target unless `force`.
    /// `numeric_owner`: owners by the stored ids, not by name (see [`untar`]).
    pub async fn create(
        item: &str,
        target: &Path,
        force: bool,
        numeric_owner: bool,
    ) -> Result<Self> {
        if !force && !is_missing_or_empty(target) {
            return Err(Error::TargetNotEmpty {
                path: target.to_path_buf(),
            });
        }
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| sink_err(item, target, e))?;
        let leftovers = sweep_leftovers(target);
        let mut tmp = Partial::new(sibling(target, "restore"));
        tokio::fs::create_dir(tmp.path())
            .await
            .map_err(|e| sink_err(item, target, e))?;
        let sync_dir = std::fs::File::open(tmp.path()).map_err(|e| sink_err(item, target, e))?;
        let (w, r) = tokio::io::duplex(1 << 20);
        // Large reads across the bridge: each read of it is a wake-up of the async side.
        let bridge = std::io::BufReader::with_capacity(1 << 20, SyncIoBridge::new(r));
        let (t, it, token) = (
            tmp.path().to_path_buf(),
            item.to_string(),
            tmp.writer_token(),
        );
        let task = tokio::task::spawn_blocking(move || {
            let _running = token;
            untar(bridge, &t, &it, numeric_owner)
        });
        Ok(DirectorySink {
            item: item.to_string(),
            target: target.to_path_buf(),
            force,
            writer: Some(w),
            task: Some(task),
            sync_dir: Some(sync_dir),
            tmp,
            leftovers,
        })
    }

    async fn join(&mut self) -> Result<UntarStats> {
        drop(self.writer.take());
        match self.task.take() {
            Some(t) => t.await.map_err(|e| sink_err(&self.item, &self.target, e))?,
            None => Err(sink_err(
                &self.item,
                &self.target,
                "extraction already joined",
            )),
        }
    }
}

#[async_trait]
impl Sink for DirectorySink {
    fn describe(&self) -> String {
        format!("directory {}", self.target.display())
    }

    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        self.writer
            .as_mut()
            .expect("writer present until commit/abort")
    }

    async fn commit(mut self: Box<Self>) -> Result<SinkReport> {
        let stats = self.join().await?;
        let (item, target, tmp, force) = (
            self.item.clone(),
            self.target.clone(),
            self.tmp.path().to_path_buf(),
            self.force,
        );
        let sync_dir = self.sync_dir.take();
        let placed =
            tokio::task::spawn_blocking(move || place_dir(&item, &target, &tmp, force, sync_dir))
                .await
                .map_err(|e| Error::io("placing restored directory", std::io::Error::other(e)))?;
        placed?;
        self.tmp.placed();
        Ok(SinkReport {
            target: self.target.display().to_string(),
            untar: Some(stats),
            leftovers: self.leftovers.clone().found(),
            ..SinkReport::default()
        })
    }

    async fn abort(mut self: Box<Self>) -> Option<Error> {
        // Dropping self removes the partial directory.
        self.join().await.err()
    }
}

/// Makes the finished temporary directory durable, moves it into place (with `force`, the old
/// target is moved aside first and deleted only once the new one is in place) and makes the
/// rename durable: nothing is reported restored before it would survive a power cut.
///
/// One `syncfs` of the target's filesystem instead of an fsync per file: the same guarantee
/// for every file and directory written, in one call that lets the disk order the writes.
fn place_dir(
    item: &str,
    target: &Path,
    tmp: &Path,
    force: bool,
    sync_dir: Option<std::fs::File>,
) -> Result<()> {
    let fail = |what: &str, e: std::io::Error| {
        let _ = std::fs::remove_dir_all(tmp);
        sink_err(item, target, format!("{what}: {e}"))
    };
    let synced = match sync_dir {
        Some(d) => Ok(d),
        None => std::fs::File::open(tmp),
    }
    .and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from));
    synced.map_err(|e| fail("syncing the restored files", e))?;
    rename_into_place(target, tmp, force, &fail)?;
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| sink_err(item, target, format!("syncing the rename into place: {e}")))
}

fn rename_into_place(
    target: &Path,
    tmp: &Path,
    force: bool,
    fail: &dyn Fn(&str, std::io::Error) -> Error,
) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Err(_) => std::fs::rename(tmp, target).map_err(|e| fail("rename into place", e)),
        Ok(m) if m.is_dir() && is_missing_or_empty(target) => {
            std::fs::remove_dir(target).map_err(|e| fail("remove empty target", e))?;
            std::fs::rename(tmp, target).map_err(|e| fail("rename into place", e))
        }
        Ok(_) if force => {
            let old = sibling(target, "old");
            std::fs::rename(target, &old).map_err(|e| fail("move old target aside", e))?;
            if let Err(e) = std::fs::rename(tmp, target) {
                let _ = std::fs::rename(&old, target);
                return Err(fail("rename into place (old target put back)", e));
            }
            if m_is_dir(&old) {
                let _ = std::fs::remove_dir_all(&old);
            } else {
                let _ = std::fs::remove_file(&old);
            }
            Ok(())
        }
        Ok(_) => {
            let _ = std::fs::remove_dir_all(tmp);
            Err(Error::TargetNotEmpty {
                path: target.to_path_buf(),
            })
        }
    }
}

fn m_is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.is_dir())
        .unwrap_or(false)
}
