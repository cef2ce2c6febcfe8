//! `lifeboat-drill demo`: fixture PostgreSQL, Redis and a volume backed up into a temporary
//! repository, ready to drill. The fixtures are compiled into the binary, so an installed
//! `lifeboat-drill` runs the demo anywhere (no checkout needed).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backup_core::commands::backup::{BackupOptions, backup};
use backup_core::config::{PostgresConfig, RedisConfig, RepositoryConfig};
use backup_core::engines::postgres::base::BaseBackupSource;
use backup_core::engines::postgres::scratch::{ScratchPostgres, server_bin_dir};
use backup_core::engines::redis::scratch::{ScratchRedis, ScratchRedisOptions, seed_fixture};
use backup_core::engines::volume::{VolumeOptions, VolumeSource};
use backup_core::error::{Error, Result};
use backup_core::repository::{CacheOptions, InitOptions, Repository};
use backup_core::scratch::{find_program, temp_dir};
use backup_core::secret::SecretSource;
use backup_core::source::Source;
use backup_core::store::{LocalStore, Store};

use crate::file::{
    Budgets, Checks, DrillFile, PitrDrill, RedisCheck, Reports, ShellCheck, SqlCheck, Targets,
};

/// `fixtures/sample`, the demo's volume (`cache/session.tmp` is excluded by the demo).
const SAMPLE: &[(&str, &[u8])] = &[
    (
        "cache/session.tmp",
        include_bytes!("../../fixtures/sample/cache/session.tmp"),
    ),
    (
        "current.conf",
        include_bytes!("../../fixtures/sample/current.conf"),
    ),
    (
        "etc/app.conf",
        include_bytes!("../../fixtures/sample/etc/app.conf"),
    ),
    (
        "uploads/2026/report.csv",
        include_bytes!("../../fixtures/sample/uploads/2026/report.csv"),
    ),
    (
        "uploads/README.txt",
        include_bytes!("../../fixtures/sample/uploads/README.txt"),
    ),
];

/// `fixtures/postgres/schema.sql`, the demo's database.
const SCHEMA_SQL: &str = include_str!("../../fixtures/postgres/schema.sql");

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Writes the sample volume under `dir` and returns its path.
fn write_fixtures(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("sample");
    for (rel, bytes) in SAMPLE {
        let p = root.join(rel);
        let parent = p.parent().expect("fixture paths have a parent");
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        write(&p, bytes)?;
    }
    Ok(root)
}

/// The demo's sources, repository and drill file; removed on drop.
pub struct Demo {
    pub file: DrillFile,
    dir: PathBuf,
    _pg: Option<ScratchPostgres>,
    _redis: Option<ScratchRedis>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn setup() -> Result<Demo> {
    let dir = temp_dir("lifeboat-demo")?;
    let sample = write_fixtures(&dir)?;
    let pw = dir.join("password");
    write(&pw, b"demo passphrase\n")?;
    let repo_path = dir.join("repo");
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(&repo_path));
    let secret = SecretSource::PasswordFile(pw.clone()).resolve()?;
    let repo = Repository::init(
        store,
        &secret,
        InitOptions {
            cache: CacheOptions {
                disabled: true,
                dir: None,
            },
            ..Default::default()
        },
    )
    .await?;

    let mut sources: Vec<Box<dyn Source>> = vec![Box::new(VolumeSource::new(
        "sample",
        sample,
        VolumeOptions {
            exclude: vec!["*.tmp".into()],
            ..Default::default()
        },
    ))];
    let mut checks = Checks {
        shell: vec![ShellCheck {
            command: "test -s \"$LIFEBOAT_DRILL_DIR/restored/sample/etc/app.conf\"".into(),
            name: Some("restored config file is there".into()),
        }],
        ..Default::default()
    };
    let pg = demo_postgres(&mut sources, &mut checks).await?;
    let redis = demo_redis(&mut sources, &mut checks).await?;
    eprintln!("demo: backing up into {}", repo_path.display());
    backup(&repo, sources, &BackupOptions::default()).await?;
    let file = DrillFile {
        repository: Some(RepositoryConfig {
            url: repo_path.display().to_string(),
            password_file: Some(pw),
            password_env: None,
            password_command: None,
            key_file: None,
            cache_dir: None,
            s3: Default::default(),
        }),
        config: None,
        snapshot: "latest".into(),
        items: Vec::new(),
        host: None,
        tags: Vec::new(),
        budgets: Budgets {
            max_snapshot_age: Some("1h".into()),
            max_restore_time: Some("15m".into()),
        },
        targets: Targets::default(),
        checks,
        // The cluster's base backup restored to its end into a scratch cluster of its own,
        // started, and queried (no WAL archive in the demo: the base backup carries the WAL
        // it needs).
        pitr: pg
            .as_ref()
            .map(|_| PitrDrill {
                item: "cluster".into(),
                target: Some("immediate".into()),
                timeline: None,
                marker_url: None,
                marker_table: "lifeboat_drill_marker".into(),
                marker_timeout: None,
                max_rpo: None,
                max_rto: Some("5m".into()),
            })
            .into_iter()
            .collect(),
        hooks: Default::default(),
        monitor: Default::default(),
        reports: Reports::default(),
    };
    eprintln!("demo: drilling the snapshot\n");
    Ok(Demo {
        file,
        dir,
        _pg: pg,
        _redis: redis,
    })
}

/// A scratch PostgreSQL with the fixture schema, its source and a check (none without
/// PostgreSQL installed).
async fn demo_postgres(
    sources: &mut Vec<Box<dyn Source>>,
    checks: &mut Checks,
) -> Result<Option<ScratchPostgres>> {
    if server_bin_dir().is_none() {
        eprintln!(
            "demo: PostgreSQL server binaries not found (install postgresql); the drill runs without a database"
        );
        return Ok(None);
    }
    eprintln!("demo: starting a scratch PostgreSQL with fixtures/postgres/schema.sql");
    let pg = tokio::task::spawn_blocking(ScratchPostgres::start)
        .await
        .map_err(|e| Error::io("starting PostgreSQL", std::io::Error::other(e)))??;
    pg.psql("postgres", "CREATE DATABASE app")?;
    pg.psql("app", SCHEMA_SQL)?;
    sources.extend(
        PostgresConfig::from_url(&pg.url("app"))
            .sources("app")
            .await?,
    );
    // The whole cluster as a physical base backup too (what point-in-time recovery starts
    // from); the drill unpacks and checks it.
    let tools = PostgresConfig::from_url(&pg.url("postgres")).tools()?;
    sources.push(Box::new(BaseBackupSource::new(
        "cluster",
        pg.url("postgres"),
        tools,
    )));
    checks.sql.push(SqlCheck {
        item: "app".into(),
        database: None,
        sql: "select count(*) from sales.orders where amount > 0".into(),
        expect: "> 0".into(),
        name: Some("orders with an amount exist".into()),
    });
    checks.sql.push(SqlCheck {
        item: "cluster".into(),
        database: Some("app".into()),
        sql: "select count(*) from sales.orders where amount > 0".into(),
        expect: "> 0".into(),
        name: Some("the restored cluster has the orders".into()),
    });
    Ok(Some(pg))
}

/// A scratch redis-server with the fixture data set, its source and a check (none without
/// redis-server installed).
async fn demo_redis(
    sources: &mut Vec<Box<dyn Source>>,
    checks: &mut Checks,
) -> Result<Option<ScratchRedis>> {
    if find_program("redis-server", &[]).is_none() {
        eprintln!(
            "demo: redis-server not found (install redis-server); the drill runs without Redis"
        );
        return Ok(None);
    }
    eprintln!("demo: starting a scratch redis-server with the fixture data set");
    let r = ScratchRedis::start(ScratchRedisOptions::default()).await?;
    let seeded = match r.connect_as(None, None).await {
        Ok(mut c) => seed_fixture(&mut c).await,
        Err(e) => Err(e),
    };
    seeded.map_err(|e| Error::io("seeding redis", std::io::Error::other(e)))?;
    sources.push(Box::new(RedisConfig::from_url(&r.url()).source("cache")?));
    checks.redis.push(RedisCheck {
        item: "cache".into(),
        command: vec!["HGET".into(), "db5:cfg".into(), "mode".into()],
        expect: "blue".into(),
        db: 5,
        name: Some("db 5 config hash restored".into()),
    });
    Ok(Some(r))
}
