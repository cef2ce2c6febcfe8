//! Physical base backups: `pg_basebackup` streamed as one tar into the pipeline, with the WAL
//! it needs, and the facts a point-in-time restore chooses by (start/stop LSN, timeline,
//! system identifier).
//!
//! `pg_basebackup -D - -Ft -X fetch -c fast` needs no local files and works from another host;
//! the tar includes the WAL from start to stop, so a base backup restores on its own to its end
//! point (`--immediate`), and with the WAL archive to any later moment. A cluster with extra
//! tablespaces cannot be streamed to stdout: it is refused before pg_basebackup starts.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::session::PsqlSession;
use super::wal::name::{ClusterId, DEFAULT_SEGMENT_SIZE, WalName, parse_lsn};
use super::{PgTools, conninfo};
use crate::engines::command::CommandSource;
use crate::engines::{lenient, read_facts, write_facts};
use crate::error::{Error, Result};
use crate::manifest::{Facts, Item, ItemKind, Snapshot};
use crate::source::tar_pieces::send_tar_pieces;
use crate::source::{ByteStream, PieceContext, PieceStream, Source};

/// The stream format of a base backup item.
pub const FORMAT: &str = "pg_basebackup-tar";

/// Whether `item` is a physical base backup.
pub fn is_base_backup(item: &Item) -> bool {
    item.kind == ItemKind::Postgres && item.format == FORMAT
}

/// What a base backup records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseFacts {
    #[serde(default, deserialize_with = "lenient")]
    pub server_version: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub system_identifier: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub timeline: Option<u32>,
    /// `X/Y` as PostgreSQL prints it.
    #[serde(default, deserialize_with = "lenient")]
    pub start_lsn: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub stop_lsn: Option<String>,
    /// The WAL segment holding the start LSN.
    #[serde(default, deserialize_with = "lenient")]
    pub start_wal: Option<String>,
    /// Bytes per WAL segment (absent in base backups of Lifeboat before it was recorded:
    /// 16 MiB, the default).
    #[serde(default, deserialize_with = "lenient")]
    pub wal_segment_size: Option<u64>,
}

impl BaseFacts {
    pub fn of(item: &Item) -> Self {
        read_facts(&item.facts)
    }

    /// The cluster, by system identifier.
    pub fn cluster(&self) -> Option<ClusterId> {
        self.system_identifier
            .as_deref()
            .and_then(|s| ClusterId::parse(s).ok())
    }

    pub fn segment_size(&self) -> u64 {
        self.wal_segment_size.unwrap_or(DEFAULT_SEGMENT_SIZE)
    }

    pub fn start(&self) -> Option<u64> {
        self.start_lsn.as_deref().and_then(parse_lsn)
    }

    pub fn stop(&self) -> Option<u64> {
        self.stop_lsn.as_deref().and_then(parse_lsn)
    }
}

/// A base backup in the repository: where it is and what it recorded.
#[derive(Debug, Clone)]
pub struct BaseBackup<'a> {
    pub snapshot: &'a Snapshot,
    pub item: &'a Item,
    pub facts: BaseFacts,
    pub cluster: Option<ClusterId>,
}

/// Every base backup of `snapshots`, in their order.
pub fn base_backups(snapshots: &[Snapshot]) -> Vec<BaseBackup<'_>> {
    snapshots
        .iter()
        .flat_map(|s| s.items.iter().map(move |i| (s, i)))
        .filter(|(_, i)| is_base_backup(i))
        .map(|(snapshot, item)| {
            let facts = BaseFacts::of(item);
            BaseBackup {
                snapshot,
                item,
                cluster: facts.cluster(),
                facts,
            }
        })
        .collect()
}

/// Streams a cluster with `pg_basebackup`.
pub struct BaseBackupSource {
    name: String,
    url: String,
    tools: PgTools,
    inner: Option<CommandSource>,
    /// Reads the tar's headers as it passes and sends it as pieces.
    splitter: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    facts: BaseFacts,
}

impl BaseBackupSource {
    pub fn new(name: impl Into<String>, url: impl Into<String>, tools: PgTools) -> Self {
        BaseBackupSource {
            name: name.into(),
            url: url.into(),
            tools,
            inner: None,
            splitter: None,
            facts: BaseFacts::default(),
        }
    }

    fn fail(&self, detail: impl Into<String>) -> Error {
        Error::SourceFailed {
            item: self.name.clone(),
            detail: detail.into(),
        }
    }

    /// Server facts, and a refusal for what cannot be streamed.
    async fn inspect(&mut self) -> Result<()> {
        let shown = conninfo::redact(&self.url);
        let mut s = PsqlSession::connect(&self.tools, &self.url)
            .await
            .map_err(|e| self.fail(format!("cannot connect to {shown}: {e}")))?;
        let v = s
            .json(
                "SELECT json_build_object('version', current_setting('server_version'), \
                 'sysid', (SELECT system_identifier::text FROM pg_control_system()), \
                 'segsize', (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), \
                 'tablespaces', (SELECT coalesce(json_agg(spcname), '[]') FROM pg_tablespace \
                 WHERE spcname NOT IN ('pg_default', 'pg_global')))",
            )
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        s.close().await;
        let extra: Vec<&str> = v["tablespaces"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
            .unwrap_or_default();
        if !extra.is_empty() {
            return Err(self.fail(format!(
                "{shown} has tablespaces besides pg_default ({}): pg_basebackup cannot stream those as one tar; back them up with pg_dump items instead",
                extra.join(", ")
            )));
        }
        self.facts.server_version = v["version"].as_str().map(str::to_string);
        self.facts.system_identifier = v["sysid"].as_str().map(str::to_string);
        self.facts.wal_segment_size = v["segsize"].as_u64();
        Ok(())
    }

    /// Start and stop point from pg_basebackup's `--verbose` lines.
    fn read_points(&mut self, stderr: &str) -> Result<()> {
        for line in stderr.lines() {
            if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
                let mut w = rest.split_whitespace();
                self.facts.start_lsn = w.next().map(str::to_string);
                self.facts.timeline = w.nth(2).and_then(|t| t.parse().ok());
            }
            if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
                self.facts.stop_lsn = rest.split_whitespace().next().map(str::to_string);
            }
        }
        let (Some(start), Some(tli), Some(_)) = (
            self.facts.start_lsn.as_deref().and_then(parse_lsn),
            self.facts.timeline,
            &self.facts.stop_lsn,
        ) else {
            return Err(self.fail(format!(
                "pg_basebackup did not report its start and end point: {stderr}"
            )));
        };
        let seg_size = self.facts.segment_size();
        self.facts.start_wal = Some(WalName::segment(tli, start / seg_size, seg_size).to_string());
        Ok(())
    }
}

#[async_trait]
impl Source for BaseBackupSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ItemKind {
        ItemKind::Postgres
    }
    fn format(&self) -> &str {
        FORMAT
    }

    async fn open(&mut self) -> Result<ByteStream> {
        self.inspect().await?;
        let program = self.tools.program("pg_basebackup").display().to_string();
        let args = [
            "-d", &self.url, "-D", "-", "-Ft", "-X", "fetch", "-c", "fast", "-v",
        ];
        let mut cmd = CommandSource::argv(
            &self.name,
            program,
            args.iter().map(|s| s.to_string()).collect(),
        )
        .with_kind(ItemKind::Postgres)
        .with_format(FORMAT);
        for (k, v) in self.tools.env_pairs() {
            cmd = cmd.with_env(k, v);
        }
        let stream = cmd.open().await?;
        self.inner = Some(cmd);
        Ok(stream)
    }

    /// Level 6: a changed relation or index file is stored whole again by the next base
    /// backup, and level 6 stores pgbench's tables and indexes ~25 % smaller than level 1 at
    /// ~100 MB/s per core, still faster than pg_basebackup reads a busy disk (docs/BENCHMARKS.md,
    /// point-in-time recovery).
    fn compression_level(&self) -> i32 {
        6
    }

    /// The data directory's files become chunks of their own (a changed catalog file no
    /// longer drags a megabyte of its neighbours along; an unchanged relation file is the same
    /// chunks wherever it sits in the tar): see [`crate::source::tar_pieces`].
    async fn open_pieces(&mut self, ctx: PieceContext) -> Result<Option<PieceStream>> {
        let stream = self.open().await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        self.splitter = Some(tokio::spawn(send_tar_pieces(stream, ctx, tx)));
        Ok(Some(rx))
    }

    async fn finish(&mut self) -> Result<Facts> {
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| self.fail("finish before open"))?;
        if let Some(split) = self.splitter.take() {
            split
                .await
                .map_err(|e| self.fail(format!("reading pg_basebackup's tar: {e}")))?
                .map_err(|e| self.fail(format!("reading pg_basebackup's tar: {e}")))?;
        }
        inner.finish().await?;
        let stderr = inner.stderr_tail();
        self.read_points(&stderr)?;
        Ok(write_facts(&self.facts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_and_end_points_come_from_the_verbose_lines() {
        let mut s = BaseBackupSource::new("pg", "postgresql://x/y", PgTools::default());
        s.read_points(
            "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
             pg_basebackup: checkpoint completed\n\
             pg_basebackup: write-ahead log start point: 0/6000028 on timeline 2\n\
             pg_basebackup: write-ahead log end point: 0/6000100\n\
             pg_basebackup: base backup completed",
        )
        .unwrap();
        assert_eq!(s.facts.start_lsn.as_deref(), Some("0/6000028"));
        assert_eq!(s.facts.stop_lsn.as_deref(), Some("0/6000100"));
        assert_eq!(s.facts.timeline, Some(2));
        assert_eq!(
            s.facts.start_wal.as_deref(),
            Some("000000020000000000000006")
        );
        let mut fresh = BaseBackupSource::new("pg", "postgresql://x/y", PgTools::default());
        assert!(
            fresh
                .read_points("pg_basebackup: base backup completed")
                .is_err()
        );
    }
}
