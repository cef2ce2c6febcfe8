//! `[sources.NAME]` and ad-hoc `NAME=VALUE` flags: building the sources a run backs up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigFile;
use crate::engines::command::CommandSource;
use crate::engines::postgres::base::BaseBackupSource;
use crate::engines::postgres::{
    DEFAULT_LOCK_TIMEOUT, PgTools, PostgresSource, RowCounts, conninfo, globals_source,
};
use crate::engines::redis::{RedisMode, RedisOptions, RedisSource};
use crate::engines::volume::{Unreadable, VolumeOptions, VolumeSource};
use crate::error::{Error, Result};
use crate::manifest::Snapshot;
use crate::source::Source;
use zeroize::Zeroizing;

/// `[sources.NAME]`: one item of every snapshot.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceConfig {
    Volume {
        path: PathBuf,
        #[serde(default)]
        exclude: Vec<String>,
        #[serde(default = "yes")]
        one_file_system: bool,
        /// A file or directory that cannot be read: `"skip"` (default: left out, named, the
        /// run exits 8 with the snapshot kept) or `"fail"` (the item fails).
        #[serde(default)]
        unreadable: Unreadable,
    },
    Command {
        command: String,
        /// Where `lifeboat-restore run` pipes the stream back by default.
        restore_command: Option<String>,
        format: Option<String>,
    },
    Postgres(PostgresConfig),
    /// `type = "postgres_base"`: a physical base backup of the cluster (point-in-time recovery).
    #[serde(rename = "postgres_base")]
    PostgresBase(PostgresBaseConfig),
    Redis(RedisConfig),
}

/// `type = "postgres_base"`: one item, the whole cluster through `pg_basebackup`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresBaseConfig {
    /// libpq URL of a role with the REPLICATION attribute.
    pub url: String,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// Directory of pg_basebackup and psql.
    pub bin_dir: Option<PathBuf>,
}

impl PostgresBaseConfig {
    /// The base backup source of this entry.
    pub fn source(&self, name: &str) -> Result<BaseBackupSource> {
        let tools = PostgresConfig {
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
            bin_dir: self.bin_dir.clone(),
            ..PostgresConfig::from_url(&self.url)
        }
        .tools()?;
        Ok(BaseBackupSource::new(name, &self.url, tools))
    }

    /// The password configured for this entry (file or variable), if any.
    pub fn password(&self) -> Result<Option<zeroize::Zeroizing<String>>> {
        let tools = PostgresConfig {
            password_file: self.password_file.clone(),
            password_env: self.password_env.clone(),
            ..PostgresConfig::from_url(&self.url)
        }
        .tools()?;
        Ok(tools.password)
    }
}

/// `type = "redis"`: one RDB item.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user[:password]@]host:port`.
    pub url: String,
    /// File holding the password (replaces one in the URL); else `password_env` or `REDISCLI_AUTH`.
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    /// `"replication"` (default: SYNC over the network) or `"bgsave"` (needs `rdb_path`).
    #[serde(default)]
    pub mode: RedisModeConfig,
    /// The server's dump file, for `mode = "bgsave"` (same host).
    pub rdb_path: Option<PathBuf>,
    /// Seconds of silence from the server before giving up (default 60).
    pub timeout_secs: Option<u64>,
}

/// Redis mode in the config file.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RedisModeConfig {
    #[default]
    Replication,
    Bgsave,
}

impl RedisConfig {
    /// A config for an ad-hoc `--redis NAME=URL`.
    pub fn from_url(url: &str) -> Self {
        RedisConfig {
            url: url.to_string(),
            password_file: None,
            password_env: None,
            mode: RedisModeConfig::Replication,
            rdb_path: None,
            timeout_secs: None,
        }
    }

    /// The source for item `name`.
    pub fn source(&self, name: &str) -> Result<RedisSource> {
        let mode = match (self.mode, &self.rdb_path) {
            (RedisModeConfig::Replication, _) => RedisMode::Replication,
            (RedisModeConfig::Bgsave, Some(p)) => RedisMode::Bgsave {
                rdb_path: p.clone(),
            },
            (RedisModeConfig::Bgsave, None) => {
                return Err(Error::Usage(format!(
                    "redis source {name}: mode = \"bgsave\" needs rdb_path"
                )));
            }
        };
        let opts = RedisOptions {
            mode,
            timeout: std::time::Duration::from_secs(self.timeout_secs.unwrap_or(60)),
        };
        let password =
            match read_password(self.password_file.as_deref(), self.password_env.as_deref())? {
                Some(p) => Some(p),
                None => std::env::var("REDISCLI_AUTH")
                    .ok()
                    .filter(|p| !p.is_empty()),
            };
        let mut s = RedisSource::new(name, &self.url, opts)?;
        if let Some(pw) = password {
            s = s.with_password(pw);
        }
        Ok(s)
    }
}

/// `type = "postgres"`: one item per database, plus `NAME.globals` when `globals = true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// libpq connection URL or `key=value` string; sslmode and friends are honoured.
    pub url: String,
    /// File holding the password (else `.pgpass`, `PGPASSWORD`, or `password_env`).
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// `"all"` (every non-template database) or a list; default: the URL's database.
    pub databases: Option<Databases>,
    /// Also back up roles and tablespaces (`pg_dumpall --globals-only`).
    #[serde(default)]
    pub globals: bool,
    /// `"exact"` (count(*), default) or `"estimate"` (planner statistics, for huge databases).
    #[serde(default)]
    pub row_counts: RowCountsConfig,
    /// Directory of the client programs (pg_dump, psql, pg_restore) to use.
    pub bin_dir: Option<PathBuf>,
    /// Default restore target for `lifeboat-restore run` (else `--to-postgres`).
    pub restore_url: Option<String>,
    /// How long the dump waits for a table's lock (`5m`, `30s`; default 5m) before it fails
    /// naming the table, instead of waiting behind a migration forever.
    pub lock_timeout: Option<String>,
}

/// `databases = "all"` or `databases = ["app", ...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Databases {
    List(Vec<String>),
    Word(String),
}

/// Row count mode in the config file.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RowCountsConfig {
    #[default]
    Exact,
    Estimate,
}

impl PostgresConfig {
    /// A config for an ad-hoc `--postgres NAME=URL`.
    pub fn from_url(url: &str) -> Self {
        PostgresConfig {
            url: url.to_string(),
            password_file: None,
            password_env: None,
            databases: None,
            globals: false,
            row_counts: RowCountsConfig::Exact,
            bin_dir: None,
            restore_url: None,
            lock_timeout: None,
        }
    }

    /// Client programs and password.
    pub fn tools(&self) -> Result<PgTools> {
        let password = read_password(self.password_file.as_deref(), self.password_env.as_deref())?
            .map(Zeroizing::new);
        Ok(PgTools {
            bin_dir: self.bin_dir.clone(),
            password,
        })
    }

    /// The sources of this config, named `NAME` (single database from the URL) or `NAME.DB`.
    pub async fn sources(&self, name: &str) -> Result<Vec<Box<dyn Source>>> {
        let tools = self.tools()?;
        let counts = match self.row_counts {
            RowCountsConfig::Exact => RowCounts::Exact,
            RowCountsConfig::Estimate => RowCounts::Estimate,
        };
        let dbs: Vec<(String, String)> = match &self.databases {
            None => {
                let db = conninfo::database(&self.url).ok_or_else(|| {
                    Error::Usage(format!(
                        "postgres source {name}: the URL names no database; add one (…/app) or set databases = [..] or \"all\""
                    ))
                })?;
                vec![(name.to_string(), db)]
            }
            Some(Databases::Word(w)) if w == "all" => {
                item_names(name, tools.list_databases(&self.url).await?, self.globals)
            }
            Some(Databases::Word(w)) => {
                return Err(Error::Usage(format!(
                    "postgres source {name}: databases = {w:?}: use \"all\" or a list"
                )));
            }
            Some(Databases::List(l)) => item_names(name, l.clone(), self.globals),
        };
        let lock_timeout = match &self.lock_timeout {
            Some(t) => crate::retention::parse_duration(t)?.to_std().map_err(|_| {
                Error::Usage(format!(
                    "postgres source {name}: lock_timeout {t:?} must be positive"
                ))
            })?,
            None => DEFAULT_LOCK_TIMEOUT,
        };
        let mut out: Vec<Box<dyn Source>> = Vec::new();
        for (item, db) in dbs {
            let url = conninfo::with_database(&self.url, &db);
            let src = PostgresSource::new(item, url, tools.clone(), counts);
            out.push(Box::new(src.with_lock_timeout(lock_timeout)));
        }
        if self.globals {
            out.push(Box::new(globals_source(
                &format!("{name}.globals"),
                &self.url,
                &tools,
            )));
        }
        Ok(out)
    }

    /// Whether item `item` comes from the source called `name`.
    pub fn owns_item(name: &str, item: &str) -> bool {
        item == name || item.strip_prefix(name).is_some_and(|r| r.starts_with('.'))
    }
}

/// A service password from `password_file` (one trailing newline dropped) or `password_env`.
pub(super) fn read_password(file: Option<&Path>, env: Option<&str>) -> Result<Option<String>> {
    match (file, env) {
        (Some(f), _) => std::fs::read_to_string(f)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| Error::Secret {
                from: format!("password file {}", f.display()),
                detail: e.to_string(),
            }),
        (None, Some(var)) => std::env::var(var).map(Some).map_err(|e| Error::Secret {
            from: format!("environment variable {var}"),
            detail: e.to_string(),
        }),
        (None, None) => Ok(None),
    }
}

/// Item names `SOURCE.DB` for databases, distinct even where sanitising a name loses
/// characters (`a b` and `a_b`, or a database called `globals` beside the globals item): a
/// name that had to be changed and then collides gets a suffix from its hash (stable from run
/// to run, so dedup and retention groups hold).
fn item_names(source: &str, dbs: Vec<String>, globals: bool) -> Vec<(String, String)> {
    let plain: Vec<String> = dbs.iter().map(|db| sanitize(db)).collect();
    let mut taken: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for p in &plain {
        *taken.entry(p.as_str()).or_default() += 1;
    }
    if globals {
        *taken.entry("globals").or_default() += 1;
    }
    dbs.iter()
        .zip(&plain)
        .map(|(db, p)| {
            let lossy_clash = (p != db || p == "globals") && taken[p.as_str()] > 1;
            let suffix = if lossy_clash {
                let h = crate::codec::hmac(b"lifeboat database name", &[db.as_bytes()]);
                format!("{p}-{}", hex::encode(&h[..3]))
            } else {
                p.clone()
            };
            (format!("{source}.{suffix}"), db.clone())
        })
        .collect()
}

/// A database name as an item-name suffix.
fn sanitize(db: &str) -> String {
    db.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn yes() -> bool {
    true
}

impl SourceConfig {
    /// Builds the sources of the config entry `name` (a PostgreSQL entry may yield several).
    pub async fn build(&self, name: &str) -> Result<Vec<Box<dyn Source>>> {
        match self {
            SourceConfig::Postgres(pg) => return pg.sources(name).await,
            SourceConfig::Redis(r) => return Ok(vec![Box::new(r.source(name)?)]),
            SourceConfig::PostgresBase(b) => return Ok(vec![Box::new(b.source(name)?)]),
            _ => {}
        }
        Ok(vec![self.build_one(name)])
    }

    fn build_one(&self, name: &str) -> Box<dyn Source> {
        match self {
            SourceConfig::Volume {
                path,
                exclude,
                one_file_system,
                unreadable,
            } => Box::new(VolumeSource::new(
                name,
                path,
                VolumeOptions {
                    exclude: exclude.clone(),
                    one_file_system: *one_file_system,
                    unreadable: *unreadable,
                },
            )),
            SourceConfig::Command {
                command, format, ..
            } => {
                let mut s = CommandSource::new(name, command);
                if let Some(f) = format {
                    s = s.with_format(f);
                }
                Box::new(s)
            }
            SourceConfig::Postgres(_) | SourceConfig::PostgresBase(_) | SourceConfig::Redis(_) => {
                unreachable!("built by build()")
            }
        }
    }

    /// The restore command, for command sources that have one.
    pub fn restore_command(&self) -> Option<&str> {
        match self {
            SourceConfig::Command {
                restore_command, ..
            } => restore_command.as_deref(),
            SourceConfig::Volume { .. }
            | SourceConfig::Postgres(_)
            | SourceConfig::PostgresBase(_)
            | SourceConfig::Redis(_) => None,
        }
    }
}

/// Splits an ad-hoc `NAME=VALUE` source argument.
pub fn split_named(arg: &str, flag: &str) -> Result<(String, String)> {
    match arg.split_once('=') {
        Some((n, v)) if crate::manifest::validate_item_name(n) && !v.is_empty() => {
            Ok((n.to_string(), v.to_string()))
        }
        _ => Err(Error::Usage(format!(
            "{flag} {arg:?}: expected NAME=VALUE with NAME made of letters, digits, '.', '_' and '-'"
        ))),
    }
}

/// What a restore takes from the config file's sources.
#[derive(Debug, Clone, Default)]
pub struct RestoreDefaults {
    /// `restore_command` by source name.
    pub commands: HashMap<String, String>,
    /// `restore_url` by the snapshot's item names (a source's items are `SOURCE` or
    /// `SOURCE.DB`).
    pub postgres_urls: BTreeMap<String, String>,
    /// Client tools of the first PostgreSQL source (its `bin_dir` and password).
    pub tools: Option<PgTools>,
}

impl ConfigFile {
    /// The restore settings of this file's sources for the items of `snapshot`.
    pub fn restore_defaults(&self, snapshot: &Snapshot) -> Result<RestoreDefaults> {
        let mut d = RestoreDefaults::default();
        for (name, sc) in &self.sources {
            if let Some(c) = sc.restore_command() {
                d.commands.insert(name.clone(), c.to_string());
            }
            let SourceConfig::Postgres(pg) = sc else {
                continue;
            };
            let tools = pg.tools()?;
            d.tools.get_or_insert(tools);
            let Some(url) = &pg.restore_url else {
                continue;
            };
            for item in &snapshot.items {
                if PostgresConfig::owns_item(name, &item.name) {
                    d.postgres_urls.insert(item.name.clone(), url.clone());
                }
            }
        }
        Ok(d)
    }
}

/// Which sources a run backs up: named sources of the config file and ad-hoc `NAME=VALUE`
/// flags. With neither names nor ad-hoc sources, every source of the config file.
#[derive(Debug, Clone, Default)]
pub struct SourceSelection {
    /// `--source NAME`: sources of the config file.
    pub sources: Vec<String>,
    /// `--volume NAME=PATH`.
    pub volumes: Vec<String>,
    /// `--command NAME=CMD`.
    pub commands: Vec<String>,
    /// `--postgres NAME=URL`.
    pub postgres: Vec<String>,
    /// `--redis NAME=URL`.
    pub redis: Vec<String>,
    /// `--pg-base NAME=URL`.
    pub pg_base: Vec<String>,
    /// `--exclude GLOB` for the ad-hoc volumes.
    pub excludes: Vec<String>,
}

impl SourceSelection {
    /// The config's sources this selection takes (ad-hoc sources are not in the config).
    pub fn configured(&self, cfg: &ConfigFile) -> Vec<String> {
        cfg.sources
            .keys()
            .filter(|n| self.sources.contains(n) || (self.sources.is_empty() && !self.adhoc()))
            .cloned()
            .collect()
    }

    fn adhoc(&self) -> bool {
        !self.volumes.is_empty()
            || !self.commands.is_empty()
            || !self.postgres.is_empty()
            || !self.redis.is_empty()
            || !self.pg_base.is_empty()
    }
}

/// Builds the sources a selection names (PostgreSQL sources list their databases first).
pub async fn select_sources(
    config: Option<&ConfigFile>,
    sel: &SourceSelection,
) -> Result<Vec<Box<dyn Source>>> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if let Some(cfg) = config {
        if let Some(name) = sel.sources.iter().find(|n| !cfg.sources.contains_key(*n)) {
            return Err(Error::Usage(format!(
                "no source {name} in the config (it has: {})",
                cfg.sources.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        for name in sel.configured(cfg) {
            sources.extend(cfg.sources[&name].build(&name).await?);
        }
    } else if !sel.sources.is_empty() {
        return Err(Error::Usage("--source needs --config".into()));
    }
    for v in &sel.volumes {
        let (name, path) = split_named(v, "--volume")?;
        let opts = VolumeOptions {
            exclude: sel.excludes.clone(),
            ..Default::default()
        };
        sources.push(Box::new(VolumeSource::new(name, path, opts)));
    }
    for c in &sel.commands {
        let (name, cmd) = split_named(c, "--command")?;
        sources.push(Box::new(CommandSource::new(name, cmd)));
    }
    for r in &sel.redis {
        let (name, url) = split_named(r, "--redis")?;
        sources.push(Box::new(RedisConfig::from_url(&url).source(&name)?));
    }
    for p in &sel.postgres {
        let (name, url) = split_named(p, "--postgres")?;
        sources.extend(PostgresConfig::from_url(&url).sources(&name).await?);
    }
    for p in &sel.pg_base {
        let (name, url) = split_named(p, "--pg-base")?;
        let tools = PostgresConfig::from_url(&url).tools()?;
        sources.push(Box::new(BaseBackupSource::new(name, url, tools)));
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_item_names_are_distinct() {
        let dbs = ["a b", "a_b", "app", "globals", "x/y"]
            .map(String::from)
            .to_vec();
        let names: Vec<String> = item_names("pg", dbs.clone(), true)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        let globals = "pg.globals".to_string();
        let unique: std::collections::HashSet<_> =
            names.iter().chain(std::iter::once(&globals)).collect();
        assert_eq!(unique.len(), names.len() + 1, "{names:?}");
        assert_eq!(names[1], "pg.a_b", "a name that needed no change keeps it");
        assert_eq!(names[2], "pg.app");
        assert_eq!(names[4], "pg.x_y", "no clash, no suffix");
        assert!(names[0].starts_with("pg.a_b-"), "{names:?}");
        assert_eq!(item_names("pg", dbs, true)[0].0, names[0], "stable");
    }

    #[test]
    fn named_args() {
        assert_eq!(
            split_named("db=echo a=b", "--command").unwrap(),
            ("db".into(), "echo a=b".into())
        );
        assert!(split_named("bad name=x", "--command").is_err());
        assert!(split_named("noequals", "--volume").is_err());
    }
}
