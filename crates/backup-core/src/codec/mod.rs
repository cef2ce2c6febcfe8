//! Chunk codec: keyed chunk ids, zstd compression and the AES-256-GCM object envelope.
//!
//! Envelope (all sealed objects: chunks and snapshots), see docs/FORMAT.md:
//! `version(1) | type(1) | key id(8) | nonce(12) | AES-256-GCM(zstd(plaintext)) with 16-byte tag`.
//! The associated data binds version, type, key id and the object's name (chunk id or snapshot
//! id), so an object cannot be swapped for another or replayed under a different name.

pub mod keys;

use std::cell::RefCell;

use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::id::{ChunkId, KeyId};

/// Current envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes before the ciphertext.
pub const HEADER_LEN: usize = 1 + 1 + KeyId::LEN + 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;

/// What a sealed object is; part of the associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ObjectType {
    /// A chunk of an item stream; name = chunk id.
    Chunk = 1,
    /// A snapshot manifest; name = snapshot id.
    Snapshot = 2,
    /// A volume's local file cache (never stored in the repository); name = `files/` + item.
    FileCache = 3,
    /// The index of a pack (which chunks it holds, where); name = pack id.
    PackIndex = 4,
    /// A PostgreSQL WAL file; name = its file name (`000000010000000000000003`).
    Wal = 5,
}

/// Why an envelope could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("object is {0} bytes, shorter than an envelope")]
    TooShort(usize),
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("envelope type {found} where {expected} was expected")]
    Type { found: u8, expected: u8 },
    #[error("sealed with key {0}, which this repository key does not have")]
    UnknownKey(KeyId),
    #[error(
        "authentication failed: the object was altered, truncated or stored under the wrong name"
    )]
    Auth,
    #[error("decompression failed: {0}")]
    Decompress(String),
    #[error("content does not match its chunk id (got {0})")]
    IdMismatch(ChunkId),
}

/// The unwrapped master secret: a data key and an id key.
#[derive(Clone)]
pub struct Keys {
    data: Zeroizing<[u8; 32]>,
    id: Zeroizing<[u8; 32]>,
    key_id: KeyId,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({:?})", self.key_id)
    }
}

type HmacSha256 = Hmac<Sha256>;

impl Keys {
    /// Splits a 64-byte master secret into data key and id key.
    pub fn from_master(master: &[u8; 64]) -> Self {
        let mut data = Zeroizing::new([0u8; 32]);
        let mut id = Zeroizing::new([0u8; 32]);
        data.copy_from_slice(&master[..32]);
        id.copy_from_slice(&master[32..]);
        let tag = hmac(id.as_ref(), &[b"lifeboat key-id v1"]);
        let mut key_id = [0u8; KeyId::LEN];
        key_id.copy_from_slice(&tag[..KeyId::LEN]);
        Keys {
            data,
            id,
            key_id: KeyId(key_id),
        }
    }

    /// The 64-byte master secret again (to wrap it in a new key slot).
    pub(crate) fn master(&self) -> Zeroizing<[u8; 64]> {
        let mut m = Zeroizing::new([0u8; 64]);
        m[..32].copy_from_slice(self.data.as_ref());
        m[32..].copy_from_slice(self.id.as_ref());
        m
    }

    /// Id of the data key, written into every envelope header.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Keyed chunk id: HMAC-SHA256(id key, plaintext).
    pub fn chunk_id(&self, plaintext: &[u8]) -> ChunkId {
        ChunkId(hmac(self.id.as_ref(), &[plaintext]))
    }

    /// HMAC under the id key with a domain-separation label (config MAC, derived values).
    pub fn mac(&self, label: &[u8], data: &[u8]) -> [u8; 32] {
        hmac(self.id.as_ref(), &[label, data])
    }

    /// Compresses and seals `plaintext` as an object of `ty` named `name`.
    ///
    /// One allocation per object: zstd writes straight behind the header and AES-GCM encrypts
    /// in place. The zstd context is kept per thread; a fresh one per chunk costs megabytes of
    /// table set-up (a fifth of a backup's CPU went to the kernel zeroing its pages).
    pub fn seal(&self, ty: ObjectType, name: &[u8], plaintext: &[u8], level: i32) -> Vec<u8> {
        let bound = zstd::zstd_safe::compress_bound(plaintext.len());
        let mut out = Vec::with_capacity(HEADER_LEN + bound + TAG_LEN);
        let nonce: [u8; 12] = rand::random();
        self.push_header(&mut out, ty, &nonce);
        let mut cursor = std::io::Cursor::new(out);
        cursor.set_position(HEADER_LEN as u64);
        with_compressor(level, |c| c.compress_to_buffer(plaintext, &mut cursor))
            .expect("zstd compression into a buffer of compress_bound size");
        let mut out = cursor.into_inner();
        self.encrypt_tail(&mut out, ty, name, &nonce);
        out
    }

    fn push_header(&self, out: &mut Vec<u8>, ty: ObjectType, nonce: &[u8; 12]) {
        out.push(ENVELOPE_VERSION);
        out.push(ty as u8);
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(nonce);
    }

    /// Encrypts everything after the header in place and appends the tag.
    fn encrypt_tail(&self, out: &mut Vec<u8>, ty: ObjectType, name: &[u8], nonce: &[u8; 12]) {
        let aad = aad(ENVELOPE_VERSION, ty as u8, &self.key_id, name);
        let cipher = Aes256Gcm::new_from_slice(self.data.as_ref()).expect("32-byte key");
        let tag = cipher
            .encrypt_inout_detached(&Nonce::from(*nonce), &aad, (&mut out[HEADER_LEN..]).into())
            .expect("AES-GCM encryption of a buffer below the size limit");
        out.extend_from_slice(&tag);
    }

    /// Opens an envelope and decompresses it. `max_len` bounds the decompressed size.
    pub fn open(
        &self,
        ty: ObjectType,
        name: &[u8],
        object: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, OpenError> {
        self.open_owned(ty, name, object.to_vec(), max_len)
    }

    /// As [`Keys::open`], decrypting in place in the given buffer (saves a copy per chunk).
    pub fn open_owned(
        &self,
        ty: ObjectType,
        name: &[u8],
        mut object: Vec<u8>,
        max_len: usize,
    ) -> Result<Vec<u8>, OpenError> {
        let plain = self.open_in_place(ty, name, &mut object, max_len);
        crate::buffer::give(object);
        plain
    }

    /// As [`Keys::open`], decrypting in place wherever the object lies (a slice of a pack read):
    /// the object's bytes are left decrypted, or garbage if it does not authenticate.
    pub fn open_in_place(
        &self,
        ty: ObjectType,
        name: &[u8],
        object: &mut [u8],
        max_len: usize,
    ) -> Result<Vec<u8>, OpenError> {
        if object.len() < HEADER_LEN + TAG_LEN {
            return Err(OpenError::TooShort(object.len()));
        }
        if object[0] != ENVELOPE_VERSION {
            return Err(OpenError::Version(object[0]));
        }
        if object[1] != ty as u8 {
            return Err(OpenError::Type {
                found: object[1],
                expected: ty as u8,
            });
        }
        let mut kid = [0u8; KeyId::LEN];
        kid.copy_from_slice(&object[2..2 + KeyId::LEN]);
        let kid = KeyId(kid);
        if kid != self.key_id {
            return Err(OpenError::UnknownKey(kid));
        }
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&object[2 + KeyId::LEN..HEADER_LEN]);
        let aad = aad(object[0], object[1], &kid, name);
        // In place, behind the header: no shifting the object down first.
        let body_end = object.len() - TAG_LEN;
        let tag = aes_gcm::Tag::try_from(&object[body_end..]).expect("tag length");
        let cipher = Aes256Gcm::new_from_slice(self.data.as_ref()).expect("32-byte key");
        cipher
            .decrypt_inout_detached(
                &Nonce::from(nonce),
                &aad,
                (&mut object[HEADER_LEN..body_end]).into(),
                &tag,
            )
            .map_err(|_| OpenError::Auth)?;
        decompress(&object[HEADER_LEN..body_end], max_len)
    }

    /// Seals a chunk under its id.
    pub fn seal_chunk(&self, id: &ChunkId, plaintext: &[u8], level: i32) -> Vec<u8> {
        self.seal(ObjectType::Chunk, &id.0, plaintext, level)
    }

    /// Opens a chunk object and proves its content matches `id`.
    pub fn open_chunk(
        &self,
        id: &ChunkId,
        object: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, OpenError> {
        self.open_chunk_owned(id, object.to_vec(), max_len)
    }

    /// As [`Keys::open_chunk`], consuming the object buffer.
    pub fn open_chunk_owned(
        &self,
        id: &ChunkId,
        object: Vec<u8>,
        max_len: usize,
    ) -> Result<Vec<u8>, OpenError> {
        let plain = self.open_owned(ObjectType::Chunk, &id.0, object, max_len)?;
        let actual = self.chunk_id(&plain);
        if &actual != id {
            return Err(OpenError::IdMismatch(actual));
        }
        Ok(plain)
    }

    /// Raw AES-256-GCM under an arbitrary key (key-slot wrapping).
    pub(crate) fn wrap(kek: &[u8; 32], nonce: &[u8; 12], aad: &[u8], msg: &[u8]) -> Vec<u8> {
        Aes256Gcm::new_from_slice(kek)
            .expect("32-byte key")
            .encrypt(&Nonce::from(*nonce), Payload { msg, aad })
            .expect("AES-GCM encryption of a small buffer")
    }

    /// Inverse of [`Keys::wrap`]; `None` when authentication fails.
    pub(crate) fn unwrap(
        kek: &[u8; 32],
        nonce: &[u8; 12],
        aad: &[u8],
        ct: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        Aes256Gcm::new_from_slice(kek)
            .expect("32-byte key")
            .decrypt(&Nonce::from(*nonce), Payload { msg: ct, aad })
            .ok()
            .map(Zeroizing::new)
    }
}

/// Decompression with a size bound, so a hostile frame cannot claim a huge buffer. Our frames
/// record their content size: the output is allocated once, exactly (restore memory stays at
/// chunk size instead of doubling growth); frames without it are streamed.
fn decompress(data: &[u8], max_len: usize) -> Result<Vec<u8>, OpenError> {
    use std::io::Read;
    if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(data) {
        if n > max_len as u64 {
            return Err(OpenError::Decompress(format!(
                "content of {n} bytes exceeds {max_len}"
            )));
        }
        let mut out = crate::buffer::take(n as usize);
        with_decompressor(|d| d.decompress_to_buffer(data, &mut out))
            .map_err(|e| OpenError::Decompress(e.to_string()))?;
        if out.len() as u64 != n {
            return Err(OpenError::Decompress(format!(
                "frame says {n} bytes, decoded {}",
                out.len()
            )));
        }
        return Ok(out);
    }
    let err = |e: std::io::Error| OpenError::Decompress(e.to_string());
    let mut dec = zstd::stream::read::Decoder::with_buffer(data).map_err(err)?;
    let mut out = Vec::with_capacity(max_len.min(data.len().saturating_mul(4)).max(64));
    (&mut dec)
        .take(max_len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(err)?;
    if out.len() > max_len {
        return Err(OpenError::Decompress(format!(
            "content exceeds {max_len} bytes"
        )));
    }
    Ok(out)
}

thread_local! {
    // Per-thread zstd contexts: the blocking pool's threads live across chunks, so these are
    // set up once per thread instead of once per chunk.
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

fn with_compressor<T>(
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    COMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        match &mut *slot {
            Some((l, c)) if *l == level => f(c),
            _ => {
                let c = &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1;
                f(c)
            }
        }
    })
}

fn with_decompressor<T>(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    DECOMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        match &mut *slot {
            Some(d) => f(d),
            None => f(slot.insert(zstd::bulk::Decompressor::new()?)),
        }
    })
}

fn aad(version: u8, ty: u8, key_id: &KeyId, name: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + 2 + KeyId::LEN + name.len());
    aad.extend_from_slice(b"lifeboat-object");
    aad.push(version);
    aad.push(ty);
    aad.extend_from_slice(&key_id.0);
    aad.extend_from_slice(name);
    aad
}

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m =
        <HmacSha256 as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::from_master(&[7u8; 64])
    }

    #[test]
    fn chunk_round_trip() {
        let k = keys();
        let data = b"hello hello hello hello".repeat(100);
        let id = k.chunk_id(&data);
        let obj = k.seal_chunk(&id, &data, 3);
        assert!(obj.len() < data.len(), "compressible data must shrink");
        assert_eq!(k.open_chunk(&id, &obj, 1 << 20).unwrap(), data);
    }

    #[test]
    fn decompression_is_bounded_and_exact() {
        let k = keys();
        let data = vec![7u8; 5000];
        let id = k.chunk_id(&data);
        let obj = k.seal_chunk(&id, &data, 3);
        let out = k.open_chunk(&id, &obj, 5000).unwrap();
        assert_eq!(out.len(), 5000);
        assert!(
            out.capacity() <= 64 << 10,
            "allocated once, from the frame's content size (the smallest buffer class)"
        );
        assert!(
            matches!(k.open_chunk(&id, &obj, 4999), Err(OpenError::Decompress(_))),
            "a frame larger than the bound is refused"
        );
    }

    #[test]
    fn chunk_id_is_keyed() {
        let a = Keys::from_master(&[1u8; 64]);
        let b = Keys::from_master(&[2u8; 64]);
        assert_ne!(a.chunk_id(b"x"), b.chunk_id(b"x"));
        assert_eq!(a.chunk_id(b"x"), a.chunk_id(b"x"));
    }

    #[test]
    fn tampering_is_detected() {
        let k = keys();
        let data = vec![42u8; 5000];
        let id = k.chunk_id(&data);
        let obj = k.seal_chunk(&id, &data, 3);
        for pos in [0, 1, 5, HEADER_LEN, obj.len() - 1] {
            let mut bad = obj.clone();
            bad[pos] ^= 0x01;
            assert!(
                k.open_chunk(&id, &bad, 1 << 20).is_err(),
                "flip at {pos} undetected"
            );
        }
        assert_eq!(
            k.open_chunk(&id, &obj[..obj.len() - 3], 1 << 20),
            Err(OpenError::Auth)
        );
        // Stored under another chunk's name: the AAD binds the id.
        let other = k.chunk_id(b"other");
        assert_eq!(k.open_chunk(&other, &obj, 1 << 20), Err(OpenError::Auth));
        // A snapshot object cannot pass for a chunk.
        let snap = k.seal(ObjectType::Snapshot, &id.0, &data, 3);
        assert!(matches!(
            k.open_chunk(&id, &snap, 1 << 20),
            Err(OpenError::Type { .. })
        ));
        // Another repository's key.
        let foreign = Keys::from_master(&[9u8; 64]);
        assert!(matches!(
            foreign.open_chunk(&id, &obj, 1 << 20),
            Err(OpenError::UnknownKey(_))
        ));
    }
}
