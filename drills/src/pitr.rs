//! Point-in-time drills: marker rows in the live primary, a restore of a base backup item to
//! a moment into a scratch cluster the drill starts, recovery followed to its end, and the
//! proof — the marker committed before the target is there, the one after it is not — with
//! the RPO the archive gave and the RTO the restore took.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backup_core::config::RepositoryConfig;
use backup_core::engines::postgres::base::base_backups;
use backup_core::engines::postgres::pitr::{self, PitrOptions, RecoveryTarget};
use backup_core::engines::postgres::recovery::{self, RecoveryReport, StartOptions};
use backup_core::engines::postgres::scratch::{ScratchPostgres, give_to_postgres};
use backup_core::engines::postgres::session::PsqlSession;
use backup_core::engines::postgres::wal::{Archive, ClusterId, WalName};
use backup_core::engines::postgres::{PgTools, conninfo};
use backup_core::error::{Error, Result};
use backup_core::repository::{Repository, SnapshotFilter};
use backup_core::retention::parse_duration;
use backup_core::secret::{Secret, SecretSource};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::file::PitrDrill;
use crate::report::PitrResult;
use crate::run::Drill;

/// The two markers the drill committed, and the moment between them.
#[derive(Debug, Clone, Serialize)]
pub struct Markers {
    pub before: String,
    pub after: String,
    pub between: DateTime<Utc>,
    /// The database they are in.
    pub database: String,
}

fn seconds(s: &Option<String>) -> Result<Option<f64>> {
    Ok(match s {
        Some(s) => Some(parse_duration(s)?.num_milliseconds() as f64 / 1000.0),
        None => None,
    })
}

impl Drill<'_> {
    /// One `[[pitr]]` entry: every step is a check in the report; the result goes to
    /// `pitr_results`.
    pub(crate) async fn pitr(&mut self, cfg: &PitrDrill) {
        let t0 = Instant::now();
        let mut result = PitrResult {
            item: cfg.item.clone(),
            target: String::new(),
            timeline: None,
            base_snapshot: None,
            replay_segments: 0,
            rpo_seconds: archive_lag(self.repo, &cfg.item).await,
            restore_seconds: 0.0,
            replay_seconds: 0.0,
            rto_seconds: 0.0,
            recovery: None,
            markers: None,
            // Parsed before the drill started (`validate`).
            max_rpo_seconds: seconds(&cfg.max_rpo).unwrap_or(None),
            max_rto_seconds: seconds(&cfg.max_rto).unwrap_or(None),
        };
        let outcome = self.pitr_steps(cfg, &mut result).await;
        if let Err(e) = outcome {
            self.ctx
                .check(&cfg.item, "point-in-time restore", t0, Err(e.to_string()));
        }
        result.rto_seconds = result.restore_seconds + result.replay_seconds;
        self.pitr_results.push(result);
    }

    async fn pitr_steps(&mut self, cfg: &PitrDrill, result: &mut PitrResult) -> Result<()> {
        let item = cfg.item.as_str();
        let target = match &cfg.marker_url {
            Some(url) => {
                let t = Instant::now();
                let m = write_markers(self.repo, url, cfg).await?;
                self.ctx.check(
                    item,
                    "markers committed in the primary and their WAL archived",
                    t,
                    Ok(format!("{} and {} in {}", m.before, m.after, m.database)),
                );
                let target = RecoveryTarget::Time(m.between);
                result.markers = Some(m);
                target
            }
            None => parse_target(cfg.target.as_deref())?,
        };
        result.target = target.to_string();
        let dir = self.scratch.work.join(format!("pitr-{item}"));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let restore_cfg = write_restore_config(&self.repo_config, self.secret.as_ref(), &dir)?;
        let opts = PitrOptions {
            item: item.to_string(),
            filter: SnapshotFilter {
                host: self.host.clone(),
                tags: self.file.tags.clone(),
                items: Vec::new(),
            },
            pgdata: dir.join("data"),
            target,
            timeline: cfg.timeline.as_deref().unwrap_or("latest").parse()?,
            force: false,
            restore_command: restore_command(&dir, &restore_cfg)?,
            keep_archiving: false,
        };
        let t = Instant::now();
        let plan = pitr::plan(self.repo, &opts).await?;
        result.timeline = Some(plan.timeline);
        result.base_snapshot = Some(plan.snapshot.to_string());
        result.replay_segments = plan.replay_segments;
        self.ctx.check(
            item,
            "a base backup and the WAL after it reach the target",
            t,
            Ok(format!(
                "base backup of snapshot {}, timeline {} ({}), {} segments to replay",
                plan.snapshot.short(),
                plan.timeline,
                plan.path,
                plan.replay_segments
            )),
        );
        let applied = pitr::apply(self.repo, &plan, false).await?;
        result.restore_seconds = t.elapsed().as_secs_f64();
        self.ctx.check(
            item,
            "base backup unpacked, every chunk verified",
            t,
            Ok(format!("{} bytes", applied.bytes)),
        );
        give_to_postgres(&dir)?;
        let port = backup_core::scratch::free_port()?;
        let start = StartOptions {
            pgdata: dir.join("data"),
            bin_dir: None,
            port,
            listen: Some("127.0.0.1".into()),
            socket_dir: Some(dir.clone()),
            timeout: Some(Duration::from_secs_f64(
                result.max_rto_seconds.unwrap_or(3600.0) * 2.0 + 60.0,
            )),
        };
        let t = Instant::now();
        let rec = tokio::task::spawn_blocking(move || recovery::start_and_wait(&start, &|_| {}))
            .await
            .map_err(|e| Error::io("following recovery", std::io::Error::other(e)))??;
        result.replay_seconds = rec.seconds;
        self.ctx.check(
            item,
            "recovery reached the target and the server was promoted",
            t,
            Ok(summary(&rec)),
        );
        result.recovery = Some(rec);
        let server = ScratchPostgres::attach(&dir, port)?;
        let db = result
            .markers
            .as_ref()
            .map_or("postgres", |m| m.database.as_str());
        let url = conninfo::with_database(&server.url("postgres"), db);
        self.pg_dbs.insert(item.to_string(), url.clone());
        self.scratch.clusters.push(server);
        if let Some(m) = &result.markers {
            self.check_markers(item, &url, &cfg.marker_table, m).await;
        }
        Ok(())
    }

    async fn check_markers(&mut self, item: &str, url: &str, table: &str, m: &Markers) {
        let count = |id: &str| {
            format!(
                "SELECT count(*) FROM {} WHERE id = '{id}'",
                quote_ident(table)
            )
        };
        for (id, want, name) in [
            (
                &m.before,
                "1",
                "the marker committed before the target is there",
            ),
            (
                &m.after,
                "0",
                "the marker committed after the target is not",
            ),
        ] {
            let t = Instant::now();
            let got = backup_core::engines::postgres::drill::query_value(url, &count(id)).await;
            let r = got.and_then(|g| {
                if g == want {
                    Ok(format!("{id}: {g} row"))
                } else {
                    Err(format!("{id}: {g} rows, expected {want}"))
                }
            });
            self.ctx.check(item, name, t, r);
        }
    }
}

fn summary(r: &RecoveryReport) -> String {
    let mut s = format!("{:.1} s", r.seconds);
    if let Some(stop) = &r.stopped {
        s.push_str(&format!("; {stop}"));
    }
    if let Some(l) = &r.redo_done_at {
        s.push_str(&format!("; replayed to {l}"));
    }
    if let Some(t) = &r.last_transaction {
        s.push_str(&format!("; last transaction {t}"));
    }
    if let Some(t) = r.new_timeline {
        s.push_str(&format!("; promoted on timeline {t}"));
    }
    s
}

fn parse_target(t: Option<&str>) -> Result<RecoveryTarget> {
    Ok(match t.unwrap_or("latest") {
        "latest" => RecoveryTarget::Latest,
        "immediate" => RecoveryTarget::Immediate,
        time => RecoveryTarget::Time(
            DateTime::parse_from_rfc3339(time)
                .map_err(|e| {
                    Error::Usage(format!(
                        "[[pitr]] target {time:?}: {e} (latest, immediate or an RFC 3339 time)"
                    ))
                })?
                .to_utc(),
        ),
    })
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// How old the newest archived WAL of the item's cluster is: what a primary lost now would
/// cost (none: no base backup or no WAL to tell).
async fn archive_lag(repo: &Repository, item: &str) -> Option<f64> {
    let snapshots = repo.snapshots().await.ok()?;
    let bases = base_backups(&snapshots);
    let cluster = bases.iter().rev().find(|b| b.item.name == item)?.cluster?;
    let mut archive = Archive::list(repo).await.ok()?;
    archive.attribute(&bases);
    let newest = archive
        .files(cluster)
        .iter()
        .filter(|f| f.name.has_wal_pages())
        .filter_map(|f| f.meta.modified)
        .max()?;
    Some((Utc::now() - newest).num_milliseconds() as f64 / 1000.0)
}

/// Commits the `before` marker, notes the time, commits `after`, switches WAL and waits for
/// the archive to hold the segment with both (pgBackRest's `check` does the same).
async fn write_markers(repo: &Repository, url: &str, cfg: &PitrDrill) -> Result<Markers> {
    let fail = |detail: String| Error::SourceFailed {
        item: format!("markers in {}", conninfo::redact(url)),
        detail,
    };
    let mut s = PsqlSession::connect(&PgTools::default(), url)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let table = quote_ident(&cfg.marker_table);
    let id = Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let (before, after) = (format!("before-{id}"), format!("after-{id}"));
    let steps = async {
        s.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ))
        .await?;
        s.exec(&format!("INSERT INTO {table} (id) VALUES ('{before}')"))
            .await?;
        let between = s.json("SELECT to_json(clock_timestamp())").await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        s.exec(&format!("INSERT INTO {table} (id) VALUES ('{after}')"))
            .await?;
        let facts = s
            .json(
                "SELECT json_build_object('segment', pg_walfile_name(pg_switch_wal()), \
                 'sysid', (SELECT system_identifier::text FROM pg_control_system()), \
                 'db', current_database())",
            )
            .await?;
        Ok::<_, backup_core::engines::postgres::session::SessionError>((between, facts))
    };
    let (between, facts) = steps.await.map_err(|e| fail(e.to_string()))?;
    s.close().await;
    let between =
        serde_json::from_value::<DateTime<Utc>>(between).map_err(|e| fail(e.to_string()))?;
    let segment = WalName::parse(facts["segment"].as_str().unwrap_or_default())?;
    let cluster = ClusterId::parse(facts["sysid"].as_str().unwrap_or_default())?;
    let timeout = parse_duration(cfg.marker_timeout.as_deref().unwrap_or("5m"))?
        .to_std()
        .unwrap_or_default();
    wait_archived(repo, cluster, &segment, timeout).await?;
    Ok(Markers {
        before,
        after,
        between,
        database: facts["db"].as_str().unwrap_or("postgres").to_string(),
    })
}

async fn wait_archived(
    repo: &Repository,
    cluster: ClusterId,
    segment: &WalName,
    timeout: Duration,
) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let archive = Archive::list(repo).await?;
        let all = archive.files(cluster).iter().chain(&archive.unattributed);
        // Whole: pieces `wal stream` wrote of the segment may not hold the markers yet (it
        // writes the whole segment once it has the end).
        if all
            .filter(|f| f.streamed_to.is_none())
            .any(|f| &f.name == segment)
        {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            return Err(Error::Usage(format!(
                "segment {segment} with the drill's markers did not reach {} within {}s: is archive_command `lifeboat-backup wal push %p` working? (`lifeboat-backup wal status --pg-wal …` shows the backlog)",
                repo.location(),
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The scratch cluster's user runs `restore_command`: it gets a config of its own, with the
/// drill's repository and copies of the secrets it needs, in the drill's scratch directory
/// (removed with it).
fn write_restore_config(
    cfg: &RepositoryConfig,
    secret: Option<&SecretSource>,
    dir: &Path,
) -> Result<PathBuf> {
    let mut rc = cfg.clone();
    rc.password_file = None;
    rc.password_env = None;
    rc.password_command = None;
    rc.key_file = None;
    rc.cache_dir = None;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
        std::io::Write::write_all(&mut f, bytes)
            .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
        Ok(p)
    };
    match secret.map(SecretSource::resolve).transpose()? {
        Some(Secret::Passphrase(p)) => rc.password_file = Some(write("secret", &p)?),
        Some(Secret::KeyFile(k)) => rc.key_file = Some(write("secret", &k)?),
        None => {}
    }
    if let Some(f) = &rc.s3.secret_access_key_file {
        let bytes =
            std::fs::read(f).map_err(|e| Error::io(format!("reading {}", f.display()), e))?;
        rc.s3.secret_access_key_file = Some(write("s3-secret", &bytes)?);
    }
    #[derive(Serialize)]
    struct RestoreConfig<'a> {
        repository: &'a RepositoryConfig,
    }
    let text = toml::to_string(&RestoreConfig { repository: &rc })
        .map_err(|e| Error::Usage(format!("writing the restore config: {e}")))?;
    write("restore.toml", text.as_bytes())
}

/// `lifeboat-drill wal-fetch …`: this binary serves the scratch cluster's restore_command,
/// from a copy in the scratch directory: the cluster's user may not reach where the drill is
/// installed (root's `~/.cargo/bin` is private).
fn restore_command(dir: &Path, config: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().map_err(|e| Error::io("locating lifeboat-drill", e))?;
    let copy = dir.join("lifeboat-drill");
    std::fs::copy(&exe, &copy).map_err(|e| Error::io(format!("copying {}", exe.display()), e))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| Error::io(format!("chmod {}", copy.display()), e))?;
    Ok(format!(
        "{} wal-fetch --config {} --quiet --no-cache --cluster {{cluster}} %f %p",
        copy.display(),
        config.display()
    ))
}

/// Refuses, before anything runs, a `[[pitr]]` entry whose budgets or target do not parse.
pub(crate) fn validate(entries: &[PitrDrill]) -> Result<()> {
    for p in entries {
        seconds(&p.max_rpo)?;
        seconds(&p.max_rto)?;
        if p.marker_url.is_none() {
            parse_target(p.target.as_deref())?;
        } else if p.target.is_some() {
            return Err(Error::Usage(format!(
                "[[pitr]] {}: give target or marker_url, not both (with markers the target is the moment between them)",
                p.item
            )));
        }
        if let Some(t) = &p.timeline {
            t.parse::<backup_core::engines::postgres::pitr::TimelineTarget>()?;
        }
    }
    Ok(())
}
