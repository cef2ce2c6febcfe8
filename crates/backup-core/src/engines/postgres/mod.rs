//! PostgreSQL: `pg_dump` sources with facts from the dump's own snapshot, `pg_restore` and
//! globals targets, connection strings, and the scratch server drills restore into; physical
//! base backups, the WAL archive and streaming, point-in-time recovery.

pub mod base;
pub mod conninfo;
pub mod drill;
pub mod facts;
pub mod pitr;
pub mod recovery;
pub mod replication;
pub mod restore;
pub mod scratch;
pub mod selection;
pub mod session;
mod source;
pub mod wal;

pub use source::*;
