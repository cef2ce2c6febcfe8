//! The TOML configuration file and the repository selection shared by all binaries.
//!
//! Precedence for repository and key: command-line flags, then the environment
//! (`LIFEBOAT_REPOSITORY`, `LIFEBOAT_PASSWORD_FILE`, `LIFEBOAT_PASSWORD_COMMAND`,
//! `LIFEBOAT_KEY_FILE`, `LIFEBOAT_PASSWORD`), then the config file. `${VAR}` in any string of
//! the config file is replaced by the environment variable (an unset variable is an error).

mod file;
mod repo;
mod retention;
mod sources;
mod validate;

pub use file::{
    BackupConfig, ConfigFile, MetricsConfig, ObjectLockConfig, RepositoryConfig, S3Config,
};
pub use repo::{RepoArgs, ResolvedRepo, open_store};
pub use retention::RetentionConfig;
pub use sources::{
    Databases, PostgresConfig, RedisConfig, RedisModeConfig, RestoreDefaults, RowCountsConfig,
    SourceConfig, SourceSelection, select_sources, split_named,
};
pub use validate::{Finding, ValidationReport, validate};
