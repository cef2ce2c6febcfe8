//! `FaultyStore`: wraps a store and injects failures, for tests of what a failing store leaves.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use super::{ObjectMeta, PutMode, Store};
use crate::error::{Error, Result};

/// A failure to inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Every put after the first `n` succeeded puts fails (the storage "goes away").
    FailPutsAfter(usize),
    /// Puts of keys starting with this prefix fail.
    FailPutsWithPrefix(String),
    /// Gets of keys starting with this prefix fail with a non-NotFound error.
    FailGetsWithPrefix(String),
    /// Gets of keys starting with this prefix take this long first (a slow store).
    DelayGetsWithPrefix(String, std::time::Duration),
    /// After `n` mutating calls (put, batched put, delete) have gone through, every call fails,
    /// reads too: the process was killed there (for kill-at-every-step tests).
    DieAfterMutations(usize),
}

/// Wraps a store and fails operations according to the configured faults. Counts puts.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<Vec<Fault>>,
    puts: AtomicUsize,
    mutations: AtomicUsize,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner` with no faults.
    pub fn new(inner: S) -> Self {
        FaultyStore {
            inner,
            faults: Mutex::new(Vec::new()),
            puts: AtomicUsize::new(0),
            mutations: AtomicUsize::new(0),
        }
    }

    /// Adds a fault.
    pub fn inject(&self, f: Fault) {
        self.faults.lock().unwrap().push(f);
    }

    /// Removes all faults.
    pub fn heal(&self) {
        self.faults.lock().unwrap().clear();
    }

    /// Successful puts so far.
    pub fn puts(&self) -> usize {
        self.puts.load(Ordering::SeqCst)
    }

    /// Mutating calls let through so far.
    pub fn mutations(&self) -> usize {
        self.mutations.load(Ordering::SeqCst)
    }

    /// Fails `op` on `key` if the process is "dead"; counts it when `mutating` and let through.
    fn alive(&self, op: &'static str, key: &str, mutating: bool) -> Result<()> {
        let limit = self.faults.lock().unwrap().iter().find_map(|f| match f {
            Fault::DieAfterMutations(n) => Some(*n),
            _ => None,
        });
        let Some(limit) = limit else {
            if mutating {
                self.mutations.fetch_add(1, Ordering::SeqCst);
            }
            return Ok(());
        };
        if !mutating {
            return if self.mutations() >= limit {
                Err(self.injected(op, key))
            } else {
                Ok(())
            };
        }
        // Claim a slot atomically: concurrent puts must not both pass the last one.
        let claimed = self
            .mutations
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                (m < limit).then_some(m + 1)
            });
        claimed.map(|_| ()).map_err(|_| self.injected(op, key))
    }

    fn injected(&self, op: &'static str, key: &str) -> Error {
        Error::Store {
            location: self.inner.location(),
            op,
            key: key.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected fault"),
        }
    }
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    fn location(&self) -> String {
        self.inner.location()
    }

    async fn put(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<()> {
        self.check_put(key)?;
        self.alive("put", key, true)?;
        self.inner.put(key, data, mode).await?;
        self.puts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn put_batched(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<()> {
        self.check_put(key)?;
        self.alive("put", key, true)?;
        self.inner.put_batched(key, data, mode).await?;
        self.puts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        self.alive("flush", "", false)?;
        self.inner.flush().await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        self.alive("get", key, false)?;
        self.check_get(key).await?;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        self.alive("get", key, false)?;
        self.check_get(key).await?;
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        self.alive("head", key, false)?;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.alive("list", prefix, false)?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.alive("delete", key, true)?;
        self.inner.delete(key).await
    }

    fn retries(&self) -> u64 {
        self.inner.retries()
    }

    fn bytes_read(&self) -> u64 {
        self.inner.bytes_read()
    }

    async fn verify(&self) -> Result<()> {
        self.alive("verify", "", false)?;
        self.inner.verify().await
    }

    fn retention_days(&self) -> Option<u32> {
        self.inner.retention_days()
    }

    async fn extend_retention(&self, key: &str) -> Result<()> {
        self.alive("extend retention of", key, true)?;
        self.inner.extend_retention(key).await
    }

    async fn retention_until(&self, key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        self.alive("read retention of", key, false)?;
        self.inner.retention_until(key).await
    }

    async fn sweep_incomplete(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<(usize, u64)> {
        self.alive("sweep", "", !dry_run)?;
        self.inner.sweep_incomplete(older_than, dry_run).await
    }
}

impl<S: Store> FaultyStore<S> {
    fn check_put(&self, key: &str) -> Result<()> {
        let fail = self.faults.lock().unwrap().iter().any(|f| match f {
            Fault::FailPutsAfter(n) => self.puts.load(Ordering::SeqCst) >= *n,
            Fault::FailPutsWithPrefix(p) => key.starts_with(p.as_str()),
            Fault::FailGetsWithPrefix(_)
            | Fault::DelayGetsWithPrefix(..)
            | Fault::DieAfterMutations(_) => false,
        });
        if fail {
            return Err(self.injected("put", key));
        }
        Ok(())
    }

    async fn check_get(&self, key: &str) -> Result<()> {
        let delay = self.faults.lock().unwrap().iter().find_map(|f| match f {
            Fault::DelayGetsWithPrefix(p, d) if key.starts_with(p.as_str()) => Some(*d),
            _ => None,
        });
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let fail = self
            .faults
            .lock()
            .unwrap()
            .iter()
            .any(|f| matches!(f, Fault::FailGetsWithPrefix(p) if key.starts_with(p.as_str())));
        if fail {
            Err(self.injected("get", key))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::LocalStore;

    #[tokio::test]
    async fn healthy_faulty_store_passes_conformance_and_faults_fire() {
        let dir = tempfile::tempdir().unwrap();
        let s = FaultyStore::new(LocalStore::new(dir.path()));
        crate::store::conformance::run(&s).await;
        let before = s.puts();
        s.inject(Fault::FailPutsAfter(before + 1));
        s.put("k/1", vec![1], PutMode::Overwrite).await.unwrap();
        assert!(matches!(
            s.put("k/2", vec![2], PutMode::Overwrite).await,
            Err(Error::Store { .. })
        ));
        s.heal();
        s.put("k/2", vec![2], PutMode::Overwrite).await.unwrap();
        s.inject(Fault::FailGetsWithPrefix("k/".into()));
        assert!(matches!(s.get("k/2").await, Err(Error::Store { .. })));
    }
}
