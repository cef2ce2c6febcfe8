//! The one error type of the library: matchable variants that name the object concerned.

use std::path::PathBuf;

use crate::id::{ChunkId, SnapshotId};

/// Result alias used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in Lifeboat.
///
/// Variants carry the object they concern (repository location, snapshot, item, chunk, path) so
/// a message read at 3 a.m. says *what* is wrong. [`Error::hint`] gives the next step and
/// [`Error::exit_code`] the documented process exit code the binaries use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("no Lifeboat repository at {location}")]
    RepositoryNotFound { location: String },

    #[error(
        "bucket {bucket} of {location} does not exist (or is not visible with these credentials)"
    )]
    BucketNotFound { bucket: String, location: String },

    #[error(
        "WAL file {name} is archived in {location} with different content; nothing was overwritten"
    )]
    WalConflict { name: String, location: String },

    #[error("recovery of {} did not finish: {detail}", pgdata.display())]
    RecoveryFailed {
        pgdata: std::path::PathBuf,
        detail: String,
    },

    #[error("WAL stream from {server}: {detail}")]
    Replication { server: String, detail: String },

    #[error("{name} is not the WAL file its name says: {detail}; nothing was archived")]
    WalInvalid { name: String, detail: String },

    #[error("a Lifeboat repository already exists at {location}")]
    RepositoryExists { location: String },

    #[error("no key slot of the repository at {location} opens with the given {secret_kind}")]
    WrongKey {
        location: String,
        secret_kind: &'static str,
    },

    #[error("no key given for the repository: {detail}")]
    NoSecret { detail: String },

    #[error("could not read the secret from {from}: {detail}")]
    Secret { from: String, detail: String },

    #[error("key slot: {detail}")]
    KeySlot { detail: String },

    #[error(
        "no intact key slot of the repository at {location} opens with the given secret, and these are damaged: {slots}"
    )]
    KeySlotDamaged { location: String, slots: String },

    #[error("another backup run holds the lock {path}")]
    Locked { path: PathBuf },

    #[error("snapshot {query} not found in {location}")]
    SnapshotNotFound { query: String, location: String },

    #[error("no snapshot {filter} in {location}; {present}")]
    NoSnapshotMatches {
        filter: String,
        location: String,
        present: String,
    },

    #[error("snapshot id prefix {query} is ambiguous: {candidates}")]
    SnapshotAmbiguous { query: String, candidates: String },

    #[error("snapshot {snapshot} is unreadable: {reason}")]
    SnapshotCorrupt {
        snapshot: SnapshotId,
        reason: String,
    },

    #[error("snapshot {snapshot} has no item named {item} (it has: {available})")]
    ItemNotFound {
        snapshot: SnapshotId,
        item: String,
        available: String,
    },

    #[error("item {item} of snapshot {snapshot} has no file catalog ({why})")]
    NoCatalog {
        snapshot: SnapshotId,
        item: String,
        why: String,
    },

    #[error("item {item} of snapshot {snapshot} has no entry {path}")]
    EntryNotFound {
        snapshot: SnapshotId,
        item: String,
        path: String,
    },

    #[error("chunk {chunk} of item {item} in snapshot {snapshot} is missing from {location}")]
    ChunkMissing {
        snapshot: SnapshotId,
        item: String,
        chunk: ChunkId,
        location: String,
    },

    #[error("chunk {chunk} of item {item} in snapshot {snapshot} is corrupt: {reason}")]
    ChunkCorrupt {
        snapshot: SnapshotId,
        item: String,
        chunk: ChunkId,
        reason: String,
    },

    #[error("item {item} of snapshot {snapshot} restored to different data: {detail}")]
    StreamMismatch {
        snapshot: SnapshotId,
        item: String,
        detail: String,
    },

    #[error("item {item} restored, but verification failed: {detail}")]
    Verification { item: String, detail: String },

    #[error("item {item} cannot be restored there: {detail}")]
    Incompatible { item: String, detail: String },

    #[error("source {item} failed: {detail}")]
    SourceFailed { item: String, detail: String },

    #[error("archive of item {item} is unsafe, entry {entry:?} refused: {reason}")]
    UnsafeArchive {
        item: String,
        entry: String,
        reason: String,
    },

    #[error("restore target {path} is not empty")]
    TargetNotEmpty { path: PathBuf },

    #[error("{path} already exists")]
    TargetExists { path: PathBuf },

    #[error("restore of item {item} to {target} failed: {detail}")]
    Sink {
        item: String,
        target: String,
        detail: String,
    },

    #[error("object {key} not found in {location}")]
    NotFound { key: String, location: String },

    #[error(
        "object {key} in {location} is under retention (Object Lock) and cannot be deleted yet"
    )]
    Retained { key: String, location: String },

    #[error("object {key} already exists in {location}")]
    AlreadyExists { key: String, location: String },

    #[error("store {location}: {op} {key} failed: {source}")]
    Store {
        location: String,
        op: &'static str,
        key: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{object} is malformed: {detail}")]
    Format { object: String, detail: String },

    #[error("configuration {path}: {detail}")]
    Config { path: String, detail: String },

    #[error("{0}")]
    Usage(String),

    /// A source's data does not look like last time's and its rule says fail (see `anomaly`).
    #[error("no snapshot was written: {detail}")]
    Anomaly {
        sources: Vec<String>,
        detail: String,
    },

    /// A `before` or `after` hook failed (its output was shown as it ran).
    #[error("{what}")]
    Hook { what: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<crate::id::BadId> for Error {
    fn from(e: crate::id::BadId) -> Self {
        Error::Format {
            object: e.object,
            detail: e.detail,
        }
    }
}

/// An error and its causes on one line, each cause once (a wrapper often repeats its source's
/// text in its own).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cur = c.source();
    }
    msg
}

/// Exit code of a command that ran but found damaged or missing data (`check` problems,
/// damaged objects GC would not touch): the same code an integrity error exits with.
pub const EXIT_INTEGRITY: u8 = 6;

/// Exit code of a run that wrote a snapshot without some data: sources that failed (`run
/// --partial`) or entries a volume could not read.
pub const EXIT_INCOMPLETE: u8 = 8;

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Documented process exit code for this error (see README, "Exit codes").
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Config { .. } | Error::SnapshotAmbiguous { .. } => 2,
            Error::WrongKey { .. }
            | Error::KeySlotDamaged { .. }
            | Error::NoSecret { .. }
            | Error::Secret { .. } => 3,
            Error::Locked { .. } => 4,
            Error::RepositoryNotFound { .. } | Error::BucketNotFound { .. } => 5,
            Error::ChunkMissing { .. }
            | Error::ChunkCorrupt { .. }
            | Error::SnapshotCorrupt { .. }
            | Error::WalConflict { .. }
            | Error::WalInvalid { .. }
            | Error::StreamMismatch { .. }
            | Error::Verification { .. }
            | Error::Format { .. } => 6,
            Error::TargetNotEmpty { .. }
            | Error::TargetExists { .. }
            | Error::UnsafeArchive { .. }
            | Error::Incompatible { .. } => 7,
            _ => 1,
        }
    }

    /// The next step an operator should take, when there is an obvious one.
    pub fn hint(&self) -> Option<String> {
        let h = match self {
            Error::RepositoryNotFound { .. } => {
                "check --repo / LIFEBOAT_REPOSITORY, or create one with `lifeboat-backup init`"
            }
            Error::BucketNotFound { .. } => {
                "check the bucket name, the endpoint and the credentials (AWS_* variables or [repository.s3]); or create the bucket first, with Object Lock if you want immutable backups"
            }
            Error::WalConflict { .. } => {
                "a restored server archives on the timeline it was restored from (restore with archive_mode=off, the default of `lifeboat-restore pitr`), or the file changed after it was archived: PostgreSQL keeps the file and retries; compare it with `lifeboat-restore wal fetch`"
            }
            Error::RecoveryFailed { .. } => {
                "the server's log (lifeboat-recovery.log in the data directory) has the whole story; the data directory stays as it is: fix the cause and start it again, or restore to another target"
            }
            Error::WalInvalid { .. } => {
                "archive_command must pass %p (the file in pg_wal), and each cluster its own files; PostgreSQL keeps the file and retries"
            }
            Error::Replication { .. } => {
                "the connection needs a role with REPLICATION (or a superuser), a pg_hba.conf line for the `replication` database, and free max_wal_senders and max_replication_slots; `wal stream` reconnects on its own after a lost connection"
            }
            Error::RepositoryExists { .. } => "use the existing repository, or choose another path",
            Error::Anomaly { .. } => {
                "if the change is expected (a table emptied on purpose, a volume moved), set on_anomaly = \"warn\" for the source for one run; otherwise look at the source: an empty mount point, a replica that is not the primary, a flushed cache"
            }
            Error::Hook { .. } => {
                "the hook's output is above; run the command by hand to see why, or remove it from [hooks]"
            }
            Error::WrongKey { .. } => {
                "check LIFEBOAT_PASSWORD_FILE / --password-command / --key-file; `lifeboat-backup key list` shows the slots"
            }
            Error::KeySlotDamaged { .. } => {
                "if the damaged slot was the one for this secret, put back a copy of its object (keys/…) or open with another key; `lifeboat-backup key list` with a working key shows and removes damaged slots"
            }
            Error::NoSecret { .. } => {
                "set LIFEBOAT_PASSWORD_FILE, LIFEBOAT_PASSWORD, --password-command or --key-file"
            }
            Error::Locked { .. } => {
                "another run is still going; wait for it, or pass --wait to queue behind it"
            }
            Error::SnapshotNotFound { .. } | Error::SnapshotAmbiguous { .. } => {
                "`lifeboat-restore list` shows the snapshots"
            }
            Error::NoSnapshotMatches { .. } => {
                "`latest` means this host's newest snapshot: pass --host NAME (another machine's backups) or --any-host, or name a snapshot id; `lifeboat-restore list` shows them all"
            }
            Error::ItemNotFound { .. } => "`lifeboat-restore show SNAPSHOT` lists its items",
            Error::NoCatalog { .. } => {
                "only volume items written since file catalogs (docs/FORMAT.md) have one; restore the whole item, or `lifeboat-restore export` it and pick files with tar"
            }
            Error::EntryNotFound { .. } => {
                "`lifeboat-restore ls SNAPSHOT ITEM DIR` lists a directory; `lifeboat-restore find PATTERN` searches every snapshot"
            }
            Error::ChunkMissing { .. }
            | Error::ChunkCorrupt { .. }
            | Error::SnapshotCorrupt { .. } => {
                "run `lifeboat-backup check --read-data` to see all damage; restore an older snapshot that does not use this object, and take a fresh backup"
            }
            Error::StreamMismatch { .. } => {
                "the restored data is not what was backed up: do not use it; run `lifeboat-backup check --read-data`"
            }
            Error::SourceFailed { .. } => {
                "fix the source and rerun; no snapshot was written and stored chunks will be reused"
            }
            Error::UnsafeArchive { .. } => {
                "the archive tried to write outside the target; nothing was put in place. Inspect it with `lifeboat-restore export`"
            }
            Error::TargetExists { .. } => "write to another file, or pass --force to replace it",
            Error::TargetNotEmpty { .. } => {
                "restore elsewhere (--to DIR, another database), empty the target, or pass --force (databases: --clean) to replace it"
            }
            Error::Verification { .. } => {
                "the restored data does not match what was recorded at backup time: do not put it in service; inspect it, or restore an older snapshot"
            }
            Error::Incompatible { .. } => {
                "nothing was touched; use matching client tools (--pg-bin-dir) or another target"
            }
            Error::Store { .. } => "check that the storage is reachable and writable, then retry",
            Error::Config { .. } => {
                "fix the configuration file; see fixtures/lifeboat.toml for an example"
            }
            _ => return None,
        };
        Some(h.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ambiguous_prefix_is_a_usage_error() {
        let e = Error::SnapshotAmbiguous {
            query: "a".into(),
            candidates: "a1…, a2…".into(),
        };
        assert_eq!(e.exit_code(), 2);
        assert!(e.hint().is_some());
    }
}
