//! Restoring PostgreSQL items: inspect the target, `pg_restore` (streamed in one transaction,
//! or spooled for `--jobs`), then prove the restored row counts equal the recorded facts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

use super::facts::PostgresFacts;
use crate::engines::postgres::selection::TableSelection;
use crate::engines::postgres::session::PsqlSession;
use crate::engines::postgres::{PgTools, TABLES_SQL, conninfo, exact_counts, parse_tables};
use crate::error::{Error, Result};
use crate::manifest::Item;
use crate::progress::human_bytes;
use crate::sink::TargetState;
use crate::sink::{Sink, SinkReport};

/// How to restore PostgreSQL items.
#[derive(Debug, Clone, Default)]
pub struct PgRestoreOptions {
    /// Target server (and database, for a single item); `None`: per-item URLs or no target.
    pub url: Option<String>,
    /// Targets by item name (from the config's `restore_url`), used when `url` is unset.
    pub item_urls: BTreeMap<String, String>,
    /// Drop and recreate the target's objects (`pg_restore --clean --if-exists`).
    pub clean: bool,
    /// Parallel `pg_restore -j N` through a spooled temporary file (N > 1); 0 picks one per
    /// item at plan time ([`PgTargetInfo::jobs`]).
    pub jobs: usize,
    /// Only these tables (`pg_restore --table`).
    pub tables: Vec<String>,
    /// Only these schemas (`pg_restore --schema`).
    pub schemas: Vec<String>,
    /// Do not restore ownership (`--no-owner`), for targets without the original roles.
    pub no_owner: bool,
    /// Restore `pg_dumpall --globals-only` items (roles, tablespaces) too.
    pub globals: bool,
    /// Client programs and password for the target.
    pub tools: PgTools,
}

/// What the plan found at a PostgreSQL target.
#[derive(Debug, Clone, Serialize)]
pub struct PgTargetInfo {
    pub server_version: String,
    pub database_exists: bool,
    pub user_tables: u64,
    pub pg_restore_version: String,
    /// Why the restore cannot work (a dump newer than pg_restore), checked before anything runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incompatible: Option<String>,
    /// `pg_restore --jobs` for this item (1: streamed, no spool file).
    pub jobs: usize,
    /// Why that many: given, or what the default found (cores, spool space, dump size).
    pub jobs_reason: String,
}

/// pg_restore's stdin. pg_restore stops reading once it has what it needs (a `--table`
/// restore) or when it fails; then later writes are discarded, so the stream still runs to
/// its end (every chunk verified) and pg_restore's exit status decides.
pub struct TolerantStdin {
    inner: ChildStdin,
    closed: bool,
}

impl TolerantStdin {
    fn new(inner: ChildStdin) -> Self {
        TolerantStdin {
            inner,
            closed: false,
        }
    }
}

impl AsyncWrite for TolerantStdin {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.closed {
            return std::task::Poll::Ready(Ok(buf.len()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                std::task::Poll::Ready(Ok(buf.len()))
            }
            other => other,
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.closed {
            return std::task::Poll::Ready(Ok(()));
        }
        match std::pin::Pin::new(&mut self.inner).poll_flush(cx) {
            std::task::Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                std::task::Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.closed {
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Whether an item is a `pg_dumpall --globals-only` stream.
pub fn is_globals(item: &Item) -> bool {
    item.format == "pg_dumpall-globals"
}

fn pg_err(item: &str, target: &str, detail: impl Into<String>) -> Error {
    Error::Sink {
        item: item.to_string(),
        target: target.to_string(),
        detail: detail.into(),
    }
}

/// Connects to the target's `postgres` database and inspects the target database. With a
/// table selection the target is occupied only if a selected table is there: restoring a
/// dropped table into a live database overwrites nothing.
pub async fn inspect(
    item: &Item,
    target: &str,
    opts: &PgRestoreOptions,
) -> Result<(TargetState, PgTargetInfo)> {
    let tools = &opts.tools;
    let selection = TableSelection::resolve(item, &opts.tables, &opts.schemas)?;
    let shown = conninfo::redact(target);
    let db = conninfo::database(target).unwrap_or_default();
    let maint = conninfo::with_database(target, "postgres");
    let mut s = PsqlSession::connect(tools, &maint)
        .await
        .map_err(|e| pg_err(&item.name, &shown, format!("cannot connect: {e}")))?;
    let info = s
        .json(&format!(
            "SELECT json_build_object('version', current_setting('server_version'), 'exists', EXISTS (SELECT 1 FROM pg_database WHERE datname = {}))",
            sql_literal(&db)
        ))
        .await
        .map_err(|e| pg_err(&item.name, &shown, e))?;
    s.close().await;
    let exists = info["exists"].as_bool().unwrap_or(false);
    let mut tables = 0;
    let mut selected = 0;
    if exists {
        let mut t = PsqlSession::connect(tools, target)
            .await
            .map_err(|e| pg_err(&item.name, &shown, format!("cannot connect: {e}")))?;
        let present = parse_tables(
            &t.json(TABLES_SQL)
                .await
                .map_err(|e| pg_err(&item.name, &shown, e))?,
        );
        t.close().await;
        tables = present.len() as u64;
        selected = present
            .iter()
            .filter(|(s, n, _)| selection.takes(s, n))
            .count();
    }
    let (restore_version, restore_major) = tools.version("pg_restore").await?;
    let facts = PostgresFacts::of(item);
    let dump_major = facts.pg_dump_major.unwrap_or(0);
    let dump_version = facts.pg_dump_version.as_deref().unwrap_or("unknown");
    let incompatible = (!is_globals(item) && dump_major > u64::from(restore_major)).then(|| {
        format!("the dump was written by {dump_version}, which {restore_version} cannot read; use pg_restore {dump_major} or newer (bin_dir / --pg-bin-dir)")
    });
    let jobs = pick_jobs(item, opts.jobs, exists, &std::env::temp_dir());
    let state = match (exists, selected) {
        (false, _) => TargetState::Missing,
        (true, 0) => TargetState::Empty,
        (true, _) => TargetState::Occupied,
    };
    Ok((
        state,
        PgTargetInfo {
            server_version: info["version"].as_str().unwrap_or_default().to_string(),
            database_exists: exists,
            user_tables: tables,
            pg_restore_version: restore_version,
            incompatible,
            jobs: jobs.0,
            jobs_reason: jobs.1,
        },
    ))
}

/// Below this a dump is streamed: spooling it costs more than parallel index builds gain.
const PARALLEL_FROM: u64 = 64 << 20;

/// Cores from which a restore into a new database defaults to parallel pg_restore. On 2 cores
/// `-j 2` through a spool file gained nothing that held up (728 MB bench dump, local: 16.3–17.2 s
/// against 17.4–22.0 streamed in one run, 23.3 against 18.8 in another; S3: 17.8–19.0 against
/// 16.5–16.7; docs/BENCHMARKS.md): the spool is written before pg_restore starts, and the
/// server has no spare core for a second index build. Streaming needs no spool space.
const PARALLEL_CORES: usize = 4;

/// `pg_restore --jobs` for an item: as given, or one per core of this host (at most 8) when
/// there are at least [`PARALLEL_CORES`], the restore creates the database (a failure drops it
/// again; parallel pg_restore cannot run in one transaction, which is what keeps an existing
/// database as it was), the dump is big enough to gain and its spool file fits in `spool_dir`
/// with a tenth to spare. The target's own cores are not known from here; a restore usually
/// runs on (or beside) it.
pub fn pick_jobs(item: &Item, given: usize, db_exists: bool, spool_dir: &Path) -> (usize, String) {
    if given > 0 {
        return (given, "--jobs".into());
    }
    if is_globals(item) {
        return (1, "roles are one script".into());
    }
    if db_exists {
        return (
            1,
            "the database exists: one transaction keeps it as it was if the restore fails (--jobs N trades that for speed)".into(),
        );
    }
    let cores = crate::runtime::cores().min(8);
    if cores < PARALLEL_CORES {
        return (
            1,
            format!(
                "{cores} core(s) here: parallel pg_restore gained nothing on 2 cores (docs/BENCHMARKS.md); streamed in one transaction"
            ),
        );
    }
    if item.size < PARALLEL_FROM {
        return (
            1,
            format!("dump under {}: streamed", human_bytes(PARALLEL_FROM)),
        );
    }
    let free = rustix::fs::statvfs(spool_dir)
        .map(|v| v.f_bavail.saturating_mul(v.f_frsize))
        .unwrap_or(0);
    let need = item.size + item.size / 10;
    if free < need {
        return (
            1,
            format!(
                "its spool would not fit in {} ({} free, {} needed): streamed",
                spool_dir.display(),
                human_bytes(free),
                human_bytes(need)
            ),
        );
    }
    (
        cores,
        format!(
            "default: {cores} cores here, spool fits in {} ({} free)",
            spool_dir.display(),
            human_bytes(free)
        ),
    )
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

enum Mode {
    Stream {
        child: Child,
        stdin: Option<TolerantStdin>,
    },
    Spool {
        file: Option<tokio::fs::File>,
        path: PathBuf,
    },
}

/// Feeds a dump to `pg_restore` and verifies the result.
pub struct PgRestoreSink {
    item: String,
    target: String,
    tools: PgTools,
    opts: PgRestoreOptions,
    selection: TableSelection,
    /// The database did not exist: a failed restore drops it again.
    created: bool,
    /// Schemas a partial restore needed and we created: a failed restore drops them again.
    created_schemas: Vec<String>,
    mode: Mode,
    stderr: Arc<Mutex<String>>,
    expected: BTreeMap<String, u64>,
}

impl PgRestoreSink {
    /// Creates the database if missing, then starts `pg_restore` (or opens the spool file).
    pub async fn create(item: &Item, target: &str, opts: &PgRestoreOptions) -> Result<Self> {
        let shown = conninfo::redact(target);
        let db = conninfo::database(target)
            .ok_or_else(|| pg_err(&item.name, &shown, "the target names no database"))?;
        let tools = opts.tools.clone();
        let selection = TableSelection::resolve(item, &opts.tables, &opts.schemas)?;
        let (state, _) = inspect(item, target, opts).await?;
        let mut created = false;
        if state == TargetState::Missing {
            let mut s = PsqlSession::connect(&tools, &conninfo::with_database(target, "postgres"))
                .await
                .map_err(|e| pg_err(&item.name, &shown, e))?;
            s.exec(&format!("CREATE DATABASE {}", sql_ident(&db)))
                .await
                .map_err(|e| pg_err(&item.name, &shown, format!("creating database {db}: {e}")))?;
            s.close().await;
            created = true;
        }
        let created_schemas = match create_schemas(&tools, target, &selection).await {
            Ok(c) => c,
            Err(e) => {
                if created {
                    drop_database(&tools, target).await;
                }
                return Err(pg_err(&item.name, &shown, e));
            }
        };
        let expected = expected_counts(item, &selection);
        let stderr = Arc::new(Mutex::new(String::new()));
        let mode = if opts.jobs > 1 {
            let path = std::env::temp_dir().join(format!(
                "lifeboat-spool-{}-{:08x}.dump",
                item.name,
                rand::random::<u32>()
            ));
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
                .map_err(|e| {
                    pg_err(
                        &item.name,
                        &shown,
                        format!("spool file {}: {e}", path.display()),
                    )
                })?;
            Mode::Spool {
                file: Some(file),
                path,
            }
        } else {
            let mut child = restore_command(&tools, target, opts, &selection, None)
                .stdin(Stdio::piped())
                .spawn()
                .map_err(|e| pg_err(&item.name, &shown, format!("cannot start pg_restore: {e}")))?;
            collect_stderr(&mut child, stderr.clone());
            let stdin = child.stdin.take().map(TolerantStdin::new);
            Mode::Stream { child, stdin }
        };
        Ok(PgRestoreSink {
            item: item.name.clone(),
            target: target.to_string(),
            tools,
            opts: opts.clone(),
            selection,
            created,
            created_schemas,
            mode,
            stderr,
            expected,
        })
    }

    fn err(&self, detail: impl Into<String>) -> Error {
        pg_err(&self.item, &conninfo::redact(&self.target), detail)
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().trim().to_string()
    }

    /// Undoes what this restore created before pg_restore ran: the database, or else the
    /// schemas a partial restore needed (empty again once its transaction rolled back).
    async fn drop_created(&self) {
        if self.created {
            drop_database(&self.tools, &self.target).await;
            return;
        }
        if self.created_schemas.is_empty() {
            return;
        }
        if let Ok(mut s) = PsqlSession::connect(&self.tools, &self.target).await {
            for schema in &self.created_schemas {
                let _ = s
                    .exec(&format!("DROP SCHEMA IF EXISTS {}", sql_ident(schema)))
                    .await;
            }
            s.close().await;
        }
    }

    async fn verify(&self) -> Result<usize> {
        let mut s = PsqlSession::connect(&self.tools, &self.target)
            .await
            .map_err(|e| self.err(e))?;
        let tables: Vec<(String, String)> = self
            .expected
            .keys()
            .filter_map(|k| {
                k.split_once('.')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        let got = exact_counts(&mut s, &tables)
            .await
            .map_err(|e| self.err(format!("counting restored rows: {e}")))?;
        s.close().await;
        let mut diffs = Vec::new();
        for (table, want) in &self.expected {
            let have = got.get(table).and_then(|v| v.as_u64());
            if have != Some(*want) {
                diffs.push(format!(
                    "{table}: recorded {want}, restored {}",
                    have.map_or("nothing".to_string(), |h| h.to_string())
                ));
            }
        }
        if !diffs.is_empty() {
            return Err(Error::Verification {
                item: self.item.clone(),
                detail: format!(
                    "row counts differ from the backup's facts: {}",
                    diffs.join("; ")
                ),
            });
        }
        Ok(self.expected.len())
    }
}

/// The row counts a restore of `selection` must reproduce (exact counts only).
fn expected_counts(item: &Item, selection: &TableSelection) -> BTreeMap<String, u64> {
    PostgresFacts::of(item)
        .exact_counts()
        .into_iter()
        .filter(|(k, _)| {
            let (schema, table) = k.split_once('.').unwrap_or(("", k));
            selection.takes(schema, table)
        })
        .collect()
}

async fn drop_database(tools: &PgTools, target: &str) {
    if let Ok(mut s) =
        PsqlSession::connect(tools, &conninfo::with_database(target, "postgres")).await
    {
        let db = conninfo::database(target).unwrap_or_default();
        let _ = s
            .exec(&format!("DROP DATABASE IF EXISTS {}", sql_ident(&db)))
            .await;
        s.close().await;
    }
}

/// A partial restore (`-n`/`-t`) does not create the schemas its tables live in: creates
/// the missing ones and returns their names.
async fn create_schemas(
    tools: &PgTools,
    target: &str,
    selection: &TableSelection,
) -> std::result::Result<Vec<String>, String> {
    if selection.schemas.is_empty() {
        return Ok(Vec::new());
    }
    let mut s = PsqlSession::connect(tools, target)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let present = s
        .json("SELECT coalesce(json_agg(nspname), '[]') FROM pg_namespace")
        .await
        .map_err(|e| e.to_string())?;
    let present: Vec<&str> = present
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let mut created = Vec::new();
    for schema in selection
        .schemas
        .iter()
        .filter(|x| !present.contains(&x.as_str()))
    {
        if let Err(e) = s
            .exec(&format!("CREATE SCHEMA {}", sql_ident(schema)))
            .await
        {
            s.close().await;
            return Err(format!("creating schema {schema}: {e}"));
        }
        created.push(schema.clone());
    }
    s.close().await;
    Ok(created)
}

fn restore_command(
    tools: &PgTools,
    target: &str,
    opts: &PgRestoreOptions,
    selection: &TableSelection,
    file: Option<&PathBuf>,
) -> Command {
    let mut cmd = Command::new(tools.program("pg_restore"));
    tools.apply_env(&mut cmd);
    cmd.args(["--no-password", "--exit-on-error"]);
    cmd.arg(format!("--dbname={target}"));
    if opts.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if opts.no_owner {
        cmd.arg("--no-owner");
    }
    for t in &selection.names {
        cmd.arg(format!("--table={t}"));
    }
    for s in &selection.schemas {
        cmd.arg(format!("--schema={s}"));
    }
    match file {
        // One transaction: a restore that fails, or is cut off, leaves the target as it was.
        None => {
            cmd.arg("--single-transaction");
        }
        Some(f) => {
            cmd.arg(format!("--jobs={}", opts.jobs)).arg(f);
        }
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn collect_stderr(child: &mut Child, into: Arc<Mutex<String>>) {
    if let Some(mut e) = child.stderr.take() {
        tokio::spawn(async move {
            let mut buf = String::new();
            let _ = e.read_to_string(&mut buf).await;
            into.lock().unwrap().push_str(&buf);
        });
    }
}

async fn settle_stderr(s: &Arc<Mutex<String>>) {
    // The reader task finishes right after the process closes stderr.
    for _ in 0..50 {
        if !s.lock().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[async_trait]
impl Sink for PgRestoreSink {
    fn describe(&self) -> String {
        format!("database {}", conninfo::redact(&self.target))
    }

    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        match &mut self.mode {
            Mode::Stream { stdin, .. } => stdin.as_mut().expect("stdin open until commit/abort"),
            Mode::Spool { file, .. } => file.as_mut().expect("spool open until commit/abort"),
        }
    }

    async fn commit(mut self: Box<Self>) -> Result<SinkReport> {
        let status = match &mut self.mode {
            Mode::Stream { child, stdin } => {
                drop(stdin.take());
                child
                    .wait()
                    .await
                    .map_err(|e| pg_err(&self.item, &self.target, e.to_string()))?
            }
            Mode::Spool { file, path } => {
                let mut f = file.take().expect("spool open");
                f.flush()
                    .await
                    .map_err(|e| pg_err(&self.item, &self.target, e.to_string()))?;
                drop(f);
                let path = path.clone();
                let mut child = restore_command(
                    &self.tools,
                    &self.target,
                    &self.opts,
                    &self.selection,
                    Some(&path),
                )
                .spawn()
                .map_err(|e| {
                    pg_err(
                        &self.item,
                        &self.target,
                        format!("cannot start pg_restore: {e}"),
                    )
                })?;
                collect_stderr(&mut child, self.stderr.clone());
                let st = child.wait().await;
                let _ = tokio::fs::remove_file(&path).await;
                st.map_err(|e| pg_err(&self.item, &self.target, e.to_string()))?
            }
        };
        if !status.success() {
            settle_stderr(&self.stderr).await;
            let mut msg = self.stderr_text();
            self.drop_created().await;
            if !self.selection.is_whole() && msg.contains("does not exist") {
                msg.push_str("\n(--table restores the named tables without what they depend on, such as a sequence of their own: restore the whole database into a scratch database and copy the table from there)");
            }
            return Err(self.err(format!("pg_restore exited with {status}: {msg}")));
        }
        let verified = match self.verify().await {
            Ok(n) => n,
            Err(e) => {
                // A database this restore created holds nothing anyone relied on before.
                self.drop_created().await;
                return Err(e);
            }
        };
        Ok(SinkReport {
            target: self.describe(),
            untar: None,
            verified_tables: Some(verified),
            note: None,
            leftovers: None,
        })
    }

    async fn abort(mut self: Box<Self>) -> Option<Error> {
        let own = match &mut self.mode {
            Mode::Stream { child, stdin } => {
                drop(stdin.take());
                // Killing it before it sees end-of-input rolls its single transaction back.
                let _ = child.kill().await;
                None
            }
            Mode::Spool { file, path } => {
                drop(file.take());
                let _ = tokio::fs::remove_file(&*path).await;
                None
            }
        };
        self.drop_created().await;
        own
    }
}

/// Restores a `pg_dumpall --globals-only` stream with psql. Globals are small (roles and
/// tablespaces), so they are collected in memory and filtered: `\restrict` / `\unrestrict`
/// lines from recent pg_dumpall are removed for older psql (the stream's integrity is already
/// proven by our own verification). Errors such as "role already exists" do not stop it.
pub struct GlobalsSink {
    item: String,
    target: String,
    tools: PgTools,
    buf: Vec<u8>,
}

const GLOBALS_LIMIT: usize = 256 << 20;

impl GlobalsSink {
    /// Targets the server of `target` (its `postgres` database).
    pub fn new(item: &Item, target: &str, tools: &PgTools) -> Self {
        GlobalsSink {
            item: item.name.clone(),
            target: conninfo::with_database(target, "postgres"),
            tools: tools.clone(),
            buf: Vec::new(),
        }
    }
}

/// Removes psql `\restrict KEY` / `\unrestrict KEY` lines.
pub fn strip_restrict(sql: &[u8]) -> Vec<u8> {
    sql.split_inclusive(|b| *b == b'\n')
        .filter(|l| !(l.starts_with(b"\\restrict ") || l.starts_with(b"\\unrestrict ")))
        .flatten()
        .copied()
        .collect()
}

#[async_trait]
impl Sink for GlobalsSink {
    fn describe(&self) -> String {
        format!("globals of {}", conninfo::redact(&self.target))
    }

    fn writer(&mut self) -> &mut (dyn AsyncWrite + Send + Unpin) {
        &mut self.buf
    }

    async fn commit(self: Box<Self>) -> Result<SinkReport> {
        if self.buf.len() > GLOBALS_LIMIT {
            return Err(pg_err(
                &self.item,
                &self.target,
                "globals stream larger than 256 MiB; restore it with export | psql",
            ));
        }
        let sql = strip_restrict(&self.buf);
        let mut cmd = Command::new(self.tools.program("psql"));
        self.tools.apply_env(&mut cmd);
        let mut child = cmd
            .args([
                "-X",
                "-q",
                "-w",
                "-v",
                "ON_ERROR_STOP=0",
                "-d",
                &self.target,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| pg_err(&self.item, &self.target, format!("cannot start psql: {e}")))?;
        let mut stdin = child.stdin.take().expect("piped");
        stdin
            .write_all(&sql)
            .await
            .map_err(|e| pg_err(&self.item, &self.target, e.to_string()))?;
        drop(stdin);
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| pg_err(&self.item, &self.target, e.to_string()))?;
        if !out.status.success() {
            return Err(pg_err(
                &self.item,
                &self.target,
                format!("psql: {}", String::from_utf8_lossy(&out.stderr)),
            ));
        }
        Ok(SinkReport {
            target: self.describe(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restrict_lines_are_removed() {
        let sql = b"\\restrict abc123\nCREATE ROLE app;\n\\unrestrict abc123\n";
        assert_eq!(strip_restrict(sql), b"CREATE ROLE app;\n");
    }

    fn dump(size: u64) -> Item {
        Item {
            name: "app".into(),
            kind: crate::manifest::ItemKind::Postgres,
            format: "pg_dump-custom".into(),
            size,
            sha256: String::new(),
            digest: Default::default(),
            head: None,
            chunks: Vec::new(),
            catalog: None,
            started: chrono::Utc::now(),
            finished: chrono::Utc::now(),
            facts: Default::default(),
        }
    }

    #[test]
    fn jobs_default_to_the_cores_when_the_spool_fits() {
        let tmp = std::env::temp_dir();
        assert_eq!(pick_jobs(&dump(1 << 30), 3, true, &tmp).0, 3, "given wins");
        let (n, why) = pick_jobs(&dump(1 << 30), 0, true, &tmp);
        assert_eq!(
            n, 1,
            "an existing database keeps its one transaction: {why}"
        );
        let (n, why) = pick_jobs(&dump(1 << 20), 0, false, &tmp);
        assert_eq!(n, 1, "a small dump is streamed: {why}");
        let (n, why) = pick_jobs(&dump(u64::MAX / 4), 0, false, &tmp);
        assert_eq!(n, 1, "{why}");
        let cores = crate::runtime::cores().min(8);
        if cores >= PARALLEL_CORES {
            assert!(why.contains("would not fit"), "{why}");
            let (n, why) = pick_jobs(&dump(100 << 20), 0, false, &tmp);
            assert_eq!(n, cores, "{why}");
            assert!(why.contains("cores here"), "{why}");
        } else {
            assert!(why.contains("streamed in one transaction"), "{why}");
        }
    }
}
