//! Marker objects (`markers/run-*`, `markers/gc-*`): how backups and garbage collection see
//! each other without an exclusive lock (protocol in docs/FORMAT.md, "Garbage collection").

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::repository::Repository;
use crate::store::{ObjectMeta, PutMode, Store};

/// How often a running backup refreshes its marker.
pub const HEARTBEAT: Duration = Duration::from_secs(60);
/// A marker older than this is a dead process's.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
/// Temp files of interrupted puts are removed only once this old, whatever the grace period.
pub const INCOMPLETE_MIN_AGE: Duration = Duration::from_secs(3600);

/// Live markers with `prefix` (`markers/run-`, `markers/gc-`); stale ones are returned apart.
pub(crate) async fn markers(
    store: &dyn Store,
    prefix: &str,
    stale_after: Duration,
) -> Result<(Vec<ObjectMeta>, Vec<ObjectMeta>)> {
    let all = store.list(prefix).await?;
    Ok(all.into_iter().partition(|m| m.age() < stale_after))
}

/// Overwrites the marker `key` in the background, so that others see its holder alive.
pub(crate) fn spawn_heartbeat(
    store: Arc<dyn Store>,
    key: String,
    stale_after: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let every = HEARTBEAT.min(stale_after / 4);
            tokio::time::sleep(every.max(Duration::from_millis(50))).await;
            let _ = store.put(&key, Vec::new(), PutMode::Overwrite).await;
        }
    })
}

/// A running backup's marker; refreshed in the background until finished or dropped.
#[derive(Debug)]
pub struct RunMarker {
    store: Arc<dyn Store>,
    key: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl RunMarker {
    /// Writes the marker, then waits while a GC is running (up to `stale_after`).
    pub async fn start(repo: &Repository, stale_after: Duration) -> Result<RunMarker> {
        let store = repo.store().clone();
        let key = format!("markers/run-{}", hex::encode(rand::random::<[u8; 8]>()));
        store.put(&key, Vec::new(), PutMode::CreateOnly).await?;
        let heartbeat = spawn_heartbeat(store.clone(), key.clone(), stale_after);
        let marker = RunMarker {
            store,
            key,
            heartbeat,
        };
        let waited = std::time::Instant::now();
        loop {
            let (live, _) = markers(&*marker.store, "markers/gc-", stale_after).await?;
            if live.is_empty() {
                break;
            }
            if waited.elapsed() > stale_after {
                return Err(Error::Store {
                    location: marker.store.location(),
                    op: "wait for",
                    key: live[0].key.clone(),
                    source: std::io::Error::other("garbage collection still running"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(marker)
    }

    /// Removes the marker (after the snapshot is written, or after a failure).
    pub async fn finish(self) {
        self.heartbeat.abort();
        let _ = self.store.delete(&self.key).await;
    }
}

impl Drop for RunMarker {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}
