//! Volumes: a directory as a deterministic tar stream with a file cache for unchanged files,
//! exclude globs, and the safe untar a restore writes through.

pub mod cache;
pub mod facts;
pub mod glob;
mod source;
pub mod untar;

pub use source::*;
