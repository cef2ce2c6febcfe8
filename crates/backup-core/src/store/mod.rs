//! Object stores: the narrow `Store` trait the repository is written to, and its implementations.
//!
//! Guarantees every implementation gives (checked by `conformance::run`, feature `testkit`):
//! - keys are `/`-separated relative names of `[A-Za-z0-9._-]` segments; anything else is refused;
//! - `put` is atomic: readers see the whole old object, the whole new one, or nothing, and a put
//!   that returned `Ok` is durable; a `put_batched` that returned is durable once a later
//!   `flush` returns (until then a crash of the machine may leave it damaged under its name);
//! - `put` with [`PutMode::CreateOnly`] fails with [`Error::AlreadyExists`] and leaves the
//!   existing object untouched; of concurrent create-only puts of one key exactly one wins;
//! - `get`/`get_range`/`head` on a missing key fail with [`Error::NotFound`] and nothing else does;
//! - `list(prefix)` returns every object whose key starts with `prefix`, sorted by key;
//! - `delete` of a missing key succeeds (deletes are idempotent).

#[cfg(any(test, feature = "testkit"))]
pub mod conformance;
#[cfg(any(test, feature = "testkit"))]
pub mod faulty;
pub mod local;
pub mod s3;

use std::ops::Range;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

#[cfg(any(test, feature = "testkit"))]
pub use faulty::{Fault, FaultyStore};
pub use local::LocalStore;
pub use s3::{S3Options, S3Store, S3Timeouts};

/// Whether a put may replace an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with `AlreadyExists` if the key exists.
    CreateOnly,
    /// Replace atomically.
    Overwrite,
}

/// What `head` and `list` report about an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub modified: Option<DateTime<Utc>>,
}

impl ObjectMeta {
    /// How long ago the object was written (zero when the store did not say, or the clock is
    /// behind the store's).
    pub fn age(&self) -> std::time::Duration {
        self.modified
            .map(|t| (Utc::now() - t).to_std().unwrap_or_default())
            .unwrap_or_default()
    }
}

/// A flat key → bytes store. See the module documentation for the guarantees.
///
/// No method has a default: a wrapper (fault injection, a slowed store) that forgot to forward
/// one would silently drop what the inner store does there (a wrapped S3 store lost Object
/// Lock that way), so every implementation says what each method does.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Human-readable location, used in messages (`/srv/backup`, `s3://bucket/prefix`).
    fn location(&self) -> String;
    /// Stores `data` under `key`.
    async fn put(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<()>;
    /// As `put`, but durable only after the next [`Store::flush`]: a store may then make many
    /// objects durable at once (one `syncfs` instead of two fsyncs each).
    /// (A store with no cheaper batch durability calls `put`.)
    async fn put_batched(&self, key: &str, data: Vec<u8>, mode: PutMode) -> Result<()>;
    /// Makes every `put_batched` that returned before this call durable.
    async fn flush(&self) -> Result<()>;
    /// Reads a whole object.
    async fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Reads `range` of an object; a range past the end is clamped to the object's size.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;
    /// Size and modification time of an object.
    async fn head(&self, key: &str) -> Result<ObjectMeta>;
    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// Removes an object; succeeds if it does not exist.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Requests retried so far (network stores); reported by backups.
    fn retries(&self) -> u64;
    /// Object bytes `get` and `get_range` returned so far: what a restore fetched.
    fn bytes_read(&self) -> u64;
    /// Checks the store is usable as configured (bucket reachable, Object Lock enabled when
    /// configured); `init` calls it.
    async fn verify(&self) -> Result<()>;
    /// Days of retention (Object Lock) every written object gets, if configured.
    fn retention_days(&self) -> Option<u32>;
    /// Extends an existing object's retention to the configured horizon (never shortens).
    async fn extend_retention(&self, key: &str) -> Result<()>;
    /// When an object's retention ends, if it has one.
    async fn retention_until(&self, key: &str) -> Result<Option<DateTime<Utc>>>;
    /// Removes (or with `dry_run` only counts) partial writes older than `older_than` that a
    /// killed process left behind; returns how many and their bytes. Stores whose writes are
    /// atomic on the server leave none.
    async fn sweep_incomplete(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<(usize, u64)>;
}

/// Refuses keys that could escape a directory or be misread by a server.
pub fn validate_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.starts_with(".tmp-")
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!("invalid object key {key:?}")))
    }
}
