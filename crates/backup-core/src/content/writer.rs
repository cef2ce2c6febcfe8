//! The writer: a chunk's id, its dedup against the snapshots and the index, and where it goes
//! (a pack, or an object of its own, checked and replaced if a crash left it torn).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::Contents;
use super::index::PACK_BELOW;
use super::packer::Packer;
use crate::error::{Error, Result};
use crate::id::ChunkId;
use crate::runtime::blocking;
use crate::store::PutMode;

/// Where a chunk of this run went.
pub(crate) enum Stored {
    New(u64),
    Reused,
    /// A sealed small chunk, packed by the item's ordered loop: packs then hold chunks in
    /// stream order, and a restore reads runs of neighbours with one request.
    Pack(Vec<u8>),
}

pub(crate) async fn store_chunk(
    repo: &dyn Contents,
    data: Arc<Vec<u8>>,
    known: Arc<Mutex<HashSet<ChunkId>>>,
    packer: &Packer,
    level: i32,
) -> Result<(ChunkId, u64, Stored)> {
    let len = data.len() as u64;
    let keys = repo.keys().clone();
    let (id, data) = blocking(move || (keys.chunk_id(&data), data)).await?;
    let done = |stored| Ok((id, len, stored));
    if known.lock().unwrap().contains(&id) {
        return done(Stored::Reused);
    }
    let packs = packer.index();
    if packs.get(&id).is_some() {
        known.lock().unwrap().insert(id);
        return done(Stored::Reused);
    }
    // Packed when small once sealed: a compressible dump's 1 MiB chunks seal to ~300 KB, and as
    // objects of their own they cost a request each (on S3, a PUT and a HEAD: measured, the
    // dump's backup to ministack spent more in requests than in data).
    let keys = repo.keys().clone();
    let max = data.len();
    let object = blocking(move || keys.seal_chunk(&id, &data, level)).await?;
    if object.len() < PACK_BELOW {
        known.lock().unwrap().insert(id);
        return done(Stored::Pack(object));
    }
    // Not named by any snapshot, but a run that was interrupted may have stored it already.
    // Its puts were batched, so a crash of the machine before its flush may have left the object
    // damaged under its name: reuse it only if it opens, and replace it otherwise.
    let key = id.object_key();
    let mut mode = PutMode::CreateOnly;
    let found = match repo.store().head(&key).await {
        Ok(_) => true,
        Err(Error::NotFound { .. }) => false,
        Err(e) => return Err(e),
    };
    if found {
        let sound = match repo.store().get(&key).await {
            Ok(object) => {
                let keys = repo.keys().clone();
                blocking(move || keys.open_chunk_owned(&id, object, max).is_ok()).await?
            }
            Err(Error::NotFound { .. }) => false,
            Err(e) => return Err(e),
        };
        if sound {
            known.lock().unwrap().insert(id);
            return done(Stored::Reused);
        }
        mode = PutMode::Overwrite;
    }
    let n = object.len() as u64;
    let stored = match repo.store().put_batched(&key, object, mode).await {
        Ok(()) => Stored::New(n),
        // Same chunk twice in flight, or a concurrent run: the content is identical by construction.
        Err(Error::AlreadyExists { .. }) => Stored::Reused,
        Err(e) => return Err(e),
    };
    known.lock().unwrap().insert(id);
    done(stored)
}
