//! The content layer: chunks by id, wherever they are stored — loose objects or packs. Backup
//! writes through [`writer`] and [`packer`], restore and check read through [`reader`], GC
//! repacks with [`packer`]; all of them see the [`index`].

pub mod index;
pub mod packer;
pub mod reader;
pub(crate) mod writer;

pub use index::{DamagedIndex, PACK_BELOW, PackIndex, PackedAt};
pub use packer::{PACK_TARGET, Packer};
pub use reader::fetch_chunk;

use std::sync::Arc;

use async_trait::async_trait;

use crate::codec::Keys;
use crate::error::Result;
use crate::store::Store;

/// What the content layer needs of a repository. The repository implements it, so content
/// stands below the repository (as kopia's content layer does) instead of importing it.
#[async_trait]
pub trait Contents: Send + Sync {
    fn store(&self) -> &Arc<dyn Store>;
    fn keys(&self) -> &Keys;
    /// The largest chunk the repository's chunker makes (a bound when opening one).
    fn max_chunk(&self) -> usize;
    /// Store location, for messages.
    fn location(&self) -> String;
    /// The pack index as last read.
    async fn packs(&self) -> Result<Arc<PackIndex>>;
    /// The pack index read again (other processes may have written or deleted packs).
    async fn reload_packs(&self) -> Result<Arc<PackIndex>>;
}
