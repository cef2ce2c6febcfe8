//! Which repository, with which key: flags, then the environment, then the config file;
//! and the store a repository URL names.

use std::path::PathBuf;
use std::sync::Arc;

use super::sources::read_password;
use super::{ConfigFile, S3Config};
use crate::error::{Error, Result};
use crate::repository::{CacheOptions, Repository};
use crate::secret::SecretSource;
use crate::store::s3::ObjectLock;
use crate::store::{LocalStore, S3Options, S3Store, S3Timeouts, Store};

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
        let from_cfg = || rc.and_then(secret_of);
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

    /// For a file that names its repository (a drill file): the file's repository and key win
    /// over the environment, which only fills in what the file leaves out. A shell with
    /// `LIFEBOAT_REPOSITORY` exported for another repository must not change what is drilled.
    pub fn resolve_file_first(cfg: &ConfigFile) -> Result<ResolvedRepo> {
        let mut r = RepoArgs::default().resolve(Some(cfg))?;
        r.url = cfg.repository.url.clone();
        if let Some(s) = secret_of(&cfg.repository) {
            r.secret = Some(s);
        }
        Ok(r)
    }
}

/// The key a `[repository]` section names, if any.
fn secret_of(r: &super::RepositoryConfig) -> Option<SecretSource> {
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

    /// Opens the store for `init`: a local directory must be missing or empty (a repository
    /// is refused by `Repository::init` itself; anything else would be mixed into one).
    pub async fn store_for_init(&self) -> Result<Arc<dyn Store>> {
        let store = self.store().await?;
        if is_s3(&self.url) {
            return Ok(store);
        }
        let path = std::path::Path::new(&self.url);
        let stray = match std::fs::read_dir(path) {
            Ok(mut entries) => entries.next().is_some() && !path.join("config").exists(),
            Err(_) => false,
        };
        if stray {
            return Err(Error::Usage(format!(
                "{} is not empty and is not a Lifeboat repository: refusing to create one among other files (choose an empty or new directory)",
                self.url
            )));
        }
        Ok(store)
    }

    /// A short stable name for this repository location (local state keyed by it, such as
    /// the WAL spool, also records the repository's id, so a re-created one is not confused).
    pub fn url_tag(&self) -> String {
        hex::encode(&crate::codec::hmac(b"lifeboat location", &[self.url.as_bytes()])[..8])
    }

    /// Opens the repository.
    pub async fn open(&self) -> Result<Repository> {
        let secret = self.secret_source()?.resolve()?;
        Repository::open(self.store().await?, &secret, self.cache.clone()).await
    }
}

fn is_s3(url: &str) -> bool {
    url.starts_with("s3://")
}

/// Refuses locations that are surely a typo: an empty one (the current directory), and a
/// `scheme:/…` or `scheme:…` that lost a slash (it would become a local directory named
/// `s3:`).
fn check_location(url: &str) -> Result<()> {
    if url.trim().is_empty() {
        return Err(Error::Usage(
            "the repository location is empty: give a directory path or s3://bucket/prefix (use . for the current directory)".into(),
        ));
    }
    if let Some((scheme, rest)) = url.split_once(':')
        && scheme.len() > 1
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
        && !rest.starts_with("//")
    {
        return Err(Error::Usage(format!(
            "repository {url}: looks like a URL with a missing slash (did you mean {scheme}://{}?); a local directory whose name has a colon can be given as ./{url}",
            rest.trim_start_matches('/')
        )));
    }
    Ok(())
}

/// `connect_timeout`, `read_timeout`, `operation_timeout` over the defaults.
fn s3_timeouts(s3: &S3Config) -> Result<S3Timeouts> {
    let mut t = S3Timeouts::default();
    for (key, value, slot) in [
        ("connect_timeout", &s3.connect_timeout, &mut t.connect),
        ("read_timeout", &s3.read_timeout, &mut t.read),
        ("operation_timeout", &s3.operation_timeout, &mut t.operation),
    ] {
        let Some(v) = value else { continue };
        let d = crate::retention::parse_duration(v)
            .ok()
            .and_then(|d| d.to_std().ok())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "[repository.s3] {key} = {v:?}: give a positive duration such as \"30s\" or \"5m\""
                ))
            })?;
        *slot = d;
    }
    Ok(t)
}

/// Opens the store a repository URL names: a directory, or `s3://bucket/prefix`.
pub async fn open_store(url: &str, s3: &S3Config) -> Result<Arc<dyn Store>> {
    check_location(url)?;
    if is_s3(url) {
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
        o.timeouts = s3_timeouts(s3)?;
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
