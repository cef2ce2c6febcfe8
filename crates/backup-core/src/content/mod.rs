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
