//! Sources: what produces the byte stream of one snapshot item (volume, command, any reader).

pub mod command;
pub mod glob;
pub mod reader;
pub mod volume;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::error::Result;
use crate::manifest::{Facts, ItemKind};

pub use command::CommandSource;
pub use reader::ReaderSource;
pub use volume::{VolumeOptions, VolumeSource};

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
}
