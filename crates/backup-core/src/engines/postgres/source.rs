//! PostgreSQL sources: `pg_dump -Fc -Z0` of one database, streamed, with facts (row counts,
//! versions, size, extensions) taken in the same MVCC snapshot as the dump; and
//! `pg_dumpall --globals-only` for roles and tablespaces.
//!
//! Consistency: a psql session opens `REPEATABLE READ READ ONLY`, exports its snapshot with
//! `pg_export_snapshot()`, and `pg_dump --snapshot` dumps exactly that snapshot while the same
//! session counts rows in it. The session stays open until pg_dump has finished.

use std::path::PathBuf;

use async_trait::async_trait;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::conninfo;
use super::session::PsqlSession;
use crate::engines::command::CommandSource;
use crate::error::{Error, Result};
use crate::manifest::{Facts, ItemKind};
use crate::source::{ByteStream, Source};

/// Which PostgreSQL client programs to run, and the password to give them.
#[derive(Clone, Default)]
pub struct PgTools {
    /// Directory of pg_dump/psql/pg_restore (e.g. `/usr/lib/postgresql/16/bin`); PATH if unset.
    pub bin_dir: Option<PathBuf>,
    /// Password handed to libpq as `PGPASSWORD` (from a file or environment variable).
    pub password: Option<Zeroizing<String>>,
}

impl std::fmt::Debug for PgTools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTools")
            .field("bin_dir", &self.bin_dir)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl PgTools {
    /// Path of a client program.
    pub fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// Environment for a client program: the password, and a connect timeout.
    pub fn apply_env(&self, cmd: &mut tokio::process::Command) {
        cmd.envs(self.env_pairs());
    }

    pub(crate) fn env_pairs(&self) -> Vec<(String, String)> {
        let mut v = vec![(
            "PGCONNECT_TIMEOUT".to_string(),
            std::env::var("PGCONNECT_TIMEOUT").unwrap_or_else(|_| "30".into()),
        )];
        if let Some(pw) = &self.password {
            v.push(("PGPASSWORD".into(), pw.to_string()));
        }
        v
    }

    /// `(full version line, major version)` of a client program.
    pub async fn version(&self, program: &str) -> Result<(String, u32)> {
        let out = tokio::process::Command::new(self.program(program))
            .arg("--version")
            .output()
            .await
            .map_err(|e| {
                Error::Usage(format!(
                    "cannot run {}: {e} (install the PostgreSQL client, or set bin_dir)",
                    self.program(program).display()
                ))
            })?;
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((line.clone(), major_of(&line)))
    }

    /// Lists the databases a backup of "all" covers: every non-template database that accepts
    /// connections.
    pub async fn list_databases(&self, conninfo: &str) -> Result<Vec<String>> {
        let target = conninfo::with_database(conninfo, "postgres");
        let mut s = PsqlSession::connect(self, &target)
            .await
            .map_err(|e| Error::SourceFailed {
                item: "postgres".into(),
                detail: format!("cannot connect to {}: {e}", conninfo::redact(&target)),
            })?;
        let v = s
            .json("SELECT coalesce(json_agg(datname ORDER BY datname), '[]') FROM pg_database WHERE datallowconn AND NOT datistemplate")
            .await
            .map_err(|e| Error::SourceFailed {
                item: "postgres".into(),
                detail: e,
            })?;
        s.close().await;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(String::from))
            .collect())
    }
}

/// Major version from `pg_dump (PostgreSQL) 15.18 (Debian …)` or `15.18`.
pub fn major_of(version: &str) -> u32 {
    version
        .split_whitespace()
        .find_map(|w| w.split('.').next()?.parse::<u32>().ok())
        .unwrap_or(0)
}

/// How per-table row counts are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowCounts {
    /// `count(*)` of every table, in the dump's snapshot.
    #[default]
    Exact,
    /// `pg_class.reltuples`: instant, approximate; for huge databases.
    Estimate,
}

/// A dump waits this long for a table lock (a migration's `ACCESS EXCLUSIVE`) and then fails
/// naming the table: waiting forever holds the run lock and misses the RPO silently.
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Dumps one database.
pub struct PostgresSource {
    name: String,
    conninfo: String,
    tools: PgTools,
    counts: RowCounts,
    lock_timeout: std::time::Duration,
    dump: Option<CommandSource>,
    facts: Facts,
    counting: Option<tokio::task::JoinHandle<std::result::Result<(PsqlSession, Value), String>>>,
}

impl PostgresSource {
    /// Item `name` dumping the database `conninfo` names.
    pub fn new(
        name: impl Into<String>,
        conninfo: impl Into<String>,
        tools: PgTools,
        counts: RowCounts,
    ) -> Self {
        PostgresSource {
            name: name.into(),
            conninfo: conninfo.into(),
            tools,
            counts,
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            dump: None,
            facts: Facts::new(),
            counting: None,
        }
    }

    /// How long pg_dump and the counting session wait for a table lock before failing.
    pub fn with_lock_timeout(mut self, t: std::time::Duration) -> Self {
        self.lock_timeout = t;
        self
    }

    fn fail(&self, detail: impl Into<String>) -> Error {
        Error::SourceFailed {
            item: self.name.clone(),
            detail: detail.into(),
        }
    }
}

/// Schema object counts of the current database, as one JSON object (facts and drills).
pub const OBJECTS_SQL: &str = "SELECT json_build_object(
        'schemas', (SELECT count(*) FROM pg_namespace WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%'),
        'tables', count(*) FILTER (WHERE c.relkind IN ('r', 'p')),
        'views', count(*) FILTER (WHERE c.relkind IN ('v', 'm')),
        'sequences', count(*) FILTER (WHERE c.relkind = 'S'),
        'indexes', count(*) FILTER (WHERE c.relkind IN ('i', 'I')),
        'functions', (SELECT count(*) FROM pg_proc p JOIN pg_namespace pn ON pn.oid = p.pronamespace WHERE pn.nspname NOT IN ('pg_catalog', 'information_schema')),
        'large_objects', (SELECT count(*) FROM pg_largeobject_metadata))
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'";

fn info_sql() -> String {
    format!(
        "SELECT json_build_object(
    'snapshot', pg_export_snapshot(),
    'server_version', current_setting('server_version'),
    'server_version_num', current_setting('server_version_num')::int,
    'database', current_database(),
    'database_size', pg_database_size(current_database()),
    'encoding', pg_encoding_to_char(d.encoding),
    'collate', d.datcollate,
    'ctype', d.datctype,
    'extensions', (SELECT coalesce(json_object_agg(extname, extversion), '{{}}') FROM pg_extension),
    'objects', ({OBJECTS_SQL}))
  FROM pg_database d WHERE d.datname = current_database()"
    )
}

/// User tables (and partitioned tables) with their planner estimates.
pub const TABLES_SQL: &str = "SELECT coalesce(json_agg(json_build_array(n.nspname, c.relname, c.reltuples::bigint) ORDER BY n.nspname, c.relname), '[]')
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'";

/// `"schema"."table"` with identifiers quoted for SQL.
pub fn quote_table(schema: &str, table: &str) -> String {
    format!(
        "\"{}\".\"{}\"",
        schema.replace('"', "\"\""),
        table.replace('"', "\"\"")
    )
}

/// Exact `count(*)` of each `(schema, table)`, as `{"schema.table": n}`, in batches.
pub async fn exact_counts(
    s: &mut PsqlSession,
    tables: &[(String, String)],
) -> std::result::Result<serde_json::Map<String, Value>, String> {
    let mut out = serde_json::Map::new();
    for batch in tables.chunks(200) {
        let parts: Vec<String> = batch
            .iter()
            .enumerate()
            .map(|(i, (sch, t))| {
                format!(
                    "SELECT {i} AS i, count(*) AS n FROM {}",
                    quote_table(sch, t)
                )
            })
            .collect();
        let sql = format!(
            "SELECT coalesce(json_agg(json_build_array(i, n) ORDER BY i), '[]') FROM ({}) x",
            parts.join(" UNION ALL ")
        );
        let v = s.json(&sql).await?;
        for pair in v.as_array().into_iter().flatten() {
            let i = pair[0].as_u64().unwrap_or(0) as usize;
            let (sch, t) = &batch[i];
            out.insert(format!("{sch}.{t}"), pair[1].clone());
        }
    }
    Ok(out)
}

/// `(schema, table, estimate)` triples from [`TABLES_SQL`]'s result.
pub fn parse_tables(v: &Value) -> Vec<(String, String, i64)> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t[0].as_str()?.to_string(),
                t[1].as_str()?.to_string(),
                t[2].as_i64().unwrap_or(-1),
            ))
        })
        .collect()
}

#[async_trait]
impl Source for PostgresSource {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ItemKind {
        ItemKind::Postgres
    }
    fn format(&self) -> &str {
        "pg_dump-custom"
    }

    async fn open(&mut self) -> Result<ByteStream> {
        let redacted = conninfo::redact(&self.conninfo);
        let (dump_version, dump_major) = self.tools.version("pg_dump").await?;
        let mut session = PsqlSession::connect(&self.tools, &self.conninfo)
            .await
            .map_err(|e| self.fail(format!("cannot connect to {redacted}: {e}")))?;
        session
            .exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| self.fail(e))?;
        session
            .exec(&format!(
                "SET LOCAL lock_timeout = '{}ms'",
                self.lock_timeout.as_millis()
            ))
            .await
            .map_err(|e| self.fail(e))?;
        let info = session.json(&info_sql()).await.map_err(|e| self.fail(e))?;
        let tables = parse_tables(&session.json(TABLES_SQL).await.map_err(|e| self.fail(e))?);
        let snapshot = info["snapshot"].as_str().unwrap_or_default().to_string();
        let server_major = info["server_version_num"].as_u64().unwrap_or(0) / 10000;
        if u64::from(dump_major) < server_major {
            session.close().await;
            return Err(self.fail(format!(
                "pg_dump {dump_major} cannot dump a PostgreSQL {server_major} server; set bin_dir to the client of version {server_major} or newer"
            )));
        }
        if let Value::Object(m) = &info {
            for (k, v) in m {
                if k != "snapshot" {
                    self.facts.insert(k.clone(), v.clone());
                }
            }
        }
        self.facts
            .insert("pg_dump_version".into(), dump_version.into());
        self.facts.insert("pg_dump_major".into(), dump_major.into());
        self.facts.insert(
            "row_counts_exact".into(),
            (self.counts == RowCounts::Exact).into(),
        );

        let args = vec![
            "--format=custom".to_string(),
            "--compress=0".into(),
            "--no-password".into(),
            format!("--snapshot={snapshot}"),
            format!("--lock-wait-timeout={}", self.lock_timeout.as_millis()),
            format!("--dbname={}", self.conninfo),
        ];
        let mut dump = CommandSource::argv(
            &self.name,
            self.tools.program("pg_dump").display().to_string(),
            args,
        )
        .with_kind(ItemKind::Postgres);
        for (k, v) in self.tools.env_pairs() {
            dump = dump.with_env(k, v);
        }
        let stream = dump.open().await?;
        self.dump = Some(dump);
        // Count rows in the same snapshot while pg_dump streams; the session (and with it the
        // exported snapshot) stays open until both are done.
        let mode = self.counts;
        self.counting = Some(tokio::spawn(async move {
            let counts = match mode {
                RowCounts::Exact => {
                    let list: Vec<_> = tables
                        .iter()
                        .map(|(s, t, _)| (s.clone(), t.clone()))
                        .collect();
                    exact_counts(&mut session, &list).await?
                }
                RowCounts::Estimate => tables
                    .iter()
                    .map(|(s, t, n)| (format!("{s}.{t}"), json!(n)))
                    .collect(),
            };
            Ok((session, Value::Object(counts)))
        }));
        Ok(stream)
    }

    fn has_volatile_prefix(&self) -> bool {
        true
    }

    /// The archive header carries the dump's creation time: keep it out of the first chunk.
    fn volatile_prefix(&self, head: &[u8]) -> usize {
        custom_header_len(head).unwrap_or(0)
    }

    async fn finish(&mut self) -> Result<Facts> {
        let mut dump = self
            .dump
            .take()
            .ok_or_else(|| self.fail("finish before open"))?;
        let dumped = dump.finish().await;
        let stderr = dump.stderr_tail();
        let counted = match self.counting.take() {
            Some(t) => t
                .await
                .map_err(|e| self.fail(format!("row count task: {e}")))?,
            None => Err("row counts never started".into()),
        };
        let (session, counts) = match (dumped, counted) {
            // When counting failed first (permissions, say), psql's exit ended the exported
            // snapshot and pg_dump's own error ("invalid snapshot identifier") hides the cause.
            (Err(e), Err(count_err)) => {
                return Err(self.fail(format!("{}; counting rows: {count_err}", strip_item(&e))));
            }
            (Err(e), _) => return Err(e),
            (Ok(_), Err(e)) => {
                return Err(self.fail(format!("counting rows in the dump's snapshot: {e}")));
            }
            (Ok(_), Ok(v)) => v,
        };
        session.close().await;
        // pg_dump reports some failures on stderr with a zero exit (e.g. a failed LO read).
        if let Some(line) = stderr.lines().find(|l| l.contains("error:")) {
            return Err(self.fail(format!("pg_dump reported: {line}")));
        }
        let mut facts = std::mem::take(&mut self.facts);
        facts.insert("row_counts".into(), counts);
        if !stderr.is_empty() {
            facts.insert("pg_dump_stderr".into(), stderr.into());
        }
        Ok(facts)
    }
}

fn strip_item(e: &Error) -> String {
    match e {
        Error::SourceFailed { detail, .. } => detail.clone(),
        other => other.to_string(),
    }
}

/// `pg_dumpall --globals-only`: roles and tablespaces, restored only on request.
pub fn globals_source(name: &str, conninfo: &str, tools: &PgTools) -> CommandSource {
    let target = conninfo::with_database(conninfo, "postgres");
    let mut s = CommandSource::argv(
        name,
        tools.program("pg_dumpall").display().to_string(),
        vec![
            "--globals-only".into(),
            "--no-password".into(),
            format!("--dbname={target}"),
        ],
    )
    .with_kind(ItemKind::Postgres)
    .with_format("pg_dumpall-globals");
    for (k, v) in tools.env_pairs() {
        s = s.with_env(k, v);
    }
    s
}

/// Length of a `pg_dump -Fc` archive header (magic, version, sizes, format, compression,
/// creation time, database name, server and pg_dump versions), as pg_backup_archiver.c's
/// `ReadHead` reads it; `None` if `head` does not start with a header we understand.
pub fn custom_header_len(head: &[u8]) -> Option<usize> {
    let mut pos = 0usize;
    let byte = |pos: &mut usize| -> Option<u8> {
        let b = *head.get(*pos)?;
        *pos += 1;
        Some(b)
    };
    if head.get(..5)? != b"PGDMP" {
        return None;
    }
    pos += 5;
    let (vmaj, vmin) = (byte(&mut pos)?, byte(&mut pos)?);
    let _vrev = byte(&mut pos)?;
    let int_size = byte(&mut pos)? as usize;
    let _off_size = byte(&mut pos)?;
    let _format = byte(&mut pos)?;
    if vmaj != 1 || vmin < 10 || int_size == 0 || int_size > 8 {
        return None;
    }
    // ReadInt: a sign byte, then int_size little-endian bytes.
    let read_int = |pos: &mut usize| -> Option<i64> {
        let sign = *head.get(*pos)?;
        let bytes = head.get(*pos + 1..*pos + 1 + int_size)?;
        *pos += 1 + int_size;
        let v = bytes
            .iter()
            .rev()
            .fold(0i64, |acc, b| (acc << 8) | i64::from(*b));
        Some(if sign != 0 { -v } else { v })
    };
    if vmin >= 15 {
        byte(&mut pos)?; // compression algorithm
    } else {
        read_int(&mut pos)?; // compression level
    }
    for _ in 0..7 {
        read_int(&mut pos)?; // creation time: sec, min, hour, mday, mon, year, isdst
    }
    for _ in 0..3 {
        // database name, server version, pg_dump version
        let len = read_int(&mut pos)?;
        if len > 0 {
            pos += len as usize;
        }
    }
    (pos <= head.len()).then_some(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_header_parse() {
        // PG15 layout: version 1.14, intSize 4, offSize 8, format 1 (custom).
        let mut h = b"PGDMP\x01\x0e\x00\x04\x08\x01".to_vec();
        let int = |h: &mut Vec<u8>, v: i32| {
            h.push(u8::from(v < 0));
            h.extend_from_slice(&v.unsigned_abs().to_le_bytes());
        };
        int(&mut h, 0); // compression
        for v in [5, 4, 3, 23, 10, 126, 0] {
            int(&mut h, v);
        }
        for s in ["app", "15.18", "15.18"] {
            int(&mut h, s.len() as i32);
            h.extend_from_slice(s.as_bytes());
        }
        let len = h.len();
        h.extend_from_slice(b"TOC follows");
        assert_eq!(custom_header_len(&h), Some(len));
        assert_eq!(custom_header_len(&h[..len - 1]), None, "truncated header");
        assert_eq!(custom_header_len(b"PGDMQ"), None);
    }

    #[test]
    fn versions_and_quoting() {
        assert_eq!(
            major_of("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            15
        );
        assert_eq!(major_of("pg_restore (PostgreSQL) 9.6.24"), 9);
        assert_eq!(major_of("16.4"), 16);
        assert_eq!(quote_table("my\"s", "t"), "\"my\"\"s\".\"t\"");
    }
}
