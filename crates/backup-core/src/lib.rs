//! Lifeboat core: streams sources through content-defined chunking, zstd and AES-256-GCM into
//! a store, and restores them back with every byte verified.
//!
//! Crate map, in data-flow order (see docs/ARCHITECTURE.md):
//!
//! | module | role |
//! |---|---|
//! | [`source`] | what produces an item's bytes: volume (tar), command, PostgreSQL (pg_dump), Redis (RDB over replication), any reader |
//! | [`chunk`] | FastCDC chunking and the stream's SHA-256 |
//! | [`codec`] | keyed chunk ids, zstd, the AES-256-GCM envelope; [`codec::keys`]: key slots |
//! | [`content`] | chunks by id: the writer (dedup, pack or loose), the packer, the pack index, the reader (every copy, read plans, verification) |
//! | [`store`] | the `Store` trait, `LocalStore`, `S3Store`; with feature `testkit` (tests only) fault injection and the conformance suite |
//! | [`manifest`] | snapshot and item records |
//! | [`repository`] | config, keys, snapshots and their cache on top of a store |
//! | [`backup`] | the pipeline and the all-or-nothing snapshot |
//! | [`restore`] | plan, fetch, verify, sinks (directory/untar, file, stdout, command, pg_restore, Redis) |
//! | [`check`] | repository verification |
//! | [`buffer`] | reusable chunk-sized buffers |
//! | [`runtime`] | the CPU pool (one thread per core) that backup, restore, check and GC share |
//! | [`retention`], [`gc`], [`prune`] | which snapshots to keep; lock-free garbage collection and repacking (`gc::plan`: what may be deleted, decided without I/O) |
//! | [`markers`] | the run and GC marker objects through which backups and GC see each other |
//! | [`config`], [`secret`], [`lock`], [`progress`] | configuration, secrets, run lock, progress |
//! | [`scratch`] | throw-away PostgreSQL, redis-server and S3 servers on free loopback ports |
//! | [`error`] | the one error enum, with exit codes and hints |
//! | `cli` (feature `cli`) | flags and error reporting shared by the binaries |

#![forbid(unsafe_code)]

pub mod buffer;
pub mod chunk;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod content;
pub mod engines;
pub mod error;
pub mod id;
pub mod lock;
pub mod manifest;
pub mod markers;
pub mod progress;
pub mod repository;
pub mod retention;
pub mod runtime;
pub mod scratch;
pub mod secret;
pub mod source;
pub mod store;

pub use error::{Error, Result};
pub use id::{ChunkId, SnapshotId};
pub use repository::Repository;

/// This machine's hostname, recorded in snapshots and key slots.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
