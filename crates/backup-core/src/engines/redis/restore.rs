//! Restoring Redis items: an RDB into a server's data directory (with the steps its
//! persistence mode needs), or into a scratch `redis-server` of ours that proves it loads and
//! holds the recorded number of keys per database.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::AsyncWrite;

use super::facts::{RedisFacts, keys_of};
use crate::engines::redis::scratch::{ScratchRedis, ScratchRedisOptions};
use crate::error::{Error, Result};
use crate::manifest::Item;
use crate::sink::{FileSink, Sink, SinkReport};

/// How to restore Redis items.
#[derive(Debug, Clone, Default)]
pub struct RedisRestoreOptions {
    /// Write `dump.rdb` into this data directory.
    pub dir: Option<PathBuf>,
    /// Load into a scratch redis-server and check key counts.
    pub scratch: bool,
    /// Leave the scratch server running (its address is reported).
    pub keep: bool,
}

/// What to do next with a restored dump.rdb, for the server's persistence mode.
pub fn next_steps(item: &Item, dir: &Path) -> String {
    let aof = RedisFacts::of(item).aof_enabled.unwrap_or(false);
    let d = dir.display();
    if aof {
        format!(
            "the backed-up server ran with appendonly yes, and Redis ignores dump.rdb when AOF is on:\n  1. stop redis\n  2. move {d}/appendonlydir aside\n  3. start redis with --appendonly no (it loads dump.rdb)\n  4. redis-cli CONFIG SET appendonly yes, and wait until INFO persistence shows aof_rewrite_in_progress:0\n  5. restart redis with its normal configuration (appendonly yes)"
        )
    } else {
        format!(
            "stop redis, check that `dir` is {d} and `dbfilename` is dump.rdb, then start it: it loads the restored dump"
        )
    }
}

/// Restores `dump.rdb` into a data directory; ownership follows the directory when run as root.
pub struct RedisDirSink {
    file: Box<FileSink>,
    dir: PathBuf,
    note: String,
}

impl RedisDirSink {
    /// Refuses an existing dump.rdb unless `force`.
    pub async fn create(item: &Item, dir: &Path, force: bool) -> Result<Self> {
        let file = FileSink::create(&item.name, &dir.join("dump.rdb"), force).await?;
        Ok(RedisDirSink {
            file: Box::new(file),
            dir: dir.to_path_buf(),
            note: next_steps(item, dir),
        })
    }
}

#[async_trait]
impl Sink for RedisDirSink {
    fn describe(&self) -> String {
        format!("{}/dump.rdb", self.dir.display())
    }
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        self.file.writer()
    }
    async fn commit(self: Box<Self>) -> Result<SinkReport> {
        let mut report = self.file.commit().await?;
        let path = self.dir.join("dump.rdb");
        if crate::scratch::is_root()
            && let Ok(md) = std::fs::metadata(&self.dir)
        {
            // The redis user must be able to read what root restored.
            std::os::unix::fs::chown(&path, Some(md.uid()), Some(md.gid()))
                .map_err(|e| Error::io(format!("chown {}", path.display()), e))?;
        }
        report.note = Some(self.note);
        Ok(report)
    }
    async fn abort(self: Box<Self>) -> Option<Error> {
        self.file.abort().await
    }
}

/// Loads the RDB into a scratch server and compares keys per database with the facts.
pub struct RedisScratchSink {
    item: Item,
    file: Box<FileSink>,
    path: PathBuf,
    keep: bool,
}

impl RedisScratchSink {
    /// Spools the RDB to a temporary file (the server needs a file to load).
    pub async fn create(item: &Item, keep: bool) -> Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "lifeboat-{}-{:08x}.rdb",
            item.name,
            rand::random::<u32>()
        ));
        let file = FileSink::create(&item.name, &path, false).await?;
        Ok(RedisScratchSink {
            item: item.clone(),
            file: Box::new(file),
            path,
            keep,
        })
    }
}

/// Compares `INFO keyspace` of a loaded server with the item's recorded `keyspace` fact.
pub fn compare_keyspace(
    item: &Item,
    got: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<usize> {
    let Some(want) = RedisFacts::of(item).keyspace else {
        return Ok(0);
    };
    let keys = keys_of;
    let mut dbs: Vec<&String> = want.keys().chain(got.keys()).collect();
    dbs.sort();
    dbs.dedup();
    let diffs: Vec<String> = dbs
        .iter()
        .filter(|db| keys(want.get(db.as_str())) != keys(got.get(db.as_str())))
        .map(|db| {
            format!(
                "{db}: recorded {} keys, loaded {}",
                keys(want.get(db.as_str())),
                keys(got.get(db.as_str()))
            )
        })
        .collect();
    if diffs.is_empty() {
        Ok(dbs.len())
    } else {
        Err(Error::Verification {
            item: item.name.clone(),
            detail: format!(
                "key counts differ from the backup's facts: {}",
                diffs.join("; ")
            ),
        })
    }
}

#[async_trait]
impl Sink for RedisScratchSink {
    fn describe(&self) -> String {
        "a scratch redis-server".into()
    }
    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        self.file.writer()
    }
    async fn commit(self: Box<Self>) -> Result<SinkReport> {
        self.file.commit().await?;
        let started = ScratchRedis::start(ScratchRedisOptions {
            rdb: Some(self.path.clone()),
            ..Default::default()
        })
        .await;
        let _ = tokio::fs::remove_file(&self.path).await;
        let mut server = started?;
        let checked = compare_keyspace(&self.item, &server.keyspace(None).await?)?;
        let note = if self.keep {
            server.keep();
            format!(
                "scratch redis-server left running at {} (data in {}); stop it with: redis-cli -p {} shutdown nosave",
                server.url(),
                server.dir().display(),
                server.port()
            )
        } else {
            format!(
                "loaded into a scratch redis-server, {checked} database(s) checked, server stopped"
            )
        };
        Ok(SinkReport {
            target: server.url(),
            untar: None,
            verified_tables: None,
            note: Some(note),
            leftovers: None,
        })
    }
    async fn abort(self: Box<Self>) -> Option<Error> {
        self.file.abort().await
    }
}
