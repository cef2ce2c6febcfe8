//! Volumes: a directory as a deterministic tar stream (unchanged files sent as the chunks the
//! file cache remembers), exclude globs, and the safe untar a restore writes through.

pub mod attrs;
pub mod facts;
pub mod glob;
pub mod owners;
pub mod restore;
mod source;
pub mod untar;

pub use source::*;
