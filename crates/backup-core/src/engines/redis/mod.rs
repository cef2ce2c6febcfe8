//! Redis: the RDB over the replication protocol (or BGSAVE), checked as it streams; restore to
//! a data directory or a scratch redis-server that loads it and is checked.

pub mod drill;
pub mod facts;
pub mod rdb;
pub mod resp;
pub mod restore;
pub mod scratch;
mod source;

pub use source::*;
