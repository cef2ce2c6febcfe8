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
use super::{PgTools, conninfo};
use crate::engines::command::CommandSource;
use crate::engines::{lenient, read_facts, write_facts};
use crate::error::{Error, Result};
use crate::manifest::{Facts, Item, ItemKind};
use crate::source::{ByteStream, Source};

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
    /// The WAL segment holding the start LSN (16 MiB segments).
    #[serde(default, deserialize_with = "lenient")]
    pub start_wal: Option<String>,
}

impl BaseFacts {
    pub fn of(item: &Item) -> Self {
        read_facts(&item.facts)
    }
}

/// `X/Y` → a number.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The 16 MiB segment file holding `lsn` on `timeline`.
pub fn segment_of(timeline: u32, lsn: u64) -> String {
    let seg = lsn >> 24;
    format!("{timeline:08X}{:08X}{:08X}", seg / 0x100, seg % 0x100)
}

/// Streams a cluster with `pg_basebackup`.
pub struct BaseBackupSource {
    name: String,
    url: String,
    tools: PgTools,
    inner: Option<CommandSource>,
    facts: BaseFacts,
}

impl BaseBackupSource {
    pub fn new(name: impl Into<String>, url: impl Into<String>, tools: PgTools) -> Self {
        BaseBackupSource {
            name: name.into(),
            url: url.into(),
            tools,
            inner: None,
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
        self.facts.start_wal = Some(segment_of(tli, start));
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

    async fn finish(&mut self) -> Result<Facts> {
        let mut inner = self
            .inner
            .take()
            .ok_or_else(|| self.fail("finish before open"))?;
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
    fn lsns_and_segments() {
        assert_eq!(parse_lsn("0/2000028"), Some(0x2000028));
        assert_eq!(parse_lsn("1/A"), Some((1 << 32) | 0xA));
        assert_eq!(segment_of(1, 0x2000028), "000000010000000000000002");
        assert_eq!(
            segment_of(3, (1 << 32) | 0xFF00_0000),
            "0000000300000001000000FF"
        );
    }

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
