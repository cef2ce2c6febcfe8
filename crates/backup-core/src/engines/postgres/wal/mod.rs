//! The WAL archive: PostgreSQL's `archive_command` (push) and `restore_command` (fetch)
//! against the repository, kept per cluster and timeline, and what it holds (status, check,
//! retention).
//!
//! Bottom up: `name` (file names, cluster ids, segment arithmetic for any segment size),
//! `header` (what a segment and `pg_control` say about themselves), `timeline` (history files
//! and the segments a recovery along a timeline reads), `archive` (push with look-ahead, fetch
//! with prefetch), `pieces` (streamed WAL), `stream` (the streamer), `status` (listing, status, check, retention).

pub mod archive;
pub mod header;
pub mod name;
pub mod pieces;
pub mod status;
pub mod stream;
pub mod timeline;

pub use archive::{
    PrefetchOptions, PrefetchReport, PrefetchSpool, WalPushOptions, WalPushReport,
    cluster_for_fetch, fetch, object_key, prefetch, push, push_one, read_archived, repository_id,
    take_ack,
};
pub use name::{ClusterId, DEFAULT_SEGMENT_SIZE, WalName, format_lsn, parse_lsn};
pub use status::{
    Archive, Backlog, ClusterArchive, ClusterPrune, ClusterStatus, TimelineStatus, WalPruneReport,
    WalStatus, Window, backlog, prune_wal, status, verify,
};
pub use timeline::{Span, Timelines};
