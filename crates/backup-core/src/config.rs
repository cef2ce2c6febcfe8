//! The TOML configuration file and the repository selection shared by all binaries.
//!
//! Precedence for repository and key: command-line flags, then the environment
//! (`LIFEBOAT_REPOSITORY`, `LIFEBOAT_PASSWORD_FILE`, `LIFEBOAT_PASSWORD_COMMAND`,
//! `LIFEBOAT_KEY_FILE`, `LIFEBOAT_PASSWORD`), then the config file. `${VAR}` in any string of
//! the config file is replaced by the environment variable (an unset variable is an error).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::commands::gc::GcOptions;
use crate::engines::command::CommandSource;
use crate::engines::postgres::{PgTools, PostgresSource, RowCounts, conninfo, globals_source};
use crate::engines::redis::{RedisMode, RedisOptions, RedisSource};
use crate::engines::volume::{VolumeOptions, VolumeSource};
use crate::error::{Error, Result};
use crate::repository::{CacheOptions, Repository};
use crate::retention::{GroupBy, RetentionPolicy, parse_duration};
use crate::secret::SecretSource;
use crate::source::Source;
use crate::store::s3::ObjectLock;
use crate::store::{LocalStore, S3Options, S3Store, Store};
use zeroize::Zeroizing;

/// A whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub repository: RepositoryConfig,
    #[serde(default)]
    pub backup: BackupConfig,
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Applied by `run` after a fully successful backup, and by `forget`/`prune`.
    pub retention: Option<RetentionConfig>,
}

/// `[retention]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub keep_last: Option<u32>,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub keep_yearly: Option<u32>,
    /// `30d`, `48h`…
    pub keep_within: Option<String>,
    #[serde(default)]
    pub keep_tags: Vec<String>,
    /// Any of `host`, `sources`, `tags` (default host and sources).
    pub group_by: Option<Vec<String>>,
    /// Fixed offset for calendar buckets, e.g. `+02:00` (default UTC).
    pub timezone: Option<String>,
    /// Collect garbage after forgetting (default true).
    pub prune: Option<bool>,
    /// Grace period of unreferenced chunks (default 24h).
    pub grace: Option<String>,
    /// Percent of pack bytes GC may leave unreferenced before it rewrites the emptiest packs
    /// (default 10; 100 never repacks).
    pub max_unused: Option<u8>,
    /// Markers (of backups and GCs) not refreshed for this long belong to dead processes and
    /// are ignored (default 1h): after a killed run, prune defers until then.
    #[serde(default)]
    pub stale_after: Option<String>,
}

impl RetentionConfig {
    /// The policy these settings describe.
    pub fn policy(&self) -> Result<RetentionPolicy> {
        let group_by = match &self.group_by {
            None => GroupBy::default(),
            Some(list) => {
                let mut g = GroupBy {
                    host: false,
                    sources: false,
                    tags: false,
                };
                for k in list {
                    match k.as_str() {
                        "host" => g.host = true,
                        "sources" => g.sources = true,
                        "tags" => g.tags = true,
                        other => {
                            return Err(Error::Usage(format!(
                                "group_by: unknown key {other:?} (host, sources, tags)"
                            )));
                        }
                    }
                }
                g
            }
        };
        let timezone = match &self.timezone {
            None => None,
            Some(tz) => Some(tz.parse::<chrono::FixedOffset>().map_err(|_| {
                Error::Usage(format!(
                    "timezone {tz:?}: use a fixed offset such as +02:00"
                ))
            })?),
        };
        Ok(RetentionPolicy {
            keep_last: self.keep_last,
            keep_hourly: self.keep_hourly,
            keep_daily: self.keep_daily,
            keep_weekly: self.keep_weekly,
            keep_monthly: self.keep_monthly,
            keep_yearly: self.keep_yearly,
            keep_within: self
                .keep_within
                .as_deref()
                .map(parse_duration)
                .transpose()?,
            keep_tags: self.keep_tags.clone(),
            group_by,
            timezone,
        })
    }

    /// GC options from `grace` and `max_unused`.
    pub fn gc_options(&self) -> Result<GcOptions> {
        let mut o = GcOptions::default();
        if let Some(g) = &self.grace {
            o.grace = parse_duration(g)?.to_std().unwrap_or_default();
        }
        if let Some(s) = &self.stale_after {
            o.stale_after = parse_duration(s)?.to_std().unwrap_or_default();
            if o.stale_after < std::time::Duration::from_secs(60) {
                return Err(Error::Usage(format!(
                    "stale_after {s}: at least 1m (live processes refresh their markers every minute)"
                )));
            }
        }
        if let Some(p) = self.max_unused {
            if p > 100 {
                return Err(Error::Usage(format!(
                    "max_unused {p}: a percentage from 0 to 100"
                )));
            }
            o.max_unused = f64::from(p) / 100.0;
        }
        Ok(o)
    }
}

/// `[repository]`: where, and how to unlock it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    /// A directory path (`s3://bucket/prefix` comes with the S3 store).
    pub url: String,
    pub password_file: Option<PathBuf>,
    /// Name of an environment variable holding the passphrase.
    pub password_env: Option<String>,
    pub password_command: Option<String>,
    pub key_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    /// Settings for `s3://` repositories.
    #[serde(default)]
    pub s3: S3Config,
}

/// `[repository.s3]`: the standard AWS environment works too (`AWS_ENDPOINT_URL`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, profiles, instance roles).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub storage_class: Option<String>,
    pub access_key_id: Option<String>,
    /// File holding the secret access key.
    pub secret_access_key_file: Option<PathBuf>,
    /// Attempts per request, retries included (default 8).
    pub max_attempts: Option<u32>,
    /// Sign uploaded bodies with SigV4 (default false: objects are sealed with AES-GCM, and
    /// signing costs a SHA-256 pass over every byte uploaded).
    pub sign_payload: Option<bool>,
    /// `{ mode = "governance" | "compliance", days = N }`.
    pub object_lock: Option<ObjectLockConfig>,
}

/// Object Lock settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLockConfig {
    pub mode: String,
    pub days: u32,
}

/// `[backup]`: run settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    pub host: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub compression_level: Option<i32>,
    pub concurrency: Option<usize>,
}

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
    },
    Command {
        command: String,
        /// Where `lifeboat-restore run` pipes the stream back by default.
        restore_command: Option<String>,
        format: Option<String>,
    },
    Postgres(PostgresConfig),
    Redis(RedisConfig),
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
            Some(Databases::Word(w)) if w == "all" => tools
                .list_databases(&self.url)
                .await?
                .into_iter()
                .map(|db| (format!("{name}.{}", sanitize(&db)), db))
                .collect(),
            Some(Databases::Word(w)) => {
                return Err(Error::Usage(format!(
                    "postgres source {name}: databases = {w:?}: use \"all\" or a list"
                )));
            }
            Some(Databases::List(l)) => l
                .iter()
                .map(|db| (format!("{name}.{}", sanitize(db)), db.clone()))
                .collect(),
        };
        let mut out: Vec<Box<dyn Source>> = Vec::new();
        for (item, db) in dbs {
            let url = conninfo::with_database(&self.url, &db);
            out.push(Box::new(PostgresSource::new(
                item,
                url,
                tools.clone(),
                counts,
            )));
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
fn read_password(file: Option<&Path>, env: Option<&str>) -> Result<Option<String>> {
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
            } => Box::new(VolumeSource::new(
                name,
                path,
                VolumeOptions {
                    exclude: exclude.clone(),
                    one_file_system: *one_file_system,
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
            SourceConfig::Postgres(_) | SourceConfig::Redis(_) => unreachable!("built by build()"),
        }
    }

    /// The restore command, for command sources that have one.
    pub fn restore_command(&self) -> Option<&str> {
        match self {
            SourceConfig::Command {
                restore_command, ..
            } => restore_command.as_deref(),
            SourceConfig::Volume { .. } | SourceConfig::Postgres(_) | SourceConfig::Redis(_) => {
                None
            }
        }
    }
}

impl ConfigFile {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        let err = |detail: String| Error::Config {
            path: path.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut value: toml::Value = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        expand_env(&mut value).map_err(err)?;
        let cfg: ConfigFile = value
            .try_into()
            .map_err(|e: toml::de::Error| err(e.to_string()))?;
        for name in cfg.sources.keys() {
            if !crate::manifest::validate_item_name(name) {
                return Err(err(format!(
                    "source name {name:?} is not allowed: use letters, digits, '.', '_' and '-'"
                )));
            }
        }
        Ok(cfg)
    }
}

fn expand_env(v: &mut toml::Value) -> std::result::Result<(), String> {
    match v {
        toml::Value::String(s) => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                out.push_str(&rest[..i]);
                let end = rest[i..]
                    .find('}')
                    .ok_or_else(|| format!("unclosed ${{ in {s:?}"))?
                    + i;
                let var = &rest[i + 2..end];
                out.push_str(
                    &std::env::var(var)
                        .map_err(|_| format!("environment variable {var} is not set"))?,
                );
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            *s = out;
        }
        toml::Value::Array(a) => a.iter_mut().try_for_each(expand_env)?,
        toml::Value::Table(t) => t.iter_mut().try_for_each(|(_, v)| expand_env(v))?,
        _ => {}
    }
    Ok(())
}

/// Repository selection as given on a command line (every field optional).
#[derive(Debug, Clone, Default)]
pub struct RepoArgs {
    pub repo: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub key_file: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    pub no_cache: bool,
}

/// A repository selection with flags, environment and config merged.
#[derive(Debug, Clone)]
pub struct ResolvedRepo {
    pub url: String,
    pub secret: Option<SecretSource>,
    pub cache: CacheOptions,
    pub s3: S3Config,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl RepoArgs {
    /// Merges flags, environment and config file.
    pub fn resolve(&self, cfg: Option<&ConfigFile>) -> Result<ResolvedRepo> {
        let rc = cfg.map(|c| &c.repository);
        let url = self
            .repo
            .clone()
            .or_else(|| env("LIFEBOAT_REPOSITORY"))
            .or_else(|| rc.map(|r| r.url.clone()))
            .ok_or_else(|| {
                Error::Usage(
                    "no repository given: use --repo, LIFEBOAT_REPOSITORY or --config".into(),
                )
            })?;
        let flag = self
            .password_file
            .clone()
            .map(SecretSource::PasswordFile)
            .or_else(|| {
                self.password_command
                    .clone()
                    .map(SecretSource::PasswordCommand)
            })
            .or_else(|| self.key_file.clone().map(SecretSource::KeyFile));
        let from_env = || {
            env("LIFEBOAT_PASSWORD_FILE")
                .map(|p| SecretSource::PasswordFile(p.into()))
                .or_else(|| env("LIFEBOAT_PASSWORD_COMMAND").map(SecretSource::PasswordCommand))
                .or_else(|| env("LIFEBOAT_KEY_FILE").map(|p| SecretSource::KeyFile(p.into())))
                .or_else(|| {
                    env("LIFEBOAT_PASSWORD")
                        .map(|_| SecretSource::PasswordEnv("LIFEBOAT_PASSWORD".into()))
                })
        };
        let from_cfg = || {
            rc.and_then(|r| {
                r.password_file
                    .clone()
                    .map(SecretSource::PasswordFile)
                    .or_else(|| r.password_env.clone().map(SecretSource::PasswordEnv))
                    .or_else(|| {
                        r.password_command
                            .clone()
                            .map(SecretSource::PasswordCommand)
                    })
                    .or_else(|| r.key_file.clone().map(SecretSource::KeyFile))
            })
        };
        let secret = flag.or_else(from_env).or_else(from_cfg);
        let cache = CacheOptions {
            dir: self
                .cache_dir
                .clone()
                .or_else(|| rc.and_then(|r| r.cache_dir.clone())),
            disabled: self.no_cache,
        };
        let s3 = rc.map(|r| r.s3.clone()).unwrap_or_default();
        Ok(ResolvedRepo {
            url,
            secret,
            cache,
            s3,
        })
    }
}

impl ResolvedRepo {
    /// The secret source, or a clear error when none was given.
    pub fn secret_source(&self) -> Result<&SecretSource> {
        self.secret.as_ref().ok_or_else(|| Error::NoSecret {
            detail: format!("no passphrase or key file configured for {}", self.url),
        })
    }

    /// Opens the store.
    pub async fn store(&self) -> Result<Arc<dyn Store>> {
        open_store(&self.url, &self.s3).await
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Repository> {
        let secret = self.secret_source()?.resolve()?;
        Repository::open(self.store().await?, &secret, self.cache.clone()).await
    }

    /// Where the run lock of this repository lives on this host.
    pub fn lock_path(&self) -> PathBuf {
        let root = self
            .cache
            .root()
            .unwrap_or_else(|| std::env::temp_dir().join("lifeboat"));
        let tag = hex::encode(&crate::codec::hmac(b"lifeboat lock", &[self.url.as_bytes()])[..8]);
        root.join("locks").join(format!("{tag}.lock"))
    }
}

/// Opens the store a repository URL names: a directory, or `s3://bucket/prefix`.
pub async fn open_store(url: &str, s3: &S3Config) -> Result<Arc<dyn Store>> {
    if url.starts_with("s3://") {
        let mut o = S3Options::from_url(url)?;
        o.endpoint = s3
            .endpoint
            .clone()
            .or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
        o.region = s3.region.clone();
        o.path_style = s3.path_style.unwrap_or(o.path_style);
        o.storage_class = s3.storage_class.clone();
        if let Some(id) = &s3.access_key_id {
            o.access_key_id = Some(id.clone());
            o.secret_access_key = read_password(s3.secret_access_key_file.as_deref(), None)?;
        }
        if let Some(n) = s3.max_attempts {
            o.max_attempts = n;
        }
        o.sign_payload = s3.sign_payload.unwrap_or(false);
        if let Some(l) = &s3.object_lock {
            let compliance = match l.mode.to_ascii_lowercase().as_str() {
                "compliance" => true,
                "governance" => false,
                other => {
                    return Err(Error::Usage(format!(
                        "object_lock mode {other:?}: use \"governance\" or \"compliance\""
                    )));
                }
            };
            o.object_lock = Some(ObjectLock {
                compliance,
                days: l.days,
            });
        }
        return Ok(Arc::new(S3Store::new(o).await?));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(Error::Usage(format!(
            "repository {url}: {scheme}:// is not supported; use a directory path or s3://bucket/prefix"
        )));
    }
    Ok(Arc::new(LocalStore::new(url)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_with_env_expansion_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        // SAFETY-free: tests in this crate do not read LIFEBOAT_TEST_DIR concurrently.
        let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
        std::fs::write(
            &p,
            "[repository]\nurl = \"${HOME}/repo\"\npassword_file = \"/etc/pw\"\n\n[sources.web]\ntype = \"volume\"\npath = \"/srv\"\nexclude = [\"*.tmp\"]\n\n[sources.db]\ntype = \"command\"\ncommand = \"echo hi\"\nrestore_command = \"cat\"\n",
        )
        .unwrap();
        let c = ConfigFile::load(&p).unwrap();
        assert_eq!(c.repository.url, format!("{home}/repo"));
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.sources["db"].restore_command(), Some("cat"));
        std::fs::write(&p, "[repository]\nurl = \"x\"\npasword_file = \"typo\"\n").unwrap();
        let e = ConfigFile::load(&p).unwrap_err();
        assert!(e.to_string().contains("pasword_file"), "{e}");
        std::fs::write(&p, "[repository]\nurl = \"${LIFEBOAT_SURELY_UNSET_VAR}\"\n").unwrap();
        assert!(
            ConfigFile::load(&p)
                .unwrap_err()
                .to_string()
                .contains("LIFEBOAT_SURELY_UNSET_VAR")
        );
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
