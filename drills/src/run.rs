//! The drill runner: restore every item of a snapshot into scratch targets, check it, time it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use backup_core::config::{ConfigFile, RepoArgs};
use backup_core::error::{Error, Result};
use backup_core::manifest::{Item, ItemKind};
use backup_core::repository::Repository;
use backup_core::restore::postgres::{PgRestoreOptions, is_globals};
use backup_core::restore::redis::compare_keyspace;
use backup_core::restore::{ApplyOptions, RestoreOptions, apply, plan};
use backup_core::retention::parse_duration;
use backup_core::scratch::postgres::ScratchPostgres;
use backup_core::scratch::redis::{ScratchRedis, ScratchRedisOptions};
use backup_core::scratch::temp_dir;
use backup_core::source::postgres::session::PsqlSession;
use backup_core::source::postgres::{OBJECTS_SQL, PgTools, conninfo};
use backup_core::source::redis::resp::Reply;
use chrono::Utc;

use crate::file::{DrillFile, expect_holds};
use crate::report::{CheckResult, DrillReport, ItemResult};

/// How to run a drill.
#[derive(Debug, Clone, Default)]
pub struct DrillOptions {
    /// Leave scratch servers and directories in place (their addresses are reported).
    pub keep: bool,
}

/// Scratch resources, removed when dropped (unless kept): on success, failure, error, and
/// when the drill future is dropped by Ctrl-C.
struct Scratch {
    work: PathBuf,
    postgres: Option<ScratchPostgres>,
    redis: HashMap<String, ScratchRedis>,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            if let Some(pg) = self.postgres.as_mut() {
                pg.keep();
            }
            for r in self.redis.values_mut() {
                r.keep();
            }
            return;
        }
        self.postgres.take();
        self.redis.clear();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

struct Ctx {
    checks: Vec<CheckResult>,
}

impl Ctx {
    fn check(
        &mut self,
        item: &str,
        name: &str,
        t: Instant,
        r: std::result::Result<String, String>,
    ) -> bool {
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

async fn open_repo(file: &DrillFile) -> Result<Repository> {
    let cfg = match (&file.config, &file.repository) {
        (Some(path), _) => ConfigFile::load(path)?,
        (None, Some(r)) => ConfigFile {
            repository: r.clone(),
            backup: Default::default(),
            sources: Default::default(),
            retention: None,
        },
        (None, None) => {
            return Err(Error::Usage(
                "the drill file needs [repository] or config = PATH".into(),
            ));
        }
    };
    RepoArgs::default().resolve(Some(&cfg))?.open().await
}

/// Runs a drill and returns its report (a failing check is a report, not an error).
pub async fn run_drill(file: &DrillFile, opts: &DrillOptions) -> Result<DrillReport> {
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
    let repo = open_repo(file).await?;
    let snap = repo.find_snapshot_with(&file.snapshot, &file.items).await?;
    let mut scratch = Scratch {
        work: temp_dir("lifeboat-drill")?,
        postgres: None,
        redis: HashMap::new(),
        keep: opts.keep,
    };
    let mut ctx = Ctx { checks: Vec::new() };
    let mut versions = BTreeMap::new();
    versions.insert(
        "lifeboat".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );

    // Scratch PostgreSQL, when there is something to load into it.
    let needs_pg = snap.items.iter().any(|i| i.kind == ItemKind::Postgres);
    let pg_url = if needs_pg {
        if file.targets.postgres == "ephemeral" {
            let t = Instant::now();
            let pg = tokio::task::spawn_blocking(ScratchPostgres::start)
                .await
                .map_err(|e| Error::io("starting PostgreSQL", std::io::Error::other(e)))??;
            let url = pg.url("postgres");
            ctx.check(
                "",
                "scratch PostgreSQL started",
                t,
                Ok(format!("port {}", pg.port())),
            );
            scratch.postgres = Some(pg);
            Some(url)
        } else {
            Some(file.targets.postgres.clone())
        }
    } else {
        None
    };
    let dir = if file.targets.directory == "ephemeral" {
        scratch.work.join("restored")
    } else {
        PathBuf::from(&file.targets.directory)
    };

    if file.targets.redis != "ephemeral" && snap.items.iter().any(|i| i.kind == ItemKind::Redis) {
        return Err(Error::Usage(
            "targets.redis: only \"ephemeral\" is supported (loading an RDB needs a server the drill starts)".into(),
        ));
    }
    let has_globals = snap.items.iter().any(is_globals);
    let mut items: Vec<&Item> = snap.items.iter().collect();
    items.sort_by_key(|i| !is_globals(i));
    let mut item_results = Vec::new();
    let mut pg_dbs: HashMap<String, String> = HashMap::new();
    for item in items {
        let t = Instant::now();
        let target = match item.kind {
            ItemKind::Postgres => pg_url.clone().unwrap_or_default(),
            ItemKind::Volume => dir.join(&item.name).display().to_string(),
            _ => scratch
                .work
                .join("files")
                .join(&item.name)
                .display()
                .to_string(),
        };
        let mut ropts = RestoreOptions {
            only: vec![item.name.clone()],
            ..Default::default()
        };
        match item.kind {
            ItemKind::Postgres => {
                let base = pg_url.clone().unwrap_or_default();
                let url = if is_globals(item) {
                    base
                } else {
                    let db = item
                        .facts
                        .get("database")
                        .and_then(|v| v.as_str())
                        .unwrap_or(&item.name)
                        .to_string();
                    let u = conninfo::with_database(&base, &db);
                    pg_dbs.insert(item.name.clone(), u.clone());
                    u
                };
                ropts.postgres = PgRestoreOptions {
                    url: Some(url),
                    globals: true,
                    // Without the roles item, owners may not exist on the scratch server.
                    no_owner: !has_globals,
                    ..Default::default()
                };
            }
            ItemKind::Volume => ropts.to = Some(dir.clone()),
            _ => ropts.to = Some(scratch.work.join("files")),
        }
        let restored = match plan(&snap, &ropts).await {
            Ok(p) => apply(&repo, &snap, &p, &ApplyOptions::default()).await,
            Err(e) => Err(e),
        };
        let restore_seconds = t.elapsed().as_secs_f64();
        let tc = Instant::now();
        match restored {
            Err(e) => {
                ctx.check(&item.name, "restore", t, Err(e.to_string()));
            }
            Ok(report) => {
                ctx.check(
                    &item.name,
                    "stream sha256 and every chunk verified",
                    t,
                    Ok(format!(
                        "{} bytes, sha256 {}",
                        item.size,
                        &item.sha256[..16]
                    )),
                );
                let sink = &report.items[0].sink;
                match item.kind {
                    ItemKind::Postgres if !is_globals(item) => {
                        let n = sink.verified_tables.unwrap_or(0);
                        ctx.check(&item.name, "pg_restore clean exit", t, Ok("exit 0".into()));
                        ctx.check(
                            &item.name,
                            "row counts equal the backup's facts",
                            t,
                            Ok(format!("{n} tables")),
                        );
                        let r =
                            schema_objects(item, pg_dbs.get(&item.name).expect("set above")).await;
                        ctx.check(
                            &item.name,
                            "schema object counts equal the backup's facts",
                            tc,
                            r,
                        );
                    }
                    ItemKind::Postgres => {
                        ctx.check(
                            &item.name,
                            "roles and tablespaces loaded",
                            t,
                            Ok("psql applied the globals".into()),
                        );
                    }
                    ItemKind::Redis => {
                        let rdb = PathBuf::from(&target);
                        match ScratchRedis::start(ScratchRedisOptions {
                            rdb: Some(rdb),
                            ..Default::default()
                        })
                        .await
                        {
                            Ok(server) => {
                                ctx.check(
                                    &item.name,
                                    "redis-server loads the RDB",
                                    tc,
                                    Ok(server.url()),
                                );
                                let r = match server.keyspace(None).await {
                                    Ok(ks) => compare_keyspace(item, &ks)
                                        .map(|n| format!("{n} database(s)"))
                                        .map_err(|e| e.to_string()),
                                    Err(e) => Err(e.to_string()),
                                };
                                ctx.check(
                                    &item.name,
                                    "keys per db equal the backup's facts",
                                    tc,
                                    r,
                                );
                                if let Some(v) =
                                    item.facts.get("redis_version").and_then(|v| v.as_str())
                                {
                                    versions
                                        .insert(format!("redis ({})", item.name), v.to_string());
                                }
                                scratch.redis.insert(item.name.clone(), server);
                            }
                            Err(e) => {
                                ctx.check(
                                    &item.name,
                                    "redis-server loads the RDB",
                                    tc,
                                    Err(e.to_string()),
                                );
                            }
                        }
                    }
                    ItemKind::Volume => {
                        let r = volume_facts(item, Path::new(&target));
                        ctx.check(
                            &item.name,
                            "file count and bytes equal the backup's facts",
                            tc,
                            r,
                        );
                    }
                    _ => {}
                }
                if let Some(v) = item.facts.get("server_version").and_then(|v| v.as_str()) {
                    versions.insert(format!("postgres ({})", item.name), v.to_string());
                }
            }
        }
        item_results.push(ItemResult {
            name: item.name.clone(),
            kind: item.kind.to_string(),
            size: item.size,
            target: match pg_dbs.get(&item.name) {
                Some(url) => conninfo::redact(url),
                None if item.kind == ItemKind::Postgres => conninfo::redact(&target),
                None => target,
            },
            restore_seconds,
            checks_seconds: tc.elapsed().as_secs_f64(),
        });
    }

    custom_checks(file, &mut ctx, &scratch, &pg_dbs, pg_url.as_deref()).await;

    let rto = t0.elapsed().as_secs_f64();
    let rpo = (Utc::now() - snap.time).num_milliseconds() as f64 / 1000.0;
    let checks_passed = ctx.checks.iter().all(|c| c.passed);
    let budgets_held = max_age.is_none_or(|b| rpo <= b) && max_time.is_none_or(|b| rto <= b);
    if opts.keep {
        let mut kept = vec![format!("directory {}", scratch.work.display())];
        if let Some(pg) = &scratch.postgres {
            kept.push(format!("PostgreSQL {}", pg.url("postgres")));
        }
        for (name, r) in &scratch.redis {
            kept.push(format!("redis {} for {name}", r.url()));
        }
        versions.insert("kept scratch".into(), kept.join("; "));
    }
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
        items: item_results,
        checks: ctx.checks,
        versions,
        checks_passed,
        budgets_held,
    };
    drop(scratch);
    write_reports(file, &report)?;
    Ok(report)
}

async fn schema_objects(item: &Item, url: &str) -> std::result::Result<String, String> {
    let Some(want) = item.facts.get("objects") else {
        return Ok("no object counts recorded".into());
    };
    let mut s = PsqlSession::connect(&PgTools::default(), url).await?;
    let got = s.json(OBJECTS_SQL).await?;
    s.close().await;
    if &got == want {
        Ok(got.to_string())
    } else {
        Err(format!("recorded {want}, restored {got}"))
    }
}

/// Distinct regular files and their bytes, against the volume's `files` and `bytes` facts.
fn volume_facts(item: &Item, root: &Path) -> std::result::Result<String, String> {
    fn walk(d: &Path, seen: &mut HashSet<(u64, u64)>, bytes: &mut u64) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            let md = std::fs::symlink_metadata(e.path())?;
            if md.is_dir() {
                walk(&e.path(), seen, bytes)?;
            } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
                *bytes += md.len();
            }
        }
        Ok(())
    }
    let mut seen = HashSet::new();
    let mut bytes = 0;
    walk(root, &mut seen, &mut bytes).map_err(|e| e.to_string())?;
    let want_files = item
        .facts
        .get("files")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let want_bytes = item
        .facts
        .get("bytes")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if (seen.len() as u64, bytes) == (want_files, want_bytes) {
        Ok(format!("{want_files} files, {want_bytes} bytes"))
    } else {
        Err(format!(
            "recorded {want_files} files / {want_bytes} bytes, restored {} / {bytes}",
            seen.len()
        ))
    }
}

async fn custom_checks(
    file: &DrillFile,
    ctx: &mut Ctx,
    scratch: &Scratch,
    pg_dbs: &HashMap<String, String>,
    pg_url: Option<&str>,
) {
    for c in &file.checks.sql {
        let t = Instant::now();
        let name = c
            .name
            .clone()
            .unwrap_or_else(|| format!("sql: {} {}", c.sql, c.expect));
        let r = match pg_dbs.get(&c.item) {
            None => Err(format!("no restored PostgreSQL item {}", c.item)),
            Some(url) => sql_value(url, &c.sql).await.and_then(|got| {
                if expect_holds(&c.expect, &got) {
                    Ok(format!("got {got}"))
                } else {
                    Err(format!("got {got}, expected {}", c.expect))
                }
            }),
        };
        ctx.check(&c.item, &name, t, r);
    }
    for c in &file.checks.redis {
        let t = Instant::now();
        let name = c
            .name
            .clone()
            .unwrap_or_else(|| format!("redis: {} {}", c.command.join(" "), c.expect));
        let r = match scratch.redis.get(&c.item) {
            None => Err(format!("no restored Redis item {}", c.item)),
            Some(server) => redis_value(server, c.db, &c.command).await.and_then(|got| {
                if expect_holds(&c.expect, &got) {
                    Ok(format!("got {got}"))
                } else {
                    Err(format!("got {got}, expected {}", c.expect))
                }
            }),
        };
        ctx.check(&c.item, &name, t, r);
    }
    for c in &file.checks.shell {
        let t = Instant::now();
        let name = c
            .name
            .clone()
            .unwrap_or_else(|| format!("shell: {}", c.command));
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&c.command)
            .env("LIFEBOAT_DRILL_DIR", &scratch.work)
            .kill_on_drop(true);
        if let Some(u) = pg_url {
            cmd.env("LIFEBOAT_PG_URL", u);
        }
        if let Some(r) = scratch.redis.values().next() {
            cmd.env("LIFEBOAT_REDIS_URL", r.url());
        }
        let r = match cmd.output().await {
            Ok(o) if o.status.success() => Ok("exit 0".to_string()),
            Ok(o) => Err(format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Err(e.to_string()),
        };
        ctx.check("", &name, t, r);
    }
}

async fn sql_value(url: &str, sql: &str) -> std::result::Result<String, String> {
    let mut s = PsqlSession::connect(&PgTools::default(), url).await?;
    let v = s
        .json(&format!(
            "SELECT to_json(x) FROM ({}) AS q(x) LIMIT 1",
            sql.trim().trim_end_matches(';')
        ))
        .await;
    s.close().await;
    let v = v?;
    Ok(match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

async fn redis_value(
    server: &ScratchRedis,
    db: u32,
    command: &[String],
) -> std::result::Result<String, String> {
    let mut c = server.connect_as(None, None).await?;
    c.ok(&[b"SELECT", db.to_string().as_bytes()]).await?;
    let args: Vec<&[u8]> = command.iter().map(|a| a.as_bytes()).collect();
    Ok(match c.ok(&args).await? {
        Reply::Int(i) => i.to_string(),
        Reply::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        Reply::Simple(s) => s,
        other => format!("{other:?}"),
    })
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
        let mut text = report.prometheus();
        // Keep the time of the last success across failing drills.
        if !report.success()
            && let Ok(old) = std::fs::read_to_string(p)
            && let Some(line) = old
                .lines()
                .find(|l| l.starts_with("lifeboat_drill_last_success_timestamp_seconds "))
        {
            text.push_str("# TYPE lifeboat_drill_last_success_timestamp_seconds gauge\n");
            text.push_str(line);
            text.push('\n');
        }
        // Textfile collectors read whole files: write aside, then rename.
        let tmp = p.with_extension("prom.tmp");
        write(&tmp, text)?;
        std::fs::rename(&tmp, p)
            .map_err(|e| Error::io(format!("renaming {}", tmp.display()), e))?;
    }
    Ok(())
}
