//! The drill runner: restore every item of a snapshot into scratch targets, check it, time it.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use backup_core::commands::restore::{ApplyOptions, RestoreOptions, apply, plan};
use backup_core::config::{ConfigFile, RepoArgs, RepositoryConfig};
use backup_core::engines::CheckOutcome;
use backup_core::engines::postgres::base::is_base_backup;
use backup_core::engines::postgres::conninfo;
use backup_core::engines::postgres::drill as pg_drill;
use backup_core::engines::postgres::facts::PostgresFacts;
use backup_core::engines::postgres::restore::{PgRestoreOptions, is_globals};
use backup_core::engines::postgres::scratch::ScratchPostgres;
use backup_core::engines::redis::drill as redis_drill;
use backup_core::engines::redis::facts::RedisFacts;
use backup_core::engines::redis::scratch::ScratchRedis;
use backup_core::engines::volume::facts::VolumeFacts;
use backup_core::error::{Error, Result};
use backup_core::manifest::{Item, ItemKind, Snapshot};
use backup_core::repository::{Repository, SnapshotFilter};
use backup_core::retention::parse_duration;
use backup_core::scratch::temp_dir;
use backup_core::secret::SecretSource;
use backup_core::sink::SinkReport;
use chrono::Utc;

use crate::file::{DrillFile, expect_holds};
use crate::report::{
    CheckResult, DrillReport, ItemResult, LAST_SUCCESS_HEAD, PitrResult, prometheus_not_run,
};

/// How to run a drill.
#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    /// Leave scratch servers and directories in place (their addresses are reported).
    pub keep: bool,
}

/// Scratch resources, removed when dropped (unless kept): on success, failure, error, and
/// when the drill future is dropped by Ctrl-C.
pub(crate) struct Scratch {
    pub(crate) work: PathBuf,
    postgres: Option<ScratchPostgres>,
    /// Clusters restored to a point in time.
    pub(crate) clusters: Vec<ScratchPostgres>,
    redis: HashMap<String, ScratchRedis>,
    keep: bool,
}

impl Scratch {
    /// What is left running or on disk, for the report.
    fn kept(&self) -> Vec<String> {
        let mut kept = vec![format!("directory {}", self.work.display())];
        for pg in self.postgres.iter().chain(&self.clusters) {
            kept.push(format!("PostgreSQL {}", pg.url("postgres")));
        }
        for (name, r) in &self.redis {
            kept.push(format!("redis {} for {name}", r.url()));
        }
        kept
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            for pg in self.postgres.iter_mut().chain(self.clusters.iter_mut()) {
                pg.keep();
            }
            for r in self.redis.values_mut() {
                r.keep();
            }
            return;
        }
        self.postgres.take();
        self.clusters.clear();
        self.redis.clear();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

pub(crate) struct Ctx {
    checks: Vec<CheckResult>,
}

impl Ctx {
    pub(crate) fn check(&mut self, item: &str, name: &str, t: Instant, r: CheckOutcome) -> bool {
        let passed = r.is_ok();
        self.checks.push(CheckResult {
            item: item.to_string(),
            name: name.to_string(),
            passed,
            detail: r.unwrap_or_else(|e| e),
            seconds: t.elapsed().as_secs_f64(),
        });
        passed
    }
}

/// The repository the drill file names, how it was opened, and the host its `latest` is of.
struct Opened {
    repo: Repository,
    config: RepositoryConfig,
    secret: Option<SecretSource>,
    host: Option<String>,
}

async fn open_repo(file: &DrillFile) -> Result<Opened> {
    let cfg = match (&file.config, &file.repository) {
        (Some(path), _) => ConfigFile::load(path)?,
        (None, Some(r)) => ConfigFile {
            repository: r.clone(),
            backup: Default::default(),
            sources: Default::default(),
            retention: None,
            metrics: Default::default(),
            monitor: Default::default(),
            hooks: Default::default(),
            action_hooks: Default::default(),
            source_hooks: Default::default(),
            source_anomaly: Default::default(),
        },
        (None, None) => {
            return Err(Error::Usage(
                "the drill file needs [repository] or config = PATH".into(),
            ));
        }
    };
    let host = match file.host.as_deref() {
        Some("*") => None,
        Some(h) => Some(h.to_string()),
        None => Some(
            cfg.backup
                .host
                .clone()
                .unwrap_or_else(backup_core::hostname),
        ),
    };
    let resolved = RepoArgs::resolve_file_first(&cfg)?;
    Ok(Opened {
        repo: resolved.open().await?,
        secret: resolved.secret.clone(),
        config: cfg.repository,
        host,
    })
}

/// Runs a drill and returns its report (a failing check is a report, not an error). A drill
/// that cannot run at all still says so in its Prometheus file.
pub async fn run_drill(file: &DrillFile, opts: &DrillOptions) -> Result<DrillReport> {
    let r = drill(file, opts).await;
    if r.is_err()
        && let Some(p) = &file.reports.prometheus
    {
        // The drill's own error is the one to report; this write is best effort.
        let _ = write_prometheus(p, prometheus_not_run(), true);
    }
    r
}

async fn drill(file: &DrillFile, opts: &DrillOptions) -> Result<DrillReport> {
    let started = Utc::now();
    let t0 = Instant::now();
    let budget = |s: &Option<String>| -> Result<Option<f64>> {
        Ok(match s {
            Some(s) => Some(parse_duration(s)?.num_milliseconds() as f64 / 1000.0),
            None => None,
        })
    };
    let max_age = budget(&file.budgets.max_snapshot_age)?;
    let max_time = budget(&file.budgets.max_restore_time)?;
    crate::pitr::validate(&file.pitr)?;
    let opened = open_repo(file).await?;
    let repo = &opened.repo;
    let snap = find_snapshot(file, repo, opened.host.clone()).await?;
    if file.targets.redis != "ephemeral" && snap.items.iter().any(|i| i.kind == ItemKind::Redis) {
        return Err(Error::Usage(
            "targets.redis: only \"ephemeral\" is supported (loading an RDB needs a server the drill starts)".into(),
        ));
    }
    validate_checks(file, &snap)?;
    let mut drill = Drill::new(file, &opened, &snap, opts)?;
    drill.start_postgres().await?;
    let mut items: Vec<&Item> = snap.items.iter().collect();
    items.sort_by_key(|i| !is_globals(i));
    // A base backup drilled to a point in time is restored by its [[pitr]] entry.
    items.retain(|i| !(is_base_backup(i) && file.pitr.iter().any(|p| p.item == i.name)));
    for item in items {
        drill.item(item).await;
    }
    for p in &file.pitr {
        drill.pitr(p).await;
    }
    drill.custom_checks().await;

    let rto = t0.elapsed().as_secs_f64();
    let rpo = (Utc::now() - snap.time).num_milliseconds() as f64 / 1000.0;
    let Drill {
        mut ctx,
        mut versions,
        scratch,
        results,
        pitr_results,
        ..
    } = drill;
    if opts.keep {
        versions.insert("kept scratch".into(), scratch.kept().join("; "));
    }
    let checks = std::mem::take(&mut ctx.checks);
    let report = DrillReport {
        repository: repo.location(),
        snapshot: snap.id.to_string(),
        snapshot_time: snap.time,
        host: snap.host.clone(),
        started,
        finished: Utc::now(),
        rpo_seconds: rpo,
        rto_seconds: rto,
        max_snapshot_age_seconds: max_age,
        max_restore_time_seconds: max_time,
        items: results,
        checks_passed: checks.iter().all(|c| c.passed),
        budgets_held: max_age.is_none_or(|b| rpo <= b)
            && max_time.is_none_or(|b| rto <= b)
            && pitr_results.iter().all(|p| p.budgets_held()),
        pitr: pitr_results,
        checks,
        versions,
    };
    drop(scratch);
    write_reports(file, &report)?;
    Ok(report)
}

/// Refuses, before anything is restored, checks that name an item the snapshot does not have
/// (or one of another kind): found after the restore, the mistake costs the whole drill.
/// `latest` is the newest snapshot of the host holding the file's items and every item its
/// checks name (a partial run must not be drilled in place of the full one); when none holds
/// the checks' items, the newest holding the file's items, so that `validate_checks` can say
/// which check names what.
async fn find_snapshot(
    file: &DrillFile,
    repo: &Repository,
    host: Option<String>,
) -> Result<Snapshot> {
    let filter = SnapshotFilter {
        host,
        tags: file.tags.clone(),
        items: file.items.clone(),
    };
    let checked = file.checks.sql.iter().map(|c| &c.item);
    let checked = checked.chain(file.checks.redis.iter().map(|c| &c.item));
    let mut with_checks = filter.clone();
    with_checks.items.extend(checked.cloned());
    match repo
        .find_snapshot_matching(&file.snapshot, &with_checks)
        .await
    {
        Err(Error::ItemNotFound { .. }) => {
            repo.find_snapshot_matching(&file.snapshot, &filter).await
        }
        found => found,
    }
}

fn validate_checks(file: &DrillFile, snap: &Snapshot) -> Result<()> {
    let wanted = file
        .checks
        .sql
        .iter()
        .map(|c| (&c.item, "checks.sql", ItemKind::Postgres))
        .chain(
            file.checks
                .redis
                .iter()
                .map(|c| (&c.item, "checks.redis", ItemKind::Redis)),
        );
    for (item, section, kind) in wanted {
        let found = snap.item(item).filter(|i| i.kind == kind && !is_globals(i));
        let restored_by_pitr =
            kind == ItemKind::Postgres && file.pitr.iter().any(|p| &p.item == item);
        if found.is_some() || restored_by_pitr {
            continue;
        }
        let candidates: Vec<&str> = snap
            .items
            .iter()
            .filter(|i| i.kind == kind && !is_globals(i))
            .map(|i| i.name.as_str())
            .collect();
        return Err(Error::Usage(format!(
            "[[{section}]] names item {item}, but snapshot {} has no {kind} item of that name ({} items: {}); the items of a source with databases = [...] are SOURCE.DB",
            snap.id.short(),
            kind,
            if candidates.is_empty() {
                "none".to_string()
            } else {
                candidates.join(", ")
            }
        )));
    }
    Ok(())
}

/// One drill in progress: where things are restored to, and what was found so far.
pub(crate) struct Drill<'a> {
    pub(crate) file: &'a DrillFile,
    pub(crate) repo: &'a Repository,
    /// The repository's settings and secret, for the restore_command of `[[pitr]]` clusters.
    pub(crate) repo_config: RepositoryConfig,
    pub(crate) secret: Option<SecretSource>,
    /// Whose snapshots `latest` and `[[pitr]]` choose from.
    pub(crate) host: Option<String>,
    snap: &'a Snapshot,
    pub(crate) scratch: Scratch,
    pub(crate) ctx: Ctx,
    versions: BTreeMap<String, String>,
    /// Server to restore PostgreSQL items into (scratch or the drill file's).
    pg_url: Option<String>,
    /// Where volumes go.
    dir: PathBuf,
    /// Restored databases by item name.
    pub(crate) pg_dbs: HashMap<String, String>,
    results: Vec<ItemResult>,
    pub(crate) pitr_results: Vec<PitrResult>,
}

impl<'a> Drill<'a> {
    fn new(
        file: &'a DrillFile,
        opened: &'a Opened,
        snap: &'a Snapshot,
        opts: &DrillOptions,
    ) -> Result<Self> {
        let scratch = Scratch {
            work: temp_dir("lifeboat-drill")?,
            postgres: None,
            clusters: Vec::new(),
            redis: HashMap::new(),
            keep: opts.keep,
        };
        let dir = if file.targets.directory == "ephemeral" {
            scratch.work.join("restored")
        } else {
            PathBuf::from(&file.targets.directory)
        };
        let mut versions = BTreeMap::new();
        versions.insert(
            "lifeboat".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        Ok(Drill {
            file,
            repo: &opened.repo,
            repo_config: opened.config.clone(),
            secret: opened.secret.clone(),
            host: opened.host.clone(),
            snap,
            scratch,
            ctx: Ctx { checks: Vec::new() },
            versions,
            pg_url: None,
            dir,
            pg_dbs: HashMap::new(),
            results: Vec::new(),
            pitr_results: Vec::new(),
        })
    }

    /// A scratch PostgreSQL, when there is something to load into it and none was given.
    async fn start_postgres(&mut self) -> Result<()> {
        if !self
            .snap
            .items
            .iter()
            .any(|i| i.kind == ItemKind::Postgres && !is_base_backup(i))
        {
            return Ok(());
        }
        if self.file.targets.postgres != "ephemeral" {
            self.pg_url = Some(self.file.targets.postgres.clone());
            return Ok(());
        }
        let t = Instant::now();
        let pg = tokio::task::spawn_blocking(ScratchPostgres::start)
            .await
            .map_err(|e| Error::io("starting PostgreSQL", std::io::Error::other(e)))??;
        self.pg_url = Some(pg.url("postgres"));
        self.ctx.check(
            "",
            "scratch PostgreSQL started",
            t,
            Ok(format!("port {}", pg.port())),
        );
        self.scratch.postgres = Some(pg);
        Ok(())
    }

    /// Where an item goes and the restore options that send it there.
    fn target(&mut self, item: &Item) -> (String, RestoreOptions) {
        let mut ropts = RestoreOptions {
            only: vec![item.name.clone()],
            ..Default::default()
        };
        let files = self.scratch.work.join("files");
        let target = match item.kind {
            // A base backup is unpacked and verified like a volume; a drill to a point in
            // time (starting the cluster, replaying WAL) is still to come.
            ItemKind::Postgres if is_base_backup(item) => {
                ropts.to = Some(self.dir.clone());
                self.dir.join(&item.name).display().to_string()
            }
            ItemKind::Postgres => {
                let base = self.pg_url.clone().unwrap_or_default();
                let url = if is_globals(item) {
                    base.clone()
                } else {
                    let db = PostgresFacts::of(item)
                        .database
                        .unwrap_or_else(|| item.name.clone());
                    let u = conninfo::with_database(&base, &db);
                    self.pg_dbs.insert(item.name.clone(), u.clone());
                    u
                };
                ropts.postgres = PgRestoreOptions {
                    url: Some(url),
                    globals: true,
                    // Without the roles item, owners may not exist on the scratch server.
                    no_owner: !self.snap.items.iter().any(is_globals),
                    ..Default::default()
                };
                base
            }
            ItemKind::Volume => {
                ropts.to = Some(self.dir.clone());
                self.dir.join(&item.name).display().to_string()
            }
            _ => {
                ropts.to = Some(files.clone());
                files.join(&item.name).display().to_string()
            }
        };
        (target, ropts)
    }

    /// Restores one item, checks it and records how long each took.
    async fn item(&mut self, item: &Item) {
        let t = Instant::now();
        let (target, ropts) = self.target(item);
        let restored = match plan(self.snap, &ropts).await {
            Ok(p) => apply(self.repo, self.snap, &p, &ApplyOptions::default()).await,
            Err(e) => Err(e),
        };
        let restore_seconds = t.elapsed().as_secs_f64();
        let tc = Instant::now();
        match restored {
            Err(e) => {
                self.ctx.check(&item.name, "restore", t, Err(e.to_string()));
            }
            Ok(report) => {
                self.ctx.check(
                    &item.name,
                    "stream sha256 and every chunk verified",
                    t,
                    Ok(format!(
                        "{} bytes, sha256 {}",
                        item.size,
                        &item.sha256[..16]
                    )),
                );
                self.check_restored(item, &target, &report.items[0].sink, t, tc)
                    .await;
            }
        }
        self.results.push(ItemResult {
            name: item.name.clone(),
            kind: item.kind.to_string(),
            size: item.size,
            target: match self.pg_dbs.get(&item.name) {
                Some(url) => conninfo::redact(url),
                None if item.kind == ItemKind::Postgres && !is_base_backup(item) => {
                    conninfo::redact(&target)
                }
                None => target,
            },
            restore_seconds,
            checks_seconds: tc.elapsed().as_secs_f64(),
        });
    }

    /// The engine's checks of a restored item (`t`: the restore's start, `tc`: the checks').
    async fn check_restored(
        &mut self,
        item: &Item,
        target: &str,
        sink: &SinkReport,
        t: Instant,
        tc: Instant,
    ) {
        let name = &item.name;
        match item.kind {
            ItemKind::Postgres if is_base_backup(item) => {
                let dir = Path::new(target);
                let r = ["PG_VERSION", "backup_label", "global/pg_control"]
                    .iter()
                    .find(|f| !dir.join(f).exists())
                    .map_or(
                        Ok("PG_VERSION, backup_label, global/pg_control".into()),
                        |f| Err(format!("{f} missing from the unpacked base backup")),
                    );
                self.ctx
                    .check(name, "a data directory with its backup label", tc, r);
            }
            ItemKind::Postgres if !is_globals(item) => {
                let n = sink.verified_tables.unwrap_or(0);
                self.ctx
                    .check(name, "pg_restore clean exit", t, Ok("exit 0".into()));
                self.ctx.check(
                    name,
                    "row counts equal the backup's facts",
                    t,
                    Ok(format!("{n} tables")),
                );
                let facts = PostgresFacts::of(item);
                let r = facts.check_objects(&self.pg_dbs[name]).await;
                self.ctx
                    .check(name, "schema object counts equal the backup's facts", tc, r);
            }
            ItemKind::Postgres => {
                self.ctx.check(
                    name,
                    "roles and tablespaces loaded",
                    t,
                    Ok("psql applied the globals".into()),
                );
            }
            ItemKind::Redis => self.check_redis(item, Path::new(target), tc).await,
            ItemKind::Volume => {
                let r = VolumeFacts::of(item).check_tree(Path::new(target));
                self.ctx
                    .check(name, "file count and bytes equal the backup's facts", tc, r);
            }
            _ => {}
        }
        if let Some(v) = PostgresFacts::of(item).server_version {
            self.versions
                .insert(format!("postgres ({name})"), v.to_string());
        }
    }

    /// Loads a restored RDB into a scratch redis-server (kept for the drill file's checks).
    async fn check_redis(&mut self, item: &Item, rdb: &Path, tc: Instant) {
        let name = &item.name;
        match redis_drill::load(rdb).await {
            Ok(server) => {
                self.ctx
                    .check(name, "redis-server loads the RDB", tc, Ok(server.url()));
                let r = redis_drill::check_keyspace(item, &server).await;
                self.ctx
                    .check(name, "keys per db equal the backup's facts", tc, r);
                if let Some(v) = RedisFacts::of(item).redis_version {
                    self.versions.insert(format!("redis ({name})"), v);
                }
                self.scratch.redis.insert(name.clone(), server);
            }
            Err(e) => {
                self.ctx
                    .check(name, "redis-server loads the RDB", tc, Err(e.to_string()));
            }
        }
    }

    /// The drill file's own `[[checks.*]]`.
    async fn custom_checks(&mut self) {
        for c in &self.file.checks.sql {
            let t = Instant::now();
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| format!("sql: {} {}", c.sql, c.expect));
            let r = match self.pg_dbs.get(&c.item) {
                None => Err(format!("no restored PostgreSQL item {}", c.item)),
                Some(url) => {
                    let url = match &c.database {
                        Some(db) => conninfo::with_database(url, db),
                        None => url.clone(),
                    };
                    expect(&c.expect, pg_drill::query_value(&url, &c.sql).await)
                }
            };
            self.ctx.check(&c.item, &name, t, r);
        }
        for c in &self.file.checks.redis {
            let t = Instant::now();
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| format!("redis: {} {}", c.command.join(" "), c.expect));
            let r = match self.scratch.redis.get(&c.item) {
                None => Err(format!("no restored Redis item {}", c.item)),
                Some(server) => expect(
                    &c.expect,
                    redis_drill::command_value(server, c.db, &c.command).await,
                ),
            };
            self.ctx.check(&c.item, &name, t, r);
        }
        for c in &self.file.checks.shell {
            let t = Instant::now();
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| format!("shell: {}", c.command));
            let r = self.shell(&c.command).await;
            self.ctx.check("", &name, t, r);
        }
    }

    /// A shell check, with the scratch servers' addresses in its environment.
    async fn shell(&self, command: &str) -> CheckOutcome {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .env("LIFEBOAT_DRILL_DIR", &self.scratch.work)
            .kill_on_drop(true);
        if let Some(u) = &self.pg_url {
            cmd.env("LIFEBOAT_PG_URL", u);
        }
        if let Some(r) = self.scratch.redis.values().next() {
            cmd.env("LIFEBOAT_REDIS_URL", r.url());
        }
        match cmd.output().await {
            Ok(o) if o.status.success() => Ok("exit 0".to_string()),
            Ok(o) => Err(format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// A check's value against its `expect` expression.
fn expect(want: &str, got: CheckOutcome) -> CheckOutcome {
    got.and_then(|got| {
        if expect_holds(want, &got) {
            Ok(format!("got {got}"))
        } else {
            Err(format!("got {got}, expected {want}"))
        }
    })
}

/// Writes a Prometheus textfile atomically; a failure keeps the time of the last success
/// (with its HELP and TYPE, so the file stays valid for `promtool check metrics`).
fn write_prometheus(p: &Path, mut text: String, failed: bool) -> Result<()> {
    if failed
        && let Ok(old) = std::fs::read_to_string(p)
        && let Some(line) = old
            .lines()
            .find(|l| l.starts_with("lifeboat_drill_last_success_timestamp_seconds "))
    {
        text.push_str(LAST_SUCCESS_HEAD);
        text.push('\n');
        text.push_str(line);
        text.push('\n');
    }
    // Textfile collectors read whole files: write aside, then rename.
    let tmp = p.with_extension("prom.tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, p).map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))
}

fn write_reports(file: &DrillFile, report: &DrillReport) -> Result<()> {
    let write = |p: &Path, text: String| {
        std::fs::write(p, text).map_err(|e| Error::io(format!("writing {}", p.display()), e))
    };
    if let Some(p) = &file.reports.json {
        write(
            p,
            serde_json::to_string_pretty(report).expect("report serialises"),
        )?;
    }
    if let Some(p) = &file.reports.markdown {
        write(p, report.markdown())?;
    }
    if let Some(p) = &file.reports.prometheus {
        let text = report.prometheus();
        write_prometheus(p, text, !report.success())?;
    }
    Ok(())
}
