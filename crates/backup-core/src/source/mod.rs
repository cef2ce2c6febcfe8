//! The `Source` contract every engine's backup side implements, and the pieces a source may
//! send; [`ReaderSource`] backs up any reader.

pub mod cache;
pub mod reader;
pub mod tar_pieces;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::id::ChunkId;
use crate::manifest::{Facts, ItemKind};

pub use cache::{CacheSlot, CachedChunk, CachedFile, FileCache, FileKey};
pub use reader::ReaderSource;

/// How many bytes the pipeline shows [`Source::volatile_prefix`].
pub const HEAD_PEEK: usize = 64 * 1024;

/// A boxed byte stream.
pub type ByteStream = Box<dyn AsyncRead + Send + Unpin>;

/// Produces one item's byte stream.
///
/// Contract: the backup calls [`Source::open`] once, reads the stream to its end, then calls
/// [`Source::finish`]. Reaching end-of-stream says nothing about success: a producer that died
/// (a `pg_dump` exiting non-zero, a tar walk that hit an unreadable file) reports it from
/// `finish`, and the backup then fails without writing a snapshot. If the backup fails first it
/// drops the source without calling `finish`; dropping must stop the producer (kill a child
/// process, end a thread).
#[async_trait]
pub trait Source: Send {
    /// Item name, unique within a snapshot.
    fn name(&self) -> &str;
    /// Kind recorded in the manifest.
    fn kind(&self) -> ItemKind;
    /// Stream format recorded in the manifest (`tar`, `raw`…).
    fn format(&self) -> &str;
    /// Starts the producer and returns its stream.
    async fn open(&mut self) -> Result<ByteStream>;
    /// Waits for the producer to end; `Err` if it failed. Returns facts for the manifest.
    async fn finish(&mut self) -> Result<Facts>;

    /// Length of a volatile header at the start of the stream (a dump's creation time, an RDB's
    /// aux fields), given its first bytes (up to [`HEAD_PEEK`], fewer at end of stream). Those
    /// bytes are stored inline in the manifest instead of in the first chunk, so that unchanged
    /// data still deduplicates completely. The default, 0, chunks everything.
    fn volatile_prefix(&self, _head: &[u8]) -> usize {
        0
    }

    /// The zstd level its chunks get unless the operator chose one: 1 (the fastest; see
    /// docs/BENCHMARKS.md, "Defaults") unless the source knows better.
    fn compression_level(&self) -> i32 {
        crate::commands::backup::DEFAULT_COMPRESSION_LEVEL
    }

    /// Whether [`Source::volatile_prefix`] may return more than 0 (saves peeking otherwise).
    fn has_volatile_prefix(&self) -> bool {
        false
    }

    /// A source that knows its stream's structure may send it as [`Piece`]s instead: the
    /// backup then calls this instead of [`Source::open`], and the same contract holds (read to
    /// the end, then [`Source::finish`]). `None` (the default) means "use `open`".
    async fn open_pieces(&mut self, _ctx: PieceContext) -> Result<Option<PieceStream>> {
        Ok(None)
    }

    /// After a successful [`Source::finish`]: the entries of a tar stream and where each lies
    /// in it, for the item's file catalog. `None` (the default): the stream has no catalog.
    fn take_catalog(&mut self) -> Option<crate::catalog::PendingCatalog> {
        None
    }
}

/// Part of a stream sent by a source that knows where its files start and end.
///
/// Guarantee the chunker gives: a chunk never spans a [`Piece::Cut`] or a [`Piece::File`], and
/// content-defined cutting restarts after one. So a file whose data is fenced by cuts becomes
/// the same chunks wherever it sits in the stream, and the next backup can name those chunks
/// ([`Piece::Stored`]) instead of reading the file again.
#[derive(Debug)]
pub enum Piece {
    /// Stream bytes.
    Bytes(Vec<u8>),
    /// End the current chunk here.
    Cut,
    /// A cut, then one file's data, cut with the full chunk sizes up to the next cut. With a
    /// key (`key.size` bytes follow), the pipeline records in the file cache which chunks they
    /// became; without one (a racy or non-UTF-8 name) the data is cut the same way but not
    /// remembered.
    File(Option<FileKey>),
    /// Stream bytes already in the repository as these chunks (a cut comes before and after).
    Stored(Vec<CachedChunk>),
}

/// Receiving end of a source's pieces.
pub type PieceStream = mpsc::Receiver<Piece>;

/// What the backup offers [`Source::open_pieces`].
#[derive(Clone, Default)]
pub struct PieceContext {
    /// The local file cache of this item (what its files were in the last backup of it);
    /// `None` when caching is off.
    pub cache: Option<CacheSlot>,
    /// Chunks named by the repository's snapshots: a cached file is reused only if all its
    /// chunks are among them (a forgotten snapshot's chunks may be gone).
    pub known: Arc<Mutex<HashSet<ChunkId>>>,
    /// Files at least this large get cuts around their data (the chunker's minimum size:
    /// smaller files would become chunks below it).
    pub aligned_min: u64,
    /// Smaller files start a new chunk at their header once this many bytes have gone into the
    /// current one (0: never). An edit to a small file then stores its group of a few files,
    /// not a stretch of the chunker's between-files size; the groups resynchronise after at most
    /// a run of files smaller than this.
    pub group_min: u64,
}
