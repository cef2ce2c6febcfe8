//! Shared helpers for backup-core integration tests: temp repositories and synthetic streams.
#![allow(dead_code)]

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use backup_core::codec::keys::KdfParams;
use backup_core::commands::backup::{BackupOptions, BackupReport, backup};
use backup_core::commands::restore::{ApplyOptions, stream_item};
use backup_core::repository::{CacheOptions, InitOptions, Repository};
use backup_core::secret::Secret;
use backup_core::source::{ReaderSource, Source};
use backup_core::store::{LocalStore, Store};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

pub const FAST_KDF: KdfParams = KdfParams {
    memory_kib: 1024,
    iterations: 1,
    parallelism: 1,
};

pub fn passphrase(p: &str) -> Secret {
    Secret::Passphrase(Zeroizing::new(p.as_bytes().to_vec()))
}

pub struct TestRepo {
    pub dir: tempfile::TempDir,
    pub repo: Repository,
}

impl TestRepo {
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("repo")
    }

    pub fn chunk_files(&self) -> usize {
        walk_count(&self.path().join("chunks"))
    }

    pub fn pack_files(&self) -> usize {
        walk_count(&self.path().join("packs"))
    }

    pub fn index_files(&self) -> usize {
        walk_count(&self.path().join("index"))
    }
}

pub fn walk_count(dir: &std::path::Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk_count(&e.path())
            } else {
                1
            }
        })
        .sum()
}

/// GC without a grace period: unreferenced objects go at once.
pub fn now_gc() -> backup_core::commands::gc::GcOptions {
    backup_core::commands::gc::GcOptions {
        grace: std::time::Duration::ZERO,
        ..Default::default()
    }
}

/// A repository initialised on `store` (passphrase "test") without a host cache: every read
/// goes to the store, as on a fresh host.
pub async fn init_uncached(store: Arc<dyn Store>) -> Repository {
    let opts = InitOptions {
        kdf: FAST_KDF,
        cache: CacheOptions {
            dir: None,
            disabled: true,
        },
        ..Default::default()
    };
    Repository::init(store, &passphrase("test"), opts)
        .await
        .unwrap()
}

pub async fn new_repo() -> TestRepo {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(LocalStore::new(dir.path().join("repo")));
    let opts = InitOptions {
        kdf: FAST_KDF,
        cache: CacheOptions {
            dir: Some(dir.path().join("cache")),
            disabled: false,
        },
        ..Default::default()
    };
    let repo = Repository::init(store, &passphrase("test"), opts)
        .await
        .unwrap();
    TestRepo { dir, repo }
}

/// Deterministic pseudo-random bytes (xorshift64*), incompressible like encrypted or media data.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut g = Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut v = vec![0u8; len];
    g.fill(&mut v);
    v
}

struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            c.copy_from_slice(&x[..c.len()]);
        }
    }
}

/// A generated stream of `len` bytes that is never held in memory, hashing what it emits.
pub struct GenReader {
    g: Gen,
    left: u64,
    pub sha: Arc<std::sync::Mutex<Sha256>>,
}

impl GenReader {
    pub fn new(seed: u64, len: u64) -> Self {
        GenReader {
            g: Gen(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            left: len,
            sha: Arc::default(),
        }
    }
}

impl AsyncRead for GenReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left).min(256 * 1024) as usize;
        let mut tmp = vec![0u8; n];
        self.g.fill(&mut tmp);
        self.sha.lock().unwrap().update(&tmp);
        self.left -= n as u64;
        buf.put_slice(&tmp);
        Poll::Ready(Ok(()))
    }
}

/// Hashes everything written to it.
#[derive(Default)]
pub struct HashWriter {
    pub sha: Sha256,
    pub len: u64,
}

impl AsyncWrite for HashWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.sha.update(buf);
        self.len += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

pub fn bytes_source(name: &str, data: Vec<u8>) -> Box<dyn Source> {
    Box::new(ReaderSource::new(
        name,
        Box::new(std::io::Cursor::new(data)),
    ))
}

pub async fn backup_bytes(repo: &Repository, name: &str, data: Vec<u8>) -> BackupReport {
    backup(
        repo,
        vec![bytes_source(name, data)],
        &BackupOptions::default(),
    )
    .await
    .unwrap()
}

/// Restores item `name` of the newest snapshot into memory.
pub async fn restore_bytes(repo: &Repository, name: &str) -> backup_core::Result<Vec<u8>> {
    let snap = repo.find_snapshot("latest").await?;
    let item = snap.item(name).expect("item exists").clone();
    let mut out = Vec::new();
    stream_item(repo, snap.id, &item, &mut out, &ApplyOptions::default()).await?;
    Ok(out)
}

/// A volume source of `src` named `name`.
pub fn volume(name: &str, src: &std::path::Path) -> Vec<Box<dyn Source>> {
    vec![Box::new(backup_core::engines::volume::VolumeSource::new(
        name,
        src,
        backup_core::engines::volume::VolumeOptions::default(),
    ))]
}

/// `n` incompressible small files (4–12 KB) under `dir`.
pub fn small_files(dir: &std::path::Path, seed: u64, n: u64) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let len = 4000 + (i * 7919 % 8000) as usize;
        std::fs::write(
            dir.join(format!("f{i:04}")),
            random_bytes(seed * 10_000 + i, len),
        )
        .unwrap();
    }
}

/// Every file under `d`, sorted.
pub fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out.sort();
    out
}
