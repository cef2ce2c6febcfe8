//! `LocalStore`: a directory, with atomic durable writes (temp file, fsync, rename, dir fsync;
//! batched puts skip the fsyncs and `flush` syncs the filesystem once).

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{ObjectMeta, PutMode, Store, validate_key};
use crate::error::{Error, Result};

/// A store rooted at a local directory.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    batched: Arc<Batched>,
    read: Arc<AtomicU64>,
}

/// Batched puts not yet written back. The kernel would hold them in the page cache until the
/// final flush (gigabytes on a large host), which then writes everything at once while the CPU
/// waits; syncing in the background every [`WRITEBACK_EVERY`] bytes keeps that wait short.
#[derive(Debug, Default)]
struct Batched {
    pending: AtomicU64,
    syncing: AtomicBool,
}

const WRITEBACK_EVERY: u64 = 64 << 20;

impl LocalStore {
    /// A store at `root`; the directory need not exist yet (the first put creates it).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore {
            root: root.into(),
            batched: Arc::default(),
            read: Arc::default(),
        }
    }

    fn syncfs(&self) -> Result<()> {
        let e = |e: std::io::Error| self.err("flush", "", e);
        let root = File::open(&self.root).map_err(e)?;
        rustix::fs::syncfs(&root).map_err(|err| e(err.into()))
    }

    /// Starts a background sync once enough batched bytes are pending (one at a time).
    fn write_back_some(&self, len: u64) {
        let b = &self.batched;
        if b.pending.fetch_add(len, Ordering::Relaxed) + len < WRITEBACK_EVERY
            || b.syncing.swap(true, Ordering::AcqRel)
        {
            return;
        }
        b.pending.store(0, Ordering::Relaxed);
        let this = self.clone();
        std::thread::spawn(move || {
            // Only an optimisation: `flush` syncs again and reports errors.
            let _ = this.syncfs();
            this.batched.syncing.store(false, Ordering::Release);
        });
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn err(&self, op: &'static str, key: &str, e: std::io::Error) -> Error {
        if e.kind() == ErrorKind::NotFound {
            Error::NotFound {
                key: key.to_string(),
                location: self.location(),
            }
        } else {
            Error::Store {
                location: self.location(),
                op,
                key: key.to_string(),
                source: e,
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| Error::io("store task", std::io::Error::other(e)))?
    }

    fn put_sync(&self, key: &str, data: &[u8], mode: PutMode, durable: bool) -> Result<()> {
        let path = self.path(key)?;
        let dir = path.parent().expect("keys have a parent");
        let e = |e| self.err("put", key, e);
        fs::create_dir_all(dir).map_err(e)?;
        let tmp = dir.join(format!(".tmp-{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(e)?;
            f.write_all(data).map_err(e)?;
            if durable {
                f.sync_all().map_err(e)?;
            }
            drop(f);
            match mode {
                PutMode::Overwrite => fs::rename(&tmp, &path).map_err(e)?,
                // link(2) fails atomically if the name exists, which rename(2) would not.
                PutMode::CreateOnly => match fs::hard_link(&tmp, &path) {
                    Ok(()) => fs::remove_file(&tmp).map_err(e)?,
                    Err(err) if err.kind() == ErrorKind::AlreadyExists => {
                        return Err(Error::AlreadyExists {
                            key: key.to_string(),
                            location: self.location(),
                        });
                    }
                    Err(err) => return Err(e(err)),
                },
            }
            if durable {
                File::open(dir).and_then(|d| d.sync_all()).map_err(e)?;
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Temp files of puts that never finished (the writer was killed between create and
    /// link). A live put finishes in seconds, so one older than `older_than` is abandoned.
    fn sweep_sync(&self, older_than: std::time::Duration, dry_run: bool) -> Result<(usize, u64)> {
        let (mut n, mut bytes) = (0, 0);
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err("sweep", &dir.display().to_string(), e)),
            };
            for entry in rd.flatten() {
                let Ok(md) = entry.metadata() else { continue };
                if md.is_dir() {
                    stack.push(entry.path());
                    continue;
                }
                let old = md
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age >= older_than);
                if !old || !entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                if !dry_run {
                    match fs::remove_file(entry.path()) {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(self.err("sweep", &entry.path().display().to_string(), e));
                        }
                    }
                }
                n += 1;
                bytes += md.len();
            }
        }
        Ok((n, bytes))
    }

    fn list_sync(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        // Walk only the directory the prefix points into.
        let dir_part = prefix.rfind('/').map(|i| &prefix[..i]).unwrap_or("");
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir_part)
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e)
                    if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory =>
                {
                    continue;
                }
                Err(e) => return Err(self.err("list", prefix, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| self.err("list", prefix, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".tmp-") {
                    continue;
                }
                let key = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let md = match entry.metadata() {
                    Ok(md) => md,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(self.err("list", &key, e)),
                };
                if md.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push((entry.path(), key));
                    }
                } else if key.starts_with(prefix) {
                    out.push(ObjectMeta {
                        key,
                        size: md.len(),
                        modified: md.modified().ok().map(DateTime::<Utc>::from),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[async_trait]
impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn put(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<()> {
        let key = key.to_string();
        self.blocking(move |s| s.put_sync(&key, &data, mode, true))
            .await
    }

    async fn put_batched(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<()> {
        let key = key.to_string();
        self.blocking(move |s| {
            s.put_sync(&key, &data, mode, false)?;
            s.write_back_some(data.len() as u64);
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        // One syncfs writes back every file and directory entry of the filesystem: the same
        // guarantee as an fsync of each batched object and its directory, for one journal
        // commit instead of two per object (a volume of small files is thousands of objects).
        self.blocking(|s| s.syncfs()).await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let k = key.to_string();
        self.blocking(move |s| {
            let e = |e| s.err("get", &k, e);
            let mut f = File::open(&path).map_err(e)?;
            let len = f.metadata().map_err(e)?.len() as usize;
            let mut buf = crate::buffer::take(len);
            f.read_to_end(&mut buf).map_err(e)?;
            s.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
            Ok(buf)
        })
        .await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        let k = key.to_string();
        self.blocking(move |s| {
            let e = |e| s.err("get", &k, e);
            let mut f = File::open(&path).map_err(e)?;
            let len = f.metadata().map_err(e)?.len();
            let start = range.start.min(len);
            let end = range.end.clamp(start, len);
            f.seek(SeekFrom::Start(start)).map_err(e)?;
            let mut buf = crate::buffer::take((end - start) as usize);
            f.take(end - start).read_to_end(&mut buf).map_err(e)?;
            s.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
            Ok(buf)
        })
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta> {
        let path = self.path(key)?;
        let md = tokio::fs::metadata(&path)
            .await
            .map_err(|e| self.err("head", key, e))?;
        if md.is_dir() {
            return Err(Error::NotFound {
                key: key.to_string(),
                location: self.location(),
            });
        }
        Ok(ObjectMeta {
            key: key.to_string(),
            size: md.len(),
            modified: md.modified().ok().map(DateTime::<Utc>::from),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let prefix = prefix.to_string();
        self.blocking(move |s| s.list_sync(&prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("delete", key, e)),
        }
    }

    fn retries(&self) -> u64 {
        0
    }

    fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    async fn verify(&self) -> Result<()> {
        Ok(())
    }

    /// A directory has no Object Lock.
    fn retention_days(&self) -> Option<u32> {
        None
    }

    async fn extend_retention(&self, _key: &str) -> Result<()> {
        Ok(())
    }

    async fn retention_until(&self, _key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(None)
    }

    async fn sweep_incomplete(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<(usize, u64)> {
        self.blocking(move |s| s.sweep_sync(older_than, dry_run))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_store_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path().join("repo"));
        crate::store::conformance::run(&store).await;
        crate::store::conformance::run_concurrent(std::sync::Arc::new(store)).await;
    }

    #[tokio::test]
    async fn create_only_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::new(dir.path());
        store
            .put("a/b", b"1".to_vec(), PutMode::CreateOnly)
            .await
            .unwrap();
        assert!(
            store
                .put("a/b", b"2".to_vec(), PutMode::CreateOnly)
                .await
                .is_err()
        );
        let names: Vec<_> = fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("b")]);
    }
}
