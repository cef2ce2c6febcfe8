//! Sources: what produces the byte stream of one snapshot item (volume, command, any reader).

pub mod command;
pub mod glob;
pub mod postgres;
pub mod reader;
pub mod redis;
pub mod volume;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::error::Result;
use crate::manifest::{Facts, ItemKind};

pub use command::CommandSource;
pub use reader::ReaderSource;
pub use volume::{VolumeOptions, VolumeSource};

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

    /// Whether [`Source::volatile_prefix`] may return more than 0 (saves peeking otherwise).
    fn has_volatile_prefix(&self) -> bool {
        false
    }
}
