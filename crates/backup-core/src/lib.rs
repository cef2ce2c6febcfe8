//! Lifeboat core: streams sources through content-defined chunking, zstd and AES-256-GCM into
//! a store, and restores them back with every byte verified.
//!
//! Crate map, in data-flow order (see docs/ARCHITECTURE.md):
//!
//! | module | role |
//! |---|---|
//! | [`source`] | the `Source` contract every engine's backup side implements; `ReaderSource` for any reader |
//! | [`engines`] | one folder per kind of data — `volume` (tar, file cache, untar), `command`, `postgres` (pg_dump, pg_restore, table selection, base backups, the WAL archive per cluster and timeline, point-in-time restore and recovery, scratch server), `redis` (RDB over replication, scratch server) — each with its typed facts and drill checks |
//! | [`chunk`] | FastCDC chunking and the stream's SHA-256 |
//! | [`codec`] | keyed chunk ids, zstd, the AES-256-GCM envelope; [`codec::keys`]: key slots |
//! | [`content`] | chunks by id: the writer (dedup, pack or loose), the packer, the pack index, the reader (every copy, read plans, verification) |
//! | [`store`] | the `Store` trait, `LocalStore`, `S3Store`; with feature `testkit` (tests only) fault injection and the conformance suite |
//! | [`manifest`] | snapshot and item records |
//! | [`catalog`] | a volume item's file catalog: each entry and where its bytes lie in the stream |
//! | [`repository`] | config, keys, snapshots and their cache on top of a store |
//! | [`markers`] | the run and GC marker objects through which backups and GC see each other |
//! | [`sink`] | the `Sink` contract every restore target implements; file, stdout and command sinks |
//! | [`commands`] | what the binaries run: `backup`, `restore` (plan, apply, sinks), `check`, `gc` (`gc::plan`: what may be deleted, decided without I/O), `prune` |
//! | [`anomaly`] | whether an item looks like the same source's last one (rows, keys, files, size) |
//! | [`retention`] | which snapshots a policy keeps |
//! | [`config`] | the config file's schema, its sources, repository/key precedence (flags, environment, file) |
//! | [`runtime`], [`buffer`] | the CPU pool (one thread per core) and reusable chunk-sized buffers |
//! | [`secret`], [`lock`], [`progress`], [`metrics`] | secrets, the run lock, progress, Prometheus textfiles |
//! | [`hooks`] | commands before, after, on failure and finally of a run, with timeouts |
//! | [`notify`] | monitoring: Healthchecks-style pings, JSON webhooks, notifier commands |
//! | [`supervise`] | one order of hooks, monitors and Pushgateway around run, prune, check and drills |
//! | [`scratch`] | helpers for throw-away servers on free loopback ports, and the S3 one (engines have theirs) |
//! | [`error`] | the one error enum, with exit codes and hints |
//! | `cli` (feature `cli`) | flags, output and error reporting shared by the binaries, the snapshot listing |

#![forbid(unsafe_code)]

pub mod anomaly;
pub mod buffer;
pub mod catalog;
pub mod chunk;
#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
pub mod commands;
pub mod config;
pub mod content;
pub mod engines;
pub mod error;
pub mod hooks;
pub mod id;
pub mod lock;
pub mod manifest;
pub mod markers;
pub mod metrics;
pub mod notify;
pub mod progress;
pub mod repository;
pub mod retention;
pub mod runtime;
pub mod scratch;
pub mod secret;
pub mod sink;
pub mod source;
pub mod store;
pub mod supervise;

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
